//! Token-range scans: one merge iterator over the memtables and SSTables of a shard.
//!
//! Sources are ordered newest first (active memtable, frozen memtables, tables newest to
//! oldest). At each step the smallest `(token, key)` among the sources' heads is taken; if
//! several sources hold it, the version with the highest sequence number wins and the others
//! are skipped. Tombstones and expired values are skipped. Tables are read block by block
//! through the shard's block cache; memtables are copied for the range when the scan starts,
//! so a scan sees the shard as of its start.
//!
//! Anti-entropy (hashing a vnode's range) and streaming (moving it) are the users.

use std::collections::VecDeque;
use std::rc::Rc;

use crate::blob::BlobSet;
use crate::error::Result;
use crate::record::{cmp_keys, Record, SeqNo, Token};
use crate::sstable::block::Block;
use crate::sstable::{BlockCache, SsTable};

enum Source {
    /// A memtable's newest versions in the range, in order.
    Run {
        records: Vec<(Token, Record)>,
        pos: usize,
    },
    /// A table, read one block at a time.
    Table {
        table: Rc<SsTable>,
        next_block: usize,
        block: Option<Rc<Block>>,
        pos: usize,
        /// The first block still needs positioning at the scan's start token.
        seek: Option<Token>,
        /// Blocks read ahead but not yet checked (compaction only): offset and bytes.
        ahead: VecDeque<(u64, Vec<u8>)>,
    },
}

/// Bytes a compaction reads from a table in one I/O.
const READ_AHEAD_BYTES: usize = 128 << 10;

impl Source {
    /// Loads the next block of a table whose current block is used up.
    async fn fill(&mut self, cache: &BlockCache, fill_cache: bool) -> Result<()> {
        if let Source::Table {
            table,
            next_block,
            block,
            pos,
            seek,
            ahead,
        } = self
        {
            while block.as_ref().is_none_or(|b| *pos >= b.len()) {
                if *next_block >= table.block_count() {
                    *block = None;
                    return Ok(());
                }
                let b = if fill_cache {
                    table.block(*next_block, cache).await?
                } else {
                    // Sequential and read once: big reads, and the cache is left alone.
                    if ahead.is_empty() {
                        ahead.extend(table.read_blocks(*next_block, READ_AHEAD_BYTES).await?);
                    }
                    let (offset, raw) = ahead
                        .pop_front()
                        .expect("INVARIANT: read_blocks reads one or more");
                    Rc::new(table.parse_block(offset, raw)?)
                };
                *next_block += 1;
                *pos = seek.take().map_or(0, |t| b.seek(t));
                *block = Some(b);
            }
        }
        Ok(())
    }

    /// The head: token, key and sequence number.
    fn head(&self) -> Option<(Token, &[u8], SeqNo)> {
        match self {
            Source::Run { records, pos } => records.get(*pos).map(|(t, r)| (*t, &r.key[..], r.seq)),
            Source::Table { block, pos, .. } => {
                let b = block.as_ref()?;
                (*pos < b.len()).then(|| {
                    let (t, r) = b.entry(*pos);
                    (t, r.key, r.seq)
                })
            }
        }
    }

    fn head_record(&self) -> Option<Record> {
        match self {
            Source::Run { records, pos } => records.get(*pos).map(|(_, r)| r.clone()),
            Source::Table { block, pos, .. } => block.as_ref().map(|b| b.entry(*pos).1.to_record()),
        }
    }

    fn advance(&mut self) {
        match self {
            Source::Run { pos, .. } | Source::Table { pos, .. } => *pos += 1,
        }
    }
}

/// The newest version of every key across sources, in `(token, key)` order, tombstones and
/// expired values included. Scans filter it; compaction writes it.
pub(crate) struct MergeCursor {
    sources: Vec<Source>,
    cache: Rc<BlockCache>,
    /// Whether table blocks are read through the cache (reads) or read ahead in large I/Os
    /// without touching the cache (compaction, which reads each block once).
    fill_cache: bool,
    end: Token,
}

