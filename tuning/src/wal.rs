//! `wal`: durable writes through a real shard (`Durability::Sync`: every put waits for the
//! `fdatasync` that covers it) against the group-commit window and the WAL segment size.

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use dynacore_engine::{Durability, Shard, ShardId, ShardOptions};
use dynacore_runtime as runtime;
use serde_json::json;

use crate::report::{rate, Chart, Latencies, Report, Scale, Series, Table};

const VALUE_BYTES: usize = 1024;

/// One setting's outcome.
#[derive(Debug)]
struct Point {
    puts_per_s: f64,
    lat: Latencies,
    syncs: u64,
    segments_created: u64,
    segments_recycled: u64,
}

/// Runs `writers` concurrent durable writers for `time` against a fresh shard in `scratch`.
fn measure(
    scratch: &Path,
    writers: usize,
    window: Duration,
    segment_bytes: u64,
    time: Duration,
) -> Result<Point> {
    let dir = tempfile::Builder::new()
        .prefix("wal-")
        .tempdir_in(scratch)
        .with_context(|| format!("scratch directory in {}", scratch.display()))?;
    let mut o = ShardOptions::new(dir.path(), ShardId(0));
    o.durability = Durability::Sync;
    o.wal_group_commit_window = window;
    o.wal_segment_bytes = segment_bytes;
    let handle = runtime::spawn_executor("tuning-wal", None, 8 << 20, move || async move {
        let shard = Shard::open(o)
            .await
            .map_err(|e| anyhow!("opening the shard: {e}"))?;
        let before = shard.stats().wal;
        let total = Rc::new(RefCell::new(Latencies::new()));
        let begin = Instant::now();
        let mut tasks = Vec::with_capacity(writers);
        for w in 0..writers {
            let shard = shard.clone();
            let total = total.clone();
            tasks.push(runtime::spawn(async move {
                let value = vec![b'v'; VALUE_BYTES];
                let mut lat = Latencies::new();
                let mut i = 0u64;
                while begin.elapsed() < time {
                    let key = format!("w{w:03}-{i:012}");
                    let t = Instant::now();
                    shard
                        .put(key.as_bytes(), &value)
                        .await
                        .map_err(|e| anyhow!("put: {e}"))?;
                    lat.record(t.elapsed());
                    i += 1;
                }
                total.borrow_mut().merge(&lat);
                Ok::<(), anyhow::Error>(())
            }));
        }
        for t in tasks {
            t.await?;
        }
        let secs = begin.elapsed().as_secs_f64();
        let after = shard.stats().wal;
        shard
            .close()
            .await
            .map_err(|e| anyhow!("closing the shard: {e}"))?;
        let lat = Rc::try_unwrap(total)
            .map_err(|_| anyhow!("a writer outlived the run"))?
            .into_inner();
        Ok::<Point, anyhow::Error>(Point {
            puts_per_s: lat.count() as f64 / secs,
            lat,
            syncs: after.syncs - before.syncs,
            segments_created: after.segments_created - before.segments_created,
            segments_recycled: after.segments_recycled - before.segments_recycled,
        })
    })?;
    handle.join()?
}

