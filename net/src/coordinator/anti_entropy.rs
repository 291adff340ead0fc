//! Anti-entropy: this node's ranges compared with their other replicas through the shards'
//! hash trees, and the divergent keys repaired through the normal DVV merge. The decisions
//! are `exchange.rs`'s; this drives them.
//!
//! An *exchange* compares a set of ranges of one local shard with one peer: the ranges'
//! hashes first, then, where they differ, ever narrower sub-ranges (16 at a time) down to
//! about one leaf, then the keys of those with their states; each divergent key is pulled,
//! pushed or both (`Action`). Messages carry hashes of token ranges, so the two sides' trees
//! need not have the same size.
//!
//! A *full repair* of ranges exchanges with every other replica of each, twice: after the
//! first pass this node holds everything any replica held when it started; the second gives
//! every replica what it still lacks. A range whose exchanges all succeeded is recorded as
//! repaired, on every replica, as of the start (or of the oldest hint queued on any replica,
//! if earlier): the repair-based purge rule reads it.
//!
//! Scheduled repairs run on each core for the ranges it coordinates (this node is the first
//! replica up), every `anti_entropy_interval` and soon after a peer comes back; `POST
//! /admin/repair` runs one for every range the node holds. They run in a low-share task queue,
//! at most one exchange per shard, within the node's repair budget (keys and bytes per second),
//! which shrinks while the foreground p99 rises.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dynacore_engine::hashtree::key_state_of_version;
use dynacore_engine::{object, KeyState, Object};
use dynacore_proto::build;
use dynacore_proto::reply::{self, KeyStateWire};
use dynacore_proto::ring::{NodeId, Token};
use dynacore_runtime as runtime;

use super::exchange::{self, Action, RangeJob, Side};
use super::replicas::{apply_at, call_idempotent, ms_until, read_at, reply_error, Copy};
use crate::cluster::ClusterState;
use crate::core::{Core, ShardOp, TreeAnswer};
use crate::metrics::{AeCounts, ExchangeOutcome};
use crate::storage::hints::now_ms;
use crate::storage::replica::StoreError;

/// Intervals per hash request.
const HASHES_PER_REQUEST: usize = 2048;
/// Intervals and keys per key-listing request.
const LIST_INTERVALS_PER_REQUEST: usize = 256;
const KEYS_PER_REQUEST: u32 = 4096;
/// Divergent keys repaired at once.
const REPAIRS_IN_FLIGHT: usize = 16;
/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// CPU a loop over keys takes at a stretch before the executor polls for I/O.
const SLICE: Duration = Duration::from_micros(500);

thread_local! {
    static QUEUE: std::cell::OnceCell<runtime::TaskQueueHandle> = const { std::cell::OnceCell::new() };
}

/// This core's task queue for anti-entropy work (50 shares, against the foreground's 1000):
/// the scheduled repairs, and what this node does for a peer's exchange.
pub fn queue() -> runtime::TaskQueueHandle {
    QUEUE.with(|q| {
        *q.get_or_init(|| {
            runtime::create_task_queue(50, runtime::Latency::NotImportant, "anti-entropy")
        })
    })
}

/// What a repair did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Ranges it covered.
    pub ranges: usize,
    /// Ranges fully repaired (every replica compared and brought in line), recorded.
    pub ranges_repaired: usize,
    /// Ranges it could not complete: a replica down, unreachable, or its tree not ready.
    pub ranges_failed: usize,
    /// Exchanges by outcome: in sync, repaired, not ready, failed.
    pub exchanges: [u64; 4],
    /// Keys compared, divergent, repaired, copies moved and bytes.
    pub counts: AeCounts,
    /// The first few errors.
    pub errors: Vec<String>,
}

impl RepairReport {
    fn error(&mut self, e: String) {
        if self.errors.len() < 10 {
            self.errors.push(e);
        }
    }
}

/// Why an exchange stopped.
enum ExchangeError {
    NotReady,
    Failed(String),
}

impl From<StoreError> for ExchangeError {
    fn from(e: StoreError) -> Self {
        ExchangeError::Failed(e.to_string())
    }
}

