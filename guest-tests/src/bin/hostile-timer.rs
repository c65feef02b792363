//! A guest that asks the local APIC timer for an interrupt every tick: periodic, initial count
//! 1, divide by 1, for 50 ms of TSC time, in both APIC modes. Legal, so the VM must not be
//! stopped; but the hypervisor holds a periodic timer to its minimum period (100 µs), so at most
//! one interrupt per 100 µs arrives and the vCPU still runs its own code in between (the
//! neighbour VM beside it must not notice at all). Then a one-shot of 1 tick re-armed from its
//! own handler 2000 times: each re-arm is a write the guest makes, so that rate is the guest's
//! own (such a guest starves itself, as it would on hardware; the watchdog ends one that never
//! stops, and its neighbour does not notice either).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};
use hvcore::apic::regs;

use guest_tests::apic;
use guest_tests::irq::{self, count, this_vcpu};
use guest_tests::{Platform, entry, println, rdtsc, report, sti};

entry!(main);

const PERIODIC: u8 = 0x50;
const REARM: u8 = 0x51;
static REARMS: AtomicU32 = AtomicU32::new(0);

const REARM_TIMES: u32 = 2000;

fn rearm() {
    if REARMS.fetch_add(1, Ordering::Relaxed) + 1 < REARM_TIMES {
        apic::write(regs::TIMER_INITIAL, 1);
    }
}

fn main(me: u32, p: &'static Platform) {
    let me_ = this_vcpu();
    apic::write(regs::TIMER_DIVIDE, regs::DIVIDE_BY_1);
    apic::write(regs::LVT_TIMER, PERIODIC as u32 | regs::LVT_TIMER_PERIODIC);
    apic::write(regs::TIMER_INITIAL, 1);
    sti();
    let span = p.tsc_hz / 20;
    let (t0, mut spins) = (rdtsc(), 0u64);
    while rdtsc() - t0 < span {
        spins += 1;
        core::hint::spin_loop();
    }
    apic::write(regs::TIMER_INITIAL, 0);
    let periodic = count(me_, PERIODIC) as u64;
    let floor = p.tsc_hz / 10_000; // 100 µs
    let most = span / floor + 2;
    assert!(periodic > 0, "the periodic timer never fired");
    assert!(periodic <= most, "{periodic} periodic interrupts in 50 ms: faster than one per 100 µs ({most})");
    assert!(spins > 1000, "the vCPU got no time of its own between timer interrupts ({spins} spins)");

    irq::set_handler(REARM, rearm);
    apic::write(regs::LVT_TIMER, REARM as u32);
    let t1 = rdtsc();
    apic::write(regs::TIMER_INITIAL, 1);
    guest_tests::wait_until(p, 5, "the re-armed one-shots", || REARMS.load(Ordering::Relaxed) >= REARM_TIMES);
    let ticks = rdtsc() - t1;
    apic::write(regs::LVT_TIMER, regs::LVT_MASKED);
    let rearms = REARMS.load(Ordering::Relaxed);
    println!(
        "hostile-timer vCPU {me}: {periodic} periodic interrupts in 50 ms (at most {most}); {rearms} one-shots re-armed from the handler in {ticks} TSC ticks"
    );
    report!(
        r#"{{"test":"hostile-timer","vcpu":{me},"periodic":{periodic},"periodic_most":{most},"rearms":{rearms},"rearm_ticks":{ticks}}}"#
    );
}
