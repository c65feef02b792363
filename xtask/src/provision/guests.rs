//! Guest images: building `guest-tests`, the catalogue of tests with what each expects, and
//! turning `--guest NAME[:vcpus],...` or `--manifest FILE` into the manifest the kernel reads,
//! validated before any emulator starts.

use anyhow::{Context, Result, bail};
use hvcore::bootcfg::BootConfig;
use hvcore::manifest::{Machine, Manifest, VmSpec};
use hvcore::multiboot;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use crate::provision::image::KERNEL_TARGET;

/// A guest test: the result it is written to produce under this hypervisor, its watchdog,
/// manifest keys it always needs, and whether it also means something on QEMU's reference PC
/// (booted there directly; the others check this hypervisor's own behaviour: EPT kills,
/// watchdogs, hypercall budgets, IPI virtualization's rules).
pub struct Guest {
    pub name: &'static str,
    pub expect: &'static str,
    pub timeout_ms: u64,
    pub keys: &'static str,
    pub qemu: bool,
}

const fn g(name: &'static str, expect: &'static str, timeout_ms: u64, keys: &'static str, qemu: bool) -> Guest {
    Guest { name, expect, timeout_ms, keys, qemu }
}

pub const CATALOGUE: &[Guest] = &[
    g("hello", "pass", 30_000, "", true),
    g("memory", "pass", 60_000, "", true),
    g("cpuid-msr", "pass", 30_000, "", true),
    g("escape", "killed", 30_000, "", false),
    g("panic", "fail", 30_000, "", true),
    g("hang", "timeout", 2_000, "", false),
    g("ipi-basic", "pass", 60_000, "", true),
    g("ipi-storm", "pass", 120_000, "", true),
    g("ipiv-rules", "pass", 60_000, "ipiv = on\ndebug_invalid_pid_entry = 3\ntest_hooks = true\n", false),
    g("ipi-bench", "pass", 600_000, "", true),
    g("neighbour", "pass", 60_000, "cmdline = seconds=1\n", true),
    g("hostile-report", "killed", 30_000, "", false),
    g("hostile-exits", "timeout", 2_000, "", false),
    g("hostile-console", "pass", 60_000, "", false),
    g("hostile-hypercall", "pass", 60_000, "", false),
    g("hostile-icr", "pass", 60_000, "", false),
    g("hostile-nmi", "pass", 60_000, "", false),
    g("hostile-apic", "pass", 30_000, "", false),
    g("hostile-sweep", "pass", 120_000, "", false),
    g("hostile-memory", "killed", 30_000, "", false),
    g("hostile-timer", "pass", 30_000, "", false),
    g("hostile-lapic", "pass", 120_000, "", false),
    g("pc-devices", "pass", 60_000, "", true),
    g("acpi", "pass", 30_000, "", true),
    g("timer", "pass", 60_000, "", true),
    g("uart", "pass", 30_000, "", true),
    g("ioapic", "pass", 30_000, "", true),
    g("smp-boot", "pass", 60_000, "", true),
    g("conf-hlt", "pass", 60_000, "", true),
    g("conf-apic", "pass", 60_000, "", true),
    g("conf-cr", "pass", 30_000, "", true),
    g("conf-step", "pass", 30_000, "", true),
    g("conf-cpl0", "pass", 120_000, "", true),
    g("conf-ioapic", "pass", 60_000, "pc_testdev = on\n", true),
    g("conf-realmode", "pass", 30_000, "", true),
    g("conf-task", "pass", 30_000, "", true),
];

/// Whether guest `name` means something booted directly on QEMU.
pub fn runs_on_qemu(name: &str) -> bool {
    CATALOGUE.iter().any(|c| c.name == name && c.qemu)
}

/// Builds every guest (static executables at the ABI's image base) and returns them by name.
pub fn build() -> Result<BTreeMap<String, Vec<u8>>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = PathBuf::from("target/guest");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--package", "guest-tests", "--target", KERNEL_TARGET])
        .arg("--target-dir")
        .arg(&target_dir)
        // Static relocation: guests are loaded at their link address, no relocations needed.
        .env("CARGO_TARGET_X86_64_UNKNOWN_NONE_RUSTFLAGS", "-C relocation-model=static");
    crate::provision::image::cargo_build(&mut cmd, "building the guest tests")?;
    let dir = target_dir.join(KERNEL_TARGET).join("release");
    CATALOGUE
        .iter()
        .map(|Guest { name, .. }| {
            let image = std::fs::read(dir.join(name)).with_context(|| format!("guest {name}"))?;
            check_layout(&image).with_context(|| format!("guest {name} (guest-tests/guest.ld)"))?;
            Ok((name.to_string(), image))
        })
        .collect()
}

