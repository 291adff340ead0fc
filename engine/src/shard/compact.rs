//! The compaction loop: choosing work by the policy, running merges in a paced task queue,
//! retiring replaced tables and blob files once no reader holds them.

use super::*;

impl Shard {
    pub(super) fn start_compactor(&self) {
        if self.inner.options.compaction.enabled {
            self.start_compactor_even_if_disabled();
        }
    }

    pub(super) fn start_compactor_even_if_disabled(&self) {
        {
            let mut s = self.inner.state.borrow_mut();
            if s.compactor_running || s.closing || s.flush_error.is_some() {
                return;
            }
            s.compactor_running = true;
        }
        let shard = self.clone();
        runtime::spawn_detached_into(
            async move { shard.compact_loop().await },
            self.inner.compact_queue,
        );
    }

    pub(super) async fn compact_loop(self) {
        let o = &self.inner.options.compaction;
        // The I/O budget grows with the backlog, up to 16× at the write stall: a low budget keeps
        // reads fast while compaction keeps up, and the stall is avoided when it does not.
        let count = self.inner.table_count.clone();
        let (low, stall) = (o.min_run, o.tables_stall.max(o.min_run + 1));
        #[allow(clippy::cast_precision_loss)]
        let boost = move || {
            let behind = count.get().saturating_sub(low) as f64 / (stall - low) as f64;
            1.0 + 15.0 * behind.min(1.0)
        };
        let mut pacer = Pacer::with_boost(
            o.rate_bytes_per_sec,
            Box::new(boost),
            Duration::from_micros(o.slice_us.max(1)),
            self.inner.activity.clone(),
        );
        loop {
            let (tables, blobs, major, cleanup) = {
                let mut s = self.inner.state.borrow_mut();
                if s.closing {
                    break;
                }
                let cleanup = s.cleanup_requested.take();
                (
                    s.tables.clone(),
                    s.blobs.clone(),
                    std::mem::take(&mut s.major_requested) || cleanup.is_some(),
                    cleanup,
                )
            };
            let sizes: Vec<u64> = tables.iter().map(|t| t.size_bytes()).collect();
            let mut run = if major && !tables.is_empty() {
                Some(0..tables.len())
            } else {
                compaction::choose(&sizes, o)
            };
            // Value-log garbage is collected by a merge of every table (only then is every
            // reference to a relocated file rewritten).
            let mut gc = None;
            if (o.enabled || major)
                && !tables.is_empty()
                && run.as_ref().is_none_or(|r| r.len() == tables.len())
            {
                // A full merge that happens anyway costs the collection nothing extra.
                let merge_bytes = if run.is_some() { 0 } else { sizes.iter().sum() };
                let mut usage = blob_usage(&tables, &blobs);
                {
                    let s = self.inner.state.borrow();
                    usage.retain(|u| !s.blob_gc_skip.contains(&u.id));
                }
                gc = compaction::choose_blob_gc(&usage, merge_bytes, o);
                if gc.is_some() {
                    run = Some(0..tables.len());
                }
            }
            let Some(run) = run else {
                if let Some(job) = cleanup {
                    // No table: nothing to drop.
                    self.inner.state.borrow_mut().cleanup_outcome =
                        Some((job.generation, Ok(MergeStats::default())));
                }
                break;
            };
            let outcome = self
                .compact_run(
                    &tables[run.clone()],
                    run.start == 0,
                    &mut pacer,
                    gc,
                    cleanup.as_ref(),
                )
                .await;
            // The inputs are untouched and still live after a failure; writes and reads go on.
            // The next flush retries.
            let stop = match &outcome {
                Ok(_) => false,
                Err(e @ Error::CleanupAbandoned(_)) => {
                    tracing::info!(error = %e, "cleanup abandoned");
                    false
                }
                Err(e) => {
                    tracing::error!(error = %e, "compaction failed");
                    true
                }
            };
            if let Some(job) = &cleanup {
                self.inner.state.borrow_mut().cleanup_outcome = Some((job.generation, outcome));
            }
            if stop {
                break;
            }
        }
        let mut s = self.inner.state.borrow_mut();
        s.compactor_running = false;
        s.wake_waiters();
    }

