use super::*;
use crate::vmx::msr::*;
use std::collections::BTreeMap;
use std::vec::Vec;

/// MSR values read by the kernel on the project's Bochs 3.0, `cpu: model=sapphire_rapids`
/// (`cargo xtask run --platform bochs --log-level debug`, 2026-11-25).
fn bochs_sapphire_rapids() -> BTreeMap<u32, u64> {
    BTreeMap::from([
        (IA32_FEATURE_CONTROL, 0x5),
        (IA32_VMX_BASIC, 0x01d8_1000_0000_0004),
        (IA32_VMX_TRUE_PINBASED_CTLS, 0xff_0000_0016),
        (IA32_VMX_TRUE_PROCBASED_CTLS, 0xfffb_fffe_0400_6172),
        (IA32_VMX_TRUE_EXIT_CTLS, 0xf87f_ffff_0003_6dfb),
        (IA32_VMX_TRUE_ENTRY_CTLS, 0x58_ffff_0000_11fb),
        (IA32_VMX_PROCBASED_CTLS2, 0x06d7_7fff_0000_0000),
        (IA32_VMX_PROCBASED_CTLS3, 0x80),
        (IA32_VMX_EPT_VPID_CAP, 0xf01_06f3_4141),
        (IA32_VMX_MISC, 0x6004_01e0),
        (IA32_VMX_CR0_FIXED0, 0x8000_0021),
        (IA32_VMX_CR0_FIXED1, 0xffff_ffff),
        (IA32_VMX_CR4_FIXED0, 0x2000),
        (IA32_VMX_CR4_FIXED1, 0x3f7_3fff),
    ])
}

/// Reads MSRs from `msrs`, recording the order; an absent MSR panics like the #GP a real
/// RDMSR of a nonexistent MSR raises.
fn read(cpuid_vmx: bool, msrs: &BTreeMap<u32, u64>) -> (VmxMsrs, Vec<u32>) {
    let mut seen = Vec::new();
    let m = VmxMsrs::read(cpuid_vmx, |i| {
        seen.push(i);
        *msrs.get(&i).unwrap_or_else(|| panic!("#GP: RDMSR {i:#x} does not exist on this CPU"))
    });
    (m, seen)
}

fn features(msrs: &BTreeMap<u32, u64>) -> VmxFeatures {
    VmxCaps::decode(&read(true, msrs).0).unwrap().features()
}

#[test]
fn bochs_sapphire_rapids_has_everything_but_ipiv() {
    let (m, seen) = read(true, &bochs_sapphire_rapids());
    assert!(seen.contains(&IA32_VMX_PROCBASED_CTLS3));
    assert!(!seen.contains(&IA32_VMX_PINBASED_CTLS), "BASIC bit 55 set: TRUE_ MSRs are used");
    let caps = VmxCaps::decode(&m).unwrap();
    assert_eq!(caps.revision_id, 4);
    assert_eq!(caps.region_size, 0x1000);
    assert_eq!(caps.preemption_timer_shift(), 0);
    assert!(caps.true_ctls);
    assert_eq!(
        caps.features(),
        VmxFeatures {
            tertiary: true,
            ipiv: false,
            apicv: true,
            posted_interrupts: true,
            x2apic_virt: true,
            ept: true,
            vpid: true,
            unrestricted_guest: true,
        }
    );
}

#[test]
fn ipiv_is_tertiary_bit_4() {
    let mut msrs = bochs_sapphire_rapids();
    msrs.insert(IA32_VMX_PROCBASED_CTLS3, 0x80 | 1 << tertiary_bits::IPI_VIRTUALIZATION);
    assert!(features(&msrs).ipiv);
}

#[test]
fn ipiv_needs_apic_virtualization_too() {
    let mut msrs = bochs_sapphire_rapids();
    msrs.insert(IA32_VMX_PROCBASED_CTLS3, 1 << tertiary_bits::IPI_VIRTUALIZATION);
    // Take away virtual-interrupt delivery.
    msrs.insert(IA32_VMX_PROCBASED_CTLS2, 0x06d7_7dff_0000_0000);
    let f = features(&msrs);
    assert!(f.tertiary && !f.apicv && !f.posted_interrupts && !f.ipiv);
}

