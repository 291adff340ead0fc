//! Loopback benchmark of a real node, until `loadgen` exists: one client process (this one)
//! against `dynacore serve` on 127.0.0.1, through the SDK (shard-aware, pipelined).
//!
//! For each operation and each depth (requests in flight at once, over the SDK's one connection
//! per core), `depth` tasks loop for a fixed time, each timing its own requests into an
//! HdrHistogram (closed loop). The baseline, run the same way beside them, is `ping`: the same
//! client, connections and protocol with no storage work — the floor this machine's loopback
//! and the protocol set.
//!
//! ```sh
//! cargo bench -p dynacore-net --bench loopback
//! DYNACORE_BENCH_SECONDS=10 DYNACORE_BENCH_KEYS=200000 cargo bench -p dynacore-net --bench loopback
//! ```
//!
//! Operations: `ping`; `put` (1 KiB values, durability `sync`: acknowledged after
//! `fdatasync`); `get` (uniformly random keys among those loaded, all present).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::{metric_sum, scrape};
use dynacore_bench::closed_loop::{closed_loop, env_or, Outcome};
use dynacore_client::glommio::Client;
use dynacore_runtime as runtime;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Ping,
    Put,
    Get,
}

fn key(i: u64) -> Vec<u8> {
    format!("bench-{i:012}").into_bytes()
}

/// `depth` tasks each send one request after another for `time`.
async fn run(
    client: &Client,
    seed: SocketAddr,
    op: Op,
    depth: usize,
    time: Duration,
    keys: u64,
) -> Outcome {
    let value = Rc::new(vec![0x5a_u8; 1024]);
    let client = client.clone();
    closed_loop(depth, time, move |r| {
        let (client, value) = (client.clone(), value.clone());
        async move {
            match op {
                Op::Ping => client.ping(seed).await.is_ok(),
                Op::Put => client.put(&key(r % keys.max(1)), &value).await.is_ok(),
                Op::Get => client
                    .get(&key(r % keys.max(1)))
                    .await
                    .is_ok_and(|v| v.is_some()),
            }
        }
    })
    .await
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported here.
    let seconds: u64 = env_or("DYNACORE_BENCH_SECONDS", 5);
    let keys: u64 = env_or("DYNACORE_BENCH_KEYS", 100_000);
    let depths: Vec<usize> = std::env::var("DYNACORE_BENCH_DEPTHS")
        .ok()
        .map(|v| v.split(',').filter_map(|d| d.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 16, 128]);
    let dir = tempfile::Builder::new()
        .prefix("dynacore-loopback-bench-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dynacore"))
        .args(["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(
            std::env::var("DYNACORE_BENCH_SERVE_ARGS")
                .unwrap_or_default()
                .split_whitespace(),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start dynacore");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready line");
    println!("node: {}", line.trim());
    let seed: SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("binary="))
        .expect("binary address")
        .parse()
        .expect("address");
    let report = runtime::spawn_executor("bench-client", None, 4 << 20, move || async move {
        let client = Client::connect(&[seed]).await.expect("connect");
        // Load every key once (durable puts, deep pipeline).
        let t0 = Instant::now();
        let loaders: Vec<_> = (0..256u64)
            .map(|w| {
                let client = client.clone();
                runtime::spawn(async move {
                    let value = vec![0x5a_u8; 1024];
                    let mut i = w;
                    while i < keys {
                        client.put(&key(i), &value).await.expect("load put");
                        i += 256;
                    }
                })
            })
            .collect();
        for l in loaders {
            l.await;
        }
        let load = t0.elapsed();
        let mut rows = Vec::new();
        for &depth in &depths {
            for op in [Op::Ping, Op::Put, Op::Get] {
                let o = run(&client, seed, op, depth, Duration::from_secs(seconds), keys).await;
                rows.push((op, depth, o));
            }
        }
        (load, rows)
    })
    .expect("client executor")
    .join()
    .expect("client run");
    let (load, rows) = report;
    let rate = Outcome::rate;
    #[allow(clippy::cast_precision_loss)]
    let load_rate = keys as f64 / load.as_secs_f64();
    println!("load: {keys} durable 1 KiB puts, 256 in flight: {load_rate:.0} ops/s");
    println!(
        "{:<5} {:>5} {:>11} {:>8} {:>8} {:>8} {:>9} {:>9} {:>7} {:>14}",
        "op",
        "depth",
        "ops/s",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "max us",
        "errors",
        "",
        "vs ping ops/s"
    );
    for (op, depth, o) in &rows {
        let ping = rows
            .iter()
            .find(|(p, d, _)| *p == Op::Ping && d == depth)
            .map_or(1.0, |(_, _, p)| rate(p));
        println!(
            "{:<5} {:>5} {:>11.0} {:>8} {:>8} {:>8} {:>9} {:>9} {:>7} {:>13.2}x",
            format!("{op:?}").to_lowercase(),
            depth,
            rate(o),
            o.hist.value_at_quantile(0.5),
            o.hist.value_at_quantile(0.99),
            o.hist.value_at_quantile(0.999),
            o.hist.max(),
            o.errors,
            "",
            rate(o) / ping
        );
    }
    if let Some(http) = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http="))
        .and_then(|a| a.parse::<SocketAddr>().ok())
    {
        let metrics = scrape(http);
        let sum = |name: &str| metric_sum(&metrics, name);
        println!(
            "node: {:.0} WAL batches, {:.1} records per batch, {:.0} syncs, {:.0} write stalls, {:.0} compactions, {:.0} forwarded requests",
            sum("dynacore_wal_batches_total"),
            sum("dynacore_wal_records_total") / sum("dynacore_wal_batches_total").max(1.0),
            sum("dynacore_wal_syncs_total"),
            sum("dynacore_write_stalls_total"),
            sum("dynacore_compactions_total"),
            sum("dynacore_forwarded_requests_total"),
        );
        // The server's own view of put latency: how many puts took longer than 10 ms from
        // arrival to answer (the client's tail includes its own scheduling too).
        let bucket = |le: &str| -> f64 {
            metrics
                .lines()
                .filter(|l| {
                    l.starts_with("dynacore_request_duration_seconds_bucket{")
                        && l.contains("op=\"put\"")
                        && l.contains(&format!("le=\"{le}\""))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        println!(
            "node: puts answered in > 5 ms: {:.0}, > 10 ms: {:.0}, > 25 ms: {:.0} of {:.0}",
            bucket("+Inf") - bucket("0.005"),
            bucket("+Inf") - bucket("0.01"),
            bucket("+Inf") - bucket("0.025"),
            bucket("+Inf")
        );
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}
