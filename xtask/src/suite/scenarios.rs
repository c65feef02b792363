//! The suite's tests that are more than one boot and a check: batches of guests on every path,
//! test-kernel fixtures, Linux, every CPU model, kvm-unit-tests, the benchmark's exit counts.

use anyhow::{Result, bail};
use hvcore::summary::RunResult;
use hvcore::vmx::path_kind::InterruptPath;

use super::checks::*;
use super::entry::bochs_guests;
use crate::platform::launch;
use crate::platform::spec::{Platform, RunArgs};

/// The guest tests that mean something on QEMU's reference PC, booted there directly (xAPIC:
/// QEMU's TCG emulates x2APIC only from QEMU 8.0), each with the vCPUs it runs on and how many
/// reports it must leave.
pub const QEMU_GUESTS: &[(&str, usize)] = &[
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
pub fn qemu_guest(list: &str, reports: usize) -> Result<()> {
    let args = RunArgs { timeout: 120, ..RunArgs::new(Platform::Qemu, 4) }.with_guests(list);
    let o = launch::run(&args)?;
    let name = format!("{}-0", list.split([':', '+']).next().unwrap_or_default());
    let v = vm(&o, &name)?;
    if !o.accepted {
        bail!("VM {name}: {} ({:?}), expected {}", v.result.as_str(), v.reason, v.expect.as_str());
    }
    let got = v.reports.len();
    if got != reports {
        let texts: Vec<&str> = v.reports.iter().map(|r| r.text()).collect();
        bail!("VM {name}: {got} reports, expected {reports}: {}", texts.join(", "));
    }
    Ok(())
}

/// The assembly fixture kernel (not built with the project's runtime) with `--kernel FILE
/// --vcpus 2`: it finds its command line, starts its second processor with INIT-SIPI-SIPI and
/// passes.
pub fn kernel_fixture(platform: Platform) -> Result<()> {
    let kernel = crate::provision::fixtures::mini_multiboot()?;
    let args = RunArgs {
        kernel: Some(kernel),
        append: Some("cpus=2".into()),
        vcpus: 2,
        timeout: 120,
        ..RunArgs::new(platform, 4)
    };
    let o = launch::run(&args)?;
    vm_result(&o, "kernel", "pass")?;
    if !vm(&o, "kernel")?.reason.as_deref().unwrap_or("").ends_with("isa-debug-exit: 0") {
        bail!("the fixture should end through isa-debug-exit with 0: {:?}", vm(&o, "kernel")?.reason);
    }
    let sipis = vm(&o, "kernel")?.vcpu_exits.get(1).map(|c| c.sipis);
    if platform == Platform::Bochs && sipis != Some(1) {
        bail!("vCPU 1 should have been started by one SIPI: {sipis:?} were applied");
    }
    Ok(())
}

/// A foreign kernel named by path in a manifest (`kernel = fixtures/mini-multiboot`, relative
/// to the manifest's folder) beside a catalogue guest: both pass, and the foreign one found its
/// command line and second processor.
pub fn manifest_foreign_kernel() -> Result<()> {
    crate::provision::fixtures::mini_multiboot()?;
    let manifest = std::path::PathBuf::from("target/xtask/foreign-kernel.manifest");
    std::fs::write(
        &manifest,
        "[vm]\nname = foreign\nkernel = fixtures/mini-multiboot\ncmdline = \"cpus=2\"\nvcpus = 2\n\n\
         [vm]\nname = hello\nkernel = hello\n",
    )?;
    let args = RunArgs { manifest: Some(manifest), timeout: 120, ..RunArgs::new(Platform::Bochs, 4) };
    let o = launch::run(&args)?;
    vm_result(&o, "foreign", "pass")?;
    vm_result(&o, "hello", "pass")?;
    if !vm(&o, "foreign")?.reason.as_deref().unwrap_or("").ends_with("isa-debug-exit: 0") {
        bail!("the fixture should end through isa-debug-exit with 0: {:?}", vm(&o, "foreign")?.reason);
    }
    Ok(())
}

/// Every guest test that passes, batched four CPUs at a time, for the guest-matrix runs.
pub const MATRIX_BATCHES: &[&str] = &[
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
pub const MATRIX_PATHS: [(&str, &str); 5] = [
    ("ipiv-on", "ipiv"),
    ("ipiv-off", "posted"),
    ("virtual-delivery", "virtual-delivery"),
    ("injection", "injection"),
    ("injection-no-tpr-shadow", "injection"),
];

/// One batch in one APIC mode on one interrupt path: every VM ends as its test expects.
pub fn matrix_batch(list: &str, apic: &str, label: &str, path: &str, cpu_model: &str) -> Result<()> {
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
    let o = launch::run(&args)?;
    if o.timed_out {
        bail!("timed out");
    }
    for v in &run_result(&o, RunResult::Pass)?.vms {
        let ran = v.interrupt_path.map_or("none", |p| p.as_str());
        if ran != path || v.apic_mode.as_str() != apic {
            bail!("VM {} ran on interrupt path {ran} in {} mode", v.name, v.apic_mode.as_str());
        }
    }
    Ok(())
}

/// A bad manifest is refused by xtask before any emulator starts.
pub fn refuses_bad_manifest_before_launch() -> Result<()> {
    let args =
        RunArgs { manifest: Some("xtask/tests/overlapping-cpus.manifest".into()), ..RunArgs::new(Platform::Bochs, 4) };
    match launch::run(&args) {
        Ok(_) => bail!("the run started"),
        Err(e) if format!("{e:#}").contains("already pinned to VM `a`") => Ok(()),
        Err(e) => bail!("refused for the wrong reason: {e:#}"),
    }
}

/// Debian's Linux, SMP on 4 vCPUs in x2APIC mode with IPIv, runs a short IPI workload beside a
/// 2-vCPU test guest that must pass too; every part of the workload must meet the IPIv target
/// (IPI-related exits per guest IPI, from the exit census).
pub fn linux_beside_guest() -> Result<()> {
    use crate::bench::linux::{self, Config};
    let args = RunArgs {
        linux: true,
        vcpus: 4,
        apic: Some("x2apic".into()),
        ipiv: Some("on".into()),
        append: Some(linux::counts(200)),
        timeout: 900,
        ..RunArgs::new(Platform::Bochs, 6).with_guests("ipi-storm:2")
    };
    let o = launch::run(&args)?;
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
    let records = linux::vm_records(Config { config: "ipiv-on", apic: "x2apic" }, vm(&o, "linux")?)?;
    let parts: Vec<&str> = records.iter().filter_map(|r| r["workload"].as_str()).collect();
    if parts != ["wake", "tlb", "membarrier"] {
        bail!("the workload reported {parts:?}, not wake, tlb and membarrier");
    }
    for c in linux::check_targets(&records) {
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
pub fn linux_on_injection_path() -> Result<()> {
    let args = RunArgs {
        linux: true,
        vcpus: 4,
        apic: Some("xapic".into()),
        append: Some(crate::bench::linux::counts(200)),
        cpu_model: INJECTION_MODEL.into(),
        timeout: 900,
        ..RunArgs::new(Platform::Bochs, 4)
    };
    let o = launch::run(&args)?;
    if o.timed_out {
        bail!("timed out");
    }
    vm_result(&o, "linux", "pass")?;
    let v = vm(&o, "linux")?;
    if v.interrupt_path != Some(InterruptPath::Injection) {
        bail!("Linux ran on interrupt path {:?}, not injection", v.interrupt_path);
    }
    if !std::fs::read_to_string(&o.serial)?.contains("smpboot: Total of 4 processors activated") {
        bail!("Linux did not bring all 4 vCPUs online");
    }
    let reports = v.report_values();
    let parts: Vec<&str> = reports.iter().filter_map(|r| r["workload"].as_str()).collect();
    if parts != ["wake", "tlb", "membarrier"] || reports.iter().any(|r| r["workload"].is_string() && r["cpus"] != 4) {
        bail!("the workload reported {reports:?}");
    }
    let injected = v.exits.interrupts_injected;
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
pub fn linux_on_qemu() -> Result<()> {
    let args = RunArgs {
        linux: true,
        vcpus: 4,
        append: Some(crate::bench::linux::counts(200)),
        timeout: 300,
        ..RunArgs::new(Platform::Qemu, 4)
    };
    let o = launch::run(&args)?;
    vm_result(&o, "linux", "pass")?;
    let reports = reports(&o, "linux")?;
    let parts: Vec<&str> = reports.iter().filter_map(|r| r["workload"].as_str()).collect();
    if parts != ["wake", "tlb", "membarrier"] || reports.iter().any(|r| r["workload"].is_string() && r["cpus"] != 4) {
        bail!("the workload on QEMU reported {reports:?}");
    }
    Ok(())
}

/// The image of `cargo xtask bench --peer kvm` builds from Debian's packages: KVM's modules,
/// QEMU with every library its ELF files name, its firmware, and a plan line for every cell.
pub fn kvm_peer_image() -> Result<()> {
    let cells = crate::bench::peer::cells(4);
    let img = crate::bench::peer::image(&cells, 200)?;
    eprintln!("xtask test: KVM's host image: {}", img.describe);
    if img.initrd.len() < 4 << 20 || img.kernel.len() < 1 << 20 {
        bail!("the image is too small to hold QEMU and the kernel: {}", img.describe);
    }
    Ok(())
}

/// A short bench run: the exit counts per IPI it reports must meet the targets (timings are
/// not checked here; they are `cargo xtask bench`'s business).
pub fn bench_exit_counts() -> Result<()> {
    use crate::bench::args::BenchArgs;
    use crate::bench::cell::{self, Cell};
    use crate::bench::ipi;
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
        cpu_model: crate::platform::bochs::DEFAULT_MODEL.into(),
        kvm_host: crate::platform::kvm_host::KvmHost::Trixie,
        kvm_params: String::new(),
    };
    let cells: Vec<Cell> = cell::matrix(4, Platform::Bochs)
        .into_iter()
        .filter(|c| c.pattern == "unicast" && c.config != "native" && c.target != "halt-exit")
        .collect();
    let (records, skipped) = ipi::measure(&a, &cells, 50)?;
    for s in &skipped {
        eprintln!("xtask test: bench cell not measured: {s}");
    }
    let checks = ipi::check_targets(&records, 500, false);
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
pub enum ModelExpect {
    Path(&'static str),
    /// The kernel refuses the VMs, naming this feature (and the CPU).
    Refused(&'static str),
    /// xtask refuses the model before booting (no long mode).
    NotBooted,
}

pub fn model_expectation(model: &str) -> Result<ModelExpect> {
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
pub const INJECTION_MODEL: &str = "corei7_ivy_bridge_3770k";

/// The guests every CPU model runs: an SMP start by INIT and SIPI, IPIs of every kind, the
/// APIC timer (8 CPUs).
pub const CPU_MODEL_GUESTS: &str = "smp-boot:2,ipi-basic:4,timer:2";

/// `cpu-model-<model>`: boots the model and checks its expectation.
pub fn cpu_model(model: &str) -> Result<()> {
    let args = RunArgs { cpu_model: model.into(), ..RunArgs { timeout: 300, ..RunArgs::new(Platform::Bochs, 8) } }
        .with_guests(CPU_MODEL_GUESTS);
    let want = model_expectation(model)?;
    if let ModelExpect::NotBooted = want {
        let e = match launch::run(&args) {
            Ok(_) => bail!("{model} has no long mode, yet xtask booted it"),
            Err(e) => format!("{e:#}"),
        };
        if !e.contains("no long mode") {
            bail!("the refusal should say the model has no long mode: {e}");
        }
        println!("  {model}: refused before boot ({e})");
        return Ok(());
    }
    let o = launch::run(&args)?;
    if o.timed_out {
        bail!("timed out");
    }
    let brand = summary(&o)?.cpu_model.clone();
    if brand.is_empty() {
        bail!("the summary names no CPU model");
    }
    match want {
        ModelExpect::Refused(feature) => {
            run_failed_with(&o, &[feature, &format!("cannot run on this CPU ({brand})")])?;
            let s = summary(&o)?;
            let reason = s.reason.as_deref().unwrap_or_default();
            if !s.vms.is_empty() {
                bail!("a refused VM should not have run");
            }
            println!("  {model} ({brand}): refused: {reason}");
        }
        ModelExpect::Path(path) => {
            for name in ["smp-boot-0", "ipi-basic-1", "timer-2"] {
                vm_result(&o, name, "pass")?;
                let v = vm(&o, name)?;
                if v.interrupt_path.map(|p| p.as_str()) != Some(path) {
                    bail!("{name}: interrupt path {:?}, expected {path}", v.interrupt_path);
                }
                if (path == "ipiv") != v.interrupt_path_reason.is_none() {
                    bail!("{name}: a reason is due exactly when the path is not ipiv: {:?}", v.interrupt_path_reason);
                }
            }
            every_vcpu_reported(&o, "ipi-basic-1", 4)?;
            every_vcpu_reported(&o, "timer-2", 2)?;
            let ipi = vm(&o, "ipi-basic-1")?;
            for r in ipi.report_values() {
                if r["interrupt_path"] != path {
                    bail!("the guest was told interrupt path {}, expected {path}", r["interrupt_path"]);
                }
            }
            for (i, c) in vm(&o, "smp-boot-0")?.vcpu_exits.iter().enumerate().skip(1) {
                if c.sipis != 3 {
                    bail!("smp-boot vCPU {i}: {} SIPIs, expected 3", c.sipis);
                }
            }
            for (i, c) in vm(&o, "timer-2")?.vcpu_exits.iter().enumerate() {
                if c.timer_interrupts < 23 {
                    bail!("timer vCPU {i}: {} timer interrupts, expected at least 23", c.timer_interrupts);
                }
            }
            let e = &ipi.exits;
            println!(
                "  {model} ({brand}): {path}; ipi-basic: {} IPIs by exit, {} external-interrupt exits, {} interrupts injected{}",
                e.ipi_sent_by_exit,
                count(e, "external_interrupt")?,
                e.interrupts_injected,
                ipi.interrupt_path_reason.as_deref().map(|r| format!(" (not better: {r})")).unwrap_or_default()
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
pub type KutCase = (&'static str, &'static [&'static str], &'static [&'static str], KutOnly);

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum KutOnly {
    NotVmexit,
    Vmexit,
    Ipi,
}

pub const KUT_CASES: &[KutCase] = &[
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
pub fn kut_case(dir: &std::path::Path, paths: &[&str], apics: &[&str], only: KutOnly, cpu_model: &str) -> Result<()> {
    use crate::conformance;
    let entries: Vec<_> = conformance::plan::entries(dir)?
        .into_iter()
        .filter(|e| match only {
            KutOnly::Vmexit => e.file == "vmexit.flat",
            KutOnly::NotVmexit => e.file != "vmexit.flat",
            KutOnly::Ipi => e.file == "vmexit.flat" && e.args.starts_with("ipi"),
        })
        .collect();
    let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
    let apics: Vec<String> = apics.iter().map(|a| a.to_string()).collect();
    let (jobs, slow): (Vec<_>, Vec<_>) = conformance::plan::jobs(&entries, &paths, &apics, None)
        .into_iter()
        .partition(|j| conformance::plan::slow_on_bochs(&j.entry).is_none());
    for j in slow.iter().filter(|j| j.path == paths[0] && j.apic == apics[0]) {
        eprintln!(
            "xtask test: {} not run: {}",
            j.entry.name,
            conformance::plan::slow_on_bochs(&j.entry).unwrap_or_default()
        );
    }
    let records = conformance::run_all(&jobs, dir, cpu_model, 2, false)?;
    let failed: Vec<String> = records
        .iter()
        .filter(|r| r["result"] == "fail")
        .map(|r| format!("{} on {}/{}: {}", r["test"], r["path"], r["apic"], conformance::report::line(r)))
        .collect();
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(())
}

/// The project's Bochs offers every Intel VMX model the suite knows.
pub fn cpu_model_list() -> Result<()> {
    let offered =
        crate::platform::bochs::models(&crate::provision::bochs::binary(&crate::provision::deps::cache_dir())?)?;
    let missing: Vec<_> = crate::platform::bochs::INTEL_VMX_MODELS
        .iter()
        .map(|(m, _)| *m)
        .filter(|m| !offered.iter().any(|o| o == m))
        .collect();
    if !missing.is_empty() {
        bail!("the project's Bochs does not offer {}", missing.join(", "));
    }
    Ok(())
}
