//! ACPI: the processors and their local APIC IDs, from the MADT (through the `acpi` crate).

use acpi::platform::ProcessorState;
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
use alloc::vec::Vec;
use core::ptr::NonNull;

use crate::memory::phys_to_virt;

/// Maps ACPI tables through the bootloader's physical-memory window: nothing to map or unmap.
#[derive(Clone, Copy)]
struct PhysWindow;

impl AcpiHandler for PhysWindow {
    unsafe fn map_physical_region<T>(&self, pa: usize, size: usize) -> PhysicalMapping<Self, T> {
        let va = NonNull::new(phys_to_virt(pa as u64).cast::<T>()).expect("physical window is not at 0");
        // SAFETY: the window maps all physical memory; the caller guarantees a valid T at pa.
        unsafe { PhysicalMapping::new(pa, va, size, size, *self) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// The processors the firmware lists.
pub struct Processors {
    pub bsp_apic_id: u32,
    /// Enabled application processors' APIC IDs, in the MADT's order (the order to start them).
    pub aps: Vec<u32>,
    /// Processors the MADT marks disabled (never started).
    pub disabled: usize,
}

pub fn processors(rsdp: u64) -> Result<Processors, acpi::AcpiError> {
    // SAFETY: the bootloader found the RSDP at this physical address.
    let tables = unsafe { AcpiTables::from_rsdp(PhysWindow, rsdp as usize)? };
    let info = tables.platform_info()?;
    let pi = info.processor_info.ok_or(acpi::AcpiError::InvalidMadt(acpi::madt::MadtError::UnexpectedEntry))?;
    let enabled = |p: &&acpi::platform::Processor| p.state != ProcessorState::Disabled;
    Ok(Processors {
        bsp_apic_id: pi.boot_processor.local_apic_id,
        aps: pi.application_processors.iter().filter(enabled).map(|p| p.local_apic_id).collect(),
        disabled: pi.application_processors.iter().filter(|p| p.state == ProcessorState::Disabled).count(),
    })
}
