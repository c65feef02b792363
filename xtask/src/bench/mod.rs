//! `cargo xtask bench`: the IPI round trip (`ipi`) with its KVM peer (`peer`), and the Linux
//! workload (`linux`); their flags (`args`), cells (`cell`), targets (`targets`) and plots.

pub mod args;
pub mod cell;
pub mod ipi;
pub mod linux;
pub mod peer;
pub mod plot;
pub mod targets;

use anyhow::{Result, bail};

use crate::platform::bochs::DEFAULT_MODEL;

/// Runs the benchmark the flags ask for; whether every target was met.
pub fn run(a: &args::BenchArgs) -> Result<bool> {
    if a.cpu_model != DEFAULT_MODEL && (a.linux || a.peer.is_some()) {
        bail!("--cpu-model applies to the IPI round trip's own cells; --linux and --peer run on {DEFAULT_MODEL}");
    }
    if a.linux {
        if a.peer.is_some() {
            bail!("--peer measures the IPI round trip; it does not combine with --linux");
        }
        return linux::run(a);
    }
    ipi::run(a)
}
