//! Writes one table from entries given in `(token, key)` order, streaming whole 4 KiB-aligned
//! chunks to a direct-I/O file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytemuck::Zeroable;

use super::block::{Block, BlockBuilder, BLOCK_BYTES_TARGET};
use super::bloom::Bloom;
use super::format::{
    encode_blob_refs, encode_index, table_path, Footer, IndexEntry, TableId, FOOTER_BYTES,
};
use super::format::{TABLE_FORMAT_VERSION, TABLE_MAGIC};
use crate::cache::BlockCache;
use crate::durable::sync_and_close;
use crate::error::{Error, Result};
use crate::record::{cmp_keys, RecordRef, Token};
use dynacore_runtime::{self as runtime, File, IO_ALIGN};

/// Unwritten bytes after which the builder writes a chunk out. Copying a chunk into its DMA
/// buffer holds the executor, so chunks stay small enough not to delay foreground requests.
const WRITE_CHUNK_BYTES: usize = 256 << 10;

/// Streams a table to disk.
#[derive(Debug)]
pub struct TableBuilder<'c> {
    id: TableId,
    path: PathBuf,
    file: File,
    /// Bytes already written to the file.
    written: u64,
    /// Bytes produced but not yet written; they start at offset `written`.
    out: Vec<u8>,
    block: BlockBuilder,
    block_last: Option<(Token, Vec<u8>)>,
    index: Vec<IndexEntry>,
    tokens: Vec<Token>,
    footer: Footer,
    bits_per_key: u32,
    cache: Option<&'c BlockCache>,
    cache_evicts: bool,
    /// Per blob file, the bytes of its entries that this table's records point at.
    blob_refs: BTreeMap<u64, u64>,
}

