//! End-to-end behaviour of one shard: writes, reads, flushes, reopen, limits, TTL.

mod common;

use std::time::Duration;

use common::{small_options, with_temp_dir};
use dynacore_engine::{Durability, Error, LimitError, Mutation, Shard, VALUE_BYTES_MAX};
use dynacore_runtime as runtime;

const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn put_get_delete_survive_flush_and_reopen() {
    with_temp_dir(LIMIT, |path| async move {
        let shard = Shard::open(small_options(&path)).await.expect("open");
        for i in 0..2_000u32 {
            let key = format!("key-{i}");
            let value = format!("value-{i}-{}", "x".repeat((i % 50) as usize));
            shard
                .put(key.as_bytes(), value.as_bytes())
                .await
                .expect("put");
        }
        for i in (0..2_000u32).step_by(7) {
            shard
                .delete(format!("key-{i}").as_bytes())
                .await
                .expect("delete");
        }
        let stats = shard.stats();
        assert!(
            stats.flushes > 0 || stats.immutable_memtables > 0,
            "{stats:?}"
        );
        let check = |shard: Shard| async move {
            for i in 0..2_000u32 {
                let key = format!("key-{i}");
                let got = shard.get(key.as_bytes()).await.expect("get");
                if i % 7 == 0 {
                    assert!(got.is_none(), "{key} was deleted");
                } else {
                    let want = format!("value-{i}-{}", "x".repeat((i % 50) as usize));
                    assert_eq!(got.and_then(|r| r.value), Some(want.into_bytes()), "{key}");
                }
            }
            assert!(shard.get(b"never-written").await.expect("get").is_none());
            shard
        };
        let shard = check(shard).await;
        shard.close().await.expect("close");
        let shard = Shard::open(small_options(&path)).await.expect("reopen");
        let shard = check(shard).await;
        shard.flush().await.expect("flush");
        assert_eq!(shard.stats().immutable_memtables, 0);
        shard.close().await.expect("close");
        let shard = Shard::open(small_options(&path)).await.expect("reopen");
        let shard = check(shard).await;
        shard.close().await.expect("close");
    });
}

#[test]
fn wal_segments_are_deleted_once_flushed() {
    with_temp_dir(LIMIT, |path| async move {
        let shard = Shard::open(small_options(&path)).await.expect("open");
        let value = vec![7u8; 1000];
        for i in 0..1_000u32 {
            shard.put(&i.to_be_bytes(), &value).await.expect("put");
        }
        shard.flush().await.expect("flush");
        // ~1 MB went through 64 KiB segments; only the active one (and a spare) may remain.
        let segments = common::wal_segments(&path).len();
        assert!(
            segments <= 2,
            "{segments} WAL segments left after flush: {:?} {:?}",
            common::wal_segments(&path),
            shard.stats()
        );
        assert!(!common::tables(&path).is_empty());
        for i in 0..1_000u32 {
            let got = shard.get(&i.to_be_bytes()).await.expect("get");
            assert_eq!(got.and_then(|r| r.value), Some(value.clone()));
        }
        shard.close().await.expect("close");
    });
}

#[test]
fn limits_are_typed_errors() {
    with_temp_dir(LIMIT, |path| async move {
        let shard = Shard::open(small_options(&path)).await.expect("open");
        assert!(matches!(
            shard.put(b"", b"v").await,
            Err(Error::Limit(LimitError::KeyEmpty { .. }))
        ));
        let long_key = vec![b'k'; 257];
        assert!(matches!(
            shard.put(&long_key, b"v").await,
            Err(Error::Limit(LimitError::KeyTooLong { len: 257, max: 256 }))
        ));
        assert!(matches!(
            shard.get(&long_key).await,
            Err(Error::Limit(LimitError::KeyTooLong { .. }))
        ));
        let too_big = vec![1u8; VALUE_BYTES_MAX + 1];
        assert!(matches!(
            shard.put(b"big", &too_big).await,
            Err(Error::Limit(LimitError::ValueTooLarge { .. }))
        ));
        // The largest key and value are accepted and survive WAL replay and a flush (which puts
        // the value in the value log).
        let max_key = vec![b'k'; 256];
        let max_value: Vec<u8> = (0..VALUE_BYTES_MAX).map(|i| (i % 251) as u8).collect();
        shard.put(&max_key, &max_value).await.expect("max put");
        shard.put(b"empty", b"").await.expect("empty value");
        shard.close().await.expect("close");
        let shard = Shard::open(small_options(&path)).await.expect("reopen");
        assert!(
            common::value_of(&shard, &max_key).await.as_deref() == Some(max_value.as_slice()),
            "10 MiB value after replay"
        );
        shard.flush().await.expect("flush");
        assert_eq!(shard.stats().blob_files, 1);
        shard.close().await.expect("close");
        let shard = Shard::open(small_options(&path)).await.expect("reopen");
        assert!(
            common::value_of(&shard, &max_key).await.as_deref() == Some(max_value.as_slice()),
            "10 MiB value from the value log"
        );
        assert_eq!(
            shard
                .get(b"empty")
                .await
                .expect("get")
                .and_then(|r| r.value),
            Some(Vec::new())
        );
        shard.close().await.expect("close");
    });
}

