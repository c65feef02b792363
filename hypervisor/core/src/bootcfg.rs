//! The boot configuration that xtask puts in the bootloader ramdisk.
//!
//! Format: one `key = value` per line, `#` starts a comment. Unknown keys and bad values are
//! errors, so a typo is reported instead of silently ignored. Booting without a ramdisk (real
//! hardware from a plain image) gives [`BootConfig::default`].

use core::str::FromStr;
use log::LevelFilter;

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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootConfig {
    pub log_level: LevelFilter,
    pub exit: ExitMode,
    pub fault: FaultInjection,
}

impl Default for BootConfig {
    fn default() -> Self {
        Self { log_level: LevelFilter::Info, exit: ExitMode::Halt, fault: FaultInjection::None }
    }
}

/// A configuration error: the 1-based line and what is wrong with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigError<'a> {
    pub line: usize,
    pub what: &'static str,
    pub text: &'a str,
}

impl core::fmt::Display for ConfigError<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "boot config line {}: {}: `{}`", self.line, self.what, self.text)
    }
}

impl BootConfig {
    pub fn parse(text: &str) -> Result<Self, ConfigError<'_>> {
        let mut cfg = Self::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let err = |what| ConfigError { line: i + 1, what, text: raw.trim() };
            let (key, value) = line.split_once('=').ok_or(err("expected `key = value`"))?;
            let value = value.trim();
            match key.trim() {
                "log" => {
                    cfg.log_level = LevelFilter::from_str(value)
                        .map_err(|_| err("log level must be off|error|warn|info|debug|trace"))?
                }
                "exit" => {
                    cfg.exit = match value {
                        "debug-port" => ExitMode::DebugPort,
                        "halt" => ExitMode::Halt,
                        _ => return Err(err("exit must be debug-port|halt")),
                    }
                }
                "fault" => {
                    cfg.fault = match value {
                        "none" => FaultInjection::None,
                        "ap-page-fault" => FaultInjection::ApPageFault,
                        "bsp-page-fault" => FaultInjection::BspPageFault,
                        "bsp-panic" => FaultInjection::BspPanic,
                        _ => return Err(err("fault must be none|ap-page-fault|bsp-page-fault|bsp-panic")),
                    }
                }
                _ => return Err(err("unknown key")),
            }
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn parses_all_keys_comments_and_blank_lines() {
        let cfg = BootConfig::parse("# test run\nlog = debug\n\nexit=debug-port  # emulator\nfault = ap-page-fault\n")
            .unwrap();
        assert_eq!(
            cfg,
            BootConfig { log_level: LevelFilter::Debug, exit: ExitMode::DebugPort, fault: FaultInjection::ApPageFault }
        );
    }

    #[test]
    fn empty_config_is_the_hardware_default() {
        assert_eq!(BootConfig::parse("").unwrap(), BootConfig::default());
        assert_eq!(BootConfig::default().exit, ExitMode::Halt);
    }

    #[test]
    fn errors_name_the_line() {
        let e = BootConfig::parse("log = info\nlgo = debug").unwrap_err();
        assert_eq!((e.line, e.what), (2, "unknown key"));
        let e = BootConfig::parse("exit = reboot").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.to_string().contains("exit must be"));
        assert_eq!(BootConfig::parse("log").unwrap_err().what, "expected `key = value`");
        assert!(BootConfig::parse("log = loud").is_err());
    }
}
