//! Model test: random sequences of put / put with TTL / versioned put / delete / get / scan /
//! flush / reopen / clock advance against a `BTreeMap`, with an injected wall clock so that
//! expiry is exact.
//! Small memtables and WAL segments make every sequence cross flushes and segment rotation.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dynacore_engine::version::{ClockHandle, PhysicalClock};
use dynacore_engine::{Durability, Mutation, Shard, Token};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Put(u8, Vec<u8>),
    /// A put that expires after this many ms.
    PutTtl(u8, Vec<u8>, u64),
    /// A versioned read-modify-write (coordinator write with the context just read).
    VersionedPut(u8, Vec<u8>),
    /// Moves the wall clock forward by this many ms.
    Advance(u64),
    Delete(u8),
    Get(u8),
    Flush,
    /// Flush, then wait for the compactions it triggers.
    Compact,
    Reopen,
    Scan(u64, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..24, prop::collection::vec(any::<u8>(), 0..600)).prop_map(|(k, v)| Op::Put(k, v)),
        2 => (0u8..24, prop::collection::vec(any::<u8>(), 0..64), 1u64..50)
            .prop_map(|(k, v, ttl)| Op::PutTtl(k, v, ttl)),
        2 => (0u8..24, prop::collection::vec(any::<u8>(), 0..64)).prop_map(|(k, v)| Op::VersionedPut(k, v)),
        2 => (1u64..40).prop_map(Op::Advance),
        3 => (0u8..24).prop_map(Op::Delete),
        6 => (0u8..24).prop_map(Op::Get),
        1 => Just(Op::Flush),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
        2 => (any::<u64>(), any::<u64>()).prop_map(|(a, b)| Op::Scan(a.min(b), a.max(b))),
    ]
}

fn durability() -> impl Strategy<Value = Durability> {
    prop_oneof![
        Just(Durability::Sync),
        Just(Durability::None),
        Just(Durability::Periodic(2)),
    ]
}

fn key(k: u8) -> Vec<u8> {
    // Keys of varied length, up to the 256-byte limit.
    let mut key = vec![b'k'; 1 + (usize::from(k) * 37) % 256];
    key[0] = k;
    key
}

/// A token-range scan must return exactly the model's keys in that range, in (token, key) order.
/// The model: each key's value and expiry; `live` filters it at a clock reading.
type Model = BTreeMap<u8, (Vec<u8>, Option<u64>)>;

fn live(model: &Model, now: u64) -> BTreeMap<u8, Vec<u8>> {
    model
        .iter()
        .filter(|(_, (_, e))| e.is_none_or(|e| e > now))
        .map(|(&k, (v, _))| (k, v.clone()))
        .collect()
}

/// A wall clock the test moves by hand.
#[derive(Clone)]
struct ManualClock(Arc<AtomicU64>);

impl PhysicalClock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

async fn check_scan(shard: &Shard, model: &BTreeMap<u8, Vec<u8>>, start: u64, end: u64) {
    let got: Vec<(Vec<u8>, Vec<u8>)> = shard
        .scan(Token(start), Token(end))
        .collect()
        .await
        .expect("scan")
        .into_iter()
        .map(|r| (r.key, r.value.expect("scans return live values")))
        .collect();
    let mut want: Vec<(Token, Vec<u8>, Vec<u8>)> = model
        .iter()
        .map(|(&k, v)| (Token::of(&key(k)), key(k), v.clone()))
        .filter(|(t, _, _)| t.0 >= start && t.0 <= end)
        .collect();
    want.sort();
    let want: Vec<(Vec<u8>, Vec<u8>)> = want.into_iter().map(|(_, k, v)| (k, v)).collect();
    assert_eq!(got, want, "scan [{start}, {end}]");
}

async fn check_all(shard: &Shard, model: &BTreeMap<u8, Vec<u8>>) {
    check_scan(shard, model, 0, u64::MAX).await;
    for k in 0..24u8 {
        let got = shard.get(&key(k)).await.expect("get").and_then(|r| r.value);
        assert_eq!(got.as_ref(), model.get(&k), "key {k}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1024,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_matches_btreemap(ops in prop::collection::vec(op(), 1..80), durability in durability()) {
        let dir = common::temp_dir();
        let path = dir.path().to_path_buf();
        common::run(Duration::from_secs(120), move || async move {
            let wall = Arc::new(AtomicU64::new(1_000_000));
            let mut options = common::small_options(&path);
            options.durability = durability;
            options.memtable_bytes_max = 4 << 10;
            options.wal_segment_bytes = 32 << 10;
            options.clock = ClockHandle::new(ManualClock(wall.clone()));
            // Compact eagerly, and drop tombstones as soon as a merge reaches the oldest table.
            options.compaction.min_run = 2;
            options.compaction.tombstone_grace_ms = 0;
            // Most large puts, and some TTL and versioned ones, go through the value log.
            options.blob_threshold_bytes = Some(48);
            options.blob_open_files_max = 2;
            let now = || wall.load(Ordering::Relaxed);
            let mut shard = Shard::open(options.clone()).await.expect("open");
            let mut model: Model = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Put(k, v) => {
                        shard.put(&key(k), &v).await.expect("put");
                        model.insert(k, (v, None));
                    }
                    Op::PutTtl(k, v, ttl) => {
                        let kb = key(k);
                        let mut m = Mutation::put(&kb, &v);
                        m.expiry_ms = Some(now() + ttl);
                        shard.write(m).await.expect("put with ttl");
                        model.insert(k, (v, Some(now() + ttl)));
                    }
                    Op::VersionedPut(k, v) => {
                        let ctx = shard
                            .read_object(&key(k))
                            .await
                            .expect("read object")
                            .map(|o| o.join())
                            .unwrap_or_default();
                        let obj = shard
                            .coordinate_write(&key(k), &ctx, Some(&v), None, 1, None)
                            .await
                            .expect("versioned put");
                        // The read context covered everything: one sibling remains.
                        assert_eq!(obj.size(), 1);
                        model.insert(k, (v, None));
                    }
                    Op::Advance(ms) => {
                        wall.fetch_add(ms, Ordering::Relaxed);
                    }
                    Op::Delete(k) => {
                        shard.delete(&key(k)).await.expect("delete");
                        model.remove(&k);
                    }
                    Op::Get(k) => {
                        let got = shard.get(&key(k)).await.expect("get").and_then(|r| r.value);
                        assert_eq!(got.as_ref(), live(&model, now()).get(&k), "get {k}");
                    }
                    Op::Flush => shard.flush().await.expect("flush"),
                    Op::Compact => {
                        shard.flush().await.expect("flush");
                        shard.wait_for_compactions().await;
                        assert!(shard.stats().tables <= 8, "{:?}", shard.stats());
                    }
                    Op::Scan(start, end) => check_scan(&shard, &live(&model, now()), start, end).await,
                    Op::Reopen => {
                        shard.close().await.expect("close");
                        shard = Shard::open(options.clone()).await.expect("reopen");
                        check_all(&shard, &live(&model, now())).await;
                    }
                }
            }
            check_all(&shard, &live(&model, now())).await;
            shard.close().await.expect("close");
            let shard = Shard::open(options).await.expect("final reopen");
            check_all(&shard, &live(&model, now())).await;
            shard.close().await.expect("close");
        });
    }
}
