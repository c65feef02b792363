//! VMX capability discovery: which MSRs to read, and what they mean.
//!
//! Everything here is pure: the kernel hands in CPUID and an `rdmsr` closure, and gets back a
//! typed [`VmxCaps`] (or the reason VMX cannot be used). The rules follow the Intel SDM Vol. 3D,
//! Appendix A "VMX Capability Reporting Facility"; section numbers are cited where applied.

use super::msr;

/// One 32-bit VMX control word's capability MSR (SDM Vol. 3D §A.3–A.5): bits 31:0 are the
/// allowed-0 settings (a 1 there means the control must be 1), bits 63:32 the allowed-1 settings
/// (a 0 there means the control must be 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ControlCaps {
    /// Bits that must be 1.
    pub must_be_1: u32,
    /// Bits that may be 1.
    pub may_be_1: u32,
}

impl ControlCaps {
    /// Decodes a capability MSR value.
    pub const fn from_msr(value: u64) -> Self {
        Self { must_be_1: value as u32, may_be_1: (value >> 32) as u32 }
    }

    /// Whether `bit` may be set to 1.
    pub const fn allows(&self, bit: u32) -> bool {
        self.may_be_1 & (1 << bit) != 0
    }
}

/// The raw capability MSR values of one logical processor, read in the order and under the
/// conditions the SDM requires (an MSR read that is not allowed raises #GP).
/// In HV-SUMMARY's `vmx_msrs` each as hex text (`json::hex`), absent ones as null.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "alloc", derive(serde::Serialize, serde::Deserialize))]
pub struct VmxMsrs {
    /// CPUID.1:ECX.VMX[bit 5].
    pub cpuid_vmx: bool,
    /// IA32_FEATURE_CONTROL (0x3A) as found, before this hypervisor changed it.
    #[cfg_attr(feature = "alloc", serde(with = "crate::json::hex"))]
    pub feature_control: u64,
    /// IA32_VMX_BASIC (0x480).
    #[cfg_attr(feature = "alloc", serde(with = "crate::json::hex"))]
    pub basic: u64,
    /// Pin-based controls: IA32_VMX_TRUE_PINBASED_CTLS when BASIC bit 55 is set, else
    /// IA32_VMX_PINBASED_CTLS.
    #[cfg_attr(feature = "alloc", serde(with = "crate::json::hex"))]
    pub pinbased: u64,
    /// Primary processor-based controls (TRUE_ variant when BASIC bit 55 is set).
    #[cfg_attr(feature = "alloc", serde(with = "crate::json::hex"))]
    pub procbased: u64,
    /// VM-exit controls (TRUE_ variant when BASIC bit 55 is set).
    #[cfg_attr(feature = "alloc", serde(with = "crate::json::hex"))]
    pub exit: u64,
    /// VM-entry controls (TRUE_ variant when BASIC bit 55 is set).
    #[cfg_attr(feature = "alloc", serde(with = "crate::json::hex"))]
    pub entry: u64,
    /// IA32_VMX_PROCBASED_CTLS2, present when primary allowed-1 bit 31 is set.
    #[cfg_attr(feature = "alloc", serde(with = "crate::json::hex::option"))]
    pub procbased2: Option<u64>,
    /// IA32_VMX_PROCBASED_CTLS3, present when primary allowed-1 bit 17 is set.
    #[cfg_attr(feature = "alloc", serde(with = "crate::json::hex::option"))]
    pub procbased3: Option<u64>,
    /// IA32_VMX_EPT_VPID_CAP, present when secondary allowed-1 has EPT (bit 1) or VPID (bit 5).
    #[cfg_attr(feature = "alloc", serde(with = "crate::json::hex::option"))]
    pub ept_vpid_cap: Option<u64>,
    /// IA32_VMX_MISC (SDM Vol. 3D §A.6).
    #[cfg_attr(feature = "alloc", serde(with = "crate::json::hex"))]
    pub misc: u64,
    /// IA32_VMX_CR0_FIXED0/1 and IA32_VMX_CR4_FIXED0/1 (SDM Vol. 3D §A.7, §A.8).
    #[cfg_attr(feature = "alloc", serde(with = "crate::json::hex"))]
    pub cr0_fixed0: u64,
    #[cfg_attr(feature = "alloc", serde(with = "crate::json::hex"))]
    pub cr0_fixed1: u64,
    #[cfg_attr(feature = "alloc", serde(with = "crate::json::hex"))]
    pub cr4_fixed0: u64,
    #[cfg_attr(feature = "alloc", serde(with = "crate::json::hex"))]
    pub cr4_fixed1: u64,
}

