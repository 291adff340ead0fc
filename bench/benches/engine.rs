//! Engine benchmarks: Dynacore's shard against fjall, same workload, same run.
//!
//! ```text
//! cargo bench -p dynacore-bench --bench engine                 # everything (~10 min)
//! cargo bench -p dynacore-bench --bench engine -- random_1m    # one group
//! ```
//! Groups:
//! * `random_1m`: 1 M random puts of 16-byte keys / 100-byte values (WAL on, no sync), then
//!   1 M gets of those keys in shuffled order.
//! * `sync_put`: durable puts (`fdatasync` before the ack) from 1, 16 and 64 concurrent writers.
//! * `get_path`: gets that hit the memtable, an SSTable, or miss (Bloom filter says no).
//!
//! Data lives under `target/bench-data` (disk-backed: tmpfs would hide direct-I/O behaviour).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use dynacore_bench::{open_fjall, temp_dir_in, Dataset, ShardHost};
use dynacore_engine::{Durability, ShardId, ShardOptions};
use dynacore_runtime as runtime;

const LOAD_KEYS: usize = 1_000_000;

fn bench_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data")
}

fn shard_options(dir: &std::path::Path, durability: Durability) -> ShardOptions {
    let mut o = ShardOptions::new(dir, ShardId(0));
    o.durability = durability;
    o
}

async fn load_dynacore(shard: &dynacore_engine::Shard, data: &Dataset) {
    for (i, k) in data.keys.iter().enumerate() {
        shard.put(k, data.value(i)).await.expect("put");
    }
}

/// A shard on its own executor, loaded with `data` (and flushed to an SSTable if `flush`).
/// (The host comes first: a tuple drops its fields in order, and the shard must close before its
/// directory is removed.)
fn loaded_dynacore(data: &Arc<Dataset>, flush: bool) -> (ShardHost, tempfile::TempDir) {
    let dir = temp_dir_in(&bench_dir());
    let host = ShardHost::open(shard_options(dir.path(), Durability::None));
    let d = data.clone();
    host.run(move |shard| {
        Box::pin(async move {
            load_dynacore(&shard, &d).await;
            if flush {
                shard.flush().await.expect("flush");
            }
            Duration::ZERO
        })
    });
    (host, dir)
}

/// A fjall keyspace loaded with `data` (and its memtable flushed if `flush`).
fn loaded_fjall(
    data: &Dataset,
    flush: bool,
) -> (tempfile::TempDir, fjall::Database, fjall::Keyspace) {
    let dir = temp_dir_in(&bench_dir());
    let (db, ks) = open_fjall(dir.path());
    for (i, k) in data.keys.iter().enumerate() {
        ks.insert(k.as_slice(), data.value(i).as_slice())
            .expect("insert");
    }
    if flush {
        ks.rotate_memtable_and_wait().expect("flush");
    }
    (dir, db, ks)
}

fn random_1m(c: &mut Criterion) {
    let data = Arc::new(Dataset::new(LOAD_KEYS, 42));
    let mut g = c.benchmark_group("random_1m");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(20))
        .throughput(Throughput::Elements(data.keys.len() as u64));

    g.bench_function("put/dynacore", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = temp_dir_in(&bench_dir());
                let host = ShardHost::open(shard_options(dir.path(), Durability::None));
                let data = data.clone();
                total += host.run(move |shard| {
                    Box::pin(async move {
                        let t = Instant::now();
                        load_dynacore(&shard, &data).await;
                        t.elapsed()
                    })
                });
            }
            total
        });
    });
    g.bench_function("put/fjall", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = temp_dir_in(&bench_dir());
                let (_db, ks) = open_fjall(dir.path());
                let t = Instant::now();
                for (i, k) in data.keys.iter().enumerate() {
                    ks.insert(k.as_slice(), data.value(i).as_slice())
                        .expect("insert");
                }
                total += t.elapsed();
            }
            total
        });
    });

    // Gets right after the load, as an application would see them: no compaction wait. Setup
    // runs lazily inside each benchmark so that a filtered-out one costs nothing.
    let mut loaded = None;
    g.bench_function("get/dynacore", |b| {
        let (host, _dir) = loaded.get_or_insert_with(|| loaded_dynacore(&data, false));
        b.iter_custom(|iters| {
            let data = data.clone();
            host.run(move |shard| {
                Box::pin(async move {
                    let t = Instant::now();
                    for _ in 0..iters {
                        for &i in &data.read_order {
                            let got = shard.get(&data.keys[i as usize]).await.expect("get");
                            assert!(got.is_some(), "key {i} missing");
                        }
                    }
                    t.elapsed()
                })
            })
        });
    });
    drop(loaded);
    let mut loaded = None;
    g.bench_function("get/fjall", |b| {
        let (_dir, _db, ks) = loaded.get_or_insert_with(|| loaded_fjall(&data, false));
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                for &i in &data.read_order {
                    let got = ks.get(data.keys[i as usize]).expect("get");
                    assert!(got.is_some(), "key {i} missing");
                }
            }
            t.elapsed()
        });
    });
    g.finish();
}

