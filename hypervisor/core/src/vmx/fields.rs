//! VMCS field encodings, one enum per width (SDM Vol. 3D Appendix B "Field Encoding in VMCS";
//! Vol. 3C §25.11.2). A field can only be accessed through the accessor of its width, so a
//! 16-bit field is never written with a 64-bit value by accident, and `grep` finds every use.
//!
//! Variant names are the SDM's field names in CamelCase; `name()` gives the SDM-style
//! upper-case name for reports.

macro_rules! vmcs_fields {
    ($(#[$m:meta])* $enum:ident, $width:expr, { $($(#[$vm:meta])* $var:ident = $enc:expr),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(u32)]
        pub enum $enum {
            $($(#[$vm])* $var = $enc,)*
        }

        impl $enum {
            /// Every field of this width.
            pub const ALL: &'static [$enum] = &[$($enum::$var),*];
            /// The access width encoded in bits 14:13 of every field of this enum.
            pub const WIDTH: Width = $width;

            pub const fn encoding(self) -> u32 {
                self as u32
            }

            pub const fn name(self) -> &'static str {
                match self {
                    $($enum::$var => stringify!($var),)*
                }
            }
        }
    };
}

/// Access width, bits 14:13 of a field encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    W16 = 0,
    W64 = 1,
    W32 = 2,
    Natural = 3,
}

/// The width a field encoding declares.
pub const fn width_of(encoding: u32) -> Width {
    match (encoding >> 13) & 3 {
        0 => Width::W16,
        1 => Width::W64,
        2 => Width::W32,
        _ => Width::Natural,
    }
}

vmcs_fields!(
    /// 16-bit fields.
    Vmcs16, Width::W16, {
    /// Virtual-processor identifier.
    Vpid = 0x0000,
    /// Posted-interrupt notification vector.
    PostedIntrNv = 0x0002,
    /// EPTP index.
    EptpIndex = 0x0004,
    /// Last PID-pointer index (IPI virtualization).
    LastPidPointerIndex = 0x0008,
    GuestEsSelector = 0x0800,
    GuestCsSelector = 0x0802,
    GuestSsSelector = 0x0804,
    GuestDsSelector = 0x0806,
    GuestFsSelector = 0x0808,
    GuestGsSelector = 0x080a,
    GuestLdtrSelector = 0x080c,
    GuestTrSelector = 0x080e,
    /// Guest interrupt status (RVI in bits 7:0, SVI in bits 15:8).
    GuestInterruptStatus = 0x0810,
    HostEsSelector = 0x0c00,
    HostCsSelector = 0x0c02,
    HostSsSelector = 0x0c04,
    HostDsSelector = 0x0c06,
    HostFsSelector = 0x0c08,
    HostGsSelector = 0x0c0a,
    HostTrSelector = 0x0c0c,
});

vmcs_fields!(
    /// 64-bit fields (full encodings; the "high" halves are only for 32-bit hosts).
    Vmcs64, Width::W64, {
    IoBitmapA = 0x2000,
    IoBitmapB = 0x2002,
    MsrBitmap = 0x2004,
    VmExitMsrStoreAddr = 0x2006,
    VmExitMsrLoadAddr = 0x2008,
    VmEntryMsrLoadAddr = 0x200a,
    TscOffset = 0x2010,
    VirtualApicPageAddr = 0x2012,
    ApicAccessAddr = 0x2014,
    PostedIntrDescAddr = 0x2016,
    EptPointer = 0x201a,
    EoiExitBitmap0 = 0x201c,
    EoiExitBitmap1 = 0x201e,
    EoiExitBitmap2 = 0x2020,
    EoiExitBitmap3 = 0x2022,
    /// Tertiary processor-based VM-execution controls.
    TertiaryVmExecControl = 0x2034,
    /// PID-pointer table address (IPI virtualization).
    PidPointerTable = 0x2042,
    /// Read-only: guest-physical address of an EPT violation or misconfiguration.
    GuestPhysicalAddress = 0x2400,
    VmcsLinkPointer = 0x2800,
    GuestIa32Debugctl = 0x2802,
    GuestIa32Pat = 0x2804,
    GuestIa32Efer = 0x2806,
    /// The PAE page-directory-pointer-table entries (loaded by VM entry with PAE paging).
    GuestPdpte0 = 0x280a,
    GuestPdpte1 = 0x280c,
    GuestPdpte2 = 0x280e,
    GuestPdpte3 = 0x2810,
    HostIa32Pat = 0x2c00,
    HostIa32Efer = 0x2c02,
});

vmcs_fields!(
    /// 32-bit fields.
    Vmcs32, Width::W32, {
    PinBasedVmExecControl = 0x4000,
    PrimaryProcBasedVmExecControl = 0x4002,
    ExceptionBitmap = 0x4004,
    PageFaultErrorCodeMask = 0x4006,
    PageFaultErrorCodeMatch = 0x4008,
    Cr3TargetCount = 0x400a,
    VmExitControls = 0x400c,
    VmExitMsrStoreCount = 0x400e,
    VmExitMsrLoadCount = 0x4010,
    VmEntryControls = 0x4012,
    VmEntryMsrLoadCount = 0x4014,
    VmEntryInterruptionInfo = 0x4016,
    VmEntryExceptionErrorCode = 0x4018,
    VmEntryInstructionLength = 0x401a,
    TprThreshold = 0x401c,
    SecondaryProcBasedVmExecControl = 0x401e,
    /// Read-only: why the last VMX instruction failed (SDM Vol. 3C §31.4).
    VmInstructionError = 0x4400,
    /// Read-only.
    ExitReason = 0x4402,
    /// Read-only.
    VmExitInterruptionInfo = 0x4404,
    /// Read-only.
    VmExitInterruptionErrorCode = 0x4406,
    /// Read-only.
    IdtVectoringInfo = 0x4408,
    /// Read-only.
    IdtVectoringErrorCode = 0x440a,
    /// Read-only.
    VmExitInstructionLength = 0x440c,
    /// Read-only.
    VmxInstructionInfo = 0x440e,
    GuestEsLimit = 0x4800,
    GuestCsLimit = 0x4802,
    GuestSsLimit = 0x4804,
    GuestDsLimit = 0x4806,
    GuestFsLimit = 0x4808,
    GuestGsLimit = 0x480a,
    GuestLdtrLimit = 0x480c,
    GuestTrLimit = 0x480e,
    GuestGdtrLimit = 0x4810,
    GuestIdtrLimit = 0x4812,
    GuestEsAccessRights = 0x4814,
    GuestCsAccessRights = 0x4816,
    GuestSsAccessRights = 0x4818,
    GuestDsAccessRights = 0x481a,
    GuestFsAccessRights = 0x481c,
    GuestGsAccessRights = 0x481e,
    GuestLdtrAccessRights = 0x4820,
    GuestTrAccessRights = 0x4822,
    GuestInterruptibilityState = 0x4824,
    GuestActivityState = 0x4826,
    GuestSmbase = 0x4828,
    GuestIa32SysenterCs = 0x482a,
    VmxPreemptionTimerValue = 0x482e,
    HostIa32SysenterCs = 0x4c00,
});

vmcs_fields!(
    /// Natural-width fields (64 bits on this hypervisor).
    VmcsNatural, Width::Natural, {
    Cr0GuestHostMask = 0x6000,
    Cr4GuestHostMask = 0x6002,
    Cr0ReadShadow = 0x6004,
    Cr4ReadShadow = 0x6006,
    /// Read-only.
    ExitQualification = 0x6400,
    /// Read-only.
    GuestLinearAddress = 0x640a,
    GuestCr0 = 0x6800,
    GuestCr3 = 0x6802,
    GuestCr4 = 0x6804,
    GuestEsBase = 0x6806,
    GuestCsBase = 0x6808,
    GuestSsBase = 0x680a,
    GuestDsBase = 0x680c,
    GuestFsBase = 0x680e,
    GuestGsBase = 0x6810,
    GuestLdtrBase = 0x6812,
    GuestTrBase = 0x6814,
    GuestGdtrBase = 0x6816,
    GuestIdtrBase = 0x6818,
    GuestDr7 = 0x681a,
    GuestRsp = 0x681c,
    GuestRip = 0x681e,
    GuestRflags = 0x6820,
    GuestPendingDebugExceptions = 0x6822,
    GuestIa32SysenterEsp = 0x6824,
    GuestIa32SysenterEip = 0x6826,
    HostCr0 = 0x6c00,
    HostCr3 = 0x6c02,
    HostCr4 = 0x6c04,
    HostFsBase = 0x6c06,
    HostGsBase = 0x6c08,
    HostTrBase = 0x6c0a,
    HostGdtrBase = 0x6c0c,
    HostIdtrBase = 0x6c0e,
    HostIa32SysenterEsp = 0x6c10,
    HostIa32SysenterEip = 0x6c12,
    HostRsp = 0x6c14,
    HostRip = 0x6c16,
});

/// The name of any field encoding, for reports ("field at fault").
pub fn name_of(encoding: u32) -> Option<&'static str> {
    let enc = encoding & !1; // a "high" access names the same field
    Vmcs16::ALL
        .iter()
        .map(|f| (f.encoding(), f.name()))
        .chain(Vmcs32::ALL.iter().map(|f| (f.encoding(), f.name())))
        .chain(Vmcs64::ALL.iter().map(|f| (f.encoding(), f.name())))
        .chain(VmcsNatural::ALL.iter().map(|f| (f.encoding(), f.name())))
        .find(|&(e, _)| e == enc)
        .map(|(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_encoding_declares_its_enums_width() {
        for f in Vmcs16::ALL {
            assert_eq!(width_of(f.encoding()), Vmcs16::WIDTH, "{}", f.name());
        }
        for f in Vmcs32::ALL {
            assert_eq!(width_of(f.encoding()), Vmcs32::WIDTH, "{}", f.name());
        }
        for f in Vmcs64::ALL {
            assert_eq!(width_of(f.encoding()), Vmcs64::WIDTH, "{}", f.name());
            assert_eq!(f.encoding() & 1, 0, "{} must be the full encoding", f.name());
        }
        for f in VmcsNatural::ALL {
            assert_eq!(width_of(f.encoding()), VmcsNatural::WIDTH, "{}", f.name());
        }
    }

    #[test]
    fn the_ipiv_fields_have_the_sdm_encodings() {
        assert_eq!(Vmcs16::LastPidPointerIndex.encoding(), 0x0008);
        assert_eq!(Vmcs64::PidPointerTable.encoding(), 0x2042);
        assert_eq!(Vmcs64::TertiaryVmExecControl.encoding(), 0x2034);
        assert_eq!(Vmcs16::PostedIntrNv.encoding(), 0x0002);
        assert_eq!(Vmcs64::PostedIntrDescAddr.encoding(), 0x2016);
    }

    #[test]
    fn names_resolve_from_encodings() {
        assert_eq!(name_of(0x681e), Some("GuestRip"));
        assert_eq!(name_of(0x2043), Some("PidPointerTable"));
        assert_eq!(name_of(0x1234), None);
    }
}