#[test]
fn cpu_without_tertiary_controls_never_reads_ctls3() {
    // An Ice Lake-like CPU: primary allowed-1 bit 17 clear.
    let mut msrs = bochs_sapphire_rapids();
    msrs.insert(IA32_VMX_TRUE_PROCBASED_CTLS, 0xfff9_fffe_0400_6172);
    msrs.remove(&IA32_VMX_PROCBASED_CTLS3);
    let (m, seen) = read(true, &msrs);
    assert!(!seen.contains(&IA32_VMX_PROCBASED_CTLS3));
    assert_eq!(m.procbased3, None);
    let f = VmxCaps::decode(&m).unwrap().features();
    assert!(!f.tertiary && !f.ipiv);
    assert!(f.apicv && f.ept, "everything else is still there");
}

#[test]
fn cpu_without_apicv() {
    // Pin allowed-1 without "process posted interrupts"; secondary without APIC-register
    // virtualization, virtual-interrupt delivery and virtualize x2APIC mode.
    let mut msrs = bochs_sapphire_rapids();
    msrs.insert(IA32_VMX_TRUE_PINBASED_CTLS, 0x7f_0000_0016);
    msrs.insert(IA32_VMX_PROCBASED_CTLS2, 0x06d7_7cef_0000_0000);
    let f = features(&msrs);
    assert!(!f.apicv && !f.posted_interrupts && !f.x2apic_virt && !f.ipiv);
    assert!(f.tertiary && f.ept && f.vpid && f.unrestricted_guest);
}

#[test]
fn cpu_without_secondary_controls_has_no_ept_vpid_or_apicv() {
    let mut msrs = bochs_sapphire_rapids();
    msrs.insert(IA32_VMX_TRUE_PROCBASED_CTLS, 0x7ffb_fffe_0400_6172);
    msrs.remove(&IA32_VMX_PROCBASED_CTLS2);
    msrs.remove(&IA32_VMX_EPT_VPID_CAP);
    let (m, seen) = read(true, &msrs);
    assert!(!seen.contains(&IA32_VMX_PROCBASED_CTLS2) && !seen.contains(&IA32_VMX_EPT_VPID_CAP));
    let f = VmxCaps::decode(&m).unwrap().features();
    assert!(!f.ept && !f.vpid && !f.apicv && !f.unrestricted_guest && !f.x2apic_virt);
}

#[test]
fn without_true_controls_the_plain_msrs_are_read() {
    let mut msrs = bochs_sapphire_rapids();
    msrs.insert(IA32_VMX_BASIC, 0x0158_1000_0000_0004); // bit 55 clear
    for (t, p) in [
        (IA32_VMX_TRUE_PINBASED_CTLS, IA32_VMX_PINBASED_CTLS),
        (IA32_VMX_TRUE_PROCBASED_CTLS, IA32_VMX_PROCBASED_CTLS),
        (IA32_VMX_TRUE_EXIT_CTLS, IA32_VMX_EXIT_CTLS),
        (IA32_VMX_TRUE_ENTRY_CTLS, IA32_VMX_ENTRY_CTLS),
    ] {
        let v = msrs.remove(&t).unwrap();
        msrs.insert(p, v);
    }
    let (m, _) = read(true, &msrs);
    let caps = VmxCaps::decode(&m).unwrap();
    assert!(!caps.true_ctls);
    assert!(caps.features().apicv);
}

#[test]
fn no_cpuid_vmx_reads_nothing_and_is_unsupported() {
    let (m, seen) = read(false, &BTreeMap::new());
    assert!(seen.is_empty());
    assert_eq!(VmxCaps::decode(&m), Err(Unsupported::NoCpuidVmx));
    assert!(std::format!("{}", Unsupported::NoCpuidVmx).contains("CPUID.1:ECX.VMX"));
}

