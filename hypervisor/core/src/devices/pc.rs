//! [`Pc`]: the devices of a VM's PC on their buses, the ISA interrupt lines wired to the I/O
//! APIC, whose messages the kernel delivers into the virtual local APICs.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use spin::Mutex;

use super::bus::{Effects, LineChange, MmioBus, MmioDevice, PortBus};
use super::{cmos, debug_exit, fw_cfg, ioapic, pc_testdev, pci_host, pic8259, pit8254, pm_timer, uart16550};

/// The I/O APIC on the MMIO bus.
struct IoApicWindow(Arc<Mutex<ioapic::IoApic>>);

impl MmioDevice for IoApicWindow {
    fn name(&self) -> &'static str {
        "I/O APIC"
    }

    fn read(&mut self, offset: u64, size: u8) -> (u64, Effects) {
        (self.0.lock().read(offset, size) as u64, Effects::NONE)
    }

    fn write(&mut self, offset: u64, size: u8, value: u64) -> Effects {
        Effects { message: self.0.lock().write(offset, size, value as u32), ..Effects::NONE }
    }
}

/// What the PC's devices are built from.
pub struct PcConfig<'a> {
    pub ram_size: u64,
    pub cpus: u16,
    pub cmdline: &'a [u8],
    /// Wall-clock time when the VM is created (seconds since 1970), for the RTC.
    pub unix_time: u64,
    /// QEMU's pc-testdev is present (`pc_testdev`).
    pub pc_testdev: bool,
}

/// The PC inside a VM: its two buses, and the I/O APIC the interrupt lines go to.
pub struct Pc {
    pub ports: PortBus,
    pub mmio: MmioBus,
    ioapic: Arc<Mutex<ioapic::IoApic>>,
}

/// The I/O APIC input an ISA IRQ reaches: the identity, but IRQ 0 (the PIT) on pin 2, as the
/// MADT's interrupt source override says (ACPI 6.5 §5.2.12.5; every PC wires it so).
pub const fn isa_irq_pin(irq: u8) -> usize {
    if irq == 0 { 2 } else { irq as usize }
}

impl Pc {
    /// The port-I/O devices (COM1, the PIT and port B, the 8259 pair, the CMOS RTC,
    /// isa-debug-exit, fw_cfg, PCI configuration mechanism #1, the ACPI PM timer) and the I/O
    /// APIC.
    pub fn new(cfg: &PcConfig<'_>) -> Self {
        let mut ports = PortBus::default();
        ports.add(uart16550::COM1, uart16550::LEN, Box::new(uart16550::Uart16550::new(uart16550::COM1_IRQ)));
        let pit = Arc::new(Mutex::new(pit8254::Pit::default()));
        ports.add(pit8254::PORT, pit8254::LEN, Box::new(pit8254::PitPorts(pit.clone())));
        ports.add(pit8254::PORT_B, 1, Box::new(pit8254::PortB(pit)));
        ports.add(pic8259::MASTER, pic8259::LEN, Box::new(pic8259::Pic8259::default()));
        ports.add(pic8259::SLAVE, pic8259::LEN, Box::new(pic8259::Pic8259::default()));
        let mut cmos = cmos::Cmos::new(cfg.ram_size);
        cmos.set_time(cfg.unix_time);
        ports.add(cmos::PORT, cmos::LEN, Box::new(cmos));
        ports.add(debug_exit::PORT, debug_exit::LEN, Box::new(debug_exit::DebugExit));
        ports.add(fw_cfg::PORT, fw_cfg::LEN, Box::new(fw_cfg::FwCfg::new(cfg.ram_size, cfg.cpus, cfg.cmdline)));
        ports.add(pci_host::PORT, pci_host::LEN, Box::new(pci_host::PciHost::default()));
        ports.add(pm_timer::PORT, pm_timer::LEN, Box::new(pm_timer::PmTimer));
        if cfg.pc_testdev {
            ports.add(pc_testdev::IRQ_PORT, pc_testdev::IRQ_LINES, Box::new(pc_testdev::IrqLines));
            ports.add(pc_testdev::SCRATCH_PORT, pc_testdev::SCRATCH_LEN, Box::new(pc_testdev::Scratch::default()));
        }
        let ioapic = Arc::new(Mutex::new(ioapic::IoApic::new(IO_APIC_ID)));
        let mut mmio = MmioBus::default();
        mmio.add(ioapic::BASE, ioapic::LEN, Box::new(IoApicWindow(ioapic.clone())));
        Self { ports, mmio, ioapic }
    }

    /// Routes a device's line change to its I/O APIC pin: the effects then carry the message
    /// to deliver, if the pin sends one.
    fn route(&mut self, mut e: Effects) -> Effects {
        if let Some(irq) = e.irq.take() {
            let pin = isa_irq_pin(irq.line);
            let mut io = self.ioapic.lock();
            let sent = match irq.change {
                LineChange::Low => io.set_pin(pin, false),
                LineChange::High => io.set_pin(pin, true),
                LineChange::Pulse => {
                    let low = io.set_pin(pin, false);
                    low.or(io.set_pin(pin, true))
                }
            };
            e.message = e.message.or(sent);
        }
        e
    }