#[test]
fn expiry_and_version_blob_round_trip() {
    with_temp_dir(LIMIT, |path| async move {
        let shard = Shard::open(small_options(&path)).await.expect("open");
        let mut m = Mutation::put(b"expired", b"v");
        m.expiry_ms = Some(1);
        shard.write(m).await.expect("write");
        let mut m = Mutation::put(b"versioned", b"v");
        m.version = b"dvv-context";
        m.write_ts_ms = Some(42);
        m.expiry_ms = Some(u64::MAX);
        shard.write(m).await.expect("write");
        assert!(shard.get(b"expired").await.expect("get").is_none());
        assert!(shard.get_record(b"expired").await.expect("get").is_some());
        let keys = |records: Vec<dynacore_engine::Record>| {
            records.into_iter().map(|r| r.key).collect::<Vec<_>>()
        };
        let all = dynacore_engine::Token(0)..=dynacore_engine::Token(u64::MAX);
        let scanned = shard
            .scan(*all.start(), *all.end())
            .collect()
            .await
            .expect("scan");
        assert_eq!(
            keys(scanned),
            vec![b"versioned".to_vec()],
            "scans skip expired values"
        );
        shard.flush().await.expect("flush");
        let r = shard
            .get(b"versioned")
            .await
            .expect("get")
            .expect("present");
        assert_eq!(r.version, b"dvv-context");
        assert_eq!(r.write_ts_ms, 42);
        assert_eq!(r.expiry_ms, Some(u64::MAX));
        shard.close().await.expect("close");
    });
}

#[test]
fn every_durability_mode_recovers_after_close() {
    for durability in [Durability::Sync, Durability::Periodic(5), Durability::None] {
        with_temp_dir(LIMIT, move |path| async move {
            let mut o = small_options(&path);
            o.durability = durability;
            let shard = Shard::open(o.clone()).await.expect("open");
            for i in 0..500u32 {
                shard.put(&i.to_le_bytes(), b"value").await.expect("put");
            }
            shard.close().await.expect("close");
            let shard = Shard::open(o).await.expect("reopen");
            for i in 0..500u32 {
                assert!(
                    shard.get(&i.to_le_bytes()).await.expect("get").is_some(),
                    "{durability:?}: key {i} lost"
                );
            }
            shard.close().await.expect("close");
        });
    }
}

#[test]
fn second_opener_is_refused() {
    with_temp_dir(LIMIT, |path| async move {
        let shard = Shard::open(small_options(&path)).await.expect("open");
        let err = Shard::open(small_options(&path)).await.expect_err("locked");
        assert!(matches!(err, Error::Io { .. }), "{err}");
        shard.close().await.expect("close");
    });
}

#[test]
fn wal_stays_bounded_across_restarts_and_oversized_batches() {
    with_temp_dir(LIMIT, |path| async move {
        let big = vec![3u8; 200 << 10]; // larger than a 64 KiB segment: gets its own
        for round in 0..6u32 {
            let shard = Shard::open(small_options(&path)).await.expect("open");
            shard
                .put(format!("big-{round}").as_bytes(), &big)
                .await
                .expect("put");
            for i in 0..50u32 {
                shard
                    .put(&(round * 100 + i).to_be_bytes(), b"small")
                    .await
                    .expect("put");
            }
            shard.flush().await.expect("flush");
            // Fill the active segment past half, so that a spare is prepared and left behind
            // by close: the next open starts on that empty spare, and its big put rotates away
            // from it, leaving an empty segment in the middle of the log.
            for i in 50..70u32 {
                shard
                    .put(&(round * 100 + i).to_be_bytes(), b"small")
                    .await
                    .expect("put");
            }
            shard.close().await.expect("close");
        }
        let segments = common::wal_segments(&path);
        assert!(segments.len() <= 3, "WAL keeps growing: {segments:?}");
        let shard = Shard::open(small_options(&path)).await.expect("open");
        for round in 0..6u32 {
            let got = common::value_of(&shard, format!("big-{round}").as_bytes()).await;
            assert_eq!(got.map(|v| v.len()), Some(200 << 10));
        }
        shard.close().await.expect("close");
    });
}

