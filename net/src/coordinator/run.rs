//! The coordinator's runtime: a client's read or write on any core of any node, sent to the
//! key's replicas and answered after W acknowledgements or R replies. The decisions (quorums,
//! write plans, tallies, merges, repairs) are [`coordinator`](crate::coordinator)'s, with no
//! IO; this module moves the messages.
//!
//! * **Replicas** are reached on the core that holds the key: this node's over the channel
//!   mesh ([`Core::execute`]), other nodes' over this core's connections to their per-core
//!   ports ([`Core::peers`]).
//! * **Writes** are coordinated by a replica: it mints the new version with the DVV `update`
//!   of its own copy (a dot of its own id, so two coordinators never mint the same dot), stores
//!   it, and sends the result to the other replicas, which merge it by `sync`. A node that is
//!   not a replica of the key passes the write to the first live replica (once: the request
//!   is marked forwarded). The answer goes back at W acknowledgements; the rest of the write
//!   goes on in the background until the deadline, and replicas that failed or did not answer
//!   get hints.
//! * **Conditional writes** (`expected`) are checked on every replica: a replica whose copy
//!   holds a write the client did not see refuses. Fewer than W successes is
//!   `ConditionFailed`, with the version that refused (the coordinator's own copy may
//!   already hold the new value: it spreads as a sibling, as any write with an unknown
//!   outcome).
//! * **Reads** ask every replica for its copy and merge the first R answers by `sync`; in
//!   the default last-writer-wins mode the newest sibling is the value, in siblings mode every
//!   live concurrent value is returned. Replicas whose copy differs from the merge (including
//!   those that answer late, until the deadline) get the merge written back (read repair), in
//!   the background or, with `blocking`, before the answer.

use std::rc::Rc;
use std::time::{Duration, Instant};

use dynacore_engine::{object, Object};
use dynacore_runtime as runtime;

use crate::cluster::ClusterState;
use crate::coordinator::quorum::{
    plan_write, required, Outcome, ReadTally, Target, WriteTally, R_DEFAULT, W_DEFAULT,
};
use crate::core::{Core, ShardOp};
use crate::storage::hints::now_ms;
use crate::storage::replica::{decode_version, version_bytes, StoreError};
use dynacore_client::ClientError;
use dynacore_proto::ring::{NodeId, Token};
use dynacore_proto::{build, fb, parse_response};
use dynacore_proto::{Conflicts, Quorum, ReadRepair};

/// A client's write.
#[derive(Clone, Debug)]
pub struct WriteRequest {
    /// The key.
    pub key: Vec<u8>,
    /// The value, or `None` for a delete.
    pub value: Option<Vec<u8>>,
    /// Expiry in seconds from now.
    pub ttl_seconds: Option<u64>,
    /// Write only if the key's version is still this one (encoded).
    pub expected: Option<Vec<u8>>,
    /// The causal context the write builds on (encoded; `None`: blind).
    pub context: Option<Vec<u8>>,
    /// Acknowledgements required.
    pub w: Quorum,
    /// Passed on by another node: coordinate it here, never pass it on.
    pub forwarded: bool,
}

/// A client's read.
#[derive(Clone, Debug)]
pub struct ReadRequest {
    /// The key.
    pub key: Vec<u8>,
    /// Replies required.
    pub r: Quorum,
    /// Read repair.
    pub read_repair: ReadRepair,
    /// One value or all concurrent ones.
    pub conflicts: Conflicts,
}

/// What a read found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadResult {
    /// The value(s), newest first, each with its write time (ms since the Unix epoch): one in
    /// last-writer-wins mode, every live sibling in siblings mode.
    pub values: Vec<(Vec<u8>, u64)>,
    /// The merged version (encoded): the context for a write that replaces them.
    pub version: Vec<u8>,
}

/// A write that did not reach W in time: its outcome is unknown.
fn write_unavailable(acks: u8, required: u8) -> StoreError {
    StoreError::Quorum {
        acks,
        required,
        message: format!(
            "{acks} of {required} replicas acknowledged in time; the write may exist on fewer replicas and spread later"
        ),
    }
}

/// A read that did not reach R in time.
fn read_unavailable(acks: u8, required: u8) -> StoreError {
    StoreError::Quorum {
        acks,
        required,
        message: format!("{acks} of {required} replicas answered in time"),
    }
}

