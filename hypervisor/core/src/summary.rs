//! The `HV-SUMMARY {json}` line: the last thing a run prints, read by xtask and by people.
//!
//! The types below are the line: the kernel serializes them (serde_json), xtask deserializes
//! them, and nothing else writes or reads it but `write_fatal_summary`, whose allocation-free
//! text a test reads back as these types. Field names are an interface (xtask, CI and later
//! issues depend on them): change them only together with docs/architecture.md.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write};

use serde::{Deserialize, Serialize};

use crate::exits::census::Window;
use crate::exits::counters::ExitCounters;
use crate::exits::report::Report;
use crate::manifest::{ApicMode, HltMode, TimerSource, VmResult};
use crate::stats::CycleStats;
use crate::vmx::caps::{VmxFeatures, VmxMsrs};
use crate::vmx::path_kind::InterruptPath;

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

/// Which native round trip the hypervisor measured: the target CPU spinning or halted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NativeTarget {
    Spin,
    Halt,
}

impl NativeTarget {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Spin => "spin",
            Self::Halt => "halt",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Spin, Self::Halt].into_iter().find(|t| t.as_str() == s)
    }
}

crate::json::by_name!(RunResult, NativeTarget);

/// What happened on one processor.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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

/// VMX as the run found it: whether the platform has it, on how many CPUs VMXON succeeded,
/// and the features the bootstrap processor offers (all false where VMX is unsupported: the
/// run cannot vouch for them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmxReport {
    pub supported: bool,
    pub vmxon_cpus: u32,
    pub tertiary: bool,
    pub ipiv: bool,
    pub apicv: bool,
    pub posted_interrupts: bool,
    pub x2apic_virt: bool,
    pub ept: bool,
    pub vpid: bool,
    pub unrestricted_guest: bool,
}

impl VmxReport {
    pub fn new(supported: bool, vmxon_cpus: u32, f: &VmxFeatures) -> Self {
        let s = supported;
        Self {
            supported,
            vmxon_cpus,
            tertiary: s && f.tertiary,
            ipiv: s && f.ipiv,
            apicv: s && f.apicv,
            posted_interrupts: s && f.posted_interrupts,
            x2apic_virt: s && f.x2apic_virt,
            ept: s && f.ept,
            vpid: s && f.vpid,
            unrestricted_guest: s && f.unrestricted_guest,
        }
    }
}

/// How one VM ended. The fields after `apic_mode` are the hypervisor's: a summary xtask writes
/// for guests QEMU booted without it leaves them out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmReport {
    pub name: String,
    pub vcpus: u32,
    pub result: VmResult,
    pub reason: Option<String>,
    pub expect: VmResult,
    /// The APIC mode the guest was set up for.
    pub apic_mode: ApicMode,
    /// Whether IPI virtualization was really enabled.
    #[serde(default)]
    pub ipiv: bool,
    /// How interrupts reached the guest (`vmx::interrupt_path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupt_path: Option<InterruptPath>,
    /// Why no better path was used (`None` on the best one).
    #[serde(default)]
    pub interrupt_path_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hlt: Option<HltMode>,
    /// What delivered the guest's APIC timer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer: Option<TimerSource>,
    /// Console bytes dropped because the VM printed faster than its budget (hvcore::budget).
    #[serde(default)]
    pub console_dropped_bytes: u64,
    /// Every vCPU's exits summed (`HvSummary::judge` adds them up).
    #[serde(default)]
    pub exits: ExitCounters,
    #[serde(default)]
    pub vcpu_exits: Vec<ExitCounters>,
    /// The values the guest reported, in order.
    #[serde(default)]
    pub reports: Vec<Report>,
    /// The exit census: for each report, the VM's exits since the previous one (`exits::census`).
    #[serde(default)]
    pub report_exits: Vec<Window>,
}

