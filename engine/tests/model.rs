//! Model test: random sequences of put / delete / get / scan / flush / reopen against a
//! `BTreeMap`.
//! Small memtables and WAL segments make every sequence cross flushes and segment rotation.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use dynacore_engine::{Durability, Shard, Token};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Put(u8, Vec<u8>),
    Delete(u8),
    Get(u8),
    Flush,
    Reopen,
    Scan(u64, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..24, prop::collection::vec(any::<u8>(), 0..600)).prop_map(|(k, v)| Op::Put(k, v)),
        3 => (0u8..24).prop_map(Op::Delete),
        6 => (0u8..24).prop_map(Op::Get),
        1 => Just(Op::Flush),
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
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_matches_btreemap(ops in prop::collection::vec(op(), 1..80), durability in durability()) {
        let dir = common::temp_dir();
        let path = dir.path().to_path_buf();
        common::run(Duration::from_secs(120), move || async move {
            let mut options = common::small_options(&path);
            options.durability = durability;
            options.memtable_bytes_max = 4 << 10;
            options.wal_segment_bytes = 32 << 10;
            let mut shard = Shard::open(options.clone()).await.expect("open");
            let mut model = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Put(k, v) => {
                        shard.put(&key(k), &v).await.expect("put");
                        model.insert(k, v);
                    }
                    Op::Delete(k) => {
                        shard.delete(&key(k)).await.expect("delete");
                        model.remove(&k);
                    }
                    Op::Get(k) => {
                        let got = shard.get(&key(k)).await.expect("get").and_then(|r| r.value);
                        assert_eq!(got.as_ref(), model.get(&k), "get {k}");
                    }
                    Op::Flush => shard.flush().await.expect("flush"),
                    Op::Scan(start, end) => check_scan(&shard, &model, start, end).await,
                    Op::Reopen => {
                        shard.close().await.expect("close");
                        shard = Shard::open(options.clone()).await.expect("reopen");
                        check_all(&shard, &model).await;
                    }
                }
            }
            check_all(&shard, &model).await;
            shard.close().await.expect("close");
            let shard = Shard::open(options).await.expect("final reopen");
            check_all(&shard, &model).await;
            shard.close().await.expect("close");
        });
    }
}
