//! `cargo xtask run`: boot the hypervisor on a platform, stream its serial console, enforce a
//! timeout, and judge the run by its `HV-SUMMARY` line and the emulator's exit status.

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use hvcore::summary::RunResult;
use serde_json::Value;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{bochs, deps, guests, image, summary};

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
    #[arg(long, default_value = crate::bochs::DEFAULT_MODEL)]
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
    pub kvm_host: crate::kvm_peer::KvmHost,
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
            cpu_model: crate::bochs::DEFAULT_MODEL.into(),
            kvm_host: crate::kvm_peer::KvmHost::Trixie,
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
        let model =
            if self.cpu_model == crate::bochs::DEFAULT_MODEL { String::new() } else { format!("-{}", self.cpu_model) };
        format!("{}{model}-{fw}-{}cpu-{}{guests}{native}", self.platform.name(), self.cpus, self.fault)
    }
}

/// What a run produced.
pub struct Outcome {
    /// The summary with "platform" added; `None` when the kernel printed none.
    pub summary: Option<Value>,
    /// The emulator's exit status (`None` if killed on timeout or by a signal).
    pub exit_status: Option<i32>,
    pub timed_out: bool,
    /// Whether `cargo xtask run` should exit 0: a "pass", or the `--expect`ed result.
    pub accepted: bool,
    /// The serial log of the run.
    pub serial: PathBuf,
}

