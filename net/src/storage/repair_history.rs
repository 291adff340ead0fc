//! When each ring range last completed a full repair with every replica: what the repair-based
//! tombstone purge rule (`tombstone_gc = "repair"`, as ScyllaDB's) reads.
//!
//! A range is named by its vnode's bounds `(prev, token]` and the replicas the repair covered.
//! An entry counts only while the ring still gives the range exactly those bounds and
//! replicas: a node joining or leaving changes either, and the range is "never repaired" again
//! until the next full repair (no purge in between), unless the topology driver carries the
//! entries over when the change completes (`coordinator::moves::inherited_repairs`).
//!
//! The history is shared by every core of a node (compactions on any core read it through the
//! tombstone gate) and kept in the file `REPAIRS` of the data directory, replaced atomically.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// The file name in the data directory.
pub const HISTORY_FILE: &str = "REPAIRS";

/// A ring range: its vnode's previous token (excluded) and its own (included); `prev >= end`
/// wraps around the ring.
pub type RangeId = (u64, u64);

/// One range's last full repair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repaired {
    /// The replicas it covered, sorted.
    pub replicas: Vec<u64>,
    /// Everything any of them held at this time (ms since the epoch) is on all of them.
    pub at_ms: u64,
}

/// The history.
#[derive(Debug, Default)]
pub struct RepairHistory {
    path: Option<PathBuf>,
    ranges: BTreeMap<RangeId, Repaired>,
}

