//! `cargo xtask bench --linux`: Debian's kernel with the project's IPI workload (wake-ups, TLB
//! shootdowns, membarrier) in a 4-vCPU VM with IPIv on and off, in xAPIC and x2APIC mode, and
//! the same kernel and initramfs booted directly on the same emulated CPU with no hypervisor
//! (the native baseline), in one run. Each part of the workload becomes one record: the guest's
//! operations and IPIs per second (its own REPORT) and, for the VMs, the hypervisor's exits in
//! that part's census window (hvcore::exits::census): exits per guest IPI, per second, and by
//! reason.

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};
use std::fs;

use hvcore::exits::census::Window;
use hvcore::summary::VmReport;
use hvcore::vmx::exit_reason;

use super::args::BenchArgs;
use super::plot;
use super::targets::{TargetCheck, print_targets, targets_json};
use crate::platform::launch;
use crate::platform::spec::{Platform, RunArgs};

/// The VM's vCPUs and RAM (the native run gets the same CPUs and RAM).
const VCPUS: u32 = 4;
const RAM_MIB: u32 = 256;
/// IPI-related exits per guest IPI the issue allows with IPIv on and physical destinations.
pub const IPIV_ON_MAX: f64 = 0.05;
/// "About one per IPI" without IPIv: every ICR write exits, and little else is IPI-related.
pub const IPIV_OFF_RANGE: (f64, f64) = (0.8, 1.5);
/// The exits that come with IPIs: the sender's ICR write (the exit path; `ipi_sent_by_exit`
/// counts one per ICR-write exit), and the receiver's HLT, interrupt-window and NMI-window exits.
const IPI_REASONS: [u16; 3] = [exit_reason::HLT, exit_reason::INTERRUPT_WINDOW, exit_reason::NMI_WINDOW];

/// One configuration: `native` (no hypervisor), `ipiv-on` or `ipiv-off`, in an APIC mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub config: &'static str,
    pub apic: &'static str,
}

/// Native first (Linux picks xAPIC there: without interrupt remapping or a hypervisor it does
/// not turn x2APIC on), then the VMs.
pub fn configs() -> Vec<Config> {
    let mut v = vec![Config { config: "native", apic: "xapic" }];
    for apic in ["xapic", "x2apic"] {
        for config in ["ipiv-on", "ipiv-off"] {
            v.push(Config { config, apic });
        }
    }
    v
}