pub fn run(args: &RunArgs) -> Result<Outcome> {
    if args.cpus == 0 || args.cpus > 255 {
        bail!("--cpus must be between 1 and 255");
    }
    // QEMU as the reference PC: the guest kernels themselves, no hypervisor underneath.
    if args.platform == Platform::Qemu && (args.direct || args.guest.is_some() || args.kernel.is_some() || args.linux) {
        return crate::qemu_guest::run(args);
    }
    if !matches!(args.platform, Platform::Bochs | Platform::NestedKvm) && args.cpu_model != crate::bochs::DEFAULT_MODEL
    {
        bail!("--cpu-model chooses the project's Bochs' CPU model: use it with --platform bochs or nested-kvm");
    }
    if args.uefi && matches!(args.platform, Platform::Bochs | Platform::NestedKvm) {
        bail!(
            "--uefi needs a QEMU platform: the project's Bochs boots BIOS images, and KVM's host on it has SeaBIOS only"
        );
    }
    if args.platform == Platform::NestedKvm {
        bail!("--platform nested-kvm boots through nested::run");
    }
    let (config, guests) = compose(args, "debug-port")?;
    let dir = PathBuf::from("target/xtask/runs").join(args.slug());
    fs::create_dir_all(&dir)?;
    let kernel = image::build_kernel()?;
    let img = dir.join("disk.img");
    // Bochs locks its disk with `<image>.lock` and leaves it behind when killed on a timeout;
    // the image is rebuilt for every run, so a lock left here is stale.
    let _ = fs::remove_file(dir.join("disk.img.lock"));
    image::make_image(&kernel, &config, &guests, args.uefi, &img)?;

    let serial = dir.join("serial.log");
    let _ = fs::remove_file(&serial);
    fs::write(&serial, b"")?;
    let mut cmd = match args.platform {
        Platform::Bochs => {
            let bochs = bochs::binary(&deps::cache_dir())?;
            let m = bochs::Machine {
                model: &args.cpu_model,
                cpus: args.cpus,
                memory_mib: args.memory,
                exclude: &args.bochs_exclude,
            };
            bochs::command(&bochs, &dir, &img, &serial, &m)?
        }
        Platform::Qemu | Platform::QemuKvm => qemu_command(args, &img, &serial)?,
        Platform::NestedKvm => unreachable!("refused above"),
    };
    eprintln!(
        "xtask: booting on {}{} with {} CPUs (timeout {} s, log in {})",
        args.platform.name(),
        if args.uefi { " (UEFI)" } else { "" },
        args.cpus,
        args.timeout,
        serial.display()
    );
    let emu_out = fs::File::create(dir.join("emulator.out"))?;
    cmd.stdin(Stdio::null()).stdout(emu_out.try_clone()?).stderr(emu_out);
    let start = Instant::now();
    let child = cmd.spawn().with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let (exit_status, timed_out) = supervise(child, &serial, !args.quiet, args.timeout)?;
    let elapsed = start.elapsed();
    let serial_log = String::from_utf8_lossy(&fs::read(&serial)?).into_owned();

    let Judged { summary, result, accepted, problems } =
        judge(args, &serial_log, exit_status, timed_out, &format!("{} s", args.timeout));

    if let (Some(path), Some(s)) = (&args.json, &summary) {
        fs::write(path, serde_json::to_string_pretty(s)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let verdict = match result {
        Some(r) => r.as_str(),
        None => "no result",
    };
    eprintln!(
        "xtask: {} in {:.1} s: {verdict}{}",
        args.platform.name(),
        elapsed.as_secs_f64(),
        summary.as_ref().and_then(|s| s["reason"].as_str()).map(|r| format!(" ({r})")).unwrap_or_default()
    );
    if args.kernel.is_some() {
        // What a kvm-unit-tests-style kernel said: its checks and its figures.
        let v = crate::conformance::kut::verdict(crate::conformance::kut::guest_lines(&serial_log, "kernel"));
        if let Some(line) = kernel_said(&v) {
            eprintln!("xtask: the kernel says: {line}");
        }
    }
    if !accepted {
        for p in &problems {
            eprintln!("xtask: {p}");
        }
        if !problems.is_empty() || !args.quiet {
            print_tail(&serial_log, 40);
            let emu = fs::read_to_string(dir.join("emulator.out")).unwrap_or_default();
            if !emu.trim().is_empty() {
                eprintln!("--- emulator output (tail) ---");
                print_tail(&emu, 15);
            }
        }
    }
    Ok(Outcome { summary, exit_status, timed_out, accepted, serial })
}

/// What a run's console and its emulator's end say.
pub struct Judged {
    /// The summary with "platform" and "firmware" added; `None` when the kernel printed none.
    pub summary: Option<Value>,
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
    if let Some(Value::Object(m)) = summary.as_mut() {
        m.insert("platform".into(), Value::from(args.platform.name()));
        m.insert("firmware".into(), Value::from(if args.uefi { "uefi" } else { "bios" }));
    }
    let result = summary.as_ref().and_then(|s| s["result"].as_str()).and_then(RunResult::parse);
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
        let (debian, files) = crate::linux::files(&deps::cache_dir())?;
        eprintln!("xtask: Linux guest: {} with the project's initramfs", debian.kernel_package);
        config += &crate::linux::vm_section(
            args.vcpus,
            args.linux_ram,
            linux_watchdog_ms(args.timeout),
            args.append.as_deref(),
            &extra,
        );
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

/// A one-line account of a test kernel's PASS/FAIL/SKIP lines, SUMMARY and figures.
fn kernel_said(v: &crate::conformance::kut::Verdict) -> Option<String> {
    let mut parts = Vec::new();
    if !v.passed.is_empty() || !v.failed.is_empty() || !v.skipped.is_empty() {
        parts.push(format!("{} passed, {} failed, {} skipped", v.passed.len(), v.failed.len(), v.skipped.len()));
    }
    if let Some(s) = &v.summary {
        parts.push(format!("SUMMARY: {s}"));
    }
    if !v.figures.is_empty() {
        let f: Vec<String> = v.figures.iter().map(|(k, n)| format!("{k} {n}")).collect();
        parts.push(format!("{} (TSC ticks per iteration; under Bochs, path lengths)", f.join(", ")));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

fn print_tail(log: &str, n: usize) {
    let lines: Vec<&str> = log.lines().collect();
    eprintln!("--- last {} lines ---", n.min(lines.len()));
    for l in &lines[lines.len().saturating_sub(n)..] {
        eprintln!("{l}");
    }
}

fn qemu_command(args: &RunArgs, img: &Path, serial: &Path) -> Result<Command> {
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-machine", "q35", "-m"]).arg(format!("{}M", args.memory));
    c.arg("-smp").arg(args.cpus.to_string());
    c.args(["-display", "none", "-monitor", "none", "-no-reboot"]);
    c.arg("-serial").arg(format!("file:{}", serial.display()));
    c.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    c.arg("-drive").arg(format!("format=raw,file={}", img.display()));
    if args.uefi {
        c.arg("-bios")
            .arg(deps::ovmf().context("OVMF firmware not found (install Debian's ovmf package or set OVMF=path)")?);
    }
    if args.platform == Platform::QemuKvm {
        if !Path::new("/dev/kvm").exists() {
            bail!("--platform qemu-kvm needs /dev/kvm (a host with VT-x and KVM, nested VMX for L1 VMX)");
        }
        c.args(["-enable-kvm", "-cpu", "host"]);
    }
    Ok(c)
}

/// Waits for an emulator, echoing its serial log (`echo`), and kills it after `timeout_s`: its
/// exit status (`None` if killed) and whether the timeout did it.
pub fn supervise(
    mut child: std::process::Child,
    serial: &Path,
    echo: bool,
    timeout_s: u64,
) -> Result<(Option<i32>, bool)> {
    let mut tail = SerialTail::new(serial, echo);
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    let ended = loop {
        tail.pump()?;
        if let Some(st) = child.try_wait()? {
            break (st.code(), false);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break (None, true);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    tail.pump()?;
    Ok(ended)
}

/// Follows the serial log file while the emulator writes it.
struct SerialTail {
    file: PathBuf,
    pos: u64,
    echo: bool,
}

impl SerialTail {
    fn new(file: &Path, echo: bool) -> Self {
        Self { file: file.to_path_buf(), pos: 0, echo }
    }

    fn pump(&mut self) -> Result<()> {
        if !self.echo {
            return Ok(());
        }
        let Ok(mut f) = fs::File::open(&self.file) else { return Ok(()) };
        f.seek(SeekFrom::Start(self.pos))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        self.pos += buf.len() as u64;
        let mut out = std::io::stdout().lock();
        out.write_all(&buf)?;
        out.flush()?;
        Ok(())
    }
}

/// The watchdog of a Linux or `--kernel` VM: 90 % of the run's timeout, so the hypervisor's
/// report comes first.
fn linux_watchdog_ms(run_timeout_s: u64) -> u64 {
    run_timeout_s * 900
}
