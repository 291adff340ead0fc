//! What a run reports: the table per operation, the JSON file (`--json`), HdrHistogram
//! percentile distributions (`--hdr`), and two JSON reports side by side (`--compare`).

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::recording::Latencies;
use crate::run::PhaseReport;
use crate::workload::OpKind;

/// An operation's name in reports.
#[must_use]
pub fn op_name(op: OpKind) -> &'static str {
    match op {
        OpKind::Read => "read",
        OpKind::Update => "update",
        OpKind::Insert => "insert",
        OpKind::Scan => "scan",
        OpKind::ReadModifyWrite => "read-modify-write",
    }
}

fn us(h: &Histogram<u64>, q: f64) -> u64 {
    h.value_at_quantile(q)
}

/// The table of one phase, as printed.
#[must_use]
pub fn phase_table(title: &str, p: &PhaseReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{title} ({:.1} s):", p.elapsed.as_secs_f64());
    let _ = writeln!(
        out,
        "  {:<18} {:>10} {:>10} {:>8} {:>8} {:>8} {:>9} {:>9}  errors",
        "operation", "count", "ops/s", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us"
    );
    let secs = p.elapsed.as_secs_f64().max(1e-9);
    for (op, l) in &p.ops {
        let h = l.histogram();
        let errors: Vec<String> = l.errors().iter().map(|(k, n)| format!("{k}={n}")).collect();
        let _ = writeln!(
            out,
            "  {:<18} {:>10} {:>10.0} {:>8} {:>8} {:>8} {:>9} {:>9}  {}",
            op_name(*op),
            l.count(),
            l.count() as f64 / secs,
            us(h, 0.5),
            us(h, 0.9),
            us(h, 0.99),
            us(h, 0.999),
            h.max(),
            if errors.is_empty() {
                "-".to_owned()
            } else {
                errors.join(" ")
            }
        );
    }
    if p.not_found > 0 {
        let _ = writeln!(out, "  reads of absent keys: {}", p.not_found);
    }
    if p.skipped > 0 {
        let _ = writeln!(out, "  skipped (the driver cannot scan): {}", p.skipped);
    }
    let unsent: u64 = p
        .ops
        .values()
        .filter_map(|l| l.errors().get("unsent"))
        .sum();
    if unsent > 0 {
        let _ = writeln!(
            out,
            "  {unsent} operations were never sent (the server fell far behind the schedule): the percentiles leave them out"
        );
    }
    if let Some(lag) = p.schedule_lag.as_ref().filter(|h| !h.is_empty()) {
        let _ = writeln!(
            out,
            "  client schedule lag (queued after due, inside the latencies): p50 {} us, p99 {} us, max {} us",
            us(lag, 0.5),
            us(lag, 0.99),
            lag.max()
        );
    }
    out
}

fn latency_json(l: &Latencies, secs: f64) -> Value {
    let h = l.histogram();
    json!({
        "count": l.count(),
        "ops_per_s": l.count() as f64 / secs,
        "mean_us": h.mean(),
        "p50_us": us(h, 0.5),
        "p90_us": us(h, 0.9),
        "p99_us": us(h, 0.99),
        "p999_us": us(h, 0.999),
        "max_us": h.max(),
        "errors": l.errors(),
    })
}

