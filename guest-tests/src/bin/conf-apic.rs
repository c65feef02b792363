//! The local APIC's global states and its software enable, as the SDM defines them and an OS
//! meets them (SDM Vol. 3A §12.4.3 "Enabling or Disabling the Local APIC", §12.4.7.2 "Local
//! APIC State After It Has Been Software Disabled", §12.12.5 "x2APIC State Transitions",
//! Figure 12-27):
//! - IA32_APIC_BASE: reserved bits and the invalid state (EN = 0, EXTD = 1) fault; xAPIC →
//!   disabled → xAPIC and xAPIC → x2APIC → disabled are legal, x2APIC → xAPIC and disabled →
//!   x2APIC fault; a disabled APIC clears CPUID.1:EDX.APIC, has no x2APIC MSRs and (under this
//!   hypervisor, where the page is not claimed) reads all ones at 0xFEE00000; re-enabled, it is
//!   as after reset (SVR 0xFF, LVTs masked, its ID back).
//! - Software disable (SVR bit 8 clear): a fixed IPI is not taken, LVT entries stay masked
//!   whatever is written, an NMI still arrives; enabled again, fixed IPIs arrive.
//! - A globally disabled APIC takes no IPI: vCPU 1 disables its APIC, vCPU 0's IPI to it is
//!   lost; re-enabled, the next one arrives.
//! Needs 2 vCPUs.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};

use guest_tests::apic;
use guest_tests::idt::{try_rdmsr, try_wrmsr};
use guest_tests::{Platform, cpuid, entry, irq, println, rdtsc, report, sti, wait_until};
use hvcore::apic::base::{EN, EXTD};
use hvcore::apic::regs::{
    self, IA32_APIC_BASE, ICR_ASSERT, ICR_NMI, LVT_LINT0, LVT_MASKED, LVT_TIMER, SVR, SVR_APIC_ENABLED,
    XAPIC_DEST_SHIFT,
};

entry!(main);

const VECTOR: u8 = 0x71;
const VECTOR_1: u8 = 0x72;

/// vCPU 1's steps in the last part: 1 disabled, 2 enabled again.
static STEP: AtomicU32 = AtomicU32::new(0);
/// vCPU 0 has checked what it needed while vCPU 1 was disabled.
static CHECKED: AtomicU32 = AtomicU32::new(0);

fn delay_ms(p: &Platform, ms: u64) {
    let end = rdtsc() + ms * p.tsc_hz / 1000;
    while rdtsc() < end {
        core::hint::spin_loop();
    }
}

fn apic_bit_in_cpuid() -> bool {
    cpuid(1, 0)[3] & (1 << 9) != 0
}

/// Back to the mode the runtime started in, software-enabled, from whatever state.
fn restore(base: u64, x2apic: bool) {
    let now = apic::rdmsr(IA32_APIC_BASE);
    if now & EXTD != 0 && !x2apic {
        apic::wrmsr(IA32_APIC_BASE, base & !(EN | EXTD));
    }
    if apic::rdmsr(IA32_APIC_BASE) & EN == 0 {
        apic::wrmsr(IA32_APIC_BASE, (base & !EXTD) | EN);
    }
    if x2apic && apic::rdmsr(IA32_APIC_BASE) & EXTD == 0 {
        apic::wrmsr(IA32_APIC_BASE, base | EN | EXTD);
    }
    apic::set_x2apic_interface(x2apic);
    apic::write(SVR, 0x1ff);
}

