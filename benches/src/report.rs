//! Results: rows of podrouter against the kernel, rendered as a markdown
//! table (what the README pastes), JSON (`--json`) and SVG plots.
use std::fmt::Write as _;

use serde::Serialize;

use crate::util::summary;

/// One data plane's figure for one row: the value of every run, or why
/// there is none.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Cell {
    Measured {
        samples: Vec<f64>,
        median: f64,
        min: f64,
        max: f64,
        /// Runs that started while other processes kept the machine busy.
        disturbed: usize,
    },
    Missing {
        reason: String,
    },
}

impl Cell {
    pub fn from_samples(v: Vec<f64>) -> Cell {
        Cell::from_runs(v, 0)
    }

    /// `disturbed` of the runs started on a busy machine.
    pub fn from_runs(v: Vec<f64>, disturbed: usize) -> Cell {
        let v: Vec<f64> = v.into_iter().filter(|x| x.is_finite()).collect();
        match summary(&v) {
            Some((median, min, max)) => Cell::Measured {
                samples: v,
                median,
                min,
                max,
                disturbed,
            },
            None => Cell::missing("no successful run"),
        }
    }

    pub fn missing(reason: impl Into<String>) -> Cell {
        Cell::Missing {
            reason: reason.into(),
        }
    }

    pub fn median(&self) -> Option<f64> {
        match self {
            Cell::Measured { median, .. } => Some(*median),
            Cell::Missing { .. } => None,
        }
    }

    pub fn disturbed(&self) -> usize {
        match self {
            Cell::Measured { disturbed, .. } => *disturbed,
            Cell::Missing { .. } => 0,
        }
    }

    pub fn spread(&self) -> Option<(f64, f64)> {
        match self {
            Cell::Measured { min, max, .. } => Some((*min, *max)),
            Cell::Missing { .. } => None,
        }
    }

    fn markdown(&self) -> String {
        match self {
            Cell::Measured {
                median,
                min,
                max,
                samples,
                disturbed,
            } => {
                let mark = if *disturbed > 0 { " †" } else { "" };
                if samples.len() > 1 {
                    format!("{} ({}–{}){mark}", num(*median), num(*min), num(*max))
                } else {
                    format!("{}{mark}", num(*median))
                }
            }
            Cell::Missing { reason } => {
                if reason.starts_with("not available:") {
                    // "not available: <reason>", short by construction.
                    reason.lines().next().unwrap_or(reason).to_string()
                } else if reason.starts_with("not available") {
                    // "not available (issue 4): details" -> the part before
                    // the details (which the notes carry).
                    reason.split(": ").next().unwrap_or(reason).to_string()
                } else {
                    "failed (see notes)".into()
                }
            }
        }
    }
}

/// A number with three significant digits or so.
pub fn num(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else if a >= 0.01 {
        format!("{x:.3}")
    } else if a == 0.0 {
        "0".into()
    } else {
        format!("{x:.2e}")
    }
}

/// One line of the summary table.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// "same node, 2 pods", "two nodes: encap never vs kernel plain", ...
    pub scenario: String,
    /// "UDP 64 B frames", "ADD p50", ...
    pub measure: String,
    pub unit: String,
    /// "higher" or "lower" is better.
    pub better: &'static str,
    pub podrouter: Cell,
    /// The baseline's figure: the kernel's, or whatever `baseline` names.
    pub kernel: Cell,
    /// What the `kernel` column measured: "kernel", or "BIRD 2" in the BGP
    /// rows.
    pub baseline: String,
    /// podrouter median / baseline median, from the same run.
    pub ratio: Option<f64>,
}

impl Row {
    pub fn new(
        scenario: &str,
        measure: &str,
        unit: &str,
        better: &'static str,
        podrouter: Cell,
        kernel: Cell,
    ) -> Row {
        let ratio = match (podrouter.median(), kernel.median()) {
            (Some(p), Some(k)) if k != 0.0 => Some(p / k),
            _ => None,
        };
        Row {
            scenario: scenario.into(),
            measure: measure.into(),
            unit: unit.into(),
            better,
            podrouter,
            kernel,
            baseline: "kernel".into(),
            ratio,
        }
    }

