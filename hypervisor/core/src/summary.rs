//! The `HV-SUMMARY {json}` line: the last thing a run prints, read by xtask and by people.
//!
//! Field names are an interface (xtask, CI and later issues depend on them): change them only
//! together with docs/architecture.md.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write};

use crate::vmx::caps::VmxFeatures;

/// Prefix of the summary line on the serial console.
pub const SUMMARY_PREFIX: &str = "HV-SUMMARY ";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunResult {
    Pass,
    Fail,
    /// The platform cannot run the hypervisor (no VMX); not a failure of the hypervisor.
    Unsupported,
}

impl RunResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::Unsupported => "unsupported",
        }
    }
}

/// What happened on one processor.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CpuReport {
    pub apic_id: u32,
    pub bsp: bool,
    /// Reached the kernel's per-CPU entry.
    pub online: bool,
    /// VMXON succeeded (and VMXOFF was done at the end).
    pub vmxon: bool,
    /// Why this CPU failed, if it did.
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HvSummary {
    pub result: RunResult,
    pub reason: Option<String>,
    pub cpus_expected: u32,
    /// VMX supported on the bootstrap processor (the platform's answer).
    pub vmx_supported: bool,
    pub features: VmxFeatures,
    pub tsc_hz: u64,
    pub cpus: Vec<CpuReport>,
}

impl HvSummary {
    /// Builds the summary and decides the result: "unsupported" when the platform has no usable
    /// VMX (`unsupported` is the reason), "pass" when every expected CPU came online and did
    /// VMXON, "fail" with the first problem otherwise.
    pub fn judge(
        cpus_expected: u32,
        unsupported: Option<String>,
        features: VmxFeatures,
        tsc_hz: u64,
        cpus: Vec<CpuReport>,
    ) -> Self {
        let online = cpus.iter().filter(|c| c.online).count() as u32;
        let vmxon = cpus.iter().filter(|c| c.vmxon).count() as u32;
        let failed = cpus.iter().find_map(|c| c.error.as_ref().map(|e| (c.apic_id, e)));
        let (result, reason) = if let Some((id, e)) = failed {
            (RunResult::Fail, Some(alloc::format!("CPU with APIC ID {id}: {e}")))
        } else if online != cpus_expected {
            (RunResult::Fail, Some(alloc::format!("{online} of {cpus_expected} CPUs came online")))
        } else if let Some(why) = &unsupported {
            (RunResult::Unsupported, Some(why.clone()))
        } else if vmxon != cpus_expected {
            (RunResult::Fail, Some(alloc::format!("VMXON on {vmxon} of {cpus_expected} CPUs")))
        } else {
            (RunResult::Pass, None)
        };
        Self { result, reason, cpus_expected, vmx_supported: unsupported.is_none(), features, tsc_hz, cpus }
    }

    pub fn cpus_online(&self) -> u32 {
        self.cpus.iter().filter(|c| c.online).count() as u32
    }

    pub fn vmxon_cpus(&self) -> u32 {
        self.cpus.iter().filter(|c| c.vmxon).count() as u32
    }
}

/// A JSON string literal with the escapes RFC 8259 requires.
pub struct JsonStr<'a>(pub &'a str);

impl fmt::Display for JsonStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if (c as u32) < 0x20 => write!(f, "\\u{:04x}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        f.write_char('"')
    }
}

struct OptStr<'a>(Option<&'a str>);

impl fmt::Display for OptStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(s) => JsonStr(s).fmt(f),
            None => f.write_str("null"),
        }
    }
}

