//! Debian's kernel with the project's initramfs booted directly on the project's Bochs, with no
//! hypervisor: the native baseline of `cargo xtask bench --linux`. The disk holds a boot sector
//! this project writes (`xtask/boot/linux-bootsector.S`: the 16-bit Linux boot protocol through
//! the BIOS), the command line, the bzImage and the initrd; the run is judged by the workload's
//! REPORT lines on COM1 and its isa-debug-exit status, as the VM runs are.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use hvcore::linux::LoadPlan;

use crate::platform::bochs::Machine;
use crate::provision::fixtures::binutils;

const SOURCE: &str = "xtask/boot/linux-bootsector.S";
const SECTOR: usize = 512;
/// Where the command line goes on the disk, and its room (the boot sector puts it at 0x9E000,
/// below the EBDA).
const CMDLINE_LBA: u32 = 1;
const CMDLINE_MAX_SECTORS: usize = 8;
/// The bzImage starts here.
const KERNEL_LBA: u32 = 16;
/// Bochs sizes a flat disk with 16 heads and 63 sectors a track: whole cylinders.
const CYLINDER: usize = 16 * 63 * SECTOR;
/// The initrd stays this far below the top of RAM, where the BIOS keeps its ACPI tables.
const TOP_RESERVE: u64 = 2 << 20;

/// Assembles the boot sector (GNU as and ld from binutils) and returns its 512 bytes.
pub fn bootsector() -> Result<Vec<u8>> {
    let dir = PathBuf::from("target/xtask/linux-native");
    fs::create_dir_all(&dir)?;
    let (obj, bin) = (dir.join("bootsector.o"), dir.join("bootsector.bin"));
    binutils(Command::new("as").args(["--32", "-o"]).arg(&obj).arg(SOURCE), "assembling the Linux boot sector")?;
    binutils(
        Command::new("ld")
            .args(["-m", "elf_i386", "-Ttext=0x7c00", "-e", "_start", "--oformat", "binary", "-o"])
            .arg(&bin)
            .arg(&obj),
        "linking the Linux boot sector",
    )?;
    let b = fs::read(&bin)?;
    if b.len() != SECTOR || b[510..] != [0x55, 0xaa] {
        bail!("the Linux boot sector is {} bytes, not one signed sector", b.len());
    }
    Ok(b)
}

fn sectors(len: usize) -> usize {
    len.div_ceil(SECTOR)
}

