//! Carries out a merge: reads the input tables through one merge cursor and writes the newest
//! version of each key to a new table, dropping what no read can see any more.

use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::blob::{BlobMeta, BlobSet, BlobWriter, FIRST_ENTRY_OFFSET};
use crate::error::Result;
use crate::record::{ShardId, Token};
use crate::scan::MergeCursor;
use crate::sstable::{BlockCache, SsTable, TableBuilder, TableId};
use dynacore_runtime as runtime;

/// Purges one merge collects for the hash tree; past it, purgeable records are kept for a
/// later merge.
pub(crate) const PURGES_PER_MERGE_MAX: usize = 1 << 18;

/// Decides whether a tombstone or an expired value that is past its grace period may be
/// dropped, given its token and the time it took effect (a tombstone's write timestamp, an
/// expired value's expiry). Anti-entropy installs one that answers yes only once repair has
/// covered that range on every replica, so a replica that missed the delete cannot bring the
/// value back ("zombie" data). Without a gate, the grace period alone decides.
#[derive(Clone)]
pub struct TombstoneGate(Arc<dyn Fn(Token, u64) -> bool + Send + Sync>);

impl TombstoneGate {
    /// Wraps `may_drop(token, effective_ms)`.
    pub fn new(may_drop: impl Fn(Token, u64) -> bool + Send + Sync + 'static) -> Self {
        TombstoneGate(Arc::new(may_drop))
    }

    fn may_drop(&self, token: Token, write_ts_ms: u64) -> bool {
        (self.0)(token, write_ts_ms)
    }
}

impl fmt::Debug for TombstoneGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TombstoneGate(..)")
    }
}

/// Paces a merge: an I/O budget in bytes per second (a token bucket holding at most 50 ms of
/// budget, raised while compaction is behind) and CPU slices, after each of which the merge sleeps briefly so that the executor
/// polls for I/O and runs foreground tasks.
///
/// NOTE: in glommio 0.9 a task that yields its queue does not make the executor poll io_uring;
/// only a preemption tick (100 ms unless a queue asks for less) or every queue going idle does.
/// So a CPU-bound merge must really go to sleep, which costs about 40 µs each time on this
/// class of machine. Slices are short (`slice`) while foreground requests arrive and 20 times
/// longer when none arrived during the last slice.
pub(crate) struct Pacer {
    rate: Option<f64>,
    /// Multiplies `rate` (at least 1): how far behind compaction is.
    boost: Box<dyn Fn() -> f64>,
    tokens: f64,
    refilled: Instant,
    slice: Duration,
    slice_start: Instant,
    busy: bool,
    activity: Rc<Cell<u64>>,
    seen: u64,
    pending: u64,
    calls: u32,
}

impl Pacer {
    /// `rate` bytes per second (`None`: unlimited); `slice` of CPU while `activity` (a count of
    /// foreground operations) moves.
    pub(crate) fn new(rate: Option<u64>, slice: Duration, activity: Rc<Cell<u64>>) -> Self {
        Self::with_boost(rate, Box::new(|| 1.0), slice, activity)
    }

    /// As [`Pacer::new`], with the I/O budget multiplied by `boost()` (read at every check).
    pub(crate) fn with_boost(
        rate: Option<u64>,
        boost: Box<dyn Fn() -> f64>,
        slice: Duration,
        activity: Rc<Cell<u64>>,
    ) -> Self {
        #[allow(clippy::cast_precision_loss)]
        let rate = rate.filter(|&r| r > 0).map(|r| r as f64);
        let now = Instant::now();
        let seen = activity.get();
        Pacer {
            rate,
            boost,
            tokens: 0.0,
            refilled: now,
            slice,
            slice_start: now,
            busy: true,
            activity,
            seen,
            pending: 0,
            calls: 0,
        }
    }

    /// Accounts `bytes` of compaction I/O, sleeping when over budget or out of CPU slice.
    pub(crate) async fn account(&mut self, bytes: u64) {
        self.pending += bytes;
        self.calls += 1;
        // Look at the clock every 16 records, or sooner for large values (one 256 KiB record
        // takes tens of microseconds to merge).
        if self.calls < 16 && self.pending < 64 << 10 {
            return;
        }
        self.calls = 0;
        let now = Instant::now();
        if let Some(rate) = self.rate.map(|r| r * (self.boost)().max(1.0)) {
            let burst = rate / 20.0;
            let elapsed = now.duration_since(self.refilled).as_secs_f64();
            #[allow(clippy::cast_precision_loss)]
            let spent = self.pending as f64;
            self.tokens = (self.tokens + elapsed * rate).min(burst) - spent;
            self.refilled = now;
            self.pending = 0;
            if self.tokens < 0.0 {
                runtime::sleep(Duration::from_secs_f64(-self.tokens / rate)).await;
                self.next_slice();
                return;
            }
        }
        let slice = if self.busy {
            self.slice
        } else {
            self.slice * 20
        };
        if now.duration_since(self.slice_start) >= slice {
            runtime::pause_for_io().await;
            self.next_slice();
        }
    }

