//! A shard: one core's storage. WAL, memtables, SSTables and manifest, driven from one glommio
//! executor with no locks.
//!
//! # Write path
//! `write` validates, waits for room (a bounded number of immutable memtables and a bounded WAL
//! buffer), then, with no `await` in between, takes the next sequence number, queues the record
//! in the WAL and inserts it in the active memtable. With `Sync` durability it then waits for the
//! group commit that covers it. Because queueing and inserting happen together, every record the
//! WAL holds is in a memtable when that memtable is frozen, so a flush covers a WAL prefix.
//!
//! # Read path
//! A read sees the snapshot of durable writes (`Sync`) or of queued writes (otherwise): active
//! memtable, then immutable memtables newest first, then SSTables newest first, skipping tables
//! whose Bloom filter rules the key out.
//!
//! # Flush
//! A full memtable is frozen and a background task in a low-priority queue writes it as an
//! SSTable once all its records are durable, syncs file and directory, records the table in the
//! manifest, and only then deletes the WAL segments it covers. Values over
//! `blob_threshold_bytes` go to a new blob file (`blob.rs`), synced before the table, and the
//! table holds references to them.
//!
//! # Value log
//! The blob files live beside the tables; the manifest does not list them. A blob file is live
//! while a live table points into it: each table records how many bytes of which files its
//! records point at. After a compaction, files nothing points at are deleted (and at open, any
//! such file a crash left). Reads resolve references before a record leaves the shard.
//!
//! # Files
//!
//! This file holds the shard's state, the write and read paths and close; `open` (open and
//! recovery), `flush` (memtable to SSTable), `compact` (the compaction loop and retiring
//! replaced files) and `objects` (versioned objects under the per-key lock) add to
//! [`Shard`]'s methods.
//!
//! INVARIANT: the shard's blob set holds every file its tables point at, at every moment; a
//! read that took the tables and the blob set together can resolve every reference.
//!
//! **Architecture Invariant:** a `Shard` lives on one executor thread; it is `!Send` and is never
//! shared across threads.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::blob::{self, BlobHandles, BlobMeta, BlobSet, BlobWriter};
use crate::compaction::worker::{MergeJob, MergeStats, Pacer, Relocation};
use crate::compaction::{self, BlobUsage, CompactionOptions, TombstoneGate};
use crate::error::{Error, Result};
use crate::manifest::{Manifest, RunState};
use crate::memtable::Memtable;
use crate::object::{self, KeyGuard, KeyLocks, Object, Sibling};
use crate::record::{validate_key, Mutation, Record, RecordRef, SeqNo, ShardId, Token};
use crate::scan::{MergeCursor, ShardScan};
use crate::sstable::{self, bloom, BlockCache, SsTable, TableBuilder, TableId};
use crate::timing::StageTimings;
use crate::version::{
    hlc::MAX_OFFSET_MS_DEFAULT, ActorId, ClockHandle, Hlc, HlcTimestamp, PhysicalClock,
    VersionVector,
};
use crate::wal::{Durability, Wal, WalOptions, WalStats};
use dynacore_runtime::{self as runtime, Latency, TaskQueueHandle};

mod compact;
mod flush;
mod objects;
mod open;
mod snapshot;
mod tree;
mod tree_state;

use crate::hashtree::record_state;
use tree_state::{OldState, Trees};
pub use tree_state::{TreeCheck, TreeStatus};

/// How far a durable counter ceiling reaches past the counters minted: one manifest write per
/// this many dots at most, and the jump a key's counter may make after a restart.
const COUNTER_LEASE: u64 = 1 << 16;

/// Test only: `DYNACORE_TEST_REUSE_DOTS` set in a debug build turns the protections of
/// `docs/protocol.md` "Actor epochs" off — no counter floor for keys without a live value of
/// the replica's own, no new epoch after an unclean stop — so that the history checker can
/// show it notices the lost writes dot reuse causes. Release builds ignore it.
pub(crate) fn reuse_dots_for_tests() -> bool {
    static REUSE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REUSE.get_or_init(|| {
        let on = cfg!(debug_assertions) && std::env::var_os("DYNACORE_TEST_REUSE_DOTS").is_some();
        if on {
            tracing::warn!("DYNACORE_TEST_REUSE_DOTS: dot reuse re-enabled for a test");
        }
        on
    })
}

/// A new actor epoch: above `after`, and otherwise the clock's milliseconds, so that a node
/// restarted on an empty directory (which remembers no epoch) still draws one it never had.
fn next_actor_epoch(after: u64, now_ms: u64) -> u64 {
    // Below the transaction family's bit (see `TRANSACTION_EPOCH_BIT`).
    after
        .saturating_add(1)
        .max(now_ms)
        .min(crate::version::TRANSACTION_EPOCH_BIT - 1)
}

