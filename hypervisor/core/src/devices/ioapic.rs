//! The I/O APIC of a PC (82093AA datasheet; ICH9 and later keep its register set): the
//! indirect register window (IOREGSEL at offset 0x00, IOWIN at 0x10), ID, version with 24
//! redirection entries, and the redirection table. It turns the level of each input pin into
//! interrupt messages for the local APICs: an edge-triggered entry sends one on each rising
//! edge; a level-triggered entry sends one while the pin is high and its remote IRR is clear,
//! sets remote IRR, and is re-armed by the EOI of its vector. The kernel delivers the messages
//! into the virtual local APICs; the model never reaches into a vCPU.

/// Where every PC has it, and its MMIO window.
pub const BASE: u64 = 0xfec0_0000;
pub const LEN: u64 = 0x1000;
pub const PINS: usize = 24;

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;

const REG_ID: u8 = 0x00;
const REG_VERSION: u8 = 0x01;
const REG_ARBITRATION: u8 = 0x02;
const REG_TABLE: u8 = 0x10;

/// Version 0x11 (82093AA), maximum redirection entry 23.
const VERSION: u32 = 0x11 | ((PINS as u32 - 1) << 16);

mod entry {
    pub const VECTOR: u64 = 0xff;
    pub const DELIVERY_MODE_SHIFT: u64 = 8;
    pub const LOGICAL: u64 = 1 << 11;
    pub const DELIVERY_STATUS: u64 = 1 << 12;
    pub const REMOTE_IRR: u64 = 1 << 14;
    pub const LEVEL: u64 = 1 << 15;
    pub const MASKED: u64 = 1 << 16;
    pub const DEST_SHIFT: u64 = 56;
    /// Bits software may write: vector, delivery mode, destination mode, polarity, trigger
    /// mode, mask, destination (delivery status and remote IRR are read-only).
    pub const WRITABLE: u64 = 0xff | (7 << 8) | (1 << 11) | (1 << 13) | (1 << 15) | (1 << 16) | (0xff << 56);
}

/// An interrupt message for the local APICs (the fields the ICR of an IPI has).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message {
    pub vector: u8,
    /// 0 fixed, 1 lowest priority, 2 SMI, 4 NMI, 5 INIT, 7 ExtINT.
    pub delivery_mode: u8,
    pub logical: bool,
    /// APIC ID (physical) or logical destination (8 bits, as the redirection entry holds it).
    pub dest: u8,
    pub level: bool,
}

impl Message {
    /// The message as the ICR of an equivalent IPI, so one destination and delivery rule serves
    /// both (`apic::icr::decide`): 8-bit destination (0xFF broadcast), no shorthand.
    pub fn icr(&self) -> crate::apic::icr::Icr {
        let low = self.vector as u32
            | (self.delivery_mode as u32) << 8
            | (self.logical as u32) << 11
            | 1 << 14
            | (self.level as u32) << 15;
        crate::apic::icr::Icr::xapic(low, (self.dest as u32) << 24)
    }
}

pub struct IoApic {
    id: u8,
    select: u8,
    table: [u64; PINS],
    /// The level of each input pin (active high: polarity is not modelled, ISA lines are
    /// active high and the MADT says so).
    pins: u32,
}

impl IoApic {
    /// Reset state: every entry masked, edge, vector 0.
    pub fn new(id: u8) -> Self {
        Self { id: id & 0xf, select: 0, table: [entry::MASKED; PINS], pins: 0 }
    }

    fn message(&self, pin: usize) -> Message {
        let e = self.table[pin];
        Message {
            vector: (e & entry::VECTOR) as u8,
            delivery_mode: ((e >> entry::DELIVERY_MODE_SHIFT) & 7) as u8,
            logical: e & entry::LOGICAL != 0,
            dest: (e >> entry::DEST_SHIFT) as u8,
            level: e & entry::LEVEL != 0,
        }
    }

    /// Sends for `pin` if its entry and line say so now (level-triggered: the line is high and
    /// remote IRR is clear; then remote IRR is set).
    fn poll_level(&mut self, pin: usize) -> Option<Message> {
        let e = self.table[pin];
        let high = self.pins & (1 << pin) != 0;
        if e & entry::LEVEL == 0 || e & entry::MASKED != 0 || e & entry::REMOTE_IRR != 0 || !high {
            return None;
        }
        self.table[pin] |= entry::REMOTE_IRR;
        Some(self.message(pin))
    }

    /// Drives input `pin` high or low; the message to send, if any.
    pub fn set_pin(&mut self, pin: usize, high: bool) -> Option<Message> {
        if pin >= PINS {
            return None;
        }
        let was = self.pins & (1 << pin) != 0;
        if high {
            self.pins |= 1 << pin;
        } else {
            self.pins &= !(1 << pin);
        }
        let e = self.table[pin];
        if e & entry::LEVEL == 0 {
            (high && !was && e & entry::MASKED == 0).then(|| self.message(pin))
        } else {
            self.poll_level(pin)
        }
    }