impl MergeCursor {
    pub(crate) fn new(
        memtable_runs: Vec<Vec<Record>>,
        tables: &[Rc<SsTable>],
        cache: Rc<BlockCache>,
        start: Token,
        end: Token,
    ) -> Self {
        let mut sources: Vec<Source> = memtable_runs
            .into_iter()
            .map(|run| Source::Run {
                records: run.into_iter().map(|r| (Token::of(&r.key), r)).collect(),
                pos: 0,
            })
            .collect();
        // Tables are given oldest first; sources go newest first.
        for table in tables.iter().rev() {
            let f = table.footer();
            if f.entry_count == 0 || f.max_token < start.0 || f.min_token > end.0 {
                continue;
            }
            sources.push(Source::Table {
                table: table.clone(),
                next_block: table.first_block_for(start),
                block: None,
                pos: 0,
                seek: Some(start),
                ahead: VecDeque::new(),
            });
        }
        MergeCursor {
            sources,
            cache,
            fill_cache: true,
            end,
        }
    }

    /// Reads tables sequentially in large I/Os, leaving the cache alone (for compaction, which
    /// reads each block once and must not evict hot ones).
    pub(crate) fn without_cache_fill(mut self) -> Self {
        self.fill_cache = false;
        self
    }

    /// The next key's newest version with its token, or `None` at the end of the range.
    pub(crate) async fn next(&mut self) -> Result<Option<(Token, Record)>> {
        for s in &mut self.sources {
            s.fill(&self.cache, self.fill_cache).await?;
        }
        // The smallest key among the heads, and the source holding its newest version.
        let mut best: Option<(usize, Token, &[u8], SeqNo)> = None;
        for (i, s) in self.sources.iter().enumerate() {
            let Some((t, k, seq)) = s.head() else {
                continue;
            };
            let better = match best {
                None => true,
                Some((_, bt, bk, bseq)) => match cmp_keys(t, k, bt, bk) {
                    std::cmp::Ordering::Less => true,
                    std::cmp::Ordering::Equal => seq > bseq,
                    std::cmp::Ordering::Greater => false,
                },
            };
            if better {
                best = Some((i, t, k, seq));
            }
        }
        let Some((winner, token, key, _)) = best else {
            return Ok(None);
        };
        if token > self.end {
            return Ok(None);
        }
        let key = key.to_vec();
        let record = self.sources[winner]
            .head_record()
            .expect("INVARIANT: the winner has a head");
        for s in &mut self.sources {
            if s.head()
                .is_some_and(|(t, k, _)| t == token && k == key.as_slice())
            {
                s.advance();
            }
        }
        Ok(Some((token, record)))
    }
}

/// A scan of the live records with tokens in `[start, end]`, in `(token, key)` order.
pub struct ShardScan {
    cursor: MergeCursor,
    /// The blob files of the tables the scan reads (held open for the scan's length).
    blobs: Rc<BlobSet>,
    now_ms: u64,
}

impl std::fmt::Debug for ShardScan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardScan")
            .field("sources", &self.cursor.sources.len())
            .field("end", &self.cursor.end)
            .finish_non_exhaustive()
    }
}

impl ShardScan {
    /// Live records of `cursor` at `now_ms`, with value-log references resolved through
    /// `blobs`.
    pub(crate) fn new(cursor: MergeCursor, blobs: Rc<BlobSet>, now_ms: u64) -> Self {
        ShardScan {
            cursor,
            blobs,
            now_ms,
        }
    }

    /// The next live record, or `None` at the end of the range.
    ///
    /// # Errors
    /// A damaged block ([`crate::Error::ChecksumMismatch`]) or an I/O error.
    pub async fn next(&mut self) -> Result<Option<Record>> {
        while let Some((_, mut record)) = self.cursor.next().await? {
            if record.is_live_at(self.now_ms) {
                // A scan reads each value once: it does not push hot data out of the cache.
                self.blobs.resolve(&mut record, false).await?;
                return Ok(Some(record));
            }
        }
        Ok(None)
    }

    /// Collects the rest of the scan.
    ///
    /// # Errors
    /// As [`ShardScan::next`].
    pub async fn collect(mut self) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        while let Some(r) = self.next().await? {
            out.push(r);
        }
        Ok(out)
    }
}
