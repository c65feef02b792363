//! x2APIC MSRs (0x800–0x8FF) under "virtualize x2APIC mode" (SDM Vol. 3C §30.5): which pass
//! through the MSR bitmap, and what an intercepted write means. IA32_APIC_BASE: `super::base`.

use crate::vmx::path_kind::InterruptPath;

use super::regs::{X2APIC_MSR_FIRST, X2APIC_MSR_LAST, msr, x2apic_offset};

/// MSRs whose writes go straight to the virtual APIC without an exit: TPR, EOI and self-IPI
/// are virtualized by virtual-interrupt delivery; the ICR only when IPI virtualization is on,
/// because otherwise the write would reach the *physical* ICR (SDM Vol. 3C §30.5). On the
/// injection path nothing is virtualized in x2APIC mode: every write exits.
pub fn write_passes_through(m: u32, path: InterruptPath) -> bool {
    match path {
        InterruptPath::Injection => false,
        _ => matches!(m, msr::TPR | msr::EOI | msr::SELF_IPI) || (path == InterruptPath::Ipiv && m == msr::ICR),
    }
}

/// Reads of the range pass through in x2APIC mode: with APIC-register virtualization, RDMSR of
/// 0x800–0x8FF reads the virtual-APIC page at `(msr & 0xff) << 4` (SDM Vol. 3C §30.5). All but
/// the timer's current count, which only the hypervisor's timer model knows. Without it (the
/// injection path) a read that passed would reach the physical APIC: every read exits.
pub fn read_passes_through(m: u32, path: InterruptPath) -> bool {
    path >= InterruptPath::VirtualDelivery
        && (X2APIC_MSR_FIRST..=X2APIC_MSR_LAST).contains(&m)
        && m != msr::TIMER_CURRENT
}

/// An intercepted x2APIC-mode WRMSR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum X2apicWrite {
    /// Send an IPI (the exit path for WRMSR 0x830).
    Icr(u64),
    /// Store the low 32 bits at this virtual-APIC page offset (LVTs, SVR, ESR...).
    Store(usize),
    /// A timer register (LVT timer, initial count, divide configuration) at this page offset:
    /// the vCPU's APIC timer takes the value.
    Timer(usize),
    /// Read-only, reserved or nonexistent: #GP.
    Gp,
}

pub fn write_action(m: u32, value: u64) -> X2apicWrite {
    match m {
        msr::ICR => X2apicWrite::Icr(value),
        // Registers with 32 significant bits: upper half reserved (#GP if set).
        _ if value >> 32 != 0 => X2apicWrite::Gp,
        msr::LVT_TIMER | msr::TIMER_INITIAL | msr::TIMER_DIVIDE => X2apicWrite::Timer(x2apic_offset(m)),
        // SVR, ESR, LVT CMCI, the other LVTs.
        msr::SVR | msr::ESR | msr::LVT_CMCI | msr::LVT_THERMAL..=msr::LVT_ERROR => X2apicWrite::Store(x2apic_offset(m)),
        _ => X2apicWrite::Gp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apic::regs::{self, msr::*};

    #[test]
    fn icr_passes_through_only_with_ipiv() {
        use InterruptPath::*;
        assert!(write_passes_through(EOI, Posted));
        assert!(write_passes_through(SELF_IPI, VirtualDelivery));
        assert!(!write_passes_through(ICR, Posted));
        assert!(write_passes_through(ICR, Ipiv));
        assert!(!write_passes_through(TIMER_INITIAL, Ipiv));
        assert!(read_passes_through(ICR, Posted) && read_passes_through(ID, Ipiv));
        assert!(!read_passes_through(X2APIC_MSR_LAST + 1, Posted));
        assert!(!read_passes_through(TIMER_CURRENT, Ipiv), "the current count is the timer model's");
    }

    #[test]
    fn injection_intercepts_every_x2apic_msr() {
        for m in X2APIC_MSR_FIRST..=X2APIC_MSR_LAST {
            assert!(
                !read_passes_through(m, InterruptPath::Injection) && !write_passes_through(m, InterruptPath::Injection)
            );
        }
    }

    #[test]
    fn intercepted_writes() {
        assert_eq!(write_action(ICR, 0x3_0000_0041), X2apicWrite::Icr(0x3_0000_0041));
        assert_eq!(write_action(SVR, 0x1ff), X2apicWrite::Store(regs::SVR));
        assert_eq!(write_action(LVT_TIMER, 0x10000), X2apicWrite::Timer(regs::LVT_TIMER));
        assert_eq!(write_action(TIMER_INITIAL, 5), X2apicWrite::Timer(regs::TIMER_INITIAL));
        assert_eq!(write_action(TIMER_DIVIDE, 0xb), X2apicWrite::Timer(regs::TIMER_DIVIDE));
        assert_eq!(write_action(LVT_LINT0, 0x700), X2apicWrite::Store(regs::LVT_LINT0));
        assert_eq!(write_action(TIMER_CURRENT, 0), X2apicWrite::Gp, "read-only");
        assert_eq!(write_action(SVR, 1 << 40), X2apicWrite::Gp);
        assert_eq!(write_action(ID, 5), X2apicWrite::Gp, "the x2APIC ID is read-only");
        assert_eq!(write_action(LDR, 5), X2apicWrite::Gp, "the x2APIC LDR is read-only");
    }
}
