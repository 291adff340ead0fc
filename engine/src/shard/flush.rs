//! Flush: a full memtable is frozen, written as an SSTable (large values to a blob file) once
//! durable, recorded in the manifest, and the WAL segments it covered are released.

use super::*;

impl Shard {
    /// Freezes the active memtable (if it holds anything) and starts the flusher.
    pub(super) fn freeze(&self) {
        {
            let mut s = self.inner.state.borrow_mut();
            if s.active.is_empty() {
                return;
            }
            let frozen = std::mem::take(&mut s.active);
            s.immutables.push_back(Rc::new(frozen));
        }
        self.start_flusher();
    }

    pub(super) fn start_flusher(&self) {
        {
            let mut s = self.inner.state.borrow_mut();
            if s.flusher_running || s.flush_error.is_some() {
                return;
            }
            s.flusher_running = true;
        }
        let shard = self.clone();
        runtime::spawn_detached_into(
            async move { shard.flush_loop().await },
            self.inner.flush_queue,
        );
    }

    pub(super) async fn flush_loop(self) {
        loop {
            let next = {
                let s = self.inner.state.borrow();
                if s.closing {
                    None
                } else {
                    s.immutables.front().cloned()
                }
            };
            let Some(mem) = next else { break };
            let flushed = self.flush_one(&mem).await;
            if flushed.is_ok() {
                self.start_compactor();
                self.free_memtable(mem);
            }
            if let Err(e) = flushed {
                tracing::error!(error = %e, "memtable flush failed; the shard stops accepting writes");
                let mut s = self.inner.state.borrow_mut();
                s.flush_error = Some(e.to_string());
                s.wake_waiters();
                break;
            }
        }
        let mut s = self.inner.state.borrow_mut();
        s.flusher_running = false;
        s.wake_waiters();
    }

