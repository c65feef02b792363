//! The project's Bochs: 3.0 from Debian's source package (trixie), Debian's patches, the
//! project's patches (xtask/patches), built with VMX and cached outside the clone.
//!
//! The source is Debian's two tarballs, pinned by sha256 here and cached in `<cache>/src`;
//! they come through a private deb-src list (`apt::PrivateApt`), never through the system's
//! apt sources, and the `.dsc` is not used (mirrors have been seen to answer 404 for it). The
//! build's cache key covers the source, the configure flags and every project patch, so
//! changing a patch rebuilds Bochs and nothing else does. `BOCHS=path` uses an existing build
//! (it must have the project's patches); `BOCHS_SRC=dir` takes the two tarballs from a folder
//! instead of a mirror (they are checked against the same sums).

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::progress::{self, Step};
use crate::provision::apt::{self, PrivateApt, Privilege};

const SOURCE: &str = "bochs";
const SOURCE_VERSION: &str = "3.0+dfsg-1";
/// The Debian suite whose Sources index lists `SOURCE_VERSION`.
const SUITE: &str = "trixie";

/// One of the source package's files, with the sha256 from trixie's Sources index.
#[derive(Clone, Copy, Debug)]
pub struct Tarball {
    pub name: &'static str,
    pub sha256: &'static str,
}

pub const TARBALLS: [Tarball; 2] = [
    Tarball {
        name: "bochs_3.0+dfsg.orig.tar.xz",
        sha256: "78f6c73d4a6472d5130a87ab9dc306d02c7c71ed8e25b3a8ef642e2a7acd282b",
    },
    Tarball {
        name: "bochs_3.0+dfsg-1.debian.tar.xz",
        sha256: "c68fe1162aa485249467ec93707ccbf5d039b00d12815899fc2c819ec16d00df",
    },
];

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

/// Files Bochs needs at run time, from Debian's bochsbios and vgabios packages.
pub const BIOS: &str = "/usr/share/bochs/BIOS-bochs-latest";
pub const VGABIOS: &str = "/usr/share/vgabios/vgabios.bin";

