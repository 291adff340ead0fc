//! The memtable: an ordered, multi-version in-memory map with byte accounting.
//!
//! Entries are ordered by `(token, key)` and, for one key, newest sequence number first, so a
//! read at a snapshot finds the newest version at or below it with one range probe, and a flush
//! writes each key's newest version in SSTable order.
//!
//! INVARIANT: a memtable only grows; once frozen (moved behind an `Rc`) it is never changed.

use std::borrow::Borrow;
use std::cmp::{Ordering, Reverse};
use std::collections::BTreeMap;
use std::ops::Bound;

use crate::record::{Record, RecordRef, SeqNo, Token};

/// Bytes charged per entry for the map's own bookkeeping (node share, boxes, fields).
const ENTRY_OVERHEAD_BYTES: usize = 80;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct InternalKey {
    token: Token,
    key: Box<[u8]>,
    seq: Reverse<SeqNo>,
}

/// A view of an internal key, so that lookups can probe the map with borrowed bytes instead of
/// allocating an owned key per read.
trait KeyView {
    fn parts(&self) -> (Token, &[u8], Reverse<SeqNo>);
}

impl KeyView for InternalKey {
    fn parts(&self) -> (Token, &[u8], Reverse<SeqNo>) {
        (self.token, &self.key, self.seq)
    }
}

impl KeyView for (Token, &[u8], Reverse<SeqNo>) {
    fn parts(&self) -> (Token, &[u8], Reverse<SeqNo>) {
        (self.0, self.1, self.2)
    }
}

impl<'a> Borrow<dyn KeyView + 'a> for InternalKey {
    fn borrow(&self) -> &(dyn KeyView + 'a) {
        self
    }
}

// INVARIANT: this order is the derived order of `InternalKey` (token, key, Reverse(seq)).
impl Ord for dyn KeyView + '_ {
    fn cmp(&self, other: &Self) -> Ordering {
        self.parts().cmp(&other.parts())
    }
}

impl PartialOrd for dyn KeyView + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for dyn KeyView + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn KeyView + '_ {}

#[derive(Clone, Debug)]
struct Version {
    value: Option<Box<[u8]>>,
    write_ts_ms: u64,
    expiry_ms: Option<u64>,
    version: Box<[u8]>,
}

fn to_record(k: &InternalKey, v: &Version) -> Record {
    Record {
        key: k.key.to_vec(),
        value: v.value.as_ref().map(|b| b.to_vec()),
        seq: k.seq.0,
        write_ts_ms: v.write_ts_ms,
        expiry_ms: v.expiry_ms,
        version: v.version.to_vec(),
        blob: false,
    }
}

/// An ordered in-memory table of record versions.
#[derive(Default)]
pub struct Memtable {
    map: BTreeMap<InternalKey, Version>,
    bytes: usize,
    min_seq: Option<SeqNo>,
    max_seq: SeqNo,
}

impl std::fmt::Debug for Memtable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memtable")
            .field("versions", &self.map.len())
            .field("bytes", &self.bytes)
            .field("min_seq", &self.min_seq)
            .field("max_seq", &self.max_seq)
            .finish()
    }
}

impl Memtable {
    /// An empty memtable.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one version.
    pub fn insert(&mut self, token: Token, rec: &RecordRef<'_>) {
        assert!(!rec.blob, "memtables hold values inline");
        self.bytes += ENTRY_OVERHEAD_BYTES
            + rec.key.len()
            + rec.value.map_or(0, <[u8]>::len)
            + rec.version.len();
        self.min_seq = Some(self.min_seq.map_or(rec.seq, |m| m.min(rec.seq)));
        self.max_seq = self.max_seq.max(rec.seq);
        let prev = self.map.insert(
            InternalKey {
                token,
                key: rec.key.into(),
                seq: Reverse(rec.seq),
            },
            Version {
                value: rec.value.map(Into::into),
                write_ts_ms: rec.write_ts_ms,
                expiry_ms: rec.expiry_ms,
                version: rec.version.into(),
            },
        );
        assert!(prev.is_none(), "a sequence number was used twice");
    }

