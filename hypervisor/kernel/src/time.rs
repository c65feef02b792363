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

/// Wall-clock time from the host's CMOS RTC (seconds since 1970, UTC as the RTC keeps it), or 0
/// when it reads as no date. Read once, at boot, by the BSP: the RTC is one shared device.
pub fn host_unix_time() -> u64 {
    let mut index: Port<u8> = Port::new(0x70);
    let mut data: Port<u8> = Port::new(0x71);
    let mut reg = |r: u8| {
        // SAFETY: CMOS index/data ports; bit 7 of the index (NMI mask) stays clear as firmware
        // leaves it, and the registers read here have no side effects.
        unsafe {
            index.write(r);
            data.read()
        }
    };
    // Wait out an update in progress (status A bit 7, at most about 2 ms), then read twice
    // until two reads agree.
    let mut read = || {
        for _ in 0..1_000_000 {
            if reg(0x0a) & 0x80 == 0 {
                break;
            }
            core::hint::spin_loop();
        }
        [0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32].map(&mut reg)
    };
    let mut regs = read();
    for _ in 0..4 {
        let again = read();
        if again == regs {
            break;
        }
        regs = again;
    }
    let status_b = reg(0x0b);
    let binary = status_b & 0x04 != 0;
    if status_b & 0x02 == 0 {
        // 12-hour clock: bit 7 of the hour is PM; 12 AM is 0, 12 PM is 12.
        let pm = regs[2] & 0x80 != 0;
        let h = regs[2] & 0x7f;
        let h = if binary { h } else { (h >> 4) * 10 + (h & 0xf) };
        let h24 = (h % 12) + if pm { 12 } else { 0 };
        regs[2] = if binary { h24 } else { ((h24 / 10) << 4) | (h24 % 10) };
    }
    hvcore::devices::cmos::unix_from_rtc(regs, binary).unwrap_or(0)
}
