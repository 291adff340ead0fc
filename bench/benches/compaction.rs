//! Compaction benchmark: overwrite a key set many times, let compaction settle, and measure
//! space amplification, write amplification and get latency while compaction runs. fjall
//! (default settings, leveled compaction) runs the same overwrite workload beside it.
//!
//! ```text
//! cargo bench -p dynacore-bench --bench compaction
//! DYNACORE_BENCH_VALUE_BYTES=262144 DYNACORE_BENCH_KEYS=1000 \
//!     DYNACORE_BENCH_ENGINES=dynacore,fjall,fjall-kv cargo bench -p dynacore-bench --bench compaction
//! ```
//! Settings (environment): `DYNACORE_BENCH_KEYS` (100000), `DYNACORE_BENCH_ROUNDS` (10),
//! `DYNACORE_BENCH_VALUE_BYTES` (1024), `DYNACORE_BENCH_ENGINES` (`dynacore,fjall`; also
//! `dynacore-inline`: Dynacore with its value log off, every value in the tables; and
//! `fjall-kv`: fjall with key-value separation, its BlobDB-style value log). Dynacore's value
//! log takes values over 64 KiB, so it only matters with `DYNACORE_BENCH_VALUE_BYTES` above
//! that.
//!
//! Figures:
//! * **put rate** during the overwrite rounds (WAL written without fsync on both engines).
//! * **space amplification**: table bytes (Dynacore: SSTables and blob files; fjall: its
//!   reported disk space) over live bytes (keys × (key + value)), after a flush and once compaction is idle; the
//!   data directory's total (WAL segments included) is printed beside it.
//! * **write amplification**: bytes the block device wrote (from `/sys/dev/block/*/stat`,
//!   after `sync`) over bytes the user wrote; the machine must be otherwise quiet.
//! * **get latency** on Dynacore's executor, open loop (a get every 200 µs, latency counted
//!   from the intended start, as wrk2 does, so waiting behind compaction is not hidden):
//!   p50/p99/p99.9 when idle and while full compactions run, and the ratio of the p99s.
//!
//! Data lives under `target/bench-data` (disk-backed: tmpfs would hide direct-I/O behaviour).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dynacore_bench::{open_fjall, temp_dir_in, ShardHost};
use dynacore_engine::{Durability, Shard, ShardId, ShardOptions};
use dynacore_runtime as runtime;
use hdrhistogram::Histogram;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const KEY_BYTES: usize = 16;
/// Gap between intended get starts in the latency phases.
const GET_INTERVAL: Duration = Duration::from_micros(200);
/// Gets measured while idle.
const IDLE_GETS: u64 = 20_000;
/// Gets measured while compactions run (spread over as many full compactions as it takes).
const BUSY_GETS: u64 = 20_000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Workload {
    keys: Vec<[u8; KEY_BYTES]>,
    /// A pool of random values; key `i` in round `r` gets `values[(i + r) % len]`.
    values: Vec<Vec<u8>>,
    rounds: usize,
    /// One shuffled key order per round.
    orders: Vec<Vec<u32>>,
}

impl Workload {
    fn new(keys: usize, rounds: usize, value_bytes: usize) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut k: Vec<[u8; KEY_BYTES]> = (0..keys).map(|_| rng.gen()).collect();
        k.sort_unstable();
        k.dedup();
        let pool = 64.min(keys).max(2);
        let values = (0..pool)
            .map(|_| {
                let mut v = vec![0u8; value_bytes];
                rng.fill(&mut v[..]);
                v
            })
            .collect();
        let orders = (0..rounds)
            .map(|_| {
                let mut o: Vec<u32> = (0..u32::try_from(k.len()).expect("fits")).collect();
                o.shuffle(&mut rng);
                o
            })
            .collect();
        Workload {
            keys: k,
            values,
            rounds,
            orders,
        }
    }

    fn value(&self, i: usize, round: usize) -> &[u8] {
        &self.values[(i + round) % self.values.len()]
    }

    fn live_bytes(&self) -> u64 {
        (self.keys.len() * (KEY_BYTES + self.values[0].len())) as u64
    }

    fn user_bytes(&self) -> u64 {
        self.live_bytes() * self.rounds as u64
    }
}

fn bench_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data")
}

/// Sectors written by the block device holding `path`, in bytes (`None` if not found).
fn device_bytes_written(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    let (major, minor) = (
        ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff),
        ((dev >> 12) & 0xffff_ff00) | (dev & 0xff),
    );
    let stat = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/stat")).ok()?;
    let sectors: u64 = stat.split_whitespace().nth(6)?.parse().ok()?;
    Some(sectors * 512)
}

