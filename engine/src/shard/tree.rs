//! The shard's anti-entropy hash tree ([`crate::hashtree`]): kept by the write path and by
//! purges, saved at a clean close, rebuilt by a paced scan when the saved one does not describe
//! the shard (and on a schedule, compared with the live one), and read by exchanges.
//!
//! Every change of a key's state reaches the tree at one of two places:
//! * a write (put, delete, merge, hint, repair: everything goes through
//!   [`Shard::write_inner`]) applies `h(old) ^ h(new)` in the same step that puts the record
//!   in the memtable, `old` read under the key's lock;
//! * a compaction that drops a tombstone or an expired value (a purge) removes its
//!   contribution in the same step that installs its output, unless the key changed meanwhile
//!   (a write cancels the pending removal) or a newer version shadowed the dropped one. A
//!   write that read the key before such a purge notices (the purge epoch moved) and reads it
//!   again.
//!
//! A rebuild folds a scan of the shard into a new tree chunk by chunk (1/4096 of the token
//! space each); changes at tokens the scan has passed are applied to the new tree too, so when
//! it ends the new tree is the shard's state, whatever was written meanwhile.

use super::tree_state::{OldState, Rebuild, TreeCheck};
use super::*;
use crate::hashtree::{record_state, HashTree, KeyState, SavedTree, TREE_FILE_NAME};

/// CPU a tree scan for an exchange or a check takes at a stretch before the executor polls.
const BACKGROUND_SLICE: Duration = Duration::from_micros(500);

/// Chunks a rebuild scan goes through (each a snapshot of its token range).
const REBUILD_CHUNKS: u64 = 4096;

impl Shard {
    fn trees(&self) -> Option<&RefCell<Trees>> {
        self.inner.trees.as_ref()
    }

    /// The key's state before a write of it (under its lock), with the purge epoch it is
    /// valid for.
    pub(super) async fn old_state(&self, key: &[u8]) -> Result<OldState> {
        let epoch = self.trees().map_or(0, |t| t.borrow().purge_epoch);
        let hash = self
            .lookup_applied(key)
            .await?
            .map_or(0, |(r, _)| record_state(&r).hash);
        Ok(OldState { hash, epoch })
    }

    /// The tree's state, if the shard keeps one.
    #[must_use]
    pub fn tree_status(&self) -> Option<TreeStatus> {
        let t = self.trees()?.borrow();
        let mut status = t.status.clone();
        status.ready = t.ready;
        status.rebuilding = t.rebuild.is_some();
        status.leaf_bits = t.live.leaf_bits();
        status.memory_bytes =
            t.live.memory_bytes() + t.rebuild.as_ref().map_or(0, |r| r.tree.memory_bytes());
        status.root = t.live.root();
        Some(status)
    }

    /// A copy of the live tree, if the shard keeps one and it is ready.
    #[must_use]
    pub fn hash_tree(&self) -> Option<HashTree> {
        let t = self.trees()?.borrow();
        t.ready.then(|| t.live.clone())
    }

    /// The hash of the keys with tokens in `[start, end]` (`None`: no tree, or not ready): the
    /// XOR of the whole leaves inside, and of the keys scanned in the (at most two) leaves the
    /// range cuts.
    ///
    /// # Errors
    /// A damaged block or an I/O error while scanning a cut leaf.
    pub async fn tree_hash(&self, start: Token, end: Token) -> Result<Option<u64>> {
        let Some(trees) = self.trees() else {
            return Ok(None);
        };
        if start > end {
            return Ok(Some(0));
        }
        // The leaves' part and the cut leaves' scans are taken in one step, so they describe
        // one moment.
        let (mut hash, scans) = {
            let t = trees.borrow();
            if !t.ready {
                return Ok(None);
            }
            let tree = &t.live;
            let (first, last) = (tree.leaf_of(start), tree.leaf_of(end));
            let head_cut = start != tree.leaf_start(first);
            let tail_cut = end != tree.leaf_end(last);
            let mut scans = Vec::new();
            let mut hash = 0;
            if first == last {
                if head_cut || tail_cut {
                    scans.push(self.raw_cursor(start, end));
                } else {
                    hash = tree.leaf(first);
                }
            } else {
                let (mut lo, mut hi) = (first, last);
                if head_cut {
                    scans.push(self.raw_cursor(start, tree.leaf_end(first)));
                    lo = first + 1;
                }
                if tail_cut {
                    scans.push(self.raw_cursor(tree.leaf_start(last), end));
                    hi = last - 1;
                }
                if lo <= hi {
                    hash = tree.leaves_xor(lo, hi);
                }
            }
            (hash, scans)
        };
        let mut slice = runtime::CpuSlice::new(BACKGROUND_SLICE);
        for mut cursor in scans {
            while let Some((_, r)) = cursor.next().await? {
                hash ^= record_state(&r).hash;
                slice.check().await;
            }
        }
        Ok(Some(hash))
    }

