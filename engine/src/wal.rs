//! The write-ahead log: pre-allocated, zero-filled segments written with direct I/O in whole
//! 4 KiB blocks, with group commit.
//!
//! # Layout
//!
//! A segment file `wal-<id as 16 hex digits>.log` is `capacity` bytes, allocated and zero-filled
//! when it is prepared (so that steady-state writes overwrite written extents and `fdatasync`
//! needs no journal commit). Block 0 holds a [`SegmentHeader`]; batches follow from offset 4096.
//!
//! ```text
//! batch (starts on a 4 KiB boundary, zero-padded to the next one):
//!   0   u32 magic "DWB1"     | 4  u32 crc32c of bytes 8.. of the header and of the body
//!   8   u32 body_len         | 12 u32 record_count
//!   16  u64 first_seq        | 24 u64 segment_id
//!   32  body: record_count frames, each
//!         u32 crc32c (of len and payload) | u32 len | payload = record encoding (record.rs)
//! ```
//!
//! One write (one batch) is in flight at a time and, with `Sync` durability, it is synced before
//! the next is issued, so only the last batch of the log can be torn. A batch is valid only as a
//! whole: its crc covers the whole body. Recovery therefore reads batches in order and stops at
//! the first invalid one; if it was the tail (no valid batch anywhere after it) the tail is
//! zeroed and writing resumes there, otherwise the shard refuses to open with
//! [`Error::Corruption`] naming the file and offset. Acknowledged data is never cut off silently.
//!
//! # Recycling
//!
//! Up to [`RECYCLE_MAX`] released segments are renamed `recycle-<old id>.wal` instead of being
//! deleted, and the next segment is made from one of them: its header is rewritten for the new
//! id and synced before the rename into place, with no zero-fill (which doubled the bytes the
//! WAL wrote). The old batches stay behind the new ones. They can never pass for data of the
//! new segment: every segment header carries a random salt, new for each life of the file,
//! that every batch checksum covers, so old batches (and any value crafted to look like a batch)
//! are invalid in the new life. Renamed files join the pool only after a directory sync. Such an end is accepted when the next segment's first batch continues
//! the sequence numbers exactly (nothing is missing); without that continuation it is damage and
//! the shard refuses to open, as before.
//!
//! # Group commit
//!
//! `append` frames a record into the pending buffer without waiting. One writer task takes
//! everything pending, writes it as one batch and (with `Sync`) calls `fdatasync` once; every
//! write that arrived while that was in flight goes out together in the next batch.
//!
//! INVARIANT: after an `fdatasync` or write error the log is fenced: every write not yet
//! acknowledged fails and no later write is accepted. There is no retry: the page cache state
//! after a failed sync is unknown (fsyncgate).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::record::{self, RecordRef, SeqNo, ShardId};
use dynacore_runtime::{self as runtime, align_up, File, IO_ALIGN};

/// How a write is made durable before it is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Acknowledge only after `fdatasync` covered the write (the default).
    Sync,
    /// Acknowledge once queued; `fdatasync` at least every this many milliseconds.
    Periodic(u64),
    /// Acknowledge once queued; written without sync (lost on power failure, and the last
    /// pending bytes are lost if the process dies).
    None,
}

/// Magic at the start of a segment header: "DYNWAL01" as little-endian bytes.
const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"DYNWAL01");
/// 2 since batch checksums are salted; segments of version 1 (salt field zero) still open.
const SEGMENT_FORMAT_VERSION: u32 = 2;
/// Magic at the start of a batch: "DWB1".
const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"DWB1");
const BATCH_HEADER_BYTES: usize = 32;
const FRAME_HEADER_BYTES: usize = 8;
/// Offset of the first batch in a segment.
const FIRST_BATCH_OFFSET: u64 = IO_ALIGN;
/// Appends wait once this many framed bytes are pending (bounds memory with `None` durability).
pub const PENDING_BYTES_MAX: usize = 4 << 20;
/// Chunk size used to zero-fill segments.
const ZERO_CHUNK_BYTES: usize = 1 << 20;

/// The fixed header in block 0 of every segment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct SegmentHeader {
    /// [`SEGMENT_MAGIC`].
    pub magic: u64,
    /// Format version, 1.
    pub format_version: u32,
    /// crc32c of the header with this field zero.
    pub header_crc: u32,
    /// The segment's id (also in its file name and in every batch).
    pub segment_id: u64,
    /// The shard that wrote it.
    pub shard_id: u32,
    /// Mixed into every batch checksum of this life of the file (0 in segments written before
    /// recycling existed: their checksums have no salt). A recycled file gets a new random
    /// salt, so no byte left from its earlier life, nor a crafted value stored there, can pass
    /// for a batch of its new life.
    pub salt: u32,
    /// Size of the segment file.
    pub capacity: u64,
}

const _: () = assert!(std::mem::size_of::<SegmentHeader>() == 40);

impl SegmentHeader {
    fn new(segment_id: u64, shard_id: ShardId, capacity: u64, salt: u32) -> Self {
        let mut h = SegmentHeader {
            magic: SEGMENT_MAGIC,
            format_version: SEGMENT_FORMAT_VERSION,
            header_crc: 0,
            segment_id,
            shard_id: shard_id.0,
            salt,
            capacity,
        };
        h.header_crc = crc32c::crc32c(bytemuck::bytes_of(&h));
        h
    }

    fn checksum_ok(&self) -> bool {
        let mut h = *self;
        h.header_crc = 0;
        crc32c::crc32c(bytemuck::bytes_of(&h)) == self.header_crc
    }
}

/// The header of one batch.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct BatchHeader {
    magic: u32,
    crc: u32,
    body_len: u32,
    record_count: u32,
    first_seq: u64,
    segment_id: u64,
}

const _: () = assert!(std::mem::size_of::<BatchHeader>() == BATCH_HEADER_BYTES);

fn batch_crc(salt: u32, header: &BatchHeader, body: &[u8]) -> u32 {
    let bytes = bytemuck::bytes_of(header);
    let seed = if salt == 0 {
        0
    } else {
        crc32c::crc32c(&salt.to_le_bytes())
    };
    crc32c::crc32c_append(crc32c::crc32c_append(seed, &bytes[8..]), body)
}

/// A fresh non-zero salt for a segment's new life: unpredictable from outside the process.
fn new_salt(segment_id: u64) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut seed = Vec::with_capacity(32);
    seed.extend_from_slice(&nanos.to_le_bytes());
    seed.extend_from_slice(&segment_id.to_le_bytes());
    seed.extend_from_slice(&std::process::id().to_le_bytes());
    let salt = xxhash_rust::xxh3::xxh3_64(&seed) as u32;
    salt.max(1)
}

