//! `dynacore-bench`: drivers shared by the criterion benchmarks in `benches/`.
//!
//! Each engine comparison runs the same workload against Dynacore's engine and against a
//! baseline engine ([`fjall`], pure Rust, default settings) in the same process, so that every
//! figure comes with its baseline measured in the same run.
//!
//! A Dynacore [`Shard`] is `!Send` and lives on a glommio executor; [`ShardHost`] owns one such
//! executor thread and runs timed jobs on it.
//!
//! [`closed_loop`] is the closed-loop latency driver of every benchmark here and of the node's
//! (`net/benches`).

pub mod closed_loop;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::mpsc;
use std::time::Duration;

use dynacore_engine::{Shard, ShardOptions};
use dynacore_runtime as runtime;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// A job run on the shard's executor; it returns the time it measured.
pub type Job = Box<dyn FnOnce(Shard) -> Pin<Box<dyn Future<Output = Duration>>> + Send>;

/// A glommio executor thread holding one open shard.
#[derive(Debug)]
pub struct ShardHost {
    jobs: Option<mpsc::Sender<(Job, mpsc::Sender<Duration>)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ShardHost {
    /// Starts an executor thread and opens a shard with `options` on it.
    ///
    /// # Panics
    /// If the executor cannot start or the shard cannot open (a benchmark cannot go on).
    #[must_use]
    pub fn open(options: ShardOptions) -> Self {
        let (tx, rx) = mpsc::channel::<(Job, mpsc::Sender<Duration>)>();
        let thread = std::thread::spawn(move || {
            let ex = runtime::Executor::new_unbound(8 << 20).expect("executor");
            ex.run(async move {
                let shard = Shard::open(options).await.expect("open shard");
                loop {
                    match rx.try_recv() {
                        Ok((job, reply)) => {
                            let took = job(shard.clone()).await;
                            let _ = reply.send(took);
                        }
                        // Idle: let the shard's background tasks (flush, WAL) run.
                        Err(mpsc::TryRecvError::Empty) => {
                            runtime::sleep(Duration::from_micros(200)).await;
                        }
                        Err(mpsc::TryRecvError::Disconnected) => break,
                    }
                }
                shard.close().await.expect("close shard");
            });
        });
        ShardHost {
            jobs: Some(tx),
            thread: Some(thread),
        }
    }

    /// Runs `job` on the shard and returns the duration it measured.
    ///
    /// # Panics
    /// If the executor thread died.
    pub fn run(
        &self,
        job: impl FnOnce(Shard) -> Pin<Box<dyn Future<Output = Duration>>> + Send + 'static,
    ) -> Duration {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .as_ref()
            .expect("host is open")
            .send((Box::new(job), tx))
            .expect("executor thread alive");
        rx.recv().expect("job finished")
    }
}

impl Drop for ShardHost {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A fixed set of random keys and values: `count` distinct 16-byte keys, 100-byte values.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The keys, in insertion order.
    pub keys: Vec<[u8; 16]>,
    /// Values to cycle through (distinct content, fixed length).
    pub values: Vec<[u8; 100]>,
    /// A shuffled order of key indexes for reads.
    pub read_order: Vec<u32>,
}

impl Dataset {
    /// Builds the dataset deterministically from `seed`.
    #[must_use]
    pub fn new(count: usize, seed: u64) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut keys: Vec<[u8; 16]> = (0..count).map(|_| rng.gen()).collect();
        keys.sort_unstable();
        keys.dedup();
        keys.shuffle(&mut rng);
        let values = (0..1024)
            .map(|_| {
                let mut v = [0u8; 100];
                rng.fill(&mut v[..]);
                v
            })
            .collect();
        let mut read_order: Vec<u32> = (0..u32::try_from(keys.len()).expect("fits")).collect();
        read_order.shuffle(&mut rng);
        Dataset {
            keys,
            values,
            read_order,
        }
    }

    /// The value stored under key `i`.
    #[must_use]
    pub fn value(&self, i: usize) -> &[u8; 100] {
        &self.values[i % self.values.len()]
    }
}

/// A fresh disk-backed directory under `base` (benchmarks must not run on tmpfs).
///
/// # Panics
/// If the directory cannot be created.
#[must_use]
pub fn temp_dir_in(base: &Path) -> tempfile::TempDir {
    std::fs::create_dir_all(base).expect("create bench dir");
    tempfile::Builder::new()
        .prefix("dynacore-bench-")
        .tempdir_in(base)
        .expect("temp dir")
}

/// Opens a fjall database with default settings and one keyspace.
///
/// # Panics
/// If fjall cannot open.
#[must_use]
pub fn open_fjall(dir: &Path) -> (fjall::Database, fjall::Keyspace) {
    let db = fjall::Database::builder(dir).open().expect("open fjall");
    let ks = db
        .keyspace("bench", fjall::KeyspaceCreateOptions::default)
        .expect("fjall keyspace");
    (db, ks)
}
