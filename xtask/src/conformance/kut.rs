//! kvm-unit-tests as inputs: the entries of a folder's `unittests.cfg` (upstream's format:
//! `[name]` sections with `file`, `smp`, `test_args`, `qemu_params`, ...), what each entry's
//! QEMU flags ask of the virtual CPU, and the verdict read from a test kernel's console
//! (`PASS:`, `FAIL:`, `SKIP:` lines, the `SUMMARY:` line, the `vmexit` figures) and its exit
//! code. Pure text in, values out: unit-tested on the host.

use std::collections::BTreeMap;

/// One test: a `[section]` of unittests.cfg, or a binary the file does not mention (run with
/// no arguments on one vCPU).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub file: String,
    pub smp: u32,
    /// The `-append` words (`test_args`), unquoted.
    pub args: String,
    pub qemu_params: String,
    /// Upstream's timeout in seconds under KVM on hardware (informational: Bochs is slower).
    pub timeout_s: Option<u64>,
}

impl Entry {
    /// Whether the entry's QEMU flags hide x2APIC (`-cpu ...,-x2apic`): then only xAPIC mode
    /// applies, and the VM's CPUID has no x2APIC.
    pub fn hides_x2apic(&self) -> bool {
        self.cpu_flags().any(|f| f == "-x2apic")
    }

    /// The `-cpu` model's `+flag`/`-flag` list.
    fn cpu_flags(&self) -> impl Iterator<Item = &str> {
        let mut words = self.qemu_params.split_whitespace();
        let mut cpu = None;
        while let Some(w) = words.next() {
            if w == "-cpu" {
                cpu = words.next();
            }
        }
        cpu.into_iter().flat_map(|c| c.split(',').skip(1))
    }

    /// QEMU flags this platform does not follow, with why (they change nothing the test checks
    /// here): reported beside the result.
    pub fn ignored_params(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut words = self.qemu_params.split_whitespace().peekable();
        while let Some(w) = words.next() {
            match w {
                "-cpu" => {
                    if let Some(c) = words.next() {
                        let model = c.split(',').next().unwrap_or_default();
                        out.push(format!(
                            "-cpu {model}: the VM's CPU is the host model's, filtered (x2apic and tsc-deadline follow the flags)"
                        ));
                    }
                }
                "-machine" => {
                    if let Some(m) = words.next() {
                        out.push(format!("-machine {m}: the VM's PC always has its PIT (it does not hold back IPI virtualization here)"));
                    }
                }
                other => out.push(format!("{other}: not applicable")),
            }
        }
        out
    }
}

/// Parses unittests.cfg (comments start with `#`; values may be quoted with `'` or `"`).
pub fn parse_cfg(text: &str) -> Result<Vec<Entry>, String> {
    let mut entries: Vec<Entry> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            entries.push(Entry {
                name: name.trim().to_string(),
                file: String::new(),
                smp: 1,
                args: String::new(),
                qemu_params: String::new(),
                timeout_s: None,
            });
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected `key = value` or `[name]`, got {raw:?}", n + 1));
        };
        let Some(e) = entries.last_mut() else {
            return Err(format!("line {}: `{}` before any [section]", n + 1, key.trim()));
        };
        let value = unquote(value.trim());
        match key.trim() {
            "file" => e.file = value.to_string(),
            "smp" => {
                e.smp = value.parse().map_err(|_| format!("line {}: smp must be a number, not {value:?}", n + 1))?
            }
            "test_args" | "extra_params" if value.starts_with("-append") => {
                e.args = unquote(value.trim_start_matches("-append").trim()).to_string()
            }
            "test_args" => e.args = value.to_string(),
            "qemu_params" | "extra_params" => {
                e.qemu_params = [e.qemu_params.as_str(), value].join(" ").trim().to_string()
            }
            "timeout" => e.timeout_s = value.trim_end_matches('s').parse().ok(),
            // arch, groups, accel, check: nothing for this platform to act on.
            _ => {}
        }
    }
    if let Some(e) = entries.iter().find(|e| e.file.is_empty()) {
        return Err(format!("[{}] has no `file`", e.name));
    }
    Ok(entries)
}

fn unquote(v: &str) -> &str {
    for q in ['\'', '"'] {
        if let Some(inner) = v.strip_prefix(q).and_then(|v| v.strip_suffix(q)) {
            return inner;
        }
    }
    v
}

