//! The devices of the PC inside each VM, as pure models: the port-I/O ones behind a bus, where
//! each gets the accesses to its ports and answers with a value, or with what the VM must do
//! (print a byte, raise an interrupt line, end); and the I/O APIC (`ioapic`), an MMIO device
//! that turns pin levels into interrupt messages. The kernel routes exits here and applies
//! the effects; the models never reach into a vCPU. One file per device, each tested against
//! its datasheet or specification.

use alloc::boxed::Box;
use alloc::vec::Vec;

pub mod cmos;
pub mod debug_exit;
pub mod fw_cfg;
pub mod ioapic;
pub mod pci_host;
pub mod pic8259;
pub mod pit8254;
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
/// 1, 2 or 4 bytes; `now_ns` is the VM's clock (nanoseconds since it was created), for the
/// devices that count time. Reads return the value zero-extended; reads may change state (a
/// FIFO, a latch), so they take `&mut self` too.
pub trait PortDevice: Send {
    /// A short name for reports.
    fn name(&self) -> &'static str;
    fn read(&mut self, offset: u16, size: u8, now_ns: u64) -> (u32, Effects);
    fn write(&mut self, offset: u16, size: u8, value: u32, now_ns: u64) -> Effects;
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
    pub fn read(&mut self, port: u16, size: u8, now_ns: u64) -> (u32, Effects, bool) {
        let mask = size_mask(size);
        match self.find(port) {
            Some((off, d)) => {
                let (v, e) = d.read(off, size, now_ns);
                (v & mask, e, true)
            }
            None => (UNCLAIMED & mask, Effects::NONE, false),
        }
    }

    /// A write; `false` if no device claimed the port (the write is dropped).
    pub fn write(&mut self, port: u16, size: u8, value: u32, now_ns: u64) -> (Effects, bool) {
        match self.find(port) {
            Some((off, d)) => (d.write(off, size, value & size_mask(size), now_ns), true),
            None => (Effects::NONE, false),
        }
    }
}

/// What the PC's devices are built from.
pub struct PcConfig<'a> {
    pub ram_size: u64,
    pub cpus: u16,
    pub cmdline: &'a [u8],
    /// Wall-clock time when the VM is created (seconds since 1970), for the RTC.
    pub unix_time: u64,
}

/// The port-I/O devices of the PC inside each VM: COM1, the PIT and port B, the 8259 pair, the
/// CMOS RTC, isa-debug-exit, fw_cfg and PCI configuration mechanism #1.
pub fn pc(cfg: &PcConfig<'_>) -> PortBus {
    let mut bus = PortBus::default();
    bus.add(uart16550::COM1, uart16550::LEN, Box::new(uart16550::Uart16550::new(uart16550::COM1_IRQ)));
    let pit = alloc::sync::Arc::new(spin::Mutex::new(pit8254::Pit::default()));
    bus.add(pit8254::PORT, pit8254::LEN, Box::new(pit8254::PitPorts(pit.clone())));
    bus.add(pit8254::PORT_B, 1, Box::new(pit8254::PortB(pit)));
    bus.add(pic8259::MASTER, pic8259::LEN, Box::new(pic8259::Pic8259::default()));
    bus.add(pic8259::SLAVE, pic8259::LEN, Box::new(pic8259::Pic8259::default()));
    let mut cmos = cmos::Cmos::new(cfg.ram_size);
    cmos.set_time(cfg.unix_time);
    bus.add(cmos::PORT, cmos::LEN, Box::new(cmos));
    bus.add(debug_exit::PORT, debug_exit::LEN, Box::new(debug_exit::DebugExit));
    bus.add(fw_cfg::PORT, fw_cfg::LEN, Box::new(fw_cfg::FwCfg::new(cfg.ram_size, cfg.cpus, cfg.cmdline)));
    bus.add(pci_host::PORT, pci_host::LEN, Box::new(pci_host::PciHost::default()));
    bus
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
        fn read(&mut self, offset: u16, _: u8, _: u64) -> (u32, Effects) {
            (self.0 + offset as u32, Effects::NONE)
        }
        fn write(&mut self, _: u16, _: u8, value: u32, _: u64) -> Effects {
            self.0 = value;
            Effects::NONE
        }
    }

    #[test]
    fn ports_route_to_their_device_and_the_rest_float() {
        let mut bus = PortBus::default();
        bus.add(0x100, 4, Box::new(Scratch(0x10)));
        assert_eq!(bus.read(0x102, 1, 0), (0x12, Effects::NONE, true));
        assert_eq!(bus.write(0x100, 4, 0xabcd_0000, 0), (Effects::NONE, true));
        assert_eq!(bus.read(0x101, 2, 0).0, 0x0001, "masked to the access size");
        assert_eq!(bus.read(0x104, 1, 0), (0xff, Effects::NONE, false));
        assert_eq!(bus.read(0xffff, 4, 0), (u32::MAX, Effects::NONE, false));
        assert_eq!(bus.write(0x99, 1, 0, 0), (Effects::NONE, false));
    }

    #[test]
    fn the_pc_answers_where_a_pc_does() {
        let cfg = PcConfig { ram_size: 64 << 20, cpus: 3, cmdline: b"x", unix_time: 1_700_000_000 };
        let mut bus = pc(&cfg);
        // fw_cfg: signature, then the CPU count.
        bus.write(0x510, 2, fw_cfg::key::SIGNATURE as u32, 0);
        let sig: [u8; 4] = core::array::from_fn(|_| bus.read(0x511, 1, 0).0 as u8);
        assert_eq!(&sig, b"QEMU");
        bus.write(0x510, 2, fw_cfg::key::NB_CPUS as u32, 0);
        assert_eq!(bus.read(0x511, 1, 0).0, 3);
        // COM1 prints; its line status says the transmitter is empty.
        assert_eq!(bus.write(0x3f8, 1, b'a' as u32, 0).0.console, Some(b'a'));
        assert_eq!(bus.read(0x3fd, 1, 0).0 & 0x60, 0x60);
        // Both PICs masked at reset; PCI finds nothing; CMOS keeps the year.
        assert_eq!((bus.read(0x21, 1, 0).0, bus.read(0xa1, 1, 0).0), (0xff, 0xff));
        bus.write(0xcf8, 4, 0x8000_0000, 0);
        assert_eq!(bus.read(0xcfc, 4, 0).0, u32::MAX);
        bus.write(0x70, 1, 0x09, 0);
        assert_eq!(bus.read(0x71, 1, 0).0, 0x23);
        // Port B gates the PIT's channel 2: OUT2 rises after a short mode-0 count.
        bus.write(0x61, 1, 1, 0);
        bus.write(0x43, 1, 0xb0, 0);
        bus.write(0x42, 1, 10, 0);
        bus.write(0x42, 1, 0, 0);
        assert_eq!(bus.read(0x61, 1, 1_000).0 & 0x20, 0);
        assert_eq!(bus.read(0x61, 1, 10_000).0 & 0x20, 0x20);
        // isa-debug-exit ends the VM; a port nobody claims floats.
        assert_eq!(bus.write(0xf4, 1, 0, 0).0.exit, Some(ExitRequest::Pass));
        assert_eq!(bus.read(0x80, 1, 0), (0xff, Effects::NONE, false));
    }

    #[test]
    #[should_panic(expected = "overlaps")]
    fn overlapping_ranges_are_refused() {
        let mut bus = PortBus::default();
        bus.add(0x100, 4, Box::new(Scratch(0)));
        bus.add(0x103, 2, Box::new(Scratch(0)));
    }
}
