//! The IPI round trip's matrix: one cell per APIC mode, configuration, target and pattern, and
//! the run that measures each.

use anyhow::Result;
use hvcore::manifest::{ApicMode, HltMode, VmSpec};
use hvcore::vmx::path_kind::{InterruptPath, IpivSetting};
use std::fs;

use super::args::BenchArgs;
use crate::platform::spec::{Platform, RunArgs};

/// One cell of the matrix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cell {
    pub apic: &'static str,
    pub config: &'static str,
    pub target: &'static str,
    pub pattern: &'static str,
}

/// The matrix, in the order the table shows it; on QEMU with the "bare" cells too.
pub fn matrix(cpus: u32, platform: Platform) -> Vec<Cell> {
    let mut cells = Vec::new();
    let bare: &[&str] = if platform == Platform::Qemu { &["spin", "halt-passthrough"] } else { &[] };
    for apic in ["xapic", "x2apic"] {
        for (config, targets) in [
            ("native", &["spin", "halt-passthrough"][..]),
            ("bare", bare),
            ("ipiv-on", &["spin", "halt-passthrough", "halt-exit"][..]),
            ("ipiv-off", &["spin", "halt-passthrough", "halt-exit"][..]),
            ("virtual-delivery", &["spin", "halt-passthrough", "halt-exit"][..]),
            ("injection", &["spin", "halt-passthrough", "halt-exit"][..]),
        ] {
            for &target in targets {
                cells.push(Cell { apic, config, target, pattern: "unicast" });
            }
        }
        if cpus >= 4 {
            for config in ["ipiv-on", "ipiv-off"] {
                cells.push(Cell { apic, config, target: "spin", pattern: "broadcast" });
            }
        }
    }
    cells
}

impl Cell {
    pub fn name(&self) -> String {
        format!("{} {} {} {}", self.apic, self.config, self.target, self.pattern)
    }

    /// The run that measures this cell.
    pub fn run_args(&self, a: &BenchArgs, iterations: u32, dir: &std::path::Path) -> Result<RunArgs> {
        let mut r = RunArgs { timeout: a.timeout, cpu_model: a.cpu_model.clone(), ..RunArgs::new(a.platform, a.cpus) };
        if self.config == "native" {
            r.native_bench = iterations;
            r.native_target = if self.target == "spin" { "spin" } else { "halt" }.into();
            r.host_apic = if self.apic == "xapic" { "xapic" } else { "auto" }.into();
            return Ok(r);
        }
        let mut vm = VmSpec::new(0);
        (vm.name, vm.kernel) = ("bench".into(), "ipi-bench".into());
        vm.vcpus = if self.pattern == "broadcast" { 4 } else { 2 };
        vm.apic = if self.apic == "x2apic" { ApicMode::X2Apic } else { ApicMode::XApic };
        vm.timeout_ms = a.timeout * 1000;
        let target = if self.target == "spin" { "spin" } else { "halt" };
        vm.cmdline = format!("iterations={iterations} target={target} pattern={}", self.pattern);
        if self.config != "bare" {
            // Each config is one interrupt path (`interrupt_path`): IPIv, the posted exit path,
            // and the two paths of CPUs without posted interrupts. A CPU without the path
            // refuses the VM, and the cell is not measured.
            (vm.ipiv, vm.interrupt_path) = match self.config {
                "ipiv-on" => (IpivSetting::On, None),
                "ipiv-off" => (IpivSetting::Off, Some(InterruptPath::Posted)),
                "virtual-delivery" => (IpivSetting::Auto, Some(InterruptPath::VirtualDelivery)),
                _ => (IpivSetting::Auto, Some(InterruptPath::Injection)),
            };
            vm.hlt = if self.target == "halt-exit" { HltMode::Exit } else { HltMode::PassThrough };
        }
        let manifest = vm.to_section().map_err(|e| anyhow::anyhow!("bench cell {}: {e}", self.name()))?;
        let file = dir.join(format!("{}.manifest", self.name().replace(' ', "-")));
        fs::write(&file, manifest)?;
        r.manifest = Some(file);
        r.direct = self.config == "bare";
        Ok(r)
    }
}
