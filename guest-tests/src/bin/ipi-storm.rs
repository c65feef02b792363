//! Every vCPU sends many IPIs to every other vCPU at once; every IPI sent must be received. A
//! sender reuses its vector toward a target only after the target counted the previous one, so
//! the architecture's coalescing of a pending vector cannot hide a loss.
#![no_std]
#![no_main]

use core::sync::atomic::Ordering;
use guest_tests::irq::{IRQS, count};
use guest_tests::sync::Barrier;
use guest_tests::{Platform, apic, entry, hypercall, println, report, sti, wait_until};

entry!(main);

static BARRIER: Barrier = Barrier::new();
const ROUNDS: u32 = 100;
const BASE: u8 = 0x40; // + sender

fn main(me: u32, info: &'static Platform) {
    let n = info.vcpu_count;
    assert!(n <= 64);
    sti();
    BARRIER.wait(n);
    let mut sent = [0u32; 64];
    let vector = BASE + me as u8;
    let start = guest_tests::rdtsc();
    let deadline = start + 60 * info.tsc_hz;
    loop {
        let mut done = true;
        for t in (0..n).filter(|&t| t != me) {
            let t = t as usize;
            if sent[t] == ROUNDS {
                continue;
            }
            done = false;
            // The previous IPI to t has been taken: sending again cannot coalesce.
            if count(t, vector) == sent[t] {
                sent[t] += 1;
                apic::send_fixed(t as u32, vector);
            }
        }
        if done {
            break;
        }
        assert!(guest_tests::rdtsc() < deadline, "storm did not finish: sent {:?}", &sent[..n as usize]);
        core::hint::spin_loop();
    }
    // Everything I sent has been received, and I received ROUNDS from each other vCPU.
    for t in (0..n).filter(|&t| t != me) {
        wait_until(info, 10, "the last IPIs to be taken", || count(t as usize, vector) == ROUNDS);
    }
    for s in (0..n).filter(|&s| s != me) {
        wait_until(info, 10, "every IPI from every sender", || count(me as usize, BASE + s as u8) == ROUNDS);
    }
    BARRIER.wait(n);
    let total_sent: u32 = sent.iter().sum();
    let received: u32 = IRQS[me as usize].count.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    let expected = ROUNDS * (n - 1);
    assert_eq!(
        received, expected,
        "received {received} interrupts, expected exactly {expected} (no loss, nothing spurious)"
    );
    let exits = hypercall::exit_counters_if_present().unwrap_or([0; hvcore::vmx::exit_reason::COUNT]);
    let cycles = guest_tests::rdtsc() - start;
    println!("vCPU {me}: sent {total_sent}, received {received} in {cycles} TSC ticks");
    report!(
        r#"{{"test":"ipi-storm","vcpu":{me},"sent":{total_sent},"received":{received},"tsc_ticks":{cycles},"exits":{{"apic_write":{},"wrmsr":{},"external_interrupt":{}}}}}"#,
        exits[56],
        exits[32],
        exits[1]
    );
}
