//! Segment files: the one being written, preparing the next (zero-filled, or recycled), and
//! reading a whole segment back.

use std::path::{Path, PathBuf};

use dynacore_runtime::{self as runtime, align_up, File, IO_ALIGN};

use crate::error::{Error, Result};
use crate::record::{SeqNo, ShardId};

use super::format::*;
use super::options::*;

/// A segment on disk that holds (or will hold) records.
#[derive(Debug)]
pub(super) struct SegmentInfo {
    pub(super) path: PathBuf,
    /// The sequence number of its first record; `None` while it holds none.
    pub(super) first_seq: Option<SeqNo>,
}

/// The segment being written.
#[derive(Debug)]
pub(super) struct ActiveSegment {
    pub(super) id: u64,
    /// The salt of this life of the file (see [`SegmentHeader::salt`]).
    pub(super) salt: u32,
    pub(super) file: File,
    pub(super) capacity: u64,
    /// Next write position (block-aligned).
    pub(super) pos: u64,
}

/// Reads a whole file in bounded chunks (one huge direct read can stall some kernels).
pub(super) async fn read_whole(file: &File, size: u64) -> std::io::Result<Vec<u8>> {
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

/// Creates segment `id`: allocated, zero-filled, header written, synced, directory synced.
/// With `recycled` (a released segment file) of the right size, that file is reused instead:
/// its header is rewritten for `id` and synced before it is renamed into place, and its old
/// batches stay, recognisable by their segment id. A file of another size is deleted.
pub(super) async fn prepare_segment(
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
pub(super) async fn write_segment_header(
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
pub(super) async fn reopen_for_writing(
    seg: ActiveSegment,
    durability: Durability,
) -> Result<ActiveSegment> {
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
