//! What a VM boots: its multiboot v1 kernel, modules, command line and boot information placed
//! in guest RAM as QEMU's `-kernel` places them (`hvcore::multiboot`), or a Linux bzImage with
//! its initrd and zero page (`hvcore::linux`); and the ACPI tables where a BIOS leaves them
//! (`hvcore::acpi_tables`). The registers the bootstrap vCPU starts with are
//! `hvcore::start_state`'s; `vcpu::setup` loads them.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use hvcore::acpi_tables;
use hvcore::devices::pc::IO_APIC_ID;
use hvcore::manifest::{ApicMode, VmSpec};
use hvcore::start_state::{self, StartState};
use hvcore::{linux, multiboot};

/// How the bootstrap vCPU starts; the others wait for a SIPI.
#[derive(Clone, Copy, Debug)]
pub enum Boot {
    /// At `entry` in 32-bit protected mode with EBX = `info` (the multiboot information).
    Multiboot { entry: u32, info: u32 },
    /// At Linux's 64-bit entry with RSI = the zero page.
    Linux { entry: u64, zero_page: u64 },
}

impl Boot {
    /// The bootstrap vCPU's start state.
    pub fn start(&self) -> StartState {
        match *self {
            Self::Multiboot { entry, info } => start_state::multiboot(entry, info),
            Self::Linux { entry, zero_page } => start_state::linux64(
                entry,
                zero_page,
                linux::PML4_GPA,
                (linux::GDT_GPA, linux::GDT_LIMIT),
                linux::BOOT_CS,
                linux::BOOT_DS,
            ),
        }
    }
}

/// Loads `spec`'s kernel and modules (from `files`, the ramdisk's) and the ACPI tables into
/// `ram`, the VM's zeroed RAM, before any of its vCPUs runs.
pub fn load<'f>(spec: &VmSpec, files: &dyn Fn(&str) -> Option<&'f [u8]>, ram: &mut [u8]) -> Result<Boot, String> {
    // The manifest was checked (VmSpec::check_boot); a file missing now is still an error.
    let file = |name: &str| files(name).ok_or_else(|| format!("`{name}` is not in the ramdisk"));
    let boot =
        if spec.linux.is_empty() { multiboot_kernel(spec, &file, ram)? } else { linux_kernel(spec, &file, ram)? };
    let tables = acpi_tables::build(&acpi_tables::Platform {
        vcpus: spec.vcpus,
        x2apic: spec.apic == ApicMode::X2Apic,
        io_apic_id: Some(IO_APIC_ID),
    });
    let at = acpi_tables::RSDP_GPA as usize;
    ram.get_mut(at..at + tables.len())
        .ok_or_else(|| format!("{} MiB of RAM cannot hold the ACPI tables", spec.ram_mib))?
        .copy_from_slice(&tables);
    Ok(boot)
}

type Files<'a, 'f> = dyn Fn(&str) -> Result<&'f [u8], String> + 'a;

fn linux_kernel(spec: &VmSpec, file: &Files<'_, '_>, ram: &mut [u8]) -> Result<Boot, String> {
    let image = file(&spec.linux)?;
    let plan = linux::LoadPlan::new(image, ram.len() as u64).map_err(|e| format!("linux `{}`: {e}", spec.linux))?;
    let initrd = if spec.initrd.is_empty() { None } else { Some(file(&spec.initrd)?) };
    let placed = linux::place(ram, &plan, image, &spec.cmdline, initrd, acpi_tables::RSDP_GPA)
        .map_err(|e| format!("linux `{}`: {e}", spec.linux))?;
    Ok(Boot::Linux { entry: placed.entry, zero_page: placed.zero_page })
}

fn multiboot_kernel(spec: &VmSpec, file: &Files<'_, '_>, ram: &mut [u8]) -> Result<Boot, String> {
    let kernel = file(&spec.kernel)?;
    let plan = multiboot::load::LoadPlan::new(kernel, ram.len() as u64)
        .map_err(|e| format!("kernel `{}`: {e}", spec.kernel))?;
    plan.load(kernel, ram);
    let mut modules = Vec::new();
    for m in &spec.modules {
        modules.push(multiboot::load::Module { data: file(m)?, string: m });
    }
    let placed = multiboot::load::place(ram, &plan, &spec.multiboot_cmdline(), &modules)?;
    Ok(Boot::Multiboot { entry: plan.entry, info: placed.info })
}
