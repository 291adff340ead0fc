//! Put latency percentiles of one shard while memtables flush and tables compact, against the
//! same shard with a memtable large enough that nothing flushes during the run (the baseline,
//! run beside it). Writers: 64 tasks, each one durable put (1 KiB value, random key among
//! 200 000) after another, for a fixed time; every put timed into an HdrHistogram.
//!
//! ```sh
//! cargo bench -p dynacore-bench --bench put_latency
//! DYNACORE_BENCH_SECONDS=10 DYNACORE_BENCH_WRITERS=16 cargo bench -p dynacore-bench --bench put_latency
//! ```
//!
//! Each case runs with durability `sync` and `none`: the difference tells the cost of waiting
//! for the disk from the cost of the shard's own work.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dynacore_bench::{temp_dir_in, ShardHost};
use dynacore_engine::{Durability, ShardId, ShardOptions};
use dynacore_runtime as runtime;
use hdrhistogram::Histogram;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Outcome {
    puts: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
    flushes: u64,
    compactions: u64,
}

fn run_case(
    memtable_bytes: usize,
    durability: Durability,
    writers: u64,
    time: Duration,
) -> Outcome {
    let base = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = temp_dir_in(base);
    let mut options = ShardOptions::new(dir.path().join("shard"), ShardId(0));
    options.memtable_bytes_max = memtable_bytes;
    options.durability = durability;
    let host = ShardHost::open(options);
    let result = Arc::new(Mutex::new(None));
    let out = result.clone();
    let elapsed = host.run(move |shard| {
        Box::pin(async move {
            let hist = Rc::new(RefCell::new(
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
            ));
            let started = Instant::now();
            let deadline = started + time;
            let tasks: Vec<_> = (0..writers)
                .map(|w| {
                    let (shard, hist) = (shard.clone(), hist.clone());
                    runtime::spawn(async move {
                        let value = vec![0x5a_u8; 1024];
                        let mut rng = (w + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                        let mut n = 0u64;
                        while Instant::now() < deadline {
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            let key = format!("key-{:08}", rng % 200_000);
                            let t0 = Instant::now();
                            shard.put(key.as_bytes(), &value).await.expect("put");
                            let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                            hist.borrow_mut().saturating_record(us.max(1));
                            n += 1;
                        }
                        n
                    })
                })
                .collect();
            let mut puts = 0;
            for t in tasks {
                puts += t.await;
            }
            let elapsed = started.elapsed();
            let stats = shard.stats();
            let hist = hist.borrow().clone();
            *out.lock().expect("lock") = Some((puts, hist, stats.flushes, stats.compactions));
            elapsed
        })
    });
    drop(host);
    let (puts, hist, flushes, compactions) = result.lock().expect("lock").take().expect("ran");
    Outcome {
        puts,
        elapsed,
        hist,
        flushes,
        compactions,
    }
}

fn main() {
    let seconds: u64 = env_or("DYNACORE_BENCH_SECONDS", 6);
    let writers: u64 = env_or("DYNACORE_BENCH_WRITERS", 64);
    let time = Duration::from_secs(seconds);
    println!(
        "{:<30} {:>9} {:>7} {:>7} {:>8} {:>8} {:>8} {:>7} {:>7}",
        "case", "puts/s", "p50 us", "p99 us", "p99.9 us", "max us", ">10 ms", "flushes", "compact"
    );
    for durability in [Durability::Sync, Durability::None] {
        let mut baseline_p999 = None;
        for (name, memtable) in [
            ("no flush (2 GiB memtable)", 2usize << 30),
            ("flushing (64 MiB memtable)", 64 << 20),
        ] {
            let o = run_case(memtable, durability, writers, time);
            #[allow(clippy::cast_precision_loss)]
            let rate = o.puts as f64 / o.elapsed.as_secs_f64();
            let p999 = o.hist.value_at_quantile(0.999);
            let over = o.hist.count_between(10_001, u64::MAX);
            println!(
                "{:<30} {:>9.0} {:>7} {:>7} {:>8} {:>8} {:>8} {:>7} {:>7}",
                format!("{durability:?}, {name}"),
                rate,
                o.hist.value_at_quantile(0.5),
                o.hist.value_at_quantile(0.99),
                p999,
                o.hist.max(),
                over,
                o.flushes,
                o.compactions
            );
            match baseline_p999 {
                None => baseline_p999 = Some(p999),
                #[allow(clippy::cast_precision_loss)]
                Some(b) => println!(
                    "  p99.9 with flushes / without: {:.2}x",
                    p999 as f64 / b.max(1) as f64
                ),
            }
        }
    }
}