impl VmReport {
    /// A VM nobody ran yet: what the hypervisor's part leaves out.
    pub fn new(
        name: String,
        vcpus: u32,
        result: VmResult,
        reason: Option<String>,
        expect: VmResult,
        apic_mode: ApicMode,
    ) -> Self {
        Self {
            name,
            vcpus,
            result,
            reason,
            expect,
            apic_mode,
            ipiv: false,
            interrupt_path: None,
            interrupt_path_reason: None,
            hlt: None,
            timer: None,
            console_dropped_bytes: 0,
            exits: ExitCounters::default(),
            vcpu_exits: Vec::new(),
            reports: Vec::new(),
            report_exits: Vec::new(),
        }
    }

    pub fn met_expectation(&self) -> bool {
        self.result == self.expect
    }

    /// The reported values, parsed.
    pub fn report_values(&self) -> Vec<serde_json::Value> {
        self.reports.iter().map(Report::value).collect()
    }
}

/// The native IPI round trip the hypervisor measured on two physical CPUs before any VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NativeBench {
    pub apic: ApicMode,
    pub target: NativeTarget,
    pub iterations: u64,
    /// Bochs: TSC ticks are instructions (path lengths), not cycles.
    pub cycles: CycleStats,
}

impl NativeBench {
    pub fn new(x2apic: bool, halt: bool, cycles: CycleStats) -> Self {
        Self {
            apic: if x2apic { ApicMode::X2Apic } else { ApicMode::XApic },
            target: if halt { NativeTarget::Halt } else { NativeTarget::Spin },
            iterations: cycles.samples,
            cycles,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HvSummary {
    pub result: RunResult,
    pub reason: Option<String>,
    #[serde(default)]
    pub cpus_online: u32,
    #[serde(default)]
    pub cpus_expected: u32,
    #[serde(default)]
    pub vmx: VmxReport,
    /// The VMX capability MSRs the bootstrap processor read, set after `judge`: what a nested
    /// hypervisor underneath offers is recorded from runs, not derived (docs/hardware.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmx_msrs: Option<VmxMsrs>,
    #[serde(default)]
    pub tsc_hz: u64,
    /// The processor's brand string (CPUID 0x80000002-4), set after `judge`: which CPU model
    /// the run's paths and refusals are about.
    #[serde(default)]
    pub cpu_model: String,
    #[serde(default)]
    pub cpus: Vec<CpuReport>,
    /// Set after `judge` when a native round trip was measured.
    #[serde(default)]
    pub native: Option<NativeBench>,
    /// The run ended in a CPU exception or a panic (`write_fatal_summary`).
    #[serde(default, skip_serializing_if = "core::ops::Not::not")]
    pub fatal: bool,
    pub vms: Vec<VmReport>,
    /// Added by xtask, which launched the run: the platform and firmware (the kernel does not
    /// tell an emulator from another).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    /// Added by xtask under nested KVM: KVM's host, `kvm_intel`'s parameters, QEMU's flags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvm: Option<serde_json::Value>,
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
        mut vms: Vec<VmReport>,
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
        for vm in &mut vms {
            let mut total = ExitCounters::default();
            for c in &vm.vcpu_exits {
                total.add(c);
            }
            vm.exits = total;
        }
        Self {
            result,
            reason,
            cpus_online: online,
            cpus_expected,
            vmx: VmxReport::new(unsupported.is_none(), vmxon, &features),
            vmx_msrs: None,
            tsc_hz,
            cpu_model: String::new(),
            cpus,
            native: None,
            fatal: false,
            vms,
            platform: None,
            firmware: None,
            kvm: None,
        }
    }

    /// The VM called `name`.
    pub fn vm(&self, name: &str) -> Option<&VmReport> {
        self.vms.iter().find(|v| v.name == name)
    }
}

/// The summary as one line of JSON (no prefix). It is built in one string on the heap; if the
/// heap cannot hold it, the allocation failure ends the run with `write_fatal_summary`'s line.
impl fmt::Display for HvSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&serde_json::to_string(self).map_err(|_| fmt::Error)?)
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

/// The summary of a run that ended in a fatal error (CPU exception, panic), written without
/// allocating: the heap may be what failed. VMX features are reported false because the run
/// did not get far enough to vouch for them. A unit test reads it back as an `HvSummary`.
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

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;
    use serde_json::json;

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

