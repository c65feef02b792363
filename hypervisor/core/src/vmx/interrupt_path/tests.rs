use super::*;
use crate::vmx::caps::{VmxCaps, VmxMsrs, pin_bits, primary_bits, secondary_bits};
use std::format;

/// The project's Bochs, `sapphire_rapids` (as in caps/tests.rs): everything but IPIv.
fn sapphire_rapids() -> VmxCaps {
    let m = VmxMsrs {
        cpuid_vmx: true,
        feature_control: 0x5,
        basic: 0x01d8_1000_0000_0004,
        pinbased: 0xff_0000_0016,
        procbased: 0xfffb_fffe_0400_6172,
        exit: 0xf87f_ffff_0003_6dfb,
        entry: 0x58_ffff_0000_11fb,
        procbased2: Some(0x06d7_7fff_0000_0000),
        procbased3: Some(0x80),
        ept_vpid_cap: Some(0xf01_06f3_4141),
        misc: 0x6004_01e0,
        cr0_fixed0: 0x8000_0021,
        cr0_fixed1: 0xffff_ffff,
        cr4_fixed0: 0x2000,
        cr4_fixed1: 0x3f7_3fff,
    };
    VmxCaps::decode(&m).unwrap()
}

fn base() -> VcpuControlOptions {
    VcpuControlOptions { unrestricted_guest: true, ..Default::default() }
}

fn auto(caps: &VmxCaps) -> Result<PathChoice, PathError> {
    choose(caps, IpivSetting::Auto, None, base())
}

#[test]
fn the_best_path_the_cpu_has() {
    let mut caps = sapphire_rapids();
    let c = auto(&caps).unwrap();
    assert_eq!(c.path, InterruptPath::Posted);
    let why = c.why_not_better.unwrap();
    assert!(why.starts_with("IPI virtualization: ") && why.contains("(bit 4)"), "{why}");

    caps.tertiary |= 1 << 4;
    assert_eq!(auto(&caps).unwrap(), PathChoice { path: InterruptPath::Ipiv, why_not_better: None });

    caps.pin.may_be_1 &= !(1 << pin_bits::PROCESS_POSTED_INTERRUPTS);
    let c = auto(&caps).unwrap();
    assert_eq!(c.path, InterruptPath::VirtualDelivery);
    let why = c.why_not_better.unwrap();
    assert!(why.contains("posted interrupts: ") && why.contains("process posted interrupts"), "{why}");

    caps.secondary.may_be_1 &= !(1 << secondary_bits::VIRTUAL_INTERRUPT_DELIVERY);
    let c = auto(&caps).unwrap();
    assert_eq!(c.path, InterruptPath::Injection);
    assert!(c.why_not_better.unwrap().contains("virtual-interrupt delivery: "));
}

#[test]
fn each_path_negotiates_what_it_uses() {
    let mut caps = sapphire_rapids();
    caps.tertiary |= 1 << 4;
    let get = |path, x2apic| vcpu_controls(&caps, VcpuControlOptions { path, x2apic, ..base() }).unwrap();
    let posted_bit = 1 << pin_bits::PROCESS_POSTED_INTERRUPTS;
    let vid = 1 << secondary_bits::VIRTUAL_INTERRUPT_DELIVERY;
    let regs = 1 << secondary_bits::APIC_REGISTER_VIRTUALIZATION;
    let ipiv = get(InterruptPath::Ipiv, false);
    assert_eq!(ipiv.tertiary, 1 << 4);
    let posted = get(InterruptPath::Posted, false);
    assert_eq!((posted.tertiary, posted.pin & posted_bit), (0, posted_bit));
    let vd = get(InterruptPath::VirtualDelivery, false);
    assert_eq!(vd.pin & posted_bit, 0);
    assert_eq!(vd.secondary & (vid | regs), vid | regs);
    assert!(vd.virtual_interrupt_delivery());
    let inj = get(InterruptPath::Injection, false);
    assert_eq!(inj.secondary & (vid | regs), 0);
    assert!(!inj.virtual_interrupt_delivery());
    assert_ne!(inj.primary & (1 << primary_bits::USE_TPR_SHADOW), 0);
    assert_ne!(inj.secondary & 1, 0, "xAPIC: the APIC-access page");
    assert_eq!(inj.primary & (1 << primary_bits::INTERRUPT_WINDOW_EXITING), 0, "opened only when needed");
    // x2APIC mode: the injection path intercepts the MSRs and virtualizes no APIC mode.
    let inj2 = get(InterruptPath::Injection, true);
    assert_eq!(inj2.secondary & 0x11, 0);
    assert_eq!(inj.secondary_for(true), inj2.secondary);
    assert_eq!(vd.secondary_for(true) & 0x11, 0x10);
    assert_eq!(inj2.secondary_for(false), inj.secondary);
}

