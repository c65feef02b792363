//! The two 8259A PICs of a PC (master 0x20/0x21, slave 0xA0/0xA1), present enough for an OS to
//! initialize and mask them before it uses the APICs: the ICW1-ICW4 sequence, the interrupt
//! mask (OCW1), EOIs (OCW2) and the IRR/ISR read select (OCW3). They never raise an interrupt:
//! the VM's interrupts come through the local and I/O APICs. (Intel 8259A datasheet.)

use super::bus::{Effects, PortDevice};

pub const MASTER: u16 = 0x20;
pub const SLAVE: u16 = 0xa0;
pub const LEN: u16 = 2;

const ICW1: u8 = 1 << 4;
const ICW1_IC4: u8 = 1 << 0;
const ICW1_SINGLE: u8 = 1 << 1;
const OCW3: u8 = 1 << 3;

pub struct Pic8259 {
    imr: u8,
    vector_base: u8,
    /// Next initialization word expected (2, 3, 4), or 0 when initialized.
    expect_icw: u8,
    icw1: u8,
    read_isr: bool,
}

impl Default for Pic8259 {
    fn default() -> Self {
        // Masked until an OS programs it (firmware leaves the PICs masked for an APIC OS).
        Self { imr: 0xff, vector_base: 0, expect_icw: 0, icw1: 0, read_isr: false }
    }
}

impl Pic8259 {
    pub fn mask(&self) -> u8 {
        self.imr
    }

    pub fn vector_base(&self) -> u8 {
        self.vector_base
    }
}

impl PortDevice for Pic8259 {
    fn name(&self) -> &'static str {
        "8259A PIC"
    }

    fn read(&mut self, offset: u16, _: u8, _now_ns: u64) -> (u32, Effects) {
        // No request is ever pending or in service: IRR and ISR read 0.
        let v = if offset == 1 { self.imr } else { 0 };
        (v as u32, Effects::NONE)
    }

    fn write(&mut self, offset: u16, _: u8, value: u32, _now_ns: u64) -> Effects {
        let v = value as u8;
        if offset == 0 {
            if v & ICW1 != 0 {
                // ICW1 starts initialization: the mask is cleared, ICW2 comes next.
                self.icw1 = v;
                self.imr = 0;
                self.expect_icw = 2;
            } else if v & OCW3 != 0 && v & 0x02 != 0 {
                self.read_isr = v & 0x01 != 0;
            }
            // OCW2 (EOI and priority commands): nothing is in service.
            return Effects::NONE;
        }
        match self.expect_icw {
            2 => {
                self.vector_base = v & 0xf8;
                self.expect_icw = if self.icw1 & ICW1_SINGLE == 0 {
                    3
                } else if self.icw1 & ICW1_IC4 != 0 {
                    4
                } else {
                    0
                };
            }
            3 => self.expect_icw = if self.icw1 & ICW1_IC4 != 0 { 4 } else { 0 },
            4 => self.expect_icw = 0,
            _ => self.imr = v, // OCW1
        }
        Effects::NONE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_style_init_then_mask_everything() {
        let mut p = Pic8259::default();
        assert_eq!(p.read(1, 1, 0).0, 0xff, "masked at reset");
        // ICW1 (edge, cascade, ICW4), ICW2 vector 0x20, ICW3 slave on IR2, ICW4 8086 mode.
        for (port, v) in [(0, 0x11), (1, 0x20), (1, 0x04), (1, 0x01)] {
            p.write(port, 1, v, 0);
        }
        assert_eq!((p.vector_base(), p.mask()), (0x20, 0x00));
        p.write(1, 1, 0xfb, 0);
        assert_eq!(p.read(1, 1, 0).0, 0xfb, "OCW1 after initialization sets the mask");
        p.write(0, 1, 0x20, 0); // non-specific EOI
        p.write(0, 1, 0x0b, 0); // OCW3: read ISR
        assert_eq!(p.read(0, 1, 0).0, 0);
        assert_eq!(p.read(1, 1, 0).0, 0xfb);
    }

    #[test]
    fn single_mode_without_icw4_skips_icw3_and_icw4() {
        let mut p = Pic8259::default();
        p.write(0, 1, 0x12, 0); // ICW1: single, no ICW4
        p.write(1, 1, 0x08, 0);
        p.write(1, 1, 0xaa, 0); // already OCW1
        assert_eq!((p.vector_base(), p.mask()), (0x08, 0xaa));
    }
}
