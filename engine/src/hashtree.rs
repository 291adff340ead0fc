//! Anti-entropy hash trees, TicTac style: a shard's keys summarised so that two replicas can
//! find the keys they disagree on by comparing a few hashes rather than every key.
//!
//! A tree covers the whole token space in `2^leaf_bits` *leaves*, each a token-ordered segment
//! (leaf `i` holds the tokens whose top `leaf_bits` bits are `i`), grouped 256 to a *branch*.
//! Because leaves follow token order, any token range — a vnode's — is a contiguous run of
//! leaves, plus at most two leaves it shares with its neighbours, whose part in the range is
//! hashed by scanning it (a leaf holds about `keys / 2^leaf_bits` keys).
//!
//! A leaf is the XOR of its keys' *contributions*, `h(key, causal state)` (an absent key
//! contributes nothing), with the hash seeded apart from the ring's. So a change of a key's state
//! from `old` to `new` is `leaf ^= h(old) ^ h(new)`, with no read of any other key: the shard
//! applies it at the one place every change passes (a write entering the memtable, a purge
//! leaving the tables), and the tree is always that of the shard's current state.
//!
//! The causal state of a versioned object is its version blob in canonical form: the dotted
//! version vector set with each sibling's metadata (tombstone, timestamp, expiry, length), with
//! retired actor epochs left out (compaction retires them at different times on different
//! replicas; they do not change what a copy holds). Values are not hashed: a dot names one
//! write.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::error::{Error, Result};
use crate::record::{SeqNo, ShardId, Token};
use crate::version::{DvvSet, HlcTimestamp};

/// The contribution hash's seed (the ring hashes with seed 0: a shared seed would correlate
/// which leaf a key falls in with its contribution).
pub const TREE_SEED: u64 = 0x6463_2d61_652d_7472;

/// Leaves per branch.
pub const BRANCH_LEAVES: usize = 256;

/// The default number of leaves: `2^20` (8 MiB of leaves per shard).
pub const LEAF_BITS_DEFAULT: u32 = 20;

/// The largest tree: `2^22` leaves, 32 MiB, the documented per-shard budget.
pub const LEAF_BITS_MAX: u32 = 22;

/// The smallest tree: one branch.
pub const LEAF_BITS_MIN: u32 = 8;

/// How a shard keeps its tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeOptions {
    /// `2^leaf_bits` leaves (`LEAF_BITS_MIN..=LEAF_BITS_MAX`).
    pub leaf_bits: u32,
    /// Bytes per second a rebuild scan may read.
    pub rebuild_bytes_per_s: u64,
    /// A scheduled rebuild (compared with the live tree) every this many milliseconds, with
    /// up to a quarter of it in random jitter; `None`: only when the saved tree is missing.
    pub rebuild_every_ms: Option<u64>,
}

impl Default for TreeOptions {
    fn default() -> Self {
        TreeOptions {
            leaf_bits: LEAF_BITS_DEFAULT,
            rebuild_bytes_per_s: 64 << 20,
            rebuild_every_ms: Some(30 * 24 * 3600 * 1000),
        }
    }
}

/// A tree of leaf hashes over the token space.
#[derive(Clone, PartialEq, Eq)]
pub struct HashTree {
    leaf_bits: u32,
    leaves: Vec<u64>,
    branches: Vec<u64>,
}

impl std::fmt::Debug for HashTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashTree")
            .field("leaf_bits", &self.leaf_bits)
            .field("root", &self.root())
            .finish_non_exhaustive()
    }
}

impl HashTree {
    /// An empty tree (every key absent) of `2^leaf_bits` leaves.
    ///
    /// # Panics
    /// If `leaf_bits` is outside `LEAF_BITS_MIN..=LEAF_BITS_MAX`.
    #[must_use]
    pub fn new(leaf_bits: u32) -> HashTree {
        assert!(
            (LEAF_BITS_MIN..=LEAF_BITS_MAX).contains(&leaf_bits),
            "a tree has 2^{LEAF_BITS_MIN}..=2^{LEAF_BITS_MAX} leaves, not 2^{leaf_bits}"
        );
        let n = 1usize << leaf_bits;
        HashTree {
            leaf_bits,
            leaves: vec![0; n],
            branches: vec![0; n / BRANCH_LEAVES],
        }
    }

    /// `log2` of the number of leaves.
    #[must_use]
    pub fn leaf_bits(&self) -> u32 {
        self.leaf_bits
    }

