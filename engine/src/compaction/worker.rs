//! Carries out a merge: reads the input tables through one merge cursor and writes the newest
//! version of each key to a new table, dropping what no read can see any more.

use std::path::Path;
use std::rc::Rc;

use crate::error::Result;
use crate::record::Token;
use crate::runtime;
use crate::scan::MergeCursor;
use crate::sstable::{BlockCache, SsTable, TableBuilder, TableId};

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

/// Merges `inputs` (adjacent tables, oldest data first) into table `id` in `dir`.
///
/// Shadowed versions are always dropped. When `bottom` (the inputs include the shard's oldest
/// table, so nothing older can be shadowed) tombstones older than `grace_ms` and expired values
/// are dropped too; otherwise they are kept, because they still hide older versions.
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
    bits_per_key: u32,
    cache: Rc<BlockCache>,
) -> Result<(Option<TableId>, MergeStats)> {
    let mut cursor = MergeCursor::new(Vec::new(), inputs, cache, Token(0), Token(u64::MAX));
    let mut builder = TableBuilder::create(dir, id, bits_per_key, None).await?;
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
        if bottom {
            if r.value.is_none() && r.write_ts_ms.saturating_add(grace_ms) <= now_ms {
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
        if stats.written.is_multiple_of(256) {
            runtime::yield_if_needed().await;
        }
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