fn sync_all() {
    let _ = std::process::Command::new("sync").status();
}

/// Allocated bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

#[allow(clippy::cast_precision_loss)]
fn ratio(a: u64, b: u64) -> f64 {
    a as f64 / b.max(1) as f64
}

#[allow(clippy::cast_precision_loss)]
fn mib(b: u64) -> f64 {
    b as f64 / f64::from(1 << 20)
}

struct Amplification {
    put_rate: f64,
    settle: Duration,
    table_bytes: u64,
    dir_bytes: u64,
    device_written: Option<u64>,
}

fn report(name: &str, w: &Workload, a: &Amplification) {
    println!("{name}:");
    println!(
        "  overwrite: {} keys x {} rounds of {} B values: {:.0} puts/s; settle {:.1} s",
        w.keys.len(),
        w.rounds,
        w.values[0].len(),
        a.put_rate,
        a.settle.as_secs_f64()
    );
    println!(
        "  space amplification: {:.3} (tables and value log {:.1} MiB / live {:.1} MiB); whole directory {:.1} MiB = {:.3}",
        ratio(a.table_bytes, w.live_bytes()),
        mib(a.table_bytes),
        mib(w.live_bytes()),
        mib(a.dir_bytes),
        ratio(a.dir_bytes, w.live_bytes()),
    );
    match a.device_written {
        Some(b) => println!(
            "  write amplification: {:.2} (device wrote {:.1} MiB for {:.1} MiB of puts)",
            ratio(b, w.user_bytes()),
            mib(b),
            mib(w.user_bytes())
        ),
        None => println!("  write amplification: n/a (no block-device statistics here)"),
    }
}

/// The overwrite rounds; returns the table count sampled every [`SAMPLE_EVERY`] puts.
async fn overwrite(shard: &Shard, w: &Workload) -> Vec<usize> {
    let mut tables = Vec::new();
    let mut n = 0u64;
    for round in 0..w.rounds {
        for &i in &w.orders[round] {
            let i = i as usize;
            shard.put(&w.keys[i], w.value(i, round)).await.expect("put");
            n += 1;
            if n.is_multiple_of(SAMPLE_EVERY) {
                tables.push(shard.stats().tables);
            }
        }
    }
    tables
}

/// Puts between two samples of the table count (read amplification during the load).
const SAMPLE_EVERY: u64 = 5_000;

fn print_table_samples(label: &str, samples: &[usize]) {
    if samples.is_empty() {
        return;
    }
    #[allow(clippy::cast_precision_loss)]
    let mean = samples.iter().sum::<usize>() as f64 / samples.len() as f64;
    println!(
        "  {label} during the overwrites: mean {mean:.1}, max {} ({} samples)",
        samples.iter().max().copied().unwrap_or(0),
        samples.len()
    );
}

/// Open-loop gets of random keys until `count` are done or `keep_going` says stop; latency from
/// each get's intended start.
async fn timed_gets(
    shard: &Shard,
    w: &Workload,
    count: u64,
    hist: &mut Histogram<u64>,
    keep_going: impl Fn() -> bool,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(hist.len());
    // `DYNACORE_BENCH_DEBUG`: report each get slower than 1 ms and whether it read the disk.
    let debug = std::env::var_os("DYNACORE_BENCH_DEBUG").is_some();
    let start = Instant::now();
    let mut n: u32 = 0;
    while hist.len() < count && keep_going() {
        let intended = start + GET_INTERVAL * n;
        n += 1;
        let now = Instant::now();
        if intended > now {
            runtime::sleep(intended - now).await;
        }
        let i = rng.gen_range(0..w.keys.len());
        let misses = debug.then(|| shard.stats().block_cache_misses);
        let t_get = Instant::now();
        let got = shard.get(&w.keys[i]).await.expect("get");
        let get_took = t_get.elapsed();
        let missed = misses.map(|m| shard.stats().block_cache_misses - m);
        assert!(got.is_some_and(|r| r.value.is_some()), "key {i} lost");
        let took = u64::try_from(intended.elapsed().as_nanos()).unwrap_or(u64::MAX);
        hist.record(took.max(1)).expect("in range");
        if debug && took > 1_000_000 {
            eprintln!(
                "slow get: {} us at {:?} (n={n}), get itself {get_took:?}, {missed:?} cache misses",
                took / 1000,
                start.elapsed()
            );
        }
    }
}