impl<'c> TableBuilder<'c> {
    /// Creates table `id` in `dir`. With `cache`, every finished block is also put in the cache
    /// (a flush's data is what is read next).
    ///
    /// # Errors
    /// I/O errors, `AlreadyExists` included.
    pub async fn create(
        dir: &Path,
        id: TableId,
        bits_per_key: u32,
        cache: Option<&'c BlockCache>,
    ) -> Result<TableBuilder<'c>> {
        let path = table_path(dir, id);
        let file = File::create_new(&path)
            .await
            .map_err(|e| Error::io("create", &path, e))?;
        Ok(TableBuilder {
            id,
            path,
            file,
            written: 0,
            out: Vec::with_capacity(WRITE_CHUNK_BYTES + BLOCK_BYTES_TARGET * 2),
            block: BlockBuilder::default(),
            block_last: None,
            index: Vec::new(),
            tokens: Vec::new(),
            footer: Footer {
                magic: TABLE_MAGIC,
                format_version: TABLE_FORMAT_VERSION,
                table_id: id.0,
                min_seq: u64::MAX,
                min_token: u64::MAX,
                ..Footer::zeroed()
            },
            bits_per_key,
            cache,
            cache_evicts: false,
            blob_refs: BTreeMap::new(),
        })
    }

    /// Puts every block in the cache even when that evicts others (by default blocks go in only
    /// while the cache has room). A compaction whose inputs were hot uses it, so that reads do
    /// not turn into disk reads when its output replaces them.
    pub fn fill_cache_evicting(&mut self) {
        self.cache_evicts = true;
    }

    /// Adds an entry. Entries must be strictly increasing by `(token, key)`.
    ///
    /// # Errors
    /// I/O errors while writing out a chunk.
    pub async fn add(&mut self, token: Token, rec: &RecordRef<'_>) -> Result<()> {
        if let Some((t, k)) = &self.block_last {
            assert!(
                cmp_keys(*t, k, token, rec.key).is_lt(),
                "table entries must be strictly increasing"
            );
        } else if let Some(last) = self.index.last() {
            assert!(
                cmp_keys(Token(last.last_token), &last.last_key, token, rec.key).is_lt(),
                "table entries must be strictly increasing"
            );
        }
        if rec.blob {
            let r = rec
                .value
                .and_then(crate::record::BlobRef::decode)
                .expect("INVARIANT: a blob record holds a valid reference");
            *self.blob_refs.entry(r.file_id).or_default() +=
                crate::blob::entry_bytes(&r, rec.key.len());
        }
        self.block.add(token, rec);
        self.tokens.push(token);
        let f = &mut self.footer;
        f.entry_count += 1;
        f.min_seq = f.min_seq.min(rec.seq.0);
        f.max_seq = f.max_seq.max(rec.seq.0);
        f.min_token = f.min_token.min(token.0);
        f.max_token = f.max_token.max(token.0);
        match &mut self.block_last {
            Some((t, k)) => {
                *t = token;
                k.clear();
                k.extend_from_slice(rec.key);
            }
            None => self.block_last = Some((token, rec.key.to_vec())),
        }
        if self.block.len() >= BLOCK_BYTES_TARGET {
            self.finish_block();
        }
        if self.out.len() >= WRITE_CHUNK_BYTES {
            self.write_out(false).await?;
        }
        Ok(())
    }

    fn finish_block(&mut self) {
        let Some((last_token, last_key)) = self.block_last.take() else {
            return;
        };
        let bytes = self.block.finish();
        let offset = self.written + self.out.len() as u64;
        let len = u32::try_from(bytes.len()).expect("INVARIANT: blocks are bounded");
        self.out.extend_from_slice(&bytes);
        if let Some(cache) = self.cache {
            if self.cache_evicts || cache.has_room_for(bytes.len() as u64) {
                let block = Block::parse(bytes).expect("INVARIANT: a block we built parses");
                cache.insert(self.id, offset, Rc::new(block));
            }
        }
        self.index.push(IndexEntry {
            last_token: last_token.0,
            last_key: last_key.into(),
            offset,
            len,
        });
    }

    /// Writes out the aligned prefix of `out` (all of it, padded, when `all`).
    async fn write_out(&mut self, all: bool) -> Result<()> {
        let n = if all {
            assert!(
                self.out.len().is_multiple_of(IO_ALIGN as usize),
                "final chunk must be aligned"
            );
            self.out.len()
        } else {
            self.out.len() / IO_ALIGN as usize * IO_ALIGN as usize
        };
        if n == 0 {
            return Ok(());
        }
        self.file
            .write_aligned(self.written, &self.out[..n])
            .await
            .map_err(|e| Error::io("write", &self.path, e))?;
        self.out.drain(..n);
        self.written += n as u64;
        runtime::yield_if_needed().await;
        Ok(())
    }

    /// Writes index, filter and footer, syncs the file, and returns the table's footer. The
    /// caller syncs the directory before naming the table in the manifest.
    ///
    /// # Errors
    /// I/O errors.
    pub async fn finish(mut self) -> Result<Footer> {
        self.finish_block();
        let mut footer = self.footer;
        if footer.entry_count == 0 {
            footer.min_seq = 0;
            footer.min_token = 0;
        }
        footer.data_bytes = self.written + self.out.len() as u64;
        let index = encode_index(&self.index);
        footer.index_offset = footer.data_bytes;
        footer.index_len = index.len() as u64;
        footer.index_crc = crc32c::crc32c(&index);
        self.out.extend_from_slice(&index);
        let filter = Bloom::build(&self.tokens, self.bits_per_key).encode();
        footer.filter_offset = footer.index_offset + footer.index_len;
        footer.filter_len = filter.len() as u64;
        footer.filter_crc = crc32c::crc32c(&filter);
        self.out.extend_from_slice(&filter);
        let blob_refs = encode_blob_refs(&self.blob_refs);
        if blob_refs.is_empty() {
            // Nothing format 2 adds: a binary from before the value log can still read it.
            footer.format_version = 1;
        }
        footer.blob_refs_len = blob_refs.len() as u64;
        footer.blob_refs_crc = crc32c::crc32c(&blob_refs);
        self.out.extend_from_slice(&blob_refs);
        let end = self.written + self.out.len() as u64 + FOOTER_BYTES as u64;
        let padded_end = runtime::align_up(end);
        self.out.resize(
            self.out.len() + usize::try_from(padded_end - end).unwrap_or(0),
            0,
        );
        let footer = footer.seal();
        self.out.extend_from_slice(bytemuck::bytes_of(&footer));
        self.write_out(true).await?;
        sync_and_close(self.file, &self.path).await?;
        Ok(footer)
    }

    /// Abandons the table and removes its file.
    pub async fn abandon(self) {
        let _ = self.file.close().await;
        if let Err(e) = runtime::remove(&self.path).await {
            tracing::warn!(path = %self.path.display(), error = %e, "removing abandoned table");
        }
    }
}