    /// Merges adjacent tables `inputs` and swaps the result in, durably, then deletes them and
    /// the blob files nothing points at any more. With `relocate` (the inputs must be every
    /// table), the live values in those blob files are moved to new ones. With `cleanup` (the
    /// inputs must be every table too), the keys it does not keep are dropped, and the output is
    /// installed only if the cleanup is still valid then.
    pub(super) async fn compact_run(
        &self,
        inputs: &[Rc<SsTable>],
        bottom: bool,
        pacer: &mut Pacer,
        relocate: Option<Vec<u64>>,
        cleanup: Option<&CleanupJob>,
    ) -> Result<MergeStats> {
        let started = std::time::Instant::now();
        let inner = &*self.inner;
        let dir = &inner.options.dir;
        let alloc_id = || {
            let mut s = inner.state.borrow_mut();
            s.next_table_id += 1;
            s.next_table_id - 1
        };
        let id = TableId(alloc_id());
        let blobs = inner.state.borrow().blobs.clone();
        let mut alloc_blob_id = alloc_id;
        let relocation = relocate.map(|files| {
            // Tables flushed since the inputs were chosen point only at their own new files.
            let s = inner.state.borrow();
            let others = s
                .tables
                .iter()
                .filter(|t| !inputs.iter().any(|i| i.id() == t.id()));
            assert!(
                bottom
                    && others
                        .flat_map(|t| t.blob_refs())
                        .all(|(id, _)| !files.contains(id)),
                "blob files are emptied only by a merge of every table pointing into them"
            );
            Relocation {
                files: files.into_iter().collect(),
                blobs: &blobs,
                shard_id: inner.options.shard_id,
                file_bytes_max: inner.options.compaction.blob_file_bytes_max,
                alloc_id: &mut alloc_blob_id,
            }
        });
        let job = MergeJob {
            dir,
            id,
            inputs,
            bottom,
            now_ms: inner.options.clock.now_ms(),
            grace_ms: inner.options.compaction.tombstone_grace_ms,
            gate: inner.options.tombstone_gate.as_ref(),
            retire_epochs: inner.options.retire_actor_epochs,
            collect_purges: inner.trees.is_some(),
            bits_per_key: inner.options.bloom_bits_per_key,
            keep: cleanup.map(|c| &*c.keep),
            cache: inner.cache.clone(),
        };
        let merged = compaction::worker::merge(&job, pacer, relocation)
            .await
            .inspect_err(|_| inner.cache.forget_table(id))?;
        let stats = merged.stats;
        let new_blobs = merged.blob_files;
        if !merged.unreadable_blob_files.is_empty() {
            let mut s = inner.state.borrow_mut();
            s.blob_gc_skip.extend(merged.unreadable_blob_files);
        }
        // Nothing names the output yet: a failed merge's is removed (a crash would leave it to
        // the next open). After the manifest store, files are left to the next open, since a
        // failed directory sync may follow a rename that happened.
        let remove_output = |table: Option<TableId>| {
            let mut paths: Vec<PathBuf> = table
                .map(|id| sstable::table_path(dir, id))
                .into_iter()
                .collect();
            paths.extend(new_blobs.iter().map(|b| blob::blob_path(dir, b.id)));
            async move {
                for p in paths {
                    if let Err(r) = runtime::remove(&p).await {
                        tracing::warn!(path = %p.display(), error = %r, "removing a failed merge's output");
                    }
                }
            }
        };
        let table = match merged.table {
            Some(id) => match SsTable::open(dir, id).await {
                Ok(t) => Some(Rc::new(t)),
                Err(e) => {
                    inner.cache.forget_table(id);
                    remove_output(Some(id)).await;
                    return Err(e);
                }
            },
            None => None,
        };
        if let Some(reason) = cleanup.and_then(|c| (c.still_valid)().err()) {
            // What the cleanup kept was decided under another ring: the inputs stay.
            let id = table.as_ref().map(|t| t.id());
            if let Some(id) = id {
                inner.cache.forget_table(id);
            }
            drop(table);
            remove_output(id).await;
            return Err(Error::CleanupAbandoned(reason));
        }
        let input_ids: Vec<TableId> = inputs.iter().map(|t| t.id()).collect();
        self.register_purges(inputs, merged.purged).await;
        let dropped_blobs = {
            let _held = inner.manifest_lock.lock(&[]).await;
            let mut manifest = {
                let s = inner.state.borrow();
                let mut m = s.manifest.clone();
                m.next_table_id = s.next_table_id;
                m
            };
            let at = manifest
                .tables
                .iter()
                .position(|t| *t == input_ids[0])
                .expect("INVARIANT: only the compactor removes tables");
            assert_eq!(
                manifest.tables[at..at + input_ids.len()],
                input_ids[..],
                "compaction inputs must still be adjacent"
            );
            manifest.generation += 1;
            manifest
                .tables
                .splice(at..at + input_ids.len(), table.iter().map(|t| t.id()));
            if let Err(e) = manifest.store(dir).await {
                self.forget_purges();
                return Err(e);
            }
            let mut s = inner.state.borrow_mut();
            s.manifest = manifest;
            // In the same step as the tables: the purged keys' contributions leave the tree.
            self.install_purges();
            let mut tables = (*s.tables).clone();
            let written = table.as_ref().map_or(0, |t| t.size_bytes());
            tables.splice(at..at + input_ids.len(), table);
            inner.table_count.set(tables.len());
            // Blob files come and go with the tables that point at them.
            let with_new = s.blobs.with(new_blobs);
            let unreferenced: Vec<u64> = blob_usage(&tables, &with_new)
                .iter()
                .filter(|u| u.live_bytes == 0)
                .map(|u| u.id)
                .collect();
            let (blobs, dropped) = with_new.without(&unreferenced);
            s.tables = Rc::new(tables);
            s.blobs = Rc::new(blobs);
            s.compactions += 1;
            s.purged += stats.tombstones_dropped + stats.expired_dropped;
            s.cleaned_up += stats.cleaned_up;
            s.kept_by_gate += stats.kept_by_gate;
            s.compaction_bytes_written += written;
            s.blob_bytes_relocated += stats.relocated_bytes;
            s.blob_files_deleted += dropped.len() as u64;
            s.retiring += 1;
            s.wake_waiters();
            dropped
        };
        inner
            .timings
            .borrow_mut()
            .compaction
            .record(started.elapsed());
        tracing::debug!(inputs = input_ids.len(), ?stats, "compaction done");
        let shard = self.clone();
        let retired = inputs.to_vec();
        runtime::spawn_detached_into(
            async move { shard.retire(retired, dropped_blobs).await },
            inner.compact_queue,
        );
        Ok(stats)
    }