fn print_latency(label: &str, h: &Histogram<u64>) {
    #[allow(clippy::cast_precision_loss)]
    let us = |v: u64| v as f64 / 1000.0;
    println!(
        "  get latency {label}: n={} p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us",
        h.len(),
        us(h.value_at_quantile(0.5)),
        us(h.value_at_quantile(0.99)),
        us(h.value_at_quantile(0.999)),
        us(h.max())
    );
}

fn run_dynacore(w: &Arc<Workload>, value_log: bool) {
    let dir = temp_dir_in(&bench_dir());
    let mut o = ShardOptions::new(dir.path(), ShardId(0));
    o.durability = Durability::None;
    if !value_log {
        o.blob_threshold_bytes = None;
    }
    if let Some(rate) = std::env::var("DYNACORE_BENCH_COMPACTION_MIBS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        o.compaction.rate_bytes_per_sec = Some(rate << 20);
    }
    let host = ShardHost::open(o);
    let before = device_bytes_written(dir.path());

    let wl = w.clone();
    let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sm = samples.clone();
    let took = host.run(move |shard| {
        Box::pin(async move {
            let t = Instant::now();
            let s = overwrite(&shard, &wl).await;
            let took = t.elapsed();
            *sm.lock().expect("lock") = s;
            took
        })
    });
    #[allow(clippy::cast_precision_loss)]
    let put_rate = (w.keys.len() * w.rounds) as f64 / took.as_secs_f64();
    let stats = Arc::new(std::sync::Mutex::new(None));
    let st = stats.clone();
    let settle = host.run(move |shard| {
        Box::pin(async move {
            let t = Instant::now();
            shard.flush().await.expect("flush");
            shard.wait_for_compactions().await;
            *st.lock().expect("lock") = Some(shard.stats());
            t.elapsed()
        })
    });
    sync_all();
    let after = device_bytes_written(dir.path());
    let s = stats.lock().expect("lock").take().expect("stats");
    let a = Amplification {
        put_rate,
        settle,
        table_bytes: s.table_bytes + s.blob_file_bytes,
        dir_bytes: dir_bytes(dir.path()),
        device_written: before.zip(after).map(|(b, a)| a - b),
    };
    report(
        if value_log {
            "dynacore (size-tiered + space-amplification trigger, value log over 64 KiB)"
        } else {
            "dynacore-inline (size-tiered + space-amplification trigger, no value log)"
        },
        w,
        &a,
    );
    println!(
        "  engine counters: WAL {:.1} MiB, flushes {:.1} MiB, compactions {:.1} MiB in {} merges, {} tables, {} write stalls",
        mib(s.wal.bytes_written),
        mib(s.flush_bytes_written),
        mib(s.compaction_bytes_written),
        s.compactions,
        s.tables,
        s.write_stalls
    );
    println!(
        "  value log: {} blob files, {:.1} MiB ({:.1} MiB live); flushes wrote {:.1} MiB, garbage collection rewrote {:.1} MiB, {} files deleted",
        s.blob_files,
        mib(s.blob_file_bytes),
        mib(s.blob_live_bytes),
        mib(s.blob_bytes_written),
        mib(s.blob_bytes_relocated),
        s.blob_files_deleted
    );
    print_table_samples("tables", &samples.lock().expect("lock"));

    // Get latency: idle, then while full compactions run back to back.
    let hists = Arc::new(std::sync::Mutex::new(None));
    let hs = hists.clone();
    let wl = w.clone();
    host.run(move |shard| {
        Box::pin(async move {
            let mut idle = Histogram::<u64>::new(3).expect("histogram");
            // Warm the cache first, untimed.
            for k in &wl.keys {
                let _ = shard.get(k).await.expect("get");
            }
            timed_gets(&shard, &wl, IDLE_GETS, &mut idle, || true).await;
            let mut busy = Histogram::<u64>::new(3).expect("histogram");
            let mut merges = 0;
            while busy.len() < BUSY_GETS && merges < 50 {
                let s = shard.clone();
                let compaction = runtime::spawn_detached(async move { s.compact_all().await });
                // Wait (bounded) until the merge has started, then measure while it runs.
                for _ in 0..1000 {
                    if shard.stats().compacting {
                        break;
                    }
                    runtime::sleep(Duration::from_micros(100)).await;
                }
                let probe = shard.clone();
                timed_gets(&shard, &wl, BUSY_GETS, &mut busy, || {
                    probe.stats().compacting
                })
                .await;
                compaction.await.expect("task").expect("compact");
                merges += 1;
            }
            *hs.lock().expect("lock") = Some((idle, busy, merges));
            Duration::ZERO
        })
    });
    let (idle, busy, merges) = hists.lock().expect("lock").take().expect("histograms");
    let s = host_stats(&host);
    println!(
        "  block cache: {:.1} MiB, {} hits, {} misses",
        mib(s.block_cache_bytes),
        s.block_cache_hits,
        s.block_cache_misses
    );
    print_latency("idle", &idle);
    print_latency(&format!("during {merges} full compactions"), &busy);
    println!(
        "  get p99 during compaction / idle: {:.2}",
        ratio(busy.value_at_quantile(0.99), idle.value_at_quantile(0.99))
    );
}

