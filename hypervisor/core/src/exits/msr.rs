//! The MSR policy: an explicit allow-list. MSRs the VMCS switches (or the host never uses) pass
//! straight through the MSR bitmap; the architectural MSRs the VM's CPUID advertises are kept
//! per vCPU and read and written as the SDM defines them (writable bits writable, reserved bits
//! #GP; SDM Vol. 4 Table 2-2); every other access injects #GP, as on a processor without the
//! MSR.

use crate::apic::regs::{IA32_APIC_BASE, IA32_TSC_DEADLINE};
use crate::vmx::msr::IA32_FEATURE_CONTROL;

/// What to do with an MSR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Reads and writes go to the hardware without an exit (bitmap bits clear).
    PassThrough,
    /// Read-only: reads return the value, writes raise #GP.
    ReadOnly(u64),
    /// Reads return the value; writes are ignored.
    ReadValueIgnoreWrite(u64),
    /// A register this vCPU keeps (`MsrState`).
    Register(Register),
    /// The vCPU's APIC timer answers (IA32_TSC_DEADLINE, `apic::timer`).
    ApicTimer,
    /// The vCPU's TSC (IA32_TSC): a read is the TSC, a write moves it (SDM Vol. 3B §18.17: the
    /// hypervisor keeps the difference in the TSC offset, Vol. 3C §26.3).
    Tsc,
    /// IA32_DEBUGCTL, which the VMCS holds (`debugctl_allowed` says what a guest may set).
    Debugctl,
    /// Any access raises #GP in the guest.
    Gp,
}

/// The MSRs a vCPU keeps in `MsrState`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Register {
    MiscEnable,
    MtrrDefType,
}

pub const IA32_TSC: u32 = 0x10;
pub const IA32_PLATFORM_ID: u32 = 0x17;
pub const IA32_BIOS_SIGN_ID: u32 = 0x8b;
pub const IA32_MTRRCAP: u32 = 0xfe;
pub const IA32_SYSENTER_CS: u32 = 0x174;
pub const IA32_SYSENTER_ESP: u32 = 0x175;
pub const IA32_SYSENTER_EIP: u32 = 0x176;
pub const IA32_MISC_ENABLE: u32 = 0x1a0;
pub const IA32_DEBUGCTL: u32 = 0x1d9;
pub const IA32_PAT: u32 = 0x277;
pub const IA32_MTRR_DEF_TYPE: u32 = 0x2ff;
pub const IA32_EFER: u32 = 0xc000_0080;
pub const IA32_STAR: u32 = 0xc000_0081;
pub const IA32_LSTAR: u32 = 0xc000_0082;
pub const IA32_CSTAR: u32 = 0xc000_0083;
pub const IA32_FMASK: u32 = 0xc000_0084;
pub const IA32_FS_BASE: u32 = 0xc000_0100;
pub const IA32_GS_BASE: u32 = 0xc000_0101;
pub const IA32_KERNEL_GS_BASE: u32 = 0xc000_0102;
pub const IA32_TSC_AUX: u32 = 0xc000_0103;

/// The rule for `msr` on vCPU `vcpu`.
pub fn rule(msr: u32, vcpu: u32) -> Rule {
    match msr {
        // Switched by the VMCS on every entry and exit (guest/host EFER, PAT, SYSENTER, FS/GS
        // base), or used only by code the host never runs (SYSCALL MSRs, KERNEL_GS_BASE,
        // TSC_AUX for RDTSCP).
        IA32_EFER | IA32_PAT | IA32_SYSENTER_CS | IA32_SYSENTER_ESP | IA32_SYSENTER_EIP | IA32_FS_BASE
        | IA32_GS_BASE | IA32_KERNEL_GS_BASE | IA32_STAR | IA32_LSTAR | IA32_CSTAR | IA32_FMASK | IA32_TSC_AUX => {
            Rule::PassThrough
        }
        IA32_APIC_BASE => Rule::ReadOnly(crate::apic::base::at_reset(vcpu)),
        IA32_TSC => Rule::Tsc,
        // Locked, VMX disabled: the guest is told VMX is off; a locked register faults on
        // writes (SDM Vol. 3C §24.7).
        IA32_FEATURE_CONTROL => Rule::ReadOnly(1),
        IA32_MISC_ENABLE => Rule::Register(Register::MiscEnable),
        // No variable-range or fixed-range MTRRs, no write-combining (VCNT, FIX, WC = 0): the
        // EPT decides memory types; IA32_MTRR_DEF_TYPE is still the guest's to write.
        IA32_MTRRCAP => Rule::ReadOnly(0),
        IA32_MTRR_DEF_TYPE => Rule::Register(Register::MtrrDefType),
        IA32_PLATFORM_ID => Rule::ReadOnly(0),
        IA32_DEBUGCTL => Rule::Debugctl,
        IA32_BIOS_SIGN_ID => Rule::ReadValueIgnoreWrite(0),
        IA32_TSC_DEADLINE => Rule::ApicTimer,
        _ => Rule::Gp,
    }
}