    /// Waits until no reader holds `shared` (readers hold tables and blob files for the length
    /// of a get or a scan); `None` if the shard starts closing first.
    pub(super) async fn sole_owner<T>(&self, mut shared: Rc<T>) -> Option<T> {
        loop {
            match Rc::try_unwrap(shared) {
                Ok(t) => return Some(t),
                Err(s) if !self.inner.state.borrow().closing => {
                    shared = s;
                    runtime::sleep(Duration::from_millis(1)).await;
                }
                // Closing with a reader still holding it: the next open removes the file.
                Err(_) => return None,
            }
        }
    }

    /// Deletes tables a compaction replaced and blob files nothing points at any more, once no
    /// reader holds them: a table's blocks leave the cache 512 KiB at a time (freeing 100 MiB of
    /// blocks at once stalled the executor for 20 ms), then each file is closed before it is
    /// unlinked (see [`SsTable::close`]). A crash before this leaves files that the manifest's
    /// tables do not name or point at, which the next open removes.
    pub(super) async fn retire(self, tables: Vec<Rc<SsTable>>, blobs: Vec<Rc<BlobMeta>>) {
        let dir = self.inner.options.dir.clone();
        let mut failed = None;
        for table in tables {
            let Some(owned) = self.sole_owner(table).await else {
                continue;
            };
            let mut freed = 0;
            for i in 0..owned.block_count() {
                freed += self.inner.cache.remove(owned.id(), owned.block_offset(i));
                if freed >= 512 << 10 {
                    freed = 0;
                    runtime::pause_for_io().await;
                }
            }
            let path = sstable::table_path(&dir, owned.id());
            if let Err(e) = owned.close().await {
                failed = Some(e);
            }
            if let Err(e) = runtime::remove(&path).await {
                failed = Some(Error::io("remove", &path, e));
            }
        }
        let handles = self.inner.state.borrow().blobs.handles().clone();
        for meta in blobs {
            // Once no snapshot of the blob set holds the file, no read can open it again.
            let Some(meta) = self.sole_owner(meta).await else {
                continue;
            };
            // Its cached values would never be read again: drop them, a little at a time.
            let mut freed = 0;
            for offset in handles.forget(meta.id) {
                freed += handles.values().remove(TableId(meta.id), offset);
                if freed >= 512 << 10 {
                    freed = 0;
                    runtime::pause_for_io().await;
                }
            }
            if let Some(handle) = handles.take(meta.id) {
                let Some(owned) = self.sole_owner(handle).await else {
                    continue;
                };
                if let Err(e) = owned.close().await {
                    failed = Some(e);
                }
            }
            let path = blob::blob_path(&dir, meta.id);
            if let Err(e) = runtime::remove(&path).await {
                failed = Some(Error::io("remove", &path, e));
            }
        }
        if let Err(e) = runtime::sync_dir(&dir).await {
            failed = Some(Error::io("sync directory", &dir, e));
        }
        if let Some(e) = failed {
            // The manifest no longer names these tables; the next open removes what is left.
            tracing::warn!(error = %e, "deleting compacted tables or blob files failed");
        }
        let mut s = self.inner.state.borrow_mut();
        s.retiring -= 1;
        s.wake_waiters();
    }

