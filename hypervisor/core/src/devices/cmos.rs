//! The CMOS RTC and NVRAM of a PC (index port 0x70, data 0x71; MC146818A datasheet and the
//! PC/AT layout): the time and date in BCD, 24-hour mode, status registers A-D (no update in
//! progress, time valid), and the memory sizes firmware stores there. The time comes from the
//! kernel's clock (`set_time` at VM creation, advanced by the VM's clock at each access);
//! nothing ever interrupts (no alarm or periodic interrupt). [`unix_from_rtc`] reads the same
//! registers back, for the host's own RTC.

use super::bus::{Effects, PortDevice};

pub const PORT: u16 = 0x70;
pub const LEN: u16 = 2;

const SECONDS: u8 = 0x00;
const MINUTES: u8 = 0x02;
const HOURS: u8 = 0x04;
const WEEKDAY: u8 = 0x06;
const DAY: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const STATUS_A: u8 = 0x0a;
const STATUS_B: u8 = 0x0b;
const STATUS_C: u8 = 0x0c;
const STATUS_D: u8 = 0x0d;
const CENTURY: u8 = 0x32;

pub struct Cmos {
    index: u8,
    nvram: [u8; 128],
    /// Seconds since 1970-01-01 00:00:00 UTC.
    unix_time: u64,
}

impl Cmos {
    /// NVRAM holding `ram_size` bytes of RAM the way PC firmware records it.
    pub fn new(ram_size: u64) -> Self {
        let mut nvram = [0u8; 128];
        nvram[STATUS_A as usize] = 0x26; // 32.768 kHz divider, 1024 Hz rate
        nvram[STATUS_B as usize] = 0x02; // 24-hour, BCD
        nvram[STATUS_D as usize] = 0x80; // valid RAM and time
        // Base memory 640 KiB; extended memory above 1 MiB in KiB (capped); above 16 MiB and
        // above 4 GiB in 64 KiB units.
        nvram[0x15..0x17].copy_from_slice(&640u16.to_le_bytes());
        let ext_kib = (ram_size.min(0x1_0000_0000).saturating_sub(1 << 20) >> 10).min(0xffff) as u16;
        nvram[0x17..0x19].copy_from_slice(&ext_kib.to_le_bytes());
        nvram[0x30..0x32].copy_from_slice(&ext_kib.to_le_bytes());
        let above_16m = (ram_size.min(0x1_0000_0000).saturating_sub(16 << 20) >> 16).min(0xffff) as u16;
        nvram[0x34..0x36].copy_from_slice(&above_16m.to_le_bytes());
        let above_4g = ram_size.saturating_sub(0x1_0000_0000) >> 16;
        nvram[0x5b..0x5e].copy_from_slice(&above_4g.to_le_bytes()[..3]);
        Self { index: 0, nvram, unix_time: 0 }
    }

    /// The time at the VM's clock 0; the clock then runs with the `now_ns` of each access.
    pub fn set_time(&mut self, unix_seconds: u64) {
        self.unix_time = unix_seconds;
    }

    /// Register `reg` of the clock at `unix` seconds.
    fn time_register(&self, reg: u8, unix: u64) -> u8 {
        let days = unix / 86_400;
        let secs = unix % 86_400;
        let (year, month, day) = civil_from_days(days as i64);
        let v = match reg {
            SECONDS => secs % 60,
            MINUTES => secs / 60 % 60,
            HOURS => secs / 3600,
            WEEKDAY => (days + 4) % 7 + 1, // 1970-01-01 was a Thursday; Sunday = 1
            DAY => day as u64,
            MONTH => month as u64,
            YEAR => (year % 100) as u64,
            _ => (year / 100) as u64, // CENTURY
        };
        bcd(v as u8)
    }
}

