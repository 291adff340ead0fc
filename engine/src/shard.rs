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
use std::time::Duration;

use crate::blob::{self, BlobHandles, BlobMeta, BlobSet, BlobWriter};
use crate::compaction::worker::{MergeJob, Pacer, Relocation};
use crate::compaction::{self, BlobUsage, CompactionOptions, TombstoneGate};
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::memtable::Memtable;
use crate::object::{self, KeyLocks, Object, Sibling};
use crate::record::{validate_key, Mutation, Record, RecordRef, SeqNo, ShardId, Token};
use crate::scan::{MergeCursor, ShardScan};
use crate::sstable::{self, bloom, BlockCache, SsTable, TableBuilder, TableId};
use crate::version::{
    hlc::MAX_OFFSET_MS_DEFAULT, ActorId, ClockHandle, Hlc, HlcTimestamp, PhysicalClock,
    VersionVector,
};
use crate::wal::{Durability, Wal, WalOptions, WalStats};
use dynacore_runtime::{self as runtime, Latency, TaskQueueHandle};

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
}

impl ShardOptions {
    /// The defaults: `Sync` durability, 64 MiB memtables, 64 MiB WAL segments, 256 MiB block
    /// cache, 10 Bloom bits per key, values over 64 KiB in the value log.
    #[must_use]
    pub fn new(dir: impl Into<PathBuf>, shard_id: ShardId) -> Self {
        ShardOptions {
            dir: dir.into(),
            shard_id,
            durability: Durability::Sync,
            memtable_bytes_max: 64 << 20,
            immutable_memtables_max: 4,
            wal_segment_bytes: 64 << 20,
            block_cache_bytes: 256 << 20,
            bloom_bits_per_key: bloom::BITS_PER_KEY_DEFAULT,
            clock: ClockHandle::system(),
            compaction: CompactionOptions::default(),
            tombstone_gate: None,
            blob_threshold_bytes: Some(64 << 10),
            blob_open_files_max: 256,
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
    /// The manifest as last stored.
    manifest: Manifest,
    /// The next table id to hand out. Kept apart from `manifest` because ids are handed out
    /// while a manifest write is in flight; each stored manifest records the value at its
    /// making.
    next_table_id: u64,
    flushes: u64,
    compactions: u64,
    compaction_bytes_written: u64,
    flush_bytes_written: u64,
    write_stalls: u64,
    compactor_running: bool,
    /// A full merge was asked for ([`Shard::compact_all`]) and has not started yet.
    major_requested: bool,
    /// Compactions whose input tables are still being deleted.
    retiring: usize,
    /// WAL segments holding only records at or below this have been deleted.
    wal_released_seq: SeqNo,
    flusher_running: bool,
    flush_error: Option<String>,
    closing: bool,
    waiters: Vec<Waker>,
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
    /// Held for the shard's life: a second opener of the directory is refused.
    _lock: std::fs::File,
}

/// One core's storage engine. Cheap to clone (a handle); all clones share one shard.
#[derive(Clone, Debug)]
pub struct Shard {
    inner: Rc<Inner>,
}

impl Shard {
    /// Opens (or creates) the shard in `options.dir`, recovering from its manifest and WAL.
    ///
    /// # Errors
    /// [`Error::Corruption`] / [`Error::ChecksumMismatch`] for damage that recovery must not
    /// paper over; [`Error::Incompatible`]; I/O errors (a second opener gets `WouldBlock`).
    pub async fn open(mut options: ShardOptions) -> Result<Shard> {
        runtime::ensure_heartbeat();
        let created = !options.dir.exists();
        std::fs::create_dir_all(&options.dir)
            .map_err(|e| Error::io("create directory", &options.dir, e))?;
        // NOTE: glommio 0.9 resolves relative paths against no directory (EBADF); use absolute.
        options.dir = std::fs::canonicalize(&options.dir)
            .map_err(|e| Error::io("resolve", &options.dir, e))?;
        let dir = options.dir.clone();
        if created {
            // The new directory's own entry must be durable before its first acknowledged write.
            if let Some(parent) = dir.parent() {
                runtime::sync_dir(parent)
                    .await
                    .map_err(|e| Error::io("sync directory", parent, e))?;
            }
        }
        let lock_path = dir.join("LOCK");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io("open", &lock_path, e))?;
        lock.try_lock().map_err(|e| {
            Error::io(
                "lock (is another process using this shard?)",
                &lock_path,
                std::io::Error::new(std::io::ErrorKind::WouldBlock, e.to_string()),
            )
        })?;

        let manifest = match Manifest::load(&dir).await? {
            Some(m) => {
                if m.shard_id != options.shard_id {
                    return Err(Error::Incompatible {
                        path: dir.join(crate::manifest::MANIFEST_NAME),
                        reason: format!(
                            "directory holds shard {}, not shard {}",
                            m.shard_id.0, options.shard_id.0
                        ),
                    });
                }
                m
            }
            None => Manifest::empty(options.shard_id),
        };
        remove_orphan_tables(&dir, &manifest).await?;
        let mut tables = Vec::with_capacity(manifest.tables.len());
        let mut last_seq = manifest.flushed_seq;
        for &id in &manifest.tables {
            let table = SsTable::open(&dir, id).await?;
            last_seq = last_seq.max(SeqNo(table.footer().max_seq));
            tables.push(Rc::new(table));
        }
        let cache = Rc::new(BlockCache::new(options.block_cache_bytes));
        let handles = Rc::new(BlobHandles::new(
            &dir,
            options.shard_id,
            options.blob_open_files_max,
            cache.clone(),
        ));
        let blobs = open_blob_files(&dir, handles, &tables, &manifest).await?;

        let mut active = Memtable::new();
        let mut immutables = VecDeque::new();
        let memtable_max = options.memtable_bytes_max;
        let (wal, recovered) = Wal::open(
            &dir,
            options.shard_id,
            WalOptions {
                segment_bytes: options.wal_segment_bytes,
                durability: options.durability,
            },
            manifest.flushed_seq,
            |rec| {
                active.insert(Token::of(rec.key), &rec);
                if active.bytes() >= memtable_max {
                    immutables.push_back(Rc::new(std::mem::take(&mut active)));
                }
            },
        )
        .await?;
        last_seq = last_seq.max(recovered.last_seq);
        // Segments a flush covered but a crash kept from being deleted.
        wal.release_through(manifest.flushed_seq, &dir).await?;
        let wal_released_seq = manifest.flushed_seq;
        tracing::info!(
            dir = %dir.display(),
            tables = tables.len(),
            replayed = recovered.replayed,
            truncated_bytes = recovered.truncated_bytes,
            last_seq = last_seq.0,
            "shard opened"
        );
        let flush_queue = runtime::create_task_queue(
            100,
            Latency::NotImportant,
            &format!("flush-{}", options.shard_id.0),
        );
        // Compaction gets 5 % of the CPU under contention while it keeps up, rising to an equal
        // share with requests as tables pile up towards the write stall.
        let table_count = Rc::new(Cell::new(tables.len()));
        let compact_queue = {
            let count = table_count.clone();
            let (low, stall) = (
                options.compaction.min_run,
                options
                    .compaction
                    .tables_stall
                    .max(options.compaction.min_run + 1),
            );
            runtime::create_dynamic_task_queue(
                move || 50 + count.get().saturating_sub(low) * 950 / (stall - low),
                Latency::NotImportant,
                &format!("compact-{}", options.shard_id.0),
            )
        };
        let has_immutables = !immutables.is_empty();
        let options_clock = options.clock.clone();
        let shard = Shard {
            inner: Rc::new(Inner {
                options,
                wal,
                state: RefCell::new(State {
                    active,
                    immutables,
                    tables: Rc::new(tables),
                    blobs: Rc::new(blobs),
                    blob_bytes_written: 0,
                    blob_bytes_relocated: 0,
                    blob_files_deleted: 0,
                    blob_gc_skip: std::collections::HashSet::new(),
                    last_seq,
                    next_table_id: manifest.next_table_id,
                    manifest,
                    flushes: 0,
                    compactions: 0,
                    compaction_bytes_written: 0,
                    flush_bytes_written: 0,
                    write_stalls: 0,
                    compactor_running: false,
                    major_requested: false,
                    retiring: 0,
                    wal_released_seq,
                    flusher_running: false,
                    flush_error: None,
                    closing: false,
                    waiters: Vec::new(),
                }),
                cache,
                flush_queue,
                compact_queue,
                key_locks: KeyLocks::default(),
                manifest_lock: KeyLocks::default(),
                hlc: Hlc::new(options_clock, MAX_OFFSET_MS_DEFAULT),
                activity: Rc::new(Cell::new(0)),
                table_count,
                _lock: lock,
            }),
        };
        if has_immutables {
            shard.start_flusher();
        }
        shard.start_compactor();
        Ok(shard)
    }

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
        let inner = &*self.inner;
        inner.activity.set(inner.activity.get() + 1);
        WaitState::new(inner, |s: &State| {
            s.immutables.len() < inner.options.immutable_memtables_max
        })
        .await?;
        self.stall_while_compaction_is_behind().await?;
        inner.wal.reserve().await?;
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
            s.active.insert(Token::of(m.key), &rec);
            (seq, s.active.bytes() >= inner.options.memtable_bytes_max)
        };
        if freeze {
            self.freeze();
        }
        if inner.wal.durability() == Durability::Sync {
            inner.wal.wait_durable(seq).await?;
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
        let Some((mut r, blobs)) = self.lookup(key).await? else {
            return Ok(None);
        };
        if let Some(blobs) = blobs {
            blobs.resolve(&mut r, true).await?;
        }
        Ok(Some(r))
    }

