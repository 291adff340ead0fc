//! `dynacore-engine`: the storage of one Dynacore shard.
//!
//! A node runs one glommio executor per core and each executor owns one [`Shard`]: a direct-I/O
//! write-ahead log with group commit ([`wal`]), an ordered memtable ([`memtable`]), immutable
//! SSTables with Bloom filters ([`sstable`]) and a manifest naming the live tables
//! ([`manifest`]). Everything here is single-threaded and lock-free by construction: a shard is
//! `!Send` and never leaves its executor.
//!
//! Layout:
//! * [`record`] — the record model (key, value or tombstone, sequence number, write timestamp,
//!   expiry, version blob) and its byte encoding.
//! * [`wal`], [`memtable`], [`sstable`], [`manifest`] — the pieces; [`shard`] puts them together.
//! * Files and executors come from `dynacore-runtime`, the only crate that names glommio; the
//!   token and the limits from `dynacore-types`, which the wire protocol shares.
//!
//! Hard limits: keys 1..=256 bytes ([`KEY_BYTES_MAX`]), values up to 10 MiB
//! ([`VALUE_BYTES_MAX`]), version blobs up to 64 KiB ([`VERSION_BYTES_MAX`]); breaking one is a
//! [`LimitError`], never a panic.
//!
//! **Architecture Invariant:** this crate knows nothing of sockets, peers, rings or the wire
//! format; `dynacore-net` drives it.
#![deny(unsafe_code)]

pub mod blob;
pub mod cache;
pub mod compaction;
pub mod durable;
pub mod error;
pub mod hashtree;
pub mod manifest;
pub mod memtable;
pub mod object;
pub mod record;
pub mod scan;
pub mod shard;
pub mod sstable;
pub mod timing;
pub mod version;
pub mod wal;

#[cfg(test)]
mod test_util;

pub use error::{Error, LimitError, Result};
pub use hashtree::{HashTree, KeyState, TreeOptions};
pub use object::{KeyGuard, KeyLocks, LockKey, Object, Sibling};
pub use record::{
    Mutation, Record, SeqNo, ShardId, Token, KEY_BYTES_MAX, VALUE_BYTES_MAX, VERSION_BYTES_MAX,
};
pub use scan::ShardScan;
pub use shard::{
    CleanupStats, Shard, ShardOptions, ShardStats, SnapshotFiles, TreeCheck, TreeStatus,
};
pub use timing::{DurationCounts, StageTimings, STAGE_BUCKETS_US};
pub use wal::Durability;