/// MSRs whose bitmap bits are cleared (no exit).
pub const PASS_THROUGH: &[u32] = &[
    IA32_EFER,
    IA32_PAT,
    IA32_SYSENTER_CS,
    IA32_SYSENTER_ESP,
    IA32_SYSENTER_EIP,
    IA32_FS_BASE,
    IA32_GS_BASE,
    IA32_KERNEL_GS_BASE,
    IA32_STAR,
    IA32_LSTAR,
    IA32_CSTAR,
    IA32_FMASK,
    IA32_TSC_AUX,
];

/// IA32_MISC_ENABLE bits (SDM Vol. 4 Table 2-2): fast-strings enable (0) is the guest's;
/// "branch trace storage unavailable" (11) and "PEBS unavailable" (12) read 1 (no DS area is
/// offered); every other bit reads 0 and is reserved here (the features behind them, thermal
/// control, EIST, MONITOR, xTPR, limiting CPUID, XD disable, are not offered).
pub mod misc_enable {
    pub const FAST_STRINGS: u64 = 1 << 0;
    pub const BTS_UNAVAILABLE: u64 = 1 << 11;
    pub const PEBS_UNAVAILABLE: u64 = 1 << 12;
    pub const READ_ONLY: u64 = BTS_UNAVAILABLE | PEBS_UNAVAILABLE;
}

/// IA32_MTRR_DEF_TYPE (SDM Vol. 3A §13.11.2.1): type in 7:0 (UC 0, WC 1, WT 4, WP 5, WB 6),
/// fixed-range enable 10 (reserved when MTRRCAP.FIX = 0), enable 11; the rest reserved.
pub mod mtrr_def_type {
    pub const ENABLE: u64 = 1 << 11;
    pub const WB: u64 = 6;
}

/// The MSRs a vCPU keeps, at power-up values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsrState {
    misc_enable: u64,
    mtrr_def_type: u64,
}

impl Default for MsrState {
    fn default() -> Self {
        Self::new()
    }
}

impl MsrState {
    /// Fast strings on (as firmware leaves them: Linux checks it before using ERMS), MTRRs
    /// enabled with write-back as the default type (as firmware leaves them, so an OS does not
    /// run uncached).
    pub const fn new() -> Self {
        Self {
            misc_enable: misc_enable::FAST_STRINGS | misc_enable::READ_ONLY,
            mtrr_def_type: mtrr_def_type::ENABLE | mtrr_def_type::WB,
        }
    }

    pub fn read(&self, r: Register) -> u64 {
        match r {
            Register::MiscEnable => self.misc_enable,
            Register::MtrrDefType => self.mtrr_def_type,
        }
    }

    /// A WRMSR; false for #GP.
    pub fn write(&mut self, r: Register, value: u64) -> bool {
        match r {
            Register::MiscEnable => {
                // Read-only bits must be written as they read.
                let writable = misc_enable::FAST_STRINGS;
                if value & !writable != misc_enable::READ_ONLY {
                    return false;
                }
                self.misc_enable = value;
            }
            Register::MtrrDefType => {
                let reserved = !(0xff | mtrr_def_type::ENABLE);
                if value & reserved != 0 || !matches!(value & 0xff, 0 | 1 | 4 | 5 | 6) {
                    return false;
                }
                self.mtrr_def_type = value;
            }
        }
        true
    }
}

/// IA32_DEBUGCTL bits a guest may set: BTF (1, single-step on branches). LBR and the
/// performance-monitoring bits need what CPUID hides (no PMU, no LBR): reserved here, as KVM
/// treats them without those features.
pub fn debugctl_allowed(value: u64) -> bool {
    value & !(1 << 1) == 0
}

