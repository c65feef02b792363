//! REPORT hypercall values: `exits::report::canonical` on arbitrary guest bytes. What it keeps
//! goes verbatim into the one-line HV-SUMMARY, so a kept value must be a fixed point (canonical
//! again gives itself), one line, JSON by every parser involved, and within the depth limit.
#![no_main]

use hvcore::exits::hypercall::is_json;
use hvcore::exits::report::{MAX_DEPTH, Refusal, canonical};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fuzz_target!(|bytes: &[u8]| {
    match canonical(bytes) {
        Ok(report) => {
            let s = report.text();
            assert_eq!(canonical(s.as_bytes()), Ok(report.clone()), "canonical form is not a fixed point");
            assert!(!s.contains(['\n', '\r']), "canonical form spans lines: {s:?}");
            assert!(is_json(s.as_bytes()), "canonical form fails is_json: {s:?}");
            let kept: Value = serde_json::from_str(s).expect("canonical form parses");
            let original: Value = serde_json::from_slice(bytes).expect("accepted input parses");
            assert_eq!(kept, original, "canonical form changed the value");
            assert!(depth(&kept) <= MAX_DEPTH);
            // Placed inside the summary (4 more levels), any parser still takes it.
            let wrapped = format!("{{\"vms\":[{{\"reports\":[{s}]}}]}}");
            serde_json::from_str::<Value>(&wrapped).expect("summary with the report parses");
        }
        Err(Refusal::NotJson) => {
            // Refused within the depth limit: serde_json (std) refuses it too.
            if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
                panic!("refused as not JSON but parses as {v:?}");
            }
        }
        Err(Refusal::TooDeep) => {}
    }
});
