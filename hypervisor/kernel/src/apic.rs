//! Local APIC driver: x2APIC (MSRs) when CPUID offers it, xAPIC (MMIO) otherwise.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use x86_64::registers::model_specific::Msr;

use crate::memory::phys_to_virt;
use crate::vectors;

use hvcore::apic::base::{EN as APIC_BASE_ENABLE, EXTD as APIC_BASE_X2APIC};
use hvcore::apic::regs::{
    self, IA32_APIC_BASE, IA32_TSC_DEADLINE, ICR_DELIVERY_PENDING, ICR_HI, ICR_LO, LVT_LINT0, LVT_LINT1, LVT_MASKED,
    LVT_TIMER, LVT_TIMER_TSC_DEADLINE, SVR, SVR_APIC_ENABLED, TIMER_DIVIDE, TIMER_INITIAL, XAPIC_DEST_SHIFT,
    x2apic_msr,
};

/// 0: not initialized; 1: x2APIC; otherwise the xAPIC MMIO virtual base.
static MODE: AtomicU64 = AtomicU64::new(0);
const MODE_X2APIC: u64 = 1;
/// The timer has TSC-deadline mode (CPUID.1:ECX[24]), found by the BSP.
static TSC_DEADLINE: AtomicBool = AtomicBool::new(false);

pub fn is_x2apic() -> bool {
    MODE.load(Ordering::Relaxed) == MODE_X2APIC
}

/// Masks every line of the legacy 8259 PICs: firmware leaves the PIT wired to the BSP through
/// them, and a host interrupt nobody asked for would become a VM exit in some guest.
pub fn mask_legacy_pic() {
    // SAFETY: writing the interrupt mask registers (OCW1) of both PICs only masks lines.
    unsafe {
        x86_64::instructions::port::Port::<u8>::new(0x21).write(0xff);
        x86_64::instructions::port::Port::<u8>::new(0xa1).write(0xff);
    }
}

/// Enables this CPU's local APIC (x2APIC mode when available and not `force_xapic`) with the
/// spurious vector set. The BSP calls it first and so picks the mode for everyone.
pub fn init_this_cpu(force_xapic: bool) {
    let leaf1 = core::arch::x86_64::__cpuid(1).ecx;
    let x2 = match MODE.load(Ordering::Acquire) {
        0 => !force_xapic && leaf1 & (1 << 21) != 0,
        m => m == MODE_X2APIC,
    };
    TSC_DEADLINE.store(leaf1 & (1 << 24) != 0, Ordering::Relaxed);
    let mut base_msr = Msr::new(IA32_APIC_BASE);
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU; setting the enable (and x2APIC) bits
    // is the documented way to turn the APIC on (SDM Vol. 3A §12.12.5: xAPIC→x2APIC is allowed
    // while enabled).
    let base = unsafe {
        let v = base_msr.read() | APIC_BASE_ENABLE;
        base_msr.write(v);
        if x2 {
            base_msr.write(v | APIC_BASE_X2APIC);
        }
        v
    };
    if x2 {
        MODE.store(MODE_X2APIC, Ordering::Release);
    } else {
        let mmio = phys_to_virt(base & 0x000f_ffff_ffff_f000) as u64;
        MODE.store(mmio, Ordering::Release);
    }
    write(SVR, SVR_APIC_ENABLED | vectors::SPURIOUS as u32);
    // LINT0 (ExtINT from the PIC) and LINT1 (NMI) masked: this kernel takes no legacy
    // interrupts (SDM Vol. 3A §12.5.1, LVT mask bit 16).
    write(LVT_LINT0, LVT_MASKED);
    write(LVT_LINT1, LVT_MASKED);
}

// On the exit path (kicks): one cache line, so never across a page (see `vm::run`).
#[rustc_align(64)]
fn read(reg: usize) -> u32 {
    match MODE.load(Ordering::Relaxed) {
        // SAFETY: x2APIC mode is enabled, so its MSRs exist.
        MODE_X2APIC => unsafe { Msr::new(x2apic_msr(reg)).read() as u32 },
        // SAFETY: the xAPIC page is mapped by the physical window; registers are 32-bit aligned.
        base => unsafe { core::ptr::read_volatile((base + reg as u64) as *const u32) },
    }
}

