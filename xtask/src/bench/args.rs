//! `cargo xtask bench`'s flags.

use clap::{Args, ValueEnum};
use std::path::PathBuf;

use crate::platform::bochs::DEFAULT_MODEL;
use crate::platform::kvm_host::KvmHost;
use crate::platform::spec::Platform;

#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value = "bochs")]
    pub platform: Platform,
    /// CPUs (the broadcast cell needs 4).
    #[arg(long, default_value_t = 4)]
    pub cpus: u32,
    /// Round trips per cell (after a warm-up of a tenth); default 200, or 2000 with --full.
    #[arg(long)]
    pub iterations: Option<u32>,
    /// The whole matrix at full length.
    #[arg(long)]
    pub full: bool,
    /// Write `{"platform", "cycles_unit", "records": [...]}` here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG plot of median cycles (p99 whiskers) here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Per-boot timeout in seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// The Linux benchmark instead: Debian's kernel with the project's IPI workload in a
    /// 4-vCPU VM (IPIv on and off, xAPIC and x2APIC) and booted directly on Bochs (native);
    /// --iterations sets the workload's counts (default 2000, --full 10000).
    #[arg(long)]
    pub linux: bool,
    /// Measure a peer hypervisor side by side on the same emulated CPU: `kvm` boots Debian's
    /// kernel as KVM's host on the project's Bochs and runs the same `ipi-bench` kernel under
    /// Debian's QEMU with IPIv on, IPIv off and APICv off (not part of `cargo xtask test`: slow).
    #[arg(long, value_enum)]
    pub peer: Option<Peer>,
    /// KVM's host for --platform nested-kvm (see `cargo xtask run --help`).
    #[arg(long, value_enum, default_value = "trixie")]
    pub kvm_host: KvmHost,
    /// `kvm_intel` parameters for --platform nested-kvm (default: KVM's defaults).
    #[arg(long, default_value = "")]
    pub kvm_params: String,
    /// Bochs' CPU model for this hypervisor's cells (Bochs only; not with --linux or --peer,
    /// which run on the default model).
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub cpu_model: String,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Kvm,
}