    /// The number of leaves.
    #[must_use]
    pub fn leaf_count(&self) -> usize {
        self.leaves.len()
    }

    /// The leaf holding `token`.
    #[must_use]
    pub fn leaf_of(&self, token: Token) -> usize {
        // leaf_bits <= 22: the shift leaves at most 22 bits.
        (token.0 >> (64 - self.leaf_bits)) as usize
    }

    /// The first token of leaf `i`.
    #[must_use]
    pub fn leaf_start(&self, i: usize) -> Token {
        Token((i as u64) << (64 - self.leaf_bits))
    }

    /// The last token of leaf `i`.
    #[must_use]
    pub fn leaf_end(&self, i: usize) -> Token {
        Token(self.leaf_start(i).0 | (u64::MAX >> self.leaf_bits))
    }

    /// Applies a change of contribution `delta` (`h(old) ^ h(new)`) at `token`.
    pub fn apply(&mut self, token: Token, delta: u64) {
        let i = self.leaf_of(token);
        self.leaves[i] ^= delta;
        self.branches[i / BRANCH_LEAVES] ^= delta;
    }

    /// Leaf `i`'s hash.
    #[must_use]
    pub fn leaf(&self, i: usize) -> u64 {
        self.leaves[i]
    }

    /// Branch `b`'s hash (the XOR of its 256 leaves).
    #[must_use]
    pub fn branch(&self, b: usize) -> u64 {
        self.branches[b]
    }

    /// The XOR of leaves `first..=last`, through whole branches where it can.
    #[must_use]
    pub fn leaves_xor(&self, first: usize, last: usize) -> u64 {
        let mut h = 0;
        let mut i = first;
        while i <= last {
            if i.is_multiple_of(BRANCH_LEAVES) && i + BRANCH_LEAVES - 1 <= last {
                h ^= self.branches[i / BRANCH_LEAVES];
                i += BRANCH_LEAVES;
            } else {
                h ^= self.leaves[i];
                i += 1;
            }
        }
        h
    }

    /// The whole tree's hash.
    #[must_use]
    pub fn root(&self) -> u64 {
        self.branches.iter().fold(0, |a, b| a ^ b)
    }

    /// Bytes the tree holds.
    #[must_use]
    pub fn memory_bytes(&self) -> usize {
        (self.leaves.len() + self.branches.len()) * 8
    }

    /// How many leaves differ from `other`'s (a tree of another size differs everywhere).
    #[must_use]
    pub fn differing_leaves(&self, other: &HashTree) -> usize {
        if self.leaf_bits != other.leaf_bits {
            return self.leaves.len();
        }
        self.leaves
            .iter()
            .zip(&other.leaves)
            .filter(|(a, b)| a != b)
            .count()
    }

    /// The tree as saved on a clean close: a header naming the shard state it describes, then
    /// the leaves, padded to a multiple of 4 KiB. The layout is in `docs/formats.md`.
    #[must_use]
    pub fn encode(&self, saved: &SavedTree) -> Vec<u8> {
        let mut out = Vec::with_capacity(TREE_HEADER_BYTES + self.leaves.len() * 8 + 4096);
        out.extend_from_slice(TREE_MAGIC);
        out.extend_from_slice(&TREE_FORMAT.to_le_bytes());
        out.extend_from_slice(&self.leaf_bits.to_le_bytes());
        out.extend_from_slice(&TREE_SEED.to_le_bytes());
        out.extend_from_slice(&u64::from(saved.shard_id.0).to_le_bytes());
        out.extend_from_slice(&saved.generation.to_le_bytes());
        out.extend_from_slice(&saved.last_seq.0.to_le_bytes());
        out.extend_from_slice(&saved.last_rebuild_ms.to_le_bytes());
        debug_assert_eq!(out.len(), TREE_HEADER_BYTES - 4);
        for l in &self.leaves {
            out.extend_from_slice(&l.to_le_bytes());
        }
        let crc = crc32c::crc32c(&out[TREE_HEADER_BYTES - 4..]);
        let header_crc = crc32c::crc32c_append(crc, &out[..TREE_HEADER_BYTES - 4]);
        out.splice(
            TREE_HEADER_BYTES - 4..TREE_HEADER_BYTES - 4,
            header_crc.to_le_bytes(),
        );
        out.resize(out.len().next_multiple_of(4096), 0);
        out
    }

