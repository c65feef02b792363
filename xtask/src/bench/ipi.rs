//! `cargo xtask bench`: the IPI round trip in every configuration — APIC mode × {native,
//! ipiv-on, ipiv-off} × target {spin, halt-passthrough, halt-exit}, plus a one-to-all broadcast
//! — with exits per IPI and the hypervisor's cost of an exit-path IPI. Each cell is one boot:
//! the `ipi-bench` guest in a VM, or the hypervisor's own native run. On QEMU, where there is no
//! VMX, the same `ipi-bench` kernel also runs as the machine's own kernel ("bare", booted by
//! QEMU's `-kernel`): the reference PC's figure for that binary. Prints the table, checks the
//! targets, writes JSON and an SVG plot.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::fs;
use std::path::PathBuf;

use super::args::{BenchArgs, Peer};
use super::cell::{Cell, matrix};
use super::targets::{TargetCheck, print_targets, targets_json};
use super::{peer, plot};
use crate::platform::launch;
use crate::platform::spec::{Outcome, Platform};
use hvcore::summary::{HvSummary, RunResult};

/// A measured cell, as written to the JSON file.
pub fn record(cell: &Cell, summary: &HvSummary) -> Result<Value> {
    // "bare" is the guest kernel on the reference PC without a hypervisor: native too.
    let hypervisor = if matches!(cell.config, "native" | "bare") { "native" } else { "ipiv-hv" };
    let mut rec = json!({"hypervisor": hypervisor, "apic": cell.apic, "config": cell.config, "target": cell.target,
        "pattern": cell.pattern});
    if cell.config == "native" {
        let n = summary.native.as_ref().context("the hypervisor reported no native measurement")?;
        rec["cycles"] = json!(n.cycles);
        rec["iterations"] = json!(n.iterations);
        rec["exits_per_ipi"] = json!({"sender": 0.0, "receiver": 0.0});
        return Ok(rec);
    }
    let vm = summary.vms.first().context("the summary has no VM")?;
    let report = vm
        .report_values()
        .into_iter()
        .find(|r| r["test"] == "ipi-bench")
        .with_context(|| format!("no ipi-bench report (VM {}: {:?})", vm.result.as_str(), vm.reason))?;
    rec["cycles"] = report["cycles"].clone();
    rec["iterations"] = report["iterations"].clone();
    rec["interrupt_path"] = json!(vm.interrupt_path);
    let milli = |k: &str| report["exits_milli_per_ipi"][k].as_u64().unwrap_or(0) as f64 / 1000.0;
    rec["exits_per_ipi"] = json!({"sender": milli("sender"), "receiver": milli("receiver")});
    if let Some(per) = vm.vcpu_exits.first().and_then(|s| s.ipi_exit_ticks.checked_div(s.ipi_exits_timed)) {
        rec["hypervisor_ticks_per_exit_ipi"] = json!(per);
    }
    Ok(rec)
}

fn median(r: &Value) -> Option<u64> {
    r["cycles"]["median"].as_u64()
}

/// This hypervisor's (or the native) record of a cell; a peer's records are not these.
fn find<'a>(records: &'a [Value], apic: &str, config: &str, target: &str, pattern: &str) -> Option<&'a Value> {
    find_of(records, &["ipiv-hv", "native"], apic, config, target, pattern)
}

fn find_of<'a>(
    records: &'a [Value],
    hypervisors: &[&str],
    apic: &str,
    config: &str,
    target: &str,
    pattern: &str,
) -> Option<&'a Value> {
    records.iter().find(|r| {
        hypervisors.iter().any(|h| r["hypervisor"] == *h)
            && r["apic"] == apic
            && r["config"] == config
            && r["target"] == target
            && r["pattern"] == pattern
    })
}

