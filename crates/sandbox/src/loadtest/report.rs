//! The report of one run: `report.json` (every figure), `report.html` (the table, the
//! violations and the charts), one SVG file per chart, and the one-screen text table.
//!
//! Charts are hand-written SVG (line charts of time series, log-scale histograms of latency
//! samples): no plotting crate, no fonts, nothing outside the standard library.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Value, json};

use super::Error;

/// A chart of the report.
#[derive(Clone, Debug)]
pub enum Chart {
    /// Time series: (name, points (x, y)).
    Lines {
        /// File stem and anchor.
        id: String,
        /// Title above the chart.
        title: String,
        /// X axis label.
        x_label: String,
        /// Y axis label.
        y_label: String,
        /// The series.
        series: Vec<(String, Vec<(f64, f64)>)>,
    },
    /// Time series with labelled vertical markers at chosen times (faults on a timeline).
    Timeline {
        /// File stem and anchor.
        id: String,
        /// Title above the chart.
        title: String,
        /// X axis label.
        x_label: String,
        /// Y axis label.
        y_label: String,
        /// The series.
        series: Vec<(String, Vec<(f64, f64)>)>,
        /// (x, label) of each marker.
        markers: Vec<(f64, String)>,
    },
    /// Distributions of samples (milliseconds) on a logarithmic axis.
    Histogram {
        /// File stem and anchor.
        id: String,
        /// Title above the chart.
        title: String,
        /// X axis label.
        x_label: String,
        /// The series: (name, samples in ms).
        series: Vec<(String, Vec<f64>)>,
    },
}

/// Everything a scenario measured.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// Scenario name.
    pub scenario: String,
    /// Whether this was the `--quick` version.
    pub quick: bool,
    /// The parameters (sizes, latencies, durations).
    pub parameters: Value,
    /// Every figure, nested by topic.
    pub figures: Value,
    /// Rows of the text table: (figure, value).
    pub table: Vec<(String, String)>,
    /// The charts.
    pub charts: Vec<Chart>,
    /// Invariant violations and lost requests.
    pub violations: Vec<String>,
}

