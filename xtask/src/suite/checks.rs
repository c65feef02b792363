//! What a boot's HV-SUMMARY must say: the checks the suite's cases share. The summary is read
//! through its types (hvcore::summary); what a guest reported is the guest's own JSON.

use anyhow::{Context, Result, bail};
use hvcore::exits::counters::ExitCounters;
use hvcore::manifest::{HltMode, TimerSource, VmResult};
use hvcore::summary::{HvSummary, RunResult, VmReport};
use hvcore::vmx::exit_reason;
use hvcore::vmx::path_kind::InterruptPath;
use serde_json::Value;

use crate::platform::spec::Outcome;

/// The run's summary; an error where the kernel printed none.
pub fn summary(o: &Outcome) -> Result<&HvSummary> {
    o.summary.as_ref().context("no HV-SUMMARY")
}

/// The run ended as `want`; its summary.
pub fn run_result(o: &Outcome, want: RunResult) -> Result<&HvSummary> {
    let s = summary(o)?;
    if s.result != want {
        bail!("result {} ({:?}), expected {}", s.result.as_str(), s.reason, want.as_str());
    }
    Ok(s)
}

/// The run failed with a reason containing each of `parts`.
pub fn run_failed_with(o: &Outcome, parts: &[&str]) -> Result<()> {
    let s = run_result(o, RunResult::Fail)?;
    let reason = s.reason.as_deref().unwrap_or("");
    if let Some(p) = parts.iter().find(|p| !reason.contains(**p)) {
        bail!("the reason should mention {p:?}: {reason}");
    }
    Ok(())
}

pub fn no_vmx_boot(o: &Outcome, cpus: u32) -> Result<()> {
    let s = run_result(o, RunResult::Unsupported)?;
    if (s.cpus_online, s.cpus_expected, s.vmx.supported) != (cpus, cpus, false) {
        bail!(
            "{} of {} CPUs online, VMX {}: expected {cpus} of {cpus}, no VMX",
            s.cpus_online,
            s.cpus_expected,
            s.vmx.supported
        );
    }
    if !s.reason.as_deref().is_some_and(|r| r.contains("VMX")) {
        bail!("reason should explain the missing VMX: {:?}", s.reason);
    }
    Ok(())
}

/// The VM called `name` in the summary.
pub fn vm<'a>(o: &'a Outcome, name: &str) -> Result<&'a VmReport> {
    summary(o)?.vm(name).with_context(|| format!("no VM {name} in the summary"))
}

pub fn vm_result(o: &Outcome, name: &str, want: &str) -> Result<()> {
    let want = VmResult::parse(want).with_context(|| format!("`{want}` is no VM result"))?;
    let v = vm(o, name)?;
    if v.result != want {
        bail!("VM {name}: result {} ({:?}), expected {}", v.result.as_str(), v.reason, want.as_str());
    }
    Ok(())
}

/// What VM `name` reported, each the guest's JSON value.
pub fn reports(o: &Outcome, name: &str) -> Result<Vec<Value>> {
    Ok(vm(o, name)?.report_values())
}

/// The first value VM `name` reported.
pub fn first_report(o: &Outcome, name: &str) -> Result<Value> {
    vm(o, name)?.report_values().into_iter().next().with_context(|| format!("VM {name} reported nothing"))
}

/// A counter of one vCPU's (or a VM's summed) exits by its JSON name: an exit reason or an
/// extra counter; an unknown name is an error, not a zero.
pub fn count(c: &ExitCounters, name: &str) -> Result<u64> {
    c.get(name).with_context(|| format!("`{name}` is no exit counter"))
}

/// The exit counters as JSON, for messages.
pub fn shown(c: &ExitCounters) -> String {
    serde_json::to_string(c).unwrap_or_default()
}

/// Each vCPU of `name` reported once, with its own index.
pub fn every_vcpu_reported(o: &Outcome, name: &str, vcpus: u64) -> Result<()> {
    let v = vm(o, name)?;
    let mut seen: Vec<u64> = v.report_values().iter().filter_map(|r| r["vcpu"].as_u64()).collect();
    seen.sort();
    if seen != (0..vcpus).collect::<Vec<_>>() {
        bail!("VM {name}: vCPU reports {seen:?}, expected one from each of {vcpus}");
    }
    if v.vcpu_exits.len() != vcpus as usize {
        bail!("VM {name}: vcpu_exits should have {vcpus} entries, has {}", v.vcpu_exits.len());
    }
    Ok(())
}

