//! Hinted handoff: writes kept for a replica that missed them, handed over when it is back.
//!
//! * Each core keeps its hints in an engine shard of its own (`hints-<i>/`): durable with the
//!   node's durability (a hint stored for a sloppy quorum counts towards W, so it is synced
//!   before it is acknowledged), recovered after a crash, and compacted like any shard.
//! * A hint is one record of that shard: its key is `target node (8 bytes) ‖ sequence (8
//!   bytes)`, big-endian; its version blob is `created ms (8) ‖ key length (2) ‖ key ‖ version`
//!   and its value the object's values: the object's two parts as records store them
//!   ([`object::to_parts`]), so a hint holds any value a client may write. (Hints stored before
//!   this layout — an empty version blob, everything in the value — are still read.)
//! * **Bounds:** hints for one target take at most [`HintLimits::bytes_per_target`] on a core
//!   (a hint past it is refused and counted as dropped); a hint not handed over within
//!   [`HintLimits::max_age`] of its target's return is dropped (its age counts from the later
//!   of its creation and that return, so a long outage expires nothing).
//! * **Replay:** a task per core looks every second for targets that are up and have hints,
//!   and hands them over (`ReplicaApply` to the target's owning core; merging by DVV `sync`
//!   makes a repeated or out-of-order hint harmless) at most
//!   [`HintLimits::replay_per_second`] a second; a handed-over hint is deleted. A target that
//!   fails waits for the next round.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dynacore_engine::{object, Mutation, Object, Shard, ShardId, ShardOptions, Token};
use dynacore_runtime as runtime;

use crate::storage::replica::StoreError;
use dynacore_proto::ring::NodeId;

/// How many hints a core keeps, for how long, and how fast it hands them back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HintLimits {
    /// Bytes of hints kept for one target node on this core.
    pub bytes_per_target: u64,
    /// Hints not handed over this long after their target returned are dropped.
    pub max_age: Duration,
    /// Hints handed back per second.
    pub replay_per_second: u32,
}

/// Hints pending for one target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// How many.
    pub hints: u64,
    /// Their bytes (as stored).
    pub bytes: u64,
}

/// What a hint store counted since it opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HintCounters {
    /// Hints stored.
    pub stored: u64,
    /// Hints handed over to their target.
    pub replayed: u64,
    /// Hints refused (over the bound) or dropped (too old, undecodable).
    pub dropped: u64,
    /// Hint records read by [`HintStore::due`] (only those of targets that are up).
    pub read: u64,
}

/// One hint, as read back.
#[derive(Clone, Debug, PartialEq)]
pub struct Hint {
    /// The node it is for.
    pub target: NodeId,
    /// The key written.
    pub key: Vec<u8>,
    /// The object to hand over.
    pub object: Object,
    /// When it was stored (ms since the Unix epoch).
    pub created_ms: u64,
    /// Its own key in the hint shard.
    hint_key: [u8; 16],
    /// Its stored size.
    bytes: u64,
}

/// One core's hints (see the module documentation).
#[derive(Debug)]
pub struct HintStore {
    shard: Shard,
    limits: HintLimits,
    pending: RefCell<BTreeMap<NodeId, Pending>>,
    /// Every stored hint's sequence number, per target (oldest first): what is due is found
    /// without reading the hints of targets that are down.
    index: RefCell<BTreeMap<NodeId, std::collections::BTreeSet<u64>>>,
    next_seq: Cell<u64>,
    counters: Cell<HintCounters>,
    /// Since when (ms) each target has been up, as [`HintStore::due`] was last told: a hint's
    /// age counts from the later of its creation and its target's return.
    up_since: RefCell<BTreeMap<NodeId, u64>>,
}

/// The wall clock, in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