/// Refuses a key the engine would refuse, before any replica is asked.
fn check_key(key: &[u8]) -> Result<(), StoreError> {
    if key.is_empty() || key.len() > dynacore_engine::KEY_BYTES_MAX {
        return Err(StoreError::InvalidKey(format!(
            "a key holds 1 to {} bytes, not {}",
            dynacore_engine::KEY_BYTES_MAX,
            key.len()
        )));
    }
    Ok(())
}

fn ms_until(deadline: Instant) -> u32 {
    u32::try_from(
        deadline
            .saturating_duration_since(Instant::now())
            .as_millis(),
    )
    .unwrap_or(u32::MAX)
    .max(1)
}

/// What `result` of a merged object shows a client, or `None` when nothing is live.
fn present(merged: &Object, siblings: bool) -> Option<ReadResult> {
    let now = now_ms();
    let version = version_bytes(&merged.join());
    if siblings {
        let mut live: Vec<_> = merged.values().filter(|s| s.is_live_at(now)).collect();
        live.sort_by_key(|s| std::cmp::Reverse(s.hlc));
        let values: Vec<_> = live
            .into_iter()
            .filter_map(|s| s.value.clone().map(|v| (v, s.hlc.physical_ms())))
            .collect();
        (!values.is_empty()).then_some(ReadResult { values, version })
    } else {
        // The newest sibling decides: a newer tombstone or expired value hides older values.
        let newest = merged.values().max_by_key(|s| s.hlc)?;
        let value = newest.value.clone().filter(|_| newest.is_live_at(now))?;
        Some(ReadResult {
            values: vec![(value, newest.hlc.physical_ms())],
            version,
        })
    }
}

fn peer_error(e: ClientError) -> StoreError {
    match e {
        ClientError::Timeout => StoreError::Timeout("the replica did not answer in time".into()),
        ClientError::ConditionFailed { current } => {
            StoreError::ConditionFailed { current: current.0 }
        }
        ClientError::Server {
            code: dynacore_client::ErrorCode::ConditionFailed,
            ..
        } => StoreError::ConditionFailed {
            current: Vec::new(),
        },
        other => StoreError::Unavailable(format!("replica: {other}")),
    }
}

/// The error a peer's error response means.
fn response_error(e: &fb::ErrorResponse<'_>) -> StoreError {
    let message = e.message().unwrap_or_default().to_owned();
    match e.code() {
        fb::ErrorCode::ConditionFailed => StoreError::ConditionFailed {
            current: e
                .current_version()
                .map(|v| v.bytes().to_vec())
                .unwrap_or_default(),
        },
        fb::ErrorCode::Unavailable if e.required() > 0 => StoreError::Quorum {
            acks: e.acks(),
            required: e.required(),
            message,
        },
        fb::ErrorCode::InvalidKey => StoreError::InvalidKey(message),
        fb::ErrorCode::ValueTooLarge => StoreError::ValueTooLarge(message),
        fb::ErrorCode::BadRequest => StoreError::BadRequest(message),
        fb::ErrorCode::Timeout => StoreError::Timeout(message),
        fb::ErrorCode::Internal => StoreError::Internal(message),
        _ => StoreError::Unavailable(message),
    }
}

/// A replica's object answer.
fn object_reply(body: &[u8]) -> Result<Option<Object>, StoreError> {
    let resp = parse_response(body)
        .map_err(|e| StoreError::Unavailable(format!("a replica's answer is malformed: {e}")))?;
    if let Some(e) = resp.reply_as_error() {
        return Err(response_error(&e));
    }
    let r = resp
        .reply_as_replica_object()
        .ok_or_else(|| StoreError::Unavailable("a replica answered with another reply".into()))?;
    if !r.found() {
        return Ok(None);
    }
    let version = r.version().map(|v| v.bytes()).unwrap_or_default();
    let values = r.values().map(|v| v.bytes()).unwrap_or_default();
    object::from_parts(version, values)
        .map(Some)
        .map_err(|e| StoreError::Unavailable(format!("a replica's object is malformed: {e}")))
}

/// Reads `node`'s copy of `key`.
async fn read_at(
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
    object_reply(&body)
}

/// A copy of a write to send: the object's parts, encoded once.
struct Copy {
    key: Vec<u8>,
    object: Object,
    version: Vec<u8>,
    values: Vec<u8>,
    expected: Option<Vec<u8>>,
}

/// Sends `copy` to `node` (to store as a hint for `hint_for` when given).
async fn apply_at(
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
    applied_reply(&body)
}

