//! The project's Bochs: 3.0 from Debian's source package (trixie), Debian's patches, the
//! project's patches (xtask/patches), built with VMX and cached outside the clone.
//!
//! The cache key covers the source version, the configure flags and every project patch, so
//! changing a patch rebuilds Bochs and nothing else does. `BOCHS=path` uses an existing build
//! (it must have the project's patches); `BOCHS_SRC=path` builds from a source tarball instead
//! of fetching through apt.

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const SOURCE_VERSION: &str = "3.0+dfsg-1";
/// The files `apt-get source bochs=3.0+dfsg-1` fetches, with the sha256 from trixie's Sources
/// index (checked again here: a mirror answer is not trusted by name alone).
const ORIG_TARBALL: (&str, &str) =
    ("bochs_3.0+dfsg.orig.tar.xz", "78f6c73d4a6472d5130a87ab9dc306d02c7c71ed8e25b3a8ef642e2a7acd282b");
const DEBIAN_TARBALL: (&str, &str) =
    ("bochs_3.0+dfsg-1.debian.tar.xz", "c68fe1162aa485249467ec93707ccbf5d039b00d12815899fc2c819ec16d00df");

const CONFIGURE_FLAGS: &[&str] = &[
    "--with-nogui",
    "--without-x",
    "--without-x11",
    "--enable-x86-64",
    "--enable-smp",
    "--enable-cpu-level=6",
    "--enable-vmx=2",
    "--enable-avx",
    "--enable-evex",
    "--enable-amx",
    "--enable-cet",
    "--enable-uintr",
    "--enable-protection-keys",
    "--enable-pci",
    "--enable-a20-pin",
    "--enable-memtype",
    "--enable-monitor-mwait",
    "--enable-all-optimizations",
    "--enable-repeat-speedups",
    "--disable-debugger",
    "--disable-instrumentation",
    "--disable-plugins",
    "--disable-docbook",
    "--disable-readline",
    "--disable-gdb-stub",
];

const BIOS: &str = "/usr/share/bochs/BIOS-bochs-latest";
const VGABIOS: &str = "/usr/share/vgabios/vgabios.bin";

fn cache_root() -> PathBuf {
    if let Ok(d) = std::env::var("HV_CACHE_DIR") {
        return d.into();
    }
    let base = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/tmp".into())).join(".cache"));
    base.join("ipiv-hv")
}

fn patches() -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = fs::read_dir("xtask/patches")
        .context("reading xtask/patches")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "patch"))
        .collect();
    v.sort();
    Ok(v)
}

fn sha256_file(p: &Path) -> Result<String> {
    let bytes = fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    Ok(hex(&Sha256::digest(&bytes)))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Identifies one build: source, flags, patches (and BOCHS_SRC's hash when used).
fn cache_key(src_hash: &str) -> Result<String> {
    let mut h = Sha256::new();
    h.update(SOURCE_VERSION);
    h.update(src_hash);
    for f in CONFIGURE_FLAGS {
        h.update(f);
    }
    for p in patches()? {
        h.update(p.file_name().unwrap().to_string_lossy().as_bytes());
        h.update(fs::read(&p)?);
    }
    Ok(hex(&h.finalize())[..16].to_string())
}

/// Returns the path of a Bochs binary with VMX and the project's patches, building it once.
pub fn provision() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("BOCHS") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("BOCHS={} is not a file", p.display());
        }
        return Ok(p);
    }
    let user_src = std::env::var("BOCHS_SRC").ok().map(PathBuf::from);
    let src_hash = match &user_src {
        Some(t) => sha256_file(t)?,
        None => ORIG_TARBALL.1.to_string(),
    };
    let key = cache_key(&src_hash)?;
    let root = cache_root();
    let done = root.join(format!("bochs-{key}"));
    let bin = done.join("bochs");
    if bin.is_file() {
        return Ok(bin);
    }
    eprintln!("xtask: building Bochs {SOURCE_VERSION} with VMX into {} (once; about 2 minutes)", done.display());
    fs::create_dir_all(&root)?;
    let work = root.join(format!("build-{key}"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let src = match &user_src {
        Some(t) => unpack_user_source(t, &work)?,
        None => fetch_debian_source(&work)?,
    };
    for p in patches()? {
        let p = fs::canonicalize(&p)?;
        sh(
            Command::new("patch").args(["-p1", "--forward", "--quiet", "-i"]).arg(&p).current_dir(&src),
            "applying project patch",
        )?;
    }
    sh(Command::new("./configure").args(CONFIGURE_FLAGS).current_dir(&src), "configuring Bochs")?;
    let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    sh(Command::new("make").arg(format!("-j{jobs}")).current_dir(&src), "building Bochs")?;
    let staged = work.join("out");
    fs::create_dir_all(&staged)?;
    fs::copy(src.join("bochs"), staged.join("bochs"))?;
    fs::write(staged.join("BUILD-INFO"), format!("bochs {SOURCE_VERSION}\nsource sha256 {src_hash}\nkey {key}\n"))?;
    let _ = fs::remove_dir_all(&done);
    fs::rename(&staged, &done)?;
    let _ = fs::remove_dir_all(&work);
    Ok(bin)
}

/// Fetches the orig and debian tarballs through apt's deb-src (the .dsc may be missing on a
/// mirror, so apt's exit status is not trusted; the tarballs' hashes are), unpacks them and
/// applies Debian's patch series.
fn fetch_debian_source(work: &Path) -> Result<PathBuf> {
    let st = Command::new("apt-get")
        .args(["source", "--download-only", "--only-source"])
        .arg(format!("bochs={SOURCE_VERSION}"))
        .current_dir(work)
        .stdin(Stdio::null())
        .status()
        .context("running apt-get source (is apt available?)")?;
    for (name, want) in [ORIG_TARBALL, DEBIAN_TARBALL] {
        let p = work.join(name);
        if !p.is_file() {
            bail!(
                "apt-get source did not fetch {name} (exit {st}). Add a deb-src entry for Debian trixie \
                 (.ci/run shows how) and run apt-get update, or set BOCHS_SRC=/path/to/bochs-3.0 tarball"
            );
        }
        let got = sha256_file(&p)?;
        if got != want {
            bail!("{name}: sha256 {got}, expected {want}");
        }
    }
    sh(Command::new("tar").arg("xf").arg(ORIG_TARBALL.0).current_dir(work), "unpacking the orig tarball")?;
    let src = work.join("bochs-3.0");
    sh(Command::new("tar").arg("xf").arg(work.join(DEBIAN_TARBALL.0)).current_dir(&src), "unpacking debian/")?;
    let series = fs::read_to_string(src.join("debian/patches/series"))?;
    for name in series.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        sh(
            Command::new("patch")
                .args(["-p1", "--quiet", "-i"])
                .arg(format!("debian/patches/{name}"))
                .current_dir(&src),
            "applying Debian patch",
        )?;
    }
    Ok(src)
}

