//! Port I/O: COM1's data port goes to the host console (line-buffered per vCPU, prefixed with
//! the VM and vCPU); COM1's line status says "ready"; every other port reads all-ones and
//! ignores writes (counted).

pub const COM1: u16 = 0x3f8;

/// The decoded exit qualification of an I/O instruction exit (SDM Vol. 3C Table 29-5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoExit {
    pub port: u16,
    /// 1, 2 or 4 bytes.
    pub size: u8,
    pub input: bool,
    pub string: bool,
    pub rep: bool,
}

impl IoExit {
    pub fn decode(qual: u64) -> Self {
        Self {
            size: (qual & 7) as u8 + 1,
            input: qual & (1 << 3) != 0,
            string: qual & (1 << 4) != 0,
            rep: qual & (1 << 5) != 0,
            port: (qual >> 16) as u16,
        }
    }
}

/// What the hypervisor does for one (non-string) I/O access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoAction {
    /// Append this byte to the vCPU's console line.
    ConsoleByte(u8),
    /// IN returns this value (zero-extended to the access size, merged into RAX).
    Read(u32),
    /// A write to one of COM1's other registers: accepted, nothing to do.
    Accepted,
    /// An access to a port nobody emulates: reads return all-ones, writes are dropped.
    Ignored,
}

pub fn decide(io: IoExit, value: u32) -> IoAction {
    match (io.port, io.input) {
        (COM1, false) => IoAction::ConsoleByte(value as u8),
        // Line status: transmitter empty and holding register empty (bits 5 and 6).
        (p, true) if p == COM1 + 5 => IoAction::Read(0x60),
        (p, true) if (COM1..COM1 + 8).contains(&p) => IoAction::Read(0),
        (p, false) if (COM1..COM1 + 8).contains(&p) => IoAction::Accepted,
        _ => IoAction::Ignored,
    }
}

/// RAX after an IN of `size` bytes returning `value` (SDM: IN to AL/AX leaves the rest of RAX;
/// IN to EAX zero-extends into RAX).
pub fn merge_in(rax: u64, size: u8, value: u32) -> u64 {
    match size {
        1 => (rax & !0xff) | (value as u64 & 0xff),
        2 => (rax & !0xffff) | (value as u64 & 0xffff),
        _ => value as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_out_dx_al() {
        let io = IoExit::decode((0x3f8 << 16) | (1 << 6));
        assert_eq!(io, IoExit { port: 0x3f8, size: 1, input: false, string: false, rep: false });
        let io = IoExit::decode((0x60 << 16) | (1 << 3) | 3);
        assert_eq!((io.port, io.size, io.input), (0x60, 4, true));
    }

    #[test]
    fn com1_and_others() {
        let out = |port| IoExit { port, size: 1, input: false, string: false, rep: false };
        let inp = |port| IoExit { port, size: 1, input: true, string: false, rep: false };
        assert_eq!(decide(out(COM1), 0x41), IoAction::ConsoleByte(b'A'));
        assert_eq!(decide(inp(COM1 + 5), 0), IoAction::Read(0x60));
        assert_eq!(decide(inp(0x60), 0), IoAction::Ignored);
        assert_eq!(decide(out(COM1 + 3), 3), IoAction::Accepted);
        assert_eq!(decide(out(0x80), 1), IoAction::Ignored);
    }

    #[test]
    fn in_merges_by_size() {
        assert_eq!(merge_in(0x1122_3344_5566_7788, 1, 0xffff_ffff), 0x1122_3344_5566_77ff);
        assert_eq!(merge_in(0x1122_3344_5566_7788, 2, 0xabcd), 0x1122_3344_5566_abcd);
        assert_eq!(merge_in(0x1122_3344_5566_7788, 4, 0xdead_beef), 0xdead_beef);
    }
}
