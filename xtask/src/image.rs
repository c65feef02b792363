//! Building the kernel and bootable disk images (bootloader 0.11, BIOS and UEFI).

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const KERNEL_TARGET: &str = "x86_64-unknown-none";

/// Builds the kernel (release, with debug info) and returns the ELF's path.
pub fn build_kernel() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "--release", "--package", "hypervisor", "--target", KERNEL_TARGET])
        .status()
        .context("running cargo build for the kernel")?;
    if !status.success() {
        bail!("kernel build failed");
    }
    Ok(PathBuf::from("target").join(KERNEL_TARGET).join("release/hypervisor"))
}

/// The kernel's boot config (hvcore::bootcfg), carried in the bootloader ramdisk.
pub struct BootCfg {
    pub log_level: String,
    pub exit: &'static str,
    pub fault: String,
}

impl BootCfg {
    pub fn render(&self) -> String {
        format!("# written by cargo xtask\nlog = {}\nexit = {}\nfault = {}\n", self.log_level, self.exit, self.fault)
    }
}

/// Writes a disk image with the kernel and its boot config.
pub fn make_image(kernel: &Path, cfg: &BootCfg, uefi: bool, out: &Path) -> Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let cfg_path = out.with_extension("cfg");
    std::fs::write(&cfg_path, cfg.render())?;
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
