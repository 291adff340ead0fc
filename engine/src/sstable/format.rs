//! The bytes of a table besides its data blocks: the footer, the index, the blob-reference
//! section, and file names (the layout is drawn in the module above).

use std::path::{Path, PathBuf};

use bytemuck::{Pod, Zeroable};

/// "DYNSST01" as little-endian bytes.
pub const TABLE_MAGIC: u64 = u64::from_le_bytes(*b"DYNSST01");
/// The table format version this code writes for a table with blob references. A table without
/// any is written as version 1 (no blob-reference section, those footer fields zero), which a
/// binary from before the value log can still read; both are read.
pub const TABLE_FORMAT_VERSION: u32 = 2;

/// Identifies a table within a shard. Never reused within a data directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableId(pub u64);

/// The fixed-layout footer at the end of every table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct Footer {
    /// [`TABLE_MAGIC`].
    pub magic: u64,
    /// [`TABLE_FORMAT_VERSION`].
    pub format_version: u32,
    /// crc32c of the footer with this field zero.
    pub footer_crc: u32,
    /// Offset of the index block.
    pub index_offset: u64,
    /// Length of the index block.
    pub index_len: u64,
    /// crc32c of the index block.
    pub index_crc: u32,
    /// crc32c of the filter block.
    pub filter_crc: u32,
    /// Offset of the filter block.
    pub filter_offset: u64,
    /// Length of the filter block.
    pub filter_len: u64,
    /// Number of entries.
    pub entry_count: u64,
    /// Lowest sequence number in the table.
    pub min_seq: u64,
    /// Highest sequence number in the table.
    pub max_seq: u64,
    /// Lowest token in the table.
    pub min_token: u64,
    /// Highest token in the table.
    pub max_token: u64,
    /// The table's id (also in its file name).
    pub table_id: u64,
    /// Bytes of data blocks.
    pub data_bytes: u64,
    /// Length of the blob-reference section (0: the table references no blob file).
    pub blob_refs_len: u64,
    /// crc32c of the blob-reference section.
    pub blob_refs_crc: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

/// Size of the footer in bytes.
pub const FOOTER_BYTES: usize = std::mem::size_of::<Footer>();
const _: () = assert!(FOOTER_BYTES == 128);

impl Footer {
    pub(crate) fn seal(mut self) -> Self {
        self.footer_crc = 0;
        self.footer_crc = crc32c::crc32c(bytemuck::bytes_of(&self));
        self
    }

    pub(crate) fn checksum(&self) -> u32 {
        let mut f = *self;
        f.footer_crc = 0;
        crc32c::crc32c(bytemuck::bytes_of(&f))
    }
}

/// One index entry: the last key of a data block and where the block is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Token of the block's last key.
    pub last_token: u64,
    /// The block's last key.
    pub last_key: Box<[u8]>,
    /// Offset of the block.
    pub offset: u64,
    /// Length of the block.
    pub len: u32,
}

pub(crate) fn encode_index(entries: &[IndexEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        out.extend_from_slice(&e.last_token.to_le_bytes());
        let key_len = u16::try_from(e.last_key.len()).expect("INVARIANT: keys are <= 256 bytes");
        out.extend_from_slice(&key_len.to_le_bytes());
        out.extend_from_slice(&e.last_key);
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.len.to_le_bytes());
    }
    let count = u32::try_from(entries.len()).expect("INVARIANT: index is bounded");
    out.extend_from_slice(&count.to_le_bytes());
    out
}

pub(crate) fn decode_index(buf: &[u8]) -> Option<Vec<IndexEntry>> {
    let count_at = buf.len().checked_sub(4)?;
    let count = u32::from_le_bytes(buf[count_at..].try_into().ok()?) as usize;
    let mut out = Vec::with_capacity(count.min(buf.len() / 22));
    let mut at = 0;
    for _ in 0..count {
        let last_token = u64::from_le_bytes(buf.get(at..at + 8)?.try_into().ok()?);
        let key_len = usize::from(u16::from_le_bytes(
            buf.get(at + 8..at + 10)?.try_into().ok()?,
        ));
        let last_key = buf.get(at + 10..at + 10 + key_len)?.into();
        at += 10 + key_len;
        let offset = u64::from_le_bytes(buf.get(at..at + 8)?.try_into().ok()?);
        let len = u32::from_le_bytes(buf.get(at + 8..at + 12)?.try_into().ok()?);
        at += 12;
        out.push(IndexEntry {
            last_token,
            last_key,
            offset,
            len,
        });
    }
    (at == count_at).then_some(out)
}

/// Encodes a table's blob references: per blob file, the bytes of its entries the table points
/// at.
pub(crate) fn encode_blob_refs(refs: &std::collections::BTreeMap<u64, u64>) -> Vec<u8> {
    if refs.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(4 + refs.len() * 16);
    let count = u32::try_from(refs.len()).expect("INVARIANT: bounded by the table's entries");
    out.extend_from_slice(&count.to_le_bytes());
    for (id, bytes) in refs {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&bytes.to_le_bytes());
    }
    out
}

pub(crate) fn decode_blob_refs(buf: &[u8]) -> Option<Vec<(u64, u64)>> {
    if buf.is_empty() {
        return Some(Vec::new());
    }
    let count = u32::from_le_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    if buf.len() != 4 + count.checked_mul(16)? {
        return None;
    }
    let refs: Vec<(u64, u64)> = buf[4..]
        .chunks_exact(16)
        .map(|c| {
            let (id, bytes) = c.split_at(8);
            (
                u64::from_le_bytes(id.try_into().expect("8 bytes")),
                u64::from_le_bytes(bytes.try_into().expect("8 bytes")),
            )
        })
        .collect();
    (count > 0 && refs.windows(2).all(|w| w[0].0 < w[1].0)).then_some(refs)
}

/// The path of table `id` in `dir`.
#[must_use]
pub fn table_path(dir: &Path, id: TableId) -> PathBuf {
    dir.join(format!("sst-{:016x}.sst", id.0))
}

/// Parses a table file name back into its id.
#[must_use]
pub fn parse_table_name(name: &str) -> Option<TableId> {
    let hex = name.strip_prefix("sst-")?.strip_suffix(".sst")?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok().map(TableId))
        .flatten()
}