    /// Merges every table into one (a "major compaction", as `nodetool compact`): afterwards
    /// each key has one version on disk, and expired values and tombstones past their grace
    /// are gone. Waits until it is done; memtables are not flushed first.
    ///
    /// # Errors
    /// [`Error::Closed`] while closing; the compaction's own error is logged and leaves the
    /// tables as they were.
    pub async fn compact_all(&self) -> Result<()> {
        self.wait_for_compactions().await;
        {
            let mut s = self.inner.state.borrow_mut();
            if s.closing {
                return Err(Error::Closed);
            }
            s.major_requested = true;
        }
        self.start_compactor_even_if_disabled();
        self.wait_for_compactions().await;
        Ok(())
    }

    /// Drops every key whose token `keep` refuses, with all its versions (a node's ranges that
    /// moved to other nodes, like `nodetool cleanup`): the memtables are flushed, then every table
    /// is merged into one without those keys, in as many passes as the hash tree's purge bound
    /// needs. `still_valid` is asked before each pass's output replaces the tables; when it says
    /// no (with the reason), the pass's output is thrown away and the cleanup stops with
    /// [`Error::CleanupAbandoned`], leaving every key where it was. Keys written after the flush
    /// are not looked at.
    ///
    /// # Errors
    /// [`Error::Closed`] while closing; [`Error::CleanupAbandoned`]; the flush's or the merge's
    /// error (the tables stay as they were).
    pub async fn cleanup(
        &self,
        keep: impl Fn(Token) -> bool + 'static,
        still_valid: impl Fn() -> Result<(), String> + 'static,
    ) -> Result<CleanupStats> {
        still_valid().map_err(Error::CleanupAbandoned)?;
        self.flush().await?;
        let keep: Rc<dyn Fn(Token) -> bool> = Rc::new(keep);
        let still_valid: Rc<dyn Fn() -> Result<(), String>> = Rc::new(still_valid);
        let mut done = CleanupStats {
            table_bytes_before: self.stats().table_bytes,
            ..CleanupStats::default()
        };
        loop {
            self.wait_for_compactions().await;
            let generation = {
                let mut s = self.inner.state.borrow_mut();
                if s.closing {
                    return Err(Error::Closed);
                }
                s.cleanup_generation += 1;
                s.cleanup_outcome = None;
                s.cleanup_requested = Some(CleanupJob {
                    keep: keep.clone(),
                    still_valid: still_valid.clone(),
                    generation: s.cleanup_generation,
                });
                s.cleanup_generation
            };
            self.start_compactor_even_if_disabled();
            self.wait_for_compactions().await;
            let outcome = {
                let mut s = self.inner.state.borrow_mut();
                if s.closing {
                    return Err(Error::Closed);
                }
                s.cleanup_requested = None;
                s.cleanup_outcome.take()
            };
            let stats = match outcome {
                Some((g, Ok(stats))) if g == generation => stats,
                Some((g, Err(e))) if g == generation => return Err(e),
                // The compactor stopped before taking the job (a failed flush): nothing done.
                _ => return Err(Error::CleanupFailed("the compactor did not run".into())),
            };
            done.passes += 1;
            done.keys_dropped += stats.cleaned_up;
            if stats.cleanup_deferred == 0 {
                break;
            }
        }
        done.table_bytes_after = self.stats().table_bytes;
        Ok(done)
    }

    /// Waits until no compaction is running (for tests and tools).
    pub async fn wait_for_compactions(&self) {
        WaitState {
            inner: &self.inner,
            ready: |s: &State| !s.compactor_running && s.retiring == 0,
            fail_on_error: false,
        }
        .await
        .expect("INVARIANT: a wait with fail_on_error unset only ends when ready");
    }

    /// Every live table's records, oldest table first (for checks and tools).
    ///
    /// # Errors
    /// As [`Shard::get_record`].
    pub async fn scan_tables(&self) -> Result<Vec<Vec<Record>>> {
        let (tables, blobs) = {
            let s = self.inner.state.borrow();
            (s.tables.clone(), s.blobs.clone())
        };
        let mut out = Vec::with_capacity(tables.len());
        for t in tables.iter() {
            let mut records = t.scan(&self.inner.cache).await?;
            for r in &mut records {
                blobs.resolve(r, false).await?;
            }
            out.push(records);
        }
        Ok(out)
    }
}

/// Per blob file, its size and the bytes of it that `tables` point at.
pub(super) fn blob_usage(tables: &[Rc<SsTable>], blobs: &BlobSet) -> Vec<BlobUsage> {
    let mut live: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    for t in tables {
        for &(id, bytes) in t.blob_refs() {
            *live.entry(id).or_default() += bytes;
        }
    }
    let mut usage: Vec<BlobUsage> = blobs
        .iter()
        .map(|f| BlobUsage {
            id: f.id,
            entry_bytes: f.entry_bytes,
            live_bytes: live.get(&f.id).copied().unwrap_or(0),
        })
        .collect();
    usage.sort_unstable_by_key(|u| u.id);
    usage
}
