//! The `HV-SUMMARY {json}` line: the last thing a run prints, read by xtask and by people.
//!
//! Field names are an interface (xtask, CI and later issues depend on them): change them only
//! together with docs/architecture.md.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write};

use crate::exits::census::Window;
use crate::exits::counters::ExitCounters;
use crate::manifest::VmResult;
use crate::vmx::caps::{VmxFeatures, VmxMsrs};

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
    /// The value written to the debug-exit port (I/O 0xf4) for this result; the emulator exits
    /// with status `(value << 1) | 1` (QEMU isa-debug-exit, the project's Bochs patch).
    pub const fn debug_exit_value(self) -> u32 {
        match self {
            Self::Pass => 0x10,
            Self::Fail => 0x11,
            Self::Unsupported => 0x12,
        }
    }

    /// The emulator's process exit status for this result.
    pub const fn emulator_exit_status(self) -> i32 {
        ((self.debug_exit_value() << 1) | 1) as i32
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pass" => Some(Self::Pass),
            "fail" => Some(Self::Fail),
            "unsupported" => Some(Self::Unsupported),
            _ => None,
        }
    }

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

/// How one VM ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmReport {
    pub name: String,
    pub vcpus: u32,
    pub result: VmResult,
    pub reason: Option<String>,
    pub expect: VmResult,
    /// The APIC mode the guest was set up for ("xapic" / "x2apic").
    pub apic_mode: &'static str,
    /// Whether IPI virtualization was really enabled.
    pub ipiv: bool,
    /// How interrupts reached the guest (`vmx::interrupt_path`: "ipiv", "posted",
    /// "virtual-delivery", "injection").
    pub interrupt_path: &'static str,
    /// Why no better path was used (`None` on the best one).
    pub interrupt_path_reason: Option<String>,
    /// "passthrough" or "exit".
    pub hlt: &'static str,
    /// What delivered the guest's APIC timer: "preemption" or "host-apic".
    pub timer: &'static str,
    pub vcpu_exits: Vec<ExitCounters>,
    /// Console bytes dropped because the VM printed faster than its budget (hvcore::budget).
    pub console_dropped_bytes: u64,
    /// JSON values the guest reported, in the canonical form `exits::report::canonical` made.
    pub reports: Vec<String>,
    /// The exit census: for each report, the VM's exits since the previous one (`exits::census`).
    pub report_exits: Vec<Window>,
}

impl VmReport {
    pub fn met_expectation(&self) -> bool {
        self.result == self.expect
    }
}

impl fmt::Display for VmReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut total = ExitCounters::default();
        for c in &self.vcpu_exits {
            total.add(c);
        }
        write!(
            f,
            "{{\"name\":{},\"vcpus\":{},\"result\":\"{}\",\"reason\":{},\"expect\":\"{}\",\"apic_mode\":\"{}\",\
             \"ipiv\":{},\"interrupt_path\":\"{}\",\"interrupt_path_reason\":{},\"hlt\":\"{}\",\"timer\":\"{}\",\"console_dropped_bytes\":{},\"exits\":{total},\"vcpu_exits\":[",
            JsonStr(&self.name),
            self.vcpus,
            self.result.as_str(),
            OptStr(self.reason.as_deref()),
            self.expect.as_str(),
            self.apic_mode,
            self.ipiv,
            self.interrupt_path,
            OptStr(self.interrupt_path_reason.as_deref()),
            self.hlt,
            self.timer,
            self.console_dropped_bytes
        )?;
        for (i, c) in self.vcpu_exits.iter().enumerate() {
            if i > 0 {
                f.write_char(',')?;
            }
            write!(f, "{c}")?;
        }
        f.write_str("],\"reports\":[")?;
        for (i, r) in self.reports.iter().enumerate() {
            if i > 0 {
                f.write_char(',')?;
            }
            f.write_str(r)?;
        }
        f.write_str("],\"report_exits\":[")?;
        for (i, w) in self.report_exits.iter().enumerate() {
            if i > 0 {
                f.write_char(',')?;
            }
            write!(f, "{{\"us\":{},\"exits\":{}}}", w.us, w.exits)?;
        }
        f.write_str("]}")
    }
}

/// The native IPI round trip the hypervisor measured on two physical CPUs before any VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NativeBench {
    pub x2apic: bool,
    pub halt: bool,
    pub cycles: crate::stats::CycleStats,
}