pub fn patches() -> Result<Vec<PathBuf>> {
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

/// Identifies one build: source, flags, patches.
pub fn cache_key() -> Result<String> {
    key_of(&patches()?)
}

fn key_of(patches: &[PathBuf]) -> Result<String> {
    let mut h = Sha256::new();
    h.update(SOURCE_VERSION);
    for t in TARBALLS {
        h.update(t.sha256);
    }
    for f in CONFIGURE_FLAGS {
        h.update(f);
    }
    for p in patches {
        h.update(p.file_name().unwrap_or_default().to_string_lossy().as_bytes());
        h.update(fs::read(p).with_context(|| format!("reading {}", p.display()))?);
    }
    Ok(hex(&h.finalize())[..16].to_string())
}

/// The folder a finished build lives in.
pub fn build_dir(cache: &Path) -> Result<PathBuf> {
    Ok(cache.join(format!("bochs-{}", cache_key()?)))
}

/// The Bochs to run: `BOCHS`, or the cached build for the current patches (made by
/// `provision`, which every command that boots Bochs runs first).
pub fn binary(cache: &Path) -> Result<PathBuf> {
    if let Some(p) = user_binary()? {
        return Ok(p);
    }
    let bin = build_dir(cache)?.join("bochs");
    if !bin.is_file() {
        bail!("no Bochs build at {} (cargo xtask doctor --fix builds it)", bin.display());
    }
    Ok(bin)
}

/// `BOCHS=path`, checked.
pub fn user_binary() -> Result<Option<PathBuf>> {
    match std::env::var_os("BOCHS") {
        Some(p) if Path::new(&p).is_file() => Ok(Some(PathBuf::from(p))),
        Some(p) => bail!("BOCHS={} is not a file", Path::new(&p).display()),
        None => Ok(None),
    }
}

/// Where the tarballs are kept: `BOCHS_SRC`, or `<cache>/src`.
pub fn source_dir(cache: &Path) -> PathBuf {
    std::env::var_os("BOCHS_SRC").map(PathBuf::from).unwrap_or_else(|| cache.join("src"))
}

/// Refuses a file whose sha256 is not the pinned one, naming the file and both sums.
pub fn verify(path: &Path, t: &Tarball) -> Result<()> {
    let got = sha256_file(path)?;
    if got != t.sha256 {
        bail!(
            "{}: sha256 {got} does not match the sha256 pinned in xtask/src/provision/bochs.rs, {} (Debian's {SOURCE} \
             {SOURCE_VERSION}); refusing to build from it. Delete the file to fetch it again.",
            path.display(),
            t.sha256
        );
    }
    Ok(())
}

/// The tarballs not yet in `dir`; an error if one there fails its check.
pub fn missing_tarballs(dir: &Path) -> Result<Vec<Tarball>> {
    let mut missing = Vec::new();
    for t in TARBALLS {
        let p = dir.join(t.name);
        if p.is_file() {
            verify(&p, &t)?;
        } else {
            missing.push(t);
        }
    }
    Ok(missing)
}

/// Fetches the missing tarballs into `<cache>/src` from the machine's Debian mirror, through the
/// private deb-src list; each is checked before it is kept.
pub fn fetch_source(cache: &Path, privilege: Privilege) -> Result<()> {
    let dir = source_dir(cache);
    let missing = missing_tarballs(&dir)?;
    if missing.is_empty() {
        return Ok(());
    }
    if std::env::var_os("BOCHS_SRC").is_some() {
        let names: Vec<_> = missing.iter().map(|t| t.name).collect();
        bail!("BOCHS_SRC={} lacks {}", dir.display(), names.join(" and "));
    }
    fs::create_dir_all(&dir)?;
    let private = PrivateApt::new(&cache.join("apt"), privilege)?;
    let mut errors = Vec::new();
    for mirror in apt::debian_mirrors()? {
        match fetch_from(&private, &mirror, &dir, &missing, privilege) {
            Ok(()) => return Ok(()),
            Err(e) if format!("{e:#}").contains("does not match the sha256 pinned") => return Err(e),
            Err(e) => {
                eprintln!("xtask: {mirror}: {e:#}");
                errors.push(format!("{mirror}: {e:#}"));
            }
        }
    }
    bail!(
        "could not fetch Debian's {SOURCE} {SOURCE_VERSION} source from any mirror in apt's configuration:\n{}\n\
         (HV_DEBIAN_MIRROR=URI picks a mirror; BOCHS_SRC=dir takes the tarballs from a folder)",
        errors.join("\n")
    )
}

fn fetch_from(private: &PrivateApt, mirror: &str, dir: &Path, missing: &[Tarball], privilege: Privilege) -> Result<()> {
    private.update(mirror, SUITE)?;
    let listed = private.source_files(SOURCE, SOURCE_VERSION)?;
    for t in missing {
        let uri = match listed.iter().find(|f| f.name == t.name) {
            Some(f) if f.sha256.as_deref().is_some_and(|s| s != t.sha256) => bail!(
                "{SUITE}'s Sources index gives {} the sha256 {}, not the pinned {}",
                t.name,
                f.sha256.as_deref().unwrap_or(""),
                t.sha256
            ),
            Some(f) => f.uri.clone(),
            None => {
                let uri = apt::pool_uri(mirror, SOURCE, t.name);
                eprintln!("xtask: {SUITE}'s Sources index does not list {}; trying the pool: {uri}", t.name);
                uri
            }
        };
        let part = dir.join(format!("{}.part", t.name));
        apt::download(&uri, &part, privilege)?;
        verify(&part, t).map_err(|e| {
            let rejected = dir.join(format!("{}.rejected", t.name));
            let _ = fs::rename(&part, &rejected);
            e.context(format!("downloaded from {uri}; kept as {}", rejected.display()))
        })?;
        fs::rename(&part, dir.join(t.name))?;
    }
    Ok(())
}

/// Returns the path of a Bochs binary with VMX and the project's patches: `BOCHS`, the cached
/// build, or a new build (fetching the source first).
pub fn provision(cache: &Path, privilege: Privilege) -> Result<PathBuf> {
    if let Some(p) = user_binary()? {
        return Ok(p);
    }
    let done = build_dir(cache)?;
    let bin = done.join("bochs");
    if bin.is_file() {
        return Ok(bin);
    }
    // Two xtask commands started together would otherwise build into the same work folder;
    // the second waits here and then finds the first one's build.
    fs::create_dir_all(cache)?;
    let lock = fs::File::create(cache.join("bochs-build.lock"))?;
    lock.lock().context("locking the Bochs build")?;
    if bin.is_file() {
        return Ok(bin);
    }
    fetch_source(cache, privilege)?;
    eprintln!(
        "xtask: building Bochs {SOURCE_VERSION} with VMX and {} project patches into {} (once; 1-2 minutes on 2 cores)",
        patches()?.len(),
        done.display()
    );
    let total = Step::quiet("building Bochs");
    let work = cache.join(format!("build-{}", cache_key()?));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    match build(&source_dir(cache), &work) {
        Ok(src) => {
            let staged = work.join("out");
            fs::create_dir_all(&staged)?;
            fs::copy(src.join("bochs"), staged.join("bochs"))?;
            let info = format!(
                "bochs {SOURCE_VERSION}\nkey {}\nconfigure {}\npatches {}\n",
                cache_key()?,
                CONFIGURE_FLAGS.join(" "),
                patches()?
                    .iter()
                    .map(|p| p.file_name().unwrap_or_default().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            fs::write(staged.join("BUILD-INFO"), info)?;
            let _ = fs::remove_dir_all(&done);
            fs::rename(&staged, &done)?;
            let _ = fs::remove_dir_all(&work);
            total.done(&format!("built {}", bin.display()));
            Ok(bin)
        }
        Err(e) => {
            total.failed();
            Err(e.context(format!("building Bochs (work folder kept: {})", work.display())))
        }
    }
}

/// Unpacks the tarballs in `work`, applies Debian's series and the project's patches,
/// configures and makes; returns the source folder.
fn build(tarballs: &Path, work: &Path) -> Result<PathBuf> {
    let [orig, debian] = TARBALLS;
    let step = Step::new("Bochs: unpacking the source with Debian's patches");
    for t in TARBALLS {
        verify(&tarballs.join(t.name), &t)?;
    }
    sh(Command::new("tar").arg("xf").arg(tarballs.join(orig.name).canonicalize()?).current_dir(work), "unpacking")?;
    let src = work.join("bochs-3.0");
    sh(Command::new("tar").arg("xf").arg(tarballs.join(debian.name).canonicalize()?).current_dir(&src), "unpacking")?;
    let series = fs::read_to_string(src.join("debian/patches/series"))?;
    let debian_patches: Vec<&str> =
        series.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    for name in &debian_patches {
        sh(
            Command::new("patch")
                .args(["-p1", "--quiet", "-i"])
                .arg(format!("debian/patches/{name}"))
                .current_dir(&src),
            "applying Debian's patch",
        )?;
    }
    step.done(&format!("{} Debian patches applied", debian_patches.len()));

    let step = Step::new("Bochs: applying the project's patches");
    let ours = patches()?;
    for p in &ours {
        sh(
            Command::new("patch")
                .args(["-p1", "--forward", "--quiet", "-i"])
                .arg(fs::canonicalize(p)?)
                .current_dir(&src),
            &format!("applying {}", p.display()),
        )?;
    }
    step.done(&format!("{} applied", ours.len()));

    let mut step = Step::new("Bochs: configure");
    let out = progress::run(Command::new("./configure").args(CONFIGURE_FLAGS).current_dir(&src), &mut step, |l| {
        l.starts_with("checking")
    });
    match out {
        Ok(o) => step.done(&format!("{} checks", o.counted)),
        Err(e) => {
            step.failed();
            return Err(e);
        }
    }

    let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let mut step = Step::new(format!("Bochs: make -j{jobs}"));
    // A dry run counts the compiler invocations, so the bar has a length.
    if let Ok(o) = Command::new("make").arg("-n").current_dir(&src).output() {
        let n = String::from_utf8_lossy(&o.stdout).lines().filter(|l| is_compile(l)).count() as u64;
        if n > 0 {
            step.set_length(n);
        }
    }
    match progress::run(Command::new("make").arg(format!("-j{jobs}")).current_dir(&src), &mut step, is_compile) {
        Ok(o) => step.done(&format!("{} files compiled", o.counted)),
        Err(e) => {
            step.failed();
            return Err(e);
        }
    }
    Ok(src)
}

/// A compiler invocation in make's output.
fn is_compile(line: &str) -> bool {
    ["g++ ", "gcc ", "c++ ", "cc "].iter().any(|c| line.starts_with(c)) && line.contains(" -c ")
}

fn sh(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("{what}: starting {:?}", cmd.get_program()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(20).collect();
        bail!("{what} failed ({}):\n{}", out.status, tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xtask-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn cache_key_depends_on_every_patch() {
        let d = scratch("key");
        let (a, b) = (d.join("0001-a.patch"), d.join("0002-b.patch"));
        fs::write(&a, "one").unwrap();
        fs::write(&b, "two").unwrap();
        let k = key_of(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(k, key_of(&[a.clone(), b.clone()]).unwrap());
        fs::write(&b, "two, changed").unwrap();
        assert_ne!(k, key_of(&[a.clone(), b.clone()]).unwrap());
        assert_ne!(k, key_of(&[a]).unwrap());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_tampered_tarball_is_refused_naming_the_file_and_both_sums() {
        let d = scratch("tampered");
        let t = TARBALLS[0];
        fs::write(d.join(t.name), b"not Debian's tarball").unwrap();
        let e = missing_tarballs(&d).unwrap_err().to_string();
        let got = hex(&Sha256::digest(b"not Debian's tarball"));
        assert!(e.contains(&d.join(t.name).display().to_string()), "{e}");
        assert!(e.contains(&got) && e.contains(t.sha256), "{e}");
        fs::remove_file(d.join(t.name)).unwrap();
        assert_eq!(missing_tarballs(&d).unwrap().len(), 2);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn compiler_lines_are_counted() {
        assert!(is_compile("g++ -c  -I.. -I./.. -g -O2 cpu.cc -o cpu.o"));
        assert!(is_compile("gcc -c -I.. osdep.c -o osdep.o"));
        assert!(!is_compile("g++ -o bochs main.o cpu/libcpu.a"));
        assert!(!is_compile("make[1]: Entering directory"));
    }
}
