//! `cargo xtask conformance --peer kvm`: the same kvm-unit-tests binaries under KVM, on the same
//! emulated CPU. One boot of the project's Bochs (the conformance runs' CPU model, 4 CPUs)
//! runs Debian's kernel as KVM's host (the image of `bench --peer kvm`, `platform::kvm_host`), and
//! its driver runs each entry under Debian's QEMU with `-enable-kvm -cpu host` plus the entry's
//! CPU flags and arguments, 128 MiB, the same environment module (`TEST_DEVICE=0`: neither side
//! is given QEMU's test devices) and KVM's default `kvm_intel` (APICv and IPIv on). The guest's
//! console comes back in the driver's reports and is read as ours is (`kut`).

use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::kut::{self, Entry, Outcome};
use super::plan::{ConformanceArgs, ENV, Job};
use super::report;
use crate::platform::bochs::Machine;
use crate::platform::kvm_host::{self, ImageFile};

/// KVM's configuration: its defaults on a CPU with IPIv.
pub const KVM_PARAMS: &str = "enable_apicv=1 enable_ipiv=1";
/// Each test's limit in seconds of the host's clock (about a wall minute each under Bochs: the
/// host believes CPUID's 2.2 GHz while Bochs retires far fewer instructions; an idle machine's
/// time runs ahead, so a test stuck halted ends sooner).
const TEST_TIMEOUT_S: u64 = 10;
/// Bochs' CPUs for KVM's host: the most vCPUs a test asks for (3) and one for QEMU's threads.
const HOST_CPUS: u32 = 4;

/// QEMU's arguments for an entry under KVM: `-cpu host` with the entry's CPU flags (its CPU
/// model would hide what the host has; ours is the host model filtered, so both sides see the
/// same CPU), and its other parameters as they are.
pub fn qemu_args(e: &Entry) -> String {
    let mut out = Vec::new();
    let mut words = e.qemu_params.split_whitespace();
    while let Some(w) = words.next() {
        if w == "-cpu" {
            let flags: Vec<&str> = words.next().unwrap_or_default().split(',').skip(1).collect();
            out.push("-cpu".to_string());
            out.push(std::iter::once("host").chain(flags).collect::<Vec<_>>().join(","));
        } else {
            out.push(w.to_string());
        }
    }
    out.join(" ")
}

/// The driver's plan line for `e` (linux-guest/src/bin/kvm-peer.rs).
pub fn plan_line(e: &Entry) -> String {
    format!(
        "{}\t{KVM_PARAMS}\t{}\t{}\t{}\t{TEST_TIMEOUT_S}\t/kut/{}\t/kut/env",
        e.name,
        e.smp.max(1),
        qemu_args(e),
        e.args,
        e.file
    )
}

/// The entries the jobs name, once each.
fn wanted<'a>(entries: &'a [Entry], jobs: &[Job]) -> Vec<&'a Entry> {
    let names: BTreeSet<&str> = jobs.iter().map(|j| j.entry.name.as_str()).collect();
    entries.iter().filter(|e| names.contains(e.name.as_str())).collect()
}

pub fn run(entries: &[Entry], jobs: &[Job], dir: &Path, args: &ConformanceArgs) -> Result<Vec<Value>> {
    let entries = wanted(entries, jobs);
    let plan: String = entries.iter().map(|e| plan_line(e) + "\n").collect();
    let mut files: Vec<ImageFile> = vec![("kut/env".into(), 0o644, ENV.as_bytes().to_vec())];
    let binaries: BTreeSet<&str> = entries.iter().map(|e| e.file.as_str()).collect();
    for b in binaries {
        let data = std::fs::read(dir.join(b)).with_context(|| format!("reading {}", dir.join(b).display()))?;
        files.push((format!("kut/{b}"), 0o644, data));
    }
    let img = kvm_host::image_with(&plan, files, kvm_host::KvmHost::Bookworm)?;
    eprintln!("xtask conformance: KVM's host: {}", img.describe);
    let machine = Machine { model: &args.cpu_model, cpus: HOST_CPUS, memory_mib: kvm_host::HOST_RAM_MIB, exclude: &[] };
    let timeout = 900 + entries.len() as u64 * 600;
    let out = crate::platform::linux_native::boot(
        "kvm-conformance",
        &machine,
        &img.kernel,
        &img.initrd,
        kvm_host::HOST_CMDLINE,
        timeout,
        args.verbose,
    )?;
    let mut records = Vec::new();
    let mut seen = BTreeSet::new();
    let (cells, module) = kvm_host::cell_reports(&out.reports);
    for (name, r, at) in cells {
        let Some(e) = entries.iter().find(|e| e.name == name) else { continue };
        seen.insert(name.to_string());
        let rec = record(e, &at, r, &args.cpu_model);
        println!("[kvm] {:<22} {}", e.name, report::line(&rec));
        records.push(rec);
    }
    for e in entries.iter().filter(|e| !seen.contains(&e.name)) {
        let mut rec = base(e, &module, &args.cpu_model);
        rec["result"] = "fail".into();
        rec["reason"] = format!("no result from KVM's host ({}; log {})", out.detail, out.serial.display()).into();
        println!("[kvm] {:<22} {}", e.name, report::line(&rec));
        records.push(rec);
    }
    Ok(records)
}