/// The workload's counts (wake-up hops, mprotect rounds, membarriers) for `n` iterations.
pub fn counts(n: u32) -> String {
    format!("wl_wake={n} wl_tlb={} wl_mb={n}", (n / 4).max(1))
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// One record from the guest's REPORT of a part and, in a VM, the census window that ends at
/// it (`{"us": N, "exits": {...}}`).
pub fn record(c: Config, report: &Value, window: Option<&Window>) -> Value {
    let ipis = &report["guest_ipis"];
    // A TLB shootdown is a function-call IPI: TLB counts a subset of CAL.
    let guest_ipis = num(&ipis["RES"]) + num(&ipis["CAL"]);
    // Rates per emulated second of the TSC, the one clock every configuration shares (the
    // guests' own clocks were calibrated differently: linux-guest's Timer).
    let seconds = num(&report["tsc_ticks"]) / crate::platform::bochs::IPS as f64;
    let per_s = |x: f64| if seconds > 0.0 { json!(x / seconds) } else { Value::Null };
    let mut r = json!({
        "config": c.config, "apic": c.apic, "workload": report["workload"],
        "cpus": report["cpus"], "ops": report["ops"], "tsc_ticks": report["tsc_ticks"], "seconds": seconds,
        "guest_clock_seconds": report["seconds"], "ops_per_s": per_s(num(&report["ops"])),
        "guest_ipis": ipis, "guest_ipis_per_s": per_s(guest_ipis),
        "exits_per_ipi": null, "exits_per_s": null, "exits_by_reason": null, "ipi_exits": null,
    });
    let Some(w) = window else { return r };
    let e = &w.exits;
    let by_reason: Map<String, Value> = (e.by_reason.iter().enumerate())
        .filter(|(_, n)| **n != 0)
        .map(|(i, n)| (exit_reason::NAMES[i].to_string(), json!(n)))
        .collect();
    let total = e.total() as f64;
    let ipi_exits = (e.ipi_sent_by_exit + IPI_REASONS.iter().map(|&r| e.by_reason[r as usize]).sum::<u64>()) as f64;
    let secs = w.us as f64 / 1e6;
    r["ipi_exits"] = json!(ipi_exits);
    r["exits_per_ipi"] = if guest_ipis > 0.0 { json!(ipi_exits / guest_ipis) } else { Value::Null };
    r["exits_per_s"] = if secs > 0.0 { json!(total / secs) } else { Value::Null };
    r["exits_by_reason"] = Value::Object(by_reason);
    r["window_us"] = json!(w.us);
    r
}

/// The records of one VM run: each part's result REPORT with its census window.
pub fn vm_records(c: Config, vm: &VmReport) -> Result<Vec<Value>> {
    let out: Vec<Value> = (vm.report_values().iter().enumerate())
        .filter(|(_, r)| r["test"] == "linux-workload" && r["workload"].is_string())
        .map(|(k, r)| record(c, r, vm.report_exits.get(k)))
        .collect();
    if out.is_empty() {
        bail!("the VM reported no workload results");
    }
    Ok(out)
}

/// Adds `vs_native` (operations per second over the native run's, same workload) to each VM
/// record.
pub fn add_ratios(records: &mut [Value]) {
    let native: Vec<(Value, f64)> = records
        .iter()
        .filter(|r| r["config"] == "native")
        .map(|r| (r["workload"].clone(), num(&r["ops_per_s"])))
        .collect();
    for r in records.iter_mut().filter(|r| r["config"] != "native") {
        if let Some((_, n)) = native.iter().find(|(w, n)| *w == r["workload"] && *n > 0.0) {
            r["vs_native"] = json!(num(&r["ops_per_s"]) / n);
        }
    }
}

/// The targets, per APIC mode and workload.
pub fn check_targets(records: &[Value]) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    for r in records.iter().filter(|r| r["config"] != "native") {
        let what = format!(
            "{} {} {}",
            r["apic"].as_str().unwrap_or(""),
            r["config"].as_str().unwrap_or(""),
            r["workload"].as_str().unwrap_or("")
        );
        let e = r["exits_per_ipi"].as_f64();
        let detail = e
            .map(|e| {
                format!(
                    "{e:.3} IPI-related exits per guest IPI ({} exits, {} IPIs)",
                    r["ipi_exits"],
                    num(&r["guest_ipis"]["RES"]) + num(&r["guest_ipis"]["CAL"])
                )
            })
            .unwrap_or_default();
        let (what, met) = if r["config"] == "ipiv-on" {
            (format!("{what}: <= {IPIV_ON_MAX} IPI-related exits per guest IPI"), e.map(|e| e <= IPIV_ON_MAX))
        } else {
            let (lo, hi) = IPIV_OFF_RANGE;
            (format!("{what}: about 1 IPI-related exit per guest IPI ({lo}..{hi})"), e.map(|e| (lo..=hi).contains(&e)))
        };
        out.push(TargetCheck { what, met, detail });
    }
    out
}