    /// The state of every key with a token in `[start, end]`, deletions included, in `(token,
    /// key)` order (`None`: no tree, or not ready). At most `max` keys: the last one returned
    /// tells where to go on.
    ///
    /// # Errors
    /// A damaged block or an I/O error.
    pub async fn tree_keys(
        &self,
        start: Token,
        end: Token,
        max: usize,
    ) -> Result<Option<Vec<KeyState>>> {
        if !self.trees().is_some_and(|t| t.borrow().ready) {
            return Ok(None);
        }
        let mut cursor = self.raw_cursor(start, end);
        let mut out = Vec::new();
        let mut slice = runtime::CpuSlice::new(BACKGROUND_SLICE);
        while out.len() < max {
            let Some((_, r)) = cursor.next().await? else {
                break;
            };
            out.push(record_state(&r));
            slice.check().await;
        }
        Ok(Some(out))
    }

    /// The copies of the keys with tokens in `[start, end]` that come after `(token(after),
    /// after)` (every key when `after` is empty), in `(token, key)` order, deletions and
    /// expired values included, as replicas hold them (what streaming a range to a new owner
    /// sends): at most `max_keys` keys and about `max_bytes` bytes of keys and values. The
    /// second field says whether a bound cut the list short.
    ///
    /// # Errors
    /// A damaged block, a copy that does not decode, or an I/O error.
    pub async fn range_objects(
        &self,
        start: Token,
        end: Token,
        after: &[u8],
        max_keys: usize,
        max_bytes: usize,
    ) -> Result<(Vec<(Vec<u8>, Object)>, bool)> {
        let from = if after.is_empty() {
            start
        } else {
            Token::of(after).max(start)
        };
        if from > end {
            return Ok((Vec::new(), false));
        }
        let mut cursor = self.raw_cursor(from, end);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut slice = runtime::CpuSlice::new(BACKGROUND_SLICE);
        while let Some((token, r)) = cursor.next().await? {
            if !after.is_empty() && (token, r.key.as_slice()) <= (Token::of(after), after) {
                continue;
            }
            if out.len() >= max_keys || (bytes >= max_bytes && !out.is_empty()) {
                return Ok((out, true));
            }
            // The copy as a read of the key gives it (values resolved from the value log).
            let Some(object) = self.read_object(&r.key).await? else {
                continue;
            };
            bytes += r.key.len()
                + object
                    .values()
                    .map(|v| v.value.as_ref().map_or(0, Vec::len))
                    .sum::<usize>();
            out.push((r.key, object));
            slice.check().await;
        }
        Ok((out, false))
    }

    /// The tree folded from a full scan of the shard now (for checks: the live tree must equal
    /// it). `None` if the shard keeps no tree.
    ///
    /// # Errors
    /// A damaged block or an I/O error.
    pub async fn hash_tree_from_scan(&self) -> Result<Option<HashTree>> {
        let Some(trees) = self.trees() else {
            return Ok(None);
        };
        let mut tree = HashTree::new(trees.borrow().options.leaf_bits);
        let mut cursor = self.raw_cursor(Token(0), Token(u64::MAX));
        while let Some((token, r)) = cursor.next().await? {
            tree.apply(token, record_state(&r).hash);
        }
        Ok(Some(tree))
    }

