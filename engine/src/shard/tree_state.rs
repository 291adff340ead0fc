//! The shard's hash tree state (see `tree.rs` for how the shard keeps it): the live tree, a
//! rebuild's tree, purges waiting for their merge to be installed, and what was counted.

use std::collections::HashMap;
use std::path::Path;

use crate::hashtree::{HashTree, SavedTree, TreeOptions, TREE_FILE_NAME};
use crate::manifest::{Manifest, RunState};
use crate::record::{SeqNo, ShardId, Token};
use dynacore_runtime as runtime;

/// A key's state before a write, as its writer read it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OldState {
    /// Its contribution.
    pub(super) hash: u64,
    /// The purge epoch before it was read.
    pub(super) epoch: u64,
}

/// The tree's state, and what it has done.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TreeStatus {
    /// Whether the tree describes the shard (exchanges may use it).
    pub ready: bool,
    /// Whether a rebuild scan is running.
    pub rebuilding: bool,
    /// `log2` of the leaves.
    pub leaf_bits: u32,
    /// Bytes of trees held (two while a scheduled rebuild runs).
    pub memory_bytes: usize,
    /// The whole tree's hash.
    pub root: u64,
    /// Whether the tree was loaded from the file a clean close saved.
    pub loaded: bool,
    /// Rebuilds finished since open.
    pub rebuilds: u64,
    /// Leaves in which a scheduled rebuild found the live tree wrong, since open (a bug or
    /// damage: each is also logged).
    pub rebuild_mismatched_leaves: u64,
    /// Bytes the rebuild scans read since open.
    pub rebuild_bytes_scanned: u64,
    /// When the tree was last rebuilt from a scan (ms since the epoch; 0: never).
    pub last_rebuild_ms: u64,
    /// Contributions purges took out of the tree since open.
    pub purges: u64,
}

/// What [`crate::Shard::verify_tree`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeCheck {
    /// Keys scanned (deletions included).
    pub keys: u64,
    /// Leaves in which the live tree differs from the scan's (a missed change, or damage).
    pub differing_leaves: u64,
    /// How long the scan took.
    pub duration: std::time::Duration,
}

pub(super) struct Rebuild {
    pub(super) tree: HashTree,
    /// Tokens up to this one have been scanned: changes there go into `tree` too.
    pub(super) scanned_through: Option<u64>,
}

/// The shard's tree and what keeps it.
pub(crate) struct Trees {
    pub(super) options: TreeOptions,
    pub(super) live: HashTree,
    pub(super) ready: bool,
    pub(super) rebuild: Option<Rebuild>,
    /// Contributions a finished merge dropped, taken out of the tree when its output is
    /// installed unless a write of the key comes first.
    pub(super) pending_purges: HashMap<Vec<u8>, (Token, u64)>,
    pub(super) purge_epoch: u64,
    /// Set when the tree may be wrong (a failed check): the next upkeep rebuilds it.
    pub(super) suspect: bool,
    pub(super) status: TreeStatus,
}

impl std::fmt::Debug for Trees {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trees")
            .field("ready", &self.ready)
            .field("live", &self.live)
            .finish_non_exhaustive()
    }
}

impl Trees {
    /// The tree a clean close saved in `dir`, if it describes the state being opened (shard,
    /// manifest generation, last sequence number); otherwise an empty one to rebuild. The file
    /// is removed either way: from now on only a clean close writes one.
    pub(super) async fn open(
        dir: &Path,
        options: TreeOptions,
        manifest: &Manifest,
        last_seq: SeqNo,
        shard_id: ShardId,
    ) -> Trees {
        let mut trees = Trees {
            live: HashTree::new(options.leaf_bits),
            options,
            ready: false,
            rebuild: None,
            pending_purges: HashMap::new(),
            purge_epoch: 0,
            suspect: false,
            status: TreeStatus::default(),
        };
        let path = dir.join(TREE_FILE_NAME);
        if !path.exists() {
            return trees;
        }
        match load_tree(&path).await {
            Ok((tree, saved)) => {
                let why_not = if !matches!(manifest.run, RunState::Clean) {
                    Some("the shard did not close cleanly after saving it".to_string())
                } else if saved.shard_id != shard_id {
                    Some(format!("it belongs to shard {}", saved.shard_id.0))
                } else if saved.generation != manifest.generation {
                    Some(format!(
                        "it describes manifest generation {}, not {}",
                        saved.generation, manifest.generation
                    ))
                } else if saved.last_seq != last_seq {
                    Some(format!(
                        "it describes sequence {}, not {}",
                        saved.last_seq.0, last_seq.0
                    ))
                } else if tree.leaf_bits() != trees.options.leaf_bits {
                    Some(format!("it has 2^{} leaves", tree.leaf_bits()))
                } else {
                    None
                };
                match why_not {
                    None => {
                        trees.live = tree;
                        trees.ready = true;
                        trees.status.loaded = true;
                        trees.status.last_rebuild_ms = saved.last_rebuild_ms;
                    }
                    Some(why) => {
                        tracing::info!(path = %path.display(), why, "saved hash tree not used; rebuilding");
                    }
                }
            }
            Err(why) => {
                tracing::warn!(path = %path.display(), why, "saved hash tree unreadable; rebuilding");
            }
        }
        if let Err(e) = runtime::remove(&path).await {
            // Kept, it could describe a later state wrongly: do not trust the loaded one.
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the saved hash tree; rebuilding");
            trees.live = HashTree::new(trees.options.leaf_bits);
            trees.ready = false;
            trees.status.loaded = false;
        }
        trees
    }

    pub(super) fn purge_epoch(&self) -> u64 {
        self.purge_epoch
    }

    /// Applies a change of `delta` at `token`, to the live tree and to a rebuild's tree where
    /// its scan has passed.
    pub(super) fn apply(&mut self, token: Token, delta: u64) {
        self.live.apply(token, delta);
        if let Some(r) = &mut self.rebuild {
            if r.scanned_through.is_some_and(|t| token.0 <= t) {
                r.tree.apply(token, delta);
            }
        }
    }

    /// A write of `key` changed its contribution by `delta`.
    pub(super) fn on_write(&mut self, token: Token, key: &[u8], delta: u64) {
        if !self.pending_purges.is_empty() {
            self.pending_purges.remove(key);
        }
        self.apply(token, delta);
    }

    /// The tree may include a write that failed: not ready until rebuilt.
    pub(super) fn invalidate(&mut self) {
        self.ready = false;
        self.suspect = true;
    }
}

async fn load_tree(path: &Path) -> std::result::Result<(HashTree, SavedTree), String> {
    let file = runtime::File::open_read(path)
        .await
        .map_err(|e| e.to_string())?;
    let size = file.size().await.map_err(|e| e.to_string())?;
    let size = usize::try_from(size).map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(size);
    // In pieces: the executor's DMA arena may be small.
    while buf.len() < size {
        let n = (size - buf.len()).min(256 << 10);
        let part = file
            .read_exact_at(buf.len() as u64, n)
            .await
            .map_err(|e| e.to_string())?;
        buf.extend_from_slice(&part);
    }
    if let Err(e) = file.close().await {
        tracing::debug!(error = %e, "closing the saved hash tree");
    }
    HashTree::decode(&buf)
}