    /// Names what the baseline column measured, when not the kernel.
    pub fn baseline(mut self, name: &str) -> Row {
        self.baseline = name.into();
        self
    }
}

/// What the machine is.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub os: String,
    pub podrouterd: String,
    pub iperf3: String,
    pub virtualization: String,
    /// The source tree the binaries were built from (git commit), if known.
    pub source: String,
    /// What waking a sleeping thread on the pods' CPU from the data-plane
    /// CPU costs here (empty on one CPU): the price of every cross-CPU hop.
    pub wake_up: String,
}

impl Machine {
    pub fn describe(&self) -> String {
        format!(
            "{}, {} CPUs, {:.1} GiB RAM{}, Linux {}, {}; {}{}, {}",
            self.cpu_model,
            self.cpus,
            self.memory_gib,
            if self.virtualization.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.virtualization)
            },
            self.kernel,
            self.os,
            self.podrouterd,
            if self.source.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.source)
            },
            self.iperf3
        )
    }
}

/// The whole result of one invocation.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub command: String,
    pub date_utc: String,
    pub smoke: bool,
    pub repeats: usize,
    pub machine: Machine,
    /// How processes were placed on CPUs, and anything that had to share.
    pub pinning: Vec<String>,
    /// What each scenario ran, how it counted.
    pub method: Vec<String>,
    /// Warnings (busy machine, failed runs) and reasons for missing rows.
    pub notes: Vec<String>,
    pub rows: Vec<Row>,
    /// Per-run details (raw counters, offered rates, latency samples' summary).
    pub runs: Vec<serde_json::Value>,
    /// SVG files written (names in `out_dir`).
    pub plots: Vec<String>,
    /// The output directory as given (`--out`).
    pub out_dir: String,
    pub total_secs: f64,
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "#### podrouter-bench{}: podrouter against the kernel, same topology, same run\n",
            if self.smoke { " --smoke" } else { "" }
        );
        let _ = writeln!(
            s,
            "- command: `{}` ({} UTC, {:.0} s)",
            self.command, self.date_utc, self.total_secs
        );
        let _ = writeln!(s, "- machine: {}", self.machine.describe());
        if !self.machine.wake_up.is_empty() {
            let _ = writeln!(s, "- wake-ups: {}", self.machine.wake_up);
        }
        let _ = writeln!(
            s,
            "- {} run{} per figure: median (min–max); ratio = podrouter median / baseline median",
            self.repeats,
            if self.repeats == 1 { "" } else { "s" }
        );
        let mut others: Vec<&str> = self
            .rows
            .iter()
            .map(|r| r.baseline.as_str())
            .filter(|b| *b != "kernel")
            .collect();
        others.dedup();
        let _ = writeln!(
            s,
            "- baseline: the Linux kernel doing the same job in the same topology{}",
            if others.is_empty() {
                String::new()
            } else {
                format!(
                    "; in the BGP rows {} (there, a ratio above 1 means podrouterd took longer in \
                     seconds, and was faster in routes/s)",
                    others.join(", ")
                )
            }
        );
        for p in &self.pinning {
            let _ = writeln!(s, "- pinning: {p}");
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| scenario | measure | unit | podrouter | baseline | podrouter / baseline |"
        );
        let _ = writeln!(s, "| --- | --- | --- | ---: | ---: | ---: |");
        for r in &self.rows {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                r.scenario,
                r.measure,
                r.unit,
                r.podrouter.markdown(),
                r.kernel.markdown(),
                r.ratio
                    .map(|x| format!("{x:.2}"))
                    .unwrap_or_else(|| "–".into())
            );
        }
        if !self.method.is_empty() {
            let _ = writeln!(s, "\nHow it was measured:\n");
            for m in &self.method {
                let _ = writeln!(s, "- {m}");
            }
        }
        if self
            .rows
            .iter()
            .any(|r| r.podrouter.disturbed() + r.kernel.disturbed() > 0)
        {
            let _ = writeln!(
                s,
                "\n† at least one run behind this figure started while other processes kept \
                 the machine busy: treat it with care."
            );
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s, "\nNotes from this run:\n");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        if !self.plots.is_empty() {
            let _ = writeln!(
                s,
                "\nPlots (in `{}`): {}",
                self.out_dir,
                self.plots.join(", ")
            );
        }
        s
    }
}

