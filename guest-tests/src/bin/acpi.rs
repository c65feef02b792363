//! The VM's ACPI tables as an OS finds them: the RSDP by the standard BIOS-area scan, then the
//! XSDT, FADT and MADT through the `acpi` crate (rust-osdev, as OS kernels use it). The MADT
//! must list one enabled processor per CPU with APIC IDs 0..n, this CPU's own among them, and
//! one I/O APIC. Under this hypervisor also: the FADT forces physical destination mode (the IPIs
//! IPI virtualization covers) and says hardware-reduced, and the processor entries are Local
//! APIC or Local x2APIC ones by the VM's APIC mode (QEMU's firmware does neither).
#![no_std]
#![no_main]

use acpi::madt::{Madt, MadtEntry};
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
use core::ptr::NonNull;
use guest_tests::sync::Barrier;
use guest_tests::{Platform, apic, entry, println, report};

entry!(main);

static BARRIER: Barrier = Barrier::new();

/// Guest-physical memory is identity-mapped (the runtime's page tables).
#[derive(Clone, Copy)]
struct Identity;

impl AcpiHandler for Identity {
    unsafe fn map_physical_region<T>(&self, pa: usize, size: usize) -> PhysicalMapping<Self, T> {
        let p = NonNull::new(pa as *mut T).expect("the acpi crate mapped address 0");
        // SAFETY: the identity map covers guest RAM, where the tables and the BIOS area lie.
        unsafe { PhysicalMapping::new(pa, p, size, size, Identity) }
    }
    fn unmap_physical_region<T>(_: &PhysicalMapping<Self, T>) {}
}

fn main(me: u32, info: &'static Platform) {
    let n = info.vcpu_count;
    BARRIER.wait(n);
    // SAFETY: the BIOS area and the tables are guest RAM, mapped by `Identity`.
    let tables = unsafe { AcpiTables::search_for_rsdp_bios(Identity) }.expect("RSDP in the BIOS area");
    let fadt = tables.find_table::<acpi::fadt::Fadt>().expect("FADT");
    let flags = fadt.flags;
    if info.hypervisor {
        assert!(flags.local_xapics_must_use_physical_destination_mode(), "FADT: APIC physical destination mode");
        assert!(flags.system_is_hw_reduced_acpi(), "FADT: hardware-reduced ACPI");
    }
    let madt = tables.find_table::<Madt>().expect("MADT");
    let local_apic = madt.get().local_apic_address;
    assert_eq!(local_apic, 0xfee0_0000, "MADT: local APIC address");
    let (mut ids, mut xapic_entries, mut x2apic_entries, mut io_apics) = (0u64, 0u32, 0u32, 0u32);
    for e in madt.get().entries() {
        let (id, enabled) = match e {
            MadtEntry::LocalApic(l) => {
                xapic_entries += 1;
                (l.apic_id as u32, { l.flags } & 1 != 0)
            }
            MadtEntry::LocalX2Apic(l) => {
                x2apic_entries += 1;
                ({ l.x2apic_id }, { l.flags } & 1 != 0)
            }
            MadtEntry::IoApic(_) => {
                io_apics += 1;
                continue;
            }
            _ => continue,
        };
        assert!(enabled && id < 64 && ids & (1 << id) == 0, "processor entry APIC ID {id}: enabled, unique");
        ids |= 1 << id;
    }
    let all = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
    assert_eq!(ids, all, "one processor entry per vCPU, APIC IDs 0..{n}");
    if info.hypervisor {
        let (expected_x2, expected_x) = if apic::is_x2apic() { (n, 0) } else { (0, n) };
        assert_eq!((x2apic_entries, xapic_entries), (expected_x2, expected_x), "entry kind follows the APIC mode");
    }
    assert_eq!(io_apics, 1, "MADT: one I/O APIC");
    assert!(ids & (1 << apic::id()) != 0, "this vCPU's APIC ID is listed");
    if me == 0 {
        println!(
            "ACPI: RSDP found by the BIOS-area scan; FADT physical mode; MADT {n} processors, {io_apics} I/O APICs"
        );
    }
    BARRIER.wait(n);
    report!(
        r#"{{"test":"acpi","vcpu":{me},"processors":{n},"io_apics":{io_apics},"x2apic_entries":{x2apic_entries}}}"#
    );
}
