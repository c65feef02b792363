//! VM-execution, VM-exit and VM-entry control negotiation (SDM Vol. 3D §A.3–A.5, Vol. 3C
//! §25.6–25.8): the rule "allowed-0 bits forced on, allowed-1 bits the only ones permitted" lives
//! here, once, and a required control the CPU lacks is an error that names it.

use core::fmt;

use super::caps::{ControlCaps, VmxCaps, exit_bits, pin_bits, primary_bits, secondary_bits, tertiary_bits};
use super::path_kind::InterruptPath;

/// One control word of the VMCS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlWord {
    Pin,
    Primary,
    Secondary,
    Tertiary,
    Exit,
    Entry,
}

impl ControlWord {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pin => "pin-based",
            Self::Primary => "primary processor-based",
            Self::Secondary => "secondary processor-based",
            Self::Tertiary => "tertiary processor-based",
            Self::Exit => "VM-exit",
            Self::Entry => "VM-entry",
        }
    }

    /// The SDM name of control `bit` in this word (tables 25-5 to 25-8, 25-13, 25-15).
    pub fn bit_name(self, bit: u32) -> &'static str {
        let table: &[(u32, &str)] = match self {
            Self::Pin => &[
                (0, "external-interrupt exiting"),
                (3, "NMI exiting"),
                (5, "virtual NMIs"),
                (6, "activate VMX-preemption timer"),
                (7, "process posted interrupts"),
            ],
            Self::Primary => &[
                (2, "interrupt-window exiting"),
                (3, "use TSC offsetting"),
                (7, "HLT exiting"),
                (9, "INVLPG exiting"),
                (10, "MWAIT exiting"),
                (11, "RDPMC exiting"),
                (12, "RDTSC exiting"),
                (15, "CR3-load exiting"),
                (16, "CR3-store exiting"),
                (17, "activate tertiary controls"),
                (19, "CR8-load exiting"),
                (20, "CR8-store exiting"),
                (21, "use TPR shadow"),
                (22, "NMI-window exiting"),
                (23, "MOV-DR exiting"),
                (24, "unconditional I/O exiting"),
                (25, "use I/O bitmaps"),
                (27, "monitor trap flag"),
                (28, "use MSR bitmaps"),
                (29, "MONITOR exiting"),
                (30, "PAUSE exiting"),
                (31, "activate secondary controls"),
            ],
            Self::Secondary => &[
                (0, "virtualize APIC accesses"),
                (1, "enable EPT"),
                (2, "descriptor-table exiting"),
                (3, "enable RDTSCP"),
                (4, "virtualize x2APIC mode"),
                (5, "enable VPID"),
                (6, "WBINVD exiting"),
                (7, "unrestricted guest"),
                (8, "APIC-register virtualization"),
                (9, "virtual-interrupt delivery"),
                (10, "PAUSE-loop exiting"),
                (12, "enable INVPCID"),
                (13, "enable VM functions"),
                (20, "enable XSAVES/XRSTORS"),
                (26, "enable user wait and pause"),
            ],
            Self::Tertiary => &[(0, "LOADIWKEY exiting"), (4, "IPI virtualization"), (7, "virtualize IA32_SPEC_CTRL")],
            Self::Exit => &[
                (2, "save debug controls"),
                (9, "host address-space size"),
                (12, "load IA32_PERF_GLOBAL_CTRL"),
                (15, "acknowledge interrupt on exit"),
                (18, "save IA32_PAT"),
                (19, "load IA32_PAT"),
                (20, "save IA32_EFER"),
                (21, "load IA32_EFER"),
                (22, "save VMX-preemption timer value"),
            ],
            Self::Entry => {
                &[(2, "load debug controls"), (9, "IA-32e mode guest"), (14, "load IA32_PAT"), (15, "load IA32_EFER")]
            }
        };
        table.iter().find(|(b, _)| *b == bit).map(|(_, n)| *n).unwrap_or("(unnamed control)")
    }
}

/// A required control the processor does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MissingControl {
    pub word: ControlWord,
    pub bit: u32,
}

impl fmt::Display for MissingControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the CPU does not allow the {} control \"{}\" (bit {})",
            self.word.as_str(),
            self.word.bit_name(self.bit),
            self.bit
        )
    }
}