/// Runs the scheduled repairs of `core`'s ranges for as long as the node runs: every
/// `interval` (with up to a fifth of it in jitter), and a few seconds after a peer comes back
/// up or a tree was not ready; none without an interval. Core 0 also measures the foreground
/// latency that the repair budget follows.
pub fn run_anti_entropy(core: Core, interval: Option<Duration>) {
    runtime::spawn_detached_into(
        async move {
            let jitter = |d: Duration| d.mul_f64(0.8 + 0.4 * rand::random::<f64>());
            let mut next_full = interval.map(|i| Instant::now() + jitter(i));
            let mut soon: Option<Instant> = None;
            let mut up_before: HashSet<NodeId> = HashSet::new();
            let mut samples = ForegroundSampler::new(&core);
            loop {
                runtime::sleep(Duration::from_millis(500)).await;
                if core.shared().is_closing() {
                    if core.index() == 0 {
                        core.shared().purge().history.save_now();
                    }
                    return;
                }
                if core.index() == 0 {
                    samples.sample(&core);
                    core.shared().purge().history.save_in_background();
                }
                let cluster = core.cluster();
                let up: HashSet<NodeId> = cluster
                    .nodes
                    .keys()
                    .copied()
                    .filter(|&n| n != cluster.own && cluster.is_up(n))
                    .collect();
                if up.iter().any(|n| !up_before.contains(n)) {
                    // A peer came (back): compare with it once its hints had a moment.
                    soon = Some(Instant::now() + Duration::from_secs(2));
                }
                up_before = up;
                let now = Instant::now();
                let due = soon.is_some_and(|t| now >= t) || next_full.is_some_and(|t| now >= t);
                // Without an interval, repairs run only on demand.
                if !due || !cluster.ring_known || interval.is_none() {
                    continue;
                }
                soon = None;
                if let Some(i) = interval {
                    next_full = Some(now + jitter(i));
                }
                let jobs: Vec<RangeJob> = exchange::ranges_held(&cluster)
                    .into_iter()
                    .filter(|j| {
                        j.shard == core.index()
                            && exchange::coordinates(j, cluster.own, |n| cluster.is_up(n))
                    })
                    .collect();
                if jobs.is_empty() {
                    continue;
                }
                let report = repair_jobs(&core, &cluster, jobs).await;
                if report.exchanges[ExchangeOutcome::NotReady as usize] > 0
                    || report.exchanges[ExchangeOutcome::Failed as usize] > 0
                {
                    soon = Some(Instant::now() + Duration::from_secs(5));
                }
                tracing::debug!(core = core.index(), ?report, "scheduled repair");
            }
        },
        queue(),
    );
}

/// A full repair of every range this node holds (`dynacore repair`), shard by shard, in the
/// anti-entropy queue.
pub async fn repair_all(core: &Core) -> RepairReport {
    let core = core.clone();
    runtime::spawn_detached_into(
        async move {
            let cluster = core.cluster();
            let jobs = exchange::ranges_held(&cluster);
            repair_jobs(&core, &cluster, jobs).await
        },
        queue(),
    )
    .await
    .unwrap_or_default()
}

/// A full repair of `jobs`: per local shard (waiting for its exchange slot), two passes of
/// exchanges with every other replica, then the repaired ranges recorded on every replica.
async fn repair_jobs(
    core: &Core,
    cluster: &Arc<ClusterState>,
    jobs: Vec<RangeJob>,
) -> RepairReport {
    let started_ms = now_ms();
    let mut report = RepairReport {
        ranges: jobs.len(),
        ..RepairReport::default()
    };
    let mut by_shard: BTreeMap<u32, Vec<RangeJob>> = BTreeMap::new();
    for j in jobs {
        by_shard.entry(j.shard).or_default().push(j);
    }
    let own_hint = oldest_hint_ms(core);
    for (shard, jobs) in by_shard {
        while !core.shared().try_start_exchange(shard) {
            if core.shared().is_closing() {
                return report;
            }
            runtime::sleep(Duration::from_millis(100)).await;
        }
        // Slow start: an exchange begins at an eighth of the budget, which grows by a quarter per
        // window while the foreground's p99 holds (`ForegroundSampler`).
        core.shared()
            .repair_budget(|b| b.set_factor(b.factor().min(0.125)));
        let done = repair_shard(core, cluster, shard, &jobs, &mut report).await;
        core.shared().end_exchange(shard);
        // Ranges every replica took part in, with the oldest hint any of them holds.
        for (job, oldest_hint) in jobs.iter().zip(done) {
            let Some(oldest_hint) = oldest_hint else {
                report.ranges_failed += 1;
                continue;
            };
            if job.replicas.len() < 2 {
                continue;
            }
            let at = [started_ms, own_hint, oldest_hint]
                .into_iter()
                .filter(|&t| t != 0)
                .min()
                .unwrap_or(started_ms);
            record_repaired(core, cluster, job, at, &mut report).await;
            report.ranges_repaired += 1;
        }
    }
    core.metrics()
        .full_repairs(report.ranges_repaired as u64, report.ranges_failed as u64);
    report
}