/// A hint's key in the hint shard: `target ‖ seq`, big-endian.
fn hint_key(target: NodeId, seq: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&target.0.to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// A hint record's version blob: `created ms (8) ‖ key length (2) ‖ key ‖ version`, or `None`
/// when it would be over the engine's version limit.
fn encode_meta(created_ms: u64, key: &[u8], version: &[u8]) -> Option<Vec<u8>> {
    let key_len = u16::try_from(key.len()).ok()?;
    let mut out = Vec::with_capacity(10 + key.len() + version.len());
    out.extend_from_slice(&created_ms.to_be_bytes());
    out.extend_from_slice(&key_len.to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(version);
    (out.len() <= dynacore_engine::VERSION_BYTES_MAX).then_some(out)
}

/// A stored hint's parts (created ms, key, version, values), in either layout.
fn decode_record(r: &dynacore_engine::Record) -> Option<HintParts<'_>> {
    let value = r.value.as_deref()?;
    if r.version.is_empty() {
        // The layout before hints kept their version apart: everything in the value.
        return decode(value);
    }
    let m = r.version.as_slice();
    let created = u64::from_be_bytes(m.get(..8)?.try_into().ok()?);
    let key_len = usize::from(u16::from_be_bytes(m.get(8..10)?.try_into().ok()?));
    let key = m.get(10..10 + key_len)?;
    let version = m.get(10 + key_len..)?;
    Some((created, key, version, value))
}

/// The bytes a hint record takes (its key, value and version blob).
fn record_bytes(r: &dynacore_engine::Record) -> u64 {
    (r.key.len() + r.value.as_ref().map_or(0, Vec::len) + r.version.len()) as u64
}

#[cfg(test)]
fn encode(created_ms: u64, key: &[u8], version: &[u8], values: &[u8]) -> Option<Vec<u8>> {
    let key_len = u16::try_from(key.len()).ok()?;
    let version_len = u32::try_from(version.len()).ok()?;
    let mut out = Vec::with_capacity(14 + key.len() + version.len() + values.len());
    out.extend_from_slice(&created_ms.to_be_bytes());
    out.extend_from_slice(&key_len.to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&version_len.to_be_bytes());
    out.extend_from_slice(version);
    out.extend_from_slice(values);
    Some(out)
}

/// A stored hint value's parts: created ms, key, version, values.
type HintParts<'a> = (u64, &'a [u8], &'a [u8], &'a [u8]);

/// Splits a stored hint value into its parts.
fn decode(v: &[u8]) -> Option<HintParts<'_>> {
    let created = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    let key_len = usize::from(u16::from_be_bytes(v.get(8..10)?.try_into().ok()?));
    let key = v.get(10..10 + key_len)?;
    let at = 10 + key_len;
    let version_len =
        usize::try_from(u32::from_be_bytes(v.get(at..at + 4)?.try_into().ok()?)).ok()?;
    let version = v.get(at + 4..at + 4 + version_len)?;
    let values = v.get(at + 4 + version_len..)?;
    Some((created, key, version, values))
}

fn split_hint_key(k: &[u8]) -> Option<(NodeId, u64)> {
    let target = u64::from_be_bytes(k.get(..8)?.try_into().ok()?);
    let seq = u64::from_be_bytes(k.get(8..16)?.try_into().ok()?);
    (k.len() == 16).then_some((NodeId(target), seq))
}

impl HintStore {
    /// Opens (or creates) the hint shard in `dir` and counts what it holds.
    ///
    /// # Errors
    /// The engine's error when the shard cannot be opened or read.
    pub async fn open(
        dir: PathBuf,
        shard_id: ShardId,
        durability: dynacore_engine::Durability,
        limits: HintLimits,
    ) -> Result<HintStore, dynacore_engine::Error> {
        let mut options = ShardOptions::new(dir, shard_id);
        options.durability = durability;
        options.memtable_bytes_max = 8 << 20;
        options.wal_segment_bytes = 8 << 20;
        options.block_cache_bytes = 8 << 20;
        // Hint records carry their own layout in the version blob, not an object's.
        options.retire_actor_epochs = false;
        let shard = Shard::open(options).await?;
        let store = HintStore {
            shard,
            limits,
            pending: RefCell::new(BTreeMap::new()),
            index: RefCell::new(BTreeMap::new()),
            next_seq: Cell::new(now_ms() << 16),
            counters: Cell::new(HintCounters::default()),
            up_since: RefCell::new(BTreeMap::new()),
        };
        let mut scan = store.shard.scan(Token(0), Token(u64::MAX));
        let mut max_seq = 0;
        while let Some(r) = scan.next().await? {
            if let Some((target, seq)) = split_hint_key(&r.key) {
                max_seq = max_seq.max(seq);
                let bytes = record_bytes(&r);
                store.add(target, seq, bytes);
            }
        }
        if max_seq >= store.next_seq.get() {
            store.next_seq.set(max_seq + 1);
        }
        Ok(store)
    }

    /// The limits.
    #[must_use]
    pub fn limits(&self) -> HintLimits {
        self.limits
    }