/// The entries to run for the binaries in a folder: the cfg's entries whose file is there, in
/// the cfg's order, then each binary the cfg does not name (its file stem, one vCPU, no
/// arguments).
pub fn entries_for(cfg: &[Entry], binaries: &[String]) -> Vec<Entry> {
    let mut out: Vec<Entry> = cfg.iter().filter(|e| binaries.contains(&e.file)).cloned().collect();
    for b in binaries {
        if !cfg.iter().any(|e| &e.file == b) {
            let name = b.strip_suffix(".flat").unwrap_or(b).to_string();
            out.push(Entry {
                name,
                file: b.clone(),
                smp: 1,
                args: String::new(),
                qemu_params: String::new(),
                timeout_s: None,
            });
        }
    }
    out
}

/// What a test kernel's console said.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub passed: Vec<String>,
    pub failed: Vec<String>,
    /// `SKIP:` lines (their text is the reason), and `vmexit`'s "name (skipped)".
    pub skipped: Vec<String>,
    pub summary: Option<String>,
    /// `vmexit` figures: test name → TSC ticks per iteration.
    pub figures: BTreeMap<String, u64>,
    /// The first lines of an abort (an unhandled exception, an assertion).
    pub abort: Option<String>,
}

impl Verdict {
    /// A one-line account of the PASS/FAIL/SKIP lines, SUMMARY and figures.
    pub fn one_line(&self) -> Option<String> {
        let mut parts = Vec::new();
        if !self.passed.is_empty() || !self.failed.is_empty() || !self.skipped.is_empty() {
            parts.push(format!(
                "{} passed, {} failed, {} skipped",
                self.passed.len(),
                self.failed.len(),
                self.skipped.len()
            ));
        }
        if let Some(s) = &self.summary {
            parts.push(format!("SUMMARY: {s}"));
        }
        if !self.figures.is_empty() {
            let f: Vec<String> = self.figures.iter().map(|(k, n)| format!("{k} {n}")).collect();
            parts.push(format!("{} (TSC ticks per iteration; under Bochs, path lengths)", f.join(", ")));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// Reads the lines a VM named `vm` printed on the hypervisor's console (`[vm/N] text`).
pub fn guest_lines<'a>(serial: &'a str, vm: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    serial.lines().filter_map(move |l| {
        let rest = l.strip_prefix('[')?.strip_prefix(vm)?.strip_prefix('/')?;
        let (vcpu, text) = rest.split_once("] ")?;
        vcpu.bytes().all(|b| b.is_ascii_digit()).then_some(text)
    })
}

/// The verdict in a test kernel's output lines.
pub fn verdict<'a>(lines: impl Iterator<Item = &'a str>) -> Verdict {
    let mut v = Verdict::default();
    for line in lines {
        let line = line.trim_end();
        if let Some(t) = line.strip_prefix("PASS: ").or_else(|| line.strip_prefix("XFAIL: ")) {
            v.passed.push(t.to_string());
        } else if let Some(t) = line.strip_prefix("FAIL: ").or_else(|| line.strip_prefix("XPASS: ")) {
            v.failed.push(t.to_string());
        } else if let Some(t) = line.strip_prefix("SKIP: ") {
            v.skipped.push(t.to_string());
        } else if line.starts_with("SUMMARY: ") {
            v.summary = Some(line.trim_start_matches("SUMMARY: ").to_string());
        } else if (line.starts_with("Unhandled exception") || line.contains("assert failed")) && v.abort.is_none() {
            v.abort = Some(line.trim().to_string());
        } else if let Some((name, rest)) = line.split_once(' ') {
            // vmexit: "<test> <ticks>" or "<test> (skipped)".
            let plain =
                |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if plain(name) && rest == "(skipped)" {
                v.skipped.push(format!("{name}: not offered here"));
            } else if plain(name)
                && let Ok(ticks) = rest.trim().parse::<u64>()
            {
                v.figures.insert(name.to_string(), ticks);
            }
        }
    }
    v
}

/// The outcome of one run, as kvm-unit-tests' own runner classifies it (`scripts/runtime.bash`:
/// exit code 0 is PASS, 77 SKIP, anything else FAIL) plus what only a hypervisor can tell: the
/// VM killed or out of time is a failure too, with the hypervisor's reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    Skip,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::Skip => "skip",
        }
    }
}

