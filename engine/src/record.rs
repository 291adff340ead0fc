//! The record model and its byte encoding, shared by the WAL and SSTables.
//!
//! A record is one version of one key: a value or a tombstone, the sequence number the shard
//! gave it, a write timestamp, an optional expiry and an opaque version blob (the causal context
//! that the versioning layer fills; the engine only stores it).
//!
//! ```text
//! offset  size  field
//!      0     1  kind          1 = put, 2 = tombstone
//!      1     1  flags         bit 0: expiry present, bit 1: version blob present,
//!                             bit 2: the value bytes are a 20-byte blob reference (tables only)
//!      2     2  key_len       u16 LE, 1..=256
//!      4     4  value_len     u32 LE, 0..=10 MiB (0 for a tombstone)
//!      8     8  seq           u64 LE
//!     16     8  write_ts_ms   u64 LE, milliseconds since the Unix epoch
//!     24     8  expiry_ms     u64 LE, only if flags bit 0
//!      .     4  version_len   u32 LE, only if flags bit 1, 1..=64 KiB
//!      .     .  key bytes, version bytes, value bytes
//! ```
//!
//! A record whose value was moved to the value log (`blob.rs`) carries, in SSTables only, the
//! encoded [`BlobRef`] in place of the value and flag bit 2; the shard resolves it before a
//! record leaves it. The WAL and memtables always hold values inline.
//!
//! INVARIANT: an encoded record is self-delimiting; decoding never reads past the lengths it
//! declares and reports any length that runs past the input as [`DecodeError`].

use std::cmp::Ordering;

use dynacore_runtime::IO_ALIGN;

use crate::error::LimitError;

pub use dynacore_types::{Token, KEY_BYTES_MAX, VALUE_BYTES_MAX, VERSION_BYTES_MAX};

const HEADER_BYTES: usize = 24;
const FLAG_EXPIRY: u8 = 1;
const FLAG_VERSION: u8 = 2;
const FLAG_BLOB: u8 = 4;
const KIND_PUT: u8 = 1;
const KIND_TOMBSTONE: u8 = 2;

/// The largest encoded record: header, optional fields and the largest key, version and value.
pub const RECORD_BYTES_MAX: usize =
    HEADER_BYTES + 8 + 4 + KEY_BYTES_MAX + VERSION_BYTES_MAX + VALUE_BYTES_MAX;

/// A shard-local sequence number: every write gets the next one, and a higher one is newer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeqNo(pub u64);

/// Identifies a shard (one core's slice of a node's vnodes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u32);

/// Where a blob file's first entry starts: its first block holds the file's header.
pub const BLOB_FIRST_ENTRY_OFFSET: u64 = IO_ALIGN;

/// Where a value lives in the value log: what an SSTable stores instead of a large value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlobRef {
    /// The blob file.
    pub file_id: u64,
    /// Offset of the entry (block-aligned).
    pub offset: u64,
    /// Length of the value.
    pub value_len: u32,
}

/// Encoded size of a [`BlobRef`].
pub const BLOB_REF_BYTES: usize = 20;

impl BlobRef {
    /// The 20-byte little-endian encoding: file id, offset, value length.
    #[must_use]
    pub fn encode(&self) -> [u8; BLOB_REF_BYTES] {
        let mut out = [0u8; BLOB_REF_BYTES];
        out[..8].copy_from_slice(&self.file_id.to_le_bytes());
        out[8..16].copy_from_slice(&self.offset.to_le_bytes());
        out[16..].copy_from_slice(&self.value_len.to_le_bytes());
        out
    }

    /// Decodes [`BlobRef::encode`]'s output; `None` for a wrong length or an unaligned or
    /// out-of-range reference.
    #[must_use]
    pub fn decode(bytes: &[u8]) -> Option<BlobRef> {
        if bytes.len() != BLOB_REF_BYTES {
            return None;
        }
        let r = BlobRef {
            file_id: u64::from_le_bytes(bytes[..8].try_into().ok()?),
            offset: u64::from_le_bytes(bytes[8..16].try_into().ok()?),
            value_len: u32::from_le_bytes(bytes[16..].try_into().ok()?),
        };
        let aligned = r.offset >= BLOB_FIRST_ENTRY_OFFSET && r.offset.is_multiple_of(IO_ALIGN);
        (aligned && r.value_len as usize <= VALUE_BYTES_MAX).then_some(r)
    }
}