/// Appends a framed record to `out`.
fn frame_record(rec: &RecordRef<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    rec.encode_into(out);
    let len = u32::try_from(out.len() - start - FRAME_HEADER_BYTES)
        .expect("INVARIANT: a record is smaller than 4 GiB");
    out[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Bytes a batch with a body of `body_len` bytes occupies on disk (padding included).
fn batch_len(body_len: usize) -> usize {
    align_up((BATCH_HEADER_BYTES + body_len) as u64) as usize
}

/// Writes a whole batch (header, body, zero padding) into `out`, which is
/// [`batch_len`]`(body.len())` bytes.
fn build_batch_into(
    out: &mut [u8],
    (segment_id, salt): (u64, u32),
    first_seq: SeqNo,
    count: u32,
    body: &[u8],
) {
    assert_eq!(out.len(), batch_len(body.len()), "batch buffer size");
    let mut header = BatchHeader {
        magic: BATCH_MAGIC,
        crc: 0,
        body_len: u32::try_from(body.len()).expect("INVARIANT: batches are bounded"),
        record_count: count,
        first_seq: first_seq.0,
        segment_id,
    };
    header.crc = batch_crc(salt, &header, body);
    out[..BATCH_HEADER_BYTES].copy_from_slice(bytemuck::bytes_of(&header));
    let end = BATCH_HEADER_BYTES + body.len();
    out[BATCH_HEADER_BYTES..end].copy_from_slice(body);
    out[end..].fill(0);
}

#[cfg(test)]
fn build_batch(segment: (u64, u32), first_seq: SeqNo, count: u32, body: &[u8]) -> Vec<u8> {
    let mut out = vec![0; batch_len(body.len())];
    build_batch_into(&mut out, segment, first_seq, count, body);
    out
}

/// The path of segment `id` in `dir`.
#[must_use]
pub fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("wal-{id:016x}.log"))
}

/// Where a released segment waits to be reused (the id is the one it had).
fn recycle_path(dir: &Path, old_id: u64) -> PathBuf {
    dir.join(format!("recycle-{old_id:016x}.wal"))
}

fn parse_recycle_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("recycle-")?.strip_suffix(".wal")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Released segments kept for reuse. Reusing one skips the zero-fill that a fresh segment
/// needs, which doubled the bytes the WAL wrote.
const RECYCLE_MAX: usize = 2;

fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// The outcome of parsing one batch at a position of a segment image.
enum BatchParse<'a> {
    /// A valid batch: its frames, and the offset after its padding.
    Valid {
        first_seq: SeqNo,
        count: u32,
        body: &'a [u8],
        next: usize,
    },
    /// All-zero header: nothing was ever written here.
    Empty,
    /// A whole, valid batch of another segment: left by the file's life before it was recycled,
    /// so this segment's data ends here.
    Stale,
    /// Something was written but it is not a valid batch.
    Invalid(&'static str),
}

fn parse_batch(image: &[u8], pos: usize, (segment_id, salt): (u64, u32)) -> BatchParse<'_> {
    let Some(head) = image.get(pos..pos + BATCH_HEADER_BYTES) else {
        return BatchParse::Empty;
    };
    if head.iter().all(|&b| b == 0) {
        return BatchParse::Empty;
    }
    let header: BatchHeader = bytemuck::pod_read_unaligned(head);
    if header.magic != BATCH_MAGIC {
        return BatchParse::Invalid("bad batch magic");
    }
    let body_start = pos + BATCH_HEADER_BYTES;
    let Some(body) = image.get(body_start..body_start + header.body_len as usize) else {
        return BatchParse::Invalid("batch runs past the end of the segment");
    };
    if batch_crc(salt, &header, body) != header.crc {
        return BatchParse::Invalid("batch checksum mismatch");
    }
    if header.segment_id != segment_id {
        return BatchParse::Stale;
    }
    let next = align_up((body_start + body.len()) as u64) as usize;
    BatchParse::Valid {
        first_seq: SeqNo(header.first_seq),
        count: header.record_count,
        body,
        next,
    }
}

/// The first block-aligned position at or after `from` that holds a valid, non-empty batch
/// whose records come after sequence number `after` — evidence that the log goes on.
fn valid_batch_after(
    image: &[u8],
    from: usize,
    segment: (u64, u32),
    after: SeqNo,
) -> Option<usize> {
    let mut pos = align_up(from as u64) as usize;
    while pos + BATCH_HEADER_BYTES <= image.len() {
        if image[pos..pos + 4] == BATCH_MAGIC.to_le_bytes() {
            if let BatchParse::Valid {
                first_seq, count, ..
            } = parse_batch(image, pos, segment)
            {
                if count > 0 && first_seq > after {
                    return Some(pos);
                }
            }
        }
        pos += IO_ALIGN as usize;
    }
    None
}

/// Whether any block of `image` after the header starts like a batch of segment `id` (magic
/// and id; the checksum cannot be checked without the segment's salt).
fn looks_like_batch_of(image: &[u8], id: u64) -> bool {
    let mut pos = FIRST_BATCH_OFFSET as usize;
    while pos + BATCH_HEADER_BYTES <= image.len() {
        let header: BatchHeader =
            bytemuck::pod_read_unaligned(&image[pos..pos + BATCH_HEADER_BYTES]);
        if header.magic == BATCH_MAGIC && header.segment_id == id {
            return true;
        }
        pos += IO_ALIGN as usize;
    }
    false
}

/// Where to look for valid data after an invalid batch at `pos`: past its declared extent when
/// its header is plausible (nothing inside a torn batch, such as a value that happens to look
/// like a batch header, may count), else the next block.
fn scan_start_after_invalid(image: &[u8], pos: usize) -> usize {
    let Some(head) = image.get(pos..pos + BATCH_HEADER_BYTES) else {
        return pos + 1;
    };
    let header: BatchHeader = bytemuck::pod_read_unaligned(head);
    let end = pos + BATCH_HEADER_BYTES + header.body_len as usize;
    if header.magic == BATCH_MAGIC && end <= image.len() {
        end
    } else {
        pos + 1
    }
}

/// A segment on disk that holds (or will hold) records.
#[derive(Debug)]
struct SegmentInfo {
    path: PathBuf,
    /// The sequence number of its first record; `None` while it holds none.
    first_seq: Option<SeqNo>,
}

/// The segment being written.
#[derive(Debug)]
struct ActiveSegment {
    id: u64,
    /// The salt of this life of the file (see [`SegmentHeader::salt`]).
    salt: u32,
    file: File,
    capacity: u64,
    /// Next write position (block-aligned).
    pos: u64,
}