/// Two passes over `jobs` (ranges of local shard `shard`) with each peer; per job, `Some`
/// (the oldest hint of its peers, 0: none) when every exchange of it succeeded.
async fn repair_shard(
    core: &Core,
    cluster: &Arc<ClusterState>,
    shard: u32,
    jobs: &[RangeJob],
    report: &mut RepairReport,
) -> Vec<Option<u64>> {
    let mut done: Vec<Option<u64>> = vec![Some(0); jobs.len()];
    let peers: Vec<NodeId> = {
        let mut p: Vec<NodeId> = jobs
            .iter()
            .flat_map(|j| j.replicas.iter().copied())
            .filter(|&n| n != cluster.own)
            .collect();
        p.sort_unstable();
        p.dedup();
        p
    };
    for _pass in 0..2 {
        for &peer in &peers {
            let idx: Vec<usize> = (0..jobs.len())
                .filter(|&i| done[i].is_some() && jobs[i].replicas.contains(&peer))
                .collect();
            if idx.is_empty() {
                continue;
            }
            let fail = |done: &mut Vec<Option<u64>>| {
                for &i in &idx {
                    done[i] = None;
                }
            };
            if !cluster.is_up(peer) {
                fail(&mut done);
                continue;
            }
            let Some(node) = cluster.nodes.get(&peer) else {
                fail(&mut done);
                continue;
            };
            // The peer's core for each range (sub-ranges of a ring range share it).
            let mut by_addr: BTreeMap<SocketAddr, Vec<usize>> = BTreeMap::new();
            for &i in &idx {
                by_addr
                    .entry(node.core_addr(Token(jobs[i].id.1)))
                    .or_default()
                    .push(i);
            }
            for (addr, group) in by_addr {
                let result = exchange_with(core, cluster, shard, addr, peer, jobs, &group).await;
                let (outcome, hint) = match result {
                    Ok((counts, hint)) => {
                        let outcome = if counts.divergent == 0 {
                            ExchangeOutcome::InSync
                        } else {
                            ExchangeOutcome::Repaired
                        };
                        core.metrics().anti_entropy(counts);
                        add(&mut report.counts, counts);
                        (outcome, Some(hint))
                    }
                    Err(ExchangeError::NotReady) => (ExchangeOutcome::NotReady, None),
                    Err(ExchangeError::Failed(e)) => {
                        report.error(format!("exchange with node {peer}: {e}"));
                        (ExchangeOutcome::Failed, None)
                    }
                };
                core.metrics().exchange(outcome);
                report.exchanges[outcome as usize] += 1;
                for &i in &group {
                    done[i] = match (done[i], hint) {
                        (Some(a), Some(h)) => Some(min_nonzero(a, h)),
                        _ => None,
                    };
                }
            }
        }
    }
    done
}

fn min_nonzero(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    }
}

fn add(total: &mut AeCounts, c: AeCounts) {
    total.compared += c.compared;
    total.divergent += c.divergent;
    total.repaired += c.repaired;
    total.pulled += c.pulled;
    total.pushed += c.pushed;
    total.bytes += c.bytes;
}

/// The oldest hint queued on any core of this node (0: none).
fn oldest_hint_ms(core: &Core) -> u64 {
    core.shared()
        .metrics()
        .iter()
        .map(crate::metrics::CoreMetrics::oldest_hint_ms)
        .fold(0, min_nonzero)
}

