//! A 16550A UART (COM1 at 0x3F8, IRQ 4) as drivers probe and use it: divisor latch, scratch,
//! loopback (which Linux's 8250 driver checks), FIFO identification, and the transmitter-empty
//! interrupt. Transmission is instant: every byte goes to the VM's console at once, so the
//! transmitter is always empty. Nothing is ever received (no input side).
//!
//! The interrupt line (IRQ 4 through OUT2, as a PC wires it) is reported whenever its level
//! changes. Writing THR clears the transmitter-empty interrupt and the byte's transmission sets
//! it again at once, so a write with the line high is a pulse: an edge-triggered I/O APIC pin
//! sees a new interrupt per byte, as with real hardware a moment later.
//! Register map and bits: the TI/National PC16550D datasheet, "Register Description".

use super::bus::{Effects, Irq, LineChange, PortDevice};

pub const COM1: u16 = 0x3f8;
pub const LEN: u16 = 8;
pub const COM1_IRQ: u8 = 4;

const IER_THRE: u8 = 1 << 1;
const IIR_NONE: u8 = 0x01;
const IIR_THRE: u8 = 0x02;
const IIR_FIFO: u8 = 0xc0;
const FCR_ENABLE: u8 = 1 << 0;
const LCR_DLAB: u8 = 1 << 7;
const MCR_DTR: u8 = 1 << 0;
const MCR_RTS: u8 = 1 << 1;
const MCR_OUT1: u8 = 1 << 2;
const MCR_OUT2: u8 = 1 << 3;
const MCR_LOOP: u8 = 1 << 4;
const LSR_DR: u8 = 1 << 0;
const LSR_THRE: u8 = 1 << 5;
const LSR_TEMT: u8 = 1 << 6;

pub struct Uart16550 {
    irq: u8,
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    fifo: bool,
    /// The transmitter-empty interrupt is pending (cleared by reading IIR or writing THR).
    thre_pending: bool,
    /// A byte written in loopback mode, read back from RBR.
    looped: Option<u8>,
    /// The level of the interrupt line as last reported.
    line_high: bool,
}

impl Uart16550 {
    pub fn new(irq: u8) -> Self {
        // Reset values (datasheet table "UART Reset Configuration"): divisor 12 = 9600 baud.
        Self {
            irq,
            ier: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            dll: 12,
            dlm: 0,
            fifo: false,
            thre_pending: false,
            looped: None,
            line_high: false,
        }
    }

    fn interrupt_pending(&self) -> bool {
        self.thre_pending && self.ier & IER_THRE != 0
    }

    /// The IRQ line as a PC wires it: only with OUT2 set, and never in loopback.
    fn line(&self) -> bool {
        self.mcr & MCR_OUT2 != 0 && self.mcr & MCR_LOOP == 0 && self.interrupt_pending()
    }

    /// The line change since the last report, if any; `pulse` when the source was cleared and
    /// set again by one access (a THR write).
    fn line_change(&mut self, pulse: bool) -> Option<Irq> {
        let now = self.line();
        let change = match (self.line_high, now) {
            (false, true) => LineChange::High,
            (true, false) => LineChange::Low,
            (true, true) if pulse => LineChange::Pulse,
            _ => return None,
        };
        self.line_high = now;
        Some(Irq { line: self.irq, change })
    }
}

