//! Reaching one replica of a key: this node's on the core that holds the key (in process,
//! [`Core::execute`]), another node's on its per-core port over this core's pooled connection
//! ([`Core::peers`]); and what their answers and failures mean to a coordinator.

use std::net::SocketAddr;
use std::time::Instant;

use dynacore_client::ClientError;
use dynacore_engine::{object, Object};
use dynacore_proto::reply::{self, ReplyError, ServerError};
use dynacore_proto::ring::{NodeId, Token};
use dynacore_proto::{build, ErrorCode, Quorum, KEY_BYTES_MAX};

use super::quorum::required;
use crate::cluster::ClusterState;
use crate::core::{Core, ShardOp};
use crate::storage::replica::{decode_version, StoreError};

/// A write that did not reach W in time: its outcome is unknown.
pub(crate) fn write_unavailable(acks: u8, required: u8) -> StoreError {
    StoreError::Quorum {
        acks,
        required,
        message: format!(
            "{acks} of {required} replicas acknowledged in time; the write may exist on fewer replicas and spread later"
        ),
    }
}

/// A read that did not reach R in time.
pub(crate) fn read_unavailable(acks: u8, required: u8) -> StoreError {
    StoreError::Quorum {
        acks,
        required,
        message: format!("{acks} of {required} replicas answered in time"),
    }
}

/// How many replicas a request needs, or why it cannot be served here now.
///
/// A count beyond the configured replication factor is a bad request. A count the cluster
/// could give but this node cannot reach now — the ring holds fewer nodes, or this node has not
/// yet learned the ring from its seeds — is `Unavailable` (503), as a down replica would be.
/// Defaults, `quorum` and `all` follow the replicas the ring holds (a node alone by
/// configuration serves with one).
pub(crate) fn replicas_needed(
    q: Quorum,
    cluster: &ClusterState,
    default: u8,
) -> Result<u8, StoreError> {
    if !cluster.ring_known {
        return Err(StoreError::Unavailable(
            "this node has not yet learned the cluster's ring from its seeds".into(),
        ));
    }
    let rf = cluster.replication_factor;
    match q {
        Quorum::Count(n) if n > rf && n <= cluster.configured_rf => Err(StoreError::Quorum {
            acks: 0,
            required: n,
            message: format!("{n} replicas asked for, but the ring holds {rf} nodes now"),
        }),
        q => required(q, rf, default).map_err(|e| StoreError::BadRequest(e.to_string())),
    }
}

/// Refuses a key the engine would refuse, before any replica is asked.
pub(crate) fn check_key(key: &[u8]) -> Result<(), StoreError> {
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err(StoreError::InvalidKey(format!(
            "a key holds 1 to {KEY_BYTES_MAX} bytes, not {}",
            key.len()
        )));
    }
    Ok(())
}

/// Milliseconds left until `deadline` (at least 1), as a request's timeout field.
pub(crate) fn ms_until(deadline: Instant) -> u32 {
    u32::try_from(
        deadline
            .saturating_duration_since(Instant::now())
            .as_millis(),
    )
    .unwrap_or(u32::MAX)
    .max(1)
}

/// What a failed call to a peer means: its timeout, its refused condition, or a replica that
/// could not be used.
pub(crate) fn peer_error(e: ClientError) -> StoreError {
    match e {
        ClientError::Timeout => StoreError::Timeout("the replica did not answer in time".into()),
        ClientError::ConditionFailed { current } => {
            StoreError::ConditionFailed { current: current.0 }
        }
        ClientError::Server {
            code: ErrorCode::ConditionFailed,
            ..
        } => StoreError::ConditionFailed {
            current: Vec::new(),
        },
        other => StoreError::Unavailable(format!("replica: {other}")),
    }
}

/// What a peer's answer that could not be used means.
pub(crate) fn reply_error(e: ReplyError) -> StoreError {
    let s = match e {
        ReplyError::Malformed(m) => {
            return StoreError::Unavailable(format!("a replica's answer is malformed: {m}"))
        }
        ReplyError::Server(s) => s,
    };
    let ServerError {
        code,
        message,
        acks,
        required,
        current_version,
    } = s;
    match code {
        ErrorCode::ConditionFailed => StoreError::ConditionFailed {
            current: current_version.unwrap_or_default(),
        },
        ErrorCode::Unavailable if required > 0 => StoreError::Quorum {
            acks,
            required,
            message,
        },
        ErrorCode::InvalidKey => StoreError::InvalidKey(message),
        ErrorCode::ValueTooLarge => StoreError::ValueTooLarge(message),
        ErrorCode::BadRequest => StoreError::BadRequest(message),
        ErrorCode::Timeout => StoreError::Timeout(message),
        ErrorCode::Internal => StoreError::Internal(message),
        _ => StoreError::Unavailable(message),
    }
}

