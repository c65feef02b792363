//! `cargo xtask run`: boot the hypervisor on a platform, stream its serial console, enforce a
//! timeout, and judge the run by its `HV-SUMMARY` line and the emulator's exit status.

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use hvcore::summary::{HvSummary, RunResult};
use std::fs;
use std::path::{Path, PathBuf};

use crate::provision::{debian, deps, guests, image};
use crate::summary;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Platform {
    /// The project's Bochs 3.0 with VMX (`sapphire_rapids` CPU model): the VMX proving ground.
    Bochs,
    /// QEMU with TCG: boot, SMP and the "no VMX" path.
    Qemu,
    /// QEMU with KVM (`-enable-kvm -cpu host`): needs a host with (nested) VMX.
    QemuKvm,
    /// The hypervisor as an L1 under KVM, on the project's Bochs: one Bochs boot of Debian's
    /// kernel as KVM's host runs it under Debian's QEMU with `-enable-kvm -cpu host`.
    NestedKvm,
}

impl Platform {
    pub fn name(self) -> &'static str {
        match self {
            Self::Bochs => "bochs",
            Self::Qemu => "qemu",
            Self::QemuKvm => "qemu-kvm",
            Self::NestedKvm => "nested-kvm",
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// Where to boot.
    #[arg(long, value_enum, default_value = "bochs")]
    pub platform: Platform,
    /// Boot through UEFI (OVMF) instead of BIOS (QEMU platforms only).
    #[arg(long)]
    pub uefi: bool,
    /// Number of CPUs.
    #[arg(long, default_value_t = 4)]
    pub cpus: u32,
    /// Bochs' CPU model (Bochs only; `bochs -help cpu` lists them).
    #[arg(long, default_value = crate::platform::bochs::DEFAULT_MODEL)]
    pub cpu_model: String,
    /// Write the HV-SUMMARY object, plus "platform", to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Exit 0 when the result is this one (besides "pass").
    #[arg(long, value_parser = ["pass", "fail", "unsupported"])]
    pub expect: Option<String>,
    /// Kill the run after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Kernel log level on the serial console.
    #[arg(long, default_value = "info", value_parser = ["off", "error", "warn", "info", "debug", "trace"])]
    pub log_level: String,
    /// Inject a fault, to check that faults are reported and fail the run.
    #[arg(long, default_value = "none", value_parser = ["none", "ap-page-fault", "bsp-page-fault", "bsp-panic", "bad-guest-state"])]
    pub fault: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512)]
    pub memory: u32,
    /// Do not echo the serial console while running.
    #[arg(long)]
    pub quiet: bool,
    /// Guests to run, one VM each: `NAME[:vcpus][,NAME...]` (see guest-tests/).
    #[arg(long, conflicts_with_all = ["manifest", "kernel"])]
    pub guest: Option<String>,
    /// A multiboot v1 kernel (ELF32, ELF64 or a.out kludge) to boot as one VM, as QEMU's
    /// `-kernel` boots it.
    #[arg(long, conflicts_with = "manifest")]
    pub kernel: Option<PathBuf>,
    /// The --kernel's command line.
    #[arg(long, requires = "kernel")]
    pub append: Option<String>,
    /// Multiboot modules for the --kernel (repeat for several), in order.
    #[arg(long = "module", requires = "kernel")]
    pub modules: Vec<PathBuf>,
    /// vCPUs of the --kernel's (or --linux') VM.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// RAM of the --kernel's VM in MiB, as QEMU's `-m` (default 128; a Linux bzImage 256), or
    /// of each --guest VM (default: the catalogue's).
    #[arg(long)]
    pub ram: Option<u32>,
    /// The VM watchdog in milliseconds of guest TSC time for the --kernel or --guest VMs
    /// (default: --kernel 90 % of --timeout, --guest the catalogue's).
    #[arg(long)]
    pub watchdog_ms: Option<u64>,
    /// Console budget of the --kernel or --guest VMs in bytes per second (default 4096, a
    /// --kernel VM 1 MiB/s; bursts of 16 KiB or four seconds' worth; docs/security.md).
    #[arg(long)]
    pub console_rate: Option<u64>,
    /// An initrd for a --kernel that is a Linux bzImage.
    #[arg(long, requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Boot Debian's Linux (fetched through apt) with the project's initramfs and IPI workload
    /// as a VM called `linux`, beside the --guest VMs if any; --append adds to its command line
    /// (`wl_wake=N wl_tlb=N wl_mb=N` set the workload's counts).
    #[arg(long, conflicts_with_all = ["kernel", "manifest"])]
    pub linux: bool,
    /// RAM of the --linux VM, in MiB.
    #[arg(long, default_value_t = 256)]
    pub linux_ram: u32,
    /// APIC mode of the VMs given with --guest.
    #[arg(long, value_parser = ["xapic", "x2apic"])]
    pub apic: Option<String>,
    /// Whether CPUID offers x2APIC mode to the --guest or --kernel VMs (QEMU's `-cpu ...,-x2apic`
    /// is `off`; default on).
    #[arg(long, value_parser = ["on", "off"])]
    pub x2apic: Option<String>,
    /// IPI virtualization for the VMs given with --guest (`auto`: where the CPU has it).
    #[arg(long, value_parser = ["auto", "on", "off"])]
    pub ipiv: Option<String>,
    /// What guest HLT does in the VMs given with --guest.
    #[arg(long, value_parser = ["passthrough", "exit"])]
    pub hlt: Option<String>,
    /// How interrupts reach the --guest VMs (`auto`: the best path the CPU has; any other value
    /// asks for exactly that path, and the VM is refused where the CPU lacks it).
    #[arg(long, value_parser = ["auto", "ipiv", "posted", "virtual-delivery", "injection"])]
    pub interrupt_path: Option<String>,
    /// A manifest file with `[vm]` sections (docs/platform.md).
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Measure the native IPI round trip (CPU 0 → CPU 1) for this many iterations before any VM.
    #[arg(long, default_value_t = 0)]
    pub native_bench: u32,
    /// The native round trip's target spins or halts.
    #[arg(long, default_value = "spin", value_parser = ["spin", "halt"])]
    pub native_target: String,
    /// Host APIC mode: x2APIC where available (auto), or xAPIC.
    #[arg(long, default_value = "auto", value_parser = ["auto", "xapic"])]
    pub host_apic: String,
    /// Debugging: hand the manifest to the kernel without checking it first (to see the
    /// kernel refuse it).
    #[arg(long, hide = true)]
    pub skip_manifest_check: bool,
    /// Boot the VMs' kernels directly on QEMU, without the hypervisor (what `--platform qemu`
    /// does with --guest or --kernel; the bench's "bare" cells ask it for a manifest).
    #[arg(skip)]
    pub direct: bool,
    /// KVM's host for --platform nested-kvm: Debian's trixie (6.12) or bookworm (6.1, whose
    /// nested posted interrupts have two bugs: docs/hardware.md).
    #[arg(long, value_enum, default_value = "trixie")]
    pub kvm_host: crate::platform::kvm_host::KvmHost,
    /// `kvm_intel` parameters for --platform nested-kvm (e.g. `enable_apicv=0`; default: KVM's
    /// defaults, nested on).
    #[arg(long, default_value = "")]
    pub kvm_params: String,
    /// CPU features the project's Bochs hides from its model for this run (the Linux
    /// benchmark's: `bochs::LINUX_EXCLUDED_FEATURES`).
    #[arg(skip)]
    pub bochs_exclude: Vec<&'static str>,
}

