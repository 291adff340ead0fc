//! The compaction policy: pure, no I/O. Size-tiered over the shard's list of tables (oldest data
//! first): merge a run of adjacent tables of similar size, so that a merged table can take the
//! run's place in the list and recency order is kept without levels. A space-amplification
//! trigger (as in RocksDB's universal compaction) merges everything once the newer tables hold
//! more than a set fraction of the oldest one, which bounds the bytes that overwrites and deletes
//! leave behind.

use std::ops::Range;

/// Compaction tuning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactionOptions {
    /// Whether compaction runs at all.
    pub enabled: bool,
    /// Fewest tables in a merge.
    pub min_run: usize,
    /// Most tables in a merge.
    pub max_run: usize,
    /// Largest allowed ratio between the biggest and the smallest table of a run.
    pub size_ratio_max: u64,
    /// Above this many tables, the cheapest run is merged whatever the sizes (bounds read
    /// amplification).
    pub tables_max: usize,
    /// Merge every table once the bytes of all but the oldest exceed this percentage of the
    /// oldest's (`None`: never). The oldest table is where settled data ends up, so this bounds
    /// space amplification near `1 + percent / 100` for overwrite-heavy data, at the price of
    /// rewriting the whole shard (and needing its size again in free space while it runs).
    pub space_amp_max_percent: Option<u64>,
    /// A tombstone is dropped only once it is this old (and the merge includes the oldest
    /// table, so that nothing it shadows can remain).
    pub tombstone_grace_ms: u64,
    /// Compaction I/O budget in bytes per second, reads and writes together, while compaction
    /// keeps up (`None`: no limit). The shard raises it up to 16× as tables pile up towards
    /// `tables_stall`.
    pub rate_bytes_per_sec: Option<u64>,
    /// The longest a merge runs on the CPU before it pauses so the executor can poll I/O and
    /// run foreground tasks, in microseconds.
    pub slice_us: u64,
    /// Writes wait while the shard has more tables than this (compaction is behind).
    pub tables_stall: usize,
    /// Collect value-log garbage once the bytes inside live blob files that no table points at
    /// any more exceed this percentage of the bytes tables do point at (`None`: only whole
    /// files that nothing points at are deleted). Unless a full merge happens anyway, the
    /// garbage must also be at least a quarter of the tables' bytes. See [`choose_blob_gc`].
    pub blob_garbage_max_percent: Option<u64>,
    /// A blob file written by garbage collection is closed once it reaches this size (so it may
    /// exceed it by one value) and a new one started.
    pub blob_file_bytes_max: u64,
}

impl Default for CompactionOptions {
    fn default() -> Self {
        CompactionOptions {
            enabled: true,
            min_run: 4,
            max_run: 8,
            size_ratio_max: 4,
            tables_max: 16,
            space_amp_max_percent: Some(40),
            tombstone_grace_ms: 10 * 24 * 3600 * 1000,
            rate_bytes_per_sec: Some(64 << 20),
            slice_us: 50,
            tables_stall: 48,
            blob_garbage_max_percent: Some(25),
            blob_file_bytes_max: 256 << 20,
        }
    }
}

/// A blob file's size and how much of it live tables point at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobUsage {
    /// The blob file.
    pub id: u64,
    /// Bytes of entries in the file.
    pub entry_bytes: u64,
    /// Bytes of entries that live tables point at (the rest is garbage).
    pub live_bytes: u64,
}