// ---------------------------------------------------------------------------
// SVG

const W: f64 = 640.0;
const H: f64 = 400.0;
const ML: f64 = 70.0;
const MR: f64 = 20.0;
const MT: f64 = 56.0;
const MB: f64 = 60.0;
pub const COLORS: [&str; 4] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A "nice" axis maximum and tick step for values up to `max`.
fn axis(max: f64) -> (f64, f64) {
    let max = if max > 0.0 { max } else { 1.0 };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

fn frame(title: &str, xlabel: &str, ylabel: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n\
         <text x=\"16\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {})\">{}</text>\n",
        W / 2.0,
        esc(title),
        ML + (W - ML - MR) / 2.0,
        H - 12.0,
        esc(xlabel),
        MT + (H - MT - MB) / 2.0,
        MT + (H - MT - MB) / 2.0,
        esc(ylabel)
    )
}

fn y_axis(s: &mut String, ymax: f64, step: f64, fmt: impl Fn(f64) -> String) {
    let ph = H - MT - MB;
    let mut v = 0.0;
    while v <= ymax + step * 1e-6 {
        let y = MT + ph - v / ymax * ph;
        let _ = writeln!(
            s,
            "<line x1=\"{ML}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - MR,
            ML - 6.0,
            y + 4.0,
            fmt(v)
        );
        v += step;
    }
    let _ = writeln!(
        s,
        "<line x1=\"{ML}\" x2=\"{ML}\" y1=\"{MT}\" y2=\"{}\" stroke=\"black\"/>\
         <line x1=\"{ML}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"black\"/>",
        H - MB,
        W - MR,
        H - MB,
        H - MB
    );
}

fn legend(s: &mut String, names: &[&str]) {
    for (i, n) in names.iter().enumerate() {
        let x = ML + 10.0 + i as f64 * 180.0;
        let _ = writeln!(
            s,
            "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            MT - 24.0,
            COLORS[i % COLORS.len()],
            x + 16.0,
            MT - 14.0,
            esc(n)
        );
    }
}

/// Grouped bars with min–max whiskers: `groups` are x labels, `series`
/// (name, one Cell per group).
pub fn bars_svg(
    title: &str,
    ylabel: &str,
    groups: &[String],
    series: &[(&str, Vec<Cell>)],
) -> String {
    let ymax_data = series
        .iter()
        .flat_map(|(_, c)| c.iter().filter_map(|c| c.spread().map(|(_, hi)| hi)))
        .fold(0.0, f64::max);
    let (ymax, step) = axis(ymax_data * 1.05);
    let mut s = frame(title, "", ylabel);
    y_axis(&mut s, ymax, step, num);
    let pw = W - ML - MR;
    let ph = H - MT - MB;
    let gw = pw / groups.len().max(1) as f64;
    let bw = gw * 0.7 / series.len().max(1) as f64;
    for (g, label) in groups.iter().enumerate() {
        let gx = ML + g as f64 * gw;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            gx + gw / 2.0,
            H - MB + 18.0,
            esc(label)
        );
        for (k, (_, cells)) in series.iter().enumerate() {
            let x = gx + gw * 0.15 + k as f64 * bw;
            let Some(c) = cells.get(g) else { continue };
            match (c.median(), c.spread()) {
                (Some(m), Some((lo, hi))) => {
                    let y = MT + ph - m / ymax * ph;
                    let _ = writeln!(
                        s,
                        "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/>",
                        bw * 0.9,
                        MT + ph - y,
                        COLORS[k % COLORS.len()]
                    );
                    let cx = x + bw * 0.45;
                    let (ylo, yhi) = (MT + ph - lo / ymax * ph, MT + ph - hi / ymax * ph);
                    let _ = writeln!(
                        s,
                        "<line x1=\"{cx:.1}\" x2=\"{cx:.1}\" y1=\"{ylo:.1}\" y2=\"{yhi:.1}\" stroke=\"black\"/>\
                         <text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{}</text>",
                        yhi - 4.0,
                        num(m)
                    );
                }
                _ => {
                    let _ = writeln!(
                        s,
                        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">n/a</text>",
                        x + bw * 0.45,
                        MT + ph - 4.0
                    );
                }
            }
        }
    }
    let names: Vec<&str> = series.iter().map(|(n, _)| *n).collect();
    legend(&mut s, &names);
    s.push_str("</svg>\n");
    s
}

