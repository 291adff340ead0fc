//! Data blocks: sorted entries with an offset array for binary search and a crc32c trailer.
//!
//! ```text
//! entry i:  u64 LE token | record encoding (record.rs)
//! trailer:  u32 LE offset of entry 0 .. entry n-1 | u32 LE n | u32 LE crc32c of all bytes before it
//! ```
//! INVARIANT: entries are strictly increasing by `(token, key)`; a parsed [`Block`] has had its
//! checksum and its offset array checked, so lookups index it without further bounds failures.

use std::cmp::Ordering;

use crate::record::{self, cmp_keys, RecordRef, Token};

/// Bytes of entries after which a block is closed.
pub const BLOCK_BYTES_TARGET: usize = 4096;

/// Builds one data block.
#[derive(Debug, Default)]
pub struct BlockBuilder {
    buf: Vec<u8>,
    offsets: Vec<u32>,
}

impl BlockBuilder {
    /// Adds an entry; entries must come in increasing `(token, key)` order.
    pub fn add(&mut self, token: Token, rec: &RecordRef<'_>) {
        self.offsets
            .push(u32::try_from(self.buf.len()).expect("INVARIANT: blocks are under 4 GiB"));
        self.buf.extend_from_slice(&token.0.to_le_bytes());
        rec.encode_into(&mut self.buf);
    }

    /// Bytes of entries so far.
    #[must_use]
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether no entry was added.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Finishes the block and returns its bytes, leaving the builder empty.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        let count = u32::try_from(self.offsets.len()).expect("INVARIANT: blocks are bounded");
        for o in self.offsets.drain(..) {
            out.extend_from_slice(&o.to_le_bytes());
        }
        out.extend_from_slice(&count.to_le_bytes());
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }
}

/// A checked, parsed data block.
#[derive(Debug)]
pub struct Block {
    data: Vec<u8>,
    /// Where the offset array starts.
    offsets_at: usize,
    count: usize,
}

/// Why a block's bytes were rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockError {
    /// The stored checksum does not match.
    Checksum {
        /// Stored.
        expected: u32,
        /// Computed.
        actual: u32,
    },
    /// The shape is impossible.
    Malformed(&'static str),
}

impl Block {
    /// Checks and parses block bytes.
    ///
    /// # Errors
    /// [`BlockError`] if the checksum or the structure is bad.
    pub fn parse(data: Vec<u8>) -> Result<Self, BlockError> {
        if data.len() < 8 {
            return Err(BlockError::Malformed("block shorter than its trailer"));
        }
        let crc_at = data.len() - 4;
        let expected = u32::from_le_bytes(data[crc_at..].try_into().expect("4 bytes"));
        let actual = crc32c::crc32c(&data[..crc_at]);
        if expected != actual {
            return Err(BlockError::Checksum { expected, actual });
        }
        let count =
            u32::from_le_bytes(data[crc_at - 4..crc_at].try_into().expect("4 bytes")) as usize;
        let offsets_bytes = count.checked_mul(4).ok_or(BlockError::Malformed("count"))?;
        let offsets_at = (crc_at - 4)
            .checked_sub(offsets_bytes)
            .ok_or(BlockError::Malformed("offset array larger than block"))?;
        let block = Block {
            data,
            offsets_at,
            count,
        };
        // Check every entry decodes and lies inside the entry area, in increasing order.
        let mut prev_end = 0;
        let mut prev: Option<(Token, &[u8])> = None;
        for i in 0..count {
            let start = block.offset(i);
            if start != prev_end {
                return Err(BlockError::Malformed("entries are not contiguous"));
            }
            let (token, rec, end) = block
                .decode_at(start)
                .ok_or(BlockError::Malformed("entry does not decode"))?;
            if let Some((pt, pk)) = prev {
                if cmp_keys(pt, pk, token, rec.key) != Ordering::Less {
                    return Err(BlockError::Malformed("entries out of order"));
                }
            }
            prev = Some((token, rec.key));
            prev_end = end;
        }
        if prev_end != offsets_at {
            return Err(BlockError::Malformed("bytes between entries and offsets"));
        }
        Ok(block)
    }

    fn offset(&self, i: usize) -> usize {
        let at = self.offsets_at + i * 4;
        u32::from_le_bytes(self.data[at..at + 4].try_into().expect("4 bytes")) as usize
    }

    fn decode_at(&self, start: usize) -> Option<(Token, RecordRef<'_>, usize)> {
        let area = self.data.get(..self.offsets_at)?;
        let token = Token(u64::from_le_bytes(
            area.get(start..start + 8)?.try_into().ok()?,
        ));
        let (rec, used) = record::decode(area.get(start + 8..)?).ok()?;
        Some((token, rec, start + 8 + used))
    }

    /// Entry `i` (`i < len()`).
    #[must_use]
    pub fn entry(&self, i: usize) -> (Token, RecordRef<'_>) {
        let (t, r, _) = self
            .decode_at(self.offset(i))
            .expect("INVARIANT: parse() checked every entry");
        (t, r)
    }

    /// The index of the first entry at or after `token` (with any key).
    #[must_use]
    pub fn seek(&self, token: Token) -> usize {
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.entry(mid).0 < token {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// The entry for `key`, if the block holds it.
    #[must_use]
    pub fn get(&self, token: Token, key: &[u8]) -> Option<RecordRef<'_>> {
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (t, r) = self.entry(mid);
            match cmp_keys(t, r.key, token, key) {
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
                Ordering::Equal => return Some(r),
            }
        }
        None
    }

    /// Number of entries.
    #[must_use]
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the block holds no entry.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// All entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (Token, RecordRef<'_>)> + '_ {
        (0..self.count).map(|i| self.entry(i))
    }

    /// Bytes held (for cache accounting).
    #[must_use]
    pub fn size_bytes(&self) -> usize {
        self.data.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::SeqNo;

    fn build(keys: &[&[u8]]) -> Vec<u8> {
        let mut sorted: Vec<(Token, &[u8])> = keys.iter().map(|k| (Token::of(k), *k)).collect();
        sorted.sort_by(|a, b| cmp_keys(a.0, a.1, b.0, b.1));
        let mut b = BlockBuilder::default();
        for (i, (t, k)) in sorted.iter().enumerate() {
            let rec = RecordRef {
                key: k,
                value: Some(k),
                seq: SeqNo(i as u64 + 1),
                write_ts_ms: 0,
                expiry_ms: None,
                version: &[],
                blob: false,
            };
            b.add(*t, &rec);
        }
        b.finish()
    }

    #[test]
    fn lookups() {
        let keys: Vec<Vec<u8>> = (0..50u32).map(|i| format!("key{i}").into_bytes()).collect();
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let block = Block::parse(build(&refs)).expect("valid");
        assert_eq!(block.len(), 50);
        for k in &refs {
            assert_eq!(block.get(Token::of(k), k).and_then(|r| r.value), Some(*k));
        }
        assert!(block.get(Token::of(b"nope"), b"nope").is_none());
        assert_eq!(block.iter().count(), 50);
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let bytes = build(&[b"a", b"b", b"c"]);
        for i in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(Block::parse(bad).is_err(), "bit {i} flip not detected");
        }
        assert!(Block::parse(bytes[..bytes.len() - 1].to_vec()).is_err());
        assert!(Block::parse(Vec::new()).is_err());
    }
}
