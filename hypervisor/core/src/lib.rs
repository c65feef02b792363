//! Pure logic of the hypervisor, `no_std` and unit-tested on the host with `cargo test`.
//!
//! Nothing here executes a privileged instruction: the kernel (`hypervisor/kernel`) reads the
//! hardware and hands values in; this crate decides what they mean.
#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod bootcfg;
pub mod frames;
pub mod summary;
pub mod vmx;
