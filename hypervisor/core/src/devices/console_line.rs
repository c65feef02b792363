//! A VM's serial console as lines: COM1's bytes collected until a newline (one buffer per VM,
//! since a UART is one device however many vCPUs write to it: Linux's tty layer sends a line
//! from whichever CPU takes the transmit interrupt), and the `REPORT {json}` lines among them,
//! which the hypervisor records like the REPORT hypercall (docs/platform.md).

/// The longest line kept whole; a longer one is handed on in pieces of this size.
pub const LINE_MAX: usize = 1024;

/// What a console line may be besides text.
pub const REPORT_PREFIX: &str = "REPORT ";

/// A fixed-size line buffer (no allocation on the I/O exit path).
pub struct Line {
    buf: [u8; LINE_MAX],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Self::new()
    }
}

impl Line {
    pub const fn new() -> Self {
        Self { buf: [0; LINE_MAX], len: 0 }
    }

    /// Appends a byte; returns the line, without its newline and a carriage return before it,
    /// when it ends or the buffer fills.
    pub fn push(&mut self, b: u8) -> Option<&[u8]> {
        if b != b'\n' {
            self.buf[self.len] = b;
            self.len += 1;
        }
        if b == b'\n' || self.len == self.buf.len() {
            let mut n = core::mem::take(&mut self.len);
            if b == b'\n' && n > 0 && self.buf[n - 1] == b'\r' {
                n -= 1;
            }
            return Some(&self.buf[..n]);
        }
        None
    }
}

/// The JSON text of a `REPORT {json}` line (the check of `exits::report` still applies).
pub fn report_value(line: &[u8]) -> Option<&[u8]> {
    line.strip_prefix(REPORT_PREFIX.as_bytes()).filter(|v| v.first() == Some(&b'{'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_end_at_newlines_and_lose_a_carriage_return() {
        let mut l = Line::new();
        for &b in b"hello\r" {
            assert_eq!(l.push(b), None);
        }
        assert_eq!(l.push(b'\n'), Some(&b"hello"[..]));
        assert_eq!(l.push(b'\n'), Some(&b""[..]));
        assert_eq!(l.push(b'\r'), None);
        assert_eq!(l.push(b'x'), None);
        assert_eq!(l.push(b'\n'), Some(&b"\rx"[..]), "only a carriage return at the end goes");
    }

    #[test]
    fn a_long_line_comes_out_in_pieces_of_line_max() {
        let mut l = Line::new();
        let mut pieces = 0;
        for _ in 0..LINE_MAX * 2 + 5 {
            if let Some(p) = l.push(b'a') {
                assert_eq!(p.len(), LINE_MAX);
                pieces += 1;
            }
        }
        assert_eq!(pieces, 2);
        assert_eq!(l.push(b'\n').map(<[u8]>::len), Some(5));
    }

    #[test]
    fn report_lines_are_recognised() {
        assert_eq!(report_value(b"REPORT {\"a\":1}"), Some(&b"{\"a\":1}"[..]));
        assert_eq!(report_value(b"REPORT [1]"), None, "a report is an object");
        assert_eq!(report_value(b" REPORT {}"), None);
        assert_eq!(report_value(b"REPORTS {}"), None);
    }
}
