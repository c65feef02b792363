//! The KVM peer of `cargo xtask bench --peer kvm`: the same `ipi-bench` kernel under KVM, on the
//! same emulated CPU. One boot of the project's Bochs (the bench's CPU model, CPU count and
//! patches) runs Debian's kernel as KVM's host, with an initramfs this module assembles from
//! Debian's packages: the kernel's `kvm`, `kvm-intel` and `irqbypass` modules, QEMU
//! (`qemu-system-x86`, the shared libraries its ELF files name and the firmware it loads),
//! busybox, the project's `ipi-bench` and the driver `kvm-peer` (`linux-guest/src/bin/`), which
//! runs each cell and prints KVM's counters as read at the guest's `SYNC` points. Nothing is
//! built from the Linux or QEMU sources. The figures are computed here ([`record`]).

use anyhow::{Context, Result, bail};
use elf::ElfBytes;
use elf::abi::DT_NEEDED;
use elf::endian::AnyEndian;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::bench::Cell;
use crate::bochs::Machine;
use crate::linux::{self, Entry};
use crate::linux_native;

/// KVM's configurations, as `kvm_intel` parameters.
pub const CONFIGS: [(&str, &str); 3] = [
    ("ipiv-on", "enable_apicv=1 enable_ipiv=1"),
    ("ipiv-off", "enable_apicv=1 enable_ipiv=0"),
    ("apicv-off", "enable_apicv=0"),
];

/// KVM's host command line. Two of the model's gaps are closed with kernel options rather than
/// by hiding features from the Bochs CPU, which stays the bench's (docs/results.md):
/// `clearcpuid=600` (AMX_TILE: the model reports AMX without XFD, and this kernel's XSETBV
/// faults) and `no5lvl` (with CR4.LA57 set, Bochs panics at RSM after the first SMI).
pub const HOST_CMDLINE: &str =
    "console=ttyS0,115200 nokaslr rdinit=/init panic=-1 reboot=t tsc=reliable mitigations=off clearcpuid=600 no5lvl";

/// The RAM of KVM's host: the kernel, the initramfs (QEMU and its libraries) and a 128 MiB guest.
pub const HOST_RAM_MIB: u32 = 1024;
/// Each QEMU run's limit, in seconds of the host's clock (which believes the 2.2 GHz of CPUID
/// 0x15 while Bochs retires far fewer instructions a second: one is about 50 s of wall time). A
/// cell takes about 0.2 s of it, mostly QEMU's start.
const CELL_TIMEOUT_S: u64 = 1;

/// The cells KVM runs: for each APIC mode and configuration the target spinning, halting with
/// an exit (KVM's default, with halt polling) and halting without one (`-overcommit cpu-pm=on`,
/// which asks KVM not to exit on HLT: KVM's form of HLT pass-through), and with 4 CPUs the
/// one-to-all broadcast.
pub fn cells(cpus: u32) -> Vec<Cell> {
    let mut out = Vec::new();
    for apic in ["xapic", "x2apic"] {
        for (config, _) in CONFIGS {
            for target in ["spin", "halt-passthrough", "halt-exit"] {
                out.push(Cell { apic, config, target, pattern: "unicast" });
            }
        }
        if cpus >= 4 {
            for (config, _) in CONFIGS {
                out.push(Cell { apic, config, target: "spin", pattern: "broadcast" });
            }
        }
    }
    out
}

fn params(config: &str) -> &'static str {
    CONFIGS.iter().find(|(c, _)| *c == config).map(|(_, p)| *p).unwrap_or("")
}

/// The driver's plan line for `cell` (linux-guest/src/bin/kvm-peer.rs).
pub fn plan_line(cell: &Cell, iterations: u32) -> String {
    let vcpus = if cell.pattern == "broadcast" { 4 } else { 2 };
    let extra = if cell.target == "halt-passthrough" { "-overcommit cpu-pm=on" } else { "" };
    let mut append = format!(
        "iterations={iterations} target={} pattern={} sync=serial",
        if cell.target == "spin" { "spin" } else { "halt" },
        cell.pattern
    );
    if cell.apic == "x2apic" {
        append += " apic=x2apic";
    }
    format!("{}\t{}\t{vcpus}\t{extra}\t{append}\t{CELL_TIMEOUT_S}", cell.name(), params(cell.config))
}