/// The outcome of an intercepted RDMSR (registers the vCPU keeps are read by the caller).
pub fn read(msr: u32, vcpu: u32) -> Option<u64> {
    match rule(msr, vcpu) {
        Rule::ReadOnly(v) | Rule::ReadValueIgnoreWrite(v) => Some(v),
        // Reached only if the bitmap did not pass it through: treat as not allowed. The timer's
        // and the TSC's MSRs and the registers are the vCPU's to answer before it asks here.
        Rule::PassThrough | Rule::Register(_) | Rule::ApicTimer | Rule::Tsc | Rule::Debugctl | Rule::Gp => None,
    }
}

/// Whether an intercepted WRMSR is accepted (and ignored).
pub fn write_ok(msr: u32, vcpu: u32, _value: u64) -> bool {
    match rule(msr, vcpu) {
        Rule::ReadValueIgnoreWrite(_) => true,
        Rule::ReadOnly(_)
        | Rule::PassThrough
        | Rule::Register(_)
        | Rule::ApicTimer
        | Rule::Tsc
        | Rule::Debugctl
        | Rule::Gp => false,
    }
}

/// Byte and bit of `msr` in the 4 KiB MSR bitmap's read-low / read-high / write-low / write-high
/// quarters (SDM Vol. 3C §25.6.9): `None` for MSRs outside both ranges (always intercepted).
pub fn bitmap_position(msr: u32, write: bool) -> Option<(usize, u8)> {
    let (base, off) = match msr {
        0..=0x1fff => (0, msr),
        0xc000_0000..=0xc000_1fff => (1024, msr - 0xc000_0000),
        _ => return None,
    };
    let base = base + if write { 2048 } else { 0 };
    Some((base + (off / 8) as usize, (off % 8) as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmcs_switched_msrs_pass_through_others_gp() {
        assert_eq!(rule(IA32_EFER, 0), Rule::PassThrough);
        assert_eq!(rule(IA32_FS_BASE, 1), Rule::PassThrough);
        assert_eq!(rule(IA32_TSC, 0), Rule::Tsc, "the vCPU's TSC offset answers");
        assert_eq!(rule(0x48, 0), Rule::Gp);
        assert_eq!(read(0x1234, 0), None);
        assert!(!write_ok(0x1234, 0, 0));
    }

    #[test]
    fn feature_control_says_locked_without_vmx() {
        assert_eq!(read(IA32_FEATURE_CONTROL, 0), Some(1));
        assert!(!write_ok(IA32_FEATURE_CONTROL, 0, 1), "locked: writes fault");
        assert!(write_ok(IA32_BIOS_SIGN_ID, 0, 0));
        assert!(!write_ok(IA32_PLATFORM_ID, 0, 0), "read-only");
    }

    #[test]
    fn misc_enable_and_mtrr_def_type_are_the_guests() {
        let mut m = MsrState::new();
        let misc = m.read(Register::MiscEnable);
        assert_eq!(misc, 1 | (1 << 11) | (1 << 12));
        assert!(m.write(Register::MiscEnable, misc & !1), "fast strings may be turned off");
        assert_eq!(m.read(Register::MiscEnable) & 1, 0);
        assert!(!m.write(Register::MiscEnable, misc | (1 << 22)), "limit CPUID maxval is not offered");
        assert!(!m.write(Register::MiscEnable, 1), "read-only bits written as they read");
        assert_eq!(m.read(Register::MtrrDefType), 0x806);
        assert!(m.write(Register::MtrrDefType, 0x800), "enabled, UC");
        assert!(!m.write(Register::MtrrDefType, 0x802), "type 2 is reserved");
        assert!(!m.write(Register::MtrrDefType, 0x806 | (1 << 10)), "fixed-range enable without fixed MTRRs");
        assert!(debugctl_allowed(2) && debugctl_allowed(0) && !debugctl_allowed(1));
        assert_eq!(rule(IA32_DEBUGCTL, 0), Rule::Debugctl);
    }

    #[test]
    fn bitmap_positions_follow_the_sdm_layout() {
        assert_eq!(bitmap_position(0x1b, false), Some((3, 3)));
        assert_eq!(bitmap_position(0x1b, true), Some((2048 + 3, 3)));
        assert_eq!(bitmap_position(IA32_EFER, false), Some((1024 + 16, 0)));
        assert_eq!(bitmap_position(IA32_FS_BASE, true), Some((3072 + 32, 0)));
        assert_eq!(bitmap_position(0x4000_0000, false), None);
        assert!(PASS_THROUGH.iter().all(|&m| rule(m, 0) == Rule::PassThrough));
    }
}
