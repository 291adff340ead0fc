//! What every experiment produces: a [`Report`] (question, method, tables, one chart, the
//! finding and the Dynacore setting it bears on), written as `<name>.json`, `<name>.svg` and a
//! Markdown section `<name>.md` for `tuning/README.md`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::Serialize;

/// How long and how large the experiments run.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    /// `--quick`: fewer points, shorter runs.
    pub quick: bool,
}

impl Scale {
    /// `quick` in a quick run, else `full`.
    pub fn pick<T>(self, quick: T, full: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }
}

/// Latencies of one measured setting, in microseconds.
#[derive(Debug)]
pub struct Latencies(Histogram<u64>);

impl Latencies {
    /// An empty record (1 µs to 100 s, 3 significant digits).
    pub fn new() -> Latencies {
        // The bounds are constants that hdrhistogram accepts; a failure is a bug.
        Latencies(Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds"))
    }

    /// Records one latency.
    pub fn record(&mut self, d: std::time::Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        self.0.saturating_record(us);
    }

    /// Adds another record's samples.
    pub fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides: it cannot fail.
        self.0.add(&other.0).expect("histograms of equal bounds");
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The latency at quantile `q`, in microseconds.
    pub fn us(&self, q: f64) -> u64 {
        self.0.value_at_quantile(q)
    }

    /// Median, p99 and max as JSON.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "count": self.count(),
            "p50_us": self.us(0.5),
            "p99_us": self.us(0.99),
            "p999_us": self.us(0.999),
            "max_us": self.0.max(),
        })
    }
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies::new()
    }
}

/// A table of results.
#[derive(Debug, Serialize)]
pub struct Table {
    /// What the table shows.
    pub title: String,
    /// Column headings.
    pub columns: Vec<String>,
    /// One row per measured setting.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these headings.
    pub fn new(title: &str, columns: &[&str]) -> Table {
        Table {
            title: title.to_string(),
            columns: columns.iter().map(|c| (*c).to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (as many cells as columns: a mismatch is a bug of the experiment).
    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(
            cells.len(),
            self.columns.len(),
            "row width of {}",
            self.title
        );
        self.rows.push(cells);
    }
}

/// One line of the chart.
#[derive(Debug, Serialize)]
pub struct Series {
    /// Its legend.
    pub label: String,
    /// `(x, y)` points, in x order.
    pub points: Vec<(f64, f64)>,
}

/// The experiment's chart: lines over a shared x axis.
#[derive(Debug, Serialize)]
pub struct Chart {
    /// Caption.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Whether x is drawn on a log₂ axis (queue depths, sizes).
    pub log2_x: bool,
    /// The lines.
    pub series: Vec<Series>,
}

/// The write-up of one experiment.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Subcommand name (`device`, `wal`, ...), and the files' stem.
    pub name: String,
    /// The question it answers.
    pub question: String,
    /// How it measures.
    pub method: String,
    /// Whether this was a `--quick` run.
    pub quick: bool,
    /// The results.
    pub tables: Vec<Table>,
    /// The chart.
    pub chart: Chart,
    /// What the numbers say.
    pub finding: String,
    /// The Dynacore setting it bears on, and the value it recommends.
    pub recommendation: String,
    /// Every measurement, as measured.
    pub raw: serde_json::Value,
}

impl Report {
    /// Writes `<name>.json`, `<name>.svg` and `<name>.md` into `dir`.
    ///
    /// # Errors
    /// When a file cannot be written or the chart cannot be drawn.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = dir.join(format!("{}.json", self.name));
        std::fs::write(&json, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", json.display()))?;
        let svg = dir.join(format!("{}.svg", self.name));
        draw(&svg, &self.chart).with_context(|| format!("drawing {}", svg.display()))?;
        let md = dir.join(format!("{}.md", self.name));
        std::fs::write(&md, self.markdown())
            .with_context(|| format!("writing {}", md.display()))?;
        Ok(())
    }

    /// The README section.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "## `{}`: {}\n", self.name, self.question);
        let _ = writeln!(s, "**Method.** {}\n", self.method);
        for t in &self.tables {
            let _ = writeln!(s, "{}:\n", t.title);
            let _ = writeln!(s, "| {} |", t.columns.join(" | "));
            let align: Vec<&str> = t
                .columns
                .iter()
                .enumerate()
                .map(|(i, _)| if i == 0 { "---" } else { "---:" })
                .collect();
            let _ = writeln!(s, "| {} |", align.join(" | "));
            for r in &t.rows {
                let _ = writeln!(s, "| {} |", r.join(" | "));
            }
            s.push('\n');
        }
        let _ = writeln!(s, "![{}](results/{}.svg)\n", self.chart.title, self.name);
        let _ = writeln!(s, "**Finding.** {}\n", self.finding);
        let _ = writeln!(s, "**Setting.** {}\n", self.recommendation);
        s
    }
}

