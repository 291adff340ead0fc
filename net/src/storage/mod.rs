//! What a node keeps on one core's storage, over `dynacore-engine` shards:
//! * [`replica`] — a request's meaning on the core's shard (`LocalStore`): versions are the DVV
//!   join, blind puts supersede, reads return the newest live sibling;
//! * [`hints`] — the core's hints for replicas that were down, on a shard of their own.

pub mod hints;
pub mod paxos;
pub mod repair_history;
pub mod replica;
