//! The boot configuration that xtask puts in the bootloader ramdisk (global keys and the
//! `[vm]` sections of the manifest).
//!
//! Format: one `key = value` per line, `#` starts a comment. Unknown keys and bad values are
//! errors, so a typo is reported instead of silently ignored. Booting without a ramdisk (real
//! hardware from a plain image) gives [`BootConfig::default`].

use alloc::format;
use alloc::string::String;
use core::str::FromStr;
use log::LevelFilter;

use crate::manifest::{Manifest, VmSpec};

/// How the run ends once the summary is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitMode {
    /// Write the status to I/O port 0xf4 (QEMU isa-debug-exit, the project's Bochs patch).
    DebugPort,
    /// Halt every CPU (real hardware).
    Halt,
}

/// A deliberate fault, to prove that faults are reported and fail the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultInjection {
    None,
    /// The first application processor reads an unmapped address.
    ApPageFault,
    /// The bootstrap processor reads an unmapped address.
    BspPageFault,
    /// The bootstrap processor panics.
    BspPanic,
    /// vCPU 0 of every VM starts with an invalid guest state (RFLAGS bit 1 clear), to show how
    /// a VM-entry failure is reported.
    BadGuestState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootConfig {
    pub log_level: LevelFilter,
    pub exit: ExitMode,
    pub fault: FaultInjection,
    /// Use the host APIC in xAPIC mode even where x2APIC is available (for native baselines
    /// in both modes).
    pub host_xapic: bool,
    /// Iterations of the native IPI round trip (CPU 0 → CPU 1) run before any VM; 0 = none.
    pub native_bench: u32,
    /// The native round trip's target halts (HLT) instead of spinning.
    pub native_halt: bool,
}

impl Default for BootConfig {
    fn default() -> Self {
        Self {
            log_level: LevelFilter::Info,
            exit: ExitMode::Halt,
            fault: FaultInjection::None,
            host_xapic: false,
            native_bench: 0,
            native_halt: false,
        }
    }
}

/// A configuration error: the 1-based line and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub line: usize,
    pub message: String,
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "boot config line {}: {}", self.line, self.message)
    }
}

impl BootConfig {
    /// Parses the whole config file: global keys first, then one `[vm]` section per VM. The
    /// manifest is only parsed here; [`Manifest::validate`] checks it against the machine.
    pub fn parse(text: &str) -> Result<(Self, Manifest), ConfigError> {
        let mut cfg = Self::default();
        let mut manifest = Manifest::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let err = |message: String| ConfigError { line: i + 1, message };
            if line.starts_with('[') {
                match line {
                    "[vm]" => manifest.vms.push(VmSpec::new(i + 1)),
                    _ => return Err(err(format!("unknown section `{line}` (only [vm])"))),
                }
                continue;
            }
            let (key, value) =
                line.split_once('=').ok_or_else(|| err(format!("expected `key = value`, got `{line}`")))?;
            let (key, value) = (key.trim(), value.trim());
            if let Some(vm) = manifest.vms.last_mut() {
                vm.set(key, value).map_err(err)?;
                continue;
            }
            match key {
                "log" => {
                    cfg.log_level = LevelFilter::from_str(value)
                        .map_err(|_| err(format!("log level must be off|error|warn|info|debug|trace, not `{value}`")))?
                }
                "exit" => {
                    cfg.exit = match value {
                        "debug-port" => ExitMode::DebugPort,
                        "halt" => ExitMode::Halt,
                        _ => return Err(err(format!("exit must be debug-port|halt, not `{value}`"))),
                    }
                }
                "fault" => {
                    cfg.fault = match value {
                        "none" => FaultInjection::None,
                        "ap-page-fault" => FaultInjection::ApPageFault,
                        "bsp-page-fault" => FaultInjection::BspPageFault,
                        "bsp-panic" => FaultInjection::BspPanic,
                        "bad-guest-state" => FaultInjection::BadGuestState,
                        _ => {
                            return Err(err(format!(
                                "fault must be none|ap-page-fault|bsp-page-fault|bsp-panic|bad-guest-state, not `{value}`"
                            )));
                        }
                    }
                }
                "host_apic" => {
                    cfg.host_xapic = match value {
                        "auto" => false,
                        "xapic" => true,
                        _ => return Err(err(format!("host_apic must be auto|xapic, not `{value}`"))),
                    }
                }
                "native_bench" => {
                    cfg.native_bench =
                        value.parse().map_err(|_| err(format!("native_bench must be a number, not `{value}`")))?
                }
                "native_target" => {
                    cfg.native_halt = match value {
                        "spin" => false,
                        "halt" => true,
                        _ => return Err(err(format!("native_target must be spin|halt, not `{value}`"))),
                    }
                }
                _ => return Err(err(format!("unknown key `{key}`"))),
            }
        }
        Ok((cfg, manifest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn parses_global_keys_comments_and_vm_sections() {
        let text = "# test run\nlog = debug\n\nexit=debug-port  # emulator\nfault = ap-page-fault\n\n[vm]\nname = a\nkernel = hello\nvcpus = 2\n[vm]\nname = b\nkernel = memory\n";
        let (cfg, m) = BootConfig::parse(text).unwrap();
        assert_eq!(
            cfg,
            BootConfig {
                log_level: LevelFilter::Debug,
                exit: ExitMode::DebugPort,
                fault: FaultInjection::ApPageFault,
                ..BootConfig::default()
            }
        );
        let (cfg, _) = BootConfig::parse("host_apic = xapic\nnative_bench = 500\nnative_target = halt\n").unwrap();
        assert!(cfg.host_xapic && cfg.native_halt);
        assert_eq!(cfg.native_bench, 500);
        assert!(BootConfig::parse("native_bench = lots").is_err());
        assert_eq!(m.vms.len(), 2);
        assert_eq!((m.vms[0].name.as_str(), m.vms[0].vcpus, m.vms[0].line), ("a", 2, 7));
        assert_eq!(m.vms[1].kernel, "memory");
    }

    #[test]
    fn empty_config_is_the_hardware_default() {
        let (cfg, m) = BootConfig::parse("").unwrap();
        assert_eq!(cfg, BootConfig::default());
        assert_eq!(cfg.exit, ExitMode::Halt);
        assert!(m.vms.is_empty());
    }

    #[test]
    fn errors_name_the_line() {
        let e = BootConfig::parse("log = info\nlgo = debug").unwrap_err();
        assert_eq!((e.line, e.message.as_str()), (2, "unknown key `lgo`"));
        let e = BootConfig::parse("exit = reboot").unwrap_err();
        assert!(e.to_string().starts_with("boot config line 1: exit must be"));
        assert!(BootConfig::parse("log").unwrap_err().message.contains("expected `key = value`"));
        assert!(BootConfig::parse("log = loud").is_err());
        let e = BootConfig::parse("[vm]\nname = a\nram = 4\n").unwrap_err();
        assert_eq!((e.line, e.message.as_str()), (3, "unknown VM key `ram`"));
        assert!(BootConfig::parse("[vms]\n").unwrap_err().message.contains("unknown section"));
        // Global keys after a [vm] belong to the VM, and are unknown there.
        assert!(BootConfig::parse("[vm]\nlog = info\n").is_err());
    }
}