impl VmxMsrs {
    /// Reads every capability MSR that exists on this processor. `rdmsr` is called only for MSRs
    /// whose existence the SDM guarantees at that point; without CPUID VMX nothing is read.
    pub fn read(cpuid_vmx: bool, mut rdmsr: impl FnMut(u32) -> u64) -> Self {
        let mut m = Self { cpuid_vmx, ..Self::default() };
        if !cpuid_vmx {
            return m;
        }
        m.feature_control = rdmsr(msr::IA32_FEATURE_CONTROL);
        m.basic = rdmsr(msr::IA32_VMX_BASIC);
        // SDM Vol. 3D §A.1: bit 55 = the TRUE_ capability MSRs exist and report the
        // default1 controls that may be cleared.
        let true_ctls = m.basic & BASIC_TRUE_CTLS != 0;
        let pick = |plain, tru| if true_ctls { tru } else { plain };
        m.pinbased = rdmsr(pick(msr::IA32_VMX_PINBASED_CTLS, msr::IA32_VMX_TRUE_PINBASED_CTLS));
        m.procbased = rdmsr(pick(msr::IA32_VMX_PROCBASED_CTLS, msr::IA32_VMX_TRUE_PROCBASED_CTLS));
        m.exit = rdmsr(pick(msr::IA32_VMX_EXIT_CTLS, msr::IA32_VMX_TRUE_EXIT_CTLS));
        m.entry = rdmsr(pick(msr::IA32_VMX_ENTRY_CTLS, msr::IA32_VMX_TRUE_ENTRY_CTLS));
        let primary = ControlCaps::from_msr(m.procbased);
        // SDM Vol. 3D §A.3.3: CTLS2 exists only if "activate secondary controls" may be 1.
        if primary.allows(primary_bits::ACTIVATE_SECONDARY_CONTROLS) {
            let ctls2 = rdmsr(msr::IA32_VMX_PROCBASED_CTLS2);
            m.procbased2 = Some(ctls2);
            // SDM Vol. 3D §A.10: EPT_VPID_CAP exists only if EPT or VPID may be enabled.
            let secondary = ControlCaps::from_msr(ctls2);
            if secondary.allows(secondary_bits::ENABLE_EPT) || secondary.allows(secondary_bits::ENABLE_VPID) {
                m.ept_vpid_cap = Some(rdmsr(msr::IA32_VMX_EPT_VPID_CAP));
            }
        }
        // SDM Vol. 3D §A.3.4: CTLS3 exists only if "activate tertiary controls" may be 1.
        if primary.allows(primary_bits::ACTIVATE_TERTIARY_CONTROLS) {
            m.procbased3 = Some(rdmsr(msr::IA32_VMX_PROCBASED_CTLS3));
        }
        m.misc = rdmsr(msr::IA32_VMX_MISC);
        m.cr0_fixed0 = rdmsr(msr::IA32_VMX_CR0_FIXED0);
        m.cr0_fixed1 = rdmsr(msr::IA32_VMX_CR0_FIXED1);
        m.cr4_fixed0 = rdmsr(msr::IA32_VMX_CR4_FIXED0);
        m.cr4_fixed1 = rdmsr(msr::IA32_VMX_CR4_FIXED1);
        m
    }
}

/// IA32_VMX_BASIC bit 55: TRUE_ control capability MSRs exist.
pub const BASIC_TRUE_CTLS: u64 = 1 << 55;

/// Bit positions of the pin-based VM-execution controls (SDM Vol. 3C §25.6.1, Table 25-5).
pub mod pin_bits {
    pub const EXTERNAL_INTERRUPT_EXITING: u32 = 0;
    pub const NMI_EXITING: u32 = 3;
    pub const VIRTUAL_NMIS: u32 = 5;
    pub const ACTIVATE_VMX_PREEMPTION_TIMER: u32 = 6;
    pub const PROCESS_POSTED_INTERRUPTS: u32 = 7;
}