/// WAL tuning.
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// Size of a segment file, in bytes (a batch larger than this gets a segment of its own).
    pub segment_bytes: u64,
    /// Durability of writes.
    pub durability: Durability,
}

/// Statistics of the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Batches written.
    pub batches: u64,
    /// `fdatasync` calls made.
    pub syncs: u64,
    /// Records written.
    pub records: u64,
    /// Bytes written, padding included.
    pub bytes_written: u64,
    /// Segments created and zero-filled since open.
    pub segments_created: u64,
    /// Released segments reused since open.
    pub segments_recycled: u64,
}

#[derive(Default)]
struct Shared {
    pending: Vec<u8>,
    /// A cleared buffer the writer handed back, reused as the next `pending`.
    spare_pending: Option<Vec<u8>>,
    pending_count: u32,
    pending_first_seq: Option<SeqNo>,
    pending_last_seq: SeqNo,
    /// Highest sequence number handed to `append`.
    appended_seq: SeqNo,
    /// Highest sequence number known durable (synced, or written with `None` durability).
    durable_seq: SeqNo,
    fenced: Option<String>,
    closing: bool,
    /// The writer task has exited; nothing pending will ever be written.
    writer_done: bool,
    writer_waker: Option<Waker>,
    /// Tasks waiting for a sequence number to become durable.
    waiters: Vec<Waker>,
    /// Appends waiting for room in the pending buffer, served in arrival order.
    space: SpaceQueue,
    segments: VecDeque<SegmentInfo>,
    /// Released segment files waiting for reuse (at most [`RECYCLE_MAX`]).
    recycled: Vec<PathBuf>,
    stats: WalStats,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("pending_bytes", &self.pending.len())
            .field("appended_seq", &self.appended_seq)
            .field("durable_seq", &self.durable_seq)
            .field("fenced", &self.fenced)
            .field("closing", &self.closing)
            .field("segments", &self.segments.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn wake_waiters(&mut self) {
        for w in self.waiters.drain(..) {
            w.wake();
        }
    }

    fn wake_all(&mut self) {
        self.wake_waiters();
        self.space.wake_all();
    }

    fn fence(&mut self, reason: String) {
        tracing::error!(%reason, "fencing the write-ahead log");
        if self.fenced.is_none() {
            self.fenced = Some(reason);
        }
        self.pending.clear();
        self.pending_count = 0;
        self.pending_first_seq = None;
        self.wake_all();
    }

    fn fenced_error(&self) -> Option<Error> {
        self.fenced.as_ref().map(|reason| Error::WalFenced {
            reason: reason.clone(),
        })
    }
}

/// The write-ahead log of one shard.
#[derive(Debug)]
pub struct Wal {
    shared: Rc<RefCell<Shared>>,
    writer: RefCell<Option<runtime::JoinHandle<()>>>,
    durability: Durability,
}

/// What recovery found.
#[derive(Debug)]
pub struct Recovered {
    /// The highest sequence number in the log (or the floor given, if higher).
    pub last_seq: SeqNo,
    /// Records replayed (those above the floor).
    pub replayed: u64,
    /// Bytes of torn or partial tail that were zeroed.
    pub truncated_bytes: u64,
}

impl Wal {
    /// Opens the log in `dir`, replays every record with a sequence number above `floor` into
    /// `apply` in log order, and starts the writer.
    ///
    /// # Errors
    /// [`Error::Corruption`] for damage that is not a torn tail; I/O errors.
    pub async fn open(
        dir: &Path,
        shard_id: ShardId,
        options: WalOptions,
        floor: SeqNo,
        mut apply: impl FnMut(RecordRef<'_>),
    ) -> Result<(Wal, Recovered)> {
        let mut ids = Vec::new();
        let mut recycled = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list", dir, e))?;
            let name = entry.file_name();
            let name = name.to_str();
            if let Some(id) = name.and_then(parse_segment_name) {
                ids.push(id);
            } else if name.and_then(parse_recycle_name).is_some() {
                if recycled.len() < RECYCLE_MAX {
                    recycled.push(entry.path());
                } else {
                    runtime::remove(&entry.path())
                        .await
                        .map_err(|e| Error::io("remove", entry.path(), e))?;
                }
            }
        }
        ids.sort_unstable();
        if !recycled.is_empty() {
            // Their renames may predate a crash: make them durable before any is reused.
            runtime::sync_dir(dir)
                .await
                .map_err(|e| Error::io("sync directory", dir, e))?;
        }

        let mut segments = VecDeque::new();
        let mut last_seq = floor;
        let mut replayed = 0;
        let mut truncated_bytes = 0;
        let mut active: Option<ActiveSegment> = None;
        // Set once a segment ended in damage: any later valid batch is then corruption.
        let mut damaged_at: Option<(PathBuf, u64, &'static str)> = None;
        // The last sequence number of the previous valid batch: batches must continue it.
        let mut prev_last: Option<SeqNo> = None;
        // Torn tails to zero once the whole log is known to be sound (never before: a shard
        // that refuses to open must leave the evidence as it found it).
        let mut tails: Vec<(PathBuf, u64, u64)> = Vec::new();

        for (i, &id) in ids.iter().enumerate() {
            let is_last = i + 1 == ids.len();
            let path = segment_path(dir, id);
            let file = File::open_rw(&path)
                .await
                .map_err(|e| Error::io("open", &path, e))?;
            let size = file.size().await.map_err(|e| Error::io("stat", &path, e))?;
            let image = read_whole(&file, size)
                .await
                .map_err(|e| Error::io("read", &path, e))?;
            let header_ok = image.len() >= std::mem::size_of::<SegmentHeader>() && {
                let h: SegmentHeader =
                    bytemuck::pod_read_unaligned(&image[..std::mem::size_of::<SegmentHeader>()]);
                h.magic == SEGMENT_MAGIC
                    && h.checksum_ok()
                    && h.segment_id == id
                    && (h.format_version == SEGMENT_FORMAT_VERSION
                        || (h.format_version == 1 && h.salt == 0))
            };
            if !header_ok {
                // Without a header there is no salt to check batches with: any block that looks
                // like a batch of this segment means it held records, and must not be removed.
                if is_last && !looks_like_batch_of(&image, id) {
                    // A segment whose preparation was cut short: it never held a record.
                    tracing::warn!(path = %path.display(), "removing half-prepared WAL segment");
                    file.close()
                        .await
                        .map_err(|e| Error::io("close", &path, e))?;
                    runtime::remove(&path)
                        .await
                        .map_err(|e| Error::io("remove", &path, e))?;
                    continue;
                }
                return Err(Error::corruption(&path, 0, "bad WAL segment header"));
            }
            let header: SegmentHeader =
                bytemuck::pod_read_unaligned(&image[..std::mem::size_of::<SegmentHeader>()]);
            if header.shard_id != shard_id.0 {
                return Err(Error::Incompatible {
                    path,
                    reason: format!(
                        "WAL segment belongs to shard {}, not shard {}",
                        header.shard_id, shard_id.0
                    ),
                });
            }
            let segment = (id, header.salt);
            let mut pos = FIRST_BATCH_OFFSET as usize;
            let mut first_seq = None;
            let mut stale_end = false;
            loop {
                match parse_batch(&image, pos, segment) {
                    BatchParse::Valid {
                        first_seq: batch_first,
                        count,
                        body,
                        next,
                    } => {
                        if let Some((dpath, doff, why)) = &damaged_at {
                            // An earlier segment ended in bytes that are not a batch. If this
                            // batch continues that segment's last one, nothing is missing: the
                            // bytes were a recycled file's old contents (which need not start
                            // on a batch boundary), not damaged data.
                            let continues =
                                prev_last.is_some_and(|p| batch_first.0 == p.0.wrapping_add(1));
                            if !continues {
                                return Err(Error::corruption(
                                    dpath,
                                    *doff,
                                    format!(
                                        "{why}, and valid WAL data follows at {}:{pos}",
                                        path.display()
                                    ),
                                ));
                            }
                            let dpath = dpath.clone();
                            tails.retain(|(p, _, _)| *p != dpath);
                            damaged_at = None;
                        }
                        if let Some(prev) = prev_last {
                            if batch_first.0 != prev.0.wrapping_add(1) {
                                return Err(Error::corruption(
                                    &path,
                                    pos as u64,
                                    format!(
                                        "batch starts at sequence {} but the log reached {}: \
                                         records are missing",
                                        batch_first.0, prev.0
                                    ),
                                ));
                            }
                        }
                        first_seq.get_or_insert(batch_first);
                        let n = replay_batch(&path, pos, batch_first, count, body, |rec| {
                            if rec.seq > last_seq {
                                last_seq = rec.seq;
                            }
                            if rec.seq > floor {
                                replayed += 1;
                                apply(rec);
                            }
                        })?;
                        debug_assert_eq!(n, count);
                        if count > 0 {
                            prev_last = Some(SeqNo(batch_first.0 + u64::from(count) - 1));
                        }
                        pos = next;
                    }
                    end @ (BatchParse::Empty | BatchParse::Stale) => {
                        // Nothing written here, or a recycled file's old contents: this
                        // segment's data ends here. A batch of this segment further on would
                        // mean damage in between.
                        let what = if matches!(end, BatchParse::Stale) {
                            stale_end = true;
                            "stale batch of another segment"
                        } else {
                            "zeroed block"
                        };
                        let after = prev_last.unwrap_or(SeqNo(0));
                        if let Some(later) = valid_batch_after(&image, pos + 1, segment, after) {
                            return Err(Error::corruption(
                                &path,
                                pos as u64,
                                format!("{what}, and a valid batch follows at offset {later}"),
                            ));
                        }
                        break;
                    }
                    BatchParse::Invalid(why) => {
                        let after = prev_last.unwrap_or(SeqNo(0));
                        let from = scan_start_after_invalid(&image, pos);
                        if let Some(later) = valid_batch_after(&image, from, segment, after) {
                            return Err(Error::corruption(
                                &path,
                                pos as u64,
                                format!("{why}, and a valid batch follows at offset {later}"),
                            ));
                        }
                        damaged_at = Some((path.clone(), pos as u64, why));
                        break;
                    }
                }
            }
            // Whatever follows the last valid batch (a torn tail, or nothing) is zeroed later. In
            // a salted segment only the torn batch itself is: nothing after it can pass for data
            // of this life of the file, and the rest may be a recycled file's old contents, up to
            // the whole segment.
            if !stale_end && image[pos.min(image.len())..].iter().any(|&b| b != 0) {
                let garbage_end = if header.salt == 0 {
                    image.iter().rposition(|&b| b != 0).map_or(pos, |p| p + 1)
                } else {
                    scan_start_after_invalid(&image, pos).min(image.len())
                };
                let len = align_up((garbage_end - pos) as u64);
                tails.push((path.clone(), pos as u64, len));
            }
            segments.push_back(SegmentInfo {
                path: path.clone(),
                first_seq,
            });
            if let Some(prev) = active.take() {
                prev.file
                    .close()
                    .await
                    .map_err(|e| Error::io("close", dir, e))?;
            }
            active = Some(ActiveSegment {
                id,
                salt: header.salt,
                file,
                capacity: size,
                pos: pos as u64,
            });
        }

        // The log is sound: now cut off the torn tails.
        for (path, pos, len) in tails {
            tracing::warn!(path = %path.display(), offset = pos, bytes = len, "zeroing torn WAL tail");
            let file = File::open_rw(&path)
                .await
                .map_err(|e| Error::io("open", &path, e))?;
            let zeros = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
            file.write_aligned(pos, &zeros)
                .await
                .map_err(|e| Error::io("zero torn tail of", &path, e))?;
            file.sync_data()
                .await
                .map_err(|e| Error::io("sync", &path, e))?;
            file.close()
                .await
                .map_err(|e| Error::io("close", &path, e))?;
            truncated_bytes += len;
        }

        let active = match active {
            Some(a) => a,
            None => {
                let id = ids.last().map_or(1, |l| l + 1);
                let (seg, _) =
                    prepare_segment(dir, id, shard_id, options.segment_bytes, recycled.pop())
                        .await?;
                segments.push_back(SegmentInfo {
                    path: segment_path(dir, id),
                    first_seq: None,
                });
                seg
            }
        };
        let active = reopen_for_writing(active, options.durability).await?;

        let shared = Rc::new(RefCell::new(Shared {
            appended_seq: last_seq,
            durable_seq: last_seq,
            pending_last_seq: last_seq,
            segments,
            recycled,
            ..Shared::default()
        }));
        let writer = runtime::spawn_detached(writer_loop(
            shared.clone(),
            dir.to_path_buf(),
            shard_id,
            options.clone(),
            active,
        ));
        let wal = Wal {
            shared,
            writer: RefCell::new(Some(writer)),
            durability: options.durability,
        };
        Ok((
            wal,
            Recovered {
                last_seq,
                replayed,
                truncated_bytes,
            },
        ))
    }

    /// The durability mode.
    #[must_use]
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Waits until there is room for another record in the pending buffer.
    ///
    /// # Errors
    /// [`Error::WalFenced`] or [`Error::Closed`].
    pub async fn reserve(&self) -> Result<()> {
        WaitSpace {
            shared: &self.shared,
            ticket: None,
        }
        .await
    }

    /// Queues a record (its `seq` must be the next sequence number). Does not wait.
    ///
    /// # Errors
    /// [`Error::WalFenced`] or [`Error::Closed`].
    pub fn append(&self, rec: &RecordRef<'_>) -> Result<()> {
        let mut s = self.shared.borrow_mut();
        if let Some(e) = s.fenced_error() {
            return Err(e);
        }
        if s.closing {
            return Err(Error::Closed);
        }
        assert!(
            rec.seq.0 == s.appended_seq.0 + 1,
            "sequence numbers must be consecutive (replay rejects gaps)"
        );
        s.appended_seq = rec.seq;
        frame_record(rec, &mut s.pending);
        s.pending_count += 1;
        s.pending_first_seq.get_or_insert(rec.seq);
        s.pending_last_seq = rec.seq;
        if let Some(w) = s.writer_waker.take() {
            w.wake();
        }
        Ok(())
    }

    /// Waits until every record up to `seq` is durable.
    ///
    /// # Errors
    /// [`Error::WalFenced`] if the log failed before `seq` became durable.
    pub async fn wait_durable(&self, seq: SeqNo) -> Result<()> {
        WaitFor {
            shared: &self.shared,
            ready: move |s: &Shared| s.durable_seq >= seq,
        }
        .await
    }

    /// The highest sequence number known durable.
    #[must_use]
    pub fn durable_seq(&self) -> SeqNo {
        self.shared.borrow().durable_seq
    }

    /// The fencing reason, if the log is fenced.
    #[must_use]
    pub fn fenced(&self) -> Option<Error> {
        self.shared.borrow().fenced_error()
    }

    /// Statistics so far.
    #[must_use]
    pub fn stats(&self) -> WalStats {
        self.shared.borrow().stats
    }

    /// Deletes every segment whose records all have sequence numbers at or below `seq` (they are
    /// in SSTables recorded by the manifest). The segment being written is never deleted.
    ///
    /// # Errors
    /// I/O errors from unlinking.
    pub async fn release_through(&self, seq: SeqNo, dir: &Path) -> Result<usize> {
        let doomed: Vec<PathBuf> = {
            let mut s = self.shared.borrow_mut();
            let mut doomed = Vec::new();
            // A segment's records end before the first record of the next segment that holds
            // any (an empty segment in between holds none).
            while s.segments.len() >= 2 {
                let next_first = s.segments.iter().skip(1).find_map(|g| g.first_seq);
                match next_first {
                    Some(next) if next.0.saturating_sub(1) <= seq.0 => {
                        let seg = s.segments.pop_front().expect("INVARIANT: len >= 2");
                        doomed.push(seg.path);
                    }
                    _ => break,
                }
            }
            doomed
        };
        // Renamed files join the pool only once the directory sync made the renames durable:
        // a file reused (its header rewritten for a new id) while the directory may still name
        // it as the old segment would look damaged after a power failure.
        let mut pooled = Vec::new();
        for path in &doomed {
            let old_id = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(parse_segment_name)
                .expect("INVARIANT: segment paths are made by segment_path");
            let keep = self.shared.borrow().recycled.len() + pooled.len() < RECYCLE_MAX;
            if keep {
                let to = recycle_path(dir, old_id);
                runtime::rename(path, &to)
                    .await
                    .map_err(|e| Error::io("rename", path, e))?;
                pooled.push(to);
            } else {
                runtime::remove(path)
                    .await
                    .map_err(|e| Error::io("remove", path, e))?;
            }
        }
        if !doomed.is_empty() {
            runtime::sync_dir(dir)
                .await
                .map_err(|e| Error::io("sync directory", dir, e))?;
        }
        self.shared.borrow_mut().recycled.extend(pooled);
        Ok(doomed.len())
    }

    /// Writes and syncs everything pending, stops the writer and closes the segment. Later
    /// appends fail with [`Error::Closed`].
    ///
    /// # Errors
    /// [`Error::WalFenced`] if the final write or sync failed.
    pub async fn shutdown(&self) -> Result<()> {
        {
            let mut s = self.shared.borrow_mut();
            s.closing = true;
            if let Some(w) = s.writer_waker.take() {
                w.wake();
            }
        }
        let writer = self.writer.borrow_mut().take();
        if let Some(writer) = writer {
            writer.await;
        }
        match self.shared.borrow().fenced_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// [`Wal::shutdown`], consuming the log.
    ///
    /// # Errors
    /// As [`Wal::shutdown`].
    pub async fn close(self) -> Result<()> {
        self.shutdown().await
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        // A Wal dropped without close(): ask the writer to finish what is pending and stop.
        let mut s = self.shared.borrow_mut();
        s.closing = true;
        if let Some(w) = s.writer_waker.take() {
            w.wake();
        }
    }
}

/// Reads a whole file in bounded chunks (one huge direct read can stall some kernels).
async fn read_whole(file: &File, size: u64) -> std::io::Result<Vec<u8>> {
    const CHUNK: u64 = 1 << 20;
    let mut image = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    let mut at = 0;
    while at < size {
        let n = (size - at).min(CHUNK);
        let part = file
            .read_exact_at(at, usize::try_from(n).unwrap_or(usize::MAX))
            .await?;
        image.extend_from_slice(&part);
        at += n;
    }
    Ok(image)
}

/// Decodes the frames of one batch and hands each record to `f`. Returns the record count.
fn replay_batch(
    path: &Path,
    batch_pos: usize,
    first_seq: SeqNo,
    count: u32,
    body: &[u8],
    mut f: impl FnMut(RecordRef<'_>),
) -> Result<u32> {
    let mut at = 0;
    let mut n = 0u32;
    let mut expected_seq = first_seq;
    let offset_of = |at: usize| (batch_pos + BATCH_HEADER_BYTES + at) as u64;
    while at < body.len() {
        let Some(head) = body.get(at..at + FRAME_HEADER_BYTES) else {
            return Err(Error::corruption(
                path,
                offset_of(at),
                "truncated record frame",
            ));
        };
        let crc = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        let Some(payload) = body.get(at + FRAME_HEADER_BYTES..at + FRAME_HEADER_BYTES + len) else {
            return Err(Error::corruption(
                path,
                offset_of(at),
                "record runs past its batch",
            ));
        };
        let actual = crc32c::crc32c_append(crc32c::crc32c(&head[4..]), payload);
        if actual != crc {
            return Err(Error::ChecksumMismatch {
                path: path.to_path_buf(),
                offset: offset_of(at),
                expected: crc,
                actual,
            });
        }
        let (rec, used) = record::decode(payload)
            .map_err(|e| Error::corruption(path, offset_of(at), e.to_string()))?;
        if used != len {
            return Err(Error::corruption(
                path,
                offset_of(at),
                "record length mismatch",
            ));
        }
        if rec.blob {
            // Only tables hold value-log references; the log holds every value inline.
            return Err(Error::corruption(
                path,
                offset_of(at),
                "value-log reference in the write-ahead log",
            ));
        }
        if rec.seq != expected_seq {
            return Err(Error::corruption(
                path,
                offset_of(at),
                format!(
                    "sequence {} where {} was expected",
                    rec.seq.0, expected_seq.0
                ),
            ));
        }
        expected_seq = SeqNo(
            expected_seq
                .0
                .checked_add(1)
                .filter(|&n| n < u64::MAX)
                .ok_or_else(|| {
                    Error::corruption(path, offset_of(at), "sequence number out of range")
                })?,
        );
        f(rec);
        n += 1;
        at += FRAME_HEADER_BYTES + len;
    }
    if n != count {
        return Err(Error::corruption(
            path,
            batch_pos as u64,
            format!("batch says {count} records, holds {n}"),
        ));
    }
    Ok(n)
}

/// Creates segment `id`: allocated, zero-filled, header written, synced, directory synced.
/// With `recycled` (a released segment file) of the right size, that file is reused instead:
/// its header is rewritten for `id` and synced before it is renamed into place, and its old
/// batches stay, recognisable by their segment id. A file of another size is deleted.
async fn prepare_segment(
    dir: &Path,
    id: u64,
    shard_id: ShardId,
    capacity: u64,
    recycled: Option<PathBuf>,
) -> Result<(ActiveSegment, bool)> {
    let capacity = align_up(capacity.max(2 * IO_ALIGN));
    let path = segment_path(dir, id);
    let mut reused = None;
    if let Some(old) = recycled {
        let file = File::open_rw(&old)
            .await
            .map_err(|e| Error::io("open", &old, e))?;
        let size = file.size().await.map_err(|e| Error::io("stat", &old, e))?;
        let fits = size == capacity;
        if fits {
            reused = Some(write_segment_header(&file, id, shard_id, capacity, &old).await?);
        }
        file.close()
            .await
            .map_err(|e| Error::io("close", &old, e))?;
        if fits {
            runtime::rename(&old, &path)
                .await
                .map_err(|e| Error::io("rename", &old, e))?;
        } else {
            runtime::remove(&old)
                .await
                .map_err(|e| Error::io("remove", &old, e))?;
        }
    }
    let (file, salt) = match reused {
        Some(salt) => {
            let file = File::open_rw(&path)
                .await
                .map_err(|e| Error::io("open", &path, e))?;
            (file, salt)
        }
        None => {
            let file = File::create_new(&path)
                .await
                .map_err(|e| Error::io("create", &path, e))?;
            file.pre_allocate(capacity, true)
                .await
                .map_err(|e| Error::io("allocate", &path, e))?;
            // Zero-fill so that later writes overwrite written extents: fdatasync then has no
            // extent conversion to journal, which halves its cost on ext4.
            let zeros = vec![0u8; ZERO_CHUNK_BYTES];
            let mut at = IO_ALIGN;
            while at < capacity {
                let n = (capacity - at).min(ZERO_CHUNK_BYTES as u64);
                file.write_aligned(at, &zeros[..usize::try_from(n).unwrap_or(ZERO_CHUNK_BYTES)])
                    .await
                    .map_err(|e| Error::io("zero-fill", &path, e))?;
                at += n;
            }
            let salt = write_segment_header(&file, id, shard_id, capacity, &path).await?;
            (file, salt)
        }
    };
    runtime::sync_dir(dir)
        .await
        .map_err(|e| Error::io("sync directory", dir, e))?;
    Ok((
        ActiveSegment {
            id,
            salt,
            file,
            capacity,
            pos: FIRST_BATCH_OFFSET,
        },
        reused.is_some(),
    ))
}

/// Writes the header block of segment `id`, with a fresh salt, and syncs the file; returns the
/// salt.
async fn write_segment_header(
    file: &File,
    id: u64,
    shard_id: ShardId,
    capacity: u64,
    path: &Path,
) -> Result<u32> {
    let mut block = vec![0u8; IO_ALIGN as usize];
    let salt = new_salt(id);
    let header = SegmentHeader::new(id, shard_id, capacity, salt);
    block[..std::mem::size_of::<SegmentHeader>()].copy_from_slice(bytemuck::bytes_of(&header));
    file.write_aligned(0, &block)
        .await
        .map_err(|e| Error::io("write header of", path, e))?;
    file.sync_data()
        .await
        .map_err(|e| Error::io("sync", path, e))?;
    Ok(salt)
}

/// With `Sync` durability, reopens the segment with `O_DSYNC` so that each group commit is one
/// write instead of a write and an `fdatasync` (half the I/O round trips on the commit path).
async fn reopen_for_writing(seg: ActiveSegment, durability: Durability) -> Result<ActiveSegment> {
    if durability != Durability::Sync || seg.file.is_dsync() {
        return Ok(seg);
    }
    let path = seg.file.path().to_path_buf();
    seg.file
        .close()
        .await
        .map_err(|e| Error::io("close", &path, e))?;
    let file = File::open_rw_dsync(&path)
        .await
        .map_err(|e| Error::io("open", &path, e))?;
    Ok(ActiveSegment { file, ..seg })
}

/// A future that resolves once `ready` holds, or fails once the log is fenced or closed.
struct WaitFor<'a, F> {
    shared: &'a Rc<RefCell<Shared>>,
    ready: F,
}

/// Appends waiting for room in the pending buffer, by ticket: first come, first served. A
/// newcomer does not pass anyone already waiting (without this, writers that loop on puts took
/// every freed byte and one writer waited a whole 6 s benchmark run).
#[derive(Debug, Default)]
struct SpaceQueue {
    next_ticket: u64,
    /// Tickets waiting, oldest first, with the waker of each (once it has polled).
    waiting: VecDeque<(u64, Option<Waker>)>,
}

impl SpaceQueue {
    fn take_ticket(&mut self) -> u64 {
        let t = self.next_ticket;
        self.next_ticket += 1;
        self.waiting.push_back((t, None));
        t
    }

    fn is_head(&self, ticket: u64) -> bool {
        self.waiting.front().is_some_and(|&(t, _)| t == ticket)
    }

    fn set_waker(&mut self, ticket: u64, waker: &Waker) {
        if let Some(entry) = self.waiting.iter_mut().find(|(t, _)| *t == ticket) {
            entry.1 = Some(waker.clone());
        }
    }

    /// Removes a ticket (served, or its append was dropped) and wakes the new head, which may
    /// fit in the room left.
    fn remove(&mut self, ticket: u64) {
        self.waiting.retain(|&(t, _)| t != ticket);
        self.wake_head();
    }

    fn wake_head(&self) {
        if let Some((_, Some(w))) = self.waiting.front() {
            w.wake_by_ref();
        }
    }

    fn wake_all(&self) {
        for (_, w) in &self.waiting {
            if let Some(w) = w {
                w.wake_by_ref();
            }
        }
    }
}

/// Resolves once the pending buffer has room for this append and no earlier append waits.
struct WaitSpace<'a> {
    shared: &'a Rc<RefCell<Shared>>,
    ticket: Option<u64>,
}

impl Future for WaitSpace<'_> {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let shared = self.shared;
        let mut s = shared.borrow_mut();
        let failed = s
            .fenced_error()
            .or_else(|| s.writer_done.then_some(Error::Closed));
        if let Some(e) = failed {
            if let Some(t) = self.ticket.take() {
                s.space.remove(t);
            }
            return Poll::Ready(Err(e));
        }
        let room = s.pending.len() < PENDING_BYTES_MAX;
        let ticket = match self.ticket {
            None if room && s.space.waiting.is_empty() => return Poll::Ready(Ok(())),
            None => {
                let t = s.space.take_ticket();
                self.ticket = Some(t);
                t
            }
            Some(t) => t,
        };
        if room && s.space.is_head(ticket) {
            self.ticket = None;
            s.space.remove(ticket);
            return Poll::Ready(Ok(()));
        }
        s.space.set_waker(ticket, cx.waker());
        Poll::Pending
    }
}