#[test]
fn block_cache_is_filled_by_flushes_and_counts_hits_and_misses() {
    with_temp_dir(LIMIT, |path| async move {
        let mut o = small_options(&path);
        o.memtable_bytes_max = 64 << 20;
        o.block_cache_bytes = 8 << 20;
        let shard = Shard::open(o.clone()).await.expect("open");
        for i in 0..2_000u32 {
            shard.put(&i.to_be_bytes(), b"value").await.expect("put");
        }
        shard.flush().await.expect("flush");
        for i in 0..2_000u32 {
            assert!(common::value_of(&shard, &i.to_be_bytes()).await.is_some());
        }
        let s = shard.stats();
        assert_eq!(
            s.block_cache_misses, 0,
            "the flush cached its blocks: {s:?}"
        );
        assert!(s.block_cache_hits >= 2_000, "{s:?}");
        shard.close().await.expect("close");
        // After a reopen the cache starts cold: the first read of each block misses.
        let shard = Shard::open(o).await.expect("reopen");
        for i in 0..2_000u32 {
            assert!(common::value_of(&shard, &i.to_be_bytes()).await.is_some());
        }
        let s = shard.stats();
        assert!(s.block_cache_misses > 0, "{s:?}");
        assert_eq!(s.block_cache_hits + s.block_cache_misses, 2_000, "{s:?}");
        shard.close().await.expect("close");
    });
}

#[test]
fn compaction_bounds_the_table_count_and_keeps_every_key() {
    with_temp_dir(LIMIT, |path| async move {
        let mut o = small_options(&path);
        o.memtable_bytes_max = 16 << 10;
        o.durability = dynacore_engine::Durability::None;
        let shard = Shard::open(o.clone()).await.expect("open");
        for round in 0..3u32 {
            for i in 0..2_000u32 {
                let value = format!("{round}-{i}").repeat(10);
                shard
                    .put(&i.to_be_bytes(), value.as_bytes())
                    .await
                    .expect("put");
            }
        }
        for i in (0..2_000u32).step_by(3) {
            shard.delete(&i.to_be_bytes()).await.expect("delete");
        }
        shard.flush().await.expect("flush");
        shard.wait_for_compactions().await;
        let s = shard.stats();
        assert!(s.compactions > 0, "{s:?}");
        assert!(s.tables <= o.compaction.tables_max, "{s:?}");
        assert_eq!(
            common::tables(&path).len(),
            s.tables,
            "compacted inputs are deleted"
        );
        for i in 0..2_000u32 {
            let got = common::value_of(&shard, &i.to_be_bytes()).await;
            let want = (i % 3 != 0).then(|| format!("2-{i}").repeat(10).into_bytes());
            assert_eq!(got, want, "key {i}");
        }
        shard.close().await.expect("close");
    });
}

/// Options under which every two tables merge, so tests control when the oldest table merges.
fn merge_every_two(path: &std::path::Path) -> dynacore_engine::ShardOptions {
    let mut o = small_options(path);
    o.durability = dynacore_engine::Durability::None;
    o.compaction.min_run = 2;
    o.compaction.size_ratio_max = u64::MAX;
    o.compaction.space_amp_max_percent = None;
    o.compaction.tombstone_grace_ms = 0;
    o
}

