//! Summary statistics of cycle samples: what the IPI benchmark reports. No allocation, so the
//! kernel (native runs) and guests use it too.

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "alloc", derive(serde::Serialize, serde::Deserialize))]
pub struct CycleStats {
    pub min: u64,
    pub median: u64,
    pub p99: u64,
    pub mean: u64,
    pub samples: u64,
}

/// Sorts `samples` in place and summarizes them (nearest-rank percentiles).
pub fn summarize(samples: &mut [u64]) -> CycleStats {
    if samples.is_empty() {
        return CycleStats::default();
    }
    samples.sort_unstable();
    let n = samples.len();
    let rank = |p: usize| samples[((n * p).div_ceil(100)).clamp(1, n) - 1];
    CycleStats {
        min: samples[0],
        median: rank(50),
        p99: rank(99),
        mean: samples.iter().sum::<u64>() / n as u64,
        samples: n as u64,
    }
}

impl core::fmt::Display for CycleStats {
    /// The JSON object serde writes (`{"min":..,"median":..,"p99":..,"mean":..,"samples":..}`),
    /// without a heap: guests report it (the benchmark's `cycles`) with no allocator.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            r#"{{"min":{},"median":{},"p99":{},"mean":{},"samples":{}}}"#,
            self.min, self.median, self.p99, self.mean, self.samples
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut s: std::vec::Vec<u64> = (1..=100).rev().collect();
        let st = summarize(&mut s);
        assert_eq!((st.min, st.median, st.p99, st.mean, st.samples), (1, 50, 99, 50, 100));
        let mut one = [7];
        assert_eq!(summarize(&mut one), CycleStats { min: 7, median: 7, p99: 7, mean: 7, samples: 1 });
        assert_eq!(summarize(&mut []), CycleStats::default());
        let mut odd = [5, 1, 9];
        assert_eq!(summarize(&mut odd).median, 5);
    }

    #[test]
    fn json_form() {
        let st = CycleStats { min: 1, median: 2, p99: 3, mean: 4, samples: 5 };
        let v = serde_json::to_value(st).unwrap();
        assert_eq!(v, serde_json::json!({"min": 1, "median": 2, "p99": 3, "mean": 4, "samples": 5}));
        assert_eq!(serde_json::from_value::<CycleStats>(v).unwrap(), st);
        assert_eq!(std::format!("{st}"), serde_json::to_string(&st).unwrap(), "one shape, with or without a heap");
    }
}