impl fmt::Display for NativeBench {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{{\"apic\":\"{}\",\"target\":\"{}\",\"iterations\":{},\"cycles\":{}}}",
            if self.x2apic { "x2apic" } else { "xapic" },
            if self.halt { "halt" } else { "spin" },
            self.cycles.samples,
            self.cycles
        )
    }
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
    pub vms: Vec<VmReport>,
    /// Set after `judge` when a native round trip was measured.
    pub native: Option<NativeBench>,
    /// The processor's brand string (CPUID 0x80000002-4), set after `judge`: which CPU model
    /// the run's paths and refusals are about.
    pub cpu_model: String,
    /// The VMX capability MSRs the bootstrap processor read, set after `judge`: what a nested
    /// hypervisor underneath offers is recorded from runs, not derived (docs/hardware.md).
    pub vmx_msrs: Option<VmxMsrs>,
}

impl HvSummary {
    /// Builds the summary and decides the result: "unsupported" when the platform has no usable
    /// VMX (`unsupported` is the reason), "pass" when every expected CPU came online and did
    /// VMXON and every VM ended as expected, "fail" with the first problem otherwise.
    pub fn judge(
        cpus_expected: u32,
        unsupported: Option<String>,
        features: VmxFeatures,
        tsc_hz: u64,
        cpus: Vec<CpuReport>,
        vms: Vec<VmReport>,
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
        } else if let Some(vm) = vms.iter().find(|v| !v.met_expectation()) {
            let why = vm.reason.as_deref().map(|r| alloc::format!(" ({r})")).unwrap_or_default();
            (
                RunResult::Fail,
                Some(alloc::format!(
                    "VM {}: expected {}, got {}{why}",
                    vm.name,
                    vm.expect.as_str(),
                    vm.result.as_str()
                )),
            )
        } else {
            (RunResult::Pass, None)
        };
        Self {
            result,
            reason,
            cpus_expected,
            vmx_supported: unsupported.is_none(),
            features,
            tsc_hz,
            cpus,
            vms,
            native: None,
            cpu_model: String::new(),
            vmx_msrs: None,
        }
    }

    pub fn cpus_online(&self) -> u32 {
        self.cpus.iter().filter(|c| c.online).count() as u32
    }

    pub fn vmxon_cpus(&self) -> u32 {
        self.cpus.iter().filter(|c| c.vmxon).count() as u32
    }
}

/// Writes string contents with the escapes RFC 8259 requires (no surrounding quotes), so a
/// reason can be formatted straight into JSON without a buffer.
pub struct JsonEscape<W: Write>(pub W);

impl<W: Write> Write for JsonEscape<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '"' => self.0.write_str("\\\"")?,
                '\\' => self.0.write_str("\\\\")?,
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c if (c as u32) < 0x20 => write!(self.0, "\\u{:04x}", c as u32)?,
                c => self.0.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// A JSON string literal.
pub struct JsonStr<'a>(pub &'a str);

impl fmt::Display for JsonStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        JsonEscape(&mut *f).write_str(self.0)?;
        f.write_char('"')
    }
}

/// The summary of a run that ended in a fatal error (CPU exception, panic), written without
/// allocating: the heap may be what failed. VMX features are reported false because the run
/// did not get far enough to vouch for them.
pub fn write_fatal_summary(
    out: &mut impl Write,
    reason: fmt::Arguments<'_>,
    cpus_online: u32,
    cpus_expected: u32,
) -> fmt::Result {
    out.write_str("{\"result\":\"fail\",\"reason\":\"")?;
    JsonEscape(&mut *out).write_fmt(reason)?;
    write!(
        out,
        "\",\"cpus_online\":{cpus_online},\"cpus_expected\":{cpus_expected},\"vmx\":{{\"supported\":false,\"vmxon_cpus\":0,\
         \"tertiary\":false,\"ipiv\":false,\"apicv\":false,\"posted_interrupts\":false,\"x2apic_virt\":false,\"ept\":false,\
         \"vpid\":false,\"unrestricted_guest\":false}},\"fatal\":true,\"vms\":[]}}"
    )
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

/// `{"feature_control": "0x5", ...}`: each capability MSR as hex text (JSON numbers lose
/// 64-bit precision in many readers); absent MSRs as null.
pub struct MsrsJson<'a>(pub &'a VmxMsrs);

