//! QEMU's pc-testdev (`-device pc-testdev`, hw/misc/pc-testdev.c), the part test kernels drive
//! interrupt lines through, on VMs that ask for it (`pc_testdev = on`): a write to port
//! 0x2000 + n sets ISA line n (0-23; 16 and up are the I/O APIC's pins of that number) high for
//! a non-zero value and low for zero, as kvm-unit-tests' `set_irq_line` does; and the 4-byte
//! register at port 0xE0, which reads back what was last written. Its other parts (the page
//! flush port, the MMIO scratch at 0xFF000000) are not modelled.

use super::bus::{Effects, Irq, LineChange, PortDevice};

pub const IRQ_PORT: u16 = 0x2000;
pub const IRQ_LINES: u16 = 24;
pub const SCRATCH_PORT: u16 = 0xe0;
pub const SCRATCH_LEN: u16 = 4;

/// The interrupt-line ports.
#[derive(Default)]
pub struct IrqLines;

impl PortDevice for IrqLines {
    fn name(&self) -> &'static str {
        "pc-testdev irq lines"
    }

    fn read(&mut self, _: u16, _: u8, _: u64) -> (u32, Effects) {
        (0, Effects::NONE)
    }

    fn write(&mut self, offset: u16, _: u8, value: u32, _: u64) -> Effects {
        let change = if value != 0 { LineChange::High } else { LineChange::Low };
        Effects { irq: Some(Irq { line: offset as u8, change }), ..Effects::NONE }
    }
}

/// The scratch register: bytes written at an offset read back there.
#[derive(Default)]
pub struct Scratch(u32);

impl PortDevice for Scratch {
    fn name(&self) -> &'static str {
        "pc-testdev ioport"
    }

    fn read(&mut self, offset: u16, size: u8, _: u64) -> (u32, Effects) {
        let v = self.0 >> (8 * offset as u32);
        (if size >= 4 { v } else { v & ((1 << (8 * size as u32)) - 1) }, Effects::NONE)
    }

    fn write(&mut self, offset: u16, size: u8, value: u32, _: u64) -> Effects {
        let shift = 8 * offset as u32;
        let mask = if size >= 4 { u32::MAX } else { (1u32 << (8 * size as u32)) - 1 } << shift;
        self.0 = (self.0 & !mask) | ((value << shift) & mask);
        Effects::NONE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_follow_the_written_value() {
        let mut d = IrqLines;
        assert_eq!(d.write(10, 1, 1, 0).irq, Some(Irq { line: 10, change: LineChange::High }));
        assert_eq!(d.write(10, 1, 0, 0).irq, Some(Irq { line: 10, change: LineChange::Low }));
        assert_eq!(d.write(23, 1, 0xff, 0).irq.map(|i| i.line), Some(23));
    }

    #[test]
    fn scratch_reads_back_by_bytes() {
        let mut s = Scratch::default();
        s.write(0, 4, 0x1122_3344, 0);
        assert_eq!(s.read(0, 4, 0).0, 0x1122_3344);
        s.write(1, 1, 0xaa, 0);
        assert_eq!(s.read(0, 4, 0).0, 0x1122_aa44);
        assert_eq!(s.read(2, 2, 0).0, 0x1122);
    }
}
