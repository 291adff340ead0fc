//! `--plot FILE.svg|png`: the run phase's latency percentiles second by second (above) and
//! the percentile spectrum of each operation (below), drawn with `plotters`.
//!
//! Text needs a TrueType font, read at run time from the system (DejaVu Sans or Liberation
//! Sans, as Debian's `fonts-dejavu-core` and `fonts-liberation` install them) or from
//! `LOADGEN_FONT`.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::op_name;
use crate::run::PhaseReport;

/// Where the font is looked for, in order (after `LOADGEN_FONT`).
const FONT_PATHS: [&str; 5] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
];

const FONT: &str = "sans-serif";

/// The percentiles drawn over time: (label, quantile).
const OVER_TIME: [(&str, f64); 5] = [
    ("p50", 0.5),
    ("p90", 0.9),
    ("p99", 0.99),
    ("p99.9", 0.999),
    ("max", 1.0),
];

fn load_font() -> Result<(), String> {
    let from_env = std::env::var("LOADGEN_FONT").ok();
    let candidates = from_env.iter().map(String::as_str).chain(FONT_PATHS);
    for path in candidates {
        if let Ok(bytes) = std::fs::read(path) {
            // The font registry keeps fonts for the whole process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            return plotters::style::register_font(FONT, FontStyle::Normal, bytes)
                .map_err(|_| format!("{path} is not a TrueType font"));
        }
    }
    Err(format!(
        "a plot needs a TrueType font: install fonts-dejavu-core, or set LOADGEN_FONT to a .ttf file (looked in {})",
        FONT_PATHS.join(", ")
    ))
}