fn states(info: &Platform) {
    let base = apic::rdmsr(IA32_APIC_BASE);
    let x2apic = base & EXTD != 0;
    let x2_offered = cpuid(1, 0)[2] & (1 << 21) != 0;
    let id = apic::id();
    let max_phys = cpuid(0x8000_0008, 0)[0] & 0xff;

    // QEMU's TCG (the reference PC here) does not check IA32_APIC_BASE's reserved bits or its
    // invalid state: those checks are this hypervisor's.
    if info.hypervisor {
        assert!(!try_wrmsr(IA32_APIC_BASE, base | 1), "bit 0 is reserved");
        assert!(!try_wrmsr(IA32_APIC_BASE, base | (1 << 9)), "bit 9 is reserved");
        if max_phys < 64 {
            assert!(!try_wrmsr(IA32_APIC_BASE, base | (1u64 << max_phys)), "bits from MAXPHYADDR are reserved");
        }
        assert!(!try_wrmsr(IA32_APIC_BASE, (base & !EN) | EXTD), "EN = 0, EXTD = 1 is invalid");
    }
    if x2apic {
        assert!(!try_wrmsr(IA32_APIC_BASE, base & !EXTD), "x2APIC to xAPIC is illegal");
    }

    // Disabled.
    assert!(try_wrmsr(IA32_APIC_BASE, base & !(EN | EXTD)), "disabling is legal");
    assert!(!apic_bit_in_cpuid(), "CPUID.1:EDX.APIC clear while disabled");
    if info.hypervisor {
        // QEMU 7.2's TCG models no x2APIC and answers these MSRs anyway.
        assert_eq!(try_rdmsr(regs::msr::VERSION), None, "no x2APIC MSRs while disabled");
        // SAFETY: 0xFEE00000 is identity-mapped; nothing claims it now.
        let lvr = unsafe { ((hvcore::guest_abi::APIC_MMIO_GPA + regs::VERSION as u64) as *const u32).read_volatile() };
        assert_eq!(lvr, u32::MAX, "the unclaimed APIC page reads all ones");
    }
    if x2_offered {
        assert!(!try_wrmsr(IA32_APIC_BASE, (base & !EN) | EN | EXTD), "disabled to x2APIC is illegal");
    }

    // xAPIC again: as after reset.
    assert!(try_wrmsr(IA32_APIC_BASE, (base & !EXTD) | EN), "disabled to xAPIC is legal");
    apic::set_x2apic_interface(false);
    // QEMU's TCG clears the bit on disabling and never sets it again.
    assert!(apic_bit_in_cpuid() || !info.hypervisor, "CPUID.1:EDX.APIC set again");
    assert_eq!(apic::read(SVR), 0xff, "SVR as after reset");
    assert_ne!(apic::read(LVT_TIMER) & LVT_MASKED, 0, "LVT timer masked as after reset");
    assert_eq!(apic::read(regs::ID) >> XAPIC_DEST_SHIFT, id, "the APIC ID as after reset");

    if x2_offered {
        assert!(try_wrmsr(IA32_APIC_BASE, (base & !EXTD) | EN | EXTD), "xAPIC to x2APIC is legal");
        apic::set_x2apic_interface(true);
        assert_eq!(apic::read(regs::ID), id, "the x2APIC ID");
        assert!(!try_wrmsr(IA32_APIC_BASE, (base & !EXTD) | EN), "x2APIC to xAPIC is illegal");
        assert!(try_wrmsr(IA32_APIC_BASE, base & !(EN | EXTD)), "x2APIC to disabled is legal");
        apic::set_x2apic_interface(false);
    }
    restore(base, x2apic);
}

/// vCPU 1's software-disable part: fixed IPIs from vCPU 0 are lost, an NMI arrives, LVT
/// writes stay masked; software-enabled again, the next IPI arrives. (A self-IPI is not used:
/// with APIC-register virtualization the processor's own self-IPI virtualization delivers it
/// whatever SVR says, SDM Vol. 3C §30.1.5; docs/conformance.md.)
fn software_disabled_vcpu1(info: &Platform) {
    sti();
    apic::write(SVR, apic::read(SVR) & !SVR_APIC_ENABLED);
    apic::write(LVT_LINT0, 0x700);
    // QEMU's TCG lets the write unmask it.
    let masked = apic::read(LVT_LINT0) & LVT_MASKED != 0;
    assert!(masked || !info.hypervisor, "LVT entries stay masked while software-disabled");
    STEP.store(1, Ordering::Release);
    wait_until(info, 10, "vCPU 0's NMI", || irq::IRQS[1].nmis.load(Ordering::Acquire) == 1);
    assert_eq!(irq::count(1, VECTOR), 0, "a software-disabled APIC took a fixed interrupt");
    apic::write(SVR, 0x1ff);
    STEP.store(2, Ordering::Release);
    wait_until(info, 2, "the IPI once software-enabled", || irq::count(1, VECTOR) >= 1);
    exactly_one(info, VECTOR);
}

