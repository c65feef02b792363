//! Level-triggered I/O APIC entries at their edge cases (82093AA datasheet §3.2.4; SDM Vol. 3A
//! §12.8.4 for TMR), with QEMU's pc-testdev driving the lines (`pc_testdev = on`):
//! - an entry masked by its handler still takes the EOI (remote IRR clears), sends nothing
//!   while masked, and sends again when unmasked with its line still high;
//! - two pins with one vector and different destinations, both lines still high at an EOI: the
//!   EOI re-arms both and each sends again to its own CPU;
//! - the local APIC's TMR holds the vector of a level-triggered interrupt being handled.
//! Needs 2 vCPUs.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use guest_tests::ioapic::{IoApic, entry};
use guest_tests::irq::{self, count};
use guest_tests::port::outb;
use guest_tests::{Platform, apic, entry, println, rdtsc, report, sti, wait_until};
use hvcore::apic::regs;

entry!(main);

const MASK_VECTOR: u8 = 0x81;
const SHARED: u8 = 0x91;
/// Lines (I/O APIC pins) of pc-testdev.
const MASK_PIN: u32 = 10;
const PIN_CPU0: u32 = 11;
const PIN_CPU1: u32 = 12;

static IO_BASE: AtomicU64 = AtomicU64::new(0);
static CPU1_READY: AtomicBool = AtomicBool::new(false);
static DONE: AtomicBool = AtomicBool::new(false);
/// The masking case: the handler's runs and whether TMR held the vector.
static MASK_RUNS: AtomicU32 = AtomicU32::new(0);
static TMR_SEEN: AtomicU32 = AtomicU32::new(0);
/// The shared case: each CPU lowers its line only on its second run.
static SHARED_RUNS: [AtomicU32; 2] = [AtomicU32::new(0), AtomicU32::new(0)];

fn line(n: u32, high: bool) {
    outb(0x2000 + n as u16, high as u8);
}

fn io() -> IoApic {
    IoApic::at(IO_BASE.load(Ordering::Relaxed))
}

fn tmr_has(vector: u8) -> bool {
    let (reg, bit) = regs::vector_bit(regs::TMR, vector);
    apic::read(reg) & bit != 0
}

fn mask_handler() {
    let run = MASK_RUNS.fetch_add(1, Ordering::AcqRel) + 1;
    if tmr_has(MASK_VECTOR) {
        TMR_SEEN.fetch_add(1, Ordering::AcqRel);
    }
    if run == 1 {
        // Masked in service, the line left high: the EOI must still reach the entry.
        let e = io().entry(MASK_PIN);
        io().set_entry(MASK_PIN, e | entry::MASKED);
    } else {
        line(MASK_PIN, false);
    }
}

fn shared_handler() {
    let cpu = irq::this_vcpu();
    let run = SHARED_RUNS[cpu].fetch_add(1, Ordering::AcqRel) + 1;
    if run >= 2 {
        line(if cpu == 0 { PIN_CPU0 } else { PIN_CPU1 }, false);
    }
}

fn idle(p: &Platform, ms: u64) {
    let end = rdtsc() + ms * p.tsc_hz / 1000;
    sti();
    while rdtsc() < end {
        core::hint::spin_loop();
    }
}

fn main(me: u32, p: &'static Platform) {
    assert!(p.vcpu_count >= 2, "conf-ioapic needs 2 vCPUs");
    if me == 1 {
        CPU1_READY.store(true, Ordering::Release);
        sti();
        while !DONE.load(Ordering::Acquire) {
            core::hint::spin_loop();
        }
        return;
    }
    let (_, base, _) = p.io_apic.expect("the MADT lists an I/O APIC");
    IO_BASE.store(base, Ordering::Relaxed);
    irq::set_handler(MASK_VECTOR, mask_handler);
    irq::set_handler(SHARED, shared_handler);
    wait_until(p, 10, "CPU 1", || CPU1_READY.load(Ordering::Acquire));
    let io = io();

    // Masked in service.
    io.set_entry(MASK_PIN, MASK_VECTOR as u64 | entry::LEVEL | entry::dest(p.apic_ids[0]));
    line(MASK_PIN, true);
    sti();
    wait_until(p, 2, "the level interrupt", || count(0, MASK_VECTOR) == 1);
    assert_eq!(io.entry(MASK_PIN) & entry::REMOTE_IRR, 0, "the EOI of a masked entry clears its remote IRR");
    idle(p, 5);
    assert_eq!(count(0, MASK_VECTOR), 1, "nothing sent while masked");
    io.set_entry(MASK_PIN, MASK_VECTOR as u64 | entry::LEVEL | entry::dest(p.apic_ids[0]));
    wait_until(p, 2, "the interrupt again once unmasked", || count(0, MASK_VECTOR) == 2);
    idle(p, 5);
    assert_eq!(count(0, MASK_VECTOR), 2, "the line is low: no more");
    assert_eq!(TMR_SEEN.load(Ordering::Acquire), 2, "TMR held the level-triggered vector in service");
    io.set_entry(MASK_PIN, entry::MASKED);

    // One vector, two pins, two CPUs.
    io.set_entry(PIN_CPU0, SHARED as u64 | entry::LEVEL | entry::dest(p.apic_ids[0]));
    io.set_entry(PIN_CPU1, SHARED as u64 | entry::LEVEL | entry::dest(p.apic_ids[1]));
    line(PIN_CPU0, true);
    line(PIN_CPU1, true);
    wait_until(p, 2, "both CPUs to take the shared vector twice", || {
        SHARED_RUNS[0].load(Ordering::Acquire) >= 2 && SHARED_RUNS[1].load(Ordering::Acquire) >= 2
    });
    idle(p, 5);
    for pin in [PIN_CPU0, PIN_CPU1] {
        assert_eq!(io.entry(pin) & entry::REMOTE_IRR, 0, "pin {pin}: remote IRR clear at the end");
    }
    io.set_entry(PIN_CPU0, entry::MASKED);
    io.set_entry(PIN_CPU1, entry::MASKED);
    DONE.store(true, Ordering::Release);
    let (r0, r1) = (SHARED_RUNS[0].load(Ordering::Acquire), SHARED_RUNS[1].load(Ordering::Acquire));
    println!(
        "conf-ioapic: masked level entry re-armed by its EOI, TMR set, shared vector re-sent to both CPUs ({r0}, {r1} runs)"
    );
    report!(r#"{{"test":"conf-ioapic","vcpu":0}}"#);
}
