//! `cargo xtask fuzz`: libFuzzer (through cargo-fuzz) on every hvcore parser fed by a guest or
//! a user; the targets are in fuzz/fuzz_targets and docs/fuzzing.md says what each checks.
//!
//! cargo-fuzz is installed by this command, pinned to [`CARGO_FUZZ_VERSION`], into
//! `<cache>/cargo-fuzz-<version>` (see `deps::cache_dir`). The corpora live in
//! `<cache>/fuzz-corpus/<target>` so that they grow from run to run and never enter the repo;
//! crash inputs go to fuzz/artifacts/<target>/ (ignored by git) and each run's libFuzzer output
//! to target/fuzz/<target>.log.

use anyhow::{Context, Result, bail};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::progress::{self, Step};
use crate::provision::deps;
use crate::provision::image::cargo_build;

/// The cargo-fuzz release `cargo xtask fuzz` installs and uses.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Every fuzz target (fuzz/fuzz_targets/<name>.rs).
pub const TARGETS: &[&str] =
    &["report_json", "hypercall", "icr", "manifest", "ramdisk", "multiboot", "bzimage", "mmio", "guest_paging"];

/// The fuzz crate, outside the main workspace.
const FUZZ_DIR: &str = "fuzz";

/// Executions per target for [`smoke`].
const SMOKE_RUNS: u64 = 20_000;

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// How long to fuzz each target, in seconds.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Fuzz only this target (repeatable); all of them by default.
    #[arg(long = "target", value_name = "NAME", value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    pub targets: Vec<String>,
    /// Also write the results to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// How one target's run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Ran its time (or its runs) without a finding.
    Clean,
    /// A crash (panic, failed property, overflow), a timeout or running out of memory; the
    /// input that did it is at `artifact` when libFuzzer wrote one.
    Crashed { artifact: Option<PathBuf>, message: String },
}

/// One target's result.
#[derive(Clone, Debug)]
pub struct TargetRun {
    pub target: String,
    /// Inputs executed (libFuzzer's `Done N runs`, or its last status line before a crash).
    pub executions: u64,
    /// Seconds of fuzzing as libFuzzer counts them (whole seconds).
    pub seconds: u64,
    /// Wall time of the run as measured here, start-up included.
    pub wall: Duration,
    pub outcome: Outcome,
    pub log: PathBuf,
}

/// `cargo xtask fuzz`: fuzzes each chosen target for `--seconds`, prints a table and fails if
/// any target found something.
pub fn run(args: &FuzzArgs) -> Result<()> {
    let targets: Vec<&str> =
        if args.targets.is_empty() { TARGETS.to_vec() } else { args.targets.iter().map(String::as_str).collect() };
    let runs = fuzz(&targets, Limit::Seconds(args.seconds))?;
    print!("{}", table(&runs));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&json(&runs))? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    verdict(&runs)
}

/// A short run of every target ([`SMOKE_RUNS`] inputs each, after replaying the saved corpus),
/// for `cargo xtask test`: builds the fuzz targets, so that they keep compiling against hvcore,
/// and fails on any finding.
pub fn smoke() -> Result<()> {
    let runs = fuzz(TARGETS, Limit::Runs(SMOKE_RUNS))?;
    print!("{}", table(&runs));
    verdict(&runs)
}

#[derive(Clone, Copy)]
enum Limit {
    Seconds(u64),
    Runs(u64),
}

fn fuzz(targets: &[&str], limit: Limit) -> Result<Vec<TargetRun>> {
    let cache = deps::cache_dir();
    let cargo_fuzz = provision(&cache)?;
    build(&cargo_fuzz)?;
    let logs = PathBuf::from("target/fuzz");
    std::fs::create_dir_all(&logs)?;
    targets.iter().map(|t| run_target(&cargo_fuzz, t, limit, &cache.join("fuzz-corpus").join(t), &logs)).collect()
}

