//! NMI rules (SDM Vol. 3C §26.3, §27.3.1.5, §27.7.1): vCPU 0 sends NMIs to vCPU 1 and checks
//! that each arrives as on real hardware.
//! 1. One by one: every NMI sent after the last one's handler returned arrives.
//! 2. While one is handled: NMIs sent meanwhile fold into one, delivered after the handler's
//!    IRET; a handler is never entered twice at once.
//! 3. In shadows: vCPU 1 loops through MOV SS and STI shadows ending in exits (CPUID) while
//!    NMIs come; none is lost and no VM entry fails.
//! 4. Halted with IF = 0: an NMI still ends the halt.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use guest_tests::irq::{IRQS, NMI_DWELL_TICKS};
use guest_tests::sync::Barrier;
use guest_tests::{Platform, apic, entry, println, rdtsc, report, sti, wait_until};
use hvcore::apic::regs;

entry!(main);

static BARRIER: Barrier = Barrier::new();
/// The phase vCPU 1 is asked to run (3: shadows, 4: halted), and its acknowledgement.
static PHASE: AtomicU32 = AtomicU32::new(0);
static STOP: AtomicBool = AtomicBool::new(false);
static STOPPED: AtomicBool = AtomicBool::new(false);

fn nmis() -> u32 {
    IRQS[1].nmis.load(Ordering::Acquire)
}

fn nmi_to_1() {
    apic::send(regs::ICR_NMI | regs::ICR_ASSERT, 1);
}

/// Sends one NMI and waits for it to arrive.
fn one(info: &Platform, what: &str) {
    let before = nmis();
    nmi_to_1();
    wait_until(info, 5, what, || nmis() > before);
}

fn main(me: u32, info: &'static Platform) {
    assert_eq!(info.vcpu_count, 2, "hostile-nmi runs two vCPUs");
    sti();
    BARRIER.wait(2);
    if me == 1 {
        return target();
    }
    // 1. One by one.
    const ONE_BY_ONE: u32 = 8;
    for _ in 0..ONE_BY_ONE {
        one(info, "an NMI sent after the last one was handled");
    }
    // 2. While one is handled (each handler spins for 20 ms of TSC time).
    let dwell = info.tsc_hz / 50;
    NMI_DWELL_TICKS.store(dwell, Ordering::Release);
    let base = nmis();
    nmi_to_1();
    wait_until(info, 5, "vCPU 1 in its NMI handler", || IRQS[1].nmi_depth.load(Ordering::Acquire) == 1);
    for _ in 0..5 {
        nmi_to_1();
    }
    wait_until(info, 5, "the NMI latched during the handler", || nmis() >= base + 2);
    wait_until(info, 5, "the handlers to return", || IRQS[1].nmi_depth.load(Ordering::Acquire) == 0);
    let settle = rdtsc() + 3 * dwell;
    while rdtsc() < settle {
        core::hint::spin_loop();
    }
    let while_handled = nmis() - base;
    NMI_DWELL_TICKS.store(0, Ordering::Release);
    // 3. In MOV SS and STI shadows.
    PHASE.store(3, Ordering::Release);
    const IN_SHADOWS: u32 = 100;
    for _ in 0..IN_SHADOWS {
        one(info, "an NMI sent while vCPU 1 runs through MOV SS / STI shadows");
        // Let vCPU 1 get back into its loop at a different point each time.
        let pause = rdtsc() + (rdtsc() & 0x3ff);
        while rdtsc() < pause {
            core::hint::spin_loop();
        }
    }
    // 4. Halted with IF = 0.
    PHASE.store(4, Ordering::Release);
    const HALTED: u32 = 4;
    for _ in 0..HALTED {
        one(info, "an NMI to a vCPU halted with IF = 0");
    }
    // vCPU 1 may have checked STOP just before halting again: wake it until it has seen it.
    STOP.store(true, Ordering::Release);
    while !STOPPED.load(Ordering::Acquire) {
        nmi_to_1();
        let pause = rdtsc() + info.tsc_hz / 1000;
        while rdtsc() < pause && !STOPPED.load(Ordering::Acquire) {
            core::hint::spin_loop();
        }
    }
    BARRIER.wait(2);
    let max_depth = IRQS[1].nmi_max_depth.load(Ordering::Acquire);
    println!("NMIs: {ONE_BY_ONE} one by one, {while_handled} from 6 sent during a handler, max depth {max_depth}");
    report!(
        r#"{{"test":"hostile-nmi","vcpu":0,"one_by_one":{ONE_BY_ONE},"while_handled":{while_handled},"max_depth":{max_depth},"in_shadows":{IN_SHADOWS},"halted":{HALTED}}}"#
    );
    assert_eq!(max_depth, 1, "an NMI was delivered inside the NMI handler");
    assert_eq!(while_handled, 2, "6 NMIs during one handler: the first and one latched, as hardware does");
}

fn target() {
    while PHASE.load(Ordering::Acquire) < 3 {
        core::hint::spin_loop();
    }
    while PHASE.load(Ordering::Acquire) == 3 {
        // SAFETY: reloads SS with its own selector (MOV SS shadow), and CLI/STI around CPUID
        // (STI shadow); CPUID exits inside each shadow. RBX is saved by hand (LLVM reserves it).
        unsafe {
            core::arch::asm!(
                "mov {t:r}, rbx",
                "mov {s:e}, ss",
                "mov ss, {s:e}",
                "cpuid",
                "cli",
                "sti",
                "cpuid",
                "mov ss, {s:e}",
                "nop",
                "mov rbx, {t:r}",
                s = out(reg) _,
                t = out(reg) _,
                inout("eax") 0 => _,
                inout("ecx") 0 => _,
                out("edx") _,
            )
        };
    }
    while !STOP.load(Ordering::Acquire) {
        // SAFETY: only an NMI ends this halt (IF = 0); interrupts are re-enabled after.
        unsafe { core::arch::asm!("cli", "hlt", "sti", options(nomem, nostack)) };
    }
    STOPPED.store(true, Ordering::Release);
    BARRIER.wait(2);
    report!(
        r#"{{"test":"hostile-nmi","vcpu":1,"nmis":{},"max_depth":{}}}"#,
        nmis(),
        IRQS[1].nmi_max_depth.load(Ordering::Acquire)
    );
}
