//! KVM's host on the project's Bochs: Debian's kernel (bookworm's 6.1 or trixie's 6.12) with
//! its `kvm`, `kvm-intel` and `irqbypass` modules, and an initramfs this module assembles from
//! Debian's packages: QEMU (`qemu-system-x86`, the shared libraries its ELF files name and the
//! firmware it loads), busybox, the project's `ipi-bench` and the driver `kvm-peer`
//! (`linux-guest/src/bin/`), which runs each line of its plan under QEMU with `-enable-kvm` and
//! prints KVM's counters. Nothing is built from the Linux or QEMU sources. Used by the KVM peer
//! of `bench` (`bench::peer`), `conformance --peer kvm` and `--platform nested-kvm`.

use anyhow::{Context, Result, bail};
use elf::ElfBytes;
use elf::abi::DT_NEEDED;
use elf::endian::AnyEndian;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::provision::debian::{self, Entry};

/// KVM's configurations, as `kvm_intel` parameters.
pub const CONFIGS: [(&str, &str); 3] = [
    ("ipiv-on", "enable_apicv=1 enable_ipiv=1"),
    ("ipiv-off", "enable_apicv=1 enable_ipiv=0"),
    ("apicv-off", "enable_apicv=0"),
];

/// The `kvm_intel` parameters of configuration `config` (`CONFIGS`).
pub fn params(config: &str) -> &'static str {
    CONFIGS.iter().find(|(c, _)| *c == config).map(|(_, p)| *p).unwrap_or("")
}

/// KVM's host command line. Two of the model's gaps are closed with kernel options rather than
/// by hiding features from the Bochs CPU, which stays the bench's (docs/results.md):
/// `clearcpuid=600` (AMX_TILE: the model reports AMX without XFD, and this kernel's XSETBV
/// faults) and `no5lvl` (with CR4.LA57 set, Bochs panics at RSM after the first SMI).
pub const HOST_CMDLINE: &str =
    "console=ttyS0,115200 nokaslr rdinit=/init panic=-1 reboot=t tsc=reliable mitigations=off clearcpuid=600 no5lvl";

/// The RAM of KVM's host: the kernel, the initramfs (QEMU and its libraries) and a 128 MiB guest.
pub const HOST_RAM_MIB: u32 = 1024;
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
    let _lock = debian::lock_cache(cache)?;
    let apt = debian::private_apt(cache)?;
    let version = apt.candidate(ROOTS[0])?;
    let dir = debian::package_dir(cache, "kvm-peer-qemu", &version);
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
    if host.suite() == debian::SUITE {
        let d = debian::debian(cache)?;
        return Ok((d.vmlinuz, d.kernel_package));
    }
    let _lock = debian::lock_cache(cache)?;
    let apt = debian::private_apt_for(cache, host.suite())?;
    debian::kernel_of(cache, &apt)
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

/// What the driver (`kvm-peer`) reported, in order: each plan line's report by name, with the
/// `kvm_intel` parameters it last read before that line (`Null` if none yet; the driver reloads
/// the module when a line asks for other parameters), and the parameters it read last.
pub fn cell_reports(reports: &[Value]) -> (Vec<(&str, &Value, Value)>, Value) {
    let mut module = Value::Null;
    let mut cells = Vec::new();
    for r in reports {
        if r.get("kvm_module").is_some() {
            module = r["parameters"].clone();
        } else if let Some(name) = r["kvm_cell"].as_str() {
            cells.push((name, r, module.clone()));
        }
    }
    (cells, module)
}

/// A file for KVM's host image: path inside it, mode, contents.
pub type ImageFile = (String, u32, Vec<u8>);

/// The image of KVM's host with the driver's `plan` (its lines: linux-guest/src/bin/kvm-peer.rs)
/// and `extra` files (test kernels the plan names), on `host`'s kernel.
pub fn image_with(plan: &str, extra: Vec<ImageFile>, host: KvmHost) -> Result<Image> {
    let cache = crate::provision::deps::cache_dir();
    let debian = debian::debian(&cache)?;
    let (vmlinuz, kernel_package) = host_kernel(&cache, host)?;
    let qemu = qemu(&cache)?;
    let workload_path = debian::build_workload()?;
    let driver = fs::read(workload_path.with_file_name("kvm-peer")).context("the kvm-peer driver")?;
    let workload = fs::read(&workload_path)?;
    let bench = crate::provision::guests::build()?.remove("ipi-bench").context("no ipi-bench guest")?;
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
    let initrd = debian::cpio(&entries);
    // Kept for a look inside (`cpio -i`) or a boot elsewhere.
    fs::create_dir_all(debian::OUT_DIR)?;
    fs::write(Path::new(debian::OUT_DIR).join("kvm-peer-initramfs.cpio"), &initrd)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cell_report_carries_the_module_parameters_read_before_it() {
        let reports = [
            serde_json::json!({"kvm_cell": "early"}),
            serde_json::json!({"kvm_module": "enable_ipiv=1", "parameters": {"enable_ipiv": "Y"}}),
            serde_json::json!({"kvm_cell": "a"}),
            serde_json::json!({"REPORT": "other"}),
            serde_json::json!({"kvm_module": "enable_ipiv=0", "parameters": {"enable_ipiv": "N"}}),
            serde_json::json!({"kvm_cell": "b"}),
        ];
        let (cells, last) = cell_reports(&reports);
        let got: Vec<(&str, Value)> = cells.iter().map(|(n, _, m)| (*n, m["enable_ipiv"].clone())).collect();
        assert_eq!(got, [("early", Value::Null), ("a", "Y".into()), ("b", "N".into())]);
        assert_eq!(last["enable_ipiv"], "N");
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
