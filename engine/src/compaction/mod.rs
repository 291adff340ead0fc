//! Compaction: a pure policy ([`policy::choose`]) and a worker ([`worker::merge`]) that the
//! shard runs in a low-priority task queue.
//!
//! INVARIANTS: the merged table is written, synced and its directory synced before the manifest
//! replaces the inputs by it; input files are deleted only after that manifest is durable; a
//! tombstone or expired value is dropped only when the merge includes the oldest table (so it
//! shadows nothing that remains), once the grace period has passed since it took effect (its
//! write, its expiry) and the [`TombstoneGate`], if any, agrees.

pub mod policy;
pub(crate) mod worker;

pub use policy::{choose, choose_blob_gc, BlobUsage, CompactionOptions};
pub use worker::{MergeStats, TombstoneGate};
