//! The exit census: each vCPU's exit counters at every REPORT a VM makes, so that the summary
//! can say what the guest cost between two reports (a benchmark's phase: the Linux workload
//! prints one REPORT line per part) and not only over the VM's whole life, boot included.
//!
//! A vCPU cannot read another's counters while it runs (they live in its own state, unshared,
//! on the exit path), so each takes its own snapshots: a REPORT advances the VM's epoch, and
//! every vCPU, at its next exit and before counting that exit, records its counters for every
//! epoch it has not recorded yet. Between its last exit before the REPORT and that next exit
//! it took no exit, so the snapshot is exactly its counters at the REPORT. A vCPU that ends
//! records the epochs left with its final counters.

use alloc::vec::Vec;

use super::counters::ExitCounters;

/// Records `counters` for each epoch up to `epoch` not yet in `snapshots` (one entry per epoch,
/// the first for epoch 1).
pub fn catch_up(snapshots: &mut Vec<ExitCounters>, epoch: usize, counters: &ExitCounters) {
    while snapshots.len() < epoch {
        snapshots.push(counters.clone());
    }
}

/// The exits of one window: from the previous REPORT (or the VM's start) to a REPORT.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Window {
    /// Its length in microseconds of the hypervisor's measured TSC time.
    pub us: u64,
    /// All vCPUs' exits in it, summed.
    pub exits: ExitCounters,
}

/// The windows of `report_tsc.len()` REPORTs: `snapshots[v][k]` is vCPU `v`'s counters at
/// REPORT `k`, `report_tsc[k]` the TSC then, `start_tsc` the VM's start. A vCPU with fewer
/// snapshots than REPORTs (it never ran again) counts as unchanged since its last one.
pub fn windows(snapshots: &[Vec<ExitCounters>], report_tsc: &[u64], start_tsc: u64, tsc_hz: u64) -> Vec<Window> {
    let zero = ExitCounters::default();
    let at = |v: &Vec<ExitCounters>, k: usize| v.get(k).or(v.last()).unwrap_or(&zero).clone();
    let mut out = Vec::with_capacity(report_tsc.len());
    let mut prev_tsc = start_tsc;
    for (k, &tsc) in report_tsc.iter().enumerate() {
        let mut exits = ExitCounters::default();
        for v in snapshots {
            let before = if k == 0 { zero.clone() } else { at(v, k - 1) };
            exits.add(&at(v, k).since(&before));
        }
        let ticks = tsc.saturating_sub(prev_tsc);
        let us = if tsc_hz == 0 { 0 } else { (ticks as u128 * 1_000_000 / tsc_hz as u128) as u64 };
        out.push(Window { us, exits });
        prev_tsc = tsc;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmx::exit_reason;

    fn with(hlt: u64, io: u64) -> ExitCounters {
        let mut c = ExitCounters::default();
        c.by_reason[exit_reason::HLT as usize] = hlt;
        c.by_reason[exit_reason::IO_INSTRUCTION as usize] = io;
        c
    }

    #[test]
    fn catching_up_fills_every_missed_epoch_with_the_same_counters() {
        let mut s = Vec::new();
        catch_up(&mut s, 1, &with(1, 0));
        catch_up(&mut s, 1, &with(5, 0));
        assert_eq!(s, [with(1, 0)], "an epoch is recorded once");
        catch_up(&mut s, 3, &with(2, 0));
        assert_eq!(s, [with(1, 0), with(2, 0), with(2, 0)]);
    }

    #[test]
    fn windows_are_the_differences_summed_over_vcpus() {
        // vCPU 0 reported twice; vCPU 1 ran only until the first report.
        let snaps = [std::vec![with(3, 10), with(4, 30)], std::vec![with(1, 1)]];
        let w = windows(&snaps, &[1_000, 3_000], 0, 1_000_000);
        assert_eq!(w.len(), 2);
        assert_eq!(w[0], Window { us: 1_000, exits: with(4, 11) });
        assert_eq!(w[1], Window { us: 2_000, exits: with(1, 20) }, "vCPU 1 unchanged");
        assert_eq!(windows(&snaps, &[], 0, 1), []);
        assert_eq!(windows(&[], &[5], 0, 0), [Window::default()], "no TSC rate: no length");
    }
}