/// How a shard is opened.
#[derive(Clone, Debug)]
pub struct ShardOptions {
    /// The shard's data directory (created if missing).
    pub dir: PathBuf,
    /// The shard's id, recorded in its files.
    pub shard_id: ShardId,
    /// When writes are acknowledged.
    pub durability: Durability,
    /// Memtable size at which it is frozen and flushed.
    pub memtable_bytes_max: usize,
    /// Frozen memtables waiting for flush after which writes wait.
    pub immutable_memtables_max: usize,
    /// Size of a WAL segment file.
    pub wal_segment_bytes: u64,
    /// With `Sync` durability, how long the WAL writer lets a batch gather before it writes and
    /// syncs it (zero, the default: group commit takes what is pending at once).
    pub wal_group_commit_window: std::time::Duration,
    /// Bytes of data blocks the shard keeps cached.
    pub block_cache_bytes: u64,
    /// Bloom filter bits per key.
    pub bloom_bits_per_key: u32,
    /// The wall clock for write timestamps, expiry and the HLC (tests inject one).
    pub clock: ClockHandle,
    /// Compaction tuning.
    pub compaction: CompactionOptions,
    /// Asked before compaction drops a tombstone past its grace period (`None`: the grace
    /// period alone decides). The hook for anti-entropy: "dropped once repair covered it".
    pub tombstone_gate: Option<TombstoneGate>,
    /// Values longer than this are stored in the value log (blob files) by flushes, so that
    /// compaction copies a 20-byte reference instead of the value (`None`: values stay in the
    /// tables).
    pub blob_threshold_bytes: Option<usize>,
    /// Blob files the shard keeps open at once; others are opened when a read needs them.
    pub blob_open_files_max: usize,
    /// Whether compaction drops retired actor epochs from versioned objects' blobs (under the
    /// purge rules); off for a shard whose version blobs are not objects (the hint store).
    pub retire_actor_epochs: bool,
    /// Whether the shard keeps an anti-entropy hash tree of its keys, and how (`None`: no tree;
    /// the node keeps one for each data shard).
    pub hash_tree: Option<crate::hashtree::TreeOptions>,
}

impl ShardOptions {
    /// The defaults: `Sync` durability, 64 MiB memtables, 64 MiB WAL segments, 256 MiB block
    /// cache, 14 Bloom bits per key, values over 64 KiB in the value log.
    #[must_use]
    pub fn new(dir: impl Into<PathBuf>, shard_id: ShardId) -> Self {
        ShardOptions {
            dir: dir.into(),
            shard_id,
            durability: Durability::Sync,
            memtable_bytes_max: 64 << 20,
            immutable_memtables_max: 4,
            wal_segment_bytes: 64 << 20,
            wal_group_commit_window: std::time::Duration::ZERO,
            block_cache_bytes: 256 << 20,
            bloom_bits_per_key: bloom::BITS_PER_KEY_DEFAULT,
            clock: ClockHandle::system(),
            compaction: CompactionOptions::default(),
            tombstone_gate: None,
            blob_threshold_bytes: Some(64 << 10),
            blob_open_files_max: 256,
            retire_actor_epochs: true,
            hash_tree: None,
        }
    }
}

/// A point-in-time view of a shard's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Accounted bytes of the active memtable.
    pub memtable_bytes: usize,
    /// Frozen memtables not yet flushed.
    pub immutable_memtables: usize,
    /// Live SSTables.
    pub tables: usize,
    /// Bytes of live SSTables.
    pub table_bytes: u64,
    /// Memtables flushed since open.
    pub flushes: u64,
    /// Compactions completed since open.
    pub compactions: u64,
    /// Whether a compaction is running now.
    pub compacting: bool,
    /// Bytes of tables written by compactions since open.
    pub compaction_bytes_written: u64,
    /// Bytes of tables written by flushes since open.
    pub flush_bytes_written: u64,
    /// Writes that waited because compaction was behind (too many tables), since open.
    pub write_stalls: u64,
    /// Every record at or below this is in an SSTable.
    pub flushed_seq: SeqNo,
    /// The last sequence number handed out.
    pub last_seq: SeqNo,
    /// WAL statistics since open.
    pub wal: WalStats,
    /// Bytes in the block cache.
    pub block_cache_bytes: u64,
    /// Block lookups served from the cache since open.
    pub block_cache_hits: u64,
    /// Block lookups that read from disk since open.
    pub block_cache_misses: u64,
    /// Live blob files (the value log).
    pub blob_files: usize,
    /// Bytes of live blob files.
    pub blob_file_bytes: u64,
    /// Bytes of blob entries that live tables point at (the rest of `blob_file_bytes` is
    /// garbage waiting for collection, or headers).
    pub blob_live_bytes: u64,
    /// Bytes of blob files written by flushes since open.
    pub blob_bytes_written: u64,
    /// Bytes of blob entries rewritten by garbage collection since open.
    pub blob_bytes_relocated: u64,
    /// Blob files deleted since open.
    pub blob_files_deleted: u64,
    /// Times a blob file was opened for reading since open (more than the live files means the
    /// open-file limit evicts handles).
    pub blob_file_opens: u64,
    /// Tombstones and expired values dropped by compactions since open.
    pub purged: u64,
    /// Tombstones and expired values past their grace that compactions kept because the gate
    /// refused (their range was not repaired since), since open.
    pub kept_by_gate: u64,
    /// Keys dropped by cleanups since open.
    pub cleaned_up: u64,
    /// The anti-entropy hash tree, if the shard keeps one.
    pub tree: Option<TreeStatus>,
    /// Durations of the engine's stages since open.
    pub timings: StageTimings,
}