/// ipi-basic / ipi-storm with IPIv off: every vCPU reported; the ICR writes exited (at least
/// one apic_write / msr_write_icr exit per IPI the hypervisor sent); receivers took posted
/// interrupts with no external-interrupt exit.
pub fn ipi_exit_path(o: &Outcome, name: &str, vcpus: u64, icr_exit: &str) -> Result<()> {
    vm_result(o, name, "pass")?;
    every_vcpu_reported(o, name, vcpus)?;
    let v = vm(o, name)?;
    if v.ipiv {
        bail!("VM {name}: IPIv should be off, summary says on");
    }
    for (i, c) in v.vcpu_exits.iter().enumerate() {
        let sent = c.ipi_sent_by_exit;
        let exits = count(c, icr_exit)?;
        if sent == 0 || exits < sent {
            bail!("VM {name} vCPU {i}: {exits} {icr_exit} exits for {sent} IPIs sent by the exit path");
        }
        if c.by_reason[exit_reason::EXTERNAL_INTERRUPT as usize] > kicks_for_nmis(c) {
            bail!("VM {name} vCPU {i}: external-interrupt exits while receiving IPIs: {}", shown(c));
        }
    }
    Ok(())
}

pub fn ipi_storm_counts(o: &Outcome, name: &str) -> Result<()> {
    for r in reports(o, name)? {
        if r["sent"] != r["received"] || r["sent"].as_u64().unwrap_or(0) == 0 {
            bail!("ipi-storm vCPU {}: sent {} received {}", r["vcpu"], r["sent"], r["received"]);
        }
    }
    Ok(())
}

/// ipiv-rules passed on every vCPU, with IPIv really on.
pub fn ipiv_rules(o: &Outcome) -> Result<()> {
    vm_result(o, "ipiv-rules-0", "pass")?;
    every_vcpu_reported(o, "ipiv-rules-0", 4)?;
    if !vm(o, "ipiv-rules-0")?.ipiv {
        bail!("ipiv-rules ran without IPIv");
    }
    Ok(())
}

