//! The project's Bochs as a machine: the CPU models it has, what a run's bochsrc says, and the
//! command that boots a disk image on it (built by `provision::bochs`).

use anyhow::{Result, bail};
use std::fs;
use std::path::Path;
use std::process::Command;

use crate::provision::bochs::{BIOS, VGABIOS};

/// Bochs' emulated instructions per emulated second (`cpu: ips=`): its TSC ticks once per
/// instruction per CPU, so this is the TSC's rate in emulated time.
pub const IPS: u64 = 50_000_000;

/// CPU features a Linux kernel booted directly on Bochs must not see, and why (the bochsrc's
/// `exclude_features`; the third model bug, IA32_MISC_ENABLE, is fixed by patch 0018). Under
/// the hypervisor the CPUID filter hides them from guests anyway (hvcore::exits::cpuid), so
/// the Linux benchmark runs every configuration, VMs included, on this same model.
pub const LINUX_EXCLUDED_FEATURES: &[(&str, &str)] = &[
    // The model reports AMX without XFD: Linux 6.1 keeps XTILECFG but drops XTILEDATA from
    // XCR0, and its XSETBV faults in fpu__init_cpu_xstate.
    ("amx", "AMX without XFD: XSETBV faults in fpu__init_cpu_xstate"),
    ("amx_int8", "needs amx"),
    ("amx_bf16", "needs amx"),
    // With CR4.LA57 set, the first SMI makes Bochs panic at RSM (its CR4 consistency check).
    ("la57", "with 5-level paging on, Bochs panics at RSM after the first SMI"),
    // Not a bug: the hypervisor hides MONITOR/MWAIT, so its Linux guests idle with HLT; a
    // kernel booted directly would idle in MWAIT, where a wake-up is a store to the polled
    // flag rather than an IPI, and the native baseline would measure another idle path.
    ("mwait", "the same idle path as in the VMs: HLT, woken by IPIs"),
];

/// The CPU model every run uses unless told otherwise (`--cpu-model`): the one with IPIv.
pub const DEFAULT_MODEL: &str = "sapphire_rapids";

/// The emulated machine.
#[derive(Clone, Copy, Debug)]
pub struct Machine<'a> {
    /// Bochs' CPU model (`bochs -help cpu` lists them).
    pub model: &'a str,
    pub cpus: u32,
    pub memory_mib: u32,
    /// CPU features hidden from the model (Bochs' feature names).
    pub exclude: &'a [&'a str],
}

/// The Intel models of the project's Bochs that have VMX (Bochs 3.0 `cpu/cpudb/intel/*.cc`:
/// those that call `enable_cpu_extension(BX_ISA_VMX)`), oldest first, with whether they have
/// long mode (`BX_ISA_LONG_MODE`). `cargo xtask test --filter cpu-model` runs each.
pub const INTEL_VMX_MODELS: [(&str, bool); 14] = [
    ("core_duo_t2400_yonah", false),
    ("core2_penryn_t9600", true),
    ("corei5_lynnfield_750", true),
    ("corei5_arrandale_m520", true),
    ("corei7_sandy_bridge_2600k", true),
    ("corei7_ivy_bridge_3770k", true),
    ("corei7_haswell_4770", true),
    ("broadwell_ult", true),
    ("corei7_skylake_x", true),
    ("corei3_cnl", true),
    ("corei7_icelake_u", true),
    ("tigerlake", true),
    ("sapphire_rapids", true),
    ("arrow_lake", true),
];

/// Bochs' models without long mode (the same sources): this x86-64 hypervisor cannot boot on
/// them (the bootloader's switch to long mode would triple-fault), so xtask refuses them.
pub const MODELS_WITHOUT_LONG_MODE: [&str; 11] = [
    "i386",
    "i486dx4",
    "pentium",
    "pentium_mmx",
    "amd_k6_2_chomper",
    "athlon_xp",
    "p2_klamath",
    "p3_katmai",
    "p4_willamette",
    "core_duo_t2400_yonah",
    "atom_n270",
];

/// The CPU models `bochs` offers, as `bochs -help cpu` lists them.
pub fn models(bochs: &Path) -> Result<Vec<String>> {
    let out = Command::new(bochs).args(["-help", "cpu"]).env("BXSHARE", "/usr/share/bochs").output()?;
    // The list goes to stderr in this build; read both.
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let models = parse_models(&text);
    if models.is_empty() {
        bail!("`{} -help cpu` listed no CPU models", bochs.display());
    }
    Ok(models)
}