#[derive(Debug)]
struct State {
    active: Memtable,
    /// Frozen memtables, oldest first.
    immutables: VecDeque<Rc<Memtable>>,
    /// Live tables, oldest first; replaced (copy on write) so reads can hold a snapshot.
    tables: Rc<Vec<Rc<SsTable>>>,
    /// Open blob files; replaced together with `tables`.
    blobs: Rc<BlobSet>,
    /// Blob files in which garbage collection met a value it could not read: not chosen again
    /// (until the shard reopens).
    blob_gc_skip: std::collections::HashSet<u64>,
    blob_bytes_written: u64,
    blob_bytes_relocated: u64,
    blob_files_deleted: u64,
    last_seq: SeqNo,
    /// The manifest as last stored (with the actor epoch and the durable counter ceiling).
    manifest: Manifest,
    /// No dot of the current actor epoch has a counter above this (after a restart in the same
    /// epoch: the ceiling, since any counter up to it may have been minted).
    minted_high: u64,
    /// The next table id to hand out. Kept apart from `manifest` because ids are handed out
    /// while a manifest write is in flight; each stored manifest records the value at its
    /// making.
    next_table_id: u64,
    flushes: u64,
    compactions: u64,
    compaction_bytes_written: u64,
    flush_bytes_written: u64,
    write_stalls: u64,
    purged: u64,
    kept_by_gate: u64,
    compactor_running: bool,
    /// A full merge was asked for ([`Shard::compact_all`]) and has not started yet.
    major_requested: bool,
    /// A cleanup waiting for the compactor ([`Shard::cleanup`]).
    cleanup_requested: Option<CleanupJob>,
    /// The last cleanup pass's outcome, by its job's generation.
    cleanup_outcome: Option<(u64, Result<MergeStats>)>,
    cleanup_generation: u64,
    cleaned_up: u64,
    /// Compactions whose input tables are still being deleted.
    retiring: usize,
    /// WAL segments holding only records at or below this have been deleted.
    wal_released_seq: SeqNo,
    flusher_running: bool,
    flush_error: Option<String>,
    closing: bool,
    /// A hash tree rebuild scan is running (close waits for it to stop).
    tree_rebuilding: bool,
    waiters: Vec<Waker>,
}

/// What a snapshot of a shard holds ([`Shard::snapshot_into`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotFiles {
    /// SSTables linked.
    pub tables: usize,
    /// Blob files linked.
    pub blob_files: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// A cleanup waiting for the compactor (see [`Shard::cleanup`]).
struct CleanupJob {
    keep: Rc<dyn Fn(Token) -> bool>,
    still_valid: Rc<dyn Fn() -> Result<(), String>>,
    /// Tells this job's outcome from an earlier one's.
    generation: u64,
}

impl std::fmt::Debug for CleanupJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CleanupJob")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// What [`Shard::cleanup`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanupStats {
    /// Keys dropped, with all their versions.
    pub keys_dropped: u64,
    /// Merges of every table it took.
    pub passes: u32,
    /// Bytes of tables before (after the flush).
    pub table_bytes_before: u64,
    /// Bytes of tables after.
    pub table_bytes_after: u64,
}

impl State {
    fn wake_waiters(&mut self) {
        for w in self.waiters.drain(..) {
            w.wake();
        }
    }
}

#[derive(Debug)]
struct Inner {
    options: ShardOptions,
    wal: Wal,
    state: RefCell<State>,
    cache: Rc<BlockCache>,
    flush_queue: TaskQueueHandle,
    compact_queue: TaskQueueHandle,
    /// Keys with a versioned read-modify-write in progress.
    key_locks: KeyLocks,
    /// Serialises manifest changes (flush and compaction), under the empty key.
    manifest_lock: KeyLocks,
    /// Stamps versioned writes.
    hlc: Hlc<ClockHandle>,
    /// Counts foreground operations, so compaction can tell whether requests are arriving.
    activity: Rc<Cell<u64>>,
    /// The number of live tables, for the compaction queue's shares.
    table_count: Rc<Cell<usize>>,
    /// The anti-entropy hash tree, if the shard keeps one.
    trees: Option<RefCell<Trees>>,
    /// How long writes waited and flushes and compactions took.
    timings: RefCell<StageTimings>,
    /// Held for the shard's life: a second opener of the directory is refused.
    _lock: std::fs::File,
}