fn host_stats(host: &ShardHost) -> dynacore_engine::ShardStats {
    let out = Arc::new(std::sync::Mutex::new(None));
    let o = out.clone();
    host.run(move |shard| {
        Box::pin(async move {
            *o.lock().expect("lock") = Some(shard.stats());
            Duration::ZERO
        })
    });
    let s = out.lock().expect("lock").take().expect("stats");
    s
}

fn run_fjall(w: &Workload, kv_separation: bool) {
    let dir = temp_dir_in(&bench_dir());
    let (db, ks) = if kv_separation {
        let db = fjall::Database::builder(dir.path())
            .open()
            .expect("open fjall");
        let ks = db
            .keyspace("bench", || {
                fjall::KeyspaceCreateOptions::default()
                    .with_kv_separation(Some(fjall::KvSeparationOptions::default()))
            })
            .expect("fjall keyspace");
        (db, ks)
    } else {
        open_fjall(dir.path())
    };
    let before = device_bytes_written(dir.path());
    let t = Instant::now();
    let (mut tables, mut l0) = (Vec::new(), Vec::new());
    let mut n = 0u64;
    for round in 0..w.rounds {
        for &i in &w.orders[round] {
            let i = i as usize;
            ks.insert(w.keys[i].as_slice(), w.value(i, round))
                .expect("insert");
            n += 1;
            if n.is_multiple_of(SAMPLE_EVERY) {
                tables.push(ks.table_count());
                l0.push(ks.l0_table_count());
            }
        }
    }
    let took = t.elapsed();
    #[allow(clippy::cast_precision_loss)]
    let put_rate = (w.keys.len() * w.rounds) as f64 / took.as_secs_f64();
    let t = Instant::now();
    ks.rotate_memtable_and_wait().expect("flush");
    // fjall compacts on background threads and says nothing about being idle: wait until its
    // table count and disk space stop changing for 3 s (at most 120 s).
    let mut last = (ks.table_count(), ks.disk_space());
    let mut stable_since = Instant::now();
    while stable_since.elapsed() < Duration::from_secs(3) && t.elapsed() < Duration::from_secs(120)
    {
        std::thread::sleep(Duration::from_millis(100));
        let now = (ks.table_count(), ks.disk_space());
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
    }
    let settle = t.elapsed().saturating_sub(Duration::from_secs(3));
    db.persist(fjall::PersistMode::SyncAll).expect("persist");
    sync_all();
    let after = device_bytes_written(dir.path());
    let a = Amplification {
        put_rate,
        settle,
        table_bytes: ks.disk_space(),
        dir_bytes: dir_bytes(dir.path()),
        device_written: before.zip(after).map(|(b, a)| a - b),
    };
    let name = if kv_separation {
        "fjall (leveled, key-value separation)"
    } else {
        "fjall (leveled, defaults)"
    };
    report(name, w, &a);
    print_table_samples("tables (all levels)", &tables);
    print_table_samples("L0 tables", &l0);
    println!("  tables after settling: {}", ks.table_count());
}

fn main() {
    // `cargo bench` passes `--bench`; there are no other arguments.
    let w = Arc::new(Workload::new(
        env_usize("DYNACORE_BENCH_KEYS", 100_000),
        env_usize("DYNACORE_BENCH_ROUNDS", 10),
        env_usize("DYNACORE_BENCH_VALUE_BYTES", 1024),
    ));
    let engines =
        std::env::var("DYNACORE_BENCH_ENGINES").unwrap_or_else(|_| "dynacore,fjall".to_owned());
    for engine in engines.split(',') {
        match engine.trim() {
            "dynacore" => run_dynacore(&w, true),
            "dynacore-inline" => run_dynacore(&w, false),
            "fjall" => run_fjall(&w, false),
            "fjall-kv" => run_fjall(&w, true),
            other => {
                eprintln!("unknown engine {other:?} (dynacore, dynacore-inline, fjall, fjall-kv)");
            }
        }
    }
}
