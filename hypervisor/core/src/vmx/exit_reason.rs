//! Basic VM-exit reasons (SDM Vol. 3D Appendix C) and the exit-reason field (Vol. 3C §29.2.1).

/// Number of basic exit reasons this hypervisor counts (0..=77).
pub const COUNT: usize = 78;

/// Snake-case names, as used in `HV-SUMMARY` exit counters. Reserved numbers are "reserved_N".
pub const NAMES: [&str; COUNT] = [
    "exception_nmi",
    "external_interrupt",
    "triple_fault",
    "init",
    "sipi",
    "io_smi",
    "other_smi",
    "interrupt_window",
    "nmi_window",
    "task_switch",
    "cpuid",
    "getsec",
    "hlt",
    "invd",
    "invlpg",
    "rdpmc",
    "rdtsc",
    "rsm",
    "vmcall",
    "vmclear",
    "vmlaunch",
    "vmptrld",
    "vmptrst",
    "vmread",
    "vmresume",
    "vmwrite",
    "vmxoff",
    "vmxon",
    "cr_access",
    "dr_access",
    "io",
    "rdmsr",
    "wrmsr",
    "entry_fail_guest_state",
    "entry_fail_msr_load",
    "reserved_35",
    "mwait",
    "monitor_trap_flag",
    "reserved_38",
    "monitor",
    "pause",
    "entry_fail_machine_check",
    "reserved_42",
    "tpr_below_threshold",
    "apic_access",
    "virtualized_eoi",
    "gdtr_idtr_access",
    "ldtr_tr_access",
    "ept_violation",
    "ept_misconfig",
    "invept",
    "rdtscp",
    "preemption_timer",
    "invvpid",
    "wbinvd",
    "xsetbv",
    "apic_write",
    "rdrand",
    "invpcid",
    "vmfunc",
    "encls",
    "rdseed",
    "pml_full",
    "xsaves",
    "xrstors",
    "pconfig",
    "spp_event",
    "umwait",
    "tpause",
    "loadiwkey",
    "enclv",
    "reserved_71",
    "enqcmd_pasid_fail",
    "enqcmds_pasid_fail",
    "bus_lock",
    "instruction_timeout",
    "seamcall",
    "tdcall",
];

pub const EXCEPTION_NMI: u16 = 0;
pub const EXTERNAL_INTERRUPT: u16 = 1;
pub const TRIPLE_FAULT: u16 = 2;
pub const INIT_SIGNAL: u16 = 3;
pub const NMI_WINDOW: u16 = 8;
pub const TASK_SWITCH: u16 = 9;
pub const CPUID: u16 = 10;
pub const GETSEC: u16 = 11;
pub const HLT: u16 = 12;
pub const INVD: u16 = 13;
pub const VMCALL: u16 = 18;
/// VMCLEAR, VMLAUNCH, VMPTRLD, VMPTRST, VMREAD, VMRESUME, VMWRITE, VMXOFF, VMXON.
pub const VMCLEAR: u16 = 19;
pub const VMXON: u16 = 27;
pub const INVEPT: u16 = 50;
pub const INVVPID: u16 = 53;
pub const WBINVD: u16 = 54;
pub const VMFUNC: u16 = 59;
/// SEAMCALL and TDCALL (TDX): they exit in VMX non-root operation; outside a TD on a processor
/// without SEAM they are #UD.
pub const SEAMCALL: u16 = 76;
pub const TDCALL: u16 = 77;
pub const CR_ACCESS: u16 = 28;
pub const IO_INSTRUCTION: u16 = 30;
pub const RDMSR: u16 = 31;
pub const WRMSR: u16 = 32;
pub const ENTRY_FAIL_GUEST_STATE: u16 = 33;
pub const ENTRY_FAIL_MSR_LOAD: u16 = 34;
pub const ENTRY_FAIL_MACHINE_CHECK: u16 = 41;
pub const TPR_BELOW_THRESHOLD: u16 = 43;
pub const APIC_ACCESS: u16 = 44;
pub const EPT_VIOLATION: u16 = 48;
pub const EPT_MISCONFIG: u16 = 49;
pub const PREEMPTION_TIMER: u16 = 52;
pub const XSETBV: u16 = 55;
pub const APIC_WRITE: u16 = 56;
pub const INTERRUPT_WINDOW: u16 = 7;
pub const VIRTUALIZED_EOI: u16 = 45;