/// One core's storage engine. Cheap to clone (a handle); all clones share one shard.
///
/// It never leaves its executor's thread (Architecture Invariant, kept by the compiler):
///
/// ```compile_fail
/// fn sendable<T: Send>() {}
/// sendable::<dynacore_engine::Shard>();
/// ```
///
/// ```compile_fail
/// fn shareable<T: Sync>() {}
/// shareable::<dynacore_engine::Shard>();
/// ```
#[derive(Clone, Debug)]
pub struct Shard {
    inner: Rc<Inner>,
}

impl Shard {
    /// The shard's directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.inner.options.dir
    }

    /// Stores `value` under `key`. Returns the write's sequence number once it is acknowledged
    /// under the shard's durability mode.
    ///
    /// # Errors
    /// [`Error::Limit`] for bad input; [`Error::WalFenced`] after a log failure; [`Error::Closed`].
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<SeqNo> {
        self.write(Mutation::put(key, value)).await
    }

    /// Writes a tombstone for `key`.
    ///
    /// # Errors
    /// As [`Shard::put`].
    pub async fn delete(&self, key: &[u8]) -> Result<SeqNo> {
        self.write(Mutation::delete(key)).await
    }

    /// Applies one mutation (value or tombstone, with optional timestamp, expiry and version).
    ///
    /// # Errors
    /// As [`Shard::put`].
    pub async fn write(&self, m: Mutation<'_>) -> Result<SeqNo> {
        m.validate()?;
        if self.inner.trees.is_none() {
            let seq = self.write_inner(m, None).await?;
            self.durable(seq).await?;
            return Ok(seq);
        }
        // The tree's change needs the key's state before the write: no other write of the key
        // may come in between.
        let held = self.inner.key_locks.lock(m.key).await;
        let written = self.write_inner(m, None).await;
        self.release_when_durable(held).await?;
        written
    }

    /// Releases a key's lock, then waits until everything applied before the release is
    /// durable.
    ///
    /// Early lock release: a write of a key holds its lock while it reads the key's state and
    /// applies its record (WAL queue and memtable), not while the WAL syncs, so that writes of
    /// a hot key join one group commit instead of queueing for one sync each (YCSB A's zipfian
    /// update p99 was 22–25 ms with the lock held to the sync, 3.3 ms for uniform keys). The
    /// next holder reads the applied, maybe not yet durable, state ([`Shard::lookup_applied`]).
    /// That is sound because the WAL makes a record durable only after every earlier one, and
    /// nothing done under the lock is answered before this wait: not a write, and not what was
    /// read either (a failed condition, a merge that changed nothing).
    pub(super) async fn release_when_durable(&self, held: KeyGuard<'_>) -> Result<()> {
        let applied = self.inner.state.borrow().last_seq;
        drop(held);
        self.durable(applied).await
    }

    /// Waits until `seq` is durable (at once unless the durability is `Sync`).
    pub(super) async fn durable(&self, seq: SeqNo) -> Result<()> {
        let inner = &*self.inner;
        if inner.wal.durability() != Durability::Sync {
            return Ok(());
        }
        let waited = Instant::now();
        let durable = inner.wal.wait_durable(seq).await;
        inner.timings.borrow_mut().wal_wait.record(waited.elapsed());
        if let Err(e) = durable {
            if let Some(trees) = &inner.trees {
                // The tree holds a write that was not acknowledged; the shard is fenced.
                trees.borrow_mut().invalidate();
            }
            return Err(e);
        }
        Ok(())
    }

    /// [`Shard::write`] of a validated mutation, under the key's lock if the shard keeps a tree,
    /// up to its record applied (queued in the WAL and in the memtable): the caller waits for
    /// it to be durable ([`Shard::durable`], [`Shard::release_when_durable`]).
    /// `old` is the key's state before the write, as the caller read it (looked up here when
    /// `None` or out of date).
    pub(super) async fn write_inner(
        &self,
        m: Mutation<'_>,
        mut old: Option<OldState>,
    ) -> Result<SeqNo> {
        let inner = &*self.inner;
        inner.activity.set(inner.activity.get() + 1);
        let admission = Instant::now();
        loop {
            WaitState::new(inner, |s: &State| {
                s.immutables.len() < inner.options.immutable_memtables_max
            })
            .await?;
            self.stall_while_compaction_is_behind().await?;
            inner.wal.reserve().await?;
            if let Some(trees) = &inner.trees {
                // A compaction that purged the key since it was read changed its state.
                let epoch = trees.borrow().purge_epoch();
                if old.is_none_or(|o| o.epoch != epoch) {
                    old = Some(self.old_state(m.key).await?);
                    continue;
                }
            }
            break;
        }
        inner
            .timings
            .borrow_mut()
            .write_admission
            .record(admission.elapsed());
        // INVARIANT: no await from here until the record is both queued and in the memtable.
        let (seq, freeze) = {
            let mut s = inner.state.borrow_mut();
            if s.closing {
                return Err(Error::Closed);
            }
            let seq = SeqNo(s.last_seq.0 + 1);
            let rec = RecordRef {
                key: m.key,
                value: m.value,
                seq,
                write_ts_ms: m
                    .write_ts_ms
                    .unwrap_or_else(|| inner.options.clock.now_ms()),
                expiry_ms: m.expiry_ms,
                version: m.version,
                blob: false,
            };
            inner.wal.append(&rec)?;
            s.last_seq = seq;
            let token = Token::of(m.key);
            s.active.insert(token, &rec);
            if let (Some(trees), Some(old)) = (&inner.trees, old) {
                let new = crate::hashtree::key_state(
                    m.key,
                    m.value.is_none(),
                    rec.write_ts_ms,
                    m.expiry_ms,
                    m.version,
                );
                trees
                    .borrow_mut()
                    .on_write(token, m.key, old.hash ^ new.hash);
            }
            (seq, s.active.bytes() >= inner.options.memtable_bytes_max)
        };
        if freeze {
            self.freeze();
        }
        Ok(seq)
    }

    /// Makes a write wait while the shard has more tables than `tables_stall` and the compactor
    /// is working them down (never when it is not running: then waiting would not end).
    async fn stall_while_compaction_is_behind(&self) -> Result<()> {
        let inner = &*self.inner;
        let stall = inner.options.compaction.tables_stall;
        {
            let mut s = inner.state.borrow_mut();
            if s.tables.len() <= stall || !s.compactor_running {
                return Ok(());
            }
            s.write_stalls += 1;
        }
        tracing::debug!(
            tables = inner.state.borrow().tables.len(),
            "write stalled until compaction catches up"
        );
        WaitState::new(inner, |s: &State| {
            s.tables.len() <= stall || !s.compactor_running
        })
        .await
    }

    /// The highest sequence number a read may see.
    fn snapshot(&self) -> SeqNo {
        match self.inner.wal.durability() {
            Durability::Sync => self.inner.wal.durable_seq(),
            _ => self.inner.state.borrow().last_seq,
        }
    }

    /// The newest version of `key` (tombstones and expired values included), or `None` if the
    /// shard holds none.
    ///
    /// # Errors
    /// [`Error::Limit`] for a bad key; [`Error::ChecksumMismatch`] / [`Error::Corruption`] if a
    /// block on the way is damaged (never wrong bytes); I/O errors.
    pub async fn get_record(&self, key: &[u8]) -> Result<Option<Record>> {
        let found = self.lookup(key).await?;
        Self::resolved(found).await
    }

    /// [`Shard::get_record`] of every applied record, durable or not (under the key's lock).
    pub(super) async fn get_record_applied(&self, key: &[u8]) -> Result<Option<Record>> {
        let found = self.lookup_applied(key).await?;
        Self::resolved(found).await
    }

    async fn resolved(found: Option<(Record, Option<Rc<BlobSet>>)>) -> Result<Option<Record>> {
        let Some((mut r, blobs)) = found else {
            return Ok(None);
        };
        if let Some(blobs) = blobs {
            blobs.resolve(&mut r, true).await?;
        }
        Ok(Some(r))
    }

    /// The newest version of `key` as stored, with the blob set to resolve it through if it
    /// came from a table (its value may still be a value-log reference).
    pub(super) async fn lookup(&self, key: &[u8]) -> Result<Option<(Record, Option<Rc<BlobSet>>)>> {
        self.lookup_at(key, self.snapshot()).await
    }

    /// [`Shard::lookup`] of every applied record, durable or not: what a write under the key's
    /// lock builds on (see [`Shard::release_when_durable`]).
    pub(super) async fn lookup_applied(
        &self,
        key: &[u8],
    ) -> Result<Option<(Record, Option<Rc<BlobSet>>)>> {
        let applied = self.inner.state.borrow().last_seq;
        self.lookup_at(key, applied).await
    }

    /// The newest version of `key` at or below `snapshot`.
    async fn lookup_at(
        &self,
        key: &[u8],
        snapshot: SeqNo,
    ) -> Result<Option<(Record, Option<Rc<BlobSet>>)>> {
        validate_key(key)?;
        self.inner.activity.set(self.inner.activity.get() + 1);
        let token = Token::of(key);
        let (tables, blobs) = {
            let s = self.inner.state.borrow();
            if let Some(r) = s.active.get(token, key, snapshot) {
                return Ok(Some((r, None)));
            }
            for m in s.immutables.iter().rev() {
                if let Some(r) = m.get(token, key, snapshot) {
                    return Ok(Some((r, None)));
                }
            }
            (s.tables.clone(), s.blobs.clone())
        };
        for table in tables.iter().rev() {
            if let Some(r) = table.get(token, key, &self.inner.cache).await? {
                return Ok(Some((r, Some(blobs))));
            }
        }
        Ok(None)
    }

    /// The live value of `key`: `None` if absent, deleted or expired.
    ///
    /// # Errors
    /// As [`Shard::get_record`].
    pub async fn get(&self, key: &[u8]) -> Result<Option<Record>> {
        let Some((mut r, blobs)) = self.lookup(key).await? else {
            return Ok(None);
        };
        // Read the clock only for a record that has an expiry; read the value log only for a
        // live value.
        let live = r.value.is_some()
            && r.expiry_ms
                .is_none_or(|_| r.is_live_at(self.inner.options.clock.now_ms()));
        if !live {
            return Ok(None);
        }
        if let Some(blobs) = blobs {
            blobs.resolve(&mut r, true).await?;
        }
        Ok(Some(r))
    }

    /// A scan of the live records whose tokens are in `[start, end]`, in `(token, key)` order,
    /// as of now (later writes are not seen).
    #[must_use]
    pub fn scan(&self, start: Token, end: Token) -> ShardScan {
        let snapshot = self.snapshot();
        let s = self.inner.state.borrow();
        let mut runs = Vec::with_capacity(1 + s.immutables.len());
        runs.push(s.active.range_at(start, end, snapshot));
        for m in s.immutables.iter().rev() {
            runs.push(m.range_at(start, end, snapshot));
        }
        ShardScan::new(
            MergeCursor::new(runs, &s.tables, self.inner.cache.clone(), start, end),
            s.blobs.clone(),
            self.inner.options.clock.now_ms(),
        )
    }

    /// Statistics.
    #[must_use]
    pub fn stats(&self) -> ShardStats {
        let s = self.inner.state.borrow();
        ShardStats {
            memtable_bytes: s.active.bytes(),
            immutable_memtables: s.immutables.len(),
            tables: s.tables.len(),
            table_bytes: s.tables.iter().map(|t| t.size_bytes()).sum(),
            flushes: s.flushes,
            compactions: s.compactions,
            compacting: s.compactor_running,
            compaction_bytes_written: s.compaction_bytes_written,
            flush_bytes_written: s.flush_bytes_written,
            write_stalls: s.write_stalls,
            flushed_seq: s.manifest.flushed_seq,
            last_seq: s.last_seq,
            wal: self.inner.wal.stats(),
            block_cache_bytes: self.inner.cache.bytes(),
            block_cache_hits: self.inner.cache.hits(),
            block_cache_misses: self.inner.cache.misses(),
            blob_files: s.blobs.len(),
            blob_file_bytes: s
                .blobs
                .iter()
                .map(|f| f.entry_bytes + blob::FIRST_ENTRY_OFFSET)
                .sum(),
            // Every reference points into a file of the set (the blob set's invariant).
            blob_live_bytes: s
                .tables
                .iter()
                .flat_map(|t| t.blob_refs().iter().map(|&(_, bytes)| bytes))
                .sum(),
            blob_bytes_written: s.blob_bytes_written,
            blob_bytes_relocated: s.blob_bytes_relocated,
            blob_files_deleted: s.blob_files_deleted,
            blob_file_opens: s.blobs.handles().opens(),
            purged: s.purged,
            kept_by_gate: s.kept_by_gate,
            cleaned_up: s.cleaned_up,
            tree: self.tree_status(),
            timings: *self.inner.timings.borrow(),
        }
    }

    /// Stops accepting writes, lets a running flush finish, then writes, syncs and closes the
    /// WAL. Other handles to the shard see [`Error::Closed`] from then on.
    ///
    /// # Errors
    /// [`Error::WalFenced`] if the final sync failed.
    pub async fn close(self) -> Result<()> {
        {
            let mut s = self.inner.state.borrow_mut();
            s.closing = true;
            s.wake_waiters();
        }
        WaitState {
            inner: &self.inner,
            ready: |s: &State| {
                !s.flusher_running && !s.compactor_running && s.retiring == 0 && !s.tree_rebuilding
            },
            fail_on_error: false,
        }
        .await
        .expect("INVARIANT: a wait with fail_on_error unset only ends when ready");
        if let Some(reason) = &self.inner.state.borrow().flush_error {
            tracing::warn!(%reason, "closing a shard whose flush failed");
        }
        // Other handles may still exist: they see `Closed` from now on.
        self.inner.wal.shutdown().await?;
        // Every acknowledged write is durable now: the next open may keep the actor epoch.
        let _held = self.inner.manifest_lock.lock(&[]).await;
        let mut m = self.inner.state.borrow().manifest.clone();
        m.run = RunState::Clean;
        m.generation += 1;
        m.store(&self.inner.options.dir).await?;
        let generation = m.generation;
        self.inner.state.borrow_mut().manifest = m;
        self.save_tree(generation).await;
        Ok(())
    }
}

