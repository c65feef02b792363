//! A conformance run's records as people read them: one line per job, the table of tests by
//! path and APIC mode, and every skip with its reason.

use serde_json::Value;

use super::plan::NEEDS_TEST_DEVICE;

/// One record in a line: result, counts, figures, reason, time.
pub fn line(r: &Value) -> String {
    let figures: Vec<String> =
        r["figures"].as_object().map(|m| m.iter().map(|(k, v)| format!("{k} {v}")).collect()).unwrap_or_default();
    let mut s = format!(
        "{} ({} passed, {} failed, {} skipped)",
        r["result"].as_str().unwrap_or("?").to_uppercase(),
        r["pass"].as_u64().unwrap_or(0),
        r["fail"].as_u64().unwrap_or(0),
        r["skip"].as_u64().unwrap_or(0)
    );
    if !figures.is_empty() {
        s += &format!(" [{}]", figures.join(", "));
    }
    if let Some(why) = r["reason"].as_str() {
        s += &format!(": {why}");
    }
    if let Some(f) = r["failures"].as_array().filter(|f| !f.is_empty()) {
        let names: Vec<&str> = f.iter().filter_map(Value::as_str).take(3).collect();
        s += &format!(" FAIL: {}", names.join("; "));
        if f.len() > 3 {
            s += &format!("; and {} more", f.len() - 3);
        }
    }
    if let Some(t) = r["seconds"].as_f64() {
        s += &format!(" ({t:.0} s)");
    }
    s
}

/// The table: one row per test, one column per path/APIC mode, each cell the result and
/// counts.
pub fn table(records: &[Value]) -> String {
    let mut columns: Vec<String> = Vec::new();
    let mut rows: Vec<String> = Vec::new();
    for r in records {
        let col = format!("{}/{}", r["path"].as_str().unwrap_or("?"), r["apic"].as_str().unwrap_or("?"));
        if !columns.contains(&col) {
            columns.push(col);
        }
        let row = r["test"].as_str().unwrap_or("?").to_string();
        if !rows.contains(&row) {
            rows.push(row);
        }
    }
    let mut out = format!("{:<22}", "test");
    for c in &columns {
        out += &format!(" {c:>24}");
    }
    out += "\n";
    for row in &rows {
        out += &format!("{row:<22}");
        for c in &columns {
            let cell = records
                .iter()
                .find(|r| {
                    r["test"] == row.as_str()
                        && format!("{}/{}", r["path"].as_str().unwrap_or("?"), r["apic"].as_str().unwrap_or("?")) == *c
                })
                .map(|r| {
                    format!(
                        "{} {}/{}/{}",
                        r["result"].as_str().unwrap_or("?"),
                        r["pass"].as_u64().unwrap_or(0),
                        r["fail"].as_u64().unwrap_or(0),
                        r["skip"].as_u64().unwrap_or(0)
                    )
                })
                .unwrap_or_else(|| "-".into());
            out += &format!(" {cell:>24}");
        }
        out += "\n";
    }
    out
}

/// Every SKIP with its reason, and what `TEST_DEVICE=0` leaves out.
pub fn skips(records: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in records {
        for s in r["skips"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            let item = format!("{}: SKIP {s}", r["test"].as_str().unwrap_or("?"));
            if !out.contains(&item) {
                out.push(item);
            }
        }
    }
    for r in records.iter().filter(|r| r["result"] == "skip") {
        if let Some(why) = r["reason"].as_str() {
            let item = format!("{}: {why}", r["test"].as_str().unwrap_or("?"));
            if !out.contains(&item) {
                out.push(item);
            }
        }
    }
    for (file, why) in NEEDS_TEST_DEVICE {
        if records.iter().any(|r| r["file"] == *file) {
            out.push(format!("{file}: not attempted on either side (TEST_DEVICE=0, as for a machine without QEMU's pc-testdev): {why}"));
        }
    }
    out
}