impl RunArgs {
    pub fn new(platform: Platform, cpus: u32) -> Self {
        Self {
            platform,
            uefi: false,
            cpus,
            json: None,
            expect: None,
            timeout: 300,
            log_level: "info".into(),
            fault: "none".into(),
            memory: 512,
            quiet: true,
            guest: None,
            kernel: None,
            append: None,
            modules: Vec::new(),
            vcpus: 1,
            ram: None,
            watchdog_ms: None,
            console_rate: None,
            initrd: None,
            linux: false,
            linux_ram: 256,
            apic: None,
            x2apic: None,
            ipiv: None,
            hlt: None,
            interrupt_path: None,
            manifest: None,
            native_bench: 0,
            native_target: "spin".into(),
            host_apic: "auto".into(),
            skip_manifest_check: false,
            direct: false,
            bochs_exclude: Vec::new(),
            cpu_model: crate::platform::bochs::DEFAULT_MODEL.into(),
            kvm_host: crate::platform::kvm_host::KvmHost::Trixie,
            kvm_params: String::new(),
        }
    }

    pub fn with_guests(self, list: &str) -> Self {
        Self { guest: Some(list.into()), ..self }
    }

    /// A short name for the run's output folder.
    pub fn slug(&self) -> String {
        let fw = if self.uefi { "uefi" } else { "bios" };
        let x2apic = self.x2apic.as_ref().map(|v| format!("x2apic{v}"));
        let opts: String = [&self.apic, &x2apic, &self.ipiv, &self.hlt, &self.interrupt_path]
            .iter()
            .filter_map(|o| o.as_deref())
            .map(|o| format!("-{o}"))
            .collect();
        let guests = match (&self.guest, &self.manifest) {
            (None, None) if self.kernel.is_some() => {
                let k = self.kernel.as_deref().unwrap_or(Path::new("kernel"));
                let append: String = self
                    .append
                    .as_deref()
                    .unwrap_or_default()
                    .chars()
                    .take(40)
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect();
                let append = if append.is_empty() { append } else { format!("-{append}") };
                format!("-kernel-{}-{}{append}{opts}", k.file_stem().unwrap_or_default().to_string_lossy(), self.vcpus)
            }
            (Some(g), _) => format!("-{}{opts}", g.replace([',', ':'], "_")),
            (None, Some(m)) => format!("-{}", m.file_stem().unwrap_or_default().to_string_lossy()),
            (None, None) => String::new(),
        };
        let guests = if self.linux { format!("-linux-{}{opts}{guests}", self.vcpus) } else { guests };
        let native = if self.native_bench > 0 {
            format!("-native-{}-{}", self.host_apic, self.native_target)
        } else {
            String::new()
        };
        let model = if self.cpu_model == crate::platform::bochs::DEFAULT_MODEL {
            String::new()
        } else {
            format!("-{}", self.cpu_model)
        };
        format!("{}{model}-{fw}-{}cpu-{}{guests}{native}", self.platform.name(), self.cpus, self.fault)
    }
}

