//! Topology changes, driven (docs/protocol.md "Topology changes"; the decisions are in
//! [`super::moves`]). One task on core 0 of every node that gossips, every quarter second:
//!
//! * **Ring sync**: with each live peer whose announced ring digest differs from this node's
//!   book, a `RingSync` (both books merged, entry by entry).
//! * **Joining**: a node started on an empty data directory with seeds, once it knows the ring
//!   and no change is in progress, takes tokens (allocated against the ring, or a dead node's
//!   for `--replace`, or its own old ones when the ring already holds its id: a restart on a
//!   wiped disk replaces itself), records the change in its entry (`joining`) and pushes its
//!   book to every live member.
//! * **Two changes at once**: gossip gives no mutual exclusion. Every change is recorded in the
//!   moving node's entry and pushed to every live member before any range moves (a second of
//!   settling); whenever a book holds two, the lower `(change id, node)` goes on and the driver
//!   of the other calls it off (a join goes back to waiting and tries again; a decommission or
//!   removal answers its operator that another change won).
//! * **Streaming**: every node that gains ranges in the change in progress pulls each one
//!   from every current replica that is up (`StreamRange`, merged by DVV `sync` through the
//!   normal replica write path), in the anti-entropy task queue, at `stream_mib_per_s`; its
//!   entry records the progress, and `done` at the end. A stream that breaks is taken up again
//!   at the next tick, from the ranges not yet done.
//! * **Completion**: the change's driver waits until every gaining node has streamed
//!   everything, then finishes it: a joining node becomes `normal`, a leaving one `left` (and
//!   stops), a removed or replaced node `removed`.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::{Duration, Instant};

use dynacore_proto::ring::{NodeId, Ring, Token};
use dynacore_proto::{build, reply};
use dynacore_runtime as runtime;

use super::moves::{changes_in, gained, gaining_nodes, inherited_repairs, streamed, winner};
use crate::cluster::keeper::{decode_book, RingKeeper};
use crate::cluster::ring_book::{Change, ChangeKind, MemberState, Progress, RingMember};
use crate::core::{Core, ShardOp};
use crate::storage::replica::StoreError;

/// How often the driver looks.
const TICK: Duration = Duration::from_millis(250);
/// How long a change settles (pushed to every member, conflicts surfacing) before ranges move.
const SETTLE_MS: u64 = 1000;
/// A peer's answer to a ring sync or a stream request comes within this.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Keys per `StreamRange` request.
const STREAM_KEYS: u32 = 256;
/// Streamed copies being stored at once.
const APPLY_IN_FLIGHT: usize = 16;
/// How long a decommissioned node keeps answering (forwarding) after it left the ring, so that
/// clients learn the new topology before it stops (the SDK refreshes every 10 s).
const LEAVE_LINGER: Duration = Duration::from_secs(12);
/// About this many bytes per `StreamRange` answer.
const STREAM_BYTES: u32 = 1 << 20;

/// What the node was started to do.
#[derive(Clone, Debug)]
pub struct TopologyOptions {
    /// A dead node whose tokens it takes over.
    pub replace: Option<NodeId>,
    /// Its rack.
    pub rack: String,
    /// Its vnode count.
    pub vnodes: u16,
    /// Bytes streamed in per second at most.
    pub stream_bytes_per_s: u64,
}

fn now_ms() -> u64 {
    crate::storage::hints::now_ms()
}

/// The ranges of a change (by id) already streamed in.
type DoneRanges = (u64, BTreeSet<(u64, u64)>);

/// The driver's state between ticks.
struct Driver {
    core: Core,
    keeper: RingKeeper,
    opts: TopologyOptions,
    /// A stream of ranges in is running.
    streaming: Rc<Cell<bool>>,
    /// Per change id: the gained ranges already in (resumes a broken stream).
    done_ranges: Rc<RefCell<DoneRanges>>,
    /// What a peer's book last said of this node (a restart on a wiped disk learns its
    /// tokens from it).
    peer_view: RefCell<Option<RingMember>>,
    /// Not before this time does a join try again (after a conflict).
    retry_at: Cell<Option<Instant>>,
    /// The gaining nodes of a change (by id), computed once.
    gainers: RefCell<(u64, Vec<NodeId>)>,
    /// The change in progress (by id) with its current and future rings: once it completes,
    /// the repair history follows its ranges.
    seen_move: RefCell<Option<(u64, Ring, Ring)>>,
}