/// The targets: exits per IPI for ipiv-on and ipiv-off, ipiv-on within 10 % of native,
/// and the exit path at most 500 hypervisor instructions (`exit_path_limit`).
pub fn check_targets(records: &[Value], exit_path_limit: u64, timing_targets: bool) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    let exits = |r: &Value, k: &str| r["exits_per_ipi"][k].as_f64().unwrap_or(f64::NAN);
    for apic in ["xapic", "x2apic"] {
        for target in ["spin", "halt-passthrough"] {
            let r = find(records, apic, "ipiv-on", target, "unicast");
            out.push(TargetCheck {
                what: format!("{apic} ipiv-on {target}: 0 exits per IPI on sender and receiver"),
                met: r.map(|r| exits(r, "sender") == 0.0 && exits(r, "receiver") == 0.0),
                detail: r
                    .map(|r| format!("sender {}, receiver {}", exits(r, "sender"), exits(r, "receiver")))
                    .unwrap_or_default(),
            });
        }
        let r = find(records, apic, "ipiv-off", "spin", "unicast");
        out.push(TargetCheck {
            what: format!("{apic} ipiv-off spin: exactly 1 exit per IPI on the sender, 0 on a running receiver"),
            met: r.map(|r| exits(r, "sender") == 1.0 && exits(r, "receiver") == 0.0),
            detail: r
                .map(|r| format!("sender {}, receiver {}", exits(r, "sender"), exits(r, "receiver")))
                .unwrap_or_default(),
        });
        if timing_targets {
            let (on, native) =
                (find(records, apic, "ipiv-on", "spin", "unicast"), find(records, apic, "native", "spin", "unicast"));
            let pair = on.and_then(median).zip(native.and_then(median));
            out.push(TargetCheck {
                what: format!("{apic} ipiv-on spin median <= 1.10 x native median"),
                met: pair.map(|(on, nat)| on as f64 <= 1.10 * nat as f64),
                detail: pair
                    .map(|(on, nat)| format!("{on} vs native {nat} ({:.2}x)", on as f64 / nat as f64))
                    .unwrap_or_default(),
            });
            let ticks = find(records, apic, "ipiv-off", "spin", "unicast")
                .and_then(|r| r["hypervisor_ticks_per_exit_ipi"].as_u64());
            out.push(TargetCheck {
                what: format!("{apic} exit-path IPI: <= {exit_path_limit} hypervisor ticks from VM exit to VM entry"),
                met: ticks.map(|t| t <= exit_path_limit),
                detail: ticks.map(|t| format!("{t}")).unwrap_or_default(),
            });
        }
    }
    out
}

pub fn table(records: &[Value], unit: &str) -> String {
    let mut s = format!(
        "{:<7} {:<7} {:<9} {:<17} {:<10} {:>8} {:>8} {:>8} {:>8} {:>6} {:>7} {:>7} {:>8}\n",
        "hv",
        "apic",
        "config",
        "target",
        "pattern",
        "median",
        "min",
        "p99",
        "mean",
        "iters",
        "exits/S",
        "exits/R",
        "hv-path"
    );
    for r in records {
        let c = &r["cycles"];
        let n = |v: &Value| v.as_u64().map(|x| x.to_string()).unwrap_or_else(|| "-".into());
        s += &format!(
            "{:<7} {:<7} {:<9} {:<17} {:<10} {:>8} {:>8} {:>8} {:>8} {:>6} {:>7} {:>7} {:>8}\n",
            r["hypervisor"].as_str().unwrap_or(""),
            r["apic"].as_str().unwrap_or(""),
            r["config"].as_str().unwrap_or(""),
            r["target"].as_str().unwrap_or(""),
            r["pattern"].as_str().unwrap_or(""),
            n(&c["median"]),
            n(&c["min"]),
            n(&c["p99"]),
            n(&c["mean"]),
            n(&r["iterations"]),
            r["exits_per_ipi"]["sender"].as_f64().map(|x| format!("{x:.2}")).unwrap_or_default(),
            r["exits_per_ipi"]["receiver"].as_f64().map(|x| format!("{x:.2}")).unwrap_or_default(),
            n(&r["hypervisor_ticks_per_exit_ipi"]),
        );
    }
    s += &format!(
        "cycles in {unit}; exits/S, exits/R: VM exits per IPI on sender and receiver; hv-path: hypervisor ticks per exit-path IPI\n"
    );
    s
}

