//! The local APIC the hypervisor models itself on the injection path (`vmx::interrupt_path`):
//! no virtual-interrupt delivery, so IRR, ISR and PPR are the hypervisor's, kept in the
//! virtual-APIC page (which the TPR shadow already uses for VTPR, SDM Vol. 3C §30.1.1), and
//! each interrupt is injected as an event at VM entry. The rules are the local APIC's (SDM
//! Vol. 3A §12.8.3-§12.8.5): an interrupt is delivered when its priority class is above PPR's,
//! PPR is the higher of TPR and the in-service class, and EOI retires the highest in-service
//! vector. Register reads and writes that exit (every xAPIC register but TPR, every x2APIC
//! MSR) are completed here.

use super::regs::{IRR, ISR, TPR, msr, vector_bit};
use super::vapic::{self, VirtualApicPage, Write};

/// The highest vector set in the 256-bit register at `base` (ISR, IRR).
fn highest(page: &VirtualApicPage<'_>, base: usize) -> Option<u8> {
    (0..8).rev().find_map(|r| {
        let bits = page.read(base + r * 0x10);
        (bits != 0).then(|| (r * 32 + 31 - bits.leading_zeros() as usize) as u8)
    })
}

fn set_bit(page: &VirtualApicPage<'_>, base: usize, vector: u8, on: bool) {
    let (off, bit) = vector_bit(base, vector);
    let v = page.read(off);
    page.write(off, if on { v | bit } else { v & !bit });
}

/// PPR (SDM Vol. 3A §12.8.3.1): TPR if its class is at least the highest in-service vector's
/// class, else that class (low nibble 0).
pub fn ppr(page: &VirtualApicPage<'_>) -> u32 {
    let tpr = page.read(TPR) & 0xff;
    let isrv = highest(page, ISR).unwrap_or(0) as u32;
    if tpr >> 4 >= isrv >> 4 { tpr } else { isrv & 0xf0 }
}

/// The vector the APIC would deliver now: the highest requested one whose priority class is
/// above PPR's (§12.8.4).
pub fn deliverable(page: &VirtualApicPage<'_>) -> Option<u8> {
    let irr = highest(page, IRR)?;
    (irr >> 4 > (ppr(page) >> 4) as u8).then_some(irr)
}

/// The processor accepted `vector` (the injection went in): IRR → ISR, PPR follows.
pub fn acknowledge(page: &VirtualApicPage<'_>, vector: u8) {
    set_bit(page, IRR, vector, false);
    set_bit(page, ISR, vector, true);
    page.write(super::regs::PPR, ppr(page));
}

/// EOI: retires the highest in-service vector (none: ignored, as hardware does) and returns it.
pub fn eoi(page: &VirtualApicPage<'_>) -> Option<u8> {
    let v = highest(page, ISR)?;
    set_bit(page, ISR, v, false);
    page.write(super::regs::PPR, ppr(page));
    Some(v)
}

/// The TPR threshold for the TPR shadow (SDM Vol. 3C §25.6.8, §30.1.2): with the highest
/// requested vector held back by TPR alone, its class, so that the guest lowering TPR below it
/// exits and the interrupt goes in; else 0 (no exit).
pub fn tpr_threshold(page: &VirtualApicPage<'_>) -> u32 {
    let Some(irr) = highest(page, IRR) else { return 0 };
    let tpr_class = (page.read(TPR) >> 4) & 0xf;
    let isr_class = highest(page, ISR).map_or(0, |v| v >> 4) as u32;
    let class = (irr >> 4) as u32;
    if class <= tpr_class && class > isr_class { class } else { 0 }
}

/// What the next VM entry does about interrupts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Inject this vector as an external interrupt (type 0; SDM Vol. 3C §25.8.3).
    Inject(u8),
    /// The guest cannot take it yet (RFLAGS.IF = 0, blocking by STI or MOV SS, another event
    /// being injected): exit when it can ("interrupt-window exiting", §26.7.5).
    OpenWindow,
    Nothing,
}

/// `can_inject`: RFLAGS.IF = 1, no blocking by STI or MOV SS, and no event already in the
/// VM-entry interruption-information field.
pub fn at_entry(page: &VirtualApicPage<'_>, can_inject: bool) -> Entry {
    match deliverable(page) {
        Some(v) if can_inject => Entry::Inject(v),
        Some(_) => Entry::OpenWindow,
        None => Entry::Nothing,
    }
}

/// An xAPIC register read on the injection path (`vapic::read_register`, with PPR computed
/// from the model).
pub fn xapic_read(page: &VirtualApicPage<'_>, offset: usize, size: u8, current_count: u32) -> u32 {
    vapic::read_register(page, offset, size, current_count, ppr(page))
}

/// RDMSR of an x2APIC register on the injection path (`vapic::read_x2apic_register`, with
/// PPR computed from the model).
pub fn x2apic_read(page: &VirtualApicPage<'_>, m: u32, current_count: u32) -> Option<u64> {
    vapic::read_x2apic_register(page, m, current_count, ppr(page))
}