/// Starts the driver on this core (core 0 of a node that gossips).
pub fn run_topology(core: Core, opts: TopologyOptions) {
    let Some(keeper) = core.shared().keeper().cloned() else {
        return;
    };
    let driver = Rc::new(Driver {
        core,
        keeper,
        opts,
        streaming: Rc::new(Cell::new(false)),
        done_ranges: Rc::new(RefCell::new((0, BTreeSet::new()))),
        peer_view: RefCell::new(None),
        retry_at: Cell::new(None),
        gainers: RefCell::new((0, Vec::new())),
        seen_move: RefCell::new(None),
    });
    runtime::spawn_detached(async move {
        loop {
            runtime::sleep(TICK).await;
            if driver.core.shared().is_closing() {
                return;
            }
            driver.sync_round().await;
            driver.follow_repairs();
            driver.tick().await;
        }
    });
}

impl Driver {
    fn own(&self) -> NodeId {
        self.core.cluster().own
    }

    /// Syncs the book with up to three live peers whose announced digest differs.
    async fn sync_round(&self) {
        let digest = self.keeper.digest();
        let members = self
            .core
            .shared()
            .members()
            .read()
            .ok()
            .and_then(|m| m.clone());
        let Some(members) = members else { return };
        let mut differing: Vec<std::net::SocketAddr> = members
            .others
            .iter()
            .filter(|v| v.up)
            .filter_map(|v| v.meta.as_ref())
            .filter(|m| m.ring != digest)
            .map(|m| m.binary)
            .collect();
        // A few at a time, in turns.
        let start = usize::try_from(rand::random::<u32>()).unwrap_or(0);
        if !differing.is_empty() {
            let by = start % differing.len();
            differing.rotate_left(by);
        }
        for addr in differing.into_iter().take(3) {
            if let Err(e) = self.sync_with(addr).await {
                tracing::debug!(%addr, error = %e, "ring sync failed");
            }
        }
    }

    /// One `RingSync` with the node at `addr`.
    async fn sync_with(&self, addr: std::net::SocketAddr) -> Result<(), String> {
        let entries = sync_with(&self.core, &self.keeper, addr).await?;
        let own = self.own().to_string();
        if let Some(me) = entries.iter().find(|m| m.id == own) {
            *self.peer_view.borrow_mut() = Some(me.clone());
        }
        Ok(())
    }

    /// Pushes this node's book to every live member (after a change of it).
    async fn push_all(&self) {
        push_all(&self.core, &self.keeper).await;
    }

    /// Once a change this node saw in progress has completed (its future ring is the ring),
    /// the repair history's entries of the ranges it moved are carried over to the new ranges
    /// (see [`inherited_repairs`]); a change called off leaves the history as it was.
    fn follow_repairs(&self) {
        let cluster = self.core.cluster();
        let mut seen = self.seen_move.borrow_mut();
        match (&cluster.moving, &cluster.future) {
            (Some(mv), Some(future)) => {
                if seen.as_ref().map(|s| s.0) != Some(mv.change.id) {
                    *seen = Some((mv.change.id, cluster.ring.clone(), future.clone()));
                }
            }
            (None, _) => {
                let Some((change, old, future)) = seen.take() else {
                    return;
                };
                if cluster.ring.vnodes() != future.vnodes() {
                    return;
                }
                let history = &self.core.shared().purge().history;
                let rf = usize::from(cluster.configured_rf);
                let inherited = history.read(|h| {
                    inherited_repairs(&old, &future, rf, cluster.own, |range, replicas| {
                        h.repaired_at(range, replicas)
                    })
                });
                if inherited.is_empty() {
                    return;
                }
                let n = inherited.len();
                history.update(|h| {
                    let mut changed = false;
                    for (range, replicas, at) in &inherited {
                        changed |= h.record(*range, replicas, *at);
                    }
                    changed
                });
                history.save_in_background();
                tracing::info!(
                    change,
                    ranges = n,
                    "the repair history follows the ranges the change moved"
                );
            }
            (Some(_), None) => {}
        }
    }

