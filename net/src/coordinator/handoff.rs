//! Hinted handoff, the coordinator's side: a peer asking this node to keep a hint for a replica
//! that was down, and the per-core task that hands hints back to their targets once they are up.

use std::time::{Duration, Instant};

use dynacore_engine::Object;
use dynacore_proto::ring::NodeId;
use dynacore_runtime as runtime;

use super::replicas::{apply_at, check_key, Copy};
use crate::core::Core;
use crate::storage::hints::Hint;
use crate::storage::replica::StoreError;

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

/// Hand-overs in flight at once per target.
const REPLAY_WINDOW: usize = 32;

/// Hands this core's hints to their targets while the core runs: every second, the targets
/// that are up and have hints get them, oldest first, up to [`REPLAY_WINDOW`] at a time per
/// target, paced at the configured rate.
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
            oldest_ms: hints.oldest_ms().unwrap_or(0),
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
        // Hints age from their target's return: note who is up, hints due or not.
        hints.targets_up(&targets);
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
        let mut by_target: std::collections::BTreeMap<NodeId, Vec<Hint>> = Default::default();
        for hint in batch {
            by_target.entry(hint.target).or_default().push(hint);
        }
        for (target, due) in by_target {
            // A window of hand-overs in flight per target; the first failure leaves the rest of
            // its hints to the next round.
            for window in due.chunks(REPLAY_WINDOW) {
                if core.shared().is_closing() {
                    return;
                }
                let mut in_flight = Vec::with_capacity(window.len());
                for hint in window {
                    pacer.wait().await;
                    let Ok(copy) = Copy::of(&hint.key, &hint.object) else {
                        continue;
                    };
                    let (core, cluster) = (core.clone(), cluster.clone());
                    let task = runtime::spawn(async move {
                        let deadline = Instant::now() + core.default_timeout();
                        let _work = core.shared().hold();
                        apply_at(&core, &cluster, target, None, &copy, deadline).await
                    });
                    in_flight.push((hint, task));
                }
                let mut failed = false;
                for (hint, task) in in_flight {
                    match task.await {
                        Ok(()) => {
                            if let Err(e) = hints.done(hint).await {
                                tracing::warn!(error = %e, "deleting a handed-over hint failed");
                            }
                        }
                        Err(e) => {
                            tracing::debug!(%target, error = %e, "handing over a hint failed");
                            failed = true;
                        }
                    }
                }
                if failed {
                    break;
                }
            }
        }
    }
}