#[test]
fn feature_control_rules() {
    use feature_control_bits::*;
    assert_eq!(feature_control_action(LOCK | VMX_OUTSIDE_SMX), Ok(FeatureControlAction::AlreadyEnabled));
    assert_eq!(feature_control_action(0), Ok(FeatureControlAction::Write(LOCK | VMX_OUTSIDE_SMX)));
    assert_eq!(feature_control_action(LOCK), Err(Unsupported::LockedOff));
    assert_eq!(feature_control_action(LOCK | VMX_INSIDE_SMX), Err(Unsupported::LockedOff));
    let mut msrs = bochs_sapphire_rapids();
    msrs.insert(IA32_FEATURE_CONTROL, LOCK);
    assert_eq!(VmxCaps::decode(&read(true, &msrs).0), Err(Unsupported::LockedOff));
}

#[test]
fn vmcs_memory_type_must_be_write_back() {
    let mut msrs = bochs_sapphire_rapids();
    msrs.insert(IA32_VMX_BASIC, 0x0080_1000_0000_0004); // memory type 0 (UC)
    assert_eq!(VmxCaps::decode(&read(true, &msrs).0), Err(Unsupported::VmcsNotWriteBack(0)));
}

#[test]
fn fixed_bits_are_applied_to_cr0_and_cr4() {
    let caps = VmxCaps::decode(&read(true, &bochs_sapphire_rapids()).0).unwrap();
    // CR0 without NE (bit 5): VMX requires it; CR4 gets VMXE (bit 13).
    assert_eq!(caps.fix_cr0(0x8000_0011), 0x8000_0031);
    assert_eq!(caps.fix_cr4(0x20), 0x2020);
    // A CR4 bit outside FIXED1 is cleared.
    assert_eq!(caps.fix_cr4(0x2020 | 1 << 30), 0x2020);
    // Unrestricted guest: real mode (PE = PG = 0) keeps them clear, NE is still forced.
    assert_eq!(caps.fix_cr0(0x10) & 0x8000_0001, 0x8000_0001);
    assert_eq!(caps.fix_cr0_unrestricted(0x10), 0x30);
    assert_eq!(caps.fix_cr0_unrestricted(0x11), 0x31);
}

#[test]
fn control_caps_split_allowed_0_and_allowed_1() {
    let c = ControlCaps::from_msr(0xff_0000_0016);
    assert_eq!((c.must_be_1, c.may_be_1), (0x16, 0xff));
    assert!(c.allows(pin_bits::PROCESS_POSTED_INTERRUPTS));
    assert!(!c.allows(8));
}

