//! What the hypervisor answers on each kind of VM exit, as pure decisions. The kernel's exit
//! handlers (hypervisor/kernel/src/vm/exits.rs) read the exit, call these, and apply the result.

#[cfg(feature = "alloc")]
pub mod census;
pub mod counters;
pub mod cpuid;
pub mod cr;
#[cfg(feature = "alloc")]
pub mod hypercall;
pub mod io;
#[cfg(feature = "alloc")]
pub mod mmio;
pub mod msr;
#[cfg(feature = "alloc")]
pub mod report;
pub mod task_switch;
pub mod xsetbv;
