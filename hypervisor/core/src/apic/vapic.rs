//! The virtual-APIC page (SDM Vol. 3C §30.1.1; its offsets: `super::regs`): initial values, and the VIRR
//! and RVI updates the hypervisor makes when it delivers an interrupt itself (self-IPIs, and
//! folding a descriptor's PIR in before a VM entry, §30.6).

use core::sync::atomic::{AtomicU32, Ordering};

use super::regs::{
    DFR, END, EOI, ESR, ICR_HI, ICR_LO, ID, IRR, ISR, LDR, LVT_CMCI, LVT_ERROR, LVT_MASKED, LVT_THERMAL, LVT_TIMER,
    LVTS, PPR, SVR, SVR_APIC_ENABLED, TIMER_CURRENT, TIMER_DIVIDE, TIMER_INITIAL, TMR, TPR, VERSION, msr, vector_bit,
    x2apic_offset,
};

/// Version register: version 0x14 (integrated APIC), 6 LVT entries (max LVT index 5).
pub const VERSION_VALUE: u32 = 0x0005_0014;

/// An xAPIC register read the hypervisor completes (an APIC-access exit for a register the
/// processor does not virtualize, an APIC moved away from the APIC-access page, and every read
/// on the injection path): each register as the page holds it, PPR as `ppr` (the processor's
/// VPPR in the page with virtual-interrupt delivery, the model's on the injection path), the
/// timer's `current_count`, 0 for EOI, APR and RRD (not implemented by x2APIC-era processors'
/// xAPIC) and reserved offsets. The SDM defines only aligned 32-bit accesses (Vol. 3A §12.4.1);
/// a narrower read within a register's first four bytes reads those bytes, as APIC-register
/// virtualization does (Vol. 3C §30.4.2), and any other form reads 0, as under KVM.
pub fn read_register(page: &VirtualApicPage<'_>, offset: usize, size: u8, current_count: u32, ppr: u32) -> u32 {
    let within = offset & 0xf;
    if offset >= END || !matches!(size, 1 | 2 | 4) || within + size as usize > 4 {
        return 0;
    }
    let reg = offset - within;
    let word = match reg {
        PPR => ppr,
        TIMER_CURRENT => current_count,
        // ISR, TMR and IRR; the LVTs, ICR, initial count.
        ID | VERSION | TPR | LDR | DFR | SVR | ESR | ISR..ESR | LVT_CMCI..=TIMER_INITIAL | TIMER_DIVIDE => {
            page.read(reg)
        }
        _ => 0,
    };
    let bits = 8 * size as u32;
    (word >> (8 * within)) & if bits == 32 { u32::MAX } else { (1 << bits) - 1 }
}

/// RDMSR of x2APIC register `m` (0x800-0x8FF; SDM Vol. 3A §12.12.1.2, Table 12-6) that the
/// hypervisor completes, with PPR and the current count as for [`read_register`]; `None` for
/// #GP (write-only, reserved or nonexistent: EOI, SELF IPI, the xAPIC-only APR, RRD, DFR and
/// ICR_HI).
pub fn read_x2apic_register(page: &VirtualApicPage<'_>, m: u32, current_count: u32, ppr: u32) -> Option<u64> {
    Some(match m {
        msr::PPR => ppr as u64,
        msr::TIMER_CURRENT => current_count as u64,
        // The 64-bit ICR sits at 0x300-0x307, as x2APIC virtualization reads and writes it (SDM
        // Vol. 3C §30.5), not at the xAPIC ICR_HI.
        msr::ICR => page.read(ICR_LO) as u64 | (page.read(ICR_LO + 4) as u64) << 32,
        msr::ID
        | msr::VERSION
        | msr::TPR
        | msr::LDR
        | msr::SVR
        | msr::ISR0..=msr::IRR7
        | msr::ESR
        | msr::LVT_CMCI
        | msr::LVT_TIMER..=msr::TIMER_INITIAL
        | msr::TIMER_DIVIDE => page.read(x2apic_offset(m)) as u64,
        _ => return None,
    })
}