/// Picks the blob files whose live values a full merge should relocate, or `None` while the
/// value log's garbage is within `blob_garbage_max_percent` of its live bytes. (It does not
/// look at `enabled`: a requested full merge collects garbage too.)
///
/// `merge_bytes` is what the full merge would rewrite only for the collection's sake: 0 when
/// a full merge happens anyway, else the bytes of every table. While those bytes are more than
/// four times the value log's garbage the collection waits, so that a little garbage in a
/// value log beside large tables does not rewrite those tables over and over.
///
/// Files go in order of their garbage fraction, highest first (they free the most space for the
/// bytes rewritten), until the garbage left is half the allowance, so that a collection is not
/// followed at once by another.
#[must_use]
pub fn choose_blob_gc(
    files: &[BlobUsage],
    merge_bytes: u64,
    o: &CompactionOptions,
) -> Option<Vec<u64>> {
    let pct = u128::from(o.blob_garbage_max_percent?);
    let garbage_of = |f: &BlobUsage| u128::from(f.entry_bytes.saturating_sub(f.live_bytes));
    let live: u128 = files.iter().map(|f| u128::from(f.live_bytes)).sum();
    let mut garbage: u128 = files.iter().map(garbage_of).sum();
    if garbage == 0 || garbage * 100 <= live * pct || garbage * 4 < u128::from(merge_bytes) {
        return None;
    }
    let mut by_fraction: Vec<&BlobUsage> = files.iter().filter(|f| garbage_of(f) > 0).collect();
    // Highest garbage fraction first: live / entry ascending, compared without division.
    by_fraction.sort_by(|a, b| {
        (u128::from(a.live_bytes) * u128::from(b.entry_bytes))
            .cmp(&(u128::from(b.live_bytes) * u128::from(a.entry_bytes)))
            .then(a.id.cmp(&b.id))
    });
    let mut chosen = Vec::new();
    for f in by_fraction {
        if garbage * 200 <= live * pct {
            break;
        }
        garbage -= garbage_of(f);
        chosen.push(f.id);
    }
    Some(chosen)
}

