//! Duration histograms of the engine's stages — how long writes wait to be admitted and for the
//! WAL, how long flushes and compactions take — kept per shard and exported in
//! [`ShardStats`](crate::ShardStats), so that a node's `/metrics` shows where a write's time
//! goes and when a flush or compaction ran long.

use std::time::Duration;

/// Upper bounds of the buckets, in microseconds (finer than a request's: most stages take
/// microseconds).
pub const STAGE_BUCKETS_US: [u64; 18] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    1_000_000, 10_000_000, 60_000_000,
];

/// Counts of durations by bucket (not cumulative), with their count and sum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DurationCounts {
    /// Observations at or below each bound of [`STAGE_BUCKETS_US`] and above the one before.
    pub buckets: [u64; STAGE_BUCKETS_US.len()],
    /// Observations (those above the last bound are counted here only).
    pub count: u64,
    /// Their sum, in microseconds.
    pub sum_us: u64,
}

impl DurationCounts {
    /// Records one observation.
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        if let Some(i) = STAGE_BUCKETS_US.iter().position(|&b| us <= b) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }
}

/// The engine's stage timings of one shard since it opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StageTimings {
    /// A write's wait before it may enter the memtable: for a memtable slot (flushes behind),
    /// for compaction (too many tables), for WAL buffer space.
    pub write_admission: DurationCounts,
    /// A `Sync` write's wait for the WAL batch that holds it to be durable.
    pub wal_wait: DurationCounts,
    /// Memtable flushes, from start to the table installed.
    pub flush: DurationCounts,
    /// Compactions (merges), from start to the new tables installed.
    pub compaction: DurationCounts,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket() {
        let mut c = DurationCounts::default();
        c.record(Duration::from_micros(3));
        c.record(Duration::from_micros(5));
        c.record(Duration::from_micros(6));
        c.record(Duration::from_millis(2));
        c.record(Duration::from_secs(100));
        assert_eq!(c.buckets[0], 2, "3 and 5 µs: at or below 5");
        assert_eq!(c.buckets[1], 1, "6 µs");
        assert_eq!(c.buckets[8], 1, "2 ms: at or below 2.5 ms");
        assert_eq!(
            c.buckets.iter().sum::<u64>(),
            4,
            "100 s is above every bound"
        );
        assert_eq!(c.count, 5);
        assert_eq!(c.sum_us, 3 + 5 + 6 + 2_000 + 100_000_000);
    }
}
