//! `cargo xtask test`: every test the project has, host and emulated.

mod boots;
mod checks;
mod entry;
mod scenarios;
mod table;

use anyhow::{Result, bail};
use clap::Args;
use std::time::Instant;

use crate::platform::launch;
use crate::platform::nested;
use entry::{Case, Test};

#[derive(Args, Clone, Debug)]
pub struct TestArgs {
    /// Skip the host unit tests (`cargo test`).
    #[arg(long)]
    pub no_unit: bool,
    /// Run only the end-to-end tests whose name contains this.
    #[arg(long)]
    pub filter: Option<String>,
    /// Print the names of the tests the filter selects, in the order they run, and run none.
    #[arg(long)]
    pub list: bool,
    /// Bochs' CPU model for the suite's Bochs runs (`bochs -help cpu`); cases that ask for IPI
    /// virtualization need a model with it. The `cpu-model-*` tests run every Intel VMX model
    /// whatever this says.
    #[arg(long, default_value = crate::platform::bochs::DEFAULT_MODEL)]
    pub cpu_model: String,
}

/// The nested cases, in one boot of KVM's host (Bochs with as many CPUs as the largest case
/// gives QEMU, plus one for QEMU's other threads).
fn nested_group(tally: &mut Tally, cases: &[&Case]) {
    let runs: Vec<nested::Case> =
        cases.iter().map(|c| nested::Case { name: c.name.clone(), args: c.args.clone() }).collect();
    let host = nested::Host {
        label: "test",
        kvm_host: crate::platform::kvm_host::KvmHost::Trixie,
        kvm_params: String::new(),
        cpu_model: cases[0].args.cpu_model.clone(),
        cpus: runs.iter().map(|c| c.args.cpus).max().unwrap_or(1) + 1,
        exclude: &[],
        echo: false,
    };
    eprintln!("xtask test: {} nested cases in one boot of KVM's host on bochs ...", cases.len());
    let t = Instant::now();
    let outcomes = nested::run_cases(&runs, &host);
    eprintln!("xtask test: KVM's host ran for {:.1} s", t.elapsed().as_secs_f64());
    match outcomes {
        Ok(outcomes) => {
            for (c, o) in cases.iter().zip(outcomes) {
                tally.check(&c.name, || {
                    eprintln!("  {:.2} s of KVM's host's clock", o.host_ms as f64 / 1000.0);
                    if o.outcome.timed_out {
                        bail!("timed out");
                    }
                    (c.check)(&o.outcome)
                });
            }
        }
        Err(e) => {
            for c in cases {
                tally.check(&c.name, || bail!("KVM's host did not run: {e:#}"));
            }
        }
    }
}

/// Runs named checks, counting and reporting each.
#[derive(Default)]
struct Tally {
    passed: usize,
    failed: Vec<String>,
    skipped: Vec<String>,
}

impl Tally {
    fn check(&mut self, name: &str, f: impl FnOnce() -> Result<()>) {
        eprintln!("xtask test: {name} ...");
        let t = Instant::now();
        match f() {
            Ok(()) => {
                self.passed += 1;
                eprintln!("xtask test: {name} ok ({:.1} s)", t.elapsed().as_secs_f64());
            }
            Err(e) => {
                eprintln!("xtask test: {name} FAILED: {e:#}");
                self.failed.push(name.to_string());
            }
        }
    }
}

/// Runs the entries of `table::all` the filter selects, in order; the nested ones together,
/// where the first of them stands.
pub fn run_all(args: &TestArgs) -> Result<()> {
    let tests: Vec<Test> = table::all(&args.cpu_model, !args.no_unit)
        .into_iter()
        .filter(|t| args.filter.as_deref().is_none_or(|f| t.name().contains(f)))
        .collect();
    if args.list {
        for t in &tests {
            println!("{}", t.name());
        }
        return Ok(());
    }
    let nested_cases: Vec<&Case> =
        tests.iter().filter_map(|t| if let Test::Nested(c) = t { Some(c) } else { None }).collect();
    let mut tally = Tally::default();
    let mut nested_done = false;
    for test in &tests {
        match test {
            Test::Boot(case) => tally.check(&case.name, || {
                let o = launch::run(&case.args)?;
                if o.timed_out {
                    bail!("timed out");
                }
                (case.check)(&o)
            }),
            Test::Nested(_) if nested_done => {}
            Test::Nested(_) => {
                nested_group(&mut tally, &nested_cases);
                nested_done = true;
            }
            Test::Own { name, run } => tally.check(name, run),
            Test::Unavailable { name, why } => {
                let why = format!("{name}: skipped, {why}");
                eprintln!("xtask test: {why}");
                tally.skipped.push(why);
            }
        }
    }
    println!("xtask: {} passed, {} failed, {} skipped", tally.passed, tally.failed.len(), tally.skipped.len());
    for s in &tally.skipped {
        println!("xtask: {s}");
    }
    if !tally.failed.is_empty() {
        bail!("failed: {}", tally.failed.join(", "));
    }
    Ok(())
}