/// "bochs-instructions" under Bochs (its TSC counts instructions per CPU), "tsc" elsewhere.
pub fn cycles_unit(platform: Platform) -> &'static str {
    match platform {
        // Nested, the L2's TSC is still Bochs' (KVM offsets it, without scaling).
        Platform::Bochs | Platform::NestedKvm => "bochs-instructions",
        _ => "tsc",
    }
}

/// Runs the cells, one boot each, showing progress; ipiv-on cells on a CPU without IPIv are
/// listed as not measured.
pub fn measure(a: &BenchArgs, cells: &[Cell], iterations: u32) -> Result<(Vec<Value>, Vec<String>)> {
    let dir = PathBuf::from("target/xtask/bench");
    fs::create_dir_all(&dir)?;
    let mut records = Vec::new();
    let mut skipped = Vec::new();
    for (i, cell) in cells.iter().enumerate() {
        eprintln!("xtask bench: [{}/{}] {} ({iterations} iterations)", i + 1, cells.len(), cell.name());
        let args = cell.run_args(a, iterations, &dir)?;
        let outcome = match launch::run(&args) {
            Ok(o) => o,
            Err(e) if cell.config == "ipiv-on" && format!("{e:#}").contains("IPI virtualization") => {
                skipped.push(format!("{}: {e:#}", cell.name()));
                continue;
            }
            Err(e) if cell.config == "bare" && format!("{e:#}").contains("x2APIC") => {
                skipped.push(format!("{}: {e:#}", cell.name()));
                continue;
            }
            Err(e) => return Err(e.context(format!("bench cell {}", cell.name()))),
        };
        match judge_cell(cell, outcome)? {
            Ok(r) => records.push(r),
            Err(why) => skipped.push(why),
        }
    }
    Ok((records, skipped))
}

/// What a cell's summary says about it: its record, or why it was not measured; an error when
/// the run failed for another reason than a missing capability.
fn judge_cell(cell: &Cell, outcome: Outcome) -> Result<Result<Value, String>> {
    let Some(summary) = outcome.summary else {
        let how = if outcome.timed_out {
            "timed out".to_string()
        } else {
            format!("the emulator exited with {:?}", outcome.exit_status)
        };
        bail!("bench cell {}: no summary ({how}; log {})", cell.name(), outcome.serial.display());
    };
    let reason = summary.reason.as_deref().unwrap_or("");
    let no_vmx = summary.result == RunResult::Unsupported;
    // A CPU without the cell's interrupt path refuses its VM (`cannot run on this CPU`).
    if (cell.config != "native" && reason.contains("cannot run on this CPU")) || (cell.config != "native" && no_vmx) {
        return Ok(Err(format!("{}: {reason}", cell.name())));
    }
    if let Some(n) = summary.native.as_ref().filter(|n| cell.config == "native" && n.apic.as_str() != cell.apic) {
        return Ok(Err(format!("{}: the host APIC ran in {} mode (no x2APIC here)", cell.name(), n.apic.as_str())));
    }
    // A platform without VMX (QEMU TCG) still measures the native round trip.
    if !outcome.accepted && !(cell.config == "native" && no_vmx) {
        bail!("bench cell {} failed: {reason}", cell.name());
    }
    let mut rec = record(cell, &summary)?;
    rec["platform"] = json!(summary.platform);
    if let Some(kvm) = &summary.kvm {
        rec["kvm"] = kvm.clone();
    }
    Ok(Ok(rec))
}

