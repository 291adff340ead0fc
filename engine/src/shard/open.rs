//! Opening a shard: the manifest, its tables and blob files, WAL replay into the memtable, and
//! clearing what a crash left unreferenced.

use super::*;

impl Shard {
    /// Opens (or creates) the shard in `options.dir`, recovering from its manifest and WAL.
    ///
    /// # Errors
    /// [`Error::Corruption`] / [`Error::ChecksumMismatch`] for damage that recovery must not
    /// paper over; [`Error::Incompatible`]; I/O errors (a second opener gets `WouldBlock`).
    pub async fn open(mut options: ShardOptions) -> Result<Shard> {
        runtime::ensure_heartbeat();
        let created = !options.dir.exists();
        std::fs::create_dir_all(&options.dir)
            .map_err(|e| Error::io("create directory", &options.dir, e))?;
        // NOTE: glommio 0.9 resolves relative paths against no directory (EBADF); use absolute.
        options.dir = std::fs::canonicalize(&options.dir)
            .map_err(|e| Error::io("resolve", &options.dir, e))?;
        let dir = options.dir.clone();
        if created {
            // The new directory's own entry must be durable before its first acknowledged write.
            if let Some(parent) = dir.parent() {
                runtime::sync_dir(parent)
                    .await
                    .map_err(|e| Error::io("sync directory", parent, e))?;
            }
        }
        let lock_path = dir.join("LOCK");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io("open", &lock_path, e))?;
        lock.try_lock().map_err(|e| {
            Error::io(
                "lock (is another process using this shard?)",
                &lock_path,
                std::io::Error::new(std::io::ErrorKind::WouldBlock, e.to_string()),
            )
        })?;

        let manifest = match Manifest::load(&dir).await? {
            Some(m) => {
                if m.shard_id != options.shard_id {
                    return Err(Error::Incompatible {
                        path: dir.join(crate::manifest::MANIFEST_NAME),
                        reason: format!(
                            "directory holds shard {}, not shard {}",
                            m.shard_id.0, options.shard_id.0
                        ),
                    });
                }
                m
            }
            None => {
                // No manifest: a new shard, or one whose manifest is lost. Only a directory
                // without any data file is new; anything else would be opened empty and its
                // files taken for garbage.
                let data = data_files(&dir)?;
                if !data.is_empty() {
                    return Err(Error::corruption(
                        dir.join(crate::manifest::MANIFEST_NAME),
                        0,
                        format!(
                            "the manifest is missing but the directory holds data ({}); \
                             refusing to open it empty (restore the MANIFEST, or move the \
                             files away to start an empty shard)",
                            data.join(", ")
                        ),
                    ));
                }
                let m = Manifest::empty(options.shard_id);
                // Written before any WAL segment, so that a log without a manifest always
                // means a lost manifest.
                m.store(&dir).await?;
                m
            }
        };
        remove_orphan_tables(&dir, &manifest).await?;
        let mut tables = Vec::with_capacity(manifest.tables.len());
        let mut last_seq = manifest.flushed_seq;
        for &id in &manifest.tables {
            let table = SsTable::open(&dir, id).await?;
            last_seq = last_seq.max(SeqNo(table.footer().max_seq));
            tables.push(Rc::new(table));
        }
        let cache = Rc::new(BlockCache::new(options.block_cache_bytes));
        let handles = Rc::new(BlobHandles::new(
            &dir,
            options.shard_id,
            options.blob_open_files_max,
            cache.clone(),
        ));
        let blobs = open_blob_files(&dir, handles, &tables, &manifest).await?;

