//! Snapshots: a shard's SSTables and blob files hard-linked into another directory, with a copy
//! of its manifest, as Cassandra's `nodetool snapshot` links its SSTables. The directory opens
//! as a shard (a restore is a copy of it into a node's data directory); a shard opened from it
//! draws a new actor epoch, since the shard it was taken from went on minting dots after it.

use super::*;

impl Shard {
    /// Flushes the memtables, then hard-links every live SSTable and blob file into `into` (a
    /// directory on the same file system; created if need be, and expected empty) and stores
    /// there a copy of the manifest marked [`RunState::Restored`]. Writes acknowledged before the
    /// call are in it; writes after the flush are not. Under the manifest lock, so no flush or
    /// compaction changes the set of files while they are linked.
    ///
    /// # Errors
    /// A failed flush, an I/O error (a file system without hard links across the two
    /// directories included), or a closed shard.
    pub async fn snapshot_into(&self, into: &Path) -> Result<SnapshotFiles> {
        self.flush().await?;
        let _held = self.inner.manifest_lock.lock(&[]).await;
        let (mut manifest, blob_ids) = {
            let s = self.inner.state.borrow();
            let ids: Vec<u64> = s.blobs.iter().map(|b| b.id).collect();
            (s.manifest.clone(), ids)
        };
        std::fs::create_dir_all(into).map_err(|e| Error::io("create", into, e))?;
        let dir = &self.inner.options.dir;
        let mut files = SnapshotFiles::default();
        let mut link = |from: PathBuf, to: PathBuf| -> Result<()> {
            std::fs::hard_link(&from, &to).map_err(|e| Error::io("link", &from, e))?;
            let len = std::fs::metadata(&to)
                .map_err(|e| Error::io("stat", &to, e))?
                .len();
            files.bytes += len;
            Ok(())
        };
        for &id in &manifest.tables {
            link(sstable::table_path(dir, id), sstable::table_path(into, id))?;
        }
        for &id in &blob_ids {
            link(blob::blob_path(dir, id), blob::blob_path(into, id))?;
        }
        files.tables = manifest.tables.len();
        files.blob_files = blob_ids.len();
        manifest.run = RunState::Restored;
        // Written (and the directory synced, with the links) as any manifest is.
        manifest.store(into).await?;
        tracing::info!(
            into = %into.display(),
            tables = files.tables,
            blob_files = files.blob_files,
            bytes = files.bytes,
            "snapshot taken"
        );
        Ok(files)
    }
}