/// The shared libraries an ELF file names (DT_NEEDED).
pub fn needed(image: &[u8]) -> Result<Vec<String>> {
    let f = ElfBytes::<AnyEndian>::minimal_parse(image).map_err(|e| anyhow::anyhow!("{e}"))?;
    let common = f.find_common_data().map_err(|e| anyhow::anyhow!("{e}"))?;
    let (Some(dynamic), Some(strs)) = (f.dynamic().map_err(|e| anyhow::anyhow!("{e}"))?, common.dynsyms_strs) else {
        return Ok(Vec::new());
    };
    dynamic
        .iter()
        .filter(|d| d.d_tag == DT_NEEDED)
        .map(|d| strs.get(d.d_val() as usize).map(str::to_string).map_err(|e| anyhow::anyhow!("{e}")))
        .collect()
}

/// `path` (absolute, as the packages name it) inside `root`, following symbolic links within
/// `root` (Debian's links are often absolute, and must not lead to this machine's files).
pub fn in_root(root: &Path, path: &str) -> Option<PathBuf> {
    let mut p = root.join(path.trim_start_matches('/'));
    for _ in 0..16 {
        let meta = fs::symlink_metadata(&p).ok()?;
        if !meta.file_type().is_symlink() {
            return Some(p);
        }
        let target = fs::read_link(&p).ok()?;
        p = match target.strip_prefix("/") {
            Ok(abs) => root.join(abs),
            Err(_) => p.parent()?.join(target),
        };
    }
    None
}

const LIB_DIRS: [&str; 4] = ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib"];

/// Every shared library `binary` needs, transitively, found in `root`: by soname; and the
/// sonames found nowhere.
fn closure(root: &Path, binary: &Path) -> Result<(BTreeMap<String, PathBuf>, BTreeSet<String>)> {
    let mut found = BTreeMap::new();
    let mut missing = BTreeSet::new();
    let mut queue = needed(&fs::read(binary).with_context(|| format!("reading {}", binary.display()))?)?;
    while let Some(soname) = queue.pop() {
        if found.contains_key(&soname) || missing.contains(&soname) {
            continue;
        }
        match LIB_DIRS.iter().find_map(|d| in_root(root, &format!("{d}/{soname}"))) {
            Some(p) => {
                queue.extend(needed(&fs::read(&p)?).with_context(|| format!("reading {}", p.display()))?);
                found.insert(soname, p);
            }
            None => {
                missing.insert(soname);
            }
        }
    }
    Ok((found, missing))
}

/// QEMU's firmware for a multiboot `-kernel` with `-nodefaults`: SeaBIOS, the option ROMs that
/// load the kernel, and the TPR-patching ROM QEMU's APIC asks for; and the standard VGA's BIOS
/// for a disk image whose boot loader sets a VESA mode (`--platform nested-kvm`); where Debian
/// puts them (its QEMU searches /usr/share/qemu, then /usr/share/seabios).
const FIRMWARE: [&str; 5] = [
    "/usr/share/seabios/bios-256k.bin",
    "/usr/share/seabios/vgabios-stdvga.bin",
    "/usr/share/qemu/linuxboot_dma.bin",
    "/usr/share/qemu/multiboot_dma.bin",
    "/usr/share/qemu/kvmvapic.bin",
];
const QEMU: &str = "/usr/bin/qemu-system-x86_64";
const LOADER: &str = "/lib64/ld-linux-x86-64.so.2";

/// Debian's QEMU as the image needs it: the binary, its libraries by soname, the dynamic
/// loader and the firmware, all from one root where the packages are unpacked.
pub struct Qemu {
    pub package: String,
    pub binary: PathBuf,
    pub libs: BTreeMap<String, PathBuf>,
    pub loader: PathBuf,
    pub firmware: Vec<(String, PathBuf)>,
}

