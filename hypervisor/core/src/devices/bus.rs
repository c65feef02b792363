//! The two buses of a VM's PC and what a device answers: the port-I/O bus (each device gets
//! the accesses to its ports) and the MMIO bus; the effects a device asks of the VM (a console
//! byte, an interrupt line, the VM's end).

use alloc::boxed::Box;
use alloc::vec::Vec;

use super::ioapic;

/// How the VM ends when a guest asks (isa-debug-exit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitRequest {
    Pass,
    Fail(u32),
}

/// A change of an ISA interrupt line's level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineChange {
    Low,
    High,
    /// Low and high again within one access: a new rising edge, the line left high.
    Pulse,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Irq {
    /// ISA IRQ number.
    pub line: u8,
    pub change: LineChange,
}

/// What an access asks of the VM besides changing the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// A byte for the VM's console.
    pub console: Option<u8>,
    /// An interrupt line changed (a device's output; [`Pc`] routes it to the I/O APIC).
    pub irq: Option<Irq>,
    /// An interrupt message for the local APICs (the I/O APIC's output), for the kernel.
    pub message: Option<ioapic::Message>,
    /// The VM ends.
    pub exit: Option<ExitRequest>,
}

impl Effects {
    pub const NONE: Self = Self { console: None, irq: None, message: None, exit: None };
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

/// A device on the MMIO bus: `offset` within its window, `size` 1, 2, 4 or 8 bytes.
pub trait MmioDevice: Send {
    fn name(&self) -> &'static str;
    fn read(&mut self, offset: u64, size: u8) -> (u64, Effects);
    fn write(&mut self, offset: u64, size: u8, value: u64) -> Effects;
}

/// Guest-physical windows to devices. An address nobody claims is not a device: the caller
/// decides (this hypervisor stops the VM, as for any access outside RAM).
#[derive(Default)]
pub struct MmioBus {
    devices: Vec<(u64, u64, Box<dyn MmioDevice>)>,
}

impl MmioBus {
    /// Adds `device` at `base..base + len`. Windows must not overlap: a programming error.
    pub fn add(&mut self, base: u64, len: u64, device: Box<dyn MmioDevice>) {
        assert!(
            self.devices.iter().all(|(b, l, _)| base + len <= *b || base >= b + l),
            "MMIO window {base:#x} overlaps"
        );
        self.devices.push((base, len, device));
    }

    /// Whether a device answers at `gpa` (for `size` bytes, all inside its window).
    pub fn claims(&self, gpa: u64, size: u8) -> bool {
        self.devices.iter().any(|(b, l, _)| gpa >= *b && gpa.saturating_add(size as u64) <= b + l)
    }

    fn find(&mut self, gpa: u64, size: u8) -> Option<(u64, &mut Box<dyn MmioDevice>)> {
        self.devices
            .iter_mut()
            .find(|(b, l, _)| gpa >= *b && gpa.saturating_add(size as u64) <= *b + *l)
            .map(|(b, _, d)| (gpa - *b, d))
    }

    /// A read; `None` where no device answers.
    pub fn read(&mut self, gpa: u64, size: u8) -> Option<(u64, Effects)> {
        self.find(gpa, size).map(|(off, d)| d.read(off, size))
    }

    /// A write; `None` where no device answers.
    pub fn write(&mut self, gpa: u64, size: u8, value: u64) -> Option<Effects> {
        self.find(gpa, size).map(|(off, d)| d.write(off, size, value))
    }
}

fn size_mask(size: u8) -> u32 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        _ => u32::MAX,
    }
}
