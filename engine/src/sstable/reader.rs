//! Opens a table (footer, index, filter; all checksummed) and serves point reads through the
//! shard's block cache.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::block::{Block, BlockError};
use super::bloom::Bloom;
use super::format::{
    decode_blob_refs, decode_index, table_path, Footer, IndexEntry, TableId, FOOTER_BYTES,
    TABLE_FORMAT_VERSION, TABLE_MAGIC,
};
use crate::cache::BlockCache;
use crate::error::{Error, Result};
use crate::record::{cmp_keys, Record, Token};
use dynacore_runtime::File;

/// An open, immutable table.
#[derive(Debug)]
pub struct SsTable {
    id: TableId,
    path: PathBuf,
    file: File,
    footer: Footer,
    index: Vec<IndexEntry>,
    bloom: Bloom,
    size: u64,
    /// Per blob file the table points into, the bytes of entries it points at (ids increasing).
    blob_refs: Vec<(u64, u64)>,
}

impl SsTable {
    /// Opens table `id` in `dir` and checks its footer, index and filter.
    ///
    /// # Errors
    /// [`Error::Corruption`] / [`Error::ChecksumMismatch`] for damaged metadata; I/O errors.
    pub async fn open(dir: &Path, id: TableId) -> Result<SsTable> {
        let path = table_path(dir, id);
        let file = File::open_read(&path)
            .await
            .map_err(|e| Error::io("open", &path, e))?;
        let size = file.size().await.map_err(|e| Error::io("stat", &path, e))?;
        if size < FOOTER_BYTES as u64 {
            return Err(Error::corruption(&path, 0, "file shorter than a footer"));
        }
        let footer_at = size - FOOTER_BYTES as u64;
        let raw = file
            .read_exact_at(footer_at, FOOTER_BYTES)
            .await
            .map_err(|e| Error::io("read footer of", &path, e))?;
        let footer: Footer = bytemuck::pod_read_unaligned(&raw);
        if footer.magic != TABLE_MAGIC {
            return Err(Error::corruption(&path, footer_at, "bad table magic"));
        }
        let actual = footer.checksum();
        if actual != footer.footer_crc {
            return Err(Error::ChecksumMismatch {
                path,
                offset: footer_at,
                expected: footer.footer_crc,
                actual,
            });
        }
        if footer.format_version != TABLE_FORMAT_VERSION
            && !(footer.format_version == 1 && footer.blob_refs_len == 0)
        {
            return Err(Error::Incompatible {
                path,
                reason: format!("table format version {} is unknown", footer.format_version),
            });
        }
        if footer.table_id != id.0
            || footer.data_bytes > footer.index_offset
            || footer.index_offset.checked_add(footer.index_len) != Some(footer.filter_offset)
            || footer
                .filter_offset
                .saturating_add(footer.filter_len)
                .saturating_add(footer.blob_refs_len)
                > footer_at
        {
            return Err(Error::corruption(
                &path,
                footer_at,
                "footer fields are inconsistent",
            ));
        }
        let meta_len = usize::try_from(footer.index_len + footer.filter_len + footer.blob_refs_len)
            .map_err(|_| Error::corruption(&path, footer_at, "metadata too large"))?;
        let meta = file
            .read_exact_at(footer.index_offset, meta_len)
            .await
            .map_err(|e| Error::io("read index of", &path, e))?;
        // Lengths are bounded by the file size (checked above), so they fit in usize.
        let (index_bytes, rest) = meta.split_at(footer.index_len as usize);
        let (filter_bytes, blob_bytes) = rest.split_at(footer.filter_len as usize);
        let blob_offset = footer.filter_offset + footer.filter_len;
        for (bytes, expected, offset) in [
            (index_bytes, footer.index_crc, footer.index_offset),
            (filter_bytes, footer.filter_crc, footer.filter_offset),
            (blob_bytes, footer.blob_refs_crc, blob_offset),
        ] {
            let actual = crc32c::crc32c(bytes);
            if actual != expected {
                return Err(Error::ChecksumMismatch {
                    path,
                    offset,
                    expected,
                    actual,
                });
            }
        }
        let index = decode_index(index_bytes)
            .ok_or_else(|| Error::corruption(&path, footer.index_offset, "index does not parse"))?;
        if index
            .iter()
            .any(|e| e.offset.saturating_add(u64::from(e.len)) > footer.data_bytes)
            || index
                .windows(2)
                .any(|w| w[0].offset + u64::from(w[0].len) > w[1].offset)
        {
            return Err(Error::corruption(
                &path,
                footer.index_offset,
                "index points past the data blocks or its blocks overlap",
            ));
        }
        let bloom = Bloom::decode(filter_bytes).ok_or_else(|| {
            Error::corruption(&path, footer.filter_offset, "filter does not parse")
        })?;
        let blob_refs = decode_blob_refs(blob_bytes)
            .ok_or_else(|| Error::corruption(&path, blob_offset, "blob references do not parse"))?;
        Ok(SsTable {
            id,
            path,
            file,
            footer,
            index,
            bloom,
            size,
            blob_refs,
        })
    }

    /// Closes the table's file.
    ///
    /// NOTE: close a table before deleting its file. The last close of an unlinked file frees its
    /// blocks, and glommio closes through io_uring on the executor thread: for a 100 MiB table
    /// that stalled the shard for about 20 ms. Closed first, the unlink (on glommio's blocking
    /// thread) does the freeing instead.
    ///
    /// # Errors
    /// I/O errors from `close`.
    pub async fn close(self) -> Result<()> {
        let path = self.path;
        self.file
            .close()
            .await
            .map_err(|e| Error::io("close", &path, e))
    }

