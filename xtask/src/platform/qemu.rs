//! The reference PC: each VM's multiboot kernel booted directly by QEMU (TCG) with `-kernel`,
//! `-smp N` and isa-debug-exit on 0xF4, no hypervisor underneath, so a guest binary is checked
//! on a platform this project did not write. The VM ends as the kernel says through
//! isa-debug-exit (QEMU exits with `code << 1 | 1`); the kernel's `REPORT {json}` lines are its
//! reports. The result is a summary of the same shape as the hypervisor's `HV-SUMMARY`.

use anyhow::{Context, Result, bail};
use hvcore::bootcfg::BootConfig;
use hvcore::exits::report::canonical;
use hvcore::manifest::{ApicMode, VmResult, VmSpec};
use hvcore::summary::{HvSummary, RunResult, VmReport};
use hvcore::vmx::caps::VmxFeatures;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use super::spec::{Outcome, RunArgs, compose};
use super::supervise::supervise;
use crate::provision::guests;

/// QEMU's TCG emulates x2APIC from QEMU 8.0 on.
const X2APIC_SINCE: (u32, u32) = (8, 0);

/// The installed QEMU's version, from `qemu-system-x86_64 --version`.
fn qemu_version() -> Result<(u32, u32)> {
    let out = Command::new("qemu-system-x86_64").arg("--version").output().context("running qemu-system-x86_64")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.split_whitespace().skip_while(|w| *w != "version").nth(1).context("no version in QEMU's output")?;
    let mut parts = v.split(['.', '(']).map(|p| p.parse::<u32>().unwrap_or(0));
    Ok((parts.next().unwrap_or(0), parts.next().unwrap_or(0)))
}

/// How one VM ended.
struct Ended {
    result: &'static str,
    reason: String,
    status: Option<i32>,
    timed_out: bool,
}

/// Reads QEMU's exit status as isa-debug-exit encodes it.
fn judge(status: Option<i32>, timed_out: bool, timeout_s: u64) -> Ended {
    let (result, reason) = match status {
        _ if timed_out => ("timeout", format!("still running after {timeout_s} s")),
        Some(1) => ("pass", "isa-debug-exit: 0".to_string()),
        Some(s) if s & 1 == 1 => ("fail", format!("isa-debug-exit: code {}", s >> 1)),
        Some(s) => ("fail", format!("QEMU exited with status {s} without isa-debug-exit (a triple fault or shutdown)")),
        None => ("fail", "QEMU was killed by a signal".to_string()),
    };
    Ended { result, reason, status, timed_out }
}

/// The JSON values of the serial log's `REPORT {...}` lines.
pub fn reports(log: &str) -> Vec<Value> {
    report_lines(log).filter_map(|j| serde_json::from_str(j).ok()).collect()
}

fn report_lines(log: &str) -> impl Iterator<Item = &str> {
    log.lines().filter_map(|l| l.trim_end().strip_prefix("REPORT "))
}