/// The cargo-fuzz binary: the cached one, or one installed now with `cargo install --locked`.
pub fn provision(cache: &Path) -> Result<PathBuf> {
    let root = cache.join(format!("cargo-fuzz-{CARGO_FUZZ_VERSION}"));
    let bin = root.join("bin/cargo-fuzz");
    if bin.is_file() {
        return Ok(bin);
    }
    // Installed next to its final place and renamed, so an interrupted install leaves nothing
    // that looks finished.
    let partial = cache.join(format!("cargo-fuzz-{CARGO_FUZZ_VERSION}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["install", "cargo-fuzz", "--locked", "--version", &format!("={CARGO_FUZZ_VERSION}"), "--root"])
        .arg(&partial);
    let mut step = Step::new(format!("installing cargo-fuzz {CARGO_FUZZ_VERSION}"));
    match progress::run(&mut cmd, &mut step, |l| l.trim_start().starts_with("Compiling ")) {
        Ok(o) => step.done(&format!("{} crates compiled", o.counted)),
        Err(e) => {
            step.failed();
            return Err(e);
        }
    }
    std::fs::rename(&partial, &root).with_context(|| format!("moving cargo-fuzz into {}", root.display()))?;
    Ok(bin)
}

/// The options every build and run shares: release with debug assertions and overflow checks
/// (an overflow is a finding), no sanitizer (the code under test is safe Rust; ASan would only
/// halve the executions).
const BUILD_FLAGS: &[&str] = &["-O", "--debug-assertions", "--sanitizer", "none", "--fuzz-dir", FUZZ_DIR];

fn build(cargo_fuzz: &Path) -> Result<()> {
    // libfuzzer-sys compiles libFuzzer (C++) with the cc crate.
    let path = std::env::var_os("PATH").unwrap_or_default();
    if !["c++", "g++", "clang++"].iter().any(|c| std::env::split_paths(&path).any(|d| d.join(c).is_file())) {
        bail!("the fuzz targets need a C++ compiler for libFuzzer: `apt-get install g++`");
    }
    let mut cmd = Command::new(cargo_fuzz);
    cmd.args(["fuzz", "build"]).args(BUILD_FLAGS);
    cargo_build(&mut cmd, "building the fuzz targets")
}

fn run_target(cargo_fuzz: &Path, target: &str, limit: Limit, corpus: &Path, logs: &Path) -> Result<TargetRun> {
    std::fs::create_dir_all(corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let log_path = logs.join(format!("{target}.log"));
    let log = File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let stop = match limit {
        Limit::Seconds(s) => format!("-max_total_time={s}"),
        Limit::Runs(n) => format!("-runs={n}"),
    };
    let mut cmd = Command::new(cargo_fuzz);
    cmd.args(["fuzz", "run"])
        .args(BUILD_FLAGS)
        .arg(target)
        .arg(corpus)
        .args(["--", &stop, "-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let what = match limit {
        Limit::Seconds(s) => format!("fuzzing {target} for {s} s"),
        Limit::Runs(n) => format!("fuzzing {target} for {n} runs"),
    };
    let mut step = Step::new(what);
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {}", cargo_fuzz.display()))?;
    // Show libFuzzer's latest status line while it runs.
    let mut reader = File::open(&log_path)?;
    let mut seen = String::new();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(500));
        let mut more = String::new();
        reader.read_to_string(&mut more).ok();
        seen.push_str(&more);
        if let Some(line) = seen.lines().rev().find(|l| l.starts_with('#')) {
            step.update(None, &line.chars().take(90).collect::<String>());
        }
        // Keep only the tail: libFuzzer prints a line per new coverage early on.
        if seen.len() > 1 << 16 {
            seen = seen.split_off(seen.len() - (1 << 15));
        }
    };
    let wall = start.elapsed();
    reader.seek(SeekFrom::Start(0))?;
    let mut text = String::new();
    reader.read_to_string(&mut text).ok();
    let mut run = parse_log(target, &text, status.success());
    run.wall = wall;
    run.log = log_path;
    match &run.outcome {
        Outcome::Clean => step.done(&format!("{} executions, no finding", run.executions)),
        Outcome::Crashed { .. } => step.failed(),
    }
    Ok(run)
}

/// Reads a libFuzzer run's output: executions and seconds from `Done N runs in S second(s)`
/// (or `stat::number_of_executed_units`, or the last `#N` status line when it crashed), and the
/// crash artifact from `Test unit written to PATH`.
fn parse_log(target: &str, text: &str, success: bool) -> TargetRun {
    let mut executions = None;
    let mut seconds = 0;
    let mut last_status = 0;
    let mut artifact = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Done ") {
            let mut words = rest.split_whitespace();
            executions = words.next().and_then(|n| n.parse().ok()).or(executions);
            seconds = words.nth(2).and_then(|s| s.parse().ok()).unwrap_or(seconds);
        } else if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            executions = executions.or(n.trim().parse().ok());
        } else if let Some(rest) = line.strip_prefix('#') {
            if let Some(n) = rest.split_whitespace().next().and_then(|n| n.parse().ok()) {
                last_status = n;
            }
        } else if let Some(p) = line.split("Test unit written to ").nth(1) {
            artifact = Some(Path::new(p.trim()).to_path_buf());
        }
    }
    let clean = success && executions.is_some();
    let outcome = if clean {
        Outcome::Clean
    } else {
        // The panic message (or libFuzzer's reason) and what led to it.
        let message = text
            .lines()
            .skip_while(|l| !(l.contains("panicked at") || l.starts_with("==") && l.contains("ERROR")))
            .take_while(|l| !l.starts_with("stack backtrace:") && !l.starts_with("note: run with"))
            .take(12)
            .collect::<Vec<_>>()
            .join("\n");
        let message = if message.is_empty() {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        } else {
            message
        };
        Outcome::Crashed { artifact, message }
    };
    TargetRun {
        target: target.to_string(),
        executions: executions.unwrap_or(last_status),
        seconds,
        wall: Duration::ZERO,
        outcome,
        log: PathBuf::new(),
    }
}