    /// Frees a flushed memtable off the executor's thread once no reader holds it: freeing
    /// hundreds of thousands of entries at once took tens of milliseconds, a stall for every
    /// request on the core.
    fn free_memtable(&self, mut mem: Rc<Memtable>) {
        // The task holds the memtable only, not the shard (a close need not wait for it).
        runtime::spawn_detached_into(
            async move {
                for _ in 0..10_000 {
                    match Rc::try_unwrap(mem) {
                        Ok(owned) => {
                            let freed = std::thread::Builder::new()
                                .name("memtable-free".into())
                                .spawn(move || drop(owned));
                            if let Err(e) = freed {
                                tracing::debug!(error = %e, "no thread to free a memtable on; freed here");
                            }
                            return;
                        }
                        Err(shared) => {
                            mem = shared;
                            runtime::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
                // A reader held it for ten seconds: the last holder frees it.
            },
            self.inner.flush_queue,
        );
    }

    pub(super) async fn flush_one(&self, mem: &Rc<Memtable>) -> Result<()> {
        let started = std::time::Instant::now();
        let inner = &*self.inner;
        let dir = &inner.options.dir;
        // A table must hold only acknowledged-or-durable data: wait for the group commit.
        inner.wal.wait_durable(mem.max_seq()).await?;
        let id = {
            let mut s = inner.state.borrow_mut();
            let id = TableId(s.next_table_id);
            s.next_table_id += 1;
            id
        };
        let estimated = mem.bytes() as u64;
        let cache = inner.cache.has_room_for(estimated).then_some(&*inner.cache);
        let mut builder =
            TableBuilder::create(dir, id, inner.options.bloom_bits_per_key, cache).await?;
        // Flushes are not rate limited (writes wait for them), but they run in CPU slices like
        // compactions so that reads are not held up behind a 64 MiB memtable.
        let mut pacer = Pacer::new(
            None,
            Duration::from_micros(inner.options.compaction.slice_us.max(1)),
            inner.activity.clone(),
        );
        let mut blob_writer: Option<BlobWriter> = None;
        let written = self
            .write_flush(mem, &mut builder, &mut blob_writer, &mut pacer)
            .await;
        if let Err(e) = written {
            builder.abandon().await;
            if let Some(w) = blob_writer {
                w.abandon().await;
            }
            return Err(e);
        }
        // The blob file first: a table must never point at bytes that are not durable.
        let mut blob_file = None;
        if let Some(w) = blob_writer {
            let blob_id = w.id();
            match w.finish(dir).await {
                Ok(size) => {
                    blob_file = Some(BlobMeta {
                        id: blob_id,
                        entry_bytes: size - blob::FIRST_ENTRY_OFFSET,
                    });
                }
                Err(e) => {
                    builder.abandon().await;
                    return Err(e);
                }
            }
        }
        builder.finish().await?;
        runtime::sync_dir(dir)
            .await
            .map_err(|e| Error::io("sync directory", dir, e))?;
        let table = Rc::new(SsTable::open(dir, id).await?);
        let table_bytes = table.size_bytes();
        let held = inner.manifest_lock.lock(&[]).await;
        let mut manifest = {
            let s = inner.state.borrow();
            let mut m = s.manifest.clone();
            m.next_table_id = s.next_table_id;
            m
        };
        manifest.generation += 1;
        manifest.flushed_seq = manifest.flushed_seq.max(mem.max_seq());
        manifest.tables.push(id);
        manifest.store(dir).await?;
        let flushed = manifest.flushed_seq;
        {
            let mut s = inner.state.borrow_mut();
            s.manifest = manifest;
            let mut tables = (*s.tables).clone();
            tables.push(table);
            inner.table_count.set(tables.len());
            s.tables = Rc::new(tables);
            if let Some(f) = blob_file {
                s.blob_bytes_written += f.entry_bytes + blob::FIRST_ENTRY_OFFSET;
                s.blobs = Rc::new(s.blobs.with([f]));
            }
            let front = s.immutables.pop_front();
            assert!(
                front.is_some_and(|f| Rc::ptr_eq(&f, mem)),
                "memtables must be flushed in order"
            );
            s.flushes += 1;
            s.flush_bytes_written += table_bytes;
            s.wake_waiters();
        }
        inner.timings.borrow_mut().flush.record(started.elapsed());
        drop(held);
        inner.wal.release_through(flushed, dir).await?;
        let mut s = inner.state.borrow_mut();
        s.wal_released_seq = flushed;
        s.wake_waiters();
        Ok(())
    }

    /// Writes a memtable's newest versions to `builder`, values over the blob threshold to a
    /// blob file created on the first one.
    pub(super) async fn write_flush(
        &self,
        mem: &Memtable,
        builder: &mut TableBuilder<'_>,
        blob_writer: &mut Option<BlobWriter>,
        pacer: &mut Pacer,
    ) -> Result<()> {
        let inner = &*self.inner;
        let threshold = inner.options.blob_threshold_bytes;
        for (token, mut rec) in mem.newest_versions() {
            let bytes = (rec.key.len() + rec.value.map_or(0, <[u8]>::len)) as u64;
            let separate = rec.value.filter(|v| threshold.is_some_and(|t| v.len() > t));
            let reference;
            if let Some(value) = separate {
                if blob_writer.is_none() {
                    let blob_id = {
                        let mut s = inner.state.borrow_mut();
                        s.next_table_id += 1;
                        s.next_table_id - 1
                    };
                    *blob_writer = Some(
                        BlobWriter::create(&inner.options.dir, blob_id, inner.options.shard_id)
                            .await?,
                    );
                }
                let w = blob_writer.as_mut().expect("INVARIANT: created above");
                let r = w.append(rec.key, value).await?;
                inner
                    .state
                    .borrow()
                    .blobs
                    .handles()
                    .cache_written(&r, value);
                reference = r.encode();
                rec.value = Some(&reference);
                rec.blob = true;
            }
            builder.add(token, &rec).await?;
            pacer.account(bytes).await;
        }
        Ok(())
    }

    /// Flushes everything written so far to SSTables and waits until it is in the manifest and
    /// the WAL segments it covers are deleted.
    ///
    /// # Errors
    /// The flush's error, or [`Error::WalFenced`].
    pub async fn flush(&self) -> Result<()> {
        let target = self.inner.state.borrow().last_seq;
        self.freeze();
        WaitState::new(&self.inner, |s: &State| s.wal_released_seq >= target).await
    }
}
