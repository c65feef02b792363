use super::*;
use crate::vmx::caps::VmxCaps;
use crate::vmx::path_kind::InterruptPath;

/// The recorded Bochs `sapphire_rapids` capabilities without the IPIv bit the project's
/// patches add (tests add it where they need it).
fn bochs() -> VmxCaps {
    let mut caps = crate::vmx::fixtures::caps("sapphire_rapids");
    caps.tertiary &= !(1 << 4);
    caps
}

#[test]
fn must_be_one_bits_are_kept_and_wanted_bits_filtered() {
    let caps = ControlCaps { must_be_1: 0x16, may_be_1: 0xff };
    assert_eq!(negotiate(ControlWord::Pin, caps, 0x1, 0x300), Ok(0x17));
    assert_eq!(negotiate(ControlWord::Pin, caps, 0, 0x81), Ok(0x97));
}

#[test]
fn missing_required_control_is_named() {
    let caps = ControlCaps { must_be_1: 0, may_be_1: 0x7f };
    let e = negotiate(ControlWord::Pin, caps, 1 << 7, 0).unwrap_err();
    assert_eq!(e, MissingControl { word: ControlWord::Pin, bit: 7 });
    let msg = std::format!("{e}");
    assert!(msg.contains("pin-based") && msg.contains("process posted interrupts"), "{msg}");
}

#[test]
fn ipiv_gets_tertiary_bit_4_and_activation() {
    let mut caps = bochs();
    caps.tertiary |= 1 << 4;
    let c = vcpu_controls(&caps, VcpuControlOptions { path: InterruptPath::Ipiv, ..Default::default() }).unwrap();
    assert_eq!(c.tertiary, 1 << 4);
    assert_ne!(c.primary & (1 << 17), 0);
    let off = vcpu_controls(&caps, VcpuControlOptions::default()).unwrap();
    assert_eq!(off.tertiary, 0);
    assert_eq!(off.primary & (1 << 17), 0, "no tertiary controls when none are used");
    assert!(vcpu_controls(&bochs(), VcpuControlOptions { path: InterruptPath::Ipiv, ..Default::default() }).is_err());
}

#[test]
fn apic_modes_and_hlt() {
    let x = vcpu_controls(&bochs(), VcpuControlOptions::default()).unwrap();
    assert_ne!(x.secondary & 1, 0, "xAPIC: virtualize APIC accesses");
    assert_eq!(x.secondary & (1 << 4), 0);
    assert_eq!(x.primary & (1 << 7), 0, "HLT passes through");
    let x2 =
        vcpu_controls(&bochs(), VcpuControlOptions { x2apic: true, hlt_exiting: true, ..Default::default() }).unwrap();
    assert_ne!(x2.secondary & (1 << 4), 0);
    assert_eq!(x2.secondary & 1, 0);
    assert_ne!(x2.primary & (1 << 7), 0);
    assert_eq!(x.secondary & !0x11, x2.secondary & !0x11, "only the APIC mode's two bits differ");
}

#[test]
fn vcpu_controls_on_bochs() {
    let c = vcpu_controls(&bochs(), VcpuControlOptions { hlt_exiting: true, ..Default::default() }).unwrap();
    let names = |w| c.names(w).collect::<std::vec::Vec<_>>();
    assert!(names(ControlWord::Pin).contains(&"external-interrupt exiting"));
    assert!(names(ControlWord::Pin).contains(&"process posted interrupts"));
    assert!(names(ControlWord::Primary).contains(&"use TPR shadow"));
    for n in ["APIC-register virtualization", "virtual-interrupt delivery", "virtualize APIC accesses"] {
        assert!(names(ControlWord::Secondary).contains(&n), "{n}");
    }
    assert!(names(ControlWord::Pin).contains(&"activate VMX-preemption timer"));
    assert!(names(ControlWord::Pin).contains(&"virtual NMIs"));
    // NMI-window exiting is checked but set only while a virtual NMI waits.
    assert!(!names(ControlWord::Primary).contains(&"NMI-window exiting"));
    for n in ["HLT exiting", "unconditional I/O exiting", "use MSR bitmaps", "activate secondary controls"] {
        assert!(names(ControlWord::Primary).contains(&n), "{n}");
    }
    for n in ["enable EPT", "enable VPID", "enable RDTSCP", "enable INVPCID"] {
        assert!(names(ControlWord::Secondary).contains(&n), "{n}");
    }
    assert!(names(ControlWord::Exit).contains(&"acknowledge interrupt on exit"));
    assert!(names(ControlWord::Entry).contains(&"IA-32e mode guest"));
    // Must-be-one bits from the capability MSRs are present.
    assert_eq!(c.pin & 0x16, 0x16);
    assert_eq!(c.entry & 0x11fb, 0x11fb);
}

#[test]
fn cpu_without_preemption_timer_is_refused_by_name() {
    let mut caps = bochs();
    caps.pin.may_be_1 &= !(1 << 6);
    let e = vcpu_controls(&caps, VcpuControlOptions::default()).unwrap_err();
    assert!(std::format!("{e}").contains("activate VMX-preemption timer"));
}

#[test]
fn cpu_without_nmi_window_exiting_is_refused_by_name() {
    let mut caps = bochs();
    caps.primary.may_be_1 &= !(1 << 22);
    let e = vcpu_controls(&caps, VcpuControlOptions::default()).unwrap_err();
    assert!(std::format!("{e}").contains("NMI-window exiting"));
}
