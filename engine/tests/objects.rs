//! Versioned objects on a shard: coordinator writes mint dots under a per-key lock, replicas
//! converge by applying each other's objects, conditional writes check the context.

mod common;

use std::time::Duration;

use common::{small_options, with_temp_dir};
use dynacore_engine::manifest::{Manifest, RunState};
use dynacore_engine::version::{ActorId, HlcTimestamp, VersionVector};
use dynacore_engine::{Error, Object, Shard, Sibling};
use dynacore_runtime as runtime;

const LIMIT: Duration = Duration::from_secs(120);

fn values(obj: &Object) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = obj.values().filter_map(|s| s.value.clone()).collect();
    v.sort();
    v
}

#[test]
fn concurrent_writes_become_siblings_and_a_read_context_resolves_them() {
    with_temp_dir(LIMIT, |path| async move {
        let shard = Shard::open(small_options(&path)).await.expect("open");
        let me = 1;
        let none = VersionVector::new();
        let first = shard
            .coordinate_write(b"k", &none, Some(b"v1"), None, me, None)
            .await
            .expect("write");
        let ctx = first.join();
        // Two clients both read v1, then write: neither saw the other's write.
        shard
            .coordinate_write(b"k", &ctx, Some(b"x"), None, me, None)
            .await
            .expect("write");
        let both = shard
            .coordinate_write(b"k", &ctx, Some(b"y"), None, me, None)
            .await
            .expect("write");
        assert_eq!(values(&both), vec![b"x".to_vec(), b"y".to_vec()]);
        shard.close().await.expect("close");
        // Siblings and context survive a reopen (WAL replay) and a flush (SSTable).
        let shard = Shard::open(small_options(&path)).await.expect("reopen");
        shard.flush().await.expect("flush");
        let stored = shard
            .read_object(b"k")
            .await
            .expect("read")
            .expect("present");
        assert_eq!(stored, both);
        // Writing with the context of that read replaces both siblings.
        let merged = shard
            .coordinate_write(b"k", &stored.join(), Some(b"xy"), None, me, None)
            .await
            .expect("write");
        assert_eq!(values(&merged), vec![b"xy".to_vec()]);
        // A delete is a tombstone sibling: get says absent, the object keeps its context.
        let deleted = shard
            .coordinate_write(b"k", &merged.join(), None, None, me, None)
            .await
            .expect("delete");
        assert!(shard.get(b"k").await.expect("get").is_none());
        let stored = shard
            .read_object(b"k")
            .await
            .expect("read")
            .expect("present");
        assert_eq!(stored, deleted);
        assert!(stored.values().all(|s| s.value.is_none()));
        shard.close().await.expect("close");
    });
}