    fn next_slice(&mut self) {
        let seen = self.activity.get();
        self.busy = seen != self.seen;
        self.seen = seen;
        self.slice_start = Instant::now();
    }
}

/// Value-log garbage collection riding on a merge: values in `files` are copied to new blob
/// files, so that once the merge's output replaces every table (the merge must include all of
/// them) nothing points at `files` any more.
pub(crate) struct Relocation<'a> {
    /// The blob files to empty.
    pub(crate) files: HashSet<u64>,
    /// The shard's open blob files.
    pub(crate) blobs: &'a BlobSet,
    /// The shard's id, for new files' headers.
    pub(crate) shard_id: ShardId,
    /// New files are closed at this size.
    pub(crate) file_bytes_max: u64,
    /// Hands out ids for new blob files.
    pub(crate) alloc_id: &'a mut dyn FnMut() -> u64,
}

/// What a merge dropped and wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergeStats {
    /// Entries written.
    pub written: u64,
    /// Values copied to new blob files (garbage collection).
    pub relocated: u64,
    /// Bytes of blob entries written by garbage collection.
    pub relocated_bytes: u64,
    /// Tombstones dropped (past their grace, at the bottom).
    pub tombstones_dropped: u64,
    /// Expired values dropped (at the bottom).
    pub expired_dropped: u64,
    /// Objects whose retired actor epochs were dropped.
    pub epochs_retired: u64,
    /// Tombstones and expired values past their grace that the gate kept (their range has
    /// not been repaired since).
    pub kept_by_gate: u64,
    /// Keys a cleanup dropped (outside the ranges it keeps).
    pub cleaned_up: u64,
    /// Keys a cleanup would have dropped but kept for another pass (the tree's purge bound).
    pub cleanup_deferred: u64,
}

/// The fraction of the inputs' blocks that are cached, estimated from up to 1,024 blocks spread
/// evenly over them (walking every block of a large table would stall the executor).
fn cached_fraction(inputs: &[Rc<SsTable>], cache: &BlockCache) -> f64 {
    let blocks: usize = inputs.iter().map(|t| t.block_count()).sum();
    if blocks == 0 {
        return 0.0;
    }
    let step = blocks.div_ceil(1024);
    let (mut probed, mut cached) = (0u32, 0u32);
    let mut n = 0;
    for t in inputs {
        for i in 0..t.block_count() {
            if n % step == 0 {
                probed += 1;
                cached += u32::from(cache.contains(t.id(), t.block_offset(i)));
            }
            n += 1;
        }
    }
    f64::from(cached) / f64::from(probed.max(1))
}

/// What to merge and how.
pub(crate) struct MergeJob<'a> {
    /// The shard's directory.
    pub(crate) dir: &'a Path,
    /// The output table's id.
    pub(crate) id: TableId,
    /// Adjacent tables, oldest data first.
    pub(crate) inputs: &'a [Rc<SsTable>],
    /// Whether the inputs include the shard's oldest table.
    pub(crate) bottom: bool,
    /// The wall clock's reading, for expiry and the grace period.
    pub(crate) now_ms: u64,
    /// The tombstone grace period.
    pub(crate) grace_ms: u64,
    /// Asked before a tombstone past its grace is dropped.
    pub(crate) gate: Option<&'a TombstoneGate>,
    /// Whether version blobs are objects whose retired actor epochs are dropped under the same
    /// grace and gate.
    pub(crate) retire_epochs: bool,
    /// Whether the shard keeps a hash tree: each purge's key and contribution is collected (at
    /// most `PURGES_PER_MERGE_MAX`; past it, purgeable records are kept for a later merge).
    pub(crate) collect_purges: bool,
    /// Bloom filter bits per key of the output.
    pub(crate) bits_per_key: u32,
    /// A cleanup's filter (the inputs must be every table): keys whose token it refuses are
    /// dropped with all their versions.
    pub(crate) keep: Option<&'a dyn Fn(Token) -> bool>,
    /// The shard's block cache.
    pub(crate) cache: Rc<BlockCache>,
}

