//! The I/O APIC as an OS programs it (82093AA register set), with COM1's transmitter-empty
//! interrupt as the source: identification and version, the redirection table's read-only
//! bits, delivery to another CPU by physical and (xAPIC) logical destination, a level-triggered
//! entry whose remote IRR holds until the handler's EOI and which sends again if the line is
//! still high at the EOI, and masking. CPU 0 drives; CPU 1 receives what is sent to it.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use guest_tests::ioapic::{IoApic, REG_ID, REG_VERSION, entry};
use guest_tests::irq::{self, count};
use guest_tests::port::{inb, outb};
use guest_tests::uart::{COM1, COM1_IRQ, IER_THRE};
use guest_tests::{Platform, apic, entry, println, rdtsc, report, sti, wait_until};

entry!(main);

const TO_CPU1: u8 = 0x61;
const LOGICAL: u8 = 0x62;
const LEVEL: u8 = 0x63;
const MASKED: u8 = 0x64;

static DONE: AtomicBool = AtomicBool::new(false);
static CPU1_READY: AtomicBool = AtomicBool::new(false);
/// The level-triggered handler: how many times it ran, whether remote IRR was set while it
/// ran, and whether it should leave the line high (once) to see the entry send again.
static LEVEL_RUNS: AtomicU32 = AtomicU32::new(0);
static LEVEL_RIRR_SEEN: AtomicU32 = AtomicU32::new(0);
static LEAVE_HIGH: AtomicBool = AtomicBool::new(false);
static PIN: AtomicU32 = AtomicU32::new(0);
static IO_BASE: AtomicU64 = AtomicU64::new(0);

/// Raises COM1's line: a new rising edge of the transmitter-empty interrupt.
fn raise() {
    outb(COM1 + 1, 0);
    inb(COM1 + 2);
    outb(COM1 + 1, IER_THRE);
}

/// Lowers it: reading IIR acknowledges the source, and the interrupt is switched off.
fn lower() {
    inb(COM1 + 2);
    outb(COM1 + 1, 0);
}

fn level_handler() {
    LEVEL_RUNS.fetch_add(1, Ordering::AcqRel);
    let io = io();
    if io.entry(PIN.load(Ordering::Relaxed)) & entry::REMOTE_IRR != 0 {
        LEVEL_RIRR_SEEN.fetch_add(1, Ordering::AcqRel);
    }
    if !LEAVE_HIGH.swap(false, Ordering::AcqRel) {
        lower();
    }
}

fn io() -> IoApic {
    IoApic::at(IO_BASE.load(Ordering::Relaxed))
}

/// Waits `ticks` of TSC time with interrupts on.
fn idle(ticks: u64) {
    let end = rdtsc() + ticks;
    sti();
    while rdtsc() < end {
        core::hint::spin_loop();
    }
}

