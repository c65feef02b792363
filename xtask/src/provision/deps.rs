//! Everything the commands need from the machine, checked and (where allowed) provided in one
//! place: the pinned Rust toolchain, Debian's packages, Bochs' source and the Bochs build.
//! `cargo xtask doctor` lists it; `doctor --fix`, `run`, `bench` and `test` call `ensure`
//! before anything else runs, so a machine with rustup and apt needs no other set-up.

use anyhow::{Result, bail};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::bochs::{self, BIOS, VGABIOS};
use crate::progress::{self, Step};
use crate::provision::apt::{self, Privilege};

/// What a command is about to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// QEMU (TCG or KVM).
    Qemu,
    /// OVMF, for QEMU's UEFI boots.
    Uefi,
    /// The project's Bochs and its BIOS images.
    Bochs,
    /// GNU as and ld, for the test fixtures written in assembly (xtask/tests/fixtures).
    Fixtures,
}

pub const ALL: &[Need] = &[Need::Qemu, Need::Uefi, Need::Bochs, Need::Fixtures];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Found,
    InstalledNow,
    Missing,
    NotNeeded,
}

impl State {
    fn label(self) -> &'static str {
        match self {
            Self::Found => "found",
            Self::InstalledNow => "installed now",
            Self::Missing => "MISSING",
            Self::NotNeeded => "not needed",
        }
    }
}

/// One line of the doctor's list.
#[derive(Debug)]
pub struct Item {
    pub name: String,
    pub state: State,
    /// Where it was found, or how to get it.
    pub detail: String,
    /// A Debian package (apt installs it).
    pub package: bool,
}

/// A Debian package and the file that shows it is there (so a file put there another way, or
/// `OVMF=path`, counts too).
struct Package {
    name: &'static str,
    need: PackageNeed,
    file: fn() -> Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PackageNeed {
    Runtime(Need),
    /// Only to build Bochs.
    BochsBuild,
}

const PACKAGES: &[Package] = &[
    Package { name: "qemu-system-x86", need: PackageNeed::Runtime(Need::Qemu), file: || on_path("qemu-system-x86_64") },
    Package { name: "ovmf", need: PackageNeed::Runtime(Need::Uefi), file: ovmf },
    Package { name: "bochsbios", need: PackageNeed::Runtime(Need::Bochs), file: || existing(BIOS) },
    Package { name: "vgabios", need: PackageNeed::Runtime(Need::Bochs), file: || existing(VGABIOS) },
    Package { name: "binutils", need: PackageNeed::Runtime(Need::Fixtures), file: || on_path("as") },
    Package { name: "gcc", need: PackageNeed::BochsBuild, file: || on_path("gcc") },
    Package { name: "g++", need: PackageNeed::BochsBuild, file: || on_path("g++") },
    Package { name: "make", need: PackageNeed::BochsBuild, file: || on_path("make") },
    Package { name: "patch", need: PackageNeed::BochsBuild, file: || on_path("patch") },
    Package { name: "xz-utils", need: PackageNeed::BochsBuild, file: || on_path("xz") },
];

fn existing(p: &str) -> Option<PathBuf> {
    Path::new(p).is_file().then(|| PathBuf::from(p))
}

fn on_path(bin: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(bin)).find(|p| p.is_file())
}

/// The UEFI firmware for QEMU: `OVMF=path`, or Debian's ovmf package's file.
pub fn ovmf() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OVMF") {
        return Some(p.into());
    }
    ["/usr/share/ovmf/OVMF.fd", "/usr/share/OVMF/OVMF.fd", "/usr/share/qemu/OVMF.fd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Where slow artefacts are kept between clones: `HV_CACHE_DIR`, else `$XDG_CACHE_HOME/ipiv-hv`
/// or `~/.cache/ipiv-hv`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HV_CACHE_DIR") {
        return d.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache"));
    base.join("ipiv-hv")
}

/// The channel rust-toolchain.toml pins.
fn pinned_channel() -> String {
    std::fs::read_to_string("rust-toolchain.toml")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.trim().strip_prefix("channel").map(|v| v.trim_start_matches([' ', '=']).trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "(rust-toolchain.toml unreadable)".into())
}

/// The components the kernel build needs, as `rustup component list --installed` names them.
const COMPONENTS: &[&str] = &["rust-src", "llvm-tools", "rust-std-x86_64-unknown-none"];