impl Drop for WaitSpace<'_> {
    fn drop(&mut self) {
        // An append abandoned while waiting must not hold up those behind it.
        if let Some(t) = self.ticket.take() {
            self.shared.borrow_mut().space.remove(t);
        }
    }
}

impl<F: Fn(&Shared) -> bool + Unpin> Future for WaitFor<'_, F> {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let mut s = self.shared.borrow_mut();
        if (self.ready)(&s) {
            return Poll::Ready(Ok(()));
        }
        if let Some(e) = s.fenced_error() {
            return Poll::Ready(Err(e));
        }
        if s.writer_done {
            return Poll::Ready(Err(Error::Closed));
        }
        s.waiters.push(cx.waker().clone());
        Poll::Pending
    }
}

/// Resolves when there is pending work, or the log is closing.
struct WorkReady<'a> {
    shared: &'a Rc<RefCell<Shared>>,
}

impl Future for WorkReady<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.shared.borrow_mut();
        if !s.pending.is_empty() || s.closing {
            return Poll::Ready(());
        }
        s.writer_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// The single writer: takes all pending records, writes them as one batch, syncs, acknowledges.
async fn writer_loop(
    shared: Rc<RefCell<Shared>>,
    dir: PathBuf,
    shard_id: ShardId,
    options: WalOptions,
    mut active: ActiveSegment,
) {
    let mut spare: Option<runtime::JoinHandle<Result<(ActiveSegment, bool)>>> = None;
    let mut unsynced = false;
    let mut last_sync = Instant::now();
    loop {
        // Wait for work; with periodic durability, wake up to sync what is unsynced.
        match options.durability {
            Durability::Periodic(ms) if unsynced => {
                let due = last_sync + Duration::from_millis(ms);
                let wait = due.saturating_duration_since(Instant::now());
                futures_lite::future::or(WorkReady { shared: &shared }, runtime::sleep(wait)).await;
            }
            _ => WorkReady { shared: &shared }.await,
        }
        let (body, count, first_seq, last_seq, closing) = {
            let mut s = shared.borrow_mut();
            if s.fenced.is_some() {
                break;
            }
            let fresh = s.spare_pending.take().unwrap_or_default();
            let body = std::mem::replace(&mut s.pending, fresh);
            let count = std::mem::take(&mut s.pending_count);
            let first = s.pending_first_seq.take();
            // Appends blocked on a full buffer may go on, oldest first.
            s.space.wake_head();
            (body, count, first, s.pending_last_seq, s.closing)
        };
        if let Some(first_seq) = first_seq {
            let result = write_batch(
                &shared,
                &dir,
                shard_id,
                &options,
                &mut active,
                &mut spare,
                first_seq,
                count,
                &body,
            )
            .await;
            if let Err(e) = result {
                shared.borrow_mut().fence(e.to_string());
                break;
            }
            let mut body = body;
            body.clear();
            if body.capacity() <= 2 * PENDING_BYTES_MAX {
                shared.borrow_mut().spare_pending = Some(body);
            }
            // An O_DSYNC write is durable once it completes.
            unsynced = !active.file.is_dsync();
            let mut s = shared.borrow_mut();
            s.stats.records += u64::from(count);
            if active.file.is_dsync() {
                s.stats.syncs += 1;
                s.durable_seq = last_seq;
                s.wake_waiters();
            }
            if options.durability == Durability::None {
                s.durable_seq = last_seq;
                s.wake_waiters();
            }
        }
        let periodic_due = matches!(options.durability, Durability::Periodic(ms)
            if last_sync.elapsed() >= Duration::from_millis(ms));
        let must_sync =
            unsynced && (options.durability == Durability::Sync || periodic_due || closing);
        if must_sync {
            if let Err(e) = active.file.sync_data().await {
                shared
                    .borrow_mut()
                    .fence(format!("fdatasync {}: {e}", active.file.path().display()));
                break;
            }
            unsynced = false;
            last_sync = Instant::now();
            let mut s = shared.borrow_mut();
            s.stats.syncs += 1;
            s.durable_seq = last_seq;
            s.wake_waiters();
        }
        if closing && shared.borrow().pending.is_empty() {
            break;
        }
    }
    if let Some(spare) = spare.take() {
        if let Some(Ok((seg, _))) = spare.await {
            let _ = seg.file.close().await;
        }
    }
    let path = active.file.path().to_path_buf();
    if let Err(e) = active.file.close().await {
        tracing::warn!(path = %path.display(), error = %e, "closing WAL segment");
    }
    let mut s = shared.borrow_mut();
    s.closing = true;
    s.writer_done = true;
    s.writer_waker = None;
    s.wake_all();
}

