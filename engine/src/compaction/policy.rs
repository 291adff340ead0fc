//! The compaction policy: pure, no I/O. Size-tiered over the shard's list of tables (oldest data
//! first): merge a run of adjacent tables of similar size, so that a merged table can take the
//! run's place in the list and recency order is kept without levels.

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
    /// A tombstone is dropped only once it is this old (and the merge includes the oldest
    /// table, so that nothing it shadows can remain).
    pub tombstone_grace_ms: u64,
}

impl Default for CompactionOptions {
    fn default() -> Self {
        CompactionOptions {
            enabled: true,
            min_run: 4,
            max_run: 8,
            size_ratio_max: 4,
            tables_max: 16,
            tombstone_grace_ms: 10 * 24 * 3600 * 1000,
        }
    }
}

/// Picks the run of adjacent tables to merge, given their sizes (oldest first), or `None`.
///
/// Among runs of `min_run..=max_run` tables whose sizes are within `size_ratio_max` of each
/// other, the one with the fewest bytes wins (cheap merges first; ties go to the longer run).
/// With more than `tables_max` tables, the cheapest `min_run`-run is taken whatever the sizes.
#[must_use]
pub fn choose(sizes: &[u64], o: &CompactionOptions) -> Option<Range<usize>> {
    let min_run = o.min_run.max(2);
    if !o.enabled || sizes.len() < min_run {
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

    fn o() -> CompactionOptions {
        CompactionOptions::default()
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
}