/// One version of one key, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The key, 1..=256 bytes.
    pub key: Vec<u8>,
    /// The value, or `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// The shard-local sequence number of this write.
    pub seq: SeqNo,
    /// When the write happened, in milliseconds since the Unix epoch.
    pub write_ts_ms: u64,
    /// When the value expires, in milliseconds since the Unix epoch.
    pub expiry_ms: Option<u64>,
    /// The opaque causal context stored with the value (empty when unused).
    pub version: Vec<u8>,
    /// `value` holds an encoded [`BlobRef`], not the value (inside a shard only: it resolves
    /// references before records leave it).
    pub(crate) blob: bool,
}

impl Record {
    /// The value-log reference this record holds in place of its value, if any.
    #[must_use]
    pub(crate) fn blob_ref(&self) -> Option<BlobRef> {
        if !self.blob {
            return None;
        }
        let r = self.value.as_deref().and_then(BlobRef::decode);
        assert!(r.is_some(), "INVARIANT: decode checked the reference");
        r
    }

    /// Borrows the record for encoding.
    #[must_use]
    pub fn borrowed(&self) -> RecordRef<'_> {
        RecordRef {
            key: &self.key,
            value: self.value.as_deref(),
            seq: self.seq,
            write_ts_ms: self.write_ts_ms,
            expiry_ms: self.expiry_ms,
            version: &self.version,
            blob: self.blob,
        }
    }

    /// Whether the record is live at `now_ms`: not a tombstone and not expired.
    #[must_use]
    pub fn is_live_at(&self, now_ms: u64) -> bool {
        self.value.is_some() && self.expiry_ms.is_none_or(|e| e > now_ms)
    }
}

/// A write as a caller describes it. Build with [`Mutation::put`] or [`Mutation::delete`].
#[derive(Clone, Copy, Debug)]
pub struct Mutation<'a> {
    /// The key.
    pub key: &'a [u8],
    /// The value, or `None` to write a tombstone.
    pub value: Option<&'a [u8]>,
    /// The write timestamp in ms since the epoch; `None` takes the shard's clock.
    pub write_ts_ms: Option<u64>,
    /// Optional expiry in ms since the epoch.
    pub expiry_ms: Option<u64>,
    /// Opaque causal context stored with the value.
    pub version: &'a [u8],
}

impl<'a> Mutation<'a> {
    /// A plain put of `value` under `key`.
    #[must_use]
    pub fn put(key: &'a [u8], value: &'a [u8]) -> Self {
        Mutation {
            key,
            value: Some(value),
            write_ts_ms: None,
            expiry_ms: None,
            version: &[],
        }
    }

    /// A tombstone for `key`.
    #[must_use]
    pub fn delete(key: &'a [u8]) -> Self {
        Mutation {
            key,
            value: None,
            write_ts_ms: None,
            expiry_ms: None,
            version: &[],
        }
    }

    /// Checks the hard limits.
    ///
    /// # Errors
    /// The first limit the mutation breaks.
    pub fn validate(&self) -> Result<(), LimitError> {
        validate_key(self.key)?;
        if let Some(v) = self.value {
            if v.len() > VALUE_BYTES_MAX {
                return Err(LimitError::ValueTooLarge {
                    len: v.len(),
                    max: VALUE_BYTES_MAX,
                });
            }
        }
        if self.version.len() > VERSION_BYTES_MAX {
            return Err(LimitError::VersionTooLarge {
                len: self.version.len(),
                max: VERSION_BYTES_MAX,
            });
        }
        Ok(())
    }
}

/// Checks a key against the limits.
///
/// # Errors
/// [`LimitError::KeyEmpty`] or [`LimitError::KeyTooLong`].
pub fn validate_key(key: &[u8]) -> Result<(), LimitError> {
    if key.is_empty() {
        return Err(LimitError::KeyEmpty { max: KEY_BYTES_MAX });
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(LimitError::KeyTooLong {
            len: key.len(),
            max: KEY_BYTES_MAX,
        });
    }
    Ok(())
}

/// Orders keys as the shard stores them: by token, then by bytes.
#[must_use]
pub fn cmp_keys(a_token: Token, a: &[u8], b_token: Token, b: &[u8]) -> Ordering {
    a_token.cmp(&b_token).then_with(|| a.cmp(b))
}

/// A record borrowed from an encoded buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// The key.
    pub key: &'a [u8],
    /// The value, or `None` for a tombstone.
    pub value: Option<&'a [u8]>,
    /// Sequence number.
    pub seq: SeqNo,
    /// Write timestamp.
    pub write_ts_ms: u64,
    /// Expiry.
    pub expiry_ms: Option<u64>,
    /// Version blob.
    pub version: &'a [u8],
    /// `value` holds an encoded [`BlobRef`], not the value (SSTables only).
    pub(crate) blob: bool,
}

