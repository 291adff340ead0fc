//! A client's read: every replica asked for its copy, the first R merged and answered; replicas
//! whose copy differs from the merge, late ones included (until the deadline), get the merge
//! written back (read repair) in the background or, with `blocking`, before the answer.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dynacore_engine::Object;
use dynacore_proto::ring::{NodeId, Token};
use dynacore_proto::{Conflicts, ReadRepair};

use super::fan_out::{answer_early, Answers, Decision};
use super::quorum::{Outcome, ReadTally, R_DEFAULT};
use super::replicas::{apply_at, check_key, read_at, read_unavailable, replicas_needed, Copy};
use super::request::{ReadRequest, ReadResult};
use crate::cluster::ClusterState;
use crate::core::Core;
use crate::storage::hints::now_ms;
use crate::storage::replica::{version_bytes, StoreError};

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
    let r = replicas_needed(req.r, &cluster, R_DEFAULT)?;
    let siblings = match req.conflicts {
        Conflicts::Default => core.replication().siblings,
        Conflicts::Lww => false,
        Conflicts::Siblings => true,
    };
    // A node streaming its ranges back in (restarted on an empty disk) is not read from.
    let replicas = cluster.read_replicas(token);
    let mut tally = ReadTally::new(replicas.clone(), r);
    let key = Rc::new(req.key);
    let mut answers = Answers::spawn(
        replicas.clone(),
        deadline,
        |i, &node| {
            let down = node != cluster.own && !cluster.is_up(node);
            if down {
                tally.fail(i);
            }
            down
        },
        |_, node| {
            let (core, cluster, key) = (core.clone(), cluster.clone(), key.clone());
            async move { read_at(&core, &cluster, node, &key, deadline).await }
        },
    );
    let mode = req.read_repair;
    let background = core.clone();
    let merged = answer_early(core, "read", move |mut decision: Decision<Option<Object>>| async move {
        let core = background;
        let mut repaired: Vec<NodeId> = Vec::new();
        let mut merged_at_answer: Option<Object> = None;
        let mut held = None;
        loop {
            // A failure is told once nothing more can come, so that it says how many
            // answered.
            let outcome = decision.is_open().then(|| {
                tally
                    .outcome()
                    .filter(|o| matches!(o, Outcome::Done(_)) || tally.pending() == 0)
            });
            match outcome.flatten() {
                Some(Outcome::Done(merged)) => {
                    if mode == ReadRepair::Blocking {
                        let stale = tally.repairs(merged.as_ref());
                        if let Some(m) = &merged {
                            repair(&core, &cluster, &key, m, &stale, deadline).await;
                        }
                        repaired = stale;
                    }
                    merged_at_answer.clone_from(&merged);
                    decision.give(Ok(merged));
                }
                Some(Outcome::Unavailable { acks, required }) => {
                    decision.give(Err(read_unavailable(acks, required)));
                    return;
                }
                None => {}
            }
            // Answered with replies still to come: collecting them (for read repair) holds
            // their copies, within the core's budget for work after answers, or not at all.
            if !decision.is_open() && mode == ReadRepair::Off {
                return; // nothing to repair: late replies are not awaited
            }
            if !decision.is_open() && held.is_none() && tally.pending() > 0 {
                let each = merged_at_answer.as_ref().map_or(0, object_bytes) + key.len();
                held = core.reserve_background(each.saturating_mul(tally.pending()));
                if held.is_none() {
                    return;
                }
            }
            let Some((i, answer)) = answers.next_or(|| tally.expire()).await else {
                break;
            };
            match answer {
                Ok(object) => tally.reply(i, object),
                Err(e) => {
                    tracing::debug!(replica = ?replicas.get(i), error = %e, "a replica's read failed");
                    tally.fail(i);
                }
            }
        }
        if decision.is_open() {
            let answer = match tally.outcome() {
                Some(Outcome::Done(m)) => Ok(m),
                Some(Outcome::Unavailable { acks, required }) => {
                    Err(read_unavailable(acks, required))
                }
                None => Err(StoreError::Internal("a read ended undecided".into())),
            };
            let failed = answer.is_err();
            decision.give(answer);
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
        if stale.is_empty() {
            return;
        }
        // A repair after the answer holds the merged copy: within the core's budget for work
        // after answers, or not made (a later read repairs it).
        drop(answers);
        drop(held);
        let Some(_held) = core.reserve_background(object_bytes(m) + key.len()) else {
            return;
        };
        let until = Instant::now() + timeout;
        repair(&core, &cluster, &key, m, &stale, until).await;
    })
    .await?;
    Ok(merged.as_ref().and_then(|m| present(m, siblings)))
}

/// Writes `merged` back to each of `stale`, in parallel, waiting for all (until `deadline`).
async fn repair(
    core: &Core,
    cluster: &Arc<ClusterState>,
    key: &[u8],
    merged: &Object,
    stale: &[NodeId],
    deadline: Instant,
) {
    if stale.is_empty() {
        return;
    }
    let Ok(copy) = Copy::of(key, merged) else {
        return;
    };
    let copy = Rc::new(copy);
    let mut answers = Answers::spawn(
        stale.iter().copied(),
        deadline,
        |_, _| false,
        |_, node| {
            let (core, cluster, copy) = (core.clone(), cluster.clone(), copy.clone());
            async move { apply_at(&core, &cluster, node, None, &copy, deadline).await }
        },
    );
    while let Some((i, r)) = answers.next_or(|| ()).await {
        match r {
            Ok(()) => core.metrics().read_repaired(),
            Err(e) => tracing::debug!(node = ?stale.get(i), error = %e, "a read repair failed"),
        }
    }
}

/// About the bytes an object's copy holds (values and metadata, with their encoding).
fn object_bytes(o: &Object) -> usize {
    2 * o
        .values()
        .map(|s| s.value.as_ref().map_or(0, Vec::len) + 32)
        .sum::<usize>()
}

/// What `result` of a merged object shows a client, or `None` when nothing is live.
fn present(merged: &Object, siblings: bool) -> Option<ReadResult> {
    let now = now_ms();
    let version = version_bytes(&merged.join());
    if siblings {
        let mut live: Vec<_> = merged.values().filter(|s| s.is_live_at(now)).collect();
        live.sort_by_key(|s| std::cmp::Reverse(s.hlc));
        let expiry_ms = live.first().and_then(|s| s.expiry_ms);
        let values: Vec<_> = live
            .into_iter()
            .filter_map(|s| s.value.clone().map(|v| (v, s.hlc.physical_ms())))
            .collect();
        (!values.is_empty()).then_some(ReadResult {
            values,
            version,
            expiry_ms,
        })
    } else {
        // The newest sibling decides: a newer tombstone or expired value hides older values.
        let newest = merged.values().max_by_key(|s| s.hlc)?;
        let value = newest.value.clone().filter(|_| newest.is_live_at(now))?;
        Some(ReadResult {
            values: vec![(value, newest.hlc.physical_ms())],
            version,
            expiry_ms: newest.expiry_ms,
        })
    }
}
