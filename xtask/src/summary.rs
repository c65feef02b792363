//! Finding and checking the kernel's `HV-SUMMARY {json}` line in a serial log.

use anyhow::{Context, Result};
use hvcore::summary::{HvSummary, SUMMARY_PREFIX};

/// The last summary line in the log, read as the kernel's summary type (hvcore::summary): the
/// one way xtask reads a summary.
pub fn find(log: &str) -> Result<Option<HvSummary>> {
    let Some(line) = log.lines().rev().find_map(|l| l.trim_end_matches('\r').strip_prefix(SUMMARY_PREFIX)) else {
        return Ok(None);
    };
    let s = serde_json::from_str(line).with_context(|| format!("HV-SUMMARY does not read as a summary: {line}"))?;
    Ok(Some(s))
}

/// A summary written as a JSON value in a test, read as the kernel's line is.
#[cfg(test)]
pub fn from_json(v: serde_json::Value) -> HvSummary {
    serde_json::from_str(&v.to_string()).expect("a summary")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_last_summary_line() {
        let log = "[cpu0] INFO  boot\nHV-SUMMARY {\"result\":\"fail\"}\nnoise\r\nHV-SUMMARY {\"result\":\"pass\",\"reason\":null,\"cpus_online\":4,\"vms\":[]}\r\n";
        let s = find(log).unwrap().unwrap();
        assert_eq!((s.result, s.cpus_online), (hvcore::summary::RunResult::Pass, 4));
    }

    #[test]
    fn missing_or_broken_summaries() {
        assert!(find("no summary here\n").unwrap().is_none());
        assert!(find("HV-SUMMARY {\"result\":").is_err());
        assert!(find("HV-SUMMARY {\"cpus\":[],\"vms\":[]}").is_err(), "no result");
        assert!(find("HV-SUMMARY {\"result\":\"pass\",\"reason\":null,\"vms\":[],\"cpus_onlin\":1}").is_err());
    }

    /// Whatever bytes a guest hands to REPORT, the kernel either refuses them or keeps a value
    /// that, written by the kernel's summary writer, xtask's parser reads back as that value.
    mod report_round_trip {
        use super::*;
        use hvcore::exits::counters::ExitCounters;
        use hvcore::exits::report::{Report, canonical};
        use hvcore::manifest::{ApicMode, VmResult};
        use hvcore::summary::{CpuReport, VmReport};
        use hvcore::vmx::caps::VmxFeatures;
        use hvcore::vmx::path_kind::InterruptPath;
        use proptest::prelude::*;
        use serde_json::Value;

        fn summary_with(report: Report) -> String {
            let vm = VmReport {
                ipiv: true,
                interrupt_path: Some(InterruptPath::Ipiv),
                vcpu_exits: vec![ExitCounters::default()],
                reports: vec![report],
                ..VmReport::new("hostile".into(), 1, VmResult::Pass, None, VmResult::Pass, ApicMode::XApic)
            };
            let cpus = vec![CpuReport { apic_id: 0, bsp: true, online: true, vmxon: true, error: None }];
            let s = HvSummary::judge(1, None, VmxFeatures::default(), 0, cpus, vec![vm]);
            format!("[cpu0] INFO  noise\n{SUMMARY_PREFIX}{s}\n")
        }

        fn check(bytes: &[u8]) -> std::result::Result<(), TestCaseError> {
            let Ok(kept) = canonical(bytes) else { return Ok(()) };
            let log = summary_with(kept.clone());
            let v = find(&log).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
            let got = v.as_ref().unwrap().vms[0].reports[0].value();
            let want: Value = serde_json::from_str(kept.text()).unwrap();
            prop_assert_eq!(&got, &want);
            // What the guest meant is what was kept.
            prop_assert_eq!(&serde_json::from_slice::<Value>(bytes).unwrap(), &want);
            Ok(())
        }

        /// JSON-looking text: the tokens and escapes that broke the summary before.
        fn jsonish() -> impl Strategy<Value = Vec<u8>> {
            let token = prop_oneof![
                Just("{".to_string()),
                Just("}".to_string()),
                Just("[".to_string()),
                Just("]".to_string()),
                Just(",".to_string()),
                Just(":".to_string()),
                Just("\"k\"".to_string()),
                Just("\"\\ud800\"".to_string()),
                Just("\"\\n\\u0000\"".to_string()),
                Just("1e999".to_string()),
                Just("-0".to_string()),
                Just("12345678901234567890123".to_string()),
                Just("2.5e-308".to_string()),
                Just("null".to_string()),
                Just("true".to_string()),
                Just(" \n\r\t".to_string()),
                Just("\u{2028}".to_string()),
                Just("\"HV-SUMMARY {\\\"result\\\":\\\"pass\\\"}\"".to_string()),
                "[a-z0-9\"\\\\]{0,4}",
            ];
            prop::collection::vec(token, 0..60).prop_map(|t| t.concat().into_bytes())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]

            #[test]
            fn any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
                check(&bytes)?;
            }

            #[test]
            fn json_like_text(bytes in jsonish()) {
                check(&bytes)?;
            }

            #[test]
            fn nested(depth in 0usize..200, open in "[\\[{]") {
                let close = if open == "[" { "]" } else { "}" };
                let inner = if open == "[" { "1" } else { "" };
                let mut text = String::new();
                for i in 0..depth {
                    text.push_str(&open);
                    if open == "{" { text.push_str(&format!("\"k{i}\":")); }
                }
                text.push_str(if open == "{" && depth > 0 { "null" } else { inner });
                text.push_str(&close.repeat(depth));
                check(text.as_bytes())?;
            }
        }
    }
}
