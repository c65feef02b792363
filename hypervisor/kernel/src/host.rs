//! What the hypervisor knows about the machine it runs on, decided once at boot by the BSP and
//! then handed explicitly to what needs it (building VMs, running vCPUs, reports), so no VM or
//! vCPU code reaches up into the crate root for it.

use alloc::string::String;
use alloc::vec::Vec;

use hvcore::bootcfg::FaultInjection;
use hvcore::vmx::caps::VmxCaps;

pub struct Host {
    /// The BSP's decoded VMX capabilities (every CPU's were checked against them at VMXON).
    pub caps: VmxCaps,
    /// TSC ticks per second, measured against the PIT (under Bochs the TSC counts
    /// instructions, whatever CPUID says).
    pub tsc_hz: u64,
    /// Host APIC ID of each CPU, by CPU index (0 = BSP).
    pub apic_ids: Vec<u32>,
    /// The fault the boot config asks to inject (tests of the failure reports).
    pub fault: FaultInjection,
    /// Wall-clock seconds since 1970 at boot (the host RTC), for the VMs' RTCs.
    pub unix_time: u64,
    /// The processor's brand string (`cpu::brand`), named when a VM cannot run on it.
    pub cpu_model: String,
}