/// The summary as one line of JSON (no prefix).
impl fmt::Display for HvSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = &self.features;
        let s = self.vmx_supported;
        write!(
            f,
            "{{\"result\":\"{}\",\"reason\":{},\"cpus_online\":{},\"cpus_expected\":{},",
            self.result.as_str(),
            OptStr(self.reason.as_deref()),
            self.cpus_online(),
            self.cpus_expected
        )?;
        write!(
            f,
            "\"vmx\":{{\"supported\":{},\"vmxon_cpus\":{},\"tertiary\":{},\"ipiv\":{},\"apicv\":{},\
             \"posted_interrupts\":{},\"x2apic_virt\":{},\"ept\":{},\"vpid\":{},\"unrestricted_guest\":{}}},",
            s,
            self.vmxon_cpus(),
            s && v.tertiary,
            s && v.ipiv,
            s && v.apicv,
            s && v.posted_interrupts,
            s && v.x2apic_virt,
            s && v.ept,
            s && v.vpid,
            s && v.unrestricted_guest
        )?;
        write!(f, "\"tsc_hz\":{},\"cpus\":[", self.tsc_hz)?;
        for (i, c) in self.cpus.iter().enumerate() {
            if i > 0 {
                f.write_char(',')?;
            }
            write!(
                f,
                "{{\"apic_id\":{},\"bsp\":{},\"online\":{},\"vmxon\":{},\"error\":{}}}",
                c.apic_id,
                c.bsp,
                c.online,
                c.vmxon,
                OptStr(c.error.as_deref())
            )?;
        }
        f.write_str("],\"vms\":[]}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    fn cpu(apic_id: u32, online: bool, vmxon: bool) -> CpuReport {
        CpuReport { apic_id, bsp: apic_id == 0, online, vmxon, error: None }
    }

    fn all_features() -> VmxFeatures {
        VmxFeatures { tertiary: true, apicv: true, posted_interrupts: true, x2apic_virt: true, ept: true, vpid: true, unrestricted_guest: true, ipiv: false }
    }

    #[test]
    fn all_cpus_with_vmxon_pass_and_json_has_the_interface_fields() {
        let s = HvSummary::judge(2, None, all_features(), 50_000_000, vec![cpu(0, true, true), cpu(1, true, true)]);
        assert_eq!(s.result, RunResult::Pass);
        let v: serde_json::Value = serde_json::from_str(&s.to_string()).unwrap();
        assert_eq!(v["result"], "pass");
        assert!(v["reason"].is_null());
        assert_eq!(v["cpus_online"], 2);
        assert_eq!(v["cpus_expected"], 2);
        assert_eq!(v["vmx"]["supported"], true);
        assert_eq!(v["vmx"]["vmxon_cpus"], 2);
        assert_eq!(v["vmx"]["tertiary"], true);
        assert_eq!(v["vmx"]["ipiv"], false);
        for k in ["apicv", "posted_interrupts", "x2apic_virt", "ept", "vpid", "unrestricted_guest"] {
            assert_eq!(v["vmx"][k], true, "{k}");
        }
        assert_eq!(v["vms"], serde_json::json!([]));
        assert_eq!(v["cpus"][1]["apic_id"], 1);
    }

    #[test]
    fn no_vmx_is_unsupported_with_reason_and_all_features_false() {
        let s = HvSummary::judge(1, Some("no VMX".into()), all_features(), 0, vec![cpu(0, true, false)]);
        assert_eq!(s.result, RunResult::Unsupported);
        let v: serde_json::Value = serde_json::from_str(&s.to_string()).unwrap();
        assert_eq!(v["result"], "unsupported");
        assert_eq!(v["reason"], "no VMX");
        assert_eq!(v["vmx"]["supported"], false);
        assert_eq!(v["vmx"]["ept"], false);
    }

    #[test]
    fn missing_cpu_or_vmxon_or_cpu_error_fails() {
        let s = HvSummary::judge(2, None, all_features(), 0, vec![cpu(0, true, true), cpu(1, false, false)]);
        assert_eq!((s.result, s.reason.as_deref()), (RunResult::Fail, Some("1 of 2 CPUs came online")));
        let s = HvSummary::judge(2, None, all_features(), 0, vec![cpu(0, true, true), cpu(1, true, false)]);
        assert_eq!((s.result, s.reason.as_deref()), (RunResult::Fail, Some("VMXON on 1 of 2 CPUs")));
        let mut bad = cpu(1, true, false);
        bad.error = Some("VMXON failed \"CF=1\"".into());
        let s = HvSummary::judge(2, Some("x".into()), all_features(), 0, vec![cpu(0, true, true), bad]);
        assert_eq!(s.result, RunResult::Fail);
        // Quotes in reasons survive the round trip.
        let v: serde_json::Value = serde_json::from_str(&s.to_string()).unwrap();
        assert_eq!(v["reason"], "CPU with APIC ID 1: VMXON failed \"CF=1\"");
    }

    #[test]
    fn json_strings_escape_control_characters() {
        let s = alloc::format!("{}", JsonStr("a\"b\\c\nd\u{1}"));
        assert_eq!(serde_json::from_str::<String>(&s).unwrap(), "a\"b\\c\nd\u{1}");
    }
}
