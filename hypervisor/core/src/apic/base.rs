//! IA32_APIC_BASE (MSR 0x1B) and the local APIC's global state machine (SDM Vol. 3A §12.4.3
//! "Enabling or Disabling the Local APIC", §12.12.5 "x2APIC State Transitions", Figure 12-27):
//! which WRMSRs are legal, and what each one does to the APIC.
//!
//! - EN (bit 11) = 0 disables the APIC globally: the processor behaves as one without an on-chip
//!   APIC (CPUID.1:EDX.APIC reads 0), the APIC neither accepts nor sends interrupts, its MMIO
//!   page is not claimed, and the x2APIC MSRs raise #GP.
//! - EN = 1, EXTD (bit 10) = 0 is xAPIC mode (MMIO at the base address), EN = 1, EXTD = 1
//!   x2APIC mode (MSRs 0x800-0x8FF; the MMIO page is not claimed, §12.12.2).
//! - EN = 0, EXTD = 1 is invalid; x2APIC → xAPIC and disabled → x2APIC are illegal transitions;
//!   setting a reserved bit (0-7, 9, MAXPHYADDR and up; EXTD where CPUID.1:ECX.x2APIC is 0)
//!   raises #GP(0).
//! - Leaving the disabled state, the registers are as after power-up (§12.4.7.1) but for the
//!   APIC ID: "prior initialization ... may be lost" (§12.4.3); this model resets them when the
//!   APIC is disabled, as KVM does, so the reset is the same whichever way it is re-enabled.

/// BSP flag (bit 8): read-write, as KVM keeps it (the SDM defines no fault for it).
pub const BSP: u64 = 1 << 8;
pub const EXTD: u64 = 1 << 10;
pub const EN: u64 = 1 << 11;
/// The architectural default base (SDM Vol. 3A §12.4.1).
pub const DEFAULT_BASE: u64 = 0xfee0_0000;
/// Bits 0-7 and 9 are reserved.
const RESERVED_LOW: u64 = 0x2ff;

/// The APIC's global mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicMode {
    Disabled,
    XApic,
    X2Apic,
}

impl ApicMode {
    /// The mode an IA32_APIC_BASE value selects; `None` for the invalid EN = 0, EXTD = 1.
    pub fn of(value: u64) -> Option<Self> {
        match (value & EN != 0, value & EXTD != 0) {
            (false, false) => Some(Self::Disabled),
            (true, false) => Some(Self::XApic),
            (true, true) => Some(Self::X2Apic),
            (false, true) => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::XApic => "xapic",
            Self::X2Apic => "x2apic",
        }
    }
}

/// The APIC page's physical base in an IA32_APIC_BASE value.
pub fn base_address(value: u64) -> u64 {
    value & !0xfff
}

/// The IA32_APIC_BASE a vCPU starts with: xAPIC enabled at the default base, BSP flag on
/// vCPU 0 (SDM Vol. 3A §12.4.4).
pub fn at_reset(vcpu: u32) -> u64 {
    DEFAULT_BASE | EN | if vcpu == 0 { BSP } else { 0 }
}

/// What the guest's CPU offers that the rules depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// CPUID.80000008H:EAX[7:0]: bits from here up are reserved in the base address.
    pub max_phys_addr: u8,
    /// CPUID.1:ECX[21]: without it EXTD is reserved.
    pub x2apic: bool,
}

/// A legal WRMSR to IA32_APIC_BASE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub from: ApicMode,
    pub to: ApicMode,
    /// The new value, to store.
    pub value: u64,
}

impl Change {
    /// The value changed nothing the APIC acts on (the same mode and base; the BSP flag may
    /// differ).
    pub fn same_mode_and_base(&self, current: u64) -> bool {
        self.from == self.to && base_address(current) == base_address(self.value)
    }
}

/// Checks a WRMSR of `value` to IA32_APIC_BASE holding `current`: `None` is #GP(0).
pub fn write(current: u64, value: u64, f: Features) -> Option<Change> {
    let phys_reserved = if f.max_phys_addr >= 64 { 0 } else { !0u64 << f.max_phys_addr };
    let extd_reserved = if f.x2apic { 0 } else { EXTD };
    if value & (RESERVED_LOW | phys_reserved | extd_reserved) != 0 {
        return None;
    }
    let from = ApicMode::of(current)?;
    let to = ApicMode::of(value)?;
    match (from, to) {
        (ApicMode::X2Apic, ApicMode::XApic) | (ApicMode::Disabled, ApicMode::X2Apic) => None,
        _ => Some(Change { from, to, value }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: Features = Features { max_phys_addr: 46, x2apic: true };

    fn to(current: u64, value: u64) -> Option<ApicMode> {
        write(current, value, F).map(|c| c.to)
    }

    #[test]
    fn every_transition_of_figure_12_27() {
        let xapic = DEFAULT_BASE | EN | BSP;
        let x2apic = xapic | EXTD;
        let disabled = DEFAULT_BASE | BSP;
        assert_eq!(to(xapic, x2apic), Some(ApicMode::X2Apic));
        assert_eq!(to(xapic, disabled), Some(ApicMode::Disabled));
        assert_eq!(to(x2apic, disabled), Some(ApicMode::Disabled));
        assert_eq!(to(disabled, xapic), Some(ApicMode::XApic));
        assert_eq!(to(x2apic, xapic), None, "x2APIC to xAPIC");
        assert_eq!(to(disabled, x2apic), None, "disabled to x2APIC");
        assert_eq!(to(xapic, disabled | EXTD), None, "EN = 0, EXTD = 1 is invalid");
        assert_eq!(to(x2apic, disabled | EXTD), None);
        assert_eq!(to(disabled, disabled | EXTD), None);
        assert_eq!(to(x2apic, x2apic), Some(ApicMode::X2Apic));
        assert_eq!(to(disabled, disabled), Some(ApicMode::Disabled));
    }

    #[test]
    fn reserved_bits_fault() {
        let xapic = at_reset(0);
        assert_eq!(to(xapic, xapic | 1), None, "bit 0");
        assert_eq!(to(xapic, xapic | 1 << 9), None, "bit 9");
        assert_eq!(to(xapic, xapic | 1 << 46), None, "MAXPHYADDR");
        assert_eq!(to(xapic, xapic | 1 << 45), Some(ApicMode::XApic), "below MAXPHYADDR: an address");
        let no_x2apic = Features { x2apic: false, ..F };
        assert_eq!(write(xapic, xapic | EXTD, no_x2apic), None, "EXTD is reserved without x2APIC");
    }

    #[test]
    fn relocation_and_the_bsp_flag() {
        let xapic = at_reset(0);
        let moved = write(xapic, 0xfed4_0000 | EN | BSP, F).unwrap();
        assert_eq!((moved.from, moved.to), (ApicMode::XApic, ApicMode::XApic));
        assert!(!moved.same_mode_and_base(xapic));
        assert_eq!(base_address(moved.value), 0xfed4_0000);
        let bsp_only = write(xapic, xapic & !BSP, F).unwrap();
        assert!(bsp_only.same_mode_and_base(xapic));
        assert_eq!(at_reset(1), 0xfee0_0800);
    }
}