    async fn tick(&self) {
        let own = self.own();
        let entries: Vec<(NodeId, RingMember)> = self
            .keeper
            .read(|b| b.members().map(|(n, m)| (n, m.clone())).collect());
        let changes = changes_in(&entries);
        // Two changes at once: the loser's driver calls it off.
        if changes.len() > 1 {
            if let Some((win, _)) = winner(&changes) {
                for (node, change) in changes.iter().filter(|(n, _)| *n != win) {
                    if change.driver == own.to_string() {
                        tracing::warn!(
                            %node,
                            change = change.id,
                            winner = %win,
                            "another topology change started at the same time and goes on; \
                             calling this one off"
                        );
                        self.call_off(*node);
                        self.push_all().await;
                    }
                }
            }
            return;
        }
        let cluster = self.core.cluster();
        let own_entry = entries
            .iter()
            .find(|(n, _)| *n == own)
            .map(|(_, m)| m.clone());
        let Some(own_entry) = own_entry else { return };
        if own_entry.state.gone() {
            // Removed (or decommissioned) while away: this data directory never serves again.
            tracing::error!(
                state = own_entry.state.name(),
                "this node was {} from the ring: stopping; wipe its data directory to start it \
                 as a new node",
                own_entry.state.name()
            );
            self.core.shared().request_shutdown();
            return;
        }
        if own_entry.state == MemberState::Joining && own_entry.tokens.is_empty() {
            if cluster.moving.is_none()
                && cluster.ring_known
                && self.retry_at.get().is_none_or(|t| Instant::now() >= t)
            {
                self.start_join(&own_entry).await;
            }
            return;
        }
        let Some(mv) = cluster.moving.clone() else {
            return;
        };
        // Let the change settle before ranges move.
        if now_ms() < mv.change.id.saturating_add(SETTLE_MS) {
            return;
        }
        if self.gainers.borrow().0 != mv.change.id {
            *self.gainers.borrow_mut() = (mv.change.id, gaining_nodes(&cluster));
        }
        let gainers = self.gainers.borrow().1.clone();
        if gainers.contains(&own) && !streamed(&own_entry, &mv) && !self.streaming.get() {
            self.start_stream(mv.clone());
        }
        if mv.change.driver == own.to_string() {
            let all_in = gainers.iter().all(|g| {
                entries
                    .iter()
                    .find(|(n, _)| n == g)
                    .is_some_and(|(_, m)| streamed(m, &mv))
            });
            if all_in {
                self.finish(&mv);
                self.push_all().await;
                if mv.node == own && mv.state == MemberState::Leaving {
                    tracing::info!(
                        linger_s = LEAVE_LINGER.as_secs(),
                        "decommissioned: every range streamed to its next owner; stopping once \
                         clients have moved away"
                    );
                    runtime::sleep(LEAVE_LINGER).await;
                    self.core.shared().request_shutdown();
                }
            }
        }
    }

    /// Takes tokens and records the join (or replacement) in this node's entry.
    async fn start_join(&self, own_entry: &RingMember) {
        let cluster = self.core.cluster();
        let own = cluster.own;
        let id = now_ms();
        let driver = own.to_string();
        let (tokens, replaces, kind) = if let Some(dead) = self.opts.replace {
            let Some(d) = cluster.nodes.get(&dead).filter(|d| d.in_ring) else {
                tracing::error!(node = %dead, "--replace: that node is not in the ring");
                self.retry_at
                    .set(Some(Instant::now() + Duration::from_secs(5)));
                return;
            };
            if d.up {
                tracing::error!(node = %dead, "--replace: that node is up; only a dead node is replaced");
                self.retry_at
                    .set(Some(Instant::now() + Duration::from_secs(5)));
                return;
            }
            (
                d.tokens.iter().map(|t| t.0).collect::<Vec<u64>>(),
                Some(dead.to_string()),
                ChangeKind::Replace,
            )
        } else if let Some(me) = self
            .peer_view
            .borrow()
            .clone()
            .filter(|m| !m.tokens.is_empty() && !m.state.gone())
        {
            // The ring holds this node already: it was restarted on an empty disk, and
            // replaces itself.
            tracing::warn!(
                "this node's id is in the ring but its data directory is new: streaming its \
                 ranges back before it serves reads"
            );
            (me.tokens, Some(driver.clone()), ChangeKind::Replace)
        } else {
            let tokens = dynacore_proto::allocate_tokens(
                Some(&cluster.ring),
                own,
                &self.opts.rack,
                self.opts.vnodes,
                usize::from(cluster.configured_rf),
                id ^ own.0,
            );
            (tokens.iter().map(|t| t.0).collect(), None, ChangeKind::Join)
        };
        if tokens.is_empty() {
            return;
        }
        let _ = own_entry;
        self.keeper.edit(|b| {
            b.update_own(|m| {
                m.tokens = tokens;
                m.state = MemberState::Joining;
                m.replaces = replaces;
                m.change = Some(Change {
                    id,
                    kind,
                    driver: driver.clone(),
                });
                m.progress = None;
            });
            true
        });
        tracing::info!(change = id, ?kind, "joining the ring");
        self.push_all().await;
    }

