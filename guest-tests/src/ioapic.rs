//! The I/O APIC the MADT lists (82093AA register set): the indirect register window at its MMIO
//! address, and the redirection table.

/// Redirection-entry bits (82093AA datasheet §3.2.4).
pub mod entry {
    pub const LOGICAL: u64 = 1 << 11;
    pub const DELIVERY_STATUS: u64 = 1 << 12;
    pub const REMOTE_IRR: u64 = 1 << 14;
    pub const LEVEL: u64 = 1 << 15;
    pub const MASKED: u64 = 1 << 16;
    pub const fn dest(apic_id: u32) -> u64 {
        (apic_id as u64) << 56
    }
}

pub const REG_ID: u8 = 0x00;
pub const REG_VERSION: u8 = 0x01;
pub const REG_TABLE: u8 = 0x10;

pub struct IoApic {
    base: u64,
}

impl IoApic {
    /// The platform's I/O APIC; panics if the MADT lists none.
    pub fn of(p: &crate::Platform) -> Self {
        let (_, base, _) = p.io_apic.expect("the MADT lists an I/O APIC");
        Self { base }
    }

    /// The I/O APIC at MMIO address `base` (identity-mapped).
    pub const fn at(base: u64) -> Self {
        Self { base }
    }

    pub fn read(&self, reg: u8) -> u32 {
        mmio_write(self.base, reg as u32);
        mmio_read(self.base + 0x10)
    }

    pub fn write(&self, reg: u8, value: u32) {
        mmio_write(self.base, reg as u32);
        mmio_write(self.base + 0x10, value);
    }

    /// Redirection entries (the version register's maximum entry + 1).
    pub fn entries(&self) -> u32 {
        ((self.read(REG_VERSION) >> 16) & 0xff) + 1
    }

    pub fn entry(&self, pin: u32) -> u64 {
        let reg = REG_TABLE + 2 * pin as u8;
        self.read(reg) as u64 | (self.read(reg + 1) as u64) << 32
    }

    /// Sets an entry: the high half (destination) first, then the low half, which may unmask.
    pub fn set_entry(&self, pin: u32, value: u64) {
        let reg = REG_TABLE + 2 * pin as u8;
        self.write(reg + 1, (value >> 32) as u32);
        self.write(reg, value as u32);
    }
}

/// A 32-bit MMIO load as one MOV, as Linux's `readl` is written: a compiler may fold a volatile
/// load into another instruction (`test [mem], imm`), which device emulation need not decode.
fn mmio_read(addr: u64) -> u32 {
    let v: u32;
    // SAFETY: `addr` is a register of the identity-mapped device window.
    unsafe {
        core::arch::asm!("mov {v:e}, [{a}]", a = in(reg) addr, v = out(reg) v, options(nostack, preserves_flags))
    };
    v
}

fn mmio_write(addr: u64, value: u32) {
    // SAFETY: as in mmio_read.
    unsafe {
        core::arch::asm!("mov [{a}], {v:e}", a = in(reg) addr, v = in(reg) value, options(nostack, preserves_flags))
    };
}
