//! `cargo xtask`: builds the hypervisor, provisions the project's Bochs, and runs and tests
//! the hypervisor under QEMU and Bochs.

mod bench;
mod conformance;
mod fuzz;
mod modgraph;
mod platform;
mod progress;
mod provision;
mod suite;
mod summary;

use anyhow::Result;

use clap::{Parser, Subcommand};
use platform::spec::{self, Platform, RunArgs};
use provision::{apt, deps, image};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run and test the IPIv hypervisor")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot the hypervisor on an emulator (or KVM) and report its HV-SUMMARY.
    Run(RunArgs),
    /// Run every test: host unit tests, QEMU boots, Bochs with VMX.
    Test(suite::TestArgs),
    /// Measure IPI round trips: APIC modes x {native, ipiv-on, ipiv-off} x targets.
    Bench(bench::args::BenchArgs),
    /// Run kvm-unit-tests' x86 binaries under this hypervisor on every interrupt path and APIC
    /// mode (and under KVM with --peer kvm), as their own harness runs them.
    Conformance(conformance::plan::ConformanceArgs),
    /// Build a bootable disk image for real hardware (halts at the end instead of exiting).
    /// Takes the run flags that shape the image (--uefi, --cpus, --memory, --guest, --manifest,
    /// --log-level).
    Image {
        #[command(flatten)]
        args: RunArgs,
        /// Where to write the image.
        #[arg(long, default_value = "target/hypervisor.img")]
        out: PathBuf,
    },
    /// Fuzz every parser fed by a guest or a user (cargo-fuzz, installed on first use) and
    /// print executions per target; fails on any finding, naming the input that caused it.
    Fuzz(fuzz::FuzzArgs),
    /// Build (or find in the cache) the project's Bochs and print its path.
    Bochs,
    /// Print the module graph of hvcore, the kernel and xtask, drawn from their imports, by
    /// layer (top-level modules; every file with --files); fails on an import cycle.
    Graph {
        /// One line per file instead of per top-level module.
        #[arg(long)]
        files: bool,
    },
    /// List every dependency (toolchain, Debian packages, Bochs' source and build, OVMF) as
    /// found, installed now or missing, with how to get what is missing.
    Doctor {
        /// Install, fetch and build what is missing (apt as root or through `sudo -n`).
        #[arg(long)]
        fix: bool,
    },
}

fn main() {
    // The error chain, without a backtrace: these are messages for the person at the terminal.
    if let Err(e) = xtask() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn xtask() -> Result<()> {
    let root = workspace_root();
    // Paths on the command line are the user's, relative to where they ran the command; the
    // rest of xtask works from the workspace root.
    let here = std::env::current_dir()?;
    std::env::set_current_dir(&root)?;
    let mut cli = Cli::parse();
    user_paths(&mut cli.cmd, &here);
    // Everything the command needs from the machine, before anything else runs.
    match &cli.cmd {
        Cmd::Run(args) => deps::ensure(&needs(args.platform, args.uefi))?,
        Cmd::Test(_) => deps::ensure(deps::ALL)?,
        Cmd::Bench(args) => {
            let mut n = needs(args.platform, false);
            // Linux booted directly on Bochs (--linux's native baseline, KVM's host) starts
            // from a boot sector assembled with GNU as and ld.
            if args.linux || args.peer.is_some() {
                n.push(deps::Need::Fixtures);
            }
            deps::ensure(&n)?
        }
        Cmd::Bochs => deps::ensure(&[deps::Need::Bochs])?,
        Cmd::Conformance(args) => {
            let mut n = vec![deps::Need::Bochs];
            if args.peer.is_some() {
                n.push(deps::Need::Fixtures);
            }
            deps::ensure(&n)?
        }
        Cmd::Image { .. } | Cmd::Doctor { .. } | Cmd::Fuzz(_) | Cmd::Graph { .. } => {}
    }
    match cli.cmd {
        Cmd::Run(args) => {
            let outcome = platform::launch::run(&args)?;
            if args.kernel.is_some() {
                // What a kvm-unit-tests-style kernel said: its checks and its figures.
                let log = String::from_utf8_lossy(&std::fs::read(&outcome.serial)?).into_owned();
                if let Some(line) = conformance::kut::verdict(conformance::kut::guest_lines(&log, "kernel")).one_line()
                {
                    eprintln!("xtask: the kernel says: {line}");
                }
            }
            std::process::exit(if outcome.accepted { 0 } else { 1 })
        }
        Cmd::Test(args) => suite::run_all(&args),
        Cmd::Bench(args) => {
            let targets_met = bench::run(&args)?;
            std::process::exit(if targets_met { 0 } else { 1 })
        }
        Cmd::Image { args, out } => {
            let (config, guests) = spec::compose(&args, "halt")?;
            let kernel = image::build_kernel()?;
            image::make_image(&kernel, &config, &guests, args.uefi, &out)?;
            println!("{}", out.display());
            Ok(())
        }
        Cmd::Fuzz(args) => fuzz::run(&args),
        Cmd::Graph { files } => modgraph::run(files),
        Cmd::Conformance(args) => {
            let ok = conformance::run(&args)?;
            std::process::exit(if ok { 0 } else { 1 })
        }
        Cmd::Bochs => {
            println!("{}", provision::bochs::binary(&deps::cache_dir())?.display());
            Ok(())
        }
        Cmd::Doctor { fix } => {
            let cache = deps::cache_dir();
            let privilege = fix.then(apt::Privilege::detect);
            let items = deps::survey(deps::ALL, &cache, privilege)?;
            print!("{}", deps::render(&items, &cache));
            let missing = items.iter().filter(|i| i.state == deps::State::Missing).count();
            if missing > 0 {
                println!("{missing} missing: `cargo xtask doctor --fix` installs them (apt needs root or `sudo -n`)");
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// Makes the relative paths of `cmd` relative to `here`, the directory the command ran in: an
/// input that exists there, and every output.
fn user_paths(cmd: &mut Cmd, here: &std::path::Path) {
    let input = |p: &mut PathBuf| {
        if p.is_relative() && here.join(&*p).exists() {
            *p = here.join(&*p);
        }
    };
    let output = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = here.join(&*p);
        }
    };
    match cmd {
        Cmd::Run(a) | Cmd::Image { args: a, .. } => {
            a.kernel
                .iter_mut()
                .chain(a.initrd.iter_mut())
                .chain(a.manifest.iter_mut())
                .chain(&mut a.modules)
                .for_each(input);
            a.json.iter_mut().for_each(output);
            if let Cmd::Image { out, .. } = cmd {
                output(out);
            }
        }
        Cmd::Bench(a) => a.json.iter_mut().chain(a.plot.iter_mut()).for_each(output),
        Cmd::Conformance(a) => {
            a.kut.iter_mut().for_each(input);
            a.json.iter_mut().for_each(output);
        }
        Cmd::Fuzz(a) => a.json.iter_mut().for_each(output),
        Cmd::Test(_) | Cmd::Bochs | Cmd::Graph { .. } | Cmd::Doctor { .. } => {}
    }
}

fn needs(platform: Platform, uefi: bool) -> Vec<deps::Need> {
    match platform {
        Platform::Bochs => vec![deps::Need::Bochs],
        Platform::Qemu | Platform::QemuKvm if uefi => vec![deps::Need::Qemu, deps::Need::Uefi],
        Platform::Qemu | Platform::QemuKvm => vec![deps::Need::Qemu],
        // KVM's host boots from a boot sector assembled with GNU as and ld.
        Platform::NestedKvm => vec![deps::Need::Bochs, deps::Need::Fixtures],
    }
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}
