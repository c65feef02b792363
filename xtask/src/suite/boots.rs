//! The suite's boots: each a run and the check of its summary (`entry::Case`).

use anyhow::bail;
use hvcore::manifest::{ApicMode, HltMode, TimerSource};
use hvcore::summary::RunResult;

use crate::platform::spec::{Platform, RunArgs};

use super::checks::*;
use super::entry::{Case, bochs_guests};

pub fn hostile_cases() -> Vec<Case> {
    vec![
        Case {
            name: "hostile-report".into(),
            args: bochs_guests("hostile-report:2,neighbour"),
            check: |o| {
                hostile_ended(o, "hostile-report-0", "killed", "report budget exceeded")?;
                let v = vm(o, "hostile-report-0")?;
                let reports = v.reports.len();
                if reports == 0 || reports > hvcore::budget::MAX_REPORTS as usize {
                    bail!("{reports} reports kept; the budget is {}", hvcore::budget::MAX_REPORTS);
                }
                if v.reports[0].value() != serde_json::json!({"test": "hostile-report", "spaced": [1, 2]}) {
                    bail!("the first report should be kept in canonical form: {}", v.reports[0].text());
                }
                neighbour_untouched(o, "neighbour-1")
            },
        },
        Case {
            name: "hostile-exits".into(),
            args: bochs_guests("hostile-exits:3,neighbour"),
            check: |o| {
                hostile_ended(o, "hostile-exits-0", "timeout", "watchdog")?;
                let e = &vm(o, "hostile-exits-0")?.exits;
                for k in ["cpuid", "vmcall", "io"] {
                    if count(e, k)? < 50 {
                        bail!("the {k} loop should have exited many times: {}", shown(e));
                    }
                }
                neighbour_untouched(o, "neighbour-1")
            },
        },
        Case {
            name: "hostile-console".into(),
            args: bochs_guests("hostile-console:2,neighbour"),
            check: |o| {
                hostile_ended(o, "hostile-console-0", "pass", "")?;
                let dropped = vm(o, "hostile-console-0")?.console_dropped_bytes;
                if dropped == 0 {
                    bail!("the console flood should have gone over the VM's console budget");
                }
                neighbour_untouched(o, "neighbour-1")?;
                let r = first_report(o, "neighbour-1")?;
                // One 160-byte piece at 115200 baud is 14 ms; before the budget a 4 KiB PRINT
                // kept the neighbour waiting 2.15 s.
                if r["print_worst_us"].as_u64().unwrap_or(u64::MAX) > 200_000 {
                    bail!("the neighbour waited too long for the console: {r}");
                }
                Ok(())
            },
        },
        Case {
            name: "hostile-hypercall".into(),
            args: bochs_guests("hostile-hypercall:2,neighbour"),
            check: |o| {
                hostile_ended(o, "hostile-hypercall-0", "pass", "")?;
                every_vcpu_reported(o, "hostile-hypercall-0", 2)?;
                let refused = vm(o, "hostile-hypercall-0")?.exits.get("hypercall_refused").unwrap_or(0);
                if refused != 3 {
                    bail!("the 3 hypercalls from ring 3 should be counted as refused, got {refused}");
                }
                neighbour_untouched(o, "neighbour-1")
            },
        },
        Case {
            name: "hostile-icr-xapic".into(),
            args: RunArgs { apic: Some("xapic".into()), ..bochs_guests("hostile-icr:2,neighbour") },
            check: |o| {
                hostile_ended(o, "hostile-icr-0", "pass", "")?;
                every_vcpu_reported(o, "hostile-icr-0", 2)?;
                neighbour_untouched(o, "neighbour-1")
            },
        },
        Case {
            name: "hostile-icr-x2apic".into(),
            args: RunArgs { apic: Some("x2apic".into()), ..bochs_guests("hostile-icr:2,neighbour") },
            check: |o| {
                hostile_ended(o, "hostile-icr-0", "pass", "")?;
                every_vcpu_reported(o, "hostile-icr-0", 2)?;
                neighbour_untouched(o, "neighbour-1")
            },
        },
        Case {
            name: "hostile-icr-x2apic-ipiv-off".into(),
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
            name: "hostile-nmi-xapic".into(),
            args: RunArgs { apic: Some("xapic".into()), ..bochs_guests("hostile-nmi:2,neighbour") },
            check: nmi_rules_held,
        },
        Case {
            name: "hostile-nmi-x2apic-hlt-exit".into(),
            args: RunArgs {
                apic: Some("x2apic".into()),
                hlt: Some("exit".into()),
                ..bochs_guests("hostile-nmi:2,neighbour")
            },
            check: nmi_rules_held,
        },
        Case {
            name: "hostile-apic-fetch".into(),
            args: RunArgs {
                apic: Some("xapic".into()),
                ..bochs_guests("hostile-apic+cmdline=end=fetch+expect=killed,neighbour")
            },
            check: |o| apic_legal_then(o, "killed", "instruction fetch from the APIC-access page"),
        },
        Case {
            name: "hostile-apic-wide".into(),
            args: RunArgs { apic: Some("xapic".into()), ..bochs_guests("hostile-apic+cmdline=end=wide,neighbour") },
            check: |o| apic_legal_then(o, "pass", ""),
        },
        Case {
            name: "hostile-lapic".into(),
            args: bochs_guests("hostile-lapic,neighbour"),
            check: |o| {
                hostile_ended(o, "hostile-lapic-0", "pass", "")?;
                let r = first_report(o, "hostile-lapic-0")?;
                if r["base_faults"].as_u64().unwrap_or(0) == 0 || r["base_ok"].as_u64().unwrap_or(0) == 0 {
                    bail!("IA32_APIC_BASE writes should both fault and take: {r}");
                }
                neighbour_untouched(o, "neighbour-1")
            },
        },
        Case {
            name: "hostile-sweep".into(),
            args: RunArgs { apic: Some("xapic".into()), ..bochs_guests("hostile-sweep,neighbour") },
            check: |o| {
                hostile_ended(o, "hostile-sweep-0", "pass", "")?;
                let r = first_report(o, "hostile-sweep-0")?;
                if r["ports"] != 65536 || r["readable"].as_u64().unwrap_or(0) < 10 {
                    bail!("the sweep should cover every port and read some MSRs: {r}");
                }
                neighbour_untouched(o, "neighbour-1")
            },
        },
        Case {
            name: "hostile-memory".into(),
            args: bochs_guests("hostile-memory,neighbour"),
            check: |o| {
                hostile_ended(o, "hostile-memory-0", "killed", "EPT violation")?;
                let reason = vm(o, "hostile-memory-0")?.reason.as_deref().unwrap_or("").to_string();
                // 16 MiB of RAM: the read 4 KiB past its end.
                if !reason.contains("0x1001000") {
                    bail!("the reason should name the address beyond RAM: {reason}");
                }
                neighbour_untouched(o, "neighbour-1")
            },
        },
        Case {
            name: "hostile-timer-xapic".into(),
            args: RunArgs { apic: Some("xapic".into()), ..bochs_guests("hostile-timer:2,neighbour") },
            check: timer_floor_held,
        },
        Case {
            name: "hostile-timer-x2apic".into(),
            args: RunArgs { apic: Some("x2apic".into()), ..bochs_guests("hostile-timer:2,neighbour") },
            check: timer_floor_held,
        },
        Case {
            name: "hostile-exit-budget".into(),
            args: bochs_guests("hostile-exits:1+max_exits_per_second=20000+expect=killed,neighbour"),
            check: |o| {
                hostile_ended(o, "hostile-exits-0", "killed", "exit budget exceeded: more than 20000")?;
                neighbour_untouched(o, "neighbour-1")
            },
        },
    ]
}