/// What KVM's nested VMX offers an L1 hypervisor, as this hypervisor read it running as that L1
/// (`cargo xtask run --platform nested-kvm`, HV-SUMMARY `vmx_msrs`, 2026-12-07): Debian
/// trixie's 6.12.117 kernel as KVM's host with default `kvm_intel` parameters (nested=Y,
/// enable_apicv=Y, enable_ipiv=Y), Debian's QEMU 7.2 with `-enable-kvm -cpu host`, on the
/// project's Bochs (`sapphire_rapids`). Bookworm's 6.1.176 gave the same values. Primary bit 17
/// ("activate tertiary controls") is never offered, so IA32_VMX_PROCBASED_CTLS3 is not there
/// and IPIv cannot be used by an L1; posted interrupts, APIC virtualization, EPT, VPID and
/// unrestricted guest are.
fn nested_kvm_measured() -> BTreeMap<u32, u64> {
    BTreeMap::from([
        // QEMU locks it with VMX outside SMX and LMCE (bit 20) on for a guest with VMX.
        (IA32_FEATURE_CONTROL, 0x10_0005),
        // VMCS12 revision 0x11e57ed0, 4 KiB, write-back, INS/OUTS info (54), true controls (55).
        (IA32_VMX_BASIC, 0x00d8_1000_11e5_7ed0),
        // Posted interrupts (7) with enable_apicv; the preemption timer (6) is emulated.
        (IA32_VMX_TRUE_PINBASED_CTLS, 0xff_0000_0016),
        // Bit 17 (tertiary controls) clear; HLT and interrupt-window exiting may be 0.
        (IA32_VMX_TRUE_PROCBASED_CTLS, 0xfff9_fffe_0400_6172),
        (IA32_VMX_TRUE_EXIT_CTLS, 0x007f_ffff_0003_6dfb),
        (IA32_VMX_TRUE_ENTRY_CTLS, 0x0000_f3ff_0000_11fb),
        // APIC accesses (0), EPT (1), x2APIC mode (4), VPID (5), unrestricted guest (7),
        // APIC-register virtualization (8), virtual-interrupt delivery (9), ...; no PAUSE-loop
        // exiting (10).
        (IA32_VMX_PROCBASED_CTLS2, 0x0213_7bff_0000_0000),
        (IA32_VMX_EPT_VPID_CAP, 0xf01_0633_4041),
        // Preemption-timer rate 5, HLT and wait-for-SIPI activity states, VMWRITE to any field.
        (IA32_VMX_MISC, 0x2000_0165),
        (IA32_VMX_CR0_FIXED0, 0x8000_0021),
        (IA32_VMX_CR0_FIXED1, 0xffff_ffff),
        (IA32_VMX_CR4_FIXED0, 0x2000),
        (IA32_VMX_CR4_FIXED1, 0x77_3fff),
    ])
}

/// The same, with `kvm_intel enable_apicv=0` (read on trixie's 6.12 by the same procedure,
/// and on bookworm's 6.1 before): no posted interrupts (pin-based bit 7), the rest unchanged.
fn nested_kvm_measured_apicv_off() -> BTreeMap<u32, u64> {
    let mut m = nested_kvm_measured();
    m.insert(IA32_VMX_TRUE_PINBASED_CTLS, 0x7f_0000_0016);
    m
}

/// What this project predicted before it could measure: derived from Linux's
/// arch/x86/kvm/vmx/nested.c (`nested_vmx_setup_ctls_msrs` and its helpers, gregkh/linux at
/// 0e729a53689257803ec0c3d633b26f6a5e57d22b, about v6.12) with vmx.c's host masks, for a
/// Sapphire Rapids host (with SGX, WAITPKG and 5-level EPT). Kept to show where a derivation
/// goes wrong (docs/hardware.md): the host-dependent bits.
fn nested_kvm_derived_from_source() -> BTreeMap<u32, u64> {
    let mut m = nested_kvm_measured();
    m.insert(IA32_FEATURE_CONTROL, 0x5);
    m.insert(IA32_VMX_PROCBASED_CTLS2, 0x0613_fbff_0000_0000);
    m.insert(IA32_VMX_EPT_VPID_CAP, 0xf01_0633_40c1);
    m.insert(IA32_VMX_CR4_FIXED1, 0x3f7_3fff);
    m
}

/// The measurement differs from the derivation only in bits that follow the host CPU (which
/// the project's Bochs model lacks) or QEMU, none of which this hypervisor uses: LMCE in
/// IA32_FEATURE_CONTROL (20), ENCLS exiting (15, SGX) and user wait and pause (26, WAITPKG) in
/// the secondary controls, 5-level EPT (7), and CR4.CET/PKS/UINTR (23-25) in CR4_FIXED1.
#[test]
fn measured_nested_kvm_differs_from_the_derivation_only_in_host_dependent_bits() {
    let (measured, derived) = (nested_kvm_measured(), nested_kvm_derived_from_source());
    let diff: Vec<(u32, Vec<u32>)> = measured
        .iter()
        .filter_map(|(msr, v)| {
            let x = v ^ derived[msr];
            (x != 0).then(|| (*msr, (0..64).filter(|b| x >> b & 1 != 0).collect()))
        })
        .collect();
    assert_eq!(
        diff,
        std::vec![
            (IA32_FEATURE_CONTROL, std::vec![20]),
            (IA32_VMX_CR4_FIXED1, std::vec![23, 24, 25]),
            (IA32_VMX_PROCBASED_CTLS2, std::vec![32 + 15, 32 + 26]),
            (IA32_VMX_EPT_VPID_CAP, std::vec![7]),
        ]
    );
    let (m, d) = (features(&measured), features(&derived));
    assert_eq!(m, d, "the same features, so the same interrupt path");
}