    /// The newest version of `key` with a sequence number at or below `snapshot` (tombstones
    /// included), or `None` if this table has none.
    #[must_use]
    pub fn get(&self, token: Token, key: &[u8], snapshot: SeqNo) -> Option<Record> {
        if self.map.is_empty() {
            return None;
        }
        let probe = (token, key, Reverse(snapshot));
        let probe: &dyn KeyView = &probe;
        let (k, v) = self
            .map
            .range::<dyn KeyView, _>((Bound::Included(probe), Bound::Unbounded))
            .next()?;
        if k.token != token || &*k.key != key {
            return None;
        }
        Some(to_record(k, v))
    }

    /// Accounted size in bytes.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Number of versions held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the table is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The highest sequence number held (zero when empty).
    #[must_use]
    pub fn max_seq(&self) -> SeqNo {
        self.max_seq
    }

    /// For every key with a token in `[start, end]`, its newest version at or below
    /// `snapshot`, in `(token, key)` order (tombstones included).
    #[must_use]
    pub fn range_at(&self, start: Token, end: Token, snapshot: SeqNo) -> Vec<Record> {
        let mut out: Vec<Record> = Vec::new();
        let probe = (start, &[][..], Reverse(SeqNo(u64::MAX)));
        let probe: &dyn KeyView = &probe;
        for (k, v) in self
            .map
            .range::<dyn KeyView, _>((Bound::Included(probe), Bound::Unbounded))
        {
            if k.token > end {
                break;
            }
            if k.seq.0 > snapshot {
                continue;
            }
            if out.last().is_some_and(|r| *r.key == *k.key) {
                continue; // an older version of a key already taken
            }
            out.push(to_record(k, v));
        }
        out
    }

    /// The newest version of every key, in `(token, key)` order: what a flush writes.
    pub fn newest_versions(&self) -> impl Iterator<Item = (Token, RecordRef<'_>)> + '_ {
        let mut last: Option<(Token, &[u8])> = None;
        self.map.iter().filter_map(move |(k, v)| {
            if last == Some((k.token, &*k.key)) {
                return None;
            }
            last = Some((k.token, &k.key));
            Some((
                k.token,
                RecordRef {
                    key: &k.key,
                    value: v.value.as_deref(),
                    seq: k.seq.0,
                    write_ts_ms: v.write_ts_ms,
                    expiry_ms: v.expiry_ms,
                    version: &v.version,
                    blob: false,
                },
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &'static [u8], value: Option<&'static [u8]>, seq: u64) -> RecordRef<'static> {
        RecordRef {
            key,
            value,
            seq: SeqNo(seq),
            write_ts_ms: seq,
            expiry_ms: None,
            version: &[],
            blob: false,
        }
    }

    #[test]
    fn snapshot_reads_and_newest_versions() {
        let mut m = Memtable::new();
        for (k, v, s) in [
            (b"a".as_slice(), Some(b"1".as_slice()), 1),
            (b"b", Some(b"2"), 2),
            (b"a", Some(b"3"), 3),
            (b"a", None, 4),
        ] {
            m.insert(Token::of(k), &rec(k, v, s));
        }
        let ta = Token::of(b"a");
        assert_eq!(m.get(ta, b"a", SeqNo(4)).map(|r| r.value), Some(None));
        assert_eq!(
            m.get(ta, b"a", SeqNo(3)).and_then(|r| r.value),
            Some(b"3".to_vec())
        );
        assert_eq!(
            m.get(ta, b"a", SeqNo(2)).and_then(|r| r.value),
            Some(b"1".to_vec())
        );
        assert!(m.get(ta, b"a", SeqNo(0)).is_none());
        assert!(m.get(Token::of(b"c"), b"c", SeqNo(9)).is_none());
        let newest: Vec<_> = m.newest_versions().map(|(_, r)| r.seq.0).collect();
        assert_eq!(newest.len(), 2);
        assert!(newest.contains(&4) && newest.contains(&2));
        assert_eq!(m.max_seq(), SeqNo(4));
        assert_eq!(m.len(), 4);
        assert!(m.bytes() >= 4 * ENTRY_OVERHEAD_BYTES);
    }
}