/// Formats a rate with a k/M suffix.
pub fn rate(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{:.2} M", per_s / 1e6)
    } else if per_s >= 1e3 {
        format!("{:.1} k", per_s / 1e3)
    } else {
        format!("{per_s:.0}")
    }
}

/// Where a font for chart text is looked for, after `DYNACORE_FONT` and `LOADGEN_FONT`.
const FONT_PATHS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
];

const FONT: &str = "sans-serif";

fn load_font() -> Result<()> {
    static LOADED: std::sync::OnceLock<std::result::Result<(), String>> =
        std::sync::OnceLock::new();
    LOADED
        .get_or_init(|| {
            let env: Vec<String> = ["DYNACORE_FONT", "LOADGEN_FONT"]
                .iter()
                .filter_map(|v| std::env::var(v).ok())
                .collect();
            for path in env.iter().map(String::as_str).chain(FONT_PATHS) {
                if let Ok(bytes) = std::fs::read(path) {
                    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                    return plotters::style::register_font(FONT, FontStyle::Normal, bytes)
                        .map_err(|_| format!("{path} is not a TrueType font"));
                }
            }
            Err(format!(
                "charts need a TrueType font: install fonts-dejavu-core, or set DYNACORE_FONT (looked in {})",
                FONT_PATHS.join(", ")
            ))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

fn color(i: usize) -> RGBColor {
    const COLORS: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(90, 90, 90),
    ];
    COLORS[i % COLORS.len()]
}

fn draw(path: &Path, chart: &Chart) -> Result<()> {
    load_font()?;
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<std::io::Error>| anyhow!("drawing: {e}");
    root.fill(&WHITE).map_err(err)?;
    let fx = |x: f64| if chart.log2_x { x.max(1e-9).log2() } else { x };
    let points = chart.series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0f64);
    for &(x, y) in points {
        x0 = x0.min(fx(x));
        x1 = x1.max(fx(x));
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1) = (0.0, 1.0);
    }
    if x1 - x0 < 1e-9 {
        x1 = x0 + 1.0;
    }
    let y1 = if y1 <= 0.0 { 1.0 } else { y1 * 1.1 };
    let mut c = ChartBuilder::on(&root)
        .caption(&chart.title, (FONT, 18))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, 0f64..y1)
        .map_err(err)?;
    let log2 = chart.log2_x;
    let x_fmt = move |v: &f64| {
        if log2 {
            format!("{}", 2f64.powf(*v).round())
        } else {
            format!("{v}")
        }
    };
    c.configure_mesh()
        .x_desc(&chart.x_label)
        .y_desc(&chart.y_label)
        .x_label_formatter(&x_fmt)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .draw()
        .map_err(err)?;
    for (i, s) in chart.series.iter().enumerate() {
        let col = color(i);
        let pts: Vec<(f64, f64)> = s.points.iter().map(|&(x, y)| (fx(x), y)).collect();
        c.draw_series(LineSeries::new(pts.clone(), col.stroke_width(2)))
            .map_err(err)?
            .label(&s.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], col.stroke_width(2)));
        c.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, col.filled())))
            .map_err(err)?;
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 13))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_has_every_row_and_the_chart() {
        let mut t = Table::new("Results", &["setting", "ops/s"]);
        t.row(vec!["a".into(), "1".into()]);
        t.row(vec!["b".into(), "2".into()]);
        let r = Report {
            name: "x".into(),
            question: "q?".into(),
            method: "m".into(),
            quick: true,
            tables: vec![t],
            chart: Chart {
                title: "c".into(),
                x_label: "x".into(),
                y_label: "y".into(),
                log2_x: true,
                series: vec![],
            },
            finding: "f".into(),
            recommendation: "r".into(),
            raw: serde_json::Value::Null,
        };
        let md = r.markdown();
        assert!(md.contains("| a | 1 |") && md.contains("| b | 2 |"), "{md}");
        assert!(md.contains("](results/x.svg)"), "{md}");
        assert!(md.starts_with("## `x`: q?"), "{md}");
    }

    #[test]
    fn rates_read_naturally() {
        assert_eq!(rate(950.0), "950");
        assert_eq!(rate(12_345.0), "12.3 k");
        assert_eq!(rate(2_500_000.0), "2.50 M");
    }

    #[test]
    fn latencies_report_quantiles() {
        let mut l = Latencies::new();
        for us in 1..=100u64 {
            l.record(std::time::Duration::from_micros(us));
        }
        assert_eq!(l.count(), 100);
        assert_eq!(l.us(0.5), 50);
        assert_eq!(l.us(0.99), 99);
    }
}