    /// Calls off the change moving `node` (this node drives it).
    fn call_off(&self, node: NodeId) {
        let own = self.own();
        let retry = Duration::from_millis(1000 + u64::from(rand::random::<u16>() % 2000));
        self.keeper.edit(|b| {
            b.update(node, |m| {
                match m.state {
                    // A join goes back to waiting, and tries again later.
                    MemberState::Joining if node == own && m.replaces.as_deref() != Some(&m.id) => {
                        m.tokens.clear();
                        m.replaces = None;
                    }
                    MemberState::Leaving => m.state = MemberState::Normal,
                    _ => {}
                }
                m.change = None;
                m.progress = None;
            });
            true
        });
        self.retry_at.set(Some(Instant::now() + retry));
    }

    /// Completes the change `mv` (every gaining node has its ranges).
    fn finish(&self, mv: &crate::cluster::ring_book::Move) {
        let own = self.own();
        self.keeper.edit(|b| {
            match mv.state {
                MemberState::Joining => {
                    b.update(mv.node, |m| {
                        m.state = MemberState::Normal;
                        m.change = None;
                        m.progress = None;
                        m.replaces = None;
                    });
                    if let Some(dead) = mv.replaces.filter(|&d| d != mv.node) {
                        b.update(dead, |m| {
                            m.state = MemberState::Removed;
                            m.change = None;
                        });
                    }
                }
                _ => b.update(mv.node, |m| {
                    m.state = if mv.node == own {
                        MemberState::Left
                    } else {
                        MemberState::Removed
                    };
                    m.change = None;
                    m.progress = None;
                }),
            }
            // Every gaining node's progress of this change is done with.
            let ids: Vec<NodeId> = b.members().map(|(n, _)| n).collect();
            if ids.contains(&own) {
                b.update_own(|m| {
                    if m.progress
                        .as_ref()
                        .is_some_and(|p| p.change == mv.change.id)
                    {
                        m.progress = None;
                    }
                });
            }
            true
        });
        tracing::info!(node = %mv.node, change = mv.change.id, "topology change complete");
    }

    /// Streams the ranges this node gains in `mv` (in the background).
    fn start_stream(&self, mv: crate::cluster::ring_book::Move) {
        self.streaming.set(true);
        let (core, keeper, flag, done) = (
            self.core.clone(),
            self.keeper.clone(),
            self.streaming.clone(),
            self.done_ranges.clone(),
        );
        let rate = self.opts.stream_bytes_per_s;
        runtime::spawn_detached_into(
            async move {
                // The repair budget paces the stream: it starts at an eighth, and its share
                // follows the foreground p99 while ranges stream in.
                core.shared().set_streaming(true);
                core.shared()
                    .repair_budget(|b| b.set_factor(b.factor().min(0.125)));
                if let Err(e) = stream_in(&core, &keeper, &mv, rate, &done).await {
                    tracing::warn!(error = %e, "streaming ranges in broke off; taking it up again");
                }
                core.shared().set_streaming(false);
                flag.set(false);
            },
            super::anti_entropy_queue(),
        );
    }
}

