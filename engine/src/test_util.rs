//! Helpers for the crate's own unit tests.

use std::path::Path;
use std::time::Duration;

use dynacore_runtime as runtime;

/// A fresh disk-backed temporary directory under `target/tmp` (never tmpfs: glommio silently
/// drops O_DIRECT there).
pub(crate) fn temp_dir() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tmp");
    std::fs::create_dir_all(&base).expect("create target/tmp");
    tempfile::Builder::new()
        .prefix("dynacore-unit-")
        .tempdir_in(base)
        .expect("temp dir")
}

/// Runs `f` on a fresh unbound executor with a small DMA arena; a test still running after
/// 60 s panics.
pub(crate) fn run(f: impl std::future::Future<Output = ()> + 'static) {
    let ex = runtime::Executor::new_unbound(1 << 20).expect("executor");
    ex.run(async move {
        futures_lite::future::or(f, async {
            // NOTE: a watchdog, not a wait for a condition: it only ends a hung test.
            runtime::sleep(Duration::from_secs(60)).await;
            panic!("test did not finish within 60 s");
        })
        .await;
    });
}