fn toolchain() -> Item {
    let name = format!("rust toolchain {}", pinned_channel());
    let rustc = Command::new("rustc")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let installed = match Command::new("rustup").args(["component", "list", "--installed"]).output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        _ => {
            return Item {
                name,
                state: State::Found,
                detail: format!("{rustc} (no rustup: components not checked)"),
                package: false,
            };
        }
    };
    let lacking: Vec<&str> =
        COMPONENTS.iter().copied().filter(|c| !installed.lines().any(|l| l.starts_with(c))).collect();
    if lacking.is_empty() {
        Item { name, state: State::Found, detail: format!("{rustc}; {}", COMPONENTS.join(", ")), package: false }
    } else {
        Item {
            name,
            state: State::Missing,
            detail: format!("lacks {}: run `rustup toolchain install` in the repo root", lacking.join(", ")),
            package: false,
        }
    }
}

fn install_toolchain() -> Result<()> {
    let mut step = Step::new("rustup toolchain install");
    match progress::run(Command::new("rustup").args(["toolchain", "install"]), &mut step, |_| false) {
        Ok(_) => {
            step.done("done");
            Ok(())
        }
        Err(e) => {
            step.failed();
            Err(e)
        }
    }
}

/// Whether the packages for `need` are wanted, given the Bochs build state.
fn wanted(p: &Package, needs: &[Need], bochs_to_build: bool) -> bool {
    match p.need {
        PackageNeed::Runtime(n) => needs.contains(&n),
        PackageNeed::BochsBuild => bochs_to_build,
    }
}

/// Checks everything `needs` asks for; with `fix`, installs, fetches and builds what is
/// missing (in that order, so a missing package stops the command before anything else runs).
pub fn survey(needs: &[Need], cache: &Path, fix: Option<Privilege>) -> Result<Vec<Item>> {
    let mut items = Vec::new();

    let mut tc = toolchain();
    if tc.state == State::Missing && fix.is_some() {
        install_toolchain()?;
        tc = toolchain();
        if tc.state != State::Found {
            bail!("{}: {}", tc.name, tc.detail);
        }
        tc.state = State::InstalledNow;
    }
    items.push(tc);

    let user_bochs = bochs::user_binary()?;
    let bochs_dir = bochs::build_dir(cache)?;
    let bochs_built = bochs_dir.join("bochs").is_file();
    let bochs_to_build = needs.contains(&Need::Bochs) && user_bochs.is_none() && !bochs_built;

    let mut missing = Vec::new();
    for p in PACKAGES {
        let wanted = wanted(p, needs, bochs_to_build);
        let (state, detail) = match (p.file)() {
            Some(f) => {
                let version = apt::installed_version(p.name).map(|v| format!(" ({v})")).unwrap_or_default();
                (State::Found, format!("{}{version}", f.display()))
            }
            None if !wanted => (State::NotNeeded, "only needed to build Bochs, which is built".into()),
            None => {
                missing.push(p.name);
                (State::Missing, String::new())
            }
        };
        items.push(Item { name: p.name.into(), state, detail, package: true });
    }
    if !missing.is_empty() {
        match fix {
            Some(privilege) => {
                apt::install(privilege, &missing)?;
                for item in items.iter_mut().filter(|i| missing.contains(&i.name.as_str())) {
                    let p = PACKAGES.iter().find(|p| p.name == item.name).expect("from the table");
                    let Some(f) = (p.file)() else {
                        bail!("apt installed {} but {} is still missing", p.name, describe_file(p));
                    };
                    item.state = State::InstalledNow;
                    item.detail = f.display().to_string();
                }
            }
            None => {
                let privilege = Privilege::detect();
                for item in items.iter_mut().filter(|i| i.state == State::Missing) {
                    item.detail = format!("`{}`", apt::install_command(privilege, &[item.name.as_str()]));
                }
            }
        }
    }

    if !needs.contains(&Need::Bochs) {
        return Ok(items);
    }
    let source_dir = bochs::source_dir(cache);
    let src_name = "bochs source (Debian 3.0+dfsg-1)".to_string();
    let build_name = format!("bochs build (key {}, {} patches)", bochs::cache_key()?, bochs::patches()?.len());
    if let Some(p) = user_bochs {
        items.push(Item { name: src_name, state: State::NotNeeded, detail: "BOCHS is set".into(), package: false });
        items.push(Item {
            name: build_name,
            state: State::Found,
            detail: format!("BOCHS={}", p.display()),
            package: false,
        });
        return Ok(items);
    }
    let lacking = bochs::missing_tarballs(&source_dir)?;
    let src = if lacking.is_empty() {
        Item {
            name: src_name,
            state: State::Found,
            detail: format!("{} (sha256 checked)", source_dir.display()),
            package: false,
        }
    } else if bochs_built {
        Item { name: src_name, state: State::NotNeeded, detail: "Bochs is built".into(), package: false }
    } else {
        let mirror = apt::debian_mirrors().map(|m| m[0].clone()).unwrap_or_else(|e| format!("(no mirror: {e})"));
        Item {
            name: src_name,
            state: State::Missing,
            detail: format!("fetched from {mirror} through a private deb-src list in {}", cache.join("apt").display()),
            package: false,
        }
    };
    items.push(src);
    let build = if bochs_built {
        Item {
            name: build_name,
            state: State::Found,
            detail: bochs_dir.join("bochs").display().to_string(),
            package: false,
        }
    } else {
        Item {
            name: build_name,
            state: State::Missing,
            detail: format!("built into {} by the first Bochs run or `cargo xtask doctor --fix`", bochs_dir.display()),
            package: false,
        }
    };
    items.push(build);

    if let Some(privilege) = fix {
        let n = items.len();
        let source_was_missing = items[n - 2].state == State::Missing;
        if items[n - 1].state == State::Missing {
            let bin = bochs::provision(cache, privilege)?;
            if source_was_missing {
                items[n - 2].state = State::InstalledNow;
                items[n - 2].detail = format!("{} (sha256 checked)", source_dir.display());
            }
            items[n - 1].state = State::InstalledNow;
            items[n - 1].detail = bin.display().to_string();
        }
    }
    Ok(items)
}