// On the exit path (kicks): one cache line, so never across a page (see `vm::run`).
#[rustc_align(64)]
fn write(reg: usize, value: u32) {
    match MODE.load(Ordering::Relaxed) {
        // SAFETY: as in `read`.
        MODE_X2APIC => unsafe { Msr::new(x2apic_msr(reg)).write(value as u64) },
        // SAFETY: as in `read`.
        base => unsafe { core::ptr::write_volatile((base + reg as u64) as *mut u32, value) },
    }
}

/// The virtual address of xAPIC register `reg`; `None` in x2APIC mode (no MMIO page).
pub fn xapic_register_address(reg: usize) -> Option<u64> {
    match MODE.load(Ordering::Relaxed) {
        MODE_X2APIC => None,
        base => Some(base + reg as u64),
    }
}

/// This CPU's APIC ID (32 bits in x2APIC mode, 8 in xAPIC mode).
pub fn id() -> u32 {
    match is_x2apic() {
        true => read(regs::ID),
        false => read(regs::ID) >> XAPIC_DEST_SHIFT,
    }
}

/// Sends an IPI: `icr_low` holds vector, delivery mode and flags; `dest` is the APIC ID.
#[inline(always)]
pub fn send_ipi(dest: u32, icr_low: u32) {
    if is_x2apic() {
        // The x2APIC ICR is one 64-bit MSR with the destination in bits 63:32 (SDM §12.12.9).
        // SAFETY: x2APIC mode is enabled.
        unsafe { Msr::new(regs::msr::ICR).write(((dest as u64) << 32) | icr_low as u64) };
    } else {
        write(ICR_HI, dest << XAPIC_DEST_SHIFT);
        write(ICR_LO, icr_low);
        while read(ICR_LO) & ICR_DELIVERY_PENDING != 0 {
            core::hint::spin_loop();
        }
    }
}

/// The local APIC timer has TSC-deadline mode.
pub fn has_tsc_deadline() -> bool {
    TSC_DEADLINE.load(Ordering::Relaxed)
}

/// Arms the local APIC timer in TSC-deadline mode to interrupt with `vector` when the TSC
/// reaches `at`, or disarms it (`None`). Only where [`has_tsc_deadline`].
pub fn set_tsc_deadline(vector: u8, at: Option<u64>) {
    write(LVT_TIMER, vector as u32 | LVT_TIMER_TSC_DEADLINE);
    // The LVT write must reach the APIC before the deadline is armed (SDM Vol. 3A §12.5.4.1:
    // WRMSR to x2APIC registers is not serializing).
    core::sync::atomic::fence(Ordering::SeqCst);
    // SAFETY: IA32_TSC_DEADLINE exists where CPUID.1:ECX[24] says so; a past value fires at
    // once, 0 disarms.
    unsafe { Msr::new(IA32_TSC_DEADLINE).write(at.map_or(0, |t| t.max(1))) };
}

/// Halts with interrupts enabled until one arrives (its handler EOIs) or the TSC reaches
/// `wake_at`, whichever is first, so the caller re-checks its conditions (a guest timer, the
/// watchdog). With TSC-deadline mode the local APIC timer wakes the CPU at `wake_at` exactly;
/// without it, a one-shot count is a backstop and the caller may wake early and sleep again.
pub fn sleep_until(wake_at: u64) {
    let deadline = has_tsc_deadline();
    if deadline {
        set_tsc_deadline(vectors::KICK, Some(wake_at));
    } else {
        // One-shot timer on the kick vector; divide by 1 (SDM Vol. 3A §12.5.4).
        write(LVT_TIMER, vectors::KICK as u32);
        write(TIMER_DIVIDE, regs::DIVIDE_BY_1);
        write(TIMER_INITIAL, 1_000_000);
    }
    // SAFETY: STI's one-instruction shadow makes STI;HLT atomic: an interrupt that arrives
    // after the caller's last check still ends the HLT. Interrupts are off again right after.
    unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
    if deadline {
        set_tsc_deadline(vectors::KICK, None);
    } else {
        write(TIMER_INITIAL, 0);
    }
}

pub fn eoi() {
    write(regs::EOI, 0);
}
