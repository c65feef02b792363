//! `cargo xtask conformance`: foreign test kernels, run as their own harness runs them under
//! QEMU/KVM. Each kvm-unit-tests binary of a folder runs with its `unittests.cfg` arguments
//! (`kut`) under this hypervisor on the project's Bochs, on each interrupt path and in each
//! APIC mode the entry allows, as one VM called `kernel` booted like QEMU's `-kernel`; its
//! console is read for PASS/FAIL/SKIP lines, the SUMMARY line, the `vmexit` figures and the
//! exit code. `--peer kvm` runs the same binaries under KVM on the same emulated CPU
//! (`peer`) and puts both side by side.

pub mod kut;
pub mod peer;
pub mod plan;
pub mod report;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use crate::platform::launch;
use crate::platform::spec::{Platform, RunArgs};
use kut::Outcome;
use plan::{APIC_MODES, ConformanceArgs, ENV, Job, PATHS, entries, jobs, kut_dir, slow_on_bochs};
use report::{line, skips, table};

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
    let outcome = match launch::run(&args) {
        Ok(o) => o,
        Err(e) => {
            rec["result"] = "fail".into();
            rec["reason"] = format!("the run did not start: {e:#}").into();
            return rec;
        }
    };
    let serial = std::fs::read_to_string(&outcome.serial).unwrap_or_default();
    let verdict = kut::verdict(kut::guest_lines(&serial, "kernel"));
    let vm = outcome.summary.as_ref().and_then(|s| s.vms.first());
    let reason = vm.and_then(|v| v.reason.clone());
    let code = reason.as_deref().and_then(kut::exit_code);
    let mut result = kut::classify(code, &verdict);
    let dropped = vm.map_or(0, |v| v.console_dropped_bytes);
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
    rec["interrupt_path"] = json!(vm.and_then(|v| v.interrupt_path));
    rec["exits"] = vm.map(|v| json!(v.exits)).unwrap_or_default();
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
    crate::provision::image::build_kernel()?;
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
    use kut::Entry;

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
