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

use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dynacore_bench::closed_loop::{self, env_or};
use dynacore_bench::{temp_dir_in, ShardHost};
use dynacore_engine::{Durability, ShardId, ShardOptions};

/// A run's puts (from the shared closed-loop driver) and the shard's background work.
struct Case {
    puts: closed_loop::Outcome,
    flushes: u64,
    compactions: u64,
}

fn run_case(memtable_bytes: usize, durability: Durability, writers: u64, time: Duration) -> Case {
    let base = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = temp_dir_in(base);
    let mut options = ShardOptions::new(dir.path().join("shard"), ShardId(0));
    options.memtable_bytes_max = memtable_bytes;
    options.durability = durability;
    let host = ShardHost::open(options);
    let result = Arc::new(Mutex::new(None));
    let out = result.clone();
    host.run(move |shard| {
        Box::pin(async move {
            let value = Rc::new(vec![0x5a_u8; 1024]);
            let writer = shard.clone();
            let puts = closed_loop::closed_loop(
                usize::try_from(writers).unwrap_or(usize::MAX),
                time,
                move |r| {
                    let (shard, value) = (writer.clone(), value.clone());
                    async move {
                        let key = format!("key-{:08}", r % 200_000);
                        shard.put(key.as_bytes(), &value).await.is_ok()
                    }
                },
            )
            .await;
            let elapsed = puts.elapsed;
            let stats = shard.stats();
            *out.lock().expect("lock") = Some(Case {
                puts,
                flushes: stats.flushes,
                compactions: stats.compactions,
            });
            elapsed
        })
    });
    drop(host);
    let case = result.lock().expect("lock").take();
    case.expect("ran")
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
            assert_eq!(o.puts.errors, 0, "puts failed");
            let rate = o.puts.rate();
            let hist = &o.puts.hist;
            let p999 = hist.value_at_quantile(0.999);
            let over = hist.count_between(10_001, u64::MAX);
            println!(
                "{:<30} {:>9.0} {:>7} {:>7} {:>8} {:>8} {:>8} {:>7} {:>7}",
                format!("{durability:?}, {name}"),
                rate,
                hist.value_at_quantile(0.5),
                hist.value_at_quantile(0.99),
                p999,
                hist.max(),
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
