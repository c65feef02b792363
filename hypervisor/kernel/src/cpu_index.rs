//! This CPU's index, for log lines and fatal reports: one load through GS. A leaf, so the
//! console and the report can name the CPU without importing the rest of `cpu` (whose
//! exception handlers report through them).

use core::sync::atomic::{AtomicBool, Ordering};

/// False until the BSP's per-CPU block exists; from then on every CPU running kernel code has
/// its GS base set (APs set it before anything else, see `cpu::activate`).
pub(crate) static PERCPU_READY: AtomicBool = AtomicBool::new(false);

/// This CPU's index (0 before per-CPU data exists, so early log lines say cpu0).
pub fn index() -> u32 {
    if !PERCPU_READY.load(Ordering::Relaxed) {
        return 0;
    }
    let i: u32;
    // SAFETY: once PERCPU_READY is set, every CPU that runs kernel code has GS base pointing at
    // its PerCpu (APs set it before they can log), whose first field is the u32 index
    // (asserted in `cpu`).
    unsafe { core::arch::asm!("mov {0:e}, gs:[0]", out(reg) i, options(nostack, readonly, preserves_flags)) };
    i
}
