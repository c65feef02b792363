//! The Linux guest (issue 12): Debian's kernel and busybox-static, fetched through the machine's
//! apt mirror (`apt-get download` and `dpkg -x` into the cache, keyed by package and version:
//! nothing is installed and nothing is built from source), and the initramfs this project
//! builds around them: busybox, the `ipi-workload` program (`linux-guest/`, static), and an
//! `/init` that runs it and ends the VM through isa-debug-exit with its status.

use anyhow::{Context, Result, bail};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::progress::Step;
use crate::provision::apt::{self, PrivateApt, Privilege};

/// The Debian release whose kernel the guest runs (the facts of issue 12 were measured on it).
pub const SUITE: &str = "bookworm";
/// The metapackage that names the current kernel package.
const KERNEL_META: &str = "linux-image-amd64";
const BUSYBOX: &str = "busybox-static";

/// The command line Linux boots with under this hypervisor (docs/linux.md says why each
/// option is there).
pub const CMDLINE: &str = "console=ttyS0,115200 earlyprintk=serial,ttyS0,115200 nokaslr rdinit=/init panic=-1 reboot=t tsc=reliable mitigations=off no_ipi_broadcast=1";

/// Where each run leaves the kernel and initramfs it booted.
pub const OUT_DIR: &str = "target/xtask/linux";

/// Debian's kernel and busybox, as cached.
#[derive(Clone, Debug)]
pub struct Debian {
    pub vmlinuz: PathBuf,
    /// e.g. `linux-image-6.1.0-48-amd64 6.1.172-1`.
    pub kernel_package: String,
    pub busybox: PathBuf,
}

static DEBIAN: OnceLock<Debian> = OnceLock::new();

/// The kernel and busybox (fetched once per version; once per process the index is asked).
pub fn debian(cache: &Path) -> Result<Debian> {
    if let Some(d) = DEBIAN.get() {
        return Ok(d.clone());
    }
    // One xtask at a time updates the private index and unpacks packages into the cache.
    let _lock = lock_cache(cache)?;
    let apt = private_apt(cache)?;
    let (vmlinuz, kernel_package) = kernel_of(cache, &apt)?;
    let bb_ver = apt.candidate(BUSYBOX)?;
    let busybox = extracted(&apt, BUSYBOX, &bb_ver, &package_dir(cache, BUSYBOX, &bb_ver), |root| {
        let p = root.join("bin/busybox");
        if p.is_file() { Ok(p) } else { bail!("no bin/busybox in {BUSYBOX}") }
    })?;
    let d = Debian { vmlinuz, kernel_package, busybox };
    Ok(DEBIAN.get_or_init(|| d).clone())
}

/// The current kernel of the suite `apt` indexes (what [`KERNEL_META`] depends on), unpacked
/// under the cache (call with [`lock_cache`] held): its `vmlinuz` and `package version`.
pub fn kernel_of(cache: &Path, apt: &PrivateApt) -> Result<(PathBuf, String)> {
    let kernel_pkg = apt
        .depends(KERNEL_META)?
        .into_iter()
        .find(|d| d.starts_with("linux-image-") && d.ends_with("-amd64"))
        .with_context(|| format!("{KERNEL_META} depends on no linux-image-*-amd64 package"))?;
    let kernel_ver = apt.candidate(&kernel_pkg)?;
    let kernel_dir = package_dir(cache, &kernel_pkg, &kernel_ver);
    let vmlinuz = extracted(apt, &kernel_pkg, &kernel_ver, &kernel_dir, |root| {
        let boot = root.join("boot");
        fs::read_dir(&boot)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
            .with_context(|| format!("no boot/vmlinuz-* in {kernel_pkg}"))
    })?;
    Ok((vmlinuz, format!("{kernel_pkg} {kernel_ver}")))
}

/// Holds the Debian package cache for this process until dropped (one xtask at a time updates
/// the private index and unpacks packages).
pub fn lock_cache(cache: &Path) -> Result<fs::File> {
    fs::create_dir_all(cache)?;
    let lock = fs::File::create(cache.join("debian.lock"))?;
    lock.lock().context("locking the Debian package cache")?;
    Ok(lock)
}

static INDEX_FETCHED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// apt on [`SUITE`]'s binary packages from the machine's own Debian mirror, its index fetched
/// once per process (call with [`lock_cache`] held).
pub fn private_apt(cache: &Path) -> Result<PrivateApt> {
    private_apt_for(cache, SUITE)
}