/// Tells every replica of `job` that it was fully repaired as of `at_ms`.
async fn record_repaired(
    core: &Core,
    cluster: &ClusterState,
    job: &RangeJob,
    at_ms: u64,
    report: &mut RepairReport,
) {
    let replicas: Vec<u64> = job.replicas.iter().map(|n| n.0).collect();
    for &node in &job.replicas {
        if node == cluster.own {
            core.shared()
                .purge()
                .history
                .update(|h| h.record(job.id, &replicas, at_ms));
            continue;
        }
        let Some(peer) = cluster.nodes.get(&node) else {
            continue;
        };
        let addr = peer.core_addr(Token(job.id.1));
        let deadline = Instant::now() + CALL_TIMEOUT;
        let timeout_ms = ms_until(deadline);
        let sent = call_idempotent(
            core,
            addr,
            &|id| build::repaired(id, timeout_ms, job.id, &replicas, at_ms),
            deadline,
        )
        .await
        .and_then(|body| reply::repaired(&body).map_err(reply_error));
        if let Err(e) = sent {
            // That replica keeps its tombstones until the next full repair: only a delay.
            report.error(format!("recording the repair on node {node}: {e}"));
        }
    }
}

/// One exchange: the ranges `group` (indexes into `jobs`, held by local shard `shard`) compared
/// with peer `peer` at `addr`, and their divergent keys repaired. Returns what it did and the
/// peer's oldest queued hint.
async fn exchange_with(
    core: &Core,
    cluster: &ClusterState,
    shard: u32,
    addr: SocketAddr,
    peer: NodeId,
    jobs: &[RangeJob],
    group: &[usize],
) -> Result<(AeCounts, u64), ExchangeError> {
    let mut counts = AeCounts::default();
    let now = now_ms();
    // Each interval with the time before which deletions may be purged in its range.
    let mut gc: Vec<((u64, u64), Option<u64>)> = Vec::new();
    for &i in group {
        let job = &jobs[i];
        let replicas: Vec<u64> = job.replicas.iter().map(|n| n.0).collect();
        let before = core.shared().purge().gc_before(job.id, &replicas, now);
        gc.extend(job.intervals.iter().map(|&iv| (iv, before)));
    }
    gc.sort_unstable_by_key(|(iv, _)| iv.0);
    let mut level: Vec<(u64, u64)> = gc.iter().map(|(iv, _)| *iv).collect();
    let mut to_list: Vec<(u64, u64)> = Vec::new();
    let mut oldest_hint = 0;
    let mut first = true;
    while !level.is_empty() {
        let (local, remote, hint) = hashes(core, shard, addr, &level, &mut counts).await?;
        oldest_hint = hint;
        let differ: Vec<(u64, u64)> = level
            .iter()
            .zip(local.iter().zip(&remote))
            .filter(|(_, (l, r))| l != r)
            .map(|(iv, _)| *iv)
            .collect();
        let dense = !first && differ.len() * 2 > level.len();
        first = false;
        let (narrow, wide): (Vec<_>, Vec<_>) =
            differ.into_iter().partition(|&iv| exchange::narrow(iv));
        to_list.extend(narrow);
        if dense {
            // Most sub-ranges differ: listing their keys costs no more than splitting on.
            to_list.extend(wide);
            break;
        }
        level = wide
            .into_iter()
            .flat_map(|iv| exchange::split(iv, exchange::FAN_OUT))
            .collect();
    }
    to_list.sort_unstable();
    let gc_of = |token: u64| {
        let at = gc.partition_point(|(iv, _)| iv.0 <= token);
        at.checked_sub(1)
            .map(|i| gc[i])
            .filter(|(iv, _)| token <= iv.1)
            .and_then(|(_, before)| before)
    };
    let mut slice = runtime::CpuSlice::new(SLICE);
    // A batch of sub-ranges at a time: their keys listed on both sides, compared, repaired.
    for batch in to_list.chunks(LIST_INTERVALS_PER_REQUEST) {
        let remote = list_remote(core, addr, batch, &mut counts).await?;
        let local = list_local(core, shard, batch).await?;
        let mut actions = Vec::new();
        let keys: Vec<&Vec<u8>> = local
            .keys()
            .chain(remote.keys().filter(|k| !local.contains_key(*k)))
            .collect();
        counts.compared += keys.len() as u64;
        for key in keys {
            let l = local.get(key).map(|s| Side {
                hash: s.hash,
                version: &s.version,
                deleted_at_ms: s.deleted_at_ms,
            });
            let r = remote.get(key).map(|s| Side {
                hash: s.hash,
                version: &s.version,
                deleted_at_ms: s.deleted_at_ms,
            });
            if let Some(action) = exchange::decide(l, r, gc_of(Token::of(key).0)) {
                tracing::trace!(key = %String::from_utf8_lossy(key), ?action, local = l.is_some(), remote = r.is_some(), "divergent key");
                actions.push((key.clone(), action, remote.get(key).map(|s| s.hash)));
            }
            slice.check().await;
        }
        counts.divergent += actions.len() as u64;
        drop((local, remote));
        repair_keys(core, cluster, peer, actions, &mut counts).await;
        if core.shared().is_closing() {
            break;
        }
    }
    Ok((counts, oldest_hint))
}