/// ipi-basic with IPIv on: the covered IPIs (fixed, physical) exited 0 times on every vCPU;
/// the uncovered ones took the fallback path.
pub fn ipiv_covered(o: &Outcome, name: &str) -> Result<()> {
    vm_result(o, name, "pass")?;
    every_vcpu_reported(o, name, 4)?;
    let v = vm(o, name)?;
    if !v.ipiv {
        bail!("VM {name}: IPIv should be on");
    }
    for r in v.report_values() {
        if r["covered_exits"] != 0 || r["covered_sent"].as_u64().unwrap_or(0) == 0 {
            bail!("vCPU {}: {} exits for {} covered IPIs", r["vcpu"], r["covered_exits"], r["covered_sent"]);
        }
        let hv = v.vcpu_exits.get(r["vcpu"].as_u64().unwrap_or(0) as usize).context("a vCPU without counters")?;
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
pub fn kicks_for_nmis(vcpu_exits: &ExitCounters) -> u64 {
    vcpu_exits.nmi_injected + vcpu_exits.sipis
}

/// ICR-write exits that were not INIT or SIPI (those always exit), over a VM's vCPUs.
pub fn icr_exits_beyond_startup(v: &VmReport) -> u64 {
    (v.vcpu_exits.iter())
        .map(|c| {
            let icr = c.msr_write_icr + c.by_reason[exit_reason::APIC_WRITE as usize];
            icr.saturating_sub(c.startup_ipis_sent)
        })
        .sum()
}

/// The neighbour VM beside a hostile one passed and saw nothing foreign.
pub fn neighbour_untouched(o: &Outcome, name: &str) -> Result<()> {
    vm_result(o, name, "pass")?;
    let r = reports(o, name)?.into_iter().find(|r| r["test"] == "neighbour");
    let Some(r) = r else { bail!("VM {name}: no neighbour report") };
    if r["foreign_interrupts"] != 0 || r["nmis"] != 0 || r["memory_rounds"].as_u64().unwrap_or(0) == 0 {
        bail!("VM {name} saw something foreign: {r}");
    }
    Ok(())
}

/// A hostile VM ended as `want`, with a reason containing `why`, and the run is whole.
pub fn hostile_ended(o: &Outcome, name: &str, want: &str, why: &str) -> Result<()> {
    run_result(o, RunResult::Pass)?;
    vm_result(o, name, want)?;
    let reason = vm(o, name)?.reason.as_deref().unwrap_or("");
    if !reason.contains(why) {
        bail!("VM {name}: reason should mention {why:?}: {reason}");
    }
    Ok(())
}

/// The timer guest passed on every vCPU in `mode`, each vCPU's interrupts all came from its
/// APIC timer through the hypervisor (`timer_interrupts` at least the test's 23, each a timer
/// exit, delivered by `source`, unless HLT exits: then the wait in the hypervisor delivers
/// them); prints the accuracy and the cost per timer interrupt.
pub fn timer_ok(o: &Outcome, vcpus: u64, mode: &str, source: TimerSource) -> Result<()> {
    vm_result(o, "timer-0", "pass")?;
    every_vcpu_reported(o, "timer-0", vcpus)?;
    let v = vm(o, "timer-0")?;
    if v.timer != Some(source) {
        bail!("the timer should be delivered by {}, summary says {:?}", source.as_str(), v.timer);
    }
    for r in v.report_values() {
        if r["apic"] != mode || r["tsc_deadline"] != true {
            bail!("vCPU {} ran in the wrong mode or without TSC-deadline: {r}", r["vcpu"]);
        }
        let c = v.vcpu_exits.get(r["vcpu"].as_u64().unwrap_or(0) as usize).context("a vCPU without counters")?;
        let (fired, exits) = (c.timer_interrupts, c.timer_exits);
        let halts_exit = v.hlt == Some(HltMode::Exit);
        if fired < 23 || (exits == 0 && !halts_exit) || exits > fired {
            bail!("vCPU {}: {fired} timer interrupts, {exits} timer exits: {}", r["vcpu"], shown(c));
        }
        println!(
            "  vCPU {}: one-shot {} ppm, divide-16 {} ppm, periodic {} ppm, TSC deadline {} ticks late; {} hypervisor ticks per timer interrupt",
            r["vcpu"],
            r["one_shot_ppm"],
            r["divide16_ppm"],
            r["periodic_ppm"],
            r["deadline_late_ticks"],
            c.timer_exit_ticks / exits.max(1)
        );
    }
    Ok(())
}

/// smp-boot passed, and every application processor was started three times (boot, INIT by
/// destination, INIT by shorthand), each by a SIPI after an INIT the hypervisor applied.
pub fn smp_boot_ok(o: &Outcome, vcpus: usize) -> Result<()> {
    vm_result(o, "smp-boot-0", "pass")?;
    let cpus = &vm(o, "smp-boot-0")?.vcpu_exits;
    if cpus.len() != vcpus {
        bail!("{} vCPUs in the summary, expected {vcpus}", cpus.len());
    }
    for (i, c) in cpus.iter().enumerate().skip(1) {
        if c.sipis != 3 || c.inits < 2 {
            bail!("vCPU {i}: {} SIPIs and {} INITs applied, expected 3 and at least 2: {}", c.sipis, c.inits, shown(c));
        }
    }
    Ok(())
}

/// The interrupt-driven UART sent its line one byte per interrupt, each an I/O APIC message.
pub fn uart_ok(o: &Outcome) -> Result<()> {
    vm_result(o, "uart-0", "pass")?;
    let v = vm(o, "uart-0")?;
    let r = v.report_values().into_iter().next().context("uart-0 reported nothing")?;
    let bytes = r["bytes"].as_u64().unwrap_or(0);
    if bytes == 0 || r["interrupts"].as_u64() != Some(bytes + 1) {
        bail!("one interrupt per byte and one more: {r}");
    }
    let c = v.vcpu_exits.first().context("uart-0 has no vCPU counters")?;
    if c.device_interrupts != bytes + 1 {
        bail!("the I/O APIC should have sent {} messages: {}", bytes + 1, shown(c));
    }
    Ok(())
}

/// The ioapic guest passed; its level-triggered interrupts' EOIs reached the I/O APIC.
pub fn ioapic_ok(o: &Outcome) -> Result<()> {
    vm_result(o, "ioapic-0", "pass")?;
    let v = vm(o, "ioapic-0")?;
    let r = v.report_values().into_iter().next().context("ioapic-0 reported nothing")?;
    if r["entries"].as_u64().unwrap_or(0) < 24 || r["level_runs"] != 3 {
        bail!("the I/O APIC report is incomplete: {r}");
    }
    if v.exits.device_eois < 3 {
        bail!("the three level-triggered interrupts should each end in an EOI exit: {}", shown(&v.exits));
    }
    Ok(())
}

/// Every vCPU of the 4-vCPU acpi guest found the tables and four processor entries of the
/// APIC mode's kind (`x2apic_entries` of them Local x2APIC).
pub fn acpi_seen(o: &Outcome, x2apic_entries: u64) -> Result<()> {
    vm_result(o, "acpi-0", "pass")?;
    every_vcpu_reported(o, "acpi-0", 4)?;
    for r in reports(o, "acpi-0")? {
        if r["processors"] != 4 || r["x2apic_entries"] != x2apic_entries {
            bail!("vCPU {} read the MADT wrong: {r}", r["vcpu"]);
        }
    }
    Ok(())
}

/// hostile-apic completed every legal access (its report is there) and then ended as `want`
/// (stopped for the hostile access, with `why` in the reason, or passed).
pub fn apic_legal_then(o: &Outcome, want: &str, why: &str) -> Result<()> {
    hostile_ended(o, "hostile-apic-0", want, why)?;
    let v = vm(o, "hostile-apic-0")?;
    let r = v.report_values().into_iter().next().context("hostile-apic-0 reported nothing")?;
    if r["registers"] != 64 || r["xsetbv_refused"] != 4 {
        bail!("the legal accesses should all have completed first: {r}");
    }
    // PPR, APR, RRD, LVT CMCI and the current count, read and written (10), plus the re-reads.
    if v.exits.emulated < 12 {
        bail!("the unvirtualized registers should have been emulated: {}", shown(&v.exits));
    }
    neighbour_untouched(o, "neighbour-1")
}

/// hostile-timer was not stopped (a fast timer is legal), its periodic timer was held to the
/// minimum period on every vCPU, and the neighbour saw nothing.
pub fn timer_floor_held(o: &Outcome) -> Result<()> {
    hostile_ended(o, "hostile-timer-0", "pass", "")?;
    every_vcpu_reported(o, "hostile-timer-0", 2)?;
    for r in reports(o, "hostile-timer-0")? {
        let (n, most) = (r["periodic"].as_u64().unwrap_or(0), r["periodic_most"].as_u64().unwrap_or(0));
        if n == 0 || n > most || r["rearms"].as_u64().unwrap_or(0) < 2000 {
            bail!("vCPU {}: {n} periodic interrupts (at most {most}), {} re-arms: {r}", r["vcpu"], r["rearms"]);
        }
    }
    neighbour_untouched(o, "neighbour-1")
}

/// hostile-nmi passed its own checks, its NMIs went through the NMI window at least once (the
/// ones sent during a handler), and the neighbour saw none of them.
pub fn nmi_rules_held(o: &Outcome) -> Result<()> {
    hostile_ended(o, "hostile-nmi-0", "pass", "")?;
    every_vcpu_reported(o, "hostile-nmi-0", 2)?;
    let e = &vm(o, "hostile-nmi-0")?.exits;
    if e.by_reason[exit_reason::NMI_WINDOW as usize] == 0 || e.nmi_injected < 110 {
        bail!("NMIs should be injected (>= 110) and some wait for the NMI window: {}", shown(e));
    }
    neighbour_untouched(o, "neighbour-1")
}

/// The path a VM took as an L2 must be the best nested KVM offers the L1: `posted` where
/// `kvm_intel` runs with APIC virtualization (nested KVM exposes no tertiary controls, so no
/// IPIv), `virtual-delivery` without it (no posted interrupts either).
pub fn nested_path(o: &Outcome, name: &str) -> Result<()> {
    let kvm = summary(o)?.kvm.clone().context("no `kvm` in the summary: not a nested-KVM run")?;
    let apicv = kvm["kvm_intel"]["enable_apicv"].as_str().unwrap_or("?").to_string();
    let want = if apicv == "Y" { InterruptPath::Posted } else { InterruptPath::VirtualDelivery };
    let got = vm(o, name)?.interrupt_path;
    if got != Some(want) {
        bail!("VM {name}: path {got:?} under nested KVM with enable_apicv={apicv}, expected {want}");
    }
    if kvm["kvm_intel"]["nested"] != "Y" {
        bail!("kvm_intel should run with nested=Y: {kvm}");
    }
    Ok(())
}

/// ipi-basic:2 as an L2: passed, every vCPU reported, on the path nested KVM allows.
pub fn nested_ipi_basic(o: &Outcome) -> Result<()> {
    vm_result(o, "ipi-basic-0", "pass")?;
    every_vcpu_reported(o, "ipi-basic-0", 2)?;
    nested_path(o, "ipi-basic-0")
}
