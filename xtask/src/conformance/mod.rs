//! `cargo xtask conformance`: foreign test kernels, run as their own harness runs them under
//! QEMU/KVM. Each kvm-unit-tests binary of a folder runs with its `unittests.cfg` arguments
//! (`kut`) under this hypervisor on the project's Bochs, on each interrupt path and in each
//! APIC mode the entry allows, as one VM called `kernel` booted like QEMU's `-kernel`; its
//! console is read for PASS/FAIL/SKIP lines, the SUMMARY line, the `vmexit` figures and the
//! exit code. `--peer kvm` runs the same binaries under KVM on the same emulated CPU
//! (`peer`) and puts both side by side.

pub mod kut;
pub mod peer;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use crate::run::{self, Platform, RunArgs};
use kut::{Entry, Outcome};

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
    #[arg(long, default_value = crate::bochs::DEFAULT_MODEL)]
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

/// The environment module, written once under target/.
fn env_file() -> Result<PathBuf> {
    let dir = PathBuf::from("target/xtask/conformance");
    std::fs::create_dir_all(&dir)?;
    let f = dir.join("kut-env");
    std::fs::write(&f, ENV)?;
    Ok(f)
}

/// The run for a job: Bochs with as many CPUs as the test has vCPUs (an idle host CPU costs
/// Bochs time for nothing), the VM's RAM and start as QEMU's, a generous watchdog (the vmexit
/// tests loop until 2^30 TSC ticks have passed: minutes on Bochs).
pub fn run_args(job: &Job, dir: &Path, env: &Path, cpu_model: &str, echo: bool) -> RunArgs {
    let e = &job.entry;
    let mut a = RunArgs::new(Platform::Bochs, e.smp.max(1));
    a.cpu_model = cpu_model.to_string();
    a.kernel = Some(dir.join(&e.file));
    a.append = (!e.args.is_empty()).then(|| e.args.clone());
    a.modules = vec![env.to_path_buf()];
    a.vcpus = e.smp.max(1);
    a.apic = Some(job.apic.clone());
    a.x2apic = e.hides_x2apic().then(|| "off".to_string());
    a.interrupt_path = Some(job.path.clone());
    a.timeout = 1800;
    a.quiet = !echo;
    a
}

/// Runs one job and reads its verdict into a record.
pub fn run_job(job: &Job, dir: &Path, env: &Path, cpu_model: &str, echo: bool) -> Value {
    let start = Instant::now();
    let args = run_args(job, dir, env, cpu_model, echo);
    let mut rec = json!({
        "test": job.entry.name, "file": job.entry.file, "args": job.entry.args, "vcpus": job.entry.smp,
        "hypervisor": "ipiv-hv", "path": job.path, "apic": job.apic, "cpu_model": cpu_model,
    });
    let outcome = match run::run(&args) {
        Ok(o) => o,
        Err(e) => {
            rec["result"] = "fail".into();
            rec["reason"] = format!("the run did not start: {e:#}").into();
            return rec;
        }
    };
    let serial = std::fs::read_to_string(&outcome.serial).unwrap_or_default();
    let verdict = kut::verdict(kut::guest_lines(&serial, "kernel"));
    let vm = outcome.summary.as_ref().and_then(|s| s["vms"].as_array()).and_then(|v| v.first()).cloned();
    let reason = vm.as_ref().and_then(|v| v["reason"].as_str()).map(str::to_string);
    let code = reason.as_deref().and_then(kut::exit_code);
    let mut result = kut::classify(code, &verdict);
    let dropped = vm.as_ref().and_then(|v| v["console_dropped_bytes"].as_u64()).unwrap_or(0);
    let mut why = match (&verdict.abort, result) {
        (Some(a), _) => Some(a.clone()),
        (None, Outcome::Fail) if code.is_none() => Some(
            reason.clone().unwrap_or_else(|| if outcome.timed_out { "timed out".into() } else { "no summary".into() }),
        ),
        _ => None,
    };
    if dropped > 0 {
        result = Outcome::Fail;
        why = Some(format!("the console budget dropped {dropped} bytes of its output"));
    }
    rec["result"] = result.as_str().into();
    rec["pass"] = verdict.passed.len().into();
    rec["fail"] = verdict.failed.len().into();
    rec["skip"] = verdict.skipped.len().into();
    rec["failures"] = verdict.failed.clone().into();
    rec["skips"] = verdict.skipped.clone().into();
    rec["summary"] = verdict.summary.clone().into();
    rec["exit_code"] = code.into();
    rec["reason"] = why.into();
    rec["figures"] = serde_json::to_value(&verdict.figures).unwrap_or_default();
    rec["interrupt_path"] = vm.as_ref().map(|v| v["interrupt_path"].clone()).unwrap_or_default();
    rec["exits"] = vm.as_ref().map(|v| v["exits"].clone()).unwrap_or_default();
    rec["ignored_qemu_params"] = job.entry.ignored_params().into();
    rec["seconds"] = (start.elapsed().as_secs_f64() * 10.0).round().div_euclid(10.0).into();
    rec["serial"] = outcome.serial.display().to_string().into();
    rec
}

