//! The PC's devices in a VM (`hvcore::devices`: the port-I/O bus, the MMIO bus with the I/O
//! APIC), shared by the VM's vCPUs behind one lock, and the set of vectors whose EOIs must
//! reach the I/O APIC. The models answer with effects; the exit handlers apply them (console
//! bytes, the VM's end, interrupt messages through `delivery`). Nothing here touches a vCPU.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use hvcore::devices::bus::Effects;
use hvcore::devices::ioapic::Message;
use hvcore::devices::pc::{Pc, PcConfig};
use hvcore::manifest::VmSpec;
use spin::Mutex;

pub struct VmDevices {
    pc: Mutex<Pc>,
    /// Vectors of the I/O APIC's level-triggered entries: their EOIs exit (the EOI-exit bitmap,
    /// SDM Vol. 3C §30.1.4) so the I/O APIC sees them. Each vCPU compares `eoi_exit_generation`
    /// with the one its VMCS holds before it enters.
    eoi_exit: [AtomicU64; 4],
    eoi_exit_generation: AtomicU32,
}

impl VmDevices {
    pub fn new(spec: &VmSpec, ram_size: u64, unix_time: u64) -> Self {
        let pc = Pc::new(&PcConfig {
            ram_size,
            cpus: spec.vcpus as u16,
            cmdline: spec.cmdline.as_bytes(),
            unix_time,
            pc_testdev: spec.pc_testdev,
        });
        Self { pc: Mutex::new(pc), eoi_exit: Default::default(), eoi_exit_generation: AtomicU32::new(0) }
    }

    /// A port read: value, effects, and whether a device claimed the port.
    pub fn port_read(&self, port: u16, size: u8, now_ns: u64) -> (u32, Effects, bool) {
        self.pc.lock().port_read(port, size, now_ns)
    }

    pub fn port_write(&self, port: u16, size: u8, value: u32, now_ns: u64) -> (Effects, bool) {
        self.pc.lock().port_write(port, size, value, now_ns)
    }

    /// Whether a device answers `size` bytes at guest-physical `gpa`.
    pub fn mmio_claims(&self, gpa: u64, size: u8) -> bool {
        self.pc.lock().mmio.claims(gpa, size)
    }

    pub fn mmio_read(&self, gpa: u64, size: u8) -> Option<(u64, Effects)> {
        self.pc.lock().mmio_read(gpa, size)
    }

    /// An MMIO write; afterwards the EOI-exit set follows the I/O APIC's level entries. True
    /// with the effects if that set changed: every vCPU must reload its EOI-exit bitmap before
    /// it takes (and EOIs) such an interrupt.
    pub fn mmio_write(&self, gpa: u64, size: u8, value: u64) -> Option<(Effects, bool)> {
        let mut pc = self.pc.lock();
        let e = pc.mmio_write(gpa, size, value)?;
        let level = pc.level_vectors();
        let changed = (0..4).any(|i| self.eoi_exit[i].load(Ordering::Relaxed) != level[i]);
        if changed {
            for (slot, bits) in self.eoi_exit.iter().zip(level) {
                slot.store(bits, Ordering::Relaxed);
            }
            self.eoi_exit_generation.fetch_add(1, Ordering::Release);
        }
        Some((e, changed))
    }

    /// An EOI-induced exit for `vector`: the I/O APIC re-arms its level entries; the messages
    /// of those that send again.
    pub fn eoi(&self, vector: u8) -> alloc::vec::Vec<Message> {
        self.pc.lock().eoi(vector)
    }

    /// The EOI-exit generation, cheap to compare on every entry.
    pub fn eoi_exit_generation(&self) -> u32 {
        self.eoi_exit_generation.load(Ordering::Acquire)
    }

    /// The EOI-exit bitmap (EOI_EXIT0..3) and the generation it belongs to.
    pub fn eoi_exit_bitmap(&self) -> (u32, [u64; 4]) {
        let generation = self.eoi_exit_generation();
        (generation, core::array::from_fn(|i| self.eoi_exit[i].load(Ordering::Relaxed)))
    }
}
