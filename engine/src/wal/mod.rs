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
//! # Files
//!
//! `format` (segment headers, batches, names, parsing), `options` (durability, tuning,
//! statistics), `segments` (the segment being written, preparing and recycling the next),
//! `space` (appends waiting for room, first come first served), `state` (what the API and the
//! writer share, and the futures that wait on it), `writer` (the group-commit task) and
//! `recovery` (replay at open, torn tails). This file is the API, [`Wal`]; it imports its
//! parts and none of them imports it.
//!
//! INVARIANT: after an `fdatasync` or write error the log is fenced: every write not yet
//! acknowledged fails and no later write is accepted. There is no retry: the page cache state
//! after a failed sync is unknown (fsyncgate).

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::error::{Error, Result};
use crate::record::{RecordRef, SeqNo, ShardId};
use dynacore_runtime as runtime;

mod format;
mod options;
mod recovery;
mod segments;
mod space;
mod state;
mod writer;

use format::*;
use state::*;

pub use format::{segment_path, SegmentHeader, PENDING_BYTES_MAX};
pub use options::{Durability, WalOptions, WalStats};
pub use recovery::Recovered;

/// The write-ahead log of one shard.
#[derive(Debug)]
pub struct Wal {
    shared: Rc<RefCell<Shared>>,
    writer: RefCell<Option<runtime::JoinHandle<()>>>,
    durability: Durability,
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
        apply: impl FnMut(RecordRef<'_>),
    ) -> Result<(Wal, Recovered)> {
        let durability = options.durability;
        let (shared, writer, recovered) =
            recovery::recover(dir, shard_id, options, floor, apply).await?;
        let wal = Wal {
            shared,
            writer: RefCell::new(Some(writer)),
            durability,
        };
        Ok((wal, recovered))
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

#[cfg(test)]
mod tests {
    use super::recovery::replay_batch;
    use super::*;
    use dynacore_runtime::IO_ALIGN;

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
