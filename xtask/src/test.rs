//! `cargo xtask test`: every test the project has, host and emulated.

use anyhow::{Result, bail};
use clap::Args;
use serde_json::Value;
use std::process::Command;
use std::time::Instant;

use crate::run::{self, Outcome, Platform, RunArgs};

#[derive(Args, Clone, Debug)]
pub struct TestArgs {
    /// Skip the host unit tests (`cargo test`).
    #[arg(long)]
    pub no_unit: bool,
    /// Run only the end-to-end tests whose name contains this.
    #[arg(long)]
    pub filter: Option<String>,
}

/// One end-to-end check: a run and what its summary must say.
struct Case {
    name: &'static str,
    args: RunArgs,
    check: fn(&Outcome) -> Result<()>,
}

fn field<'a>(o: &'a Outcome, path: &[&str]) -> &'a Value {
    let mut v = o.summary.as_ref().unwrap_or(&Value::Null);
    for p in path {
        v = &v[*p];
    }
    v
}

fn expect_eq(o: &Outcome, path: &[&str], want: Value) -> Result<()> {
    let got = field(o, path);
    if *got != want {
        bail!("{} = {got}, expected {want}", path.join("."));
    }
    Ok(())
}

fn no_vmx_boot(o: &Outcome, cpus: u32) -> Result<()> {
    expect_eq(o, &["result"], "unsupported".into())?;
    expect_eq(o, &["cpus_online"], cpus.into())?;
    expect_eq(o, &["cpus_expected"], cpus.into())?;
    expect_eq(o, &["vmx", "supported"], false.into())?;
    if !field(o, &["reason"]).as_str().is_some_and(|r| r.contains("VMX")) {
        bail!("reason should explain the missing VMX: {}", field(o, &["reason"]));
    }
    Ok(())
}

fn cases() -> Vec<Case> {
    let qemu = |cpus, uefi| RunArgs {
        uefi,
        timeout: 120,
        expect: Some("unsupported".into()),
        ..RunArgs::new(Platform::Qemu, cpus)
    };
    vec![
        Case { name: "qemu-bios-1cpu", args: qemu(1, false), check: |o| no_vmx_boot(o, 1) },
        Case { name: "qemu-bios-4cpu", args: qemu(4, false), check: |o| no_vmx_boot(o, 4) },
        Case { name: "qemu-uefi-1cpu", args: qemu(1, true), check: |o| no_vmx_boot(o, 1) },
        Case { name: "qemu-uefi-4cpu", args: qemu(4, true), check: |o| no_vmx_boot(o, 4) },
        Case {
            name: "qemu-ap-page-fault",
            args: RunArgs { fault: "ap-page-fault".into(), expect: Some("fail".into()), ..qemu(2, false) },
            check: |o| {
                expect_eq(o, &["result"], "fail".into())?;
                let reason = field(o, &["reason"]).as_str().unwrap_or("");
                for part in ["#PF", "vector 14", "on CPU 1", "CR2 0x7fffdeadb000", "RIP 0x", "error code 0x"] {
                    if !reason.contains(part) {
                        bail!("fault report lacks {part:?}: {reason}");
                    }
                }
                if o.exit_status != Some(35) {
                    bail!("emulator exit status {:?}, expected 35 (fail)", o.exit_status);
                }
                Ok(())
            },
        },
        Case {
            name: "qemu-bsp-panic",
            args: RunArgs { fault: "bsp-panic".into(), expect: Some("fail".into()), ..qemu(1, false) },
            check: |o| {
                expect_eq(o, &["result"], "fail".into())?;
                let reason = field(o, &["reason"]).as_str().unwrap_or("");
                if !reason.contains("panic on CPU 0") || !reason.contains("deliberate panic") {
                    bail!("panic report lacks CPU or message: {reason}");
                }
                Ok(())
            },
        },
        Case {
            name: "bochs-ap-page-fault",
            args: RunArgs {
                fault: "ap-page-fault".into(),
                expect: Some("fail".into()),
                timeout: 300,
                ..RunArgs::new(Platform::Bochs, 2)
            },
            check: |o| {
                expect_eq(o, &["result"], "fail".into())?;
                let reason = field(o, &["reason"]).as_str().unwrap_or("");
                if !reason.contains("#PF") || !reason.contains("CR2 0x7fffdeadb000") || !reason.contains("on CPU 1") {
                    bail!("fault report incomplete: {reason}");
                }
                Ok(())
            },
        },
        Case {
            name: "bochs-vmx-4cpu",
            args: RunArgs { timeout: 600, ..RunArgs::new(Platform::Bochs, 4) },
            check: |o| {
                expect_eq(o, &["result"], "pass".into())?;
                expect_eq(o, &["cpus_online"], 4.into())?;
                expect_eq(o, &["vmx", "vmxon_cpus"], 4.into())?;
                for f in [
                    "supported",
                    "tertiary",
                    "apicv",
                    "posted_interrupts",
                    "x2apic_virt",
                    "ept",
                    "vpid",
                    "unrestricted_guest",
                ] {
                    expect_eq(o, &["vmx", f], true.into())?;
                }
                // Stock Bochs 3.0 lacks IPI virtualization until the project's patch adds it.
                expect_eq(o, &["vmx", "ipiv"], false.into())
            },
        },
    ]
}

pub fn run_all(args: &TestArgs) -> Result<()> {
    let mut passed = 0;
    let mut failed = Vec::new();
    if !args.no_unit {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        eprintln!("xtask test: host unit tests (cargo test)");
        let ok = Command::new(cargo).arg("test").status()?.success();
        if ok {
            passed += 1;
        } else {
            failed.push("host unit tests".to_string());
        }
    }
    for case in cases() {
        if args.filter.as_deref().is_some_and(|f| !case.name.contains(f)) {
            continue;
        }
        eprintln!("xtask test: {} ...", case.name);
        let t = Instant::now();
        let res = run::run(&case.args).and_then(|o| {
            if o.timed_out {
                bail!("timed out");
            }
            (case.check)(&o)
        });
        match res {
            Ok(()) => {
                passed += 1;
                eprintln!("xtask test: {} ok ({:.1} s)", case.name, t.elapsed().as_secs_f64());
            }
            Err(e) => {
                eprintln!("xtask test: {} FAILED: {e:#}", case.name);
                failed.push(case.name.to_string());
            }
        }
    }
    println!("xtask: {passed} passed, {} failed", failed.len());
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(())
}
