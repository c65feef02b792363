//! Local APIC driver: x2APIC (MSRs) when CPUID offers it, xAPIC (MMIO) otherwise.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use x86_64::registers::model_specific::Msr;

use crate::memory::phys_to_virt;
use crate::vectors;

const IA32_APIC_BASE: u32 = 0x1b;
const IA32_TSC_DEADLINE: u32 = 0x6e0;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_X2APIC: u64 = 1 << 10;
/// x2APIC MSRs are 0x800 + (xAPIC MMIO offset >> 4) (SDM Vol. 3A §12.12.1.2).
const X2APIC_MSR_BASE: u32 = 0x800;

// Register offsets (SDM Vol. 3A Table 12-1).
const REG_ID: u32 = 0x20;
pub const REG_EOI: u32 = 0xb0;
const REG_SVR: u32 = 0xf0;
const REG_LVT_LINT0: u32 = 0x350;
const REG_LVT_LINT1: u32 = 0x360;
pub const REG_ICR_LO: u32 = 0x300;
const REG_LVT_TIMER: u32 = 0x320;
const REG_TIMER_INITIAL: u32 = 0x380;
const REG_TIMER_DIVIDE: u32 = 0x3e0;
const REG_ICR_HI: u32 = 0x310;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;

/// ICR delivery modes and flags (SDM Vol. 3A §12.6.1). Fixed delivery is mode 0.
pub const ICR_FIXED: u32 = 0;
pub const ICR_INIT: u32 = 0b101 << 8;
pub const ICR_STARTUP: u32 = 0b110 << 8;
pub const ICR_LEVEL_ASSERT: u32 = 1 << 14;

/// 0: not initialized; 1: x2APIC; otherwise the xAPIC MMIO virtual base.
static MODE: AtomicU64 = AtomicU64::new(0);
const MODE_X2APIC: u64 = 1;
/// The timer has TSC-deadline mode (CPUID.1:ECX[24]), found by the BSP.
static TSC_DEADLINE: AtomicBool = AtomicBool::new(false);
/// LVT timer mode bits 18:17 = 10b (SDM Vol. 3A Table 12-2).
const LVT_TSC_DEADLINE: u32 = 2 << 17;

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
    write(REG_SVR, 0x100 | vectors::SPURIOUS as u32);
    // LINT0 (ExtINT from the PIC) and LINT1 (NMI) masked: this kernel takes no legacy
    // interrupts (SDM Vol. 3A §12.5.1, LVT mask bit 16).
    write(REG_LVT_LINT0, 1 << 16);
    write(REG_LVT_LINT1, 1 << 16);
}

fn read(reg: u32) -> u32 {
    match MODE.load(Ordering::Relaxed) {
        // SAFETY: x2APIC mode is enabled, so its MSRs exist.
        MODE_X2APIC => unsafe { Msr::new(X2APIC_MSR_BASE + (reg >> 4)).read() as u32 },
        // SAFETY: the xAPIC page is mapped by the physical window; registers are 32-bit aligned.
        base => unsafe { core::ptr::read_volatile((base + reg as u64) as *const u32) },
    }
}

fn write(reg: u32, value: u32) {
    match MODE.load(Ordering::Relaxed) {
        // SAFETY: as in `read`.
        MODE_X2APIC => unsafe { Msr::new(X2APIC_MSR_BASE + (reg >> 4)).write(value as u64) },
        // SAFETY: as in `read`.
        base => unsafe { core::ptr::write_volatile((base + reg as u64) as *mut u32, value) },
    }
}

/// The virtual address of xAPIC register `reg`; `None` in x2APIC mode (no MMIO page).
pub fn xapic_register_address(reg: u32) -> Option<u64> {
    match MODE.load(Ordering::Relaxed) {
        MODE_X2APIC => None,
        base => Some(base + reg as u64),
    }
}

/// This CPU's APIC ID (32 bits in x2APIC mode, 8 in xAPIC mode).
pub fn id() -> u32 {
    match is_x2apic() {
        true => read(REG_ID),
        false => read(REG_ID) >> 24,
    }
}

/// Sends an IPI: `icr_low` holds vector, delivery mode and flags; `dest` is the APIC ID.
#[inline(always)]
pub fn send_ipi(dest: u32, icr_low: u32) {
    if is_x2apic() {
        // The x2APIC ICR is one 64-bit MSR with the destination in bits 63:32 (SDM §12.12.9).
        // SAFETY: x2APIC mode is enabled.
        unsafe { Msr::new(X2APIC_MSR_BASE + (REG_ICR_LO >> 4)).write(((dest as u64) << 32) | icr_low as u64) };
    } else {
        write(REG_ICR_HI, dest << 24);
        write(REG_ICR_LO, icr_low);
        while read(REG_ICR_LO) & ICR_DELIVERY_PENDING != 0 {
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
    write(REG_LVT_TIMER, vector as u32 | LVT_TSC_DEADLINE);
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
        write(REG_LVT_TIMER, vectors::KICK as u32);
        write(REG_TIMER_DIVIDE, 0b1011);
        write(REG_TIMER_INITIAL, 1_000_000);
    }
    // SAFETY: STI's one-instruction shadow makes STI;HLT atomic: an interrupt that arrives
    // after the caller's last check still ends the HLT. Interrupts are off again right after.
    unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
    if deadline {
        set_tsc_deadline(vectors::KICK, None);
    } else {
        write(REG_TIMER_INITIAL, 0);
    }
}

pub fn eoi() {
    write(REG_EOI, 0);
}
