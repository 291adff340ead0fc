//! A three-node cluster on this machine (RF=3, W=2, R=2, durability `sync`): the maximum rate
//! of 1 KiB puts and gets, then latency at a fixed rate of half that maximum.
//!
//! * Three `dynacore serve` processes on 127.0.0.1, .2 and .3 (one core each, unpinned: they
//!   share this machine's CPUs with the client), joined through the first.
//! * One client process (this one) through the SDK, which sends each request to a replica
//!   of its key, which coordinates it.
//! * **Maximum:** `depth` requests in flight (closed loop) for the run time.
//! * **Fixed rate:** requests are sent on a schedule at half the maximum (open loop), and each
//!   latency is measured from the time the request was *due*, not sent, so a stall counts for
//!   every request it delayed (no coordinated omission).
//! * **Baseline**, beside them in the same run: `ping` of the same nodes through the same
//!   client, closed loop and then at the same fixed rate as the put — the floor of this
//!   machine's loopback, the protocol and the client.
//!
//! ```sh
//! cargo bench -p dynacore-net --bench cluster
//! DYNACORE_BENCH_SECONDS=10 DYNACORE_BENCH_DEPTH=128 cargo bench -p dynacore-net --bench cluster
//! DYNACORE_BENCH_SERVE_ARGS="--config big-memtable.toml" cargo bench -p dynacore-net --bench cluster
//! ```

mod common;

use std::cell::RefCell;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::{metric_sum, scrape};
use dynacore_bench::closed_loop::{closed_loop, env_or, histogram, micros, next_random, Outcome};
use dynacore_client::glommio::Client;
use dynacore_client::{Quorum, ReadRepair, WriteOptions};
use dynacore_runtime as runtime;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Ping,
    Put,
    Get,
}

fn key(i: u64) -> Vec<u8> {
    format!("cluster-bench-{i:012}").into_bytes()
}

/// One request of `op` on key number `k`.
async fn one(client: &Client, seed: SocketAddr, op: Op, k: u64) -> bool {
    match op {
        Op::Ping => client.ping(seed).await.is_ok(),
        Op::Put => {
            let options = WriteOptions {
                w: Some(Quorum::Count(2)),
                ..WriteOptions::default()
            };
            client
                .put_with(&key(k), &[0x5a; 1024], &options)
                .await
                .is_ok()
        }
        Op::Get => client
            .consistent_get(&key(k), Quorum::Count(2), ReadRepair::Default)
            .await
            .is_ok_and(|v| v.is_some()),
    }
}

/// `depth` tasks each send one request after another for `time` (closed loop).
async fn closed(
    client: &Client,
    seed: SocketAddr,
    op: Op,
    depth: usize,
    time: Duration,
    keys: u64,
) -> Outcome {
    let client = client.clone();
    closed_loop(depth, time, move |r| {
        let client = client.clone();
        async move { one(&client, seed, op, r % keys).await }
    })
    .await
}

/// Requests sent on a schedule of `rate` a second for `time` (open loop), each timed from
/// when it was due.
async fn open(
    client: &Client,
    seed: SocketAddr,
    op: Op,
    rate: f64,
    time: Duration,
    keys: u64,
) -> Outcome {
    let (hist, errors) = (
        Rc::new(RefCell::new(histogram())),
        Rc::new(RefCell::new(0u64)),
    );
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let total = (time.as_secs_f64() * rate) as u64;
    let mut rng = 0x2545_F491_4F6C_DD1D_u64;
    let mut tasks = Vec::new();
    for i in 0..total {
        let due = started + interval.mul_f64(i as f64);
        let now = Instant::now();
        if due > now {
            runtime::sleep(due - now).await;
        }
        let (client, hist, errors) = (client.clone(), hist.clone(), errors.clone());
        let k = next_random(&mut rng) % keys;
        tasks.push(runtime::spawn(async move {
            if one(&client, seed, op, k).await {
                hist.borrow_mut().saturating_record(micros(due.elapsed()));
            } else {
                *errors.borrow_mut() += 1;
            }
        }));
        if tasks.len() >= 4096 {
            // Finished ones are awaited at once; this only bounds the list.
            for t in tasks.drain(..2048) {
                t.await;
            }
        }
    }
    for t in tasks {
        t.await;
    }
    let elapsed = started.elapsed();
    let (hist, errors) = (hist.borrow().clone(), *errors.borrow());
    Outcome {
        ops: total,
        errors,
        elapsed,
        hist,
    }
}

/// Starts `dynacore serve` on `ip` (extra arguments after the defaults); returns the process
/// and its ready line.
fn serve(ip: &str, dir: &std::path::Path, extra: &[&str]) -> (Child, String) {
    // Every node shares one cluster secret, beside their data directories.
    let secret = dir.with_file_name("cluster.secret");
    if !secret.exists() {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&secret)
            .expect("secret file");
        std::io::Write::write_all(&mut f, "5e".repeat(32).as_bytes()).expect("secret");
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_dynacore"))
        .args(["serve", "--cores", "1", "--no-pin"])
        .arg("--cluster-secret-file")
        .arg(&secret)
        .args(["--listen", &format!("{ip}:0"), "--http", &format!("{ip}:0")])
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
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
    (child, line.trim().to_owned())
}

fn field(line: &str, name: &str) -> SocketAddr {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .expect("field")
        .parse()
        .expect("address")
}

