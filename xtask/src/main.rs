//! `cargo xtask`: builds the hypervisor, provisions the project's Bochs, and runs and tests
//! the hypervisor under QEMU and Bochs.

mod bench;
mod bochs;
mod guests;
mod image;
mod plot;
mod run;
mod summary;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};
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
    Run(run::RunArgs),
    /// Run every test: host unit tests, QEMU boots, Bochs with VMX.
    Test(test::TestArgs),
    /// Measure IPI round trips: APIC modes x {native, ipiv-on, ipiv-off} x targets.
    Bench(bench::BenchArgs),
    /// Build a bootable disk image for real hardware (halts at the end instead of exiting).
    /// Takes the run flags that shape the image (--uefi, --cpus, --memory, --guest, --manifest,
    /// --log-level).
    Image {
        #[command(flatten)]
        args: run::RunArgs,
        /// Where to write the image.
        #[arg(long, default_value = "target/hypervisor.img")]
        out: PathBuf,
    },
    /// Build (or find in the cache) the project's Bochs and print its path.
    Bochs,
}

fn main() -> Result<()> {
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match Cli::parse().cmd {
        Cmd::Run(args) => {
            let outcome = run::run(&args)?;
            std::process::exit(if outcome.accepted { 0 } else { 1 })
        }
        Cmd::Test(args) => test::run_all(&args),
        Cmd::Bench(args) => {
            let targets_met = bench::run(&args)?;
            std::process::exit(if targets_met { 0 } else { 1 })
        }
        Cmd::Image { args, out } => {
            let (config, guests) = run::compose(&args, "halt")?;
            let kernel = image::build_kernel()?;
            image::make_image(&kernel, &config, &guests, args.uefi, &out)?;
            println!("{}", out.display());
            Ok(())
        }
        Cmd::Bochs => {
            println!("{}", bochs::provision()?.display());
            Ok(())
        }
    }
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}