/// The PC inside each VM: its port-I/O devices, and isa-debug-exit ending the VM both ways.
pub fn pc_cases() -> Vec<Case> {
    vec![
        Case {
            name: "pc-devices".into(),
            args: bochs_guests("pc-devices:2"),
            check: |o| {
                vm_result(o, "pc-devices-0", "pass")?;
                let v = vm(o, "pc-devices-0")?;
                if !v.reason.as_deref().unwrap_or("").ends_with("isa-debug-exit: 0") {
                    bail!("the VM should have ended through isa-debug-exit: {:?}", v.reason);
                }
                let r = first_report(o, "pc-devices-0")?;
                println!("  PIT channel 2 against the TSC: {}/1000", r["pit_per_mille"]);
                Ok(())
            },
        },
        Case {
            name: "acpi-xapic".into(),
            args: RunArgs { apic: Some("xapic".into()), ..bochs_guests("acpi:4") },
            check: |o| acpi_seen(o, 0),
        },
        Case {
            name: "acpi-x2apic".into(),
            args: RunArgs { apic: Some("x2apic".into()), ..bochs_guests("acpi:4") },
            check: |o| acpi_seen(o, 4),
        },
        Case {
            name: "timer-xapic".into(),
            args: RunArgs { apic: Some("xapic".into()), ..bochs_guests("timer:2") },
            check: |o| timer_ok(o, 2, "xapic", TimerSource::Preemption),
        },
        Case {
            name: "timer-x2apic".into(),
            args: RunArgs { apic: Some("x2apic".into()), ..bochs_guests("timer:2") },
            check: |o| timer_ok(o, 2, "x2apic", TimerSource::Preemption),
        },
        Case {
            name: "timer-x2apic-host-apic".into(),
            args: RunArgs { apic: Some("x2apic".into()), ..bochs_guests("timer:2+timer=host-apic") },
            check: |o| timer_ok(o, 2, "x2apic", TimerSource::HostApic),
        },
        Case {
            name: "timer-xapic-hlt-exit".into(),
            args: RunArgs { apic: Some("xapic".into()), hlt: Some("exit".into()), ..bochs_guests("timer:2") },
            check: |o| timer_ok(o, 2, "xapic", TimerSource::Preemption),
        },
        Case {
            name: "smp-boot-xapic".into(),
            args: RunArgs { apic: Some("xapic".into()), ..bochs_guests("smp-boot:4") },
            check: |o| smp_boot_ok(o, 4),
        },
        Case {
            name: "smp-boot-x2apic".into(),
            args: RunArgs { apic: Some("x2apic".into()), ..bochs_guests("smp-boot:4") },
            check: |o| smp_boot_ok(o, 4),
        },
        Case {
            name: "smp-boot-xapic-ipiv-off".into(),
            args: RunArgs { apic: Some("xapic".into()), ipiv: Some("off".into()), ..bochs_guests("smp-boot:4") },
            check: |o| smp_boot_ok(o, 4),
        },
        Case {
            name: "smp-boot-x2apic-ipiv-off-hlt-exit".into(),
            args: RunArgs {
                apic: Some("x2apic".into()),
                ipiv: Some("off".into()),
                hlt: Some("exit".into()),
                ..bochs_guests("smp-boot:4")
            },
            check: |o| smp_boot_ok(o, 4),
        },
        Case {
            name: "uart-xapic".into(),
            args: RunArgs { apic: Some("xapic".into()), ..bochs_guests("uart:1") },
            check: uart_ok,
        },
        Case {
            name: "uart-x2apic".into(),
            args: RunArgs { apic: Some("x2apic".into()), ..bochs_guests("uart:1") },
            check: uart_ok,
        },
        Case {
            name: "ioapic-xapic".into(),
            args: RunArgs { apic: Some("xapic".into()), ..bochs_guests("ioapic:2") },
            check: ioapic_ok,
        },
        Case {
            name: "ioapic-x2apic-ipiv-off".into(),
            args: RunArgs { apic: Some("x2apic".into()), ipiv: Some("off".into()), ..bochs_guests("ioapic:2") },
            check: ioapic_ok,
        },
        Case {
            name: "pc-devices-exit-code".into(),
            args: bochs_guests("pc-devices:1+cmdline=exit=49+expect=fail"),
            check: |o| {
                vm_result(o, "pc-devices-0", "fail")?;
                let reason = vm(o, "pc-devices-0")?.reason.as_deref().unwrap_or("").to_string();
                if !reason.contains("isa-debug-exit: code 49") {
                    bail!("the reason should carry the exit code: {reason}");
                }
                Ok(())
            },
        },
    ]
}