    /// The line as xtask reads it.
    fn read_back(s: &HvSummary) -> HvSummary {
        serde_json::from_str(&s.to_string()).unwrap()
    }

    #[test]
    fn all_cpus_with_vmxon_pass_and_json_has_the_interface_fields() {
        let s =
            HvSummary::judge(2, None, all_features(), 50_000_000, vec![cpu(0, true, true), cpu(1, true, true)], vec![]);
        assert_eq!(s.result, RunResult::Pass);
        let v: serde_json::Value = serde_json::from_str(&s.to_string()).unwrap();
        assert_eq!(v["result"], "pass");
        assert!(v["reason"].is_null());
        assert_eq!((v["cpus_online"].as_u64(), v["cpus_expected"].as_u64()), (Some(2), Some(2)));
        assert_eq!(
            v["vmx"],
            json!({"supported": true, "vmxon_cpus": 2, "tertiary": true, "ipiv": false, "apicv": true,
                   "posted_interrupts": true, "x2apic_virt": true, "ept": true, "vpid": true, "unrestricted_guest": true})
        );
        assert_eq!(v["vms"], json!([]));
        assert_eq!(v["cpus"][1]["apic_id"], 1);
        assert!(v["native"].is_null());
        assert!(v.get("vmx_msrs").is_none() && v.get("platform").is_none(), "only where known");
        assert_eq!(read_back(&s), s);
        let mut s = s;
        s.native = Some(NativeBench::new(true, false, CycleStats { min: 1, median: 2, p99: 3, mean: 2, samples: 100 }));
        let v: serde_json::Value = serde_json::from_str(&s.to_string()).unwrap();
        assert_eq!((v["native"]["apic"].as_str(), v["native"]["target"].as_str()), (Some("x2apic"), Some("spin")));
        assert_eq!(
            (v["native"]["cycles"]["median"].as_u64(), v["native"]["iterations"].as_u64()),
            (Some(2), Some(100))
        );
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
        assert_eq!(read_back(&s), s);
    }

    #[test]
    fn no_vmx_is_unsupported_with_reason_and_all_features_false() {
        let s = HvSummary::judge(1, Some("no VMX".into()), all_features(), 0, vec![cpu(0, true, false)], vec![]);
        assert_eq!((s.result, s.reason.as_deref()), (RunResult::Unsupported, Some("no VMX")));
        let back = read_back(&s);
        assert_eq!(back.vmx, VmxReport::default(), "nothing vouched for");
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
        assert_eq!(read_back(&s).reason.as_deref(), Some("CPU with APIC ID 1: VMXON failed \"CF=1\""));
    }

    #[test]
    fn the_fatal_summary_reads_back_as_the_summary_type() {
        let mut out = String::new();
        write_fatal_summary(&mut out, format_args!("#PF at {:#x} \"x\"\n\u{1}", 0x1000), 3, 4).unwrap();
        let s: HvSummary = serde_json::from_str(&out).unwrap();
        assert_eq!((s.result, s.reason.as_deref()), (RunResult::Fail, Some("#PF at 0x1000 \"x\"\n\u{1}")));
        assert_eq!((s.cpus_online, s.cpus_expected, s.fatal), (3, 4, true));
        assert_eq!((s.vmx, s.vms.len(), s.cpus.len()), (VmxReport::default(), 0, 0));
    }

    fn vm(name: &str, result: VmResult, expect: VmResult) -> VmReport {
        let mut exits = ExitCounters::default();
        exits.count(crate::vmx::exit_reason::VMCALL);
        VmReport {
            ipiv: false,
            interrupt_path: Some(InterruptPath::Posted),
            interrupt_path_reason: Some("IPI virtualization: ipiv = off in the manifest".into()),
            hlt: Some(HltMode::Exit),
            timer: Some(TimerSource::HostApic),
            vcpu_exits: vec![exits.clone(), exits.clone()],
            reports: vec![Report::from_canonical("{\"vcpu\":0}".into()).unwrap()],
            report_exits: vec![Window { us: 1500, exits: exits.clone() }],
            ..VmReport::new(
                name.into(),
                2,
                result,
                Some("EPT violation at GPA 0x4000000".into()),
                expect,
                ApicMode::X2Apic,
            )
        }
    }