    /// A local APIC's EOI for `vector` reached the I/O APIC (the EOI broadcast): every level
    /// entry with that vector clears remote IRR, masked or not (82093AA §3.2.4: remote IRR is
    /// reset when the EOI with a matching vector is received), and each whose line is still
    /// high and which is unmasked sends again: pins sharing a vector each get their message.
    pub fn eoi(&mut self, vector: u8) -> alloc::vec::Vec<Message> {
        let mut out = alloc::vec::Vec::new();
        for pin in 0..PINS {
            let e = self.table[pin];
            if e & entry::LEVEL != 0 && e & entry::VECTOR == vector as u64 && e & entry::REMOTE_IRR != 0 {
                self.table[pin] &= !entry::REMOTE_IRR;
                out.extend(self.poll_level(pin));
            }
        }
        out
    }

    /// The vectors of level-triggered entries (256 bits), masked ones included: an entry
    /// masked after it sent still waits for its EOI, which must reach the I/O APIC or its
    /// remote IRR would stay set and the line stay dead.
    pub fn level_vectors(&self) -> [u64; 4] {
        let mut set = [0u64; 4];
        for e in self.table {
            if e & entry::LEVEL != 0 {
                let v = (e & entry::VECTOR) as usize;
                set[v / 64] |= 1 << (v % 64);
            }
        }
        set
    }

    fn register(&self, index: u8) -> u32 {
        match index {
            REG_ID => (self.id as u32) << 24,
            REG_VERSION => VERSION,
            REG_ARBITRATION => (self.id as u32) << 24,
            i if (REG_TABLE..REG_TABLE + 2 * PINS as u8).contains(&i) => {
                let e = self.table[((i - REG_TABLE) / 2) as usize];
                if i % 2 == 0 { e as u32 } else { (e >> 32) as u32 }
            }
            _ => 0,
        }
    }

    fn set_register(&mut self, index: u8, value: u32) -> Option<Message> {
        match index {
            REG_ID => {
                self.id = ((value >> 24) & 0xf) as u8;
                None
            }
            i if (REG_TABLE..REG_TABLE + 2 * PINS as u8).contains(&i) => {
                let pin = ((i - REG_TABLE) / 2) as usize;
                let old = self.table[pin];
                let new = if i % 2 == 0 {
                    (old & !0xffff_ffff) | value as u64
                } else {
                    (old & 0xffff_ffff) | ((value as u64) << 32)
                };
                let mut e = (old & !entry::WRITABLE) | (new & entry::WRITABLE);
                // Switching an entry to edge clears remote IRR, which only level entries use.
                if e & entry::LEVEL == 0 {
                    e &= !entry::REMOTE_IRR;
                }
                self.table[pin] = e & !entry::DELIVERY_STATUS;
                // Unmasking a level entry whose line is high sends at once.
                self.poll_level(pin)
            }
            // Version and arbitration are read-only.
            _ => None,
        }
    }

    /// An MMIO read at `offset` in the window: only aligned 32-bit accesses of IOREGSEL and
    /// IOWIN are defined; anything else reads 0.
    pub fn read(&self, offset: u64, size: u8) -> u32 {
        match (offset, size) {
            (IOREGSEL, 4) => self.select as u32,
            (IOWIN, 4) => self.register(self.select),
            _ => 0,
        }
    }

