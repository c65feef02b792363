use super::*;
use crate::apic::regs::msr::{EOI, ICR, ID, SELF_IPI, TIMER_CURRENT, TIMER_INITIAL};
use crate::vmx::caps::{VmxCaps, pin_bits, primary_bits, secondary_bits};
use crate::vmx::fixtures;
use std::format;

/// The project's Bochs `sapphire_rapids` without the IPIv bit its patches add: a CPU with
/// everything below IPIv (tests add the bit where they need it).
fn sapphire_rapids() -> VmxCaps {
    let mut caps = fixtures::caps("sapphire_rapids");
    caps.tertiary &= !(1 << 4);
    caps
}

fn base() -> VcpuControlOptions {
    VcpuControlOptions { unrestricted_guest: true, ..Default::default() }
}

fn auto(caps: &VmxCaps) -> Result<PathPlan, PathError> {
    choose(caps, PathRequest::Best { ipiv: true }, base())
}

#[test]
fn the_best_path_the_cpu_has() {
    let mut caps = sapphire_rapids();
    let c = auto(&caps).unwrap();
    assert_eq!(c.path, InterruptPath::Posted);
    let why = c.why_not_better.unwrap();
    assert!(why.starts_with("IPI virtualization: ") && why.contains("(bit 4)"), "{why}");

    caps.tertiary |= 1 << 4;
    let plan = auto(&caps).unwrap();
    assert_eq!((plan.path, plan.why_not_better.as_deref()), (InterruptPath::Ipiv, None));

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
    // The plan holds both modes' controls, as negotiated for its path.
    for path in InterruptPath::BEST_FIRST {
        let plan = choose(&caps, PathRequest::Exact(path), base()).unwrap();
        assert_eq!((plan.controls(false), plan.controls(true)), (get(path, false), get(path, true)), "{path}");
        assert_eq!(plan.posts(), plan.controls(false).process_posted_interrupts(), "{path}");
        assert_eq!(plan.models_apic(), !plan.controls(false).virtual_interrupt_delivery(), "{path}");
        assert_eq!(plan.ipiv(), plan.controls(true).tertiary != 0, "{path}");
    }
    let vd2 = get(InterruptPath::VirtualDelivery, true);
    assert_eq!(vd2.secondary & 0x11, 0x10, "x2APIC mode virtualized, the APIC-access page not");
}

#[test]
fn what_no_path_can_do_without_is_named() {
    let mut caps = sapphire_rapids();
    caps.pin.may_be_1 &= !(1 << pin_bits::ACTIVATE_VMX_PREEMPTION_TIMER);
    let e = auto(&caps).unwrap_err();
    assert!(matches!(e, PathError::Missing { path: InterruptPath::Injection, requested: false, .. }));
    let msg = format!("{e}");
    assert!(msg.contains("activate VMX-preemption timer") && msg.contains("every interrupt path"), "{msg}");

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
fn no_tpr_shadow_means_injection_with_cr8_exits() {
    let mut caps = sapphire_rapids();
    caps.primary.may_be_1 &= !(1 << primary_bits::USE_TPR_SHADOW);
    let c = auto(&caps).unwrap();
    assert_eq!(c.path, InterruptPath::Injection);
    assert!(c.why_not_better.unwrap().contains("use TPR shadow"), "the better paths need it");
    let cr8_exits = (1 << 19) | (1 << 20);
    for x2apic in [false, true] {
        let ctl =
            vcpu_controls(&caps, VcpuControlOptions { path: InterruptPath::Injection, x2apic, ..base() }).unwrap();
        assert!(!ctl.tpr_shadow());
        assert_eq!(ctl.primary & cr8_exits, cr8_exits);
        assert_eq!(ctl.secondary & (1 << secondary_bits::VIRTUALIZE_APIC_ACCESSES), (!x2apic as u32));
    }
    // Asked for on a CPU that has one: the same controls.
    let opts = VcpuControlOptions { path: InterruptPath::Injection, no_tpr_shadow: true, ..base() };
    let forced = vcpu_controls(&sapphire_rapids(), opts).unwrap();
    assert!(!forced.tpr_shadow() && forced.primary & cr8_exits == cr8_exits);
    // Only the injection path does without it.
    let opts = VcpuControlOptions { path: InterruptPath::Posted, no_tpr_shadow: true, ..base() };
    assert!(vcpu_controls(&sapphire_rapids(), opts).unwrap().tpr_shadow());
    assert!(vcpu_controls(&sapphire_rapids(), base()).unwrap().primary & cr8_exits == 0);
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
    let c = choose(&caps, PathRequest::Exact(InterruptPath::Injection), base()).unwrap();
    assert_eq!(c.path, InterruptPath::Injection);
    assert_eq!(c.why_not_better.as_deref(), Some("interrupt_path = injection in the manifest"));
    let c = choose(&caps, PathRequest::Best { ipiv: false }, base()).unwrap();
    assert_eq!(c.path, InterruptPath::Posted);
    assert_eq!(c.why_not_better.as_deref(), Some("IPI virtualization: ipiv = off in the manifest"));
    let e = choose(&caps, PathRequest::Exact(InterruptPath::Ipiv), base()).unwrap_err();
    assert!(matches!(e, PathError::Missing { path: InterruptPath::Ipiv, requested: true, .. }));
    assert!(format!("{e}").contains("IPI virtualization"));
    let mut no_posting = sapphire_rapids();
    no_posting.pin.may_be_1 &= !(1 << pin_bits::PROCESS_POSTED_INTERRUPTS);
    let e = choose(&no_posting, PathRequest::Exact(InterruptPath::Posted), base()).unwrap_err();
    assert!(format!("{e}").starts_with("interrupt_path = posted needs posted interrupts: "), "{e}");
    // ipiv = off on a CPU without posting: the reason names both.
    let c = choose(&no_posting, PathRequest::Best { ipiv: false }, base()).unwrap();
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

#[test]
fn every_bochs_model_gets_its_path_or_is_refused() {
    for (model, msrs, want) in fixtures::bochs_models() {
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

#[test]
fn icr_passes_through_only_with_ipiv() {
    use InterruptPath::*;
    assert!(x2apic_write_passes(EOI, Posted));
    assert!(x2apic_write_passes(SELF_IPI, VirtualDelivery));
    assert!(!x2apic_write_passes(ICR, Posted));
    assert!(x2apic_write_passes(ICR, Ipiv));
    assert!(!x2apic_write_passes(TIMER_INITIAL, Ipiv));
    assert!(x2apic_read_passes(ICR, Posted) && x2apic_read_passes(ID, Ipiv));
    assert!(!x2apic_read_passes(X2APIC_MSR_LAST + 1, Posted));
    assert!(!x2apic_read_passes(TIMER_CURRENT, Ipiv), "the current count is the timer model's");
}

#[test]
fn injection_intercepts_every_x2apic_msr() {
    for m in X2APIC_MSR_FIRST..=X2APIC_MSR_LAST {
        assert!(!x2apic_read_passes(m, InterruptPath::Injection) && !x2apic_write_passes(m, InterruptPath::Injection));
    }
}