    #[test]
    fn vms_are_reported_and_judged_against_their_expectation() {
        let cpus = vec![cpu(0, true, true), cpu(1, true, true)];
        let ok = vec![vm("a", VmResult::Killed, VmResult::Killed), vm("b", VmResult::Pass, VmResult::Pass)];
        let s = HvSummary::judge(2, None, all_features(), 0, cpus.clone(), ok);
        assert_eq!(s.result, RunResult::Pass);
        let v: serde_json::Value = serde_json::from_str(&s.to_string()).unwrap();
        assert_eq!((v["vms"][0]["name"].as_str(), v["vms"][0]["result"].as_str()), (Some("a"), Some("killed")));
        assert_eq!(v["vms"][0]["exits"]["vmcall"], 2, "the vCPUs' exits summed");
        assert_eq!((v["vms"][0]["apic_mode"].as_str(), v["vms"][0]["ipiv"].as_bool()), (Some("x2apic"), Some(false)));
        assert_eq!((v["vms"][0]["hlt"].as_str(), v["vms"][0]["timer"].as_str()), (Some("exit"), Some("host-apic")));
        assert_eq!(v["vms"][0]["interrupt_path"], "posted");
        assert_eq!(v["vms"][0]["vcpu_exits"][1]["vmcall"], 1);
        assert_eq!(v["vms"][1]["reports"][0]["vcpu"], 0, "a report is a JSON value in the line, not a string");
        assert_eq!(v["vms"][1]["report_exits"][0], json!({"us": 1500, "exits": {"vmcall": 1}}));
        let back = read_back(&s);
        assert_eq!(back, s);
        assert_eq!(back.vm("b").unwrap().report_values(), vec![json!({"vcpu": 0})]);
        let bad = vec![vm("a", VmResult::Killed, VmResult::Pass)];
        let s = HvSummary::judge(2, None, all_features(), 0, cpus, bad);
        assert_eq!(s.result, RunResult::Fail);
        assert!(s.reason.unwrap().starts_with("VM a: expected pass, got killed (EPT violation"));
    }

    #[test]
    fn a_vm_without_the_hypervisor_leaves_its_fields_out() {
        let v = VmReport::new("hello-0".into(), 1, VmResult::Pass, None, VmResult::Pass, ApicMode::XApic);
        let text = serde_json::to_string(&v).unwrap();
        assert!(!text.contains("interrupt_path\"") && !text.contains("hlt"), "{text}");
        let brief = r#"{"name":"hello-0","vcpus":1,"result":"pass","reason":null,"expect":"pass","apic_mode":"xapic"}"#;
        assert_eq!(serde_json::from_str::<VmReport>(brief).unwrap(), v);
    }

    #[test]
    fn misspelt_or_unknown_fields_are_refused() {
        let ok = r#"{"result":"pass","reason":null,"vms":[]}"#;
        assert!(serde_json::from_str::<HvSummary>(ok).is_ok());
        for bad in [
            r#"{"result":"passed","reason":null,"vms":[]}"#,
            r#"{"result":"pass","reason":null,"vms":[],"cpus_onlin":1}"#,
            r#"{"result":"pass","reason":null,"vms":[{"name":"a","vcpus":1,"result":"pass","reason":null,"expect":"pass","apic_mode":"x3apic"}]}"#,
        ] {
            assert!(serde_json::from_str::<HvSummary>(bad).is_err(), "{bad}");
        }
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
        let mut s = String::from("\"");
        JsonEscape(&mut s).write_str("a\"b\\c\nd\u{1}").unwrap();
        s.push('"');
        assert_eq!(serde_json::from_str::<String>(&s).unwrap(), "a\"b\\c\nd\u{1}");
    }