/// QEMU from the machine's Debian mirror, unpacked under the cache once per version of
/// `qemu-system-x86`: the package and its firmware packages first, then the packages they
/// depend on, level by level, until every library the binary needs is there.
pub fn qemu(cache: &Path) -> Result<Qemu> {
    const ROOTS: [&str; 3] = ["qemu-system-x86", "qemu-system-data", "seabios"];
    let _lock = linux::lock_cache(cache)?;
    let apt = linux::private_apt(cache)?;
    let version = apt.candidate(ROOTS[0])?;
    let dir = linux::package_dir(cache, "kvm-peer-qemu", &version);
    let root = dir.join("root");
    let marker = dir.join("complete");
    if !marker.is_file() {
        let _ = fs::remove_dir_all(&dir);
        let mut seen: BTreeSet<String> = ROOTS.iter().map(|s| s.to_string()).collect();
        let mut level: Vec<String> = seen.iter().cloned().collect();
        for depth in 0.. {
            let debs = apt.download_candidates(&level, &dir.join(format!("debs-{depth}")))?;
            let step = crate::progress::Step::new(format!("dpkg -x ({} packages)", debs.len()));
            for deb in &debs {
                let st = std::process::Command::new("dpkg").arg("-x").arg(deb).arg(&root).status()?;
                if !st.success() {
                    step.failed();
                    bail!("dpkg -x {} failed", deb.display());
                }
            }
            step.done("unpacked");
            let _ = fs::remove_dir_all(dir.join(format!("debs-{depth}")));
            let bin = in_root(&root, QEMU).with_context(|| format!("no {QEMU} in qemu-system-x86"))?;
            let (_, missing) = closure(&root, &bin)?;
            if missing.is_empty() && in_root(&root, LOADER).is_some() {
                break;
            }
            let mut next = Vec::new();
            for p in &level {
                for d in apt.depends(p)? {
                    if !d.starts_with('<') && seen.insert(d.clone()) {
                        next.push(d);
                    }
                }
            }
            if next.is_empty() || depth >= 8 {
                bail!(
                    "QEMU needs {} and no package {} depends on provides them",
                    missing.into_iter().collect::<Vec<_>>().join(", "),
                    ROOTS[0]
                );
            }
            level = next;
        }
        fs::write(&marker, seen.into_iter().collect::<Vec<_>>().join("\n") + "\n")?;
    }
    let binary = in_root(&root, QEMU).context("QEMU's binary")?;
    let (libs, missing) = closure(&root, &binary)?;
    if !missing.is_empty() {
        bail!(
            "{} misses {}: remove it to fetch again",
            dir.display(),
            missing.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    let loader = in_root(&root, LOADER).context("no dynamic loader in libc6")?;
    let firmware = FIRMWARE
        .iter()
        .map(|f| in_root(&root, f).map(|p| (f.to_string(), p)).with_context(|| format!("no {f} in QEMU's packages")))
        .collect::<Result<_>>()?;
    Ok(Qemu { package: format!("qemu-system-x86 {version}"), binary, libs, loader, firmware })
}

/// The host's `/init`: the file systems KVM and the driver read, then the driver, then
/// isa-debug-exit with its status.
pub const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox mount -t debugfs debugfs /sys/kernel/debug
echo "init: $(/bin/busybox nproc) CPUs online, KVM's host $(/bin/busybox uname -r)"
/bin/kvm-peer /kvm-peer.plan
status=$?
echo "init: kvm-peer ended with $status"
/bin/ipi-workload exit $status
"#;

/// The Debian release whose kernel is KVM's host (its QEMU, 7.2, and busybox stay bookworm's,
/// the machine's own suite). `--peer kvm` measured bookworm's; `--platform nested-kvm` defaults
/// to trixie's, whose nested posted interrupts work (docs/hardware.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KvmHost {
    /// Debian 12's 6.1 kernel: nested posted interrupts have two KVM bugs fixed upstream in 2024.
    Bookworm,
    /// Debian 13's 6.12 kernel.
    Trixie,
}

impl KvmHost {
    pub fn suite(self) -> &'static str {
        match self {
            Self::Bookworm => "bookworm",
            Self::Trixie => "trixie",
        }
    }
}

