//! Lightweight transactions: a conditional write (a version that must still be current, or a
//! key that must be absent or present) runs a Paxos round among the key's replicas, as
//! Cassandra's and ScyllaDB's do, so that conditional writes on a key are linearizable:
//!
//! 1. **Prepare** a ballot (the coordinator's clock with its core's index in the low bits,
//!    then its node id: unique to one core of one node) with every replica; a
//!    majority must promise it (a replica promises a ballot above every one it promised).
//! 2. A promise may carry a proposal accepted and not yet committed (above the latest commit
//!    any promise saw): the round that left it is finished first — proposed again under this
//!    ballot and committed — and the transaction starts over.
//! 3. **Read**: the key's current value is the merge of the promising majority's copies.
//! 4. **Check** the condition against it: a failed condition is `ConditionFailed` with the
//!    current version, and nothing is written anywhere.
//! 5. **Mint** the new version on this replica (a dot of its transaction actor, not stored) and
//!    **propose** it; a majority must accept it (a replica accepts unless it promised a higher
//!    ballot).
//! 6. **Commit**: every replica merges it into its copy and records the commit; the answer
//!    comes once a majority has.
//!
//! A refusal (a higher ballot promised elsewhere) means another transaction is running: this
//! one waits a little and starts over with a higher ballot, until its deadline. Plain writes
//! do not take part: see `docs/protocol.md`, "Conditional writes".

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dynacore_engine::version::{ActorId, TRANSACTION_EPOCH_BIT};
use dynacore_engine::{object, Object};
use dynacore_proto::reply::{self, Ballot};
use dynacore_proto::ring::{NodeId, Token};
use dynacore_proto::{build, KeyCondition};

use super::fan_out::Answers;
use super::replicas::{call_idempotent, ms_until, reply_error};
use super::request::WriteRequest;
use crate::cluster::ClusterState;
use crate::core::{Core, PaxosAnswer, PaxosStep, ShardOp};
use crate::storage::replica::{decode_version, version_bytes, StoreError};

thread_local! {
    /// The last ballot time this core used or saw: ballots only move forward.
    static LAST_BALLOT: Cell<u64> = const { Cell::new(0) };
}

/// Low bits of a ballot's time that hold the proposing core's index, so that two cores of one
/// node never propose the same ballot.
const CORE_BITS: u32 = 10;

/// A ballot above every one this core used or saw, unique to this core of `node`.
fn next_ballot(node: NodeId, core: u32) -> Ballot {
    let now = crate::storage::hints::now_ms() << 16;
    let step = 1u64 << CORE_BITS;
    let time = LAST_BALLOT.with(|last| {
        let t = (now.max(last.get() + step) & !(step - 1)) | (u64::from(core) & (step - 1));
        last.set(t);
        t
    });
    Ballot { time, node: node.0 }
}

fn saw_ballot(b: Ballot) {
    LAST_BALLOT.with(|last| last.set(last.get().max(b.time)));
}