fn unpack_user_source(tarball: &Path, work: &Path) -> Result<PathBuf> {
    let got = sha256_file(tarball)?;
    if got != ORIG_TARBALL.1 {
        eprintln!("xtask: BOCHS_SRC sha256 {got} is not Debian's 3.0 orig tarball; building it unverified");
    }
    sh(Command::new("tar").arg("xf").arg(fs::canonicalize(tarball)?).current_dir(work), "unpacking BOCHS_SRC")?;
    let dir = fs::read_dir(work)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.join("configure").is_file())
        .context("BOCHS_SRC tarball has no top-level folder with a configure script")?;
    Ok(dir)
}

fn sh(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("{what}: starting {:?}", cmd.get_program()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(20).collect();
        bail!("{what} failed ({}):\n{}", out.status, tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    Ok(())
}

/// The command line that boots `img` on the project's Bochs, with its bochsrc in `dir`.
pub fn command(bochs: &Path, dir: &Path, img: &Path, serial: &Path, cpus: u32, memory_mib: u32) -> Result<Command> {
    for f in [BIOS, VGABIOS] {
        if !Path::new(f).is_file() {
            bail!("{f} is missing: install Debian's bochsbios and vgabios packages");
        }
    }
    let rc = bochsrc(img, serial, &dir.join("bochs.log"), cpus, memory_mib);
    let rc_path = dir.join("bochsrc");
    fs::write(&rc_path, rc)?;
    let mut c = Command::new(bochs);
    // -q skips the start menu; without it Bochs reads stdin and exits 0 without running.
    c.arg("-q").arg("-f").arg(&rc_path).env("BXSHARE", "/usr/share/bochs");
    Ok(c)
}

fn bochsrc(img: &Path, serial: &Path, log: &Path, cpus: u32, memory_mib: u32) -> String {
    let abs = |p: &Path| fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string();
    format!(
        "# written by cargo xtask\n\
         display_library: nogui\n\
         romimage: file={BIOS}, options=fastboot\n\
         vgaromimage: file={VGABIOS}\n\
         cpu: model=sapphire_rapids, count={cpus}, ips=50000000, quantum=16, reset_on_triple_fault=0\n\
         memory: guest={memory_mib}, host={memory_mib}\n\
         pci: enabled=1, chipset=i440fx\n\
         vga: extension=vbe\n\
         ata0-master: type=disk, path={img}, mode=flat\n\
         boot: disk\n\
         com1: enabled=1, mode=file, dev={serial}\n\
         clock: sync=none\n\
         log: {log}\n\
         panic: action=fatal\n\
         error: action=report\n\
         info: action=ignore\n",
        img = abs(img),
        serial = abs(serial),
        log = log.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bochsrc_names_the_vmx_model_and_files() {
        let rc = bochsrc(Path::new("/x/disk.img"), Path::new("/x/serial.log"), Path::new("/x/b.log"), 4, 512);
        assert!(rc.contains("cpu: model=sapphire_rapids, count=4,"));
        assert!(rc.contains("path=/x/disk.img"));
        assert!(rc.contains("com1: enabled=1, mode=file, dev=/x/serial.log"));
        assert!(rc.contains("memory: guest=512, host=512"));
    }

    #[test]
    fn cache_key_depends_on_patches_and_source() {
        std::env::set_current_dir(env!("CARGO_MANIFEST_DIR")).unwrap();
        std::env::set_current_dir("..").unwrap();
        let a = cache_key("aaaa").unwrap();
        assert_eq!(a, cache_key("aaaa").unwrap());
        assert_ne!(a, cache_key("bbbb").unwrap());
        assert!(!patches().unwrap().is_empty(), "the debug-exit patch is part of the build");
    }
}