#[test]
fn interleaved_writes_to_one_key_never_share_a_dot() {
    with_temp_dir(LIMIT, |path| async move {
        let shard = Shard::open(small_options(&path)).await.expect("open");
        // 20 blind writes at once: each awaits its group commit inside the read-modify-write,
        // so without the per-key lock they would read the same state and mint the same dot.
        let tasks: Vec<_> = (0..20u8)
            .map(|i| {
                let shard = shard.clone();
                runtime::spawn_detached(async move {
                    shard
                        .coordinate_write(b"hot", &VersionVector::new(), Some(&[i]), None, 7, None)
                        .await
                        .expect("write");
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        let obj = shard
            .read_object(b"hot")
            .await
            .expect("read")
            .expect("present");
        assert_eq!(obj.join().get(ActorId::new(7, shard.actor_epoch().0)), 20);
        assert_eq!(
            values(&obj).len(),
            20,
            "every concurrent write is a sibling"
        );
        shard.close().await.expect("close");
    });
}

/// A write releases its key's lock once its record is applied, not once it is durable (early
/// lock release): concurrent writes of one key share group commits instead of taking one sync
/// each, and still build on each other (no dot shared, none lost) and answer only once durable.
#[test]
fn writes_of_one_key_share_group_commits_and_still_build_on_each_other() {
    with_temp_dir(LIMIT, |path| async move {
        let shard = Shard::open(small_options(&path)).await.expect("open");
        let syncs = shard.stats().wal.syncs;
        let tasks: Vec<_> = (0..32u8)
            .map(|i| {
                let shard = shard.clone();
                runtime::spawn_detached(async move {
                    let obj = shard
                        .coordinate_write(b"hot", &VersionVector::new(), Some(&[i]), None, 7, None)
                        .await
                        .expect("write");
                    // Answered only once durable: a durable read sees at least this write.
                    let seen = shard
                        .read_object(b"hot")
                        .await
                        .expect("read")
                        .expect("present");
                    assert!(
                        seen.join().descends(&obj.join()),
                        "write {i} answered before durable"
                    );
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        let synced = shard.stats().wal.syncs - syncs;
        assert!(
            synced < 16,
            "32 writes of one key took {synced} syncs: they did not share group commits"
        );
        let obj = shard
            .read_object(b"hot")
            .await
            .expect("read")
            .expect("present");
        assert_eq!(obj.join().get(ActorId::new(7, shard.actor_epoch().0)), 32);
        assert_eq!(
            values(&obj).len(),
            32,
            "every concurrent write is a sibling"
        );
        shard.close().await.expect("close");
    });
}

#[test]
fn replicas_converge_by_applying_each_other() {
    with_temp_dir(LIMIT, |path| async move {
        let a = Shard::open(small_options(&path.join("a")))
            .await
            .expect("open a");
        let b = Shard::open(small_options(&path.join("b")))
            .await
            .expect("open b");
        let none = VersionVector::new();
        let at_a = a
            .coordinate_write(b"k", &none, Some(b"from-a"), None, 1, None)
            .await
            .expect("write a");
        let at_b = b
            .coordinate_write(b"k", &none, Some(b"from-b"), None, 2, None)
            .await
            .expect("write b");
        let a2 = a.apply_object(b"k", &at_b, None).await.expect("apply at a");
        let b2 = b.apply_object(b"k", &at_a, None).await.expect("apply at b");
        assert_eq!(values(&a2), vec![b"from-a".to_vec(), b"from-b".to_vec()]);
        assert_eq!(a2.join(), b2.join());
        assert_eq!(values(&a2), values(&b2));
        // Applying again changes nothing (idempotent) and the stored objects agree.
        let again = a.apply_object(b"k", &b2, None).await.expect("apply");
        assert_eq!(again, a2);
        assert_eq!(a.read_object(b"k").await.expect("read"), Some(a2));
        a.close().await.expect("close");
        b.close().await.expect("close");
    });
}

#[test]
fn conditional_writes_check_the_current_context() {
    with_temp_dir(LIMIT, |path| async move {
        let shard = Shard::open(small_options(&path)).await.expect("open");
        let none = VersionVector::new();
        let me = 3;
        // "Only if absent".
        let v1 = shard
            .coordinate_write(b"k", &none, Some(b"1"), None, me, Some(&none))
            .await
            .expect("create");
        let err = shard
            .coordinate_write(b"k", &none, Some(b"2"), None, me, Some(&none))
            .await
            .expect_err("exists now");
        match err {
            Error::ConditionFailed { current } => assert_eq!(current, v1.join()),
            other => panic!("unexpected {other}"),
        }
        shard
            .coordinate_write(b"k", &v1.join(), Some(b"2"), None, me, Some(&v1.join()))
            .await
            .expect("matching condition");
        let err = shard
            .apply_object(b"k", &v1, Some(&v1.join()))
            .await
            .expect_err("stale condition");
        assert!(matches!(err, Error::ConditionFailed { .. }), "{err}");
        assert_eq!(
            values(
                &shard
                    .read_object(b"k")
                    .await
                    .expect("read")
                    .expect("present")
            ),
            vec![b"2".to_vec()]
        );
        shard.close().await.expect("close");
    });
}

#[test]
fn far_future_timestamps_are_refused_and_plain_puts_read_as_objects() {
    with_temp_dir(LIMIT, |path| async move {
        let shard = Shard::open(small_options(&path)).await.expect("open");
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64;
        let poisoned = Object::new(Sibling {
            value: Some(b"from the future".to_vec()),
            hlc: HlcTimestamp::from_parts(now_ms + 3_600_000, 0),
            expiry_ms: None,
        });
        let err = shard
            .apply_object(b"k", &poisoned, None)
            .await
            .expect_err("refused");
        assert!(matches!(err, Error::Clock(_)), "{err}");
        assert!(
            shard.read_object(b"k").await.expect("read").is_none(),
            "nothing stored"
        );
        shard.put(b"plain", b"value").await.expect("put");
        let obj = shard
            .read_object(b"plain")
            .await
            .expect("read")
            .expect("present");
        assert_eq!(values(&obj), vec![b"value".to_vec()]);
        shard.close().await.expect("close");
    });
}

#[test]
fn an_overwrite_supersedes_every_sibling() {
    with_temp_dir(LIMIT, |path| async move {
        let shard = Shard::open(small_options(&path)).await.expect("open");
        let me = 1;
        let none = VersionVector::new();
        // Two blind writes with no context: siblings.
        for v in [b"x", b"y"] {
            shard
                .coordinate_write(b"k", &none, Some(v), None, me, None)
                .await
                .expect("write");
        }
        let before = shard.read_object(b"k").await.expect("read").expect("some");
        assert_eq!(before.size(), 2);
        let after = shard
            .overwrite(b"k", Some(b"z"), None, me)
            .await
            .expect("overwrite");
        assert_eq!(values(&after), vec![b"z".to_vec()]);
        assert!(after.join().descends(&before.join()));
        let stored = shard.read_object(b"k").await.expect("read").expect("some");
        assert_eq!(values(&stored), vec![b"z".to_vec()]);
        // A tombstone overwrite supersedes it in turn.
        let gone = shard.overwrite(b"k", None, None, me).await.expect("delete");
        assert_eq!(gone.size(), 1);
        assert!(values(&gone).is_empty());
        shard.close().await.expect("close");
    });
}

/// Rewrites the shard's manifest as a crash in `run` would have left it.
async fn as_if_stopped(dir: &std::path::Path, run: RunState, epoch: Option<u64>) {
    let mut m = Manifest::load(dir)
        .await
        .expect("load")
        .expect("a manifest");
    m.run = run;
    if let Some(e) = epoch {
        m.actor_epoch = e;
    }
    m.store(dir).await.expect("store");
}

#[test]
fn the_actor_epoch_is_kept_only_while_the_shard_remembers_every_dot_it_minted() {
    with_temp_dir(LIMIT, |path| async move {
        let none = VersionVector::new();
        let shard = Shard::open(small_options(&path)).await.expect("open");
        let (e1, high) = shard.actor_epoch();
        assert!(
            e1 > 0 && high == 0,
            "a new shard draws an epoch: {e1} {high}"
        );
        let obj = shard
            .coordinate_write(b"k", &none, Some(b"v"), None, 9, None)
            .await
            .expect("write");
        assert_eq!(obj.join().pairs(), &[(ActorId::new(9, e1), 1)]);
        shard.close().await.expect("close");

        // Closed cleanly, or crashed with every write synced: the epoch stays, and any
        // counter up to the lease may have been minted.
        let shard = Shard::open(small_options(&path)).await.expect("reopen");
        let (e, high) = shard.actor_epoch();
        assert_eq!(e, e1);
        assert!(high >= 1, "the ceiling covers what was minted: {high}");
        shard.close().await.expect("close");
        as_if_stopped(&path, RunState::Running { synced: true }, None).await;
        let shard = Shard::open(small_options(&path)).await.expect("reopen");
        assert_eq!(shard.actor_epoch().0, e1);
        shard.close().await.expect("close");

        // A crash that may have lost acknowledged writes, or a manifest from before epochs:
        // a new epoch each time, above the last.
        as_if_stopped(&path, RunState::Running { synced: false }, None).await;
        let shard = Shard::open(small_options(&path)).await.expect("reopen");
        let (e2, high) = shard.actor_epoch();
        assert!(e2 > e1 && high == 0, "{e1} -> {e2}");
        shard.close().await.expect("close");
        as_if_stopped(&path, RunState::Unknown, Some(0)).await;
        let shard = Shard::open(small_options(&path)).await.expect("reopen");
        assert!(shard.actor_epoch().0 > 0);
        assert_ne!(shard.actor_epoch().0, e2);
        // The data is all there whatever the epoch.
        let obj = shard.read_object(b"k").await.expect("read").expect("kept");
        assert_eq!(values(&obj), vec![b"v".to_vec()]);
        shard.close().await.expect("close");
    });
}

#[test]
fn a_key_without_a_live_value_of_this_replica_gets_a_counter_above_every_one_it_minted() {
    with_temp_dir(LIMIT, |path| async move {
        let none = VersionVector::new();
        let shard = Shard::open(small_options(&path)).await.expect("open");
        let me = 4;
        for i in 0..10u8 {
            shard
                .overwrite(b"busy", Some(&[i]), None, me)
                .await
                .expect("write");
        }
        let (epoch, high) = shard.actor_epoch();
        assert_eq!(high, 10);
        let actor = ActorId::new(me, epoch);
        // A new key: its first dot is above all ten.
        let fresh = shard
            .coordinate_write(b"new", &none, Some(b"n"), None, me, None)
            .await
            .expect("write");
        assert_eq!(fresh.join().get(actor), 11);
        // A key whose only value from this replica was superseded by another's write (a copy
        // that may be a read repair's, not the one this replica wrote): also above.
        let theirs = Object::update(
            &fresh.join(),
            Sibling {
                value: Some(b"other".to_vec()),
                hlc: HlcTimestamp::from_parts(1, 0),
                expiry_ms: None,
            },
            Some(&fresh),
            ActorId::new(5, 1),
        )
        .expect("update");
        shard
            .apply_object(b"new", &theirs, None)
            .await
            .expect("apply");
        let next = shard
            .overwrite(b"new", Some(b"mine again"), None, me)
            .await
            .expect("write");
        assert_eq!(next.join().get(actor), 12);
        // A key holding a live value of this replica counts on from it.
        let busy = shard
            .overwrite(b"busy", Some(b"x"), None, me)
            .await
            .expect("write");
        assert_eq!(busy.join().get(actor), 11);
        shard.close().await.expect("close");

        // After a restart in the same epoch, new keys start above the durable ceiling.
        let shard = Shard::open(small_options(&path)).await.expect("reopen");
        let (same, ceiling) = shard.actor_epoch();
        assert_eq!(same, epoch);
        let after = shard
            .coordinate_write(b"newer", &none, Some(b"n"), None, me, None)
            .await
            .expect("write");
        assert_eq!(after.join().get(actor), ceiling + 1);
        shard.close().await.expect("close");
    });
}

#[test]
fn a_version_naming_dots_this_replica_never_minted_moves_its_epoch() {
    with_temp_dir(LIMIT, |path| async move {
        let shard = Shard::open(small_options(&path)).await.expect("open");
        let me = 6;
        let (e1, high) = shard.actor_epoch();
        // The same epoch with a counter it never reached (a restored backup, or forged).
        let ctx =
            VersionVector::from_pairs(vec![(ActorId::new(me, e1), high + 100)]).expect("context");
        let obj = shard
            .coordinate_write(b"k", &ctx, Some(b"v"), None, me, None)
            .await
            .expect("write");
        let (e2, _) = shard.actor_epoch();
        assert!(e2 > e1);
        assert_eq!(obj.join().get(ActorId::new(me, e2)), 1);
        // A later epoch than its own (its clock went back before a new epoch was drawn).
        let ahead = e2 + 1_000_000_000;
        let ctx = VersionVector::from_pairs(vec![(ActorId::new(me, ahead), 3)]).expect("context");
        shard
            .coordinate_write(b"k2", &ctx, Some(b"v"), None, me, None)
            .await
            .expect("write");
        assert!(shard.actor_epoch().0 > ahead);
        shard.close().await.expect("close");
        // The moves were durable.
        let shard = Shard::open(small_options(&path)).await.expect("reopen");
        assert!(shard.actor_epoch().0 > ahead);
        shard.close().await.expect("close");
    });
}

#[test]
fn compaction_retires_the_epochs_a_node_left_once_past_the_grace() {
    with_temp_dir(LIMIT, |path| async move {
        let mut options = small_options(&path);
        options.compaction.tombstone_grace_ms = 1_000;
        let shard = Shard::open(options).await.expect("open");
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64;
        let at = |ms: u64, v: &[u8]| Sibling {
            value: Some(v.to_vec()),
            hlc: HlcTimestamp::from_parts(ms, 0),
            expiry_ms: None,
        };
        let (old, new, other) = (ActorId::new(9, 1), ActorId::new(9, 2), ActorId::new(3, 1));
        // Node 9 wrote in epoch 1, then (after a crash) in epoch 2 over it; node 3 wrote
        // concurrently with the second write.
        let hour_ago = now_ms - 3_600_000;
        let first =
            Object::update(&VersionVector::new(), at(hour_ago, b"a"), None, old).expect("update");
        let second =
            Object::update(&first.join(), at(hour_ago + 1, b"b"), Some(&first), new).expect("b");
        let theirs = Object::update(&first.join(), at(hour_ago + 2, b"c"), None, other).expect("c");
        let both = second.sync(&theirs);
        shard
            .apply_object(b"old", &both, None)
            .await
            .expect("apply");
        // The same history written just now: within the grace, nothing retires.
        let recent =
            Object::update(&VersionVector::new(), at(now_ms, b"a"), None, old).expect("update");
        let recent = Object::update(&recent.join(), at(now_ms + 1, b"b"), Some(&recent), new)
            .expect("update");
        shard
            .apply_object(b"recent", &recent, None)
            .await
            .expect("apply");
        shard.flush().await.expect("flush");
        shard.compact_all().await.expect("compact");

        let read = shard
            .read_object(b"old")
            .await
            .expect("read")
            .expect("kept");
        let actors: Vec<ActorId> = read.join().pairs().iter().map(|&(a, _)| a).collect();
        assert_eq!(actors, vec![other, new], "epoch 1 of node 9 retired");
        assert_eq!(values(&read), vec![b"b".to_vec(), b"c".to_vec()]);
        // (A copy of the first write left somewhere would now come back as a sibling: that is
        // why retiring waits for the purge rules, which say no such copy is left.)
        let read = shard
            .read_object(b"recent")
            .await
            .expect("read")
            .expect("kept");
        assert_eq!(read.join().pairs().len(), 2, "within the grace");
        shard.close().await.expect("close");
    });
}

#[test]
fn a_snapshot_opens_as_a_shard_with_every_write_before_it_and_a_new_actor_epoch() {
    with_temp_dir(LIMIT, |path| async move {
        let none = VersionVector::new();
        let live = path.join("live");
        let mut options = small_options(&live);
        // Large values go to blob files: those are linked too.
        options.blob_threshold_bytes = Some(1024);
        let shard = Shard::open(options.clone()).await.expect("open");
        let (epoch, _) = shard.actor_epoch();
        for i in 0..200u32 {
            let value = if i % 10 == 0 {
                vec![b'x'; 4096]
            } else {
                i.to_le_bytes().to_vec()
            };
            shard
                .coordinate_write(
                    format!("k{i}").as_bytes(),
                    &none,
                    Some(&value),
                    None,
                    3,
                    None,
                )
                .await
                .expect("write");
        }
        shard.flush().await.expect("flush");
        // Some writes only in the memtable: the snapshot flushes them first.
        for i in 200..250u32 {
            shard
                .coordinate_write(
                    format!("k{i}").as_bytes(),
                    &none,
                    Some(b"late"),
                    None,
                    3,
                    None,
                )
                .await
                .expect("write");
        }
        let into = path.join("snap");
        let files = shard.snapshot_into(&into).await.expect("snapshot");
        assert!(files.tables >= 2 && files.blob_files >= 1, "{files:?}");
        // After it: not in it.
        shard
            .coordinate_write(b"after", &none, Some(b"v"), None, 3, None)
            .await
            .expect("write");
        // The live shard keeps working: compaction may now delete what the snapshot linked.
        shard.compact_all().await.expect("compact");
        shard.close().await.expect("close");

        let mut restored_options = options.clone();
        restored_options.dir.clone_from(&into);
        let restored = Shard::open(restored_options)
            .await
            .expect("open the snapshot");
        let (new_epoch, high) = restored.actor_epoch();
        assert!(new_epoch > epoch && high == 0, "{epoch} -> {new_epoch}");
        for i in 0..250u32 {
            let obj = restored
                .read_object(format!("k{i}").as_bytes())
                .await
                .expect("read")
                .unwrap_or_else(|| panic!("k{i} is in the snapshot"));
            let want = match i {
                _ if i >= 200 => b"late".to_vec(),
                _ if i % 10 == 0 => vec![b'x'; 4096],
                _ => i.to_le_bytes().to_vec(),
            };
            assert_eq!(values(&obj), vec![want]);
        }
        assert!(restored
            .read_object(b"after")
            .await
            .expect("read")
            .is_none());
        // A write on the restored shard mints in its new epoch.
        let obj = restored
            .coordinate_write(b"k1", &none, Some(b"new"), None, 3, None)
            .await
            .expect("write");
        assert!(obj
            .join()
            .pairs()
            .iter()
            .any(|&(a, _)| a == ActorId::new(3, new_epoch)));
        restored.close().await.expect("close");
    });
}