/// Repairs divergent keys with `peer`, a few at a time, within the node's budget.
async fn repair_keys(
    core: &Core,
    cluster: &ClusterState,
    peer: NodeId,
    actions: Vec<(Vec<u8>, Action, Option<u64>)>,
    counts: &mut AeCounts,
) {
    let cluster = Arc::new(cluster.clone());
    for chunk in actions.chunks(REPAIRS_IN_FLIGHT) {
        let tasks: Vec<_> = chunk
            .iter()
            .cloned()
            .map(|(key, action, remote_hash)| {
                let core = core.clone();
                let cluster = cluster.clone();
                runtime::spawn(async move {
                    repair_key(&core, &cluster, peer, &key, action, remote_hash).await
                })
            })
            .collect();
        for t in tasks {
            match t.await {
                Ok(c) => add(counts, c),
                Err(e) => {
                    tracing::debug!(error = %e, "an anti-entropy repair failed; the next exchange retries");
                }
            }
        }
        if core.shared().is_closing() {
            break;
        }
    }
}

/// Both sides' hashes of `intervals`, and the peer's oldest hint.
async fn hashes(
    core: &Core,
    shard: u32,
    addr: SocketAddr,
    intervals: &[(u64, u64)],
    counts: &mut AeCounts,
) -> Result<(Vec<u64>, Vec<u64>, u64), ExchangeError> {
    let mut local = Vec::with_capacity(intervals.len());
    let mut remote = Vec::with_capacity(intervals.len());
    let mut hint = 0;
    for batch in intervals.chunks(HASHES_PER_REQUEST) {
        let op = ShardOp::TreeHashes {
            ranges: batch.to_vec(),
        };
        match core.execute_on(shard, op, CALL_TIMEOUT).await.into_tree()? {
            TreeAnswer::Hashes(Some(h)) if h.len() == batch.len() => local.extend(h),
            TreeAnswer::Hashes(None) => return Err(ExchangeError::NotReady),
            _ => return Err(ExchangeError::Failed("a core's answer does not fit".into())),
        }
        let deadline = Instant::now() + CALL_TIMEOUT;
        let timeout_ms = ms_until(deadline);
        let request = |id| build::tree_hashes(id, timeout_ms, batch);
        let body = call_idempotent(core, addr, &request, deadline).await?;
        counts.bytes += (body.len() + 16 * batch.len()) as u64;
        match reply::tree_hashes(&body).map_err(reply_error)? {
            Some((h, oldest)) if h.len() == batch.len() => {
                remote.extend(h);
                hint = min_nonzero(hint, oldest);
            }
            Some(_) => {
                return Err(ExchangeError::Failed(
                    "the peer answered a different number of hashes".into(),
                ))
            }
            None => return Err(ExchangeError::NotReady),
        }
    }
    Ok((local, remote, hint))
}