/// Bit positions of the primary processor-based controls (SDM Vol. 3C §25.6.2, Table 25-6).
pub mod primary_bits {
    pub const INTERRUPT_WINDOW_EXITING: u32 = 2;
    pub const HLT_EXITING: u32 = 7;
    pub const NMI_WINDOW_EXITING: u32 = 22;
    pub const ACTIVATE_TERTIARY_CONTROLS: u32 = 17;
    pub const USE_TPR_SHADOW: u32 = 21;
    pub const USE_IO_BITMAPS: u32 = 25;
    pub const USE_MSR_BITMAPS: u32 = 28;
    pub const ACTIVATE_SECONDARY_CONTROLS: u32 = 31;
}

/// Bit positions of the secondary processor-based controls (SDM Vol. 3C §25.6.2, Table 25-7).
pub mod secondary_bits {
    pub const VIRTUALIZE_APIC_ACCESSES: u32 = 0;
    pub const ENABLE_EPT: u32 = 1;
    pub const VIRTUALIZE_X2APIC_MODE: u32 = 4;
    pub const ENABLE_VPID: u32 = 5;
    pub const UNRESTRICTED_GUEST: u32 = 7;
    pub const APIC_REGISTER_VIRTUALIZATION: u32 = 8;
    pub const VIRTUAL_INTERRUPT_DELIVERY: u32 = 9;
}

/// Bit positions of the tertiary processor-based controls (SDM Vol. 3C §25.6.2, Table 25-8).
pub mod tertiary_bits {
    pub const IPI_VIRTUALIZATION: u32 = 4;
}

/// Bit positions of the VM-exit controls (SDM Vol. 3C §25.7.1, Table 25-13).
pub mod exit_bits {
    pub const HOST_ADDRESS_SPACE_SIZE: u32 = 9;
    pub const ACKNOWLEDGE_INTERRUPT_ON_EXIT: u32 = 15;
}

/// IA32_VMX_EPT_VPID_CAP bits (SDM Vol. 3D §A.10).
pub mod ept_cap_bits {
    pub const PAGE_WALK_LENGTH_4: u32 = 6;
    pub const MEMORY_TYPE_WB: u32 = 14;
    pub const PDE_2MB_PAGES: u32 = 16;
    pub const INVEPT: u32 = 20;
    pub const INVVPID: u32 = 32;
    pub const INVVPID_SINGLE_CONTEXT: u32 = 41;
    pub const INVVPID_ALL_CONTEXT: u32 = 42;
}

/// Why VMX cannot be used on a processor. `Display` gives the one-line reason for reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsupported {
    /// CPUID.1:ECX.VMX = 0 (QEMU TCG, for one).
    NoCpuidVmx,
    /// IA32_FEATURE_CONTROL is locked with "VMX outside SMX" clear: only firmware can change it.
    LockedOff,
    /// VMXON regions would need a memory type other than write-back (SDM Vol. 3D §A.1).
    VmcsNotWriteBack(u8),
}

impl core::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoCpuidVmx => f.write_str("CPUID.1:ECX.VMX[bit 5] is 0: this processor (or emulator) offers no VMX"),
            Self::LockedOff => f.write_str(
                "IA32_FEATURE_CONTROL is locked with VMX outside SMX disabled: enable VT-x in the firmware setup",
            ),
            Self::VmcsNotWriteBack(t) => write!(f, "IA32_VMX_BASIC reports VMCS memory type {t}, not write-back (6)"),
        }
    }
}

/// IA32_FEATURE_CONTROL bits (SDM Vol. 3C §24.7 "Enabling and Entering VMX Operation").
pub mod feature_control_bits {
    pub const LOCK: u64 = 1 << 0;
    pub const VMX_INSIDE_SMX: u64 = 1 << 1;
    pub const VMX_OUTSIDE_SMX: u64 = 1 << 2;
}

/// What to do with IA32_FEATURE_CONTROL before VMXON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureControlAction {
    /// Locked with VMX outside SMX enabled: nothing to do.
    AlreadyEnabled,
    /// Unlocked: write this value (VMX outside SMX + lock) first.
    Write(u64),
}