/// The record of a job left out without `--slow`: a skip with the reason.
pub fn not_run_record(job: &Job) -> Value {
    json!({
        "test": job.entry.name, "file": job.entry.file, "args": job.entry.args, "vcpus": job.entry.smp,
        "hypervisor": "ipiv-hv", "path": job.path, "apic": job.apic, "result": "skip",
        "pass": 0, "fail": 0, "skip": 0, "failures": [], "skips": [], "figures": {},
        "reason": format!("not run: {}", slow_on_bochs(&job.entry).unwrap_or("left out")),
    })
}

/// Runs `jobs` `parallel` at a time, printing a line as each ends.
pub fn run_all(jobs: &[Job], dir: &Path, cpu_model: &str, parallel: usize, echo: bool) -> Result<Vec<Value>> {
    let env = env_file()?;
    // Built once before the Bochs processes start (each run would only find it up to date).
    crate::image::build_kernel()?;
    let next = Mutex::new(0usize);
    let records: Mutex<Vec<(usize, Value)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..parallel.max(1) {
            s.spawn(|| {
                loop {
                    let i = {
                        let mut n = next.lock().unwrap();
                        let i = *n;
                        *n += 1;
                        i
                    };
                    let Some(job) = jobs.get(i) else { break };
                    let rec = run_job(job, dir, &env, cpu_model, echo);
                    println!(
                        "[{:>3}/{}] {:<22} {:<16} {:<6} {}",
                        i + 1,
                        jobs.len(),
                        job.entry.name,
                        job.path,
                        job.apic,
                        line(&rec)
                    );
                    records.lock().unwrap().push((i, rec));
                }
            });
        }
    });
    let mut records = records.into_inner().unwrap();
    records.sort_by_key(|(i, _)| *i);
    Ok(records.into_iter().map(|(_, r)| r).collect())
}

/// One record in a line: result, counts, figures, reason, time.
pub fn line(r: &Value) -> String {
    let figures: Vec<String> =
        r["figures"].as_object().map(|m| m.iter().map(|(k, v)| format!("{k} {v}")).collect()).unwrap_or_default();
    let mut s = format!(
        "{} ({} passed, {} failed, {} skipped)",
        r["result"].as_str().unwrap_or("?").to_uppercase(),
        r["pass"].as_u64().unwrap_or(0),
        r["fail"].as_u64().unwrap_or(0),
        r["skip"].as_u64().unwrap_or(0)
    );
    if !figures.is_empty() {
        s += &format!(" [{}]", figures.join(", "));
    }
    if let Some(why) = r["reason"].as_str() {
        s += &format!(": {why}");
    }
    if let Some(f) = r["failures"].as_array().filter(|f| !f.is_empty()) {
        let names: Vec<&str> = f.iter().filter_map(Value::as_str).take(3).collect();
        s += &format!(" FAIL: {}", names.join("; "));
        if f.len() > 3 {
            s += &format!("; and {} more", f.len() - 3);
        }
    }
    if let Some(t) = r["seconds"].as_f64() {
        s += &format!(" ({t:.0} s)");
    }
    s
}