/// The basic exit reasons this hypervisor handles, typed; every other number is `Other`, which
/// the dispatcher reports as an unexpected exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BasicExit {
    /// Exception or NMI (the exception bitmap is 0, so a host NMI).
    ExceptionOrNmi,
    ExternalInterrupt,
    TripleFault,
    InterruptWindow,
    NmiWindow,
    /// A task switch (always exits in VMX non-root operation, SDM Vol. 3C §26.2).
    TaskSwitch,
    Cpuid,
    /// GETSEC (unconditional: SMX is hidden, so it is #UD).
    Getsec,
    Hlt,
    /// INVD and WBINVD (INVD always exits; WBINVD only with "WBINVD exiting").
    Invd,
    Wbinvd,
    Vmcall,
    /// A VMX instruction other than VMCALL (VMXON, VMREAD, INVEPT, ...), or SEAMCALL/TDCALL:
    /// always exits in VMX non-root operation (SDM Vol. 3C §26.1.2); VMX and TDX are hidden
    /// from guests, so it is #UD.
    VmxInstruction(u16),
    /// MOV to or from a control register the controls intercept (CR8 only, here).
    CrAccess,
    Io,
    Rdmsr,
    Wrmsr,
    EntryFailGuestState,
    EntryFailMsrLoad,
    EntryFailMachineCheck,
    /// The guest lowered its TPR shadow below the TPR threshold (SDM Vol. 3C §30.1.2).
    TprBelowThreshold,
    ApicAccess,
    /// EOI-induced exit (SDM Vol. 3C §30.1.4): a vector in the EOI-exit bitmap was EOI'd.
    VirtualizedEoi,
    EptViolation,
    EptMisconfig,
    PreemptionTimer,
    Xsetbv,
    ApicWrite,
    Other(u16),
}

impl BasicExit {
    pub const fn from_raw(r: u16) -> Self {
        match r {
            EXCEPTION_NMI => Self::ExceptionOrNmi,
            EXTERNAL_INTERRUPT => Self::ExternalInterrupt,
            TRIPLE_FAULT => Self::TripleFault,
            INTERRUPT_WINDOW => Self::InterruptWindow,
            NMI_WINDOW => Self::NmiWindow,
            TASK_SWITCH => Self::TaskSwitch,
            CPUID => Self::Cpuid,
            GETSEC => Self::Getsec,
            HLT => Self::Hlt,
            INVD => Self::Invd,
            WBINVD => Self::Wbinvd,
            VMCALL => Self::Vmcall,
            VMCLEAR..=VMXON | INVEPT | INVVPID | VMFUNC | SEAMCALL | TDCALL => Self::VmxInstruction(r),
            CR_ACCESS => Self::CrAccess,
            IO_INSTRUCTION => Self::Io,
            RDMSR => Self::Rdmsr,
            WRMSR => Self::Wrmsr,
            ENTRY_FAIL_GUEST_STATE => Self::EntryFailGuestState,
            ENTRY_FAIL_MSR_LOAD => Self::EntryFailMsrLoad,
            ENTRY_FAIL_MACHINE_CHECK => Self::EntryFailMachineCheck,
            TPR_BELOW_THRESHOLD => Self::TprBelowThreshold,
            APIC_ACCESS => Self::ApicAccess,
            VIRTUALIZED_EOI => Self::VirtualizedEoi,
            EPT_VIOLATION => Self::EptViolation,
            EPT_MISCONFIG => Self::EptMisconfig,
            PREEMPTION_TIMER => Self::PreemptionTimer,
            XSETBV => Self::Xsetbv,
            APIC_WRITE => Self::ApicWrite,
            other => Self::Other(other),
        }
    }