/// The multiboot header's addresses (what a loader uses) must cover every loadable byte of the
/// ELF file: a section the linker script forgot would be placed past the header's BSS end and
/// be overwritten by the boot information.
fn check_layout(image: &[u8]) -> Result<()> {
    let plan = multiboot::load::LoadPlan::new(image, 1 << 32).map_err(|e| anyhow::anyhow!("{e}"))?;
    let elf_end = multiboot::load::elf_load_end(image).map_err(|e| anyhow::anyhow!("{e}"))?;
    if elf_end > plan.end {
        bail!("ELF segments end at {elf_end:#x}, past the multiboot header's bss_end_addr {:#x}", plan.end);
    }
    Ok(())
}

/// A `[vm]` section written from a typed VM: `keys` (`key = value` pairs from flags, the
/// catalogue, `+key=value`) applied by hvcore's reader (`VmSpec::set`), so a bad one is refused
/// here with the reader's words, and the text written by `VmSpec::to_section`.
pub fn vm_section<'a>(mut spec: VmSpec, keys: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<String> {
    for (k, v) in keys {
        spec.set(k, v).map_err(|e| anyhow::anyhow!("VM {}: {k} = {v}: {e}", spec.name))?;
    }
    Ok(format!("\n{}", spec.to_section().map_err(|e| anyhow::anyhow!("VM {}: {e}", spec.name))?))
}

/// `key = value` lines (the catalogue's `keys`) as pairs.
fn key_lines(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.trim(), v.trim()))
}

/// `[vm]` sections for `--guest hello:2,escape` (VMs named `<image>-<position>`), each with the
/// `extra` keys (`apic`, `ipiv`, `hlt`, `interrupt_path`).
pub fn manifest_from_list(list: &str, extra: &[(&str, &str)]) -> Result<String> {
    let mut out = String::new();
    for (i, item) in list.split(',').map(str::trim).filter(|s| !s.is_empty()).enumerate() {
        // `name[:vcpus][+key=value]...`: the keys override the catalogue's for this VM.
        let mut parts = item.split('+');
        let head = parts.next().unwrap_or_default();
        let overrides: Vec<(&str, &str)> = parts
            .map(|kv| kv.split_once('=').with_context(|| format!("--guest {item}: `+{kv}` must be `+key=value`")))
            .collect::<Result<_>>()?;
        let (name, vcpus) = match head.split_once(':') {
            Some((n, v)) => {
                (n, v.parse::<u32>().with_context(|| format!("--guest {item}: vCPU count must be a number"))?)
            }
            None => (head, 1),
        };
        let Some(Guest { expect, timeout_ms: timeout, keys: always, .. }) = CATALOGUE.iter().find(|c| c.name == name)
        else {
            let known: Vec<_> = CATALOGUE.iter().map(|c| c.name).collect();
            bail!("--guest: unknown guest `{name}` (known: {})", known.join(", "));
        };
        let mut spec = VmSpec::new(0);
        (spec.name, spec.kernel, spec.vcpus, spec.timeout_ms) =
            (format!("{name}-{i}"), name.to_string(), vcpus, *timeout);
        let keys =
            [("expect", *expect)].into_iter().chain(key_lines(always)).chain(extra.iter().copied()).chain(overrides);
        out += &vm_section(spec, keys).with_context(|| format!("--guest {item}"))?;
    }
    Ok(out)
}

/// A ramdisk name for a file: its file name, with anything but `A-Z a-z 0-9 . - _` as `_`.
fn ramdisk_name(path: &std::path::Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    name.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect()
}

/// What `--kernel FILE [--append ARGS] [--module FILE]... [--initrd FILE] [--vcpus N]` asks for.
pub struct KernelVm<'a> {
    pub kernel: &'a std::path::Path,
    pub append: Option<&'a str>,
    pub modules: &'a [PathBuf],
    pub initrd: Option<&'a std::path::Path>,
    pub vcpus: u32,
    /// The watchdog unless `--watchdog-ms` (in `extra`) says otherwise.
    pub watchdog_ms: u64,
}

