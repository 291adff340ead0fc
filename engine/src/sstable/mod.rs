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
pub mod format;
mod reader;

pub use crate::cache::BlockCache;
pub use builder::TableBuilder;
pub use format::{parse_table_name, table_path, Footer, IndexEntry, TableId, FOOTER_BYTES};
pub use format::{TABLE_FORMAT_VERSION, TABLE_MAGIC};
pub use reader::SsTable;

#[cfg(test)]
mod tests {
    use super::format::*;
    use bytemuck::Zeroable;
    use std::path::Path;

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
