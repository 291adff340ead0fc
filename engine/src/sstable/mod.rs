//! Sorted string tables: immutable, block-based files that hold flushed memtables.
//!
//! ```text
//! sst-<id as 16 hex digits>.sst
//! +---------------------------+  offset 0
//! | data block 0              |  block.rs: entries | offsets | count | crc32c
//! | data block 1 ...          |
//! +---------------------------+  footer.index_offset
//! | index block               |  per data block: u64 last_token | u16 key_len | last key |
//! |                           |                  u64 offset | u32 len;  then u32 count
//! +---------------------------+  footer.filter_offset
//! | Bloom filter block        |  bloom.rs
//! +---------------------------+  footer.filter_offset + filter_len
//! | blob references (v2)      |  u32 count | (u64 blob file id, u64 entry bytes) x count,
//! |                           |  ids increasing; absent (length 0) when the table has none
//! +---------------------------+
//! | zero padding              |  so that the file ends on a 4 KiB boundary
//! +---------------------------+  file_size - 128
//! | Footer (128 bytes, Pod)   |  magic, version, offsets, lengths, crcs, stats, footer crc
//! +---------------------------+
//! ```
//!
//! INVARIANT: a table is written completely, synced, and its directory synced before the
//! manifest names it; a table the manifest names is never modified.

pub mod block;
pub mod bloom;
mod builder;
mod reader;

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytemuck::{Pod, Zeroable};

pub(crate) use builder::sync_and_close;
pub use builder::TableBuilder;
pub use reader::SsTable;

