//! Per-VM resource budgets: what one guest may take of what the host shares between VMs (its
//! heap and its console). docs/security.md lists them. A VM over its report budget is stopped
//! with a reason naming the budget; console output over its rate is dropped and counted (a real
//! OS printing fast is doing nothing wrong), so the console stays available to every VM and to
//! the hypervisor's own log.

use core::fmt;

/// Most REPORT values one VM keeps (they live on the hypervisor's heap until the summary).
pub const MAX_REPORTS: u32 = 64;
/// Most bytes of REPORT values one VM keeps, in canonical form.
pub const MAX_REPORT_BYTES: u64 = 64 * 1024;

/// Console bytes per second one VM may print, on average, unless its manifest says otherwise
/// (`console_bytes_per_second`)...
pub const CONSOLE_BYTES_PER_S: u64 = 4096;
/// ...with bursts of up to this many bytes, or four seconds' worth at a higher rate.
pub const CONSOLE_BURST_BYTES: u64 = 16 * 1024;
/// The highest rate a manifest may give (16 MiB/s, more than a 115200-baud line carries).
pub const MAX_CONSOLE_BYTES_PER_S: u64 = 16 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportsExceeded {
    pub reports: u32,
    pub bytes: u64,
}

impl fmt::Display for ReportsExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "report budget exceeded ({} reports, {} bytes; the budget is {MAX_REPORTS} reports and {MAX_REPORT_BYTES} bytes per VM)",
            self.reports, self.bytes
        )
    }
}

/// The REPORT values a VM has kept so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReportBudget {
    reports: u32,
    bytes: u64,
}

impl ReportBudget {
    /// Takes one more report of `len` bytes, or says which limit it would pass (and takes
    /// nothing).
    pub fn take(&mut self, len: usize) -> Result<(), ReportsExceeded> {
        let reports = self.reports + 1;
        let bytes = self.bytes + len as u64;
        if reports > MAX_REPORTS || bytes > MAX_REPORT_BYTES {
            return Err(ReportsExceeded { reports, bytes });
        }
        (self.reports, self.bytes) = (reports, bytes);
        Ok(())
    }
}

/// VM exits one vCPU may cause per second of TSC time unless its manifest says otherwise
/// (`max_exits_per_second`). Far above what an OS needs (an idle or busy Linux guest takes well
/// under 100,000 exits a second): it stops a guest that turns the hypervisor into its
/// workhorse, and bounds how much host time a vCPU's exits can take between watchdog checks.
pub const DEFAULT_MAX_EXITS_PER_S: u64 = 2_000_000;

/// Exits over a fixed one-second window (in TSC ticks) for one vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitBudget {
    limit: u64,
    tsc_hz: u64,
    window_start: u64,
    count: u64,
}

/// The exit budget was exceeded: the VM is stopped with this reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitsExceeded {
    pub limit: u64,
}

impl fmt::Display for ExitsExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exit budget exceeded: more than {} VM exits in one second", self.limit)
    }
}

impl ExitBudget {
    pub fn new(limit_per_s: u64, tsc_hz: u64, now_tsc: u64) -> Self {
        Self { limit: limit_per_s, tsc_hz: tsc_hz.max(1), window_start: now_tsc, count: 0 }
    }

    /// Counts one exit at `now_tsc`.
    pub fn exit(&mut self, now_tsc: u64) -> Result<(), ExitsExceeded> {
        if now_tsc.wrapping_sub(self.window_start) >= self.tsc_hz {
            self.window_start = now_tsc;
            self.count = 0;
        }
        self.count += 1;
        if self.count > self.limit { Err(ExitsExceeded { limit: self.limit }) } else { Ok(()) }
    }
}

/// A token bucket over TSC time for one VM's console output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsoleBudget {
    tsc_hz: u64,
    rate: u64,
    burst: u64,
    tokens: u64,
    last_tsc: u64,
    credit: u128,
    /// Bytes dropped since the VM started.
    pub dropped: u64,
}

impl ConsoleBudget {
    /// A budget of `rate` bytes per second (clamped to 1..=[`MAX_CONSOLE_BYTES_PER_S`]).
    pub fn new(tsc_hz: u64, now_tsc: u64, rate: u64) -> Self {
        let rate = rate.clamp(1, MAX_CONSOLE_BYTES_PER_S);
        let burst = CONSOLE_BURST_BYTES.max(rate * 4);
        Self { tsc_hz: tsc_hz.max(1), rate, burst, tokens: burst, last_tsc: now_tsc, credit: 0, dropped: 0 }
    }