/// vCPU 1's global-disable part: an IPI to it is lost; enabled again, the next one arrives.
fn disabled_vcpu1(info: &Platform) {
    wait_until(info, 10, "vCPU 0's go", || STEP.load(Ordering::Acquire) == 3);
    let base = apic::rdmsr(IA32_APIC_BASE);
    apic::wrmsr(IA32_APIC_BASE, base & !(EN | EXTD));
    STEP.store(4, Ordering::Release);
    wait_until(info, 10, "vCPU 0's check", || CHECKED.load(Ordering::Acquire) == 1);
    assert_eq!(irq::count(1, VECTOR_1), 0, "a disabled APIC took an IPI");
    restore(base, base & EXTD != 0);
    STEP.store(5, Ordering::Release);
    wait_until(info, 2, "the IPI once enabled", || irq::count(1, VECTOR_1) >= 1);
    exactly_one(info, VECTOR_1);
}

/// The IPI sent while the APIC was deaf stays lost: only the one sent after re-enabling
/// arrives. QEMU's TCG keeps the lost one in IRR and delivers it on re-enabling, so there two
/// may arrive (waiting for exactly one raced with the second when vCPU 1 was descheduled).
fn exactly_one(info: &Platform, vector: u8) {
    delay_ms(info, 5);
    let n = irq::count(1, vector);
    assert!(n == 1 || !info.hypervisor && n == 2, "{n} interrupts on vector {vector:#x} after re-enabling");
}

fn main(vcpu: u32, info: &'static Platform) {
    assert!(info.vcpu_count >= 2, "conf-apic needs 2 vCPUs");
    if vcpu == 1 {
        wait_until(info, 10, "vCPU 0's state checks", || STEP.load(Ordering::Acquire) == 0xff);
        STEP.store(0, Ordering::Release);
        software_disabled_vcpu1(info);
        disabled_vcpu1(info);
        return;
    }
    states(info);
    STEP.store(0xff, Ordering::Release);
    wait_until(info, 10, "vCPU 1 to software-disable its APIC", || STEP.load(Ordering::Acquire) == 1);
    apic::send_fixed(1, VECTOR);
    delay_ms(info, 5);
    apic::send(ICR_NMI | ICR_ASSERT, 1);
    wait_until(info, 10, "vCPU 1 to software-enable its APIC", || STEP.load(Ordering::Acquire) == 2);
    apic::send_fixed(1, VECTOR);
    wait_until(info, 2, "vCPU 1 to take the IPI", || irq::count(1, VECTOR) >= 1);
    STEP.store(3, Ordering::Release);
    wait_until(info, 10, "vCPU 1 to disable its APIC", || STEP.load(Ordering::Acquire) == 4);
    apic::send_fixed(1, VECTOR_1);
    delay_ms(info, 5);
    CHECKED.store(1, Ordering::Release);
    wait_until(info, 10, "vCPU 1 to enable its APIC", || STEP.load(Ordering::Acquire) == 5);
    apic::send_fixed(1, VECTOR_1);
    wait_until(info, 2, "vCPU 1 to take the IPI", || irq::count(1, VECTOR_1) >= 1);
    println!("conf-apic: IA32_APIC_BASE transitions, reset on re-enable, software disable, a disabled APIC deaf");
    report!(r#"{{"test":"conf-apic","vcpu":0}}"#);
}