    /// Stores `object` (the copy of `key` that `target` missed) durably.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when `target`'s hints are at their bound (the hint is
    /// dropped); [`StoreError::Internal`] when storing fails.
    pub async fn store(
        &self,
        target: NodeId,
        key: &[u8],
        object: &Object,
    ) -> Result<(), StoreError> {
        let (version, values) =
            object::to_parts(object).map_err(|e| StoreError::Internal(e.to_string()))?;
        let Some(meta) = encode_meta(now_ms(), key, &version) else {
            return Err(StoreError::BadRequest(
                "a hint's key and version are over the version limit".into(),
            ));
        };
        let bytes = (16 + meta.len() + values.len()) as u64;
        let held = self.pending.borrow().get(&target).map_or(0, |p| p.bytes);
        if held + bytes > self.limits.bytes_per_target {
            self.count(|c| c.dropped += 1);
            return Err(StoreError::Unavailable(format!(
                "hints for node {target} are at their bound ({} bytes)",
                self.limits.bytes_per_target
            )));
        }
        // Its time in the top 48 bits (what `oldest_ms` reads), and above every earlier one.
        let seq = self.next_seq.get().max(now_ms() << 16);
        self.next_seq.set(seq + 1);
        let hint_key = hint_key(target, seq);
        // Counted before the write, so that a concurrent store sees the bytes it will take.
        self.add(target, seq, bytes);
        let written = self
            .shard
            .write(Mutation {
                key: &hint_key,
                value: Some(&values),
                write_ts_ms: None,
                expiry_ms: None,
                version: &meta,
            })
            .await;
        match written {
            Ok(_) => {
                self.count(|c| c.stored += 1);
                Ok(())
            }
            Err(e) => {
                self.forget(target, seq, bytes);
                Err(StoreError::Internal(format!("storing a hint failed: {e}")))
            }
        }
    }

    fn count(&self, f: impl FnOnce(&mut HintCounters)) {
        let mut c = self.counters.get();
        f(&mut c);
        self.counters.set(c);
    }

    fn add(&self, target: NodeId, seq: u64, bytes: u64) {
        let p = &mut *self.pending.borrow_mut();
        let p = p.entry(target).or_default();
        p.hints += 1;
        p.bytes += bytes;
        self.index
            .borrow_mut()
            .entry(target)
            .or_default()
            .insert(seq);
    }

    fn forget(&self, target: NodeId, seq: u64, bytes: u64) {
        {
            let mut index = self.index.borrow_mut();
            if let Some(seqs) = index.get_mut(&target) {
                seqs.remove(&seq);
                if seqs.is_empty() {
                    index.remove(&target);
                }
            }
        }
        let mut pending = self.pending.borrow_mut();
        if let Some(p) = pending.get_mut(&target) {
            p.hints = p.hints.saturating_sub(1);
            p.bytes = p.bytes.saturating_sub(bytes);
            if p.hints == 0 {
                pending.remove(&target);
            }
        }
    }

    /// Hints pending, per target.
    #[must_use]
    pub fn pending(&self) -> BTreeMap<NodeId, Pending> {
        self.pending.borrow().clone()
    }

    /// When the oldest pending hint was stored (ms since the epoch), or a little earlier: a
    /// hint's sequence number holds that time in its top 48 bits (or an earlier hint's, when
    /// several share a millisecond).
    #[must_use]
    pub fn oldest_ms(&self) -> Option<u64> {
        self.index
            .borrow()
            .values()
            .filter_map(|seqs| seqs.first())
            .min()
            .map(|seq| (seq >> 16).max(1))
    }

    /// What was counted since the store opened.
    #[must_use]
    pub fn counters(&self) -> HintCounters {
        self.counters.get()
    }

    /// Records which targets are up now (`targets`): one not up before has just returned, and
    /// its hints' age counts from now. Call it every round, with or without hints due.
    pub fn targets_up(&self, targets: &HashSet<NodeId>) {
        let now = now_ms();
        let mut up = self.up_since.borrow_mut();
        up.retain(|t, _| targets.contains(t));
        for &t in targets {
            up.entry(t).or_insert(now);
        }
    }

