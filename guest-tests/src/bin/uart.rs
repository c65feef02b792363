//! COM1 driven by its interrupt, as an interrupt-driven serial driver does: the 16550's IRQ 4
//! (on the GSI the MADT gives it) is routed through the I/O APIC to this CPU, and a line is sent
//! one byte per transmitter-empty interrupt, from the handler. Every byte must take exactly one
//! interrupt, and one more says the transmitter is empty at the end.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use guest_tests::ioapic::{IoApic, entry};
use guest_tests::irq::{self, this_vcpu};
use guest_tests::port::{inb, outb};
use guest_tests::uart::{COM1, COM1_IRQ, IER_THRE, IIR_SOURCE_MASK, IIR_THRE};
use guest_tests::{Platform, apic, entry, println, report, sti, wait_until};

entry!(main);

const VECTOR: u8 = 0x54;
const LINE: &[u8] = b"uart: this line went out one byte per transmitter-empty interrupt\n";

static NEXT: AtomicUsize = AtomicUsize::new(0);
static SENT_ALL: AtomicBool = AtomicBool::new(false);
static OTHER_SOURCES: AtomicUsize = AtomicUsize::new(0);

/// The interrupt handler: reading IIR acknowledges the transmitter-empty source; then the next
/// byte goes out, or, with none left, the interrupt is switched off.
fn transmitter_empty() {
    if inb(COM1 + 2) & IIR_SOURCE_MASK != IIR_THRE {
        OTHER_SOURCES.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let i = NEXT.fetch_add(1, Ordering::AcqRel);
    match LINE.get(i) {
        Some(&b) => outb(COM1, b),
        None => {
            outb(COM1 + 1, 0);
            SENT_ALL.store(true, Ordering::Release);
        }
    }
}

fn main(me: u32, p: &'static Platform) {
    assert_eq!(me, 0, "the uart test runs on one CPU");
    let io = IoApic::of(p);
    let (_, _, gsi_base) = p.io_apic.unwrap();
    let pin = p.isa_gsi[COM1_IRQ] - gsi_base;
    irq::set_handler(VECTOR, transmitter_empty);
    // Edge-triggered, fixed, physical, to this CPU; the UART's OUT2 is on (uart::init).
    io.set_entry(pin, VECTOR as u64 | entry::dest(apic::id()));
    println!("uart: COM1's IRQ {COM1_IRQ} on I/O APIC pin {pin}, vector {VECTOR:#x}");
    sti();
    // With the holding register empty, enabling the interrupt raises it at once.
    outb(COM1 + 1, IER_THRE);
    wait_until(p, 10, "the interrupt-driven line", || SENT_ALL.load(Ordering::Acquire));
    x86_64::instructions::interrupts::disable();
    io.set_entry(pin, entry::MASKED);
    let taken = irq::count(this_vcpu(), VECTOR) as usize;
    assert_eq!(OTHER_SOURCES.load(Ordering::Relaxed), 0, "every interrupt was the transmitter's");
    assert_eq!(taken, LINE.len() + 1, "one interrupt per byte, and one for the empty transmitter at the end");
    println!("uart: {} bytes sent by {taken} interrupts", LINE.len());
    report!(r#"{{"test":"uart","vcpu":{me},"bytes":{},"interrupts":{taken},"pin":{pin}}}"#, LINE.len());
}