    /// The newest version of `key` as stored, with the blob set to resolve it through if it
    /// came from a table (its value may still be a value-log reference).
    async fn lookup(&self, key: &[u8]) -> Result<Option<(Record, Option<Rc<BlobSet>>)>> {
        validate_key(key)?;
        self.inner.activity.set(self.inner.activity.get() + 1);
        let token = Token::of(key);
        let snapshot = self.snapshot();
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

    /// The stored object of `key`: every sibling, tombstones and expired ones included. A key
    /// written with plain [`Shard::put`] reads as one sibling without a dot.
    ///
    /// # Errors
    /// As [`Shard::get_record`], and [`Error::Version`] for a damaged version blob.
    pub async fn read_object(&self, key: &[u8]) -> Result<Option<Object>> {
        let Some(record) = self.get_record(key).await? else {
            return Ok(None);
        };
        if record.version.is_empty() {
            return Ok(Some(Object::new(Sibling {
                value: record.value,
                hlc: HlcTimestamp::from_parts(record.write_ts_ms, 0),
                expiry_ms: record.expiry_ms,
            })));
        }
        object::decode(&record).map(Some)
    }

    /// The coordinator's versioned write: `value` (or a tombstone) from a client that had seen
    /// `ctx`, minted as a new dot of `actor`, which must be this replica's own id. With
    /// `expected`, the write happens only if the key's current context holds nothing that
    /// `expected` does not (it equals it, or is older).
    ///
    /// # Errors
    /// [`Error::ConditionFailed`] with the current context; [`Error::Version`] when the write
    /// would leave more than 100 siblings; [`Error::Clock`] if a stored timestamp is too far
    /// ahead; the errors of [`Shard::write`].
    pub async fn coordinate_write(
        &self,
        key: &[u8],
        ctx: &VersionVector,
        value: Option<&[u8]>,
        expiry_ms: Option<u64>,
        actor: ActorId,
        expected: Option<&VersionVector>,
    ) -> Result<Object> {
        self.coordinate(key, Some(ctx), value, expiry_ms, actor, expected)
            .await
    }

    /// A blind write that supersedes whatever `key` holds: [`Shard::coordinate_write`] with the
    /// key's current context, read under the key's lock (so the one read serves both, and a
    /// write landing in between cannot turn it into a sibling).
    ///
    /// # Errors
    /// As [`Shard::coordinate_write`], without `ConditionFailed`.
    pub async fn overwrite(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        expiry_ms: Option<u64>,
        actor: ActorId,
    ) -> Result<Object> {
        self.coordinate(key, None, value, expiry_ms, actor, None)
            .await
    }

    /// [`Shard::coordinate_write`]; `ctx` `None` takes the local object's context.
    async fn coordinate(
        &self,
        key: &[u8],
        ctx: Option<&VersionVector>,
        value: Option<&[u8]>,
        expiry_ms: Option<u64>,
        actor: ActorId,
        expected: Option<&VersionVector>,
    ) -> Result<Object> {
        Mutation {
            key,
            value,
            write_ts_ms: None,
            expiry_ms,
            version: &[],
        }
        .validate()?;
        let _held = self.inner.key_locks.lock(key).await;
        let local = self.read_object(key).await?;
        check_expected(local.as_ref(), expected)?;
        if let Some(newest) = local.iter().flat_map(Object::values).map(|s| s.hlc).max() {
            self.inner.hlc.observe(newest)?;
        }
        let sibling = Sibling {
            value: value.map(<[u8]>::to_vec),
            hlc: self.inner.hlc.now(),
            expiry_ms,
        };
        let current;
        let ctx = match ctx {
            Some(c) => c,
            None => {
                current = local.as_ref().map(Object::join).unwrap_or_default();
                &current
            }
        };
        let obj = Object::update(ctx, sibling, local.as_ref(), actor)?;
        self.store_object(key, &obj).await?;
        Ok(obj)
    }

    /// A replica's apply: merges `incoming` (a coordinator's result, a read repair, an
    /// anti-entropy transfer) with the local object, so that replicas converge whatever order
    /// writes arrive in. Writes only if the merge changed something. With `expected`, applies
    /// only if the local context holds nothing that `expected` does not, or nothing that
    /// `incoming` does not (the copy already has the write).
    ///
    /// # Errors
    /// [`Error::ConditionFailed`]; [`Error::Version`] for an invalid incoming object;
    /// [`Error::Clock`] if it carries a timestamp too far ahead (nothing is stored); the errors
    /// of [`Shard::write`].
    pub async fn apply_object(
        &self,
        key: &[u8],
        incoming: &Object,
        expected: Option<&VersionVector>,
    ) -> Result<Object> {
        validate_key(key)?;
        incoming.check()?;
        let _held = self.inner.key_locks.lock(key).await;
        let local = self.read_object(key).await?;
        // A copy that already holds the incoming write (it came by read repair or a hint
        // first) has nothing the write did not see either: the merge below is a no-op.
        let already_has_it = local
            .as_ref()
            .is_some_and(|l| incoming.join().descends(&l.join()));
        if !already_has_it {
            check_expected(local.as_ref(), expected)?;
        }
        if let Some(newest) = incoming.values().map(|s| s.hlc).max() {
            self.inner.hlc.observe(newest)?;
        }
        let mut merged = match &local {
            Some(l) => l.sync(incoming),
            None => incoming.clone(),
        };
        if merged.size() > crate::version::SIBLINGS_MAX {
            // Each side was within the bound but their merge is not: resolve by last writer
            // wins (the context is kept, so the result still covers both). Every replica
            // resolves the same way, so they converge.
            tracing::warn!(
                siblings = merged.size(),
                "a replica merge exceeds the sibling bound; keeping the newest"
            );
            merged = merged.lww_by(|s| s.hlc);
        }
        let bytes: usize = merged
            .values()
            .filter_map(|s| s.value.as_ref())
            .map(Vec::len)
            .sum();
        if bytes > crate::record::VALUE_BYTES_MAX {
            tracing::warn!(
                bytes,
                "a replica merge exceeds the value limit; keeping the newest"
            );
            merged = merged.lww_by(|s| s.hlc);
        }
        if local.as_ref() != Some(&merged) {
            self.store_object(key, &merged).await?;
        }
        Ok(merged)
    }

    async fn store_object(&self, key: &[u8], obj: &Object) -> Result<SeqNo> {
        let e = object::encode(obj)?;
        self.write(Mutation {
            key,
            value: e.value.as_deref(),
            write_ts_ms: Some(e.write_ts_ms),
            expiry_ms: e.expiry_ms,
            version: &e.version,
        })
        .await
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

    /// Freezes the active memtable (if it holds anything) and starts the flusher.
    fn freeze(&self) {
        {
            let mut s = self.inner.state.borrow_mut();
            if s.active.is_empty() {
                return;
            }
            let frozen = std::mem::take(&mut s.active);
            s.immutables.push_back(Rc::new(frozen));
        }
        self.start_flusher();
    }

    fn start_flusher(&self) {
        {
            let mut s = self.inner.state.borrow_mut();
            if s.flusher_running || s.flush_error.is_some() {
                return;
            }
            s.flusher_running = true;
        }
        let shard = self.clone();
        runtime::spawn_detached_into(
            async move { shard.flush_loop().await },
            self.inner.flush_queue,
        );
    }

    async fn flush_loop(self) {
        loop {
            let next = {
                let s = self.inner.state.borrow();
                if s.closing {
                    None
                } else {
                    s.immutables.front().cloned()
                }
            };
            let Some(mem) = next else { break };
            let flushed = self.flush_one(&mem).await;
            if flushed.is_ok() {
                self.start_compactor();
            }
            if let Err(e) = flushed {
                tracing::error!(error = %e, "memtable flush failed; the shard stops accepting writes");
                let mut s = self.inner.state.borrow_mut();
                s.flush_error = Some(e.to_string());
                s.wake_waiters();
                break;
            }
        }
        let mut s = self.inner.state.borrow_mut();
        s.flusher_running = false;
        s.wake_waiters();
    }

    async fn flush_one(&self, mem: &Rc<Memtable>) -> Result<()> {
        let inner = &*self.inner;
        let dir = &inner.options.dir;
        // A table must hold only acknowledged-or-durable data: wait for the group commit.
        inner.wal.wait_durable(mem.max_seq()).await?;
        let id = {
            let mut s = inner.state.borrow_mut();
            let id = TableId(s.next_table_id);
            s.next_table_id += 1;
            id
        };
        let estimated = mem.bytes() as u64;
        let cache = inner.cache.has_room_for(estimated).then_some(&*inner.cache);
        let mut builder =
            TableBuilder::create(dir, id, inner.options.bloom_bits_per_key, cache).await?;
        // Flushes are not rate limited (writes wait for them), but they run in CPU slices like
        // compactions so that reads are not held up behind a 64 MiB memtable.
        let mut pacer = Pacer::new(
            None,
            Duration::from_micros(inner.options.compaction.slice_us.max(1)),
            inner.activity.clone(),
        );
        let mut blob_writer: Option<BlobWriter> = None;
        let written = self
            .write_flush(mem, &mut builder, &mut blob_writer, &mut pacer)
            .await;
        if let Err(e) = written {
            builder.abandon().await;
            if let Some(w) = blob_writer {
                w.abandon().await;
            }
            return Err(e);
        }
        // The blob file first: a table must never point at bytes that are not durable.
        let mut blob_file = None;
        if let Some(w) = blob_writer {
            let blob_id = w.id();
            match w.finish(dir).await {
                Ok(size) => {
                    blob_file = Some(BlobMeta {
                        id: blob_id,
                        entry_bytes: size - blob::FIRST_ENTRY_OFFSET,
                    });
                }
                Err(e) => {
                    builder.abandon().await;
                    return Err(e);
                }
            }
        }
        builder.finish().await?;
        runtime::sync_dir(dir)
            .await
            .map_err(|e| Error::io("sync directory", dir, e))?;
        let table = Rc::new(SsTable::open(dir, id).await?);
        let table_bytes = table.size_bytes();
        let held = inner.manifest_lock.lock(&[]).await;
        let mut manifest = {
            let s = inner.state.borrow();
            let mut m = s.manifest.clone();
            m.next_table_id = s.next_table_id;
            m
        };
        manifest.generation += 1;
        manifest.flushed_seq = manifest.flushed_seq.max(mem.max_seq());
        manifest.tables.push(id);
        manifest.store(dir).await?;
        let flushed = manifest.flushed_seq;
        {
            let mut s = inner.state.borrow_mut();
            s.manifest = manifest;
            let mut tables = (*s.tables).clone();
            tables.push(table);
            inner.table_count.set(tables.len());
            s.tables = Rc::new(tables);
            if let Some(f) = blob_file {
                s.blob_bytes_written += f.entry_bytes + blob::FIRST_ENTRY_OFFSET;
                s.blobs = Rc::new(s.blobs.with([f]));
            }
            let front = s.immutables.pop_front();
            assert!(
                front.is_some_and(|f| Rc::ptr_eq(&f, mem)),
                "memtables must be flushed in order"
            );
            s.flushes += 1;
            s.flush_bytes_written += table_bytes;
            s.wake_waiters();
        }
        drop(held);
        inner.wal.release_through(flushed, dir).await?;
        let mut s = inner.state.borrow_mut();
        s.wal_released_seq = flushed;
        s.wake_waiters();
        Ok(())
    }

    /// Writes a memtable's newest versions to `builder`, values over the blob threshold to a
    /// blob file created on the first one.
    async fn write_flush(
        &self,
        mem: &Memtable,
        builder: &mut TableBuilder<'_>,
        blob_writer: &mut Option<BlobWriter>,
        pacer: &mut Pacer,
    ) -> Result<()> {
        let inner = &*self.inner;
        let threshold = inner.options.blob_threshold_bytes;
        for (token, mut rec) in mem.newest_versions() {
            let bytes = (rec.key.len() + rec.value.map_or(0, <[u8]>::len)) as u64;
            let separate = rec.value.filter(|v| threshold.is_some_and(|t| v.len() > t));
            let reference;
            if let Some(value) = separate {
                if blob_writer.is_none() {
                    let blob_id = {
                        let mut s = inner.state.borrow_mut();
                        s.next_table_id += 1;
                        s.next_table_id - 1
                    };
                    *blob_writer = Some(
                        BlobWriter::create(&inner.options.dir, blob_id, inner.options.shard_id)
                            .await?,
                    );
                }
                let w = blob_writer.as_mut().expect("INVARIANT: created above");
                let r = w.append(rec.key, value).await?;
                inner
                    .state
                    .borrow()
                    .blobs
                    .handles()
                    .cache_written(&r, value);
                reference = r.encode();
                rec.value = Some(&reference);
                rec.blob = true;
            }
            builder.add(token, &rec).await?;
            pacer.account(bytes).await;
        }
        Ok(())
    }

    fn start_compactor(&self) {
        if self.inner.options.compaction.enabled {
            self.start_compactor_even_if_disabled();
        }
    }

    fn start_compactor_even_if_disabled(&self) {
        {
            let mut s = self.inner.state.borrow_mut();
            if s.compactor_running || s.closing || s.flush_error.is_some() {
                return;
            }
            s.compactor_running = true;
        }
        let shard = self.clone();
        runtime::spawn_detached_into(
            async move { shard.compact_loop().await },
            self.inner.compact_queue,
        );
    }

    async fn compact_loop(self) {
        let o = &self.inner.options.compaction;
        // The I/O budget grows with the backlog, up to 16× at the write stall: a low budget keeps
        // reads fast while compaction keeps up, and the stall is avoided when it does not.
        let count = self.inner.table_count.clone();
        let (low, stall) = (o.min_run, o.tables_stall.max(o.min_run + 1));
        #[allow(clippy::cast_precision_loss)]
        let boost = move || {
            let behind = count.get().saturating_sub(low) as f64 / (stall - low) as f64;
            1.0 + 15.0 * behind.min(1.0)
        };
        let mut pacer = Pacer::with_boost(
            o.rate_bytes_per_sec,
            Box::new(boost),
            Duration::from_micros(o.slice_us.max(1)),
            self.inner.activity.clone(),
        );
        loop {
            let (tables, blobs, major) = {
                let mut s = self.inner.state.borrow_mut();
                if s.closing {
                    break;
                }
                (
                    s.tables.clone(),
                    s.blobs.clone(),
                    std::mem::take(&mut s.major_requested),
                )
            };
            let sizes: Vec<u64> = tables.iter().map(|t| t.size_bytes()).collect();
            let mut run = if major && !tables.is_empty() {
                Some(0..tables.len())
            } else {
                compaction::choose(&sizes, o)
            };
            // Value-log garbage is collected by a merge of every table (only then is every
            // reference to a relocated file rewritten).
            let mut gc = None;
            if (o.enabled || major)
                && !tables.is_empty()
                && run.as_ref().is_none_or(|r| r.len() == tables.len())
            {
                // A full merge that happens anyway costs the collection nothing extra.
                let merge_bytes = if run.is_some() { 0 } else { sizes.iter().sum() };
                let mut usage = blob_usage(&tables, &blobs);
                {
                    let s = self.inner.state.borrow();
                    usage.retain(|u| !s.blob_gc_skip.contains(&u.id));
                }
                gc = compaction::choose_blob_gc(&usage, merge_bytes, o);
                if gc.is_some() {
                    run = Some(0..tables.len());
                }
            }
            let Some(run) = run else {
                break;
            };
            if let Err(e) = self
                .compact_run(&tables[run.clone()], run.start == 0, &mut pacer, gc)
                .await
            {
                // The inputs are untouched and still live; writes and reads go on. The next
                // flush retries.
                tracing::error!(error = %e, "compaction failed");
                break;
            }
        }
        let mut s = self.inner.state.borrow_mut();
        s.compactor_running = false;
        s.wake_waiters();
    }

    /// Merges adjacent tables `inputs` and swaps the result in, durably, then deletes them and
    /// the blob files nothing points at any more. With `relocate` (the inputs must be every
    /// table), the live values in those blob files are moved to new ones.
    async fn compact_run(
        &self,
        inputs: &[Rc<SsTable>],
        bottom: bool,
        pacer: &mut Pacer,
        relocate: Option<Vec<u64>>,
    ) -> Result<()> {
        let inner = &*self.inner;
        let dir = &inner.options.dir;
        let alloc_id = || {
            let mut s = inner.state.borrow_mut();
            s.next_table_id += 1;
            s.next_table_id - 1
        };
        let id = TableId(alloc_id());
        let blobs = inner.state.borrow().blobs.clone();
        let mut alloc_blob_id = alloc_id;
        let relocation = relocate.map(|files| {
            // Tables flushed since the inputs were chosen point only at their own new files.
            let s = inner.state.borrow();
            let others = s
                .tables
                .iter()
                .filter(|t| !inputs.iter().any(|i| i.id() == t.id()));
            assert!(
                bottom
                    && others
                        .flat_map(|t| t.blob_refs())
                        .all(|(id, _)| !files.contains(id)),
                "blob files are emptied only by a merge of every table pointing into them"
            );
            Relocation {
                files: files.into_iter().collect(),
                blobs: &blobs,
                shard_id: inner.options.shard_id,
                file_bytes_max: inner.options.compaction.blob_file_bytes_max,
                alloc_id: &mut alloc_blob_id,
            }
        });
        let job = MergeJob {
            dir,
            id,
            inputs,
            bottom,
            now_ms: inner.options.clock.now_ms(),
            grace_ms: inner.options.compaction.tombstone_grace_ms,
            gate: inner.options.tombstone_gate.as_ref(),
            bits_per_key: inner.options.bloom_bits_per_key,
            cache: inner.cache.clone(),
        };
        let merged = compaction::worker::merge(&job, pacer, relocation)
            .await
            .inspect_err(|_| inner.cache.forget_table(id))?;
        let stats = merged.stats;
        let new_blobs = merged.blob_files;
        if !merged.unreadable_blob_files.is_empty() {
            let mut s = inner.state.borrow_mut();
            s.blob_gc_skip.extend(merged.unreadable_blob_files);
        }
        let table = match merged.table {
            Some(id) => match SsTable::open(dir, id).await {
                Ok(t) => Some(Rc::new(t)),
                Err(e) => {
                    // Nothing names the output yet: remove it (a crash would leave it to the
                    // next open). After the manifest store, files are left to the next open,
                    // since a failed directory sync may follow a rename that happened.
                    inner.cache.forget_table(id);
                    let mut paths = vec![sstable::table_path(dir, id)];
                    paths.extend(new_blobs.iter().map(|b| blob::blob_path(dir, b.id)));
                    for p in paths {
                        if let Err(r) = runtime::remove(&p).await {
                            tracing::warn!(path = %p.display(), error = %r, "removing a failed merge's output");
                        }
                    }
                    return Err(e);
                }
            },
            None => None,
        };
        let input_ids: Vec<TableId> = inputs.iter().map(|t| t.id()).collect();
        let dropped_blobs = {
            let _held = inner.manifest_lock.lock(&[]).await;
            let mut manifest = {
                let s = inner.state.borrow();
                let mut m = s.manifest.clone();
                m.next_table_id = s.next_table_id;
                m
            };
            let at = manifest
                .tables
                .iter()
                .position(|t| *t == input_ids[0])
                .expect("INVARIANT: only the compactor removes tables");
            assert_eq!(
                manifest.tables[at..at + input_ids.len()],
                input_ids[..],
                "compaction inputs must still be adjacent"
            );
            manifest.generation += 1;
            manifest
                .tables
                .splice(at..at + input_ids.len(), table.iter().map(|t| t.id()));
            manifest.store(dir).await?;
            let mut s = inner.state.borrow_mut();
            s.manifest = manifest;
            let mut tables = (*s.tables).clone();
            let written = table.as_ref().map_or(0, |t| t.size_bytes());
            tables.splice(at..at + input_ids.len(), table);
            inner.table_count.set(tables.len());
            // Blob files come and go with the tables that point at them.
            let with_new = s.blobs.with(new_blobs);
            let unreferenced: Vec<u64> = blob_usage(&tables, &with_new)
                .iter()
                .filter(|u| u.live_bytes == 0)
                .map(|u| u.id)
                .collect();
            let (blobs, dropped) = with_new.without(&unreferenced);
            s.tables = Rc::new(tables);
            s.blobs = Rc::new(blobs);
            s.compactions += 1;
            s.compaction_bytes_written += written;
            s.blob_bytes_relocated += stats.relocated_bytes;
            s.blob_files_deleted += dropped.len() as u64;
            s.retiring += 1;
            s.wake_waiters();
            dropped
        };
        tracing::debug!(inputs = input_ids.len(), ?stats, "compaction done");
        let shard = self.clone();
        let retired = inputs.to_vec();
        runtime::spawn_detached_into(
            async move { shard.retire(retired, dropped_blobs).await },
            inner.compact_queue,
        );
        Ok(())
    }

    /// Waits until no reader holds `shared` (readers hold tables and blob files for the length
    /// of a get or a scan); `None` if the shard starts closing first.
    async fn sole_owner<T>(&self, mut shared: Rc<T>) -> Option<T> {
        loop {
            match Rc::try_unwrap(shared) {
                Ok(t) => return Some(t),
                Err(s) if !self.inner.state.borrow().closing => {
                    shared = s;
                    runtime::sleep(Duration::from_millis(1)).await;
                }
                // Closing with a reader still holding it: the next open removes the file.
                Err(_) => return None,
            }
        }
    }

    /// Deletes tables a compaction replaced and blob files nothing points at any more, once no
    /// reader holds them: a table's blocks leave the cache 512 KiB at a time (freeing 100 MiB of
    /// blocks at once stalled the executor for 20 ms), then each file is closed before it is
    /// unlinked (see [`SsTable::close`]). A crash before this leaves files that the manifest's
    /// tables do not name or point at, which the next open removes.
    async fn retire(self, tables: Vec<Rc<SsTable>>, blobs: Vec<Rc<BlobMeta>>) {
        let dir = self.inner.options.dir.clone();
        let mut failed = None;
        for table in tables {
            let Some(owned) = self.sole_owner(table).await else {
                continue;
            };
            let mut freed = 0;
            for i in 0..owned.block_count() {
                freed += self.inner.cache.remove(owned.id(), owned.block_offset(i));
                if freed >= 512 << 10 {
                    freed = 0;
                    runtime::pause_for_io().await;
                }
            }
            let path = sstable::table_path(&dir, owned.id());
            if let Err(e) = owned.close().await {
                failed = Some(e);
            }
            if let Err(e) = runtime::remove(&path).await {
                failed = Some(Error::io("remove", &path, e));
            }
        }
        let handles = self.inner.state.borrow().blobs.handles().clone();
        for meta in blobs {
            // Once no snapshot of the blob set holds the file, no read can open it again.
            let Some(meta) = self.sole_owner(meta).await else {
                continue;
            };
            // Its cached values would never be read again: drop them, a little at a time.
            let mut freed = 0;
            for offset in handles.forget(meta.id) {
                freed += handles.values().remove(TableId(meta.id), offset);
                if freed >= 512 << 10 {
                    freed = 0;
                    runtime::pause_for_io().await;
                }
            }
            if let Some(handle) = handles.take(meta.id) {
                let Some(owned) = self.sole_owner(handle).await else {
                    continue;
                };
                if let Err(e) = owned.close().await {
                    failed = Some(e);
                }
            }
            let path = blob::blob_path(&dir, meta.id);
            if let Err(e) = runtime::remove(&path).await {
                failed = Some(Error::io("remove", &path, e));
            }
        }
        if let Err(e) = runtime::sync_dir(&dir).await {
            failed = Some(Error::io("sync directory", &dir, e));
        }
        if let Some(e) = failed {
            // The manifest no longer names these tables; the next open removes what is left.
            tracing::warn!(error = %e, "deleting compacted tables or blob files failed");
        }
        let mut s = self.inner.state.borrow_mut();
        s.retiring -= 1;
        s.wake_waiters();
    }

    /// Merges every table into one (a "major compaction", as `nodetool compact`): afterwards
    /// each key has one version on disk, and expired values and tombstones past their grace
    /// are gone. Waits until it is done; memtables are not flushed first.
    ///
    /// # Errors
    /// [`Error::Closed`] while closing; the compaction's own error is logged and leaves the
    /// tables as they were.
    pub async fn compact_all(&self) -> Result<()> {
        self.wait_for_compactions().await;
        {
            let mut s = self.inner.state.borrow_mut();
            if s.closing {
                return Err(Error::Closed);
            }
            s.major_requested = true;
        }
        self.start_compactor_even_if_disabled();
        self.wait_for_compactions().await;
        Ok(())
    }

    /// Waits until no compaction is running (for tests and tools).
    pub async fn wait_for_compactions(&self) {
        WaitState {
            inner: &self.inner,
            ready: |s: &State| !s.compactor_running && s.retiring == 0,
            fail_on_error: false,
        }
        .await
        .expect("INVARIANT: a wait with fail_on_error unset only ends when ready");
    }

    /// Flushes everything written so far to SSTables and waits until it is in the manifest and
    /// the WAL segments it covers are deleted.
    ///
    /// # Errors
    /// The flush's error, or [`Error::WalFenced`].
    pub async fn flush(&self) -> Result<()> {
        let target = self.inner.state.borrow().last_seq;
        self.freeze();
        WaitState::new(&self.inner, |s: &State| s.wal_released_seq >= target).await
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
        }
    }

    /// Every live table's records, oldest table first (for checks and tools).
    ///
    /// # Errors
    /// As [`Shard::get_record`].
    pub async fn scan_tables(&self) -> Result<Vec<Vec<Record>>> {
        let (tables, blobs) = {
            let s = self.inner.state.borrow();
            (s.tables.clone(), s.blobs.clone())
        };
        let mut out = Vec::with_capacity(tables.len());
        for t in tables.iter() {
            let mut records = t.scan(&self.inner.cache).await?;
            for r in &mut records {
                blobs.resolve(r, false).await?;
            }
            out.push(records);
        }
        Ok(out)
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
            ready: |s: &State| !s.flusher_running && !s.compactor_running && s.retiring == 0,
            fail_on_error: false,
        }
        .await
        .expect("INVARIANT: a wait with fail_on_error unset only ends when ready");
        if let Some(reason) = &self.inner.state.borrow().flush_error {
            tracing::warn!(%reason, "closing a shard whose flush failed");
        }
        // Other handles may still exist: they see `Closed` from now on.
        self.inner.wal.shutdown().await
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

/// Checks a conditional write's expected context against the local object.
fn check_expected(local: Option<&Object>, expected: Option<&VersionVector>) -> Result<()> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let current = local.map(Object::join).unwrap_or_default();
    // The copy holds no write the client did not see: the version it read, or an older one
    // (a replica that missed the latest write is not a conflict; a write the client has not
    // seen is).
    if expected.descends(&current) {
        Ok(())
    } else {
        Err(Error::ConditionFailed { current })
    }
}

/// Opens every blob file the tables point at, and removes the ones none points at (a crash
/// left them: a flush or garbage collection that did not reach its manifest, or files whose
/// deletion it interrupted).
async fn open_blob_files(
    dir: &Path,
    handles: Rc<BlobHandles>,
    tables: &[Rc<SsTable>],
    manifest: &Manifest,
) -> Result<BlobSet> {
    let referenced: std::collections::BTreeSet<u64> = tables
        .iter()
        .flat_map(|t| t.blob_refs().iter().map(|&(id, _)| id))
        .collect();
    // Blob ids come from the manifest's counter, like table ids: one that is not below it, or
    // that a table has, is damage (it would collide with a file made later).
    for t in tables {
        if let Some(&(id, _)) = t.blob_refs().iter().find(|&&(id, _)| {
            id >= manifest.next_table_id || manifest.tables.contains(&TableId(id))
        }) {
            return Err(Error::corruption(
                sstable::table_path(dir, t.id()),
                t.footer().filter_offset + t.footer().filter_len,
                format!(
                    "the table points at blob file {id}, an id the shard never gave a blob file"
                ),
            ));
        }
    }
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    let mut removed = false;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        let Some(id) = entry.file_name().to_str().and_then(blob::parse_blob_name) else {
            continue;
        };
        if !referenced.contains(&id) {
            tracing::warn!(blob_file = id, "removing blob file no table points at");
            runtime::remove(&entry.path())
                .await
                .map_err(|e| Error::io("remove", entry.path(), e))?;
            removed = true;
        }
    }
    if removed {
        runtime::sync_dir(dir)
            .await
            .map_err(|e| Error::io("sync directory", dir, e))?;
    }
    // Files are opened (and their headers checked) when a read first needs them.
    let mut files = Vec::with_capacity(referenced.len());
    for id in referenced {
        let path = blob::blob_path(dir, id);
        let size = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::corruption(
                    path,
                    0,
                    "a table points at this blob file, which is missing",
                ));
            }
            Err(e) => return Err(Error::io("stat", &path, e)),
        };
        if size < blob::FIRST_ENTRY_OFFSET {
            return Err(Error::corruption(
                path,
                0,
                "blob file shorter than its header",
            ));
        }
        files.push(BlobMeta {
            id,
            entry_bytes: size - blob::FIRST_ENTRY_OFFSET,
        });
    }
    Ok(BlobSet::new(handles).with(files))
}

