//! A write that reaches a node which is not one of the key's replicas: passed (once) to the
//! first live replica, which coordinates it; its answer, acknowledgement counts included, comes
//! back as the client's.

use std::time::Instant;

use dynacore_client::ClientError;
use dynacore_proto::ring::{NodeId, Token};
use dynacore_proto::{build, fb, reply, Quorum};

use super::replicas::{ms_until, peer_error, reply_error};
use super::request::WriteRequest;
use crate::cluster::ClusterState;
use crate::core::Core;
use crate::storage::replica::StoreError;

/// Passes a write to the first live replica of its key (this node is not one).
pub(crate) async fn forward(
    core: &Core,
    cluster: &ClusterState,
    replicas: &[NodeId],
    req: &WriteRequest,
    w: u8,
    deadline: Instant,
) -> Result<Vec<u8>, StoreError> {
    let token = Token::of(&req.key);
    // The quorum as the client asked (the receiver resolves it against its own view of RF).
    let w_field = match req.w {
        Quorum::Default => None,
        Quorum::Quorum => Some(fb::Quorum::new(fb::QuorumKind::Quorum, 0)),
        Quorum::All => Some(fb::Quorum::new(fb::QuorumKind::All, 0)),
        Quorum::Count(_) => Some(fb::Quorum::new(fb::QuorumKind::Count, w)),
    };
    let mut last = None;
    for &node in replicas.iter().filter(|&&n| cluster.is_up(n)) {
        let Some(peer) = cluster.nodes.get(&node) else {
            continue;
        };
        core.metrics().passed_on();
        // A little less than ours, so that the receiver's answer (with its ack counts) comes
        // back before we give up.
        let timeout_ms = {
            let ms = ms_until(deadline);
            (ms - (ms / 10).min(100)).max(1)
        };
        let build = |id| match &req.value {
            Some(value) => build::put(
                id,
                &build::Put {
                    key: &req.key,
                    value,
                    ttl_ms: req.ttl_ms.unwrap_or(0),
                    expected_version: req.expected.as_deref(),
                    w: w_field,
                    timeout_ms,
                    context: req.context.as_deref(),
                    forwarded: true,
                    condition: req.condition.to_wire(),
                },
            ),
            None => build::delete_with(
                id,
                &build::Delete {
                    key: &req.key,
                    expected_version: req.expected.as_deref(),
                    w: w_field,
                    timeout_ms,
                    context: req.context.as_deref(),
                    forwarded: true,
                },
            ),
        };
        match core
            .peers()
            .call_once(peer.core_addr(token), &build, deadline)
            .await
        {
            Ok(body) => return reply::written(&body).map_err(reply_error),
            // Not sent at all: the next replica may take it.
            Err(e @ ClientError::Connect { .. }) => last = Some(e),
            // Sent, maybe applied: the outcome is unknown.
            Err(e) => return Err(peer_error(e)),
        }
    }
    Err(StoreError::Quorum {
        acks: 0,
        required: w,
        message: match last {
            Some(e) => format!("no replica of the key could take the write: {e}"),
            None => "no replica of the key is up".to_owned(),
        },
    })
}