/// The register an xAPIC write of `size` bytes at `offset` reaches: only an aligned 32-bit
/// write inside the register space does (SDM Vol. 3A §12.4.1); other forms are model-specific,
/// and this APIC drops them, as KVM's does.
pub fn write_target(offset: usize, size: u8) -> Option<usize> {
    (offset < END && size == 4 && offset.is_multiple_of(16)).then_some(offset)
}

/// What a register write asks of the vCPU beyond the value `store` kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    Done,
    /// EOI: the path's EOI (the modelled APIC's, or EOI virtualization's) retires a vector.
    Eoi,
    /// Send the IPI the ICR now holds.
    Icr,
    /// A timer register (offset, value) for the timer model.
    Timer(usize, u32),
    /// x2APIC SELF IPI with this vector.
    SelfIpi(u8),
    /// SVR changed: software enable or disable (§12.4.7.2).
    Svr,
    /// An LVT entry (not the timer's) at this offset: masked while software-disabled.
    Lvt(usize),
    /// The ID register: this hypervisor's APIC IDs are the vCPU indices and stay so.
    Id,
}

/// Stores a write of `value` to register `offset` (an xAPIC offset; x2APIC MSR `m` is offset
/// `(m & 0xff) << 4`) as the APIC keeps it: reserved bits read 0, read-only registers ignore
/// it (SDM Vol. 3A §12.4-§12.9). Returns what else the write asks for.
pub fn store(page: &VirtualApicPage<'_>, offset: usize, value: u32) -> Write {
    let keep = |mask: u32| page.write(offset, value & mask);
    match offset {
        ID => return Write::Id,
        TPR => keep(0xff),
        EOI => return Write::Eoi,
        LDR => keep(0xff00_0000),
        DFR => page.write(offset, value | 0x0fff_ffff),
        // Vector, APIC enable, focus checking, EOI-broadcast suppression.
        SVR => {
            keep(0x13ff);
            return Write::Svr;
        }
        // A write rearms the error register, which this APIC never sets.
        ESR => keep(0),
        ICR_LO => {
            // Delivery status (bit 12) reads 0: the IPI is sent at once.
            keep(!(1 << 12));
            return Write::Icr;
        }
        ICR_HI => keep(0xff00_0000),
        LVT_TIMER | TIMER_INITIAL | TIMER_DIVIDE => return Write::Timer(offset, value),
        // LVT CMCI, thermal, performance, LINT0, LINT1, error: vector, delivery mode,
        // polarity, trigger mode and mask (SDM Vol. 3A §12.5.1, Figure 12-8).
        LVT_CMCI | LVT_THERMAL..=LVT_ERROR => {
            keep(0x0001_a7ff);
            return Write::Lvt(offset);
        }
        _ => {}
    }
    Write::Done
}

/// EOI virtualization done by the hypervisor, for an EOI write it completes itself (an APIC
/// moved away from the APIC-access page) with virtual-interrupt delivery (SDM Vol. 3C §30.1.4):
/// VISR[SVI] cleared and SVI set to the highest vector left in VISR. Returns the new guest
/// interrupt status and the vector retired (its EOI-exit bit says whether the I/O APIC hears
/// of it); VM entry then does PPR virtualization and evaluates pending interrupts (§27.3.2.5).
pub fn virtual_eoi(page: &VirtualApicPage<'_>, status: u16) -> (u16, u8) {
    let vector = (status >> 8) as u8;
    let (off, bit) = vector_bit(ISR, vector);
    page.write(off, page.read(off) & !bit);
    let svi = (0..8).rev().find_map(|r| {
        let bits = page.read(ISR + r * 0x10);
        (bits != 0).then(|| (r * 32 + 31 - bits.leading_zeros() as usize) as u8)
    });
    ((status & 0xff) | (svi.unwrap_or(0) as u16) << 8, vector)
}