/// The peer's keys in `intervals` (sorted), with their states.
async fn list_remote(
    core: &Core,
    addr: SocketAddr,
    intervals: &[(u64, u64)],
    counts: &mut AeCounts,
) -> Result<HashMap<Vec<u8>, KeyStateWire>, ExchangeError> {
    let mut out = HashMap::new();
    for batch in intervals.chunks(LIST_INTERVALS_PER_REQUEST) {
        let mut left: Vec<(u64, u64)> = batch.to_vec();
        while !left.is_empty() {
            let deadline = Instant::now() + CALL_TIMEOUT;
            let timeout_ms = ms_until(deadline);
            let request = |id| build::tree_keys(id, timeout_ms, &left, KEYS_PER_REQUEST);
            let body = call_idempotent(core, addr, &request, deadline).await?;
            counts.bytes += (body.len() + 16 * left.len()) as u64;
            let Some((keys, more)) = reply::tree_keys(&body).map_err(reply_error)? else {
                return Err(ExchangeError::NotReady);
            };
            let last = keys.last().map(|k| Token::of(&k.key).0);
            tracing::trace!(
                intervals = left.len(),
                keys = keys.len(),
                more,
                "listed a peer's keys"
            );
            for k in keys {
                // A peer's key outside what was asked is ignored.
                let t = Token::of(&k.key).0;
                let at = left.partition_point(|iv| iv.0 <= t);
                if at.checked_sub(1).is_some_and(|i| t <= left[i].1) {
                    out.insert(k.key.clone(), k);
                }
            }
            match (more, last) {
                (true, Some(t)) => {
                    // Go on from the last key's token (keys at it again are deduplicated).
                    left.retain(|iv| iv.1 >= t);
                    if let Some(first) = left.first_mut() {
                        first.0 = first.0.max(t);
                    }
                    if out.len() > 4_000_000 {
                        return Err(ExchangeError::Failed("too many keys to list".into()));
                    }
                }
                _ => break,
            }
        }
    }
    Ok(out)
}

/// This node's keys in `intervals` (sorted) on local shard `shard`.
async fn list_local(
    core: &Core,
    shard: u32,
    intervals: &[(u64, u64)],
) -> Result<HashMap<Vec<u8>, KeyState>, ExchangeError> {
    let mut out = HashMap::new();
    for batch in intervals.chunks(LIST_INTERVALS_PER_REQUEST) {
        let mut left: Vec<(u64, u64)> = batch.to_vec();
        while !left.is_empty() {
            let op = ShardOp::TreeKeys {
                ranges: left.clone(),
                max: KEYS_PER_REQUEST as usize,
            };
            let (keys, more) = match core.execute_on(shard, op, CALL_TIMEOUT).await.into_tree()? {
                TreeAnswer::Keys(Some(k)) => k,
                TreeAnswer::Keys(None) => return Err(ExchangeError::NotReady),
                TreeAnswer::Hashes(_) | TreeAnswer::Check(_) | TreeAnswer::Objects(..) => {
                    return Err(ExchangeError::Failed("a core's answer does not fit".into()))
                }
            };
            let last = keys.last().map(|k| k.token.0);
            tracing::trace!(
                intervals = left.len(),
                keys = keys.len(),
                more,
                "listed own keys"
            );
            for k in keys {
                out.insert(k.key.clone(), k);
            }
            match (more, last) {
                (true, Some(t)) => {
                    left.retain(|iv| iv.1 >= t);
                    if let Some(first) = left.first_mut() {
                        first.0 = first.0.max(t);
                    }
                }
                _ => break,
            }
        }
    }
    Ok(out)
}