/// One phase's figures as JSON: per operation, the whole phase, and per second.
#[must_use]
pub fn phase_json(p: &PhaseReport) -> Value {
    let secs = p.elapsed.as_secs_f64().max(1e-9);
    let ops: serde_json::Map<String, Value> = p
        .ops
        .iter()
        .map(|(op, l)| (op_name(*op).to_owned(), latency_json(l, secs)))
        .collect();
    let mut all = Latencies::new();
    for l in p.ops.values() {
        all.merge(l);
    }
    let timeline: Vec<Value> = p
        .timeline
        .iter()
        .enumerate()
        .map(|(s, h)| {
            json!({
                "second": s,
                "count": h.len(),
                "p50_us": us(h, 0.5),
                "p90_us": us(h, 0.9),
                "p99_us": us(h, 0.99),
                "p999_us": us(h, 0.999),
                "max_us": h.max(),
            })
        })
        .collect();
    json!({
        "elapsed_s": p.elapsed.as_secs_f64(),
        "not_found": p.not_found,
        "skipped": p.skipped,
        "all": latency_json(&all, secs),
        "schedule_lag": p.schedule_lag.as_ref().map(|h| json!({
            "p50_us": us(h, 0.5),
            "p99_us": us(h, 0.99),
            "p999_us": us(h, 0.999),
            "max_us": h.max(),
        })),
        "operations": ops,
        "timeline": timeline,
    })
}

/// The percentile distribution of `h` (microseconds) in HdrHistogram's text format
/// (`.hgrm`, values in milliseconds), as `HistogramLogProcessor` and wrk2 print it and the
/// HdrHistogram plotter reads it.
#[must_use]
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let ms = |v: u64| v as f64 / 1000.0;
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = ms(h.highest_equivalent(v.value_iterated_to()));
            if q < 1.0 {
                let _ = writeln!(
                    out,
                    "{value:12.3} {q:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(out, "{value:12.3} {q:2.12} {total:10}");
            }
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        ms(1) * h.mean(),
        ms(1) * h.stdev()
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        ms(h.max()),
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        // As HdrHistogram counts them: 2 × 10^digits, rounded up to a power of two.
        (2 * 10u64.pow(u32::from(h.sigfig()))).next_power_of_two()
    );
    out
}

/// Why two reports cannot be compared.
#[derive(Debug, PartialEq, Eq)]
pub struct CompareError(pub String);

impl std::fmt::Display for CompareError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CompareError {}

const COMPARED: [(&str, &str); 7] = [
    ("ops_per_s", "ops/s"),
    ("p50_us", "p50 us"),
    ("p90_us", "p90 us"),
    ("p99_us", "p99 us"),
    ("p999_us", "p99.9 us"),
    ("max_us", "max us"),
    ("errors", "errors"),
];

