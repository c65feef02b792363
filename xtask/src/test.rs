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
    /// Bochs' CPU model for the suite's Bochs runs (`bochs -help cpu`); cases that ask for IPI
    /// virtualization need a model with it. The `cpu-model-*` tests run every Intel VMX model
    /// whatever this says.
    #[arg(long, default_value = crate::bochs::DEFAULT_MODEL)]
    pub cpu_model: String,
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

/// The VM called `name` in the summary.
fn vm<'a>(o: &'a Outcome, name: &str) -> Result<&'a Value> {
    field(o, &["vms"])
        .as_array()
        .and_then(|vms| vms.iter().find(|v| v["name"] == name))
        .ok_or_else(|| anyhow::anyhow!("no VM {name} in the summary"))
}

fn vm_result(o: &Outcome, name: &str, want: &str) -> Result<()> {
    let v = vm(o, name)?;
    if v["result"] != want {
        bail!("VM {name}: result {} ({}), expected {want}", v["result"], v["reason"]);
    }
    Ok(())
}

/// Each vCPU of `name` reported once, with its own index.
fn every_vcpu_reported(o: &Outcome, name: &str, vcpus: u64) -> Result<()> {
    let v = vm(o, name)?;
    let mut seen: Vec<u64> = v["reports"].as_array().into_iter().flatten().filter_map(|r| r["vcpu"].as_u64()).collect();
    seen.sort();
    if seen != (0..vcpus).collect::<Vec<_>>() {
        bail!("VM {name}: vCPU reports {seen:?}, expected one from each of {vcpus}");
    }
    if v["vcpu_exits"].as_array().map(Vec::len) != Some(vcpus as usize) {
        bail!("VM {name}: vcpu_exits should have {vcpus} entries: {}", v["vcpu_exits"]);
    }
    Ok(())
}

/// ipi-basic / ipi-storm with IPIv off: every vCPU reported; the ICR writes exited (at least
/// one apic_write / msr_write_icr exit per IPI the hypervisor sent); receivers took posted
/// interrupts with no external-interrupt exit.
fn ipi_exit_path(o: &Outcome, name: &str, vcpus: u64, icr_exit: &str) -> Result<()> {
    vm_result(o, name, "pass")?;
    every_vcpu_reported(o, name, vcpus)?;
    let v = vm(o, name)?;
    if v["ipiv"] != false {
        bail!("VM {name}: IPIv should be off, summary says {}", v["ipiv"]);
    }
    for (i, c) in v["vcpu_exits"].as_array().unwrap().iter().enumerate() {
        let sent = c["ipi_sent_by_exit"].as_u64().unwrap_or(0);
        let exits = c[icr_exit].as_u64().unwrap_or(0);
        if sent == 0 || exits < sent {
            bail!("VM {name} vCPU {i}: {exits} {icr_exit} exits for {sent} IPIs sent by the exit path");
        }
        if c["external_interrupt"].as_u64().unwrap_or(0) > kicks_for_nmis(c) {
            bail!("VM {name} vCPU {i}: external-interrupt exits while receiving IPIs: {c}");
        }
    }
    Ok(())
}

fn ipi_storm_counts(o: &Outcome, name: &str) -> Result<()> {
    for r in vm(o, name)?["reports"].as_array().into_iter().flatten() {
        if r["sent"] != r["received"] || r["sent"].as_u64().unwrap_or(0) == 0 {
            bail!("ipi-storm vCPU {}: sent {} received {}", r["vcpu"], r["sent"], r["received"]);
        }
    }
    Ok(())
}

/// ipiv-rules passed on every vCPU, with IPIv really on.
fn ipiv_rules(o: &Outcome) -> Result<()> {
    vm_result(o, "ipiv-rules-0", "pass")?;
    every_vcpu_reported(o, "ipiv-rules-0", 4)?;
    if vm(o, "ipiv-rules-0")?["ipiv"] != true {
        bail!("ipiv-rules ran without IPIv");
    }
    Ok(())
}

/// ipi-basic with IPIv on: the covered IPIs (fixed, physical) exited 0 times on every vCPU;
/// the uncovered ones took the fallback path.
fn ipiv_covered(o: &Outcome, name: &str) -> Result<()> {
    vm_result(o, name, "pass")?;
    every_vcpu_reported(o, name, 4)?;
    let v = vm(o, name)?;
    if v["ipiv"] != true {
        bail!("VM {name}: IPIv should be on");
    }
    for r in v["reports"].as_array().unwrap() {
        if r["covered_exits"] != 0 || r["covered_sent"].as_u64().unwrap_or(0) == 0 {
            bail!("vCPU {}: {} exits for {} covered IPIs", r["vcpu"], r["covered_exits"], r["covered_sent"]);
        }
        let hv = &v["vcpu_exits"][r["vcpu"].as_u64().unwrap_or(0) as usize];
        if r["exits"]["external_interrupt"].as_u64().unwrap_or(0) > kicks_for_nmis(hv) {
            bail!("vCPU {}: external-interrupt exits: {}", r["vcpu"], r["exits"]);
        }
    }
    Ok(())
}

/// External-interrupt exits a receiver may take: one kick per virtual NMI injected (NMIs are
/// not posted; the kick brings the entry that injects them), and one per SIPI that started it
/// (the sender's kick may land after the waiting CPU already saw the SIPI and entered the
/// guest). Posted interrupts take none.
fn kicks_for_nmis(vcpu_exits: &Value) -> u64 {
    vcpu_exits["nmi_injected"].as_u64().unwrap_or(0) + vcpu_exits["sipis"].as_u64().unwrap_or(0)
}

/// ICR-write exits that were not INIT or SIPI (those always exit), over a VM's vCPUs.
fn icr_exits_beyond_startup(v: &Value) -> u64 {
    v["vcpu_exits"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let icr = c["msr_write_icr"].as_u64().unwrap_or(0) + c["apic_write"].as_u64().unwrap_or(0);
            icr.saturating_sub(c["startup_ipis_sent"].as_u64().unwrap_or(0))
        })
        .sum()
}

/// The neighbour VM beside a hostile one passed and saw nothing foreign.
fn neighbour_untouched(o: &Outcome, name: &str) -> Result<()> {
    vm_result(o, name, "pass")?;
    let v = vm(o, name)?;
    let r = v["reports"].as_array().and_then(|r| r.iter().find(|r| r["test"] == "neighbour"));
    let Some(r) = r else { bail!("VM {name}: no neighbour report") };
    if r["foreign_interrupts"] != 0 || r["nmis"] != 0 || r["memory_rounds"].as_u64().unwrap_or(0) == 0 {
        bail!("VM {name} saw something foreign: {r}");
    }
    Ok(())
}

/// A hostile VM ended as `want`, with a reason containing `why`, and the run is whole.
fn hostile_ended(o: &Outcome, name: &str, want: &str, why: &str) -> Result<()> {
    expect_eq(o, &["result"], "pass".into())?;
    vm_result(o, name, want)?;
    let reason = vm(o, name)?["reason"].as_str().unwrap_or("");
    if !reason.contains(why) {
        bail!("VM {name}: reason should mention {why:?}: {reason}");
    }
    Ok(())
}

