//! The cluster as one node knows it:
//! * [`membership`] — SWIM membership through `foca`, sans IO (decides);
//! * [`gossip`] — its driver on core 0: UDP, timers, publishing what changed (drives);
//! * [`keeper`] — the ring book as every core shares it (merges, changes, the digest);
//! * [`ring_book`] — the ring members (the `RING` file) and the [`ClusterState`] snapshot every
//!   core routes by;
//! * [`replication`] — the replication settings every core reads.

pub mod gossip;
pub mod keeper;
pub mod membership;
pub mod replication;
pub mod ring_book;
pub mod simulation;

pub use ring_book::{ClusterState, PeerNode, RingBook, RingMember, SharedCluster, RING_FILE};
