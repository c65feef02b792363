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

use crate::apt::{self, PrivateApt, Privilege};
use crate::progress::{self, Step};

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
            "{}: sha256 {got} does not match the sha256 pinned in xtask/src/bochs.rs, {} (Debian's {SOURCE} \
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

/// Bochs' emulated instructions per emulated second (`cpu: ips=`): its TSC ticks once per
/// instruction per CPU, so this is the TSC's rate in emulated time.
pub const IPS: u64 = 50_000_000;

/// CPU features a Linux kernel booted directly on Bochs must not see, and why (the bochsrc's
/// `exclude_features`; the third model bug, IA32_MISC_ENABLE, is fixed by patch 0018). Under
/// the hypervisor the CPUID filter hides them from guests anyway (hvcore::exits::cpuid), so
/// the Linux benchmark runs every configuration, VMs included, on this same model.
pub const LINUX_EXCLUDED_FEATURES: &[(&str, &str)] = &[
    // The model reports AMX without XFD: Linux 6.1 keeps XTILECFG but drops XTILEDATA from
    // XCR0, and its XSETBV faults in fpu__init_cpu_xstate.
    ("amx", "AMX without XFD: XSETBV faults in fpu__init_cpu_xstate"),
    ("amx_int8", "needs amx"),
    ("amx_bf16", "needs amx"),
    // With CR4.LA57 set, the first SMI makes Bochs panic at RSM (its CR4 consistency check).
    ("la57", "with 5-level paging on, Bochs panics at RSM after the first SMI"),
    // Not a bug: the hypervisor hides MONITOR/MWAIT, so its Linux guests idle with HLT; a
    // kernel booted directly would idle in MWAIT, where a wake-up is a store to the polled
    // flag rather than an IPI, and the native baseline would measure another idle path.
    ("mwait", "the same idle path as in the VMs: HLT, woken by IPIs"),
];

/// The CPU model every run uses unless told otherwise (`--cpu-model`): the one with IPIv.
pub const DEFAULT_MODEL: &str = "sapphire_rapids";

/// The emulated machine.
#[derive(Clone, Copy, Debug)]
pub struct Machine<'a> {
    /// Bochs' CPU model (`bochs -help cpu` lists them).
    pub model: &'a str,
    pub cpus: u32,
    pub memory_mib: u32,
    /// CPU features hidden from the model (Bochs' feature names).
    pub exclude: &'a [&'a str],
}

/// The Intel models of the project's Bochs that have VMX (Bochs 3.0 `cpu/cpudb/intel/*.cc`:
/// those that call `enable_cpu_extension(BX_ISA_VMX)`), oldest first, with whether they have
/// long mode (`BX_ISA_LONG_MODE`). `cargo xtask test --filter cpu-model` runs each.
pub const INTEL_VMX_MODELS: [(&str, bool); 14] = [
    ("core_duo_t2400_yonah", false),
    ("core2_penryn_t9600", true),
    ("corei5_lynnfield_750", true),
    ("corei5_arrandale_m520", true),
    ("corei7_sandy_bridge_2600k", true),
    ("corei7_ivy_bridge_3770k", true),
    ("corei7_haswell_4770", true),
    ("broadwell_ult", true),
    ("corei7_skylake_x", true),
    ("corei3_cnl", true),
    ("corei7_icelake_u", true),
    ("tigerlake", true),
    ("sapphire_rapids", true),
    ("arrow_lake", true),
];

/// Bochs' models without long mode (the same sources): this x86-64 hypervisor cannot boot on
/// them (the bootloader's switch to long mode would triple-fault), so xtask refuses them.
pub const MODELS_WITHOUT_LONG_MODE: [&str; 11] = [
    "i386",
    "i486dx4",
    "pentium",
    "pentium_mmx",
    "amd_k6_2_chomper",
    "athlon_xp",
    "p2_klamath",
    "p3_katmai",
    "p4_willamette",
    "core_duo_t2400_yonah",
    "atom_n270",
];

/// The CPU models `bochs` offers, as `bochs -help cpu` lists them.
pub fn models(bochs: &Path) -> Result<Vec<String>> {
    let out = Command::new(bochs).args(["-help", "cpu"]).env("BXSHARE", "/usr/share/bochs").output()?;
    // The list goes to stderr in this build; read both.
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let models = parse_models(&text);
    if models.is_empty() {
        bail!("`{} -help cpu` listed no CPU models", bochs.display());
    }
    Ok(models)
}