fn table(runs: &[TargetRun]) -> String {
    let mut out = format!("{:<12} {:>12} {:>8} {:>10}  result\n", "target", "executions", "seconds", "exec/s");
    for r in runs {
        let rate = r.executions.checked_div(r.seconds).map_or("-".to_string(), |x| x.to_string());
        let result = match &r.outcome {
            Outcome::Clean => "ok".to_string(),
            Outcome::Crashed { artifact: Some(a), .. } => format!("CRASH {}", a.display()),
            Outcome::Crashed { artifact: None, .. } => format!("FAILED (see {})", r.log.display()),
        };
        let _ = writeln!(out, "{:<12} {:>12} {:>8} {:>10}  {result}", r.target, r.executions, r.seconds, rate);
    }
    out
}

fn json(runs: &[TargetRun]) -> serde_json::Value {
    let targets: Vec<_> = runs
        .iter()
        .map(|r| {
            let (result, artifact) = match &r.outcome {
                Outcome::Clean => ("ok", None),
                Outcome::Crashed { artifact, .. } => ("crash", artifact.as_ref().map(|a| a.display().to_string())),
            };
            serde_json::json!({
                "target": r.target,
                "executions": r.executions,
                "seconds": r.seconds,
                "wall_seconds": r.wall.as_secs_f64(),
                "result": result,
                "artifact": artifact,
                "log": r.log.display().to_string(),
            })
        })
        .collect();
    serde_json::json!({ "cargo_fuzz": CARGO_FUZZ_VERSION, "targets": targets })
}

