//! Dotted version vector sets (Almeida et al., DAIS 2014; the semantics of Riak's `dvvset`):
//! a key's sibling values, each tagged with the dot (actor, counter) of the write that made it,
//! under one causal context. Concurrent writes become siblings; a write whose context covers a
//! sibling's dot replaces it; no sibling is ever duplicated, however writes interleave.
//!
//! Representation: entries sorted by actor, each `(actor, counter, values newest first)`; the
//! value at index `k` of an entry has dot `(actor, counter - k)`. Values without a dot (a
//! context-free value not yet given one) live in `anonymous`.
//!
//! INVARIANTS (checked by [`DvvSet::check`] and kept by every operation): actors strictly
//! increasing; `values.len() <= counter`; counters are never zero. A dot is minted only by the
//! replica that owns the actor id, after reading its own latest state for the key under a
//! per-key lock — otherwise two writes could share a dot and `sync` would keep only one.
//!
//! Encoding (the record's version blob), all integers LEB128 varints:
//! ```text
//! u8 format (2) | n_entries | per entry: actor node | actor epoch | counter
//!              | n_values | per value: len | bytes
//!              | n_anonymous | per value: len | bytes
//! ```

use std::cmp::Ordering;

/// The minter of dots: a node in one *actor epoch*. A node moves to a new epoch whenever it
/// cannot prove it remembers every dot it minted (see `docs/protocol.md`, "Actor epochs"), so
/// that no dot is ever minted twice. Ordered by node, then epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ActorId {
    /// The node id.
    pub node: u64,
    /// The node's actor epoch when it minted (0: a version written before epochs existed).
    pub epoch: u64,
}

/// The epoch bit of a node's *transaction* actor: the dots of lightweight transactions are
/// minted as `(node, epoch | TRANSACTION_EPOCH_BIT)`, apart from its plain writes' dots, so
/// that a proposal minted but not yet committed can never share a dot with a plain write.
pub const TRANSACTION_EPOCH_BIT: u64 = 1 << 63;

impl ActorId {
    /// Node `node` in epoch `epoch`.
    #[must_use]
    pub const fn new(node: u64, epoch: u64) -> ActorId {
        ActorId { node, epoch }
    }

    fn encode_into(self, out: &mut Vec<u8>) {
        put_varint(out, self.node);
        put_varint(out, self.epoch);
    }

    /// Format 1 named an actor by its node alone (epoch 0).
    fn decode(r: &mut Reader<'_>, format: u8) -> Result<ActorId, DvvError> {
        let node = r.varint()?;
        let epoch = if format == FORMAT_V1 { 0 } else { r.varint()? };
        Ok(ActorId { node, epoch })
    }
}

/// Sibling count at which a write logs a warning.
pub const SIBLINGS_WARN: usize = 25;
/// Sibling count beyond which a write is refused.
pub const SIBLINGS_MAX: usize = 100;

/// The largest event counter an actor may reach (2^62: far beyond any real key's history, and
/// far from overflow, so a peer cannot make the next write's counter wrap).
pub const COUNTER_MAX: u64 = 1 << 62;

/// Actors as `node | epoch`; format 1 (still read) had `node` alone.
const FORMAT_VERSION: u8 = 2;
const FORMAT_V1: u8 = 1;

fn known_format(format: u8) -> bool {
    format == FORMAT_VERSION || format == FORMAT_V1
}

/// What can go wrong with versions.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DvvError {
    /// The write would leave more than [`SIBLINGS_MAX`] siblings; resolve them first (read,
    /// merge, write back with the read context).
    #[error("the write would leave {count} siblings; at most {max} are allowed")]
    TooManySiblings {
        /// Siblings the write would leave.
        count: usize,
        /// The bound.
        max: usize,
    },
    /// Bytes that are not a valid encoding (a damaged blob, or a forged client context).
    #[error("malformed version data: {0}")]
    Malformed(&'static str),
}

/// A causal context: for each actor, how many of its events are known. Sorted, unique, no zeros.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct VersionVector(Vec<(ActorId, u64)>);