/// Decides how IA32_FEATURE_CONTROL must change before VMXON (SDM Vol. 3C §24.7: VMXON is
/// allowed only when the lock bit is set and, outside SMX, bit 2 is set; a locked MSR can only be
/// changed by a reset).
pub fn feature_control_action(value: u64) -> Result<FeatureControlAction, Unsupported> {
    use feature_control_bits::*;
    match (value & LOCK != 0, value & VMX_OUTSIDE_SMX != 0) {
        (true, true) => Ok(FeatureControlAction::AlreadyEnabled),
        (true, false) => Err(Unsupported::LockedOff),
        (false, _) => Ok(FeatureControlAction::Write(value | VMX_OUTSIDE_SMX | LOCK)),
    }
}

/// The decoded VMX capabilities of one processor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmxCaps {
    /// VMCS revision identifier for the VMXON region and every VMCS (BASIC bits 30:0).
    pub revision_id: u32,
    /// Size of the VMXON region and VMCS in bytes (BASIC bits 44:32).
    pub region_size: u32,
    /// Whether the TRUE_ control MSRs were used.
    pub true_ctls: bool,
    pub pin: ControlCaps,
    pub primary: ControlCaps,
    /// All zero when the CPU has no secondary controls.
    pub secondary: ControlCaps,
    /// Allowed-1 bits of the tertiary controls (they have no must-be-1 bits); 0 when absent.
    pub tertiary: u64,
    pub exit: ControlCaps,
    pub entry: ControlCaps,
    /// IA32_VMX_EPT_VPID_CAP, 0 when absent.
    pub ept_vpid: u64,
    /// IA32_VMX_MISC.
    pub misc: u64,
    pub cr0_fixed0: u64,
    pub cr0_fixed1: u64,
    pub cr4_fixed0: u64,
    pub cr4_fixed1: u64,
}

/// The features this hypervisor reports and builds on, derived from [`VmxCaps`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VmxFeatures {
    pub tertiary: bool,
    pub ipiv: bool,
    pub apicv: bool,
    pub posted_interrupts: bool,
    pub x2apic_virt: bool,
    pub ept: bool,
    pub vpid: bool,
    pub unrestricted_guest: bool,
}

impl VmxCaps {
    /// Decodes the raw MSRs. Fails only when VMX cannot be turned on at all.
    pub fn decode(m: &VmxMsrs) -> Result<Self, Unsupported> {
        if !m.cpuid_vmx {
            return Err(Unsupported::NoCpuidVmx);
        }
        feature_control_action(m.feature_control)?;
        // SDM Vol. 3D §A.1: bits 53:50 give the memory type for VMCS-related structures.
        let mem_type = ((m.basic >> 50) & 0xf) as u8;
        if mem_type != 6 {
            return Err(Unsupported::VmcsNotWriteBack(mem_type));
        }
        let primary = ControlCaps::from_msr(m.procbased);
        Ok(Self {
            revision_id: (m.basic & 0x7fff_ffff) as u32,
            region_size: ((m.basic >> 32) & 0x1fff) as u32,
            true_ctls: m.basic & BASIC_TRUE_CTLS != 0,
            pin: ControlCaps::from_msr(m.pinbased),
            primary,
            secondary: m.procbased2.map(ControlCaps::from_msr).unwrap_or_default(),
            tertiary: m.procbased3.unwrap_or(0),
            exit: ControlCaps::from_msr(m.exit),
            entry: ControlCaps::from_msr(m.entry),
            ept_vpid: m.ept_vpid_cap.unwrap_or(0),
            misc: m.misc,
            cr0_fixed0: m.cr0_fixed0,
            cr0_fixed1: m.cr0_fixed1,
            cr4_fixed0: m.cr4_fixed0,
            cr4_fixed1: m.cr4_fixed1,
        })
    }

    /// Whether the secondary control `bit` may be 1 (and secondary controls may be activated).
    pub fn secondary_allows(&self, bit: u32) -> bool {
        self.primary.allows(primary_bits::ACTIVATE_SECONDARY_CONTROLS) && self.secondary.allows(bit)
    }

    /// Whether the tertiary control `bit` may be 1 (and tertiary controls may be activated).
    pub fn tertiary_allows(&self, bit: u32) -> bool {
        self.primary.allows(primary_bits::ACTIVATE_TERTIARY_CONTROLS) && self.tertiary & (1 << bit) != 0
    }

