//! The hypervisor booted straight on an emulator (`--platform bochs`, `qemu`, `qemu-kvm`): one
//! disk image with the kernel and its guests, the emulator supervised, the run judged by its
//! HV-SUMMARY line (`spec::judge`).

use anyhow::{Context, Result, bail};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use super::bochs;
use super::spec::{Judged, Outcome, Platform, RunArgs, compose, judge};
use super::supervise::{print_tail, supervise};
use crate::provision::{deps, image};

pub fn run(args: &RunArgs) -> Result<Outcome> {
    if args.platform != Platform::Bochs && args.cpu_model != bochs::DEFAULT_MODEL {
        bail!("--cpu-model chooses the project's Bochs' CPU model: use it with --platform bochs or nested-kvm");
    }
    if args.uefi && args.platform == Platform::Bochs {
        bail!("--uefi needs a QEMU platform: the project's Bochs boots BIOS images");
    }
    let (config, guests) = compose(args, "debug-port")?;
    let dir = PathBuf::from("target/xtask/runs").join(args.slug());
    fs::create_dir_all(&dir)?;
    let kernel = image::build_kernel()?;
    let img = dir.join("disk.img");
    // Bochs locks its disk with `<image>.lock` and leaves it behind when killed on a timeout;
    // the image is rebuilt for every run, so a lock left here is stale.
    let _ = fs::remove_file(dir.join("disk.img.lock"));
    image::make_image(&kernel, &config, &guests, args.uefi, &img)?;

    let serial = dir.join("serial.log");
    let _ = fs::remove_file(&serial);
    fs::write(&serial, b"")?;
    let mut cmd = match args.platform {
        Platform::Bochs => {
            let bochs = crate::provision::bochs::binary(&deps::cache_dir())?;
            let m = bochs::Machine {
                model: &args.cpu_model,
                cpus: args.cpus,
                memory_mib: args.memory,
                exclude: &args.bochs_exclude,
            };
            bochs::command(&bochs, &dir, &img, &serial, &m)?
        }
        Platform::Qemu | Platform::QemuKvm => qemu_command(args, &img, &serial)?,
        Platform::NestedKvm => bail!("--platform nested-kvm boots through platform::nested"),
    };
    eprintln!(
        "xtask: booting on {}{} with {} CPUs (timeout {} s, log in {})",
        args.platform.name(),
        if args.uefi { " (UEFI)" } else { "" },
        args.cpus,
        args.timeout,
        serial.display()
    );
    let emu_out = fs::File::create(dir.join("emulator.out"))?;
    cmd.stdin(Stdio::null()).stdout(emu_out.try_clone()?).stderr(emu_out);
    let start = Instant::now();
    let child = cmd.spawn().with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let (exit_status, timed_out) = supervise(child, &serial, !args.quiet, args.timeout)?;
    let elapsed = start.elapsed();
    let serial_log = String::from_utf8_lossy(&fs::read(&serial)?).into_owned();

    let Judged { summary, result, accepted, problems } =
        judge(args, &serial_log, exit_status, timed_out, &format!("{} s", args.timeout));

    if let (Some(path), Some(s)) = (&args.json, &summary) {
        fs::write(path, serde_json::to_string_pretty(s)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let verdict = match result {
        Some(r) => r.as_str(),
        None => "no result",
    };
    eprintln!(
        "xtask: {} in {:.1} s: {verdict}{}",
        args.platform.name(),
        elapsed.as_secs_f64(),
        summary.as_ref().and_then(|s| s.reason.as_deref()).map(|r| format!(" ({r})")).unwrap_or_default()
    );
    if !accepted {
        for p in &problems {
            eprintln!("xtask: {p}");
        }
        if !problems.is_empty() || !args.quiet {
            print_tail(&serial_log, 40);
            let emu = fs::read_to_string(dir.join("emulator.out")).unwrap_or_default();
            if !emu.trim().is_empty() {
                eprintln!("--- emulator output (tail) ---");
                print_tail(&emu, 15);
            }
        }
    }
    Ok(Outcome { summary, exit_status, timed_out, accepted, serial })
}

fn qemu_command(args: &RunArgs, img: &Path, serial: &Path) -> Result<Command> {
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-machine", "q35", "-m"]).arg(format!("{}M", args.memory));
    c.arg("-smp").arg(args.cpus.to_string());
    c.args(["-display", "none", "-monitor", "none", "-no-reboot"]);
    c.arg("-serial").arg(format!("file:{}", serial.display()));
    c.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    c.arg("-drive").arg(format!("format=raw,file={}", img.display()));
    if args.uefi {
        c.arg("-bios")
            .arg(deps::ovmf().context("OVMF firmware not found (install Debian's ovmf package or set OVMF=path)")?);
    }
    if args.platform == Platform::QemuKvm {
        if !Path::new("/dev/kvm").exists() {
            bail!("--platform qemu-kvm needs /dev/kvm (a host with VT-x and KVM, nested VMX for L1 VMX)");
        }
        c.args(["-enable-kvm", "-cpu", "host"]);
    }
    Ok(c)
}