/// One `RingSync` with the node at `addr`: both books merged; the peer's entries.
async fn sync_with(
    core: &Core,
    keeper: &RingKeeper,
    addr: std::net::SocketAddr,
) -> Result<Vec<RingMember>, String> {
    let book = keeper.encoded();
    let deadline = Instant::now() + CALL_TIMEOUT;
    let timeout_ms = u32::try_from(CALL_TIMEOUT.as_millis()).unwrap_or(u32::MAX);
    let body = core
        .peers()
        .call_once(
            addr,
            &|id| build::ring_sync(id, timeout_ms, &book),
            deadline,
        )
        .await
        .map_err(|e| e.to_string())?;
    let theirs = reply::ring_sync(&body).map_err(|e| e.to_string())?;
    let entries = decode_book(&theirs)?;
    keeper.merge(&entries);
    Ok(entries)
}

/// Pushes this node's book to every live member, merging their answers.
async fn push_all(core: &Core, keeper: &RingKeeper) {
    let cluster = core.cluster();
    let peers: Vec<std::net::SocketAddr> = cluster
        .nodes
        .values()
        .filter(|n| n.id != cluster.own && n.up)
        .map(|n| n.binary)
        .collect();
    for addr in peers {
        if let Err(e) = sync_with(core, keeper, addr).await {
            tracing::debug!(%addr, error = %e, "ring push failed");
        }
    }
}

/// Why a topology change cannot start now, if it cannot.
fn refuse_if_busy(core: &Core) -> Result<RingKeeper, String> {
    let Some(keeper) = core.shared().keeper().cloned() else {
        return Err(
            "this node does not gossip (it listens on every address): it is a cluster \
                    of one, with no ring to change"
                .into(),
        );
    };
    if let Some(mv) = &core.cluster().moving {
        return Err(format!(
            "another topology change is in progress: node {} is {} ({:?}, change {}); one \
             change at a time — wait until it completes (GET /cluster shows its progress)",
            mv.node,
            mv.state.name(),
            mv.change.kind,
            mv.change.id
        ));
    }
    Ok(keeper)
}

/// What a cleanup did on each core.
#[derive(Debug)]
pub struct Cleaned {
    /// Per core, what its shard's cleanup did (or why it failed).
    pub cores: Vec<Result<dynacore_engine::CleanupStats, String>>,
    /// The ring's vnode ranges this node keeps, of all.
    pub kept_ranges: (usize, usize),
}

/// Drops this node's copies of the ranges it no longer replicates (after a join gave them to
/// another node), on every core: like `nodetool cleanup`. Refused while a topology change is
/// in progress (the new owners must hold the ranges first: a change completes only once they
/// do) or another cleanup runs; abandoned, dropping nothing, if the ring changes before a
/// core's merge is installed.
///
/// # Errors
/// Why it cannot start (409).
pub async fn cleanup(core: &Core) -> Result<Cleaned, String> {
    let cluster = core.cluster();
    if let Some(mv) = &cluster.moving {
        return Err(format!(
            "a topology change is in progress (node {} is {}, change {}): cleanup waits until \
             it is done, so that the new owners hold the ranges before this node drops them",
            mv.node,
            mv.state.name(),
            mv.change.id
        ));
    }
    let own = cluster.own_node();
    if !own.in_ring || own.state != MemberState::Normal {
        return Err(format!(
            "this node is {}, not a normal member of the ring",
            own.state.name()
        ));
    }
    if !core.shared().start_cleaning() {
        return Err("a cleanup is already running on this node".into());
    }
    // Cleared however this ends (the caller may go away; the cores' runs go on regardless).
    struct Cleaning(Core);
    impl Drop for Cleaning {
        fn drop(&mut self) {
            self.0.shared().stop_cleaning();
        }
    }
    let _cleaning = Cleaning(core.clone());
    let plan = std::sync::Arc::new(crate::core::CleanupPlan::new(
        &cluster,
        core.shared().keeper().cloned(),
    ));
    let kept_ranges = plan.kept_ranges();
    let runs: Vec<_> = (0..core.shards())
        .map(|shard| {
            let core = core.clone();
            let plan = plan.clone();
            runtime::spawn(async move {
                core.execute_on(shard, ShardOp::Cleanup(plan), CLEANUP_TIMEOUT)
                    .await
            })
        })
        .collect();
    let mut cores = Vec::with_capacity(runs.len());
    for run in runs {
        cores.push(match run.await {
            crate::core::ShardReply::Cleanup(r) => r.map_err(|e| e.to_string()),
            other => Err(format!("a core answered another request: {other:?}")),
        });
    }
    Ok(Cleaned { cores, kept_ranges })
}