/// apt on `suite`'s binary packages (another Debian release than the machine's, e.g. the KVM
/// host's `trixie`) from the machine's own Debian mirror, its index fetched once per process
/// (call with [`lock_cache`] held).
pub fn private_apt_for(cache: &Path, suite: &str) -> Result<PrivateApt> {
    let apt = PrivateApt::new(&cache.join(format!("apt-{suite}")), Privilege::detect())?;
    let mut fetched = INDEX_FETCHED.lock().unwrap_or_else(|e| e.into_inner());
    if !fetched.iter().any(|s| s == suite) {
        let mirror = apt::debian_mirrors()?.into_iter().next().context("no Debian mirror in apt's configuration")?;
        apt.update_binary(&mirror, suite)?;
        fetched.push(suite.to_string());
    }
    Ok(apt)
}

/// Where `pkg=version` is unpacked in the cache.
pub fn package_dir(cache: &Path, pkg: &str, version: &str) -> PathBuf {
    cache.join("debian").join(format!("{pkg}_{}", version.replace(':', "%3a")))
}

/// The file `pick` finds in `pkg=version` unpacked under `dir` (downloaded and unpacked on the
/// first use, then reused).
pub fn extracted(
    apt: &PrivateApt,
    pkg: &str,
    version: &str,
    dir: &Path,
    pick: impl Fn(&Path) -> Result<PathBuf>,
) -> Result<PathBuf> {
    let root = dir.join("root");
    if let Ok(p) = pick(&root) {
        return Ok(p);
    }
    let _ = fs::remove_dir_all(dir);
    let deb = apt.download_package(pkg, version, &dir.join("deb"))?;
    let step = Step::new(format!("dpkg -x {}", deb.file_name().unwrap_or_default().to_string_lossy()));
    let st = Command::new("dpkg").arg("-x").arg(&deb).arg(&root).status().context("running dpkg -x")?;
    if !st.success() {
        step.failed();
        bail!("dpkg -x {} failed", deb.display());
    }
    step.done("unpacked");
    let _ = fs::remove_dir_all(dir.join("deb"));
    pick(&root)
}

/// Builds `ipi-workload` for the guest: x86_64 Linux, statically linked, symbols stripped.
pub fn build_workload() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--package", "ipi-workload", "--target", "x86_64-unknown-linux-gnu"])
        .args(["--target-dir", "target/linux-guest"])
        .env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS", "-C target-feature=+crt-static -C strip=symbols");
    crate::provision::image::cargo_build(&mut cmd, "building the Linux guest's workload")?;
    Ok(PathBuf::from("target/linux-guest/x86_64-unknown-linux-gnu/release/ipi-workload"))
}

/// The guest's `/init`: mounts, then the workload (its counts from the kernel command line's
/// `wl_*=N`, which the kernel hands init as environment), then isa-debug-exit with its status.
pub const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "init: $(/bin/busybox nproc) CPUs online"
/bin/ipi-workload run wake=${wl_wake:-2000} tlb=${wl_tlb:-500} membarrier=${wl_mb:-2000}
status=$?
echo "init: the workload ended with $status"
/bin/ipi-workload exit $status
"#;

/// One file of a newc cpio archive.
pub enum Entry<'a> {
    Dir(&'a str),
    File { path: &'a str, mode: u32, data: &'a [u8] },
    CharDev { path: &'a str, major: u32, minor: u32 },
}

/// An uncompressed newc ("070701") cpio archive, as the kernel unpacks an initramfs
/// (Documentation/driver-api/early-userspace/buffer-format.rst); uncompressed is cheaper for
/// the emulated CPU than any compression.
pub fn cpio(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut put = |ino: u32, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]| {
        let fields = [ino, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, rdev.0, rdev.1, name.len() as u32 + 1, 0];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.resize(out.len().next_multiple_of(4), 0);
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(4), 0);
    };
    for (i, e) in entries.iter().enumerate() {
        let ino = i as u32 + 1;
        match e {
            Entry::Dir(p) => put(ino, p, 0o040755, (0, 0), &[]),
            Entry::File { path, mode, data } => put(ino, path, 0o100000 | mode, (0, 0), data),
            Entry::CharDev { path, major, minor } => put(ino, path, 0o020600, (*major, *minor), &[]),
        }
    }
    put(0, "TRAILER!!!", 0, (0, 0), &[]);
    out
}

/// The guest's initramfs: busybox, the workload, `/init`, `/dev/console`.
pub fn initramfs(busybox: &[u8], workload: &[u8]) -> Vec<u8> {
    cpio(&[
        Entry::Dir("bin"),
        Entry::Dir("dev"),
        Entry::Dir("proc"),
        Entry::Dir("sys"),
        Entry::Dir("tmp"),
        Entry::CharDev { path: "dev/console", major: 5, minor: 1 },
        Entry::File { path: "bin/busybox", mode: 0o755, data: busybox },
        Entry::File { path: "bin/ipi-workload", mode: 0o755, data: workload },
        Entry::File { path: "init", mode: 0o755, data: INIT.as_bytes() },
    ])
}

