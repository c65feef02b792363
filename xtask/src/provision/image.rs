//! Building the kernel and bootable disk images (bootloader 0.11, BIOS and UEFI).

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::progress::{self, Step};

pub const KERNEL_TARGET: &str = "x86_64-unknown-none";

/// Builds the kernel (release, with debug info) and returns the ELF's path.
pub fn build_kernel() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--package", "hypervisor", "--target", KERNEL_TARGET]);
    cargo_build(&mut cmd, "building the hypervisor kernel")?;
    Ok(PathBuf::from("target").join(KERNEL_TARGET).join("release/hypervisor"))
}

/// Runs a cargo build under a progress step that counts the crates it compiles; silent when
/// there is nothing to do.
pub fn cargo_build(cmd: &mut Command, what: &str) -> Result<()> {
    let mut step = Step::quiet(what);
    match progress::run(cmd, &mut step, |l| l.trim_start().starts_with("Compiling ")) {
        Ok(o) => {
            step.done(&format!("{} crates compiled", o.counted));
            Ok(())
        }
        Err(e) => {
            step.failed();
            Err(e)
        }
    }
}

/// A guest image by name, as packed into the ramdisk.
pub type GuestImage = (String, Vec<u8>);

/// Writes a disk image with the kernel and a ramdisk holding `config` (boot config and
/// manifest text) and the guest images.
pub fn make_image(kernel: &Path, config: &str, guests: &[GuestImage], uefi: bool, out: &Path) -> Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let cfg_path = out.with_extension("ramdisk");
    let mut files: Vec<(&str, &[u8])> = vec![(hvcore::ramdisk::CONFIG_FILE, config.as_bytes())];
    files.extend(guests.iter().map(|(n, b)| (n.as_str(), b.as_slice())));
    std::fs::write(&cfg_path, hvcore::ramdisk::build(&files))?;
    let mut loader_cfg = bootloader::BootConfig::default();
    // The bootloader's own log is only for diagnosing the boot itself; drawing text into the
    // framebuffer is slow under emulation.
    loader_cfg.frame_buffer_logging = false;
    loader_cfg.log_level = bootloader_boot_config::LevelFilter::Warn;
    let mut disk = bootloader::DiskImageBuilder::new(kernel.to_path_buf());
    disk.set_ramdisk(cfg_path).set_boot_config(&loader_cfg);
    if uefi { disk.create_uefi_image(out) } else { disk.create_bios_image(out) }
        .with_context(|| format!("creating disk image {}", out.display()))
}
