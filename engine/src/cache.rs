//! A shard's cache of checked, parsed SSTable data blocks and of values read from the value log.
//! Direct I/O bypasses the page cache, so this is the only cache there is; it is bounded in
//! bytes (blocks and values weigh what they hold) and counts hits and misses.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::sstable::block::Block;
use crate::sstable::format::TableId;

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

    pub(crate) fn get(&self, table: TableId, offset: u64) -> Option<Rc<Block>> {
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

    pub(crate) fn insert(&self, table: TableId, offset: u64, block: Rc<Block>) {
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