/// The value of a 32-bit control word: every must-be-1 bit, every `required` bit (an error if
/// the CPU cannot set one), and those `wanted` bits the CPU allows.
pub fn negotiate(word: ControlWord, caps: ControlCaps, required: u32, wanted: u32) -> Result<u32, MissingControl> {
    let missing = required & !caps.may_be_1;
    if missing != 0 {
        return Err(MissingControl { word, bit: missing.trailing_zeros() });
    }
    Ok(caps.must_be_1 | required | (wanted & caps.may_be_1))
}

/// The tertiary controls (64 bits, no must-be-1 bits: SDM Vol. 3D §A.3.4).
pub fn negotiate_tertiary(allowed1: u64, required: u64, wanted: u64) -> Result<u64, MissingControl> {
    let missing = required & !allowed1;
    if missing != 0 {
        return Err(MissingControl { word: ControlWord::Tertiary, bit: missing.trailing_zeros() });
    }
    Ok(required | (wanted & allowed1))
}

/// A full set of chosen controls for one VMCS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Controls {
    pub pin: u32,
    pub primary: u32,
    pub secondary: u32,
    pub tertiary: u64,
    pub exit: u32,
    pub entry: u32,
}

impl Controls {
    /// Names of the controls set in `word`, for reports.
    pub fn names(&self, word: ControlWord) -> impl Iterator<Item = &'static str> {
        let v = match word {
            ControlWord::Pin => self.pin as u64,
            ControlWord::Primary => self.primary as u64,
            ControlWord::Secondary => self.secondary as u64,
            ControlWord::Tertiary => self.tertiary,
            ControlWord::Exit => self.exit as u64,
            ControlWord::Entry => self.entry as u64,
        };
        (0..64).filter(move |b| v & (1 << b) != 0).map(move |b| word.bit_name(b))
    }
}

const fn bits(list: &[u32]) -> u32 {
    let mut v = 0;
    let mut i = 0;
    while i < list.len() {
        v |= 1 << list[i];
        i += 1;
    }
    v
}

/// VM-entry control "IA-32e mode guest" etc. (SDM Vol. 3C §25.8.1, Table 25-15).
pub mod entry_bits {
    pub const IA32E_MODE_GUEST: u32 = 9;
    pub const LOAD_IA32_PAT: u32 = 14;
    pub const LOAD_IA32_EFER: u32 = 15;
}

/// The primary controls a vCPU opens and closes while it runs, as masks (SDM Vol. 3C §25.6.2).
pub const INTERRUPT_WINDOW_EXITING: u32 = 1 << primary_bits::INTERRUPT_WINDOW_EXITING;
pub const NMI_WINDOW_EXITING: u32 = 1 << primary_bits::NMI_WINDOW_EXITING;
/// The entry control that follows the guest's EFER.LMA, as a mask.
pub const IA32E_MODE_GUEST: u32 = 1 << entry_bits::IA32E_MODE_GUEST;

/// Exit controls this hypervisor always needs beyond `caps::exit_bits`.
pub mod exit_more_bits {
    pub const SAVE_IA32_PAT: u32 = 18;
    pub const LOAD_IA32_PAT: u32 = 19;
    pub const SAVE_IA32_EFER: u32 = 20;
    pub const LOAD_IA32_EFER: u32 = 21;
    pub const SAVE_VMX_PREEMPTION_TIMER: u32 = 22;
}

/// Primary controls used beyond `caps::primary_bits`.
pub mod primary_more_bits {
    pub const USE_TSC_OFFSETTING: u32 = 3;
    pub const CR8_LOAD_EXITING: u32 = 19;
    pub const CR8_STORE_EXITING: u32 = 20;
    pub const UNCONDITIONAL_IO_EXITING: u32 = 24;
}

/// Secondary controls used beyond `caps::secondary_bits`.
pub mod secondary_more_bits {
    pub const ENABLE_RDTSCP: u32 = 3;
    pub const ENABLE_INVPCID: u32 = 12;
    pub const ENABLE_XSAVES: u32 = 20;
}