    /// Hints for the `targets` — the targets up now — (at most `limit`), oldest first per
    /// target, found through the index: the hints of targets that are down are not read. A
    /// hint's age counts from the later of its creation and its target's return (the first
    /// call that listed the target after one that did not), so a long outage expires nothing:
    /// a hint is dropped only once its target has been back for longer than the age limit
    /// without taking it. Undecodable hints are dropped on the way.
    ///
    /// # Errors
    /// The engine's error when reading fails.
    pub async fn due(
        &self,
        targets: &HashSet<NodeId>,
        limit: usize,
    ) -> Result<Vec<Hint>, dynacore_engine::Error> {
        let mut out = Vec::new();
        let now = now_ms();
        let max_age = u64::try_from(self.limits.max_age.as_millis()).unwrap_or(u64::MAX);
        let oldest = now.saturating_sub(max_age);
        self.targets_up(targets);
        let up_since = self.up_since.borrow().clone();
        // Shared fairly: each target up gets its part of `limit` first.
        let wanted: Vec<(NodeId, Vec<u64>)> = {
            let index = self.index.borrow();
            let up: Vec<NodeId> = index
                .keys()
                .copied()
                .filter(|t| up_since.contains_key(t))
                .collect();
            let share = limit.div_ceil(up.len().max(1));
            up.into_iter()
                .map(|t| (t, index[&t].iter().copied().take(share).collect()))
                .collect()
        };
        for (target, seqs) in wanted {
            // Hints of a target that is down wait, however old.
            let Some(&back) = up_since.get(&target) else {
                continue;
            };
            for seq in seqs {
                if out.len() >= limit {
                    return Ok(out);
                }
                let hint_key = hint_key(target, seq);
                self.count(|c| c.read += 1);
                let Some(r) = self.shard.get_record(&hint_key).await? else {
                    // Deleted meanwhile (handed over by an earlier round still finishing).
                    continue;
                };
                let bytes = record_bytes(&r);
                let decoded = decode_record(&r).and_then(|(created_ms, key, version, values)| {
                    let object = object::from_parts(version, values).ok()?;
                    Some(Hint {
                        target,
                        key: key.to_vec(),
                        object,
                        created_ms,
                        hint_key,
                        bytes,
                    })
                });
                match decoded {
                    Some(h) if h.created_ms.max(back) >= oldest => out.push(h),
                    other => {
                        // Too old, or damaged: dropped.
                        if other.is_none() {
                            tracing::warn!(%target, "dropping a hint that does not decode");
                        }
                        self.shard.delete(&hint_key).await?;
                        self.forget(target, seq, bytes);
                        self.count(|c| c.dropped += 1);
                    }
                }
            }
        }
        Ok(out)
    }

    /// `hint` was handed over: deletes it.
    ///
    /// # Errors
    /// The engine's error when the delete fails (the hint stays and is handed over again).
    pub async fn done(&self, hint: &Hint) -> Result<(), dynacore_engine::Error> {
        self.shard.delete(&hint.hint_key).await?;
        let seq = split_hint_key(&hint.hint_key).map_or(0, |(_, seq)| seq);
        self.forget(hint.target, seq, hint.bytes);
        self.count(|c| c.replayed += 1);
        Ok(())
    }

    /// Closes the hint shard (its WAL synced).
    ///
    /// # Errors
    /// The engine's error.
    pub async fn close(&self) -> Result<(), dynacore_engine::Error> {
        self.shard.clone().close().await
    }
}

/// Paces hand-overs at `per_second`: call [`Pacer::wait`] before each one.
#[derive(Debug)]
pub struct Pacer {
    per_window: u32,
    window: Duration,
    used: u32,
    window_start: Instant,
}

/// The pacing window: a tenth of a second.
const WINDOW: Duration = Duration::from_millis(100);

impl Pacer {
    /// At most `per_second` a second (in tenths).
    #[must_use]
    pub fn new(per_second: u32) -> Pacer {
        Pacer {
            // Tenths of a second at rates of 10/s and more; below that, whole seconds
            // (`new` makes the window match).
            per_window: if per_second >= 10 {
                per_second / 10
            } else {
                per_second.max(1)
            },
            window: if per_second >= 10 {
                WINDOW
            } else {
                Duration::from_secs(1)
            },
            used: 0,
            window_start: Instant::now(),
        }
    }

    /// Waits until one more is allowed.
    pub async fn wait(&mut self) {
        if self.window_start.elapsed() >= self.window {
            self.window_start = Instant::now();
            self.used = 0;
        }
        if self.used >= self.per_window {
            let left = self.window.saturating_sub(self.window_start.elapsed());
            runtime::sleep(left).await;
            self.window_start = Instant::now();
            self.used = 0;
        }
        self.used += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynacore_engine::version::{ActorId, HlcTimestamp, VersionVector};
    use dynacore_engine::Sibling;

    fn object(v: &[u8]) -> Object {
        Object::update(
            &VersionVector::new(),
            Sibling {
                value: Some(v.to_vec()),
                hlc: HlcTimestamp::from_parts(now_ms(), 0),
                expiry_ms: None,
            },
            None,
            ActorId::new(1, 0),
        )
        .expect("object")
    }

    /// A disk-backed directory for a hint shard, and the shard's path in it.
    fn hint_dir() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::Builder::new()
            .prefix("dynacore-hints-")
            .tempdir_in(crate::test_util::disk_tmp())
            .expect("dir");
        let path = dir.path().join("hints-0");
        (dir, path)
    }

