//! VMX: capability MSRs and their decoding.

pub mod caps;
pub mod msr;
