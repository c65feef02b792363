//! The local APIC's register map, defined once for the workspace: the xAPIC offsets in the
//! 4-KiB APIC page (SDM Vol. 3A §12.4.1, Table 12-1), the x2APIC MSR numbers (§12.12.1.2,
//! Table 12-6), the APIC's architectural MSRs and the bit names the hypervisor, its models and
//! the test kernels share. The virtual-APIC page uses the xAPIC offsets too (SDM Vol. 3C §30.1.1).
//!
//! Offsets are `usize` (they index a page); MSR numbers `u32` (ECX of RDMSR/WRMSR).

pub const ID: usize = 0x20;
pub const VERSION: usize = 0x30;
pub const TPR: usize = 0x80;
/// Arbitration priority: xAPIC only (no x2APIC MSR).
pub const APR: usize = 0x90;
pub const PPR: usize = 0xa0;
pub const EOI: usize = 0xb0;
/// Remote read: xAPIC only.
pub const RRD: usize = 0xc0;
pub const LDR: usize = 0xd0;
/// Destination format: xAPIC only.
pub const DFR: usize = 0xe0;
pub const SVR: usize = 0xf0;
/// In-service, trigger-mode and interrupt-request registers: 8 registers of 32 bits each, one
/// every 16 bytes (vector v is bit v % 32 of register v / 32).
pub const ISR: usize = 0x100;
pub const TMR: usize = 0x180;
pub const IRR: usize = 0x200;
pub const ESR: usize = 0x280;
pub const LVT_CMCI: usize = 0x2f0;
pub const ICR_LO: usize = 0x300;
/// ICR bits 63:32: xAPIC only (the x2APIC ICR is one 64-bit MSR).
pub const ICR_HI: usize = 0x310;
pub const LVT_TIMER: usize = 0x320;
pub const LVT_THERMAL: usize = 0x330;
pub const LVT_PERF: usize = 0x340;
pub const LVT_LINT0: usize = 0x350;
pub const LVT_LINT1: usize = 0x360;
pub const LVT_ERROR: usize = 0x370;
pub const TIMER_INITIAL: usize = 0x380;
pub const TIMER_CURRENT: usize = 0x390;
pub const TIMER_DIVIDE: usize = 0x3e0;
/// SELF IPI: x2APIC only (its MSR); the offset is where APIC-register virtualization keeps it.
pub const SELF_IPI: usize = 0x3f0;
/// The register space: offsets at or above it are not registers.
pub const END: usize = 0x400;

/// The LVT entries: CMCI, timer, thermal, performance counters, LINT0, LINT1, error.
pub const LVTS: [usize; 7] = [LVT_CMCI, LVT_TIMER, LVT_THERMAL, LVT_PERF, LVT_LINT0, LVT_LINT1, LVT_ERROR];

/// The 16-byte-aligned offset of the 32-bit register holding bit `vector` of the 256-bit
/// register at `base` (ISR, TMR, IRR), and that bit's mask.
pub const fn vector_bit(base: usize, vector: u8) -> (usize, u32) {
    (base + (vector as usize / 32) * 0x10, 1 << (vector % 32))
}

/// The x2APIC MSR range (SDM Vol. 3A §12.12.1.2): MSR 0x800 + (xAPIC offset >> 4).
pub const X2APIC_MSR_FIRST: u32 = 0x800;
pub const X2APIC_MSR_LAST: u32 = 0x8ff;

/// The x2APIC MSR of the register at xAPIC `offset`.
pub const fn x2apic_msr(offset: usize) -> u32 {
    X2APIC_MSR_FIRST + (offset >> 4) as u32
}

/// The xAPIC offset of x2APIC MSR `msr` (its page offset under APIC-register virtualization,
/// SDM Vol. 3C §30.5).
pub const fn x2apic_offset(msr: u32) -> usize {
    ((msr & 0xff) << 4) as usize
}

/// x2APIC MSR numbers (SDM Vol. 3A Table 12-6). APR, RRD, DFR and ICR_HI have none.
pub mod msr {
    pub const ID: u32 = 0x802;
    pub const VERSION: u32 = 0x803;
    pub const TPR: u32 = 0x808;
    pub const PPR: u32 = 0x80a;
    pub const EOI: u32 = 0x80b;
    pub const LDR: u32 = 0x80d;
    pub const SVR: u32 = 0x80f;
    /// ISR0 (0x810) through IRR7 (0x827): ISR, TMR and IRR, eight MSRs each.
    pub const ISR0: u32 = 0x810;
    pub const IRR7: u32 = 0x827;
    pub const ESR: u32 = 0x828;
    pub const LVT_CMCI: u32 = 0x82f;
    pub const ICR: u32 = 0x830;
    pub const LVT_TIMER: u32 = 0x832;
    pub const LVT_THERMAL: u32 = 0x833;
    pub const LVT_PERF: u32 = 0x834;
    pub const LVT_LINT0: u32 = 0x835;
    pub const LVT_LINT1: u32 = 0x836;
    pub const LVT_ERROR: u32 = 0x837;
    pub const TIMER_INITIAL: u32 = 0x838;
    pub const TIMER_CURRENT: u32 = 0x839;
    pub const TIMER_DIVIDE: u32 = 0x83e;
    pub const SELF_IPI: u32 = 0x83f;
}