fn describe(config: &Value) -> String {
    let s = |k: &str| match &config[k] {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    format!(
        "{} driver on {}, workload {}, {} connections, {}",
        s("driver"),
        s("targets"),
        s("workload"),
        s("connections"),
        match &config["rate"] {
            Value::Null => "closed loop".to_owned(),
            r => format!("open loop at {r}/s"),
        }
    )
}

/// `a` and `b` (two `--json` reports) side by side, with `b / a` for every figure of every
/// phase and operation they share.
///
/// # Errors
/// [`CompareError`] when either is not a `loadgen` report.
pub fn compare(a: &Value, b: &Value, a_name: &str, b_name: &str) -> Result<String, CompareError> {
    for (v, name) in [(a, a_name), (b, b_name)] {
        if !v.get("config").is_some_and(Value::is_object) {
            return Err(CompareError(format!(
                "{name} is not a loadgen --json report"
            )));
        }
    }
    let mut out = String::new();
    let _ = writeln!(out, "A = {a_name}: {}", describe(&a["config"]));
    let _ = writeln!(out, "B = {b_name}: {}", describe(&b["config"]));
    let mut shared = 0;
    for phase in ["load", "run"] {
        let (Some(pa), Some(pb)) = (
            a[phase].get("operations").and_then(Value::as_object),
            b[phase].get("operations").and_then(Value::as_object),
        ) else {
            continue;
        };
        for (op, fa) in pa {
            let Some(fb) = pb.get(op) else {
                continue;
            };
            shared += 1;
            let _ = writeln!(out, "\n{phase} / {op}:");
            let _ = writeln!(
                out,
                "  {:<10} {:>14} {:>14} {:>9}",
                "figure", "A", "B", "B/A"
            );
            for (key, label) in COMPARED {
                let num = |f: &Value| -> f64 {
                    match &f[key] {
                        Value::Object(errors) => errors.values().filter_map(Value::as_f64).sum(),
                        v => v.as_f64().unwrap_or(f64::NAN),
                    }
                };
                let (x, y) = (num(fa), num(fb));
                let ratio = if x > 0.0 {
                    format!("{:.2}x", y / x)
                } else {
                    "-".to_owned()
                };
                let _ = writeln!(out, "  {label:<10} {x:>14.0} {y:>14.0} {ratio:>9}");
            }
        }
    }
    if shared == 0 {
        return Err(CompareError(format!(
            "{a_name} and {b_name} have no phase and operation in common"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn phase(latencies_us: &[u64]) -> PhaseReport {
        let mut p = PhaseReport {
            elapsed: Duration::from_secs(2),
            ..PhaseReport::default()
        };
        let t0 = Instant::now();
        let l = p.ops.entry(OpKind::Read).or_default();
        for &v in latencies_us {
            l.record(t0, t0 + Duration::from_micros(v));
        }
        l.error("timeout");
        p
    }

    #[test]
    fn hgrm_lists_rising_percentiles_up_to_the_total() {
        let p = phase(&(1..=1000).collect::<Vec<_>>());
        let text = hgrm(p.ops[&OpKind::Read].histogram());
        let rows: Vec<Vec<f64>> = text
            .lines()
            .skip(2)
            .take_while(|l| !l.starts_with('#'))
            .map(|l| {
                l.split_whitespace()
                    .map(|x| x.parse().expect("number"))
                    .collect()
            })
            .collect();
        assert!(rows.len() > 20, "{text}");
        assert!(rows
            .windows(2)
            .all(|w| w[0][0] <= w[1][0] && w[0][1] <= w[1][1]));
        let last = rows.last().expect("rows");
        assert_eq!((last[1], last[2]), (1.0, 1000.0));
        assert!((last[0] - 1.0).abs() < 0.01, "max ≈ 1 ms: {}", last[0]);
        assert!(text.contains("#[Max     =        1.000, Total count    =         1000]"));
        // The median row: 50 % at about 0.5 ms.
        let median = rows.iter().find(|r| r[1] >= 0.5).expect("median");
        assert!((median[0] - 0.5).abs() < 0.01, "{median:?}");
    }

    #[test]
    fn reports_compare_with_ratios_and_refuse_other_files() {
        let json_of = |lat: &[u64]| {
            json!({
                "config": {"driver": "native", "workload": "A", "rate": null},
                "run": phase_json(&phase(lat)),
            })
        };
        let a = json_of(&[100, 100, 100, 100]);
        let b = json_of(&[200, 200, 200, 200, 200, 200, 200, 200]);
        let text = compare(&a, &b, "a.json", "b.json").expect("comparable");
        assert!(text.contains("run / read:"), "{text}");
        let row = |label: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(label))
                .unwrap_or_else(|| panic!("{label} in {text}"))
                .split_whitespace()
                .last()
                .map(str::to_owned)
        };
        assert_eq!(row("ops/s").as_deref(), Some("2.00x"));
        assert_eq!(row("p50").as_deref(), Some("2.00x"));
        assert_eq!(row("errors").as_deref(), Some("1.00x"));
        assert!(compare(&json!({"x": 1}), &b, "x.json", "b.json").is_err());
        let other = json!({"config": {}, "load": phase_json(&phase(&[5]))});
        assert!(compare(&a, &other, "a.json", "o.json").is_err());
    }

    #[test]
    fn the_table_shows_every_operation_and_error_kind() {
        let p = phase(&[10, 20, 30]);
        let t = phase_table("run", &p);
        assert!(t.contains("read"), "{t}");
        assert!(t.contains("timeout=1"), "{t}");
        let j = phase_json(&p);
        assert_eq!(j["operations"]["read"]["count"], 3);
        assert_eq!(j["all"]["errors"]["timeout"], 1);
    }
}
