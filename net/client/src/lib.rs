//! `dynacore-client`: the Rust SDK of Dynacore.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dynacore_client::ClientError> {
//! use dynacore_client::{Client, Quorum, ReadRepair};
//! let client = Client::connect(&["127.0.0.1:7400".parse().unwrap()]).await?;
//! let version = client.put(b"user:1", b"Ada").await?;
//! let got = client.consistent_get(b"user:1", Quorum::Quorum, ReadRepair::Default).await?;
//! assert_eq!(got.map(|v| v.value), Some(b"Ada".to_vec()));
//! // Optimistic locking: only if nobody wrote since.
//! client.put_if(b"user:1", b"Ada Lovelace", &version).await?;
//! # Ok(()) }
//! ```
//!
//! * **Two drivers, one API.** [`Client`] runs on tokio (the default feature `tokio`): it is
//!   `Send + Sync` and cheap to clone, so one client serves every task of a multi-thread
//!   runtime. With the feature `glommio`, [`glommio::Client`] is the same API on Dynacore's
//!   thread-per-core runtime (one per executor, `!Send`), and [`glommio::ConnPool`] is what a
//!   node's cores reach their peers with. They are separate types, so both can be built at
//!   once. The protocol, the connection logic (ids, framing, matching answers) and answer
//!   decoding come from `dynacore-proto`; a driver only moves bytes.
//! * **Token- and shard-aware.** Connecting fetches the topology from the first seed that
//!   answers (nodes, their core counts, the ring) and each request goes straight to the port of
//!   the core that owns the key on a replica (`base_port + 1 + shard`), so nothing is forwarded.
//!   The topology is fetched again every [`ClientOptions::topology_refresh`] and soon after a
//!   node could not be reached.
//! * **Pipelined.** Requests are futures: many may be in flight on one connection at once
//!   (each carries an id; answers come back in any order).
//! * **Timeouts.** Every request has a deadline ([`ClientOptions::timeout`]), which is also sent
//!   to the server. A write that times out has an *unknown* outcome.
//! * **Retries only where safe.** A read whose connection breaks is sent once more on a fresh
//!   connection, and a read whose replica cannot be reached (or whose fresh connection breaks
//!   too) goes to the next replica. A write
//!   goes to the next replica only when it could not be sent at all (no connection); once
//!   sent, it is never sent again.
//!
//! **Architecture Invariant:** this crate depends on `dynacore-proto` and a runtime, never on the
//! node or the storage engine; without the `glommio` feature it does not depend on glommio.
//! A test reads `cargo metadata` to keep it so.
#![deny(unsafe_code)]

pub mod api;
pub mod error;
#[cfg(feature = "glommio")]
mod glommio_driver;
#[cfg(feature = "tokio")]
mod tokio_driver;

pub use api::{ClientOptions, Siblings, Value, WriteOptions};
pub use dynacore_proto::topology::{ClusterView, MemberInfo, NodeDesc, NodeState};
pub use dynacore_proto::{Conflicts, ErrorCode, KeyCondition, Quorum, ReadRepair, Version};
pub use error::ClientError;
#[cfg(feature = "tokio")]
pub use tokio_driver::{Client, Pool};

/// The thread-per-core driver (feature `glommio`): the same API on Dynacore's runtime.
#[cfg(feature = "glommio")]
pub mod glommio {
    pub use crate::glommio_driver::{Client, ConnPool, Pool};
}