    /// Folds a full scan of the shard into a tree and compares it with the live one (an
    /// operator's check; also the cost a repair without kept trees would pay on every run).
    /// `None` if the shard keeps no tree or it is not ready.
    ///
    /// # Errors
    /// A damaged block or an I/O error.
    pub async fn verify_tree(&self) -> Result<Option<TreeCheck>> {
        let started = std::time::Instant::now();
        let Some(trees) = self.trees() else {
            return Ok(None);
        };
        let mut tree = HashTree::new(trees.borrow().options.leaf_bits);
        // The live tree and the scan's snapshot are taken in one step.
        let (mut cursor, live) = {
            let t = trees.borrow();
            if !t.ready {
                return Ok(None);
            }
            (
                self.raw_cursor(Token(0), Token(u64::MAX))
                    .without_cache_fill(),
                t.live.clone(),
            )
        };
        let mut keys = 0u64;
        let mut slice = runtime::CpuSlice::new(BACKGROUND_SLICE);
        while let Some((token, r)) = cursor.next().await? {
            tree.apply(token, record_state(&r).hash);
            keys += 1;
            slice.check().await;
        }
        Ok(Some(TreeCheck {
            keys,
            differing_leaves: tree.differing_leaves(&live) as u64,
            duration: started.elapsed(),
        }))
    }

    /// Starts a rebuild of the tree now (as the schedule would), unless one is running.
    pub fn rebuild_tree(&self) {
        if self.trees().is_some() {
            self.spawn_rebuild();
        }
    }

    /// Every key's newest version in `[start, end]`, deletions included, as of now (writes
    /// queued but not yet durable included, as the tree has them).
    fn raw_cursor(&self, start: Token, end: Token) -> MergeCursor {
        let s = self.inner.state.borrow();
        let snapshot = s.last_seq;
        let mut runs = Vec::with_capacity(1 + s.immutables.len());
        runs.push(s.active.range_at(start, end, snapshot));
        for m in s.immutables.iter().rev() {
            runs.push(m.range_at(start, end, snapshot));
        }
        MergeCursor::new(runs, &s.tables, self.inner.cache.clone(), start, end)
    }

    /// Starts the tree's upkeep at open: a rebuild if the saved tree was not used, and the
    /// scheduled rebuilds.
    pub(super) fn start_tree_upkeep(&self) {
        let Some(trees) = self.trees() else {
            return;
        };
        if !trees.borrow().ready {
            self.spawn_rebuild();
        }
        let Some(every) = trees.borrow().options.rebuild_every_ms else {
            return;
        };
        let weak = Rc::downgrade(&self.inner);
        let clock = self.inner.options.clock.clone();
        runtime::spawn_detached_into(
            async move {
                // Checked every second, holding the shard only while looking.
                loop {
                    runtime::sleep(Duration::from_secs(1)).await;
                    let Some(inner) = weak.upgrade() else { return };
                    let shard = Shard { inner };
                    let (due, suspect, busy) = {
                        if shard.inner.state.borrow().closing {
                            return;
                        }
                        let t = shard
                            .trees()
                            .expect("INVARIANT: upkeep runs with a tree")
                            .borrow();
                        let last = t.status.last_rebuild_ms;
                        // Jitter: up to a quarter of the period, fixed per shard and rebuild.
                        let jitter = xxhash_rust::xxh3::xxh3_64(
                            &[
                                last.to_le_bytes(),
                                u64::from(shard.inner.options.shard_id.0).to_le_bytes(),
                            ]
                            .concat(),
                        ) % (every / 4).max(1);
                        let due = t.ready && last != 0 && clock.now_ms() >= last + every - jitter;
                        (due, t.suspect && t.rebuild.is_none(), t.rebuild.is_some())
                    };
                    if (due || suspect) && !busy {
                        shard.spawn_rebuild();
                    }
                }
            },
            self.inner.compact_queue,
        );
    }

