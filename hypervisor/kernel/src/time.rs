//! Time: the TSC frequency and PIT-based delays.
//!
//! Delays during AP start-up use the PIT directly: it runs at 1.193182 MHz on every PC and in
//! every emulator, whereas Bochs' TSC counts instructions.

use core::arch::x86_64::{__cpuid, _rdtsc};
use x86_64::instructions::port::Port;

const PIT_HZ: u64 = 1_193_182;

/// Where the TSC frequency came from.
#[derive(Clone, Copy, Debug)]
pub enum TscSource {
    Cpuid15,
    Cpuid16,
    Pit,
}

/// The TSC frequency from CPUID leaf 0x15 (crystal × ratio) or 0x16 (base MHz) where the CPU
/// reports it, else measured against the PIT.
pub fn tsc_hz() -> (u64, TscSource) {
    let max = __cpuid(0).eax;
    if max >= 0x15 {
        let l = __cpuid(0x15);
        if l.eax != 0 && l.ebx != 0 && l.ecx != 0 {
            return (l.ecx as u64 * l.ebx as u64 / l.eax as u64, TscSource::Cpuid15);
        }
    }
    if max >= 0x16 {
        let mhz = __cpuid(0x16).eax & 0xffff;
        if mhz != 0 {
            return (mhz as u64 * 1_000_000, TscSource::Cpuid16);
        }
    }
    (measure_tsc_hz(), TscSource::Pit)
}

/// The TSC rate measured over 10 ms of PIT time. Deadlines use this rather than CPUID: under
/// Bochs the TSC counts instructions, whatever CPUID 0x15 claims.
pub fn measure_tsc_hz() -> u64 {
    let t0 = rdtsc();
    pit_delay_us(10_000);
    (rdtsc() - t0) * 100
}

#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: reading the TSC has no side effects.
    unsafe { _rdtsc() }
}

/// Busy-waits `us` microseconds on PIT channel 2 (gate through port 0x61, mode 0). Only the
/// BSP may call this; the PIT is one shared device.
pub fn pit_delay_us(us: u64) {
    let mut ticks = us * PIT_HZ / 1_000_000;
    while ticks > 0 {
        let chunk = ticks.min(0xffff);
        pit_one_shot(chunk as u16);
        ticks -= chunk;
    }
}

fn pit_one_shot(count: u16) {
    let mut ctrl: Port<u8> = Port::new(0x61);
    let mut mode: Port<u8> = Port::new(0x43);
    let mut ch2: Port<u8> = Port::new(0x42);
    // SAFETY: standard PC PIT/port 0x61 programming; the speaker output (bit 1) stays off.
    unsafe {
        let v = ctrl.read();
        ctrl.write((v & !0x02) & !0x01);
        mode.write(0b1011_0000); // channel 2, lobyte/hibyte, mode 0, binary
        ch2.write(count as u8);
        ch2.write((count >> 8) as u8);
        ctrl.write((v & !0x02) | 0x01); // gate high: start counting
        // OUT2 (bit 5) goes high at terminal count.
        while ctrl.read() & 0x20 == 0 {
            core::hint::spin_loop();
        }
    }
}
