//! `--platform nested-kvm`: the hypervisor as an L1 under KVM, on the project's Bochs. One
//! Bochs boot (the bench's CPU model and patches) runs Debian's kernel as KVM's host, with the
//! image of `bench --peer kvm` (`platform::kvm_host`: Debian's QEMU, `kvm_intel`) plus one disk
//! image of the hypervisor per case, each built as `run --platform qemu-kvm` builds it. The
//! driver (`linux-guest/src/bin/kvm-peer.rs`) runs each under QEMU with `-enable-kvm -cpu host`
//! and reports its console; each case is then judged like every other run, by its own
//! HV-SUMMARY and QEMU's isa-debug-exit status (`spec::judge`), and its summary gains `kvm`:
//! the host kernel and the parameters `kvm_intel` ran that case with.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::fs;
use std::path::PathBuf;
use std::time::Instant;

use super::bochs::Machine;
use super::kvm_host::{self, ImageFile, KvmHost};
use super::linux_native;
use super::spec::{self, Judged, Outcome, RunArgs};

/// One L1 run: a name (unique within a boot) and the run arguments its image is built from
/// (CPUs become QEMU's `-smp`, memory its `-m`).
pub struct Case {
    pub name: String,
    pub args: RunArgs,
}

/// How KVM's host boots.
pub struct Host {
    /// Names the boot's folder under target/xtask/runs (`bochs-nested-kvm-SUITE-LABEL`), so a
    /// test, a bench and a run can go on side by side.
    pub label: &'static str,
    pub kvm_host: KvmHost,
    /// `kvm_intel` parameters (space-separated; empty: KVM's defaults).
    pub kvm_params: String,
    pub cpu_model: String,
    /// Bochs' CPUs: at least the most any case gives QEMU, so each vCPU thread has a CPU.
    pub cpus: u32,
    /// CPU features Bochs hides from its model (the Linux benchmark's, for Linux as an L2).
    pub exclude: &'static [&'static str],
    pub echo: bool,
}

/// The RAM of KVM's host besides the L1's: its kernel, the initramfs (QEMU, its libraries and
/// the cases' disk images).
const HOST_RAM_MIB: u32 = 1024;

/// A case's limit in seconds of KVM's host's clock. That clock runs on the TSC, as the L1's and
/// the L2's do, so guest seconds and host seconds agree; under Bochs one is 25 to 45 wall
/// seconds. The hypervisor's own watchdogs end a stuck VM first; this ends a stuck L1.
pub fn host_timeout_s(args: &RunArgs) -> u64 {
    (args.timeout / 20).max(8)
}

/// The driver's plan line for `case`, its disk image at `/nested/NAME.img` in the image.
fn plan_line(case: &Case, params: &str) -> String {
    format!(
        "{}\t{params}\t{}\t-m {}\t\t{}\t/nested/{}.img\t",
        case.name,
        case.args.cpus,
        case.args.memory,
        host_timeout_s(&case.args),
        case.name
    )
}

/// What one case produced, as `run::run` returns it.
pub struct CaseOutcome {
    pub outcome: Outcome,
    /// QEMU's start to its end, in milliseconds of KVM's host's clock.
    pub host_ms: u64,
}