    pub fn port_read(&mut self, port: u16, size: u8, now_ns: u64) -> (u32, Effects, bool) {
        let (v, e, claimed) = self.ports.read(port, size, now_ns);
        (v, self.route(e), claimed)
    }

    pub fn port_write(&mut self, port: u16, size: u8, value: u32, now_ns: u64) -> (Effects, bool) {
        let (e, claimed) = self.ports.write(port, size, value, now_ns);
        (self.route(e), claimed)
    }

    /// An MMIO read; `None` where no device answers.
    pub fn mmio_read(&mut self, gpa: u64, size: u8) -> Option<(u64, Effects)> {
        let (v, e) = self.mmio.read(gpa, size)?;
        Some((v, self.route(e)))
    }

    /// An MMIO write; `None` where no device answers.
    pub fn mmio_write(&mut self, gpa: u64, size: u8, value: u64) -> Option<Effects> {
        let e = self.mmio.write(gpa, size, value)?;
        Some(self.route(e))
    }

    /// A local APIC's EOI of `vector` for a level-triggered interrupt (an EOI-induced exit):
    /// the I/O APIC re-arms the entries with that vector; the messages of those that send again.
    pub fn eoi(&mut self, vector: u8) -> Vec<ioapic::Message> {
        self.ioapic.lock().eoi(vector)
    }

    /// The vectors of the I/O APIC's level-triggered entries, as a 256-bit set: their EOIs must
    /// reach the I/O APIC (the EOI-exit bitmap, SDM Vol. 3C §30.1.4).
    pub fn level_vectors(&self) -> [u64; 4] {
        self.ioapic.lock().level_vectors()
    }
}

/// The I/O APIC's ID, as QEMU gives it (its namespace is not the local APICs').
pub const IO_APIC_ID: u8 = 0;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::{ExitRequest, PortDevice};

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
        let cfg = PcConfig { ram_size: 64 << 20, cpus: 3, cmdline: b"x", unix_time: 1_700_000_000, pc_testdev: false };
        let mut bus = Pc::new(&cfg).ports;
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
    fn uart_interrupts_reach_the_io_apic_pin_as_its_entry_says() {
        let cfg = PcConfig { ram_size: 64 << 20, cpus: 2, cmdline: b"", unix_time: 0, pc_testdev: false };
        let mut pc = Pc::new(&cfg);
        let reg = |pc: &mut Pc, index: u32, value: u32| {
            pc.mmio_write(ioapic::BASE, 4, index as u64).unwrap();
            pc.mmio_write(ioapic::BASE + 0x10, 4, value as u64).unwrap()
        };
        // Pin 4 (COM1): vector 0x44, fixed, physical, edge, to APIC 1.
        reg(&mut pc, 0x19, 1 << 24);
        reg(&mut pc, 0x18, 0x44);
        assert_eq!(pc.level_vectors(), [0; 4]);
        pc.port_write(0x3fc, 1, 0x08, 0); // MCR: OUT2
        let (e, _) = pc.port_write(0x3f9, 1, 0x02, 0); // IER: THRE
        let m = ioapic::Message { vector: 0x44, delivery_mode: 0, logical: false, dest: 1, level: false };
        assert_eq!((e.irq, e.message), (None, Some(m)), "the line went to the I/O APIC");
        // Each byte sent while the line is high is a new edge.
        assert_eq!(pc.port_write(0x3f8, 1, b'a' as u32, 0).0.message, Some(m));
        // The driver reads IIR (line low), then sends: one message each time.
        assert_eq!(pc.port_read(0x3fa, 1, 0).1.message, None);
        assert_eq!(pc.port_write(0x3f8, 1, b'b' as u32, 0).0.message, Some(m));
        // Masked: nothing. Nothing answers outside the window.
        reg(&mut pc, 0x18, 0x44 | (1 << 16));
        assert_eq!(pc.port_write(0x3f8, 1, b'c' as u32, 0).0.message, None);
        assert!(pc.mmio_read(ioapic::BASE + 0x1000, 4).is_none());
        assert!(pc.mmio.claims(ioapic::BASE + 0x10, 4) && !pc.mmio.claims(ioapic::BASE + 0xffe, 4));
    }

    #[test]
    fn level_triggered_entries_are_reported_for_eoi_exits() {
        let cfg = PcConfig { ram_size: 64 << 20, cpus: 2, cmdline: b"", unix_time: 0, pc_testdev: false };
        let mut pc = Pc::new(&cfg);
        pc.mmio_write(ioapic::BASE, 4, 0x18).unwrap();
        pc.mmio_write(ioapic::BASE + 0x10, 4, 0x8061).unwrap(); // level, vector 0x61
        assert_eq!(pc.level_vectors(), [0, 1 << 0x21, 0, 0]);
        assert_eq!(isa_irq_pin(0), 2);
        assert_eq!(isa_irq_pin(4), 4);
    }

    #[test]
    #[should_panic(expected = "overlaps")]
    fn overlapping_ranges_are_refused() {
        let mut bus = PortBus::default();
        bus.add(0x100, 4, Box::new(Scratch(0)));
        bus.add(0x103, 2, Box::new(Scratch(0)));
    }
}