/// Seconds since 1970 from RTC registers (seconds, minutes, hours, day, month, year, century),
/// BCD unless `binary` (status B bit 2), 24-hour clock; None if they make no date.
pub fn unix_from_rtc(regs: [u8; 7], binary: bool) -> Option<u64> {
    let dec =
        |v: u8| if binary { Some(v) } else { ((v >> 4) < 10 && (v & 0xf) < 10).then(|| (v >> 4) * 10 + (v & 0xf)) };
    let [s, mi, h, d, mo, y, c] = regs.map(dec);
    let (s, mi, h, d, mo, y, c) = (s?, mi?, h?, d?, mo?, y?, c?);
    if s > 59 || mi > 59 || h > 23 || !(1..=31).contains(&d) || !(1..=12).contains(&mo) {
        return None;
    }
    let year = c as i64 * 100 + y as i64;
    let days = days_from_civil(year, mo as u32, d as u32);
    (days >= 0).then(|| days as u64 * 86_400 + h as u64 * 3600 + mi as u64 * 60 + s as u64)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the inverse of `civil_from_days`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

/// Proleptic Gregorian date of day `z` since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

impl PortDevice for Cmos {
    fn name(&self) -> &'static str {
        "CMOS RTC"
    }

    fn read(&mut self, offset: u16, _: u8, now_ns: u64) -> (u32, Effects) {
        if offset == 0 {
            return (0xff, Effects::NONE); // the index port is write-only
        }
        let reg = self.index & 0x7f;
        let v = match reg {
            SECONDS | MINUTES | HOURS | WEEKDAY | DAY | MONTH | YEAR | CENTURY => {
                self.time_register(reg, self.unix_time + now_ns / 1_000_000_000)
            }
            STATUS_C => 0, // no interrupt flags; reading clears them
            r => self.nvram[r as usize],
        };
        (v as u32, Effects::NONE)
    }

    fn write(&mut self, offset: u16, _: u8, value: u32, _now_ns: u64) -> Effects {
        let v = value as u8;
        if offset == 0 {
            // Bit 7 is the NMI mask on a PC; the VM's NMIs do not go through it.
            self.index = v;
            return Effects::NONE;
        }
        match self.index & 0x7f {
            // The clock is the host's; setting it is accepted and has no effect.
            SECONDS | MINUTES | HOURS | WEEKDAY | DAY | MONTH | YEAR | CENTURY | STATUS_C | STATUS_D => {}
            STATUS_A => self.nvram[STATUS_A as usize] = v & 0x7f, // UIP is read-only
            r => self.nvram[r as usize] = v,
        }
        Effects::NONE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_runs_and_reads_back_as_it_was_set() {
        let mut c = Cmos::new(0);
        c.set_time(1_700_000_000); // 2023-11-14 22:13:20 UTC
        let at = |c: &mut Cmos, now_ns: u64| -> [u8; 7] {
            [SECONDS, MINUTES, HOURS, DAY, MONTH, YEAR, CENTURY].map(|r| {
                c.write(0, 1, r as u32, 0);
                c.read(1, 1, now_ns).0 as u8
            })
        };
        assert_eq!(at(&mut c, 0), [0x20, 0x13, 0x22, 0x14, 0x11, 0x23, 0x20]);
        assert_eq!(unix_from_rtc(at(&mut c, 0), false), Some(1_700_000_000));
        assert_eq!(unix_from_rtc(at(&mut c, 61_500_000_000), false), Some(1_700_000_061));
        assert_eq!(unix_from_rtc([0, 0, 0, 1, 1, 0x70, 0x19], false), Some(0));
        assert_eq!(unix_from_rtc([0x1a, 0, 0, 1, 1, 0x70, 0x19], false), None, "not BCD");
        assert_eq!(unix_from_rtc([0, 0, 0, 29, 2, 24, 20], true), Some(1_709_164_800), "binary mode");
    }

    fn reg(c: &mut Cmos, r: u8) -> u8 {
        c.write(0, 1, r as u32, 0);
        c.read(1, 1, 0).0 as u8
    }

    #[test]
    fn time_and_date_in_bcd() {
        let mut c = Cmos::new(16 << 20);
        // 2026-11-25 10:41:07 UTC, a Wednesday.
        c.set_time(1_795_603_267);
        let got: std::vec::Vec<u8> =
            [SECONDS, MINUTES, HOURS, DAY, MONTH, YEAR, CENTURY, WEEKDAY].iter().map(|&r| reg(&mut c, r)).collect();
        assert_eq!(got, [0x07, 0x41, 0x10, 0x25, 0x11, 0x26, 0x20, 0x04]);
        assert_eq!(reg(&mut c, STATUS_A) & 0x80, 0, "no update in progress");
        assert_eq!(reg(&mut c, STATUS_B), 0x02, "24-hour BCD");
        assert_eq!(reg(&mut c, STATUS_D), 0x80);
        // The NMI-mask bit of the index does not change the register.
        assert_eq!(reg(&mut c, 0x80 | HOURS), 0x10);
        c.set_time(0);
        assert_eq!([reg(&mut c, DAY), reg(&mut c, MONTH), reg(&mut c, YEAR), reg(&mut c, WEEKDAY)], [1, 1, 0x70, 5]);
    }

    #[test]
    fn memory_sizes_as_firmware_records_them() {
        let mut c = Cmos::new(6 << 30);
        let word = |c: &mut Cmos, r: u8| reg(c, r) as u32 | (reg(c, r + 1) as u32) << 8;
        assert_eq!(word(&mut c, 0x15), 640);
        assert_eq!(word(&mut c, 0x30), 0xffff, "capped");
        assert_eq!(word(&mut c, 0x34) as u64, ((4u64 << 30) - (16 << 20)) >> 16);
        let above = reg(&mut c, 0x5b) as u32 | (reg(&mut c, 0x5c) as u32) << 8 | (reg(&mut c, 0x5d) as u32) << 16;
        assert_eq!(above as u64, (2u64 << 30) >> 16);
        // NVRAM outside the clock is plain memory.
        c.write(0, 1, 0x40, 0);
        c.write(1, 1, 0x5a, 0);
        assert_eq!(reg(&mut c, 0x40), 0x5a);
    }
}