/// Debian's kernel for `host` (its package root holds the modules), and its `package version`.
fn host_kernel(cache: &Path, host: KvmHost) -> Result<(PathBuf, String)> {
    if host.suite() == linux::SUITE {
        let d = linux::debian(cache)?;
        return Ok((d.vmlinuz, d.kernel_package));
    }
    let _lock = linux::lock_cache(cache)?;
    let apt = linux::private_apt_for(cache, host.suite())?;
    linux::kernel_of(cache, &apt)
}

/// A kernel module from the package root `modules` (`.../lib/modules/VERSION/kernel`) at `at`:
/// as it is, or decompressed where Debian ships it xz-compressed (trixie), since busybox'
/// `insmod` hands the kernel the bytes it reads.
fn module(modules: &Path, at: &str, name: &str) -> Result<Vec<u8>> {
    let plain = modules.join(at).join(format!("{name}.ko"));
    if plain.is_file() {
        return fs::read(&plain).with_context(|| format!("reading {}", plain.display()));
    }
    let xz = modules.join(at).join(format!("{name}.ko.xz"));
    let packed = fs::read(&xz).with_context(|| format!("neither {} nor {}", plain.display(), xz.display()))?;
    let mut out = Vec::new();
    lzma_rs::xz_decompress(&mut &packed[..], &mut out).map_err(|e| anyhow::anyhow!("{}: {e:?}", xz.display()))?;
    Ok(out)
}

/// What `image` built, and what it is made of.
pub struct Image {
    pub kernel: Vec<u8>,
    pub initrd: Vec<u8>,
    pub describe: String,
}

/// Builds (Debian packages from the cache) the image that runs `cells`.
pub fn image(cells: &[Cell], iterations: u32) -> Result<Image> {
    let plan = cells.iter().map(|c| plan_line(c, iterations) + "\n").collect::<String>();
    image_with(&plan, Vec::new(), KvmHost::Bookworm)
}

/// A file for KVM's host image: path inside it, mode, contents.
pub type ImageFile = (String, u32, Vec<u8>);