/// Boots KVM's host once and runs `cases` in order: one outcome per case, in the same order.
pub fn run_cases(cases: &[Case], host: &Host) -> Result<Vec<CaseOutcome>> {
    let mut names = std::collections::BTreeSet::new();
    for c in cases {
        if !names.insert(c.name.as_str()) || c.name.contains(['\t', '\n', '/', ' ']) {
            bail!("nested case name {:?} is repeated or unusable as a file name", c.name);
        }
        if c.args.cpus > host.cpus {
            bail!("case {} gives QEMU {} CPUs, KVM's host has {}", c.name, c.args.cpus, host.cpus);
        }
    }
    let kernel = crate::provision::image::build_kernel()?;
    let mut files: Vec<ImageFile> = Vec::new();
    let mut plan = String::new();
    for c in cases {
        let (config, guests) = spec::compose(&c.args, "debug-port")?;
        let dir = case_dir(c);
        fs::create_dir_all(&dir)?;
        let img = dir.join("disk.img");
        crate::provision::image::make_image(&kernel, &config, &guests, false, &img)?;
        files.push((format!("nested/{}.img", c.name), 0o644, fs::read(&img)?));
        plan += &plan_line(c, &host.kvm_params);
        plan += "\n";
    }
    let img = kvm_host::image_with(&plan, files, host.kvm_host)?;
    eprintln!("xtask: nested-kvm: KVM's host: {}", img.describe);
    let max_mem = cases.iter().map(|c| c.args.memory).max().unwrap_or(0);
    let machine =
        Machine { model: &host.cpu_model, cpus: host.cpus, memory_mib: HOST_RAM_MIB + max_mem, exclude: host.exclude };
    // The host's boot, then each case: its limit in wall seconds (about 45 a host second).
    let timeout = 900 + cases.iter().map(|c| host_timeout_s(&c.args) * 45).sum::<u64>();
    let started = Instant::now();
    let out = linux_native::boot(
        &format!("nested-kvm-{}-{}", host.kvm_host.suite(), host.label),
        &machine,
        &img.kernel,
        &img.initrd,
        kvm_host::HOST_CMDLINE,
        timeout,
        host.echo,
    )?;
    eprintln!(
        "xtask: nested-kvm: KVM's host on bochs ended after {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        out.detail
    );
    let mut module = Value::Null;
    let mut by_name = std::collections::BTreeMap::new();
    for r in &out.reports {
        if r.get("kvm_module").is_some() {
            module = r["parameters"].clone();
            continue;
        }
        if let Some(name) = r["kvm_cell"].as_str() {
            by_name.insert(name.to_string(), (r.clone(), module.clone()));
        }
    }
    let mut outcomes = Vec::new();
    for c in cases {
        let (r, params) = by_name.remove(&c.name).unwrap_or_else(|| {
            (
                json!({"error": format!("no result from KVM's host ({}; log {})", out.detail, out.serial.display())}),
                module.clone(),
            )
        });
        outcomes.push(judge_case(c, &r, &params, &img.describe)?);
    }
    Ok(outcomes)
}

fn case_dir(c: &Case) -> PathBuf {
    PathBuf::from("target/xtask/runs").join(format!("{}-{}", c.args.slug(), c.name))
}

