//! What a conformance run covers: its flags, the kvm-unit-tests binaries found and their
//! `unittests.cfg` entries, and one job per entry, interrupt path and APIC mode.

use anyhow::{Context, Result, bail};
use clap::Args;
use std::path::{Path, PathBuf};

use super::kut::{self, Entry};

/// Where the project keeps its copy of kvm-unit-tests' binaries beside a checkout (test
/// inputs, never part of the repository).
pub const DEFAULT_KUT_DIR: &str = "../shared/kvm-unit-tests";

/// The environment kvm-unit-tests reads from its first multiboot module (QEMU's `-initrd`):
/// pc-testdev not announced (`TEST_DEVICE=0`, as upstream's harness writes for machines
/// without it), on both sides: the one test here gated on it is KVM's paravirtual IPI
/// hypercall, not the architecture's (docs/conformance.md).
pub const ENV: &str = "TEST_DEVICE=0\n";

/// Tests that `TEST_DEVICE=0` leaves out, by binary, with why: listed beside the results.
pub const NEEDS_TEST_DEVICE: &[(&str, &str)] = &[(
    "apic.flat",
    "\"PV IPIs testing\" is KVM's paravirtual IPI hypercall (KVM_HC_SEND_IPI), attempted only with QEMU's pc-testdev",
)];

/// `vmexit` tests that Bochs cannot finish in useful time, by test name, with why: their loop
/// runs until 2^30 TSC ticks pass, and each iteration toggles a control-register bit that
/// makes Bochs drop its whole TLB (and, through its trace links, its decoded-instruction
/// cache), so an iteration of about 30 instructions costs microseconds of host time: about
/// 16 minutes for one vCPU, twice that for the entry's two (docs/conformance.md). Neither
/// exits under this hypervisor. `--slow` runs them.
pub const SLOW_ON_BOCHS: &[(&str, &str)] = &[
    (
        "toggle_cr0_wp",
        "each MOV to CR0 that changes WP flushes Bochs' whole TLB: the 2^30-tick loop takes over half an hour of host time on 2 vCPUs (--slow runs it)",
    ),
    (
        "toggle_cr4_pge",
        "each MOV to CR4 that changes PGE flushes Bochs' whole TLB: the 2^30-tick loop takes over half an hour of host time on 2 vCPUs (--slow runs it)",
    ),
];

/// Why `e` is not run without `--slow`, if it is one of [`SLOW_ON_BOCHS`].
pub fn slow_on_bochs(e: &Entry) -> Option<&'static str> {
    let test = e.args.split_whitespace().next()?;
    (e.file == "vmexit.flat").then(|| SLOW_ON_BOCHS.iter().find(|(t, _)| *t == test).map(|(_, why)| *why))?
}

#[derive(Args, Clone, Debug)]
pub struct ConformanceArgs {
    /// The folder with kvm-unit-tests binaries (`*.flat`) and their `unittests.cfg`.
    #[arg(long)]
    pub kut: Option<PathBuf>,
    /// Run the same binaries under another hypervisor on the same emulated CPU and compare.
    #[arg(long, value_parser = ["kvm"])]
    pub peer: Option<String>,
    /// Write `{"records": [...], ...}` (one record per test x path x APIC mode) here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Only the tests whose name contains this.
    #[arg(long)]
    pub filter: Option<String>,
    /// Interrupt paths (default: all four, or ipiv with --peer; a CPU model without one refuses
    /// its VMs).
    #[arg(long, value_delimiter = ',', value_parser = ["ipiv", "posted", "virtual-delivery", "injection"])]
    pub path: Vec<String>,
    /// APIC modes the VMs start in (default both; entries that hide x2APIC run in xAPIC only).
    #[arg(long, value_delimiter = ',', value_parser = ["xapic", "x2apic"])]
    pub apic: Vec<String>,
    /// Bochs' CPU model.
    #[arg(long, default_value = crate::platform::bochs::DEFAULT_MODEL)]
    pub cpu_model: String,
    /// Bochs processes at once (default: the machine's CPUs).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Echo each test kernel's console.
    #[arg(long)]
    pub verbose: bool,
    /// Also run the tests Bochs takes over half an hour for (`SLOW_ON_BOCHS`); without it they
    /// are listed as skipped with the reason, on both sides.
    #[arg(long)]
    pub slow: bool,
}

pub const PATHS: [&str; 4] = ["ipiv", "posted", "virtual-delivery", "injection"];
pub const APIC_MODES: [&str; 2] = ["xapic", "x2apic"];

/// One run: an entry on one path in one APIC mode.
#[derive(Clone, Debug)]
pub struct Job {
    pub entry: Entry,
    pub path: String,
    pub apic: String,
}

/// The folder to read: `--kut`, else the default beside the checkout.
pub fn kut_dir(arg: Option<&Path>) -> PathBuf {
    arg.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(DEFAULT_KUT_DIR))
}

/// The entries for the binaries in `dir`.
pub fn entries(dir: &Path) -> Result<Vec<Entry>> {
    let mut binaries: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".flat"))
        .collect();
    binaries.sort();
    if binaries.is_empty() {
        bail!("{} holds no kvm-unit-tests binary (*.flat)", dir.display());
    }
    let cfg_path = dir.join("unittests.cfg");
    let cfg = match std::fs::read_to_string(&cfg_path) {
        Ok(text) => kut::parse_cfg(&text).map_err(|e| anyhow::anyhow!("{}: {e}", cfg_path.display()))?,
        Err(_) => Vec::new(),
    };
    Ok(kut::entries_for(&cfg, &binaries))
}

/// Every job for `entries` on `paths` x `apics`.
pub fn jobs(entries: &[Entry], paths: &[String], apics: &[String], filter: Option<&str>) -> Vec<Job> {
    let mut out = Vec::new();
    for e in entries.iter().filter(|e| filter.is_none_or(|f| e.name.contains(f))) {
        for path in paths {
            for apic in apics {
                if apic == "x2apic" && e.hides_x2apic() {
                    continue;
                }
                out.push(Job { entry: e.clone(), path: path.clone(), apic: apic.clone() });
            }
        }
    }
    out
}