impl fmt::Display for MsrsJson<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        let opt = |v: Option<u64>| v.map(|v| alloc::format!("\"{v:#x}\"")).unwrap_or_else(|| "null".into());
        write!(
            f,
            "{{\"cpuid_vmx\":{},\"feature_control\":\"{:#x}\",\"basic\":\"{:#x}\",\"pinbased\":\"{:#x}\",\
             \"procbased\":\"{:#x}\",\"exit\":\"{:#x}\",\"entry\":\"{:#x}\",\"procbased2\":{},\"procbased3\":{},\
             \"ept_vpid_cap\":{},\"misc\":\"{:#x}\",\"cr0_fixed0\":\"{:#x}\",\"cr0_fixed1\":\"{:#x}\",\
             \"cr4_fixed0\":\"{:#x}\",\"cr4_fixed1\":\"{:#x}\"}}",
            m.cpuid_vmx,
            m.feature_control,
            m.basic,
            m.pinbased,
            m.procbased,
            m.exit,
            m.entry,
            opt(m.procbased2),
            opt(m.procbased3),
            opt(m.ept_vpid_cap),
            m.misc,
            m.cr0_fixed0,
            m.cr0_fixed1,
            m.cr4_fixed0,
            m.cr4_fixed1
        )
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
        if let Some(m) = &self.vmx_msrs {
            write!(f, "\"vmx_msrs\":{},", MsrsJson(m))?;
        }
        write!(f, "\"tsc_hz\":{},\"cpu_model\":{},\"cpus\":[", self.tsc_hz, JsonStr(&self.cpu_model))?;
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
        f.write_str("],\"native\":")?;
        match &self.native {
            Some(n) => write!(f, "{n}")?,
            None => f.write_str("null")?,
        }
        f.write_str(",\"vms\":[")?;
        for (i, vm) in self.vms.iter().enumerate() {
            if i > 0 {
                f.write_char(',')?;
            }
            write!(f, "{vm}")?;
        }
        f.write_str("]}")
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
        VmxFeatures {
            tertiary: true,
            apicv: true,
            posted_interrupts: true,
            x2apic_virt: true,
            ept: true,
            vpid: true,
            unrestricted_guest: true,
            ipiv: false,
        }
    }

    #[test]
    fn all_cpus_with_vmxon_pass_and_json_has_the_interface_fields() {
        let s =
            HvSummary::judge(2, None, all_features(), 50_000_000, vec![cpu(0, true, true), cpu(1, true, true)], vec![]);
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
        assert!(v["native"].is_null());
        let mut s = s;
        s.native = Some(NativeBench {
            x2apic: true,
            halt: false,
            cycles: crate::stats::CycleStats { min: 1, median: 2, p99: 3, mean: 2, samples: 100 },
        });
        let v: serde_json::Value = serde_json::from_str(&s.to_string()).unwrap();
        assert_eq!(v["native"]["apic"], "x2apic");
        assert_eq!(v["native"]["cycles"]["median"], 2);
        assert_eq!(v["native"]["iterations"], 100);
        assert!(v["vmx_msrs"].is_null(), "only where the kernel read them");
        s.vmx_msrs = Some(VmxMsrs {
            cpuid_vmx: true,
            basic: 0x00d8_1000_11e5_7ed0,
            procbased2: Some(0x0213_7bff_0000_0000),
            ..Default::default()
        });
        let v: serde_json::Value = serde_json::from_str(&s.to_string()).unwrap();
        assert_eq!(v["vmx_msrs"]["basic"], "0xd8100011e57ed0", "hex text: 64-bit values survive any JSON reader");
        assert_eq!(v["vmx_msrs"]["procbased2"], "0x2137bff00000000");
        assert!(v["vmx_msrs"]["procbased3"].is_null(), "absent MSRs are null");
        assert_eq!(v["vmx_msrs"]["cpuid_vmx"], true);
    }

    #[test]
    fn no_vmx_is_unsupported_with_reason_and_all_features_false() {
        let s = HvSummary::judge(1, Some("no VMX".into()), all_features(), 0, vec![cpu(0, true, false)], vec![]);
        assert_eq!(s.result, RunResult::Unsupported);
        let v: serde_json::Value = serde_json::from_str(&s.to_string()).unwrap();
        assert_eq!(v["result"], "unsupported");
        assert_eq!(v["reason"], "no VMX");
        assert_eq!(v["vmx"]["supported"], false);
        assert_eq!(v["vmx"]["ept"], false);
    }

    #[test]
    fn missing_cpu_or_vmxon_or_cpu_error_fails() {
        let s = HvSummary::judge(2, None, all_features(), 0, vec![cpu(0, true, true), cpu(1, false, false)], vec![]);
        assert_eq!((s.result, s.reason.as_deref()), (RunResult::Fail, Some("1 of 2 CPUs came online")));
        let s = HvSummary::judge(2, None, all_features(), 0, vec![cpu(0, true, true), cpu(1, true, false)], vec![]);
        assert_eq!((s.result, s.reason.as_deref()), (RunResult::Fail, Some("VMXON on 1 of 2 CPUs")));
        let mut bad = cpu(1, true, false);
        bad.error = Some("VMXON failed \"CF=1\"".into());
        let s = HvSummary::judge(2, Some("x".into()), all_features(), 0, vec![cpu(0, true, true), bad], vec![]);
        assert_eq!(s.result, RunResult::Fail);
        // Quotes in reasons survive the round trip.
        let v: serde_json::Value = serde_json::from_str(&s.to_string()).unwrap();
        assert_eq!(v["reason"], "CPU with APIC ID 1: VMXON failed \"CF=1\"");
    }

    #[test]
    fn fatal_summary_is_valid_json_with_escaped_reason() {
        let mut out = String::new();
        write_fatal_summary(&mut out, format_args!("#PF at {:#x} \"x\"", 0x1000), 3, 4).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["result"], "fail");
        assert_eq!(v["reason"], "#PF at 0x1000 \"x\"");
        assert_eq!((v["cpus_online"].as_u64(), v["cpus_expected"].as_u64()), (Some(3), Some(4)));
        assert_eq!(v["vmx"]["supported"], false);
        assert_eq!(v["vms"], serde_json::json!([]));
    }

    #[test]
    fn vms_are_reported_and_judged_against_their_expectation() {
        let mut exits = ExitCounters::default();
        exits.count(crate::vmx::exit_reason::VMCALL);
        let vm = |name: &str, result, expect| VmReport {
            name: name.into(),
            vcpus: 2,
            result,
            reason: Some("EPT violation at GPA 0x4000000".into()),
            expect,
            apic_mode: "x2apic",
            ipiv: false,
            interrupt_path: "posted",
            interrupt_path_reason: Some("IPI virtualization: ipiv = off in the manifest".into()),
            hlt: "exit",
            timer: "host-apic",
            vcpu_exits: vec![exits.clone(), exits.clone()],
            console_dropped_bytes: 0,
            reports: vec!["{\"vcpu\":0}".into()],
            report_exits: vec![Window { us: 1500, exits: exits.clone() }],
        };
        let cpus = vec![cpu(0, true, true), cpu(1, true, true)];
        let ok = vec![vm("a", VmResult::Killed, VmResult::Killed), vm("b", VmResult::Pass, VmResult::Pass)];
        let s = HvSummary::judge(2, None, all_features(), 0, cpus.clone(), ok);
        assert_eq!(s.result, RunResult::Pass);
        let v: serde_json::Value = serde_json::from_str(&s.to_string()).unwrap();
        assert_eq!(v["vms"][0]["name"], "a");
        assert_eq!(v["vms"][0]["result"], "killed");
        assert_eq!(v["vms"][0]["exits"]["vmcall"], 2);
        assert_eq!((v["vms"][0]["apic_mode"].as_str(), v["vms"][0]["ipiv"].as_bool()), (Some("x2apic"), Some(false)));
        assert_eq!((v["vms"][0]["hlt"].as_str(), v["vms"][0]["timer"].as_str()), (Some("exit"), Some("host-apic")));
        assert_eq!(v["vms"][0]["interrupt_path"], "posted");
        assert_eq!(v["vms"][0]["interrupt_path_reason"], "IPI virtualization: ipiv = off in the manifest");
        assert_eq!(v["cpu_model"], "");
        assert_eq!(v["vms"][0]["vcpu_exits"][1]["vmcall"], 1);
        assert_eq!(v["vms"][1]["reports"][0]["vcpu"], 0);
        assert_eq!(v["vms"][1]["report_exits"][0]["us"], 1500);
        assert_eq!(v["vms"][1]["report_exits"][0]["exits"]["vmcall"], 1);
        let bad = vec![vm("a", VmResult::Killed, VmResult::Pass)];
        let s = HvSummary::judge(2, None, all_features(), 0, cpus, bad);
        assert_eq!(s.result, RunResult::Fail);
        assert!(s.reason.unwrap().starts_with("VM a: expected pass, got killed (EPT violation"));
    }

    #[test]
    fn exit_statuses_follow_the_debug_exit_convention() {
        assert_eq!(RunResult::Pass.emulator_exit_status(), 33);
        assert_eq!(RunResult::Fail.emulator_exit_status(), 35);
        assert_eq!(RunResult::Unsupported.emulator_exit_status(), 37);
        for r in [RunResult::Pass, RunResult::Fail, RunResult::Unsupported] {
            assert_eq!(RunResult::parse(r.as_str()), Some(r));
        }
        assert_eq!(RunResult::parse("killed"), None);
    }

    #[test]
    fn json_strings_escape_control_characters() {
        let s = alloc::format!("{}", JsonStr("a\"b\\c\nd\u{1}"));
        assert_eq!(serde_json::from_str::<String>(&s).unwrap(), "a\"b\\c\nd\u{1}");
    }
}