    /// A saved tree, checked: `None` with the reason if it is damaged or of another format.
    ///
    /// # Errors
    /// A reason to rebuild instead (damage, another format or seed, a length that does not
    /// match).
    pub fn decode(buf: &[u8]) -> std::result::Result<(HashTree, SavedTree), String> {
        let word = |at: usize| -> u64 {
            u64::from_le_bytes(buf[at..at + 8].try_into().expect("INVARIANT: 8 bytes"))
        };
        if buf.len() < TREE_HEADER_BYTES || &buf[..8] != TREE_MAGIC {
            return Err("not a hash tree file".into());
        }
        let format = u32::from_le_bytes(buf[8..12].try_into().expect("INVARIANT: 4 bytes"));
        let leaf_bits = u32::from_le_bytes(buf[12..16].try_into().expect("INVARIANT: 4 bytes"));
        if format != TREE_FORMAT {
            return Err(format!("format {format}, not {TREE_FORMAT}"));
        }
        if !(LEAF_BITS_MIN..=LEAF_BITS_MAX).contains(&leaf_bits) {
            return Err(format!("2^{leaf_bits} leaves"));
        }
        if word(16) != TREE_SEED {
            return Err("another seed".into());
        }
        let n = 1usize << leaf_bits;
        let body_end = TREE_HEADER_BYTES + n * 8;
        if buf.len() < body_end {
            return Err(format!("{} bytes, {body_end} expected", buf.len()));
        }
        let stored = u32::from_le_bytes(
            buf[TREE_HEADER_BYTES - 4..TREE_HEADER_BYTES]
                .try_into()
                .expect("INVARIANT: 4 bytes"),
        );
        let crc = crc32c::crc32c(&buf[TREE_HEADER_BYTES..body_end]);
        if crc32c::crc32c_append(crc, &buf[..TREE_HEADER_BYTES - 4]) != stored {
            return Err("checksum mismatch".into());
        }
        let saved = SavedTree {
            shard_id: ShardId(u32::try_from(word(24)).map_err(|_| "shard id out of range")?),
            generation: word(32),
            last_seq: SeqNo(word(40)),
            last_rebuild_ms: word(48),
        };
        let mut tree = HashTree::new(leaf_bits);
        for (i, chunk) in buf[TREE_HEADER_BYTES..body_end].chunks_exact(8).enumerate() {
            let h = u64::from_le_bytes(chunk.try_into().expect("INVARIANT: 8 bytes"));
            tree.leaves[i] = h;
            tree.branches[i / BRANCH_LEAVES] ^= h;
        }
        Ok((tree, saved))
    }
}

const TREE_MAGIC: &[u8; 8] = b"DCHTREE1";
const TREE_FORMAT: u32 = 1;
/// magic 8, format 4, leaf bits 4, seed 8, shard 8, generation 8, last seq 8, last rebuild 8,
/// crc 4.
const TREE_HEADER_BYTES: usize = 60;

/// The file a cleanly closed shard saves its tree in.
pub const TREE_FILE_NAME: &str = "HASHTREE";

/// What a saved tree describes: the shard state at its clean close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SavedTree {
    /// The shard.
    pub shard_id: ShardId,
    /// The manifest generation the close stored.
    pub generation: u64,
    /// The last sequence number written.
    pub last_seq: SeqNo,
    /// When the tree was last rebuilt from a scan (ms since the epoch).
    pub last_rebuild_ms: u64,
}

/// One key's state as anti-entropy compares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyState {
    /// The key's token.
    pub token: Token,
    /// The key.
    pub key: Vec<u8>,
    /// The canonical version blob (empty for a record written without a version).
    pub version: Vec<u8>,
    /// The key's contribution to its leaf.
    pub hash: u64,
    /// When the state became a deletion that purge rules may drop: every sibling a tombstone
    /// (the newest one's time), or every sibling expiring (the latest expiry); `None` while a
    /// value may still be live.
    pub deleted_at_ms: Option<u64>,
}

