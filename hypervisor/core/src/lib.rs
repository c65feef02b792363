//! Pure logic of the hypervisor, `no_std` and unit-tested on the host with `cargo test`.
//!
//! Nothing here executes a privileged instruction: the kernel (`hypervisor/kernel`) reads the
//! hardware and hands values in; this crate decides what they mean. xtask uses the same code to
//! validate what it hands the kernel, and guests use the ABI modules.
#![no_std]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(test)]
extern crate std;

#[cfg(feature = "alloc")]
pub mod acpi_tables;
pub mod apic;
pub mod arch;
pub mod bench_isr;
#[cfg(feature = "alloc")]
pub mod bootcfg;
pub mod budget;
#[cfg(feature = "alloc")]
pub mod devices;
pub mod ept;
pub mod exits;
pub mod frames;
pub mod guest_abi;
pub mod guest_paging;
#[cfg(feature = "alloc")]
pub mod json;
#[cfg(feature = "alloc")]
pub mod linux;
#[cfg(feature = "alloc")]
pub mod manifest;
pub mod multiboot;
#[cfg(feature = "alloc")]
pub mod ramdisk;
#[cfg(feature = "alloc")]
pub mod start_state;
pub mod stats;
#[cfg(feature = "alloc")]
pub mod summary;
pub mod vmx;