fn main(me: u32, p: &'static Platform) {
    assert_eq!(p.vcpu_count, 2, "the ioapic test runs on two CPUs");
    if me == 1 {
        irq::set_handler(TO_CPU1, lower);
        irq::set_handler(LOGICAL, lower);
        apic::set_flat_logical_id(1);
        CPU1_READY.store(true, Ordering::Release);
        sti();
        while !DONE.load(Ordering::Acquire) {
            core::hint::spin_loop();
        }
        return;
    }
    let (madt_id, base, gsi_base) = p.io_apic.expect("the MADT lists an I/O APIC");
    IO_BASE.store(base, Ordering::Relaxed);
    let io = io();
    let pin = p.isa_gsi[COM1_IRQ] - gsi_base;
    PIN.store(pin, Ordering::Relaxed);

    // Identification: the ID the MADT gives, version 0x1X, at least 24 entries, all masked.
    assert_eq!((io.read(REG_ID) >> 24) & 0xf, madt_id as u32, "I/O APIC ID register against the MADT");
    let version = io.read(REG_VERSION);
    assert!(version & 0xff >= 0x11 && version & 0xff <= 0x20, "I/O APIC version {version:#x}");
    let entries = io.entries();
    assert!(entries >= 24, "{entries} redirection entries");
    for e in 0..entries {
        assert_ne!(io.entry(e) & entry::MASKED, 0, "entry {e} masked at reset");
    }
    // Writable bits come back; delivery status and remote IRR are read-only.
    let probe = 0x5a | entry::LOGICAL | entry::MASKED | entry::LEVEL | entry::dest(0xa5);
    io.set_entry(pin, probe | entry::DELIVERY_STATUS | entry::REMOTE_IRR);
    assert_eq!(io.entry(pin), probe, "redirection entry read back");
    io.set_entry(pin, entry::MASKED);

    wait_until(p, 10, "CPU 1", || CPU1_READY.load(Ordering::Acquire));
    let ms = p.tsc_hz / 1000;
    let cpu1 = p.apic_ids[1];

    // Physical destination: CPU 1 only.
    io.set_entry(pin, TO_CPU1 as u64 | entry::dest(cpu1));
    raise();
    wait_until(p, 10, "the interrupt on CPU 1", || count(1, TO_CPU1) == 1);
    idle(ms);
    assert_eq!((count(0, TO_CPU1), count(1, TO_CPU1)), (0, 1), "physical destination: CPU 1 only, once");

    // Logical destination (flat model, xAPIC): CPU 1's LDR bit.
    let logical = !apic::is_x2apic();
    if logical {
        io.set_entry(pin, LOGICAL as u64 | entry::LOGICAL | entry::dest(1 << 1));
        raise();
        wait_until(p, 10, "the logical-destination interrupt", || count(1, LOGICAL) == 1);
        assert_eq!(count(0, LOGICAL), 0, "logical destination 0x02: CPU 1 only");
    }

    // Level-triggered, to this CPU: remote IRR is set while the handler runs and cleared by
    // its EOI; a line still high at the EOI sends again.
    irq::set_handler(LEVEL, level_handler);
    io.set_entry(pin, LEVEL as u64 | entry::LEVEL | entry::dest(apic::id()));
    sti();
    raise();
    wait_until(p, 10, "the level-triggered interrupt", || LEVEL_RUNS.load(Ordering::Acquire) == 1);
    idle(ms);
    assert_eq!(LEVEL_RUNS.load(Ordering::Acquire), 1, "a level interrupt the handler acknowledged comes once");
    assert_eq!(io.entry(pin) & entry::REMOTE_IRR, 0, "the EOI cleared remote IRR");
    LEAVE_HIGH.store(true, Ordering::Release);
    raise();
    wait_until(p, 10, "the level interrupt sent again at its EOI", || LEVEL_RUNS.load(Ordering::Acquire) == 3);
    idle(ms);
    let runs = LEVEL_RUNS.load(Ordering::Acquire);
    assert_eq!(runs, 3, "the line left high at the EOI sent once more, then stopped");
    assert_eq!(LEVEL_RIRR_SEEN.load(Ordering::Acquire), 3, "remote IRR was set in every level handler");

    // Masked: nothing arrives anywhere.
    io.set_entry(pin, MASKED as u64 | entry::MASKED | entry::dest(apic::id()));
    raise();
    idle(3 * ms);
    lower();
    assert_eq!((count(0, MASKED), count(1, MASKED)), (0, 0), "a masked entry sends nothing");
    x86_64::instructions::interrupts::disable();
    DONE.store(true, Ordering::Release);
    println!(
        "ioapic: {entries} entries, version {version:#x}; physical, logical {logical}, level and masked delivery as specified"
    );
    report!(
        r#"{{"test":"ioapic","vcpu":{me},"entries":{entries},"version":{},"pin":{pin},"logical":{logical},"level_runs":{runs}}}"#,
        version & 0xff
    );
}
