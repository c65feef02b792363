//! The ACPI power-management timer (ACPI 6.5 §4.8.3.3 "Power Management Timer"): a free-running
//! counter at 3.579545 MHz in a 32-bit read-only I/O register, 24 bits wide (the FADT's
//! TMR_VAL_EXT flag is clear, so bits 31:24 read 0). It sits where QEMU's q35 PC has it (the
//! ICH9 PM base 0x600 + 8), and the FADT's PM_TMR_BLK names it. The platform is
//! hardware-reduced ACPI, so an OS's ACPI code ignores the field (§5.2.9); kernels that read
//! the FADT themselves find the timer there (kvm-unit-tests' vmexit `inl_from_pmtimer` times
//! an exit with it).

use super::bus::{Effects, PortDevice};

pub const PORT: u16 = 0x608;
pub const LEN: u16 = 4;
/// The timer's rate, in Hz.
pub const HZ: u64 = 3_579_545;
/// TMR_VAL_EXT clear: a 24-bit counter.
const MASK: u32 = 0x00ff_ffff;

/// The count at `now_ns` of the VM's clock (the counter starts at 0 when the VM is created).
pub fn count(now_ns: u64) -> u32 {
    ((now_ns as u128 * HZ as u128 / 1_000_000_000) as u32) & MASK
}

#[derive(Default)]
pub struct PmTimer;

impl PortDevice for PmTimer {
    fn name(&self) -> &'static str {
        "ACPI PM timer"
    }

    fn read(&mut self, offset: u16, size: u8, now_ns: u64) -> (u32, Effects) {
        // A narrower read returns the bytes of the 32-bit register it covers.
        let v = count(now_ns) >> (8 * offset.min(3) as u32);
        let v = if size >= 4 { v } else { v & ((1u32 << (8 * size as u32)) - 1) };
        (v, Effects::NONE)
    }

    fn write(&mut self, _: u16, _: u8, _: u32, _now_ns: u64) -> Effects {
        // Read-only (§4.8.3.3): writes have no effect.
        Effects::NONE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_at_the_acpi_rate_in_24_bits() {
        let mut t = PmTimer;
        assert_eq!(t.read(0, 4, 0).0, 0);
        // One second: 3579545 ticks, below 2^24.
        assert_eq!(t.read(0, 4, 1_000_000_000).0, 3_579_545);
        // 2^24 ticks wrap to 0: 4.687 s.
        let wrap_ns = (1u64 << 24) * 1_000_000_000 / HZ + 1;
        assert!(t.read(0, 4, wrap_ns).0 < 10);
        assert_eq!(t.read(0, 4, u64::MAX).0 & !MASK, 0, "bits 31:24 read 0");
        // Monotonic between wraps.
        let mut last = 0;
        for ns in (0..4_000_000_000u64).step_by(7_777_777) {
            let v = t.read(0, 4, ns).0;
            assert!(v >= last);
            last = v;
        }
    }

    #[test]
    fn narrow_reads_return_their_bytes_and_writes_do_nothing() {
        let mut t = PmTimer;
        let ns = 1_000_000_000; // 0x369e99
        assert_eq!(t.read(0, 4, ns).0, 0x36_9e99);
        assert_eq!(t.read(0, 1, ns).0, 0x99);
        assert_eq!(t.read(1, 1, ns).0, 0x9e);
        assert_eq!(t.read(2, 2, ns).0, 0x36);
        assert_eq!(t.read(3, 1, ns).0, 0);
        assert_eq!(t.write(0, 4, 0xffff_ffff, ns), Effects::NONE);
        assert_eq!(t.read(0, 4, ns).0, 0x36_9e99);
    }
}