/// The table: one row per test, one column per path/APIC mode, each cell the result and
/// counts.
pub fn table(records: &[Value]) -> String {
    let mut columns: Vec<String> = Vec::new();
    let mut rows: Vec<String> = Vec::new();
    for r in records {
        let col = format!("{}/{}", r["path"].as_str().unwrap_or("?"), r["apic"].as_str().unwrap_or("?"));
        if !columns.contains(&col) {
            columns.push(col);
        }
        let row = r["test"].as_str().unwrap_or("?").to_string();
        if !rows.contains(&row) {
            rows.push(row);
        }
    }
    let mut out = format!("{:<22}", "test");
    for c in &columns {
        out += &format!(" {c:>24}");
    }
    out += "\n";
    for row in &rows {
        out += &format!("{row:<22}");
        for c in &columns {
            let cell = records
                .iter()
                .find(|r| {
                    r["test"] == row.as_str()
                        && format!("{}/{}", r["path"].as_str().unwrap_or("?"), r["apic"].as_str().unwrap_or("?")) == *c
                })
                .map(|r| {
                    format!(
                        "{} {}/{}/{}",
                        r["result"].as_str().unwrap_or("?"),
                        r["pass"].as_u64().unwrap_or(0),
                        r["fail"].as_u64().unwrap_or(0),
                        r["skip"].as_u64().unwrap_or(0)
                    )
                })
                .unwrap_or_else(|| "-".into());
            out += &format!(" {cell:>24}");
        }
        out += "\n";
    }
    out
}

/// Every SKIP with its reason, and what `TEST_DEVICE=0` leaves out.
pub fn skips(records: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in records {
        for s in r["skips"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            let item = format!("{}: SKIP {s}", r["test"].as_str().unwrap_or("?"));
            if !out.contains(&item) {
                out.push(item);
            }
        }
    }
    for r in records.iter().filter(|r| r["result"] == "skip") {
        if let Some(why) = r["reason"].as_str() {
            let item = format!("{}: {why}", r["test"].as_str().unwrap_or("?"));
            if !out.contains(&item) {
                out.push(item);
            }
        }
    }
    for (file, why) in NEEDS_TEST_DEVICE {
        if records.iter().any(|r| r["file"] == *file) {
            out.push(format!("{file}: not attempted on either side (TEST_DEVICE=0, as for a machine without QEMU's pc-testdev): {why}"));
        }
    }
    out
}

