//! Finding and checking the kernel's `HV-SUMMARY {json}` line in a serial log.

use anyhow::{Context, Result, bail};
use hvcore::summary::SUMMARY_PREFIX;
use serde_json::Value;

/// The last summary line in the log, parsed.
pub fn find(log: &str) -> Result<Option<Value>> {
    let Some(line) = log.lines().rev().find_map(|l| l.trim_end_matches('\r').strip_prefix(SUMMARY_PREFIX)) else {
        return Ok(None);
    };
    let v: Value = serde_json::from_str(line).with_context(|| format!("HV-SUMMARY is not valid JSON: {line}"))?;
    if !v.is_object() || !v["result"].is_string() {
        bail!("HV-SUMMARY has no \"result\": {line}");
    }
    Ok(Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_last_summary_line() {
        let log = "[cpu0] INFO  boot\nHV-SUMMARY {\"result\":\"fail\"}\nnoise\r\nHV-SUMMARY {\"result\":\"pass\",\"cpus_online\":4}\r\n";
        let v = find(log).unwrap().unwrap();
        assert_eq!(v["result"], "pass");
        assert_eq!(v["cpus_online"], 4);
    }

    #[test]
    fn missing_or_broken_summaries() {
        assert!(find("no summary here\n").unwrap().is_none());
        assert!(find("HV-SUMMARY {\"result\":").is_err());
        assert!(find("HV-SUMMARY {\"cpus\":1}").is_err());
    }
}