pub fn table(records: &[Value]) -> String {
    let mut s = format!(
        "{:<9} {:<7} {:<11} {:>8} {:>10} {:>9} {:>11} {:>9} {:>10}  {}\n",
        "config",
        "apic",
        "workload",
        "ops",
        "ops/s",
        "vs-native",
        "guest-IPI/s",
        "exits/IPI",
        "exits/s",
        "exits by reason"
    );
    let f = |v: &Value, p: usize| v.as_f64().map(|x| format!("{x:.p$}")).unwrap_or_else(|| "-".into());
    for r in records {
        let reasons = r["exits_by_reason"]
            .as_object()
            .map(|m| {
                let mut v: Vec<(&String, u64)> = m.iter().map(|(k, v)| (k, v.as_u64().unwrap_or(0))).collect();
                v.sort_by_key(|e| std::cmp::Reverse(e.1));
                v.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
            })
            .unwrap_or_default();
        s += &format!(
            "{:<9} {:<7} {:<11} {:>8} {:>10} {:>9} {:>11} {:>9} {:>10}  {}\n",
            r["config"].as_str().unwrap_or(""),
            r["apic"].as_str().unwrap_or(""),
            r["workload"].as_str().unwrap_or(""),
            r["ops"],
            f(&r["ops_per_s"], 0),
            f(&r["vs_native"], 2),
            f(&r["guest_ipis_per_s"], 0),
            f(&r["exits_per_ipi"], 3),
            f(&r["exits_per_s"], 0),
            reasons
        );
    }
    s += "rates per emulated second: TSC ticks / Bochs' ips (the TSC ticks once per instruction per CPU: \
          path lengths, not wall time); exits/IPI: the sender's ICR-write exits plus HLT, \
          interrupt-window and NMI-window exits, per IPI the guest counted (RES + CAL of /proc/interrupts)\n";
    s
}

/// `--platform nested-kvm`: the Linux VM as an L2, under this hypervisor as an L1 under KVM on
/// Bochs, in both APIC modes on the path nested KVM allows (`ipiv-off`: posted interrupts, the
/// ICR write exits; nested KVM offers no IPIv), in one boot of KVM's host. Its records beside
/// those of `bench --linux` on Bochs directly are in docs/results.md.
fn run_nested(a: &BenchArgs, append: &str) -> Result<bool> {
    let configs: Vec<Config> =
        ["xapic", "x2apic"].into_iter().map(|apic| Config { config: "ipiv-off", apic }).collect();
    let cases: Vec<crate::platform::nested::Case> = configs
        .iter()
        .map(|c| crate::platform::nested::Case {
            name: format!("linux-{}-{}", c.config, c.apic),
            args: RunArgs {
                linux: true,
                vcpus: VCPUS,
                linux_ram: RAM_MIB,
                memory: 512,
                append: Some(append.to_string()),
                apic: Some(c.apic.into()),
                ipiv: Some("off".into()),
                // Every L2 exit is an L1 exit through L0: far longer than on Bochs directly.
                timeout: a.timeout.max(3600),
                ..RunArgs::new(Platform::NestedKvm, VCPUS)
            },
        })
        .collect();
    let host = crate::platform::nested::Host {
        label: "bench-linux",
        kvm_host: a.kvm_host,
        kvm_params: a.kvm_params.clone(),
        cpu_model: crate::platform::bochs::DEFAULT_MODEL.into(),
        cpus: VCPUS,
        // Bochs' model stays whole: KVM's host needs MONITOR/MWAIT exiting (kvm_intel refuses
        // to load without it), and its command line already keeps AMX and LA57 from itself
        // and so from its guests (`platform::kvm_host::HOST_CMDLINE`); the L1 hides MONITOR/MWAIT.
        exclude: &[],
        echo: false,
    };
    let outcomes = crate::platform::nested::run_cases(&cases, &host)?;
    let mut records = Vec::new();
    let mut failed = Vec::new();
    for (c, o) in configs.iter().zip(outcomes) {
        let vm = o.outcome.summary.as_ref().and_then(|s| s.vm("linux"));
        let log = fs::read_to_string(&o.outcome.serial).unwrap_or_default();
        match vm {
            Some(vm) if o.outcome.accepted => match vm_records(*c, vm) {
                Ok(mut r) => {
                    for x in &mut r {
                        // The census window's microseconds are the L1's, whose TSC rate was
                        // calibrated against QEMU's PIT, which follows KVM's host's clock (the
                        // TSC at CPUID's 2.2 GHz), not Bochs' instruction rate: per emulated
                        // second, as `ops_per_s`, the part's own TSC ticks are the measure.
                        let total: f64 = x["exits_by_reason"].as_object().map_or(0.0, |m| m.values().map(num).sum());
                        let seconds = num(&x["seconds"]);
                        x["exits_per_s"] = if seconds > 0.0 { json!(total / seconds) } else { Value::Null };
                        x["platform"] = json!("nested-kvm");
                        x["kvm"] = o.outcome.summary.as_ref().and_then(|s| s.kvm.clone()).unwrap_or_default();
                    }
                    records.extend(r);
                }
                Err(e) => failed.push(format!("{} {}: {e:#}", c.config, c.apic)),
            },
            vm => {
                // How far it got: the last lines of the L2's console.
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                failed.push(format!(
                    "{} {}: {} after {:.1} s of KVM's host's clock; last lines: {}",
                    c.config,
                    c.apic,
                    vm.map(|v| format!("{} ({:?})", v.result.as_str(), v.reason))
                        .unwrap_or_else(|| "no summary".into()),
                    o.host_ms as f64 / 1000.0,
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                ))
            }
        }
    }
    println!(
        "\nLinux IPI workload as an L2 under nested KVM on bochs ({VCPUS} vCPUs, {RAM_MIB} MiB, {append})\n{}",
        table(&records)
    );
    for f in &failed {
        println!("not measured: {f}");
    }
    let no_ipiv =
        "ipiv-on: nested KVM offers no tertiary controls (IA32_VMX_PROCBASED_CTLS bit 49 clear), so no IPIv for an L1";
    println!("not measured: {no_ipiv}");
    let checks = check_targets(&records);
    let ok = print_targets(&checks) && failed.is_empty();
    failed.push(no_ipiv.to_string());
    if let Some(path) = &a.json {
        let doc = json!({"platform": "nested-kvm", "kind": "linux", "workload_counts": append,
            "vcpus": VCPUS, "ram_mib": RAM_MIB, "kvm_host": a.kvm_host.suite(),
            "host_cmdline": crate::platform::kvm_host::HOST_CMDLINE,
            "seconds_unit": "emulated seconds: the part's TSC ticks / Bochs' ips (its TSC ticks once per instruction per CPU)", "tsc_hz": crate::platform::bochs::IPS,
            "records": records, "not_measured": failed,
            "targets": targets_json(&checks)});
        fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")?;
        eprintln!("xtask bench: wrote {}", path.display());
    }
    Ok(ok)
}

