//! The REPORT hypercall's value check. What a guest reports is written verbatim into the run's
//! one-line `HV-SUMMARY`, which xtask must always be able to parse, so a value is kept only in
//! a canonical form: parsed as JSON, then written back compactly by serde_json. That drops
//! whitespace (newlines between tokens would split the line), refuses numbers that do not fit an
//! f64 (`1e999`) and strings that are not Unicode (a lone surrogate `"\ud800"`), and the nesting
//! is limited so that the value, placed inside the summary, stays within the depth any JSON
//! parser (serde_json: 128) accepts.

use alloc::boxed::Box;
use alloc::string::String;
use core::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Deepest nesting of arrays and objects a report may have; the summary adds 4 levels.
pub const MAX_DEPTH: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Arrays and objects nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// Not one well-formed JSON value (with numbers that fit an f64 and strings of Unicode
    /// scalar values).
    NotJson,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::TooDeep => write!(f, "nested deeper than {MAX_DEPTH}"),
            Refusal::NotJson => f.write_str("not one well-formed JSON value"),
        }
    }
}

/// A guest's REPORT value in the canonical text `canonical` made, written into HV-SUMMARY as
/// is: kept as text, a hostile guest's 64 KiB of `[1,1,…]` costs 64 KiB of
/// heap, not a tree of values ten times that.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Report(Box<RawValue>);

impl Report {
    /// `None` if `text` is not one JSON value (canonical text always is).
    pub fn from_canonical(text: String) -> Option<Self> {
        RawValue::from_string(text).ok().map(Self)
    }

    pub fn text(&self) -> &str {
        self.0.get()
    }

    /// The value, parsed (JSON text a `Report` holds always parses).
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).unwrap_or(serde_json::Value::Null)
    }
}

impl PartialEq for Report {
    fn eq(&self, other: &Self) -> bool {
        self.text() == other.text()
    }
}

impl Eq for Report {}

/// The canonical, single-line form of the JSON value in `bytes`, or why it is refused.
pub fn canonical(bytes: &[u8]) -> Result<Report, Refusal> {
    // Bound the nesting before parsing: the parser recurses per level, on a small kernel stack.
    if nesting(bytes) > MAX_DEPTH {
        return Err(Refusal::TooDeep);
    }
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| Refusal::NotJson)?;
    let text = serde_json::to_string(&value).map_err(|_| Refusal::NotJson)?;
    Report::from_canonical(text).ok_or(Refusal::NotJson)
}

/// The deepest nesting of `[` and `{` outside strings (a bound, not a validation: brackets
/// that do not match are left to the parser).
fn nesting(bytes: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    #[test]
    fn values_are_made_compact() {
        assert_eq!(
            canonical(b" {\"a\" :\n [1, 2.5, null, true],\r\n\t\"b\": \"x\\ny\"} ").unwrap().text(),
            r#"{"a":[1,2.5,null,true],"b":"x\ny"}"#
        );
        assert_eq!(canonical(br#""\u00e9\ud83d\ude00""#).unwrap().text(), "\"\u{e9}\u{1f600}\"");
        assert_eq!(canonical(b"-0e0").unwrap().text(), "-0.0");
        assert_eq!(canonical(b"18446744073709551615").unwrap().text(), "18446744073709551615");
    }

    /// Found by `cargo xtask fuzz --target report_json`: with serde_json's default float
    /// parser, the canonical form of `111111111111111111111111` (1.1111111111111111e+23) read
    /// back one ULP off (1.1111111111111113e+23), so the canonical form was not a fixed point
    /// and xtask read a different number than the guest reported.
    #[test]
    fn canonical_floats_read_back_exactly() {
        for v in
            ["111111111111111111111111", "1.1111111111111111e+23", "2.2250738585072011e-308", "0.1", "9007199254740993"]
        {
            let once = canonical(v.as_bytes()).unwrap();
            assert_eq!(canonical(once.text().as_bytes()).as_ref(), Ok(&once), "{v}");
            let read: f64 = serde_json::from_str(once.text()).unwrap();
            assert_eq!(alloc::format!("{read:e}"), alloc::format!("{:e}", v.parse::<f64>().unwrap()), "{v}");
        }
        assert_eq!(canonical(b"111111111111111111111111").unwrap().text(), "1.1111111111111111e+23");
    }

    #[test]
    fn what_breaks_the_summary_is_refused() {
        for bad in [&b"1e999"[..], b"-1e400", br#""\ud800""#, br#""\udc00x""#, b"{} {}", b"", b"[1,]", b"\xff"] {
            assert_eq!(canonical(bad), Err(Refusal::NotJson), "{:?}", core::str::from_utf8(bad));
        }
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(canonical(deep(MAX_DEPTH).as_bytes()).is_ok());
        assert_eq!(canonical(deep(MAX_DEPTH + 1).as_bytes()), Err(Refusal::TooDeep));
        assert_eq!(canonical(deep(100_000).as_bytes()), Err(Refusal::TooDeep));
        // Brackets inside strings do not count.
        assert!(canonical(format!("\"{}\\\"{}\"", "[".repeat(100), "{".repeat(100)).as_bytes()).is_ok());
    }
}
