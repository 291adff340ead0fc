//! A client request's life across the key's replicas.
//!
//! * [`quorum`] — the decisions, sans IO: W/R against RF, write plans over the preference list
//!   (sloppy quorum: a down replica's copy goes to the next healthy node as a hint), tallies
//!   that decide at W/R or once that is out of reach, the DVV merge of a read's replies, which
//!   replicas a read repairs.
//! * The runtime around them moves the messages: [`write()`] (minted on a replica's copy, sent
//!   to the others, answered at W, hints for misses), `forward` (a write passed once to a
//!   replica by a node that is not one), [`read()`] (fanned out, merged at R, read repair),
//!   [`handoff`](store_hint) (hints kept for peers and replayed to their targets), over
//!   `replicas` (one replica reached, in process or over the core's pooled peer connection) and
//!   `fan_out` (answers collected until decided, the rest in the background).
//!
//! * **Writes** are coordinated by a replica: it mints the new version with the DVV `update`
//!   of its own copy (a dot of its own id, so two coordinators never mint the same dot), stores
//!   it, and sends the result to the other replicas, which merge it by `sync`.
//! * **Conditional writes** (a version that must still be current, a key that must be absent
//!   or present) are lightweight transactions: a Paxos round among the key's replicas
//!   (`paxos`), linearizable per key; a failed condition writes nothing anywhere.
//! * **Reads** ask every replica for its copy and merge the first R answers by `sync`; in
//!   the default last-writer-wins mode the newest sibling is the value, in siblings mode every
//!   live concurrent value is returned.

mod anti_entropy;
mod exchange;
mod fan_out;
mod forward;
mod handoff;
pub mod moves;
mod paxos;
pub mod quorum;
mod read;
mod replicas;
mod request;
mod scan;
pub mod topology;
mod write;

pub use anti_entropy::{
    queue as anti_entropy_queue, repair_all, repair_status, run_anti_entropy, RepairReport,
};
pub use exchange::RangeJob;
pub use handoff::{replay_hints, store_hint};
pub use read::read;
pub use request::{ReadRequest, ReadResult, WriteRequest};
pub use scan::{scan, Page};
pub use write::write;