/// The state of a stored record: its key, whether it holds a live value, its write time,
/// expiry and version blob.
#[must_use]
pub fn key_state(
    key: &[u8],
    tombstone: bool,
    write_ts_ms: u64,
    expiry_ms: Option<u64>,
    version: &[u8],
) -> KeyState {
    let token = Token::of(key);
    if version.is_empty() {
        let mut buf = Vec::with_capacity(key.len() + 30);
        put_key(&mut buf, key);
        buf.push(0);
        buf.push(u8::from(tombstone));
        buf.extend_from_slice(&write_ts_ms.to_le_bytes());
        buf.extend_from_slice(&expiry_ms.map_or(u64::MAX, |e| e).to_le_bytes());
        return KeyState {
            token,
            key: key.to_vec(),
            version: Vec::new(),
            hash: xxh3_64_with_seed(&buf, TREE_SEED),
            deleted_at_ms: if tombstone {
                Some(write_ts_ms)
            } else {
                expiry_ms
            },
        };
    }
    match canonical_version(version) {
        Ok((canonical, deleted_at_ms)) => {
            let mut buf = Vec::with_capacity(key.len() + canonical.len() + 5);
            put_key(&mut buf, key);
            buf.push(1);
            buf.extend_from_slice(&canonical);
            KeyState {
                token,
                key: key.to_vec(),
                hash: xxh3_64_with_seed(&buf, TREE_SEED),
                version: canonical,
                deleted_at_ms,
            }
        }
        // Not an object's blob: hashed as it is.
        Err(_) => {
            let mut buf = Vec::with_capacity(key.len() + version.len() + 15);
            put_key(&mut buf, key);
            buf.push(2);
            buf.push(u8::from(tombstone));
            buf.extend_from_slice(&expiry_ms.map_or(u64::MAX, |e| e).to_le_bytes());
            buf.extend_from_slice(version);
            KeyState {
                token,
                key: key.to_vec(),
                version: version.to_vec(),
                hash: xxh3_64_with_seed(&buf, TREE_SEED),
                deleted_at_ms: if tombstone {
                    Some(write_ts_ms)
                } else {
                    expiry_ms
                },
            }
        }
    }
}

/// A stored record's state.
#[must_use]
pub fn record_state(r: &crate::record::Record) -> KeyState {
    key_state(
        &r.key,
        r.value.is_none(),
        r.write_ts_ms,
        r.expiry_ms,
        &r.version,
    )
}

/// The state of a key as a peer described it: its canonical version blob.
///
/// # Errors
/// [`Error::Version`] for a blob that is not an object's.
pub fn key_state_of_version(key: &[u8], version: &[u8]) -> Result<KeyState> {
    canonical_version(version).map_err(Error::Version)?;
    // Tombstone, time and expiry are in the blob's sibling metadata.
    Ok(key_state(key, false, 0, None, version))
}

fn put_key(buf: &mut Vec<u8>, key: &[u8]) {
    // Keys are at most a few KiB: the length fits.
    buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
    buf.extend_from_slice(key);
}

