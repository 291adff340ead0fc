//! `dynacore-net`: everything of Dynacore that crosses a core or a wire — the flatbuffers
//! protocol, the per-core servers (binary, HTTP), the ring and vnode→core map, the quorum
//! coordinator, hinted handoff, anti-entropy, membership, the client SDK and the `dynacore`
//! binary.
//!
//! Built so far: [`ring`], the sans-IO hash ring (vnode tokens, ownership, preference lists, the
//! vnode → core map), [`protocol`], the frame codec and the flatbuffers schema's generated
//! code, [`http`], the HTTP API's request reader, [`store`], what a request does to one
//! shard, [`dispatch`], a binary-protocol request answered through it, and [`server`], the
//! per-core binary server. The rest comes with the node and cluster issues; see the README's status table.
// unsafe_code is denied workspace-wide; only the generated flatbuffers code is allowed it.

pub mod client;
pub mod cluster;
pub mod coordinate;
pub mod coordinator;
pub mod cores;
pub mod dispatch;
pub mod gossip;
pub mod hints;
pub mod http;
pub mod httpd;
pub mod local_cluster;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod ring;
pub mod server;
pub mod store;

#[cfg(test)]
mod test_util;
