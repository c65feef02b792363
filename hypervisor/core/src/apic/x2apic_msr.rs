//! What an intercepted x2APIC-mode WRMSR (MSRs 0x800–0x8FF, SDM Vol. 3A §12.12.1.2) means. Which
//! of them pass the MSR bitmap depends on the interrupt path: `vmx::interrupt_path::PathPlan`.
//! IA32_APIC_BASE: `super::base`.

use super::regs::{msr, x2apic_offset};

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