/// `--platform nested-kvm`: every cell in one boot of KVM's host on Bochs (the hypervisor as
/// an L1 under KVM), beside the same cells on Bochs directly. The L1 refuses the cells nested
/// KVM cannot carry (IPIv: no tertiary controls), and they are listed with its reason.
fn measure_nested(a: &BenchArgs, cells: &[Cell], iterations: u32) -> Result<(Vec<Value>, Vec<String>)> {
    let dir = PathBuf::from("target/xtask/bench");
    fs::create_dir_all(&dir)?;
    let mut cases = Vec::new();
    for cell in cells {
        let mut args = cell.run_args(a, iterations, &dir)?;
        args.memory = 256;
        cases.push(crate::platform::nested::Case { name: cell.name().replace(' ', "-"), args });
    }
    let host = crate::platform::nested::Host {
        label: "bench",
        kvm_host: a.kvm_host,
        kvm_params: a.kvm_params.clone(),
        cpu_model: a.cpu_model.clone(),
        cpus: a.cpus,
        exclude: &[],
        echo: false,
    };
    eprintln!("xtask bench: nested-kvm: {} cells in one boot of KVM's host ({iterations} iterations)", cells.len());
    let outcomes = crate::platform::nested::run_cases(&cases, &host)?;
    let (mut records, mut skipped) = (Vec::new(), Vec::new());
    for (cell, o) in cells.iter().zip(outcomes) {
        match judge_cell(cell, o.outcome) {
            Ok(Ok(r)) => records.push(r),
            Ok(Err(why)) => skipped.push(format!("nested-kvm {why}")),
            Err(e) => skipped.push(format!("nested-kvm {e:#}")),
        }
    }
    eprintln!("xtask bench: the same cells on bochs directly");
    let direct = BenchArgs { platform: Platform::Bochs, ..a.clone() };
    let (more, not) = measure(&direct, cells, iterations)?;
    records.extend(more);
    skipped.extend(not.into_iter().map(|s| format!("bochs {s}")));
    Ok((records, skipped))
}

/// Nested beside direct: per cell the two medians, their ratio and the exits per IPI each
/// hypervisor counted (the L1's own count under nested KVM).
pub fn nested_comparison(records: &[Value]) -> Vec<Value> {
    let on = |platform: &str, c: &Value| {
        records.iter().find(|r| {
            r["platform"] == platform
                && ["apic", "config", "target", "pattern"].iter().all(|k| r[*k] == c[*k])
                && r["hypervisor"] == c["hypervisor"]
        })
    };
    records
        .iter()
        .filter(|r| r["platform"] == "nested-kvm")
        .map(|n| {
            let d = on("bochs", n);
            let (nm, dm) = (median(n), d.and_then(median));
            json!({
                "hypervisor": n["hypervisor"], "apic": n["apic"], "config": n["config"], "target": n["target"],
                "pattern": n["pattern"], "interrupt_path": n["interrupt_path"],
                "bochs": dm, "nested-kvm": nm,
                "nested_vs_bochs": dm.filter(|d| *d > 0).zip(nm).map(|(d, n)| n as f64 / d as f64),
                "exits_per_ipi": {"bochs": d.map(|d| d["exits_per_ipi"].clone()), "nested-kvm": n["exits_per_ipi"]},
            })
        })
        .collect()
}