fn hostile_cases() -> Vec<Case> {
    vec![
        Case {
            name: "hostile-report",
            args: bochs_guests("hostile-report:2,neighbour"),
            check: |o| {
                hostile_ended(o, "hostile-report-0", "killed", "report budget exceeded")?;
                let v = vm(o, "hostile-report-0")?;
                let reports = v["reports"].as_array().map(Vec::len).unwrap_or(0);
                if reports == 0 || reports > hvcore::budget::MAX_REPORTS as usize {
                    bail!("{reports} reports kept; the budget is {}", hvcore::budget::MAX_REPORTS);
                }
                if v["reports"][0] != serde_json::json!({"test": "hostile-report", "spaced": [1, 2]}) {
                    bail!("the first report should be kept in canonical form: {}", v["reports"][0]);
                }
                neighbour_untouched(o, "neighbour-1")
            },
        },
        Case {
            name: "hostile-exits",
            args: bochs_guests("hostile-exits:3,neighbour"),
            check: |o| {
                hostile_ended(o, "hostile-exits-0", "timeout", "watchdog")?;
                let e = &vm(o, "hostile-exits-0")?["exits"];
                for k in ["cpuid", "vmcall", "io"] {
                    if e[k].as_u64().unwrap_or(0) < 50 {
                        bail!("the {k} loop should have exited many times: {e}");
                    }
                }
                neighbour_untouched(o, "neighbour-1")
            },
        },
        Case {
            name: "hostile-console",
            args: bochs_guests("hostile-console:2,neighbour"),
            check: |o| {
                hostile_ended(o, "hostile-console-0", "pass", "")?;
                let dropped = vm(o, "hostile-console-0")?["console_dropped_bytes"].as_u64().unwrap_or(0);
                if dropped == 0 {
                    bail!("the console flood should have gone over the VM's console budget");
                }
                neighbour_untouched(o, "neighbour-1")?;
                let r = &vm(o, "neighbour-1")?["reports"][0];
                // One 160-byte piece at 115200 baud is 14 ms; before the budget a 4 KiB PRINT
                // kept the neighbour waiting 2.15 s.
                if r["print_worst_us"].as_u64().unwrap_or(u64::MAX) > 200_000 {
                    bail!("the neighbour waited too long for the console: {r}");
                }
                Ok(())
            },
        },
        Case {
            name: "hostile-hypercall",
            args: bochs_guests("hostile-hypercall:2,neighbour"),
            check: |o| {
                hostile_ended(o, "hostile-hypercall-0", "pass", "")?;
                every_vcpu_reported(o, "hostile-hypercall-0", 2)?;
                let refused = vm(o, "hostile-hypercall-0")?["exits"]["hypercall_refused"].as_u64().unwrap_or(0);
                if refused != 3 {
                    bail!("the 3 hypercalls from ring 3 should be counted as refused, got {refused}");
                }
                neighbour_untouched(o, "neighbour-1")
            },
        },
        Case {
            name: "hostile-icr-xapic",
            args: RunArgs { apic: Some("xapic".into()), ..bochs_guests("hostile-icr:2,neighbour") },
            check: |o| {
                hostile_ended(o, "hostile-icr-0", "pass", "")?;
                every_vcpu_reported(o, "hostile-icr-0", 2)?;
                neighbour_untouched(o, "neighbour-1")
            },
        },
        Case {
            name: "hostile-icr-x2apic",
            args: RunArgs { apic: Some("x2apic".into()), ..bochs_guests("hostile-icr:2,neighbour") },
            check: |o| {
                hostile_ended(o, "hostile-icr-0", "pass", "")?;
                every_vcpu_reported(o, "hostile-icr-0", 2)?;
                neighbour_untouched(o, "neighbour-1")
            },
        },
        Case {
            name: "hostile-icr-x2apic-ipiv-off",
            args: RunArgs {
                apic: Some("x2apic".into()),
                ipiv: Some("off".into()),
                ..bochs_guests("hostile-icr:2,neighbour")
            },
            check: |o| {
                hostile_ended(o, "hostile-icr-0", "pass", "")?;
                every_vcpu_reported(o, "hostile-icr-0", 2)?;
                neighbour_untouched(o, "neighbour-1")
            },
        },
        Case {
            name: "hostile-nmi-xapic",
            args: RunArgs { apic: Some("xapic".into()), ..bochs_guests("hostile-nmi:2,neighbour") },
            check: nmi_rules_held,
        },
        Case {
            name: "hostile-nmi-x2apic-hlt-exit",
            args: RunArgs {
                apic: Some("x2apic".into()),
                hlt: Some("exit".into()),
                ..bochs_guests("hostile-nmi:2,neighbour")
            },
            check: nmi_rules_held,
        },
        Case {
            name: "hostile-apic-fetch",
            args: RunArgs {
                apic: Some("xapic".into()),
                ..bochs_guests("hostile-apic+cmdline=end=fetch+expect=killed,neighbour")
            },
            check: |o| apic_legal_then(o, "killed", "instruction fetch from the APIC-access page"),
        },
        Case {
            name: "hostile-apic-wide",
            args: RunArgs { apic: Some("xapic".into()), ..bochs_guests("hostile-apic+cmdline=end=wide,neighbour") },
            check: |o| apic_legal_then(o, "pass", ""),
        },
        Case {
            name: "hostile-lapic",
            args: bochs_guests("hostile-lapic,neighbour"),
            check: |o| {
                hostile_ended(o, "hostile-lapic-0", "pass", "")?;
                let r = &vm(o, "hostile-lapic-0")?["reports"][0];
                if r["base_faults"].as_u64().unwrap_or(0) == 0 || r["base_ok"].as_u64().unwrap_or(0) == 0 {
                    bail!("IA32_APIC_BASE writes should both fault and take: {r}");
                }
                neighbour_untouched(o, "neighbour-1")
            },
        },
        Case {
            name: "hostile-sweep",
            args: RunArgs { apic: Some("xapic".into()), ..bochs_guests("hostile-sweep,neighbour") },
            check: |o| {
                hostile_ended(o, "hostile-sweep-0", "pass", "")?;
                let r = &vm(o, "hostile-sweep-0")?["reports"][0];
                if r["ports"] != 65536 || r["readable"].as_u64().unwrap_or(0) < 10 {
                    bail!("the sweep should cover every port and read some MSRs: {r}");
                }
                neighbour_untouched(o, "neighbour-1")
            },
        },
        Case {
            name: "hostile-memory",
            args: bochs_guests("hostile-memory,neighbour"),
            check: |o| {
                hostile_ended(o, "hostile-memory-0", "killed", "EPT violation")?;
                let reason = vm(o, "hostile-memory-0")?["reason"].as_str().unwrap_or("").to_string();
                // 16 MiB of RAM: the read 4 KiB past its end.
                if !reason.contains("0x1001000") {
                    bail!("the reason should name the address beyond RAM: {reason}");
                }
                neighbour_untouched(o, "neighbour-1")
            },
        },
        Case {
            name: "hostile-timer-xapic",
            args: RunArgs { apic: Some("xapic".into()), ..bochs_guests("hostile-timer:2,neighbour") },
            check: timer_floor_held,
        },
        Case {
            name: "hostile-timer-x2apic",
            args: RunArgs { apic: Some("x2apic".into()), ..bochs_guests("hostile-timer:2,neighbour") },
            check: timer_floor_held,
        },
        Case {
            name: "hostile-exit-budget",
            args: bochs_guests("hostile-exits:1+max_exits_per_second=20000+expect=killed,neighbour"),
            check: |o| {
                hostile_ended(o, "hostile-exits-0", "killed", "exit budget exceeded: more than 20000")?;
                neighbour_untouched(o, "neighbour-1")
            },
        },
    ]
}

/// The PC inside each VM: its port-I/O devices, and isa-debug-exit ending the VM both ways.
fn pc_cases() -> Vec<Case> {
    vec![
        Case {
            name: "pc-devices",
            args: bochs_guests("pc-devices:2"),
            check: |o| {
                vm_result(o, "pc-devices-0", "pass")?;
                let v = vm(o, "pc-devices-0")?;
                if !v["reason"].as_str().unwrap_or("").ends_with("isa-debug-exit: 0") {
                    bail!("the VM should have ended through isa-debug-exit: {}", v["reason"]);
                }
                let r = &v["reports"][0];
                println!("  PIT channel 2 against the TSC: {}/1000", r["pit_per_mille"]);
                Ok(())
            },
        },
        Case {
            name: "acpi-xapic",
            args: RunArgs { apic: Some("xapic".into()), ..bochs_guests("acpi:4") },
            check: |o| acpi_seen(o, 0),
        },
        Case {
            name: "acpi-x2apic",
            args: RunArgs { apic: Some("x2apic".into()), ..bochs_guests("acpi:4") },
            check: |o| acpi_seen(o, 4),
        },
        Case {
            name: "timer-xapic",
            args: RunArgs { apic: Some("xapic".into()), ..bochs_guests("timer:2") },
            check: |o| timer_ok(o, 2, "xapic", "preemption"),
        },
        Case {
            name: "timer-x2apic",
            args: RunArgs { apic: Some("x2apic".into()), ..bochs_guests("timer:2") },
            check: |o| timer_ok(o, 2, "x2apic", "preemption"),
        },
        Case {
            name: "timer-x2apic-host-apic",
            args: RunArgs { apic: Some("x2apic".into()), ..bochs_guests("timer:2+timer=host-apic") },
            check: |o| timer_ok(o, 2, "x2apic", "host-apic"),
        },
        Case {
            name: "timer-xapic-hlt-exit",
            args: RunArgs { apic: Some("xapic".into()), hlt: Some("exit".into()), ..bochs_guests("timer:2") },
            check: |o| timer_ok(o, 2, "xapic", "preemption"),
        },
        Case {
            name: "smp-boot-xapic",
            args: RunArgs { apic: Some("xapic".into()), ..bochs_guests("smp-boot:4") },
            check: |o| smp_boot_ok(o, 4),
        },
        Case {
            name: "smp-boot-x2apic",
            args: RunArgs { apic: Some("x2apic".into()), ..bochs_guests("smp-boot:4") },
            check: |o| smp_boot_ok(o, 4),
        },
        Case {
            name: "smp-boot-xapic-ipiv-off",
            args: RunArgs { apic: Some("xapic".into()), ipiv: Some("off".into()), ..bochs_guests("smp-boot:4") },
            check: |o| smp_boot_ok(o, 4),
        },
        Case {
            name: "smp-boot-x2apic-ipiv-off-hlt-exit",
            args: RunArgs {
                apic: Some("x2apic".into()),
                ipiv: Some("off".into()),
                hlt: Some("exit".into()),
                ..bochs_guests("smp-boot:4")
            },
            check: |o| smp_boot_ok(o, 4),
        },
        Case {
            name: "uart-xapic",
            args: RunArgs { apic: Some("xapic".into()), ..bochs_guests("uart:1") },
            check: uart_ok,
        },
        Case {
            name: "uart-x2apic",
            args: RunArgs { apic: Some("x2apic".into()), ..bochs_guests("uart:1") },
            check: uart_ok,
        },
        Case {
            name: "ioapic-xapic",
            args: RunArgs { apic: Some("xapic".into()), ..bochs_guests("ioapic:2") },
            check: ioapic_ok,
        },
        Case {
            name: "ioapic-x2apic-ipiv-off",
            args: RunArgs { apic: Some("x2apic".into()), ipiv: Some("off".into()), ..bochs_guests("ioapic:2") },
            check: ioapic_ok,
        },
        Case {
            name: "pc-devices-exit-code",
            args: bochs_guests("pc-devices:1+cmdline=exit=49+expect=fail"),
            check: |o| {
                vm_result(o, "pc-devices-0", "fail")?;
                let reason = vm(o, "pc-devices-0")?["reason"].as_str().unwrap_or("").to_string();
                if !reason.contains("isa-debug-exit: code 49") {
                    bail!("the reason should carry the exit code: {reason}");
                }
                Ok(())
            },
        },
    ]
}

