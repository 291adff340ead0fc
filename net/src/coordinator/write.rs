//! A client's write: minted on a replica (this node, or passed to one), sent to the others,
//! answered at W acknowledgements; the rest goes on in the background until the deadline and
//! replicas that missed the write get hints.

use std::rc::Rc;
use std::time::{Duration, Instant};

use dynacore_proto::ring::{NodeId, Token};

use super::fan_out::{answer_early, Answers, Decision};
use super::forward::forward;
use super::quorum::{plan_write, Outcome, Target, WriteTally, W_DEFAULT};
use super::replicas::{apply_at, check_key, replicas_needed, write_unavailable, Copy};
use super::request::WriteRequest;
use crate::core::{Core, ShardOp};
use crate::storage::replica::{decode_version, version_bytes, StoreError};

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
        if v.len() > dynacore_proto::VALUE_BYTES_MAX {
            return Err(StoreError::ValueTooLarge(format!(
                "a value holds at most {} bytes, not {}",
                dynacore_proto::VALUE_BYTES_MAX,
                v.len()
            )));
        }
    }
    let deadline = Instant::now() + timeout;
    let cluster = core.cluster();
    let token = Token::of(&req.key);
    let rf = cluster.replication_factor;
    let w = replicas_needed(req.w, &cluster, W_DEFAULT)?;
    let expected = req.expected.as_deref().map(decode_version).transpose()?;
    let context = req.context.as_deref().map(decode_version).transpose()?;
    let replicas = cluster.replicas(token);
    if !replicas.contains(&cluster.own) && !req.forwarded {
        return forward(core, &cluster, &replicas, &req, w, deadline).await;
    }
    if req.is_conditional() {
        // A lightweight transaction: a Paxos round among the key's replicas.
        return super::paxos::transaction(core, &req, deadline).await;
    }
    // Mint the new version on this replica.
    let op = ShardOp::Write {
        key: req.key.clone(),
        value: req.value.clone(),
        ttl_ms: req.ttl_ms,
        expected,
        context,
    };
    let left = deadline.saturating_duration_since(Instant::now());
    let Some(object) = core.execute(op, left).await.into_object()? else {
        return Err(StoreError::Internal("a write returned no object".into()));
    };
    let version = version_bytes(&object.join());
    let mut copy = Copy::of(&req.key, &object)?;
    copy.expected = req.expected;
    let copy = Rc::new(copy);
    let own = cluster.own;
    // A stand-in keeps a hint without checking a condition: conditional writes count real
    // replicas only.
    let sloppy =
        core.replication().sloppy_quorum && core.hints().is_some() && copy.expected.is_none();
    let mut plan = plan_write(&cluster.ring, token, rf, sloppy, |n| {
        n == own || cluster.is_up(n)
    });
    // While ranges move, the key's pending replicas (its replicas once the move is done) get
    // the write too, and each one's acknowledgement is waited for beyond W (as Cassandra
    // learned in CASSANDRA-833: counting only the current owners loses writes when the move
    // completes).
    let pending = cluster.pending_replicas(token);
    for &p in &pending {
        if p == own || cluster.is_up(p) {
            plan.targets.push(Target::Replica(p));
        } else {
            plan.uncovered.push(p);
        }
    }
    let required = w.saturating_add(u8::try_from(pending.len()).unwrap_or(u8::MAX));
    let mut tally = WriteTally::new(plan, required);
    let targets = tally.targets();
    // This replica stored it above.
    let mut answers = Answers::spawn(
        targets.clone(),
        deadline,
        |i, &target| {
            let stored = target == Target::Replica(own);
            if stored {
                tally.ack(i);
            }
            stored
        },
        |_, target| {
            let (core, cluster, copy) = (core.clone(), cluster.clone(), copy.clone());
            async move {
                let hint_for = match target {
                    Target::Hinted { replica, .. } => Some(replica),
                    Target::Replica(_) => None,
                };
                apply_at(&core, &cluster, target.node(), hint_for, &copy, deadline).await
            }
        },
    );
    let background = core.clone();
    answer_early(core, "write", move |mut decision: Decision<Vec<u8>>| async move {
        let core = background;
        let mut refused: Option<Vec<u8>> = None;
        let mut refusers = Vec::new();
        let mut held = None;
        loop {
            // A failure is told once nothing more can come, so that it says how many
            // acknowledged.
            if let Some(outcome) = tally
                .outcome()
                .filter(|o| matches!(o, Outcome::Done(_)) || tally.pending() == 0)
            {
                decision.give(written(&outcome, &version, refused.as_ref()));
            }
            // Answered with acknowledgements still to come: waiting for them holds the copy,
            // within the core's budget for work after answers. Past it they are not awaited
            // (their requests are cancelled) and those replicas get hints.
            if !decision.is_open() && held.is_none() && tally.pending() > 0 {
                held = core.reserve_background(copy.bytes());
                if held.is_none() {
                    tally.expire();
                    break;
                }
            }
            let Some((i, answer)) = answers.next_or(|| tally.expire()).await else {
                break;
            };
            match answer {
                Ok(()) => tally.ack(i),
                Err(StoreError::ConditionFailed { current }) => {
                    tally.fail(i);
                    refusers.push(i);
                    refused = Some(current);
                }
                Err(e) => {
                    tracing::debug!(target = ?targets.get(i), error = %e, "a replica missed a write");
                    tally.fail(i);
                }
            }
        }
        drop(answers);
        drop(held);
        if decision.is_open() {
            // Decided by the last answer, or by the deadline.
            decision.give(match tally.outcome() {
                Some(outcome) => written(&outcome, &version, refused.as_ref()),
                None => Err(StoreError::Internal("a write ended undecided".into())),
            });
        }
        // Replicas that missed the write (down, failed, silent) get hints; a replica that
        // refused a conditional write does not, and a conditional write that was refused
        // (answered 412) leaves none at all.
        let Some(hints) = core.hints() else { return };
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
    })
    .await
}

/// The answer a decided write gives: its version, or why it failed (a refused condition says
/// the version that refused it).
fn written<T>(
    outcome: &Outcome<T>,
    version: &[u8],
    refused: Option<&Vec<u8>>,
) -> Result<Vec<u8>, StoreError> {
    match (outcome, refused) {
        (Outcome::Done(_), _) => Ok(version.to_vec()),
        (Outcome::Unavailable { .. }, Some(current)) => Err(StoreError::ConditionFailed {
            current: current.clone(),
        }),
        (&Outcome::Unavailable { acks, required }, None) => Err(write_unavailable(acks, required)),
    }
}