/// The image of KVM's host with the driver's `plan` (its lines: linux-guest/src/bin/kvm-peer.rs)
/// and `extra` files (test kernels the plan names), on `host`'s kernel.
pub fn image_with(plan: &str, extra: Vec<ImageFile>, host: KvmHost) -> Result<Image> {
    let cache = crate::deps::cache_dir();
    let debian = linux::debian(&cache)?;
    let (vmlinuz, kernel_package) = host_kernel(&cache, host)?;
    let qemu = qemu(&cache)?;
    let workload_path = linux::build_workload()?;
    let driver = fs::read(workload_path.with_file_name("kvm-peer")).context("the kvm-peer driver")?;
    let workload = fs::read(&workload_path)?;
    let bench = crate::guests::build()?.remove("ipi-bench").context("no ipi-bench guest")?;
    // The package root: .../root/boot/vmlinuz-VERSION.
    let kroot = vmlinuz.parent().and_then(Path::parent).context("the kernel package's root")?;
    let kver = vmlinuz.file_name().unwrap_or_default().to_string_lossy().trim_start_matches("vmlinuz-").to_string();
    // Trixie's packages follow the merged /usr.
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| kroot.join(d).join(&kver).join("kernel"))
        .find(|p| p.is_dir())
        .with_context(|| format!("no lib/modules/{kver} in {kernel_package}"))?;
    let mut files: Vec<(String, u32, Vec<u8>)> = vec![
        ("bin/busybox".into(), 0o755, fs::read(&debian.busybox)?),
        ("bin/ipi-workload".into(), 0o755, workload),
        ("bin/kvm-peer".into(), 0o755, driver),
        ("ipi-bench".into(), 0o644, bench),
        ("init".into(), 0o755, INIT.as_bytes().to_vec()),
        ("kvm-peer.plan".into(), 0o644, plan.as_bytes().to_vec()),
        ("usr/bin/qemu-system-x86_64".into(), 0o755, fs::read(&qemu.binary)?),
        ("lib64/ld-linux-x86-64.so.2".into(), 0o755, fs::read(&qemu.loader)?),
    ];
    for (m, at) in [("irqbypass", "virt/lib"), ("kvm", "arch/x86/kvm"), ("kvm-intel", "arch/x86/kvm")] {
        files.push((format!("lib/modules/{m}.ko"), 0o644, module(&modules, at, m)?));
    }
    for (soname, p) in &qemu.libs {
        files.push((format!("lib/x86_64-linux-gnu/{soname}"), 0o755, fs::read(p)?));
    }
    for (path, p) in &qemu.firmware {
        files.push((path.trim_start_matches('/').to_string(), 0o644, fs::read(p)?));
    }
    files.extend(extra);
    let dirs = [
        "bin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "lib",
        "lib/modules",
        "lib/x86_64-linux-gnu",
        "lib64",
        "usr",
        "usr/bin",
        "usr/share",
        "usr/share/qemu",
        "usr/share/seabios",
        "kut",
        "nested",
    ];
    let mut entries: Vec<Entry> = dirs.iter().map(|d| Entry::Dir(d)).collect();
    entries.push(Entry::CharDev { path: "dev/console", major: 5, minor: 1 });
    entries.extend(files.iter().map(|(path, mode, data)| Entry::File { path, mode: *mode, data }));
    let initrd = linux::cpio(&entries);
    // Kept for a look inside (`cpio -i`) or a boot elsewhere.
    fs::create_dir_all(linux::OUT_DIR)?;
    fs::write(Path::new(linux::OUT_DIR).join("kvm-peer-initramfs.cpio"), &initrd)?;
    Ok(Image {
        kernel: fs::read(&vmlinuz)?,
        describe: format!(
            "{}, {}, {} libraries, initramfs {} MiB",
            kernel_package,
            qemu.package,
            qemu.libs.len(),
            initrd.len() >> 20
        ),
        initrd,
    })
}

/// Boots KVM's host on Bochs with `cpus` CPUs and runs `cells`: the records of the cells
/// measured, and a reason for each that was not.
pub fn measure(cells: &[Cell], iterations: u32, cpus: u32, echo: bool) -> Result<(Vec<Value>, Vec<String>)> {
    let img = image(cells, iterations)?;
    eprintln!("xtask bench: KVM's host: {}", img.describe);
    let machine = Machine { model: crate::bochs::DEFAULT_MODEL, cpus, memory_mib: HOST_RAM_MIB, exclude: &[] };
    // The boot, and each cell's limit (in wall seconds: about 50 a second of the host's clock,
    // twice that to be safe).
    let timeout = 900 + cells.len() as u64 * CELL_TIMEOUT_S * 100;
    let out = linux_native::boot(
        &format!("kvm-peer-{cpus}"),
        &machine,
        &img.kernel,
        &img.initrd,
        HOST_CMDLINE,
        timeout,
        echo,
    )?;
    let mut records = Vec::new();
    let mut skipped = Vec::new();
    let mut module = Value::Null;
    let mut seen = BTreeSet::new();
    for r in &out.reports {
        if r.get("kvm_module").is_some() {
            module = r["parameters"].clone();
            continue;
        }
        let Some(name) = r["kvm_cell"].as_str() else { continue };
        let Some(cell) = cells.iter().find(|c| c.name() == name) else { continue };
        seen.insert(name.to_string());
        match record(cell, &module, r) {
            Ok(rec) => records.push(rec),
            Err(why) => skipped.push(format!("kvm {name}: {why}")),
        }
    }
    for c in cells.iter().filter(|c| !seen.contains(&c.name())) {
        skipped.push(format!(
            "kvm {}: no result (KVM's host on Bochs: {}; log {})",
            c.name(),
            out.detail,
            out.serial.display()
        ));
    }
    Ok((records, skipped))
}

