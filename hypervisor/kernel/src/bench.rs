//! The native IPI round trip: the same algorithm as the `ipi-bench` guest, run by the
//! hypervisor itself on CPU 0 (sender) and CPU 1 (target) before any VM starts: the physical
//! limit on this platform, in the host's APIC mode.

use alloc::vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use hvcore::apic::regs;
use hvcore::stats::summarize;
use hvcore::summary::NativeBench;

use crate::apic;
use crate::phase::{BOOT, Phase};
use crate::vectors::NATIVE_BENCH as NATIVE_VECTOR;

static GO: AtomicBool = AtomicBool::new(false);
static DONE: AtomicBool = AtomicBool::new(false);
static HALT: AtomicBool = AtomicBool::new(false);
static READY: AtomicBool = AtomicBool::new(false);
/// Incremented by CPU 1's interrupt handler: the "flag" of the round trip.
pub static RECEIVED: AtomicU32 = AtomicU32::new(0);
/// Virtual address of this CPU's xAPIC EOI register (xAPIC mode only).
pub static EOI_PTR: AtomicU64 = AtomicU64::new(0);

// The same handler, round-trip and wait instructions as the ipi-bench guest's (hvcore::bench_isr).
hvcore::ipi_bench_isr!(native_bench_isr_x2apic, native_bench_isr_xapic, RECEIVED, EOI_PTR);
hvcore::ipi_bench_loops!(native_round_trip_x2apic, native_round_trip_xapic, native_wait_done, RECEIVED);

unsafe extern "C" {
    fn native_bench_isr_x2apic();
    fn native_bench_isr_xapic();
}

/// The handler for NATIVE_VECTOR in the host's APIC mode.
pub fn isr_address() -> u64 {
    if apic::is_x2apic() {
        native_bench_isr_x2apic as *const () as u64
    } else {
        native_bench_isr_xapic as *const () as u64
    }
}

/// Measures `iterations` round trips to the CPU with `target_apic_id` (CPU 1, which must be
/// waiting in [`target_loop`]). Returns `None` if CPU 1 never got ready.
fn run_sender(iterations: u32, halt: bool, target_apic_id: u32) -> Option<NativeBench> {
    HALT.store(halt, Ordering::Relaxed);
    GO.store(true, Ordering::Release);
    let deadline = crate::time::rdtsc() + crate::time::measure_tsc_hz();
    while !READY.load(Ordering::Acquire) {
        if crate::time::rdtsc() > deadline {
            DONE.store(true, Ordering::Release);
            return None;
        }
        core::hint::spin_loop();
    }
    // Let the target reach HLT.
    crate::time::pit_delay_us(1000);
    let warmup = (iterations / 10).max(10);
    let mut samples = vec![0u64; iterations as usize];
    let icr_low = regs::ICR_FIXED | regs::ICR_ASSERT | NATIVE_VECTOR as u32;
    let icr = apic::xapic_register_address(regs::ICR_LO);
    for i in 0..warmup + iterations {
        let expected = RECEIVED.load(Ordering::Acquire).wrapping_add(1);
        let cycles = match icr {
            // SAFETY: x2APIC mode, so WRMSR to the ICR is allowed; CPU 1 runs the handler that
            // counts RECEIVED (it is ready), so the wait ends.
            None => unsafe { native_round_trip_x2apic(icr_low, target_apic_id, expected) },
            // SAFETY: xAPIC mode and `icr` is the mapped ICR_LO; the handler as above.
            Some(icr) => unsafe { native_round_trip_xapic(icr_low, target_apic_id, expected, icr as *mut u32) },
        };
        if i >= warmup {
            samples[(i - warmup) as usize] = cycles;
        }
    }
    DONE.store(true, Ordering::Release);
    // Wake a halted target so it sees DONE.
    apic::send_ipi(target_apic_id, regs::ICR_FIXED | NATIVE_VECTOR as u32);
    Some(NativeBench::new(apic::is_x2apic(), halt, summarize(&mut samples)))
}

/// The boot's native-bench phase on the BSP (`crate::phase`): the round trip to `target` (CPU
/// 1's APIC ID, `None` if no AP started) when the boot config asks for `iterations`.
pub fn bsp_phase(iterations: u32, halt: bool, target: Option<u32>) -> Option<NativeBench> {
    if iterations == 0 {
        return None;
    }
    let Some(target) = target else {
        log::warn!("native_bench needs a second CPU");
        return None;
    };
    BOOT.advance(Phase::NativeBench);
    let r = run_sender(iterations, halt, target);
    match &r {
        Some(b) => log::info!("native IPI round trip: {:?}", b.cycles),
        None => log::error!("native IPI round trip: CPU 1 never got ready"),
    }
    r
}

/// CPU 1's part: the target of the round trip if the boot enters the native-bench phase.
pub fn ap_phase() {
    if BOOT.wait_for(Phase::NativeBench) == Phase::NativeBench {
        target_loop(|| BOOT.phase() > Phase::NativeBench);
    }
}

/// CPU 1: if the BSP starts a native run, take its IPIs (spinning or halted, interrupts on)
/// until it is done. Returns when `stop_waiting` says the run will not happen.
fn target_loop(stop_waiting: impl Fn() -> bool) {
    while !GO.load(Ordering::Acquire) {
        if stop_waiting() {
            return;
        }
        core::hint::spin_loop();
    }
    let halt = HALT.load(Ordering::Relaxed);
    // The handler's EOI in xAPIC mode (unused in x2APIC mode, which EOIs by WRMSR).
    EOI_PTR.store(apic::xapic_register_address(regs::EOI).unwrap_or(0), Ordering::Relaxed);
    READY.store(true, Ordering::Release);
    x86_64::instructions::interrupts::enable();
    // SAFETY: DONE is a static byte; interrupts are on, and the sender sends one last IPI
    // after setting DONE, so a halted wait wakes and sees it.
    unsafe { native_wait_done(DONE.as_ptr() as *const u8, halt as u32) };
    x86_64::instructions::interrupts::disable();
}
