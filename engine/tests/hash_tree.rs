//! The anti-entropy hash tree kept by the write path and by purges must equal the tree folded
//! from a scan of the shard, whatever happened: puts, deletes, TTL expiries, replica merges,
//! flushes, compactions (purges), restarts with and without the saved tree, and rebuilds
//! running while writes land. Range hashes must equal the XOR of the keys' states in the range.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dynacore_engine::hashtree::{HashTree, TreeOptions, TREE_FILE_NAME};
use dynacore_engine::version::{ActorId, ClockHandle, HlcTimestamp, PhysicalClock, VersionVector};
use dynacore_engine::{Mutation, Object, Shard, ShardOptions, Sibling, Token};
use dynacore_runtime as runtime;
use proptest::prelude::*;

#[derive(Clone)]
struct ManualClock(Arc<AtomicU64>);

impl PhysicalClock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone, Debug)]
enum Op {
    Put(u8, Vec<u8>),
    PutTtl(u8, u64),
    Versioned(u8, Option<Vec<u8>>),
    Merge(u8, Option<Vec<u8>>, u64),
    Delete(u8),
    Advance(u64),
    Flush,
    Compact,
    Reopen,
    ReopenWithoutSavedTree,
    Rebuild,
    Check(u64, u64),
}

fn op() -> impl Strategy<Value = Op> {
    let value = prop::collection::vec(any::<u8>(), 0..100);
    prop_oneof![
        4 => (0..40u8, value.clone()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => (0..40u8, 1..50u64).prop_map(|(k, t)| Op::PutTtl(k, t)),
        4 => (0..40u8, prop::option::of(value.clone())).prop_map(|(k, v)| Op::Versioned(k, v)),
        3 => (0..40u8, prop::option::of(value), 1..1000u64).prop_map(|(k, v, ms)| Op::Merge(k, v, ms)),
        2 => (0..40u8).prop_map(Op::Delete),
        2 => (1..100u64).prop_map(Op::Advance),
        1 => Just(Op::Flush),
        2 => Just(Op::Compact),
        1 => Just(Op::Reopen),
        1 => Just(Op::ReopenWithoutSavedTree),
        1 => Just(Op::Rebuild),
        2 => (any::<u64>(), any::<u64>()).prop_map(|(a, b)| Op::Check(a.min(b), a.max(b))),
    ]
}

fn key(k: u8) -> Vec<u8> {
    let mut key = vec![b'k'; 1 + usize::from(k) % 7];
    key[0] = k;
    key
}

fn options(path: &std::path::Path, wall: &Arc<AtomicU64>) -> ShardOptions {
    let mut o = common::small_options(path);
    o.memtable_bytes_max = 4 << 10;
    o.wal_segment_bytes = 32 << 10;
    o.clock = ClockHandle::new(ManualClock(wall.clone()));
    o.compaction.min_run = 2;
    o.compaction.tombstone_grace_ms = 0;
    o.blob_threshold_bytes = Some(48);
    // Few leaves: keys share leaves, and ranges cut them.
    o.hash_tree = Some(TreeOptions {
        leaf_bits: 8,
        rebuild_bytes_per_s: 1 << 20,
        rebuild_every_ms: None,
    });
    o
}

/// Waits (bounded) until the tree is ready and no rebuild runs.
async fn settled(shard: &Shard) {
    for _ in 0..2000 {
        let s = shard.tree_status().expect("the shard keeps a tree");
        if s.ready && !s.rebuilding {
            return;
        }
        runtime::sleep(Duration::from_millis(5)).await;
    }
    panic!("the tree did not become ready: {:?}", shard.tree_status());
}

async fn check_tree(shard: &Shard) {
    settled(shard).await;
    let live: HashTree = shard.hash_tree().expect("ready");
    let scanned = shard
        .hash_tree_from_scan()
        .await
        .expect("scan")
        .expect("a tree");
    assert_eq!(
        live.differing_leaves(&scanned),
        0,
        "the kept tree differs from the scanned one"
    );
    assert_eq!(live, scanned);
    assert_eq!(
        shard.tree_status().expect("tree").rebuild_mismatched_leaves,
        0
    );
}

async fn check_range(shard: &Shard, start: u64, end: u64) {
    settled(shard).await;
    let hash = shard
        .tree_hash(Token(start), Token(end))
        .await
        .expect("hash")
        .expect("ready");
    let keys = shard
        .tree_keys(Token(start), Token(end), usize::MAX)
        .await
        .expect("keys")
        .expect("ready");
    assert!(keys.iter().all(|k| k.token.0 >= start && k.token.0 <= end));
    let want = keys.iter().fold(0, |a, k| a ^ k.hash);
    assert_eq!(hash, want, "range [{start:x}, {end:x}]");
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_kept_tree_equals_the_tree_of_a_scan(ops in prop::collection::vec(op(), 1..70)) {
        let dir = common::temp_dir();
        let path = dir.path().to_path_buf();
        common::run(Duration::from_secs(120), move || async move {
            let wall = Arc::new(AtomicU64::new(1_000_000));
            let now = || wall.load(Ordering::Relaxed);
            let mut shard = Shard::open(options(&path, &wall)).await.expect("open");
            for op in ops {
                match op {
                    Op::Put(k, v) => {
                        shard.put(&key(k), &v).await.expect("put");
                    }
                    Op::PutTtl(k, ttl) => {
                        let kb = key(k);
                        let mut m = Mutation::put(&kb, b"expiring");
                        m.expiry_ms = Some(now() + ttl);
                        shard.write(m).await.expect("put with ttl");
                    }
                    Op::Versioned(k, v) => {
                        let ctx = shard
                            .read_object(&key(k))
                            .await
                            .expect("read")
                            .map(|o| o.join())
                            .unwrap_or_default();
                        shard
                            .coordinate_write(&key(k), &ctx, v.as_deref(), None, 1, None)
                            .await
                            .expect("versioned write");
                    }
                    Op::Merge(k, v, ms) => {
                        // Another replica's write, concurrent with whatever this one holds.
                        let obj = Object::mint(
                            &VersionVector::default(),
                            Sibling {
                                value: v,
                                hlc: HlcTimestamp::from_parts(now() - ms, 0),
                                expiry_ms: None,
                            },
                            None,
                            ActorId::new(2, 1),
                            ms,
                        )
                        .expect("mint");
                        shard.apply_object(&key(k), &obj, None).await.expect("merge");
                    }
                    Op::Delete(k) => {
                        shard.delete(&key(k)).await.expect("delete");
                    }
                    Op::Advance(ms) => {
                        wall.fetch_add(ms, Ordering::Relaxed);
                    }
                    Op::Flush => shard.flush().await.expect("flush"),
                    Op::Compact => {
                        shard.flush().await.expect("flush");
                        shard.compact_all().await.expect("compact");
                    }
                    Op::Reopen => {
                        settled(&shard).await;
                        shard.close().await.expect("close");
                        shard = Shard::open(options(&path, &wall)).await.expect("reopen");
                        let status = shard.tree_status().expect("tree");
                        assert!(status.loaded && status.ready, "{status:?}");
                        // (A compaction finishing during the close may have purged: compared
                        // with the scan, not with the tree before the close.)
                        check_tree(&shard).await;
                        assert!(!path.join(TREE_FILE_NAME).exists(), "a loaded tree's file is removed");
                    }
                    Op::ReopenWithoutSavedTree => {
                        shard.close().await.expect("close");
                        let _ = std::fs::remove_file(path.join(TREE_FILE_NAME));
                        shard = Shard::open(options(&path, &wall)).await.expect("reopen");
                        assert!(!shard.tree_status().expect("tree").loaded);
                    }
                    // Runs on while the next operations write.
                    Op::Rebuild => shard.rebuild_tree(),
                    Op::Check(start, end) => check_range(&shard, start, end).await,
                }
            }
            check_tree(&shard).await;
            check_range(&shard, 0, u64::MAX).await;
            shard.close().await.expect("close");
        });
        drop(dir);
    }
}

/// A tree saved by a clean close is not trusted once the shard changed after it (a crash
/// after the reopen, simulated here by a file from an older close): it is rebuilt.
#[test]
fn a_stale_saved_tree_is_rebuilt_not_trusted() {
    common::with_temp_dir(Duration::from_secs(60), |path| async move {
        let wall = Arc::new(AtomicU64::new(1_000_000));
        let shard = Shard::open(options(&path, &wall)).await.expect("open");
        for i in 0..50u8 {
            shard.put(&key(i), b"v").await.expect("put");
        }
        shard.close().await.expect("close");
        let saved = std::fs::read(path.join(TREE_FILE_NAME)).expect("a clean close saves the tree");
        let shard = Shard::open(options(&path, &wall)).await.expect("open");
        assert!(shard.tree_status().expect("tree").loaded);
        for i in 0..20u8 {
            shard.delete(&key(i)).await.expect("delete");
        }
        shard.close().await.expect("close");
        // An old file put back: it names an older manifest generation and sequence.
        std::fs::write(path.join(TREE_FILE_NAME), saved).expect("write");
        let shard = Shard::open(options(&path, &wall)).await.expect("open");
        assert!(!shard.tree_status().expect("tree").loaded);
        check_tree(&shard).await;
        shard.close().await.expect("close");
    });
}

/// Every key of a token range, listed from a cursor positioned at the range's start, is the
/// same as the keys of a full listing that fall in it (ranges starting anywhere: inside a
/// block, at a block's first or last key, between tables).
#[test]
fn range_listings_find_every_key_of_the_range() {
    common::with_temp_dir(Duration::from_secs(120), |path| async move {
        let wall = Arc::new(AtomicU64::new(1_000_000));
        let shard = Shard::open(options(&path, &wall)).await.expect("open");
        for i in 0..6000u32 {
            shard
                .put(format!("user{i}").as_bytes(), &[7u8; 40])
                .await
                .expect("put");
            if i % 1500 == 1499 {
                shard.flush().await.expect("flush");
            }
        }
        settled(&shard).await;
        let all = shard
            .tree_keys(Token(0), Token(u64::MAX), usize::MAX)
            .await
            .expect("keys")
            .expect("ready");
        assert_eq!(all.len(), 6000);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..400 {
            // Ranges around existing keys' tokens, and random ones.
            let (a, b) = if i % 2 == 0 {
                let k = &all[(next() % 6000) as usize];
                let w = next() % (1 << 50);
                (
                    k.token.0.saturating_sub(next() % 3),
                    k.token.0.saturating_add(w),
                )
            } else {
                let (x, y) = (next(), next());
                (x.min(y), x.max(y))
            };
            let got: Vec<Vec<u8>> = shard
                .tree_keys(Token(a), Token(b), usize::MAX)
                .await
                .expect("keys")
                .expect("ready")
                .into_iter()
                .map(|k| k.key)
                .collect();
            let want: Vec<Vec<u8>> = all
                .iter()
                .filter(|k| k.token.0 >= a && k.token.0 <= b)
                .map(|k| k.key.clone())
                .collect();
            assert_eq!(got.len(), want.len(), "range [{a:x}, {b:x}]");
            assert_eq!(got, want, "range [{a:x}, {b:x}]");
        }
        shard.close().await.expect("close");
    });
}

/// A cleanup drops every version of each key whose token it does not keep (in tables of every
/// age, in the memtable, tombstones and values alike), keeps the rest as they were, and leaves
/// the tree equal to a scan's; a cleanup whose state no longer holds drops nothing.
#[test]
fn a_cleanup_drops_the_keys_outside_its_ranges_and_keeps_the_tree_exact() {
    common::with_temp_dir(Duration::from_secs(120), |path| async move {
        let wall = Arc::new(AtomicU64::new(1_000_000));
        // Tombstones stay (within their grace): a cleanup drops them too.
        let options = |path: &std::path::Path, wall: &Arc<AtomicU64>| {
            let mut o = options(path, wall);
            o.compaction.tombstone_grace_ms = 86_400_000;
            o
        };
        let shard = Shard::open(options(&path, &wall)).await.expect("open");
        let user = |i: u32| format!("user{i}").into_bytes();
        for round in 0..3u8 {
            for i in 0..1500u32 {
                if i % 7 == 3 && round == 2 {
                    shard.delete(&user(i)).await.expect("delete");
                } else {
                    shard.put(&user(i), &[round; 40]).await.expect("put");
                }
            }
            if round < 2 {
                shard.flush().await.expect("flush");
            }
        }
        let kept = |t: Token| t.0 < 1 << 63;
        // Refused by the state first: nothing moves.
        let before = shard.scan_tables().await.expect("scan").concat().len();
        let abandoned = shard
            .cleanup(kept, || Err("the ring changed".to_string()))
            .await;
        assert!(
            matches!(abandoned, Err(dynacore_engine::Error::CleanupAbandoned(ref r)) if r == "the ring changed"),
            "{abandoned:?}"
        );
        assert_eq!(
            shard.scan_tables().await.expect("scan").concat().len(),
            before
        );
        for i in 0..1500u32 {
            assert!(shard.get_record(&user(i)).await.expect("get").is_some());
        }

        let done = shard.cleanup(kept, || Ok(())).await.expect("cleanup");
        let outside = (0..1500u32).filter(|&i| !kept(Token::of(&user(i)))).count();
        assert!(outside > 500 && outside < 1000, "{outside}");
        assert_eq!(done.keys_dropped, outside as u64);
        assert_eq!(done.passes, 1);
        assert!(done.table_bytes_after < done.table_bytes_before, "{done:?}");
        assert_eq!(shard.stats().cleaned_up, outside as u64);
        for i in 0..1500u32 {
            let record = shard.get_record(&user(i)).await.expect("get");
            if kept(Token::of(&user(i))) {
                let record = record.expect("a kept key stays");
                if i % 7 == 3 {
                    assert!(record.value.is_none(), "its tombstone stays");
                } else {
                    assert_eq!(record.value.as_deref(), Some(&[2u8; 40][..]));
                }
            } else {
                assert!(record.is_none(), "key {i} outside the kept ranges is gone");
            }
        }
        for r in shard.scan_tables().await.expect("scan").concat() {
            assert!(
                kept(Token::of(&r.key)),
                "no version of a dropped key is left on disk"
            );
        }
        check_tree(&shard).await;
        check_range(&shard, 0, u64::MAX).await;
        // Nothing left to drop: a second cleanup is a plain merge.
        let again = shard.cleanup(kept, || Ok(())).await.expect("cleanup");
        assert_eq!(again.keys_dropped, 0);
        shard.close().await.expect("close");
        // The dropped keys stay dropped across a restart (the WAL replays nothing of them).
        let shard = Shard::open(options(&path, &wall)).await.expect("reopen");
        for i in 0..1500u32 {
            let present = shard.get_record(&user(i)).await.expect("get").is_some();
            assert_eq!(
                present,
                kept(Token::of(&user(i))),
                "key {i} after a restart"
            );
        }
        check_tree(&shard).await;
        shard.close().await.expect("close");
    });
}