impl RepairHistory {
    /// The history kept in `data_dir` (empty if there is none yet). A damaged file is logged
    /// and treated as empty: ranges count as never repaired until the next full repair, which
    /// only delays purges.
    #[must_use]
    pub fn load(data_dir: &Path) -> RepairHistory {
        let path = data_dir.join(HISTORY_FILE);
        let mut history = RepairHistory {
            path: Some(path.clone()),
            ranges: BTreeMap::new(),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => match parse(&text) {
                Ok(ranges) => history.ranges = ranges,
                Err(why) => tracing::warn!(
                    path = %path.display(),
                    why,
                    "the repair history is damaged; every range counts as never repaired"
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                path = %path.display(),
                error = %e,
                "cannot read the repair history; every range counts as never repaired"
            ),
        }
        history
    }

    /// A history kept in memory only (tests, a node without a data directory).
    #[must_use]
    pub fn in_memory() -> RepairHistory {
        RepairHistory::default()
    }

    /// When `range` was last fully repaired among exactly `replicas` (any order).
    #[must_use]
    pub fn repaired_at(&self, range: RangeId, replicas: &[u64]) -> Option<u64> {
        let r = self.ranges.get(&range)?;
        let mut want = replicas.to_vec();
        want.sort_unstable();
        (r.replicas == want).then_some(r.at_ms)
    }

    /// Every entry.
    pub fn entries(&self) -> impl Iterator<Item = (&RangeId, &Repaired)> {
        self.ranges.iter()
    }

    /// Records a full repair of `range` among `replicas` covering `at_ms`; returns whether it
    /// changed anything (a later one for the same replicas, or other replicas).
    pub fn record(&mut self, range: RangeId, replicas: &[u64], at_ms: u64) -> bool {
        let mut replicas = replicas.to_vec();
        replicas.sort_unstable();
        replicas.dedup();
        match self.ranges.get(&range) {
            Some(r) if r.replicas == replicas && r.at_ms >= at_ms => false,
            _ => {
                self.ranges.insert(range, Repaired { replicas, at_ms });
                true
            }
        }
    }

    /// Drops the entries of ranges the ring no longer has (`keep` says which it has).
    pub fn retain(&mut self, keep: impl Fn(RangeId) -> bool) {
        self.ranges.retain(|&r, _| keep(r));
    }

    /// Writes the history to its file: a temporary file, synced, renamed over the old one, the
    /// directory synced.
    ///
    /// # Errors
    /// I/O errors; the old file then still stands.
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let tmp = path.with_extension("tmp");
        let mut text = String::from("dynacore-repairs 1\n");
        for (&(prev, end), r) in &self.ranges {
            let replicas: Vec<String> = r.replicas.iter().map(|n| format!("{n:x}")).collect();
            text.push_str(&format!(
                "{prev:x} {end:x} {} {}\n",
                r.at_ms,
                replicas.join(",")
            ));
        }
        text.push_str(&format!("crc {:08x}\n", crc32c::crc32c(text.as_bytes())));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_data()?;
        }
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

fn parse(text: &str) -> Result<BTreeMap<RangeId, Repaired>, String> {
    let body_end = text
        .rfind("crc ")
        .ok_or_else(|| "no checksum line".to_string())?;
    let (body, crc_line) = text.split_at(body_end);
    let stored = u32::from_str_radix(crc_line.trim_start_matches("crc ").trim(), 16)
        .map_err(|e| format!("checksum line: {e}"))?;
    if crc32c::crc32c(body.as_bytes()) != stored {
        return Err("checksum mismatch".into());
    }
    let mut lines = body.lines();
    if lines.next() != Some("dynacore-repairs 1") {
        return Err("unknown format".into());
    }
    let mut ranges = BTreeMap::new();
    for line in lines {
        let f: Vec<&str> = line.split(' ').collect();
        let [prev, end, at, replicas] = f[..] else {
            return Err(format!("bad line {line:?}"));
        };
        let hex = |s: &str| u64::from_str_radix(s, 16).map_err(|e| format!("{s:?}: {e}"));
        let replicas = replicas
            .split(',')
            .filter(|s| !s.is_empty())
            .map(hex)
            .collect::<Result<Vec<u64>, String>>()?;
        ranges.insert(
            (hex(prev)?, hex(end)?),
            Repaired {
                replicas,
                at_ms: at.parse().map_err(|e| format!("{at:?}: {e}"))?,
            },
        );
    }
    Ok(ranges)
}

/// The history shared by a node's cores. Changes are saved off the executors' threads
/// ([`SharedHistory::save_in_background`]): a crash before a save only forgets repairs, which
/// delays purges.
#[derive(Clone, Debug, Default)]
pub struct SharedHistory(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    history: RwLock<RepairHistory>,
    /// Changed since the last save began.
    dirty: std::sync::atomic::AtomicBool,
    /// One save at a time (each writes the latest history).
    saving: std::sync::Mutex<()>,
}

impl SharedHistory {
    /// Shares `history`.
    #[must_use]
    pub fn new(history: RepairHistory) -> SharedHistory {
        SharedHistory(Arc::new(Shared {
            history: RwLock::new(history),
            ..Shared::default()
        }))
    }

