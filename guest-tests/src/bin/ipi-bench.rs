//! The IPI round trip in the style of kvm-unit-tests' vmexit "ipi" test: vCPU 0 writes the ICR
//! for a fixed IPI; the target's handler counts it (the flag) and EOIs; vCPU 0 spins until it
//! sees the flag. The round trip, the receivers' wait loop and the handler are hvcore::bench_isr,
//! the same page-aligned instructions as the hypervisor's native run. RDTSC around each round
//! trip after a warm-up; the samples are summarized in the guest. `args`: `iterations=N target=spin|halt pattern=unicast|broadcast`.
//! Nothing is printed or counted through the hypervisor inside the timed loop.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use guest_tests::apic;
use guest_tests::hypercall::exits_except_vmcall;
use guest_tests::irq::{FAST_HITS, FAST_VECTOR};
use guest_tests::sync::Barrier;
use guest_tests::{Platform, entry, println, rdtsc, report, sti, uart};
use hvcore::apic::regs::{ICR_ASSERT, ICR_FIXED, ICR_SHORTHAND_OTHERS};
use hvcore::guest_abi::APIC_MMIO_GPA;
use hvcore::stats::summarize;

entry!(main);

hvcore::ipi_bench_loops!(round_trip_x2apic, round_trip_xapic, wait_done, FAST_HITS);

static BARRIER: Barrier = Barrier::new();
static DONE: AtomicBool = AtomicBool::new(false);
/// Exits each receiver took during the timed loop.
static RECEIVER_EXITS: [AtomicU64; 64] = [const { AtomicU64::new(0) }; 64];
const VECTOR: u8 = FAST_VECTOR;
const MAX_SAMPLES: usize = 20_000;
/// Only vCPU 0 uses it; the lock is taken once, outside the timed loop.
static SAMPLES: spin::Mutex<[u64; MAX_SAMPLES]> = spin::Mutex::new([0; MAX_SAMPLES]);

fn main(me: u32, info: &'static Platform) {
    let n = info.vcpu_count;
    assert!(n >= 2, "ipi-bench needs a sender and a receiver");
    let iterations: usize = info.arg("iterations").and_then(|v| v.parse().ok()).unwrap_or(1000).min(MAX_SAMPLES);
    let halt = info.arg("target") == Some("halt");
    let broadcast = info.arg("pattern") == Some("broadcast");
    let warmup = (iterations / 10).max(10);
    sti();
    BARRIER.wait(n);

    if me != 0 {
        let start = exits_except_vmcall();
        // SAFETY: DONE is a static byte; interrupts are on (sti above), and vCPU 0 sends one
        // last IPI after setting DONE, so a halted wait wakes and sees it.
        unsafe { wait_done(DONE.as_ptr() as *const u8, halt as u32) };
        RECEIVER_EXITS[me as usize].store(exits_except_vmcall() - start, Ordering::Release);
        BARRIER.wait(n);
        return;
    }

    // Let the receivers reach their loop (and HLT).
    let until = rdtsc() + info.tsc_hz / 100;
    while rdtsc() < until {
        core::hint::spin_loop();
    }
    let receivers = if broadcast { n - 1 } else { 1 };
    let mut guard = SAMPLES.lock();
    let samples = &mut guard[..];
    let mut exits_start = 0;
    let shorthand = if broadcast { ICR_SHORTHAND_OTHERS } else { 0 };
    let icr_low = ICR_FIXED | ICR_ASSERT | shorthand | VECTOR as u32;
    let sync = info.arg("sync") == Some("serial");
    for i in 0..warmup + iterations {
        if i == warmup {
            if sync {
                println!("SYNC begin");
                uart::read_byte();
            }
            exits_start = exits_except_vmcall();
        }
        let expected = FAST_HITS.load(Ordering::Acquire).wrapping_add(receivers);
        let cycles = if apic::is_x2apic() {
            // SAFETY: x2APIC mode, so WRMSR to the ICR is allowed; the receivers run the
            // handler that counts FAST_HITS, so the wait ends.
            unsafe { round_trip_x2apic(icr_low, 1, expected) }
        } else {
            // SAFETY: xAPIC mode; the APIC page is identity-mapped and APIC virtualization
            // serves the ICR writes; the handler as above.
            unsafe {
                round_trip_xapic(icr_low, 1, expected, (APIC_MMIO_GPA + hvcore::apic::regs::ICR_LO as u64) as *mut u32)
            }
        };
        if i >= warmup {
            samples[i - warmup] = cycles;
        }
    }
    let sender_exits = exits_except_vmcall() - exits_start;
    if sync {
        println!("SYNC end");
        uart::read_byte();
    }
    DONE.store(true, Ordering::Release);
    // Wake halted receivers so they see DONE.
    for t in 1..n {
        apic::send_fixed(t, VECTOR);
    }
    BARRIER.wait(n);
    let receiver_exits: u64 = (1..n).map(|t| RECEIVER_EXITS[t as usize].load(Ordering::Acquire)).max().unwrap_or(0);
    let st = summarize(&mut samples[..iterations]);
    // Exits per IPI, in thousandths (no floating point here).
    let per = |e: u64| e * 1000 / iterations as u64;
    println!(
        "{} {} {}: median {} min {} p99 {} mean {} ({} iterations); exits per IPI: sender {}/1000, receiver {}/1000",
        if apic::is_x2apic() { "x2apic" } else { "xapic" },
        if broadcast { "broadcast" } else { "unicast" },
        if halt { "halt" } else { "spin" },
        st.median,
        st.min,
        st.p99,
        st.mean,
        iterations,
        per(sender_exits),
        per(receiver_exits)
    );
    report!(
        r#"{{"test":"ipi-bench","apic":"{}","ipiv":{},"target":"{}","pattern":"{}","iterations":{iterations},"cycles":{st},"exits_milli_per_ipi":{{"sender":{},"receiver":{}}}}}"#,
        if apic::is_x2apic() { "x2apic" } else { "xapic" },
        info.ipiv != 0,
        if halt { "halt" } else { "spin" },
        if broadcast { "broadcast" } else { "unicast" },
        per(sender_exits),
        per(receiver_exits)
    );
}