/// The timer guest passed on every vCPU in `mode`, each vCPU's interrupts all came from its
/// APIC timer through the hypervisor (`timer_interrupts` at least the test's 23, each a timer
/// exit, delivered by `source`, unless HLT exits: then the wait in the hypervisor delivers
/// them); prints the accuracy and the cost per timer interrupt.
fn timer_ok(o: &Outcome, vcpus: u64, mode: &str, source: &str) -> Result<()> {
    vm_result(o, "timer-0", "pass")?;
    every_vcpu_reported(o, "timer-0", vcpus)?;
    let v = vm(o, "timer-0")?;
    if v["timer"] != source {
        bail!("the timer should be delivered by {source}, summary says {}", v["timer"]);
    }
    for r in v["reports"].as_array().unwrap() {
        if r["apic"] != mode || r["tsc_deadline"] != true {
            bail!("vCPU {} ran in the wrong mode or without TSC-deadline: {r}", r["vcpu"]);
        }
        let c = &v["vcpu_exits"][r["vcpu"].as_u64().unwrap_or(0) as usize];
        let (fired, exits) = (c["timer_interrupts"].as_u64().unwrap_or(0), c["timer_exits"].as_u64().unwrap_or(0));
        let halts_exit = v["hlt"] == "exit";
        if fired < 23 || (exits == 0 && !halts_exit) || exits > fired {
            bail!("vCPU {}: {fired} timer interrupts, {exits} timer exits: {c}", r["vcpu"]);
        }
        println!(
            "  vCPU {}: one-shot {} ppm, divide-16 {} ppm, periodic {} ppm, TSC deadline {} ticks late; {} hypervisor ticks per timer interrupt",
            r["vcpu"],
            r["one_shot_ppm"],
            r["divide16_ppm"],
            r["periodic_ppm"],
            r["deadline_late_ticks"],
            c["timer_exit_ticks"].as_u64().unwrap_or(0) / exits.max(1)
        );
    }
    Ok(())
}

/// smp-boot passed, and every application processor was started three times (boot, INIT by
/// destination, INIT by shorthand), each by a SIPI after an INIT the hypervisor applied.
fn smp_boot_ok(o: &Outcome, vcpus: usize) -> Result<()> {
    vm_result(o, "smp-boot-0", "pass")?;
    let v = vm(o, "smp-boot-0")?;
    let cpus = v["vcpu_exits"].as_array().map(Vec::as_slice).unwrap_or_default();
    if cpus.len() != vcpus {
        bail!("{} vCPUs in the summary, expected {vcpus}", cpus.len());
    }
    for (i, c) in cpus.iter().enumerate().skip(1) {
        if c["sipis"] != 3 || c["inits"].as_u64().unwrap_or(0) < 2 {
            bail!("vCPU {i}: {} SIPIs and {} INITs applied, expected 3 and at least 2: {c}", c["sipis"], c["inits"]);
        }
    }
    Ok(())
}

/// The interrupt-driven UART sent its line one byte per interrupt, each an I/O APIC message.
fn uart_ok(o: &Outcome) -> Result<()> {
    vm_result(o, "uart-0", "pass")?;
    let v = vm(o, "uart-0")?;
    let r = &v["reports"][0];
    let bytes = r["bytes"].as_u64().unwrap_or(0);
    if bytes == 0 || r["interrupts"].as_u64() != Some(bytes + 1) {
        bail!("one interrupt per byte and one more: {r}");
    }
    if v["vcpu_exits"][0]["device_interrupts"].as_u64() != Some(bytes + 1) {
        bail!("the I/O APIC should have sent {} messages: {}", bytes + 1, v["vcpu_exits"][0]);
    }
    Ok(())
}

/// The ioapic guest passed; its level-triggered interrupts' EOIs reached the I/O APIC.
fn ioapic_ok(o: &Outcome) -> Result<()> {
    vm_result(o, "ioapic-0", "pass")?;
    let v = vm(o, "ioapic-0")?;
    let r = &v["reports"][0];
    if r["entries"].as_u64().unwrap_or(0) < 24 || r["level_runs"] != 3 {
        bail!("the I/O APIC report is incomplete: {r}");
    }
    if v["exits"]["device_eois"].as_u64().unwrap_or(0) < 3 {
        bail!("the three level-triggered interrupts should each end in an EOI exit: {}", v["exits"]);
    }
    Ok(())
}

/// Every vCPU of the 4-vCPU acpi guest found the tables and four processor entries of the
/// APIC mode's kind (`x2apic_entries` of them Local x2APIC).
fn acpi_seen(o: &Outcome, x2apic_entries: u64) -> Result<()> {
    vm_result(o, "acpi-0", "pass")?;
    every_vcpu_reported(o, "acpi-0", 4)?;
    for r in vm(o, "acpi-0")?["reports"].as_array().unwrap() {
        if r["processors"] != 4 || r["x2apic_entries"] != x2apic_entries {
            bail!("vCPU {} read the MADT wrong: {r}", r["vcpu"]);
        }
    }
    Ok(())
}

/// hostile-apic completed every legal access (its report is there) and then ended as `want`
/// (stopped for the hostile access, with `why` in the reason, or passed).
fn apic_legal_then(o: &Outcome, want: &str, why: &str) -> Result<()> {
    hostile_ended(o, "hostile-apic-0", want, why)?;
    let v = vm(o, "hostile-apic-0")?;
    let r = &v["reports"][0];
    if r["registers"] != 64 || r["xsetbv_refused"] != 4 {
        bail!("the legal accesses should all have completed first: {r}");
    }
    // PPR, APR, RRD, LVT CMCI and the current count, read and written (10), plus the re-reads.
    if v["exits"]["emulated"].as_u64().unwrap_or(0) < 12 {
        bail!("the unvirtualized registers should have been emulated: {}", v["exits"]);
    }
    neighbour_untouched(o, "neighbour-1")
}

/// hostile-timer was not stopped (a fast timer is legal), its periodic timer was held to the
/// minimum period on every vCPU, and the neighbour saw nothing.
fn timer_floor_held(o: &Outcome) -> Result<()> {
    hostile_ended(o, "hostile-timer-0", "pass", "")?;
    every_vcpu_reported(o, "hostile-timer-0", 2)?;
    for r in vm(o, "hostile-timer-0")?["reports"].as_array().unwrap() {
        let (n, most) = (r["periodic"].as_u64().unwrap_or(0), r["periodic_most"].as_u64().unwrap_or(0));
        if n == 0 || n > most || r["rearms"].as_u64().unwrap_or(0) < 2000 {
            bail!("vCPU {}: {n} periodic interrupts (at most {most}), {} re-arms: {r}", r["vcpu"], r["rearms"]);
        }
    }
    neighbour_untouched(o, "neighbour-1")
}