/// Runs every configuration, one boot each, and prints the table and the targets.
pub fn run(a: &BenchArgs) -> Result<bool> {
    if a.platform == Platform::NestedKvm {
        let n = a.iterations.unwrap_or(if a.full { 10_000 } else { 2_000 });
        return run_nested(a, &counts(n));
    }
    if a.platform != Platform::Bochs {
        bail!("--linux runs on the project's Bochs (the only platform here with VMX and IPIv)");
    }
    let n = a.iterations.unwrap_or(if a.full { 10_000 } else { 2_000 });
    let append = counts(n);
    let exclude: Vec<&'static str> = crate::platform::bochs::LINUX_EXCLUDED_FEATURES.iter().map(|(f, _)| *f).collect();
    let mut records = Vec::new();
    let configs = configs();
    for (i, c) in configs.iter().enumerate() {
        eprintln!("xtask bench --linux: [{}/{}] {} {} ({append})", i + 1, configs.len(), c.config, c.apic);
        if c.config == "native" {
            let o = crate::platform::linux_native::run(VCPUS, RAM_MIB, Some(&append), a.timeout, false)?;
            if !o.passed {
                bail!("native Linux run failed: {}", o.detail);
            }
            let parts: Vec<Value> =
                o.reports.iter().filter(|r| r["workload"].is_string()).map(|r| record(*c, r, None)).collect();
            if parts.is_empty() {
                bail!("native Linux run reported no workload results");
            }
            records.extend(parts);
            continue;
        }
        let args = RunArgs {
            linux: true,
            vcpus: VCPUS,
            linux_ram: RAM_MIB,
            append: Some(append.clone()),
            apic: Some(c.apic.into()),
            ipiv: Some(if c.config == "ipiv-on" { "on" } else { "off" }.into()),
            timeout: a.timeout,
            bochs_exclude: exclude.clone(),
            ..RunArgs::new(a.platform, a.cpus)
        };
        let outcome = launch::run(&args)?;
        let summary = outcome.summary.with_context(|| format!("{} {}: no summary", c.config, c.apic))?;
        let vm = summary.vm("linux").context("no linux VM in the summary")?;
        if !outcome.accepted {
            bail!("{} {}: the Linux VM did not pass: {} ({:?})", c.config, c.apic, vm.result.as_str(), vm.reason);
        }
        let log = fs::read_to_string(&outcome.serial).unwrap_or_default();
        let want = format!("smpboot: Total of {VCPUS} processors activated");
        if !log.contains(&want) {
            bail!("{} {}: the guest's console never said \"{want}\"", c.config, c.apic);
        }
        records.extend(vm_records(*c, vm)?);
    }
    add_ratios(&mut records);
    println!("\nLinux IPI workload on bochs ({VCPUS} vCPUs, {RAM_MIB} MiB, {append})\n{}", table(&records));
    let checks = check_targets(&records);
    let ok = print_targets(&checks);
    if let Some(path) = &a.json {
        let doc = json!({"platform": a.platform.name(), "kind": "linux", "workload_counts": append,
            "vcpus": VCPUS, "ram_mib": RAM_MIB, "kernel": crate::provision::debian::debian(&crate::provision::deps::cache_dir())?.kernel_package,
            "excluded_cpu_features": exclude,
            "seconds_unit": "emulated seconds: the part's TSC ticks / Bochs' ips (its TSC ticks once per instruction per CPU)", "tsc_hz": crate::platform::bochs::IPS,
            "records": records,
            "targets": targets_json(&checks)});
        fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")?;
        eprintln!("xtask bench: wrote {}", path.display());
    }
    if let Some(path) = &a.plot {
        let rows: Vec<plot::Bar> = records
            .iter()
            .map(|r| {
                let v = num(&r["ops_per_s"]);
                plot::Bar {
                    label: format!(
                        "{} {} {}",
                        r["workload"].as_str().unwrap_or(""),
                        r["config"].as_str().unwrap_or(""),
                        r["apic"].as_str().unwrap_or("")
                    ),
                    value: v,
                    whisker: v,
                    colour: usize::from(r["apic"] == "x2apic"),
                }
            })
            .collect();
        plot::hbars(path, &rows, "Linux IPI workload: operations per guest second (bochs)", "operations per second")?;
        eprintln!("xtask bench: wrote {}", path.display());
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A part's REPORT: 100 operations in `ticks` TSC ticks.
    fn report(workload: &str, res: u64, cal: u64, ticks: u64) -> Value {
        json!({"test": "linux-workload", "workload": workload, "cpus": 4, "ops": 100, "seconds": 0.1, "tsc_ticks": ticks,
               "ops_per_s": 1000.0, "guest_ipis": {"RES": res, "CAL": cal, "TLB": 0}, "guest_ipis_per_s": 1000.0})
    }

    #[test]
    fn every_configuration_once_native_first() {
        let c = configs();
        assert_eq!(c.len(), 5);
        assert_eq!(c[0], Config { config: "native", apic: "xapic" });
        for apic in ["xapic", "x2apic"] {
            for config in ["ipiv-on", "ipiv-off"] {
                assert_eq!(c.iter().filter(|x| **x == Config { config, apic }).count(), 1);
            }
        }
        assert_eq!(counts(2000), "wl_wake=2000 wl_tlb=500 wl_mb=2000");
    }

    #[test]
    fn records_take_exits_per_ipi_from_the_census_window() {
        let c = Config { config: "ipiv-off", apic: "x2apic" };
        let w = serde_json::from_value(json!({"us": 500_000, "exits": {"wrmsr": 120, "io": 30, "hlt": 5, "ipi_sent_by_exit": 100, "msr_write_icr": 100, "timer_writes": 20}})).unwrap();
        let r = record(c, &report("wake", 10, 90, crate::platform::bochs::IPS / 10), Some(&w));
        assert_eq!(
            (r["ops_per_s"].clone(), r["guest_ipis_per_s"].clone()),
            (json!(1000.0), json!(1000.0)),
            "per TSC second"
        );
        assert_eq!(r["guest_clock_seconds"], 0.1);
        assert_eq!(r["ipi_exits"], 105.0);
        assert_eq!(r["exits_per_ipi"], 1.05);
        assert_eq!(r["exits_per_s"], 310.0, "155 exits by reason in half a second; extras are not reasons");
        assert_eq!(r["exits_by_reason"], json!({"wrmsr": 120, "io": 30, "hlt": 5}));
        let native = record(
            Config { config: "native", apic: "xapic" },
            &report("wake", 10, 90, crate::platform::bochs::IPS / 20),
            None,
        );
        assert!(native["exits_per_ipi"].is_null() && native["exits_by_reason"].is_null());
        let mut all = vec![native, r];
        add_ratios(&mut all);
        assert_eq!(all[1]["vs_native"], 0.5);
        assert!(all[0].get("vs_native").is_none());
    }

    #[test]
    fn vm_records_pair_each_result_with_its_window() {
        let vm = |more: Value| {
            let mut v = json!({"name": "linux", "vcpus": 4, "result": "pass", "reason": null, "expect": "pass", "apic_mode": "xapic"});
            v.as_object_mut().unwrap().extend(more.as_object().unwrap().clone());
            serde_json::from_str::<VmReport>(&v.to_string()).unwrap()
        };
        let full = vm(json!({
            "reports": [{"test": "linux-workload", "begin": "wake"}, report("wake", 0, 100, 10),
                        {"test": "linux-workload", "begin": "tlb"}, report("tlb", 0, 50, 10)],
            "report_exits": [{"us": 1, "exits": {"io": 9999}}, {"us": 1000, "exits": {"io": 3}},
                             {"us": 1, "exits": {}}, {"us": 1000, "exits": {"apic_write": 50, "ipi_sent_by_exit": 50}}]
        }));
        let r = vm_records(Config { config: "ipiv-off", apic: "xapic" }, &full).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0]["exits_by_reason"], json!({"io": 3}), "the boot's window is not the part's");
        assert_eq!(r[0]["exits_per_ipi"], 0.0);
        assert_eq!(r[1]["exits_per_ipi"], 1.0);
        assert!(
            vm_records(Config { config: "ipiv-off", apic: "xapic" }, &vm(json!({"reports": [], "report_exits": []})))
                .is_err()
        );
    }

    #[test]
    fn targets_hold_ipiv_on_near_zero_and_ipiv_off_near_one() {
        let mk = |config: &'static str, e: f64| {
            let mut r = record(Config { config, apic: "x2apic" }, &report("tlb", 0, 100, 1), None);
            r["exits_per_ipi"] = json!(e);
            r
        };
        let checks =
            check_targets(&[mk("ipiv-on", 0.01), mk("ipiv-off", 1.02), mk("ipiv-on", 0.2), mk("ipiv-off", 0.1)]);
        assert_eq!(
            checks.iter().map(|c| c.met).collect::<Vec<_>>(),
            [Some(true), Some(true), Some(false), Some(false)]
        );
        let missing = record(Config { config: "ipiv-on", apic: "xapic" }, &report("tlb", 0, 0, 1), None);
        assert_eq!(check_targets(&[missing])[0].met, None);
    }
}
