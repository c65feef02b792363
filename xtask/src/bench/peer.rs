//! The KVM peer of `cargo xtask bench --peer kvm`: the same `ipi-bench` kernel under KVM, on the
//! same emulated CPU. One boot of the project's Bochs (the bench's CPU model, CPU count and
//! patches) runs Debian's kernel as KVM's host (`platform::kvm_host`), whose driver runs each
//! cell and prints KVM's counters as read at the guest's `SYNC` points. The figures are
//! computed here ([`record`]).

use anyhow::Result;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

use super::cell::Cell;
use crate::platform::bochs::Machine;
use crate::platform::kvm_host::{self, CONFIGS, HOST_CMDLINE, HOST_RAM_MIB, Image, KvmHost, image_with};
use crate::platform::linux_native;

/// Each QEMU run's limit, in seconds of the host's clock (which believes the 2.2 GHz of CPUID
/// 0x15 while Bochs retires far fewer instructions a second: one is about 50 s of wall time). A
/// cell takes about 0.2 s of it, mostly QEMU's start.
const CELL_TIMEOUT_S: u64 = 1;

/// The cells KVM runs: for each APIC mode and configuration the target spinning, halting with
/// an exit (KVM's default, with halt polling) and halting without one (`-overcommit cpu-pm=on`,
/// which asks KVM not to exit on HLT: KVM's form of HLT pass-through), and with 4 CPUs the
/// one-to-all broadcast.
pub fn cells(cpus: u32) -> Vec<Cell> {
    let mut out = Vec::new();
    for apic in ["xapic", "x2apic"] {
        for (config, _) in CONFIGS {
            for target in ["spin", "halt-passthrough", "halt-exit"] {
                out.push(Cell { apic, config, target, pattern: "unicast" });
            }
        }
        if cpus >= 4 {
            for (config, _) in CONFIGS {
                out.push(Cell { apic, config, target: "spin", pattern: "broadcast" });
            }
        }
    }
    out
}

/// The driver's plan line for `cell` (linux-guest/src/bin/kvm-peer.rs).
pub fn plan_line(cell: &Cell, iterations: u32) -> String {
    let vcpus = if cell.pattern == "broadcast" { 4 } else { 2 };
    let extra = if cell.target == "halt-passthrough" { "-overcommit cpu-pm=on" } else { "" };
    let mut append = format!(
        "iterations={iterations} target={} pattern={} sync=serial",
        if cell.target == "spin" { "spin" } else { "halt" },
        cell.pattern
    );
    if cell.apic == "x2apic" {
        append += " apic=x2apic";
    }
    format!("{}\t{}\t{vcpus}\t{extra}\t{append}\t{CELL_TIMEOUT_S}", cell.name(), kvm_host::params(cell.config))
}

/// Builds (Debian packages from the cache) the image that runs `cells`.
pub fn image(cells: &[Cell], iterations: u32) -> Result<Image> {
    let plan = cells.iter().map(|c| plan_line(c, iterations) + "\n").collect::<String>();
    image_with(&plan, Vec::new(), KvmHost::Bookworm)
}

