//! PCI configuration mechanism #1 (ports 0xCF8 address, 0xCFC-0xCFF data; PCI Local Bus
//! Specification 3.0 §3.2.2.3.2) on a bus with no devices: the address register reads back what
//! was written, so an OS sees mechanism #1 is there, and every configuration read returns all
//! ones ("no device"), every write is dropped.

use super::bus::{Effects, PortDevice};

pub const PORT: u16 = 0xcf8;
pub const LEN: u16 = 8;

#[derive(Default)]
pub struct PciHost {
    address: u32,
}

impl PortDevice for PciHost {
    fn name(&self) -> &'static str {
        "PCI host (no devices)"
    }

    fn read(&mut self, offset: u16, size: u8, _now_ns: u64) -> (u32, Effects) {
        // The data port (and any partial read of the address port) floats: no device.
        let v = if offset == 0 && size == 4 { self.address } else { u32::MAX };
        (v, Effects::NONE)
    }

    fn write(&mut self, offset: u16, size: u8, value: u32, _now_ns: u64) -> Effects {
        if offset == 0 && size == 4 {
            // Bits 1:0 are reserved and read as 0; bits 30:24 reserved too.
            self.address = value & 0x80ff_fffc;
        }
        Effects::NONE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mechanism_one_is_detected_and_the_bus_is_empty() {
        let mut p = PciHost::default();
        // Linux's pci_check_type1: write 0x80000000, read it back.
        p.write(0, 4, 0x8000_0000, 0);
        assert_eq!(p.read(0, 4, 0).0, 0x8000_0000);
        // Vendor ID of 00:00.0 and of any other function: no device.
        p.write(0, 4, 0x8000_0000, 0);
        assert_eq!(p.read(4, 4, 0).0, u32::MAX);
        p.write(0, 4, 0x8001_0803, 0);
        assert_eq!(p.read(0, 4, 0).0, 0x8001_0800, "reserved bits 1:0 read 0");
        assert_eq!(p.read(6, 2, 0).0 & 0xffff, 0xffff);
    }
}
