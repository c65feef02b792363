//! Serial console on COM1 behind the `log` facade. Every line carries the CPU index.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};

use log::{Level, LevelFilter, Log, Metadata, Record};
use spin::{Mutex, MutexGuard};
use uart_16550::SerialPort;
use x86_64::instructions::port::Port;

const COM1: u16 = 0x3f8;

static SERIAL: Mutex<Option<SerialPort>> = Mutex::new(None);
static LOGGER: Logger = Logger;
static LOGGER_SET: AtomicBool = AtomicBool::new(false);

/// Initializes COM1 and installs the logger with the given level.
pub fn init(level: LevelFilter) {
    {
        let mut s = SERIAL.lock();
        if s.is_none() {
            // SAFETY: COM1 is the standard PC serial port; nothing else in the kernel drives it.
            let mut port = unsafe { SerialPort::new(COM1) };
            port.init();
            set_115200_baud();
            *s = Some(port);
        }
    }
    if !LOGGER_SET.swap(true, Ordering::AcqRel) {
        log::set_logger(&LOGGER).expect("logger installed once");
    }
    log::set_max_level(level);
}

struct Logger;

impl Log for Logger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let lvl = match r.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARN ",
            Level::Info => "INFO ",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        };
        print(format_args!("[cpu{}] {} {}\n", crate::cpu_index::index(), lvl, r.args()));
    }

    fn flush(&self) {}
}

/// Reprograms COM1 for 115200 baud (divisor 1), 8N1. uart_16550's `init` sets 38400, and an
/// emulator that times the line (Bochs) then holds a CPU on the console for about 0.26 ms a byte.
fn set_115200_baud() {
    const LCR: u16 = COM1 + 3;
    // SAFETY: COM1's divisor latch and line-control registers, programmed while the caller
    // owns the port (under the SERIAL lock or before anything else uses it).
    unsafe {
        Port::<u8>::new(LCR).write(0x80); // DLAB on: ports 0 and 1 are the divisor
        Port::<u8>::new(COM1).write(1);
        Port::<u8>::new(COM1 + 1).write(0);
        Port::<u8>::new(LCR).write(0x03); // 8 data bits, no parity, 1 stop bit, DLAB off
    }
}

/// The longest piece of a guest's line printed under one hold of the console lock.
pub const GUEST_PIECE: usize = 160;

/// Prints a guest's output, each line prefixed `[vm/vcpu]` and cut into pieces of at most
/// [`GUEST_PIECE`] bytes, taking the console once per piece: a guest's long line never keeps
/// other VMs or the hypervisor's log waiting for more than one piece.
pub fn print_guest(vm: &str, vcpu: u32, text: &str) {
    for line in text.lines() {
        let mut rest = line;
        loop {
            let mut cut = rest.len().min(GUEST_PIECE);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (piece, tail) = rest.split_at(cut);
            print(format_args!("[{vm}/{vcpu}] {piece}\n"));
            if tail.is_empty() {
                break;
            }
            rest = tail;
        }
    }
}

/// Prints one whole line (or block) atomically with respect to other CPUs.
pub fn print(args: fmt::Arguments<'_>) {
    let mut s = SERIAL.lock();
    if let Some(port) = s.as_mut() {
        let _ = port.write_fmt(args);
    }
}

/// A writer for the fatal-error path. It holds the console from `take` until the run ends, so
/// no other CPU's log line can land inside the fatal report and its `HV-SUMMARY` line (which
/// is written in many pieces). It takes the console even when the CPU that faulted held it
/// (waiting for it would hang the report forever).
pub struct PanicWriter {
    port: MutexGuard<'static, Option<SerialPort>>,
}

impl PanicWriter {
    pub fn take() -> Self {
        for _ in 0..1_000_000 {
            if let Some(g) = SERIAL.try_lock() {
                return Self::holding(g);
            }
            core::hint::spin_loop();
        }
        // SAFETY: a CPU that is about to end the run takes the port; if another CPU still
        // held it, the worst outcome is that CPU's line cut short before the report.
        unsafe { SERIAL.force_unlock() };
        Self::holding(SERIAL.lock())
    }

    fn holding(mut port: MutexGuard<'static, Option<SerialPort>>) -> Self {
        port.get_or_insert_with(|| {
            // SAFETY: as in `init`; reached only if the fault came before `init`.
            let mut p = unsafe { SerialPort::new(COM1) };
            p.init();
            set_115200_baud();
            p
        });
        Self { port }
    }
}

impl Write for PanicWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        match self.port.as_mut() {
            Some(p) => p.write_str(s),
            None => Err(fmt::Error),
        }
    }
}

/// Waits until the UART has sent every byte (LSR.TEMT), so nothing is lost when the emulator
/// exits right after.
pub fn drain() {
    let mut lsr: Port<u8> = Port::new(COM1 + 5);
    for _ in 0..10_000_000 {
        // SAFETY: reading the line-status register has no side effects.
        if unsafe { lsr.read() } & 0x40 != 0 {
            return;
        }
        core::hint::spin_loop();
    }
}