fn parse_models(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Supported CPU models"))
        .skip(1)
        .map(str::trim)
        .skip_while(|l| l.is_empty())
        .take_while(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The command line that boots `img` on the project's Bochs as `m` describes, with its bochsrc
/// in `dir`. An unknown CPU model is refused here, with the list, before anything starts.
pub fn command(bochs: &Path, dir: &Path, img: &Path, serial: &Path, m: &Machine) -> Result<Command> {
    for f in [BIOS, VGABIOS] {
        if !Path::new(f).is_file() {
            bail!("{f} is missing: install Debian's bochsbios and vgabios packages");
        }
    }
    if m.model != DEFAULT_MODEL {
        let known = models(bochs)?;
        if !known.iter().any(|k| k == m.model) {
            bail!("--cpu-model {}: the project's Bochs has no such CPU model; it offers {}", m.model, known.join(", "));
        }
        if MODELS_WITHOUT_LONG_MODE.contains(&m.model) {
            bail!(
                "--cpu-model {}: this CPU model has no long mode (x86-64), and the hypervisor is an x86-64 kernel: \
                 it cannot boot there",
                m.model
            );
        }
    }
    let rc = bochsrc(img, serial, &dir.join("bochs.log"), m);
    let rc_path = dir.join("bochsrc");
    fs::write(&rc_path, rc)?;
    let mut c = Command::new(bochs);
    // -q skips the start menu; without it Bochs reads stdin and exits 0 without running.
    c.arg("-q").arg("-f").arg(&rc_path).env("BXSHARE", "/usr/share/bochs");
    Ok(c)
}

fn bochsrc(img: &Path, serial: &Path, log: &Path, m: &Machine) -> String {
    let abs = |p: &Path| fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string();
    let exclude =
        if m.exclude.is_empty() { String::new() } else { format!(", exclude_features=\"{}\"", m.exclude.join(" ")) };
    format!(
        "# written by cargo xtask\n\
         display_library: nogui\n\
         romimage: file={BIOS}, options=fastboot\n\
         vgaromimage: file={VGABIOS}\n\
         cpu: model={model}, count={cpus}, ips={IPS}, quantum=16, reset_on_triple_fault=0{exclude}\n\
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
        model = m.model,
        cpus = m.cpus,
        memory_mib = m.memory_mib,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bochsrc_names_the_vmx_model_and_files() {
        let m = Machine { model: DEFAULT_MODEL, cpus: 4, memory_mib: 512, exclude: &[] };
        let rc = bochsrc(Path::new("/x/disk.img"), Path::new("/x/serial.log"), Path::new("/x/b.log"), &m);
        assert!(rc.contains("cpu: model=sapphire_rapids, count=4,"));
        assert!(rc.contains("path=/x/disk.img"));
        assert!(rc.contains("com1: enabled=1, mode=file, dev=/x/serial.log"));
        assert!(rc.contains("memory: guest=512, host=512"));
        let m = Machine { model: "corei7_haswell_4770", exclude: &["la57", "mwait"], ..m };
        let rc = bochsrc(Path::new("/x/disk.img"), Path::new("/x/serial.log"), Path::new("/x/b.log"), &m);
        assert!(rc.contains("cpu: model=corei7_haswell_4770, count=4,"));
        assert!(rc.contains("exclude_features=\"la57 mwait\""));
    }

    #[test]
    fn model_tables_agree() {
        for (m, long_mode) in INTEL_VMX_MODELS {
            assert_eq!(MODELS_WITHOUT_LONG_MODE.contains(&m), !long_mode, "{m}");
        }
        assert!(INTEL_VMX_MODELS.iter().any(|(m, _)| *m == DEFAULT_MODEL));
    }

    #[test]
    fn the_model_list_is_read_from_bochs_help() {
        let help = "Supported CPU models:\n\ni386\npentium\ncorei7_haswell_4770\nsapphire_rapids\n\n00000000000i[SIM ] quit_sim\n";
        assert_eq!(parse_models(help), ["i386", "pentium", "corei7_haswell_4770", "sapphire_rapids"]);
        assert!(parse_models("no list").is_empty());
    }

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