    /// How many of `len` bytes may be printed at `now_tsc`; the rest count as dropped.
    pub fn take(&mut self, now_tsc: u64, len: usize) -> usize {
        // Exact refill: `credit` carries the fraction of a byte (in byte-ticks) between calls.
        self.credit += now_tsc.saturating_sub(self.last_tsc) as u128 * self.rate as u128;
        self.last_tsc = self.last_tsc.max(now_tsc);
        let earned = self.credit / self.tsc_hz as u128;
        self.credit %= self.tsc_hz as u128;
        self.tokens = (self.tokens as u128 + earned).min(self.burst as u128) as u64;
        if self.tokens == self.burst {
            self.credit = 0;
        }
        let allowed = (len as u64).min(self.tokens);
        self.tokens -= allowed;
        self.dropped += len as u64 - allowed;
        allowed as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_limited_by_count_and_bytes() {
        let mut b = ReportBudget::default();
        for _ in 0..MAX_REPORTS {
            b.take(10).unwrap();
        }
        assert_eq!(b.take(10), Err(ReportsExceeded { reports: MAX_REPORTS + 1, bytes: 10 * (MAX_REPORTS as u64 + 1) }));
        let mut b = ReportBudget::default();
        b.take(MAX_REPORT_BYTES as usize - 1).unwrap();
        assert!(b.take(2).is_err());
        b.take(1).unwrap();
        let msg = std::format!("{}", b.take(1).unwrap_err());
        assert!(msg.contains("report budget") && msg.contains("64 reports"), "{msg}");
    }

    #[test]
    fn exits_are_limited_per_second() {
        let hz = 1000;
        let mut b = ExitBudget::new(3, hz, 0);
        for t in 0..3 {
            b.exit(t).unwrap();
        }
        let e = b.exit(999).unwrap_err();
        assert!(std::format!("{e}").contains("exit budget exceeded: more than 3"));
        // A new second starts a new window.
        for t in 1000..1003 {
            b.exit(t).unwrap();
        }
        assert!(b.exit(1500).is_err());
        // Spread out, any number of exits is fine.
        let mut b = ExitBudget::new(3, hz, 0);
        for t in 0..100 {
            b.exit(t * 400).unwrap();
        }
    }

    #[test]
    fn console_output_is_rate_limited() {
        let hz = 1_000_000;
        let mut c = ConsoleBudget::new(hz, 0, CONSOLE_BYTES_PER_S);
        let burst = CONSOLE_BURST_BYTES as usize;
        assert_eq!(c.take(0, burst - 100), burst - 100);
        assert_eq!(c.take(0, 4000), 100);
        assert_eq!(c.dropped, 3900);
        // Half a second earns half the rate.
        assert_eq!(c.take(hz / 2, 100_000), (CONSOLE_BYTES_PER_S / 2) as usize);
        // Many tiny steps earn as much as one long one (the remainder is kept).
        let mut t = hz / 2;
        let mut got = 0;
        for _ in 0..1000 {
            t += hz / 1000;
            got += c.take(t, 1000);
        }
        assert_eq!(got as u64, CONSOLE_BYTES_PER_S);
        // A long quiet spell refills only up to the burst.
        assert_eq!(c.take(t + 100 * hz, 100_000), CONSOLE_BURST_BYTES as usize);
    }

    #[test]
    fn a_higher_rate_has_a_burst_of_four_seconds() {
        let hz = 1_000_000;
        let mut c = ConsoleBudget::new(hz, 0, 65536);
        assert_eq!(c.take(0, 1 << 20), 4 * 65536);
        assert_eq!(c.take(hz, 1 << 20), 65536);
        assert_eq!(ConsoleBudget::new(hz, 0, u64::MAX).take(0, usize::MAX) as u64, 4 * MAX_CONSOLE_BYTES_PER_S);
        assert_eq!(ConsoleBudget::new(hz, 0, 0).take(0, 1 << 20) as u64, CONSOLE_BURST_BYTES, "at least 1 byte/s");
    }
}