/// The page as 32-bit registers (1024 of them; each APIC register sits at a 16-byte offset).
/// Atomics, never `&mut`: the processor writes the page while the vCPU runs (virtual EOI,
/// posted-interrupt processing, virtualized APIC writes) and other CPUs read it (LDR and DFR
/// for logical destinations), so no reference may claim it exclusively.
pub struct VirtualApicPage<'a>(pub &'a [AtomicU32; 1024]);

impl VirtualApicPage<'_> {
    pub fn read(&self, offset: usize) -> u32 {
        self.0[offset / 4].load(Ordering::Relaxed)
    }

    pub fn write(&self, offset: usize, v: u32) {
        self.0[offset / 4].store(v, Ordering::Relaxed);
    }

    /// Resets the page to the power-on values of a vCPU with virtual APIC ID `id`, in xAPIC or
    /// x2APIC format (SDM Vol. 3A §12.4.7.1; x2APIC: §12.12.5.1).
    pub fn reset(&self, id: u32, x2apic: bool) {
        for r in self.0 {
            r.store(0, Ordering::Relaxed);
        }
        self.write(VERSION, VERSION_VALUE);
        self.write(DFR, 0xffff_ffff);
        self.write(SVR, 0xff);
        for lvt in LVTS {
            self.write(lvt, LVT_MASKED);
        }
        self.set_mode(id, x2apic);
    }

    /// Rewrites the ID (and, for x2APIC, the read-only LDR) for a mode switch.
    pub fn set_mode(&self, id: u32, x2apic: bool) {
        if x2apic {
            self.write(ID, id);
            self.write(LDR, super::icr::x2apic_logical_id(id));
        } else {
            self.write(ID, id << 24);
        }
    }

    /// Sets VIRR bit `vector` (SDM Vol. 3C §30.1.1: IRR at 0x200, 8 registers of 32 bits).
    pub fn set_irr(&self, vector: u8) {
        let (off, bit) = vector_bit(IRR, vector);
        self.write(off, self.read(off) | bit);
    }

    /// Records the trigger mode of an accepted fixed interrupt in TMR (SDM Vol. 3A §12.8.4:
    /// set for level-triggered, cleared for edge-triggered). One atomic read-modify-write:
    /// the sender's CPU does it, whichever vCPU owns the page.
    pub fn set_tmr(&self, vector: u8, level: bool) {
        let (off, bit) = vector_bit(TMR, vector);
        let reg = &self.0[off / 4];
        if level {
            reg.fetch_or(bit, Ordering::Relaxed);
        } else if reg.load(Ordering::Relaxed) & bit != 0 {
            reg.fetch_and(!bit, Ordering::Relaxed);
        }
    }

    /// ORs a descriptor's PIR (256 bits) into VIRR; returns the highest vector set, if any.
    pub fn merge_pir(&self, pir: [u64; 4]) -> Option<u8> {
        for (i, word) in pir.iter().enumerate() {
            for half in 0..2 {
                let bits = (word >> (32 * half)) as u32;
                if bits != 0 {
                    let off = IRR + (i * 2 + half) * 0x10;
                    let v = self.read(off) | bits;
                    self.write(off, v);
                }
            }
        }
        self.highest_irr()
    }

    /// The highest vector pending in VIRR.
    pub fn highest_irr(&self) -> Option<u8> {
        (0..8).rev().find_map(|r| {
            let bits = self.read(IRR + r * 0x10);
            (bits != 0).then(|| (r * 32 + 31 - bits.leading_zeros() as usize) as u8)
        })
    }
}

/// Whether the APIC is software-enabled (SVR bit 8; §12.4.7.2).
pub fn software_enabled(page: &VirtualApicPage<'_>) -> bool {
    page.read(SVR) & SVR_APIC_ENABLED != 0
}

/// Masks every LVT entry, as clearing SVR bit 8 does; the masks stay set until the APIC is
/// software-enabled again (SDM Vol. 3A §12.4.7.2).
pub fn mask_every_lvt(page: &VirtualApicPage<'_>) {
    for lvt in LVTS {
        page.write(lvt, page.read(lvt) | LVT_MASKED);
    }
}

