//! SMP bring-up: INIT–SIPI–SIPI each application processor through the trampoline, one at a
//! time (SDM Vol. 3A §9.4.4.1 "Typical BSP Initialization Sequence").

pub mod trampoline;

use core::sync::atomic::{AtomicBool, Ordering};

use crate::apic;
use crate::cpu::PerCpu;
use crate::memory;
use crate::time::pit_delay_us;
use hvcore::apic::regs::{ICR_ASSERT, ICR_INIT, ICR_STARTUP};
use trampoline::Trampoline;

const AP_STACK_SIZE: u64 = 64 * 1024;
/// How long an AP gets to reach the kernel after its SIPIs.
const AP_START_TIMEOUT_US: u64 = 500_000;

/// Set by the AP being started once it runs kernel code on its own stack.
static AP_STARTED: AtomicBool = AtomicBool::new(false);

/// Called by an AP as soon as its per-CPU state is active: the trampoline may be reused.
pub fn ap_started() {
    AP_STARTED.store(true, Ordering::Release);
}

/// Why an AP did not come up.
#[derive(Debug)]
pub enum StartError {
    NoStackMemory,
    Timeout,
}

/// Starts the AP with `apic_id` as CPU `index`, entering `entry(percpu)` on its own stack.
pub fn start_ap(
    t: &mut Trampoline,
    index: u32,
    apic_id: u32,
    entry: extern "C" fn(u64) -> !,
) -> Result<(), StartError> {
    let pc: &'static PerCpu = PerCpu::new(index, apic_id);
    let stack = memory::alloc_zeroed(AP_STACK_SIZE, 0x1000).ok_or(StartError::NoStackMemory)?;
    let stack_top = memory::phys_to_virt(stack) as u64 + AP_STACK_SIZE;
    t.prepare(stack_top, entry, pc as *const PerCpu as u64);
    AP_STARTED.store(false, Ordering::Release);

    apic::send_ipi(apic_id, ICR_INIT | ICR_ASSERT);
    pit_delay_us(10_000);
    for _ in 0..2 {
        apic::send_ipi(apic_id, ICR_STARTUP | t.sipi_vector() as u32);
        pit_delay_us(200);
        if AP_STARTED.load(Ordering::Acquire) {
            return Ok(());
        }
    }
    let step = 1_000;
    for _ in 0..AP_START_TIMEOUT_US / step {
        if AP_STARTED.load(Ordering::Acquire) {
            return Ok(());
        }
        pit_delay_us(step);
    }
    Err(StartError::Timeout)
}