/// Options that change the controls a vCPU gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VcpuControlOptions {
    /// How interrupts reach the guest (`super::interrupt_path`), already chosen for the CPU.
    pub path: InterruptPath,
    /// The guest's APIC is in x2APIC mode (virtualize x2APIC mode) rather than xAPIC mode
    /// (virtualize APIC accesses).
    pub x2apic: bool,
    /// HLT exits (the "exit" halt mode) instead of halting inside the guest.
    pub hlt_exiting: bool,
    /// Unrestricted guest: the vCPU runs real mode and protected mode without paging (a
    /// multiboot hand-off, a SIPI start) under EPT.
    pub unrestricted_guest: bool,
    /// The injection path without a TPR shadow even where the CPU has one (the manifest's
    /// `debug_no_tpr_shadow`, to test that variant on CPUs that all have it).
    pub no_tpr_shadow: bool,
}

/// The controls of a 64-bit guest vCPU (SDM Vol. 3C §25.6): EPT (with VPID where the CPU has
/// it: without, every VM entry and exit flushes the guest's linear mappings, §29.4.3.1, which
/// is all a VPID-less vCPU needs); exits on I/O, MSRs (through the bitmap), external
/// interrupts (acknowledged on exit) and the VMX-preemption timer watchdog; and as much APIC
/// virtualization (ch. 30) as `opts.path` uses:
/// - `Injection`: APIC-access virtualization in xAPIC mode and a TPR shadow where the CPU has
///   one, else CR8-load and CR8-store exiting (the hypervisor models the rest of the APIC and
///   injects interrupts, with interrupt-window exiting);
/// - `VirtualDelivery`: APIC-register virtualization and virtual-interrupt delivery too, and
///   x2APIC-mode virtualization;
/// - `Posted`: posted-interrupt processing too;
/// - `Ipiv`: IPI virtualization (tertiary bit 4) too.
pub fn vcpu_controls(caps: &VmxCaps, opts: VcpuControlOptions) -> Result<Controls, MissingControl> {
    use ControlWord::*;
    use InterruptPath::*;
    let path = opts.path;
    // First, so that a CPU without IPIv is told so, whatever else it lacks.
    let tertiary =
        if path == Ipiv { negotiate_tertiary(caps.tertiary, 1 << tertiary_bits::IPI_VIRTUALIZATION, 0)? } else { 0 };
    let posted = if path >= Posted { 1 << pin_bits::PROCESS_POSTED_INTERRUPTS } else { 0 };
    let pin = negotiate(
        Pin,
        caps.pin,
        posted
            | bits(&[
                pin_bits::EXTERNAL_INTERRUPT_EXITING,
                pin_bits::NMI_EXITING,
                pin_bits::VIRTUAL_NMIS,
                pin_bits::ACTIVATE_VMX_PREEMPTION_TIMER,
            ]),
        0,
    )?;
    let mut primary_req = bits(&[
        primary_more_bits::UNCONDITIONAL_IO_EXITING,
        primary_bits::USE_MSR_BITMAPS,
        primary_bits::ACTIVATE_SECONDARY_CONTROLS,
    ]);
    // Without a TPR shadow, MOV to and from CR8 would reach the physical TPR: they exit
    // instead (SDM Vol. 3C §26.1.3), and the hypervisor's APIC model answers.
    let tpr_shadow = path > Injection || (caps.primary.allows(primary_bits::USE_TPR_SHADOW) && !opts.no_tpr_shadow);
    primary_req |= if tpr_shadow {
        1 << primary_bits::USE_TPR_SHADOW
    } else {
        bits(&[primary_more_bits::CR8_LOAD_EXITING, primary_more_bits::CR8_STORE_EXITING])
    };
    if opts.hlt_exiting {
        primary_req |= 1 << primary_bits::HLT_EXITING;
    }
    if tertiary != 0 {
        primary_req |= 1 << primary_bits::ACTIVATE_TERTIARY_CONTROLS;
    }
    // "NMI-window exiting" is set only while a virtual NMI waits (vmx::events), and
    // "interrupt-window exiting" only while an injected interrupt waits (the injection path):
    // checked here, left clear in the base value.
    let mut windows = 1 << primary_bits::NMI_WINDOW_EXITING;
    if path == Injection {
        windows |= 1 << primary_bits::INTERRUPT_WINDOW_EXITING;
    }
    // TSC offsetting where offered: 0 until the guest writes IA32_TSC (a WRMSR the SDM allows).
    let primary =
        negotiate(Primary, caps.primary, primary_req | windows, 1 << primary_more_bits::USE_TSC_OFFSETTING)? & !windows;
    // In x2APIC mode the injection path intercepts every x2APIC MSR (the MSR bitmap) and needs
    // no x2APIC-mode virtualization; an xAPIC access always goes through the APIC-access page.
    let apic_access = match (opts.x2apic, path) {
        (false, _) => 1 << secondary_bits::VIRTUALIZE_APIC_ACCESSES,
        (true, Injection) => 0,
        (true, _) => 1 << secondary_bits::VIRTUALIZE_X2APIC_MODE,
    };
    let delivery = if path >= VirtualDelivery {
        bits(&[secondary_bits::APIC_REGISTER_VIRTUALIZATION, secondary_bits::VIRTUAL_INTERRUPT_DELIVERY])
    } else {
        0
    };
    let unrestricted = if opts.unrestricted_guest { 1 << secondary_bits::UNRESTRICTED_GUEST } else { 0 };
    let secondary = negotiate(
        Secondary,
        caps.secondary,
        unrestricted | apic_access | delivery | 1 << secondary_bits::ENABLE_EPT,
        bits(&[
            secondary_bits::ENABLE_VPID,
            secondary_more_bits::ENABLE_RDTSCP,
            secondary_more_bits::ENABLE_INVPCID,
            secondary_more_bits::ENABLE_XSAVES,
        ]),
    )?;
    let exit = negotiate(
        Exit,
        caps.exit,
        bits(&[
            exit_bits::HOST_ADDRESS_SPACE_SIZE,
            exit_bits::ACKNOWLEDGE_INTERRUPT_ON_EXIT,
            exit_more_bits::SAVE_IA32_PAT,
            exit_more_bits::LOAD_IA32_PAT,
            exit_more_bits::SAVE_IA32_EFER,
            exit_more_bits::LOAD_IA32_EFER,
            exit_more_bits::SAVE_VMX_PREEMPTION_TIMER,
        ]),
        0,
    )?;
    let entry = negotiate(
        Entry,
        caps.entry,
        bits(&[entry_bits::IA32E_MODE_GUEST, entry_bits::LOAD_IA32_PAT, entry_bits::LOAD_IA32_EFER]),
        0,
    )?;
    Ok(Controls { pin, primary, secondary, tertiary, exit, entry })
}