fn print_row(name: &str, o: &Outcome, baseline: &Outcome) {
    println!(
        "{:<22} {:>9.0} {:>8} {:>8} {:>9} {:>9} {:>7} {:>10.2}x {:>10.2}x",
        name,
        o.rate(),
        o.hist.value_at_quantile(0.5),
        o.hist.value_at_quantile(0.99),
        o.hist.value_at_quantile(0.999),
        o.hist.max(),
        o.errors,
        o.rate() / baseline.rate(),
        o.hist.value_at_quantile(0.99) as f64 / baseline.hist.value_at_quantile(0.99).max(1) as f64,
    );
}

fn main() {
    let seconds: u64 = env_or("DYNACORE_BENCH_SECONDS", 5);
    let keys: u64 = env_or("DYNACORE_BENCH_KEYS", 50_000);
    let depth: usize = env_or("DYNACORE_BENCH_DEPTH", 64);
    let dir = tempfile::Builder::new()
        .prefix("dynacore-cluster-bench-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir");
    let (first, line) = serve("127.0.0.1", &dir.path().join("n1"), &[]);
    println!("node 1: {line}");
    let seed = field(&line, "binary");
    let seed_arg = seed.to_string();
    let mut children = vec![first];
    let mut https = vec![field(&line, "http")];
    for ip in ["127.0.0.2", "127.0.0.3"] {
        let (child, line) = serve(ip, &dir.path().join(ip), &["--seeds", &seed_arg]);
        println!("node {}: {line}", &ip[8..]);
        https.push(field(&line, "http"));
        children.push(child);
    }
    let report = runtime::spawn_executor("bench-client", None, 4 << 20, move || async move {
        // Wait (bounded) until the client sees three nodes in the ring.
        let until = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let client = Client::connect(&[seed]).await.expect("connect");
            if client.cluster().ring.node_count() == 3 && client.cluster().replication_factor == 3 {
                break client;
            }
            assert!(Instant::now() < until, "the cluster did not form");
            runtime::sleep(Duration::from_millis(200)).await;
        };
        let t0 = Instant::now();
        let loaders: Vec<_> = (0..128u64)
            .map(|w| {
                let client = client.clone();
                runtime::spawn(async move {
                    let mut i = w;
                    while i < keys {
                        assert!(one(&client, seed, Op::Put, i).await, "load put {i}");
                        i += 128;
                    }
                })
            })
            .collect();
        for l in loaders {
            l.await;
        }
        let load = t0.elapsed();
        let time = Duration::from_secs(seconds);
        let mut rows = Vec::new();
        let ping_max = closed(&client, seed, Op::Ping, depth, time, keys).await;
        let put_max = closed(&client, seed, Op::Put, depth, time, keys).await;
        let get_max = closed(&client, seed, Op::Get, depth, time, keys).await;
        let put_rate = put_max.rate() / 2.0;
        let get_rate = get_max.rate() / 2.0;
        let ping_put = open(&client, seed, Op::Ping, put_rate, time, keys).await;
        let put_half = open(&client, seed, Op::Put, put_rate, time, keys).await;
        let ping_get = open(&client, seed, Op::Ping, get_rate, time, keys).await;
        let get_half = open(&client, seed, Op::Get, get_rate, time, keys).await;
        rows.push(("ping max", ping_max));
        rows.push(("put max", put_max));
        rows.push(("get max", get_max));
        rows.push(("ping @ put rate", ping_put));
        rows.push(("put @ half max", put_half));
        rows.push(("ping @ get rate", ping_get));
        rows.push(("get @ half max", get_half));
        (load, rows)
    })
    .expect("client executor")
    .join()
    .expect("client run");
    let (load, rows) = report;
    #[allow(clippy::cast_precision_loss)]
    let load_rate = keys as f64 / load.as_secs_f64();
    println!(
        "load: {keys} 1 KiB puts (W=2), 128 in flight: {load_rate:.0} ops/s; then {seconds} s per row, closed loop at depth {depth}, open loop at half the maximum"
    );
    println!(
        "{:<22} {:>9} {:>8} {:>8} {:>9} {:>9} {:>7} {:>11} {:>11}",
        "row",
        "ops/s",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "max us",
        "errors",
        "ops/s÷ping",
        "p99÷ping"
    );
    let find = |name: &str| rows.iter().find(|(n, _)| *n == name).map(|(_, o)| o);
    for (name, o) in &rows {
        let baseline = match *name {
            "put @ half max" => find("ping @ put rate"),
            "get @ half max" => find("ping @ get rate"),
            _ => find("ping max"),
        }
        .expect("baseline");
        print_row(name, o, baseline);
    }
    for (i, http) in https.iter().enumerate() {
        let metrics = scrape(*http);
        let sum = |name: &str| metric_sum(&metrics, name);
        println!(
            "node {}: {:.1} WAL records per batch, {:.0} writes passed on, {:.0} read repairs, {:.0} hints stored",
            i + 1,
            sum("dynacore_wal_records_total") / sum("dynacore_wal_batches_total").max(1.0),
            sum("dynacore_writes_passed_on_total"),
            sum("dynacore_read_repairs_total"),
            sum("dynacore_hints_stored_total"),
        );
    }
    for child in &mut children {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
    }
    for mut child in children {
        let _ = child.wait();
    }
}