/// A replica operation (idempotent: a read, or a merge) sent to `addr`, sent once more when
/// the pooled connection turns out to be broken (the peer restarted since it was opened).
async fn call_idempotent(
    core: &Core,
    addr: std::net::SocketAddr,
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

/// A replica's answer to an apply: its acknowledgement (the merged version only), or its error.
fn applied_reply(body: &[u8]) -> Result<(), StoreError> {
    let resp = parse_response(body)
        .map_err(|e| StoreError::Unavailable(format!("a replica's answer is malformed: {e}")))?;
    if let Some(e) = resp.reply_as_error() {
        return Err(response_error(&e));
    }
    match resp.reply_as_replica_object() {
        Some(r) if r.found() => Ok(()),
        _ => Err(StoreError::Unavailable(
            "a replica answered an apply with another reply".into(),
        )),
    }
}

/// Coordinates a client's write; returns the new version (encoded).
///
/// # Errors
/// [`StoreError::BadRequest`] for a bad quorum or version; [`StoreError::ConditionFailed`];
/// [`StoreError::Quorum`] when fewer than W replicas acknowledged in time (outcome unknown);
/// the local replica's errors.
pub async fn write(
    core: &Core,
    req: WriteRequest,
    timeout: Duration,
) -> Result<Vec<u8>, StoreError> {
    check_key(&req.key)?;
    if let Some(v) = &req.value {
        if v.len() > dynacore_engine::VALUE_BYTES_MAX {
            return Err(StoreError::ValueTooLarge(format!(
                "a value holds at most {} bytes, not {}",
                dynacore_engine::VALUE_BYTES_MAX,
                v.len()
            )));
        }
    }
    let deadline = Instant::now() + timeout;
    let cluster = core.cluster();
    let token = Token::of(&req.key);
    let rf = cluster.replication_factor;
    let w = required(req.w, rf, W_DEFAULT).map_err(|e| StoreError::BadRequest(e.to_string()))?;
    let expected = req.expected.as_deref().map(decode_version).transpose()?;
    let context = req.context.as_deref().map(decode_version).transpose()?;
    let replicas = cluster.replicas(token);
    if !replicas.contains(&cluster.own) && !req.forwarded {
        return forward(core, &cluster, &replicas, &req, w, deadline).await;
    }
    // Mint the new version on this replica.
    let op = ShardOp::Write {
        key: req.key.clone(),
        value: req.value.clone(),
        ttl_seconds: req.ttl_seconds,
        expected,
        context,
    };
    let left = deadline.saturating_duration_since(Instant::now());
    let Some(object) = core.execute(op, left).await.into_object()? else {
        return Err(StoreError::Internal("a write returned no object".into()));
    };
    let version = version_bytes(&object.join());
    let (parts_version, parts_values) =
        object::to_parts(&object).map_err(|e| StoreError::Internal(e.to_string()))?;
    let copy = Rc::new(Copy {
        key: req.key,
        object,
        version: parts_version,
        values: parts_values,
        expected: req.expected,
    });
    let own = cluster.own;
    // A stand-in keeps a hint without checking a condition: conditional writes count real
    // replicas only.
    let sloppy =
        core.replication().sloppy_quorum && core.hints().is_some() && copy.expected.is_none();
    let plan = plan_write(&cluster.ring, token, rf, sloppy, |n| {
        n == own || cluster.is_up(n)
    });
    let mut tally = WriteTally::new(plan, w);
    let targets = tally.targets();
    let (answers_tx, answers) = flume::unbounded::<(usize, Result<(), StoreError>)>();
    for (i, &target) in targets.iter().enumerate() {
        if target == Target::Replica(own) {
            // Stored above.
            tally.ack(i);
            continue;
        }
        let (core2, cluster2, copy2, tx) = (
            core.clone(),
            cluster.clone(),
            copy.clone(),
            answers_tx.clone(),
        );
        runtime::spawn_detached(async move {
            let hint_for = match target {
                Target::Hinted { replica, .. } => Some(replica),
                Target::Replica(_) => None,
            };
            let r = apply_at(&core2, &cluster2, target.node(), hint_for, &copy2, deadline).await;
            let _ = tx.send((i, r));
        });
    }
    drop(answers_tx);
    // The rest runs in its own task: it answers at the decision, then waits for the late
    // replicas until the deadline and keeps hints for the ones that missed the write.
    let (decided_tx, decided) = flume::bounded::<Result<Vec<u8>, StoreError>>(1);
    let work = core.shared().hold();
    let core2 = core.clone();
    runtime::spawn_detached(async move {
        let _work = work;
        let mut refused: Option<Vec<u8>> = None;
        let mut refusers = Vec::new();
        let mut decided_tx = Some(decided_tx);
        loop {
            // A failure is told once nothing more can come, so that it says how many
            // acknowledged.
            let outcome = tally
                .outcome()
                .filter(|o| matches!(o, Outcome::Done(_)) || tally.pending() == 0);
            if let Some(outcome) = outcome {
                if let Some(tx) = decided_tx.take() {
                    let answer = match outcome {
                        Outcome::Done(_) => Ok(version.clone()),
                        Outcome::Unavailable { acks, required } => match refused.clone() {
                            Some(current) => Err(StoreError::ConditionFailed { current }),
                            None => Err(write_unavailable(acks, required)),
                        },
                    };
                    let _ = tx.send(answer);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match runtime::timeout(left, answers.recv_async()).await {
                Some(Ok((i, Ok(())))) => tally.ack(i),
                Some(Ok((i, Err(StoreError::ConditionFailed { current })))) => {
                    tally.fail(i);
                    refusers.push(i);
                    refused = Some(current);
                }
                Some(Ok((i, Err(e)))) => {
                    tracing::debug!(target = ?targets.get(i), error = %e, "a replica missed a write");
                    tally.fail(i);
                }
                // Every target answered, or the deadline passed.
                Some(Err(_)) => break,
                None => {
                    tally.expire();
                    break;
                }
            }
        }
        if let Some(tx) = decided_tx.take() {
            // Decided by the last answer, or by the deadline.
            let answer = match tally.outcome() {
                Some(Outcome::Done(_)) => Ok(version.clone()),
                Some(Outcome::Unavailable { acks, required }) => match refused.clone() {
                    Some(current) => Err(StoreError::ConditionFailed { current }),
                    None => Err(write_unavailable(acks, required)),
                },
                None => Err(StoreError::Internal("a write ended undecided".into())),
            };
            let _ = tx.send(answer);
        }
        // Replicas that missed the write (down, failed, silent) get hints; a replica that
        // refused a conditional write does not, and a conditional write that was refused
        // (answered 412) leaves none at all.
        let Some(hints) = core2.hints() else { return };
        if refused.is_some() && !matches!(tally.outcome(), Some(Outcome::Done(_))) {
            return;
        }
        let refused_nodes: Vec<NodeId> = refusers
            .iter()
            .filter_map(|&i| targets.get(i))
            .map(|t| match *t {
                Target::Replica(n) | Target::Hinted { replica: n, .. } => n,
            })
            .collect();
        for replica in tally.hints() {
            if replica == own || refused_nodes.contains(&replica) {
                continue;
            }
            if let Err(e) = hints.store(replica, &copy.key, &copy.object).await {
                tracing::warn!(%replica, error = %e, "could not keep a hint");
            }
        }
    });
    match decided.recv_async().await {
        Ok(answer) => answer,
        Err(_) => Err(StoreError::Internal(
            "the write's coordinator stopped".into(),
        )),
    }
}

/// Passes a write to the first live replica of its key (this node is not one).
async fn forward(
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
                    ttl_seconds: req.ttl_seconds.unwrap_or(0),
                    expected_version: req.expected.as_deref(),
                    w: w_field,
                    timeout_ms,
                    context: req.context.as_deref(),
                    forwarded: true,
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
            Ok(body) => {
                let resp = parse_response(&body).map_err(|e| {
                    StoreError::Unavailable(format!("a replica's answer is malformed: {e}"))
                })?;
                if let Some(e) = resp.reply_as_error() {
                    return Err(response_error(&e));
                }
                let version = resp
                    .reply_as_put()
                    .and_then(|p| p.version())
                    .or_else(|| resp.reply_as_delete().and_then(|d| d.version()));
                return version.map(|v| v.bytes().to_vec()).ok_or_else(|| {
                    StoreError::Unavailable("a replica answered with another reply".into())
                });
            }
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

/// Coordinates a client's read: `None` when the key is absent, deleted or expired.
///
/// # Errors
/// [`StoreError::BadRequest`] for a bad quorum; [`StoreError::Quorum`] when fewer than R
/// replicas answered in time.
pub async fn read(
    core: &Core,
    req: ReadRequest,
    timeout: Duration,
) -> Result<Option<ReadResult>, StoreError> {
    check_key(&req.key)?;
    let deadline = Instant::now() + timeout;
    let cluster = core.cluster();
    let token = Token::of(&req.key);
    let rf = cluster.replication_factor;
    let r = required(req.r, rf, R_DEFAULT).map_err(|e| StoreError::BadRequest(e.to_string()))?;
    let siblings = match req.conflicts {
        Conflicts::Default => core.replication().siblings,
        Conflicts::Lww => false,
        Conflicts::Siblings => true,
    };
    let replicas = cluster.replicas(token);
    let mut tally = ReadTally::new(replicas.clone(), r);
    let key = Rc::new(req.key);
    let (answers_tx, answers) = flume::unbounded::<(usize, Result<Option<Object>, StoreError>)>();
    for (i, &node) in replicas.iter().enumerate() {
        if node != cluster.own && !cluster.is_up(node) {
            tally.fail(i);
            continue;
        }
        let (core2, cluster2, key2, tx) = (
            core.clone(),
            cluster.clone(),
            key.clone(),
            answers_tx.clone(),
        );
        runtime::spawn_detached(async move {
            let r = read_at(&core2, &cluster2, node, &key2, deadline).await;
            let _ = tx.send((i, r));
        });
    }
    drop(answers_tx);
    let mode = req.read_repair;
    let (decided_tx, decided) = flume::bounded::<Result<Option<Object>, StoreError>>(1);
    let work = core.shared().hold();
    let core2 = core.clone();
    runtime::spawn_detached(async move {
        let _work = work;
        let mut decided_tx = Some(decided_tx);
        let mut repaired: Vec<NodeId> = Vec::new();
        let mut merged_at_answer: Option<Object> = None;
        loop {
            // A failure is told once nothing more can come, so that it says how many
            // answered.
            let outcome = decided_tx.as_ref().and_then(|_| {
                tally
                    .outcome()
                    .filter(|o| matches!(o, Outcome::Done(_)) || tally.pending() == 0)
            });
            if let Some(outcome) = outcome {
                if let Some(tx) = decided_tx.take() {
                    match outcome {
                        Outcome::Done(merged) => {
                            if mode == ReadRepair::Blocking {
                                let stale = tally.repairs(merged.as_ref());
                                if let Some(m) = &merged {
                                    repair(&core2, &cluster, &key, m, &stale, deadline).await;
                                }
                                repaired = stale;
                            }
                            merged_at_answer.clone_from(&merged);
                            let _ = tx.send(Ok(merged));
                        }
                        Outcome::Unavailable { acks, required } => {
                            let _ = tx.send(Err(read_unavailable(acks, required)));
                            return;
                        }
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match runtime::timeout(left, answers.recv_async()).await {
                Some(Ok((i, Ok(object)))) => tally.reply(i, object),
                Some(Ok((i, Err(e)))) => {
                    tracing::debug!(replica = ?replicas.get(i), error = %e, "a replica's read failed");
                    tally.fail(i);
                }
                // Every replica answered, or the deadline passed.
                Some(Err(_)) => break,
                None => {
                    tally.expire();
                    break;
                }
            }
        }
        if let Some(tx) = decided_tx.take() {
            let answer = match tally.outcome() {
                Some(Outcome::Done(m)) => Ok(m),
                Some(Outcome::Unavailable { acks, required }) => {
                    Err(read_unavailable(acks, required))
                }
                None => Err(StoreError::Internal("a read ended undecided".into())),
            };
            let failed = answer.is_err();
            let _ = tx.send(answer);
            if failed {
                return;
            }
        }
        if mode == ReadRepair::Off {
            return;
        }
        // Every copy that came back, late ones included: stale replicas get the merge.
        let merged = tally.merged();
        let Some(m) = &merged else { return };
        let mut stale = tally.repairs(Some(m));
        let unchanged = merged_at_answer.as_ref().is_some_and(|a| a.equal(m));
        if unchanged {
            stale.retain(|n| !repaired.contains(n));
        }
        let until = Instant::now() + timeout;
        repair(&core2, &cluster, &key, m, &stale, until).await;
    });
    let merged = match decided.recv_async().await {
        Ok(answer) => answer?,
        Err(_) => {
            return Err(StoreError::Internal(
                "the read's coordinator stopped".into(),
            ))
        }
    };
    Ok(merged.as_ref().and_then(|m| present(m, siblings)))
}

/// Writes `merged` back to each of `stale`, in parallel, waiting for all (until `deadline`).
async fn repair(
    core: &Core,
    cluster: &std::sync::Arc<ClusterState>,
    key: &[u8],
    merged: &Object,
    stale: &[NodeId],
    deadline: Instant,
) {
    if stale.is_empty() {
        return;
    }
    let Ok((version, values)) = object::to_parts(merged) else {
        return;
    };
    let copy = Rc::new(Copy {
        key: key.to_vec(),
        object: merged.clone(),
        version,
        values,
        expected: None,
    });
    let tasks: Vec<_> = stale
        .iter()
        .map(|&node| {
            let (core, cluster, copy) = (core.clone(), cluster.clone(), copy.clone());
            runtime::spawn(async move {
                let r = apply_at(&core, &cluster, node, None, &copy, deadline).await;
                if let Err(e) = &r {
                    tracing::debug!(%node, error = %e, "a read repair failed");
                }
                r.is_ok()
            })
        })
        .collect();
    for t in tasks {
        if t.await {
            core.metrics().read_repaired();
        }
    }
}

/// Handles a peer's `ReplicaApply` that asks this node to keep a hint for `target`.
///
/// # Errors
/// [`StoreError::Unavailable`] when hinted handoff is off or the target's hints are full.
pub async fn store_hint(
    core: &Core,
    target: NodeId,
    key: &[u8],
    object: &Object,
) -> Result<(), StoreError> {
    object
        .check()
        .map_err(|e| StoreError::BadRequest(format!("bad object: {e}")))?;
    check_key(key)?;
    let cluster = core.cluster();
    if target == cluster.own || !cluster.nodes.contains_key(&target) {
        return Err(StoreError::BadRequest(format!(
            "a hint for node {target}, which is this node or not in the ring"
        )));
    }
    match core.hints() {
        Some(hints) => hints.store(target, key, object).await,
        None => Err(StoreError::Unavailable(
            "hinted handoff is off on this node".into(),
        )),
    }
}

/// Hands this core's hints to their targets while the core runs: every second, the targets
/// that are up and have hints get them, paced at the configured rate.
pub async fn replay_hints(core: Core) {
    let Some(hints) = core.hints().cloned() else {
        return;
    };
    let mut pacer = crate::storage::hints::Pacer::new(hints.limits().replay_per_second);
    let publish = |hints: &crate::storage::hints::HintStore| {
        let pending = hints.pending();
        let c = hints.counters();
        core.metrics().set_hints(crate::metrics::HintGauges {
            pending: pending.values().map(|p| p.hints).sum(),
            pending_bytes: pending.values().map(|p| p.bytes).sum(),
            stored: c.stored,
            replayed: c.replayed,
            dropped: c.dropped,
        });
    };
    loop {
        publish(&hints);
        runtime::sleep(Duration::from_secs(1)).await;
        if core.shared().is_closing() {
            return;
        }
        publish(&hints);
        let cluster = core.cluster();
        let targets: std::collections::HashSet<NodeId> = hints
            .pending()
            .keys()
            .copied()
            .filter(|&n| n != cluster.own && cluster.is_up(n))
            .collect();
        if targets.is_empty() {
            continue;
        }
        let batch = match hints.due(&targets, 1024).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "reading hints failed");
                continue;
            }
        };
        let mut failed: std::collections::HashSet<NodeId> = std::collections::HashSet::new();
        for hint in batch {
            if failed.contains(&hint.target) || core.shared().is_closing() {
                continue;
            }
            pacer.wait().await;
            let Ok((version, values)) = object::to_parts(&hint.object) else {
                continue;
            };
            let copy = Copy {
                key: hint.key.clone(),
                object: hint.object.clone(),
                version,
                values,
                expected: None,
            };
            let deadline = Instant::now() + core.default_timeout();
            let _work = core.shared().hold();
            match apply_at(&core, &cluster, hint.target, None, &copy, deadline).await {
                Ok(()) => {
                    if let Err(e) = hints.done(&hint).await {
                        tracing::warn!(error = %e, "deleting a handed-over hint failed");
                    }
                }
                Err(e) => {
                    tracing::debug!(target = %hint.target, error = %e, "handing over a hint failed");
                    failed.insert(hint.target);
                }
            }
        }
    }
}