// Table 12-6 is Table 12-1 shifted: each MSR is the one its xAPIC offset gives.
const _: () = {
    use msr as m;
    let pairs = [
        (m::ID, ID),
        (m::VERSION, VERSION),
        (m::TPR, TPR),
        (m::PPR, PPR),
        (m::EOI, EOI),
        (m::LDR, LDR),
        (m::SVR, SVR),
        (m::ISR0, ISR),
        (m::IRR7, IRR + 7 * 0x10),
        (m::ESR, ESR),
        (m::LVT_CMCI, LVT_CMCI),
        (m::ICR, ICR_LO),
        (m::LVT_TIMER, LVT_TIMER),
        (m::LVT_THERMAL, LVT_THERMAL),
        (m::LVT_PERF, LVT_PERF),
        (m::LVT_LINT0, LVT_LINT0),
        (m::LVT_LINT1, LVT_LINT1),
        (m::LVT_ERROR, LVT_ERROR),
        (m::TIMER_INITIAL, TIMER_INITIAL),
        (m::TIMER_CURRENT, TIMER_CURRENT),
        (m::TIMER_DIVIDE, TIMER_DIVIDE),
        (m::SELF_IPI, SELF_IPI),
    ];
    let mut i = 0;
    while i < pairs.len() {
        assert!(pairs[i].0 == x2apic_msr(pairs[i].1) && x2apic_offset(pairs[i].0) == pairs[i].1);
        i += 1;
    }
};

/// IA32_APIC_BASE (SDM Vol. 3A §12.4.4; its bits: `super::base`).
pub const IA32_APIC_BASE: u32 = 0x1b;
/// IA32_TSC_DEADLINE (SDM Vol. 3A §12.5.4.1, Vol. 4 Table 2-2).
pub const IA32_TSC_DEADLINE: u32 = 0x6e0;

/// SVR bit 8: the APIC is software-enabled (SDM Vol. 3A §12.9, Figure 12-23).
pub const SVR_APIC_ENABLED: u32 = 1 << 8;
/// The mask bit of every LVT entry (SDM Vol. 3A Figure 12-8).
pub const LVT_MASKED: u32 = 1 << 16;
/// LVT timer mode, bits 18:17 (SDM Vol. 3A Table 12-2): 00 one-shot, 01 periodic, 10 TSC deadline.
pub const LVT_TIMER_MODE_SHIFT: u32 = 17;
pub const LVT_TIMER_PERIODIC: u32 = 1 << LVT_TIMER_MODE_SHIFT;
pub const LVT_TIMER_TSC_DEADLINE: u32 = 2 << LVT_TIMER_MODE_SHIFT;
/// Divide configuration values (bits 3, 1, 0; SDM Vol. 3A Figure 12-10).
pub const DIVIDE_BY_1: u32 = 0b1011;
pub const DIVIDE_BY_16: u32 = 0b0011;

/// ICR low-half fields (SDM Vol. 3A §12.6.1, Figure 12-12): delivery mode 10:8, destination
/// mode 11, delivery status 12 (xAPIC, read-only), level 14, trigger mode 15, shorthand 19:18.
pub const ICR_FIXED: u32 = 0;
pub const ICR_NMI: u32 = 0b100 << 8;
pub const ICR_INIT: u32 = 0b101 << 8;
pub const ICR_STARTUP: u32 = 0b110 << 8;
pub const ICR_LOGICAL: u32 = 1 << 11;
pub const ICR_DELIVERY_PENDING: u32 = 1 << 12;
pub const ICR_ASSERT: u32 = 1 << 14;
pub const ICR_LEVEL: u32 = 1 << 15;
pub const ICR_SHORTHAND_SHIFT: u32 = 18;
pub const ICR_SHORTHAND_SELF: u32 = 1 << ICR_SHORTHAND_SHIFT;
pub const ICR_SHORTHAND_ALL: u32 = 2 << ICR_SHORTHAND_SHIFT;
pub const ICR_SHORTHAND_OTHERS: u32 = 3 << ICR_SHORTHAND_SHIFT;
/// xAPIC ICR_HI: the destination sits in bits 31:24 (x2APIC: bits 63:32 of the one MSR).
pub const XAPIC_DEST_SHIFT: u32 = 24;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msrs_and_offsets_map_both_ways() {
        assert_eq!(x2apic_msr(TIMER_CURRENT), msr::TIMER_CURRENT);
        assert_eq!(x2apic_offset(msr::ICR), ICR_LO);
        assert_eq!(vector_bit(IRR, 0x41), (IRR + 0x20, 1 << 1));
        assert_eq!(vector_bit(ISR, 0xff), (ISR + 0x70, 1 << 31));
    }
}
