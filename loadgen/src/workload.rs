//! YCSB's core workloads, sans IO: which operation comes next and on which key.
//!
//! * **Key choosers** ([`KeyChooser`]): `uniform`; `zipfian` with constant 0.99, scrambled
//!   (YCSB's `ScrambledZipfianGenerator`: the popular items are spread over the key space by
//!   an FNV hash instead of being the lowest numbers); `latest` (YCSB's
//!   `SkewedLatestGenerator`: the most recently inserted keys are the most popular).
//! * **Mixes** ([`Workload`]): A (50 % read, 50 % update), B (95 / 5), C (read only), D (95 %
//!   read, 5 % insert, latest), E (95 % scan, 5 % insert), F (50 % read, 50 %
//!   read-modify-write), as YCSB's `workloads/workload[a-f]` define them.
//! * **Exact and reproducible:** operations are drawn from blocks of 100 that hold each
//!   operation exactly its percentage of times, shuffled; with the same seed the same
//!   sequence comes out.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// YCSB's zipfian constant.
pub const ZIPFIAN_CONSTANT: f64 = 0.99;

/// An operation of a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    /// Read one key.
    Read,
    /// Overwrite one existing key.
    Update,
    /// Write a new key (past the records loaded).
    Insert,
    /// Read a range of keys from one.
    Scan,
    /// Read a key, then write it.
    ReadModifyWrite,
}

/// A zipfian distribution over `0..n` (Gray et al., "Quickly generating billion-record
/// synthetic databases", as YCSB implements it): item 0 is the most popular.
#[derive(Clone, Debug)]
pub struct Zipfian {
    n: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
    half_pow_theta: f64,
}

fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

impl Zipfian {
    /// Over `0..n` with constant `theta` (0 < theta < 1).
    ///
    /// # Panics
    /// If `n` is 0 or `theta` is outside `(0, 1)`.
    #[must_use]
    pub fn new(n: u64, theta: f64) -> Zipfian {
        assert!(n > 0, "a zipfian needs at least one item");
        assert!(theta > 0.0 && theta < 1.0, "theta is in (0, 1)");
        let zetan = zeta(n, theta);
        let zeta2 = zeta(2.min(n), theta);
        let eta = if n > 1 {
            (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan)
        } else {
            0.0
        };
        Zipfian {
            n,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta,
            half_pow_theta: 0.5f64.powf(theta),
        }
    }

    /// The number of items.
    #[must_use]
    pub fn items(&self) -> u64 {
        self.n
    }

    /// The next item.
    pub fn sample(&self, rng: &mut impl Rng) -> u64 {
        let u: f64 = rng.gen();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + self.half_pow_theta {
            return 1.min(self.n - 1);
        }
        let v = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        v.min(self.n - 1)
    }

    /// Its constant.
    #[must_use]
    pub fn theta(&self) -> f64 {
        self.theta
    }
}

/// FNV-1a of a number's 8 bytes (YCSB's scrambling hash).
#[must_use]
pub fn fnv64(v: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in v.to_le_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// How keys are chosen.
#[derive(Clone, Debug)]
pub enum KeyChooser {
    /// Every existing key equally.
    Uniform,
    /// Zipfian over the records, popular items scattered over the key space.
    ScrambledZipfian(Zipfian),
    /// The newest keys most popular (zipfian over the distance from the newest).
    Latest(Zipfian),
}

impl KeyChooser {
    /// Picks an existing key number below `records` (the keys inserted so far).
    pub fn pick(&self, records: u64, rng: &mut impl Rng) -> u64 {
        let records = records.max(1);
        match self {
            KeyChooser::Uniform => rng.gen_range(0..records),
            KeyChooser::ScrambledZipfian(z) => fnv64(z.sample(rng)) % records,
            KeyChooser::Latest(z) => {
                let back = z.sample(rng) % records;
                records - 1 - back
            }
        }
    }
}

/// The distribution a workload reads with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Distribution {
    /// Uniform.
    Uniform,
    /// Scrambled zipfian (0.99).
    Zipfian,
    /// Latest.
    Latest,
}

/// One of YCSB's core workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Update heavy: 50 % read, 50 % update, zipfian.
    A,
    /// Read mostly: 95 % read, 5 % update, zipfian.
    B,
    /// Read only, zipfian.
    C,
    /// Read latest: 95 % read, 5 % insert, latest.
    D,
    /// Short ranges: 95 % scan (1..=100 keys), 5 % insert, zipfian.
    E,
    /// Read-modify-write: 50 % read, 50 % read-modify-write, zipfian.
    F,
}