    /// Reads it.
    pub fn read<T>(&self, f: impl FnOnce(&RepairHistory) -> T) -> T {
        match self.0.history.read() {
            Ok(h) => f(&h),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    /// Changes it (`f` says whether it did); the change is saved by the next
    /// [`SharedHistory::save_in_background`].
    pub fn update(&self, f: impl FnOnce(&mut RepairHistory) -> bool) {
        let changed = match self.0.history.write() {
            Ok(mut h) => f(&mut h),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        };
        if changed {
            self.0
                .dirty
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Saves the history on a thread of its own if it changed since the last save.
    pub fn save_in_background(&self) {
        if !self
            .0
            .dirty
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("repair-history".into())
            .spawn(move || {
                let _one = me.0.saving.lock();
                if let Err(e) = me.read(RepairHistory::save) {
                    tracing::warn!(error = %e, "saving the repair history failed; tried again later");
                    me.0.dirty.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a thread to save the repair history");
            self.0
                .dirty
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Saves the history now if it changed (at shutdown).
    pub fn save_now(&self) {
        if self
            .0
            .dirty
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            let _one = self.0.saving.lock();
            if let Err(e) = self.read(RepairHistory::save) {
                tracing::warn!(error = %e, "saving the repair history failed");
            }
        }
    }

    /// Replaces it (at start, with the one loaded from the data directory).
    pub fn replace(&self, history: RepairHistory) {
        match self.0.history.write() {
            Ok(mut h) => *h = history,
            Err(poisoned) => *poisoned.into_inner() = history,
        }
    }
}

/// What decides when a deletion may be purged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GcMode {
    /// This long after it (`tombstone_gc = "grace"`).
    Grace {
        /// The grace, in ms.
        grace_ms: u64,
    },
    /// Once a full repair of its range with every replica began this long after it
    /// (`tombstone_gc = "repair"`).
    Repair {
        /// The propagation delay, in ms.
        delay_ms: u64,
    },
}

/// The purge rule of a node: its mode, and the repair history it reads.
#[derive(Clone, Debug)]
pub struct PurgeRule {
    /// The mode.
    pub mode: GcMode,
    /// The node's repair history.
    pub history: SharedHistory,
}

impl PurgeRule {
    /// Deletions that took effect before this time (ms since the epoch) may be purged from
    /// `range`, held by `replicas`; `None`: none may (repair mode, never fully repaired with
    /// these replicas). One replica needs no repair: at once.
    #[must_use]
    pub fn gc_before(&self, range: RangeId, replicas: &[u64], now_ms: u64) -> Option<u64> {
        match self.mode {
            GcMode::Grace { grace_ms } => Some(now_ms.saturating_sub(grace_ms)),
            GcMode::Repair { .. } if replicas.len() <= 1 => Some(now_ms),
            GcMode::Repair { delay_ms } => self
                .history
                .read(|h| h.repaired_at(range, replicas))
                .map(|at| at.saturating_sub(delay_ms)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_count_only_for_the_same_replicas_and_survive_a_reload() {
        let dir = tempfile::tempdir().expect("dir");
        let mut h = RepairHistory::load(dir.path());
        assert_eq!(h.repaired_at((1, 9), &[1, 2, 3]), None);
        assert!(h.record((1, 9), &[3, 1, 2], 500));
        assert!(
            !h.record((1, 9), &[1, 2, 3], 400),
            "an older repair changes nothing"
        );
        assert!(h.record((u64::MAX, 5), &[7], 10));
        h.save().expect("save");
        let back = RepairHistory::load(dir.path());
        assert_eq!(back.repaired_at((1, 9), &[2, 3, 1]), Some(500));
        assert_eq!(back.repaired_at((1, 9), &[1, 2, 4]), None, "other replicas");
        assert_eq!(back.repaired_at((u64::MAX, 5), &[7]), Some(10));
        // Damage: refused, and the history starts empty.
        let path = dir.path().join(HISTORY_FILE);
        let text = std::fs::read_to_string(&path)
            .expect("read")
            .replace("500", "900");
        std::fs::write(&path, text).expect("write");
        assert_eq!(RepairHistory::load(dir.path()).entries().count(), 0);
    }

    #[test]
    fn the_repair_rule_purges_nothing_unrepaired_and_everything_at_one_replica() {
        let history = SharedHistory::default();
        let rule = PurgeRule {
            mode: GcMode::Repair { delay_ms: 100 },
            history: history.clone(),
        };
        assert_eq!(rule.gc_before((1, 2), &[5, 6], 10_000), None);
        assert_eq!(rule.gc_before((1, 2), &[5], 10_000), Some(10_000));
        history.update(|h| h.record((1, 2), &[6, 5], 5_000));
        assert_eq!(rule.gc_before((1, 2), &[5, 6], 10_000), Some(4_900));
        assert_eq!(
            rule.gc_before((1, 2), &[5, 6, 7], 10_000),
            None,
            "another replica set"
        );
        let grace = PurgeRule {
            mode: GcMode::Grace { grace_ms: 1_000 },
            history,
        };
        assert_eq!(grace.gc_before((9, 9), &[5, 6], 10_000), Some(9_000));
    }
}
