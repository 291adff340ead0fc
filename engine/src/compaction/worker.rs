//! Carries out a merge: reads the input tables through one merge cursor and writes the newest
//! version of each key to a new table, dropping what no read can see any more.

use std::cell::Cell;
use std::fmt;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::record::Token;
use crate::runtime;
use crate::scan::MergeCursor;
use crate::sstable::{BlockCache, SsTable, TableBuilder, TableId};

/// Decides whether a tombstone that is past its grace period may be dropped, given its token
/// and write timestamp. Anti-entropy installs one that answers yes only once repair has covered
/// the tombstone's range on every replica, so a replica that missed the delete cannot bring the
/// value back ("zombie" data). Without a gate, the grace period alone decides.
#[derive(Clone)]
pub struct TombstoneGate(Arc<dyn Fn(Token, u64) -> bool + Send + Sync>);

impl TombstoneGate {
    /// Wraps `may_drop(token, write_ts_ms)`.
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

/// What a merge dropped and wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergeStats {
    /// Entries written.
    pub written: u64,
    /// Tombstones dropped (past their grace, at the bottom).
    pub tombstones_dropped: u64,
    /// Expired values dropped (at the bottom).
    pub expired_dropped: u64,
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

/// Merges `inputs` (adjacent tables, oldest data first) into table `id` in `dir`.
///
/// Shadowed versions are always dropped. When `bottom` (the inputs include the shard's oldest
/// table, so nothing older can be shadowed) tombstones older than `grace_ms` and expired values
/// are dropped too (a tombstone only if `gate` agrees); otherwise they are kept, because they
/// still hide older versions.
/// Returns `None` (and leaves no file) when nothing is left to write.
///
/// # Errors
/// Damaged input blocks or I/O errors; the partial output is removed.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn merge(
    dir: &Path,
    id: TableId,
    inputs: &[Rc<SsTable>],
    bottom: bool,
    now_ms: u64,
    grace_ms: u64,
    gate: Option<&TombstoneGate>,
    bits_per_key: u32,
    cache: Rc<BlockCache>,
    pacer: &mut Pacer,
) -> Result<(Option<TableId>, MergeStats)> {
    // Inputs that were mostly cached are being read: their output will be too, so it goes into
    // the cache as it is written (and the inputs' blocks leave it once they are deleted). Only
    // if the output fits beside what is cached: otherwise its blocks would only push each other
    // (and hot blocks) out while the inputs are still the ones being read.
    let input_bytes: u64 = inputs.iter().map(|t| t.size_bytes()).sum();
    let fits = cache.bytes() + input_bytes <= cache.capacity_bytes() / 10 * 9;
    let hot = fits && cached_fraction(inputs, &cache) >= 0.5;
    let mut cursor = MergeCursor::new(Vec::new(), inputs, cache.clone(), Token(0), Token(u64::MAX))
        .without_cache_fill();
    let mut builder = TableBuilder::create(dir, id, bits_per_key, hot.then_some(&*cache)).await?;
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
        if bottom {
            if r.value.is_none()
                && r.write_ts_ms.saturating_add(grace_ms) <= now_ms
                && gate.is_none_or(|g| g.may_drop(token, r.write_ts_ms))
            {
                stats.tombstones_dropped += 1;
                continue;
            }
            if r.value.is_some() && r.expiry_ms.is_some_and(|e| e <= now_ms) {
                stats.expired_dropped += 1;
                continue;
            }
        }
        if let Err(e) = builder.add(token, &r.borrowed()).await {
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
    builder.finish().await?;
    runtime::sync_dir(dir)
        .await
        .map_err(|e| crate::Error::io("sync directory", dir, e))?;
    Ok((Some(id), stats))
}