    /// Whether IA32_VMX_EPT_VPID_CAP bit `bit` is set (an EPT feature, an INVVPID type).
    pub fn ept_vpid_allows(&self, bit: u32) -> bool {
        self.ept_vpid & (1 << bit) != 0
    }

    /// The feature summary. Each feature counts only when every control it depends on is
    /// available, so "true" means this hypervisor can actually turn it on.
    pub fn features(&self) -> VmxFeatures {
        use secondary_bits::*;
        let tertiary = self.primary.allows(primary_bits::ACTIVATE_TERTIARY_CONTROLS);
        let x2apic_virt =
            self.primary.allows(primary_bits::USE_TPR_SHADOW) && self.secondary_allows(VIRTUALIZE_X2APIC_MODE);
        // SDM Vol. 3C §26.2.1.1: posted interrupts need virtual-interrupt delivery and
        // "acknowledge interrupt on exit"; virtual-interrupt delivery needs external-interrupt
        // exiting.
        let posted_interrupts = self.pin.allows(pin_bits::PROCESS_POSTED_INTERRUPTS)
            && self.pin.allows(pin_bits::EXTERNAL_INTERRUPT_EXITING)
            && self.exit.allows(exit_bits::ACKNOWLEDGE_INTERRUPT_ON_EXIT)
            && self.secondary_allows(VIRTUAL_INTERRUPT_DELIVERY);
        // APIC virtualization as this project uses it (SDM Vol. 3C ch. 30): register
        // virtualization, virtual-interrupt delivery and posted interrupts, reachable through
        // either x2APIC virtualization or APIC-access virtualization.
        let apicv = posted_interrupts
            && self.primary.allows(primary_bits::USE_TPR_SHADOW)
            && self.secondary_allows(APIC_REGISTER_VIRTUALIZATION)
            && (x2apic_virt || self.secondary_allows(VIRTUALIZE_APIC_ACCESSES));
        let ept = self.secondary_allows(ENABLE_EPT)
            && self.ept_vpid_allows(ept_cap_bits::PAGE_WALK_LENGTH_4)
            && self.ept_vpid_allows(ept_cap_bits::MEMORY_TYPE_WB);
        VmxFeatures {
            tertiary,
            // SDM Vol. 3C §30.1.6: IPI virtualization is tertiary control bit 4 and works
            // through APIC virtualization (virtual-interrupt delivery, posted interrupts).
            ipiv: tertiary && self.tertiary_allows(tertiary_bits::IPI_VIRTUALIZATION) && apicv,
            apicv,
            posted_interrupts,
            x2apic_virt,
            ept,
            vpid: self.secondary_allows(ENABLE_VPID),
            // SDM Vol. 3C §26.2.1.1: unrestricted guest requires EPT.
            unrestricted_guest: ept && self.secondary_allows(UNRESTRICTED_GUEST),
        }
    }

    /// The VMX-preemption timer counts down once every 2^N TSC ticks; this is N (IA32_VMX_MISC
    /// bits 4:0, SDM Vol. 3D §A.6).
    pub fn preemption_timer_shift(&self) -> u32 {
        (self.misc & 0x1f) as u32
    }

    /// CR0 adjusted to the VMX fixed bits (SDM Vol. 3D §A.7): fixed-0 ones set, fixed-1 zeros
    /// cleared.
    pub fn fix_cr0(&self, cr0: u64) -> u64 {
        (cr0 | self.cr0_fixed0) & self.cr0_fixed1
    }

    /// CR0 for an unrestricted guest: PE and PG are the guest's own (SDM Vol. 3C §27.3.1.1),
    /// the other fixed bits apply.
    pub fn fix_cr0_unrestricted(&self, cr0: u64) -> u64 {
        const PE_PG: u64 = 1 | 1 << 31;
        (cr0 | (self.cr0_fixed0 & !PE_PG)) & (self.cr0_fixed1 | PE_PG)
    }

    /// CR4 adjusted to the VMX fixed bits (SDM Vol. 3D §A.8).
    pub fn fix_cr4(&self, cr4: u64) -> u64 {
        (cr4 | self.cr4_fixed0) & self.cr4_fixed1
    }
}

#[cfg(test)]
mod tests;