/// hostile-nmi passed its own checks, its NMIs went through the NMI window at least once (the
/// ones sent during a handler), and the neighbour saw none of them.
fn nmi_rules_held(o: &Outcome) -> Result<()> {
    hostile_ended(o, "hostile-nmi-0", "pass", "")?;
    every_vcpu_reported(o, "hostile-nmi-0", 2)?;
    let e = &vm(o, "hostile-nmi-0")?["exits"];
    if e["nmi_window"].as_u64().unwrap_or(0) == 0 || e["nmi_injected"].as_u64().unwrap_or(0) < 110 {
        bail!("NMIs should be injected (>= 110) and some wait for the NMI window: {e}");
    }
    neighbour_untouched(o, "neighbour-1")
}

fn bochs_guests(list: &str) -> RunArgs {
    RunArgs { timeout: 300, ..RunArgs::new(Platform::Bochs, 4) }.with_guests(list)
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
            name: "bochs-vms-hello-2x2",
            args: bochs_guests("hello:2,hello:2"),
            check: |o| {
                expect_eq(o, &["result"], "pass".into())?;
                for name in ["hello-0", "hello-1"] {
                    vm_result(o, name, "pass")?;
                    every_vcpu_reported(o, name, 2)?;
                    let v = vm(o, name)?;
                    if v["exits"]["cpuid"].as_u64().unwrap_or(0) < 2 || v["exits"]["vmcall"].as_u64().unwrap_or(0) < 2 {
                        bail!("VM {name}: exit counters missing: {}", v["exits"]);
                    }
                    for r in v["reports"].as_array().unwrap() {
                        if r["apic_id"] != r["vcpu"] {
                            bail!("VM {name}: vCPU {} saw APIC ID {}", r["vcpu"], r["apic_id"]);
                        }
                    }
                }
                Ok(())
            },
        },
        Case {
            name: "bochs-vms-escape-is-killed",
            args: bochs_guests("escape,hello"),
            check: |o| {
                expect_eq(o, &["result"], "pass".into())?;
                vm_result(o, "escape-0", "killed")?;
                let reason = vm(o, "escape-0")?["reason"].as_str().unwrap_or("");
                if !reason.contains("EPT violation") || !reason.contains("GPA 0x1100000") {
                    bail!("escape reason lacks the EPT violation and GPA: {reason}");
                }
                vm_result(o, "hello-1", "pass")
            },
        },
        Case {
            name: "bochs-vms-panic-fails",
            args: bochs_guests("panic,hello"),
            check: |o| {
                vm_result(o, "panic-0", "fail")?;
                let reason = vm(o, "panic-0")?["reason"].as_str().unwrap_or("");
                if !reason.contains("deliberate guest panic") {
                    bail!("panic reason lacks the guest's message: {reason}");
                }
                vm_result(o, "hello-1", "pass")
            },
        },
        Case {
            name: "bochs-vms-hang-times-out",
            args: bochs_guests("hang,hello"),
            check: |o| {
                vm_result(o, "hang-0", "timeout")?;
                vm_result(o, "hello-1", "pass")?;
                if vm(o, "hang-0")?["exits"]["preemption_timer"].as_u64().unwrap_or(0) == 0 {
                    bail!("the watchdog should have fired through the VMX-preemption timer");
                }
                Ok(())
            },
        },
        Case {
            name: "bochs-vms-memory",
            args: bochs_guests("memory:2"),
            check: |o| {
                vm_result(o, "memory-0", "pass")?;
                every_vcpu_reported(o, "memory-0", 2)
            },
        },
        Case {
            name: "bochs-vms-cpuid-msr",
            args: bochs_guests("cpuid-msr:2,hello:2"),
            check: |o| {
                vm_result(o, "cpuid-msr-0", "pass")?;
                every_vcpu_reported(o, "cpuid-msr-0", 2)?;
                let v = vm(o, "cpuid-msr-0")?;
                if v["exits"]["ignored_io"].as_u64().unwrap_or(0) < 2 {
                    bail!("reads of unknown ports should be counted: {}", v["exits"]);
                }
                vm_result(o, "hello-1", "pass")
            },
        },
        Case {
            name: "bochs-ipi-basic-xapic",
            args: RunArgs { apic: Some("xapic".into()), ipiv: Some("off".into()), ..bochs_guests("ipi-basic:4") },
            check: |o| {
                ipi_exit_path(o, "ipi-basic-0", 4, "apic_write")?;
                if vm(o, "ipi-basic-0")?["apic_mode"] != "xapic" {
                    bail!("apic_mode should be xapic");
                }
                Ok(())
            },
        },
        Case {
            name: "bochs-ipi-basic-x2apic",
            args: RunArgs { apic: Some("x2apic".into()), ipiv: Some("off".into()), ..bochs_guests("ipi-basic:4") },
            check: |o| {
                ipi_exit_path(o, "ipi-basic-0", 4, "msr_write_icr")?;
                if vm(o, "ipi-basic-0")?["apic_mode"] != "x2apic" {
                    bail!("apic_mode should be x2apic");
                }
                Ok(())
            },
        },
        Case {
            name: "bochs-ipi-basic-hlt-exit",
            args: RunArgs {
                apic: Some("xapic".into()),
                ipiv: Some("off".into()),
                hlt: Some("exit".into()),
                ..bochs_guests("ipi-basic:4")
            },
            check: |o| {
                ipi_exit_path(o, "ipi-basic-0", 4, "apic_write")?;
                let v = vm(o, "ipi-basic-0")?;
                if v["hlt"] != "exit" || v["exits"]["hlt"].as_u64().unwrap_or(0) == 0 {
                    bail!("the halted receiver should have exited on HLT: {}", v["exits"]);
                }
                Ok(())
            },
        },
        Case {
            name: "bochs-ipi-storm-xapic",
            args: RunArgs { apic: Some("xapic".into()), ipiv: Some("off".into()), ..bochs_guests("ipi-storm:4") },
            check: |o| {
                ipi_exit_path(o, "ipi-storm-0", 4, "apic_write")?;
                ipi_storm_counts(o, "ipi-storm-0")
            },
        },
        Case {
            name: "bochs-ipi-storm-x2apic",
            args: RunArgs { apic: Some("x2apic".into()), ipiv: Some("off".into()), ..bochs_guests("ipi-storm:4") },
            check: |o| {
                ipi_exit_path(o, "ipi-storm-0", 4, "msr_write_icr")?;
                ipi_storm_counts(o, "ipi-storm-0")
            },
        },
        Case {
            name: "bochs-ipiv-rules-xapic",
            args: RunArgs { apic: Some("xapic".into()), ..bochs_guests("ipiv-rules:4") },
            check: |o| ipiv_rules(o),
        },
        Case {
            name: "bochs-ipiv-rules-x2apic",
            args: RunArgs { apic: Some("x2apic".into()), ..bochs_guests("ipiv-rules:4") },
            check: |o| ipiv_rules(o),
        },
        Case {
            name: "bochs-ipi-basic-ipiv-xapic",
            args: RunArgs { apic: Some("xapic".into()), ipiv: Some("on".into()), ..bochs_guests("ipi-basic:4") },
            check: |o| ipiv_covered(o, "ipi-basic-0"),
        },
        Case {
            name: "bochs-ipi-basic-ipiv-x2apic",
            args: RunArgs { apic: Some("x2apic".into()), ipiv: Some("on".into()), ..bochs_guests("ipi-basic:4") },
            check: |o| ipiv_covered(o, "ipi-basic-0"),
        },
        Case {
            name: "bochs-ipi-storm-ipiv-x2apic",
            args: RunArgs { apic: Some("x2apic".into()), ipiv: Some("on".into()), ..bochs_guests("ipi-storm:4") },
            check: |o| {
                ipi_storm_counts(o, "ipi-storm-0")?;
                let v = vm(o, "ipi-storm-0")?;
                if icr_exits_beyond_startup(v) != 0 {
                    bail!("with IPIv the storm's IPIs must not exit (INIT-SIPI aside): {}", v["vcpu_exits"]);
                }
                Ok(())
            },
        },
        Case {
            name: "bochs-vm-entry-failure-is-decoded",
            args: RunArgs {
                fault: "bad-guest-state".into(),
                expect: Some("fail".into()),
                ..bochs_guests("hello,hello")
            },
            check: |o| {
                vm_result(o, "hello-0", "fail")?;
                let reason = vm(o, "hello-0")?["reason"].as_str().unwrap_or("");
                for part in [
                    "VM-entry failure (exit reason 33)",
                    "invalid guest state",
                    "qualification",
                    "suspect: GuestRflags",
                ] {
                    if !reason.contains(part) {
                        bail!("entry-failure report lacks {part:?}: {reason}");
                    }
                }
                vm_result(o, "hello-1", "fail")
            },
        },
        Case {
            name: "bochs-kernel-refuses-bad-manifest",
            args: RunArgs {
                manifest: Some("xtask/tests/overlapping-cpus.manifest".into()),
                skip_manifest_check: true,
                expect: Some("fail".into()),
                timeout: 300,
                ..RunArgs::new(Platform::Bochs, 4)
            },
            check: |o| {
                expect_eq(o, &["result"], "fail".into())?;
                let reason = field(o, &["reason"]).as_str().unwrap_or("");
                if !reason.contains("manifest") || !reason.contains("already pinned") {
                    bail!("reason should name the manifest problem: {reason}");
                }
                expect_eq(o, &["vms"], serde_json::json!([]))
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
                // The project's Bochs patches (xtask/patches/0002-0008) add IPI virtualization.
                expect_eq(o, &["vmx", "ipiv"], true.into())
            },
        },
    ]
}

