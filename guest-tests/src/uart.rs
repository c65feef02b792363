//! The console: the PC's first serial port, a 16550A driven by polling (the hypervisor and
//! QEMU both emulate one on COM1). With the FIFO on, one LSR read per 16 bytes.

use crate::port::{inb, outb};

pub const COM1: u16 = 0x3f8;
/// COM1's ISA IRQ.
pub const COM1_IRQ: usize = 4;
/// Interrupt enable: transmitter holding register empty.
pub const IER_THRE: u8 = 1 << 1;
/// Interrupt identification: the source bits, and "transmitter empty".
pub const IIR_SOURCE_MASK: u8 = 0x0f;
pub const IIR_THRE: u8 = 0x02;
const LSR_DATA_READY: u8 = 1;
const LSR_THR_EMPTY: u8 = 1 << 5;
const FIFO_DEPTH: usize = 16;

/// 115200 baud, 8N1, FIFOs on and cleared, interrupts off.
pub fn init() {
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x80);
    outb(COM1, 0x01);
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03);
    outb(COM1 + 2, 0xc7);
    outb(COM1 + 4, 0x0b);
}

/// Writes `bytes`, waiting for an empty transmitter before each FIFO-full.
pub fn write(bytes: &[u8]) {
    for chunk in bytes.chunks(FIFO_DEPTH) {
        while inb(COM1 + 5) & LSR_THR_EMPTY == 0 {
            core::hint::spin_loop();
        }
        for &b in chunk {
            outb(COM1, b);
        }
    }
}

/// Waits (polling the line status) for a byte from the other end and returns it.
pub fn read_byte() -> u8 {
    while inb(COM1 + 5) & LSR_DATA_READY == 0 {
        core::hint::spin_loop();
    }
    inb(COM1)
}
