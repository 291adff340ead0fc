//! The single writer task: group commit. It takes everything pending, writes it as one batch,
//! syncs once (with `Sync`), acknowledges, and fences the log on any error.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use dynacore_runtime::{self as runtime, align_up};

use crate::error::{Error, Result};
use crate::record::{SeqNo, ShardId};

use super::format::*;
use super::options::*;
use super::segments::*;
use super::state::*;

/// The single writer: takes all pending records, writes them as one batch, syncs, acknowledges.
pub(super) async fn writer_loop(
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
        if options.durability == Durability::Sync && !options.group_commit_window.is_zero() {
            runtime::sleep(options.group_commit_window).await;
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
pub(super) async fn write_batch(
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