/// Runs `req` (a conditional write, coordinated on this replica of its key) as a transaction;
/// returns the new version.
///
/// # Errors
/// [`StoreError::ConditionFailed`] (nothing written); [`StoreError::Quorum`] when no majority
/// of replicas answered in time (a proposal may have been accepted: the outcome is unknown);
/// [`StoreError::Timeout`] when contention outlasted the deadline.
pub(crate) async fn transaction(
    core: &Core,
    req: &WriteRequest,
    deadline: Instant,
) -> Result<Vec<u8>, StoreError> {
    let expected = req.expected.as_deref().map(decode_version).transpose()?;
    let cluster = core.cluster();
    let replicas = cluster.replicas(Token::of(&req.key));
    let majority = replicas.len() / 2 + 1;
    let key = Rc::new(req.key.clone());
    let mut attempt = 0u32;
    // This transaction's proposal that some replicas accepted before a concurrent one
    // overtook it: a later round may finish it. Its dot (unique: a transaction actor's fresh
    // counter) and version. While it may have been chosen, the answer is never "condition
    // failed": it is this write's success once its dot is found, or an unknown outcome.
    let mut maybe_chosen: Option<((ActorId, u64), Vec<u8>)> = None;
    let unknown = |m: &str| StoreError::Quorum {
        acks: 0,
        required: u8::try_from(majority).unwrap_or(u8::MAX),
        message: format!(
            "the transaction's proposal was accepted by some replicas before a concurrent \
             one overtook it, and {m}: its outcome is unknown"
        ),
    };
    loop {
        if Instant::now() >= deadline {
            if maybe_chosen.is_some() {
                return Err(unknown("the deadline passed"));
            }
            return Err(StoreError::Timeout(
                "contending transactions on this key outlasted the deadline".into(),
            ));
        }
        if attempt > 0 {
            // Another transaction holds the key: give it room (more with every retry).
            let wait =
                Duration::from_millis(u64::from(rand::random::<u8>() % 8 + 1)) * attempt.min(10);
            dynacore_runtime::sleep(wait).await;
        }
        attempt += 1;
        let ballot = next_ballot(cluster.own, core.index());
        // 1. Prepare.
        let promises = ask_all(core, &cluster, &replicas, &key, deadline, move || {
            PaxosStep::Prepare(ballot)
        })
        .await;
        let mut promised = Vec::new();
        let mut answered = 0u8;
        for answer in promises.into_iter().flatten() {
            answered += 1;
            match answer {
                PaxosAnswer::Promise {
                    promised: true,
                    accepted,
                    committed,
                    copy,
                    ..
                } => promised.push((accepted, committed, copy)),
                PaxosAnswer::Promise { ballot: higher, .. } => saw_ballot(higher),
                _ => {}
            }
        }
        if promised.len() < majority {
            if usize::from(answered) < majority {
                return Err(StoreError::Quorum {
                    acks: u8::try_from(promised.len()).unwrap_or(u8::MAX),
                    required: u8::try_from(majority).unwrap_or(u8::MAX),
                    message: format!(
                        "{} of {} replicas answered the transaction's prepare",
                        answered,
                        replicas.len()
                    ),
                });
            }
            continue; // refused: a higher ballot is out there
        }
        // 2. A round left unfinished is finished first.
        let latest_commit = promised.iter().filter_map(|(_, c, _)| *c).max();
        let unfinished = promised
            .iter()
            .filter_map(|(a, _, _)| a.as_ref())
            .filter(|(b, _)| Some(*b) > latest_commit)
            .max_by_key(|(b, _)| *b)
            .map(|(_, o)| o.clone());
        if let Some(proposal) = unfinished {
            let ours = maybe_chosen
                .as_ref()
                .filter(|(dot, _)| has_dot(&proposal, *dot))
                .map(|(_, version)| version.clone());
            let done = propose_and_commit(
                core, &cluster, &replicas, &key, ballot, proposal, majority, deadline,
            )
            .await?;
            match (done, ours) {
                (Proposal::Committed, Some(version)) => return Ok(version),
                (Proposal::Committed, None) => {
                    tracing::debug!("finished a transaction another coordinator left");
                }
                _ => {}
            }
            continue;
        }
        // 3. Read.
        let current =
            promised
                .iter()
                .filter_map(|(_, _, c)| c.as_ref())
                .fold(None::<Object>, |acc, c| {
                    Some(match acc {
                        Some(a) => a.sync(c),
                        None => c.clone(),
                    })
                });
        if let Some((dot, version)) = &maybe_chosen {
            if current.as_ref().is_some_and(|c| has_dot(c, *dot)) {
                return Ok(version.clone()); // another coordinator finished it
            }
            // Not (or no longer) visible: it may have been chosen and overwritten since.
            return Err(unknown("it is not in the replicas' copies now"));
        }
        // 4. Check.
        check(&current, expected.as_ref(), req.condition)?;
        // 5. Mint and propose.
        let left = deadline.saturating_duration_since(Instant::now());
        let mint = ShardOp::Paxos {
            key: req.key.clone(),
            step: PaxosStep::Mint {
                value: req.value.clone(),
                ttl_ms: req.ttl_ms,
                current,
            },
        };
        let PaxosAnswer::Minted(proposal) = core.execute(mint, left).await.into_paxos()? else {
            return Err(StoreError::Internal("a mint answered another step".into()));
        };
        let version = version_bytes(&proposal.join());
        let dot = proposal
            .dots()
            .map(|(a, c, _)| (a, c))
            .find(|(a, _)| a.epoch & TRANSACTION_EPOCH_BIT != 0);
        match propose_and_commit(
            core, &cluster, &replicas, &key, ballot, proposal, majority, deadline,
        )
        .await?
        {
            Proposal::Committed => return Ok(version),
            // Refused everywhere: it can never be chosen; start over (checked again).
            Proposal::Refused => {}
            Proposal::Partial => match dot {
                Some(dot) => maybe_chosen = Some((dot, version)),
                None => return Err(unknown("it carries no transaction dot")),
            },
        }
    }
}

/// Whether `o` holds the value with dot `(actor, counter)`.
fn has_dot(o: &Object, (actor, counter): (ActorId, u64)) -> bool {
    o.dots().any(|(a, c, _)| a == actor && c == counter)
}

