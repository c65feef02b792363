//! Where a run goes: the one entry every command boots through (`run`, `test`, `bench`,
//! `conformance`), by its platform and what it boots.

use anyhow::{Result, bail};

use super::spec::{Outcome, Platform, RunArgs};
use super::{direct, nested, qemu};

pub fn run(args: &RunArgs) -> Result<Outcome> {
    if args.cpus == 0 || args.cpus > 255 {
        bail!("--cpus must be between 1 and 255");
    }
    match args.platform {
        // QEMU as the reference PC: the guest kernels themselves, no hypervisor underneath.
        Platform::Qemu if args.direct || args.guest.is_some() || args.kernel.is_some() || args.linux => qemu::run(args),
        Platform::NestedKvm => nested::run(args),
        _ => direct::run(args),
    }
}