/// Whether a virtual interrupt is recognized: RVI[7:4] > VPPR[7:4] (SDM Vol. 3C §30.2.1,
/// "Evaluation of Pending Virtual Interrupts"). `vppr` is the PPR register of the virtual-APIC page.
pub fn virtual_interrupt_recognized(rvi: u8, vppr: u32) -> bool {
    rvi >> 4 > ((vppr >> 4) & 0xf) as u8
}

/// Whether a vCPU halted with `hlt = exit` wakes: a recognized virtual interrupt wakes it only
/// if the guest can take it (RFLAGS.IF = 1; HLT with IF = 0 waits for an NMI, INIT or reset,
/// SDM Vol. 2A "HLT"); a pending NMI always does.
pub fn hlt_wakes(rvi: u8, vppr: u32, interrupts_enabled: bool, nmi_pending: bool) -> bool {
    nmi_pending || (interrupts_enabled && virtual_interrupt_recognized(rvi, vppr))
}

/// The guest-interrupt-status field with RVI raised to at least `vector` (SVI kept).
pub fn raise_rvi(status: u16, vector: u8) -> u16 {
    let rvi = (status & 0xff) as u8;
    (status & 0xff00) | rvi.max(vector) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apic::regs::LVT_LINT0;

    #[test]
    fn reset_values_by_mode() {
        let regs = [const { AtomicU32::new(0) }; 1024];
        let p = VirtualApicPage(&regs);
        p.reset(3, false);
        assert_eq!(p.read(ID), 3 << 24);
        assert_eq!(p.read(VERSION), VERSION_VALUE);
        assert_eq!(p.read(DFR), 0xffff_ffff);
        assert_eq!(p.read(LVT_LINT0), 1 << 16);
        p.set_mode(17, true);
        assert_eq!(p.read(ID), 17);
        assert_eq!(p.read(LDR), 0x0001_0002);
    }

    #[test]
    fn software_disable_masks_every_lvt() {
        let regs = [const { AtomicU32::new(0) }; 1024];
        let p = VirtualApicPage(&regs);
        p.reset(0, false);
        assert!(!software_enabled(&p), "SVR is 0xFF after reset: software-disabled");
        p.write(SVR, 0x1ff);
        assert!(software_enabled(&p));
        p.write(LVT_LINT0, 0x700);
        p.write(LVT_TIMER, 0xec);
        mask_every_lvt(&p);
        assert_eq!(p.read(LVT_LINT0), 0x700 | LVT_MASKED, "delivery mode kept");
        assert_eq!(p.read(LVT_TIMER), 0xec | LVT_MASKED);
    }

    #[test]
    fn irr_bits_and_pir_merge() {
        let regs = [const { AtomicU32::new(0) }; 1024];
        let p = VirtualApicPage(&regs);
        assert_eq!(p.highest_irr(), None);
        p.set_irr(0x41);
        assert_eq!(p.read(IRR + 0x20), 1 << 1);
        assert_eq!(p.highest_irr(), Some(0x41));
        let mut pir = [0u64; 4];
        pir[1] = 1 << 63; // vector 127
        pir[0] = 1 << 33; // vector 33
        assert_eq!(p.merge_pir(pir), Some(127));
        assert_eq!(p.read(IRR + 0x30), 1 << 31);
        assert_eq!(p.read(IRR + 0x10), 1 << 1);
        assert_eq!(p.read(IRR + 0x20), 1 << 1, "earlier bits kept");
    }

    #[test]
    fn a_halted_vcpu_wakes_only_for_what_it_would_take() {
        // RVI 0x41 against VPPR 0x40: same priority class, not recognized (PPR masks it).
        assert!(!hlt_wakes(0x41, 0x40, true, false));
        assert!(hlt_wakes(0x51, 0x40, true, false));
        assert!(!hlt_wakes(0x00, 0x00, true, false), "nothing pending");
        // IF = 0: interrupts do not end HLT, NMIs do.
        assert!(!hlt_wakes(0xf1, 0x00, false, false));
        assert!(hlt_wakes(0x00, 0xf0, false, true));
    }

    #[test]
    fn register_reads_and_writes() {
        let regs = [const { AtomicU32::new(0) }; 1024];
        let page = VirtualApicPage(&regs);
        page.reset(1, false);
        page.write(PPR, 0x40);
        assert_eq!(read_register(&page, PPR, 4, 0, 0x50), 0x50, "PPR as the caller has it");
        assert_eq!(read_register(&page, TIMER_CURRENT, 4, 1234, 0), 1234, "the timer model's count");
        assert_eq!(read_register(&page, LVT_CMCI, 4, 0, 0), 1 << 16, "masked at reset");
        assert_eq!(read_register(&page, 0x40, 4, 0, 0), 0, "reserved");
        assert_eq!(read_register(&page, VERSION + 2, 2, 0, 0), VERSION_VALUE >> 16, "a 16-bit half");
        assert_eq!(read_register(&page, VERSION, 1, 0, 0), 0x14, "a byte");
        assert_eq!(read_register(&page, VERSION + 3, 2, 0, 0), 0, "across the register: 0");
        assert_eq!(read_register(&page, PPR, 8, 0, 0x50), 0, "8 bytes: 0");
        assert_eq!(read_register(&page, END, 4, 0, 0), 0, "beyond the registers");
        assert_eq!(write_target(SVR, 4), Some(SVR));
        assert_eq!(write_target(SVR, 1), None, "a narrow write is dropped");
        assert_eq!(write_target(SVR + 4, 4), None);
        assert_eq!(write_target(0xff0, 4), None);
        assert_eq!(store(&page, LVT_CMCI, 0xffff_ffff), Write::Lvt(LVT_CMCI));
        assert_eq!(page.read(LVT_CMCI), 0x0001_a7ff);
        assert_eq!(store(&page, PPR, 0xff), Write::Done);
        assert_eq!(page.read(PPR), 0x40, "read-only");
        assert_eq!(store(&page, LDR, 0x0312_3456), Write::Done);
        assert_eq!(page.read(LDR), 0x0300_0000);
        assert_eq!(store(&page, DFR, 0), Write::Done);
        assert_eq!(page.read(DFR), 0x0fff_ffff);
        assert_eq!(store(&page, ICR_LO, 0x1041), Write::Icr);
        assert_eq!(page.read(ICR_LO), 0x41, "delivery status reads idle");
        assert_eq!(store(&page, TIMER_INITIAL, 1000), Write::Timer(TIMER_INITIAL, 1000));
        assert_eq!(store(&page, ID, 0x0500_0000), Write::Id);
        assert_eq!(store(&page, SVR, 0x1ff), Write::Svr);
        assert_eq!(store(&page, EOI, 0), Write::Eoi);
    }

    #[test]
    fn tmr_follows_the_trigger_mode() {
        let regs = [const { AtomicU32::new(0) }; 1024];
        let page = VirtualApicPage(&regs);
        page.set_tmr(0x61, true);
        assert_eq!(page.read(TMR + 0x30), 1 << 1);
        page.set_tmr(0x61, false);
        assert_eq!(page.read(TMR + 0x30), 0);
    }

    #[test]
    fn eoi_virtualization_in_software() {
        let regs = [const { AtomicU32::new(0) }; 1024];
        let page = VirtualApicPage(&regs);
        page.write(ISR + 0x20, 1 << 1); // 0x41
        page.write(ISR + 0x30, 1 << 2); // 0x62
        let (status, vector) = virtual_eoi(&page, 0x6230);
        assert_eq!((status, vector), (0x4130, 0x62), "SVI drops to the next in-service vector");
        assert_eq!(virtual_eoi(&page, status), (0x0030, 0x41));
    }

    #[test]
    fn rvi_only_rises() {
        assert_eq!(raise_rvi(0x3040, 0x41), 0x3041);
        assert_eq!(raise_rvi(0x3050, 0x41), 0x3050);
    }
}
