//! A vCPU's local APIC timer (SDM Vol. 3A §12.5.4, §12.5.4.1): one-shot, periodic and
//! TSC-deadline modes, the divide configuration, the current count and LVT masking, as a pure
//! model over the TSC.
//!
//! The guest's TSC is the host's (no offsetting), and the timer's input clock is the TSC too:
//! a count of N with divide-by-D lasts N × D TSC ticks. CPUID tells the guest so (leaf 0x15
//! reports a crystal clock equal to the TSC rate, leaf 0x4000_0010 EBX the timer's kHz), so an
//! OS that reads either needs no calibration, and one that calibrates finds the same.
//!
//! A periodic timer never fires more often than every `min_period` TSC ticks (KVM does the same
//! with its `min_timer_period_us`, 200 µs): it is the one timer that re-arms itself, and with
//! a count of 1 it would turn the vCPU's time into nothing but timer exits. One-shot and
//! TSC-deadline arming each take a guest write (an exit), so they bound themselves.
//!
//! The model never fires by itself: the hypervisor asks [`ApicTimer::deadline`] when the next
//! interrupt is due, arranges to be back then (the VMX-preemption timer), and calls
//! [`ApicTimer::expire`], which returns the vector to deliver.

use super::regs::{LVT_MASKED as LVT_MASK, LVT_TIMER_MODE_SHIFT as LVT_MODE_SHIFT};

/// LVT timer bits (SDM Vol. 3A Figure 12-8): vector 7:0, delivery status 12 (read-only), mask
/// 16, timer mode 18:17. The rest are reserved and read as 0.
const LVT_VECTOR: u32 = 0xff;
pub const LVT_WRITABLE: u32 = LVT_VECTOR | LVT_MASK | (3 << LVT_MODE_SHIFT);
/// Divide configuration bits 0, 1 and 3 (SDM Vol. 3A Figure 12-10).
pub const DIVIDE_WRITABLE: u32 = 0b1011;

/// LVT timer bits 18:17 (SDM Vol. 3A Table 12-2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    OneShot,
    Periodic,
    TscDeadline,
}

impl Mode {
    /// The mode the LVT value selects; the reserved encoding 11b behaves as one-shot.
    pub fn of(lvt: u32) -> Self {
        match (lvt >> LVT_MODE_SHIFT) & 3 {
            1 => Self::Periodic,
            2 => Self::TscDeadline,
            _ => Self::OneShot,
        }
    }
}