    pub const fn raw(self) -> u16 {
        match self {
            Self::ExceptionOrNmi => EXCEPTION_NMI,
            Self::ExternalInterrupt => EXTERNAL_INTERRUPT,
            Self::TripleFault => TRIPLE_FAULT,
            Self::InterruptWindow => INTERRUPT_WINDOW,
            Self::NmiWindow => NMI_WINDOW,
            Self::TaskSwitch => TASK_SWITCH,
            Self::Cpuid => CPUID,
            Self::Getsec => GETSEC,
            Self::Hlt => HLT,
            Self::Invd => INVD,
            Self::Wbinvd => WBINVD,
            Self::Vmcall => VMCALL,
            Self::VmxInstruction(r) => r,
            Self::CrAccess => CR_ACCESS,
            Self::Io => IO_INSTRUCTION,
            Self::Rdmsr => RDMSR,
            Self::Wrmsr => WRMSR,
            Self::EntryFailGuestState => ENTRY_FAIL_GUEST_STATE,
            Self::EntryFailMsrLoad => ENTRY_FAIL_MSR_LOAD,
            Self::EntryFailMachineCheck => ENTRY_FAIL_MACHINE_CHECK,
            Self::TprBelowThreshold => TPR_BELOW_THRESHOLD,
            Self::ApicAccess => APIC_ACCESS,
            Self::VirtualizedEoi => VIRTUALIZED_EOI,
            Self::EptViolation => EPT_VIOLATION,
            Self::EptMisconfig => EPT_MISCONFIG,
            Self::PreemptionTimer => PREEMPTION_TIMER,
            Self::Xsetbv => XSETBV,
            Self::ApicWrite => APIC_WRITE,
            Self::Other(r) => r,
        }
    }

    pub fn name(self) -> &'static str {
        name(self.raw())
    }
}

/// The name of basic exit reason `r`.
pub fn name(r: u16) -> &'static str {
    NAMES.get(r as usize).copied().unwrap_or("unknown")
}

/// The exit-reason field: basic reason in bits 15:0, "VM-entry failure" in bit 31.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitReason(pub u32);

impl ExitReason {
    pub const fn basic(self) -> u16 {
        self.0 as u16
    }

    pub const fn kind(self) -> BasicExit {
        BasicExit::from_raw(self.0 as u16)
    }

    pub const fn entry_failure(self) -> bool {
        self.0 & (1 << 31) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_line_up_with_the_sdm_numbers() {
        assert_eq!(name(CPUID), "cpuid");
        assert_eq!(name(HLT), "hlt");
        assert_eq!(name(VMCALL), "vmcall");
        assert_eq!(name(IO_INSTRUCTION), "io");
        assert_eq!(name(RDMSR), "rdmsr");
        assert_eq!(name(WRMSR), "wrmsr");
        assert_eq!(name(ENTRY_FAIL_GUEST_STATE), "entry_fail_guest_state");
        assert_eq!(name(EPT_VIOLATION), "ept_violation");
        assert_eq!(name(PREEMPTION_TIMER), "preemption_timer");
        assert_eq!(name(APIC_WRITE), "apic_write");
        assert_eq!(name(77), "tdcall");
        assert_eq!(name(200), "unknown");
    }

    #[test]
    fn typed_reasons_round_trip() {
        for r in 0..=u16::from(u8::MAX) {
            assert_eq!(BasicExit::from_raw(r).raw(), r);
        }
        assert_eq!(BasicExit::from_raw(VIRTUALIZED_EOI).name(), "virtualized_eoi");
        assert_eq!(BasicExit::from_raw(INTERRUPT_WINDOW).name(), "interrupt_window");
        assert_eq!(BasicExit::from_raw(3), BasicExit::Other(3), "INIT signals are not expected");
        assert_eq!(BasicExit::from_raw(VMXON), BasicExit::VmxInstruction(VMXON));
        assert_eq!(BasicExit::from_raw(VMXON).name(), "vmxon");
        assert_eq!(BasicExit::from_raw(INVD), BasicExit::Invd);
        assert_eq!(BasicExit::from_raw(TASK_SWITCH), BasicExit::TaskSwitch);
        assert_eq!(BasicExit::from_raw(TDCALL), BasicExit::VmxInstruction(TDCALL));
        assert_eq!(ExitReason(0x8000_0021).kind(), BasicExit::EntryFailGuestState);
    }

    #[test]
    fn entry_failure_bit() {
        let r = ExitReason(0x8000_0021);
        assert!(r.entry_failure());
        assert_eq!(r.basic(), ENTRY_FAIL_GUEST_STATE);
    }
}
