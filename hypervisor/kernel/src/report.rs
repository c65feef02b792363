//! How a run ends: the `HV-SUMMARY` line, then the emulator's debug-exit port or a halt.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU8, AtomicU32, Ordering};

use hvcore::bootcfg::ExitMode;
use hvcore::summary::{HvSummary, RunResult, SUMMARY_PREFIX, write_fatal_summary};
use x86_64::instructions::port::Port;

use crate::console::{self, PanicWriter};

/// QEMU isa-debug-exit (and the project's Bochs patch): the emulator exits with
/// `(value << 1) | 1`.
const DEBUG_EXIT_PORT: u16 = 0xf4;

static EXIT_MODE: AtomicU8 = AtomicU8::new(ExitMode::Halt as u8);
pub static CPUS_EXPECTED: AtomicU32 = AtomicU32::new(1);
pub static CPUS_ONLINE: AtomicU32 = AtomicU32::new(1);
/// The CPU reporting a fatal error, or u32::MAX.
static FATAL_CPU: AtomicU32 = AtomicU32::new(u32::MAX);

pub fn set_exit_mode(mode: ExitMode) {
    EXIT_MODE.store(mode as u8, Ordering::Relaxed);
}

/// Prints the summary and ends the run.
pub fn finish(summary: &HvSummary) -> ! {
    console::print(format_args!("{SUMMARY_PREFIX}{summary}\n"));
    exit(summary.result)
}

/// Reports a fatal error (CPU exception, panic) with a failing summary and ends the run.
/// Never returns and never waits for a lock that the failing code might hold.
pub fn fatal(reason: fmt::Arguments<'_>) -> ! {
    x86_64::instructions::interrupts::disable();
    let me = crate::cpu_index::index();
    match FATAL_CPU.compare_exchange(u32::MAX, me, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {}
        // A fault while reporting a fault on this CPU: end at once.
        Err(cpu) if cpu == me => exit(RunResult::Fail),
        // Another CPU is already reporting and will end the run.
        Err(_) => halt_forever(),
    }
    let mut w = PanicWriter::take();
    let _ = writeln!(w, "[cpu{me}] FATAL {reason}");
    let _ = w.write_str(SUMMARY_PREFIX);
    let _ =
        write_fatal_summary(&mut w, reason, CPUS_ONLINE.load(Ordering::Relaxed), CPUS_EXPECTED.load(Ordering::Relaxed));
    let _ = w.write_str("\n");
    exit(RunResult::Fail)
}

fn exit(result: RunResult) -> ! {
    console::drain();
    if EXIT_MODE.load(Ordering::Relaxed) == ExitMode::DebugPort as u8 {
        // SAFETY: the boot config said an emulator with a debug-exit device at 0xf4 runs us.
        unsafe { Port::<u32>::new(DEBUG_EXIT_PORT).write(result.debug_exit_value()) };
    }
    halt_forever()
}

pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