/// What a run produced.
pub struct Outcome {
    /// The summary with `platform` added; `None` when the kernel printed none.
    pub summary: Option<HvSummary>,
    /// The emulator's exit status (`None` if killed on timeout or by a signal).
    pub exit_status: Option<i32>,
    pub timed_out: bool,
    /// Whether `cargo xtask run` should exit 0: a "pass", or the `--expect`ed result.
    pub accepted: bool,
    /// The serial log of the run.
    pub serial: PathBuf,
}

/// What a run's console and its emulator's end say.
pub struct Judged {
    /// The summary with `platform` and `firmware` added; `None` when the kernel printed none.
    pub summary: Option<HvSummary>,
    pub result: Option<RunResult>,
    /// A "pass", or the `--expect`ed result, with nothing wrong besides.
    pub accepted: bool,
    pub problems: Vec<String>,
}

/// Judges a run of `args` from its serial log and how the emulator (or QEMU, nested) ended:
/// the HV-SUMMARY line, and the exit status isa-debug-exit gave, which must agree with it.
/// `limit` says what timed out, for the message.
pub fn judge(args: &RunArgs, serial_log: &str, exit_status: Option<i32>, timed_out: bool, limit: &str) -> Judged {
    let mut problems = Vec::new();
    let mut summary = match summary::find(serial_log) {
        Ok(s) => s,
        Err(e) => {
            problems.push(format!("{e:#}"));
            None
        }
    };
    if let Some(s) = summary.as_mut() {
        s.platform = Some(args.platform.name().into());
        s.firmware = Some(if args.uefi { "uefi" } else { "bios" }.into());
    }
    let result = summary.as_ref().map(|s| s.result);
    if timed_out {
        problems.push(format!("timed out after {limit}"));
    } else if summary.is_none() {
        problems.push(format!("no HV-SUMMARY line; the emulator exited with {exit_status:?}"));
    }
    if let (Some(r), Some(code), false) = (result, exit_status, timed_out)
        && code != r.emulator_exit_status()
    {
        problems.push(format!(
            "summary says {} but the emulator exited with {code} (expected {})",
            r.as_str(),
            r.emulator_exit_status()
        ));
    }
    let wanted = args.expect.as_deref().unwrap_or("pass");
    let accepted = problems.is_empty() && result.is_some_and(|r| r == RunResult::Pass || r.as_str() == wanted);
    Judged { summary, result, accepted, problems }
}