/// What became of a proposal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proposal {
    /// A majority accepted it and merged it.
    Committed,
    /// No replica accepted it (a higher ballot was promised everywhere it got to): it can
    /// never be chosen.
    Refused,
    /// Some replicas accepted it, not a majority: a later round may finish it.
    Partial,
}

/// Proposes `proposal` at `ballot` and, once a majority accepted it, commits it (answered once
/// a majority merged it); see [`Proposal`].
#[allow(clippy::too_many_arguments)]
async fn propose_and_commit(
    core: &Core,
    cluster: &Arc<ClusterState>,
    replicas: &[NodeId],
    key: &Rc<Vec<u8>>,
    ballot: Ballot,
    proposal: Object,
    majority: usize,
    deadline: Instant,
) -> Result<Proposal, StoreError> {
    let proposal = Rc::new(proposal);
    let p = proposal.clone();
    let answers = ask_all(core, cluster, replicas, key, deadline, move || {
        PaxosStep::Propose(ballot, (*p).clone())
    })
    .await;
    let mut accepted = 0;
    let mut answered = 0;
    for answer in answers.into_iter().flatten() {
        answered += 1;
        match answer {
            PaxosAnswer::Accepted(true, _) => accepted += 1,
            PaxosAnswer::Accepted(false, higher) => saw_ballot(higher),
            _ => {}
        }
    }
    if accepted < majority {
        if accepted > 0 {
            return Ok(Proposal::Partial);
        }
        if answered < majority {
            return Err(StoreError::Quorum {
                acks: 0,
                required: u8::try_from(majority).unwrap_or(u8::MAX),
                message: format!(
                    "{answered} of {} replicas answered the transaction's proposal",
                    replicas.len()
                ),
            });
        }
        return Ok(Proposal::Refused);
    }
    let p = proposal.clone();
    // While ranges move, the key's pending replicas take the commit too, and each must store it
    // (as W + pending for plain writes): a range streamed to them before this commit would
    // otherwise miss it.
    let pending = cluster.pending_replicas(Token::of(key));
    let targets: Vec<NodeId> = replicas.iter().chain(&pending).copied().collect();
    let commits = ask_all(core, cluster, &targets, key, deadline, move || {
        PaxosStep::Commit(ballot, (*p).clone())
    })
    .await;
    let stored = |a: &Result<PaxosAnswer, StoreError>| matches!(a, Ok(PaxosAnswer::Committed));
    let committed = commits[..replicas.len()]
        .iter()
        .filter(|a| stored(a))
        .count();
    if let Some(missed) = pending
        .iter()
        .zip(&commits[replicas.len()..])
        .find(|(_, a)| !stored(a))
        .map(|(n, _)| *n)
    {
        return Err(StoreError::Quorum {
            acks: u8::try_from(committed).unwrap_or(u8::MAX),
            required: u8::try_from(majority + pending.len()).unwrap_or(u8::MAX),
            message: format!(
                "pending replica {missed} (ranges are moving to it) did not store the \
                 committed transaction (a later transaction or read completes it)"
            ),
        });
    }
    if committed < majority {
        return Err(StoreError::Quorum {
            acks: u8::try_from(committed).unwrap_or(u8::MAX),
            required: u8::try_from(majority).unwrap_or(u8::MAX),
            message: format!(
                "{committed} of {} replicas stored the committed transaction (a later \
                 transaction or read completes it)",
                replicas.len()
            ),
        });
    }
    Ok(Proposal::Committed)
}

/// Whether `current` meets the condition; `ConditionFailed` with its version otherwise.
fn check(
    current: &Option<Object>,
    expected: Option<&dynacore_engine::version::VersionVector>,
    condition: KeyCondition,
) -> Result<(), StoreError> {
    let now = crate::storage::hints::now_ms();
    let live = current
        .as_ref()
        .is_some_and(|c| c.values().any(|s| s.is_live_at(now)));
    let join = current.as_ref().map(Object::join).unwrap_or_default();
    let ok = match condition {
        KeyCondition::Absent => !live,
        KeyCondition::Present => live,
        KeyCondition::None => true,
    } && expected.is_none_or(|e| e.descends(&join));
    if ok {
        Ok(())
    } else {
        Err(StoreError::ConditionFailed {
            current: version_bytes(&join),
        })
    }
}