impl PortDevice for Uart16550 {
    fn name(&self) -> &'static str {
        "16550A UART"
    }

    fn read(&mut self, offset: u16, _: u8, _now_ns: u64) -> (u32, Effects) {
        let dlab = self.lcr & LCR_DLAB != 0;
        let v = match offset {
            0 if dlab => self.dll,
            0 => self.looped.take().unwrap_or(0),
            1 if dlab => self.dlm,
            1 => self.ier,
            2 => {
                let fifo = if self.fifo { IIR_FIFO } else { 0 };
                if self.interrupt_pending() {
                    // Reading IIR with THRE as the source clears it.
                    self.thre_pending = false;
                    let e = Effects { irq: self.line_change(false), ..Effects::NONE };
                    return ((IIR_THRE | fifo) as u32, e);
                }
                IIR_NONE | fifo
            }
            3 => self.lcr,
            4 => self.mcr,
            5 => LSR_THRE | LSR_TEMT | if self.looped.is_some() { LSR_DR } else { 0 },
            6 => {
                if self.mcr & MCR_LOOP != 0 {
                    // Loopback: CTS ← RTS, DSR ← DTR, RI ← OUT1, DCD ← OUT2.
                    let m = self.mcr;
                    ((m & MCR_RTS) << 3) | ((m & MCR_DTR) << 5) | ((m & MCR_OUT1) << 4) | ((m & MCR_OUT2) << 4)
                } else {
                    0xb0 // DCD, DSR, CTS: a terminal is there
                }
            }
            _ => self.scr,
        };
        (v as u32, Effects::NONE)
    }

    fn write(&mut self, offset: u16, _: u8, value: u32, _now_ns: u64) -> Effects {
        let v = value as u8;
        let dlab = self.lcr & LCR_DLAB != 0;
        let mut e = Effects::NONE;
        match offset {
            0 if dlab => self.dll = v,
            0 => {
                if self.mcr & MCR_LOOP != 0 {
                    self.looped = Some(v);
                } else {
                    e.console = Some(v);
                }
                // Sent at once: the holding register is empty again.
                self.thre_pending = true;
                e.irq = self.line_change(true);
                return e;
            }
            1 if dlab => self.dlm = v,
            1 => {
                // Enabling the THRE interrupt while the holding register is empty raises it.
                if v & IER_THRE != 0 && self.ier & IER_THRE == 0 {
                    self.thre_pending = true;
                }
                self.ier = v & 0x0f;
            }
            2 => self.fifo = v & FCR_ENABLE != 0,
            3 => self.lcr = v,
            4 => self.mcr = v & 0x1f,
            7 => self.scr = v,
            _ => {} // LSR and MSR are read-only
        }
        e.irq = self.line_change(false);
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_8250_probe_sees_a_16550a() {
        let mut u = Uart16550::new(COM1_IRQ);
        // Scratch register test.
        u.write(7, 1, 0xa5, 0);
        assert_eq!(u.read(7, 1, 0).0, 0xa5);
        // Loopback test (drivers/tty/serial/8250/8250_port.c autoconfig): MCR = LOOP|OUT2|RTS
        // gives MSR high nibble 0x90.
        u.write(4, 1, 0x1a, 0);
        assert_eq!(u.read(6, 1, 0).0 & 0xf0, 0x90);
        u.write(4, 1, 0, 0);
        // FIFO identification: IIR bits 7:6 = 11 once FCR enables the FIFO.
        u.write(2, 1, 0x07, 0);
        assert_eq!(u.read(2, 1, 0).0 & 0xc0, 0xc0);
        // Divisor latch.
        u.write(3, 1, 0x80, 0);
        u.write(0, 1, 1, 0);
        u.write(1, 1, 0, 0);
        assert_eq!((u.read(0, 1, 0).0, u.read(1, 1, 0).0), (1, 0));
        u.write(3, 1, 0x03, 0);
        assert_eq!(u.read(1, 1, 0).0, 0, "IER, not DLM, once DLAB is clear");
    }

    #[test]
    fn bytes_go_to_the_console_and_loop_back_in_loopback() {
        let mut u = Uart16550::new(COM1_IRQ);
        assert_eq!(u.write(0, 1, b'h' as u32, 0).console, Some(b'h'));
        assert_eq!(u.read(5, 1, 0).0 as u8 & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
        u.write(4, 1, MCR_LOOP as u32, 0);
        assert_eq!(u.write(0, 1, 0x42, 0).console, None);
        assert_eq!(u.read(5, 1, 0).0 as u8 & LSR_DR, LSR_DR);
        assert_eq!(u.read(0, 1, 0).0, 0x42);
        assert_eq!(u.read(5, 1, 0).0 as u8 & LSR_DR, 0);
    }

    #[test]
    fn transmitter_empty_interrupt_as_the_datasheet_says() {
        let mut u = Uart16550::new(COM1_IRQ);
        u.write(4, 1, MCR_OUT2 as u32, 0);
        assert_eq!(u.read(2, 1, 0).0, IIR_NONE as u32, "nothing pending at reset");
        let irq = |change| Some(Irq { line: COM1_IRQ, change });
        // Enabling ETBEI with an empty holding register raises the interrupt at once.
        assert_eq!(u.write(1, 1, IER_THRE as u32, 0).irq, irq(LineChange::High));
        let (iir, e) = u.read(2, 1, 0);
        assert_eq!((iir, e.irq), (IIR_THRE as u32, irq(LineChange::Low)), "reading IIR clears it");
        assert_eq!(u.read(2, 1, 0), (IIR_NONE as u32, Effects::NONE));
        // Each byte sent raises it again: from low, a rising edge; while still high, a pulse.
        assert_eq!(u.write(0, 1, b'x' as u32, 0).irq, irq(LineChange::High));
        assert_eq!(u.write(0, 1, b'x' as u32, 0).irq, irq(LineChange::Pulse));
        // Without OUT2 the line stays low (PC wiring), though IIR shows the source.
        assert_eq!(u.write(4, 1, 0, 0).irq, irq(LineChange::Low));
        assert_eq!(u.write(0, 1, b'y' as u32, 0).irq, None);
        assert_eq!(u.read(2, 1, 0).0, IIR_THRE as u32);
        // With ETBEI off nothing is pending.
        u.write(1, 1, 0, 0);
        u.write(0, 1, b'z' as u32, 0);
        assert_eq!(u.read(2, 1, 0).0, IIR_NONE as u32);
    }
}
