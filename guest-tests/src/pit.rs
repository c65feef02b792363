//! The 8254 PIT, for what a PC without a known TSC rate uses it for: timing the TSC (channel 2
//! gated through port 0x61, counting down once, as Linux's quick PIT calibration does).

use x86_64::instructions::port::Port;

const PIT_HZ: u64 = 1_193_182;
/// 10 ms of PIT ticks.
const COUNT: u16 = 11_932;

/// The TSC rate in Hz, measured over 10 ms of the PIT.
pub fn calibrate_tsc() -> u64 {
    // SAFETY: the PIT's and port B's registers; no memory effects.
    unsafe {
        let mut port_b = Port::<u8>::new(0x61);
        let b = port_b.read();
        // Gate 2 on, speaker off.
        port_b.write((b & !0x02) | 0x01);
        // Channel 2, low then high byte, mode 0 (OUT2 rises at terminal count), binary.
        Port::<u8>::new(0x43).write(0b1011_0000);
        let mut ch2 = Port::<u8>::new(0x42);
        ch2.write(COUNT as u8);
        ch2.write((COUNT >> 8) as u8);
        let t0 = crate::rdtsc();
        while port_b.read() & 0x20 == 0 {
            core::hint::spin_loop();
        }
        let t1 = crate::rdtsc();
        port_b.write(b);
        (t1 - t0) * PIT_HZ / COUNT as u64
    }
}