/// The guest tests that mean something on QEMU's reference PC, booted there directly (xAPIC:
/// QEMU's TCG emulates x2APIC only from QEMU 8.0), each with the vCPUs it runs on and how many
/// reports it must leave.
const QEMU_GUESTS: &[(&str, usize)] = &[
    ("hello:2", 2),
    ("memory:2", 2),
    ("cpuid-msr:2", 2),
    ("panic", 0),
    ("ipi-basic:4", 4),
    ("ipi-storm:4", 4),
    ("ipi-bench:2+cmdline=iterations=100", 1),
    ("pc-devices:2", 1),
    ("acpi:4", 4),
    ("timer:2", 2),
    ("uart:1", 1),
    ("ioapic:2", 1),
    ("smp-boot:4", 1),
    ("neighbour", 1),
    ("conf-hlt:2", 1),
    ("conf-apic:2", 1),
    ("conf-cr", 1),
    ("conf-step", 1),
    ("conf-cpl0", 1),
    ("conf-ioapic:2", 1),
    ("conf-realmode:2", 1),
    ("conf-task:2", 1),
];

/// One guest test booted directly by QEMU: it ends as its catalogue entry expects, with its
/// reports.
fn qemu_guest(list: &str, reports: usize) -> Result<()> {
    let args = RunArgs { timeout: 120, ..RunArgs::new(Platform::Qemu, 4) }.with_guests(list);
    let o = run::run(&args)?;
    let name = format!("{}-0", list.split([':', '+']).next().unwrap_or_default());
    let v = vm(&o, &name)?;
    if !o.accepted {
        bail!("VM {name}: {} ({}), expected {}", v["result"], v["reason"], v["expect"]);
    }
    let got = v["reports"].as_array().map(Vec::len).unwrap_or(0);
    if got != reports {
        bail!("VM {name}: {got} reports, expected {reports}: {}", v["reports"]);
    }
    Ok(())
}

/// The assembly fixture kernel (not built with the project's runtime) with `--kernel FILE
/// --vcpus 2`: it finds its command line, starts its second processor with INIT-SIPI-SIPI and
/// passes.
fn kernel_fixture(platform: Platform) -> Result<()> {
    let kernel = crate::fixtures::mini_multiboot()?;
    let args = RunArgs {
        kernel: Some(kernel),
        append: Some("cpus=2".into()),
        vcpus: 2,
        timeout: 120,
        ..RunArgs::new(platform, 4)
    };
    let o = run::run(&args)?;
    vm_result(&o, "kernel", "pass")?;
    if !vm(&o, "kernel")?["reason"].as_str().unwrap_or("").ends_with("isa-debug-exit: 0") {
        bail!("the fixture should end through isa-debug-exit with 0: {}", vm(&o, "kernel")?["reason"]);
    }
    if platform == Platform::Bochs && vm(&o, "kernel")?["vcpu_exits"][1]["sipis"] != 1 {
        bail!("vCPU 1 should have been started by one SIPI: {}", vm(&o, "kernel")?["vcpu_exits"][1]);
    }
    Ok(())
}

/// A foreign kernel named by path in a manifest (`kernel = fixtures/mini-multiboot`, relative
/// to the manifest's folder) beside a catalogue guest: both pass, and the foreign one found its
/// command line and second processor.
fn manifest_foreign_kernel() -> Result<()> {
    crate::fixtures::mini_multiboot()?;
    let manifest = std::path::PathBuf::from("target/xtask/foreign-kernel.manifest");
    std::fs::write(
        &manifest,
        "[vm]\nname = foreign\nkernel = fixtures/mini-multiboot\ncmdline = \"cpus=2\"\nvcpus = 2\n\n\
         [vm]\nname = hello\nkernel = hello\n",
    )?;
    let args = RunArgs { manifest: Some(manifest), timeout: 120, ..RunArgs::new(Platform::Bochs, 4) };
    let o = run::run(&args)?;
    vm_result(&o, "foreign", "pass")?;
    vm_result(&o, "hello", "pass")?;
    if !vm(&o, "foreign")?["reason"].as_str().unwrap_or("").ends_with("isa-debug-exit: 0") {
        bail!("the fixture should end through isa-debug-exit with 0: {}", vm(&o, "foreign")?["reason"]);
    }
    Ok(())
}

/// Every guest test that passes, batched four CPUs at a time, for the guest-matrix runs.
const MATRIX_BATCHES: &[&str] = &[
    "hello:1,memory:1,cpuid-msr:1,pc-devices:1",
    "ipi-basic:4",
    "ipi-storm:4",
    "acpi:4",
    "timer:2,ioapic:2",
    "uart:1,smp-boot:3",
    "ipi-bench:2+cmdline=iterations=50,neighbour",
    // The project's conformance kernels (docs/conformance.md).
    "conf-hlt:2,conf-apic:2",
    "conf-ioapic:2,conf-realmode:2",
    "conf-cr:1,conf-step:1,conf-cpl0:1",
    "conf-task:2",
];

/// The interrupt paths the guest matrix runs on: IPIv on, IPIv off (the posted path), the two
/// paths of CPUs without posted interrupts, asked for by name (`interrupt_path`), and the
/// injection path without a TPR shadow (CR8 exits; no CPU model here lacks one).
const MATRIX_PATHS: [(&str, &str); 5] = [
    ("ipiv-on", "ipiv"),
    ("ipiv-off", "posted"),
    ("virtual-delivery", "virtual-delivery"),
    ("injection", "injection"),
    ("injection-no-tpr-shadow", "injection"),
];

/// One batch in one APIC mode on one interrupt path: every VM ends as its test expects.
fn matrix_batch(list: &str, apic: &str, label: &str, path: &str, cpu_model: &str) -> Result<()> {
    let list = if label == "injection-no-tpr-shadow" {
        list.split(',').map(|item| format!("{item}+debug_no_tpr_shadow=true")).collect::<Vec<_>>().join(",")
    } else {
        list.to_string()
    };
    let mut args = RunArgs { apic: Some(apic.into()), cpu_model: cpu_model.into(), ..bochs_guests(&list) };
    match path {
        "ipiv" => args.ipiv = Some("on".into()),
        "posted" => args.ipiv = Some("off".into()),
        p => args.interrupt_path = Some(p.into()),
    }
    let o = run::run(&args)?;
    if o.timed_out {
        bail!("timed out");
    }
    expect_eq(&o, &["result"], "pass".into())?;
    for v in field(&o, &["vms"]).as_array().into_iter().flatten() {
        if v["interrupt_path"] != path || v["apic_mode"] != apic {
            bail!("VM {} ran on interrupt path {} in {} mode", v["name"], v["interrupt_path"], v["apic_mode"]);
        }
    }
    Ok(())
}

/// A bad manifest is refused by xtask before any emulator starts.
fn refuses_bad_manifest_before_launch() -> Result<()> {
    let args =
        RunArgs { manifest: Some("xtask/tests/overlapping-cpus.manifest".into()), ..RunArgs::new(Platform::Bochs, 4) };
    match run::run(&args) {
        Ok(_) => bail!("the run started"),
        Err(e) if format!("{e:#}").contains("already pinned to VM `a`") => Ok(()),
        Err(e) => bail!("refused for the wrong reason: {e:#}"),
    }
}

