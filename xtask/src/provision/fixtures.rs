//! Test fixtures built from source in `xtask/tests/fixtures`: a multiboot kernel written in
//! assembly without the project's guest runtime, so `cargo xtask run --kernel` is shown to boot
//! a kernel this project's code did not produce.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Command;

const SRC: &str = "xtask/tests/fixtures/mini-multiboot.S";
const SCRIPT: &str = "xtask/tests/fixtures/mini-multiboot.ld";

/// Assembles and links `mini-multiboot` (ELF32, GNU as and ld from binutils) and returns its path.
pub fn mini_multiboot() -> Result<PathBuf> {
    let dir = PathBuf::from("target/xtask/fixtures");
    std::fs::create_dir_all(&dir)?;
    let obj = dir.join("mini-multiboot.o");
    let out = dir.join("mini-multiboot");
    binutils(Command::new("as").args(["--32", "-o"]).arg(&obj).arg(SRC), "assembling the mini-multiboot fixture")?;
    binutils(
        Command::new("ld").args(["-m", "elf_i386", "--no-warn-rwx-segments", "-T", SCRIPT, "-o"]).arg(&out).arg(&obj),
        "linking the mini-multiboot fixture",
    )?;
    Ok(out)
}

/// Runs `as` or `ld` (Debian's binutils), with its error output in the error.
pub fn binutils(c: &mut Command, what: &str) -> Result<()> {
    let o = c.output().with_context(|| format!("{what}: starting {:?} (Debian's binutils)", c.get_program()))?;
    if !o.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(())
}