/// Merges `job.inputs` into table `job.id`.
///
/// Shadowed versions are always dropped. When `bottom` (the inputs include the shard's oldest
/// table, so nothing older can be shadowed) tombstones older than `grace_ms` and expired values
/// are dropped too (a tombstone only if `gate` agrees); otherwise they are kept, because they
/// still hide older versions.
/// With `relocation`, live values in the files it names are moved to new blob files.
///
/// # Errors
/// Damaged input blocks or I/O errors; the partial output is removed.
pub(crate) async fn merge(
    job: &MergeJob<'_>,
    pacer: &mut Pacer,
    relocation: Option<Relocation<'_>>,
) -> Result<MergeOutput> {
    let mut blobs = BlobOutput {
        relocation,
        writer: None,
        finished: Vec::new(),
        unreadable: Vec::new(),
    };
    let mut purged = Vec::new();
    let merged = merge_into(job, pacer, &mut blobs, &mut purged).await;
    match merged {
        Ok((table, stats)) => Ok(MergeOutput {
            table,
            blob_files: blobs.finished,
            unreadable_blob_files: blobs.unreadable,
            stats,
            purged,
        }),
        Err(e) => {
            blobs.abandon(job.dir).await;
            Err(e)
        }
    }
}

/// The blob files a merge writes while it relocates values.
struct BlobOutput<'a> {
    relocation: Option<Relocation<'a>>,
    writer: Option<BlobWriter>,
    /// Files finished (synced) so far.
    finished: Vec<BlobMeta>,
    /// Files being emptied in which a value could not be read (they stay).
    unreadable: Vec<u64>,
}

/// What a merge produced.
pub(crate) struct MergeOutput {
    /// The new table (`None`: nothing was left to write, and no file was made).
    pub(crate) table: Option<TableId>,
    /// New blob files holding relocated values, synced with their directory.
    pub(crate) blob_files: Vec<BlobMeta>,
    /// Blob files being emptied that hold a value that could not be read: they stay live, and
    /// should not be chosen for collection again.
    pub(crate) unreadable_blob_files: Vec<u64>,
    /// Counts.
    pub(crate) stats: MergeStats,
    /// The records dropped as purges (tombstones and expired values): token, key and their
    /// contribution to the hash tree (with `collect_purges`).
    pub(crate) purged: Vec<(Token, Vec<u8>, u64)>,
}

impl BlobOutput<'_> {
    /// Moves the value of `r` to a new blob file if it is in one being emptied; returns the new
    /// reference's encoding.
    async fn relocate(
        &mut self,
        dir: &Path,
        r: &crate::record::Record,
        stats: &mut MergeStats,
        pacer: &mut Pacer,
    ) -> Result<Option<[u8; crate::record::BLOB_REF_BYTES]>> {
        let (Some(reloc), Some(old)) = (self.relocation.as_mut(), r.blob_ref()) else {
            return Ok(None);
        };
        if !reloc.files.contains(&old.file_id) {
            return Ok(None);
        }
        // Read once: the cache is not filled.
        let value = match reloc.blobs.read(&old, &r.key, false).await {
            Ok(v) => v,
            Err(e) => {
                // A damaged value must not stop compaction: the record keeps its reference
                // (reads of it report the damage), the file stays, and it is not chosen again.
                tracing::error!(error = %e, blob_file = old.file_id, "value-log garbage collection cannot read a value; the file is kept");
                reloc.files.remove(&old.file_id);
                self.unreadable.push(old.file_id);
                return Ok(None);
            }
        };
        if self.writer.is_none() {
            let id = (reloc.alloc_id)();
            self.writer = Some(BlobWriter::create(dir, id, reloc.shard_id).await?);
        }
        let writer = self.writer.as_mut().expect("INVARIANT: created above");
        let new = writer.append(&r.key, &value).await?;
        stats.relocated += 1;
        stats.relocated_bytes += crate::blob::entry_bytes(&new, r.key.len());
        // Read once, written once.
        pacer.account(2 * value.len() as u64).await;
        if writer.entry_bytes() >= reloc.file_bytes_max {
            self.finish_writer(dir).await?;
        }
        Ok(Some(new.encode()))
    }

    async fn finish_writer(&mut self, dir: &Path) -> Result<()> {
        if let Some(w) = self.writer.take() {
            let id = w.id();
            // On an error the writer removes its file itself.
            let size = w.finish(dir).await?;
            self.finished.push(BlobMeta {
                id,
                entry_bytes: size - FIRST_ENTRY_OFFSET,
            });
        }
        Ok(())
    }

    /// Removes every file written (after an error; a crash leaves them to the next open).
    async fn abandon(self, dir: &Path) {
        if let Some(w) = self.writer {
            w.abandon().await;
        }
        for meta in self.finished {
            let path = crate::blob::blob_path(dir, meta.id);
            if let Err(e) = runtime::remove(&path).await {
                tracing::warn!(path = %path.display(), error = %e, "removing abandoned blob file");
            }
        }
    }
}