#[test]
fn tombstone_gate_keeps_tombstones_until_repair_covers_them() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    with_temp_dir(LIMIT, |path| async move {
        let repaired = Arc::new(AtomicBool::new(false));
        let mut o = merge_every_two(&path);
        let gate = repaired.clone();
        o.tombstone_gate = Some(dynacore_engine::compaction::TombstoneGate::new(
            move |_, _| gate.load(Ordering::SeqCst),
        ));
        let shard = Shard::open(o).await.expect("open");
        let tombstones = |tables: Vec<Vec<dynacore_engine::Record>>| {
            tables
                .iter()
                .flatten()
                .filter(|r| r.value.is_none())
                .count()
        };
        for i in 0..100u32 {
            shard.put(&i.to_be_bytes(), b"v").await.expect("put");
        }
        shard.flush().await.expect("flush");
        for i in 0..10u32 {
            shard.delete(&i.to_be_bytes()).await.expect("delete");
        }
        shard.flush().await.expect("flush");
        shard.wait_for_compactions().await;
        assert_eq!(shard.stats().tables, 1, "{:?}", shard.stats());
        // Past the grace period and at the bottom, but repair has not covered them: kept.
        assert_eq!(tombstones(shard.scan_tables().await.expect("scan")), 10);

        repaired.store(true, Ordering::SeqCst);
        shard.put(b"another", b"v").await.expect("put");
        shard.flush().await.expect("flush");
        shard.wait_for_compactions().await;
        assert_eq!(shard.stats().tables, 1, "{:?}", shard.stats());
        assert_eq!(tombstones(shard.scan_tables().await.expect("scan")), 0);
        for i in 0..100u32 {
            let got = common::value_of(&shard, &i.to_be_bytes()).await;
            assert_eq!(got.is_some(), i >= 10, "key {i}");
        }
        shard.close().await.expect("close");
    });
}

#[test]
fn space_amplification_stays_bounded_under_overwrites() {
    with_temp_dir(LIMIT, |path| async move {
        let mut o = small_options(&path);
        o.durability = dynacore_engine::Durability::None;
        o.memtable_bytes_max = 32 << 10;
        let shard = Shard::open(o).await.expect("open");
        let mut one_copy = 0;
        for round in 0..10u32 {
            for i in 0..2_000u32 {
                let value = format!("{round:04}-{i:08}").repeat(8);
                shard
                    .put(&i.to_be_bytes(), value.as_bytes())
                    .await
                    .expect("put");
            }
            if round == 0 {
                shard.flush().await.expect("flush");
                shard.wait_for_compactions().await;
                shard.compact_all().await.expect("compact");
                one_copy = shard.stats().table_bytes;
            }
        }
        shard.flush().await.expect("flush");
        shard.wait_for_compactions().await;
        let s = shard.stats();
        assert!(s.compactions > 0, "{s:?}");
        // The tables hold one copy of every key plus newer tables worth at most half of it.
        assert!(
            s.table_bytes * 2 <= one_copy * 3,
            "{} bytes on disk for {one_copy} bytes of data: {s:?}",
            s.table_bytes
        );
        for i in (0..2_000u32).step_by(7) {
            let got = common::value_of(&shard, &i.to_be_bytes()).await;
            assert_eq!(got, Some(format!("0009-{i:08}").repeat(8).into_bytes()));
        }
        shard.close().await.expect("close");
    });
}

#[test]
fn writes_stall_while_compaction_is_behind() {
    with_temp_dir(LIMIT, |path| async move {
        let mut o = merge_every_two(&path);
        o.memtable_bytes_max = 16 << 10;
        o.immutable_memtables_max = 1;
        o.compaction.tables_stall = 1;
        let shard = Shard::open(o).await.expect("open");
        for i in 0..4_000u32 {
            shard
                .put(&(i % 1_000).to_be_bytes(), &[b'x'; 64])
                .await
                .expect("put");
        }
        shard.flush().await.expect("flush");
        shard.wait_for_compactions().await;
        let s = shard.stats();
        // Every flush that leaves two tables starts a merge before the waiting writer runs.
        assert!(s.write_stalls > 0, "{s:?}");
        assert_eq!(s.tables, 1, "{s:?}");
        for i in 0..1_000u32 {
            assert!(common::value_of(&shard, &i.to_be_bytes()).await.is_some());
        }
        shard.close().await.expect("close");
    });
}