/// Reads `node`'s copy of `key`.
pub(crate) async fn read_at(
    core: &Core,
    cluster: &ClusterState,
    node: NodeId,
    key: &[u8],
    deadline: Instant,
) -> Result<Option<Object>, StoreError> {
    if node == cluster.own {
        let left = deadline.saturating_duration_since(Instant::now());
        return core
            .execute(ShardOp::ReplicaRead { key: key.to_vec() }, left)
            .await
            .into_object();
    }
    let Some(peer) = cluster.nodes.get(&node) else {
        return Err(StoreError::Unavailable(format!(
            "node {node} is not in the ring"
        )));
    };
    let addr = peer.core_addr(Token::of(key));
    let timeout_ms = ms_until(deadline);
    let body = call_idempotent(
        core,
        addr,
        &|id| build::replica_read(id, timeout_ms, key),
        deadline,
    )
    .await?;
    let Some((version, values)) = reply::replica_object(&body).map_err(reply_error)? else {
        return Ok(None);
    };
    object::from_parts(&version, &values)
        .map(Some)
        .map_err(|e| StoreError::Unavailable(format!("a replica's object is malformed: {e}")))
}

/// A copy of a write to send: the object's parts, encoded once.
#[derive(Debug)]
pub(crate) struct Copy {
    pub(crate) key: Vec<u8>,
    pub(crate) object: Object,
    pub(crate) version: Vec<u8>,
    pub(crate) values: Vec<u8>,
    pub(crate) expected: Option<Vec<u8>>,
}

impl Copy {
    /// About the bytes it holds (the object and its encoding).
    pub(crate) fn bytes(&self) -> usize {
        2 * (self.values.len() + self.version.len()) + self.key.len()
    }

    /// `object` of `key` to send as it is (no condition).
    pub(crate) fn of(key: &[u8], object: &Object) -> Result<Copy, StoreError> {
        let (version, values) =
            object::to_parts(object).map_err(|e| StoreError::Internal(e.to_string()))?;
        Ok(Copy {
            key: key.to_vec(),
            object: object.clone(),
            version,
            values,
            expected: None,
        })
    }
}

/// Sends `copy` to `node` (to store as a hint for `hint_for` when given).
pub(crate) async fn apply_at(
    core: &Core,
    cluster: &ClusterState,
    node: NodeId,
    hint_for: Option<NodeId>,
    copy: &Copy,
    deadline: Instant,
) -> Result<(), StoreError> {
    if node == cluster.own {
        if let Some(target) = hint_for {
            return match core.hints() {
                Some(hints) => hints.store(target, &copy.key, &copy.object).await,
                None => Err(StoreError::Unavailable("hinted handoff is off".into())),
            };
        }
        let expected = copy.expected.as_deref().map(decode_version).transpose()?;
        let left = deadline.saturating_duration_since(Instant::now());
        let op = ShardOp::ReplicaApply {
            key: copy.key.clone(),
            object: copy.object.clone(),
            expected,
        };
        return core.execute(op, left).await.into_object().map(drop);
    }
    let Some(peer) = cluster.nodes.get(&node) else {
        return Err(StoreError::Unavailable(format!(
            "node {node} is not in the ring"
        )));
    };
    let addr = peer.core_addr(Token::of(&copy.key));
    let timeout_ms = ms_until(deadline);
    let body = call_idempotent(
        core,
        addr,
        &|id| {
            build::replica_apply_with(
                id,
                &build::ReplicaApply {
                    key: &copy.key,
                    version: &copy.version,
                    values: &copy.values,
                    expected_version: copy.expected.as_deref(),
                    hint_for: hint_for.map_or(0, |n| n.0),
                    timeout_ms,
                },
            )
        },
        deadline,
    )
    .await?;
    reply::replica_applied(&body).map_err(reply_error)
}

/// A replica operation (idempotent: a read, or a merge) sent to `addr`, sent once more when
/// the pooled connection turns out to be broken (the peer restarted since it was opened).
pub(crate) async fn call_idempotent(
    core: &Core,
    addr: SocketAddr,
    build: &impl Fn(u64) -> Vec<u8>,
    deadline: Instant,
) -> Result<Vec<u8>, StoreError> {
    match core.peers().call_once(addr, build, deadline).await {
        Err(ClientError::Io(_)) => core
            .peers()
            .call_once(addr, build, deadline)
            .await
            .map_err(peer_error),
        other => other.map_err(peer_error),
    }
}
