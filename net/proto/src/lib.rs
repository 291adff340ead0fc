//! `dynacore-proto`: everything a Dynacore node and its clients must agree on, and nothing that
//! runs. No runtime (neither glommio nor tokio), no storage engine: the node
//! (`dynacore-net`), the SDK (`dynacore-client`) and any other driver build on it.
//!
//! Layout:
//! * [`fb`] — the flatbuffers schema's generated code (`schema/dynacore.fbs`, made by
//!   `schema/generate.sh` with the `flatbuffers` crate's flatc version; CI checks it).
//! * [`frame`] — `[u32 LE length][flatbuffer]` frames, their limit, verified parsing.
//! * [`build`] — request builders; [`reply`] — answer builders and decoders.
//! * [`api`] — the vocabulary: [`Quorum`], [`ReadRepair`], [`Conflicts`], [`Version`] and its
//!   hex form, [`ErrorCode`].
//! * [`ring`] — the hash ring, preference lists and the token → core map ([`ShardMap`]);
//!   [`topology`] — the cluster as a client sees it and where a key's requests go.
//! * [`connection`] — one client-side connection, sans IO (ids, framing, matching answers).
//!
//! Hard limits: keys 1..=256 bytes, values up to 10 MiB ([`dynacore_types`]); a frame body up
//! to [`FRAME_BYTES_MAX`] (a largest value plus 256 KiB), refused from its header beyond that.
//!
//! **Architecture Invariant:** this crate depends on no runtime and no engine; a test reads
//! `cargo metadata` to keep it so.
// unsafe_code is denied workspace-wide; only the generated flatbuffers code is allowed it.

#[allow(
    unsafe_code,
    unused_imports,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used
)]
#[rustfmt::skip]
mod dynacore_generated;

/// The schema's generated types (`dynacore.protocol` namespace).
pub use dynacore_generated::dynacore::protocol as fb;

pub mod allocate;
pub mod api;
pub mod auth;
pub mod build;
pub mod connection;
pub mod frame;
pub mod reply;
pub mod ring;
pub mod topology;
pub mod version;

pub use allocate::allocate_tokens;
pub use api::{Conflicts, ErrorCode, KeyCondition, Quorum, ReadRepair, Version};
pub use auth::{ClusterKey, Domain};
pub use dynacore_types::{Token, KEY_BYTES_MAX, VALUE_BYTES_MAX};
pub use frame::{
    encode_authenticated_frame, encode_frame, frame_header, parse_request, parse_response,
    split_frame, FrameHeader, ProtocolError, AUTH_TAG_BYTES, FRAME_BYTES_MAX, FRAME_HEADER_BYTES,
};
pub use ring::{NodeId, Ring, ShardMap};
pub use topology::{ClusterView, MemberInfo, NodeDesc, NodeState};