/// The exit code a VM's reason records (`isa-debug-exit: 0`, `isa-debug-exit: code N ...`).
pub fn exit_code(reason: &str) -> Option<u32> {
    let rest = reason.split("isa-debug-exit: ").nth(1)?;
    let rest = rest.strip_prefix("code ").unwrap_or(rest);
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

pub fn classify(code: Option<u32>, v: &Verdict) -> Outcome {
    match code {
        Some(0) if v.failed.is_empty() && v.abort.is_none() => Outcome::Pass,
        Some(77) => Outcome::Skip,
        _ => Outcome::Fail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = "# header\n\n[x2apic]\nfile = apic.flat\nsmp = 2\nqemu_params = -cpu qemu64,+x2apic,+tsc-deadline\narch = x86_64\ntimeout = 30\ngroups = apic\n\n[xapic]\nfile = apic.flat\nsmp = 2\nqemu_params = -cpu qemu64,-x2apic,+tsc-deadline\n\n[vmexit_ipi]\nfile = vmexit.flat\nsmp = 2\ntest_args = 'ipi'\nqemu_params = -machine pit=off\n\n[vmexit_tscdeadline]\nfile = vmexit.flat\ntest_args = tscdeadline\n";

    #[test]
    fn upstream_cfg_entries() {
        let e = parse_cfg(CFG).unwrap();
        assert_eq!(e.len(), 4);
        assert_eq!(
            (e[0].name.as_str(), e[0].file.as_str(), e[0].smp, e[0].timeout_s),
            ("x2apic", "apic.flat", 2, Some(30))
        );
        assert!(!e[0].hides_x2apic());
        assert!(e[1].hides_x2apic());
        assert_eq!(e[2].args, "ipi", "quotes dropped");
        assert_eq!(e[3].args, "tscdeadline");
        assert_eq!(e[3].smp, 1);
        assert!(e[2].ignored_params()[0].starts_with("-machine pit=off"));
        assert!(parse_cfg("file = x.flat\n").is_err());
        assert!(parse_cfg("[a]\nsmp = 2\n").unwrap_err().contains("no `file`"));
        assert!(parse_cfg("[a]\nfile = a.flat\nsmp = two\n").is_err());
    }

    #[test]
    fn binaries_without_an_entry_run_alone() {
        let cfg = parse_cfg(CFG).unwrap();
        let bins = ["apic.flat", "tscdeadline_latency.flat"].map(String::from);
        let e = entries_for(&cfg, &bins);
        let names: Vec<&str> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["x2apic", "xapic", "tscdeadline_latency"]);
        assert_eq!(e[2].smp, 1);
    }

    #[test]
    fn console_verdicts() {
        let log = "[cpu0] INFO boot\n[kernel/0] PASS: apic existence\n[kernel/1] FAIL: PV IPIs testing\n[kernel/0] SKIP: no x2apic\n[kernel/0] ipi 87\n[kernel/0] wr_tsx_ctrl_msr (skipped)\n[other/0] PASS: not ours\n[kernel/0] SUMMARY: 56 tests, 1 unexpected failures\n";
        let v = verdict(guest_lines(log, "kernel"));
        assert_eq!(v.passed, ["apic existence"]);
        assert_eq!(v.failed, ["PV IPIs testing"]);
        assert_eq!(v.skipped, ["no x2apic", "wr_tsx_ctrl_msr: not offered here"]);
        assert_eq!(v.figures.get("ipi"), Some(&87));
        assert_eq!(v.summary.as_deref(), Some("56 tests, 1 unexpected failures"));
        assert_eq!(classify(Some(1), &v), Outcome::Fail);
        let clean = Verdict { passed: vec!["x".into()], ..Verdict::default() };
        assert_eq!(classify(Some(0), &clean), Outcome::Pass);
        assert_eq!(classify(Some(77), &clean), Outcome::Skip);
        assert_eq!(classify(None, &clean), Outcome::Fail, "killed or out of time");
        let aborted = verdict(["Unhandled exception 13 #GP(0) at ip 0000000000400f5b"].into_iter());
        assert!(aborted.abort.is_some());
        assert_eq!(classify(Some(0), &aborted), Outcome::Fail);
    }

    #[test]
    fn exit_codes_from_reasons() {
        assert_eq!(exit_code("vCPU 0: isa-debug-exit: 0"), Some(0));
        assert_eq!(exit_code("vCPU 0: isa-debug-exit: code 63 after: STACK"), Some(63));
        assert_eq!(exit_code("vCPU 1: watchdog: still running"), None);
    }
}
