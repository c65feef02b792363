//! apt, used without touching the system's configuration.
//!
//! - Debian packages are installed by the system's apt, as root or through `sudo -n`; without
//!   either, the caller gets the exact command to run.
//! - Source files (Bochs') come through a private deb-src list, state and cache folder under
//!   the project's cache (apt's own `Dir::Etc::SourceList`, `Dir::State::Lists`, `Dir::Cache`
//!   options), on the Debian mirror the machine's apt already uses, and are downloaded by
//!   `apt-helper`, so apt's proxies and transports apply. Nothing names a mirror host: it is
//!   read from apt (`apt-get indextargets`, which honours `APT_CONFIG`), or from
//!   `HV_DEBIAN_MIRROR`.

use anyhow::{Context, Result, bail};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::progress::{self, Step};

const APT_HELPER: &str = "/usr/lib/apt/apt-helper";

/// How this process may install packages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Privilege {
    Root,
    /// `sudo -n` works (no password asked).
    Sudo,
    None,
}

impl Privilege {
    pub fn detect() -> Self {
        let uid =
            Command::new("id").arg("-u").output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        if uid.as_deref() == Some("0") {
            return Self::Root;
        }
        let sudo_ok = Command::new("sudo")
            .args(["-n", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if sudo_ok { Self::Sudo } else { Self::None }
    }

    fn prefix(self) -> &'static [&'static str] {
        match self {
            Self::Root => &[],
            Self::Sudo => &["sudo", "-n"],
            Self::None => &["sudo"],
        }
    }
}

/// The command a person runs to install `pkgs` (what `install` runs, as that user would type it).
pub fn install_command(privilege: Privilege, pkgs: &[&str]) -> String {
    let mut words: Vec<&str> = match privilege {
        Privilege::Root => vec![],
        _ => vec!["sudo"],
    };
    words.extend(["apt-get", "install", "-y", "--no-install-recommends"]);
    words.extend(pkgs);
    words.join(" ")
}

/// The installed version of a Debian package, if dpkg knows it as installed.
pub fn installed_version(pkg: &str) -> Option<String> {
    let out = Command::new("dpkg-query").args(["-W", "-f=${db:Status-Status} ${Version}", pkg]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.strip_prefix("installed ").map(str::to_string)
}

/// Whether apt knows a candidate version for each package (if not, its lists need updating).
fn all_have_candidates(pkgs: &[&str]) -> bool {
    let Ok(out) = Command::new("apt-cache").arg("policy").args(pkgs).output() else { return false };
    let text = String::from_utf8_lossy(&out.stdout);
    let known = text.lines().filter(|l| l.trim_start().starts_with("Candidate:")).count();
    known == pkgs.len() && !text.contains("Candidate: (none)")
}

fn apt_get(privilege: Privilege, args: &[&str]) -> Command {
    let prefix = privilege.prefix();
    let mut c = Command::new(prefix.first().copied().unwrap_or("apt-get"));
    if !prefix.is_empty() {
        c.args(&prefix[1..]).arg("apt-get");
    }
    c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    c
}

/// Installs `pkgs` with the system's apt (updating its lists first if a package has no
/// candidate, and once more if the install fails, as stale lists name files a mirror dropped).
pub fn install(privilege: Privilege, pkgs: &[&str]) -> Result<()> {
    if privilege == Privilege::None {
        bail!(
            "missing Debian packages: {}. Install them with:\n    {}\n(xtask installs them itself when run as root or where `sudo -n` works)",
            pkgs.join(" "),
            install_command(privilege, pkgs)
        );
    }
    let update = || -> Result<()> {
        let mut step = Step::new("apt-get update");
        match progress::run(&mut apt_get(privilege, &["update", "-q"]), &mut step, |_| false) {
            Ok(_) => {
                step.done("lists updated");
                Ok(())
            }
            Err(e) => {
                step.failed();
                Err(e)
            }
        }
    };
    if !all_have_candidates(pkgs) {
        update()?;
    }
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(pkgs);
    for attempt in 0..2 {
        let mut step = Step::new(format!("installing Debian packages ({})", pkgs.join(" ")));
        match progress::run(&mut apt_get(privilege, &args), &mut step, |l| l.starts_with("Setting up ")) {
            Ok(o) => {
                step.done(&format!("{} packages set up", o.counted));
                return Ok(());
            }
            Err(e) if attempt == 0 => {
                step.failed();
                eprintln!("xtask: apt-get install failed; updating apt's lists and trying once more ({e:#})");
                update()?;
            }
            Err(e) => {
                step.failed();
                return Err(e);
            }
        }
    }
    unreachable!("the loop returns")
}

/// Debian mirrors (repository base URIs) in the machine's apt configuration, best first.
pub fn debian_mirrors() -> Result<Vec<String>> {
    if let Ok(m) = std::env::var("HV_DEBIAN_MIRROR") {
        return Ok(vec![m]);
    }
    let out = Command::new("apt-get")
        .args(["indextargets", "--format", "$(TARGET_OF)\t$(REPO_URI)\t$(ORIGIN)\t$(LABEL)\t$(RELEASE)"])
        .output()
        .context("running apt-get indextargets (is this a Debian machine with apt?)")?;
    let mirrors = mirrors_from_index_targets(&String::from_utf8_lossy(&out.stdout));
    if mirrors.is_empty() {
        bail!(
            "no Debian mirror in apt's configuration (apt-get indextargets lists none); \
             set HV_DEBIAN_MIRROR to a Debian mirror's base URI"
        );
    }
    Ok(mirrors)
}

/// Picks the Debian archive mirrors out of `apt-get indextargets` lines (`TARGET_OF\tREPO_URI\t
/// ORIGIN\tLABEL\tRELEASE`): security and other vendors' repositories are left out; those whose
/// Release file says Origin "Debian" come first, then those apt has no Release file for yet.
pub fn mirrors_from_index_targets(text: &str) -> Vec<String> {
    let mut sure = Vec::new();
    let mut unsure = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let [target_of, uri, origin, label, release] = f[..] else { continue };
        if !target_of.starts_with("deb") || uri.is_empty() {
            continue;
        }
        if uri.contains("security") || label.contains("Security") || release.ends_with("-security") {
            continue;
        }
        let uri = if uri.ends_with('/') { uri.to_string() } else { format!("{uri}/") };
        let list = match origin {
            "Debian" => &mut sure,
            // Not fetched yet: apt prints the placeholder or nothing.
            "" | "$(ORIGIN)" => &mut unsure,
            _ => continue,
        };
        if !list.contains(&uri) {
            list.push(uri);
        }
    }
    unsure.retain(|u| !sure.contains(u));
    sure.extend(unsure);
    sure
}

/// One file of a source package, as `apt-get source --print-uris` lists it.
#[derive(Debug, PartialEq, Eq)]
pub struct SourceFile {
    pub uri: String,
    pub name: String,
    pub sha256: Option<String>,
}

/// Parses `'URI' NAME SIZE SHA256:HEX` lines.
pub fn parse_print_uris(text: &str) -> Vec<SourceFile> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix('\'')?;
            let (uri, rest) = rest.split_once('\'')?;
            let mut words = rest.split_whitespace();
            let name = words.next()?.to_string();
            let sha256 = words.find_map(|w| w.strip_prefix("SHA256:")).map(str::to_lowercase);
            Some(SourceFile { uri: uri.to_string(), name, sha256 })
        })
        .collect()
}