/// Repairs one divergent key with `peer`.
async fn repair_key(
    core: &Core,
    cluster: &ClusterState,
    peer: NodeId,
    key: &[u8],
    action: Action,
    remote_hash: Option<u64>,
) -> Result<AeCounts, StoreError> {
    let mut c = AeCounts::default();
    let deadline = Instant::now() + CALL_TIMEOUT;
    let mut local: Option<Object> = None;
    if matches!(action, Action::Pull | Action::Both) {
        if let Some(obj) = read_at(core, cluster, peer, key, deadline).await? {
            let bytes = object_bytes(&obj);
            budget(core, bytes).await;
            c.pulled += 1;
            c.bytes += bytes as u64;
            let op = ShardOp::ReplicaApply {
                key: key.to_vec(),
                object: obj,
                expected: None,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            local = core.execute(op, left).await.into_object()?;
        }
    }
    if matches!(action, Action::Push | Action::Both) {
        if local.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            local = core
                .execute(ShardOp::ReplicaRead { key: key.to_vec() }, left)
                .await
                .into_object()?;
        }
        if let Some(obj) = &local {
            let copy = Copy::of(key, obj)?;
            // The merge may equal what the peer has (it held everything): nothing to send.
            let same = remote_hash.is_some_and(|h| {
                key_state_of_version(key, &copy.version).is_ok_and(|s| s.hash == h)
            });
            if !same {
                let bytes = object_bytes(obj);
                budget(core, bytes).await;
                apply_at(core, cluster, peer, None, &copy, deadline).await?;
                c.pushed += 1;
                c.bytes += bytes as u64;
            }
        }
    }
    c.repaired += 1;
    Ok(c)
}

fn object_bytes(obj: &Object) -> usize {
    object::to_parts(obj).map_or(0, |(v, vals)| v.len() + vals.len())
}

/// Waits for the repair budget to allow moving `bytes`.
async fn budget(core: &Core, bytes: usize) {
    let wait = core.shared().repair_budget(|b| b.take(bytes));
    if !wait.is_zero() {
        runtime::sleep(wait).await;
    }
}

/// Measures the foreground p99 every half second on core 0 (windows of at least a second):
/// the window's and, while no exchange runs, a baseline; sets the repair budget's share.
struct ForegroundSampler {
    before: Vec<[u64; crate::metrics::LATENCY_BUCKETS_US.len()]>,
    at: Instant,
    baseline: u64,
}

impl ForegroundSampler {
    fn new(core: &Core) -> Self {
        ForegroundSampler {
            before: Self::snapshot(core),
            at: Instant::now(),
            baseline: 0,
        }
    }

    fn snapshot(core: &Core) -> Vec<[u64; crate::metrics::LATENCY_BUCKETS_US.len()]> {
        core.shared()
            .metrics()
            .iter()
            .map(crate::metrics::CoreMetrics::foreground_buckets)
            .collect()
    }

    fn sample(&mut self, core: &Core) {
        if self.at.elapsed() < Duration::from_secs(1) {
            return;
        }
        let now = Self::snapshot(core);
        let sum = |s: &[[u64; crate::metrics::LATENCY_BUCKETS_US.len()]]| {
            let mut out = [0u64; crate::metrics::LATENCY_BUCKETS_US.len()];
            for core in s {
                for (o, v) in out.iter_mut().zip(core) {
                    *o += v;
                }
            }
            out
        };
        let p99 = exchange::window_p99_us(
            &sum(&self.before),
            &sum(&now),
            &crate::metrics::LATENCY_BUCKETS_US,
        );
        self.before = now;
        self.at = Instant::now();
        let shared = core.shared();
        if shared.exchanging() {
            let factor = shared.repair_budget(|b| b.factor());
            let next = exchange::next_factor(factor, p99, self.baseline);
            shared.repair_budget(|b| b.set_factor(next));
        } else if let Some(p) = p99 {
            // A slow-moving baseline of windows without repair.
            self.baseline = if self.baseline == 0 {
                p
            } else {
                (self.baseline * 7 + p) / 8
            };
            shared.repair_budget(|b| b.set_factor(1.0));
        }
        shared.set_foreground_p99_us(p99.unwrap_or(0), self.baseline);
    }
}

/// For `GET /admin/repair`: every range this node holds, with when it was last fully
/// repaired (ms since the epoch) among its replicas as the ring gives them now.
#[must_use]
pub fn repair_status(core: &Core) -> Vec<(RangeJob, Option<u64>)> {
    let cluster = core.cluster();
    exchange::ranges_held(&cluster)
        .into_iter()
        .map(|j| {
            let replicas: Vec<u64> = j.replicas.iter().map(|n| n.0).collect();
            let at = core
                .shared()
                .purge()
                .history
                .read(|h| h.repaired_at(j.id, &replicas));
            (j, at)
        })
        .collect()
}