/// Waits for a condition on the shard's state; fails if a flush failed or the WAL is fenced.
struct WaitState<'a, F> {
    inner: &'a Inner,
    ready: F,
    /// Whether a failure (fenced WAL, failed flush, closing shard) ends the wait with an error;
    /// when false only `ready` ends it.
    fail_on_error: bool,
}

impl<'a, F> WaitState<'a, F> {
    fn new(inner: &'a Inner, ready: F) -> Self {
        WaitState {
            inner,
            ready,
            fail_on_error: true,
        }
    }
}

impl<F: Fn(&State) -> bool + Unpin> Future for WaitState<'_, F> {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let mut s = self.inner.state.borrow_mut();
        if (self.ready)(&s) {
            return Poll::Ready(Ok(()));
        }
        if !self.fail_on_error {
            s.waiters.push(cx.waker().clone());
            return Poll::Pending;
        }
        if let Some(e) = self.inner.wal.fenced() {
            return Poll::Ready(Err(e));
        }
        if let Some(reason) = &s.flush_error {
            return Poll::Ready(Err(Error::io(
                "flush",
                &self.inner.options.dir,
                std::io::Error::other(reason.clone()),
            )));
        }
        if s.closing {
            return Poll::Ready(Err(Error::Closed));
        }
        s.waiters.push(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{run, temp_dir};

    /// An fdatasync failure fails the unacknowledged write and fences the log: no retry, no
    /// later write accepted; reads of acknowledged data still work; a reopen recovers.
    #[test]
    fn sync_failure_fences_the_log() {
        let dir = temp_dir();
        let path = dir.path().to_path_buf();
        run(async move {
            let mut o = ShardOptions::new(&path, ShardId(3));
            o.memtable_bytes_max = 1 << 20;
            o.wal_segment_bytes = 1 << 20;
            let shard = Shard::open(o.clone()).await.expect("open");
            shard.put(b"acked", b"1").await.expect("put");
            runtime::inject_sync_failure_after(Some(0));
            let err = shard.put(b"unacked", b"2").await.expect_err("sync fails");
            assert!(matches!(err, Error::WalFenced { .. }), "{err}");
            let err = shard.put(b"later", b"3").await.expect_err("log is fenced");
            assert!(matches!(err, Error::WalFenced { .. }), "{err}");
            assert!(shard.flush().await.is_err(), "a fenced shard cannot flush");
            let got = shard.get(b"acked").await.expect("reads still work");
            assert_eq!(got.and_then(|r| r.value), Some(b"1".to_vec()));
            runtime::inject_sync_failure_after(None);
            assert!(shard.close().await.is_err(), "close reports the fence");
            let shard = Shard::open(o).await.expect("reopen");
            let got = shard.get(b"acked").await.expect("get");
            assert_eq!(got.and_then(|r| r.value), Some(b"1".to_vec()));
            assert!(shard.get(b"later").await.expect("get").is_none());
            shard
                .put(b"after", b"4")
                .await
                .expect("writes resume after reopen");
            shard.close().await.expect("close");
        });
    }

    /// Writers that outrun the WAL (durability `None`, a full pending buffer) are served in
    /// turn: none monopolises the room the writer frees while the others wait (before the
    /// space queue, one looping writer took every freed byte and another waited for seconds).
    #[test]
    fn writers_held_back_by_the_wal_take_turns() {
        let dir = temp_dir();
        let path = dir.path().to_path_buf();
        run(async move {
            let mut o = ShardOptions::new(&path, ShardId(4));
            o.durability = Durability::None;
            o.wal_segment_bytes = 8 << 20;
            let shard = Shard::open(o).await.expect("open");
            let done = Rc::new(Cell::new(0u32));
            let value = vec![7u8; 4096];
            let writers: Vec<_> = (0..4u8)
                .map(|w| {
                    let (shard, done, value) = (shard.clone(), done.clone(), value.clone());
                    runtime::spawn(async move {
                        let mut mine = 0u32;
                        // 8,000 puts of 4 KiB in all: the 4 MiB buffer fills many times over.
                        while done.get() < 8_000 {
                            let key = [w, (mine % 251) as u8];
                            shard.put(&key, &value).await.expect("put");
                            mine += 1;
                            done.set(done.get() + 1);
                        }
                        mine
                    })
                })
                .collect();
            let mut counts = Vec::new();
            for t in writers {
                counts.push(t.await);
            }
            let (min, max) = (counts.iter().min().copied(), counts.iter().max().copied());
            assert!(
                min.zip(max).is_some_and(|(lo, hi)| lo * 4 >= hi),
                "each writer got a fair share: {counts:?}"
            );
            shard.close().await.expect("close");
        });
    }

    fn blob_files_in(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .expect("list")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".blob"))
            })
            .count()
    }

    fn big(i: u32, round: u32) -> Vec<u8> {
        vec![(i + round * 100) as u8; 3000 + i as usize]
    }

    /// A failed sync of a flush's blob file fails the flush (nothing acknowledged is lost: the
    /// WAL still holds it) and leaves no blob file behind; a reopen recovers everything.
    #[test]
    fn blob_file_sync_failure_fails_the_flush_and_loses_nothing() {
        let dir = temp_dir();
        let path = dir.path().to_path_buf();
        run(async move {
            let mut o = ShardOptions::new(&path, ShardId(0));
            o.blob_threshold_bytes = Some(1024);
            o.wal_segment_bytes = 1 << 20;
            let shard = Shard::open(o.clone()).await.expect("open");
            for i in 0..20u32 {
                shard.put(&i.to_be_bytes(), &big(i, 0)).await.expect("put");
            }
            // The blob file's fdatasync is the flush's first.
            runtime::inject_sync_failure_after(Some(0));
            assert!(shard.flush().await.is_err(), "the flush must fail");
            runtime::inject_sync_failure_after(None);
            assert_eq!(blob_files_in(&path), 0, "the unsynced blob file is removed");
            assert_eq!(shard.stats().tables, 0);
            for i in 0..20u32 {
                let got = shard.get(&i.to_be_bytes()).await.expect("get");
                assert_eq!(got.and_then(|r| r.value), Some(big(i, 0)));
            }
            let _ = shard.close().await;
            let shard = Shard::open(o.clone()).await.expect("reopen");
            shard.flush().await.expect("flush after reopen");
            assert_eq!(shard.stats().blob_files, 1);
            shard.close().await.expect("close");
            let shard = Shard::open(o).await.expect("reopen");
            for i in 0..20u32 {
                let got = shard.get(&i.to_be_bytes()).await.expect("get");
                assert_eq!(got.and_then(|r| r.value), Some(big(i, 0)));
            }
            shard.close().await.expect("close");
        });
    }

    /// A garbage collection that fails part-way (its new blob file cannot be synced) changes
    /// nothing: the old files and tables stay live, no new file is left, and the next attempt
    /// succeeds.
    #[test]
    fn failed_garbage_collection_keeps_the_old_files() {
        let dir = temp_dir();
        let path = dir.path().to_path_buf();
        run(async move {
            let mut o = ShardOptions::new(&path, ShardId(0));
            o.blob_threshold_bytes = Some(1024);
            o.durability = Durability::None;
            o.compaction.enabled = false;
            let shard = Shard::open(o.clone()).await.expect("open");
            for i in 0..100u32 {
                shard.put(&i.to_be_bytes(), &big(i, 0)).await.expect("put");
            }
            shard.flush().await.expect("flush");
            for i in 0..80u32 {
                shard.put(&i.to_be_bytes(), &big(i, 1)).await.expect("put");
            }
            shard.flush().await.expect("flush");
            // Drops the shadowed references: the first file is now 80 % garbage.
            shard.compact_all().await.expect("compact");
            let before = shard.stats();
            assert_eq!(before.blob_files, 2, "{before:?}");
            assert_eq!(before.blob_bytes_relocated, 0);
            runtime::inject_sync_failure_after(Some(0));
            shard.compact_all().await.expect("a failed merge is logged");
            runtime::inject_sync_failure_after(None);
            let after = shard.stats();
            assert_eq!(after.compactions, before.compactions, "{after:?}");
            assert_eq!(after.blob_files, 2);
            assert_eq!(blob_files_in(&path), 2, "no stray file");
            let check = |shard: Shard| async move {
                for i in 0..100u32 {
                    let got = shard.get(&i.to_be_bytes()).await.expect("get");
                    let want = big(i, u32::from(i < 80));
                    assert_eq!(got.and_then(|r| r.value), Some(want), "key {i}");
                }
                shard
            };
            let shard = check(shard).await;
            shard.compact_all().await.expect("compact");
            let s = shard.stats();
            assert!(s.blob_bytes_relocated > 0, "{s:?}");
            assert_eq!(s.blob_files, 2, "the old file went, a new one came: {s:?}");
            let shard = check(shard).await;
            shard.close().await.expect("close");
            let shard = check(Shard::open(o).await.expect("reopen")).await;
            assert_eq!(blob_files_in(&path), 2);
            shard.close().await.expect("close");
        });
    }

    #[test]
    fn wrong_shard_id_is_incompatible() {
        let dir = temp_dir();
        let path = dir.path().to_path_buf();
        run(async move {
            let shard = Shard::open(ShardOptions::new(&path, ShardId(1)))
                .await
                .expect("open");
            shard.put(b"k", b"v").await.expect("put");
            shard.flush().await.expect("flush");
            shard.close().await.expect("close");
            let Err(err) = Shard::open(ShardOptions::new(&path, ShardId(2))).await else {
                panic!("opened another shard's directory");
            };
            assert!(matches!(err, Error::Incompatible { .. }), "{err}");
        });
    }
}