impl std::str::FromStr for Workload {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "a" => Ok(Workload::A),
            "b" => Ok(Workload::B),
            "c" => Ok(Workload::C),
            "d" => Ok(Workload::D),
            "e" => Ok(Workload::E),
            "f" => Ok(Workload::F),
            other => Err(format!("workload must be a..f, not {other:?}")),
        }
    }
}

impl Workload {
    /// Its operations and their percentages (summing to 100).
    #[must_use]
    pub fn mix(self) -> &'static [(OpKind, u8)] {
        match self {
            Workload::A => &[(OpKind::Read, 50), (OpKind::Update, 50)],
            Workload::B => &[(OpKind::Read, 95), (OpKind::Update, 5)],
            Workload::C => &[(OpKind::Read, 100)],
            Workload::D => &[(OpKind::Read, 95), (OpKind::Insert, 5)],
            Workload::E => &[(OpKind::Scan, 95), (OpKind::Insert, 5)],
            Workload::F => &[(OpKind::Read, 50), (OpKind::ReadModifyWrite, 50)],
        }
    }

    /// The distribution its keys are chosen with.
    #[must_use]
    pub fn distribution(self) -> Distribution {
        match self {
            Workload::D => Distribution::Latest,
            _ => Distribution::Zipfian,
        }
    }
}

/// One operation to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operation {
    /// What.
    pub kind: OpKind,
    /// The key number (an insert's is the next new one).
    pub key: u64,
    /// For a scan, how many keys.
    pub scan_length: u32,
}

/// The operations of one workload run, reproducible from a seed.
#[derive(Debug)]
pub struct Generator {
    rng: StdRng,
    chooser: KeyChooser,
    block: Vec<OpKind>,
    next_in_block: usize,
    records: u64,
    /// This generator's share of the inserts: keys `records + share + k * sharers`.
    share: u64,
    sharers: u64,
    inserted: u64,
    /// This generator's inserts acknowledged without a gap (YCSB's acknowledged counter):
    /// reads range over those, never over a key whose insert may still be in flight.
    acked: u64,
    acked_out_of_order: std::collections::BTreeSet<u64>,
}

/// The longest scan workload E asks for.
pub const SCAN_LENGTH_MAX: u32 = 100;

impl Generator {
    /// The operations of `workload` over `records` loaded keys, seeded with `seed`; `None`
    /// overrides the workload's distribution.
    ///
    /// # Panics
    /// If `records` is 0.
    #[must_use]
    pub fn new(
        workload: Workload,
        distribution: Option<Distribution>,
        records: u64,
        seed: u64,
    ) -> Generator {
        assert!(records > 0, "a workload runs over at least one record");
        let chooser = match distribution.unwrap_or(workload.distribution()) {
            Distribution::Uniform => KeyChooser::Uniform,
            Distribution::Zipfian => {
                KeyChooser::ScrambledZipfian(Zipfian::new(records, ZIPFIAN_CONSTANT))
            }
            Distribution::Latest => KeyChooser::Latest(Zipfian::new(records, ZIPFIAN_CONSTANT)),
        };
        let block = workload
            .mix()
            .iter()
            .flat_map(|&(op, pct)| std::iter::repeat_n(op, usize::from(pct)))
            .collect();
        Generator {
            rng: StdRng::seed_from_u64(seed),
            chooser,
            block,
            next_in_block: usize::MAX,
            records,
            share: 0,
            sharers: 1,
            inserted: 0,
            acked: 0,
            acked_out_of_order: std::collections::BTreeSet::new(),
        }
    }

    /// The same, for generator `share` of `sharers` running side by side (one per client
    /// thread): its inserts take keys `records + share`, `records + share + sharers`, … so
    /// that no two threads insert the same key, and reads range over the keys all of them
    /// have inserted by then, assuming they go at the same pace.
    ///
    /// # Panics
    /// If `share` is not below `sharers`.
    #[must_use]
    pub fn shared(mut self, share: u64, sharers: u64) -> Generator {
        assert!(share < sharers, "generator {share} of {sharers}");
        self.share = share;
        self.sharers = sharers;
        self
    }

