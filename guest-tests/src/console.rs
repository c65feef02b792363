//! `println!` through the UART (a line at a time, so CPUs do not interleave), and a fixed
//! buffer for formatting without a heap.

use core::fmt::{self, Write};

/// A fixed-capacity string; output past the end is cut.
pub struct Buf<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> Default for Buf<N> {
    fn default() -> Self {
        Self { bytes: [0; N], len: 0 }
    }
}

impl<const N: usize> Buf<N> {
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }
}

impl<const N: usize> Write for Buf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(N - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

static LINE: spin::Mutex<()> = spin::Mutex::new(());

pub fn print_fmt(args: fmt::Arguments<'_>) {
    let mut b = Buf::<512>::default();
    let _ = b.write_fmt(args);
    let _ = b.write_str("\n");
    let _one_line_at_a_time = LINE.lock();
    crate::uart::write(b.as_str().as_bytes());
}

/// A JSON value for the VM's `reports`: handed to the hypervisor (REPORT) where it is there,
/// else printed as a `REPORT` line. Panics if the hypervisor rejects it.
pub fn report_json(json: &str) {
    if crate::platform().hypervisor {
        let r = crate::hypercall::report(json);
        assert_eq!(r, 0, "report rejected: {json}");
    } else {
        print_fmt(format_args!("REPORT {json}"));
    }
}

#[macro_export]
macro_rules! println {
    ($($t:tt)*) => { $crate::console::print_fmt(format_args!($($t)*)) };
}

/// Formats a JSON value and sends it as a report; panics if the hypervisor rejects it.
#[macro_export]
macro_rules! report {
    ($($t:tt)*) => {{
        let mut b = $crate::console::Buf::<1024>::default();
        let _ = core::fmt::Write::write_fmt(&mut b, format_args!($($t)*));
        $crate::console::report_json(b.as_str());
    }};
}

/// Writes bytes to COM1 with OUT instructions (one I/O exit each).
pub fn com1_write(s: &[u8]) {
    for &b in s {
        // SAFETY: port I/O is intercepted by the hypervisor.
        unsafe { x86_64::instructions::port::Port::<u8>::new(0x3f8).write(b) };
    }
}