/// Per blob file, its size and the bytes of it that `tables` point at.
fn blob_usage(tables: &[Rc<SsTable>], blobs: &BlobSet) -> Vec<BlobUsage> {
    let mut live: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    for t in tables {
        for &(id, bytes) in t.blob_refs() {
            *live.entry(id).or_default() += bytes;
        }
    }
    let mut usage: Vec<BlobUsage> = blobs
        .iter()
        .map(|f| BlobUsage {
            id: f.id,
            entry_bytes: f.entry_bytes,
            live_bytes: live.get(&f.id).copied().unwrap_or(0),
        })
        .collect();
    usage.sort_unstable_by_key(|u| u.id);
    usage
}

/// Removes tables that a crash left behind before the manifest named them.
async fn remove_orphan_tables(dir: &Path, manifest: &Manifest) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    let mut removed = false;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(sstable::parse_table_name)
        else {
            continue;
        };
        if !manifest.tables.contains(&id) {
            tracing::warn!(table = id.0, "removing table the manifest does not name");
            runtime::remove(&entry.path())
                .await
                .map_err(|e| Error::io("remove", entry.path(), e))?;
            removed = true;
        }
    }
    if removed {
        runtime::sync_dir(dir)
            .await
            .map_err(|e| Error::io("sync directory", dir, e))?;
    }
    Ok(())
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