/// Debian's Linux, SMP on 4 vCPUs in x2APIC mode with IPIv, runs a short IPI workload beside a
/// 2-vCPU test guest that must pass too; every part of the workload must meet the IPIv target
/// (IPI-related exits per guest IPI, from the exit census).
fn linux_beside_guest() -> Result<()> {
    use crate::bench_linux::{self, Config};
    let args = RunArgs {
        linux: true,
        vcpus: 4,
        apic: Some("x2apic".into()),
        ipiv: Some("on".into()),
        append: Some(bench_linux::counts(200)),
        timeout: 900,
        ..RunArgs::new(Platform::Bochs, 6).with_guests("ipi-storm:2")
    };
    let o = run::run(&args)?;
    if o.timed_out {
        bail!("timed out");
    }
    vm_result(&o, "linux", "pass")?;
    vm_result(&o, "ipi-storm-0", "pass")?;
    ipi_storm_counts(&o, "ipi-storm-0")?;
    let log = std::fs::read_to_string(&o.serial)?;
    if !log.contains("smpboot: Total of 4 processors activated") {
        bail!("Linux did not bring all 4 vCPUs online");
    }
    let records = bench_linux::vm_records(Config { config: "ipiv-on", apic: "x2apic" }, vm(&o, "linux")?)?;
    let parts: Vec<&str> = records.iter().filter_map(|r| r["workload"].as_str()).collect();
    if parts != ["wake", "tlb", "membarrier"] {
        bail!("the workload reported {parts:?}, not wake, tlb and membarrier");
    }
    for c in bench_linux::check_targets(&records) {
        if c.met != Some(true) {
            bail!("{} ({})", c.what, c.detail);
        }
        println!("xtask test:   {} ({})", c.what, c.detail);
    }
    Ok(())
}

/// Debian's Linux on 4 vCPUs on the injection path, on a CPU model of that generation (no
/// APIC-register virtualization, no virtual-interrupt delivery: the hypervisor models the APIC
/// and injects every interrupt): it boots SMP, runs the workload's three parts on 4 CPUs and
/// ends the VM with 0.
fn linux_on_injection_path() -> Result<()> {
    let args = RunArgs {
        linux: true,
        vcpus: 4,
        apic: Some("xapic".into()),
        append: Some(crate::bench_linux::counts(200)),
        cpu_model: INJECTION_MODEL.into(),
        timeout: 900,
        ..RunArgs::new(Platform::Bochs, 4)
    };
    let o = run::run(&args)?;
    if o.timed_out {
        bail!("timed out");
    }
    vm_result(&o, "linux", "pass")?;
    let v = vm(&o, "linux")?;
    if v["interrupt_path"] != "injection" {
        bail!("Linux ran on interrupt path {}, not injection", v["interrupt_path"]);
    }
    if !std::fs::read_to_string(&o.serial)?.contains("smpboot: Total of 4 processors activated") {
        bail!("Linux did not bring all 4 vCPUs online");
    }
    let reports = v["reports"].as_array().cloned().unwrap_or_default();
    let parts: Vec<&str> = reports.iter().filter_map(|r| r["workload"].as_str()).collect();
    if parts != ["wake", "tlb", "membarrier"] || reports.iter().any(|r| r["workload"].is_string() && r["cpus"] != 4) {
        bail!("the workload reported {reports:?}");
    }
    let injected = v["exits"]["interrupts_injected"].as_u64().unwrap_or(0);
    let ipis: u64 = reports
        .iter()
        .filter_map(|r| r["guest_ipis"].as_object())
        .flat_map(|m| m.values())
        .filter_map(|n| n.as_u64())
        .sum();
    if injected < ipis {
        bail!("{injected} interrupts injected, fewer than the workload's {ipis} IPIs");
    }
    println!("xtask test:   {ipis} guest IPIs, {injected} interrupts injected");
    Ok(())
}

/// The same kernel and initramfs on the reference PC (QEMU, TCG, no hypervisor): the workload
/// must see 4 CPUs, run its three parts and end the machine through isa-debug-exit with 0.
fn linux_on_qemu() -> Result<()> {
    let args = RunArgs {
        linux: true,
        vcpus: 4,
        append: Some(crate::bench_linux::counts(200)),
        timeout: 300,
        ..RunArgs::new(Platform::Qemu, 4)
    };
    let o = run::run(&args)?;
    vm_result(&o, "linux", "pass")?;
    let reports = vm(&o, "linux")?["reports"].as_array().cloned().unwrap_or_default();
    let parts: Vec<&str> = reports.iter().filter_map(|r| r["workload"].as_str()).collect();
    if parts != ["wake", "tlb", "membarrier"] || reports.iter().any(|r| r["workload"].is_string() && r["cpus"] != 4) {
        bail!("the workload on QEMU reported {reports:?}");
    }
    Ok(())
}

/// The image of `cargo xtask bench --peer kvm` builds from Debian's packages: KVM's modules,
/// QEMU with every library its ELF files name, its firmware, and a plan line for every cell.
fn kvm_peer_image() -> Result<()> {
    let cells = crate::kvm_peer::cells(4);
    let img = crate::kvm_peer::image(&cells, 200)?;
    eprintln!("xtask test: KVM's host image: {}", img.describe);
    if img.initrd.len() < 4 << 20 || img.kernel.len() < 1 << 20 {
        bail!("the image is too small to hold QEMU and the kernel: {}", img.describe);
    }
    Ok(())
}

/// A short bench run: the exit counts per IPI it reports must meet the targets (timings are
/// not checked here; they are `cargo xtask bench`'s business).
fn bench_exit_counts() -> Result<()> {
    use crate::bench::{self, BenchArgs, Cell};
    let a = BenchArgs {
        platform: Platform::Bochs,
        cpus: 4,
        iterations: Some(50),
        full: false,
        json: None,
        plot: None,
        timeout: 300,
        linux: false,
        peer: None,
        cpu_model: crate::bochs::DEFAULT_MODEL.into(),
        kvm_host: crate::kvm_peer::KvmHost::Trixie,
        kvm_params: String::new(),
    };
    let cells: Vec<Cell> = bench::matrix(4, Platform::Bochs)
        .into_iter()
        .filter(|c| c.pattern == "unicast" && c.config != "native" && c.target != "halt-exit")
        .collect();
    let (records, skipped) = bench::measure(&a, &cells, 50)?;
    for s in &skipped {
        eprintln!("xtask test: bench cell not measured: {s}");
    }
    let checks = bench::check_targets(&records, 500, false);
    let failed: Vec<_> =
        checks.iter().filter(|c| c.met == Some(false)).map(|c| format!("{} ({})", c.what, c.detail)).collect();
    if !failed.is_empty() {
        bail!("exit-count targets not met: {}", failed.join("; "));
    }
    if checks.iter().all(|c| c.met.is_none()) {
        bail!("no exit-count target was measured");
    }
    Ok(())
}