/// The `[vm]` section of the Linux guest: Debian's kernel with the project's initramfs, `vcpus`
/// vCPUs, `ram_mib` of RAM, [`CMDLINE`] plus `append`, the watchdog at `timeout_ms` (inside
/// the run's own timeout, so that a stuck guest is reported by the hypervisor, with its RIP,
/// rather than cut off by xtask), and the `extra` keys (apic, ipiv, hlt).
pub fn vm_section(
    vcpus: u32,
    ram_mib: u32,
    timeout_ms: u64,
    append: Option<&str>,
    extra: &[(&str, &str)],
) -> Result<String> {
    let mut cmdline = CMDLINE.to_string();
    // An xAPIC VM's Linux stays in xAPIC mode: the CPUID it sees offers x2APIC (and the
    // KVM-compatible leaf makes it usable without interrupt remapping), so Linux would switch.
    if !extra.contains(&("apic", "x2apic")) {
        cmdline += " nox2apic";
    }
    if let Some(a) = append.map(str::trim).filter(|a| !a.is_empty()) {
        cmdline = format!("{cmdline} {a}");
    }
    let mut spec = hvcore::manifest::VmSpec::new(0);
    (spec.name, spec.linux, spec.initrd) = ("linux".into(), "vmlinuz".into(), "initramfs".into());
    (spec.vcpus, spec.ram_mib, spec.timeout_ms, spec.cmdline) = (vcpus, ram_mib, timeout_ms, cmdline);
    crate::provision::guests::vm_section(spec, extra.iter().copied())
}

/// What a Linux run needs in the ramdisk: the kernel and the initramfs, by the names the
/// manifest uses.
pub fn files(cache: &Path) -> Result<(Debian, Vec<crate::provision::image::GuestImage>)> {
    let debian = debian(cache)?;
    let workload = fs::read(build_workload()?).context("reading the workload")?;
    let busybox = fs::read(&debian.busybox)?;
    let kernel = fs::read(&debian.vmlinuz)?;
    let initrd = initramfs(&busybox, &workload);
    // Kept beside the run for booting the same pair elsewhere (QEMU, Bochs without the
    // hypervisor: docs/linux.md).
    fs::create_dir_all(OUT_DIR)?;
    fs::write(Path::new(OUT_DIR).join("initramfs.cpio"), &initrd)?;
    fs::copy(&debian.vmlinuz, Path::new(OUT_DIR).join("vmlinuz"))?;
    Ok((debian, vec![("vmlinuz".into(), kernel), ("initramfs".into(), initrd)]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One entry read back: name, mode, rdev, data.
    type CpioEntry = (String, u32, (u32, u32), Vec<u8>);

    /// Reads a newc archive back.
    fn read_cpio(mut b: &[u8]) -> Vec<CpioEntry> {
        let mut out = Vec::new();
        let start = b.as_ptr() as usize;
        loop {
            assert_eq!(&b[..6], b"070701");
            let f =
                |i: usize| u32::from_str_radix(std::str::from_utf8(&b[6 + i * 8..14 + i * 8]).unwrap(), 16).unwrap();
            let (mode, size, rdev, namesize) = (f(1), f(6) as usize, (f(9), f(10)), f(11) as usize);
            let name = std::str::from_utf8(&b[110..110 + namesize - 1]).unwrap().to_string();
            let pad = |at: usize| (at + 3) & !3;
            let here = b.as_ptr() as usize - start;
            let data_at = pad(here + 110 + namesize) - here;
            let data = b[data_at..data_at + size].to_vec();
            b = &b[pad(here + data_at + size) - here..];
            if name == "TRAILER!!!" {
                return out;
            }
            out.push((name, mode, rdev, data));
        }
    }

    #[test]
    fn the_initramfs_is_a_newc_archive_the_kernel_can_unpack() {
        let a = initramfs(b"BUSYBOX", b"WORKLOAD!");
        assert_eq!(a.len() % 4, 0);
        let e = read_cpio(&a);
        let find = |n: &str| e.iter().find(|x| x.0 == n).unwrap_or_else(|| panic!("{n} missing"));
        assert_eq!(find("bin/busybox").3, b"BUSYBOX");
        assert_eq!(find("bin/ipi-workload").1, 0o100755);
        assert_eq!(find("init").3, INIT.as_bytes());
        assert_eq!((find("dev/console").1, find("dev/console").2), (0o020600, (5, 1)));
        assert_eq!(find("proc").1, 0o040755);
    }

    #[test]
    fn the_init_runs_the_workload_and_ends_the_vm_with_its_status() {
        assert!(INIT.starts_with("#!/bin/busybox sh\n"));
        assert!(INIT.contains("/bin/ipi-workload run wake=${wl_wake:-2000}"));
        assert!(INIT.trim_end().ends_with("/bin/ipi-workload exit $status"));
    }
}