impl VersionVector {
    /// The empty context (a blind write).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A context from pairs in any order; zero counters are dropped.
    ///
    /// # Errors
    /// [`DvvError::Malformed`] if an actor appears twice.
    pub fn from_pairs(mut pairs: Vec<(ActorId, u64)>) -> Result<Self, DvvError> {
        pairs.retain(|&(_, n)| n > 0);
        pairs.sort_unstable_by_key(|&(a, _)| a);
        if pairs.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(DvvError::Malformed("an actor appears twice in a context"));
        }
        Ok(VersionVector(pairs))
    }

    /// The counter of `actor` (0 if absent).
    #[must_use]
    pub fn get(&self, actor: ActorId) -> u64 {
        self.0
            .binary_search_by_key(&actor, |&(a, _)| a)
            .map_or(0, |i| self.0[i].1)
    }

    /// The `(actor, counter)` pairs, sorted by actor.
    #[must_use]
    pub fn pairs(&self) -> &[(ActorId, u64)] {
        &self.0
    }

    /// Whether this context has seen everything `other` has (pointwise `>=`).
    #[must_use]
    pub fn descends(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|&(a, n)| self.get(a) >= n)
    }

    /// The pointwise maximum.
    #[must_use]
    pub fn merge(&self, other: &VersionVector) -> VersionVector {
        let mut out = Vec::with_capacity(self.0.len() + other.0.len());
        let (mut i, mut j) = (0, 0);
        while i < self.0.len() || j < other.0.len() {
            match (self.0.get(i), other.0.get(j)) {
                (Some(&(a, n)), Some(&(b, m))) => match a.cmp(&b) {
                    Ordering::Less => {
                        out.push((a, n));
                        i += 1;
                    }
                    Ordering::Greater => {
                        out.push((b, m));
                        j += 1;
                    }
                    Ordering::Equal => {
                        out.push((a, n.max(m)));
                        i += 1;
                        j += 1;
                    }
                },
                (Some(&p), None) => {
                    out.push(p);
                    i += 1;
                }
                (None, Some(&p)) => {
                    out.push(p);
                    j += 1;
                }
                (None, None) => unreachable!("loop condition"),
            }
        }
        VersionVector(out)
    }

    /// Appends the encoding: `u8 format | n | (actor node, actor epoch, counter)*`, varints.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(FORMAT_VERSION);
        put_varint(out, self.0.len() as u64);
        for &(a, n) in &self.0 {
            a.encode_into(out);
            put_varint(out, n);
        }
    }

    /// Decodes a context (for example one a client sent back).
    ///
    /// # Errors
    /// [`DvvError::Malformed`] for anything but a canonical encoding.
    pub fn decode(buf: &[u8]) -> Result<Self, DvvError> {
        let mut r = Reader { buf, at: 0 };
        let format = r.byte()?;
        if !known_format(format) {
            return Err(DvvError::Malformed("unknown context format"));
        }
        let n = r.count(2)?;
        let mut pairs = Vec::with_capacity(n);
        for _ in 0..n {
            let a = ActorId::decode(&mut r, format)?;
            let c = r.varint()?;
            if c == 0 || pairs.last().is_some_and(|&(p, _)| p >= a) {
                return Err(DvvError::Malformed("context not canonical"));
            }
            pairs.push((a, c));
        }
        r.finish()?;
        Ok(VersionVector(pairs))
    }
}

/// The values one actor made that are still live.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry<V> {
    actor: ActorId,
    counter: u64,
    /// Newest first: index `k` has dot `(actor, counter - k)`.
    values: Vec<V>,
}

impl<V> Entry<V> {
    fn base(&self) -> u64 {
        self.counter - self.values.len() as u64
    }
}

/// A key's siblings under one causal context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DvvSet<V> {
    entries: Vec<Entry<V>>,
    anonymous: Vec<V>,
}

impl<V: Clone + PartialEq> DvvSet<V> {
    /// A value with no context and no dot yet.
    #[must_use]
    pub fn new(value: V) -> Self {
        DvvSet {
            entries: Vec::new(),
            anonymous: vec![value],
        }
    }

    /// A value under context `ctx` (what a client sends: "I have seen `ctx`; here is a value").
    #[must_use]
    pub fn with_context(ctx: &VersionVector, value: V) -> Self {
        DvvSet {
            entries: Self::context_entries(ctx),
            anonymous: vec![value],
        }
    }