/// What each Intel VMX model of the project's Bochs does with this hypervisor (docs/hardware.md):
/// the interrupt path it runs on, or the words of its refusal.
#[derive(Clone, Copy, Debug)]
enum ModelExpect {
    Path(&'static str),
    /// The kernel refuses the VMs, naming this feature (and the CPU).
    Refused(&'static str),
    /// xtask refuses the model before booting (no long mode).
    NotBooted,
}

fn model_expectation(model: &str) -> Result<ModelExpect> {
    use ModelExpect::*;
    Ok(match model {
        "core_duo_t2400_yonah" => NotBooted,
        "core2_penryn_t9600" => Refused("EPT"),
        "corei5_lynnfield_750" => Refused("unrestricted guest"),
        "corei5_arrandale_m520" | "corei7_sandy_bridge_2600k" | "corei7_ivy_bridge_3770k" | "corei3_cnl" => {
            Path("injection")
        }
        "corei7_haswell_4770" | "broadwell_ult" => Path("virtual-delivery"),
        "corei7_skylake_x" | "corei7_icelake_u" | "tigerlake" | "arrow_lake" => Path("posted"),
        // The project's Bochs patches give this model IPI virtualization (xtask/patches).
        "sapphire_rapids" => Path("ipiv"),
        other => bail!("no expectation for CPU model {other}: add it here and to docs/hardware.md"),
    })
}

/// A model whose interrupt path is `injection` (`model_expectation`).
const INJECTION_MODEL: &str = "corei7_ivy_bridge_3770k";

/// The guests every CPU model runs: an SMP start by INIT and SIPI, IPIs of every kind, the
/// APIC timer (8 CPUs).
const CPU_MODEL_GUESTS: &str = "smp-boot:2,ipi-basic:4,timer:2";

/// `cpu-model-<model>`: boots the model and checks its expectation.
fn cpu_model(model: &str) -> Result<()> {
    let args = RunArgs { cpu_model: model.into(), ..RunArgs { timeout: 300, ..RunArgs::new(Platform::Bochs, 8) } }
        .with_guests(CPU_MODEL_GUESTS);
    let want = model_expectation(model)?;
    if let ModelExpect::NotBooted = want {
        let e = match run::run(&args) {
            Ok(_) => bail!("{model} has no long mode, yet xtask booted it"),
            Err(e) => format!("{e:#}"),
        };
        if !e.contains("no long mode") {
            bail!("the refusal should say the model has no long mode: {e}");
        }
        println!("  {model}: refused before boot ({e})");
        return Ok(());
    }
    let o = run::run(&args)?;
    if o.timed_out {
        bail!("timed out");
    }
    let brand = field(&o, &["cpu_model"]).as_str().unwrap_or_default().to_string();
    if brand.is_empty() {
        bail!("the summary names no CPU model");
    }
    match want {
        ModelExpect::Refused(feature) => {
            expect_eq(&o, &["result"], "fail".into())?;
            let reason = field(&o, &["reason"]).as_str().unwrap_or_default();
            if !reason.contains(feature) || !reason.contains(&format!("cannot run on this CPU ({brand})")) {
                bail!("the refusal should name {feature:?} and the CPU ({brand}): {reason}");
            }
            if field(&o, &["vms"]).as_array().is_some_and(|v| !v.is_empty()) {
                bail!("a refused VM should not have run");
            }
            println!("  {model} ({brand}): refused: {reason}");
        }
        ModelExpect::Path(path) => {
            for name in ["smp-boot-0", "ipi-basic-1", "timer-2"] {
                vm_result(&o, name, "pass")?;
                let v = vm(&o, name)?;
                if v["interrupt_path"] != path {
                    bail!("{name}: interrupt path {}, expected {path}", v["interrupt_path"]);
                }
                if (path == "ipiv") != v["interrupt_path_reason"].is_null() {
                    bail!("{name}: a reason is due exactly when the path is not ipiv: {}", v["interrupt_path_reason"]);
                }
            }
            every_vcpu_reported(&o, "ipi-basic-1", 4)?;
            every_vcpu_reported(&o, "timer-2", 2)?;
            let ipi = vm(&o, "ipi-basic-1")?;
            for r in ipi["reports"].as_array().into_iter().flatten() {
                if r["interrupt_path"] != path {
                    bail!("the guest was told interrupt path {}, expected {path}", r["interrupt_path"]);
                }
            }
            for (i, c) in vm(&o, "smp-boot-0")?["vcpu_exits"].as_array().into_iter().flatten().enumerate().skip(1) {
                if c["sipis"] != 3 {
                    bail!("smp-boot vCPU {i}: {} SIPIs, expected 3", c["sipis"]);
                }
            }
            for (i, c) in vm(&o, "timer-2")?["vcpu_exits"].as_array().into_iter().flatten().enumerate() {
                if c["timer_interrupts"].as_u64().unwrap_or(0) < 23 {
                    bail!("timer vCPU {i}: {} timer interrupts, expected at least 23", c["timer_interrupts"]);
                }
            }
            let e = &ipi["exits"];
            let n = |k: &str| e[k].as_u64().unwrap_or(0);
            println!(
                "  {model} ({brand}): {path}; ipi-basic: {} IPIs by exit, {} external-interrupt exits, {} interrupts injected{}",
                n("ipi_sent_by_exit"),
                n("external_interrupt"),
                n("interrupts_injected"),
                ipi["interrupt_path_reason"].as_str().map(|r| format!(" (not better: {r})")).unwrap_or_default()
            );
        }
        ModelExpect::NotBooted => unreachable!(),
    }
    Ok(())
}

/// The kvm-unit-tests cases of the suite (`cargo xtask conformance` runs every entry on every
/// path in both modes): on the ipiv path every entry, the `vmexit` figures in xAPIC mode only
/// (each loops until 2^30 TSC ticks pass, a minute on Bochs, and kvm-unit-tests' start-up
/// resets the APIC to xAPIC mode whatever mode the VM starts in); on the three other paths the
/// entries that are not `vmexit` figures in both modes, and the IPI figures in xAPIC mode.
type KutCase = (&'static str, &'static [&'static str], &'static [&'static str], KutOnly);

#[derive(Clone, Copy, PartialEq, Eq)]
enum KutOnly {
    NotVmexit,
    Vmexit,
    Ipi,
}

const KUT_CASES: &[KutCase] = &[
    ("conformance-kvm-unit-tests-ipiv", &["ipiv"], &["xapic", "x2apic"], KutOnly::NotVmexit),
    ("conformance-kvm-unit-tests-ipiv-vmexit", &["ipiv"], &["xapic"], KutOnly::Vmexit),
    (
        "conformance-kvm-unit-tests-other-paths",
        &["posted", "virtual-delivery", "injection"],
        &["xapic", "x2apic"],
        KutOnly::NotVmexit,
    ),
    (
        "conformance-kvm-unit-tests-other-paths-ipi",
        &["posted", "virtual-delivery", "injection"],
        &["xapic"],
        KutOnly::Ipi,
    ),
];

/// One group of kvm-unit-tests runs, two Bochs at a time: every record must pass or skip.
fn kut_case(dir: &std::path::Path, paths: &[&str], apics: &[&str], only: KutOnly, cpu_model: &str) -> Result<()> {
    use crate::conformance;
    let entries: Vec<_> = conformance::entries(dir)?
        .into_iter()
        .filter(|e| match only {
            KutOnly::Vmexit => e.file == "vmexit.flat",
            KutOnly::NotVmexit => e.file != "vmexit.flat",
            KutOnly::Ipi => e.file == "vmexit.flat" && e.args.starts_with("ipi"),
        })
        .collect();
    let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
    let apics: Vec<String> = apics.iter().map(|a| a.to_string()).collect();
    let (jobs, slow): (Vec<_>, Vec<_>) = conformance::jobs(&entries, &paths, &apics, None)
        .into_iter()
        .partition(|j| conformance::slow_on_bochs(&j.entry).is_none());
    for j in slow.iter().filter(|j| j.path == paths[0] && j.apic == apics[0]) {
        eprintln!("xtask test: {} not run: {}", j.entry.name, conformance::slow_on_bochs(&j.entry).unwrap_or_default());
    }
    let records = conformance::run_all(&jobs, dir, cpu_model, 2, false)?;
    let failed: Vec<String> = records
        .iter()
        .filter(|r| r["result"] == "fail")
        .map(|r| format!("{} on {}/{}: {}", r["test"], r["path"], r["apic"], conformance::line(r)))
        .collect();
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(())
}

/// The path a VM took as an L2 must be the best nested KVM offers the L1: `posted` where
/// `kvm_intel` runs with APIC virtualization (nested KVM exposes no tertiary controls, so no
/// IPIv), `virtual-delivery` without it (no posted interrupts either).
fn nested_path(o: &Outcome, name: &str) -> Result<()> {
    let apicv = field(o, &["kvm", "kvm_intel", "enable_apicv"]).as_str().unwrap_or("?").to_string();
    let want = if apicv == "Y" { "posted" } else { "virtual-delivery" };
    let v = vm(o, name)?;
    if v["interrupt_path"] != want {
        bail!("VM {name}: path {} under nested KVM with enable_apicv={apicv}, expected {want}", v["interrupt_path"]);
    }
    if field(o, &["kvm", "kvm_intel", "nested"]) != "Y" {
        bail!("kvm_intel should run with nested=Y: {}", field(o, &["kvm"]));
    }
    Ok(())
}

/// ipi-basic:2 as an L2: passed, every vCPU reported, on the path nested KVM allows.
fn nested_ipi_basic(o: &Outcome) -> Result<()> {
    vm_result(o, "ipi-basic-0", "pass")?;
    every_vcpu_reported(o, "ipi-basic-0", 2)?;
    nested_path(o, "ipi-basic-0")
}

/// The L2s of `cargo xtask test --filter nested`: the hypervisor as an L1 under KVM on the
/// project's Bochs (`--platform nested-kvm`), all cases in one boot of KVM's host.
fn nested_cases() -> Vec<Case> {
    let l1 = |cpus: u32, list: &str, apic: &str| RunArgs {
        apic: Some(apic.into()),
        memory: 256,
        ..RunArgs::new(Platform::NestedKvm, cpus).with_guests(list)
    };
    vec![
        Case {
            name: "nested-smp-boot",
            args: l1(2, "smp-boot:2", "x2apic"),
            check: |o| {
                smp_boot_ok(o, 2)?;
                nested_path(o, "smp-boot-0")
            },
        },
        Case { name: "nested-ipi-basic-xapic", args: l1(2, "ipi-basic:2", "xapic"), check: nested_ipi_basic },
        Case { name: "nested-ipi-basic-x2apic", args: l1(2, "ipi-basic:2", "x2apic"), check: nested_ipi_basic },
        Case {
            name: "nested-timer",
            args: l1(2, "timer:2", "x2apic"),
            check: |o| {
                timer_ok(o, 2, "x2apic", "preemption")?;
                nested_path(o, "timer-0")
            },
        },
        Case {
            name: "nested-ipi-storm",
            args: l1(2, "ipi-storm:2", "x2apic"),
            check: |o| {
                vm_result(o, "ipi-storm-0", "pass")?;
                every_vcpu_reported(o, "ipi-storm-0", 2)?;
                ipi_storm_counts(o, "ipi-storm-0")?;
                nested_path(o, "ipi-storm-0")
            },
        },
        Case {
            name: "nested-hostile-icr",
            args: l1(3, "hostile-icr:2,neighbour", "x2apic"),
            check: |o| {
                hostile_ended(o, "hostile-icr-0", "pass", "")?;
                every_vcpu_reported(o, "hostile-icr-0", 2)?;
                neighbour_untouched(o, "neighbour-1")?;
                nested_path(o, "hostile-icr-0")
            },
        },
    ]
}

/// The nested cases the filter selects, in one boot of KVM's host (Bochs with as many CPUs
/// as the largest case gives QEMU, plus one for QEMU's other threads).
fn nested_group(tally: &mut Tally<'_>, cpu_model: &str) {
    let cases: Vec<Case> =
        nested_cases().into_iter().filter(|c| tally.filter.is_none_or(|f| c.name.contains(f))).collect();
    if cases.is_empty() {
        return;
    }
    let runs: Vec<crate::nested::Case> =
        cases.iter().map(|c| crate::nested::Case { name: c.name.into(), args: c.args.clone() }).collect();
    let host = crate::nested::Host {
        label: "test",
        kvm_host: crate::kvm_peer::KvmHost::Trixie,
        kvm_params: String::new(),
        cpu_model: cpu_model.into(),
        cpus: runs.iter().map(|c| c.args.cpus).max().unwrap_or(1) + 1,
        exclude: &[],
        echo: false,
    };
    eprintln!("xtask test: {} nested cases in one boot of KVM's host on bochs ...", cases.len());
    let t = Instant::now();
    let outcomes = crate::nested::run_cases(&runs, &host);
    eprintln!("xtask test: KVM's host ran for {:.1} s", t.elapsed().as_secs_f64());
    match outcomes {
        Ok(outcomes) => {
            for (c, o) in cases.iter().zip(outcomes) {
                tally.check(c.name, || {
                    eprintln!("  {:.2} s of KVM's host's clock", o.host_ms as f64 / 1000.0);
                    if o.outcome.timed_out {
                        bail!("timed out");
                    }
                    (c.check)(&o.outcome)
                });
            }
        }
        Err(e) => {
            for c in &cases {
                tally.check(c.name, || bail!("KVM's host did not run: {e:#}"));
            }
        }
    }
}

/// Runs named checks, counting and reporting each.
struct Tally<'a> {
    filter: Option<&'a str>,
    passed: usize,
    failed: Vec<String>,
    skipped: Vec<String>,
}

impl Tally<'_> {
    fn check(&mut self, name: &str, f: impl FnOnce() -> Result<()>) {
        if self.filter.is_some_and(|flt| !name.contains(flt)) {
            return;
        }
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

pub fn run_all(args: &TestArgs) -> Result<()> {
    let mut tally = Tally { filter: args.filter.as_deref(), passed: 0, failed: Vec::new(), skipped: Vec::new() };
    if !args.no_unit {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        tally.check("host-unit-tests", || {
            if Command::new(cargo).arg("test").status()?.success() { Ok(()) } else { bail!("cargo test failed") }
        });
    }
    tally.check("xtask-refuses-bad-manifest", refuses_bad_manifest_before_launch);
    // Every parser fed by a guest or a user, briefly (docs/fuzzing.md; `cargo xtask fuzz` for long runs).
    tally.check("fuzz-smoke", crate::fuzz::smoke);
    for mut case in cases().into_iter().chain(pc_cases()).chain(hostile_cases()) {
        if case.args.platform == Platform::Bochs {
            case.args.cpu_model = args.cpu_model.clone();
        }
        tally.check(case.name, || {
            let o = run::run(&case.args)?;
            if o.timed_out {
                bail!("timed out");
            }
            (case.check)(&o)
        });
    }
    // The hostile guests again where the hypervisor models the APIC itself and injects (no
    // APIC-register virtualization or virtual-interrupt delivery at all): a CPU model of that
    // generation rather than the path forced, so the processor virtualizes nothing more.
    for mut case in hostile_cases() {
        case.args.cpu_model = INJECTION_MODEL.into();
        tally.check(&format!("{}-injection", case.name), || {
            let o = run::run(&case.args)?;
            if o.timed_out {
                bail!("timed out");
            }
            (case.check)(&o)
        });
    }
    // Every guest test as a multiboot kernel in both APIC modes on every interrupt path
    // (ipiv-rules needs IPIv: its own cases above).
    for apic in ["xapic", "x2apic"] {
        for (label, path) in MATRIX_PATHS {
            for (i, list) in MATRIX_BATCHES.iter().enumerate() {
                tally.check(&format!("guest-matrix-{apic}-{label}-{i}"), || {
                    matrix_batch(list, apic, label, path, &args.cpu_model)
                });
            }
        }
    }
    tally.check("kernel-fixture-bochs", || kernel_fixture(Platform::Bochs));
    tally.check("kernel-fixture-qemu", || kernel_fixture(Platform::Qemu));
    tally.check("manifest-foreign-kernel", manifest_foreign_kernel);
    for (list, reports) in QEMU_GUESTS {
        let name = format!("qemu-guest-{}", list.split(['+']).next().unwrap_or_default().replace(':', "-"));
        tally.check(&name, || qemu_guest(list, *reports));
    }
    tally.check("bench-exit-counts", bench_exit_counts);
    // Every Intel VMX model of the project's Bochs: the path it gets, or its refusal.
    tally.check("cpu-model-list", || {
        let offered = crate::bochs::models(&crate::bochs::binary(&crate::deps::cache_dir())?)?;
        let missing: Vec<_> = crate::bochs::INTEL_VMX_MODELS
            .iter()
            .map(|(m, _)| *m)
            .filter(|m| !offered.iter().any(|o| o == m))
            .collect();
        if !missing.is_empty() {
            bail!("the project's Bochs does not offer {}", missing.join(", "));
        }
        Ok(())
    });
    for (model, _) in crate::bochs::INTEL_VMX_MODELS {
        tally.check(&format!("cpu-model-{model}"), || cpu_model(model));
    }
    tally.check("linux-smp-x2apic-ipiv-beside-guest", linux_beside_guest);
    tally.check("linux-qemu-reference", linux_on_qemu);
    tally.check("linux-smp-xapic-injection", linux_on_injection_path);
    // The hypervisor as an L1 under KVM on the project's Bochs.
    nested_group(&mut tally, &args.cpu_model);
    // `cargo xtask bench --peer kvm` is too slow for the suite; its image must build.
    tally.check("kvm-peer-image", kvm_peer_image);
    // kvm-unit-tests, where the folder is (test inputs, not part of the repository).
    let kut = crate::conformance::kut_dir(None);
    if kut.is_dir() {
        for (name, paths, apics, only) in KUT_CASES {
            tally.check(name, || kut_case(&kut, paths, apics, *only, &args.cpu_model));
        }
    } else if args.filter.as_deref().is_none_or(|f| "conformance-kvm-unit-tests".contains(f)) {
        let why = format!(
            "conformance-kvm-unit-tests: skipped, no kvm-unit-tests folder at {} (cargo xtask conformance --kut DIR runs them)",
            kut.display()
        );
        eprintln!("xtask test: {why}");
        tally.skipped.push(why);
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