#[test]
fn a_scan_keeps_reading_tables_that_compaction_replaced() {
    with_temp_dir(LIMIT, |path| async move {
        let mut o = merge_every_two(&path);
        o.compaction.enabled = false;
        o.memtable_bytes_max = 64 << 20;
        let shard = Shard::open(o).await.expect("open");
        for i in 0..3_000u32 {
            shard
                .put(&i.to_be_bytes(), &[b'a'; 100])
                .await
                .expect("put");
        }
        shard.flush().await.expect("flush");
        for i in 0..3_000u32 {
            shard
                .put(&i.to_be_bytes(), &[b'b'; 100])
                .await
                .expect("put");
        }
        shard.flush().await.expect("flush");
        let old_files = common::tables(&path);
        assert_eq!(old_files.len(), 2);

        let mut scan = shard.scan(dynacore_engine::Token(0), dynacore_engine::Token(u64::MAX));
        let mut seen = 0;
        for _ in 0..10 {
            assert!(scan.next().await.expect("scan").is_some());
            seen += 1;
        }
        // Compact while the scan holds the old tables: the merge is installed, but the old
        // files stay until the scan lets go of them.
        let s = shard.clone();
        let compaction = runtime::spawn_detached(async move { s.compact_all().await });
        while shard.stats().compactions == 0 {
            runtime::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(shard.stats().tables, 1);
        assert!(
            old_files.iter().all(|f| f.exists()),
            "deleted under a reader"
        );
        while let Some(r) = scan.next().await.expect("scan") {
            assert_eq!(r.value.as_deref(), Some(&[b'b'; 100][..]));
            seen += 1;
        }
        assert_eq!(seen, 3_000);
        drop(scan);
        compaction.await.expect("task").expect("compact");
        assert!(old_files.iter().all(|f| !f.exists()), "old tables deleted");
        assert_eq!(common::tables(&path).len(), 1);
        shard.close().await.expect("close");
    });
}

#[test]
fn recycled_wal_segments_replace_zero_filled_ones_and_recover() {
    with_temp_dir(LIMIT, |path| async move {
        let mut o = small_options(&path);
        o.memtable_bytes_max = 16 << 10;
        let value = |round: u32, i: u32| format!("{round}-{i}-").repeat(20).into_bytes();
        for round in 0..3u32 {
            let shard = Shard::open(o.clone()).await.expect("open");
            for i in 0..1_500u32 {
                shard
                    .put(&i.to_be_bytes(), &value(round, i))
                    .await
                    .expect("put");
            }
            let s = shard.stats();
            assert!(s.wal.segments_recycled > 0, "{s:?}");
            let recycled = std::fs::read_dir(&path)
                .expect("list")
                .filter(|e| {
                    e.as_ref()
                        .expect("entry")
                        .file_name()
                        .to_string_lossy()
                        .starts_with("recycle-")
                })
                .count();
            assert!(recycled <= 2, "{recycled} recycled segments kept");
            // Reopen without flushing: recovery replays segments that hold stale batches.
            shard.close().await.expect("close");
            let shard = Shard::open(o.clone()).await.expect("reopen");
            for i in 0..1_500u32 {
                let got = common::value_of(&shard, &i.to_be_bytes()).await;
                assert_eq!(got, Some(value(round, i)), "round {round} key {i}");
            }
            shard.close().await.expect("close");
        }
    });
}

#[test]
fn expired_values_follow_the_tombstone_grace_and_gate() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    // An expired value dropped by one replica while another still holds an older live version
    // would bring that version back: expired values wait for the same grace and gate as
    // tombstones. Expired an hour ago, grace a day: kept through a bottom merge.
    let now_ms = || {
        u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_millis(),
        )
        .expect("fits")
    };
    for (grace_ms, repaired, kept) in [
        (24 * 3600 * 1000, true, true),
        (0, false, true),
        (0, true, false),
    ] {
        with_temp_dir(LIMIT, move |path| async move {
            let mut o = merge_every_two(&path);
            o.compaction.tombstone_grace_ms = grace_ms;
            let gate = Arc::new(AtomicBool::new(repaired));
            o.tombstone_gate = Some(dynacore_engine::compaction::TombstoneGate::new(
                move |_, _| gate.load(Ordering::SeqCst),
            ));
            let shard = Shard::open(o).await.expect("open");
            for i in 0..20u32 {
                let key = i.to_be_bytes();
                let mut m = Mutation::put(&key, b"v");
                if i < 10 {
                    m.expiry_ms = Some(now_ms() - 3_600_000);
                }
                shard.write(m).await.expect("write");
            }
            shard.flush().await.expect("flush");
            shard.put(b"another", b"v").await.expect("put");
            shard.flush().await.expect("flush");
            shard.wait_for_compactions().await;
            assert_eq!(shard.stats().tables, 1, "{:?}", shard.stats());
            let expired = shard
                .scan_tables()
                .await
                .expect("scan")
                .iter()
                .flatten()
                .filter(|r| r.expiry_ms.is_some())
                .count();
            assert_eq!(
                expired,
                if kept { 10 } else { 0 },
                "grace {grace_ms} ms, repaired {repaired}"
            );
            // Expired is expired for readers either way.
            assert!(shard.get(&0u32.to_be_bytes()).await.expect("get").is_none());
            shard.close().await.expect("close");
        });
    }
}