    /// Any summary the kernel can build reads back as itself.
    mod round_trip {
        use super::*;
        use proptest::prelude::*;

        fn counters() -> impl Strategy<Value = ExitCounters> {
            let reasons = prop::collection::vec((0usize..crate::vmx::exit_reason::COUNT, 0u64..1 << 40), 0..6);
            (reasons, 0u64..1 << 40).prop_map(|(v, ticks)| {
                let mut c = ExitCounters::default();
                for (r, n) in v {
                    c.by_reason[r] = n;
                }
                c.ipi_exit_ticks = ticks;
                c
            })
        }

        fn text() -> impl Strategy<Value = String> {
            "[a-z \"\\\\\n\u{1}\u{e9}]{0,12}"
        }

        fn vm_report() -> impl Strategy<Value = VmReport> {
            (
                text(),
                1u32..64,
                prop::sample::select(vec![VmResult::Pass, VmResult::Fail, VmResult::Killed, VmResult::Timeout]),
                prop::option::of(text()),
                prop::sample::select(ApicMode::ALL.to_vec()),
                prop::option::of(prop::sample::select(InterruptPath::BEST_FIRST.to_vec())),
                prop::option::of(prop::sample::select(HltMode::ALL.to_vec())),
                prop::option::of(prop::sample::select(TimerSource::ALL.to_vec())),
                prop::collection::vec(counters(), 0..4),
                prop::collection::vec((any::<i32>(), text()), 0..3),
                prop::collection::vec((any::<u64>(), counters()), 0..3),
            )
                .prop_map(
                    |(name, vcpus, result, reason, apic, path, hlt, timer, vcpu_exits, reports, windows)| VmReport {
                        ipiv: path == Some(InterruptPath::Ipiv),
                        interrupt_path: path,
                        interrupt_path_reason: reason.clone(),
                        hlt,
                        timer,
                        console_dropped_bytes: vcpus as u64 * 3,
                        vcpu_exits,
                        reports: reports
                            .into_iter()
                            .map(|(n, s)| {
                                let text = serde_json::to_string(&json!({"n": n, "s": s})).unwrap();
                                Report::from_canonical(text).unwrap()
                            })
                            .collect(),
                        report_exits: windows.into_iter().map(|(us, exits)| Window { us, exits }).collect(),
                        ..VmReport::new(name, vcpus, result, reason, result, apic)
                    },
                )
        }

        proptest! {
            #[test]
            fn summaries(
                expected in 1u32..5,
                unsupported in prop::option::of(text()),
                cpus in prop::collection::vec((any::<u32>(), any::<bool>(), any::<bool>(), prop::option::of(text())), 0..5),
                vms in prop::collection::vec(vm_report(), 0..3),
                tsc_hz in any::<u64>(),
                model in text(),
                msrs in prop::option::of((any::<u64>(), prop::option::of(any::<u64>()))),
                native in prop::option::of((any::<bool>(), any::<bool>(), any::<u64>())),
            ) {
                let cpus = cpus
                    .into_iter()
                    .map(|(apic_id, online, vmxon, error)| CpuReport { apic_id, bsp: apic_id == 0, online, vmxon, error })
                    .collect();
                let mut s = HvSummary::judge(expected, unsupported, all_features(), tsc_hz, cpus, vms);
                s.cpu_model = model;
                s.vmx_msrs = msrs.map(|(basic, p3)| VmxMsrs { basic, procbased3: p3, ..Default::default() });
                s.native = native.map(|(x2, halt, min)| {
                    NativeBench::new(x2, halt, CycleStats { min, median: min / 2, p99: 1, mean: 2, samples: 3 })
                });
                let text = s.to_string();
                prop_assert!(!text.contains('\n'), "one line");
                let back: HvSummary = serde_json::from_str(&text).unwrap();
                prop_assert_eq!(&back, &s);
                prop_assert_eq!(back.to_string(), text);
            }
        }
    }
}