async fn merge_into(
    job: &MergeJob<'_>,
    pacer: &mut Pacer,
    blobs: &mut BlobOutput<'_>,
    purged: &mut Vec<(Token, Vec<u8>, u64)>,
) -> Result<(Option<TableId>, MergeStats)> {
    let MergeJob {
        dir,
        id,
        inputs,
        bottom,
        now_ms,
        grace_ms,
        gate,
        retire_epochs,
        collect_purges,
        bits_per_key,
        keep,
        ref cache,
    } = *job;
    assert!(
        keep.is_none() || bottom,
        "a cleanup merges every table: dropping a newer version alone would bring an older one back"
    );
    // Inputs that were mostly cached are being read: their output will be too, so it goes into
    // the cache as it is written (and the inputs' blocks leave it once they are deleted). Only
    // if the output fits beside what is cached: otherwise its blocks would only push each other
    // (and hot blocks) out while the inputs are still the ones being read.
    let input_bytes: u64 = inputs.iter().map(|t| t.size_bytes()).sum();
    let fits = cache.bytes() + input_bytes <= cache.capacity_bytes() / 10 * 9;
    let hot = fits && cached_fraction(inputs, cache) >= 0.5;
    let mut cursor = MergeCursor::new(Vec::new(), inputs, cache.clone(), Token(0), Token(u64::MAX))
        .without_cache_fill();
    let mut builder = TableBuilder::create(dir, id, bits_per_key, hot.then_some(cache)).await?;
    if hot {
        builder.fill_cache_evicting();
    }
    let mut stats = MergeStats::default();
    loop {
        let next = match cursor.next().await {
            Ok(n) => n,
            Err(e) => {
                builder.abandon().await;
                return Err(e);
            }
        };
        let Some((token, r)) = next else { break };
        let bytes = (r.key.len() + r.value.as_ref().map_or(0, Vec::len) + r.version.len()) as u64;
        pacer.account(bytes).await;
        let room = !collect_purges || purged.len() < PURGES_PER_MERGE_MAX;
        if keep.is_some_and(|keep| !keep(token)) {
            if room {
                stats.cleaned_up += 1;
                if collect_purges {
                    purged.push((token, r.key.clone(), crate::hashtree::record_state(&r).hash));
                }
                continue;
            }
            stats.cleanup_deferred += 1;
        }
        if bottom && room {
            // A tombstone past its grace; an expired value is a deletion that happened at its
            // expiry: it waits for the same grace and gate, or a replica still holding an
            // older live version would bring that version back once this copy forgot it.
            let effective = if r.value.is_none() {
                Some(r.write_ts_ms)
            } else {
                r.expiry_ms
            };
            if let Some(at) = effective.filter(|at| at.saturating_add(grace_ms) <= now_ms) {
                if gate.is_none_or(|g| g.may_drop(token, at)) {
                    if r.value.is_none() {
                        stats.tombstones_dropped += 1;
                    } else {
                        stats.expired_dropped += 1;
                    }
                    if collect_purges {
                        purged.push((token, r.key.clone(), crate::hashtree::record_state(&r).hash));
                    }
                    continue;
                }
                stats.kept_by_gate += 1;
            }
        }
        let relocated = match blobs.relocate(dir, &r, &mut stats, pacer).await {
            Ok(rel) => rel,
            Err(e) => {
                builder.abandon().await;
                return Err(e);
            }
        };
        // Versions every replica has seen (by the same rules) forget the epochs their nodes
        // left: a key's version holds one entry per node, plus those with live values.
        let retired = (retire_epochs
            && !r.version.is_empty()
            && r.write_ts_ms.saturating_add(grace_ms) <= now_ms
            && gate.is_none_or(|g| g.may_drop(token, r.write_ts_ms)))
        .then(|| crate::object::retire_epochs(&r.version))
        .flatten();
        let mut rec = r.borrowed();
        if let Some(new) = &relocated {
            rec.value = Some(new);
        }
        if let Some(version) = &retired {
            rec.version = version;
            stats.epochs_retired += 1;
        }
        if let Err(e) = builder.add(token, &rec).await {
            builder.abandon().await;
            return Err(e);
        }
        stats.written += 1;
        // The output is about as many bytes again.
        pacer.account(bytes).await;
    }
    if stats.written == 0 {
        builder.abandon().await;
        return Ok((None, stats));
    }
    // The blob files first: a table must never point at bytes that are not durable.
    if let Err(e) = blobs.finish_writer(dir).await {
        builder.abandon().await;
        return Err(e);
    }
    builder.finish().await?;
    runtime::sync_dir(dir)
        .await
        .map_err(|e| crate::Error::io("sync directory", dir, e))?;
    Ok((Some(id), stats))
}