/// The boot disk: `boot` (the assembled sector) with its parameter block filled in, the command
/// line, the bzImage `kernel` and the `initrd`, for a machine of `ram_bytes`. The offsets are
/// those of the parameter block in `linux-bootsector.S`.
pub fn disk(boot: &[u8], kernel: &[u8], initrd: &[u8], cmdline: &str, ram_bytes: u64) -> Result<Vec<u8>> {
    let plan = LoadPlan::new(kernel, ram_bytes).map_err(anyhow::Error::msg).context("the kernel")?;
    if cmdline.len() + 1 > (CMDLINE_MAX_SECTORS * SECTOR).min(plan.cmdline_size as usize + 1) {
        bail!("the command line is {} bytes: too long for the boot sector's room or the kernel", cmdline.len());
    }
    let setup_secs = plan.kernel_offset / SECTOR;
    let pm_secs = sectors(plan.kernel_len);
    let initrd_lba = KERNEL_LBA as usize + sectors(kernel.len());
    let initrd_addr = plan
        .initrd_addr(initrd.len() as u64, ram_bytes.saturating_sub(TOP_RESERVE))
        .map_err(anyhow::Error::msg)
        .context("the initrd")?;
    let fields: [(usize, u64, usize); 9] = [
        (8, KERNEL_LBA as u64, 4),
        (12, setup_secs as u64, 2),
        (16, pm_secs as u64, 4),
        (20, initrd_lba as u64, 4),
        (24, sectors(initrd.len()) as u64, 4),
        (28, initrd.len() as u64, 4),
        (32, initrd_addr, 4),
        (36, CMDLINE_LBA as u64, 4),
        (40, sectors(cmdline.len() + 1) as u64, 2),
    ];
    let mut d = boot.to_vec();
    for (at, value, width) in fields {
        if value >> (8 * width) != 0 {
            bail!("boot parameter at offset {at} ({value:#x}) does not fit {width} bytes");
        }
        d[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
    }
    d.resize(CMDLINE_LBA as usize * SECTOR, 0);
    d.extend_from_slice(cmdline.as_bytes());
    d.resize(KERNEL_LBA as usize * SECTOR, 0);
    d.extend_from_slice(kernel);
    d.resize(initrd_lba * SECTOR, 0);
    d.extend_from_slice(initrd);
    d.resize(d.len().next_multiple_of(CYLINDER), 0);
    Ok(d)
}

/// What a native run produced.
pub struct NativeOutcome {
    /// The REPORT values on the console, in order.
    pub reports: Vec<Value>,
    /// Whether the workload ended the machine through isa-debug-exit with 0.
    pub passed: bool,
    pub detail: String,
    /// The serial log.
    pub serial: PathBuf,
}

/// Boots the kernel and initramfs of `crate::provision::debian::files` on Bochs with `cpus` CPUs and
/// `ram_mib` of RAM, [`crate::provision::debian::CMDLINE`] plus `append`, without the hypervisor.
pub fn run(cpus: u32, ram_mib: u32, append: Option<&str>, timeout_s: u64, echo: bool) -> Result<NativeOutcome> {
    let (_, files) = crate::provision::debian::files(&crate::provision::deps::cache_dir())?;
    let file = |name: &str| files.iter().find(|(n, _)| n == name).map(|(_, b)| b.as_slice());
    let (kernel, initrd) = (file("vmlinuz").context("no kernel")?, file("initramfs").context("no initramfs")?);
    let cmdline = match append {
        Some(a) if !a.trim().is_empty() => format!("{} {}", crate::provision::debian::CMDLINE, a.trim()),
        _ => crate::provision::debian::CMDLINE.to_string(),
    };
    let exclude: Vec<&str> = crate::platform::bochs::LINUX_EXCLUDED_FEATURES.iter().map(|(f, _)| *f).collect();
    let machine =
        Machine { model: crate::platform::bochs::DEFAULT_MODEL, cpus, memory_mib: ram_mib, exclude: &exclude };
    boot(&format!("native-linux-{cpus}"), &machine, kernel, initrd, &cmdline, timeout_s, echo)
}

/// Boots `kernel` with `initrd` and `cmdline` on the project's Bochs as `m` describes, without
/// the hypervisor, until the kernel's userspace ends the machine through isa-debug-exit or
/// `timeout_s` passes.
pub fn boot(
    name: &str,
    m: &Machine,
    kernel: &[u8],
    initrd: &[u8],
    cmdline: &str,
    timeout_s: u64,
    echo: bool,
) -> Result<NativeOutcome> {
    let dir = PathBuf::from(format!("target/xtask/runs/bochs-{name}"));
    fs::create_dir_all(&dir)?;
    let img = dir.join("disk.img");
    let _ = fs::remove_file(dir.join("disk.img.lock"));
    fs::write(&img, disk(&bootsector()?, kernel, initrd, cmdline, (m.memory_mib as u64) << 20)?)?;
    let serial = dir.join("serial.log");
    fs::write(&serial, b"")?;
    let bochs = crate::provision::bochs::binary(&crate::provision::deps::cache_dir())?;
    let mut cmd = crate::platform::bochs::command(&bochs, &dir, &img, &serial, m)?;
    eprintln!(
        "xtask: booting Linux directly on bochs with {} CPUs, no hypervisor (timeout {timeout_s} s, log in {})",
        m.cpus,
        serial.display()
    );
    let out = fs::File::create(dir.join("emulator.out"))?;
    cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
    let start = Instant::now();
    let child = cmd.spawn().with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let (status, timed_out) = crate::platform::supervise::supervise(child, &serial, echo, timeout_s)?;
    let log = String::from_utf8_lossy(&fs::read(&serial)?).into_owned();
    let reports = crate::platform::qemu::reports(&log);
    // isa-debug-exit with 0 ends Bochs with status (0 << 1) | 1 (patch 0001).
    let passed = !timed_out && status == Some(1);
    let detail = if timed_out {
        format!("timed out after {timeout_s} s")
    } else {
        match status {
            Some(1) => "isa-debug-exit: 0".to_string(),
            Some(s) if s & 1 == 1 => format!("isa-debug-exit: code {}", s >> 1),
            s => format!("Bochs exited with {s:?}"),
        }
    };
    eprintln!("xtask: Linux on bochs ({name}) in {:.1} s: {detail}", start.elapsed().as_secs_f64());
    if !passed {
        let lines: Vec<&str> = log.lines().collect();
        for l in &lines[lines.len().saturating_sub(30)..] {
            eprintln!("{l}");
        }
    }
    Ok(NativeOutcome { reports, passed, detail, serial })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal bzImage: 4 setup sectors (setup_sects = 0 means 4), a 64-bit protocol 2.15
    /// header, and `pm` bytes of protected-mode kernel.
    fn bzimage(pm: usize) -> Vec<u8> {
        let mut k = vec![0u8; 5 * SECTOR + pm];
        k[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
        k[0x201] = 0x62; // jump: the header runs to 0x264
        k[0x202..0x206].copy_from_slice(b"HdrS");
        k[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        k[0x211] = 1; // LOADED_HIGH
        k[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        k[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes());
        k[0x234] = 1;
        k[0x236..0x238].copy_from_slice(&1u16.to_le_bytes());
        k[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
        k[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
        k[0x260..0x264].copy_from_slice(&0x200_0000u32.to_le_bytes());
        k
    }

    fn field(d: &[u8], at: usize, width: usize) -> u64 {
        let mut b = [0u8; 8];
        b[..width].copy_from_slice(&d[at..at + width]);
        u64::from_le_bytes(b)
    }

    #[test]
    fn the_disk_holds_each_piece_where_the_parameter_block_says() {
        let mut boot = vec![0u8; SECTOR];
        boot[510..].copy_from_slice(&[0x55, 0xaa]);
        let kernel = bzimage(3000);
        let initrd = vec![7u8; 1000];
        let d = disk(&boot, &kernel, &initrd, "console=ttyS0", 256 << 20).unwrap();
        assert_eq!(d.len() % CYLINDER, 0);
        assert_eq!(&d[510..512], &[0x55, 0xaa], "the signature stays");
        assert_eq!(field(&d, 8, 4), KERNEL_LBA as u64);
        assert_eq!(field(&d, 12, 2), 5, "setup_sects 0 means 4, plus the boot sector");
        assert_eq!(field(&d, 16, 4), sectors(3000) as u64);
        let initrd_lba = field(&d, 20, 4) as usize;
        assert_eq!(&d[initrd_lba * SECTOR..initrd_lba * SECTOR + 1000], &initrd[..]);
        assert_eq!((field(&d, 24, 4), field(&d, 28, 4)), (2, 1000));
        let addr = field(&d, 32, 4);
        assert!(addr >= 0x100_0000 + 0x200_0000, "above the kernel's decompression area");
        assert!(addr + 1000 <= (256 << 20) - TOP_RESERVE, "below the BIOS' tables");
        assert_eq!(addr % 4096, 0);
        let kernel_at = field(&d, 8, 4) as usize * SECTOR;
        assert_eq!(&d[kernel_at..kernel_at + kernel.len()], &kernel[..]);
        let cmd_at = field(&d, 36, 4) as usize * SECTOR;
        assert_eq!(&d[cmd_at..cmd_at + 14], b"console=ttyS0\0");
        assert_eq!(field(&d, 40, 2), 1);
    }

    #[test]
    fn bad_kernels_and_long_command_lines_are_refused() {
        let boot = vec![0u8; SECTOR];
        assert!(disk(&boot, &[0u8; 4096], &[], "", 256 << 20).is_err(), "not a bzImage");
        let long = "x".repeat(2048);
        let e = disk(&boot, &bzimage(100), &[], &long, 256 << 20).unwrap_err();
        assert!(format!("{e:#}").contains("command line"), "{e:#}");
        assert!(disk(&boot, &bzimage(100), &vec![0; 300 << 20], "", 256 << 20).is_err(), "initrd too large");
    }
}