pub fn run(args: &ConformanceArgs) -> Result<bool> {
    let dir = kut_dir(args.kut.as_deref());
    let entries = entries(&dir)?;
    // Beside KVM the comparison is with IPIv, KVM's own default where the CPU has it.
    let paths: Vec<String> = match (args.path.is_empty(), args.peer.is_some()) {
        (false, _) => args.path.clone(),
        (true, true) => vec!["ipiv".to_string()],
        (true, false) => PATHS.map(String::from).to_vec(),
    };
    let apics: Vec<String> =
        if args.apic.is_empty() { APIC_MODES.map(String::from).to_vec() } else { args.apic.clone() };
    let jobs = jobs(&entries, &paths, &apics, args.filter.as_deref());
    if jobs.is_empty() {
        bail!("no test in {} matches", dir.display());
    }
    let (jobs, slow): (Vec<Job>, Vec<Job>) =
        jobs.into_iter().partition(|j| args.slow || slow_on_bochs(&j.entry).is_none());
    let not_run: Vec<Value> = slow.iter().map(not_run_record).collect();
    let parallel = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!(
        "conformance: {} tests, {} runs on the project's Bochs ({}), {parallel} at a time; binaries from {}",
        entries.len(),
        jobs.len(),
        args.cpu_model,
        dir.display()
    );
    let start = Instant::now();
    let mut comparison = Value::Null;
    let records = if args.peer.is_some() {
        // KVM's host is one Bochs process: it runs beside ours, which get the other CPUs.
        let (ours, theirs) = std::thread::scope(|s| {
            let kvm = s.spawn(|| peer::run(&entries, &jobs, &dir, args));
            let ours = run_all(&jobs, &dir, &args.cpu_model, parallel.saturating_sub(1).max(1), args.verbose);
            (ours, kvm.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the KVM side panicked"))))
        });
        let (mut ours, theirs) = (ours?, theirs?);
        comparison = peer::compare(&ours, &theirs);
        print!("{}", peer::table(&comparison));
        ours.extend(not_run);
        ours.extend(theirs);
        ours
    } else {
        let mut ours = run_all(&jobs, &dir, &args.cpu_model, parallel, args.verbose)?;
        ours.extend(not_run);
        ours
    };
    let ours: Vec<&Value> = records.iter().filter(|r| r["hypervisor"] == "ipiv-hv").collect();
    let owned: Vec<Value> = ours.iter().map(|r| (*r).clone()).collect();
    println!("\n{}", table(&owned));
    let skip_list = skips(&owned);
    if !skip_list.is_empty() {
        println!("skipped:");
        for s in &skip_list {
            println!("  {s}");
        }
    }
    let failed: Vec<&Value> = ours.iter().copied().filter(|r| r["result"] == "fail").collect();
    println!(
        "conformance: {} runs, {} failed, {} skipped, in {:.0} s",
        ours.len(),
        failed.len(),
        ours.iter().filter(|r| r["result"] == "skip").count(),
        start.elapsed().as_secs_f64()
    );
    if let Some(path) = &args.json {
        let doc = json!({
            "platform": "bochs",
            "cpu_model": args.cpu_model,
            "kut_dir": dir.display().to_string(),
            "env": ENV,
            "cycles_unit": "bochs-instructions",
            "records": records,
            "skipped": skip_list,
            "comparison": comparison,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let peer_ok = comparison.is_null() || comparison["ours_at_least_kvm"].as_bool() == Some(true);
    Ok(failed.is_empty() && peer_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, file: &str, args: &str, params: &str) -> Entry {
        Entry {
            name: name.into(),
            file: file.into(),
            smp: 2,
            args: args.into(),
            qemu_params: params.into(),
            timeout_s: None,
        }
    }

    #[test]
    fn only_the_named_vmexit_tests_are_slow_on_bochs() {
        assert!(slow_on_bochs(&entry("vmexit_cr0_wp", "vmexit.flat", "toggle_cr0_wp", "")).is_some());
        assert!(slow_on_bochs(&entry("vmexit_cr4_pge", "vmexit.flat", "toggle_cr4_pge", "")).is_some());
        assert!(slow_on_bochs(&entry("vmexit_ipi", "vmexit.flat", "ipi", "")).is_none());
        assert!(slow_on_bochs(&entry("other", "other.flat", "toggle_cr0_wp", "")).is_none());
        let job = Job {
            entry: entry("vmexit_cr0_wp", "vmexit.flat", "toggle_cr0_wp", ""),
            path: "ipiv".into(),
            apic: "xapic".into(),
        };
        let r = not_run_record(&job);
        assert_eq!(r["result"], "skip");
        assert!(skips(&[r]).iter().any(|s| s.starts_with("vmexit_cr0_wp: not run: each MOV to CR0")));
    }

    #[test]
    fn jobs_cover_paths_and_modes_but_x2apic_where_hidden() {
        let es = [entry("xapic", "apic.flat", "", "-cpu qemu64,-x2apic"), entry("smptest", "smptest.flat", "", "")];
        let paths: Vec<String> = PATHS.map(String::from).to_vec();
        let apics: Vec<String> = APIC_MODES.map(String::from).to_vec();
        let js = jobs(&es, &paths, &apics, None);
        assert_eq!(js.len(), 4 + 8);
        assert!(js.iter().filter(|j| j.entry.name == "xapic").all(|j| j.apic == "xapic"));
        assert_eq!(jobs(&es, &paths, &apics, Some("smp")).len(), 8);
    }
}
