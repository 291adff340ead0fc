//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dynacore_engine::{Durability, Shard, ShardId, ShardOptions};
use dynacore_runtime as runtime;

/// A fresh disk-backed temporary directory (never tmpfs: glommio silently drops O_DIRECT there).
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("dynacore-test-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("create temp dir")
}

/// Small options so that tests exercise flushes and WAL rotation quickly.
pub fn small_options(dir: &Path) -> ShardOptions {
    let mut o = ShardOptions::new(dir, ShardId(0));
    o.durability = Durability::Sync;
    o.memtable_bytes_max = 64 << 10;
    o.wal_segment_bytes = 64 << 10;
    o.block_cache_bytes = 1 << 20;
    o
}

/// Runs `f` on a fresh unbound executor with a small DMA arena, failing the test if it takes
/// longer than `limit` (tests never hang).
pub fn run<F, Fut>(limit: Duration, f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let ex = runtime::Executor::new_unbound(1 << 20).expect("executor");
        ex.run(f());
        let _ = done_tx.send(());
    });
    match done_rx.recv_timeout(limit) {
        Ok(()) => handle.join().expect("test thread"),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            // The executor thread panicked: re-raise its panic here.
            if let Err(p) = handle.join() {
                std::panic::resume_unwind(p);
            }
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("test did not finish within {limit:?}")
        }
    }
}

/// Runs `f` with a fresh disk-backed directory, as [`run`] does; the directory is removed after.
pub fn with_temp_dir<F, Fut>(limit: Duration, f: F)
where
    F: FnOnce(PathBuf) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(limit, move || f(path));
    drop(dir);
}

/// The live value of `key` (`None` if absent, deleted or expired).
pub async fn value_of(shard: &Shard, key: &[u8]) -> Option<Vec<u8>> {
    shard.get(key).await.expect("get").and_then(|r| r.value)
}

/// The WAL segment files of `dir`, oldest first.
pub fn wal_segments(dir: &Path) -> Vec<PathBuf> {
    files_with(dir, "wal-", ".log")
}

/// The SSTable files of `dir`, oldest first.
pub fn tables(dir: &Path) -> Vec<PathBuf> {
    files_with(dir, "sst-", ".sst")
}

pub fn files_with(dir: &Path, prefix: &str, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
        })
        .collect();
    v.sort();
    v
}