/// Where a Debian mirror keeps a source package's files (the archive's pool layout), for when
/// the suite's Sources index no longer lists the version: the pool still has its files while
/// any suite refers to them.
pub fn pool_uri(mirror: &str, source: &str, file: &str) -> String {
    let prefix = if source.starts_with("lib") { &source[..4] } else { &source[..1] };
    let file = file.replace('+', "%2b");
    format!("{}/pool/main/{prefix}/{source}/{file}", mirror.trim_end_matches('/'))
}

/// apt with its own deb-src list, lists and cache under `root`: the system's apt configuration
/// (proxies, keyrings, `APT_CONFIG`) applies, its sources and state are neither read nor written.
pub struct PrivateApt {
    root: PathBuf,
    privilege: Privilege,
}

impl PrivateApt {
    pub fn new(root: &Path, privilege: Privilege) -> Result<Self> {
        for d in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(root.join(d)).with_context(|| format!("creating {}", root.join(d).display()))?;
        }
        fs::write(root.join("status"), b"")?;
        Ok(Self { root: root.to_path_buf(), privilege })
    }

    fn options(&self) -> Vec<String> {
        let r = self.root.display();
        let mut o = vec![
            format!("Dir::Etc::SourceList={r}/sources.list"),
            format!("Dir::Etc::SourceParts={r}/sources.list.d"),
            format!("Dir::State::Lists={r}/lists"),
            format!("Dir::Cache={r}/cache"),
            // The machine's installed packages are not candidates: a version installed from
            // another suite (security updates) may be one this index cannot download.
            format!("Dir::State::status={r}/status"),
        ];
        // As root apt downloads as the `_apt` user, which cannot write under a private cache in
        // root's home; the files are checked against pinned sums anyway.
        if self.privilege == Privilege::Root {
            o.push("APT::Sandbox::User=root".into());
        }
        o.into_iter().flat_map(|v| ["-o".to_string(), v]).collect()
    }

    /// Points the private list at `mirror`'s `suite` sources and fetches its index.
    pub fn update(&self, mirror: &str, suite: &str) -> Result<()> {
        self.update_list(mirror, suite, "deb-src")
    }

    fn update_list(&self, mirror: &str, suite: &str, kind: &str) -> Result<()> {
        let keyring = Path::new("/usr/share/keyrings/debian-archive-keyring.gpg");
        let signed = if keyring.is_file() { format!("[signed-by={}] ", keyring.display()) } else { String::new() };
        fs::write(self.root.join("sources.list"), format!("{kind} {signed}{mirror} {suite} main\n"))?;
        let mut step = Step::new(format!("apt-get update (private {kind} {suite} list, {mirror})"));
        let mut cmd = Command::new("apt-get");
        cmd.args(self.options()).args(["update", "-q"]);
        match progress::run(&mut cmd, &mut step, |_| false) {
            Ok(o) if o.lines.iter().any(|l| l.starts_with("W: Failed") || l.starts_with("E: ")) => {
                step.failed();
                bail!("apt-get update on {mirror} {suite}: {}", o.lines.join("\n"))
            }
            Ok(_) => {
                step.done("index fetched");
                Ok(())
            }
            Err(e) => {
                step.failed();
                Err(e)
            }
        }
    }

    /// Points the private list at `mirror`'s `suite` binary packages and fetches its index.
    pub fn update_binary(&self, mirror: &str, suite: &str) -> Result<()> {
        self.update_list(mirror, suite, "deb")
    }

    fn apt_cache(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("apt-cache")
            .args(self.options())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running apt-cache {}", args.join(" ")))?;
        if !out.status.success() {
            bail!("apt-cache {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The candidate version of binary package `pkg` in the private index.
    pub fn candidate(&self, pkg: &str) -> Result<String> {
        let text = self.apt_cache(&["policy", pkg])?;
        parse_candidate(&text).with_context(|| format!("{pkg} has no candidate version in the index"))
    }

    /// The packages `pkg` depends on directly (its `Depends:` lines).
    pub fn depends(&self, pkg: &str) -> Result<Vec<String>> {
        let text = self.apt_cache(&["depends", pkg])?;
        Ok(text.lines().filter_map(|l| l.trim().strip_prefix("Depends: ")).map(|d| d.trim().to_string()).collect())
    }

    /// Downloads binary package `pkg=version` into `dir` (apt-get download); its .deb's path.
    pub fn download_package(&self, pkg: &str, version: &str, dir: &Path) -> Result<PathBuf> {
        fs::create_dir_all(dir)?;
        let mut step = Step::new(format!("apt-get download {pkg}={version}"));
        let mut cmd = Command::new("apt-get");
        cmd.args(self.options()).args(["download", "-q"]).arg(format!("{pkg}={version}")).current_dir(dir);
        if let Err(e) = progress::run(&mut cmd, &mut step, |_| false) {
            step.failed();
            return Err(e);
        }
        let deb = fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{pkg}_")))
                    && p.extension().is_some_and(|e| e == "deb")
            })
            .with_context(|| format!("apt-get download {pkg} left no .deb in {}", dir.display()))?;
        step.done("downloaded");
        Ok(deb)
    }

    /// Downloads the candidate versions of `pkgs` into `dir` in one `apt-get download`; the
    /// .deb files `dir` then holds.
    pub fn download_candidates(&self, pkgs: &[String], dir: &Path) -> Result<Vec<PathBuf>> {
        fs::create_dir_all(dir)?;
        let mut step = Step::new(format!("apt-get download ({} packages)", pkgs.len()));
        let mut cmd = Command::new("apt-get");
        cmd.args(self.options()).args(["download", "-q"]).args(pkgs).current_dir(dir);
        if let Err(e) = progress::run(&mut cmd, &mut step, |_| false) {
            step.failed();
            return Err(e);
        }
        let debs: Vec<PathBuf> = fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "deb"))
            .collect();
        step.done(&format!("{} downloaded", debs.len()));
        Ok(debs)
    }

    /// The files of `source=version` as the private index lists them (empty if it does not).
    pub fn source_files(&self, source: &str, version: &str) -> Result<Vec<SourceFile>> {
        let out = Command::new("apt-get")
            .args(self.options())
            .args(["source", "--print-uris", "--only-source"])
            .arg(format!("{source}={version}"))
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .output()
            .context("running apt-get source --print-uris")?;
        Ok(parse_print_uris(&String::from_utf8_lossy(&out.stdout)))
    }
}

