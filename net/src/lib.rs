//! `dynacore-net`: the Dynacore node and the `dynacore` binary.
//!
//! One folder per concern; dependencies run one way, down this list:
//! * [`node`] — `dynacore serve`: settings, the data directory's identity, one executor per
//!   core, start-up and shutdown; `local-cluster`.
//! * [`frontend`] — what clients talk to: the binary protocol's server and its dispatch, the
//!   HTTP API (sans-IO codec and server).
//! * [`coordinator`] — a request's life across replicas: quorum decisions (sans IO), writes,
//!   reads with read repair, passing a write to a replica, hinted handoff.
//! * [`core`] — one core's view of the node: routing a request to the core that owns its key,
//!   admission and shutdown accounting.
//! * [`storage`] — what a request does to one shard ([`storage::replica`]) and the per-core hint
//!   stores ([`storage::hints`]).
//! * [`cluster`] — membership (SWIM through foca, sans IO), its gossip driver, and the ring
//!   book every core routes by.
//! * [`metrics`] — counters and histograms, rendered for `/metrics`.
//!
//! The wire protocol, the API vocabulary and the ring are `dynacore-proto`'s; the connections to
//! peers are `dynacore-client`'s (glommio driver); storage is `dynacore-engine`'s; executors,
//! files and sockets are `dynacore-runtime`'s.
// unsafe_code is denied workspace-wide.

pub mod cluster;
pub mod coordinator;
pub mod core;
pub mod frontend;
pub mod metrics;
pub mod node;
pub mod storage;

#[cfg(test)]
mod test_util;
