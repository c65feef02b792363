//! Where the hypervisor (or a guest kernel, or Linux) boots: what a run is (`spec`), the one
//! entry by platform (`launch`), each platform's runner, and the emulator supervisor.

pub mod bochs;
pub mod direct;
pub mod kvm_host;
pub mod launch;
pub mod linux_native;
pub mod nested;
pub mod qemu;
pub mod spec;
pub mod supervise;