    /// An MMIO write; the message it causes (unmasking a level entry whose line is high).
    pub fn write(&mut self, offset: u64, size: u8, value: u32) -> Option<Message> {
        match (offset, size) {
            (IOREGSEL, 4) => {
                self.select = value as u8;
                None
            }
            (IOWIN, 4) => self.set_register(self.select, value),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(io: &mut IoApic, reg: u8, value: u32) -> Option<Message> {
        io.write(IOREGSEL, 4, reg as u32);
        io.write(IOWIN, 4, value)
    }

    fn get(io: &mut IoApic, reg: u8) -> u32 {
        io.write(IOREGSEL, 4, reg as u32);
        io.read(IOWIN, 4)
    }

    #[test]
    fn identification_registers() {
        let mut io = IoApic::new(4);
        assert_eq!(get(&mut io, REG_ID), 4 << 24);
        assert_eq!(get(&mut io, REG_VERSION), 0x0017_0011, "24 entries, version 0x11");
        set(&mut io, REG_ID, 9 << 24);
        assert_eq!(get(&mut io, REG_ID), 9 << 24);
        set(&mut io, REG_VERSION, 0);
        assert_eq!(get(&mut io, REG_VERSION), 0x0017_0011, "read-only");
        assert_eq!(io.read(IOREGSEL, 4), REG_VERSION as u32);
        assert_eq!(io.read(IOWIN, 2), 0, "only 32-bit accesses are defined");
        for pin in 0..PINS as u8 {
            assert_eq!(get(&mut io, REG_TABLE + 2 * pin), 1 << 16, "masked at reset");
        }
    }

    #[test]
    fn edge_entries_send_on_rising_edges_only_when_unmasked() {
        let mut io = IoApic::new(0);
        assert_eq!(io.set_pin(4, true), None, "masked");
        io.set_pin(4, false);
        set(&mut io, REG_TABLE + 9, 2 << 24); // destination APIC 2
        set(&mut io, REG_TABLE + 8, 0x34); // vector 0x34, fixed, physical, edge, unmasked
        let m = Message { vector: 0x34, delivery_mode: 0, logical: false, dest: 2, level: false };
        assert_eq!(io.set_pin(4, true), Some(m));
        assert_eq!(io.set_pin(4, true), None, "no edge while high");
        io.set_pin(4, false);
        assert_eq!(io.set_pin(4, true), Some(m));
        assert_eq!(get(&mut io, REG_TABLE + 8) & (1 << 14), 0, "edge entries never set remote IRR");
    }

    #[test]
    fn level_entries_hold_until_eoi_and_resend_while_high() {
        let mut io = IoApic::new(0);
        io.set_pin(9, true);
        // Unmasking a level entry with its line high sends at once, and sets remote IRR.
        let sent = set(&mut io, REG_TABLE + 18, 0x41 | (1 << 15) | (1 << 11));
        assert_eq!(sent, Some(Message { vector: 0x41, delivery_mode: 0, logical: true, dest: 0, level: true }));
        assert_ne!(get(&mut io, REG_TABLE + 18) & (1 << 14), 0, "remote IRR");
        assert_eq!(io.set_pin(9, true), None, "held by remote IRR");
        assert_eq!(io.eoi(0x40), [], "another vector's EOI");
        assert_eq!(io.eoi(0x41).len(), 1, "EOI with the line still high sends again");
        io.set_pin(9, false);
        assert_eq!(io.eoi(0x41), [], "EOI with the line low only re-arms");
        assert_eq!(get(&mut io, REG_TABLE + 18) & (1 << 14), 0);
        assert!(io.set_pin(9, true).is_some());
    }

    #[test]
    fn a_masked_entry_still_takes_its_eoi() {
        let mut io = IoApic::new(0);
        set(&mut io, REG_TABLE + 2, 0x51 | (1 << 15));
        assert!(io.set_pin(1, true).is_some());
        set(&mut io, REG_TABLE + 2, 0x51 | (1 << 15) | (1 << 16)); // masked while in service
        assert_eq!(io.level_vectors(), [0, 1 << (0x51 - 64), 0, 0], "its EOIs must still exit");
        assert_eq!(io.eoi(0x51), [], "masked: re-armed, nothing sent");
        assert_eq!(get(&mut io, REG_TABLE + 2) & (1 << 14), 0, "remote IRR cleared");
        let again = set(&mut io, REG_TABLE + 2, 0x51 | (1 << 15));
        assert!(again.is_some(), "unmasking with the line still high sends: the line is alive");
    }

    #[test]
    fn pins_sharing_a_vector_each_send_after_the_eoi() {
        let mut io = IoApic::new(0);
        set(&mut io, REG_TABLE + 6, 0x61 | (1 << 15));
        set(&mut io, REG_TABLE + 8, 0x61 | (1 << 15));
        assert!(io.set_pin(3, true).is_some());
        assert!(io.set_pin(4, true).is_some());
        assert_eq!(io.eoi(0x61).len(), 2, "both lines still high: both send again");
    }

    #[test]
    fn messages_read_as_ipis() {
        use crate::apic::icr::{DeliveryMode, Shorthand};
        let m = Message { vector: 0x34, delivery_mode: 0, logical: false, dest: 2, level: true };
        let icr = m.icr();
        assert_eq!((icr.vector, icr.mode, icr.logical, icr.dest), (0x34, DeliveryMode::Fixed, false, 2));
        assert_eq!((icr.shorthand, icr.level_triggered, icr.assert), (Shorthand::None, true, true));
        let nmi = Message { vector: 0, delivery_mode: 4, logical: true, dest: 0xff, level: false };
        assert_eq!((nmi.icr().mode, nmi.icr().logical, nmi.icr().dest), (DeliveryMode::Nmi, true, 0xff));
        let extint = Message { delivery_mode: 7, ..m };
        assert_eq!(extint.icr().mode, DeliveryMode::Reserved(7));
    }

    #[test]
    fn read_only_bits_and_pins_out_of_range() {
        let mut io = IoApic::new(0);
        set(&mut io, REG_TABLE, 0xffff_ffff);
        assert_eq!(get(&mut io, REG_TABLE), 0x0001_afff, "delivery status and remote IRR read-only, reserved 0");
        set(&mut io, REG_TABLE + 1, 0xffff_ffff);
        assert_eq!(get(&mut io, REG_TABLE + 1), 0xff00_0000, "destination only");
        assert_eq!(io.set_pin(PINS, true), None);
        assert_eq!(get(&mut io, REG_TABLE + 2 * PINS as u8), 0, "past the table");
    }
}
