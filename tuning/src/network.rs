//! `network`: the loopback round-trip floor, and what batching frames per syscall buys. Plain
//! blocking sockets on two threads (no executor), so the numbers are the kernel's.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;

use crate::report::{rate, Chart, Latencies, Report, Scale, Series, Table};

const FRAME: usize = 64;

/// How the client sends a batch of `k` frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Send {
    /// One `write` of all `k` frames.
    OneSyscall,
    /// A `write` per frame, all before reading the answers (pipelined).
    SyscallPerFrame,
}

#[derive(Debug)]
struct Point {
    frames_per_s: f64,
    batch_lat: Latencies,
}

fn measure(k: usize, send: Send, time: Duration) -> Result<Point> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding loopback")?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            s.write_all(&buf[..n])?;
        }
    });
    let mut c = TcpStream::connect(addr).context("connecting over loopback")?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    let batch = vec![0x42u8; k * FRAME];
    let mut back = vec![0u8; k * FRAME];
    let mut lat = Latencies::new();
    let begin = Instant::now();
    let mut frames = 0u64;
    while begin.elapsed() < time {
        let t = Instant::now();
        match send {
            Send::OneSyscall => c.write_all(&batch)?,
            Send::SyscallPerFrame => {
                for f in batch.chunks(FRAME) {
                    c.write_all(f)?;
                }
            }
        }
        c.read_exact(&mut back).context("reading the echo")?;
        lat.record(t.elapsed());
        frames += k as u64;
    }
    let secs = begin.elapsed().as_secs_f64();
    drop(c);
    server
        .join()
        .map_err(|_| anyhow::anyhow!("echo thread panicked"))?
        .context("echo thread")?;
    Ok(Point {
        frames_per_s: frames as f64 / secs,
        batch_lat: lat,
    })
}

/// Runs the network experiment.
///
/// # Errors
/// When loopback sockets fail.
pub fn run(scale: Scale) -> Result<Report> {
    let time = scale.pick(Duration::from_millis(700), Duration::from_secs(2));
    let ks: &[usize] = scale.pick(&[1, 4, 16, 64], &[1, 2, 4, 8, 16, 32, 64, 128]);
    let mut table = Table::new(
        &format!("{FRAME}-byte frames echoed over loopback, a batch of k at a time"),
        &[
            "k",
            "one write: frames/s",
            "batch p50 µs",
            "write per frame: frames/s",
            "batch p50 µs ",
        ],
    );
    let mut raw = Vec::new();
    let (mut one, mut per) = (Vec::new(), Vec::new());
    let mut floor = 0;
    let mut gains = Vec::new();
    for &k in ks {
        let a = measure(k, Send::OneSyscall, time)?;
        let b = measure(k, Send::SyscallPerFrame, time)?;
        if k == 1 {
            floor = a.batch_lat.us(0.5);
        }
        raw.push(
            json!({"k": k, "send": "one_syscall", "frames_per_s": a.frames_per_s,
            "batch_latency": a.batch_lat.summary()}),
        );
        raw.push(
            json!({"k": k, "send": "syscall_per_frame", "frames_per_s": b.frames_per_s,
            "batch_latency": b.batch_lat.summary()}),
        );
        table.row(vec![
            k.to_string(),
            rate(a.frames_per_s),
            a.batch_lat.us(0.5).to_string(),
            rate(b.frames_per_s),
            b.batch_lat.us(0.5).to_string(),
        ]);
        gains.push((k, a.frames_per_s, b.frames_per_s));
        one.push((k as f64, a.frames_per_s));
        per.push((k as f64, b.frames_per_s));
    }
    let first = gains.first().copied().unwrap_or((1, 1.0, 1.0));
    let last = gains.last().copied().unwrap_or((1, 1.0, 1.0));
    let finding = format!(
        "The loopback round trip of one {FRAME}-byte frame between two blocking threads is {floor} µs \
         (median). Batching {} frames into one write carries {:.1}× the frames of one per round \
         trip, and {:.2}× the frames of the same batch written a frame per syscall: the cost is \
         per syscall and per wakeup, not per byte.",
        last.0,
        last.1 / first.1.max(1e-9),
        last.1 / last.2.max(1e-9)
    );
    let recommendation = "The node's connections already answer every request that one read \
        decoded with one write (the client pipelines, the server coalesces its answers), and \
        the client library sends a pipelined batch in one write: keep both. A load generator \
        with many connections in flight sees the batched rate, one request at a time sees the \
        floor."
        .to_string();
    Ok(Report {
        name: "network".into(),
        question: "What is the loopback round-trip floor, and how much does batching frames per syscall buy?".into(),
        method: format!(
            "Two threads with blocking TCP sockets (TCP_NODELAY) over 127.0.0.1: the client sends \
             k {FRAME}-byte frames — in one write, or in k writes — and waits for all k echoed, \
             for {} ms per point.",
            time.as_millis()
        ),
        quick: scale.quick,
        tables: vec![table],
        chart: Chart {
            title: "Frames/s over loopback against frames per batch".into(),
            x_label: "frames per batch".into(),
            y_label: "frames/s".into(),
            log2_x: true,
            series: vec![
                Series {
                    label: "one write per batch".into(),
                    points: one,
                },
                Series {
                    label: "one write per frame".into(),
                    points: per,
                },
            ],
        },
        finding,
        recommendation,
        raw: serde_json::Value::Array(raw),
    })
}