/// Draws the run phase's figures to `path` (`.svg` or `.png`); `title` heads it.
///
/// # Errors
/// A message when the file type is not known, no font is found, or drawing fails.
pub fn plot(path: &Path, title: &str, run: &PhaseReport) -> Result<(), String> {
    let size = (1100, 900);
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    load_font()?;
    match ext.as_deref() {
        Some("svg") => draw(&SVGBackend::new(path, size).into_drawing_area(), title, run),
        Some("png") => draw(
            &BitMapBackend::new(path, size).into_drawing_area(),
            title,
            run,
        ),
        _ => Err(format!(
            "--plot {}: the file must end in .svg or .png",
            path.display()
        )),
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn palette(i: usize) -> RGBColor {
    const COLORS: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(90, 90, 90),
    ];
    COLORS[i % COLORS.len()]
}

/// The quantiles of the spectrum, as `1 / (1 - q)` rises from 2 (p50) to 10⁵ (p99.999).
fn spectrum(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    (0..=60)
        .map(|i| {
            let x = 10f64.powf(f64::from(i) * 0.05 + 0.301);
            let q = (1.0 - 1.0 / x).min(1.0);
            (x, ms(h.value_at_quantile(q).max(1)))
        })
        .filter(|&(x, _)| x <= (h.len() as f64).max(2.0))
        .collect()
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    run: &PhaseReport,
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| format!("drawing the plot: {e}");
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, (FONT, 20)).map_err(err)?;
    let (upper, lower) = root.split_vertically(430);

    // Latency over time.
    let seconds = run.timeline.len().max(1) as f64;
    let highest = run
        .timeline
        .iter()
        .map(Histogram::max)
        .chain(run.ops.values().map(|l| l.histogram().max()))
        .max()
        .unwrap_or(1)
        .max(10);
    let lowest = run
        .ops
        .values()
        .filter(|l| l.count() > 0)
        .map(|l| l.histogram().value_at_quantile(0.5))
        .chain(
            run.timeline
                .iter()
                .filter(|h| !h.is_empty())
                .map(|h| h.value_at_quantile(0.5)),
        )
        .min()
        .unwrap_or(1)
        .max(1);
    let y_range = ((ms(lowest) / 3.0).max(0.001)..ms(highest) * 1.5).log_scale();
    let mut chart = ChartBuilder::on(&upper)
        .caption(
            "latency percentiles per second (all operations)",
            (FONT, 16),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..seconds, y_range.clone())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds into the run")
        .y_desc("latency (ms)")
        .label_style((FONT, 12))
        .draw()
        .map_err(err)?;
    for (i, (label, q)) in OVER_TIME.iter().enumerate() {
        let color = palette(i);
        let points: Vec<(f64, f64)> = run
            .timeline
            .iter()
            .enumerate()
            .filter(|(_, h)| !h.is_empty())
            .map(|(s, h)| (s as f64 + 0.5, ms(h.value_at_quantile(*q).max(1))))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(err)?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 12))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;

    // Percentile spectrum per operation.
    let mut chart = ChartBuilder::on(&lower)
        .caption(
            "percentile spectrum per operation (x: 1/(1-percentile))",
            (FONT, 16),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d((1.5f64..150_000.0).log_scale(), y_range)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| percentile_label(*x))
        .label_style((FONT, 12))
        .draw()
        .map_err(err)?;
    for (i, (op, l)) in run.ops.iter().enumerate() {
        if l.count() == 0 {
            continue;
        }
        let color = palette(i);
        chart
            .draw_series(LineSeries::new(
                spectrum(l.histogram()),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(op_name(*op))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 12))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// The percentile at `x = 1 / (1 - q)` with as many decimals as it has nines: 90%, 99.9%.
fn percentile_label(x: f64) -> String {
    let q = 100.0 * (1.0 - 1.0 / x);
    let decimals = (x.log10().round() - 2.0).max(0.0) as usize;
    format!("{q:.decimals$}%")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::OpKind;
    use std::time::{Duration, Instant};

    #[test]
    fn the_spectrum_rises_and_stops_at_what_the_count_can_tell() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("bounds");
        for v in 1..=1000u64 {
            h.record(v).expect("in bounds");
        }
        let s = spectrum(&h);
        assert!(s.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        // 1000 values resolve quantiles up to about 1 - 1/1000, no further.
        assert!(s.last().is_some_and(|&(x, _)| x <= 1000.0));
        assert!((s[0].1 - 0.5).abs() < 0.01, "{:?}", s[0]);
        let labels: Vec<String> = [2.0, 10.0, 100.0, 1000.0, 100_000.0]
            .into_iter()
            .map(percentile_label)
            .collect();
        assert_eq!(labels, ["50%", "90%", "99%", "99.9%", "99.999%"]);
    }

    #[test]
    fn plots_are_svg_or_png_files() {
        let mut run = PhaseReport {
            elapsed: Duration::from_secs(3),
            ..PhaseReport::default()
        };
        let t0 = Instant::now();
        for (i, op) in [OpKind::Read, OpKind::Update].into_iter().enumerate() {
            for v in 0..500u64 {
                let end = t0 + Duration::from_micros(100 + v * (i as u64 + 1));
                let us = run.ops.entry(op).or_default().record(t0, end);
                if run.timeline.len() < 3 {
                    run.timeline
                        .resize_with(3, || Histogram::new(3).expect("sigfig"));
                }
                run.timeline[(v % 3) as usize].saturating_record(us);
            }
        }
        let dir = tempfile::tempdir().expect("tempdir");
        if load_font().is_err() {
            // A machine without any TrueType font gets the message, not a plot.
            let e = plot(&dir.path().join("x.svg"), "t", &run).expect_err("no font");
            assert!(e.contains("fonts-dejavu-core"), "{e}");
            return;
        }
        let svg = dir.path().join("run.svg");
        plot(&svg, "workload A", &run).expect("svg");
        let text = std::fs::read_to_string(&svg).expect("written");
        assert!(text.starts_with("<svg"), "{}", &text[..40.min(text.len())]);
        assert!(text.contains("p99.9") && text.contains("update"));
        let png = dir.path().join("run.png");
        plot(&png, "workload A", &run).expect("png");
        let bytes = std::fs::read(&png).expect("written");
        assert_eq!(&bytes[1..4], b"PNG");
        assert!(plot(&dir.path().join("run.gif"), "t", &run).is_err());
    }
}
