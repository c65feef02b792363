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
use super::controls::{MissingControl, VcpuControlOptions, vcpu_controls};
#[cfg(feature = "alloc")]
use super::path_kind::InterruptPath;
#[cfg(feature = "alloc")]
use super::path_kind::IpivSetting;

#[cfg(feature = "alloc")]
/// The path a VM gets, and why each better one was not used (`None` for IPIv).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathChoice {
    pub path: InterruptPath,
    pub why_not_better: Option<String>,
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
    /// `ipiv = on` with an `interrupt_path` other than `ipiv`.
    Conflict(InterruptPath),
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
            Self::Conflict(path) => write!(f, "ipiv = on asks for IPI virtualization, but interrupt_path = {path}"),
        }
    }
}

#[cfg(feature = "alloc")]
/// Chooses the path for a VM: exactly `requested` if given (an error if the CPU cannot), IPIv
/// if `ipiv = on` (likewise), else the best the CPU offers, below IPIv if `ipiv = off`. `base`
/// carries the VM's other options (HLT exiting, unrestricted guest); each candidate path must
/// negotiate in both APIC modes, since the guest may switch to x2APIC mode at any time.
pub fn choose(
    caps: &VmxCaps,
    ipiv: IpivSetting,
    requested: Option<InterruptPath>,
    base: VcpuControlOptions,
) -> Result<PathChoice, PathError> {
    let f = caps.features();
    if !f.ept {
        return Err(PathError::NoEpt);
    }
    if base.unrestricted_guest && !f.unrestricted_guest {
        return Err(PathError::NoUnrestrictedGuest);
    }
    let works = |path| -> Result<(), MissingControl> {
        for x2apic in [false, true] {
            vcpu_controls(caps, VcpuControlOptions { path, x2apic, ..base })?;
        }
        Ok(())
    };
    let exact = match (requested, ipiv) {
        (Some(p), IpivSetting::On) if p != InterruptPath::Ipiv => return Err(PathError::Conflict(p)),
        (Some(p), _) => Some(p),
        (None, IpivSetting::On) => Some(InterruptPath::Ipiv),
        (None, _) => None,
    };
    if let Some(path) = exact {
        works(path).map_err(|control| PathError::Missing { path, requested: true, control })?;
        let why = (path < InterruptPath::Ipiv).then(|| format!("interrupt_path = {path} in the manifest"));
        return Ok(PathChoice { path, why_not_better: why });
    }
    let mut skipped = Vec::new();
    if ipiv == IpivSetting::Off {
        skipped.push(format!("{}: ipiv = off in the manifest", InterruptPath::Ipiv.feature()));
    }
    let ceiling = if ipiv == IpivSetting::Off { InterruptPath::Posted } else { InterruptPath::Ipiv };
    for path in InterruptPath::BEST_FIRST.into_iter().filter(|p| *p <= ceiling) {
        match works(path) {
            Ok(()) => {
                let why = (!skipped.is_empty()).then(|| skipped.join("; "));
                return Ok(PathChoice { path, why_not_better: why });
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