        let mut active = Memtable::new();
        let mut immutables = VecDeque::new();
        let memtable_max = options.memtable_bytes_max;
        let (wal, recovered) = Wal::open(
            &dir,
            options.shard_id,
            WalOptions {
                segment_bytes: options.wal_segment_bytes,
                durability: options.durability,
                group_commit_window: options.wal_group_commit_window,
            },
            manifest.flushed_seq,
            |rec| {
                active.insert(Token::of(rec.key), &rec);
                if active.bytes() >= memtable_max {
                    immutables.push_back(Rc::new(std::mem::take(&mut active)));
                }
            },
        )
        .await?;
        last_seq = last_seq.max(recovered.last_seq);
        // Segments a flush covered but a crash kept from being deleted.
        wal.release_through(manifest.flushed_seq, &dir).await?;
        let wal_released_seq = manifest.flushed_seq;
        // The tree saved at a clean close, if it describes exactly this state (read and removed
        // before anything can change the shard; the manifest store below syncs the directory).
        let trees = match &options.hash_tree {
            Some(tree_options) => Some(RefCell::new(
                Trees::open(
                    &dir,
                    tree_options.clone(),
                    &manifest,
                    last_seq,
                    options.shard_id,
                )
                .await,
            )),
            None => None,
        };
        let (manifest, minted_high) = choose_actor_epoch(manifest, &options).await?;
        tracing::info!(
            dir = %dir.display(),
            tables = tables.len(),
            replayed = recovered.replayed,
            truncated_bytes = recovered.truncated_bytes,
            last_seq = last_seq.0,
            "shard opened"
        );
        let flush_queue = runtime::create_task_queue(
            100,
            Latency::NotImportant,
            &format!("flush-{}", options.shard_id.0),
        );
        // Compaction gets 5 % of the CPU under contention while it keeps up, rising to an equal
        // share with requests as tables pile up towards the write stall.
        let table_count = Rc::new(Cell::new(tables.len()));
        let compact_queue = {
            let count = table_count.clone();
            let (low, stall) = (
                options.compaction.min_run,
                options
                    .compaction
                    .tables_stall
                    .max(options.compaction.min_run + 1),
            );
            runtime::create_dynamic_task_queue(
                move || 50 + count.get().saturating_sub(low) * 950 / (stall - low),
                Latency::NotImportant,
                &format!("compact-{}", options.shard_id.0),
            )
        };
        let has_immutables = !immutables.is_empty();
        let options_clock = options.clock.clone();
        let shard = Shard {
            inner: Rc::new(Inner {
                options,
                wal,
                timings: RefCell::default(),
                state: RefCell::new(State {
                    active,
                    immutables,
                    tables: Rc::new(tables),
                    blobs: Rc::new(blobs),
                    blob_bytes_written: 0,
                    blob_bytes_relocated: 0,
                    blob_files_deleted: 0,
                    blob_gc_skip: std::collections::HashSet::new(),
                    last_seq,
                    next_table_id: manifest.next_table_id,
                    manifest,
                    minted_high,
                    flushes: 0,
                    compactions: 0,
                    compaction_bytes_written: 0,
                    flush_bytes_written: 0,
                    write_stalls: 0,
                    purged: 0,
                    kept_by_gate: 0,
                    compactor_running: false,
                    major_requested: false,
                    cleanup_requested: None,
                    cleanup_outcome: None,
                    cleanup_generation: 0,
                    cleaned_up: 0,
                    retiring: 0,
                    wal_released_seq,
                    flusher_running: false,
                    flush_error: None,
                    closing: false,
                    tree_rebuilding: false,
                    waiters: Vec::new(),
                }),
                cache,
                flush_queue,
                compact_queue,
                key_locks: KeyLocks::default(),
                manifest_lock: KeyLocks::default(),
                hlc: Hlc::new(options_clock, MAX_OFFSET_MS_DEFAULT),
                activity: Rc::new(Cell::new(0)),
                table_count,
                trees,
                _lock: lock,
            }),
        };
        if has_immutables {
            shard.start_flusher();
        }
        shard.start_compactor();
        shard.start_tree_upkeep();
        Ok(shard)
    }
}

/// Keeps the manifest's actor epoch when the shard provably remembers every dot it minted in
/// it (it closed cleanly, or every acknowledged write was synced first), and draws a new one
/// otherwise: a new shard, a format 1 manifest, or a stop that may have lost acknowledged
/// writes. Records the shard as running, with a fresh counter lease, before any write.
/// Returns the manifest stored and the highest counter that may have been minted.
async fn choose_actor_epoch(
    mut manifest: Manifest,
    options: &ShardOptions,
) -> Result<(Manifest, u64)> {
    // Why a new epoch is drawn, if one is.
    let renew = match manifest.run {
        _ if manifest.actor_epoch == 0 => Some("a new shard"),
        _ if reuse_dots_for_tests() => None,
        RunState::Clean | RunState::Running { synced: true } => None,
        RunState::Running { synced: false } => {
            Some("it stopped uncleanly with writes that may not have been synced")
        }
        RunState::Unknown => Some("its manifest predates actor epochs"),
        RunState::Restored => Some("it was restored from a snapshot"),
    };
    let minted_high = if let Some(why) = renew {
        let old = manifest.actor_epoch;
        manifest.actor_epoch = next_actor_epoch(old, options.clock.now_ms());
        tracing::info!(old, epoch = manifest.actor_epoch, why, "new actor epoch");
        0
    } else {
        tracing::info!(
            epoch = manifest.actor_epoch,
            "actor epoch kept: the shard stopped with every write durable"
        );
        manifest.counter_ceiling
    };
    manifest.counter_ceiling = minted_high.saturating_add(COUNTER_LEASE);
    manifest.run = RunState::Running {
        synced: matches!(options.durability, Durability::Sync),
    };
    manifest.generation += 1;
    manifest.store(&options.dir).await?;
    Ok((manifest, minted_high))
}