/// Writes one batch, rotating to a new segment first if it does not fit.
#[allow(clippy::too_many_arguments)]
async fn write_batch(
    shared: &Rc<RefCell<Shared>>,
    dir: &Path,
    shard_id: ShardId,
    options: &WalOptions,
    active: &mut ActiveSegment,
    spare: &mut Option<runtime::JoinHandle<Result<(ActiveSegment, bool)>>>,
    first_seq: SeqNo,
    count: u32,
    body: &[u8],
) -> Result<()> {
    let needed = align_up((BATCH_HEADER_BYTES + body.len()) as u64);
    if active.pos + needed > active.capacity {
        // Make what the old segment holds durable before anything lands in the next one, so that
        // a torn tail can only ever be in the last segment.
        active
            .file
            .sync_data()
            .await
            .map_err(|e| Error::io("sync", active.file.path(), e))?;
        let next_id = active.id + 1;
        // Size the segment for the batch up front when it is larger than a default segment.
        let wanted = options.segment_bytes.max(needed + FIRST_BATCH_OFFSET);
        let prepared = match spare.take() {
            None => {
                let recycled = shared.borrow_mut().recycled.pop();
                prepare_segment(dir, next_id, shard_id, wanted, recycled).await?
            }
            Some(handle) => match handle.await {
                Some(Ok(seg)) => seg,
                failed => {
                    // A failed background preparation (say ENOSPC that a flush has since
                    // freed) is retried here once, from scratch; only a second failure fences.
                    let why = match failed {
                        Some(Err(e)) => e.to_string(),
                        _ => "preparation task vanished".to_owned(),
                    };
                    tracing::warn!(error = %why, "preparing the next WAL segment again");
                    let path = segment_path(dir, next_id);
                    if path.exists() {
                        runtime::remove(&path)
                            .await
                            .map_err(|e| Error::io("remove", &path, e))?;
                    }
                    prepare_segment(dir, next_id, shard_id, wanted, None).await?
                }
            },
        };
        let (prepared, reused) = prepared;
        let prepared = reopen_for_writing(prepared, options.durability).await?;
        let next = if prepared.capacity - FIRST_BATCH_OFFSET >= needed {
            let mut s = shared.borrow_mut();
            if reused {
                s.stats.segments_recycled += 1;
            } else {
                s.stats.segments_created += 1;
            }
            prepared
        } else {
            // Oversized batch: the spare is too small; replace it by one that fits.
            let path = prepared.file.path().to_path_buf();
            prepared
                .file
                .close()
                .await
                .map_err(|e| Error::io("close", &path, e))?;
            runtime::remove(&path)
                .await
                .map_err(|e| Error::io("remove", &path, e))?;
            let (seg, _) =
                prepare_segment(dir, next_id, shard_id, needed + FIRST_BATCH_OFFSET, None).await?;
            shared.borrow_mut().stats.segments_created += 1;
            reopen_for_writing(seg, options.durability).await?
        };
        let old = std::mem::replace(active, next);
        let old_path = old.file.path().to_path_buf();
        old.file
            .close()
            .await
            .map_err(|e| Error::io("close", &old_path, e))?;
        shared.borrow_mut().segments.push_back(SegmentInfo {
            path: segment_path(dir, active.id),
            first_seq: Some(first_seq),
        });
    }
    {
        let mut s = shared.borrow_mut();
        if let Some(seg) = s.segments.back_mut() {
            seg.first_seq.get_or_insert(first_seq);
        }
    }
    let len = batch_len(body.len());
    let segment = (active.id, active.salt);
    active
        .file
        .write_filled(active.pos, len, |out| {
            build_batch_into(out, segment, first_seq, count, body);
        })
        .await
        .map_err(|e| Error::io("write", active.file.path(), e))?;
    active.pos += len as u64;
    {
        let mut s = shared.borrow_mut();
        s.stats.batches += 1;
        s.stats.bytes_written += len as u64;
    }
    // Prepare the next segment in the background once this one is half full.
    if spare.is_none() && active.pos * 2 >= active.capacity {
        let (dir, id, bytes) = (dir.to_path_buf(), active.id + 1, options.segment_bytes);
        let recycled = shared.borrow_mut().recycled.pop();
        *spare = Some(runtime::spawn_detached(async move {
            prepare_segment(&dir, id, shard_id, bytes, recycled).await
        }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trip_and_damage() {
        let mut body = Vec::new();
        for i in 1..=3u64 {
            let rec = RecordRef {
                key: b"k",
                value: Some(b"v"),
                seq: SeqNo(i),
                write_ts_ms: 5,
                expiry_ms: None,
                version: &[],
                blob: false,
            };
            frame_record(&rec, &mut body);
        }
        let batch = build_batch((9, 77), SeqNo(1), 3, &body);
        assert_eq!(batch.len() % IO_ALIGN as usize, 0);
        let mut image = vec![0u8; IO_ALIGN as usize];
        image.extend_from_slice(&batch);
        image.resize(image.len() + 2 * IO_ALIGN as usize, 0);
        let pos = IO_ALIGN as usize;
        match parse_batch(&image, pos, (9, 77)) {
            BatchParse::Valid { count, body, .. } => {
                let mut seqs = Vec::new();
                replay_batch(Path::new("x"), pos, SeqNo(1), count, body, |r| {
                    seqs.push(r.seq.0);
                })
                .expect("replays");
                assert_eq!(seqs, vec![1, 2, 3]);
            }
            _ => panic!("batch must parse"),
        }
        // The same bytes in another life of the file (another salt) are not a batch of it,
        // even under the same segment id.
        assert!(matches!(
            parse_batch(&image, pos, (9, 78)),
            BatchParse::Invalid(_)
        ));
        // A whole batch of another segment written under the same salt is stale data.
        assert!(matches!(
            parse_batch(&image, pos, (8, 77)),
            BatchParse::Stale
        ));
        assert!(matches!(
            parse_batch(&image, pos + IO_ALIGN as usize, (9, 77)),
            BatchParse::Empty
        ));
        image[pos + 40] ^= 1;
        assert!(matches!(
            parse_batch(&image, pos, (9, 77)),
            BatchParse::Invalid(_)
        ));
    }

    #[test]
    fn segment_names() {
        let p = segment_path(Path::new("/d"), 0x2a);
        let name = p.file_name().and_then(|n| n.to_str()).expect("utf-8");
        assert_eq!(parse_segment_name(name), Some(0x2a));
        assert_eq!(parse_segment_name("wal-xyz.log"), None);
        assert_eq!(parse_segment_name("sst-0000000000000001.sst"), None);
    }

    #[test]
    fn segment_header_checksum() {
        let h = SegmentHeader::new(3, ShardId(1), 1 << 20, 5);
        assert!(h.checksum_ok());
        let mut bad = h;
        bad.capacity += 1;
        assert!(!bad.checksum_ok());
    }
}