/// Boots KVM's host on Bochs with `cpus` CPUs and runs `cells`: the records of the cells
/// measured, and a reason for each that was not.
pub fn measure(cells: &[Cell], iterations: u32, cpus: u32, echo: bool) -> Result<(Vec<Value>, Vec<String>)> {
    let img = image(cells, iterations)?;
    eprintln!("xtask bench: KVM's host: {}", img.describe);
    let machine =
        Machine { model: crate::platform::bochs::DEFAULT_MODEL, cpus, memory_mib: HOST_RAM_MIB, exclude: &[] };
    // The boot, and each cell's limit (in wall seconds: about 50 a second of the host's clock,
    // twice that to be safe).
    let timeout = 900 + cells.len() as u64 * CELL_TIMEOUT_S * 100;
    let out = linux_native::boot(
        &format!("kvm-peer-{cpus}"),
        &machine,
        &img.kernel,
        &img.initrd,
        HOST_CMDLINE,
        timeout,
        echo,
    )?;
    let mut records = Vec::new();
    let mut skipped = Vec::new();
    let mut seen = BTreeSet::new();
    for (name, r, module) in kvm_host::cell_reports(&out.reports).0 {
        let Some(cell) = cells.iter().find(|c| c.name() == name) else { continue };
        seen.insert(name.to_string());
        match record(cell, &module, r) {
            Ok(rec) => records.push(rec),
            Err(why) => skipped.push(format!("kvm {name}: {why}")),
        }
    }
    for c in cells.iter().filter(|c| !seen.contains(&c.name())) {
        skipped.push(format!(
            "kvm {}: no result (KVM's host on Bochs: {}; log {})",
            c.name(),
            out.detail,
            out.serial.display()
        ));
    }
    Ok((records, skipped))
}

/// One vCPU's scalar counters in a snapshot, by `cpu-index`.
fn counters(snapshot: &Value, cpus: &Value) -> BTreeMap<u64, BTreeMap<String, u64>> {
    let index_of =
        |path: &Value| cpus.as_array()?.iter().find(|c| c["qom-path"] == *path).and_then(|c| c["cpu-index"].as_u64());
    let mut out = BTreeMap::new();
    for v in snapshot["vcpus"].as_array().into_iter().flatten() {
        let Some(i) = index_of(&v["qom-path"]) else { continue };
        let stats = v["stats"].as_object().into_iter().flatten().filter_map(|(k, n)| Some((k.clone(), n.as_u64()?)));
        out.insert(i, stats.collect());
    }
    out
}