/// Runs the WAL experiments.
///
/// # Errors
/// When a shard cannot be opened or a write fails.
pub fn run(scale: Scale, scratch: &Path) -> Result<Report> {
    let time = scale.pick(Duration::from_millis(1500), Duration::from_secs(4));
    let windows_us: &[u64] = scale.pick(&[0, 100, 500], &[0, 50, 100, 200, 500, 1000]);
    let writer_counts: &[usize] = scale.pick(&[8, 64], &[1, 8, 64]);
    let mut raw = Vec::new();
    let mut table = Table::new(
        "Durable 1 KiB puts against the group-commit window (64 MiB segments)",
        &[
            "writers",
            "window µs",
            "puts/s",
            "puts per fdatasync",
            "p50 µs",
            "p99 µs",
        ],
    );
    let mut series = Vec::new();
    // (writers, window, rate, p99) of every point, to judge the window.
    let mut points = Vec::new();
    for &writers in writer_counts {
        let mut line = Vec::new();
        for &w in windows_us {
            let p = measure(scratch, writers, Duration::from_micros(w), 64 << 20, time)?;
            raw.push(json!({
                "writers": writers, "window_us": w, "segment_bytes": 64u64 << 20,
                "puts_per_s": p.puts_per_s, "syncs": p.syncs, "latency": p.lat.summary(),
            }));
            table.row(vec![
                writers.to_string(),
                w.to_string(),
                rate(p.puts_per_s),
                format!("{:.1}", p.lat.count() as f64 / p.syncs.max(1) as f64),
                p.lat.us(0.5).to_string(),
                p.lat.us(0.99).to_string(),
            ]);
            line.push((w as f64, p.puts_per_s));
            points.push((writers, w, p.puts_per_s, p.lat.us(0.99)));
        }
        series.push(Series {
            label: format!("{writers} writers"),
            points: line,
        });
    }

    let segments: &[u64] = scale.pick(&[1 << 20, 64 << 20], &[1 << 20, 8 << 20, 64 << 20]);
    let seg_writers = *writer_counts.last().unwrap_or(&64);
    let mut seg_table = Table::new(
        &format!("Durable 1 KiB puts against the segment size ({seg_writers} writers, no window)"),
        &[
            "segment",
            "puts/s",
            "p99 µs",
            "max µs",
            "segments created",
            "recycled",
        ],
    );
    let mut seg_points = Vec::new();
    for &bytes in segments {
        let p = measure(scratch, seg_writers, Duration::ZERO, bytes, time)?;
        raw.push(json!({
            "writers": seg_writers, "window_us": 0, "segment_bytes": bytes,
            "puts_per_s": p.puts_per_s, "syncs": p.syncs, "latency": p.lat.summary(),
            "segments_created": p.segments_created, "segments_recycled": p.segments_recycled,
        }));
        seg_table.row(vec![
            format!("{} MiB", bytes >> 20),
            rate(p.puts_per_s),
            p.lat.us(0.99).to_string(),
            p.lat.us(1.0).to_string(),
            p.segments_created.to_string(),
            p.segments_recycled.to_string(),
        ]);
        seg_points.push((bytes, p.puts_per_s, p.lat.us(0.99)));
    }

    // The window wins only where it raises throughput without raising p99 much, for every
    // writer count (the default must not hurt few writers to help many).
    let mut verdicts = Vec::new();
    let mut window_wins = true;
    for &writers in writer_counts {
        let base = points.iter().find(|p| p.0 == writers && p.1 == 0).copied();
        let best = points
            .iter()
            .filter(|p| p.0 == writers && p.1 > 0)
            .max_by(|a, b| a.2.total_cmp(&b.2))
            .copied();
        if let (Some(b), Some(x)) = (base, best) {
            let gain = x.2 / b.2.max(1e-9);
            if gain < 1.05 {
                window_wins = false;
            }
            verdicts.push(format!(
                "{writers} writer(s): best window {} µs gives {:.2}× the puts/s of none (p99 {} → {} µs)",
                x.1, gain, b.3, x.3
            ));
        }
    }
    let seg_small = seg_points.first().copied();
    let seg_large = seg_points.last().copied();
    let seg_text = match (seg_small, seg_large) {
        (Some(s), Some(l)) => format!(
            "{} MiB segments made {:.2}× the puts/s of {} MiB ones (p99 {} against {} µs): each \
             rotation to a new segment, and the zero-filled segment prepared behind it, costs \
             the writers",
            s.0 >> 20,
            s.1 / l.1.max(1e-9),
            l.0 >> 20,
            s.2,
            l.2
        ),
        _ => String::new(),
    };
    let finding = format!("{}. {seg_text}.", verdicts.join("; "));
    let recommendation = if window_wins {
        "A group-commit window raised throughput for every writer count: consider making it the \
         default (`ShardOptions::wal_group_commit_window`; the node's default stays 0 until a \
         vs-redis run confirms it)."
            .to_string()
    } else {
        "`ShardOptions::wal_group_commit_window` stays 0 (the default): waiting before a sync does \
         not pay on this device for every writer count, because the batch already grows by \
         itself while the previous fdatasync runs. `wal_segment_bytes` stays 64 MiB."
            .to_string()
    };
    Ok(Report {
        name: "wal".into(),
        question: "Which group-commit window and WAL segment size give the most durable writes at a bounded p99?".into(),
        method: format!(
            "A shard with `Durability::Sync` on a glommio executor; `writers` tasks each put \
             16-byte keys with {VALUE_BYTES}-byte values one after another for {} ms, each put \
             waiting for the fdatasync that covers it. A fresh shard per point.",
            time.as_millis()
        ),
        quick: scale.quick,
        tables: vec![table, seg_table],
        chart: Chart {
            title: "Durable puts/s against the group-commit window".into(),
            x_label: "window (µs)".into(),
            y_label: "puts/s".into(),
            log2_x: false,
            series,
        },
        finding,
        recommendation,
        raw: serde_json::Value::Array(raw),
    })
}