fn describe_file(p: &Package) -> &'static str {
    match p.name {
        "qemu-system-x86" => "qemu-system-x86_64 on PATH",
        "ovmf" => "/usr/share/ovmf/OVMF.fd",
        "bochsbios" => BIOS,
        "vgabios" => VGABIOS,
        _ => "its program on PATH",
    }
}

/// Provides what `needs` asks for, saying what it does; fails (before anything else runs)
/// where it cannot, with the command that would.
pub fn ensure(needs: &[Need]) -> Result<()> {
    let cache = cache_dir();
    let items = survey(needs, &cache, Some(Privilege::detect()))?;
    for i in items.iter().filter(|i| i.state == State::InstalledNow) {
        eprintln!("xtask: {}: installed now: {}", i.name, i.detail);
    }
    Ok(())
}

/// The doctor's table.
pub fn render(items: &[Item], cache: &Path) -> String {
    let width = items.iter().map(|i| i.name.len()).max().unwrap_or(0);
    let mut out = format!("cache folder: {} (HV_CACHE_DIR overrides)\n", cache.display());
    for i in items {
        let _ = writeln!(out, "  {:width$}  {:13}  {}", i.name, i.state.label(), i.detail);
    }
    let missing: Vec<&str> =
        items.iter().filter(|i| i.package && i.state == State::Missing).map(|i| i.name.as_str()).collect();
    if !missing.is_empty() {
        let _ = writeln!(out, "missing packages, all at once: {}", apt::install_command(Privilege::detect(), &missing));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_tools_are_wanted_only_while_bochs_is_to_be_built() {
        let gcc = PACKAGES.iter().find(|p| p.name == "gcc").unwrap();
        let qemu = PACKAGES.iter().find(|p| p.name == "qemu-system-x86").unwrap();
        assert!(wanted(gcc, &[Need::Bochs], true));
        assert!(!wanted(gcc, &[Need::Bochs], false));
        assert!(wanted(qemu, &[Need::Qemu], false));
        assert!(!wanted(qemu, &[Need::Bochs], true));
    }

    #[test]
    fn the_table_lists_each_item_with_its_state() {
        let item =
            |name: &str, state, detail: &str| Item { name: name.into(), state, detail: detail.into(), package: true };
        let items = vec![
            item("ovmf", State::Found, "/usr/share/ovmf/OVMF.fd"),
            item("vgabios", State::Missing, "`apt-get install ...`"),
            item("x", State::Missing, ""),
        ];
        let t = render(&items, Path::new("/c"));
        assert!(t.starts_with("cache folder: /c"));
        assert!(t.contains("ovmf     found          /usr/share/ovmf/OVMF.fd"), "{t}");
        assert!(t.contains("vgabios  MISSING"), "{t}");
        assert!(t.contains("apt-get install -y --no-install-recommends vgabios x\n"), "{t}");
    }
}
