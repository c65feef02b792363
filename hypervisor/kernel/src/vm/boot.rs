//! What a VM boots: its multiboot v1 kernel, modules, command line and boot information placed
//! in guest RAM as QEMU's `-kernel` places them (`hvcore::multiboot`), and the ACPI tables where
//! a BIOS leaves them (`hvcore::acpi_tables`). The registers the bootstrap vCPU starts with are
//! `hvcore::start_state`'s; `vcpu::setup` loads them.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use hvcore::acpi_tables;
use hvcore::devices::IO_APIC_ID;
use hvcore::manifest::{ApicMode, VmSpec};
use hvcore::multiboot;

/// Where the bootstrap vCPU starts: `entry` in 32-bit protected mode with EBX = `info` (the
/// multiboot information); the others wait for a SIPI.
#[derive(Clone, Copy, Debug)]
pub struct Boot {
    pub entry: u32,
    pub info: u32,
}

/// Loads `spec`'s kernel and modules (from `files`, the ramdisk's) and the ACPI tables into
/// `ram`, the VM's zeroed RAM, before any of its vCPUs runs.
pub fn load<'f>(spec: &VmSpec, files: &dyn Fn(&str) -> Option<&'f [u8]>, ram: &mut [u8]) -> Result<Boot, String> {
    // The manifest was checked (VmSpec::check_boot); a file missing now is still an error.
    let file = |name: &str| files(name).ok_or_else(|| format!("`{name}` is not in the ramdisk"));
    let kernel = file(&spec.kernel)?;
    let plan =
        multiboot::LoadPlan::new(kernel, ram.len() as u64).map_err(|e| format!("kernel `{}`: {e}", spec.kernel))?;
    plan.load(kernel, ram);
    let mut modules = Vec::new();
    for m in &spec.modules {
        modules.push(multiboot::Module { data: file(m)?, string: m });
    }
    let placed = multiboot::place(ram, &plan, &spec.cmdline, &modules)?;
    let tables = acpi_tables::build(&acpi_tables::Platform {
        vcpus: spec.vcpus,
        x2apic: spec.apic == ApicMode::X2Apic,
        io_apic_id: Some(IO_APIC_ID),
    });
    let at = acpi_tables::RSDP_GPA as usize;
    ram.get_mut(at..at + tables.len())
        .ok_or_else(|| format!("{} MiB of RAM cannot hold the ACPI tables", spec.ram_mib))?
        .copy_from_slice(&tables);
    Ok(Boot { entry: plan.entry, info: placed.info })
}