/// Picks the run of adjacent tables to merge, given their sizes (oldest first), or `None`.
///
/// First, if the space-amplification trigger fires, every table. Otherwise, among runs of
/// `min_run..=max_run` tables whose sizes are within `size_ratio_max` of each
/// other, the one with the fewest bytes wins (cheap merges first; ties go to the longer run).
/// With more than `tables_max` tables, the cheapest `min_run`-run is taken whatever the sizes.
#[must_use]
pub fn choose(sizes: &[u64], o: &CompactionOptions) -> Option<Range<usize>> {
    let min_run = o.min_run.max(2);
    if !o.enabled || sizes.len() < 2 {
        return None;
    }
    if let Some(pct) = o.space_amp_max_percent {
        let newer: u64 = sizes[1..].iter().sum();
        if u128::from(newer) * 100 > u128::from(sizes[0]) * u128::from(pct) {
            return Some(0..sizes.len());
        }
    }
    if sizes.len() < min_run {
        return None;
    }
    let mut best: Option<(u64, usize, Range<usize>)> = None;
    let consider =
        |best: &mut Option<(u64, usize, Range<usize>)>, bytes: u64, range: Range<usize>| {
            let better = best
                .as_ref()
                .is_none_or(|(b, len, _)| bytes < *b || (bytes == *b && range.len() > *len));
            if better {
                *best = Some((bytes, range.len(), range));
            }
        };
    for start in 0..sizes.len() {
        for end in start + min_run..=(start + o.max_run.max(min_run)).min(sizes.len()) {
            let run = &sizes[start..end];
            let (lo, hi) = run
                .iter()
                .fold((u64::MAX, 0), |(lo, hi), &s| (lo.min(s), hi.max(s)));
            if hi <= lo.max(1).saturating_mul(o.size_ratio_max) {
                consider(&mut best, run.iter().sum(), start..end);
            }
        }
    }
    if best.is_none() && sizes.len() > o.tables_max {
        for start in 0..=sizes.len() - min_run {
            let range = start..start + min_run;
            consider(&mut best, sizes[range.clone()].iter().sum(), range);
        }
    }
    best.map(|(_, _, r)| r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size-tiered rules alone.
    fn o() -> CompactionOptions {
        CompactionOptions {
            space_amp_max_percent: None,
            ..CompactionOptions::default()
        }
    }

    #[test]
    fn too_few_tables_or_disabled() {
        assert_eq!(choose(&[10, 10, 10], &o()), None);
        let off = CompactionOptions {
            enabled: false,
            ..o()
        };
        assert_eq!(choose(&[10; 8], &off), None);
    }

    #[test]
    fn similar_sizes_merge_and_the_cheapest_run_wins() {
        // A big old table, then four small similar ones: merge the small ones.
        assert_eq!(choose(&[1000, 10, 12, 11, 10], &o()), Some(1..5));
        // Eight equal tables: the cheapest run is the first four.
        assert_eq!(choose(&[5; 8], &o()), Some(0..4));
    }

    #[test]
    fn dissimilar_sizes_wait_until_there_are_too_many() {
        let sizes: Vec<u64> = (0..10).map(|i| 1 << (3 * i)).collect();
        assert_eq!(choose(&sizes, &o()), None);
        let sizes: Vec<u64> = (0..17).map(|i| 1u64 << (3 * i)).collect();
        assert_eq!(choose(&sizes, &o()), Some(0..4));
    }

    fn usage(id: u64, entry_bytes: u64, live_bytes: u64) -> BlobUsage {
        BlobUsage {
            id,
            entry_bytes,
            live_bytes,
        }
    }

    #[test]
    fn blob_gc_waits_for_enough_garbage_then_takes_the_emptiest_files() {
        let o = CompactionOptions::default();
        assert_eq!(o.blob_garbage_max_percent, Some(25));
        assert_eq!(choose_blob_gc(&[], 0, &o), None);
        // 20 % garbage: within the allowance.
        assert_eq!(choose_blob_gc(&[usage(1, 120, 100)], 0, &o), None);
        // 150 garbage on 150 live: over. The emptiest files go first, until the garbage left
        // (10) is at most half the allowance (18.75).
        let files = [usage(1, 100, 90), usage(2, 100, 30), usage(3, 100, 30)];
        assert_eq!(choose_blob_gc(&files, 0, &o), Some(vec![2, 3]));
        // One mostly-empty file among full ones: only it.
        let files = [
            usage(1, 1000, 1000),
            usage(2, 1000, 1000),
            usage(3, 1000, 100),
        ];
        assert_eq!(choose_blob_gc(&files, 0, &o), Some(vec![3]));
        // A file nothing points at is collected by the merge with nothing to relocate.
        assert_eq!(
            choose_blob_gc(&[usage(1, 100, 100), usage(2, 100, 0)], 0, &o),
            Some(vec![2])
        );
        let off = CompactionOptions {
            blob_garbage_max_percent: None,
            ..o.clone()
        };
        assert_eq!(choose_blob_gc(&[usage(1, 100, 0)], 0, &off), None);
        // 60 bytes of garbage would cost a rewrite of 300 bytes of tables: wait; 240: go.
        let files = [usage(1, 100, 100), usage(2, 100, 40)];
        assert_eq!(choose_blob_gc(&files, 300, &o), None);
        assert_eq!(choose_blob_gc(&files, 240, &o), Some(vec![2]));
    }

    #[test]
    fn space_amplification_trigger_merges_everything() {
        let amp = CompactionOptions {
            space_amp_max_percent: Some(40),
            ..o()
        };
        // Newer tables hold 40 % of the oldest: below the trigger, and too few for a run.
        assert_eq!(choose(&[100, 20, 20], &amp), None);
        // 60 %: merge all of them, even though they are too few and too unequal for a run.
        assert_eq!(choose(&[100, 30, 30], &amp), Some(0..3));
        assert_eq!(choose(&[100, 51], &amp), Some(0..2));
        // A run of similar small tables below the trigger still merges as size-tiered.
        assert_eq!(choose(&[1000, 10, 10, 10, 10], &amp), Some(1..5));
        // One table never merges with itself; huge sizes do not overflow.
        assert_eq!(choose(&[100], &amp), None);
        assert_eq!(choose(&[u64::MAX, u64::MAX], &amp), Some(0..2));
        assert_eq!(choose(&[u64::MAX, 1], &amp), None);
    }
}