/// The `Candidate:` of `apt-cache policy` output.
pub fn parse_candidate(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Candidate: "))
        .map(str::trim)
        .filter(|v| *v != "(none)")
        .map(String::from)
}

/// Downloads `uri` to `dest` with apt's own downloader (the caller checks the contents).
pub fn download(uri: &str, dest: &Path, privilege: Privilege) -> Result<()> {
    let name = uri.rsplit('/').next().unwrap_or(uri).replace("%2b", "+");
    let _ = fs::remove_file(dest);
    let mut cmd = Command::new(APT_HELPER);
    if privilege == Privilege::Root {
        cmd.args(["-o", "APT::Sandbox::User=root"]);
    }
    cmd.args(["download-file", uri]).arg(dest);
    let mut step = Step::new(format!("downloading {name}"));
    match progress::run(&mut cmd, &mut step, |_| false) {
        Ok(_) if dest.is_file() => {
            step.done("downloaded");
            Ok(())
        }
        Ok(_) => {
            step.failed();
            bail!("apt-helper reported success but {} is missing", dest.display())
        }
        Err(e) => {
            step.failed();
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_are_debian_archives_without_security_or_vendors() {
        let lines = "deb\thttp://m.example/debian-security/\tDebian\tDebian-Security\tbookworm-security\n\
                     deb\thttp://m.example/debian/\tDebian\tDebian\tbookworm\n\
                     deb\thttp://m.example/debian/\tDebian\tDebian\tbookworm-updates\n\
                     deb\thttps://vendor.example/apt\tVendor\tVendor\tstable\n\
                     deb\thttp://fresh.example/debian\t$(ORIGIN)\t$(LABEL)\t$(RELEASE)\n\
                     deb-src\thttp://m.example/debian/\tDebian\tDebian\ttrixie\n";
        assert_eq!(
            mirrors_from_index_targets(lines),
            vec!["http://m.example/debian/".to_string(), "http://fresh.example/debian/".to_string()]
        );
        assert!(mirrors_from_index_targets("").is_empty());
        assert!(mirrors_from_index_targets("garbage\n").is_empty());
    }

    #[test]
    fn print_uris_lines_are_parsed() {
        let text = "Need to get 3930 kB of source archives.\n\
            'http://m.example/debian/pool/main/b/bochs/bochs_3.0%2bdfsg-1.dsc' bochs_3.0+dfsg-1.dsc 2554 SHA256:6A4E\n\
            'http://m.example/debian/pool/main/b/bochs/bochs_3.0%2bdfsg.orig.tar.xz' bochs_3.0+dfsg.orig.tar.xz 3896488 SHA256:78f6\n\
            'http://m.example/x' noname\n";
        let files = parse_print_uris(text);
        assert_eq!(files.len(), 3);
        assert_eq!(files[0].name, "bochs_3.0+dfsg-1.dsc");
        assert_eq!(files[0].sha256.as_deref(), Some("6a4e"));
        assert_eq!(files[1].uri, "http://m.example/debian/pool/main/b/bochs/bochs_3.0%2bdfsg.orig.tar.xz");
        assert_eq!(files[2].sha256, None);
    }

    #[test]
    fn candidates_are_read_from_apt_cache_policy() {
        let text = "busybox-static:\n  Installed: (none)\n  Candidate: 1:1.35.0-4+deb12u1+b1\n  Version table:\n";
        assert_eq!(parse_candidate(text).as_deref(), Some("1:1.35.0-4+deb12u1+b1"));
        assert_eq!(parse_candidate("x:\n  Candidate: (none)\n"), None);
    }

    #[test]
    fn pool_uris_follow_the_archive_layout() {
        assert_eq!(
            pool_uri("http://m.example/debian/", "bochs", "bochs_3.0+dfsg.orig.tar.xz"),
            "http://m.example/debian/pool/main/b/bochs/bochs_3.0%2bdfsg.orig.tar.xz"
        );
        assert_eq!(pool_uri("http://m/d", "libfoo", "x.tar.xz"), "http://m/d/pool/main/libf/libfoo/x.tar.xz");
    }

    #[test]
    fn the_install_command_is_what_a_person_types() {
        assert_eq!(
            install_command(Privilege::None, &["ovmf", "vgabios"]),
            "sudo apt-get install -y --no-install-recommends ovmf vgabios"
        );
        assert_eq!(install_command(Privilege::Root, &["ovmf"]), "apt-get install -y --no-install-recommends ovmf");
        let e = install(Privilege::None, &["qemu-system-x86"]).unwrap_err().to_string();
        assert!(e.contains("sudo apt-get install -y --no-install-recommends qemu-system-x86"), "{e}");
    }
}
