//! The bytes of the log: segment headers, batches and their frames, file names, and parsing
//! with damage detection (the layout is drawn in the module above).

use std::path::{Path, PathBuf};

use bytemuck::{Pod, Zeroable};
use dynacore_runtime::{align_up, IO_ALIGN};

use crate::record::{RecordRef, SeqNo, ShardId};

/// Magic at the start of a segment header: "DYNWAL01" as little-endian bytes.
pub(super) const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"DYNWAL01");
/// 2 since batch checksums are salted; segments of version 1 (salt field zero) still open.
pub(super) const SEGMENT_FORMAT_VERSION: u32 = 2;
/// Magic at the start of a batch: "DWB1".
pub(super) const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"DWB1");
pub(super) const BATCH_HEADER_BYTES: usize = 32;
pub(super) const FRAME_HEADER_BYTES: usize = 8;
/// Offset of the first batch in a segment.
pub(super) const FIRST_BATCH_OFFSET: u64 = IO_ALIGN;
/// Appends wait once this many framed bytes are pending (bounds memory with `None` durability).
pub const PENDING_BYTES_MAX: usize = 4 << 20;
/// Chunk size used to zero-fill segments.
pub(super) const ZERO_CHUNK_BYTES: usize = 1 << 20;

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
    pub(super) fn new(segment_id: u64, shard_id: ShardId, capacity: u64, salt: u32) -> Self {
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

    pub(super) fn checksum_ok(&self) -> bool {
        let mut h = *self;
        h.header_crc = 0;
        crc32c::crc32c(bytemuck::bytes_of(&h)) == self.header_crc
    }
}

/// The header of one batch.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(super) struct BatchHeader {
    pub(super) magic: u32,
    pub(super) crc: u32,
    pub(super) body_len: u32,
    pub(super) record_count: u32,
    pub(super) first_seq: u64,
    pub(super) segment_id: u64,
}

const _: () = assert!(std::mem::size_of::<BatchHeader>() == BATCH_HEADER_BYTES);

pub(super) fn batch_crc(salt: u32, header: &BatchHeader, body: &[u8]) -> u32 {
    let bytes = bytemuck::bytes_of(header);
    let seed = if salt == 0 {
        0
    } else {
        crc32c::crc32c(&salt.to_le_bytes())
    };
    crc32c::crc32c_append(crc32c::crc32c_append(seed, &bytes[8..]), body)
}

/// A fresh non-zero salt for a segment's new life: unpredictable from outside the process.
pub(super) fn new_salt(segment_id: u64) -> u32 {
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
pub(super) fn frame_record(rec: &RecordRef<'_>, out: &mut Vec<u8>) {
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
pub(super) fn batch_len(body_len: usize) -> usize {
    align_up((BATCH_HEADER_BYTES + body_len) as u64) as usize
}

/// Writes a whole batch (header, body, zero padding) into `out`, which is
/// [`batch_len`]`(body.len())` bytes.
pub(super) fn build_batch_into(
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
pub(super) fn build_batch(
    segment: (u64, u32),
    first_seq: SeqNo,
    count: u32,
    body: &[u8],
) -> Vec<u8> {
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
pub(super) fn recycle_path(dir: &Path, old_id: u64) -> PathBuf {
    dir.join(format!("recycle-{old_id:016x}.wal"))
}

pub(super) fn parse_recycle_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("recycle-")?.strip_suffix(".wal")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Released segments kept for reuse. Reusing one skips the zero-fill that a fresh segment
/// needs, which doubled the bytes the WAL wrote.
pub(super) const RECYCLE_MAX: usize = 2;

pub(super) fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// The outcome of parsing one batch at a position of a segment image.
pub(super) enum BatchParse<'a> {
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

pub(super) fn parse_batch(
    image: &[u8],
    pos: usize,
    (segment_id, salt): (u64, u32),
) -> BatchParse<'_> {
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
pub(super) fn valid_batch_after(
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
pub(super) fn looks_like_batch_of(image: &[u8], id: u64) -> bool {
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
pub(super) fn scan_start_after_invalid(image: &[u8], pos: usize) -> usize {
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