#[test]
fn nested_kvm_without_apicv_runs_on_the_virtual_delivery_path() {
    use crate::vmx::controls::VcpuControlOptions;
    use crate::vmx::interrupt_path::choose;
    use crate::vmx::path_kind::InterruptPath;
    use crate::vmx::path_kind::PathRequest;
    let caps = VmxCaps::decode(&read(true, &nested_kvm_measured_apicv_off()).0).unwrap();
    assert!(!caps.features().posted_interrupts);
    let base = VcpuControlOptions { unrestricted_guest: true, ..Default::default() };
    let c = choose(&caps, PathRequest::Best { ipiv: true }, base).unwrap();
    assert_eq!(c.path, InterruptPath::VirtualDelivery);
}

#[test]
fn nested_kvm_offers_everything_but_tertiary_controls_and_the_controls_negotiate() {
    use crate::vmx::controls::{VcpuControlOptions, vcpu_controls};
    use crate::vmx::interrupt_path::{PathError, choose};
    use crate::vmx::path_kind::InterruptPath;
    use crate::vmx::path_kind::PathRequest;
    let (m, seen) = read(true, &nested_kvm_measured());
    assert!(!seen.contains(&IA32_VMX_PROCBASED_CTLS3), "primary bit 17 clear: CTLS3 is never read");
    let caps = VmxCaps::decode(&m).unwrap();
    assert_eq!(caps.revision_id, 0x11e5_7ed0);
    assert_eq!(caps.preemption_timer_shift(), 5);
    assert_eq!(
        caps.features(),
        VmxFeatures {
            tertiary: false,
            ipiv: false,
            apicv: true,
            posted_interrupts: true,
            x2apic_virt: true,
            ept: true,
            vpid: true,
            unrestricted_guest: true,
        }
    );
    // `ipiv = auto` runs on the posted path (the next best); `ipiv = on` is refused naming the
    // missing control.
    let base = VcpuControlOptions { unrestricted_guest: true, ..Default::default() };
    let c = choose(&caps, PathRequest::Best { ipiv: true }, base).unwrap();
    assert_eq!(c.path, InterruptPath::Posted);
    assert!(c.why_not_better.is_some_and(|w| w.contains("IPI virtualization")));
    let e = choose(&caps, PathRequest::Exact(InterruptPath::Ipiv), base).unwrap_err();
    assert!(matches!(e, PathError::Missing { path: InterruptPath::Ipiv, .. }));
    assert!(std::format!("{e}").contains("IPI virtualization"), "{e}");
    // Every vCPU configuration the hypervisor uses without IPIv negotiates, on every path
    // below it too (`interrupt_path = ...` in a manifest).
    for x2apic in [false, true] {
        for hlt_exiting in [false, true] {
            let opts = VcpuControlOptions { x2apic, hlt_exiting, ..base };
            for path in [InterruptPath::VirtualDelivery, InterruptPath::Injection] {
                vcpu_controls(&caps, VcpuControlOptions { path, ..opts }).unwrap_or_else(|e| panic!("{path}: {e}"));
            }
            let c = vcpu_controls(&caps, opts).unwrap_or_else(|e| panic!("{opts:?}: {e}"));
            assert_eq!(c.tertiary, 0);
            assert_eq!(c.primary & (1 << 17), 0);
            assert_ne!(c.pin & (1 << 7), 0, "posted interrupts");
            assert_eq!(c.pin & 0x16, 0x16, "must-be-one bits kept");
        }
    }
}