impl Controls {
    /// Whether the processor delivers virtual interrupts (secondary bit 9; SDM Vol. 3C §30.2):
    /// then RVI, the EOI-exit bitmap and virtual EOIs exist; otherwise the hypervisor injects.
    pub fn virtual_interrupt_delivery(&self) -> bool {
        self.secondary & (1 << secondary_bits::VIRTUAL_INTERRUPT_DELIVERY) != 0
    }

    /// Whether "process posted interrupts" is set (pin-based bit 7; SDM Vol. 3C §30.6): the
    /// processor itself moves what is posted into the virtual APIC on a notification.
    pub fn process_posted_interrupts(&self) -> bool {
        self.pin & (1 << pin_bits::PROCESS_POSTED_INTERRUPTS) != 0
    }

    /// Whether "use TPR shadow" is set (else CR8 accesses exit: the injection path without one).
    pub fn tpr_shadow(&self) -> bool {
        self.primary & (1 << primary_bits::USE_TPR_SHADOW) != 0
    }

    /// Whether "use TSC offsetting" is set (a guest's WRMSR to IA32_TSC moves its TSC).
    pub fn tsc_offsetting(&self) -> bool {
        self.primary & (1 << primary_more_bits::USE_TSC_OFFSETTING) != 0
    }

    /// Whether "enable VPID" is set.
    pub fn vpid(&self) -> bool {
        self.secondary & (1 << secondary_bits::ENABLE_VPID) != 0
    }
}

#[cfg(test)]
mod tests;
