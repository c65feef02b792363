//! The virtual-APIC page (SDM Vol. 3C §30.1.1): register offsets, initial values, and the VIRR
//! and RVI updates the hypervisor makes when it delivers an interrupt itself (self-IPIs, and
//! folding a descriptor's PIR in before a VM entry, §30.6).

use core::sync::atomic::{AtomicU32, Ordering};

pub const ID: usize = 0x20;
pub const VERSION: usize = 0x30;
pub const TPR: usize = 0x80;
pub const PPR: usize = 0xa0;
pub const EOI: usize = 0xb0;
pub const LDR: usize = 0xd0;
pub const DFR: usize = 0xe0;
pub const SVR: usize = 0xf0;
pub const ISR: usize = 0x100;
pub const IRR: usize = 0x200;
pub const ESR: usize = 0x280;
pub const ICR_LO: usize = 0x300;
pub const ICR_HI: usize = 0x310;
pub const SELF_IPI: usize = 0x3f0;

/// SVR bit 8: the APIC is software-enabled (SDM Vol. 3A §12.9, Figure 12-23).
pub const SVR_APIC_ENABLED: u32 = 1 << 8;
/// The mask bit of every LVT entry (SDM Vol. 3A Figure 12-8).
pub const LVT_MASKED: u32 = 1 << 16;
/// The LVT entries: CMCI, timer, thermal, performance counters, LINT0, LINT1, error.
pub const LVTS: [usize; 7] = [0x2f0, 0x320, 0x330, 0x340, 0x350, 0x360, 0x370];

/// Version register: version 0x14 (integrated APIC), 6 LVT entries (max LVT index 5).
pub const VERSION_VALUE: u32 = 0x0005_0014;

/// xAPIC registers the processor does not virtualize even with APIC-register virtualization
/// (SDM Vol. 3C §30.4.2 lists the reads it virtualizes, §30.4.3.1 the writes): an access to
/// them is an APIC-access VM exit, and the hypervisor completes it.
pub const APR: usize = 0x90;
pub const RRD: usize = 0xc0;
pub const LVT_CMCI: usize = 0x2f0;
pub const TIMER_CURRENT_COUNT: usize = 0x390;

/// Why an access to the APIC-access page is not completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnvirtualizedRefusal {
    /// Not a 32-bit access at the start of a 16-byte register slot: the only form the SDM
    /// defines for xAPIC registers (Vol. 3A §12.4.1); anything else is undefined there.
    NotAligned32,
    /// Beyond the register space (offsets 0x400 and up hold no register).
    OutsideRegisters,
}

/// The value an xAPIC read the processor did not virtualize returns: PPR as the processor keeps
/// it in the virtual-APIC page (VPPR, §30.1.3), the LVT CMCI register as last written, the
/// timer's `current_count` (the vCPU's timer model has it), 0 for APR and RRD (not
/// implemented by x2APIC-era processors' xAPIC, read as 0 by Linux and ignored), and for
/// reserved offsets.
pub fn unvirtualized_read(
    page: &VirtualApicPage<'_>,
    offset: usize,
    size: u8,
    current_count: u32,
) -> Result<u32, UnvirtualizedRefusal> {
    check_register_access(offset, size)?;
    Ok(match offset {
        PPR | LVT_CMCI => page.read(offset),
        TIMER_CURRENT_COUNT => current_count,
        _ => 0,
    })
}

/// An xAPIC write the processor did not virtualize: LVT CMCI keeps its value (vector, delivery
/// mode and mask bits, as the other LVT entries); writes to read-only registers (PPR, APR,
/// RRD, the timer's current count) and to reserved offsets are ignored, as hardware does.
pub fn unvirtualized_write(
    page: &VirtualApicPage<'_>,
    offset: usize,
    size: u8,
    value: u32,
) -> Result<(), UnvirtualizedRefusal> {
    check_register_access(offset, size)?;
    if offset == LVT_CMCI {
        // Vector 7:0, delivery mode 10:8, mask 16 (SDM Vol. 3A §12.5.1).
        page.write(LVT_CMCI, value & 0x0001_07ff);
    }
    Ok(())
}

/// Whether an access is one the SDM defines for xAPIC registers: 32 bits at the start of a
/// register slot, inside the register space.
pub fn check_register_access(offset: usize, size: u8) -> Result<(), UnvirtualizedRefusal> {
    if offset >= 0x400 {
        Err(UnvirtualizedRefusal::OutsideRegisters)
    } else if size != 4 || !offset.is_multiple_of(16) {
        Err(UnvirtualizedRefusal::NotAligned32)
    } else {
        Ok(())
    }
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
        let off = IRR + (vector as usize / 32) * 0x10;
        let v = self.read(off) | 1 << (vector % 32);
        self.write(off, v);
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

    #[test]
    fn reset_values_by_mode() {
        let regs = [const { AtomicU32::new(0) }; 1024];
        let p = VirtualApicPage(&regs);
        p.reset(3, false);
        assert_eq!(p.read(ID), 3 << 24);
        assert_eq!(p.read(VERSION), VERSION_VALUE);
        assert_eq!(p.read(DFR), 0xffff_ffff);
        assert_eq!(p.read(0x350), 1 << 16);
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
        p.write(0x350, 0x700);
        p.write(0x320, 0xec);
        mask_every_lvt(&p);
        assert_eq!(p.read(0x350), 0x700 | LVT_MASKED, "delivery mode kept");
        assert_eq!(p.read(0x320), 0xec | LVT_MASKED);
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
    fn unvirtualized_registers_are_completed() {
        let regs = [const { AtomicU32::new(0) }; 1024];
        let page = VirtualApicPage(&regs);
        page.reset(1, false);
        page.write(PPR, 0x40);
        assert_eq!(unvirtualized_read(&page, PPR, 4, 0), Ok(0x40));
        assert_eq!(unvirtualized_read(&page, TIMER_CURRENT_COUNT, 4, 1234), Ok(1234), "the timer model's count");
        assert_eq!(unvirtualized_read(&page, LVT_CMCI, 4, 0), Ok(1 << 16), "masked at reset");
        assert_eq!(unvirtualized_read(&page, 0x40, 4, 0), Ok(0), "reserved");
        assert_eq!(unvirtualized_write(&page, LVT_CMCI, 4, 0xffff_ffff), Ok(()));
        assert_eq!(page.read(LVT_CMCI), 0x0001_07ff);
        assert_eq!(unvirtualized_write(&page, PPR, 4, 0xff), Ok(()));
        assert_eq!(page.read(PPR), 0x40, "read-only");
        assert_eq!(unvirtualized_read(&page, PPR + 4, 4, 0), Err(UnvirtualizedRefusal::NotAligned32));
        assert_eq!(unvirtualized_read(&page, PPR, 1, 0), Err(UnvirtualizedRefusal::NotAligned32));
        assert_eq!(unvirtualized_read(&page, 0x400, 4, 0), Err(UnvirtualizedRefusal::OutsideRegisters));
        assert_eq!(unvirtualized_write(&page, 0xff0, 4, 0), Err(UnvirtualizedRefusal::OutsideRegisters));
    }

    #[test]
    fn rvi_only_rises() {
        assert_eq!(raise_rvi(0x3040, 0x41), 0x3041);
        assert_eq!(raise_rvi(0x3050, 0x41), 0x3050);
    }
}
