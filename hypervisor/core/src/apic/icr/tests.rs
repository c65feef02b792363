use super::*;

fn vm(n: u32) -> std::vec::Vec<Target> {
    (0..n).map(|i| Target { apic_id: i, ldr: 0, dfr: 0xffff_ffff }).collect()
}

#[test]
fn xapic_fixed_physical() {
    let icr = Icr::xapic(0x0000_4041, 2 << 24);
    assert_eq!((icr.vector, icr.mode, icr.logical, icr.dest), (0x41, DeliveryMode::Fixed, false, 2));
    assert_eq!(decide(&icr, 0, &vm(4)), Action::Fixed { vector: 0x41, targets: 0b0100 });
    assert!(ipiv_covers(&icr));
}

#[test]
fn x2apic_layout_and_reserved_bits() {
    let icr = Icr::x2apic((3u64 << 32) | 0x4050).unwrap();
    assert_eq!((icr.vector, icr.dest, icr.x2apic), (0x50, 3, true));
    assert_eq!(Icr::x2apic(1 << 20 | 0x50), None);
    assert_eq!(decide(&icr, 0, &vm(4)), Action::Fixed { vector: 0x50, targets: 0b1000 });
}

/// Each bit of ICR[31:0] against the text, not against another implementation: WRMSR to the
/// x2APIC ICR raises #GP for bits 31:20, 17:16 and 13 (SDM Vol. 3A "ICR Operation in x2APIC
/// Mode", and Vol. 3C "Virtualizing MSR-Based APIC Accesses" for the virtualized WRMSR), and
/// "WRMSR to the ICR MSR ignores bit 12 of its source operand" (x2APIC specification §2.4.3).
#[test]
fn x2apic_icr_bit_by_bit() {
    let faults = |bit: u32| bit == 13 || bit == 16 || bit == 17 || bit >= 20;
    for bit in 0..32 {
        let value = (1u64 << 32) | (1u64 << bit);
        assert_eq!(Icr::x2apic(value).is_none(), faults(bit), "ICR bit {bit}");
    }
    // Bit 12 is ignored: the IPI is the same as without it.
    assert_eq!(Icr::x2apic((1 << 32) | (1 << 12) | 0x50), Icr::x2apic((1 << 32) | 0x50));
    // The destination (63:32) has no reserved bits.
    assert!(Icr::x2apic(0xffff_ffff_0000_0050).is_some());
}

#[test]
fn aliased_xapic_ids_each_take_a_physical_ipi() {
    let mut t = vm(3);
    t[0].apic_id = 0x28;
    t[2].apic_id = 0x28;
    let icr = Icr::xapic(0x0000_40f1, 0x28 << 24);
    assert_eq!(decide(&icr, 1, &t), Action::Fixed { vector: 0xf1, targets: 0b101 });
    assert_eq!(decide(&Icr::xapic(0x40f1, 0), 1, &t), Action::Drop(Dropped::NoSuchDestination));
}

#[test]
fn shorthands() {
    let t = vm(4);
    let self_ipi = Icr::xapic(0x0004_0060, 0);
    assert_eq!(decide(&self_ipi, 2, &t), Action::Fixed { vector: 0x60, targets: 0b0100 });
    let all = Icr::xapic(0x0008_0060, 0);
    assert_eq!(destinations(&all, 2, &t), 0b1111);
    let others = Icr::xapic(0x000c_0060, 0);
    assert_eq!(destinations(&others, 2, &t), 0b1011);
    assert!(!ipiv_covers(&others));
}

#[test]
fn physical_broadcast_and_missing_destination() {
    let t = vm(3);
    assert_eq!(destinations(&Icr::xapic(0x60, 0xff << 24), 0, &t), 0b111);
    assert_eq!(destinations(&Icr::x2apic(0xffff_ffff_0000_0060).unwrap(), 0, &t), 0b111);
    // APIC ID 9 is not in this VM: nothing delivered, never an out-of-bounds index.
    assert_eq!(decide(&Icr::xapic(0x60, 9 << 24), 0, &t), Action::Drop(Dropped::NoSuchDestination));
    assert_eq!(decide(&Icr::x2apic((1000u64 << 32) | 0x60).unwrap(), 0, &t), Action::Drop(Dropped::NoSuchDestination));
}

#[test]
fn xapic_logical_flat_and_cluster() {
    let mut t = vm(4);
    for (i, x) in t.iter_mut().enumerate() {
        x.ldr = 1 << (24 + i);
    }
    let flat = Icr::xapic(0x0800 | 0x70, 0b1010 << 24);
    assert_eq!(destinations(&flat, 0, &t), 0b1010);
    assert!(!ipiv_covers(&flat));
    // Cluster model: cluster 1, members 0 and 1 = LDR 0x11 and 0x12.
    for (i, x) in t.iter_mut().enumerate() {
        x.dfr = 0x0fff_ffff;
        x.ldr = (0x10 | (1 << i)) << 24;
    }
    assert_eq!(destinations(&Icr::xapic(0x0870, 0x13 << 24), 0, &t), 0b0011);
    assert_eq!(destinations(&Icr::xapic(0x0870, 0x23 << 24), 0, &t), 0, "other cluster");
    assert_eq!(destinations(&Icr::xapic(0x0870, 0xf1 << 24), 0, &t), 0b0001, "all clusters, member 0");
}

#[test]
fn x2apic_logical_cluster() {
    assert_eq!(x2apic_logical_id(0), 0x0000_0001);
    assert_eq!(x2apic_logical_id(17), 0x0001_0002);
    let t = vm(4);
    let icr = Icr::x2apic((0b0110u64 << 32) | 0x0870).unwrap();
    assert_eq!(destinations(&icr, 0, &t), 0b0110);
    let other_cluster = Icr::x2apic(((1u64 << 16 | 0b0110) << 32) | 0x0870).unwrap();
    assert_eq!(destinations(&other_cluster, 0, &t), 0);
}

#[test]
fn modes_and_illegal_vectors() {
    let t = vm(2);
    assert_eq!(decide(&Icr::xapic(0x0000_000f, 1 << 24), 0, &t), Action::Drop(Dropped::IllegalVector));
    assert_eq!(decide(&Icr::xapic(0x0000_0400, 1 << 24), 0, &t), Action::Nmi { targets: 0b10 });
    assert_eq!(decide(&Icr::xapic(0x0000_4500, 1 << 24), 0, &t), Action::Init { targets: 0b10 });
    assert_eq!(decide(&Icr::xapic(0x0000_8500, 1 << 24), 0, &t), Action::Drop(Dropped::UnsupportedMode));
    assert_eq!(decide(&Icr::xapic(0x0000_0608, 1 << 24), 0, &t), Action::StartUp { vector: 8, targets: 0b10 });
    assert_eq!(decide(&Icr::xapic(0x0000_0200, 1 << 24), 0, &t), Action::Drop(Dropped::UnsupportedMode));
    // Lowest priority picks one vCPU.
    assert_eq!(decide(&Icr::xapic(0x0008_0150, 0), 1, &t), Action::Fixed { vector: 0x50, targets: 0b01 });
    // NMIs and level-triggered IPIs are not IPIv's.
    assert!(!ipiv_covers(&Icr::xapic(0x0400, 0)));
    assert!(!ipiv_covers(&Icr::xapic(0x8050, 0)));
}