fn base(e: &Entry, module: &Value, cpu_model: &str) -> Value {
    json!({
        "test": e.name, "file": e.file, "args": e.args, "vcpus": e.smp,
        "hypervisor": "kvm", "path": "kvm", "apic": "xapic", "cpu_model": cpu_model,
        "kvm_intel": module, "qemu_args": qemu_args(e),
    })
}

/// A record from the driver's report `r` for entry `e`: QEMU's exit status is isa-debug-exit's
/// `(code << 1) | 1`.
pub fn record(e: &Entry, module: &Value, r: &Value, cpu_model: &str) -> Value {
    let mut rec = base(e, module, cpu_model);
    let lines: Vec<&str> = r["output"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let verdict = kut::verdict(lines.into_iter());
    let status = r["status"].as_u64();
    let code = status.filter(|s| s & 1 == 1).map(|s| (s >> 1) as u32);
    let result = kut::classify(code, &verdict);
    let reason = if let Some(err) = r["error"].as_str() {
        Some(err.to_string())
    } else if r["timed_out"] == true {
        Some(format!("QEMU still ran after {TEST_TIMEOUT_S} s of the host's clock"))
    } else if result == Outcome::Fail && code.is_none() {
        Some(format!("QEMU ended with status {:?}: {}", status, r["qemu_stderr"].as_str().unwrap_or("").trim()))
    } else {
        verdict.abort.clone()
    };
    rec["result"] = if reason.is_some() && code.is_none() { "fail" } else { result.as_str() }.into();
    rec["pass"] = verdict.passed.len().into();
    rec["fail"] = verdict.failed.len().into();
    rec["skip"] = verdict.skipped.len().into();
    rec["failures"] = verdict.failed.clone().into();
    rec["skips"] = verdict.skipped.clone().into();
    rec["summary"] = verdict.summary.clone().into();
    rec["exit_code"] = code.into();
    rec["reason"] = reason.into();
    rec["figures"] = serde_json::to_value(&verdict.figures).unwrap_or_default();
    rec["seconds_host_clock"] = r["wall_ms"].as_u64().map(|ms| ms as f64 / 1000.0).into();
    rec
}

/// Per test: KVM's result beside ours on the ipiv path in each APIC mode, whether ours passed
/// at least as many checks as KVM's in every mode, and the `vmexit` figures side by side.
pub fn compare(ours: &[Value], kvm: &[Value]) -> Value {
    let mut rows = Vec::new();
    let mut all_ok = true;
    for k in kvm {
        let test = k["test"].as_str().unwrap_or("?");
        let mine: Vec<&Value> =
            ours.iter().filter(|r| r["test"] == test && r["path"] == "ipiv" && r["hypervisor"] == "ipiv-hv").collect();
        let kvm_pass = k["pass"].as_u64().unwrap_or(0);
        let ok = !mine.is_empty()
            && mine.iter().all(|r| r["pass"].as_u64().unwrap_or(0) >= kvm_pass && r["result"] != "fail");
        all_ok &= ok || k["result"] == "fail" && mine.iter().all(|r| r["result"] != "fail");
        let cell = |r: &Value| json!({"result": r["result"], "pass": r["pass"], "fail": r["fail"], "skip": r["skip"]});
        let mut by_mode = serde_json::Map::new();
        for r in &mine {
            by_mode.insert(r["apic"].as_str().unwrap_or("?").to_string(), cell(r));
        }
        let mut figures: BTreeMap<String, Value> = BTreeMap::new();
        for (name, v) in k["figures"].as_object().into_iter().flatten() {
            figures.entry(name.clone()).or_insert_with(|| json!({}))["kvm"] = v.clone();
        }
        for r in &mine {
            for (name, v) in r["figures"].as_object().into_iter().flatten() {
                figures.entry(name.clone()).or_insert_with(|| json!({}))[r["apic"].as_str().unwrap_or("?")] = v.clone();
            }
        }
        rows.push(json!({
            "test": test, "kvm": cell(k), "ipiv_hv": by_mode, "ours_ge_kvm": ok, "figures": figures,
        }));
    }
    json!({"kvm_params": KVM_PARAMS, "rows": rows, "ours_at_least_kvm": all_ok})
}

/// The side-by-side table and the vmexit figures.
pub fn table(c: &Value) -> String {
    let cell = |v: &Value| {
        if v.is_null() {
            "-".to_string()
        } else {
            format!("{} {}/{}/{}", v["result"].as_str().unwrap_or("?"), v["pass"], v["fail"], v["skip"])
        }
    };
    let mut out = format!(
        "\nbeside KVM ({KVM_PARAMS}), the same binaries on the same emulated CPU (pass/fail/skip):\n{:<22} {:>18} {:>18} {:>18}  ours >= KVM\n",
        "test", "KVM", "ipiv-hv xapic", "ipiv-hv x2apic"
    );
    let rows = c["rows"].as_array().cloned().unwrap_or_default();
    for r in &rows {
        out += &format!(
            "{:<22} {:>18} {:>18} {:>18}  {}\n",
            r["test"].as_str().unwrap_or("?"),
            cell(&r["kvm"]),
            cell(&r["ipiv_hv"]["xapic"]),
            cell(&r["ipiv_hv"]["x2apic"]),
            if r["ours_ge_kvm"] == true { "yes" } else { "NO" }
        );
    }
    out += &format!(
        "\nvmexit figures (TSC ticks per iteration; under Bochs one tick per instruction per CPU: path lengths, not cycles):\n{:<28} {:>10} {:>14} {:>14}\n",
        "test", "KVM", "ipiv-hv xapic", "ipiv-hv x2apic"
    );
    for r in &rows {
        for (name, f) in r["figures"].as_object().into_iter().flatten() {
            let n = |k: &str| f[k].as_u64().map(|v| v.to_string()).unwrap_or_else(|| "-".into());
            out += &format!("{:<28} {:>10} {:>14} {:>14}\n", name, n("kvm"), n("xapic"), n("x2apic"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(params: &str) -> Entry {
        Entry {
            name: "xapic".into(),
            file: "apic.flat".into(),
            smp: 2,
            args: String::new(),
            qemu_params: params.into(),
            timeout_s: None,
        }
    }

    #[test]
    fn kvm_runs_the_host_model_with_the_entrys_flags() {
        assert_eq!(qemu_args(&entry("-cpu qemu64,-x2apic,+tsc-deadline")), "-cpu host,-x2apic,+tsc-deadline");
        assert_eq!(qemu_args(&entry("-machine pit=off")), "-machine pit=off");
        assert_eq!(qemu_args(&entry("-cpu max")), "-cpu host");
        let l = plan_line(&entry("-cpu qemu64,+x2apic"));
        let f: Vec<&str> = l.split('\t').collect();
        assert_eq!(f.len(), 8);
        assert_eq!((f[2], f[3], f[6], f[7]), ("2", "-cpu host,+x2apic", "/kut/apic.flat", "/kut/env"));
    }

    #[test]
    fn records_from_the_drivers_reports() {
        let e = entry("");
        let r = json!({"kvm_cell": "xapic", "status": 3, "timed_out": false,
            "output": ["PASS: apic existence", "FAIL: something", "SUMMARY: 2 tests, 1 unexpected failures"]});
        let rec = record(&e, &json!({"enable_ipiv": "Y"}), &r, "sapphire_rapids");
        assert_eq!(
            (rec["result"].as_str(), rec["pass"].as_u64(), rec["exit_code"].as_u64()),
            (Some("fail"), Some(1), Some(1))
        );
        let ok = json!({"kvm_cell": "vmexit_ipi", "status": 1, "output": ["ipi 2206"]});
        let rec = record(&e, &Value::Null, &ok, "m");
        assert_eq!(rec["result"], "pass");
        assert_eq!(rec["figures"]["ipi"], 2206);
        let hung = json!({"kvm_cell": "x", "status": null, "timed_out": true, "output": []});
        assert_eq!(record(&e, &Value::Null, &hung, "m")["result"], "fail");
    }

    #[test]
    fn ours_must_pass_at_least_what_kvm_passes_in_every_mode() {
        let k = json!({"test": "x2apic", "pass": 55, "result": "pass", "figures": {}});
        let ours = |x: u64, y: u64| {
            vec![
                json!({"test": "x2apic", "path": "ipiv", "apic": "xapic", "hypervisor": "ipiv-hv", "pass": x, "result": "pass", "figures": {"ipi": 87}}),
                json!({"test": "x2apic", "path": "ipiv", "apic": "x2apic", "hypervisor": "ipiv-hv", "pass": y, "result": "pass", "figures": {}}),
            ]
        };
        assert_eq!(compare(&ours(55, 56), std::slice::from_ref(&k))["ours_at_least_kvm"], true);
        assert_eq!(compare(&ours(55, 54), std::slice::from_ref(&k))["ours_at_least_kvm"], false);
        let c = compare(&ours(55, 55), &[k]);
        assert_eq!(c["rows"][0]["figures"]["ipi"]["xapic"], 87);
        assert!(table(&c).contains("ipi"));
    }
}
