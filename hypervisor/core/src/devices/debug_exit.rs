//! isa-debug-exit (QEMU's `-device isa-debug-exit,iobase=0xf4,iosize=0x4`): a write ends the
//! VM. QEMU exits with status `(value << 1) | 1`, so test kernels write 0 for success; here a
//! write of 0 is `pass` and any other value `fail` with that value as the code.

use super::bus::{Effects, ExitRequest, PortDevice};

pub const PORT: u16 = 0xf4;
pub const LEN: u16 = 4;

#[derive(Default)]
pub struct DebugExit;

impl PortDevice for DebugExit {
    fn name(&self) -> &'static str {
        "isa-debug-exit"
    }

    fn read(&mut self, _: u16, _: u8, _now_ns: u64) -> (u32, Effects) {
        // QEMU's device reads as 0.
        (0, Effects::NONE)
    }

    fn write(&mut self, _: u16, _: u8, value: u32, _now_ns: u64) -> Effects {
        let exit = if value == 0 { ExitRequest::Pass } else { ExitRequest::Fail(value) };
        Effects { exit: Some(exit), ..Effects::NONE }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_passes_anything_else_fails_with_the_value() {
        let mut d = DebugExit;
        assert_eq!(d.write(0, 1, 0, 0).exit, Some(ExitRequest::Pass));
        assert_eq!(d.write(0, 4, 0x31, 0).exit, Some(ExitRequest::Fail(0x31)));
        assert_eq!(d.read(0, 1, 0).0, 0);
    }
}