use block::Block;

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
    fn seal(mut self) -> Self {
        self.footer_crc = 0;
        self.footer_crc = crc32c::crc32c(bytemuck::bytes_of(&self));
        self
    }

    fn checksum(&self) -> u32 {
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

fn encode_index(entries: &[IndexEntry]) -> Vec<u8> {
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

fn decode_index(buf: &[u8]) -> Option<Vec<IndexEntry>> {
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
fn encode_blob_refs(refs: &std::collections::BTreeMap<u64, u64>) -> Vec<u8> {
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

fn decode_blob_refs(buf: &[u8]) -> Option<Vec<(u64, u64)>> {
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

/// What the cache holds at a `(file id, offset)`: a table's data block, or a value read from
/// a blob file (tables and blob files draw ids from one counter, so keys never collide).
#[derive(Clone)]
enum Cached {
    Block(Rc<Block>),
    Value(Rc<[u8]>),
}

struct BlockWeighter;

impl quick_cache::Weighter<(TableId, u64), Cached> for BlockWeighter {
    fn weight(&self, _key: &(TableId, u64), c: &Cached) -> u64 {
        64 + match c {
            Cached::Block(b) => b.size_bytes() as u64,
            Cached::Value(v) => v.len() as u64,
        }
    }
}

/// A shard's cache of checked, parsed data blocks and of values read from the value log
/// (direct I/O bypasses the page cache, so this is the only cache there is). Bounded in bytes.
pub struct BlockCache {
    cache: RefCell<quick_cache::unsync::Cache<(TableId, u64), Cached, BlockWeighter>>,
    capacity_bytes: u64,
    hits: Cell<u64>,
    misses: Cell<u64>,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = self.cache.borrow();
        f.debug_struct("BlockCache")
            .field("capacity_bytes", &self.capacity_bytes)
            .field("bytes", &c.weight())
            .field("blocks", &c.len())
            .field("hits", &self.hits.get())
            .field("misses", &self.misses.get())
            .finish()
    }
}

impl BlockCache {
    /// A cache holding up to `capacity_bytes` of blocks (0 disables caching).
    #[must_use]
    pub fn new(capacity_bytes: u64) -> Self {
        let estimated = usize::try_from(capacity_bytes / 4096)
            .unwrap_or(1 << 20)
            .max(16);
        BlockCache {
            cache: RefCell::new(quick_cache::unsync::Cache::with_weighter(
                estimated,
                capacity_bytes.max(1),
                BlockWeighter,
            )),
            capacity_bytes,
            hits: Cell::new(0),
            misses: Cell::new(0),
        }
    }

    fn lookup(&self, table: TableId, offset: u64) -> Option<Cached> {
        let found = self.cache.borrow().get(&(table, offset)).cloned();
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.set(counter.get() + 1);
        found
    }

    fn get(&self, table: TableId, offset: u64) -> Option<Rc<Block>> {
        match self.lookup(table, offset)? {
            Cached::Block(b) => Some(b),
            Cached::Value(_) => None,
        }
    }

    /// The cached value of blob file `file` at `offset` (counted as a hit or a miss).
    pub(crate) fn get_value(&self, file: u64, offset: u64) -> Option<Rc<[u8]>> {
        match self.lookup(TableId(file), offset)? {
            Cached::Value(v) => Some(v),
            Cached::Block(_) => None,
        }
    }

    /// Caches the value of blob file `file` at `offset`.
    pub(crate) fn insert_value(&self, file: u64, offset: u64, value: Rc<[u8]>) {
        if self.capacity_bytes > 0 {
            self.cache
                .borrow_mut()
                .insert((TableId(file), offset), Cached::Value(value));
        }
    }

    /// Lookups that found their block cached, since the cache was made.
    #[must_use]
    pub fn hits(&self) -> u64 {
        self.hits.get()
    }

    /// Lookups that had to read their block from disk, since the cache was made.
    #[must_use]
    pub fn misses(&self) -> u64 {
        self.misses.get()
    }

    fn insert(&self, table: TableId, offset: u64, block: Rc<Block>) {
        if self.capacity_bytes > 0 {
            self.cache
                .borrow_mut()
                .insert((table, offset), Cached::Block(block));
        }
    }

    /// The most bytes the cache holds.
    #[must_use]
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// Bytes currently cached.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.cache.borrow().weight()
    }

    /// Whether the block of `table` at `offset` is cached (not counted as a hit or miss).
    #[must_use]
    pub fn contains(&self, table: TableId, offset: u64) -> bool {
        self.cache.borrow().contains_key(&(table, offset))
    }

    /// Drops every cached block of `table` (walks the whole cache: for rare paths only).
    pub fn forget_table(&self, table: TableId) {
        self.cache.borrow_mut().retain(|(t, _), _| *t != table);
    }

    /// Drops the block of `table` at `offset` (a deleted table's) from the cache; returns the
    /// bytes it held (0 if it was not cached).
    pub fn remove(&self, table: TableId, offset: u64) -> usize {
        // Dropped outside the borrow: freeing a block may be the last reference.
        let removed = self.cache.borrow_mut().remove(&(table, offset));
        removed.map_or(0, |(_, c)| match c {
            Cached::Block(b) => b.size_bytes(),
            Cached::Value(v) => v.len(),
        })
    }

    /// Whether there is room for `bytes` more without evicting (used to decide on filling the
    /// cache while flushing).
    #[must_use]
    pub fn has_room_for(&self, bytes: u64) -> bool {
        self.bytes() + bytes <= self.capacity_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_round_trip_and_truncation() {
        let entries = vec![
            IndexEntry {
                last_token: 5,
                last_key: b"abc".as_slice().into(),
                offset: 0,
                len: 100,
            },
            IndexEntry {
                last_token: 9,
                last_key: b"z".as_slice().into(),
                offset: 100,
                len: 50,
            },
        ];
        let enc = encode_index(&entries);
        assert_eq!(decode_index(&enc), Some(entries));
        for cut in 0..enc.len() {
            assert!(decode_index(&enc[..cut]).is_none() || cut == 0 && enc.len() == 4);
        }
    }

    #[test]
    fn blob_refs_round_trip_and_damage() {
        let refs: std::collections::BTreeMap<u64, u64> = [(3, 8192), (9, 1 << 20)].into();
        let enc = encode_blob_refs(&refs);
        let back: Vec<_> = refs.into_iter().collect();
        assert_eq!(decode_blob_refs(&enc), Some(back));
        assert_eq!(decode_blob_refs(&[]), Some(Vec::new()));
        assert!(encode_blob_refs(&std::collections::BTreeMap::new()).is_empty());
        for cut in 1..enc.len() {
            assert_eq!(decode_blob_refs(&enc[..cut]), None);
        }
        let mut unordered = enc.clone();
        unordered[4..12].copy_from_slice(&10u64.to_le_bytes());
        assert_eq!(decode_blob_refs(&unordered), None);
    }

    #[test]
    fn footer_checksum() {
        let f = Footer {
            magic: TABLE_MAGIC,
            format_version: 1,
            table_id: 3,
            ..Footer::zeroed()
        }
        .seal();
        assert_eq!(f.checksum(), f.footer_crc);
        let mut bad = f;
        bad.index_len += 1;
        assert_ne!(bad.checksum(), bad.footer_crc);
    }

    #[test]
    fn names() {
        let p = table_path(Path::new("/x"), TableId(0xabc));
        let name = p.file_name().and_then(|n| n.to_str()).expect("utf-8");
        assert_eq!(parse_table_name(name), Some(TableId(0xabc)));
        assert_eq!(parse_table_name("sst-1.sst"), None);
    }
}