pub fn nested_table(rows: &[Value], unit: &str) -> String {
    let mut s = format!(
        "{:<7} {:<7} {:<16} {:<17} {:<10} {:>8} {:>9} {:>7} {:>11} {:>11}\n",
        "hv", "apic", "config", "target", "pattern", "bochs", "nested", "ratio", "exits bochs", "exits nest"
    );
    let n = |v: &Value| v.as_u64().map(|x| x.to_string()).unwrap_or_else(|| "-".into());
    let f = |v: &Value| v.as_f64().map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
    let e =
        |v: &Value| if v.is_null() { "-".to_string() } else { format!("{}/{}", f(&v["sender"]), f(&v["receiver"])) };
    for r in rows {
        s += &format!(
            "{:<7} {:<7} {:<16} {:<17} {:<10} {:>8} {:>9} {:>7} {:>11} {:>11}\n",
            r["hypervisor"].as_str().unwrap_or(""),
            r["apic"].as_str().unwrap_or(""),
            r["config"].as_str().unwrap_or(""),
            r["target"].as_str().unwrap_or(""),
            r["pattern"].as_str().unwrap_or(""),
            n(&r["bochs"]),
            n(&r["nested-kvm"]),
            f(&r["nested_vs_bochs"]),
            e(&r["exits_per_ipi"]["bochs"]),
            e(&r["exits_per_ipi"]["nested-kvm"]),
        );
    }
    s += &format!(
        "medians of the round trip in {unit} (the L2's TSC is Bochs' under KVM too: path lengths through L2, L1 and L0); \
         native: the hypervisor's own round trip, nested as a KVM guest; exits: VM exits per IPI (sender/receiver) as this \
         hypervisor counted them\n"
    );
    s
}

/// The peer's configuration of the same design as ours: KVM with APICv off emulates the APIC
/// and injects every interrupt, as this hypervisor's injection path does.
fn peer_config(config: &str) -> &str {
    if config == "injection" { "apicv-off" } else { config }
}

fn our_config(peer_config: &str) -> &str {
    if peer_config == "apicv-off" { "injection" } else { peer_config }
}

