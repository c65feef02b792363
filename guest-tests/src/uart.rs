//! The console: the PC's first serial port, a 16550A driven by polling (the hypervisor and
//! QEMU both emulate one on COM1). With the FIFO on, one LSR read per 16 bytes.

use x86_64::instructions::port::Port;

const COM1: u16 = 0x3f8;
const LSR_THR_EMPTY: u8 = 1 << 5;
const FIFO_DEPTH: usize = 16;

fn outb(port: u16, v: u8) {
    // SAFETY: COM1's registers; writing them has no effect on memory.
    unsafe { Port::<u8>::new(port).write(v) }
}

fn inb(port: u16) -> u8 {
    // SAFETY: as in outb.
    unsafe { Port::<u8>::new(port).read() }
}

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