#[test]
fn what_no_path_can_do_without_is_named() {
    let mut caps = sapphire_rapids();
    caps.primary.may_be_1 &= !(1 << primary_bits::USE_TPR_SHADOW);
    let e = auto(&caps).unwrap_err();
    assert!(matches!(e, PathError::Missing { path: InterruptPath::Injection, requested: false, .. }));
    let msg = format!("{e}");
    assert!(msg.contains("use TPR shadow") && msg.contains("every interrupt path"), "{msg}");

    let mut caps = sapphire_rapids();
    caps.secondary.may_be_1 &= !(1 << secondary_bits::ENABLE_EPT);
    assert_eq!(auto(&caps), Err(PathError::NoEpt));
    assert!(format!("{}", PathError::NoEpt).contains("EPT"));

    let mut caps = sapphire_rapids();
    caps.secondary.may_be_1 &= !(1 << secondary_bits::UNRESTRICTED_GUEST);
    assert_eq!(auto(&caps), Err(PathError::NoUnrestrictedGuest));
    assert!(format!("{}", PathError::NoUnrestrictedGuest).contains("unrestricted guest"));
}

#[test]
fn no_vpid_is_worked_around() {
    let mut caps = sapphire_rapids();
    caps.secondary.may_be_1 &= !(1 << secondary_bits::ENABLE_VPID);
    assert_eq!(auto(&caps).unwrap().path, InterruptPath::Posted);
    let c = vcpu_controls(&caps, base()).unwrap();
    assert!(!c.vpid());
    assert!(vcpu_controls(&sapphire_rapids(), base()).unwrap().vpid());
}

#[test]
fn manifest_settings() {
    let caps = sapphire_rapids();
    let c = choose(&caps, IpivSetting::Auto, Some(InterruptPath::Injection), base()).unwrap();
    assert_eq!(c.path, InterruptPath::Injection);
    assert_eq!(c.why_not_better.as_deref(), Some("interrupt_path = injection in the manifest"));
    let c = choose(&caps, IpivSetting::Off, None, base()).unwrap();
    assert_eq!(c.path, InterruptPath::Posted);
    assert_eq!(c.why_not_better.as_deref(), Some("IPI virtualization: ipiv = off in the manifest"));
    let e = choose(&caps, IpivSetting::On, None, base()).unwrap_err();
    assert!(matches!(e, PathError::Missing { path: InterruptPath::Ipiv, requested: true, .. }));
    assert!(format!("{e}").contains("IPI virtualization"));
    let e = choose(&caps, IpivSetting::On, Some(InterruptPath::Posted), base()).unwrap_err();
    assert_eq!(e, PathError::Conflict(InterruptPath::Posted));
    let mut no_posting = sapphire_rapids();
    no_posting.pin.may_be_1 &= !(1 << pin_bits::PROCESS_POSTED_INTERRUPTS);
    let e = choose(&no_posting, IpivSetting::Auto, Some(InterruptPath::Posted), base()).unwrap_err();
    assert!(format!("{e}").starts_with("interrupt_path = posted needs posted interrupts: "), "{e}");
    // ipiv = off on a CPU without posting: the reason names both.
    let c = choose(&no_posting, IpivSetting::Off, None, base()).unwrap();
    assert_eq!(c.path, InterruptPath::VirtualDelivery);
    let why = c.why_not_better.unwrap();
    assert!(why.contains("ipiv = off") && why.contains("process posted interrupts"), "{why}");
}