/// log2 of the divisor a divide-configuration value selects: bits 3,1,0 = 000 → 2, 001 → 4,
/// ..., 110 → 128, 111 → 1 (SDM Vol. 3A Figure 12-10).
pub fn divide_shift(value: u32) -> u32 {
    let code = ((value >> 1) & 0b100) | (value & 0b11);
    (code + 1) & 7
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApicTimer {
    lvt: u32,
    divide: u32,
    initial: u32,
    /// One-shot and periodic: counting, with `count_at_start` at TSC `start`.
    counting: bool,
    start: u64,
    count_at_start: u32,
    /// TSC-deadline mode: IA32_TSC_DEADLINE, 0 when disarmed.
    tsc_deadline: u64,
    /// The shortest period of a periodic timer, in TSC ticks.
    min_period: u64,
}

impl Default for ApicTimer {
    fn default() -> Self {
        Self::new(0)
    }
}

/// The shortest period a guest's periodic APIC timer gets: 100 µs, ten times faster than the
/// 1 ms an OS with HZ = 1000 asks for, and half KVM's 200 µs floor.
pub const MIN_PERIODIC_TIMER_US: u64 = 100;

impl ApicTimer {
    /// A timer at reset ([`ApicTimer::new`]) for a TSC of `tsc_hz`, with the periodic floor of
    /// [`MIN_PERIODIC_TIMER_US`].
    pub const fn for_tsc(tsc_hz: u64) -> Self {
        Self::new(tsc_hz * MIN_PERIODIC_TIMER_US / 1_000_000)
    }

    /// As after reset or INIT: LVT masked, one-shot, divide by 2, stopped (SDM Vol. 3A
    /// §12.4.7.1); periodic timers no faster than every `min_period` TSC ticks.
    pub const fn new(min_period: u64) -> Self {
        Self {
            lvt: LVT_MASK,
            divide: 0,
            initial: 0,
            counting: false,
            start: 0,
            count_at_start: 0,
            tsc_deadline: 0,
            min_period,
        }
    }

    /// A periodic timer's period in TSC ticks, at least the minimum.
    fn period(&self) -> u64 {
        ((self.initial as u64) << self.shift()).max(self.min_period)
    }

    pub fn mode(&self) -> Mode {
        Mode::of(self.lvt)
    }

    pub fn lvt(&self) -> u32 {
        self.lvt
    }

    pub fn divide(&self) -> u32 {
        self.divide
    }

    pub fn initial_count(&self) -> u32 {
        self.initial
    }

    fn shift(&self) -> u32 {
        divide_shift(self.divide)
    }

    /// A write of the LVT timer register; returns the value the register holds afterwards. A
    /// transition into or out of TSC-deadline mode disarms the timer and clears
    /// IA32_TSC_DEADLINE (SDM Vol. 3A §12.5.4.1); between one-shot and periodic the count goes
    /// on from where it is (a periodic count then reloads at zero).
    pub fn write_lvt(&mut self, value: u32) -> u32 {
        let value = value & LVT_WRITABLE;
        let (old, new) = (self.mode(), Mode::of(value));
        if old != new && (old == Mode::TscDeadline || new == Mode::TscDeadline) {
            self.counting = false;
            self.tsc_deadline = 0;
        }
        self.lvt = value;
        value
    }

    /// A write of the initial-count register: counting restarts from `value` (0 stops the
    /// timer); ignored in TSC-deadline mode (SDM Vol. 3A §12.5.4, §12.5.4.1).
    pub fn write_initial_count(&mut self, value: u32, now: u64) {
        if self.mode() == Mode::TscDeadline {
            return;
        }
        self.initial = value;
        self.counting = value != 0;
        self.start = now;
        self.count_at_start = value;
    }

    /// A write of the divide configuration: a count in progress goes on from where it is at
    /// the new rate. Returns the value the register holds.
    pub fn write_divide(&mut self, value: u32, now: u64) -> u32 {
        if self.counting {
            self.count_at_start = self.current_count(now);
            self.start = now;
        }
        self.divide = value & DIVIDE_WRITABLE;
        self.divide
    }

    /// The current-count register: counts down from the initial count, one per `divisor` TSC
    /// ticks; 0 when stopped (a one-shot count that ran out) and always in TSC-deadline mode.
    /// A periodic count that ran out restarts from the initial count, even before the
    /// hypervisor has delivered the interrupt.
    pub fn current_count(&self, now: u64) -> u32 {
        if !self.counting || self.mode() == Mode::TscDeadline {
            return 0;
        }
        let elapsed = now.saturating_sub(self.start) >> self.shift();
        let left = self.count_at_start as u64;
        if elapsed < left {
            return (left - elapsed) as u32;
        }
        match self.mode() {
            Mode::Periodic => {
                let into = (elapsed - left) % self.initial as u64;
                (self.initial as u64 - into) as u32
            }
            _ => 0,
        }
    }

    /// IA32_TSC_DEADLINE as RDMSR returns it: 0 outside TSC-deadline mode and once it fired.
    pub fn read_tsc_deadline(&self) -> u64 {
        if self.mode() == Mode::TscDeadline { self.tsc_deadline } else { 0 }
    }

    /// WRMSR IA32_TSC_DEADLINE: arms the timer for that TSC value (0 disarms; a past value fires
    /// at once). Ignored outside TSC-deadline mode (SDM Vol. 3A §12.5.4.1).
    pub fn write_tsc_deadline(&mut self, value: u64) {
        if self.mode() == Mode::TscDeadline {
            self.tsc_deadline = value;
        }
    }

    /// The TSC at which the timer next reaches zero, whether or not the LVT masks the
    /// interrupt; `None` when it is not counting.
    pub fn next_expiry(&self) -> Option<u64> {
        match self.mode() {
            Mode::TscDeadline => (self.tsc_deadline != 0).then_some(self.tsc_deadline),
            Mode::Periodic if self.counting => {
                let left = ((self.count_at_start as u64) << self.shift()).max(self.min_period);
                Some(self.start.saturating_add(left))
            }
            _ if self.counting => Some(self.start.saturating_add((self.count_at_start as u64) << self.shift())),
            _ => None,
        }
    }

    /// When the hypervisor must be back to deliver an interrupt: the next expiry, unless the
    /// LVT masks the interrupt (the count still runs; [`ApicTimer::current_count`] follows it).
    pub fn deadline(&self) -> Option<u64> {
        if self.lvt & LVT_MASK != 0 { None } else { self.next_expiry() }
    }

    /// Brings the timer up to `now`: if it reached zero, a one-shot count stops, a periodic one
    /// reloads (periods missed meanwhile fold into one interrupt, as the APIC's IRR would hold
    /// only one), a TSC deadline disarms and clears itself (SDM Vol. 3A §12.5.4.1). Returns the
    /// vector to deliver, unless the LVT masks it.
    pub fn expire(&mut self, now: u64) -> Option<u8> {
        let due = self.next_expiry()?;
        if now < due {
            return None;
        }
        match self.mode() {
            Mode::TscDeadline => self.tsc_deadline = 0,
            Mode::OneShot => self.counting = false,
            Mode::Periodic => {
                let period = self.period();
                let late = (now - due) / period;
                self.start = due + late * period;
                self.count_at_start = self.initial;
            }
        }
        (self.lvt & LVT_MASK == 0).then_some((self.lvt & LVT_VECTOR) as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::apic::regs::{LVT_TIMER_PERIODIC as PERIODIC, LVT_TIMER_TSC_DEADLINE as DEADLINE};

    #[test]
    fn divide_configuration_encodings() {
        let divisors: [(u32, u32); 8] = [
            (0b0000, 2),
            (0b0001, 4),
            (0b0010, 8),
            (0b0011, 16),
            (0b1000, 32),
            (0b1001, 64),
            (0b1010, 128),
            (0b1011, 1),
        ];
        for (value, divisor) in divisors {
            assert_eq!(1 << divide_shift(value), divisor, "{value:#b}");
        }
    }

    proptest::proptest! {
        /// Any sequence of register writes and looks: never a panic, never an interrupt before
        /// the timer's expiry, and a periodic timer never faster than its minimum period.
        #[test]
        fn any_register_writes(ops in proptest::collection::vec((0u8..5, proptest::num::u32::ANY, 0u64..5000), 1..60)) {
            let mut t = ApicTimer::new(50);
            let mut now = 0u64;
            let mut last_fire: Option<u64> = None;
            for (op, value, dt) in ops {
                now += dt;
                match op {
                    0 => { t.write_lvt(value); }
                    1 => t.write_initial_count(value, now),
                    2 => { t.write_divide(value, now); }
                    3 => t.write_tsc_deadline(value as u64),
                    _ => {
                        let due = t.next_expiry();
                        let periodic = t.mode() == Mode::Periodic;
                        if let Some(_v) = t.expire(now) {
                            proptest::prop_assert!(due.is_some_and(|d| d <= now), "fired before it was due");
                            if periodic && let Some(prev) = last_fire {
                                proptest::prop_assert!(due.unwrap() >= prev, "periods run forward");
                            }
                            last_fire = due;
                        }
                    }
                }
                let _ = t.current_count(now);
            }
        }
    }

    #[test]
    fn reset_state_is_masked_and_stopped() {
        let t = ApicTimer::new(0);
        assert_eq!((t.lvt(), t.mode(), t.current_count(100), t.deadline()), (LVT_MASK, Mode::OneShot, 0, None));
    }

    #[test]
    fn one_shot_counts_down_at_the_divided_rate_and_fires_once() {
        let mut t = ApicTimer::new(0);
        t.write_lvt(0x40);
        t.write_divide(0b0001, 0); // divide by 4
        t.write_initial_count(1000, 10_000);
        assert_eq!(t.current_count(10_000), 1000);
        assert_eq!(t.current_count(10_400), 900);
        assert_eq!(t.deadline(), Some(14_000));
        assert_eq!(t.expire(13_999), None);
        assert_eq!(t.expire(14_000), Some(0x40));
        assert_eq!((t.current_count(14_000), t.deadline(), t.expire(20_000)), (0, None, None));
        // Writing the initial count again restarts it; 0 stops it.
        t.write_initial_count(10, 20_000);
        assert_eq!(t.deadline(), Some(20_040));
        t.write_initial_count(0, 20_010);
        assert_eq!((t.deadline(), t.current_count(20_010)), (None, 0));
    }

    #[test]
    fn periodic_reloads_and_folds_missed_periods() {
        let mut t = ApicTimer::new(0);
        t.write_lvt(0x31 | PERIODIC);
        t.write_divide(0b1011, 0); // divide by 1
        t.write_initial_count(100, 0);
        assert_eq!(t.expire(100), Some(0x31));
        assert_eq!((t.deadline(), t.current_count(150)), (Some(200), 50));
        // The hypervisor comes back late, after 3.5 more periods: one interrupt, and the
        // schedule stays on the original grid.
        assert_eq!(t.expire(450), Some(0x31));
        assert_eq!(t.deadline(), Some(500));
        // Before the hypervisor looks, the current count already shows the reload.
        assert_eq!(t.current_count(530), 70);
    }

    #[test]
    fn periodic_timers_have_a_minimum_period() {
        let mut t = ApicTimer::new(100);
        t.write_lvt(0x31 | PERIODIC);
        t.write_divide(0b1011, 0);
        t.write_initial_count(1, 0);
        assert_eq!(t.deadline(), Some(100), "a count of 1 waits the minimum period");
        assert_eq!(t.expire(100), Some(0x31));
        assert_eq!(t.deadline(), Some(200));
        assert_eq!(t.expire(1050), Some(0x31), "late: one interrupt");
        assert_eq!(t.deadline(), Some(1100));
        // One-shot timers are not clamped: each needs a write of its own.
        t.write_lvt(0x31);
        t.write_initial_count(1, 2000);
        assert_eq!(t.deadline(), Some(2001));
    }

    #[test]
    fn masked_timer_counts_but_does_not_interrupt() {
        let mut t = ApicTimer::new(0);
        t.write_lvt(0x50 | LVT_MASK);
        t.write_divide(0b1011, 0);
        t.write_initial_count(100, 0);
        assert_eq!(t.deadline(), None, "nothing to deliver");
        assert_eq!(t.next_expiry(), Some(100));
        assert_eq!(t.current_count(60), 40);
        assert_eq!(t.expire(100), None);
        assert_eq!(t.current_count(100), 0, "the one-shot count ran out");
        // Unmasking later does not bring back an interrupt that was masked when it was due.
        t.write_lvt(0x50);
        assert_eq!(t.expire(200), None);
    }

    #[test]
    fn divide_change_keeps_the_count_in_progress() {
        let mut t = ApicTimer::new(0);
        t.write_lvt(0x40);
        t.write_divide(0b1011, 0);
        t.write_initial_count(1000, 0);
        t.write_divide(0b0000, 400); // 600 left, now at divide by 2
        assert_eq!(t.current_count(400), 600);
        assert_eq!(t.current_count(600), 500);
        assert_eq!(t.deadline(), Some(400 + 1200));
    }

    #[test]
    fn tsc_deadline_mode() {
        let mut t = ApicTimer::new(0);
        t.write_tsc_deadline(5000);
        assert_eq!(t.read_tsc_deadline(), 0, "ignored outside TSC-deadline mode");
        t.write_lvt(0xec | DEADLINE);
        t.write_initial_count(77, 0);
        assert_eq!((t.initial_count(), t.current_count(0)), (0, 0), "initial count ignored, current reads 0");
        t.write_tsc_deadline(5000);
        assert_eq!((t.read_tsc_deadline(), t.deadline()), (5000, Some(5000)));
        assert_eq!(t.expire(4999), None);
        assert_eq!(t.expire(5001), Some(0xec));
        assert_eq!((t.read_tsc_deadline(), t.deadline()), (0, None), "fired: disarmed and cleared");
        // A deadline in the past fires at the next look; 0 disarms.
        t.write_tsc_deadline(10);
        assert_eq!(t.expire(6000), Some(0xec));
        t.write_tsc_deadline(9000);
        t.write_tsc_deadline(0);
        assert_eq!(t.deadline(), None);
    }

    #[test]
    fn only_tsc_deadline_transitions_disarm() {
        let mut t = ApicTimer::new(0);
        t.write_lvt(0x40 | DEADLINE);
        t.write_tsc_deadline(1000);
        assert_eq!(
            t.write_lvt(0x40 | PERIODIC | 0xff00_0000 | (1 << 12)),
            0x40 | PERIODIC,
            "reserved and read-only bits"
        );
        assert_eq!(t.deadline(), None, "leaving TSC-deadline mode disarms");
        t.write_lvt(0x40 | DEADLINE);
        assert_eq!(t.read_tsc_deadline(), 0, "and clears IA32_TSC_DEADLINE");
        t.write_lvt(0x40);
        t.write_initial_count(10, 0);
        t.write_lvt(0x41);
        assert_eq!(t.deadline(), Some(20), "same mode, new vector: still counting");
        t.write_lvt(0x41 | PERIODIC);
        assert_eq!(t.deadline(), Some(20), "one-shot to periodic: the count goes on (kvm-unit-tests apic)");
        assert_eq!(t.current_count(10), 5);
        assert_eq!(t.expire(20), Some(0x41));
        assert_eq!(t.current_count(22), 9, "then reloads from the initial count");
        t.write_lvt(0x41);
        assert_eq!(t.deadline(), Some(40), "periodic to one-shot: counts down to the end of this period");
    }
}
