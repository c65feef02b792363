//! x2APIC MSRs (0x800–0x8FF) under "virtualize x2APIC mode" (SDM Vol. 3C §30.5): which pass
//! through the MSR bitmap, and what an intercepted write means. IA32_APIC_BASE: `super::base`.

use crate::vmx::path_kind::InterruptPath;

pub const X2APIC_MSR_FIRST: u32 = 0x800;
pub const X2APIC_MSR_LAST: u32 = 0x8ff;
pub const MSR_ID: u32 = 0x802;
pub const MSR_VERSION: u32 = 0x803;
pub const MSR_TPR: u32 = 0x808;
pub const MSR_PPR: u32 = 0x80a;
pub const MSR_EOI: u32 = 0x80b;
pub const MSR_LDR: u32 = 0x80d;
pub const MSR_ICR: u32 = 0x830;
pub const MSR_SELF_IPI: u32 = 0x83f;
pub const MSR_LVT_TIMER: u32 = 0x832;
pub const MSR_TIMER_INITIAL: u32 = 0x838;
pub const MSR_TIMER_CURRENT: u32 = 0x839;
pub const MSR_TIMER_DIVIDE: u32 = 0x83e;

/// MSRs whose writes go straight to the virtual APIC without an exit: TPR, EOI and self-IPI
/// are virtualized by virtual-interrupt delivery; the ICR only when IPI virtualization is on,
/// because otherwise the write would reach the *physical* ICR (SDM Vol. 3C §30.5). On the
/// injection path nothing is virtualized in x2APIC mode: every write exits.
pub fn write_passes_through(msr: u32, path: InterruptPath) -> bool {
    match path {
        InterruptPath::Injection => false,
        _ => matches!(msr, MSR_TPR | MSR_EOI | MSR_SELF_IPI) || (path == InterruptPath::Ipiv && msr == MSR_ICR),
    }
}

/// Reads of the range pass through in x2APIC mode: with APIC-register virtualization, RDMSR of
/// 0x800–0x8FF reads the virtual-APIC page at `(msr & 0xff) << 4` (SDM Vol. 3C §30.5). All but
/// the timer's current count, which only the hypervisor's timer model knows. Without it (the
/// injection path) a read that passed would reach the physical APIC: every read exits.
pub fn read_passes_through(msr: u32, path: InterruptPath) -> bool {
    path >= InterruptPath::VirtualDelivery
        && (X2APIC_MSR_FIRST..=X2APIC_MSR_LAST).contains(&msr)
        && msr != MSR_TIMER_CURRENT
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

pub fn write_action(msr: u32, value: u64) -> X2apicWrite {
    match msr {
        MSR_ICR => X2apicWrite::Icr(value),
        // Registers with 32 significant bits: upper half reserved (#GP if set).
        _ if value >> 32 != 0 => X2apicWrite::Gp,
        MSR_LVT_TIMER | MSR_TIMER_INITIAL | MSR_TIMER_DIVIDE => X2apicWrite::Timer(((msr & 0xff) << 4) as usize),
        // SVR, ESR, LVT CMCI, the other LVTs.
        0x80f | 0x828 | 0x82f | 0x833..=0x837 => X2apicWrite::Store(((msr & 0xff) << 4) as usize),
        _ => X2apicWrite::Gp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icr_passes_through_only_with_ipiv() {
        use InterruptPath::*;
        assert!(write_passes_through(MSR_EOI, Posted));
        assert!(write_passes_through(MSR_SELF_IPI, VirtualDelivery));
        assert!(!write_passes_through(MSR_ICR, Posted));
        assert!(write_passes_through(MSR_ICR, Ipiv));
        assert!(!write_passes_through(0x838, Ipiv));
        assert!(read_passes_through(MSR_ICR, Posted) && read_passes_through(MSR_ID, Ipiv));
        assert!(!read_passes_through(0x900, Posted));
        assert!(!read_passes_through(MSR_TIMER_CURRENT, Ipiv), "the current count is the timer model's");
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
        assert_eq!(write_action(MSR_ICR, 0x3_0000_0041), X2apicWrite::Icr(0x3_0000_0041));
        assert_eq!(write_action(0x80f, 0x1ff), X2apicWrite::Store(0xf0));
        assert_eq!(write_action(0x832, 0x10000), X2apicWrite::Timer(0x320));
        assert_eq!(write_action(0x838, 5), X2apicWrite::Timer(0x380));
        assert_eq!(write_action(0x83e, 0xb), X2apicWrite::Timer(0x3e0));
        assert_eq!(write_action(0x835, 0x700), X2apicWrite::Store(0x350));
        assert_eq!(write_action(MSR_TIMER_CURRENT, 0), X2apicWrite::Gp, "read-only");
        assert_eq!(write_action(0x80f, 1 << 40), X2apicWrite::Gp);
        assert_eq!(write_action(MSR_ID, 5), X2apicWrite::Gp, "the x2APIC ID is read-only");
        assert_eq!(write_action(MSR_LDR, 5), X2apicWrite::Gp, "the x2APIC LDR is read-only");
    }
}