/// Latency CDFs: for each series the samples (µs); x = latency on a
/// logarithmic axis (decades), y = fraction of requests at or below it.
pub fn cdf_svg(title: &str, series: &[(&str, Vec<f64>)]) -> String {
    let all = series.iter().flat_map(|(_, v)| v.iter().copied());
    let (lo, hi) = all
        .filter(|x| *x > 0.0)
        .fold((f64::MAX, 0.0f64), |(a, b), x| (a.min(x), b.max(x)));
    let (lo, hi) = if hi > 0.0 { (lo, hi) } else { (1.0, 10.0) };
    let d0 = lo.log10().floor();
    let d1 = hi.log10().ceil().max(d0 + 1.0);
    let mut s = frame(
        title,
        "round-trip latency (log scale)",
        "fraction of requests",
    );
    y_axis(&mut s, 1.0, 0.2, |v| format!("{v:.1}"));
    let pw = W - ML - MR;
    let ph = H - MT - MB;
    let xpos =
        |v: f64| ML + ((v.max(10f64.powf(d0)).log10() - d0) / (d1 - d0)).clamp(0.0, 1.0) * pw;
    let mut d = d0;
    while d <= d1 + 1e-9 {
        let v = 10f64.powf(d);
        let x = xpos(v);
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{MT}\" y2=\"{}\" stroke=\"#ddd\"/>\
             <text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            H - MB,
            H - MB + 18.0,
            if v >= 1000.0 {
                format!("{:.0} ms", v / 1000.0)
            } else {
                format!("{v:.0} µs")
            }
        );
        d += 1.0;
    }
    for (k, (_, vals)) in series.iter().enumerate() {
        if vals.is_empty() {
            continue;
        }
        let mut sorted = vals.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let n = sorted.len();
        let stride = (n / 800).max(1);
        let mut pts = String::new();
        for i in (0..n).step_by(stride).chain(std::iter::once(n - 1)) {
            let y = MT + ph - (i + 1) as f64 / n as f64 * ph;
            let _ = write!(pts, "{:.1},{y:.1} ", xpos(sorted[i]));
        }
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
            COLORS[k % COLORS.len()],
            pts.trim_end()
        );
    }
    let names: Vec<&str> = series.iter().map(|(n, _)| *n).collect();
    legend(&mut s, &names);
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_and_ratio() {
        let r = Row::new(
            "same node",
            "UDP 64 B",
            "Mpps",
            "higher",
            Cell::from_samples(vec![0.5, 0.4, 0.6]),
            Cell::from_samples(vec![1.0, 1.0, 1.0]),
        );
        assert_eq!(r.ratio, Some(0.5));
        assert_eq!(r.podrouter.markdown(), "0.500 (0.400–0.600)");
        let m = Row::new(
            "x",
            "y",
            "z",
            "higher",
            Cell::missing("issue 4"),
            Cell::from_samples(vec![1.0]),
        );
        assert_eq!(m.ratio, None);
        assert_eq!(m.podrouter.markdown(), "failed (see notes)");
        let n = Cell::missing("not available (issue 4): no route");
        assert_eq!(n.markdown(), "not available (issue 4)");
        let b = Cell::missing("not available: `bird` (bird2) not installed\nmore");
        assert_eq!(b.markdown(), "not available: `bird` (bird2) not installed");
        assert_eq!(r.baseline, "kernel");
        assert_eq!(r.clone().baseline("BIRD 2").baseline, "BIRD 2");
    }

    #[test]
    fn axes_are_nice() {
        assert_eq!(axis(0.87), (1.0, 0.2));
        assert_eq!(axis(19.0), (20.0, 5.0));
        let svg = bars_svg(
            "t",
            "Mpps",
            &["64 B".into()],
            &[
                ("a", vec![Cell::from_samples(vec![1.0])]),
                ("b", vec![Cell::missing("x")]),
            ],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        let cdf = cdf_svg("t", &[("a", vec![1.0, 2.0, 3.0])]);
        assert!(cdf.contains("polyline"));
    }
}