/// Runs the step `step()` makes on every replica at once; each one's answer (or error), in
/// replica order, once all answered or the deadline passed.
async fn ask_all(
    core: &Core,
    cluster: &Arc<ClusterState>,
    replicas: &[NodeId],
    key: &Rc<Vec<u8>>,
    deadline: Instant,
    step: impl Fn() -> PaxosStep,
) -> Vec<Result<PaxosAnswer, StoreError>> {
    let mut out: Vec<Result<PaxosAnswer, StoreError>> = replicas
        .iter()
        .map(|_| Err(StoreError::Timeout("no answer in time".into())))
        .collect();
    let mut answers = Answers::spawn(
        replicas.iter().copied(),
        deadline,
        |_, _| false,
        |_, node| {
            let (core, cluster, key, step) = (core.clone(), cluster.clone(), key.clone(), step());
            async move { ask(&core, &cluster, node, &key, step, deadline).await }
        },
    );
    while let Some((i, r)) = answers.next_or(|| ()).await {
        out[i] = r;
    }
    out
}

/// Runs `step` for `key` on replica `node`: in process, or over the core's peer connection.
async fn ask(
    core: &Core,
    cluster: &ClusterState,
    node: NodeId,
    key: &[u8],
    step: PaxosStep,
    deadline: Instant,
) -> Result<PaxosAnswer, StoreError> {
    if node == cluster.own {
        let left = deadline.saturating_duration_since(Instant::now());
        let op = ShardOp::Paxos {
            key: key.to_vec(),
            step,
        };
        return core.execute(op, left).await.into_paxos();
    }
    let Some(peer) = cluster.nodes.get(&node) else {
        return Err(StoreError::Unavailable(format!(
            "node {node} is not in the ring"
        )));
    };
    let addr = peer.core_addr(Token::of(key));
    let timeout_ms = ms_until(deadline);
    let malformed = |e: dynacore_engine::Error| {
        StoreError::Unavailable(format!("a replica's object is malformed: {e}"))
    };
    match step {
        PaxosStep::Prepare(ballot) => {
            let body = call_idempotent(
                core,
                addr,
                &|id| build::paxos_prepare(id, timeout_ms, key, ballot),
                deadline,
            )
            .await?;
            let p = reply::paxos_promise(&body).map_err(reply_error)?;
            let decode =
                |(v, vals): (Vec<u8>, Vec<u8>)| object::from_parts(&v, &vals).map_err(malformed);
            Ok(PaxosAnswer::Promise {
                promised: p.promised,
                ballot: p.higher.unwrap_or(ballot),
                accepted: p
                    .accepted
                    .map(|(b, parts)| decode(parts).map(|o| (b, o)))
                    .transpose()?,
                committed: p.committed,
                copy: p.copy.map(decode).transpose()?,
            })
        }
        PaxosStep::Propose(ballot, object) => {
            let (version, values) =
                object::to_parts(&object).map_err(|e| StoreError::Internal(e.to_string()))?;
            let body = call_idempotent(
                core,
                addr,
                &|id| {
                    build::paxos_proposal(id, timeout_ms, false, key, ballot, (&version, &values))
                },
                deadline,
            )
            .await?;
            Ok(match reply::paxos_accepted(&body).map_err(reply_error)? {
                None => PaxosAnswer::Accepted(true, ballot),
                Some(higher) => PaxosAnswer::Accepted(false, higher),
            })
        }
        PaxosStep::Commit(ballot, object) => {
            let (version, values) =
                object::to_parts(&object).map_err(|e| StoreError::Internal(e.to_string()))?;
            let body = call_idempotent(
                core,
                addr,
                &|id| build::paxos_proposal(id, timeout_ms, true, key, ballot, (&version, &values)),
                deadline,
            )
            .await?;
            reply::replica_applied(&body).map_err(reply_error)?;
            Ok(PaxosAnswer::Committed)
        }
        PaxosStep::Mint { .. } => Err(StoreError::Internal("a mint is not a replica step".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ballots_only_move_forward_and_two_cores_never_share_one() {
        let node = NodeId(9);
        let a: Vec<Ballot> = (0..100).map(|_| next_ballot(node, 0)).collect();
        assert!(a.windows(2).all(|w| w[0] < w[1]), "increasing");
        assert!(a.iter().all(|b| b.time & 0x3ff == 0), "core 0's bits");
        let b = next_ballot(node, 1);
        assert_eq!(b.time & 0x3ff, 1);
        assert!(b > a[99]);
        // A higher ballot seen elsewhere moves the next one past it.
        saw_ballot(Ballot {
            time: b.time + (1 << 40),
            node: 1,
        });
        assert!(next_ballot(node, 0).time > b.time + (1 << 40));
    }
}
