//! The way interrupts reach a VM's guest, chosen per VM from what the CPU offers (best first):
//!
//! - `ipiv`: IPI virtualization (SDM Vol. 3C §30.1.6): a guest's ICR write reaches the target
//!   vCPU's posted-interrupt descriptor without a VM exit;
//! - `posted`: APIC virtualization with posted interrupts (§30.6): an ICR write exits (the exit
//!   path), the hypervisor posts to the target, which takes it without an exit;
//! - `virtual-delivery`: APIC-register virtualization and virtual-interrupt delivery (§30.2)
//!   without posting: the hypervisor marks the interrupt pending and kicks the target's CPU,
//!   whose next VM entry evaluates it (one external-interrupt exit on the target);
//! - `injection`: only APIC-access virtualization (§30.4), with a TPR shadow where the CPU has
//!   one (§30.1.2; else CR8 accesses exit): the hypervisor models the local APIC and injects
//!   each interrupt as an event at VM entry, opening an interrupt window when the guest cannot
//!   take it yet (§25.6.2, §27.6).
//!
//! What every path needs (EPT, unrestricted guest, the controls of `controls::vcpu_controls`)
//! is checked first; a CPU without it is refused with the feature's name.

#[cfg(feature = "alloc")]
use alloc::{format, string::String, vec::Vec};
#[cfg(feature = "alloc")]
use core::fmt;

#[cfg(feature = "alloc")]
use super::caps::VmxCaps;
#[cfg(feature = "alloc")]
use super::controls::{Controls, MissingControl, VcpuControlOptions, vcpu_controls};
#[cfg(feature = "alloc")]
use super::path_kind::InterruptPath;
#[cfg(feature = "alloc")]
use super::path_kind::PathRequest;
#[cfg(feature = "alloc")]
use crate::apic::regs::{X2APIC_MSR_FIRST, X2APIC_MSR_LAST, msr};

#[cfg(feature = "alloc")]
/// What `choose` settled for a VM, once: its path, why each better one was not used (`None`
/// for IPIv), and the vCPU controls of both APIC modes, negotiated here and nowhere else. The
/// VM holds it; set-up, the run loop and the exit handlers ask it rather than test the path,
/// so a new path (or path element) changes this type and its tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPlan {
    pub path: InterruptPath,
    pub why_not_better: Option<String>,
    xapic: Controls,
    x2apic: Controls,
}

/// Who puts an interrupt from another CPU into the guest: the processor (posted-interrupt
/// processing: the ipiv and posted paths), the run loop folding the descriptor into VIRR and
/// RVI before entry (virtual-delivery), or the run loop injecting it from the modelled APIC
/// (injection). The kernel's run loop takes it as a const parameter, not a field it tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Delivery {
    Posted,
    Folded,
    Injected,
}

#[cfg(feature = "alloc")]
impl PathPlan {
    /// The controls of a vCPU whose APIC is in x2APIC mode (`x2apic`) or xAPIC mode (every vCPU
    /// starts in xAPIC mode): "virtualize x2APIC mode" and "virtualize APIC accesses" are
    /// exclusive (SDM Vol. 3C §26.2.1.1), and the injection path sets neither in x2APIC mode.
    pub fn controls(&self, x2apic: bool) -> Controls {
        if x2apic { self.x2apic } else { self.xapic }
    }

    /// IPI virtualization is on: the PID-pointer table is in the VMCS (SDM Vol. 3C §30.1.6).
    pub fn ipiv(&self) -> bool {
        self.path == InterruptPath::Ipiv
    }

    /// Interrupts are posted: each vCPU has a posted-interrupt descriptor and notification
    /// vector in its VMCS (SDM Vol. 3C §30.6).
    pub fn posts(&self) -> bool {
        self.path >= InterruptPath::Posted
    }

    /// The hypervisor models the local APIC (the injection path): it completes every x2APIC
    /// register access, TPR, EOI and SELF IPI included, and every register read.
    pub fn models_apic(&self) -> bool {
        self.path == InterruptPath::Injection
    }

    pub fn delivery(&self) -> Delivery {
        match self.path {
            InterruptPath::Ipiv | InterruptPath::Posted => Delivery::Posted,
            InterruptPath::VirtualDelivery => Delivery::Folded,
            InterruptPath::Injection => Delivery::Injected,
        }
    }

    /// Whether RDMSR of x2APIC register `msr` passes the MSR bitmap.
    pub fn x2apic_read_passes(&self, msr: u32) -> bool {
        x2apic_read_passes(msr, self.path)
    }

    /// Whether WRMSR of x2APIC register `msr` passes the MSR bitmap.
    pub fn x2apic_write_passes(&self, msr: u32) -> bool {
        x2apic_write_passes(msr, self.path)
    }
}