/// How long a cleanup may take on one core.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(3600);

/// Starts decommissioning this node: it becomes `leaving`; the nodes that gain its ranges
/// stream them; then it is `left` and stops. The change's id.
///
/// # Errors
/// Why it cannot start (another change in progress, not in the ring, the ring's last node).
pub async fn decommission(core: &Core) -> Result<u64, String> {
    let keeper = refuse_if_busy(core)?;
    let cluster = core.cluster();
    let own = cluster.own_node();
    if !own.in_ring || own.state != MemberState::Normal {
        return Err(format!(
            "this node is {}, not a normal member of the ring",
            own.state.name()
        ));
    }
    if cluster.ring.node_count() < 2 {
        return Err("this node is the ring's last: there is nobody to hand its data to".into());
    }
    let id = start_leaving(core, &keeper, cluster.own, ChangeKind::Decommission).await;
    tracing::info!(
        change = id,
        "decommissioning: streaming this node's ranges to their next owners"
    );
    Ok(id)
}

/// Marks `node` leaving under a new change of `kind` driven by this node, and pushes the book
/// to every live member; the change's id.
async fn start_leaving(core: &Core, keeper: &RingKeeper, node: NodeId, kind: ChangeKind) -> u64 {
    let id = now_ms();
    let driver = core.cluster().own.to_string();
    keeper.edit(|b| {
        b.update(node, |m| {
            m.state = MemberState::Leaving;
            m.change = Some(Change { id, kind, driver });
            m.progress = None;
        });
        true
    });
    push_all(core, keeper).await;
    id
}

/// Starts removing the dead node `node`: its ranges are rebuilt on their next owners from the
/// surviving replicas, driven by this node; then it is `removed`. The change's id.
///
/// # Errors
/// Why it cannot start (another change in progress, the node unknown, up, or this one).
pub async fn remove_node(core: &Core, node: NodeId) -> Result<u64, String> {
    let keeper = refuse_if_busy(core)?;
    let cluster = core.cluster();
    if node == cluster.own {
        return Err("a node does not remove itself: decommission it instead".into());
    }
    let Some(target) = cluster.nodes.get(&node).filter(|n| n.in_ring) else {
        return Err(format!("node {node} is not in the ring"));
    };
    if target.up {
        return Err(format!(
            "node {node} is up: only a dead node is removed (decommission a live one)"
        ));
    }
    let id = start_leaving(core, &keeper, node, ChangeKind::Remove).await;
    tracing::info!(%node, change = id, "removing a dead node: rebuilding its ranges");
    Ok(id)
}

/// Pulls every range `mv` gives this node from its sources, recording progress in the book.
async fn stream_in(
    core: &Core,
    keeper: &RingKeeper,
    mv: &crate::cluster::ring_book::Move,
    bytes_per_s: u64,
    done: &RefCell<DoneRanges>,
) -> Result<(), String> {
    let cluster = core.cluster();
    let own = cluster.own;
    let ranges = gained(&cluster, own);
    if done.borrow().0 != mv.change.id {
        *done.borrow_mut() = (mv.change.id, BTreeSet::new());
    }
    let started = now_ms();
    let mut progress = Progress {
        node: mv.node.to_string(),
        change: mv.change.id,
        ranges: ranges.len() as u64,
        ranges_done: 0,
        keys: 0,
        bytes: 0,
        started_ms: started,
        done: false,
    };
    tracing::info!(
        ranges = ranges.len(),
        change = mv.change.id,
        "streaming ranges in"
    );
    let record = |p: &Progress| {
        keeper.edit(|b| {
            b.update_own(|m| m.progress = Some(p.clone()));
            true
        });
    };
    record(&progress);
    let mut last_record = Instant::now();
    let window = Instant::now();
    let mut window_bytes = 0u64;
    for g in &ranges {
        if done.borrow().1.contains(&(g.start, g.end)) {
            progress.ranges_done += 1;
            continue;
        }
        // Still the same change?
        if core.cluster().moving.as_ref().map(|m| m.change.id) != Some(mv.change.id) {
            return Err("the change was called off or completed".into());
        }
        // The strict source alone when it is up, else every current replica that is.
        let live: Vec<NodeId> = match g.strict.filter(|&s| core.cluster().is_up(s)) {
            Some(strict) => vec![strict],
            None => g
                .sources
                .iter()
                .copied()
                .filter(|&s| core.cluster().is_up(s))
                .collect(),
        };
        if live.is_empty() {
            return Err(format!(
                "no replica of range {}..={} is up to stream it from",
                g.start, g.end
            ));
        }
        for source in live {
            let (keys, bytes) = stream_range(core, source, g.start, g.end).await?;
            progress.keys += keys;
            progress.bytes += bytes;
            window_bytes += bytes;
            // The rate limit: sleep off what went past it.
            let allowed = window.elapsed().as_secs_f64() * bytes_per_s as f64;
            #[allow(clippy::cast_precision_loss)]
            if window_bytes as f64 > allowed {
                let over = (window_bytes as f64 - allowed) / bytes_per_s.max(1) as f64;
                runtime::sleep(Duration::from_secs_f64(over.min(5.0))).await;
            }
        }
        done.borrow_mut().1.insert((g.start, g.end));
        progress.ranges_done += 1;
        if last_record.elapsed() >= Duration::from_secs(2) {
            record(&progress);
            last_record = Instant::now();
        }
    }
    progress.done = true;
    record(&progress);
    tracing::info!(
        keys = progress.keys,
        bytes = progress.bytes,
        ms = now_ms().saturating_sub(started),
        "every range streamed in"
    );
    Ok(())
}

