//! Helpers for the crate's unit tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dynacore_engine::version::{ClockHandle, PhysicalClock};
use dynacore_engine::{Shard, ShardId, ShardOptions};
use dynacore_runtime as runtime;

use crate::storage::replica::LocalStore;

struct ManualClock(Arc<AtomicU64>);

impl PhysicalClock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A disk-backed directory for test data (never tmpfs: glommio silently drops O_DIRECT there).
pub(crate) fn disk_tmp() -> std::path::PathBuf {
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tmp");
    std::fs::create_dir_all(&base).expect("create target/tmp");
    base
}

/// Runs `fut` on a fresh executor thread; fails the test after 60 s (tests never hang).
pub(crate) fn on_test_executor<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let ex = runtime::Executor::new_unbound(1 << 20).expect("executor");
        ex.run(f());
        let _ = done_tx.send(());
    });
    match done_rx.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(()) => handle.join().expect("test thread"),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(p) = handle.join() {
                std::panic::resume_unwind(p);
            }
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("test did not finish in 60 s")
        }
    }
}

/// Runs `f` with a store on a fresh shard, on an executor thread; fails the test after
/// 60 s (tests never hang).
pub(crate) fn with_store<F, Fut>(f: F)
where
    F: FnOnce(LocalStore, Arc<AtomicU64>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let dir = tempfile::Builder::new()
        .prefix("dynacore-net-test-")
        .tempdir_in(disk_tmp())
        .expect("temp dir");
    let path = dir.path().to_path_buf();
    on_test_executor(move || async move {
        let wall = Arc::new(AtomicU64::new(1_000_000));
        let clock = ClockHandle::new(ManualClock(wall.clone()));
        let mut o = ShardOptions::new(&path, ShardId(0));
        o.clock = clock.clone();
        let shard = Shard::open(o).await.expect("open");
        let store = LocalStore::new(shard.clone(), 1, clock);
        f(store, wall).await;
        shard.close().await.expect("close");
    });
    drop(dir);
}