/// WRMSR of x2APIC TPR, EOI or SELF IPI, which the injection path intercepts (the other
/// registers: `x2apic_msr::write_action`); `None` for #GP (reserved bits set; EOI takes 0).
pub fn x2apic_write(page: &VirtualApicPage<'_>, m: u32, value: u64) -> Option<Write> {
    match m {
        msr::TPR if value < 0x100 => Some(vapic::store(page, TPR, value as u32)),
        msr::EOI if value == 0 => Some(Write::Eoi),
        msr::SELF_IPI if value < 0x100 => Some(Write::SelfIpi(value as u8)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apic::regs::{self, msr};
    use core::sync::atomic::AtomicU32;

    fn page(regs: &[AtomicU32; 1024]) -> VirtualApicPage<'_> {
        let p = VirtualApicPage(regs);
        p.reset(0, false);
        p
    }

    #[test]
    fn priority_rules() {
        let regs = [const { AtomicU32::new(0) }; 1024];
        let p = page(&regs);
        assert_eq!(deliverable(&p), None);
        p.set_irr(0x41);
        assert_eq!(deliverable(&p), Some(0x41));
        p.write(regs::TPR, 0x40);
        assert_eq!(deliverable(&p), None, "same class as TPR: held");
        assert_eq!(tpr_threshold(&p), 4, "lowering TPR below class 4 must exit");
        p.write(regs::TPR, 0x3f);
        assert_eq!(deliverable(&p), Some(0x41));
        assert_eq!(tpr_threshold(&p), 0);
        p.write(regs::TPR, 0);
        acknowledge(&p, 0x41);
        assert_eq!(p.read(regs::PPR), 0x40);
        assert_eq!(p.read(regs::IRR + 0x20), 0);
        assert_eq!(p.read(regs::ISR + 0x20), 1 << 1);
        p.set_irr(0x45);
        assert_eq!(deliverable(&p), None, "in-service class 4 holds class 4");
        assert_eq!(tpr_threshold(&p), 0, "the ISR, not the TPR, holds it: the EOI exits anyway");
        p.set_irr(0x51);
        assert_eq!(deliverable(&p), Some(0x51), "a higher class nests");
        acknowledge(&p, 0x51);
        assert_eq!(eoi(&p), Some(0x51));
        assert_eq!(eoi(&p), Some(0x41));
        assert_eq!(eoi(&p), None);
        assert_eq!(p.read(regs::PPR), 0);
        assert_eq!(deliverable(&p), Some(0x45));
    }

    #[test]
    fn entry_decision() {
        let regs = [const { AtomicU32::new(0) }; 1024];
        let p = page(&regs);
        assert_eq!(at_entry(&p, true), Entry::Nothing);
        p.set_irr(0xec);
        assert_eq!(at_entry(&p, false), Entry::OpenWindow);
        assert_eq!(at_entry(&p, true), Entry::Inject(0xec));
    }

    #[test]
    fn xapic_reads_compute_ppr() {
        let regs = [const { AtomicU32::new(0) }; 1024];
        let p = page(&regs);
        assert_eq!(xapic_read(&p, regs::VERSION, 4, 0), vapic::VERSION_VALUE);
        p.set_irr(0x61);
        acknowledge(&p, 0x61);
        assert_eq!(xapic_read(&p, regs::ISR + 0x30, 4, 0), 1 << 1);
        assert_eq!(xapic_read(&p, regs::PPR, 4, 0), 0x60);
        assert_eq!(eoi(&p), Some(0x61));
        assert_eq!(xapic_read(&p, regs::EOI, 4, 0), 0, "write-only");
        assert_eq!(xapic_read(&p, regs::TIMER_CURRENT, 4, 77), 77);
    }

    #[test]
    fn x2apic_registers() {
        let regs = [const { AtomicU32::new(0) }; 1024];
        let p = VirtualApicPage(&regs);
        p.reset(3, true);
        assert_eq!(x2apic_read(&p, msr::ID, 0), Some(3));
        assert_eq!(x2apic_read(&p, msr::LDR, 0), Some(8), "cluster 0, bit 3");
        assert_eq!(x2apic_read(&p, msr::EOI, 0), None, "EOI is write-only");
        assert_eq!(x2apic_read(&p, msr::SELF_IPI, 0), None, "SELF IPI is write-only");
        assert_eq!(x2apic_read(&p, msr::ICR + 1, 0), None, "no ICR high half in x2APIC mode");
        assert_eq!(x2apic_read(&p, msr::TIMER_CURRENT, 5), Some(5));
        assert_eq!(x2apic_write(&p, msr::TPR, 0x20), Some(Write::Done));
        assert_eq!(x2apic_read(&p, msr::TPR, 0), Some(0x20));
        assert_eq!(x2apic_read(&p, msr::PPR, 0), Some(0x20), "PPR follows TPR");
        assert_eq!(x2apic_write(&p, msr::TPR, 0x100), None);
        assert_eq!(x2apic_write(&p, msr::EOI, 0), Some(Write::Eoi));
        assert_eq!(x2apic_write(&p, msr::EOI, 1), None, "EOI takes 0 only");
        assert_eq!(x2apic_write(&p, msr::SELF_IPI, 0x41), Some(Write::SelfIpi(0x41)));
        p.write(regs::ICR_LO, 0x4041);
        p.write(regs::ICR_LO + 4, 7);
        assert_eq!(x2apic_read(&p, msr::ICR, 0), Some(0x7_0000_4041));
    }
}