#[test]
fn names_round_trip() {
    for p in InterruptPath::BEST_FIRST {
        assert_eq!(InterruptPath::parse(p.as_str()), Some(p));
    }
    assert_eq!(InterruptPath::parse("posted-interrupts"), None);
    assert!(InterruptPath::Ipiv > InterruptPath::Posted && InterruptPath::VirtualDelivery > InterruptPath::Injection);
}

/// The VMX capability MSRs of every Intel model of the project's Bochs with long mode and VMX,
/// as the kernel read and logged them (`cargo xtask run --cpu-model M --log-level debug`,
/// 2026-12-03), and the path each gets (docs/hardware.md; `cargo xtask test --filter
/// cpu-model` boots each).
fn bochs_models() -> std::vec::Vec<(&'static str, VmxMsrs, Result<InterruptPath, PathError>)> {
    std::vec![
        (
            "core2_penryn_t9600",
            VmxMsrs {
                cpuid_vmx: true,
                feature_control: 0x5,
                basic: 0xd810000000002b,
                pinbased: 0x3f00000016,
                procbased: 0xf7f9fffe04006172,
                exit: 0x4003ffff00036dfb,
                entry: 0x3fff000011fb,
                procbased2: Some(0x4100000000),
                procbased3: None,
                ept_vpid_cap: None,
                misc: 0x401e0,
                cr0_fixed0: 0x80000021,
                cr0_fixed1: 0xffffffff,
                cr4_fixed0: 0x2000,
                cr4_fixed1: 0x427ff,
            },
            Err(PathError::NoEpt),
        ),
        (
            "corei5_lynnfield_750",
            VmxMsrs {
                cpuid_vmx: true,
                feature_control: 0x5,
                basic: 0xd810000000002b,
                pinbased: 0x7f00000016,
                procbased: 0xfff9fffe04006172,
                exit: 0x407fffff00036dfb,
                entry: 0xffff000011fb,
                procbased2: Some(0x7f00000000),
                procbased3: None,
                ept_vpid_cap: Some(0xf0106114141),
                misc: 0x401e0,
                cr0_fixed0: 0x80000021,
                cr0_fixed1: 0xffffffff,
                cr4_fixed0: 0x2000,
                cr4_fixed1: 0x67ff,
            },
            Err(PathError::NoUnrestrictedGuest),
        ),
        (
            "corei5_arrandale_m520",
            VmxMsrs {
                cpuid_vmx: true,
                feature_control: 0x5,
                basic: 0xd810000000002b,
                pinbased: 0x7f00000016,
                procbased: 0xfff9fffe04006172,
                exit: 0x407fffff00036dfb,
                entry: 0xffff000011fb,
                procbased2: Some(0xff00000000),
                procbased3: None,
                ept_vpid_cap: Some(0xf0106114141),
                misc: 0x401e0,
                cr0_fixed0: 0x80000021,
                cr0_fixed1: 0xffffffff,
                cr4_fixed0: 0x2000,
                cr4_fixed1: 0x67ff,
            },
            Ok(InterruptPath::Injection),
        ),
        (
            "corei7_sandy_bridge_2600k",
            VmxMsrs {
                cpuid_vmx: true,
                feature_control: 0x5,
                basic: 0xd810000000002b,
                pinbased: 0x7f00000016,
                procbased: 0xfff9fffe04006172,
                exit: 0x407fffff00036dfb,
                entry: 0xffff000011fb,
                procbased2: Some(0xef00000000),
                procbased3: None,
                ept_vpid_cap: Some(0xf0106114141),
                misc: 0x401e0,
                cr0_fixed0: 0x80000021,
                cr0_fixed1: 0xffffffff,
                cr4_fixed0: 0x2000,
                cr4_fixed1: 0x627ff,
            },
            Ok(InterruptPath::Injection),
        ),
        (
            "corei7_ivy_bridge_3770k",
            VmxMsrs {
                cpuid_vmx: true,
                feature_control: 0x5,
                basic: 0xd810000000002b,
                pinbased: 0x7f00000016,
                procbased: 0xfff9fffe04006172,
                exit: 0x407fffff00036dfb,
                entry: 0xffff000011fb,
                procbased2: Some(0x8ff00000000),
                procbased3: None,
                ept_vpid_cap: Some(0xf0106114141),
                misc: 0x401e0,
                cr0_fixed0: 0x80000021,
                cr0_fixed1: 0xffffffff,
                cr4_fixed0: 0x2000,
                cr4_fixed1: 0x1727ff,
            },
            Ok(InterruptPath::Injection),
        ),
        (
            "corei7_haswell_4770",
            VmxMsrs {
                cpuid_vmx: true,
                feature_control: 0x5,
                basic: 0xd810000000002b,
                pinbased: 0x7f00000016,
                procbased: 0xfff9fffe04006172,
                exit: 0x407fffff00036dfb,
                entry: 0xffff000011fb,
                procbased2: Some(0x47fff00000000),
                procbased3: None,
                ept_vpid_cap: Some(0xf0106334141),
                misc: 0x200401e0,
                cr0_fixed0: 0x80000021,
                cr0_fixed1: 0xffffffff,
                cr4_fixed0: 0x2000,
                cr4_fixed1: 0x1727ff,
            },
            Ok(InterruptPath::VirtualDelivery),
        ),
        (
            "broadwell_ult",
            VmxMsrs {
                cpuid_vmx: true,
                feature_control: 0x5,
                basic: 0xd810000000002b,
                pinbased: 0x7f00000016,
                procbased: 0xfff9fffe04006172,
                exit: 0x407fffff00036dfb,
                entry: 0xffff000011fb,
                procbased2: Some(0x57fff00000000),
                procbased3: None,
                ept_vpid_cap: Some(0xf0106334141),
                misc: 0x200401e0,
                cr0_fixed0: 0x80000021,
                cr0_fixed1: 0xffffffff,
                cr4_fixed0: 0x2000,
                cr4_fixed1: 0x3727ff,
            },
            Ok(InterruptPath::VirtualDelivery),
        ),
        (
            "corei7_skylake_x",
            VmxMsrs {
                cpuid_vmx: true,
                feature_control: 0x5,
                basic: 0xd810000000002b,
                pinbased: 0xff00000016,
                procbased: 0xfff9fffe04006172,
                exit: 0x407fffff00036dfb,
                entry: 0xffff000011fb,
                procbased2: Some(0x2577fff00000000),
                procbased3: None,
                ept_vpid_cap: Some(0xf0106734141),
                misc: 0x600401e0,
                cr0_fixed0: 0x80000021,
                cr0_fixed1: 0xffffffff,
                cr4_fixed0: 0x2000,
                cr4_fixed1: 0x3727ff,
            },
            Ok(InterruptPath::Posted),
        ),
        (
            "corei3_cnl",
            VmxMsrs {
                cpuid_vmx: true,
                feature_control: 0x5,
                basic: 0xd810000000002b,
                pinbased: 0x7f00000016,
                procbased: 0xfff9fffe04006172,
                exit: 0x407fffff00036dfb,
                entry: 0xffff000011fb,
                procbased2: Some(0x2557cff00000000),
                procbased3: None,
                ept_vpid_cap: Some(0xf0106734141),
                misc: 0x600401e0,
                cr0_fixed0: 0x80000021,
                cr0_fixed1: 0xffffffff,
                cr4_fixed0: 0x2000,
                cr4_fixed1: 0x772fff,
            },
            Ok(InterruptPath::Injection),
        ),
        (
            "corei7_icelake_u",
            VmxMsrs {
                cpuid_vmx: true,
                feature_control: 0x5,
                basic: 0xd8100000000004,
                pinbased: 0xff00000016,
                procbased: 0xfff9fffe04006172,
                exit: 0x407fffff00036dfb,
                entry: 0xffff000011fb,
                procbased2: Some(0x2d77fff00000000),
                procbased3: None,
                ept_vpid_cap: Some(0xf0106734141),
                misc: 0x600401e0,
                cr0_fixed0: 0x80000021,
                cr0_fixed1: 0xffffffff,
                cr4_fixed0: 0x2000,
                cr4_fixed1: 0x772fff,
            },
            Ok(InterruptPath::Posted),
        ),
        (
            "tigerlake",
            VmxMsrs {
                cpuid_vmx: true,
                feature_control: 0x5,
                basic: 0x1d8100000000004,
                pinbased: 0xff00000016,
                procbased: 0xfff9fffe04006172,
                exit: 0xd07fffff00036dfb,
                entry: 0x10ffff000011fb,
                procbased2: Some(0x2d77fff00000000),
                procbased3: None,
                ept_vpid_cap: Some(0xf0106f34141),
                misc: 0x600401e0,
                cr0_fixed0: 0x80000021,
                cr0_fixed1: 0xffffffff,
                cr4_fixed0: 0x2000,
                cr4_fixed1: 0xf72fff,
            },
            Ok(InterruptPath::Posted),
        ),
        (
            "sapphire_rapids",
            VmxMsrs {
                cpuid_vmx: true,
                feature_control: 0x5,
                basic: 0x1d8100000000004,
                pinbased: 0xff00000016,
                procbased: 0xfffbfffe04006172,
                exit: 0xf87fffff00036dfb,
                entry: 0x58ffff000011fb,
                procbased2: Some(0x6d77fff00000000),
                procbased3: Some(0x90),
                ept_vpid_cap: Some(0xf0106f34141),
                misc: 0x600401e0,
                cr0_fixed0: 0x80000021,
                cr0_fixed1: 0xffffffff,
                cr4_fixed0: 0x2000,
                cr4_fixed1: 0x3f73fff,
            },
            Ok(InterruptPath::Ipiv),
        ),
        (
            "arrow_lake",
            VmxMsrs {
                cpuid_vmx: true,
                feature_control: 0x5,
                basic: 0x1d8100000000004,
                pinbased: 0xff00000016,
                procbased: 0xfffbfffe04006172,
                exit: 0xf87fffff00036dfb,
                entry: 0x58ffff000011fb,
                procbased2: Some(0x6d77fff00000000),
                procbased3: Some(0x80),
                ept_vpid_cap: Some(0xf0106f34141),
                misc: 0x600401e0,
                cr0_fixed0: 0x80000021,
                cr0_fixed1: 0xffffffff,
                cr4_fixed0: 0x2000,
                cr4_fixed1: 0xbf72fff,
            },
            Ok(InterruptPath::Posted),
        ),
    ]
}

#[test]
fn every_bochs_model_gets_its_path_or_is_refused() {
    for (model, msrs, want) in bochs_models() {
        let caps = VmxCaps::decode(&msrs).unwrap_or_else(|e| panic!("{model}: {e:?}"));
        let got = auto(&caps).map(|c| c.path);
        assert_eq!(got, want, "{model}");
        if let Ok(path) = got {
            for x2apic in [false, true] {
                for hlt_exiting in [false, true] {
                    let opts = VcpuControlOptions { path, x2apic, hlt_exiting, ..base() };
                    vcpu_controls(&caps, opts).unwrap_or_else(|e| panic!("{model} {opts:?}: {e}"));
                }
            }
        }
    }
}