/// RAM of a `--kernel` VM: QEMU's default `-m` (kvm-unit-tests load at 4 MiB and expect it).
pub const KERNEL_RAM_MIB: u32 = 128;
/// The console budget of a `--kernel` VM, bytes per second (bursts of four seconds' worth):
/// a test kernel's verdict is its console, and a budget that dropped lines would leave it
/// unknown (kvm-unit-tests' tscdeadline_latency prints a line per measurement).
pub const KERNEL_CONSOLE_BYTES_PER_S: u64 = 1 << 20;
/// RAM of a `--kernel` Linux bzImage: the decompressor works from its preferred address up to
/// init_size (64 MiB for Debian's kernel).
pub const BZIMAGE_RAM_MIB: u32 = 256;

/// The `[vm]` section and the files for `--kernel`: one VM called `kernel`, expected to pass
/// (isa-debug-exit with 0). A Linux bzImage (its setup header says so) is booted by the Linux
/// boot protocol with the initrd; anything else as a multiboot kernel with the modules, its
/// command line `"<file name> <append>"` as QEMU and GRUB give it (the kernel adds the name).
/// `extra` keys (`--apic`, `--ram`, `--watchdog-ms`, ...) come last and win.
pub fn kernel_vm(
    k: &KernelVm<'_>,
    extra: &[(&str, &str)],
) -> Result<(String, Vec<crate::provision::image::GuestImage>)> {
    let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let image = read(k.kernel)?;
    let bzimage = image.get(0x202..0x206) == Some(b"HdrS".as_slice());
    if bzimage && !k.modules.is_empty() {
        bail!("--module: {} is a Linux bzImage; give it an --initrd", k.kernel.display());
    }
    if !bzimage && k.initrd.is_some() {
        bail!("--initrd: {} is not a Linux bzImage; a multiboot kernel takes --module", k.kernel.display());
    }
    let mut files = vec![(ramdisk_name(k.kernel), image)];
    if let Some(i) = k.initrd {
        files.push((ramdisk_name(i), read(i)?));
    }
    for m in k.modules {
        let name = ramdisk_name(m);
        if files.iter().any(|(n, _)| *n == name) {
            bail!("--module {}: a file named {name} is already packed", m.display());
        }
        files.push((name, read(m)?));
    }
    let cmdline = k.append.unwrap_or("");
    if cmdline.contains(['\n', '#', '"']) {
        bail!("--append: the command line may not hold a newline, `#` or `\"` (the manifest syntax), got {cmdline:?}");
    }
    let ram = if bzimage { BZIMAGE_RAM_MIB } else { KERNEL_RAM_MIB };
    let mut spec = VmSpec::new(0);
    spec.name = "kernel".into();
    if bzimage {
        spec.linux = files[0].0.clone();
        spec.initrd = files.get(1).map(|(n, _)| n.clone()).unwrap_or_default();
    } else {
        spec.kernel = files[0].0.clone();
        spec.modules = files[1..].iter().map(|(n, _)| n.clone()).collect();
    }
    spec.vcpus = k.vcpus;
    spec.cmdline = cmdline.to_string();
    // QEMU's defaults; a flag's key (`extra`, applied after) wins. Alone in its run, the VM has
    // no neighbour for the console budget to protect, and a test kernel's verdict is its console.
    (spec.ram_mib, spec.timeout_ms, spec.console_bytes_per_second) = (ram, k.watchdog_ms, KERNEL_CONSOLE_BYTES_PER_S);
    Ok((vm_section(spec, extra.iter().copied())?, files))
}

