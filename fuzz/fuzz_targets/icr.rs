//! Guest ICR writes: `apic::icr` decoding (xAPIC ICR_LO/ICR_HI, x2APIC WRMSR 0x830) and the
//! choice of destinations among a VM's vCPUs, with guest-written LDR/DFR values. The
//! destination mask may name only vCPUs that exist, the decision only vCPUs the ICR selects,
//! and IPI virtualization only the writes the SDM lets it take.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use hvcore::apic::icr::{
    Action, DeliveryMode, Dropped, Icr, Shorthand, Target, X2APIC_ICR_RESERVED, decide, destinations, ipiv_covers,
    x2apic_logical_id,
};
use libfuzzer_sys::fuzz_target;

/// Whether `icr` (no shorthand, logical) selects `t`, straight from the SDM's description
/// (Vol. 3A §12.6.2.2, §12.12.10.2).
fn logical_selects(icr: &Icr, t: &Target) -> bool {
    if icr.x2apic {
        let cluster = (t.apic_id >> 4) & 0xffff; // x2APIC ID[19:4]
        let member = 1u32 << (t.apic_id & 0xf);
        return icr.dest == u32::MAX || (icr.dest >> 16 == cluster && icr.dest & member != 0);
    }
    let (dest, logical_id) = (icr.dest as u8, (t.ldr >> 24) as u8);
    if dest == 0xff {
        return true;
    }
    if t.dfr >> 28 == 0xf {
        dest & logical_id != 0
    } else {
        (dest >> 4 == 0xf || dest >> 4 == logical_id >> 4) && dest & logical_id & 0xf != 0
    }
}

fn check(icr: &Icr, sender: usize, targets: &[Target]) {
    let n = targets.len();
    let all = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
    let set = destinations(icr, sender, targets);
    assert_eq!(set & !all, 0, "{icr:?}: destinations {set:#x} name vCPUs beyond {n}");
    match icr.shorthand {
        Shorthand::SelfOnly => assert_eq!(set, 1 << sender),
        Shorthand::AllIncludingSelf => assert_eq!(set, all),
        Shorthand::AllExcludingSelf => assert_eq!(set, all & !(1 << sender)),
        Shorthand::None if !icr.logical => {
            if icr.dest == icr.broadcast() {
                assert_eq!(set, all);
            } else {
                // Every APIC holding the ID takes it (xAPIC IDs are writable and may alias).
                let holders = targets.iter().enumerate().filter(|(_, t)| t.apic_id == icr.dest);
                assert_eq!(set, holders.fold(0, |m, (i, _)| m | 1 << i), "{icr:?}: physical destination");
            }
        }
        Shorthand::None => {
            for (i, t) in targets.iter().enumerate() {
                assert_eq!(set >> i & 1 == 1, logical_selects(icr, t), "{icr:?} vs {t:?}");
            }
        }
    }

    let action = decide(icr, sender, targets);
    let illegal = matches!(icr.mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority) && icr.vector < 16;
    match action {
        Action::Drop(Dropped::IllegalVector) => assert!(illegal),
        Action::Drop(Dropped::NoSuchDestination) => assert!(!illegal && set == 0),
        Action::Drop(Dropped::UnsupportedMode) => {
            assert!(!illegal && set != 0);
            match icr.mode {
                DeliveryMode::Smi | DeliveryMode::Reserved(_) => {}
                // INIT level de-assert.
                DeliveryMode::Init => assert!(icr.level_triggered && !icr.assert),
                m => panic!("mode {m:?} dropped as unsupported"),
            }
        }
        Action::Fixed { vector, targets: t } => {
            assert!(!illegal && vector == icr.vector && t != 0 && t & !set == 0);
            match icr.mode {
                DeliveryMode::Fixed => assert_eq!(t, set),
                DeliveryMode::LowestPriority => assert_eq!(t.count_ones(), 1),
                m => panic!("Fixed action for mode {m:?}"),
            }
        }
        Action::Nmi { targets: t } => assert!(icr.mode == DeliveryMode::Nmi && t == set && t != 0),
        Action::Init { targets: t } => assert!(icr.mode == DeliveryMode::Init && t == set && t != 0),
        Action::StartUp { vector, targets: t } => {
            assert!(icr.mode == DeliveryMode::StartUp && vector == icr.vector && t == set && t != 0)
        }
    }
    if ipiv_covers(icr) {
        assert!(icr.mode == DeliveryMode::Fixed && !icr.logical && icr.shorthand == Shorthand::None);
        assert!(!icr.level_triggered);
    }
}

fn run(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    // The VM: 1..=64 vCPUs (manifest::MAX_VCPUS); APIC IDs are vCPU indices in the hypervisor,
    // arbitrary here half the time; LDR and DFR are whatever the guest wrote.
    let n = u.int_in_range(1..=64usize)?;
    let ids_are_indices = bool::arbitrary(u)?;
    let mut targets = Vec::with_capacity(n);
    for i in 0..n {
        let apic_id = if ids_are_indices { i as u32 } else { u32::arbitrary(u)? };
        targets.push(Target { apic_id, ldr: u32::arbitrary(u)?, dfr: u32::arbitrary(u)? });
    }
    let sender = u.int_in_range(0..=n - 1)?;

    let (low, high) = (u32::arbitrary(u)?, u32::arbitrary(u)?);
    let x = Icr::xapic(low, high);
    assert!(!x.x2apic && x.dest == high >> 24 && x.vector == low as u8);
    assert_eq!((x.logical, x.assert, x.level_triggered), (low & 1 << 11 != 0, low & 1 << 14 != 0, low & 1 << 15 != 0));
    check(&x, sender, &targets);

    let value = u64::arbitrary(u)?;
    match Icr::x2apic(value) {
        None => assert_ne!(value & X2APIC_ICR_RESERVED, 0),
        Some(icr) => {
            assert_eq!(value & X2APIC_ICR_RESERVED, 0);
            assert!(icr.x2apic && icr.dest == (value >> 32) as u32);
            // Bit 12 is ignored, and the low half decodes as in xAPIC mode.
            assert_eq!(Icr::x2apic(value ^ 1 << 12), Some(icr));
            let same = Icr::xapic(value as u32, 0);
            assert_eq!(
                (same.vector, same.mode, same.logical, same.shorthand),
                (icr.vector, icr.mode, icr.logical, icr.shorthand)
            );
            check(&icr, sender, &targets);
        }
    }
    // The x2APIC logical ID of every APIC ID has exactly one member bit.
    assert_eq!((x2apic_logical_id(value as u32) & 0xffff).count_ones(), 1);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
