//! The benchmark plots (plotters, SVG): one horizontal bar per cell; for the IPI round trip the
//! median cycles with a whisker to p99, coloured by APIC mode, or by hypervisor when a peer's
//! records are there (each cell's bars then side by side).

use anyhow::{Result, anyhow};
use plotters::prelude::*;
use serde_json::Value;
use std::path::Path;

/// The hypervisors of the records, in the order their bars are coloured.
const HYPERVISORS: [&str; 3] = ["native", "ipiv-hv", "kvm"];

pub fn bars(path: &Path, records: &[Value], unit: &str, platform: &str) -> Result<()> {
    let peer = records.iter().any(|r| r["hypervisor"] == "kvm");
    let mut records: Vec<&Value> = records.iter().collect();
    let s = |r: &Value, k: &str| r[k].as_str().unwrap_or("").to_string();
    let hv = |r: &Value| HYPERVISORS.iter().position(|h| r["hypervisor"] == *h).unwrap_or(0);
    if peer {
        records.sort_by_key(|r| (s(r, "apic"), s(r, "pattern"), s(r, "target"), s(r, "config"), hv(r)));
    }
    let rows: Vec<Bar> = records
        .iter()
        .map(|r| {
            let label = format!(
                "{}{} {} {} {}",
                if peer { format!("{} ", s(r, "hypervisor")) } else { String::new() },
                r["apic"].as_str().unwrap_or(""),
                r["config"].as_str().unwrap_or(""),
                r["target"].as_str().unwrap_or(""),
                r["pattern"].as_str().unwrap_or("")
            );
            let median = r["cycles"]["median"].as_f64().unwrap_or(0.0);
            let p99 = r["cycles"]["p99"].as_f64().unwrap_or(median);
            let colour = if peer { hv(r) } else { usize::from(r["apic"] == "x2apic") };
            Bar { label, value: median, whisker: p99, colour }
        })
        .collect();
    let by = if peer { "native, ipiv-hv, kvm" } else { "xAPIC, x2APIC" };
    hbars(path, &rows, &format!("IPI round trip, median with p99 whisker ({platform}, {unit}; colours: {by})"), unit)
}

/// One bar: its label, length, whisker end (= `value` for none) and colour (an index into
/// the palette: blue, orange, green).
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub whisker: f64,
    pub colour: usize,
}

/// Horizontal bars, one row each, with their values printed at the whisker's end.
pub fn hbars(path: &Path, rows: &[Bar], caption: &str, x_desc: &str) -> Result<()> {
    let max = rows.iter().map(|r| r.whisker.max(r.value)).fold(1.0, f64::max) * 1.15;
    let height = 120 + 26 * rows.len() as u32;
    let root = SVGBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(260)
        .build_cartesian_2d(0.0..max, (0..rows.len()).into_segmented())
        .map_err(|e| anyhow!("{e}"))?;
    let labels: Vec<String> = rows.iter().map(|r| r.label.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(rows.len())
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc(x_desc)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    let palette = [RGBColor(70, 110, 190), RGBColor(220, 130, 40), RGBColor(60, 150, 80)];
    chart
        .draw_series(rows.iter().enumerate().map(|(i, r)| {
            let mut bar = Rectangle::new(
                [(0.0, SegmentValue::Exact(i)), (r.value, SegmentValue::Exact(i + 1))],
                palette[r.colour % palette.len()].filled(),
            );
            bar.set_margin(4, 4, 0, 0);
            bar
        }))
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, r)| {
            PathElement::new(
                vec![(r.value, SegmentValue::CenterOf(i)), (r.whisker, SegmentValue::CenterOf(i))],
                BLACK.stroke_width(2),
            )
        }))
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, r)| {
            Text::new(
                format!("{:.0}", r.value),
                (r.whisker + max * 0.01, SegmentValue::CenterOf(i)),
                ("sans-serif", 12),
            )
        }))
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg_with_every_cell() {
        let recs: Vec<Value> = serde_json::from_str(
            r#"[{"apic":"xapic","config":"native","target":"spin","pattern":"unicast","cycles":{"median":38,"p99":40}},
                {"apic":"x2apic","config":"ipiv-off","target":"halt-exit","pattern":"unicast","cycles":{"median":423,"p99":430}}]"#,
        )
        .unwrap();
        let path = std::env::temp_dir().join(format!("ipiv-hv-plot-{}.svg", std::process::id()));
        bars(&path, &recs, "bochs-instructions", "bochs").unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"));
        for s in ["xapic native spin unicast", "x2apic ipiv-off halt-exit unicast", "423", "bochs-instructions"] {
            assert!(svg.contains(s), "{s}");
        }
        let _ = std::fs::copy(&path, std::env::temp_dir().join("ipiv-hv-plot-last.svg"));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_peers_bars_stand_beside_ours_labelled_by_hypervisor() {
        let recs: Vec<Value> = serde_json::from_str(
            r#"[{"hypervisor":"ipiv-hv","apic":"xapic","config":"ipiv-on","target":"spin","pattern":"unicast","cycles":{"median":9,"p99":10}},
                {"hypervisor":"native","apic":"xapic","config":"native","target":"spin","pattern":"unicast","cycles":{"median":8,"p99":9}},
                {"hypervisor":"kvm","apic":"xapic","config":"ipiv-on","target":"spin","pattern":"unicast","cycles":{"median":1537,"p99":1600}}]"#,
        )
        .unwrap();
        let path = std::env::temp_dir().join(format!("ipiv-hv-plot-peer-{}.svg", std::process::id()));
        bars(&path, &recs, "bochs-instructions", "bochs").unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let (ours, kvm) =
            (svg.find("ipiv-hv xapic ipiv-on spin").unwrap(), svg.find("kvm xapic ipiv-on spin").unwrap());
        assert!(ours < kvm, "the same cell's bars are adjacent, ours first");
        assert!(svg.contains("1537") && svg.contains("colours: native, ipiv-hv, kvm"));
    }
}
