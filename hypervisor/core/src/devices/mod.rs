//! The devices of the PC inside each VM, as pure models behind a port-I/O bus: each gets the
//! accesses to its ports and answers with a value, or with what the VM must do (print a byte,
//! raise an interrupt line, end). The kernel routes I/O exits here and applies the effects;
//! the models never reach into a vCPU. One file per device, each tested against its datasheet
//! or specification.

use alloc::boxed::Box;
use alloc::vec::Vec;

pub mod cmos;
pub mod debug_exit;
pub mod fw_cfg;
pub mod pci_host;
pub mod pic8259;
pub mod uart16550;

/// How the VM ends when a guest asks (isa-debug-exit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitRequest {
    Pass,
    Fail(u32),
}

/// What a write asks of the VM besides changing the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// A byte for the VM's console.
    pub console: Option<u8>,
    /// An ISA interrupt line (IRQ number) became asserted.
    pub irq: Option<u8>,
    /// The VM ends.
    pub exit: Option<ExitRequest>,
}

impl Effects {
    pub const NONE: Self = Self { console: None, irq: None, exit: None };
}

/// A device on the port-I/O bus. `offset` is relative to the device's first port; `size` is
/// 1, 2 or 4 bytes. Reads return the value zero-extended; reads may change state (a FIFO, a
/// latch), so they take `&mut self` too.
pub trait PortDevice: Send {
    /// A short name for reports.
    fn name(&self) -> &'static str;
    fn read(&mut self, offset: u16, size: u8) -> (u32, Effects);
    fn write(&mut self, offset: u16, size: u8, value: u32) -> Effects;
}

/// Port ranges to devices. A port nobody claims reads as all ones and ignores writes, as on a PC
/// bus with nothing there.
#[derive(Default)]
pub struct PortBus {
    devices: Vec<(u16, u16, Box<dyn PortDevice>)>,
}

/// Ports this bus answers for an unclaimed access.
pub const UNCLAIMED: u32 = u32::MAX;

impl PortBus {
    /// Adds `device` at `base..base + len`. Ranges must not overlap: a programming error.
    pub fn add(&mut self, base: u16, len: u16, device: Box<dyn PortDevice>) {
        let end = base as u32 + len as u32;
        assert!(
            self.devices.iter().all(|(b, l, _)| end <= *b as u32 || base as u32 >= *b as u32 + *l as u32),
            "port range {base:#x}+{len} overlaps"
        );
        self.devices.push((base, len, device));
    }

    fn find(&mut self, port: u16) -> Option<(u16, &mut Box<dyn PortDevice>)> {
        self.devices
            .iter_mut()
            .find(|(b, l, _)| port >= *b && (port as u32) < *b as u32 + *l as u32)
            .map(|(b, _, d)| (port - *b, d))
    }

    /// A read of `size` bytes at `port`: the value (all ones where nobody answers, masked to
    /// the size) and whether a device claimed it.
    pub fn read(&mut self, port: u16, size: u8) -> (u32, Effects, bool) {
        let mask = size_mask(size);
        match self.find(port) {
            Some((off, d)) => {
                let (v, e) = d.read(off, size);
                (v & mask, e, true)
            }
            None => (UNCLAIMED & mask, Effects::NONE, false),
        }
    }

    /// A write; `false` if no device claimed the port (the write is dropped).
    pub fn write(&mut self, port: u16, size: u8, value: u32) -> (Effects, bool) {
        match self.find(port) {
            Some((off, d)) => (d.write(off, size, value & size_mask(size)), true),
            None => (Effects::NONE, false),
        }
    }
}

fn size_mask(size: u8) -> u32 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        _ => u32::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scratch(u32);
    impl PortDevice for Scratch {
        fn name(&self) -> &'static str {
            "scratch"
        }
        fn read(&mut self, offset: u16, _: u8) -> (u32, Effects) {
            (self.0 + offset as u32, Effects::NONE)
        }
        fn write(&mut self, _: u16, _: u8, value: u32) -> Effects {
            self.0 = value;
            Effects::NONE
        }
    }

    #[test]
    fn ports_route_to_their_device_and_the_rest_float() {
        let mut bus = PortBus::default();
        bus.add(0x100, 4, Box::new(Scratch(0x10)));
        assert_eq!(bus.read(0x102, 1), (0x12, Effects::NONE, true));
        assert_eq!(bus.write(0x100, 4, 0xabcd_0000), (Effects::NONE, true));
        assert_eq!(bus.read(0x101, 2).0, 0x0001, "masked to the access size");
        assert_eq!(bus.read(0x104, 1), (0xff, Effects::NONE, false));
        assert_eq!(bus.read(0xffff, 4), (u32::MAX, Effects::NONE, false));
        assert_eq!(bus.write(0x99, 1, 0), (Effects::NONE, false));
    }

    #[test]
    #[should_panic(expected = "overlaps")]
    fn overlapping_ranges_are_refused() {
        let mut bus = PortBus::default();
        bus.add(0x100, 4, Box::new(Scratch(0)));
        bus.add(0x103, 2, Box::new(Scratch(0)));
    }
}