pub fn cases() -> Vec<Case> {
    let qemu = |cpus, uefi| RunArgs {
        uefi,
        timeout: 120,
        expect: Some("unsupported".into()),
        ..RunArgs::new(Platform::Qemu, cpus)
    };
    vec![
        Case { name: "qemu-bios-1cpu".into(), args: qemu(1, false), check: |o| no_vmx_boot(o, 1) },
        Case { name: "qemu-bios-4cpu".into(), args: qemu(4, false), check: |o| no_vmx_boot(o, 4) },
        Case { name: "qemu-uefi-1cpu".into(), args: qemu(1, true), check: |o| no_vmx_boot(o, 1) },
        Case { name: "qemu-uefi-4cpu".into(), args: qemu(4, true), check: |o| no_vmx_boot(o, 4) },
        Case {
            name: "qemu-ap-page-fault".into(),
            args: RunArgs { fault: "ap-page-fault".into(), expect: Some("fail".into()), ..qemu(2, false) },
            check: |o| {
                run_failed_with(o, &["#PF", "vector 14", "on CPU 1", "CR2 0x7fffdeadb000", "RIP 0x", "error code 0x"])?;
                if o.exit_status != Some(35) {
                    bail!("emulator exit status {:?}, expected 35 (fail)", o.exit_status);
                }
                Ok(())
            },
        },
        Case {
            name: "qemu-bsp-panic".into(),
            args: RunArgs { fault: "bsp-panic".into(), expect: Some("fail".into()), ..qemu(1, false) },
            check: |o| run_failed_with(o, &["panic on CPU 0", "deliberate panic"]),
        },
        Case {
            name: "bochs-ap-page-fault".into(),
            args: RunArgs {
                fault: "ap-page-fault".into(),
                expect: Some("fail".into()),
                timeout: 300,
                ..RunArgs::new(Platform::Bochs, 2)
            },
            check: |o| run_failed_with(o, &["#PF", "CR2 0x7fffdeadb000", "on CPU 1"]),
        },
        Case {
            name: "bochs-vms-hello-2x2".into(),
            args: bochs_guests("hello:2,hello:2"),
            check: |o| {
                run_result(o, RunResult::Pass)?;
                for name in ["hello-0", "hello-1"] {
                    vm_result(o, name, "pass")?;
                    every_vcpu_reported(o, name, 2)?;
                    let v = vm(o, name)?;
                    if count(&v.exits, "cpuid")? < 2 || count(&v.exits, "vmcall")? < 2 {
                        bail!("VM {name}: exit counters missing: {}", shown(&v.exits));
                    }
                    for r in v.report_values() {
                        if r["apic_id"] != r["vcpu"] {
                            bail!("VM {name}: vCPU {} saw APIC ID {}", r["vcpu"], r["apic_id"]);
                        }
                    }
                }
                Ok(())
            },
        },
        Case {
            name: "bochs-vms-escape-is-killed".into(),
            args: bochs_guests("escape,hello"),
            check: |o| {
                run_result(o, RunResult::Pass)?;
                vm_result(o, "escape-0", "killed")?;
                let reason = vm(o, "escape-0")?.reason.as_deref().unwrap_or("");
                if !reason.contains("EPT violation") || !reason.contains("GPA 0x1100000") {
                    bail!("escape reason lacks the EPT violation and GPA: {reason}");
                }
                vm_result(o, "hello-1", "pass")
            },
        },
        Case {
            name: "bochs-vms-panic-fails".into(),
            args: bochs_guests("panic,hello"),
            check: |o| {
                vm_result(o, "panic-0", "fail")?;
                let reason = vm(o, "panic-0")?.reason.as_deref().unwrap_or("");
                if !reason.contains("deliberate guest panic") {
                    bail!("panic reason lacks the guest's message: {reason}");
                }
                vm_result(o, "hello-1", "pass")
            },
        },
        Case {
            name: "bochs-vms-hang-times-out".into(),
            args: bochs_guests("hang,hello"),
            check: |o| {
                vm_result(o, "hang-0", "timeout")?;
                vm_result(o, "hello-1", "pass")?;
                if vm(o, "hang-0")?.exits.get("preemption_timer").unwrap_or(0) == 0 {
                    bail!("the watchdog should have fired through the VMX-preemption timer");
                }
                Ok(())
            },
        },
        Case {
            name: "bochs-vms-memory".into(),
            args: bochs_guests("memory:2"),
            check: |o| {
                vm_result(o, "memory-0", "pass")?;
                every_vcpu_reported(o, "memory-0", 2)
            },
        },
        Case {
            name: "bochs-vms-cpuid-msr".into(),
            args: bochs_guests("cpuid-msr:2,hello:2"),
            check: |o| {
                vm_result(o, "cpuid-msr-0", "pass")?;
                every_vcpu_reported(o, "cpuid-msr-0", 2)?;
                let v = vm(o, "cpuid-msr-0")?;
                if v.exits.ignored_io < 2 {
                    bail!("reads of unknown ports should be counted: {}", shown(&v.exits));
                }
                vm_result(o, "hello-1", "pass")
            },
        },
        Case {
            name: "bochs-ipi-basic-xapic".into(),
            args: RunArgs { apic: Some("xapic".into()), ipiv: Some("off".into()), ..bochs_guests("ipi-basic:4") },
            check: |o| {
                ipi_exit_path(o, "ipi-basic-0", 4, "apic_write")?;
                if vm(o, "ipi-basic-0")?.apic_mode != ApicMode::XApic {
                    bail!("apic_mode should be xapic");
                }
                Ok(())
            },
        },
        Case {
            name: "bochs-ipi-basic-x2apic".into(),
            args: RunArgs { apic: Some("x2apic".into()), ipiv: Some("off".into()), ..bochs_guests("ipi-basic:4") },
            check: |o| {
                ipi_exit_path(o, "ipi-basic-0", 4, "msr_write_icr")?;
                if vm(o, "ipi-basic-0")?.apic_mode != ApicMode::X2Apic {
                    bail!("apic_mode should be x2apic");
                }
                Ok(())
            },
        },
        Case {
            name: "bochs-ipi-basic-hlt-exit".into(),
            args: RunArgs {
                apic: Some("xapic".into()),
                ipiv: Some("off".into()),
                hlt: Some("exit".into()),
                ..bochs_guests("ipi-basic:4")
            },
            check: |o| {
                ipi_exit_path(o, "ipi-basic-0", 4, "apic_write")?;
                let v = vm(o, "ipi-basic-0")?;
                if v.hlt != Some(HltMode::Exit) || count(&v.exits, "hlt")? == 0 {
                    bail!("the halted receiver should have exited on HLT: {}", shown(&v.exits));
                }
                Ok(())
            },
        },
        Case {
            name: "bochs-ipi-storm-xapic".into(),
            args: RunArgs { apic: Some("xapic".into()), ipiv: Some("off".into()), ..bochs_guests("ipi-storm:4") },
            check: |o| {
                ipi_exit_path(o, "ipi-storm-0", 4, "apic_write")?;
                ipi_storm_counts(o, "ipi-storm-0")
            },
        },
        Case {
            name: "bochs-ipi-storm-x2apic".into(),
            args: RunArgs { apic: Some("x2apic".into()), ipiv: Some("off".into()), ..bochs_guests("ipi-storm:4") },
            check: |o| {
                ipi_exit_path(o, "ipi-storm-0", 4, "msr_write_icr")?;
                ipi_storm_counts(o, "ipi-storm-0")
            },
        },
        Case {
            name: "bochs-ipiv-rules-xapic".into(),
            args: RunArgs { apic: Some("xapic".into()), ..bochs_guests("ipiv-rules:4") },
            check: |o| ipiv_rules(o),
        },
        Case {
            name: "bochs-ipiv-rules-x2apic".into(),
            args: RunArgs { apic: Some("x2apic".into()), ..bochs_guests("ipiv-rules:4") },
            check: |o| ipiv_rules(o),
        },
        Case {
            name: "bochs-ipi-basic-ipiv-xapic".into(),
            args: RunArgs { apic: Some("xapic".into()), ipiv: Some("on".into()), ..bochs_guests("ipi-basic:4") },
            check: |o| ipiv_covered(o, "ipi-basic-0"),
        },
        Case {
            name: "bochs-ipi-basic-ipiv-x2apic".into(),
            args: RunArgs { apic: Some("x2apic".into()), ipiv: Some("on".into()), ..bochs_guests("ipi-basic:4") },
            check: |o| ipiv_covered(o, "ipi-basic-0"),
        },
        Case {
            name: "bochs-ipi-storm-ipiv-x2apic".into(),
            args: RunArgs { apic: Some("x2apic".into()), ipiv: Some("on".into()), ..bochs_guests("ipi-storm:4") },
            check: |o| {
                ipi_storm_counts(o, "ipi-storm-0")?;
                let v = vm(o, "ipi-storm-0")?;
                if icr_exits_beyond_startup(v) != 0 {
                    let each: Vec<String> = v.vcpu_exits.iter().map(shown).collect();
                    bail!("with IPIv the storm's IPIs must not exit (INIT-SIPI aside): {}", each.join(", "));
                }
                Ok(())
            },
        },
        Case {
            name: "bochs-vm-entry-failure-is-decoded".into(),
            args: RunArgs {
                fault: "bad-guest-state".into(),
                expect: Some("fail".into()),
                ..bochs_guests("hello,hello")
            },
            check: |o| {
                vm_result(o, "hello-0", "fail")?;
                let reason = vm(o, "hello-0")?.reason.as_deref().unwrap_or("");
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
            name: "bochs-kernel-refuses-bad-manifest".into(),
            args: RunArgs {
                manifest: Some("xtask/tests/overlapping-cpus.manifest".into()),
                skip_manifest_check: true,
                expect: Some("fail".into()),
                timeout: 300,
                ..RunArgs::new(Platform::Bochs, 4)
            },
            check: |o| {
                run_failed_with(o, &["manifest", "already pinned"])?;
                if !summary(o)?.vms.is_empty() {
                    bail!("no VM should have started");
                }
                Ok(())
            },
        },
        Case {
            name: "bochs-vmx-4cpu".into(),
            args: RunArgs { timeout: 600, ..RunArgs::new(Platform::Bochs, 4) },
            check: |o| {
                run_result(o, RunResult::Pass)?;
                let s = summary(o)?;
                let x = &s.vmx;
                if (s.cpus_online, x.vmxon_cpus) != (4, 4) {
                    bail!("{} CPUs online, VMXON on {}: expected 4 and 4", s.cpus_online, x.vmxon_cpus);
                }
                // The project's Bochs patches (xtask/patches/0002-0008) add IPI virtualization.
                let all = [
                    x.supported,
                    x.tertiary,
                    x.apicv,
                    x.posted_interrupts,
                    x.x2apic_virt,
                    x.ept,
                    x.vpid,
                    x.unrestricted_guest,
                    x.ipiv,
                ];
                if all.contains(&false) {
                    bail!("every VMX feature, IPIv included, should be there: {x:?}");
                }
                Ok(())
            },
        },
    ]
}

/// The L2s of `cargo xtask test --filter nested`: the hypervisor as an L1 under KVM on the
/// project's Bochs (`--platform nested-kvm`), all cases in one boot of KVM's host.
pub fn nested_cases() -> Vec<Case> {
    let l1 = |cpus: u32, list: &str, apic: &str| RunArgs {
        apic: Some(apic.into()),
        memory: 256,
        ..RunArgs::new(Platform::NestedKvm, cpus).with_guests(list)
    };
    vec![
        Case {
            name: "nested-smp-boot".into(),
            args: l1(2, "smp-boot:2", "x2apic"),
            check: |o| {
                smp_boot_ok(o, 2)?;
                nested_path(o, "smp-boot-0")
            },
        },
        Case { name: "nested-ipi-basic-xapic".into(), args: l1(2, "ipi-basic:2", "xapic"), check: nested_ipi_basic },
        Case { name: "nested-ipi-basic-x2apic".into(), args: l1(2, "ipi-basic:2", "x2apic"), check: nested_ipi_basic },
        Case {
            name: "nested-timer".into(),
            args: l1(2, "timer:2", "x2apic"),
            check: |o| {
                timer_ok(o, 2, "x2apic", TimerSource::Preemption)?;
                nested_path(o, "timer-0")
            },
        },
        Case {
            name: "nested-ipi-storm".into(),
            args: l1(2, "ipi-storm:2", "x2apic"),
            check: |o| {
                vm_result(o, "ipi-storm-0", "pass")?;
                every_vcpu_reported(o, "ipi-storm-0", 2)?;
                ipi_storm_counts(o, "ipi-storm-0")?;
                nested_path(o, "ipi-storm-0")
            },
        },
        Case {
            name: "nested-hostile-icr".into(),
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