/// Pulls `start..=end` from `source`, applying each key's copy here; keys and bytes moved.
async fn stream_range(
    core: &Core,
    source: NodeId,
    start: u64,
    end: u64,
) -> Result<(u64, u64), String> {
    let Some(peer) = core.cluster().nodes.get(&source).cloned() else {
        return Err(format!("node {source} left"));
    };
    let addr = peer.core_addr(Token(end));
    let mut after: Vec<u8> = Vec::new();
    let (mut keys, mut bytes) = (0u64, 0u64);
    loop {
        let deadline = Instant::now() + CALL_TIMEOUT;
        let timeout_ms = u32::try_from(CALL_TIMEOUT.as_millis()).unwrap_or(u32::MAX);
        let request = |id| {
            build::stream_range(
                id,
                timeout_ms,
                (start, end),
                &after,
                STREAM_KEYS,
                STREAM_BYTES,
            )
        };
        let body = core
            .peers()
            .call_once(addr, &request, deadline)
            .await
            .map_err(|e| format!("streaming from {source}: {e}"))?;
        let (entries, more) =
            reply::stream_range(&body).map_err(|e| format!("streaming from {source}: {e}"))?;
        bytes += body.len() as u64;
        core.metrics()
            .streamed_in(entries.len() as u64, body.len() as u64);
        for batch in entries.chunks(APPLY_IN_FLIGHT) {
            let mut applying = Vec::with_capacity(batch.len());
            for e in batch {
                let t = Token::of(&e.key).0;
                if t < start || t > end {
                    return Err(format!("{source} sent a key outside the range asked"));
                }
                let object = dynacore_engine::object::from_parts(&e.version, &e.values)
                    .map_err(|err| format!("{source} sent a copy that does not decode: {err}"))?;
                let wait = core
                    .shared()
                    .repair_budget(|b| b.take(e.key.len() + e.values.len()));
                if !wait.is_zero() {
                    runtime::sleep(wait).await;
                }
                let op = ShardOp::ReplicaApply {
                    key: e.key.clone(),
                    object,
                    expected: None,
                };
                let core = core.clone();
                applying.push(runtime::spawn(async move {
                    core.execute(op, CALL_TIMEOUT).await.into_object()
                }));
            }
            for a in applying {
                match a.await {
                    Ok(_) => keys += 1,
                    Err(StoreError::BadRequest(m)) => {
                        tracing::warn!(%source, error = %m, "a streamed copy was refused");
                    }
                    Err(e) => return Err(format!("storing a streamed copy: {e}")),
                }
            }
        }
        match (more, entries.last()) {
            (true, Some(last)) => after.clone_from(&last.key),
            _ => return Ok((keys, bytes)),
        }
    }
}