/// Opens every blob file the tables point at, and removes the ones none points at (a crash
/// left them: a flush or garbage collection that did not reach its manifest, or files whose
/// deletion it interrupted).
pub(super) async fn open_blob_files(
    dir: &Path,
    handles: Rc<BlobHandles>,
    tables: &[Rc<SsTable>],
    manifest: &Manifest,
) -> Result<BlobSet> {
    let referenced: std::collections::BTreeSet<u64> = tables
        .iter()
        .flat_map(|t| t.blob_refs().iter().map(|&(id, _)| id))
        .collect();
    // Blob ids come from the manifest's counter, like table ids: one that is not below it, or
    // that a table has, is damage (it would collide with a file made later).
    for t in tables {
        if let Some(&(id, _)) = t.blob_refs().iter().find(|&&(id, _)| {
            id >= manifest.next_table_id || manifest.tables.contains(&TableId(id))
        }) {
            return Err(Error::corruption(
                sstable::table_path(dir, t.id()),
                t.footer().filter_offset + t.footer().filter_len,
                format!(
                    "the table points at blob file {id}, an id the shard never gave a blob file"
                ),
            ));
        }
    }
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    let mut removed = false;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        let Some(id) = entry.file_name().to_str().and_then(blob::parse_blob_name) else {
            continue;
        };
        if !referenced.contains(&id) {
            tracing::warn!(blob_file = id, "removing blob file no table points at");
            runtime::remove(&entry.path())
                .await
                .map_err(|e| Error::io("remove", entry.path(), e))?;
            removed = true;
        }
    }
    if removed {
        runtime::sync_dir(dir)
            .await
            .map_err(|e| Error::io("sync directory", dir, e))?;
    }
    // Files are opened (and their headers checked) when a read first needs them.
    let mut files = Vec::with_capacity(referenced.len());
    for id in referenced {
        let path = blob::blob_path(dir, id);
        let size = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::corruption(
                    path,
                    0,
                    "a table points at this blob file, which is missing",
                ));
            }
            Err(e) => return Err(Error::io("stat", &path, e)),
        };
        if size < blob::FIRST_ENTRY_OFFSET {
            return Err(Error::corruption(
                path,
                0,
                "blob file shorter than its header",
            ));
        }
        files.push(BlobMeta {
            id,
            entry_bytes: size - blob::FIRST_ENTRY_OFFSET,
        });
    }
    Ok(BlobSet::new(handles).with(files))
}

/// Removes tables that a crash left behind before the manifest named them.
pub(super) async fn remove_orphan_tables(dir: &Path, manifest: &Manifest) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    let mut removed = false;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(sstable::parse_table_name)
        else {
            continue;
        };
        if !manifest.tables.contains(&id) {
            tracing::warn!(table = id.0, "removing table the manifest does not name");
            runtime::remove(&entry.path())
                .await
                .map_err(|e| Error::io("remove", entry.path(), e))?;
            removed = true;
        }
    }
    if removed {
        runtime::sync_dir(dir)
            .await
            .map_err(|e| Error::io("sync directory", dir, e))?;
    }
    Ok(())
}

/// The data files in `dir` (tables, blob files, WAL segments, recycled segments), by name.
fn data_files(dir: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let data = [
            ("sst-", ".sst"),
            ("blob-", ".blob"),
            ("wal-", ".log"),
            ("recycle-", ".wal"),
        ]
        .iter()
        .any(|(prefix, suffix)| name.starts_with(prefix) && name.ends_with(suffix));
        if data {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}