/// The judgement of the driver's report `r` on case `c`: its console, QEMU's status and
/// whether it timed out, judged by `spec::judge`, with a driver error as a problem and the
/// summary's `kvm` added (`params`: what `kvm_intel` said it runs with; `host`: the image).
fn judge_report(c: &Case, r: &Value, params: &Value, host: &str) -> (Judged, String, Option<i32>, bool) {
    let lines: Vec<&str> = r["output"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let log = lines.join("\n") + "\n";
    let timed_out = r["timed_out"] == true;
    let status = r["status"].as_i64().map(|s| s as i32);
    let limit = format!("{} s of KVM's host's clock", host_timeout_s(&c.args));
    let mut j = spec::judge(&c.args, &log, status, timed_out, &limit);
    if let Some(e) = r["error"].as_str() {
        j.problems.push(e.to_string());
        j.accepted = false;
    }
    if let Some(s) = j.summary.as_mut() {
        s.kvm = Some(json!({"host": host, "kvm_intel": params, "asked": c.args.kvm_params,
            "qemu": format!("-enable-kvm -cpu host -smp {} -m {}", c.args.cpus, c.args.memory)}));
    }
    (j, log, status, timed_out)
}

/// A case's outcome from the driver's report `r`: its console (written to the case's
/// `serial.log`), QEMU's exit status, the judgement of `spec::judge`.
fn judge_case(c: &Case, r: &Value, params: &Value, host: &str) -> Result<CaseOutcome> {
    let (j, log, status, timed_out) = judge_report(c, r, params, host);
    let lines: Vec<&str> = log.lines().collect();
    let serial = case_dir(c).join("serial.log");
    fs::write(&serial, &log)?;
    let verdict = j.result.map_or("no result", |r| r.as_str());
    let reason = j.summary.as_ref().and_then(|s| s.reason.as_deref()).map(|r| format!(" ({r})")).unwrap_or_default();
    let host_ms = r["wall_ms"].as_u64().unwrap_or(0);
    eprintln!(
        "xtask: nested-kvm {}: {verdict}{reason} ({:.2} s of KVM's host's clock)",
        c.name,
        host_ms as f64 / 1000.0
    );
    if !j.accepted {
        for p in &j.problems {
            eprintln!("xtask: nested-kvm {}: {p}", c.name);
        }
        for l in &lines[lines.len().saturating_sub(25)..] {
            eprintln!("  {l}");
        }
        if let Some(e) = r["qemu_stderr"].as_str().filter(|e| !e.trim().is_empty()) {
            eprintln!("  QEMU: {}", e.trim());
        }
    }
    if let (Some(path), Some(s)) = (&c.args.json, &j.summary) {
        fs::write(path, serde_json::to_string_pretty(s)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(CaseOutcome {
        outcome: Outcome { summary: j.summary, exit_status: status, timed_out, accepted: j.accepted, serial },
        host_ms,
    })
}

/// `cargo xtask run --platform nested-kvm`: the run as one case.
pub fn run(args: &RunArgs) -> Result<Outcome> {
    if args.uefi {
        bail!("--uefi: KVM's host on Bochs has SeaBIOS only; nested-kvm boots the BIOS image");
    }
    if args.cpus == 0 || args.cpus > 16 {
        bail!("--cpus for nested-kvm: 1 to 16 (each is a vCPU thread of KVM's host on Bochs)");
    }
    let host = Host {
        label: "run",
        kvm_host: args.kvm_host,
        kvm_params: args.kvm_params.clone(),
        cpu_model: args.cpu_model.clone(),
        cpus: args.cpus,
        exclude: &[],
        echo: !args.quiet,
    };
    let case = Case { name: "run".into(), args: args.clone() };
    let mut out = run_cases(std::slice::from_ref(&case), &host)?;
    Ok(out.remove(0).outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::spec::Platform;

    fn case() -> Case {
        Case { name: "ipi".into(), args: RunArgs { memory: 256, ..RunArgs::new(Platform::NestedKvm, 2) } }
    }

    #[test]
    fn the_plan_line_boots_the_case_image_with_its_cpus_and_memory() {
        let line = plan_line(&case(), "enable_apicv=0");
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f, ["ipi", "enable_apicv=0", "2", "-m 256", "", "15", "/nested/ipi.img", ""]);
    }

    #[test]
    fn a_case_is_judged_by_its_own_summary_and_qemu_status() {
        let params = json!({"enable_apicv": "Y", "nested": "Y"});
        let pass = r#"HV-SUMMARY {"result":"pass","reason":null,"vms":[]}"#;
        // isa-debug-exit: QEMU's status is (code << 1) | 1, and a pass writes 0x10.
        let r = json!({"kvm_cell": "ipi", "output": ["booting", pass], "status": 33, "timed_out": false});
        let (j, log, status, timed_out) = judge_report(&case(), &r, &params, "linux 6.12");
        assert!(j.accepted, "{:?}", j.problems);
        assert_eq!((status, timed_out), (Some(33), false));
        assert!(log.contains("booting"));
        let s = j.summary.unwrap();
        let kvm = s.kvm.unwrap();
        assert_eq!((s.platform.as_deref(), kvm["kvm_intel"]["nested"].as_str()), (Some("nested-kvm"), Some("Y")));
        // The summary and QEMU's status must agree; a driver error fails the case.
        let r = json!({"output": [pass], "status": 35, "timed_out": false});
        assert!(!judge_report(&case(), &r, &params, "").0.accepted);
        let r = json!({"output": [pass], "status": 33, "timed_out": false, "error": "QMP socket: refused"});
        let j = judge_report(&case(), &r, &params, "").0;
        assert!(!j.accepted && j.problems.iter().any(|p| p.contains("QMP")));
        let r = json!({"output": ["half a line"], "timed_out": true});
        let j = judge_report(&case(), &r, &params, "").0;
        assert!(!j.accepted && j.problems.iter().any(|p| p.contains("timed out after 15 s of KVM's host's clock")));
    }
}