    fn context_entries(ctx: &VersionVector) -> Vec<Entry<V>> {
        ctx.0
            .iter()
            .map(|&(actor, counter)| Entry {
                actor,
                counter,
                values: Vec::new(),
            })
            .collect()
    }

    /// The causal context a reader gets.
    #[must_use]
    pub fn join(&self) -> VersionVector {
        VersionVector(self.entries.iter().map(|e| (e.actor, e.counter)).collect())
    }

    /// All sibling values: anonymous ones first, then each actor's, newest first.
    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.anonymous
            .iter()
            .chain(self.entries.iter().flat_map(|e| e.values.iter()))
    }

    /// Every dotted value with its dot.
    pub fn dots(&self) -> impl Iterator<Item = (ActorId, u64, &V)> + '_ {
        self.entries.iter().flat_map(|e| {
            e.values
                .iter()
                .enumerate()
                .map(move |(k, v)| (e.actor, e.counter - k as u64, v))
        })
    }

    /// Number of sibling values.
    #[must_use]
    pub fn size(&self) -> usize {
        self.anonymous.len() + self.entries.iter().map(|e| e.values.len()).sum::<usize>()
    }

    /// Whether `self` is strictly older than `other` (its context is covered and different).
    #[must_use]
    pub fn less(&self, other: &Self) -> bool {
        let (a, b) = (self.join(), other.join());
        b.descends(&a) && a != b
    }

    /// Same actors, counters and number of live values per actor (payloads not compared).
    #[must_use]
    pub fn equal(&self, other: &Self) -> bool {
        self.entries.len() == other.entries.len()
            && self.entries.iter().zip(&other.entries).all(|(a, b)| {
                a.actor == b.actor && a.counter == b.counter && a.values.len() == b.values.len()
            })
    }

    /// Merges two replicas' states: commutative, associative and idempotent. A value survives
    /// unless the other side's context covers its dot; equal dots are one value.
    #[must_use]
    pub fn sync(&self, other: &Self) -> Self {
        let anonymous = if self.less(other) {
            other.anonymous.clone()
        } else if other.less(self) {
            self.anonymous.clone()
        } else {
            let mut all = self.anonymous.clone();
            for v in &other.anonymous {
                if !all.contains(v) {
                    all.push(v.clone());
                }
            }
            all
        };
        let mut entries = Vec::with_capacity(self.entries.len() + other.entries.len());
        let (mut i, mut j) = (0, 0);
        while i < self.entries.len() || j < other.entries.len() {
            match (self.entries.get(i), other.entries.get(j)) {
                (Some(a), Some(b)) => match a.actor.cmp(&b.actor) {
                    Ordering::Less => {
                        entries.push(a.clone());
                        i += 1;
                    }
                    Ordering::Greater => {
                        entries.push(b.clone());
                        j += 1;
                    }
                    Ordering::Equal => {
                        entries.push(merge_entry(a, b));
                        i += 1;
                        j += 1;
                    }
                },
                (Some(a), None) => {
                    entries.push(a.clone());
                    i += 1;
                }
                (None, Some(b)) => {
                    entries.push(b.clone());
                    j += 1;
                }
                (None, None) => unreachable!("loop condition"),
            }
        }
        DvvSet { entries, anonymous }
    }

    /// The coordinator's write: `value` written by a client that had seen `ctx`, minted by
    /// `actor` against this replica's own latest `local` state for the key. Siblings whose dots
    /// `ctx` covers are replaced; the others stay. The new value's dot is
    /// `(actor, max(local[actor], ctx[actor]) + 1)`.
    ///
    /// # Errors
    /// [`DvvError::TooManySiblings`] if more than [`SIBLINGS_MAX`] siblings would remain.
    pub fn update(
        ctx: &VersionVector,
        value: V,
        local: Option<&Self>,
        actor: ActorId,
    ) -> Result<Self, DvvError> {
        Self::mint(ctx, value, local, actor, 0)
    }

    /// [`DvvSet::update`] whose new dot's counter is also above `floor`: what a replica with no
    /// local copy of the key passes (its counter of every dot it ever minted), so that the dot
    /// is new even where another replica still holds dots this one has purged. A `floor` is
    /// only allowed where `actor` has no live value in the result (no local copy): a value's
    /// dot is its position below its actor's counter, which a jump would change.
    ///
    /// # Errors
    /// As [`DvvSet::update`].
    pub fn mint(
        ctx: &VersionVector,
        value: V,
        local: Option<&Self>,
        actor: ActorId,
        floor: u64,
    ) -> Result<Self, DvvError> {
        let client = DvvSet {
            entries: Self::context_entries(ctx),
            anonymous: Vec::new(),
        };
        let mut merged = match local {
            None => client,
            Some(local) => {
                let mut merged = client.sync(local);
                // The context has seen everything local has: local's context-free values are
                // covered too (the reference code keeps them forever when contexts are equal).
                if ctx.descends(&local.join()) {
                    merged.anonymous.clear();
                }
                merged
            }
        };
        match merged.entries.binary_search_by_key(&actor, |e| e.actor) {
            Ok(i) => {
                let e = &mut merged.entries[i];
                assert!(
                    floor == 0 || e.values.is_empty(),
                    "INVARIANT: a counter floor only where the actor has no live value"
                );
                e.counter = e
                    .counter
                    .max(floor)
                    .checked_add(1)
                    .filter(|&c| c <= COUNTER_MAX)
                    .ok_or(DvvError::Malformed("counter out of range"))?;
                e.values.insert(0, value);
            }
            Err(i) => merged.entries.insert(
                i,
                Entry {
                    actor,
                    counter: floor
                        .checked_add(1)
                        .filter(|&c| c <= COUNTER_MAX)
                        .ok_or(DvvError::Malformed("counter out of range"))?,
                    values: vec![value],
                },
            ),
        }
        let count = merged.size();
        if count > SIBLINGS_MAX {
            return Err(DvvError::TooManySiblings {
                count,
                max: SIBLINGS_MAX,
            });
        }
        if count >= SIBLINGS_WARN {
            tracing::warn!(siblings = count, "key has many siblings; resolve them");
        }
        Ok(merged)
    }

    /// Last writer wins among the concurrent siblings: keeps only the value with the greatest
    /// `key` (each actor's newest value and the anonymous ones compete). The context is kept, so
    /// the result still dominates everything this state had seen.
    #[must_use]
    pub fn lww_by<K: Ord>(&self, key: impl Fn(&V) -> K) -> Self {
        enum Winner {
            Entry(usize),
            Anonymous(usize),
        }
        let mut best: Option<(K, Winner)> = None;
        let mut consider = |k: K, w: Winner| {
            if best.as_ref().is_none_or(|(b, _)| k >= *b) {
                best = Some((k, w));
            }
        };
        for (i, e) in self.entries.iter().enumerate() {
            if let Some(head) = e.values.first() {
                consider(key(head), Winner::Entry(i));
            }
        }
        for (i, v) in self.anonymous.iter().enumerate() {
            consider(key(v), Winner::Anonymous(i));
        }
        let mut entries: Vec<Entry<V>> = self
            .entries
            .iter()
            .map(|e| Entry {
                actor: e.actor,
                counter: e.counter,
                values: Vec::new(),
            })
            .collect();
        match best {
            None => self.clone(),
            Some((_, Winner::Entry(i))) => {
                entries[i].values = vec![self.entries[i].values[0].clone()];
                DvvSet {
                    entries,
                    anonymous: Vec::new(),
                }
            }
            Some((_, Winner::Anonymous(i))) => DvvSet {
                entries,
                anonymous: vec![self.anonymous[i].clone()],
            },
        }
    }

    /// Retires actor epochs: drops each entry that holds no live value and whose node has an
    /// entry in a later epoch (the node moved on; its old epoch only remembers counters).
    /// `None` when there is none. Only safe once every replica's copy has seen the writes this
    /// one holds (the purge rules), or a replica still holding a value of the old epoch would
    /// see it as concurrent again.
    #[must_use]
    pub fn retire_epochs(&self) -> Option<Self> {
        let retired = |i: usize| {
            let e = &self.entries[i];
            e.values.is_empty()
                && self.entries.get(i + 1).is_some_and(|next| {
                    next.actor.node == e.actor.node
                        && next.actor.epoch & TRANSACTION_EPOCH_BIT
                            == e.actor.epoch & TRANSACTION_EPOCH_BIT
                })
        };
        if !(0..self.entries.len()).any(retired) {
            return None;
        }
        let entries = (0..self.entries.len())
            .filter(|&i| !retired(i))
            .map(|i| self.entries[i].clone())
            .collect();
        Some(DvvSet {
            entries,
            anonymous: self.anonymous.clone(),
        })
    }

    /// Checks the structural invariants (for decoded data and tests).
    ///
    /// # Errors
    /// [`DvvError::Malformed`] naming the broken invariant.
    pub fn check(&self) -> Result<(), DvvError> {
        if self.entries.windows(2).any(|w| w[0].actor >= w[1].actor) {
            return Err(DvvError::Malformed("actors not strictly increasing"));
        }
        if self.entries.iter().any(|e| e.counter == 0) {
            return Err(DvvError::Malformed("zero counter"));
        }
        if self.entries.iter().any(|e| e.counter > COUNTER_MAX) {
            return Err(DvvError::Malformed("counter out of range"));
        }
        if self
            .entries
            .iter()
            .any(|e| e.values.len() as u64 > e.counter)
        {
            return Err(DvvError::Malformed("more values than events"));
        }
        if self.size() > SIBLINGS_MAX {
            return Err(DvvError::Malformed("more siblings than allowed"));
        }
        Ok(())
    }

    /// Appends the encoding, each value written by `encode_value`.
    pub fn encode_into(&self, out: &mut Vec<u8>, mut encode_value: impl FnMut(&V, &mut Vec<u8>)) {
        let mut scratch = Vec::new();
        let mut put_value = |v: &V, out: &mut Vec<u8>| {
            scratch.clear();
            encode_value(v, &mut scratch);
            put_varint(out, scratch.len() as u64);
            out.extend_from_slice(&scratch);
        };
        out.push(FORMAT_VERSION);
        put_varint(out, self.entries.len() as u64);
        for e in &self.entries {
            e.actor.encode_into(out);
            put_varint(out, e.counter);
            put_varint(out, e.values.len() as u64);
            for v in &e.values {
                put_value(v, out);
            }
        }
        put_varint(out, self.anonymous.len() as u64);
        for v in &self.anonymous {
            put_value(v, out);
        }
    }

    /// Decodes a set, each value read by `decode_value` from exactly its bytes.
    ///
    /// # Errors
    /// [`DvvError::Malformed`] for truncated, non-canonical or invariant-breaking input, or
    /// whatever `decode_value` returns.
    pub fn decode(
        buf: &[u8],
        mut decode_value: impl FnMut(&[u8]) -> Result<V, DvvError>,
    ) -> Result<Self, DvvError> {
        let mut r = Reader { buf, at: 0 };
        let format = r.byte()?;
        if !known_format(format) {
            return Err(DvvError::Malformed("unknown version format"));
        }
        let n = r.count(3)?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let actor = ActorId::decode(&mut r, format)?;
            let counter = r.varint()?;
            let k = r.count(1)?;
            let mut values = Vec::with_capacity(k);
            for _ in 0..k {
                let len = r.count(1)?;
                values.push(decode_value(r.take(len)?)?);
            }
            entries.push(Entry {
                actor,
                counter,
                values,
            });
        }
        let k = r.count(1)?;
        let mut anonymous = Vec::with_capacity(k);
        for _ in 0..k {
            let len = r.count(1)?;
            anonymous.push(decode_value(r.take(len)?)?);
        }
        r.finish()?;
        let set = DvvSet { entries, anonymous };
        set.check()?;
        Ok(set)
    }
}

