//! Pure logic of the hypervisor, `no_std` and unit-tested on the host with `cargo test`.
//!
//! Nothing here executes a privileged instruction: the kernel (`hypervisor/kernel`) reads the
//! hardware and hands values in; this crate decides what they mean. xtask uses the same code to
//! validate what it hands the kernel, and guests use the ABI modules.
#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod bootcfg;
pub mod elf_load;
pub mod ept;
pub mod exits;
pub mod frames;
pub mod guest_abi;
pub mod guest_boot;
pub mod manifest;
pub mod ramdisk;
pub mod summary;
pub mod vmx;