    /// Limits of `bytes_per_target` and `max_age`, at 1,000 a second.
    fn limits(bytes_per_target: u64, max_age: Duration) -> HintLimits {
        HintLimits {
            bytes_per_target,
            max_age,
            replay_per_second: 1000,
        }
    }

    async fn open_store(path: &std::path::Path, limits: HintLimits) -> HintStore {
        HintStore::open(
            path.to_path_buf(),
            ShardId(0),
            dynacore_engine::Durability::Sync,
            limits,
        )
        .await
        .expect("open")
    }

    #[test]
    fn hints_survive_a_reopen_are_bounded_and_are_deleted_once_handed_over() {
        let (_dir, path) = hint_dir();
        let limits = limits(4096, Duration::from_secs(3600));
        crate::test_util::on_test_executor(move || async move {
            let store = open_store(&path, limits).await;
            for i in 0..3u8 {
                store
                    .store(NodeId(7), &[b'k', i], &object(&[i; 100]))
                    .await
                    .expect("store");
            }
            store
                .store(NodeId(8), b"other", &object(b"x"))
                .await
                .expect("store");
            // Past the bound for node 7: refused and counted.
            let big = vec![1u8; 5000];
            assert!(matches!(
                store.store(NodeId(7), b"big", &object(&big)).await,
                Err(StoreError::Unavailable(_))
            ));
            assert_eq!(store.counters().dropped, 1);
            assert_eq!(store.pending()[&NodeId(7)].hints, 3);
            store.close().await.expect("close");
            drop(store);
            // After a restart, the same hints are pending.
            let store = open_store(&path, limits).await;
            assert_eq!(store.pending()[&NodeId(7)].hints, 3);
            assert_eq!(store.pending()[&NodeId(8)].hints, 1);
            let due = store
                .due(&HashSet::from([NodeId(7)]), 100)
                .await
                .expect("due");
            assert_eq!(due.len(), 3);
            assert!(due.iter().all(|h| h.target == NodeId(7)));
            let mut keys: Vec<_> = due.iter().map(|h| h.key.clone()).collect();
            keys.sort();
            assert_eq!(
                keys,
                vec![b"k\0".to_vec(), b"k\x01".to_vec(), b"k\x02".to_vec()]
            );
            assert_eq!(due[0].object.size(), 1);
            for h in &due {
                store.done(h).await.expect("done");
            }
            assert!(!store.pending().contains_key(&NodeId(7)));
            assert_eq!(store.counters().replayed, 3);
            let again = store
                .due(&HashSet::from([NodeId(7)]), 100)
                .await
                .expect("due");
            assert!(again.is_empty());
            store.close().await.expect("close");
        });
    }

    #[test]
    fn due_hints_are_found_through_the_index_oldest_first_without_reading_a_down_targets() {
        let (_dir, path) = hint_dir();
        crate::test_util::on_test_executor(move || async move {
            let store = open_store(&path, limits(1 << 20, Duration::from_secs(3600))).await;
            // Node 7 is down with many hints; node 8 is up with three.
            for i in 0..200u8 {
                store
                    .store(NodeId(7), &[b'd', i], &object(&[i; 50]))
                    .await
                    .expect("store");
            }
            for i in 0..3u8 {
                store
                    .store(NodeId(8), &[b'u', i], &object(&[i]))
                    .await
                    .expect("store");
            }
            let up: HashSet<NodeId> = [NodeId(8)].into();
            let due = store.due(&up, 1024).await.expect("due");
            let keys: Vec<Vec<u8>> = due.iter().map(|h| h.key.clone()).collect();
            assert_eq!(
                keys,
                vec![b"u\0".to_vec(), b"u\x01".to_vec(), b"u\x02".to_vec()]
            );
            assert_eq!(
                store.counters().read,
                3,
                "only the hints of the target up are read"
            );
            // The same after a reopen (the index is rebuilt).
            store.close().await.expect("close");
            drop(store);
            let store = open_store(&path, limits(1 << 20, Duration::from_secs(3600))).await;
            let due = store.due(&up, 2).await.expect("due");
            assert_eq!(due.len(), 2);
            assert_eq!(store.counters().read, 2);
            for h in &due {
                store.done(h).await.expect("done");
            }
            assert_eq!(store.pending()[&NodeId(8)].hints, 1);
            let due = store.due(&up, 1024).await.expect("due");
            assert_eq!(due.len(), 1);
            assert_eq!(due[0].key, b"u\x02".to_vec());
            store.close().await.expect("close");
        });
    }

