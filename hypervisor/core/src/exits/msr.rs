//! The MSR policy: an explicit allow-list. MSRs the VMCS switches (or the host never uses) pass
//! straight through the MSR bitmap; a few are emulated; every other access injects #GP.

/// What to do with an MSR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Reads and writes go to the hardware without an exit (bitmap bits clear).
    PassThrough,
    /// Reads return the value; writes of that same value are accepted, others #GP.
    Fixed(u64),
    /// Reads return the value; writes are ignored.
    ReadValueIgnoreWrite(u64),
    /// The vCPU's APIC timer answers (IA32_TSC_DEADLINE, `apic::timer`).
    ApicTimer,
    /// The vCPU's TSC (IA32_TSC): a read is the TSC, a write moves it (SDM Vol. 3B §18.17: the
    /// hypervisor keeps the difference in the TSC offset, Vol. 3C §26.3).
    Tsc,
    /// Any access raises #GP in the guest.
    Gp,
}

pub const IA32_TSC: u32 = 0x10;
pub const IA32_PLATFORM_ID: u32 = 0x17;
pub const IA32_APIC_BASE: u32 = 0x1b;
pub const IA32_FEATURE_CONTROL: u32 = 0x3a;
pub const IA32_BIOS_SIGN_ID: u32 = 0x8b;
pub const IA32_MTRRCAP: u32 = 0xfe;
pub const IA32_SYSENTER_CS: u32 = 0x174;
pub const IA32_SYSENTER_ESP: u32 = 0x175;
pub const IA32_SYSENTER_EIP: u32 = 0x176;
pub const IA32_MISC_ENABLE: u32 = 0x1a0;
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
        IA32_APIC_BASE => Rule::Fixed(crate::apic::base::at_reset(vcpu)),
        IA32_TSC => Rule::Tsc,
        // Locked, VMX disabled: the guest is told VMX is off.
        IA32_FEATURE_CONTROL => Rule::Fixed(1),
        IA32_MISC_ENABLE => Rule::Fixed(1), // fast strings
        IA32_MTRRCAP => Rule::Fixed(0),
        IA32_MTRR_DEF_TYPE => Rule::Fixed(6 | 1 << 11), // enabled, default type WB
        IA32_PLATFORM_ID => Rule::Fixed(0),
        IA32_BIOS_SIGN_ID => Rule::ReadValueIgnoreWrite(0),
        crate::apic::timer::IA32_TSC_DEADLINE => Rule::ApicTimer,
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

/// The outcome of an intercepted RDMSR.
pub fn read(msr: u32, vcpu: u32) -> Option<u64> {
    match rule(msr, vcpu) {
        Rule::Fixed(v) | Rule::ReadValueIgnoreWrite(v) => Some(v),
        // Reached only if the bitmap did not pass it through: treat as not allowed. The APIC
        // timer's MSR is the vCPU's to answer before it asks here.
        Rule::PassThrough | Rule::ApicTimer | Rule::Tsc | Rule::Gp => None,
    }
}

/// Whether an intercepted WRMSR is accepted (and ignored).
pub fn write_ok(msr: u32, vcpu: u32, value: u64) -> bool {
    match rule(msr, vcpu) {
        Rule::Fixed(v) => v == value,
        Rule::ReadValueIgnoreWrite(_) => true,
        Rule::PassThrough | Rule::ApicTimer | Rule::Tsc | Rule::Gp => false,
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
    fn apic_base_reports_bsp_only_on_vcpu_0() {
        assert_eq!(read(IA32_APIC_BASE, 0), Some(0xfee0_0900));
        assert_eq!(read(IA32_APIC_BASE, 2), Some(0xfee0_0800));
        assert!(write_ok(IA32_APIC_BASE, 0, 0xfee0_0900));
        assert!(!write_ok(IA32_APIC_BASE, 0, 0xfee0_0d00), "x2APIC switch comes with APIC virtualization");
    }

    #[test]
    fn feature_control_says_locked_without_vmx() {
        assert_eq!(read(IA32_FEATURE_CONTROL, 0), Some(1));
        assert!(write_ok(IA32_BIOS_SIGN_ID, 0, 0));
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