fn parse_models(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Supported CPU models"))
        .skip(1)
        .map(str::trim)
        .skip_while(|l| l.is_empty())
        .take_while(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The command line that boots `img` on the project's Bochs as `m` describes, with its bochsrc
/// in `dir`. An unknown CPU model is refused here, with the list, before anything starts.
pub fn command(bochs: &Path, dir: &Path, img: &Path, serial: &Path, m: &Machine) -> Result<Command> {
    for f in [BIOS, VGABIOS] {
        if !Path::new(f).is_file() {
            bail!("{f} is missing: install Debian's bochsbios and vgabios packages");
        }
    }
    if m.model != DEFAULT_MODEL {
        let known = models(bochs)?;
        if !known.iter().any(|k| k == m.model) {
            bail!("--cpu-model {}: the project's Bochs has no such CPU model; it offers {}", m.model, known.join(", "));
        }
        if MODELS_WITHOUT_LONG_MODE.contains(&m.model) {
            bail!(
                "--cpu-model {}: this CPU model has no long mode (x86-64), and the hypervisor is an x86-64 kernel: \
                 it cannot boot there",
                m.model
            );
        }
    }
    let rc = bochsrc(img, serial, &dir.join("bochs.log"), m);
    let rc_path = dir.join("bochsrc");
    fs::write(&rc_path, rc)?;
    let mut c = Command::new(bochs);
    // -q skips the start menu; without it Bochs reads stdin and exits 0 without running.
    c.arg("-q").arg("-f").arg(&rc_path).env("BXSHARE", "/usr/share/bochs");
    Ok(c)
}

fn bochsrc(img: &Path, serial: &Path, log: &Path, m: &Machine) -> String {
    let abs = |p: &Path| fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string();
    let exclude =
        if m.exclude.is_empty() { String::new() } else { format!(", exclude_features=\"{}\"", m.exclude.join(" ")) };
    format!(
        "# written by cargo xtask\n\
         display_library: nogui\n\
         romimage: file={BIOS}, options=fastboot\n\
         vgaromimage: file={VGABIOS}\n\
         cpu: model={model}, count={cpus}, ips={IPS}, quantum=16, reset_on_triple_fault=0{exclude}\n\
         memory: guest={memory_mib}, host={memory_mib}\n\
         pci: enabled=1, chipset=i440fx\n\
         vga: extension=vbe\n\
         ata0-master: type=disk, path={img}, mode=flat\n\
         boot: disk\n\
         com1: enabled=1, mode=file, dev={serial}\n\
         clock: sync=none\n\
         log: {log}\n\
         panic: action=fatal\n\
         error: action=report\n\
         info: action=ignore\n",
        img = abs(img),
        serial = abs(serial),
        log = log.display(),
        model = m.model,
        cpus = m.cpus,
        memory_mib = m.memory_mib,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bochsrc_names_the_vmx_model_and_files() {
        let m = Machine { model: DEFAULT_MODEL, cpus: 4, memory_mib: 512, exclude: &[] };
        let rc = bochsrc(Path::new("/x/disk.img"), Path::new("/x/serial.log"), Path::new("/x/b.log"), &m);
        assert!(rc.contains("cpu: model=sapphire_rapids, count=4,"));
        assert!(rc.contains("path=/x/disk.img"));
        assert!(rc.contains("com1: enabled=1, mode=file, dev=/x/serial.log"));
        assert!(rc.contains("memory: guest=512, host=512"));
        let m = Machine { model: "corei7_haswell_4770", exclude: &["la57", "mwait"], ..m };
        let rc = bochsrc(Path::new("/x/disk.img"), Path::new("/x/serial.log"), Path::new("/x/b.log"), &m);
        assert!(rc.contains("cpu: model=corei7_haswell_4770, count=4,"));
        assert!(rc.contains("exclude_features=\"la57 mwait\""));
    }

    #[test]
    fn model_tables_agree() {
        for (m, long_mode) in INTEL_VMX_MODELS {
            assert_eq!(MODELS_WITHOUT_LONG_MODE.contains(&m), !long_mode, "{m}");
        }
        assert!(INTEL_VMX_MODELS.iter().any(|(m, _)| *m == DEFAULT_MODEL));
    }

    #[test]
    fn the_model_list_is_read_from_bochs_help() {
        let help = "Supported CPU models:\n\ni386\npentium\ncorei7_haswell_4770\nsapphire_rapids\n\n00000000000i[SIM ] quit_sim\n";
        assert_eq!(parse_models(help), ["i386", "pentium", "corei7_haswell_4770", "sapphire_rapids"]);
        assert!(parse_models("no list").is_empty());
    }
}
