//! A client request's life across the key's replicas:
//! * [`quorum`] — the decisions, sans IO: W/R against RF, write plans over the preference list,
//!   tallies, the merge of a read's replies, which replicas a read repairs;
//! * the runtime around them: a write minted on a replica and sent to the others, a read
//!   fanned out and repaired, a write passed on by a node that is not a replica, hints stored
//!   and replayed.

pub mod quorum;
mod run;

pub use run::{read, replay_hints, store_hint, write, ReadRequest, ReadResult, WriteRequest};