/// Writes `report.json`, the SVG charts and `report.html` into `dir`.
///
/// # Errors
/// [`Error::File`] when a file cannot be written.
pub fn write(dir: &Path, r: &RunResult) -> Result<(), Error> {
    let put = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|source| Error::File {
            path: path.display().to_string(),
            source,
        })
    };
    let doc = json!({
        "scenario": r.scenario,
        "quick": r.quick,
        "passed": r.violations.is_empty(),
        "violations": r.violations,
        "parameters": r.parameters,
        "figures": r.figures,
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "charts": r.charts.iter().map(|c| format!("{}.svg", chart_id(c))).collect::<Vec<_>>(),
    });
    put(
        "report.json",
        serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n",
    )?;
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{0} load test</title>\
         <style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}\
         table{{border-collapse:collapse}}td{{padding:2px 10px;border-bottom:1px solid #ddd}}\
         .bad{{color:#b00}}</style></head><body><h1>Load test: {0}{1}</h1>",
        esc(&r.scenario),
        if r.quick { " (quick)" } else { "" }
    );
    if r.violations.is_empty() {
        html.push_str("<p>All invariants held; no request was lost.</p>");
    } else {
        html.push_str("<h2 class=\"bad\">Violations</h2><ul>");
        for v in &r.violations {
            let _ = write!(html, "<li class=\"bad\">{}</li>", esc(v));
        }
        html.push_str("</ul>");
    }
    html.push_str("<h2>Figures</h2><table>");
    for (k, v) in &r.table {
        let _ = write!(html, "<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(v));
    }
    let _ = write!(
        html,
        "</table><p>Parameters: <code>{}</code>. All figures: <a href=\"report.json\">report.json</a>.</p>",
        esc(&r.parameters.to_string())
    );
    for c in &r.charts {
        let svg = svg(c);
        put(&format!("{}.svg", chart_id(c)), svg.clone())?;
        html.push_str(&svg);
    }
    html.push_str("</body></html>\n");
    put("report.html", html)
}

/// The one-screen text table.
#[must_use]
pub fn table(r: &RunResult) -> String {
    let width = r.table.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = format!(
        "== {}{} ==\n",
        r.scenario,
        if r.quick { " (quick)" } else { "" }
    );
    for (k, v) in &r.table {
        let _ = writeln!(out, "  {k:<width$}  {v}");
    }
    if r.violations.is_empty() {
        out.push_str("  PASS: every invariant held, no request lost\n");
    } else {
        let _ = writeln!(out, "  FAIL: {} violation(s)", r.violations.len());
        for v in r.violations.iter().take(10) {
            let _ = writeln!(out, "    - {v}");
        }
    }
    out
}

fn chart_id(c: &Chart) -> &str {
    match c {
        Chart::Lines { id, .. } | Chart::Histogram { id, .. } | Chart::Timeline { id, .. } => id,
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const W: f64 = 800.0;
const H: f64 = 360.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn frame(out: &mut String, title: &str, x_label: &str, y_label: &str) {
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\
         <rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\
         <text x=\"16\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {})\">{}</text>\
         <line x1=\"{LEFT}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\
         <line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{}\" stroke=\"black\"/>",
        W / 2.0,
        esc(title),
        LEFT + (W - LEFT - RIGHT) / 2.0,
        H - 10.0,
        esc(x_label),
        TOP + (H - TOP - BOTTOM) / 2.0,
        TOP + (H - TOP - BOTTOM) / 2.0,
        esc(y_label),
        H - BOTTOM,
        W - RIGHT,
        H - BOTTOM,
        H - BOTTOM,
    );
}

fn legend(out: &mut String, names: &[&str]) {
    for (i, n) in names.iter().enumerate() {
        let y = TOP + 8.0 + 16.0 * i as f64;
        let x = W - RIGHT - 240.0;
        let _ = write!(
            out,
            "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            y - 9.0,
            COLORS[i % COLORS.len()],
            x + 16.0,
            y,
            esc(n)
        );
    }
}

/// Renders one chart as a standalone SVG document.
#[must_use]
pub fn svg(c: &Chart) -> String {
    let mut out = String::new();
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    match c {
        Chart::Timeline {
            id,
            title,
            x_label,
            y_label,
            series,
            markers,
        } => {
            let lines = svg(&Chart::Lines {
                id: id.clone(),
                title: title.clone(),
                x_label: x_label.clone(),
                y_label: y_label.clone(),
                series: series.clone(),
            });
            // The same x scale as the lines: markers past the last point are clipped.
            let max_x = series
                .iter()
                .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
                .fold(0.0_f64, f64::max);
            let max_x = if max_x > 0.0 { max_x } else { 1.0 };
            out.push_str(lines.trim_end().trim_end_matches("</svg>"));
            for (i, (t, label)) in markers.iter().enumerate() {
                if *t < 0.0 || *t > max_x {
                    continue;
                }
                let x = LEFT + t / max_x * pw;
                // Labels alternate between two heights so neighbours stay readable.
                let y = TOP + 10.0 + 12.0 * (i % 2) as f64;
                let _ = write!(
                    out,
                    "<line x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#888\" stroke-dasharray=\"3,3\"/>\
                     <text x=\"{:.1}\" y=\"{y:.1}\" font-size=\"9\" fill=\"#555\">{}</text>",
                    H - BOTTOM,
                    x + 2.0,
                    esc(label)
                );
            }
        }
        Chart::Lines {
            title,
            x_label,
            y_label,
            series,
            ..
        } => {
            frame(&mut out, title, x_label, y_label);
            let pts = series.iter().flat_map(|(_, p)| p.iter());
            let (mut max_x, mut max_y) = (0.0_f64, 0.0_f64);
            for (x, y) in pts {
                max_x = max_x.max(*x);
                max_y = max_y.max(*y);
            }
            let max_x = if max_x > 0.0 { max_x } else { 1.0 };
            let max_y = if max_y > 0.0 { max_y * 1.05 } else { 1.0 };
            for i in 0..=5 {
                let f = f64::from(i) / 5.0;
                let (x, y) = (LEFT + f * pw, H - BOTTOM - f * ph);
                let _ = write!(
                    out,
                    "<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{}</text>\
                     <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
                     <line x1=\"{LEFT}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#eee\"/>",
                    H - BOTTOM + 16.0,
                    fmt_num(f * max_x),
                    LEFT - 6.0,
                    y + 4.0,
                    fmt_num(f * max_y),
                    W - RIGHT,
                );
            }
            for (i, (_, p)) in series.iter().enumerate() {
                let mut d = String::new();
                for (x, y) in p {
                    let _ = write!(
                        d,
                        "{:.1},{:.1} ",
                        LEFT + x / max_x * pw,
                        H - BOTTOM - y / max_y * ph
                    );
                }
                let _ = write!(
                    out,
                    "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
                    COLORS[i % COLORS.len()],
                    d.trim_end()
                );
            }
            let names: Vec<&str> = series.iter().map(|(n, _)| n.as_str()).collect();
            legend(&mut out, &names);
        }
        Chart::Histogram {
            title,
            x_label,
            series,
            ..
        } => {
            frame(&mut out, title, x_label, "samples");
            let all = series.iter().flat_map(|(_, s)| s.iter().copied());
            let (mut lo, mut hi) = (f64::MAX, 0.0_f64);
            for v in all {
                let v = v.max(0.01);
                lo = lo.min(v);
                hi = hi.max(v);
            }
            if hi <= 0.0 || lo == f64::MAX {
                lo = 0.1;
                hi = 1.0;
            }
            let (llo, lhi) = (
                lo.log10().floor(),
                hi.log10().ceil().max(lo.log10().floor() + 1.0),
            );
            const BINS: usize = 40;
            let bin_of = |v: f64| {
                let f = (v.max(0.01).log10() - llo) / (lhi - llo);
                ((f * BINS as f64) as usize).min(BINS - 1)
            };
            let counts: Vec<Vec<u64>> = series
                .iter()
                .map(|(_, s)| {
                    let mut c = vec![0_u64; BINS];
                    for v in s {
                        c[bin_of(*v)] += 1;
                    }
                    c
                })
                .collect();
            let max_c = counts.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
            let decades = (lhi - llo) as i32;
            for d in 0..=decades {
                let x = LEFT + f64::from(d) / f64::from(decades) * pw;
                let v = 10_f64.powf(llo + f64::from(d));
                let _ = write!(
                    out,
                    "<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{}</text><line x1=\"{x}\" y1=\"{TOP}\" x2=\"{x}\" y2=\"{}\" stroke=\"#eee\"/>",
                    H - BOTTOM + 16.0,
                    fmt_num(v),
                    H - BOTTOM
                );
            }
            for i in 0..=4 {
                let f = f64::from(i) / 4.0;
                let _ = write!(
                    out,
                    "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
                    LEFT - 6.0,
                    H - BOTTOM - f * ph + 4.0,
                    fmt_num((f * max_c).round())
                );
            }
            let bw = pw / BINS as f64;
            for (si, c) in counts.iter().enumerate() {
                for (b, n) in c.iter().enumerate() {
                    if *n == 0 {
                        continue;
                    }
                    let h = *n as f64 / max_c * ph;
                    let _ = write!(
                        out,
                        "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\" fill-opacity=\"0.55\"/>",
                        LEFT + b as f64 * bw,
                        H - BOTTOM - h,
                        bw - 1.0,
                        h,
                        COLORS[si % COLORS.len()]
                    );
                }
            }
            let names: Vec<&str> = series.iter().map(|(n, _)| n.as_str()).collect();
            legend(&mut out, &names);
        }
    }
    out.push_str("</svg>\n");
    out
}

/// Quantile of unsorted samples (nearest rank), `None` when empty.
#[must_use]
pub fn quantile(samples: &[f64], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((s.len() as f64 - 1.0) * q).round() as usize;
    Some(s[i.min(s.len() - 1)])
}

/// `{"n", "p50", "p95", "p99", "max", "mean"}` of samples (in the samples' unit).
#[must_use]
pub fn summary(samples: &[f64]) -> Value {
    let mean = if samples.is_empty() {
        None
    } else {
        Some(samples.iter().sum::<f64>() / samples.len() as f64)
    };
    json!({
        "n": samples.len(),
        "p50": quantile(samples, 0.50),
        "p95": quantile(samples, 0.95),
        "p99": quantile(samples, 0.99),
        "max": quantile(samples, 1.0),
        "mean": mean,
    })
}

/// `p50 / p95 / p99 / max` of samples in ms, for the text table.
#[must_use]
pub fn ms_line(samples: &[f64]) -> String {
    let f = |q| quantile(samples, q).map_or("-".to_string(), |v| format!("{v:.1}"));
    format!(
        "p50 {} / p95 {} / p99 {} / max {} ms (n={})",
        f(0.5),
        f(0.95),
        f(0.99),
        f(1.0),
        samples.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_the_nearest_rank_and_empty_samples_have_none() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&s, 0.5), Some(51.0));
        assert_eq!(quantile(&s, 0.99), Some(99.0));
        assert_eq!(quantile(&s, 1.0), Some(100.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn charts_are_well_formed_svg_with_one_mark_per_series() {
        let lines = Chart::Lines {
            id: "t".into(),
            title: "a < b".into(),
            x_label: "s".into(),
            y_label: "n".into(),
            series: vec![("one".into(), vec![(0.0, 0.0), (1.0, 2.0)])],
        };
        let s = svg(&lines);
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<polyline").count(), 1);
        assert!(s.contains("a &lt; b"));
        let hist = Chart::Histogram {
            id: "h".into(),
            title: "h".into(),
            x_label: "ms".into(),
            series: vec![
                ("x".into(), vec![1.0, 2.0, 2.0, 500.0]),
                ("y".into(), vec![]),
            ],
        };
        let s = svg(&hist);
        // Three distinct bins hold the four samples of the first series.
        assert_eq!(s.matches("<rect x=").count() - 2, 3, "{s}");
        let timeline = Chart::Timeline {
            id: "f".into(),
            title: "faults".into(),
            x_label: "s".into(),
            y_label: "n".into(),
            series: vec![("one".into(), vec![(0.0, 0.0), (10.0, 2.0)])],
            markers: vec![(5.0, "kill <mic>".into()), (20.0, "past the end".into())],
        };
        let s = svg(&timeline);
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("</svg>").count(), 1, "{s}");
        assert_eq!(s.matches("stroke-dasharray").count(), 1, "{s}");
        assert!(s.contains("kill &lt;mic&gt;"));
    }
}
