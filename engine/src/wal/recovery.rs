//! Opening the log: listing segments, replaying batches in order above the floor, telling a
//! torn tail (zeroed, writing resumes there) from damage (refused), and starting the writer.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use dynacore_runtime::{self as runtime, align_up, File};

use crate::error::{Error, Result};
use crate::record::{self, RecordRef, SeqNo, ShardId};

use super::format::*;
use super::options::*;
use super::segments::*;
use super::state::*;
use super::writer::*;

/// Opens the log in `dir`, replays every record with a sequence number above `floor` into
/// `apply` in log order, and starts the writer.
///
/// # Errors
/// [`Error::Corruption`] for damage that is not a torn tail; I/O errors.
pub(super) async fn recover(
    dir: &Path,
    shard_id: ShardId,
    options: WalOptions,
    floor: SeqNo,
    mut apply: impl FnMut(RecordRef<'_>),
) -> Result<(Rc<RefCell<Shared>>, runtime::JoinHandle<()>, Recovered)> {
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
                    if prev_last.is_none() && batch_first.0 > floor.0.saturating_add(1) {
                        // The log must continue where the tables end: a gap here is a lost
                        // segment (or a manifest from elsewhere), never a fresh start.
                        return Err(Error::corruption(
                            &path,
                            pos as u64,
                            format!(
                                "the log starts at sequence {} but the tables end at sequence \
                                 {}: records {}..={} are missing (a lost WAL segment?)",
                                batch_first.0,
                                floor.0,
                                floor.0 + 1,
                                batch_first.0 - 1
                            ),
                        ));
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
                prepare_segment(dir, id, shard_id, options.segment_bytes, recycled.pop()).await?;
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
    Ok((
        shared,
        writer,
        Recovered {
            last_seq,
            replayed,
            truncated_bytes,
        },
    ))
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

/// Decodes the frames of one batch and hands each record to `f`. Returns the record count.
pub(super) fn replay_batch(
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
