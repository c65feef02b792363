//! A benchmark's targets: each met, NOT MET or not measured, printed and written to JSON.

use serde_json::{Value, json};

/// One target and whether the measurements meet it.
#[derive(Debug)]
pub struct TargetCheck {
    pub what: String,
    /// `None`: a cell it needs was not measured (e.g. no IPIv on this CPU).
    pub met: Option<bool>,
    pub detail: String,
}

/// Prints the targets as met, NOT MET or not measured; whether none was missed.
pub fn print_targets(checks: &[TargetCheck]) -> bool {
    let mut ok = true;
    println!("\ntargets:");
    for c in checks {
        let mark = match c.met {
            Some(true) => "met",
            Some(false) => {
                ok = false;
                "NOT MET"
            }
            None => "not measured",
        };
        println!("  [{mark}] {} ({})", c.what, c.detail);
    }
    ok
}

/// The targets as the JSON file lists them.
pub fn targets_json(checks: &[TargetCheck]) -> Value {
    checks.iter().map(|c| json!({"target": c.what, "met": c.met, "detail": c.detail})).collect()
}