/// The cell's record from the driver's report `r` and the parameters `kvm_intel` said it runs
/// with; why not, if the cell was not measured. Exits per IPI: each vCPU's VM exits between the
/// two SYNC points over the IPIs, less those the measurement itself causes: the port I/O of the
/// guest's hand-shake (the loop does none) and the signal exits of QEMU's `query-stats`, which
/// reads each vCPU's counters on that vCPU's thread and so kicks it out of the guest. The
/// receiver's is that of the receiver with the most, as the guest counts it under ipiv-hv.
pub fn record(cell: &Cell, module: &Value, r: &Value) -> Result<Value, String> {
    if let Some(e) = r["error"].as_str() {
        return Err(e.to_string());
    }
    if r["timed_out"] == true {
        let at = r["stuck_at"].as_str().map(|s| format!("; its vCPUs: {}", s.replace('\n', " "))).unwrap_or_default();
        let said = if r["guest"].as_array().is_some_and(|g| !g.is_empty())
            || !r["snapshots"].as_array().is_none_or(Vec::is_empty)
        {
            "after the guest began"
        } else {
            "before the guest printed anything"
        };
        return Err(format!("QEMU still ran after {CELL_TIMEOUT_S} s of the host's clock, {said}{at}"));
    }
    // isa-debug-exit with 0: QEMU exits with (0 << 1) | 1.
    if r["status"] != 1 {
        let stderr = r["qemu_stderr"].as_str().unwrap_or("").trim();
        return Err(format!("QEMU ended with status {} ({stderr})", r["status"]));
    }
    let (apicv, ipiv) = (module["enable_apicv"].as_str().unwrap_or("?"), module["enable_ipiv"].as_str().unwrap_or("?"));
    let wanted = match cell.config {
        "ipiv-on" => ("Y", "Y"),
        "ipiv-off" => ("Y", "N"),
        _ => ("N", ipiv),
    };
    if (apicv, ipiv) != wanted {
        return Err(format!(
            "kvm_intel runs with enable_apicv={apicv} enable_ipiv={ipiv}, not what {} needs",
            cell.config
        ));
    }
    // QEMU also exits with 1 when it cannot start: its own words then say why.
    let report = r["guest"].as_array().and_then(|g| g.iter().find(|g| g["test"] == "ipi-bench")).ok_or_else(|| {
        format!("the guest printed no ipi-bench report (QEMU: {})", r["qemu_stderr"].as_str().unwrap_or("").trim())
    })?;
    if report["apic"] != cell.apic {
        return Err(format!("the guest ran in {} mode", report["apic"]));
    }
    let iterations = report["iterations"].as_u64().filter(|&n| n > 0).ok_or("no iterations in the guest's report")?;
    let snaps = r["snapshots"].as_array().ok_or("no counters read")?;
    let at = |name: &str| snaps.iter().find(|s| s["at"] == name).ok_or(format!("no counters at SYNC {name}"));
    let (begin, end) = (counters(at("begin")?, &r["cpus"]), counters(at("end")?, &r["cpus"]));
    let delta = |cpu: u64| -> Result<BTreeMap<String, u64>, String> {
        let (b, e) = (begin.get(&cpu), end.get(&cpu));
        let (b, e) = b.zip(e).ok_or(format!("no counters for vCPU {cpu}"))?;
        Ok(e.iter()
            .filter_map(|(k, v)| Some((k.clone(), v.checked_sub(*b.get(k)?)?)))
            .filter(|(_, d)| *d > 0)
            .collect())
    };
    let exits = |d: &BTreeMap<String, u64>| {
        let n = |k: &str| d.get(k).copied().unwrap_or(0);
        n("exits").saturating_sub(n("io_exits") + n("signal_exits"))
    };
    let sender = delta(0)?;
    let vcpus = end.keys().copied().filter(|&c| c != 0).collect::<Vec<_>>();
    let mut receiver = BTreeMap::new();
    for c in vcpus {
        let d = delta(c)?;
        if receiver.is_empty() || exits(&d) > exits(&receiver) {
            receiver = d;
        }
    }
    let per = |n: u64| (n as f64 * 1000.0 / iterations as f64).round() / 1000.0;
    let vm = |s: &Value| s["vm"]["exits"].as_u64();
    let mut rec = json!({
        "hypervisor": "kvm",
        "apic": cell.apic, "config": cell.config, "target": cell.target, "pattern": cell.pattern,
        "cycles": report["cycles"], "iterations": iterations,
        "exits_per_ipi": {"sender": per(exits(&sender)), "receiver": per(exits(&receiver))},
        "kvm_counters": {"sender": sender, "receiver": receiver},
        "kvm_intel": module,
        "kvm_pinning": r["pinning"],
    });
    if let Some((b, e)) = vm(at("begin")?).zip(vm(at("end")?)) {
        rec["kvm_vm_exits"] = json!(e.saturating_sub(b));
    }
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(config: &'static str) -> Cell {
        Cell { apic: "x2apic", config, target: "halt-exit", pattern: "unicast" }
    }

    /// vCPU `i`'s counters; each reading kicks each vCPU once (a signal exit).
    fn snap(at: &str, kicks: u64, exits: [u64; 2], io: [u64; 2], halts: [u64; 2]) -> Value {
        let v = |i: usize| {
            json!({"qom-path": format!("/machine/unattached/device[{i}]"), "provider": "kvm",
                "stats": {"exits": exits[i] + kicks, "io_exits": io[i], "halt_exits": halts[i], "signal_exits": kicks}})
        };
        json!({"at": at, "vcpus": [v(1), v(0)], "vm": {"exits": exits[0] + exits[1] + 2 * kicks}})
    }

    fn report(status: u64) -> Value {
        json!({"kvm_cell": "x", "status": status, "timed_out": false,
            "cpus": [{"cpu-index": 0, "qom-path": "/machine/unattached/device[0]"},
                     {"cpu-index": 1, "qom-path": "/machine/unattached/device[1]"}],
            "guest": [{"test": "ipi-bench", "apic": "x2apic", "iterations": 100,
                       "cycles": {"median": 2200, "min": 2000, "p99": 2500, "mean": 2210}}],
            "snapshots": [snap("begin", 1, [50, 70], [40, 0], [0, 5]), snap("end", 2, [130, 170], [120, 0], [0, 105])]})
    }

    #[test]
    fn exits_per_ipi_leave_out_the_hand_shakes_port_io() {
        let module = json!({"enable_apicv": "Y", "enable_ipiv": "Y"});
        let r = record(&cell("ipiv-on"), &module, &report(1)).unwrap();
        assert_eq!(r["hypervisor"], "kvm");
        assert_eq!(r["exits_per_ipi"]["sender"], 0.0, "81 exits: 80 port I/O and a kick");
        assert_eq!(r["exits_per_ipi"]["receiver"], 1.0);
        assert_eq!(r["kvm_counters"]["receiver"]["halt_exits"], 100);
        assert_eq!(r["kvm_vm_exits"], 182);
        assert_eq!(r["kvm_counters"]["receiver"]["signal_exits"], 1);
        assert_eq!(r["cycles"]["median"], 2200);
    }

    #[test]
    fn a_cell_that_did_not_run_as_asked_is_not_measured() {
        let on = json!({"enable_apicv": "Y", "enable_ipiv": "Y"});
        let off = json!({"enable_apicv": "Y", "enable_ipiv": "N"});
        let e = record(&cell("ipiv-on"), &off, &report(1)).unwrap_err();
        assert!(e.contains("enable_ipiv=N"), "{e}");
        assert!(record(&cell("ipiv-off"), &off, &report(1)).is_ok());
        assert!(record(&cell("apicv-off"), &json!({"enable_apicv": "N", "enable_ipiv": "N"}), &report(1)).is_ok());
        assert!(record(&cell("ipiv-on"), &on, &report(3)).unwrap_err().contains("status 3"));
        let mut r = report(1);
        r["snapshots"].as_array_mut().unwrap().pop();
        assert!(record(&cell("ipiv-on"), &on, &r).unwrap_err().contains("SYNC end"));
        let mut r = report(1);
        r["guest"][0]["apic"] = json!("xapic");
        assert!(record(&cell("ipiv-on"), &on, &r).is_err());
        let mut r = report(1);
        r["guest"] = json!([]);
        r["qemu_stderr"] = json!("qemu-system-x86_64: Could not access KVM kernel module");
        assert!(record(&cell("ipiv-on"), &on, &r).unwrap_err().contains("Could not access KVM"));
        let r = json!({"kvm_cell": "x", "error": "QMP socket: refused"});
        assert_eq!(record(&cell("ipiv-on"), &on, &r).unwrap_err(), "QMP socket: refused");
    }

    #[test]
    fn plan_lines_carry_the_cells_configuration() {
        let l = plan_line(
            &Cell { apic: "x2apic", config: "ipiv-off", target: "halt-passthrough", pattern: "unicast" },
            200,
        );
        let f: Vec<&str> = l.split('\t').collect();
        assert_eq!(f.len(), 6);
        assert_eq!(f[1], "enable_apicv=1 enable_ipiv=0");
        assert_eq!(f[2], "2");
        assert_eq!(f[3], "-overcommit cpu-pm=on");
        assert_eq!(f[4], "iterations=200 target=halt pattern=unicast sync=serial apic=x2apic");
        let b = plan_line(&Cell { apic: "xapic", config: "apicv-off", target: "spin", pattern: "broadcast" }, 50);
        assert!(b.contains("\t4\t\titerations=50 target=spin pattern=broadcast sync=serial\t"), "{b}");
        assert_eq!(cells(4).len(), 2 * (3 * 3 + 3));
        assert_eq!(cells(2).iter().filter(|c| c.pattern == "broadcast").count(), 0);
    }
}