/// The files a manifest names that are not catalogue kernels: `kernel = PATH`, `modules = PATH,
/// ...`, `linux = PATH`, `initrd = PATH` read from `base` (the manifest's folder) unless
/// absolute, and packed into the ramdisk under the name as written, which the kernel looks up
/// (and a multiboot kernel sees first on its command line, as QEMU gives its `-kernel` path).
/// A name that is neither is refused here, before anything boots.
pub fn manifest_files(
    config: &str,
    base: &std::path::Path,
    catalogue: &BTreeMap<String, Vec<u8>>,
) -> Result<Vec<crate::provision::image::GuestImage>> {
    let (_, manifest) = BootConfig::parse(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out: Vec<crate::provision::image::GuestImage> = Vec::new();
    for vm in &manifest.vms {
        let named = [("kernel", &vm.kernel), ("linux", &vm.linux), ("initrd", &vm.initrd)]
            .into_iter()
            .chain(vm.modules.iter().map(|m| ("modules", m)));
        for (key, name) in named {
            if name.is_empty() || catalogue.contains_key(name.as_str()) || out.iter().any(|(n, _)| n == name) {
                continue;
            }
            let path = base.join(name);
            if !path.is_file() {
                bail!(
                    "VM `{}`: {key} `{name}` is neither a test kernel ({}) nor a file ({} does not exist)",
                    vm.name,
                    catalogue.keys().cloned().collect::<Vec<_>>().join(", "),
                    path.display()
                );
            }
            let data =
                std::fs::read(&path).with_context(|| format!("VM `{}`: reading {key} {}", vm.name, path.display()))?;
            out.push((name.clone(), data));
        }
    }
    Ok(out)
}

/// Parses and validates the config text as the kernel will, against `cpus` CPUs and
/// `memory_mib` of machine memory, with the images at hand. Errors name the problem.
pub fn validate(config: &str, images: &BTreeMap<String, Vec<u8>>, cpus: u32, memory_mib: u32) -> Result<Manifest> {
    let (_, mut manifest) = BootConfig::parse(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let files = |name: &str| images.get(name).map(Vec::as_slice);
    let check = |spec: &hvcore::manifest::VmSpec| spec.check_boot(&files);
    // The kernel keeps some memory for itself (heap, tables, trampoline); see its prepare_vms.
    let budget = (memory_mib as u64).saturating_sub(64);
    let machine = Machine { cpus, ram_budget_mib: budget, check_boot: &check };
    manifest.validate(&machine).map_err(|e| anyhow::anyhow!("manifest refused: {e}"))?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_lists_become_vm_sections() {
        let m = manifest_from_list("hello:2, escape", &[("apic", "x2apic")]).unwrap();
        let (_, parsed) = BootConfig::parse(&m).unwrap();
        assert_eq!(parsed.vms.len(), 2);
        assert_eq!((parsed.vms[0].name.as_str(), parsed.vms[0].vcpus), ("hello-0", 2));
        assert_eq!(parsed.vms[1].expect.as_str(), "killed");
        assert_eq!(parsed.vms[1].apic.as_str(), "x2apic");
        assert!(manifest_from_list("nope", &[]).unwrap_err().to_string().contains("unknown guest `nope`"));
        assert!(manifest_from_list("hello:x", &[]).is_err());
        let m = manifest_from_list("hostile-apic+cmdline=end=fetch+expect=killed", &[]).unwrap();
        let (_, parsed) = BootConfig::parse(&m).unwrap();
        assert_eq!((parsed.vms[0].cmdline.as_str(), parsed.vms[0].expect.as_str()), ("end=fetch", "killed"));
        assert!(manifest_from_list("hello+oops", &[]).unwrap_err().to_string().contains("+key=value"));
    }

    #[test]
    fn manifest_paths_outside_the_catalogue_are_packed_as_written() {
        let dir = std::env::temp_dir().join(format!("ipiv-hv-manifest-files-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("k")).unwrap();
        std::fs::write(dir.join("k/foreign.flat"), b"kernel bytes").unwrap();
        std::fs::write(dir.join("env"), b"module bytes").unwrap();
        let catalogue = BTreeMap::from([("hello".to_string(), Vec::new())]);
        let config = "[vm]\nname = a\nkernel = k/foreign.flat\nmodules = env, env\n[vm]\nname = b\nkernel = hello\n";
        let files = manifest_files(config, &dir, &catalogue).unwrap();
        assert_eq!(
            files,
            vec![("k/foreign.flat".into(), b"kernel bytes".to_vec()), ("env".into(), b"module bytes".to_vec())]
        );
        let e = manifest_files("[vm]\nname = a\nkernel = nope.elf\n", &dir, &catalogue).unwrap_err().to_string();
        assert!(e.contains("kernel `nope.elf` is neither a test kernel (hello) nor a file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn validation_refuses_bad_manifests_before_launch() {
        let images = BTreeMap::from([("hello".to_string(), b"not an elf".to_vec())]);
        let e = validate(&manifest_from_list("hello", &[]).unwrap(), &images, 4, 512).unwrap_err();
        assert!(e.to_string().contains("kernel `hello`: no multiboot header"), "{e}");
        let e = validate("[vm]\nname = a\nkernel = hello\nvcpus = 8\n", &images, 4, 512).unwrap_err();
        assert!(e.to_string().contains("8 vCPUs but the machine has 4 CPUs"), "{e}");
        let e = validate("[vm]\nname = a\nkernel = hello\nbogus = 1\n", &images, 4, 512).unwrap_err();
        assert!(e.to_string().contains("unknown VM key `bogus`"), "{e}");
    }
}
