//! Versioned objects on a shard: coordinator writes mint dots under a per-key lock, replicas
//! converge by applying each other's objects, conditional writes check the context.

mod common;

use std::time::Duration;

use common::{small_options, with_temp_dir};
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
        let me = ActorId(1);
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
                        .coordinate_write(
                            b"hot",
                            &VersionVector::new(),
                            Some(&[i]),
                            None,
                            ActorId(7),
                            None,
                        )
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
        assert_eq!(obj.join().get(ActorId(7)), 20);
        assert_eq!(
            values(&obj).len(),
            20,
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
            .coordinate_write(b"k", &none, Some(b"from-a"), None, ActorId(1), None)
            .await
            .expect("write a");
        let at_b = b
            .coordinate_write(b"k", &none, Some(b"from-b"), None, ActorId(2), None)
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
        let me = ActorId(3);
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
        let me = ActorId(1);
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
