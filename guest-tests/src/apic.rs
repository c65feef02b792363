//! The local APIC: xAPIC through the MMIO page at 0xFEE00000 or x2APIC through MSRs. Firmware
//! (this hypervisor with `apic = x2apic`) may hand over in x2APIC mode; otherwise the runtime
//! switches when the command line says `apic=x2apic`, as an OS would, by setting
//! IA32_APIC_BASE.EXTD.

use core::sync::atomic::{AtomicBool, Ordering};
use hvcore::apic::base::{EN as APIC_BASE_EN, EXTD as APIC_BASE_EXTD};
use hvcore::apic::regs::{
    self, DFR, EOI, IA32_APIC_BASE, ICR_ASSERT, ICR_FIXED, ICR_HI, ICR_LO, LDR, SVR, XAPIC_DEST_SHIFT, x2apic_msr,
};
use hvcore::guest_abi::APIC_MMIO_GPA;

static X2APIC: AtomicBool = AtomicBool::new(false);

#[inline]
pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the MSRs used here exist for the guest (allow-list or APIC virtualization).
    unsafe { core::arch::asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nostack)) };
    ((hi as u64) << 32) | lo as u64
}

#[inline]
pub fn wrmsr(msr: u32, v: u64) {
    // SAFETY: as in rdmsr.
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") msr, in("eax") v as u32, in("edx") (v >> 32) as u32, options(nostack))
    };
}

#[inline]
fn mmio(offset: usize) -> *mut u32 {
    (APIC_MMIO_GPA + offset as u64) as *mut u32
}

/// Reads the APIC register at xAPIC offset `offset` (its MSR in x2APIC mode).
#[inline]
pub fn read(offset: usize) -> u32 {
    if is_x2apic() {
        rdmsr(x2apic_msr(offset)) as u32
    } else {
        // SAFETY: the APIC page is identity-mapped; APIC virtualization serves the access.
        unsafe { mmio(offset).read_volatile() }
    }
}

/// Writes the APIC register at xAPIC offset `offset` (its MSR in x2APIC mode).
#[inline]
pub fn write(offset: usize, v: u32) {
    if is_x2apic() {
        wrmsr(x2apic_msr(offset), v as u64)
    } else {
        // SAFETY: as in read.
        unsafe { mmio(offset).write_volatile(v) }
    }
}

#[inline]
pub fn is_x2apic() -> bool {
    X2APIC.load(Ordering::Relaxed)
}

/// Tells the runtime which interface to use after a test changed the APIC's mode itself (one
/// flag for every CPU: a test switches modes while the other CPUs leave the APIC alone).
pub fn set_x2apic_interface(x2apic: bool) {
    X2APIC.store(x2apic, Ordering::Relaxed);
}

/// IA32_APIC_BASE says x2APIC mode.
pub fn x2apic_enabled() -> bool {
    rdmsr(IA32_APIC_BASE) & APIC_BASE_EXTD != 0
}

/// Switches to x2APIC mode if asked and not there yet, then software-enables the APIC (SVR
/// bit 8).
pub fn init(x2apic: bool) {
    if x2apic {
        // QEMU's TCG before 8.0 has no x2APIC: say so rather than write MSRs that do nothing.
        assert!(crate::cpuid(1, 0)[2] & (1 << 21) != 0, "x2APIC mode asked for, but CPUID.1:ECX[21] (x2APIC) is clear");
        let base = rdmsr(IA32_APIC_BASE);
        if base & APIC_BASE_EXTD == 0 {
            wrmsr(IA32_APIC_BASE, base | APIC_BASE_EXTD | APIC_BASE_EN);
        }
        X2APIC.store(true, Ordering::Relaxed);
    }
    write(SVR, regs::SVR_APIC_ENABLED | 0xff);
}

pub fn id() -> u32 {
    if is_x2apic() { read(regs::ID) } else { read(regs::ID) >> XAPIC_DEST_SHIFT }
}

#[inline]
pub fn eoi() {
    write(EOI, 0);
}

/// Sends an IPI: `low` = vector | delivery mode | flags; `dest` = APIC ID or logical mask.
/// (The mode is checked once: this is on the benchmark's timed path.)
#[inline]
pub fn send(low: u32, dest: u32) {
    if is_x2apic() {
        wrmsr(regs::msr::ICR, ((dest as u64) << 32) | low as u64);
    } else {
        // SAFETY: as in read: ICR_HI, then ICR_LO, whose write sends.
        unsafe {
            mmio(ICR_HI).write_volatile(dest << XAPIC_DEST_SHIFT);
            mmio(ICR_LO).write_volatile(low);
        }
    }
}

/// A fixed, physical IPI to the vCPU with APIC ID `dest`.
#[inline]
pub fn send_fixed(dest: u32, vector: u8) {
    send(ICR_FIXED | ICR_ASSERT | vector as u32, dest);
}

/// The x2APIC SELF IPI register (x2APIC mode only).
#[inline]
pub fn self_ipi_msr(vector: u8) {
    wrmsr(regs::msr::SELF_IPI, vector as u64);
}

/// xAPIC: flat logical model with one bit per vCPU (up to 8). x2APIC: logical IDs are fixed.
pub fn set_flat_logical_id(vcpu: u32) {
    if !is_x2apic() {
        write(DFR, 0xffff_ffff);
        write(LDR, 1 << (XAPIC_DEST_SHIFT + vcpu));
    }
}

/// The logical destination that selects exactly `vcpu`.
pub fn logical_dest(vcpu: u32) -> u32 {
    if is_x2apic() { hvcore::apic::icr::x2apic_logical_id(vcpu) } else { 1 << vcpu }
}

/// The physical broadcast destination.
pub fn broadcast() -> u32 {
    if is_x2apic() { u32::MAX } else { 0xff }
}

/// The local APIC timer (SDM Vol. 3A §12.5.4; its registers: `hvcore::apic::regs`).
pub mod timer {
    use hvcore::apic::regs::{DIVIDE_BY_1, LVT_MASKED, LVT_TIMER, TIMER_CURRENT, TIMER_DIVIDE, TIMER_INITIAL};

    /// CPUID.1:ECX[24]: the timer has TSC-deadline mode.
    pub fn has_tsc_deadline() -> bool {
        crate::cpuid(1, 0)[2] & (1 << 24) != 0
    }

    /// The timer's input clock in Hz: what the hypervisor's timing leaf says (EBX of
    /// 0x4000_0010), else measured against the TSC over 10 ms (as Linux calibrates it).
    pub fn clock_hz(p: &crate::Platform) -> u64 {
        if p.hypervisor {
            let khz = crate::cpuid(hvcore::exits::cpuid::HV_LEAF_TIMING, 0)[1] as u64;
            if khz != 0 {
                return khz * 1000;
            }
        }
        super::write(LVT_TIMER, LVT_MASKED);
        super::write(TIMER_DIVIDE, DIVIDE_BY_1);
        super::write(TIMER_INITIAL, u32::MAX);
        let t0 = crate::rdtsc();
        let c0 = super::read(TIMER_CURRENT);
        while crate::rdtsc() - t0 < p.tsc_hz / 100 {
            core::hint::spin_loop();
        }
        let c1 = super::read(TIMER_CURRENT);
        let t1 = crate::rdtsc();
        super::write(TIMER_INITIAL, 0);
        (c0 - c1) as u64 * p.tsc_hz / (t1 - t0)
    }
}