/// Ok if every target ran clean; otherwise the findings, each with its input and how to replay it.
fn verdict(runs: &[TargetRun]) -> Result<()> {
    let mut findings = String::new();
    for r in runs {
        if let Outcome::Crashed { artifact, message } = &r.outcome {
            let _ = writeln!(findings, "\n{}: {message}", r.target);
            match artifact {
                Some(a) => {
                    let _ = writeln!(findings, "  input: {}", a.display());
                    let bin = deps::cache_dir().join(format!("cargo-fuzz-{CARGO_FUZZ_VERSION}/bin"));
                    let _ = writeln!(
                        findings,
                        "  replay: PATH={}:$PATH cargo fuzz run {} {} {}",
                        bin.display(),
                        BUILD_FLAGS.join(" "),
                        r.target,
                        a.display()
                    );
                }
                None => {
                    let _ = writeln!(findings, "  (no input saved; full output in {})", r.log.display());
                }
            }
        }
    }
    if findings.is_empty() { Ok(()) } else { bail!("fuzzing found a problem:{findings}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_run_is_read_from_libfuzzers_last_lines() {
        let text = "INFO: Seed: 1\n#2\tINITED cov: 10 ft: 10 corp: 1/1b exec/s: 0 rss: 30Mb\n\
                    #1048576\tpulse  cov: 99 ft: 200 corp: 50/1Kb lim: 4096 exec/s: 349525 rss: 40Mb\n\
                    Done 1234567 runs in 61 second(s)\nstat::number_of_executed_units: 1234567\n";
        let r = parse_log("icr", text, true);
        assert_eq!((r.executions, r.seconds, r.outcome), (1_234_567, 61, Outcome::Clean));
    }

    #[test]
    fn a_crash_names_its_input_and_panic() {
        let text = "#4096\tpulse  cov: 99 ft: 200 corp: 50/1Kb lim: 4096 exec/s: 2048 rss: 40Mb\n\
                    thread '<unnamed>' panicked at fuzz_targets/manifest.rs:96:17:\n\
                    assertion failed: vcpus\nstack backtrace:\n   0: rust_begin_unwind\n\
                    ==12== ERROR: libFuzzer: deadly signal\n\
                    artifact_prefix='fuzz/artifacts/manifest/'; Test unit written to \
                    fuzz/artifacts/manifest/crash-cc79\n\
                    Base64: DgY=\n";
        let r = parse_log("manifest", text, false);
        assert_eq!(r.executions, 4096);
        let Outcome::Crashed { artifact, message } = r.outcome else { panic!("not a crash") };
        assert_eq!(artifact, Some(PathBuf::from("fuzz/artifacts/manifest/crash-cc79")));
        assert!(message.starts_with("thread '<unnamed>' panicked at fuzz_targets/manifest.rs"), "{message}");
        assert!(message.ends_with("assertion failed: vcpus"), "the backtrace is left out: {message}");
        let run = TargetRun {
            target: "manifest".into(),
            executions: 1,
            seconds: 1,
            wall: Duration::ZERO,
            outcome: Outcome::Crashed { artifact, message },
            log: PathBuf::new(),
        };
        let e = verdict(&[run]).unwrap_err().to_string();
        assert!(
            e.contains("input: fuzz/artifacts/manifest/crash-cc79")
                && e.contains(" cargo fuzz run -O --debug-assertions"),
            "{e}"
        );
    }

    #[test]
    fn a_run_that_never_finished_is_a_failure() {
        let r = parse_log("ramdisk", "error: could not compile\n", false);
        assert!(matches!(r.outcome, Outcome::Crashed { artifact: None, .. }));
        assert_eq!(r.executions, 0);
    }

    #[test]
    fn every_target_has_a_source_file() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/fuzz_targets");
        for t in TARGETS {
            assert!(dir.join(format!("{t}.rs")).is_file(), "{t}");
        }
        let manifest = std::fs::read_to_string(dir.join("../Cargo.toml")).unwrap();
        for t in TARGETS {
            assert!(manifest.contains(&format!("name = \"{t}\"")), "{t} missing from fuzz/Cargo.toml");
        }
    }
}