    /// Keys that reads range over: the records loaded plus the inserts acknowledged so far
    /// (every generator's, assuming they go at this one's pace).
    #[must_use]
    pub fn records(&self) -> u64 {
        self.records + self.acked * self.sharers
    }

    /// The insert of `key` (one of this generator's) has completed, whatever its outcome.
    pub fn acknowledge(&mut self, key: u64) {
        let Some(k) = key
            .checked_sub(self.records + self.share)
            .filter(|k| k % self.sharers == 0)
            .map(|k| k / self.sharers)
            .filter(|&k| k < self.inserted)
        else {
            return;
        };
        if k == self.acked {
            self.acked += 1;
            while self.acked_out_of_order.remove(&self.acked) {
                self.acked += 1;
            }
        } else if k > self.acked {
            self.acked_out_of_order.insert(k);
        }
    }

    /// The next operation.
    pub fn next_op(&mut self) -> Operation {
        if self.next_in_block >= self.block.len() {
            self.block.shuffle(&mut self.rng);
            self.next_in_block = 0;
        }
        let kind = self.block[self.next_in_block];
        self.next_in_block += 1;
        let (key, scan_length) = match kind {
            OpKind::Insert => {
                let key = self.records + self.share + self.inserted * self.sharers;
                self.inserted += 1;
                (key, 0)
            }
            OpKind::Scan => (
                self.chooser.pick(self.records(), &mut self.rng),
                self.rng.gen_range(1..=SCAN_LENGTH_MAX),
            ),
            _ => (self.chooser.pick(self.records(), &mut self.rng), 0),
        };
        Operation {
            kind,
            key,
            scan_length,
        }
    }
}

