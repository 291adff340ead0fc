//! `dynacore-net`: everything of Dynacore that crosses a core or a wire — the flatbuffers
//! protocol, the per-core servers (binary, HTTP), the ring and vnode→core map, the quorum
//! coordinator, hinted handoff, anti-entropy, membership, the client SDK and the `dynacore`
//! binary.
//!
//! Empty today: it is built by the node and cluster issues. See the README's status table.
#![forbid(unsafe_code)]
