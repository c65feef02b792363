//! The names of the interrupt paths and of the IPIv setting: what a manifest asks for and what
//! HV-SUMMARY reports. A leaf, so the manifest, the control negotiation
//! (`controls::vcpu_controls`) and the path choice (`interrupt_path::choose`) can all name them
//! without importing each other.

use core::fmt;

/// Whether to use IPI virtualization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpivSetting {
    /// On where the CPU has it.
    Auto,
    /// Required: the VM fails to start where the CPU lacks it.
    On,
    Off,
}

impl IpivSetting {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::On => "on",
            Self::Off => "off",
        }
    }
}

/// What a manifest asks of the path, as one value: exactly one path (`interrupt_path = X`, or
/// `ipiv = on`), or the best the CPU offers (below IPIv with `ipiv = off`). The manifest makes
/// it from its two keys, having refused a contradiction between them; `interrupt_path::choose`
/// takes it, so the two keys are reconciled in one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathRequest {
    Exact(InterruptPath),
    Best { ipiv: bool },
}

/// An interrupt path, ordered worst to best.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum InterruptPath {
    Injection,
    VirtualDelivery,
    #[default]
    Posted,
    Ipiv,
}

impl InterruptPath {
    pub const BEST_FIRST: [Self; 4] = [Self::Ipiv, Self::Posted, Self::VirtualDelivery, Self::Injection];

    /// The name in manifests and HV-SUMMARY's `interrupt_path`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ipiv => "ipiv",
            Self::Posted => "posted",
            Self::VirtualDelivery => "virtual-delivery",
            Self::Injection => "injection",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::BEST_FIRST.into_iter().find(|p| p.as_str() == s)
    }

    /// What the path is built on, for reasons.
    pub fn feature(self) -> &'static str {
        match self {
            Self::Ipiv => "IPI virtualization",
            Self::Posted => "posted interrupts",
            Self::VirtualDelivery => "virtual-interrupt delivery",
            Self::Injection => "event injection",
        }
    }
}

// In HV-SUMMARY's `interrupt_path` by the manifest's name.
#[cfg(feature = "alloc")]
crate::json::by_name!(InterruptPath);

impl fmt::Display for InterruptPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