/// The key of number `i`, as YCSB names them: `prefix` + the number's FNV hash (so that
/// inserts in order do not land in order).
#[must_use]
pub fn key_name(prefix: &str, i: u64) -> String {
    format!("{prefix}{}", fnv64(i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn mixes_are_exact_in_every_block_of_a_hundred_and_reproducible() {
        for w in ["a", "b", "c", "d", "e", "f"] {
            let w: Workload = w.parse().expect("workload");
            let mut g = Generator::new(w, None, 1000, 42);
            let ops: Vec<_> = (0..1000).map(|_| g.next_op()).collect();
            let mut counts: HashMap<OpKind, u32> = HashMap::new();
            for o in &ops {
                *counts.entry(o.kind).or_default() += 1;
            }
            for &(op, pct) in w.mix() {
                assert_eq!(counts[&op], u32::from(pct) * 10, "{w:?} {op:?}");
            }
            let mut again = Generator::new(w, None, 1000, 42);
            let same: Vec<_> = (0..1000).map(|_| again.next_op()).collect();
            assert_eq!(ops, same, "the same seed gives the same sequence");
            let mut other = Generator::new(w, None, 1000, 43);
            let differs: Vec<_> = (0..1000).map(|_| other.next_op()).collect();
            assert!(
                w == Workload::C && ops.iter().all(|o| o.kind == OpKind::Read) || ops != differs
            );
        }
        assert!("g".parse::<Workload>().is_err());
    }

    #[test]
    fn inserts_take_new_keys_and_latest_prefers_them() {
        let mut g = Generator::new(Workload::D, None, 1000, 7);
        let mut inserted = Vec::new();
        let mut reads_of_newest_tenth = 0u32;
        let mut reads = 0u32;
        for _ in 0..20_000 {
            let o = g.next_op();
            match o.kind {
                OpKind::Insert => {
                    inserted.push(o.key);
                    g.acknowledge(o.key);
                }
                OpKind::Read => {
                    reads += 1;
                    assert!(o.key < g.records());
                    if o.key >= g.records() - g.records() / 10 {
                        reads_of_newest_tenth += 1;
                    }
                }
                other => panic!("D has no {other:?}"),
            }
        }
        assert_eq!(inserted.len(), 1000);
        assert!(inserted.windows(2).all(|w| w[1] == w[0] + 1));
        assert_eq!(inserted[0], 1000);
        // Under `latest`, most reads go to the newest tenth of the keys.
        assert!(
            f64::from(reads_of_newest_tenth) / f64::from(reads) > 0.6,
            "{reads_of_newest_tenth} of {reads}"
        );
    }

    #[test]
    fn threads_insert_disjoint_keys_that_together_leave_no_gap() {
        let mut all = Vec::new();
        for t in 0..3 {
            let mut g = Generator::new(Workload::D, None, 500, 11).shared(t, 3);
            let mut mine = Vec::new();
            while mine.len() < 200 {
                let o = g.next_op();
                if o.kind == OpKind::Insert {
                    mine.push(o.key);
                }
            }
            assert!(mine.iter().all(|k| k % 3 == (500 + t) % 3), "thread {t}");
            // Reads range over acknowledged inserts only, without a gap: acknowledging all
            // but the first leaves the range where it was; the first then opens it all.
            assert_eq!(g.records(), 500);
            for &k in mine.iter().skip(1).rev() {
                g.acknowledge(k);
            }
            assert_eq!(g.records(), 500);
            g.acknowledge(mine[0]);
            g.acknowledge(mine[0]);
            g.acknowledge(7);
            assert_eq!(g.records(), 500 + 200 * 3);
            all.extend(mine);
        }
        all.sort_unstable();
        assert_eq!(all, (500..500 + 600).collect::<Vec<_>>());
    }

    #[test]
    fn zipfian_follows_its_law() {
        // P(rank k) is proportional to 1 / k^0.99: check the top ranks' frequencies.
        let n = 1000;
        let z = Zipfian::new(n, ZIPFIAN_CONSTANT);
        let mut rng = StdRng::seed_from_u64(1);
        let samples = 400_000;
        let mut counts = vec![0u32; n as usize];
        for _ in 0..samples {
            counts[z.sample(&mut rng) as usize] += 1;
        }
        let zetan = zeta(n, ZIPFIAN_CONSTANT);
        let expected =
            |k: usize| f64::from(samples) / ((k + 1) as f64).powf(ZIPFIAN_CONSTANT) / zetan;
        // The two top ranks are drawn exactly; the rest by Gray's continuous approximation,
        // which YCSB uses too: within a quarter per rank, and closely over ranges of ranks.
        for (k, tolerance) in [(0usize, 0.05), (1, 0.05), (2, 0.25), (9, 0.25), (99, 0.25)] {
            let seen = f64::from(counts[k]);
            assert!(
                (seen / expected(k) - 1.0).abs() < tolerance,
                "rank {k}: {seen} seen, {:.0} expected",
                expected(k)
            );
        }
        for (from, to) in [(0usize, 10usize), (10, 100), (100, 1000)] {
            let seen: f64 = counts[from..to].iter().map(|&c| f64::from(c)).sum();
            let want: f64 = (from..to).map(expected).sum();
            assert!(
                (seen / want - 1.0).abs() < 0.05,
                "ranks {from}..{to}: {seen} seen, {want:.0} expected"
            );
        }
        assert!(counts.iter().all(|&c| c < samples));
    }

    #[test]
    fn scrambled_zipfian_is_skewed_but_spread_and_uniform_is_flat() {
        let records = 10_000;
        let mut rng = StdRng::seed_from_u64(3);
        let zipf = KeyChooser::ScrambledZipfian(Zipfian::new(records, ZIPFIAN_CONSTANT));
        let mut counts = vec![0u32; records as usize];
        for _ in 0..200_000 {
            counts[zipf.pick(records, &mut rng) as usize] += 1;
        }
        let mut sorted = counts.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        let top_percent: u32 = sorted[..100].iter().sum();
        // The hottest 1 % of keys take far more than 1 % of the reads.
        assert!(top_percent > 200_000 / 5, "top 1 %: {top_percent}");
        // ...and they are not the lowest key numbers.
        let hottest = counts
            .iter()
            .enumerate()
            .max_by_key(|&(_, c)| *c)
            .map(|(i, _)| i)
            .expect("some");
        assert_ne!(hottest, 0);
        let uniform = KeyChooser::Uniform;
        let mut counts = vec![0u32; 10];
        for _ in 0..100_000 {
            counts[uniform.pick(10, &mut rng) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn scans_have_lengths_within_bounds() {
        let mut g = Generator::new(Workload::E, None, 100, 9);
        for _ in 0..1000 {
            let o = g.next_op();
            if o.kind == OpKind::Scan {
                assert!((1..=SCAN_LENGTH_MAX).contains(&o.scan_length));
            }
        }
        assert_ne!(key_name("user", 1), key_name("user", 2));
        assert!(key_name("user", 1).starts_with("user"));
    }
}