#[cfg(feature = "alloc")]
/// Why a VM cannot run on this CPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathError {
    /// No EPT with 4-level walks and write-back paging structures: guest memory cannot be
    /// mapped (SDM Vol. 3C §29.3, Appendix A.10).
    NoEpt,
    /// No unrestricted guest: a multiboot kernel starts in protected mode without paging and
    /// other vCPUs start in real mode (§27.3.1.2).
    NoUnrestrictedGuest,
    /// A control every path needs (`interrupt_path` auto) or the requested path needs.
    Missing { path: InterruptPath, requested: bool, control: MissingControl },
}

#[cfg(feature = "alloc")]
impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoEpt => f.write_str(
                "the CPU lacks EPT (with 4-level page walks and write-back paging structures), \
                 which guest memory needs",
            ),
            Self::NoUnrestrictedGuest => f.write_str(
                "the CPU lacks the \"unrestricted guest\" VMX control, which a multiboot kernel \
                 (started in protected mode without paging) and every SIPI start (real mode) need",
            ),
            Self::Missing { path, requested: true, control } => {
                write!(f, "interrupt_path = {path} needs {}: {control}", path.feature())
            }
            Self::Missing { control, .. } => write!(f, "{control}, which every interrupt path needs"),
        }
    }
}

/// MSRs whose writes go straight to the virtual APIC without an exit: TPR, EOI and self-IPI
/// are virtualized by virtual-interrupt delivery; the ICR only when IPI virtualization is on,
/// because otherwise the write would reach the *physical* ICR (SDM Vol. 3C §30.5). On the
/// injection path nothing is virtualized in x2APIC mode: every write exits.
#[cfg(feature = "alloc")]
fn x2apic_write_passes(m: u32, path: InterruptPath) -> bool {
    match path {
        InterruptPath::Injection => false,
        _ => matches!(m, msr::TPR | msr::EOI | msr::SELF_IPI) || (path == InterruptPath::Ipiv && m == msr::ICR),
    }
}

/// Reads of the range pass through in x2APIC mode: with APIC-register virtualization, RDMSR of
/// 0x800–0x8FF reads the virtual-APIC page at `(msr & 0xff) << 4` (SDM Vol. 3C §30.5). All but
/// the timer's current count, which only the hypervisor's timer model knows. Without it (the
/// injection path) a read that passed would reach the physical APIC: every read exits.
#[cfg(feature = "alloc")]
fn x2apic_read_passes(m: u32, path: InterruptPath) -> bool {
    path >= InterruptPath::VirtualDelivery
        && (X2APIC_MSR_FIRST..=X2APIC_MSR_LAST).contains(&m)
        && m != msr::TIMER_CURRENT
}

#[cfg(feature = "alloc")]
/// Chooses the path for a VM: exactly the one `request` names (an error if the CPU cannot),
/// else the best the CPU offers, below IPIv if the request rules IPIv out. `base`
/// carries the VM's other options (HLT exiting, unrestricted guest); each candidate path must
/// negotiate in both APIC modes, since the guest may switch to x2APIC mode at any time.
pub fn choose(caps: &VmxCaps, request: PathRequest, base: VcpuControlOptions) -> Result<PathPlan, PathError> {
    let f = caps.features();
    if !f.ept {
        return Err(PathError::NoEpt);
    }
    if base.unrestricted_guest && !f.unrestricted_guest {
        return Err(PathError::NoUnrestrictedGuest);
    }
    let works = |path| -> Result<[Controls; 2], MissingControl> {
        Ok([
            vcpu_controls(caps, VcpuControlOptions { path, x2apic: false, ..base })?,
            vcpu_controls(caps, VcpuControlOptions { path, x2apic: true, ..base })?,
        ])
    };
    let plan = |path, [xapic, x2apic]: [Controls; 2], why_not_better| PathPlan { path, why_not_better, xapic, x2apic };
    let ipiv_allowed = match request {
        PathRequest::Exact(path) => {
            let controls = works(path).map_err(|control| PathError::Missing { path, requested: true, control })?;
            let why = (path < InterruptPath::Ipiv).then(|| format!("interrupt_path = {path} in the manifest"));
            return Ok(plan(path, controls, why));
        }
        PathRequest::Best { ipiv } => ipiv,
    };
    let mut skipped = Vec::new();
    if !ipiv_allowed {
        skipped.push(format!("{}: ipiv = off in the manifest", InterruptPath::Ipiv.feature()));
    }
    let ceiling = if ipiv_allowed { InterruptPath::Ipiv } else { InterruptPath::Posted };
    for path in InterruptPath::BEST_FIRST.into_iter().filter(|p| *p <= ceiling) {
        match works(path) {
            Ok(controls) => {
                let why = (!skipped.is_empty()).then(|| skipped.join("; "));
                return Ok(plan(path, controls, why));
            }
            Err(control) if path == InterruptPath::Injection => {
                return Err(PathError::Missing { path, requested: false, control });
            }
            Err(control) => skipped.push(format!("{}: {control}", path.feature())),
        }
    }
    unreachable!("the loop ends at the injection path, which returns either way")
}

#[cfg(test)]
mod tests;
