//! The benign VM beside each hostile one. For `seconds` of TSC time it keeps checking that
//! nothing foreign reached it: no interrupt and no NMI (it sends none itself), and a pattern it
//! wrote over 64 KiB of its RAM unchanged; it also times its own PRINTs (a hostile VM must not
//! keep it off the console). Then it reports what it saw and fails on anything foreign.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use guest_tests::irq::IRQS;
use guest_tests::{Platform, entry, println, rdtsc, report, sti};

entry!(main);

const WORDS: usize = 8192;
static PATTERN: [AtomicU64; WORDS] = [const { AtomicU64::new(0) }; WORDS];

fn expected(i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5a5a_0000_ffff_1234
}

fn main(me: u32, info: &'static Platform) {
    assert_eq!(info.vcpu_count, 1, "the neighbour runs one vCPU");
    let seconds: u64 = info.arg("seconds").and_then(|s| s.parse().ok()).unwrap_or(1);
    for (i, w) in PATTERN.iter().enumerate() {
        w.store(expected(i), Ordering::Relaxed);
    }
    sti();
    let deadline = rdtsc() + seconds * info.tsc_hz;
    let (mut rounds, mut prints, mut print_worst) = (0u64, 0u64, 0u64);
    let mut next_print = rdtsc();
    while rdtsc() < deadline {
        for (i, w) in PATTERN.iter().enumerate() {
            let v = w.load(Ordering::Relaxed);
            assert_eq!(v, expected(i), "neighbour memory changed at word {i}");
        }
        rounds += 1;
        if rdtsc() >= next_print {
            let t = rdtsc();
            println!("neighbour: round {rounds}, all quiet");
            print_worst = print_worst.max(rdtsc() - t);
            prints += 1;
            next_print = rdtsc() + info.tsc_hz / 20;
        }
    }
    let irqs = &IRQS[me as usize];
    let foreign: u32 = irqs.count.iter().map(|c| c.load(Ordering::Acquire)).sum();
    let nmis = irqs.nmis.load(Ordering::Acquire);
    let print_worst_us = print_worst * 1_000_000 / info.tsc_hz.max(1);
    report!(
        r#"{{"test":"neighbour","vcpu":{me},"foreign_interrupts":{foreign},"nmis":{nmis},"memory_rounds":{rounds},"prints":{prints},"print_worst_us":{print_worst_us}}}"#
    );
    assert_eq!((foreign, nmis), (0, 0), "interrupts or NMIs reached the neighbour");
}