impl RecordRef<'_> {
    /// Copies the record out of its buffer.
    #[must_use]
    pub fn to_record(&self) -> Record {
        Record {
            key: self.key.to_vec(),
            value: self.value.map(<[u8]>::to_vec),
            seq: self.seq,
            write_ts_ms: self.write_ts_ms,
            expiry_ms: self.expiry_ms,
            version: self.version.to_vec(),
            blob: self.blob,
        }
    }

    /// The number of bytes [`RecordRef::encode_into`] appends.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        HEADER_BYTES
            + if self.expiry_ms.is_some() { 8 } else { 0 }
            + if self.version.is_empty() { 0 } else { 4 }
            + self.key.len()
            + self.version.len()
            + self.value.map_or(0, <[u8]>::len)
    }

    /// Appends the encoding to `out`.
    ///
    /// # Panics
    /// If the record breaks a limit: callers validate first, so that is a bug.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        assert!(
            !self.key.is_empty() && self.key.len() <= KEY_BYTES_MAX,
            "unvalidated key"
        );
        assert!(
            self.version.len() <= VERSION_BYTES_MAX,
            "unvalidated version"
        );
        let value = self.value.unwrap_or(&[]);
        assert!(value.len() <= VALUE_BYTES_MAX, "unvalidated value");
        assert!(
            !self.blob || (self.value.is_some() && value.len() == BLOB_REF_BYTES),
            "a blob record holds a reference"
        );
        out.reserve(self.encoded_len());
        let mut flags = 0;
        if self.expiry_ms.is_some() {
            flags |= FLAG_EXPIRY;
        }
        if !self.version.is_empty() {
            flags |= FLAG_VERSION;
        }
        if self.blob {
            flags |= FLAG_BLOB;
        }
        out.push(if self.value.is_some() {
            KIND_PUT
        } else {
            KIND_TOMBSTONE
        });
        out.push(flags);
        // Casts are lossless: the asserts above bound both lengths.
        out.extend_from_slice(&(self.key.len() as u16).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.seq.0.to_le_bytes());
        out.extend_from_slice(&self.write_ts_ms.to_le_bytes());
        if let Some(e) = self.expiry_ms {
            out.extend_from_slice(&e.to_le_bytes());
        }
        if !self.version.is_empty() {
            out.extend_from_slice(&(self.version.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(self.key);
        out.extend_from_slice(self.version);
        out.extend_from_slice(value);
    }
}

/// Why bytes do not decode as a record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad record encoding: {0}")]
pub struct DecodeError(pub &'static str);

fn read_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decodes one record from the front of `buf`; returns it and the bytes it used.
///
/// # Errors
/// [`DecodeError`] if the bytes are truncated or break a limit.
pub fn decode(buf: &[u8]) -> Result<(RecordRef<'_>, usize), DecodeError> {
    if buf.len() < HEADER_BYTES {
        return Err(DecodeError("truncated header"));
    }
    let kind = buf[0];
    let flags = buf[1];
    if kind != KIND_PUT && kind != KIND_TOMBSTONE {
        return Err(DecodeError("unknown kind"));
    }
    if flags & !(FLAG_EXPIRY | FLAG_VERSION | FLAG_BLOB) != 0 {
        return Err(DecodeError("unknown flags"));
    }
    let key_len = usize::from(read_u16(buf, 2));
    let value_len = read_u32(buf, 4) as usize;
    if key_len == 0 || key_len > KEY_BYTES_MAX {
        return Err(DecodeError("key length out of range"));
    }
    if value_len > VALUE_BYTES_MAX || (kind == KIND_TOMBSTONE && value_len != 0) {
        return Err(DecodeError("value length out of range"));
    }
    let seq = SeqNo(read_u64(buf, 8));
    let write_ts_ms = read_u64(buf, 16);
    let mut at = HEADER_BYTES;
    let expiry_ms = if flags & FLAG_EXPIRY != 0 {
        if buf.len() < at + 8 {
            return Err(DecodeError("truncated expiry"));
        }
        at += 8;
        Some(read_u64(buf, at - 8))
    } else {
        None
    };
    let version_len = if flags & FLAG_VERSION != 0 {
        if buf.len() < at + 4 {
            return Err(DecodeError("truncated version length"));
        }
        at += 4;
        let n = read_u32(buf, at - 4) as usize;
        if n == 0 || n > VERSION_BYTES_MAX {
            return Err(DecodeError("version length out of range"));
        }
        n
    } else {
        0
    };
    let end = at + key_len + version_len + value_len;
    if buf.len() < end {
        return Err(DecodeError("truncated body"));
    }
    let key = &buf[at..at + key_len];
    let version = &buf[at + key_len..at + key_len + version_len];
    let value = (kind == KIND_PUT).then(|| &buf[at + key_len + version_len..end]);
    let blob = flags & FLAG_BLOB != 0;
    if blob && value.and_then(BlobRef::decode).is_none() {
        return Err(DecodeError("bad blob reference"));
    }
    Ok((
        RecordRef {
            key,
            value,
            seq,
            write_ts_ms,
            expiry_ms,
            version,
            blob,
        },
        end,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            key: b"key".to_vec(),
            value: Some(b"value".to_vec()),
            seq: SeqNo(7),
            write_ts_ms: 1_700_000_000_000,
            expiry_ms: Some(1_800_000_000_000),
            version: vec![1, 2, 3],
            blob: false,
        }
    }

    #[test]
    fn round_trip_all_shapes() {
        let mut shapes = vec![sample()];
        let mut t = sample();
        t.value = None;
        t.expiry_ms = None;
        t.version.clear();
        shapes.push(t);
        let mut e = sample();
        e.value = Some(Vec::new());
        shapes.push(e);
        for r in shapes {
            let mut buf = Vec::new();
            r.borrowed().encode_into(&mut buf);
            assert_eq!(buf.len(), r.borrowed().encoded_len());
            let (back, used) = decode(&buf).expect("decodes");
            assert_eq!(used, buf.len());
            assert_eq!(back.to_record(), r);
        }
    }

    #[test]
    fn blob_references_round_trip_and_bad_ones_are_refused() {
        let r = BlobRef {
            file_id: 9,
            offset: 8192,
            value_len: 100_000,
        };
        let mut rec = sample();
        rec.value = Some(r.encode().to_vec());
        rec.blob = true;
        let mut buf = Vec::new();
        rec.borrowed().encode_into(&mut buf);
        let (back, _) = decode(&buf).expect("decodes");
        assert_eq!(back.to_record(), rec);
        assert_eq!(back.to_record().blob_ref(), Some(r));
        assert_eq!(sample().blob_ref(), None);
        // An unaligned reference in a blob record is damage, not a value.
        let value_at = buf.len() - BLOB_REF_BYTES;
        buf[value_at + 8] = 1;
        assert_eq!(decode(&buf), Err(DecodeError("bad blob reference")));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let mut buf = Vec::new();
        sample().borrowed().encode_into(&mut buf);
        for cut in 0..buf.len() {
            assert!(
                decode(&buf[..cut]).is_err(),
                "prefix of {cut} bytes decoded"
            );
        }
    }

    #[test]
    fn bad_header_fields_are_errors() {
        let mut buf = Vec::new();
        sample().borrowed().encode_into(&mut buf);
        let mut bad_kind = buf.clone();
        bad_kind[0] = 9;
        assert_eq!(decode(&bad_kind), Err(DecodeError("unknown kind")));
        let mut zero_key = buf.clone();
        zero_key[2] = 0;
        zero_key[3] = 0;
        assert!(decode(&zero_key).is_err());
        let mut huge_value = buf;
        huge_value[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge_value).is_err());
    }

    #[test]
    fn limits() {
        assert!(matches!(
            Mutation::put(b"", b"v").validate(),
            Err(LimitError::KeyEmpty { .. })
        ));
        let long = vec![b'k'; KEY_BYTES_MAX + 1];
        assert!(matches!(
            Mutation::put(&long, b"v").validate(),
            Err(LimitError::KeyTooLong { len: 257, .. })
        ));
        let max_key = vec![b'k'; KEY_BYTES_MAX];
        assert!(Mutation::put(&max_key, b"v").validate().is_ok());
        let big = vec![0; VALUE_BYTES_MAX + 1];
        assert!(matches!(
            Mutation::put(b"k", &big).validate(),
            Err(LimitError::ValueTooLarge { .. })
        ));
        assert!(Mutation::put(b"k", &big[..VALUE_BYTES_MAX])
            .validate()
            .is_ok());
        let mut m = Mutation::put(b"k", b"v");
        let version = vec![0; VERSION_BYTES_MAX + 1];
        m.version = &version;
        assert!(matches!(
            m.validate(),
            Err(LimitError::VersionTooLarge { .. })
        ));
    }

    #[test]
    fn token_order_then_bytes() {
        let (a, b) = (b"a".as_slice(), b"b".as_slice());
        assert_eq!(cmp_keys(Token(1), b, Token(2), a), Ordering::Less);
        assert_eq!(cmp_keys(Token(2), a, Token(2), b), Ordering::Less);
    }
}