pub fn run(args: &RunArgs) -> Result<Outcome> {
    if args.uefi {
        bail!("--uefi: QEMU boots multiboot kernels with its own -kernel loader, not through firmware");
    }
    let (config, images) = compose(args, "debug-port")?;
    let (_, manifest) = BootConfig::parse(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(list) = &args.guest {
        for item in list.split(',') {
            let name = item.trim().split([':', '+']).next().unwrap_or_default();
            if !guests::runs_on_qemu(name) {
                bail!(
                    "--platform qemu: guest `{name}` checks this hypervisor's own behaviour (its expectation is meaningless without it); run it with --platform bochs"
                );
            }
        }
    }
    if manifest.vms.iter().any(|v| v.apic == ApicMode::X2Apic) {
        let v = qemu_version()?;
        if v < X2APIC_SINCE {
            bail!(
                "--apic x2apic under QEMU needs QEMU {}.{} or later (TCG emulates no x2APIC before); this machine has {}.{}: run x2APIC guests with --platform bochs",
                X2APIC_SINCE.0,
                X2APIC_SINCE.1,
                v.0,
                v.1
            );
        }
    }
    let dir = PathBuf::from("target/xtask/runs").join(format!("qemu-multiboot{}", slug(args)));
    fs::create_dir_all(&dir)?;
    let file = |name: &str| -> Result<PathBuf> {
        let (_, bytes) = images.iter().find(|(n, _)| n == name).with_context(|| format!("`{name}` was not built"))?;
        let path = dir.join(name);
        fs::write(&path, bytes)?;
        Ok(path)
    };
    let started = Instant::now();
    let mut vms = Vec::new();
    let mut failure = None;
    let mut last = None;
    let mut last_serial = PathBuf::new();
    for spec in &manifest.vms {
        // QEMU's -kernel boots a Linux bzImage (with -initrd) as it boots a multiboot kernel.
        let (kernel, modules) = if spec.linux.is_empty() {
            (file(&spec.kernel)?, spec.modules.iter().map(|m| file(m)).collect::<Result<Vec<_>>>()?)
        } else {
            let initrd = if spec.initrd.is_empty() { Vec::new() } else { vec![file(&spec.initrd)?] };
            (file(&spec.linux)?, initrd)
        };
        let serial = dir.join(format!("{}.serial.log", spec.name));
        let timeout = (spec.timeout_ms / 1000).clamp(5, args.timeout);
        let ended = boot(spec, &kernel, &modules, &serial, timeout, args.quiet)?;
        let log = String::from_utf8_lossy(&fs::read(&serial).unwrap_or_default()).into_owned();
        let met = ended.result == spec.expect.as_str();
        eprintln!(
            "xtask: qemu: VM {} ({} vCPUs, {}): {} ({}){}",
            spec.name,
            spec.vcpus,
            spec.apic.as_str(),
            ended.result,
            ended.reason,
            if met { String::new() } else { format!(", expected {}", spec.expect.as_str()) }
        );
        if !met {
            failure = failure.or(Some(format!(
                "VM {}: expected {}, got {} ({})",
                spec.name,
                spec.expect.as_str(),
                ended.result,
                ended.reason
            )));
            if args.quiet {
                tail(&log, 30);
            }
        }
        let result = VmResult::parse(ended.result).context("QEMU's end read as no VM result")?;
        vms.push(VmReport {
            // What the guest printed as `REPORT {json}`, kept as the kernel keeps a REPORT.
            reports: report_lines(&log).filter_map(|j| canonical(j.as_bytes()).ok()).collect(),
            ..VmReport::new(spec.name.clone(), spec.vcpus, result, Some(ended.reason.clone()), spec.expect, spec.apic)
        });
        last = Some(ended);
        last_serial = serial;
    }
    let result = if failure.is_none() { RunResult::Pass } else { RunResult::Fail };
    // The summary the hypervisor would have written, with only what QEMU's boots tell.
    let summary = HvSummary {
        platform: Some("qemu".into()),
        firmware: Some("multiboot".into()),
        ..HvSummary::judge(0, Some("QEMU booted the guests".into()), VmxFeatures::default(), 0, Vec::new(), vms)
    };
    let summary = HvSummary { result, reason: failure, ..summary };
    eprintln!("xtask: qemu in {:.1} s: {}", started.elapsed().as_secs_f64(), result.as_str());
    if let Some(path) = &args.json {
        fs::write(path, serde_json::to_string_pretty(&summary)? + "\n")?;
    }
    let wanted = args.expect.as_deref().unwrap_or("pass");
    let last = last.context("no VM to boot")?;
    Ok(Outcome {
        accepted: result == RunResult::Pass || result.as_str() == wanted,
        summary: Some(summary),
        exit_status: last.status,
        timed_out: last.timed_out,
        serial: last_serial,
    })
}

/// One QEMU boot of `spec`'s kernel, killed after `timeout` seconds.
fn boot(spec: &VmSpec, kernel: &Path, modules: &[PathBuf], serial: &Path, timeout: u64, quiet: bool) -> Result<Ended> {
    let mut cmdline = spec.cmdline.clone();
    if spec.apic == ApicMode::X2Apic {
        // What this hypervisor's firmware does when asked; here the kernel switches itself.
        cmdline = format!("{cmdline} apic=x2apic").trim().to_string();
    }
    let _ = fs::remove_file(serial);
    let mut c = Command::new("qemu-system-x86_64");
    // `max`: every feature TCG emulates (TSC-deadline among them); at least 32 MiB, as
    // SeaBIOS and QEMU's multiboot loader need some memory besides the kernel's.
    let cpu = if spec.x2apic { "max" } else { "max,-x2apic" };
    c.args(["-machine", "q35", "-cpu", cpu, "-m"]).arg(format!("{}M", spec.ram_mib.max(32)));
    c.arg("-smp").arg(spec.vcpus.to_string());
    c.args(["-display", "none", "-monitor", "none", "-no-reboot"]);
    c.arg("-serial").arg(format!("file:{}", serial.display()));
    c.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    if spec.pc_testdev {
        c.args(["-device", "pc-testdev"]);
    }
    c.arg("-kernel").arg(kernel).arg("-append").arg(&cmdline);
    if !modules.is_empty() {
        let list: Vec<String> = modules.iter().map(|m| m.display().to_string()).collect();
        c.arg("-initrd").arg(list.join(","));
    }
    c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let child = c.spawn().context("starting qemu-system-x86_64")?;
    let (status, timed_out) = supervise(child, serial, !quiet, timeout)?;
    Ok(judge(status, timed_out, timeout))
}

fn slug(args: &RunArgs) -> String {
    let what = match (&args.guest, &args.kernel) {
        (Some(g), _) => g.replace([',', ':', '+', '='], "_"),
        (None, Some(k)) => k.file_stem().unwrap_or_default().to_string_lossy().into_owned(),
        _ => String::new(),
    };
    format!("-{what}{}", args.apic.as_deref().map(|a| format!("-{a}")).unwrap_or_default())
}

fn tail(log: &str, n: usize) {
    let lines: Vec<&str> = log.lines().collect();
    eprintln!("--- last {} lines ---", n.min(lines.len()));
    for l in &lines[lines.len().saturating_sub(n)..] {
        eprintln!("{l}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isa_debug_exit_statuses_are_results() {
        let r = |s, t| {
            let e = judge(s, t, 9);
            (e.result, e.reason)
        };
        assert_eq!(r(Some(1), false), ("pass", "isa-debug-exit: 0".into()));
        assert_eq!(r(Some(99), false), ("fail", "isa-debug-exit: code 49".into()));
        assert!(r(Some(0), false).1.contains("without isa-debug-exit"));
        assert_eq!(r(None, true).0, "timeout");
    }

    #[test]
    fn report_lines_become_values() {
        let log = "hello\nREPORT {\"test\":\"hello\",\"vcpu\":1}\nREPORT not json\n[x] REPORT {}\n";
        assert_eq!(reports(log), vec![serde_json::json!({"test": "hello", "vcpu": 1})]);
    }
}