/// An object's version blob re-encoded canonically without retired epochs, and when it became
/// a deletion (see [`KeyState::deleted_at_ms`]).
fn canonical_version(
    version: &[u8],
) -> std::result::Result<(Vec<u8>, Option<u64>), crate::version::DvvError> {
    let set: DvvSet<Vec<u8>> = DvvSet::decode(version, |b| Ok(b.to_vec()))?;
    let set = set.retire_epochs().unwrap_or(set);
    let mut out = Vec::with_capacity(version.len());
    set.encode_into(&mut out, |meta, out| out.extend_from_slice(meta));
    // Sibling metadata: flags (1 tombstone, 2 expiry), the HLC, the expiry if flagged.
    let (mut all_tombstones, mut all_expire) = (true, true);
    let (mut newest_ms, mut latest_expiry) = (0u64, 0u64);
    let mut any = false;
    for meta in set.values() {
        any = true;
        let flags = meta.first().copied().unwrap_or(0);
        let word = |i: usize| {
            meta.get(i..i + 8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes)
        };
        all_tombstones &= flags & 1 != 0;
        newest_ms = newest_ms.max(HlcTimestamp(word(1)).physical_ms());
        if flags & 2 != 0 {
            latest_expiry = latest_expiry.max(word(9));
        } else {
            all_expire = false;
        }
    }
    let deleted_at = if !any {
        None
    } else if all_tombstones {
        Some(newest_ms)
    } else if all_expire {
        Some(latest_expiry)
    } else {
        None
    };
    Ok((out, deleted_at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_follow_token_order_and_cover_the_space() {
        let t = HashTree::new(10);
        assert_eq!(t.leaf_of(Token(0)), 0);
        assert_eq!(t.leaf_of(Token(u64::MAX)), 1023);
        assert_eq!(t.leaf_start(1).0, 1 << 54);
        assert_eq!(t.leaf_end(0).0, (1 << 54) - 1);
        assert_eq!(t.leaf_end(1023).0, u64::MAX);
        for i in [0, 5, 1023] {
            assert_eq!(t.leaf_of(t.leaf_start(i)), i);
            assert_eq!(t.leaf_of(t.leaf_end(i)), i);
        }
    }

    #[test]
    fn a_change_and_its_undo_cancel_and_branches_follow_leaves() {
        let mut t = HashTree::new(10);
        t.apply(Token(1 << 60), 0xabc);
        t.apply(Token(5), 0x123);
        assert_ne!(t.root(), 0);
        assert_eq!(t.leaves_xor(0, 1023), t.root());
        assert_eq!(t.leaves_xor(0, 255), t.branch(0));
        assert_eq!(t.leaves_xor(1, 1023), 0xabc);
        t.apply(Token(1 << 60), 0xabc);
        t.apply(Token(5), 0x123);
        assert_eq!(t, HashTree::new(10));
    }

    #[test]
    fn a_saved_tree_reads_back_and_damage_is_refused() {
        let mut t = HashTree::new(12);
        for i in 0..1000u64 {
            t.apply(Token(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)), i * 7 + 1);
        }
        let saved = SavedTree {
            shard_id: ShardId(3),
            generation: 9,
            last_seq: SeqNo(77),
            last_rebuild_ms: 123,
        };
        let bytes = t.encode(&saved);
        assert!(bytes.len().is_multiple_of(4096));
        let (back, s) = HashTree::decode(&bytes).expect("decodes");
        assert_eq!(back, t);
        assert_eq!(s, saved);
        for at in [0, 20, 40, 100, TREE_HEADER_BYTES + 8 * 100] {
            let mut bad = bytes.clone();
            bad[at] ^= 1;
            assert!(HashTree::decode(&bad).is_err(), "flip at {at}");
        }
        assert!(HashTree::decode(&bytes[..100]).is_err());
    }

    #[test]
    fn the_contribution_ignores_retired_epochs_and_sees_every_sibling_field() {
        use crate::object::{self, Object, Sibling};
        use crate::version::{ActorId, VersionVector};
        let sib = |v: Option<&[u8]>, ms: u64, exp: Option<u64>| Sibling {
            value: v.map(<[u8]>::to_vec),
            hlc: HlcTimestamp::from_parts(ms, 0),
            expiry_ms: exp,
        };
        let a0 = ActorId::new(1, 0);
        let a1 = ActorId::new(1, 5);
        let first = Object::mint(
            &VersionVector::default(),
            sib(Some(b"v"), 10, None),
            None,
            a0,
            0,
        )
        .expect("mint");
        // Node 1 moves to epoch 5 and overwrites: the epoch 0 entry keeps only its counter.
        let second = Object::mint(
            &first.join(),
            sib(Some(b"w"), 20, None),
            Some(&first),
            a1,
            0,
        )
        .expect("mint");
        let retired = second.retire_epochs().expect("epoch 0 retires");
        let state = |o: &Object| {
            let (version, _) = object::to_parts(o).expect("encodes");
            key_state(b"k", false, 0, None, &version)
        };
        assert_eq!(state(&second).hash, state(&retired).hash);
        assert_ne!(state(&first).hash, state(&second).hash);
        assert_eq!(state(&second).deleted_at_ms, None);
        // A tombstone is a deletion at its time; expiring siblings at their latest expiry.
        let dead =
            Object::mint(&second.join(), sib(None, 30, None), Some(&second), a1, 0).expect("mint");
        assert_eq!(state(&dead).deleted_at_ms, Some(30));
        let expiring = Object::mint(
            &second.join(),
            sib(Some(b"x"), 40, Some(99)),
            Some(&second),
            a1,
            0,
        )
        .expect("mint");
        assert_eq!(state(&expiring).deleted_at_ms, Some(99));
        assert_ne!(state(&expiring).hash, state(&dead).hash);
        // Another key with the same state contributes differently.
        let (version, _) = object::to_parts(&dead).expect("encodes");
        assert_ne!(
            key_state(b"k", false, 0, None, &version).hash,
            key_state(b"j", false, 0, None, &version).hash
        );
        assert_eq!(
            key_state_of_version(b"k", &version)
                .expect("an object")
                .hash,
            state(&dead).hash
        );
    }
}
