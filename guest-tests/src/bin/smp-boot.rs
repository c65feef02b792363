//! INIT and SIPI as an OS uses them (SDM Vol. 3A §9.4, §12.6.1): the runtime has brought every
//! processor up with INIT-SIPI-SIPI by destination; this test then restarts each one with INIT
//! while it runs (one spinning with interrupts on, one spinning with them off, one halted with
//! them off), checks that a SIPI to a processor that is not waiting is ignored, and finally
//! restarts all of them at once by the all-excluding-self shorthand. Each restart enters the
//! test's `main` again through the real-mode trampoline.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use guest_tests::apic;
use guest_tests::boot::{MAX_CPUS, SIPI_VECTOR};
use guest_tests::{Platform, entry, println, rdtsc, report, wait_until};
use hvcore::apic::regs::{ICR_ASSERT, ICR_INIT, ICR_LEVEL, ICR_SHORTHAND_OTHERS, ICR_STARTUP};

entry!(main);

/// How many times each processor entered `main` (1 at boot, +1 per restart).
static ENTRIES: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
/// Set by each application processor once it waits in its phase's loop.
static WAITING: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// The last phase: processors return from `main` instead of waiting to be restarted.
static FINISH: AtomicBool = AtomicBool::new(false);

fn delay(p: &Platform, us: u64) {
    let end = rdtsc() + us * p.tsc_hz / 1_000_000;
    while rdtsc() < end {
        core::hint::spin_loop();
    }
}

/// An application processor: each entry waits, in a way that depends on which processor it
/// is, for the INIT that restarts it, or returns in the last phase.
fn application_processor(me: u32) {
    let i = me as usize;
    WAITING[i].store(true, Ordering::Release);
    if FINISH.load(Ordering::Acquire) {
        return;
    }
    match me % 3 {
        // Spinning with interrupts on.
        1 => {
            x86_64::instructions::interrupts::enable();
            loop {
                core::hint::spin_loop();
            }
        }
        // Halted with interrupts off: only INIT (or NMI, SMI) ends it.
        2 => loop {
            x86_64::instructions::interrupts::disable();
            x86_64::instructions::hlt();
        },
        // Spinning with interrupts off.
        _ => loop {
            core::hint::spin_loop();
        },
    }
}

fn main(me: u32, p: &'static Platform) {
    ENTRIES[me as usize].fetch_add(1, Ordering::AcqRel);
    if me != 0 {
        return application_processor(me);
    }
    let n = p.vcpu_count as usize;
    assert!(n >= 2, "smp-boot needs at least two processors");
    let all_waiting = |entries: u32| {
        (1..n).all(|i| ENTRIES[i].load(Ordering::Acquire) == entries && WAITING[i].load(Ordering::Acquire))
    };
    wait_until(p, 2, "every processor started by INIT-SIPI-SIPI", || all_waiting(1));

    // One at a time, by destination: INIT a running processor, then SIPI, then a second SIPI,
    // which must be ignored (the processor no longer waits for one).
    for i in 1..n {
        WAITING[i].store(false, Ordering::Release);
        let id = p.apic_ids[i];
        apic::send(ICR_INIT | ICR_ASSERT | ICR_LEVEL, id);
        delay(p, 10_000);
        apic::send(ICR_STARTUP | ICR_ASSERT | SIPI_VECTOR as u32, id);
        wait_until(p, 2, "a processor restarted by INIT-SIPI", || {
            ENTRIES[i].load(Ordering::Acquire) == 2 && WAITING[i].load(Ordering::Acquire)
        });
        apic::send(ICR_STARTUP | ICR_ASSERT | SIPI_VECTOR as u32, id);
        delay(p, 2_000);
        assert_eq!(ENTRIES[i].load(Ordering::Acquire), 2, "CPU {i}: a SIPI to a running processor is ignored");
    }

    // All at once, by shorthand: INIT all excluding self, then SIPI all excluding self. Each
    // finds its own stack from its APIC ID (boot.rs), and returns this time.
    FINISH.store(true, Ordering::Release);
    for w in &WAITING[1..n] {
        w.store(false, Ordering::Release);
    }
    apic::send(ICR_INIT | ICR_ASSERT | ICR_LEVEL | ICR_SHORTHAND_OTHERS, 0);
    delay(p, 10_000);
    apic::send(ICR_STARTUP | ICR_ASSERT | ICR_SHORTHAND_OTHERS | SIPI_VECTOR as u32, 0);
    wait_until(p, 2, "every processor restarted by shorthand", || all_waiting(3));
    println!("smp-boot: {n} processors started, each restarted by INIT-SIPI by destination and by shorthand");
    report!(r#"{{"test":"smp-boot","vcpu":0,"processors":{n},"entries_per_ap":3}}"#);
}