    /// The table's id.
    #[must_use]
    pub fn id(&self) -> TableId {
        self.id
    }

    /// The table's footer (counts, sequence and token ranges).
    #[must_use]
    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    /// Per blob file the table's records point into: the bytes of the entries they point at
    /// (ids increasing).
    #[must_use]
    pub fn blob_refs(&self) -> &[(u64, u64)] {
        &self.blob_refs
    }

    /// File size in bytes.
    #[must_use]
    pub fn size_bytes(&self) -> u64 {
        self.size
    }

    /// Whether the Bloom filter (and token range) rule `token` out.
    #[must_use]
    pub fn may_contain(&self, token: Token) -> bool {
        self.footer.entry_count > 0
            && token.0 >= self.footer.min_token
            && token.0 <= self.footer.max_token
            && self.bloom.may_contain(token)
    }

    /// Number of data blocks.
    #[must_use]
    pub fn block_count(&self) -> usize {
        self.index.len()
    }

    /// The first data block that may hold an entry at or after `token`.
    #[must_use]
    pub fn first_block_for(&self, token: Token) -> usize {
        self.index.partition_point(|e| e.last_token < token.0)
    }

    /// The file offset of data block `i` (its cache key).
    #[must_use]
    pub fn block_offset(&self, i: usize) -> u64 {
        self.index[i].offset
    }

    /// Reads data block `i` through `cache`.
    ///
    /// # Errors
    /// [`Error::ChecksumMismatch`] / [`Error::Corruption`] for a damaged block; I/O errors.
    pub async fn block(&self, i: usize, cache: &BlockCache) -> Result<Rc<Block>> {
        let entry = &self.index[i];
        if let Some(b) = cache.get(self.id, entry.offset) {
            return Ok(b);
        }
        let bytes = self
            .file
            .read_exact_at(entry.offset, entry.len as usize)
            .await
            .map_err(|e| Error::io("read block of", &self.path, e))?;
        let block = Rc::new(self.parse_block(entry.offset, bytes)?);
        cache.insert(self.id, entry.offset, block.clone());
        Ok(block)
    }

    /// Reads blocks `first..` in one I/O of at most `max_bytes` (at least one block), bypassing
    /// the cache: compaction's sequential read-ahead. Returns each block's offset and raw bytes,
    /// for [`SsTable::parse_block`] (parsing one at a time spreads the checksum work out).
    ///
    /// # Errors
    /// I/O errors.
    pub async fn read_blocks(&self, first: usize, max_bytes: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let start = self.index[first].offset;
        let mut end = first + 1;
        while end < self.index.len() {
            let e = &self.index[end];
            if e.offset + u64::from(e.len) - start > max_bytes as u64 {
                break;
            }
            end += 1;
        }
        let last = &self.index[end - 1];
        let span = usize::try_from(last.offset + u64::from(last.len) - start)
            .map_err(|_| Error::corruption(&self.path, start, "block span too large"))?;
        let bytes = self
            .file
            .read_exact_at(start, span)
            .await
            .map_err(|e| Error::io("read blocks of", &self.path, e))?;
        Ok(self.index[first..end]
            .iter()
            .map(|e| {
                // INVARIANT: blocks are in offset order and do not overlap (checked by open).
                let at = usize::try_from(e.offset - start).expect("within the span");
                (e.offset, bytes[at..at + e.len as usize].to_vec())
            })
            .collect())
    }

    /// Checks and parses the block read at `offset`.
    ///
    /// # Errors
    /// [`Error::ChecksumMismatch`] / [`Error::Corruption`] for a damaged block.
    pub fn parse_block(&self, offset: u64, bytes: Vec<u8>) -> Result<Block> {
        Block::parse(bytes).map_err(|e| match e {
            BlockError::Checksum { expected, actual } => Error::ChecksumMismatch {
                path: self.path.clone(),
                offset,
                expected,
                actual,
            },
            BlockError::Malformed(why) => Error::corruption(&self.path, offset, why),
        })
    }

    /// The table's version of `key`, tombstones included.
    ///
    /// # Errors
    /// [`Error::ChecksumMismatch`] if the block is damaged (no bytes are returned); I/O errors.
    pub async fn get(
        &self,
        token: Token,
        key: &[u8],
        cache: &BlockCache,
    ) -> Result<Option<Record>> {
        if !self.may_contain(token) {
            return Ok(None);
        }
        let i = self
            .index
            .partition_point(|e| cmp_keys(Token(e.last_token), &e.last_key, token, key).is_lt());
        if i == self.index.len() {
            return Ok(None);
        }
        let block = self.block(i, cache).await?;
        Ok(block.get(token, key).map(|r| r.to_record()))
    }

    /// Every entry of the table in order (reads every block; used by checks and tools).
    ///
    /// # Errors
    /// As [`SsTable::get`].
    pub async fn scan(&self, cache: &BlockCache) -> Result<Vec<Record>> {
        let mut out = Vec::with_capacity(usize::try_from(self.footer.entry_count).unwrap_or(0));
        for i in 0..self.index.len() {
            let block = self.block(i, cache).await?;
            out.extend(block.iter().map(|(_, r)| r.to_record()));
        }
        Ok(out)
    }
}