    fn spawn_rebuild(&self) {
        {
            let mut s = self.inner.state.borrow_mut();
            if s.tree_rebuilding || s.closing {
                return;
            }
            s.tree_rebuilding = true;
        }
        let shard = self.clone();
        runtime::spawn_detached_into(
            async move {
                let result = shard.rebuild_scan().await;
                let mut t = shard
                    .trees()
                    .expect("INVARIANT: a rebuild has a tree")
                    .borrow_mut();
                if let Err(e) = result {
                    tracing::error!(error = %e, "hash tree rebuild failed; it will be tried again");
                    t.rebuild = None;
                    t.suspect = true;
                }
                drop(t);
                let mut s = shard.inner.state.borrow_mut();
                s.tree_rebuilding = false;
                s.wake_waiters();
            },
            self.inner.compact_queue,
        );
    }

    /// Folds a scan of the shard into a new tree, then installs it (compared with the live one
    /// when that was ready). Stops early, installing nothing, if the shard starts closing.
    async fn rebuild_scan(&self) -> Result<()> {
        let trees = self.trees().expect("INVARIANT: a rebuild has a tree");
        let (leaf_bits, rate) = {
            let mut t = trees.borrow_mut();
            t.rebuild = Some(Rebuild {
                tree: HashTree::new(t.options.leaf_bits),
                scanned_through: None,
            });
            (t.options.leaf_bits, t.options.rebuild_bytes_per_s)
        };
        let started = std::time::Instant::now();
        let mut pacer = Pacer::new(
            Some(rate),
            Duration::from_micros(500),
            self.inner.activity.clone(),
        );
        let chunk = u64::MAX / REBUILD_CHUNKS + 1;
        let mut scanned = 0u64;
        for c in 0..REBUILD_CHUNKS {
            if self.inner.state.borrow().closing {
                trees.borrow_mut().rebuild = None;
                return Ok(());
            }
            let (start, end) = (Token(c * chunk), Token(c * chunk + (chunk - 1)));
            // Taken together: the snapshot, and changes from now on going to the new tree.
            let mut cursor = {
                let cursor = self.raw_cursor(start, end).without_cache_fill();
                let mut t = trees.borrow_mut();
                t.rebuild
                    .as_mut()
                    .expect("INVARIANT: set above")
                    .scanned_through = Some(end.0);
                cursor
            };
            while let Some((token, r)) = cursor.next().await? {
                let bytes = (r.key.len() + r.version.len() + 32) as u64;
                scanned += bytes;
                let h = record_state(&r).hash;
                trees
                    .borrow_mut()
                    .rebuild
                    .as_mut()
                    .expect("INVARIANT: set above")
                    .tree
                    .apply(token, h);
                pacer.account(bytes).await;
            }
            pacer.account(0).await;
        }
        let now_ms = self.inner.options.clock.now_ms();
        let mut t = trees.borrow_mut();
        let rebuilt = t.rebuild.take().expect("INVARIANT: set above").tree;
        if t.ready {
            let wrong = rebuilt.differing_leaves(&t.live);
            if wrong > 0 {
                tracing::error!(
                    leaves = wrong,
                    "the rebuilt hash tree differs from the live one (a missed change, or \
                     damage): the rebuilt one replaces it"
                );
            }
            t.status.rebuild_mismatched_leaves += wrong as u64;
        }
        debug_assert_eq!(rebuilt.leaf_bits(), leaf_bits);
        t.live = rebuilt;
        t.ready = true;
        t.suspect = false;
        t.status.rebuilds += 1;
        t.status.rebuild_bytes_scanned += scanned;
        t.status.last_rebuild_ms = now_ms;
        tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            bytes = scanned,
            "hash tree rebuilt"
        );
        Ok(())
    }

    /// Before a merge's output is installed: the keys it purged become pending removals from
    /// the tree, except those a newer version shadows (in a memtable, or in a table newer than
    /// the inputs), whose dropped version was not the key's state.
    pub(super) async fn register_purges(
        &self,
        inputs: &[Rc<SsTable>],
        purged: Vec<(Token, Vec<u8>, u64)>,
    ) {
        let Some(trees) = self.trees() else {
            return;
        };
        if purged.is_empty() {
            return;
        }
        let (newer, candidates) = {
            let s = self.inner.state.borrow();
            let last_input = inputs.last().map(|t| t.id());
            let at = s
                .tables
                .iter()
                .position(|t| Some(t.id()) == last_input)
                .expect("INVARIANT: only the compactor removes tables");
            let newer: Vec<Rc<SsTable>> = s.tables[at + 1..].to_vec();
            let mut t = trees.borrow_mut();
            let mut candidates = Vec::new();
            for (token, key, hash) in purged {
                let in_memtable = s.active.get(token, &key, SeqNo(u64::MAX)).is_some()
                    || s.immutables
                        .iter()
                        .any(|m| m.get(token, &key, SeqNo(u64::MAX)).is_some());
                if !in_memtable {
                    t.pending_purges.insert(key.clone(), (token, hash));
                    candidates.push((token, key));
                }
            }
            (newer, candidates)
        };
        if newer.is_empty() {
            return;
        }
        for (token, key) in candidates {
            for table in &newer {
                match table.get(token, &key, &self.inner.cache).await {
                    Ok(None) => {}
                    Ok(Some(_)) => {
                        trees.borrow_mut().pending_purges.remove(&key);
                        break;
                    }
                    Err(e) => {
                        // Whether the purge changes the key's state is unknown: leave it and
                        // rebuild the tree.
                        tracing::warn!(error = %e, "reading a table to place a purge in the hash tree");
                        let mut t = trees.borrow_mut();
                        t.pending_purges.remove(&key);
                        t.suspect = true;
                        break;
                    }
                }
            }
        }
    }

    /// In the step that installs a merge's output: the pending removals leave the tree.
    pub(super) fn install_purges(&self) {
        if let Some(trees) = self.trees() {
            let mut t = trees.borrow_mut();
            let pending = std::mem::take(&mut t.pending_purges);
            t.status.purges += pending.len() as u64;
            for (_, (token, hash)) in pending {
                t.apply(token, hash);
            }
            t.purge_epoch += 1;
        }
    }

    /// A merge's output was not installed: nothing it purged leaves the tree.
    pub(super) fn forget_purges(&self) {
        if let Some(trees) = self.trees() {
            trees.borrow_mut().pending_purges.clear();
        }
    }

    /// Saves a ready tree at a clean close, describing manifest generation `generation`. A
    /// failure is only logged: the next open rebuilds.
    pub(super) async fn save_tree(&self, generation: u64) {
        let Some(trees) = self.trees() else {
            return;
        };
        let bytes = {
            let t = trees.borrow();
            if !t.ready || t.suspect {
                return;
            }
            let s = self.inner.state.borrow();
            t.live.encode(&SavedTree {
                shard_id: self.inner.options.shard_id,
                generation,
                last_seq: s.last_seq,
                last_rebuild_ms: t.status.last_rebuild_ms,
            })
        };
        let dir = &self.inner.options.dir;
        if let Err(e) = store_tree(dir, &bytes).await {
            tracing::warn!(dir = %dir.display(), error = %e, "saving the hash tree failed; the next open rebuilds it");
        }
    }
}

async fn store_tree(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{TREE_FILE_NAME}.tmp"));
    if tmp.exists() {
        runtime::remove(&tmp).await?;
    }
    let file = runtime::File::create_new(&tmp).await?;
    for (i, part) in bytes.chunks(256 << 10).enumerate() {
        file.write_aligned((i << 18) as u64, part).await?;
    }
    file.sync_data().await?;
    file.close().await?;
    runtime::rename(&tmp, &dir.join(TREE_FILE_NAME)).await?;
    runtime::sync_dir(dir).await
}