/// The boot config text (global keys, then the manifest's `[vm]` sections) and the guest
/// images it needs, validated as the kernel will validate them, before anything boots.
pub fn compose(args: &RunArgs, exit: &str) -> Result<(String, Vec<image::GuestImage>)> {
    let mut config = format!(
        "# written by cargo xtask\nlog = {}\nexit = {exit}\nfault = {}\nhost_apic = {}\nnative_bench = {}\nnative_target = {}\n",
        args.log_level, args.fault, args.host_apic, args.native_bench, args.native_target
    );
    let ram = args.ram.map(|r| r.to_string());
    let watchdog = args.watchdog_ms.map(|w| w.to_string());
    let console_rate = args.console_rate.map(|r| r.to_string());
    let opts = [
        ("apic", &args.apic),
        ("x2apic", &args.x2apic),
        ("ipiv", &args.ipiv),
        ("hlt", &args.hlt),
        ("interrupt_path", &args.interrupt_path),
        ("ram_mib", &ram),
        ("timeout_ms", &watchdog),
        ("console_bytes_per_second", &console_rate),
    ];
    let extra: Vec<(&str, &str)> = opts.iter().filter_map(|(k, v)| v.as_deref().map(|v| (*k, v))).collect();
    if let Some(kernel) = &args.kernel {
        let (section, files) = guests::kernel_vm(
            &guests::KernelVm {
                kernel,
                append: args.append.as_deref(),
                modules: &args.modules,
                initrd: args.initrd.as_deref(),
                vcpus: args.vcpus,
                watchdog_ms: linux_watchdog_ms(args.timeout),
            },
            &extra,
        )?;
        config += &section;
        let manifest = guests::validate(&config, &files.iter().cloned().collect(), args.cpus, args.memory)?;
        debug_assert_eq!(manifest.vms.len(), 1);
        return Ok((config, files));
    }
    let mut linux_files = Vec::new();
    if args.linux {
        let (debian, files) = debian::files(&deps::cache_dir())?;
        eprintln!("xtask: Linux guest: {} with the project's initramfs", debian.kernel_package);
        config += &debian::vm_section(
            args.vcpus,
            args.linux_ram,
            linux_watchdog_ms(args.timeout),
            args.append.as_deref(),
            &extra,
        )?;
        linux_files = files;
        if args.guest.is_none() {
            guests::validate(&config, &linux_files.iter().cloned().collect(), args.cpus, args.memory)?;
            return Ok((config, linux_files));
        }
    }
    let mut manifest_dir = None;
    match (&args.guest, &args.manifest) {
        (Some(list), _) => config += &guests::manifest_from_list(list, &extra)?,
        (None, Some(_)) if !extra.is_empty() => anyhow::bail!(
            "--apic, --x2apic, --ipiv, --hlt, --interrupt-path, --ram, --watchdog-ms and --console-rate apply to --guest and --kernel; put them in the manifest's [vm] sections instead"
        ),
        (None, Some(file)) => {
            config += "\n";
            config += &fs::read_to_string(file).with_context(|| format!("reading manifest {}", file.display()))?;
            manifest_dir = Some(file.parent().map(Path::to_path_buf).unwrap_or_default());
        }
        (None, None) => return Ok((config, Vec::new())),
    }
    let mut images = guests::build()?;
    images.extend(linux_files);
    if let Some(dir) = manifest_dir {
        let foreign = guests::manifest_files(&config, &dir, &images)?;
        images.extend(foreign);
    }
    if args.skip_manifest_check {
        return Ok((config, images.into_iter().collect()));
    }
    let manifest = guests::validate(&config, &images, args.cpus, args.memory)?;
    let needed: Vec<image::GuestImage> = images
        .into_iter()
        .filter(|(name, _)| {
            manifest
                .vms
                .iter()
                .any(|v| &v.kernel == name || v.modules.contains(name) || &v.linux == name || &v.initrd == name)
        })
        .collect();
    Ok((config, needed))
}

/// The watchdog of a Linux or `--kernel` VM: 90 % of the run's timeout, so the hypervisor's
/// report comes first.
fn linux_watchdog_ms(run_timeout_s: u64) -> u64 {
    run_timeout_s * 900
}