fn merge_entry<V: Clone>(a: &Entry<V>, b: &Entry<V>) -> Entry<V> {
    let (long, short) = if a.counter >= b.counter {
        (a, b)
    } else {
        (b, a)
    };
    if long.base() >= short.base() {
        long.clone()
    } else {
        // Keep only `long`'s values newer than `short`'s base: the older ones are covered.
        let keep = usize::try_from(long.counter - short.base()).unwrap_or(usize::MAX);
        Entry {
            actor: long.actor,
            counter: long.counter,
            values: long.values[..keep.min(long.values.len())].to_vec(),
        }
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, DvvError> {
        let b = *self
            .buf
            .get(self.at)
            .ok_or(DvvError::Malformed("truncated"))?;
        self.at += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, DvvError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DvvError::Malformed("varint too long"))
    }

    /// A count of items each taking at least `min_bytes`; bounded by what is left, so that a
    /// forged count cannot make us allocate.
    fn count(&mut self, min_bytes: usize) -> Result<usize, DvvError> {
        let n = usize::try_from(self.varint()?).map_err(|_| DvvError::Malformed("count"))?;
        if n.saturating_mul(min_bytes.max(1)) > self.buf.len() - self.at {
            return Err(DvvError::Malformed("count larger than the data"));
        }
        Ok(n)
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], DvvError> {
        let end = self
            .at
            .checked_add(len)
            .ok_or(DvvError::Malformed("length"))?;
        let s = self
            .buf
            .get(self.at..end)
            .ok_or(DvvError::Malformed("truncated"))?;
        self.at = end;
        Ok(s)
    }

    fn finish(&self) -> Result<(), DvvError> {
        if self.at == self.buf.len() {
            Ok(())
        } else {
            Err(DvvError::Malformed("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    type Set = DvvSet<u32>;

    fn enc(s: &Set) -> Vec<u8> {
        let mut out = Vec::new();
        s.encode_into(&mut out, |v, o| o.extend_from_slice(&v.to_le_bytes()));
        out
    }

    fn dec(b: &[u8]) -> Result<Set, DvvError> {
        Set::decode(b, |v| {
            Ok(u32::from_le_bytes(
                v.try_into()
                    .map_err(|_| DvvError::Malformed("value size"))?,
            ))
        })
    }

    /// The state with its anonymous values as a sorted set (their order is not significant).
    fn canonical(s: &Set) -> (Vec<Entry<u32>>, Vec<u32>) {
        let mut anon = s.anonymous.clone();
        anon.sort_unstable();
        (s.entries.clone(), anon)
    }

    fn vv(pairs: &[(u64, u64)]) -> VersionVector {
        VersionVector::from_pairs(
            pairs
                .iter()
                .map(|&(a, n)| (ActorId::new(a, 0), n))
                .collect(),
        )
        .expect("valid")
    }

    #[test]
    fn worked_examples() {
        let a = ActorId::new(1, 0);
        let s1 = Set::update(&VersionVector::new(), 1, None, a).expect("update");
        let ctx0 = s1.join();
        let s2 = Set::update(&ctx0, 2, Some(&s1), a).expect("update");
        assert_eq!(s2.values().copied().collect::<Vec<_>>(), vec![2]);
        // A concurrent write with the same old context becomes a sibling.
        let s3 = Set::update(&ctx0, 3, Some(&s2), a).expect("update");
        assert_eq!(s3.values().copied().collect::<Vec<_>>(), vec![3, 2]);
        assert_eq!(s3.join(), vv(&[(1, 3)]));
        // Writing with the read context collapses the siblings.
        let s4 = Set::update(&s3.join(), 4, Some(&s3), a).expect("update");
        assert_eq!(s4.values().copied().collect::<Vec<_>>(), vec![4]);
        // A stale client keeps the sibling it never saw but resurrects nothing.
        let s5 = Set::update(&vv(&[(1, 1)]), 5, Some(&s4), a).expect("update");
        assert_eq!(s5.values().copied().collect::<Vec<_>>(), vec![5, 4]);
    }

    #[test]
    fn reference_sync_cases() {
        let x = Set {
            entries: vec![Entry {
                actor: ActorId::new(1, 0),
                counter: 1,
                values: vec![],
            }],
            anonymous: vec![],
        };
        let y = Set {
            entries: vec![Entry {
                actor: ActorId::new(1, 0),
                counter: 2,
                values: vec![2, 1],
            }],
            anonymous: vec![],
        };
        assert_eq!(x.sync(&y).values().copied().collect::<Vec<_>>(), vec![2]);
        assert_eq!(y.sync(&x), x.sync(&y));
    }

    #[test]
    fn lww_keeps_the_greatest_and_is_absorbing() {
        let a = ActorId::new(1, 0);
        let b = ActorId::new(2, 0);
        let s = Set::update(&VersionVector::new(), 10, None, a).expect("update");
        let t = Set::update(&VersionVector::new(), 20, None, b).expect("update");
        let both = s.sync(&t);
        let w = both.lww_by(|v| *v);
        assert_eq!(w.values().copied().collect::<Vec<_>>(), vec![20]);
        assert_eq!(w.join(), both.join());
        assert_eq!(both.sync(&w), w);
        assert_eq!(w.lww_by(|v| *v), w);
    }

    #[test]
    fn sibling_limit_is_a_typed_error() {
        let mut s: Option<Set> = None;
        let mut result = Ok(());
        for i in 0..=SIBLINGS_MAX as u32 {
            // Blind writes from distinct actors: every one is concurrent with the others.
            match Set::update(
                &VersionVector::new(),
                i,
                s.as_ref(),
                ActorId::new(u64::from(i), 0),
            ) {
                Ok(next) => s = Some(next),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        assert_eq!(
            result,
            Err(DvvError::TooManySiblings {
                count: SIBLINGS_MAX + 1,
                max: SIBLINGS_MAX
            })
        );
        assert_eq!(s.map(|s| s.size()), Some(SIBLINGS_MAX));
    }

    #[test]
    fn decode_rejects_damage() {
        let s = Set::update(&vv(&[(1, 3), (2, 1)]), 7, None, ActorId::new(1, 0)).expect("update");
        let bytes = enc(&s);
        assert_eq!(dec(&bytes), Ok(s.clone()));
        for cut in 0..bytes.len() {
            assert!(dec(&bytes[..cut]).is_err(), "prefix {cut} decoded");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(dec(&extra).is_err());
        // A forged huge count must fail without allocating.
        assert!(dec(&[1, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        // Contexts: canonical only.
        let mut c = Vec::new();
        vv(&[(1, 2), (5, 1)]).encode_into(&mut c);
        assert_eq!(VersionVector::decode(&c), Ok(vv(&[(1, 2), (5, 1)])));
        assert!(
            VersionVector::decode(&[1, 2, 5, 1, 1, 2]).is_err(),
            "unsorted"
        );
        assert!(
            VersionVector::decode(&[1, 1, 5, 0]).is_err(),
            "zero counter"
        );
        assert!(
            VersionVector::from_pairs(vec![(ActorId::new(1, 0), 1), (ActorId::new(1, 0), 2)])
                .is_err()
        );
    }

    #[derive(Clone, Debug)]
    enum Op {
        Put { client: usize, replica: usize },
        Get { client: usize, replica: usize },
        Sync { from: usize, to: usize },
    }

    const REPLICAS: usize = 3;
    const CLIENTS: usize = 3;

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..CLIENTS, 0..REPLICAS).prop_map(|(client, replica)| Op::Put { client, replica }),
            2 => (0..CLIENTS, 0..REPLICAS).prop_map(|(client, replica)| Op::Get { client, replica }),
            2 => (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Op::Sync { from, to }),
        ]
    }

    struct Write {
        actor: ActorId,
        counter: u64,
        value: u32,
        ctx: VersionVector,
    }

    /// Runs a history through the API; returns the replicas' states and the writes made.
    fn run_history(ops: &[Op]) -> (Vec<Option<Set>>, Vec<Write>) {
        let mut replicas: Vec<Option<Set>> = vec![None; REPLICAS];
        let mut contexts = vec![VersionVector::new(); CLIENTS];
        let mut writes = Vec::new();
        for op in ops {
            match *op {
                Op::Put { client, replica } => {
                    let actor = ActorId::new(replica as u64 + 1, 0);
                    let ctx = contexts[client].clone();
                    let local = replicas[replica].as_ref();
                    let value = writes.len() as u32;
                    let next = Set::update(&ctx, value, local, actor).expect("bounded");
                    next.check().expect("invariants after update");
                    // Postconditions of update.
                    let expect_counter =
                        local.map_or(0, |l| l.join().get(actor)).max(ctx.get(actor)) + 1;
                    assert_eq!(next.join().get(actor), expect_counter);
                    assert!(next.join().descends(&ctx));
                    if let Some(l) = local {
                        assert!(l.less(&next));
                    }
                    writes.push(Write {
                        actor,
                        counter: expect_counter,
                        value,
                        ctx,
                    });
                    contexts[client] = next.join();
                    replicas[replica] = Some(next);
                }
                Op::Get { client, replica } => {
                    if let Some(s) = &replicas[replica] {
                        contexts[client] = s.join();
                    }
                }
                Op::Sync { from, to } => {
                    if let Some(src) = replicas[from].clone() {
                        let merged = match &replicas[to] {
                            Some(dst) => src.sync(dst),
                            None => src,
                        };
                        merged.check().expect("invariants after sync");
                        replicas[to] = Some(merged);
                    }
                }
            }
        }
        (replicas, writes)
    }

    #[test]
    fn counters_stay_in_range() {
        let at_max: DvvSet<u8> = DvvSet {
            entries: vec![Entry {
                actor: ActorId::new(1, 0),
                counter: COUNTER_MAX,
                values: vec![1],
            }],
            anonymous: Vec::new(),
        };
        assert!(at_max.check().is_ok());
        // The next write by that actor is a typed error, not a wrap or a panic.
        assert!(DvvSet::update(&at_max.join(), 2, Some(&at_max), ActorId::new(1, 0)).is_err());
        let past = DvvSet {
            entries: vec![Entry {
                actor: ActorId::new(1, 0),
                counter: COUNTER_MAX + 1,
                values: vec![1u8],
            }],
            anonymous: Vec::new(),
        };
        assert!(past.check().is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// sync is commutative, associative and idempotent on states reached through the API.
        #[test]
        fn sync_laws(ops in prop::collection::vec(op(), 1..60)) {
            let (replicas, _) = run_history(&ops);
            let states: Vec<Set> = replicas.into_iter().flatten().collect();
            for a in &states {
                prop_assert_eq!(canonical(&a.sync(a)), canonical(a));
                for b in &states {
                    prop_assert_eq!(canonical(&a.sync(b)), canonical(&b.sync(a)));
                    prop_assert_eq!(
                        a.sync(b).join(),
                        a.join().merge(&b.join())
                    );
                    for c in &states {
                        prop_assert_eq!(
                            canonical(&a.sync(b).sync(c)),
                            canonical(&a.sync(&b.sync(c)))
                        );
                    }
                }
            }
        }

        /// After every replica syncs with every other, all agree, no value appears twice, and
        /// the live values are exactly the writes no other write's context covered.
        #[test]
        fn convergence_and_no_lost_writes(ops in prop::collection::vec(op(), 1..80)) {
            let (replicas, writes) = run_history(&ops);
            let states: Vec<Set> = replicas.into_iter().flatten().collect();
            let Some(merged) = states.iter().skip(1).fold(states.first().cloned(), |acc, s| acc.map(|a| a.sync(s))) else {
                return Ok(());
            };
            for s in &states {
                prop_assert_eq!(canonical(&s.sync(&merged)), canonical(&merged));
                prop_assert_eq!(canonical(&merged.sync(s)), canonical(&merged));
            }
            let live: Vec<u32> = merged.values().copied().collect();
            let unique: BTreeSet<u32> = live.iter().copied().collect();
            prop_assert_eq!(live.len(), unique.len(), "a value appears twice");
            let expected: BTreeSet<u32> = writes
                .iter()
                .filter(|w| !writes.iter().any(|o| o.ctx.get(w.actor) >= w.counter))
                .map(|w| w.value)
                .collect();
            prop_assert_eq!(unique, expected);
            prop_assert_eq!(dec(&enc(&merged)), Ok(merged.clone()));
        }

        /// Two clients interleaving writes, each with the context its last write returned, never
        /// leave more than two siblings.
        #[test]
        fn interleaved_writers_stay_bounded(order in prop::collection::vec(0..2usize, 1..200)) {
            let actor = ActorId::new(1, 0);
            let mut state: Option<Set> = None;
            let mut contexts = [VersionVector::new(), VersionVector::new()];
            for (i, client) in order.into_iter().enumerate() {
                let next = Set::update(&contexts[client], i as u32, state.as_ref(), actor).expect("bounded");
                prop_assert!(next.size() <= 2, "{} siblings", next.size());
                contexts[client] = next.join();
                state = Some(next);
            }
        }
    }
}