/// A unique 16-byte key per call.
fn next_key(counter: &AtomicU64) -> [u8; 16] {
    let n = counter.fetch_add(1, Ordering::Relaxed);
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&n.to_be_bytes());
    k[8..].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    k
}

fn sync_put(c: &mut Criterion) {
    let mut g = c.benchmark_group("sync_put");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(1));
    let value = [7u8; 100];
    for writers in [1u64, 16, 64] {
        let dir = temp_dir_in(&bench_dir());
        let host = ShardHost::open(shard_options(dir.path(), Durability::Sync));
        let counter = Arc::new(AtomicU64::new(0));
        g.bench_with_input(
            BenchmarkId::new("dynacore", writers),
            &writers,
            |b, &writers| {
                b.iter_custom(|iters| {
                    let counter = counter.clone();
                    host.run(move |shard| {
                        Box::pin(async move {
                            let t = Instant::now();
                            let per = iters.div_ceil(writers);
                            let tasks: Vec<_> = (0..writers)
                                .map(|_| {
                                    let shard = shard.clone();
                                    let counter = counter.clone();
                                    runtime::spawn_detached(async move {
                                        for _ in 0..per {
                                            shard
                                                .put(&next_key(&counter), &value)
                                                .await
                                                .expect("put");
                                        }
                                    })
                                })
                                .collect();
                            for task in tasks {
                                task.await;
                            }
                            t.elapsed()
                        })
                    })
                });
            },
        );
        drop(host);
        let dir = temp_dir_in(&bench_dir());
        let (db, ks) = open_fjall(dir.path());
        let counter = AtomicU64::new(0);
        g.bench_with_input(
            BenchmarkId::new("fjall", writers),
            &writers,
            |b, &writers| {
                b.iter_custom(|iters| {
                    let per = iters.div_ceil(writers);
                    let t = Instant::now();
                    std::thread::scope(|s| {
                        for _ in 0..writers {
                            s.spawn(|| {
                                for _ in 0..per {
                                    ks.insert(next_key(&counter).as_slice(), value.as_slice())
                                        .expect("insert");
                                    db.persist(fjall::PersistMode::SyncData).expect("persist");
                                }
                            });
                        }
                    });
                    t.elapsed()
                });
            },
        );
    }
    g.finish();
}

#[derive(Clone, Copy, Debug)]
enum Path {
    Memtable,
    SsTable,
    Miss,
}

fn get_path(c: &mut Criterion) {
    const KEYS: usize = 100_000;
    let mut g = c.benchmark_group("get_path");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    let data = Arc::new(Dataset::new(KEYS, 7));
    let missing = Arc::new(Dataset::new(KEYS, 8));
    for path in [Path::Memtable, Path::SsTable, Path::Miss] {
        let name = format!("{path:?}").to_lowercase();
        let flush = !matches!(path, Path::Memtable);
        let probe = if matches!(path, Path::Miss) {
            missing.clone()
        } else {
            data.clone()
        };
        let mut loaded = None;
        g.bench_function(BenchmarkId::new("dynacore", &name), |b| {
            let (host, _dir) = loaded.get_or_insert_with(|| loaded_dynacore(&data, flush));
            b.iter_custom(|iters| {
                let probe = probe.clone();
                host.run(move |shard| {
                    Box::pin(async move {
                        let n = probe.read_order.len();
                        let t = Instant::now();
                        for j in 0..iters as usize {
                            let k = &probe.keys[probe.read_order[j % n] as usize];
                            let got = shard.get(k).await.expect("get");
                            assert_eq!(got.is_some(), !matches!(path, Path::Miss));
                        }
                        t.elapsed()
                    })
                })
            });
        });
        drop(loaded);
        let mut loaded = None;
        g.bench_function(BenchmarkId::new("fjall", &name), |b| {
            let (_dir, _db, ks) = loaded.get_or_insert_with(|| loaded_fjall(&data, flush));
            b.iter_custom(|iters| {
                let n = probe.read_order.len();
                let t = Instant::now();
                for j in 0..iters as usize {
                    let k = &probe.keys[probe.read_order[j % n] as usize];
                    let got = ks.get(k).expect("get");
                    assert_eq!(got.is_some(), !matches!(path, Path::Miss));
                }
                t.elapsed()
            });
        });
    }
    g.finish();
}

criterion_group!(benches, random_1m, sync_put, get_path);
criterion_main!(benches);