/// One vCPU's scalar counters in a snapshot, by `cpu-index`.
fn counters(snapshot: &Value, cpus: &Value) -> BTreeMap<u64, BTreeMap<String, u64>> {
    let index_of =
        |path: &Value| cpus.as_array()?.iter().find(|c| c["qom-path"] == *path).and_then(|c| c["cpu-index"].as_u64());
    let mut out = BTreeMap::new();
    for v in snapshot["vcpus"].as_array().into_iter().flatten() {
        let Some(i) = index_of(&v["qom-path"]) else { continue };
        let stats = v["stats"].as_object().into_iter().flatten().filter_map(|(k, n)| Some((k.clone(), n.as_u64()?)));
        out.insert(i, stats.collect());
    }
    out
}

/// The cell's record from the driver's report `r` and the parameters `kvm_intel` said it runs
/// with; why not, if the cell was not measured. Exits per IPI: each vCPU's VM exits between the
/// two SYNC points over the IPIs, less those the measurement itself causes: the port I/O of the
/// guest's hand-shake (the loop does none) and the signal exits of QEMU's `query-stats`, which
/// reads each vCPU's counters on that vCPU's thread and so kicks it out of the guest. The
/// receiver's is that of the receiver with the most, as the guest counts it under ipiv-hv.
pub fn record(cell: &Cell, module: &Value, r: &Value) -> Result<Value, String> {
    if let Some(e) = r["error"].as_str() {
        return Err(e.to_string());
    }
    if r["timed_out"] == true {
        let at = r["stuck_at"].as_str().map(|s| format!("; its vCPUs: {}", s.replace('\n', " "))).unwrap_or_default();
        let said = if r["guest"].as_array().is_some_and(|g| !g.is_empty())
            || !r["snapshots"].as_array().is_none_or(Vec::is_empty)
        {
            "after the guest began"
        } else {
            "before the guest printed anything"
        };
        return Err(format!("QEMU still ran after {CELL_TIMEOUT_S} s of the host's clock, {said}{at}"));
    }
    // isa-debug-exit with 0: QEMU exits with (0 << 1) | 1.
    if r["status"] != 1 {
        let stderr = r["qemu_stderr"].as_str().unwrap_or("").trim();
        return Err(format!("QEMU ended with status {} ({stderr})", r["status"]));
    }
    let (apicv, ipiv) = (module["enable_apicv"].as_str().unwrap_or("?"), module["enable_ipiv"].as_str().unwrap_or("?"));
    let wanted = match cell.config {
        "ipiv-on" => ("Y", "Y"),
        "ipiv-off" => ("Y", "N"),
        _ => ("N", ipiv),
    };
    if (apicv, ipiv) != wanted {
        return Err(format!(
            "kvm_intel runs with enable_apicv={apicv} enable_ipiv={ipiv}, not what {} needs",
            cell.config
        ));
    }
    // QEMU also exits with 1 when it cannot start: its own words then say why.
    let report = r["guest"].as_array().and_then(|g| g.iter().find(|g| g["test"] == "ipi-bench")).ok_or_else(|| {
        format!("the guest printed no ipi-bench report (QEMU: {})", r["qemu_stderr"].as_str().unwrap_or("").trim())
    })?;
    if report["apic"] != cell.apic {
        return Err(format!("the guest ran in {} mode", report["apic"]));
    }
    let iterations = report["iterations"].as_u64().filter(|&n| n > 0).ok_or("no iterations in the guest's report")?;
    let snaps = r["snapshots"].as_array().ok_or("no counters read")?;
    let at = |name: &str| snaps.iter().find(|s| s["at"] == name).ok_or(format!("no counters at SYNC {name}"));
    let (begin, end) = (counters(at("begin")?, &r["cpus"]), counters(at("end")?, &r["cpus"]));
    let delta = |cpu: u64| -> Result<BTreeMap<String, u64>, String> {
        let (b, e) = (begin.get(&cpu), end.get(&cpu));
        let (b, e) = b.zip(e).ok_or(format!("no counters for vCPU {cpu}"))?;
        Ok(e.iter()
            .filter_map(|(k, v)| Some((k.clone(), v.checked_sub(*b.get(k)?)?)))
            .filter(|(_, d)| *d > 0)
            .collect())
    };
    let exits = |d: &BTreeMap<String, u64>| {
        let n = |k: &str| d.get(k).copied().unwrap_or(0);
        n("exits").saturating_sub(n("io_exits") + n("signal_exits"))
    };
    let sender = delta(0)?;
    let vcpus = end.keys().copied().filter(|&c| c != 0).collect::<Vec<_>>();
    let mut receiver = BTreeMap::new();
    for c in vcpus {
        let d = delta(c)?;
        if receiver.is_empty() || exits(&d) > exits(&receiver) {
            receiver = d;
        }
    }
    let per = |n: u64| (n as f64 * 1000.0 / iterations as f64).round() / 1000.0;
    let vm = |s: &Value| s["vm"]["exits"].as_u64();
    let mut rec = json!({
        "hypervisor": "kvm",
        "apic": cell.apic, "config": cell.config, "target": cell.target, "pattern": cell.pattern,
        "cycles": report["cycles"], "iterations": iterations,
        "exits_per_ipi": {"sender": per(exits(&sender)), "receiver": per(exits(&receiver))},
        "kvm_counters": {"sender": sender, "receiver": receiver},
        "kvm_intel": module,
        "kvm_pinning": r["pinning"],
    });
    if let Some((b, e)) = vm(at("begin")?).zip(vm(at("end")?)) {
        rec["kvm_vm_exits"] = json!(e.saturating_sub(b));
    }
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(config: &'static str) -> Cell {
        Cell { apic: "x2apic", config, target: "halt-exit", pattern: "unicast" }
    }

    /// vCPU `i`'s counters; each reading kicks each vCPU once (a signal exit).
    fn snap(at: &str, kicks: u64, exits: [u64; 2], io: [u64; 2], halts: [u64; 2]) -> Value {
        let v = |i: usize| {
            json!({"qom-path": format!("/machine/unattached/device[{i}]"), "provider": "kvm",
                "stats": {"exits": exits[i] + kicks, "io_exits": io[i], "halt_exits": halts[i], "signal_exits": kicks}})
        };
        json!({"at": at, "vcpus": [v(1), v(0)], "vm": {"exits": exits[0] + exits[1] + 2 * kicks}})
    }

    fn report(status: u64) -> Value {
        json!({"kvm_cell": "x", "status": status, "timed_out": false,
            "cpus": [{"cpu-index": 0, "qom-path": "/machine/unattached/device[0]"},
                     {"cpu-index": 1, "qom-path": "/machine/unattached/device[1]"}],
            "guest": [{"test": "ipi-bench", "apic": "x2apic", "iterations": 100,
                       "cycles": {"median": 2200, "min": 2000, "p99": 2500, "mean": 2210}}],
            "snapshots": [snap("begin", 1, [50, 70], [40, 0], [0, 5]), snap("end", 2, [130, 170], [120, 0], [0, 105])]})
    }

    #[test]
    fn exits_per_ipi_leave_out_the_hand_shakes_port_io() {
        let module = json!({"enable_apicv": "Y", "enable_ipiv": "Y"});
        let r = record(&cell("ipiv-on"), &module, &report(1)).unwrap();
        assert_eq!(r["hypervisor"], "kvm");
        assert_eq!(r["exits_per_ipi"]["sender"], 0.0, "81 exits: 80 port I/O and a kick");
        assert_eq!(r["exits_per_ipi"]["receiver"], 1.0);
        assert_eq!(r["kvm_counters"]["receiver"]["halt_exits"], 100);
        assert_eq!(r["kvm_vm_exits"], 182);
        assert_eq!(r["kvm_counters"]["receiver"]["signal_exits"], 1);
        assert_eq!(r["cycles"]["median"], 2200);
    }

    #[test]
    fn a_cell_that_did_not_run_as_asked_is_not_measured() {
        let on = json!({"enable_apicv": "Y", "enable_ipiv": "Y"});
        let off = json!({"enable_apicv": "Y", "enable_ipiv": "N"});
        let e = record(&cell("ipiv-on"), &off, &report(1)).unwrap_err();
        assert!(e.contains("enable_ipiv=N"), "{e}");
        assert!(record(&cell("ipiv-off"), &off, &report(1)).is_ok());
        assert!(record(&cell("apicv-off"), &json!({"enable_apicv": "N", "enable_ipiv": "N"}), &report(1)).is_ok());
        assert!(record(&cell("ipiv-on"), &on, &report(3)).unwrap_err().contains("status 3"));
        let mut r = report(1);
        r["snapshots"].as_array_mut().unwrap().pop();
        assert!(record(&cell("ipiv-on"), &on, &r).unwrap_err().contains("SYNC end"));
        let mut r = report(1);
        r["guest"][0]["apic"] = json!("xapic");
        assert!(record(&cell("ipiv-on"), &on, &r).is_err());
        let mut r = report(1);
        r["guest"] = json!([]);
        r["qemu_stderr"] = json!("qemu-system-x86_64: Could not access KVM kernel module");
        assert!(record(&cell("ipiv-on"), &on, &r).unwrap_err().contains("Could not access KVM"));
        let r = json!({"kvm_cell": "x", "error": "QMP socket: refused"});
        assert_eq!(record(&cell("ipiv-on"), &on, &r).unwrap_err(), "QMP socket: refused");
    }

    #[test]
    fn plan_lines_carry_the_cells_configuration() {
        let l = plan_line(
            &Cell { apic: "x2apic", config: "ipiv-off", target: "halt-passthrough", pattern: "unicast" },
            200,
        );
        let f: Vec<&str> = l.split('\t').collect();
        assert_eq!(f.len(), 6);
        assert_eq!(f[1], "enable_apicv=1 enable_ipiv=0");
        assert_eq!(f[2], "2");
        assert_eq!(f[3], "-overcommit cpu-pm=on");
        assert_eq!(f[4], "iterations=200 target=halt pattern=unicast sync=serial apic=x2apic");
        let b = plan_line(&Cell { apic: "xapic", config: "apicv-off", target: "spin", pattern: "broadcast" }, 50);
        assert!(b.contains("\t4\t\titerations=50 target=spin pattern=broadcast sync=serial\t"), "{b}");
        assert_eq!(cells(4).len(), 2 * (3 * 3 + 3));
        assert_eq!(cells(2).iter().filter(|c| c.pattern == "broadcast").count(), 0);
    }

    #[test]
    fn links_are_followed_inside_the_root_only() {
        let root = std::env::temp_dir().join(format!("ipiv-hv-root-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("usr/share/seabios")).unwrap();
        fs::create_dir_all(root.join("usr/share/qemu")).unwrap();
        fs::create_dir_all(root.join("lib64")).unwrap();
        fs::write(root.join("usr/share/seabios/bios-256k.bin"), b"bios").unwrap();
        std::os::unix::fs::symlink("../seabios/bios-256k.bin", root.join("usr/share/qemu/bios-256k.bin")).unwrap();
        std::os::unix::fs::symlink("/usr/share/seabios/bios-256k.bin", root.join("lib64/abs")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("lib64/host")).unwrap();
        assert_eq!(fs::read(in_root(&root, "/usr/share/qemu/bios-256k.bin").unwrap()).unwrap(), b"bios");
        assert_eq!(fs::read(in_root(&root, "/lib64/abs").unwrap()).unwrap(), b"bios");
        assert_eq!(in_root(&root, "/lib64/host"), None, "an absolute link stays in the root");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn needed_reads_dt_needed_of_this_machines_binaries() {
        // This test program is dynamically linked against libc on Linux hosts.
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        let n = needed(&me).unwrap();
        assert!(n.iter().any(|s| s.starts_with("libc.so")), "{n:?}");
        assert!(needed(b"not an elf").is_err());
    }
}