    #[test]
    fn hints_age_from_their_targets_return() {
        let (_dir, path) = hint_dir();
        crate::test_util::on_test_executor(move || async move {
            let limits = limits(1 << 20, Duration::from_millis(1));
            let store = open_store(&path, limits).await;
            store
                .store(NodeId(7), b"k", &object(b"v"))
                .await
                .expect("store");
            store
                .store(NodeId(8), b"k", &object(b"v"))
                .await
                .expect("store");
            // Node 8 stays down far longer than the age limit: its hint is kept, since a hint's
            // age counts from its target's return (a long outage must not expire them).
            runtime::sleep(Duration::from_millis(5)).await;
            let due = store
                .due(&HashSet::from([NodeId(7)]), 100)
                .await
                .expect("due");
            assert_eq!(due.len(), 1, "node 7 just came back: its hint is due");
            runtime::sleep(Duration::from_millis(5)).await;
            // Node 7 has been up longer than the limit and its hint was not handed over.
            let due = store
                .due(&HashSet::from([NodeId(7)]), 100)
                .await
                .expect("due");
            assert!(due.is_empty());
            assert_eq!(store.counters().dropped, 1);
            assert_eq!(
                store.pending().keys().copied().collect::<Vec<_>>(),
                vec![NodeId(8)]
            );
            // Node 8 returns: its hint, stored long ago, is due.
            let due = store
                .due(&HashSet::from([NodeId(8)]), 100)
                .await
                .expect("due");
            assert_eq!(due.len(), 1);
            assert_eq!(due[0].target, NodeId(8));
            store.close().await.expect("close");
        });
    }

    #[test]
    fn hint_values_round_trip_and_damage_is_refused() {
        let v = encode(5, b"key", b"ver", b"vals").expect("fits");
        assert_eq!(
            decode(&v),
            Some((5, &b"key"[..], &b"ver"[..], &b"vals"[..]))
        );
        for cut in 0..v.len() - 4 {
            // Cut inside the header or the key/version: refused, never a panic.
            let _ = decode(&v[..cut]);
        }
        assert_eq!(decode(&v[..9]), None);
        assert_eq!(split_hint_key(&[0u8; 15]), None);
    }

    #[test]
    fn a_hint_holds_any_value_a_client_may_write() {
        // A 10 MiB value (the largest a client may write) plus the hint's own fields must still
        // be one record of the hint shard.
        let (_dir, path) = hint_dir();
        crate::test_util::on_test_executor(move || async move {
            let limits = limits(64 << 20, Duration::from_secs(3600));
            let store = open_store(&path, limits).await;
            let big = object(&vec![0x5a; dynacore_engine::VALUE_BYTES_MAX]);
            let key = vec![b'k'; dynacore_engine::KEY_BYTES_MAX];
            store
                .store(NodeId(7), &key, &big)
                .await
                .expect("a 10 MiB hint");
            store
                .store(NodeId(7), b"small", &object(b"v"))
                .await
                .expect("a small hint");
            // A hint in the layout before (everything in the value) is still read.
            let (version, values) = object::to_parts(&object(b"old")).expect("parts");
            let old = encode(now_ms(), b"old", &version, &values).expect("fits");
            let mut old_key = [0u8; 16];
            old_key[..8].copy_from_slice(&7u64.to_be_bytes());
            old_key[8..].copy_from_slice(&1u64.to_be_bytes());
            store.shard.put(&old_key, &old).await.expect("an old hint");
            // (Such hints are on disk when the store opens.)
            store.close().await.expect("close");
            drop(store);
            let store = open_store(&path, limits).await;
            let due = store
                .due(&HashSet::from([NodeId(7)]), 100)
                .await
                .expect("due");
            assert_eq!(due.len(), 3);
            assert!(due.iter().any(|h| h.key == b"old"));
            let back = due.iter().find(|h| h.key == key).expect("the big hint");
            assert!(back.object.equal(&big), "handed over as stored");
            store.close().await.expect("close");
        });
    }
}