/// Every cell this hypervisor or a peer measured, with the other's figure beside it and the
/// native one: medians, the ratios ours/native and ours/peer, and both hypervisors' exits per
/// IPI (`null` where one did not measure the cell). Our `injection` cells pair with the peer's
/// `apicv-off` (`peer_config` in the row). The native round trip of a halting target is the
/// native "halt-passthrough" cell (natively a HLT is a HLT).
pub fn comparison(records: &[Value], peer: &str) -> Vec<Value> {
    let median_of = |r: Option<&Value>| r.and_then(median);
    let ratio = |a: Option<u64>, b: Option<u64>| a.zip(b).filter(|(_, b)| *b > 0).map(|(a, b)| a as f64 / b as f64);
    let order = |list: &[&str], v: &str| list.iter().position(|x| *x == v).unwrap_or(list.len());
    let mut keys: Vec<(String, String, String, String)> = Vec::new();
    for r in records.iter().filter(|r| r["hypervisor"] == "ipiv-hv" || r["hypervisor"] == peer) {
        let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
        let config = if r["hypervisor"] == peer { our_config(&s("config")).to_string() } else { s("config") };
        let key = (s("apic"), s("pattern"), config, s("target"));
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys.sort_by_key(|(apic, pattern, config, target)| {
        (
            order(&["xapic", "x2apic"], apic),
            order(&["unicast", "broadcast"], pattern),
            order(&["ipiv-on", "ipiv-off", "virtual-delivery", "injection"], config),
            order(&["spin", "halt-passthrough", "halt-exit"], target),
        )
    });
    keys.iter()
        .map(|(apic, pattern, config, target)| {
            let native_target = if target == "spin" { "spin" } else { "halt-passthrough" };
            let native = median_of(find_of(records, &["native"], apic, "native", native_target, "unicast"));
            let ours = find_of(records, &["ipiv-hv"], apic, config, target, pattern);
            let theirs = find_of(records, &[peer], apic, peer_config(config), target, pattern);
            let (ours_m, peer_m) = (median_of(ours), median_of(theirs));
            json!({
                "apic": apic, "config": config, "peer_config": peer_config(config), "target": target, "pattern": pattern,
                "native": native, "ipiv-hv": ours_m, peer: peer_m,
                "ours_vs_native": ratio(ours_m, native), format!("ours_vs_{peer}"): ratio(ours_m, peer_m),
                format!("{peer}_vs_native"): ratio(peer_m, native),
                "exits_per_ipi": {"ipiv-hv": ours.map(|o| o["exits_per_ipi"].clone()),
                    peer: theirs.map(|t| t["exits_per_ipi"].clone())},
            })
        })
        .collect()
}

/// The side-by-side table of [`comparison`]'s rows.
pub fn comparison_table(rows: &[Value], peer: &str, unit: &str) -> String {
    let mut s = format!(
        "{:<7} {:<9} {:<17} {:<10} {:>7} {:>8} {:>8} {:>9} {:>9} {:>11} {:>11}\n",
        "apic",
        "config",
        "target",
        "pattern",
        "native",
        "ipiv-hv",
        peer,
        "ours/nat",
        format!("ours/{peer}"),
        "exits ours",
        format!("exits {peer}")
    );
    let n = |v: &Value| v.as_u64().map(|x| x.to_string()).unwrap_or_else(|| "-".into());
    let f = |v: &Value| v.as_f64().map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
    let e = |v: &Value| {
        if v.is_null() { "-".to_string() } else { format!("{}/{}", f(&v["sender"]), f(&v["receiver"])) }
    };
    for r in rows {
        s += &format!(
            "{:<7} {:<9} {:<17} {:<10} {:>7} {:>8} {:>8} {:>9} {:>9} {:>11} {:>11}\n",
            r["apic"].as_str().unwrap_or(""),
            r["config"].as_str().unwrap_or(""),
            r["target"].as_str().unwrap_or(""),
            r["pattern"].as_str().unwrap_or(""),
            n(&r["native"]),
            n(&r["ipiv-hv"]),
            n(&r[peer]),
            f(&r["ours_vs_native"]),
            f(&r[format!("ours_vs_{peer}")]),
            e(&r["exits_per_ipi"]["ipiv-hv"]),
            e(&r["exits_per_ipi"][peer]),
        );
    }
    s += &format!(
        "medians of the round trip in {unit}; ours/nat, ours/{peer}: this hypervisor's median over the native one and over {peer}'s; exits: VM exits per IPI, sender/receiver\n"
    );
    s
}

pub fn run(a: &BenchArgs) -> Result<bool> {
    if a.peer.is_some() && a.platform != Platform::Bochs {
        bail!("--peer kvm runs KVM inside the project's Bochs (its CPU has VMX and IPIv): use --platform bochs");
    }
    let iterations = a.iterations.unwrap_or(if a.full { 2000 } else { 200 });
    let cells = matrix(a.cpus, a.platform);
    let nested = a.platform == Platform::NestedKvm;
    let (mut records, mut skipped) =
        if nested { measure_nested(a, &cells, iterations)? } else { measure(a, &cells, iterations)? };
    if a.peer == Some(Peer::Kvm) {
        let cells = peer::cells(a.cpus);
        eprintln!("xtask bench: KVM: {} cells in one boot of KVM's host ({iterations} iterations)", cells.len());
        let (kvm, not) = peer::measure(&cells, iterations, a.cpus, false)?;
        records.extend(kvm);
        skipped.extend(not);
    }
    let unit = cycles_unit(a.platform);
    let model = if a.platform == Platform::Bochs { format!(", CPU model {}", a.cpu_model) } else { String::new() };
    println!("\nIPI round trip on {} ({} CPUs{model})\n{}", a.platform.name(), a.cpus, table(&records, unit));
    let rows = if a.peer.is_some() { comparison(&records, "kvm") } else { Vec::new() };
    if !rows.is_empty() {
        println!("\nside by side with KVM on the same emulated CPU\n{}", comparison_table(&rows, "kvm", unit));
    }
    let nested_rows = if nested { nested_comparison(&records) } else { Vec::new() };
    if nested {
        println!("\nnested under KVM beside bochs directly\n{}", nested_table(&nested_rows, unit));
    }
    for s in &skipped {
        println!("not measured: {s}");
    }
    // The targets are about this hypervisor on the CPU itself: the direct cells.
    let direct: Vec<Value> = records.iter().filter(|r| r["platform"] != "nested-kvm").cloned().collect();
    let checks = check_targets(&direct, 500, true);
    let ok = print_targets(&checks);
    if let Some(path) = &a.json {
        let mut doc = json!({"platform": a.platform.name(), "cycles_unit": unit, "records": records,
            "targets": targets_json(&checks), "not_measured": skipped});
        if matches!(a.platform, Platform::Bochs | Platform::NestedKvm) {
            doc["cpu_model"] = json!(a.cpu_model);
        }
        if nested {
            doc["nested_comparison"] = json!(nested_rows);
            doc["kvm_host"] = json!(a.kvm_host.suite());
        }
        if a.peer.is_some() {
            doc["comparison"] = json!(rows);
        }
        fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")?;
        eprintln!("xtask bench: wrote {}", path.display());
    }
    if let Some(path) = &a.plot {
        plot::bars(path, &records, unit, a.platform.name())?;
        eprintln!("xtask bench: wrote {}", path.display());
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm_summary(median: u64, sender_milli: u64, receiver_milli: u64) -> HvSummary {
        crate::summary::from_json(json!({"result": "pass", "reason": null, "native": null, "vms": [{"name": "b",
            "vcpus": 2, "result": "pass", "reason": null, "expect": "pass", "apic_mode": "xapic",
            "vcpu_exits": [{"ipi_exit_ticks": 1400, "ipi_sent_by_exit": 12, "ipi_exits_timed": 10}, {}],
            "reports": [{"test": "ipi-bench", "iterations": 100,
                "cycles": {"min": 1, "median": median, "p99": 3, "mean": 2},
                "exits_milli_per_ipi": {"sender": sender_milli, "receiver": receiver_milli}}]}]}))
    }

    #[test]
    fn matrix_covers_every_cell_once() {
        let m = matrix(4, Platform::Bochs);
        assert_eq!(m.len(), 2 * (2 + 3 + 3 + 3 + 3 + 2));
        assert!(m.iter().any(|c| c.apic == "xapic" && c.config == "injection" && c.target == "halt-exit"));
        assert!(m.iter().any(|c| c.apic == "x2apic" && c.config == "ipiv-off" && c.target == "halt-exit"));
        assert_eq!(matrix(2, Platform::Bochs).iter().filter(|c| c.pattern == "broadcast").count(), 0);
        let q = matrix(4, Platform::Qemu);
        assert_eq!(q.iter().filter(|c| c.config == "bare").count(), 4, "the guest kernel on the bare reference PC");
    }

    #[test]
    fn records_come_from_the_guest_report_and_the_counters() {
        let cell = Cell { apic: "xapic", config: "ipiv-off", target: "spin", pattern: "unicast" };
        let r = record(&cell, &vm_summary(226, 1000, 0)).unwrap();
        assert_eq!(r["cycles"]["median"], 226);
        assert_eq!(r["exits_per_ipi"]["sender"], 1.0);
        assert_eq!(r["hypervisor_ticks_per_exit_ipi"], 140);
        let native = Cell { config: "native", ..cell.clone() };
        let s = crate::summary::from_json(
            json!({"result": "pass", "reason": null, "vms": [], "native": {"apic": "xapic",
            "target": "spin", "cycles": {"min": 20, "median": 24, "p99": 25, "mean": 24, "samples": 100}, "iterations": 100}}),
        );
        assert_eq!(record(&native, &s).unwrap()["cycles"]["median"], 24);
        let none = crate::summary::from_json(json!({"result": "pass", "reason": null, "vms": [], "native": null}));
        assert!(record(&native, &none).is_err());
    }

    #[test]
    fn targets_are_checked_and_missing_cells_are_not_measured() {
        let off = |apic| {
            let c = Cell { apic, config: "ipiv-off", target: "spin", pattern: "unicast" };
            record(&c, &vm_summary(226, 1000, 0)).unwrap()
        };
        let on = |apic, median| {
            let c = Cell { apic, config: "ipiv-on", target: "spin", pattern: "unicast" };
            record(&c, &vm_summary(median, 0, 0)).unwrap()
        };
        let native = json!({"hypervisor": "native", "apic": "xapic", "config": "native", "target": "spin", "pattern": "unicast",
            "cycles": {"median": 40}, "exits_per_ipi": {"sender": 0.0, "receiver": 0.0}});
        let records = vec![off("xapic"), on("xapic", 43), native];
        let checks = check_targets(&records, 500, true);
        let get = |s: &str| checks.iter().find(|c| c.what.starts_with(s)).unwrap();
        assert_eq!(get("xapic ipiv-off spin").met, Some(true));
        assert_eq!(get("xapic ipiv-on spin:").met, Some(true));
        assert_eq!(get("xapic ipiv-on spin median").met, Some(true), "43 <= 1.1 * 40");
        assert_eq!(get("xapic exit-path").met, Some(true));
        assert_eq!(get("xapic ipiv-on halt-passthrough").met, None);
        assert_eq!(get("x2apic ipiv-off").met, None);
        let slow = vec![on("xapic", 45), records[2].clone()];
        let checks = check_targets(&slow, 500, true);
        assert_eq!(checks.iter().find(|c| c.what.starts_with("xapic ipiv-on spin median")).unwrap().met, Some(false));
        assert!(table(&records, "bochs-instructions").contains("cycles in bochs-instructions"));
    }

    #[test]
    fn the_comparison_puts_native_ours_and_the_peer_side_by_side() {
        let rec = |hv: &str, config: &str, target: &str, median: u64, s: f64, r: f64| {
            json!({"hypervisor": hv, "apic": "x2apic", "config": config, "target": target, "pattern": "unicast",
                "cycles": {"median": median}, "exits_per_ipi": {"sender": s, "receiver": r}})
        };
        let records = vec![
            rec("native", "native", "spin", 10, 0.0, 0.0),
            rec("native", "native", "halt-passthrough", 12, 0.0, 0.0),
            rec("ipiv-hv", "ipiv-on", "halt-exit", 260, 0.0, 0.55),
            rec("kvm", "ipiv-on", "halt-exit", 2080, 0.0, 1.0),
            rec("kvm", "apicv-off", "spin", 5000, 1.0, 1.0),
        ];
        let rows = comparison(&records, "kvm");
        assert_eq!(rows.len(), 2, "one row per cell either measured");
        let r = &rows[0];
        assert_eq!((r["native"].as_u64(), r["ipiv-hv"].as_u64(), r["kvm"].as_u64()), (Some(12), Some(260), Some(2080)));
        assert_eq!(r["ours_vs_kvm"], 0.125);
        assert_eq!(r["exits_per_ipi"]["kvm"]["receiver"], 1.0);
        assert_eq!(rows[1]["config"], "injection", "KVM's apicv-off is the counterpart of our injection path");
        assert_eq!(rows[1]["peer_config"], "apicv-off");
        assert!(rows[1]["ipiv-hv"].is_null() && rows[1]["ours_vs_kvm"].is_null(), "no injection cell of ours here");
        assert_eq!(rows[1]["kvm_vs_native"], 500.0);
        let only_ours = comparison(&records[..3], "kvm");
        assert_eq!(only_ours.len(), 1);
        assert!(only_ours[0]["kvm"].is_null() && only_ours[0]["exits_per_ipi"]["kvm"].is_null());
        let t = comparison_table(&rows, "kvm", "bochs-instructions");
        assert!(t.contains("0.12") && t.contains("0.00/1.00") && t.contains("bochs-instructions"), "{t}");
        assert!(find(&records, "x2apic", "ipiv-on", "halt-exit", "unicast").unwrap()["hypervisor"] == "ipiv-hv");
    }
}
