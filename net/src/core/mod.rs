//! The cores of one node and the way a request reaches the core that owns its key.
//!
//! Every core runs one executor with one engine shard. A key belongs to the core the node's
//! [`ShardMap`] names for its token; a request that arrives on
//! another core (through the shared port, or a client that routed it wrongly) is *forwarded*:
//! a [`ShardOp`] goes into the owner's inbox (a multi-producer queue) with a one-shot reply
//! channel inside, the owner runs it and answers, and the forward is counted in the metrics.
//! This is the "reply channel inside the request" pattern of `shared/notes/glommio.md`: no
//! channel-mesh join barrier, and no cycle of bounded queues that could deadlock.
//!
//! Shutdown is counted here too: every admitted request holds an [`Admission`] until it is
//! answered, and once the node is closing no new one is admitted, so the node knows when the
//! last in-flight request (including what it forwarded) is done and the shards can close.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dynacore_engine::version::VersionVector;
use dynacore_engine::{Object, ShardStats, Token};
use dynacore_runtime as runtime;

use crate::cluster::replication::ReplicationConfig;
use crate::cluster::{ClusterState, RingBook, RingMember, SharedCluster};
use crate::metrics::CoreMetrics;
use crate::storage::hints::HintStore;
use crate::storage::replica::{LocalStore, StoreError};
use dynacore_client::glommio::ConnPool;
use dynacore_proto::reply::Ballot;
use dynacore_proto::ring::NodeId;
use dynacore_proto::ClusterKey;

/// What one shard is asked to do.
#[derive(Debug)]
pub enum ShardOp {
    /// A coordinator's write on its own replica: a new version of the key, minted here.
    Write {
        /// The key.
        key: Vec<u8>,
        /// The value, or `None` for a tombstone.
        value: Option<Vec<u8>>,
        /// Expiry in milliseconds from now.
        ttl_ms: Option<u64>,
        /// Write only if the copy holds nothing this version does not.
        expected: Option<VersionVector>,
        /// The causal context the write builds on (`None`: the copy's own, a blind write).
        context: Option<VersionVector>,
    },
    /// Read this replica's own copy of a key.
    ReplicaRead {
        /// The key.
        key: Vec<u8>,
    },
    /// Merge an object into this replica's copy of a key.
    ReplicaApply {
        /// The key.
        key: Vec<u8>,
        /// The incoming copy.
        object: Object,
        /// Apply only if the copy holds nothing this version does not.
        expected: Option<VersionVector>,
    },
    /// A lightweight transaction's step on this replica's key.
    Paxos {
        /// The key.
        key: Vec<u8>,
        /// The step.
        step: PaxosStep,
    },
    /// Report the shard's statistics.
    Stats,
    /// Flush the shard's memtables and merge all its tables into one (an operator's major
    /// compaction); answered with the statistics once done.
    Compact,
    /// The hash of the shard's keys in each token range `start..=end` (anti-entropy).
    TreeHashes {
        /// The ranges.
        ranges: Vec<(u64, u64)>,
    },
    /// Scan the whole shard into a tree and compare it with the live one.
    VerifyTree,
    /// The shard's keys in the token ranges with their states, at most `max`.
    TreeKeys {
        /// The ranges.
        ranges: Vec<(u64, u64)>,
        /// The bound.
        max: usize,
    },
    /// The shard's copies of the keys of `start..=end` past `after` (streaming a range to a
    /// new owner), within the bounds.
    StreamRange {
        /// The range's first token.
        start: u64,
        /// Its last token.
        end: u64,
        /// The last key already sent (empty: none).
        after: Vec<u8>,
        /// Keys at most.
        max_keys: usize,
        /// About this many bytes at most.
        max_bytes: usize,
    },
    /// Drop the shard's keys outside the ranges the plan keeps (`dynacore cleanup`).
    Cleanup(Arc<CleanupPlan>),
    /// Flush, then hard-link the shard's tables and blob files into this directory
    /// (`dynacore snapshot`).
    Snapshot(std::path::PathBuf),
}

/// What a cleanup keeps, decided under one ring: for each vnode of the ring (by token,
/// ascending), whether this node replicates its range.
#[derive(Debug)]
pub struct CleanupPlan {
    vnodes: Vec<(u64, bool)>,
    /// The ring book and its epochs when the plan was made (`None`: a node that does not gossip,
    /// whose ring never changes).
    decided_under: Option<(crate::cluster::keeper::RingKeeper, u64)>,
}

impl CleanupPlan {
    /// The plan for `own` under `cluster`'s current ring, while the book is at its current
    /// epochs.
    #[must_use]
    pub fn new(cluster: &ClusterState, keeper: Option<crate::cluster::keeper::RingKeeper>) -> Self {
        let ring = &cluster.ring;
        let rf = usize::from(cluster.replication_factor);
        let vnodes = (0..ring.vnodes().len())
            .map(|i| {
                let held = ring.preference_list_at(i, rf).contains(&cluster.own);
                (ring.vnodes()[i].token.0, held)
            })
            .collect();
        CleanupPlan {
            vnodes,
            decided_under: keeper.map(|k| {
                let epochs = k.ring_epochs();
                (k, epochs)
            }),
        }
    }

    /// Whether this node replicates `token`'s range.
    #[must_use]
    pub fn keeps(&self, token: Token) -> bool {
        let i = self.vnodes.partition_point(|&(t, _)| t < token.0);
        self.vnodes
            .get(if i == self.vnodes.len() { 0 } else { i })
            .is_none_or(|&(_, held)| held)
    }

    /// How many of the ring's vnode ranges it keeps, and how many there are.
    #[must_use]
    pub fn kept_ranges(&self) -> (usize, usize) {
        (
            self.vnodes.iter().filter(|(_, held)| *held).count(),
            self.vnodes.len(),
        )
    }

    /// Whether the ring is still the one the plan was made under.
    ///
    /// # Errors
    /// Why not.
    pub fn still_valid(&self) -> Result<(), String> {
        match &self.decided_under {
            Some((keeper, epochs)) if keeper.ring_epochs() != *epochs => Err(
                "the ring changed while the cleanup ran (a topology change started): nothing \
                 was dropped; run it again once the change is done"
                    .into(),
            ),
            _ => Ok(()),
        }
    }
}

/// A shard's answer to a tree operation (`None` inside: the tree is not ready).
#[derive(Debug)]
pub enum TreeAnswer {
    /// To [`ShardOp::TreeHashes`].
    Hashes(Option<Vec<u64>>),
    /// To [`ShardOp::TreeKeys`]: the keys, and whether the bound cut them short.
    Keys(Option<(Vec<dynacore_engine::KeyState>, bool)>),
    /// To [`ShardOp::VerifyTree`].
    Check(Option<dynacore_engine::TreeCheck>),
    /// To [`ShardOp::StreamRange`]: the keys' copies, and whether a bound cut them short.
    Objects(Vec<(Vec<u8>, Object)>, bool),
}

/// A step of a Paxos round, as one replica runs it.
#[derive(Debug)]
pub enum PaxosStep {
    /// Promise the ballot (if above every one promised); answers the state and the copy.
    Prepare(Ballot),
    /// Accept the proposal at the ballot (unless a higher one was promised).
    Propose(Ballot, Object),
    /// Merge the proposal into the copy, then record the commit.
    Commit(Ballot, Object),
    /// The coordinator's own replica mints the new version (not stored): value, TTL, and the
    /// current value the quorum holds.
    Mint {
        /// The value, or `None` for a tombstone.
        value: Option<Vec<u8>>,
        /// Expiry in milliseconds from now.
        ttl_ms: Option<u64>,
        /// The key's value as the quorum holds it.
        current: Option<Object>,
    },
}

/// A replica's answer to a [`PaxosStep`].
#[derive(Debug)]
pub enum PaxosAnswer {
    /// To a prepare.
    Promise {
        /// Whether the ballot was promised.
        promised: bool,
        /// The highest ballot promised.
        ballot: Ballot,
        /// The proposal accepted and not seen committed.
        accepted: Option<(Ballot, Object)>,
        /// The last commit seen.
        committed: Option<Ballot>,
        /// The replica's copy.
        copy: Option<Object>,
    },
    /// To a proposal: accepted or not, and the highest ballot promised.
    Accepted(bool, Ballot),
    /// To a commit.
    Committed,
    /// To a mint.
    Minted(Object),
}

/// A shard's answer.
#[derive(Debug)]
pub enum ShardReply {
    /// To [`ShardOp::Stats`] and [`ShardOp::Compact`].
    Stats(Box<ShardStats>),
    /// To [`ShardOp::Stats`] and [`ShardOp::Compact`], when the core could not answer.
    NoStats(StoreError),
    /// To the other operations: the replica's copy (after the write or merge).
    Object(Result<Option<Object>, StoreError>),
    /// To [`ShardOp::Paxos`].
    Paxos(Result<PaxosAnswer, StoreError>),
    /// To [`ShardOp::TreeHashes`] and [`ShardOp::TreeKeys`].
    Tree(Result<TreeAnswer, StoreError>),
    /// To [`ShardOp::Cleanup`].
    Cleanup(Result<dynacore_engine::CleanupStats, StoreError>),
    /// To [`ShardOp::Snapshot`].
    Snapshot(Result<dynacore_engine::SnapshotFiles, StoreError>),
}

impl ShardReply {
    /// The answer of a tree operation.
    ///
    /// # Errors
    /// The operation's error; [`StoreError::Internal`] for another kind of answer.
    pub fn into_tree(self) -> Result<TreeAnswer, StoreError> {
        match self {
            ShardReply::Tree(r) => r,
            other => {
                debug_assert!(false, "mismatched reply {other:?}");
                Err(StoreError::Internal("mismatched reply from a core".into()))
            }
        }
    }

    /// The object of an [`ShardReply::Object`] answer.
    ///
    /// # Errors
    /// The operation's error; [`StoreError::Internal`] for another kind of answer.
    pub fn into_object(self) -> Result<Option<Object>, StoreError> {
        match self {
            ShardReply::Object(r) => r,
            other => {
                // INVARIANT: a core answers each operation with its own kind of reply.
                debug_assert!(false, "mismatched reply {other:?}");
                Err(StoreError::Internal("mismatched reply from a core".into()))
            }
        }
    }

    /// The answer of a [`ShardReply::Paxos`] reply.
    ///
    /// # Errors
    /// The step's error; [`StoreError::Internal`] for another kind of answer.
    pub fn into_paxos(self) -> Result<PaxosAnswer, StoreError> {
        match self {
            ShardReply::Paxos(r) => r,
            other => {
                debug_assert!(false, "mismatched reply {other:?}");
                Err(StoreError::Internal("mismatched reply from a core".into()))
            }
        }
    }
}

/// Which kind of reply an operation gets.
#[derive(Clone, Copy)]
enum ReplyKind {
    Stats,
    Object,
    Paxos,
    Tree,
    Cleanup,
    Snapshot,
}

impl ReplyKind {
    fn of(op: &ShardOp) -> ReplyKind {
        match op {
            ShardOp::Stats | ShardOp::Compact => ReplyKind::Stats,
            ShardOp::Paxos { .. } => ReplyKind::Paxos,
            ShardOp::Cleanup(_) => ReplyKind::Cleanup,
            ShardOp::Snapshot(_) => ReplyKind::Snapshot,
            ShardOp::TreeHashes { .. }
            | ShardOp::TreeKeys { .. }
            | ShardOp::VerifyTree
            | ShardOp::StreamRange { .. } => ReplyKind::Tree,
            _ => ReplyKind::Object,
        }
    }

    /// The reply when the operation could not be run or answered.
    fn failed(self, e: StoreError) -> ShardReply {
        match self {
            ReplyKind::Stats => ShardReply::NoStats(e),
            ReplyKind::Object => ShardReply::Object(Err(e)),
            ReplyKind::Paxos => ShardReply::Paxos(Err(e)),
            ReplyKind::Tree => ShardReply::Tree(Err(e)),
            ReplyKind::Cleanup => ShardReply::Cleanup(Err(e)),
            ReplyKind::Snapshot => ShardReply::Snapshot(Err(e)),
        }
    }
}

/// A request sent to another core, with the channel its answer goes back on.
#[derive(Debug)]
pub struct Forward {
    op: ShardOp,
    reply: flume::Sender<ShardReply>,
    /// Keeps the node's in-flight count up until the owner has run it.
    work: Admission,
}

/// What all cores of a node share (`Send + Sync`; one per node).
#[derive(Debug)]
pub struct NodeShared {
    /// Set once, when the node starts shutting down: no request is admitted after it.
    closing: AtomicBool,
    /// Requests admitted and not yet answered, on every core.
    in_flight: AtomicUsize,
    /// Each core's inbox.
    inboxes: Vec<flume::Sender<Forward>>,
    /// Each core's counters.
    metrics: Vec<CoreMetrics>,
    /// When the node started.
    started: Instant,
    /// What the membership driver (core 0) last published.
    members: crate::cluster::membership::SharedMembers,
    /// When deletions may be purged, and the repair history.
    purge: crate::storage::repair_history::PurgeRule,
    /// Per core: an anti-entropy exchange of its shard's ranges is running (at most one).
    exchanging: Vec<AtomicBool>,
    /// The node's repair budget.
    repair_budget: std::sync::Mutex<RepairBudget>,
    /// Foreground p99 latency (µs) over the last window, and its baseline while no repair
    /// ran (0: not measured yet).
    foreground_p99_us: [std::sync::atomic::AtomicU64; 2],
    /// The ring book (set once at start-up by a node that gossips).
    keeper: std::sync::OnceLock<crate::cluster::keeper::RingKeeper>,
    /// The node's data directory (set once at start-up; snapshots go under it).
    data_dir: std::sync::OnceLock<std::path::PathBuf>,
    /// Ranges are streaming in.
    streaming: AtomicBool,
    /// When this node last answered a `StreamRange` (ms since it started; 0: never).
    stream_served_ms: std::sync::atomic::AtomicU64,
    /// A cleanup is running.
    cleaning: AtomicBool,
    /// Stops the node as a signal would (set once at start-up).
    shutdown: std::sync::OnceLock<Shutdown>,
}

/// How the node is stopped from within.
struct Shutdown(Box<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shutdown")
    }
}

/// The node's budget for anti-entropy repairs: keys and bytes per second (token buckets
/// holding a tenth of a second's worth), scaled down while the foreground suffers.
#[derive(Debug)]
pub struct RepairBudget {
    keys_per_s: f64,
    bytes_per_s: f64,
    /// 1/64..=1: the share of the rates in use.
    factor: f64,
    keys: f64,
    bytes: f64,
    at: Instant,
}

impl RepairBudget {
    /// `keys_per_s` keys and `bytes_per_s` bytes per second.
    #[must_use]
    pub fn new(keys_per_s: u32, bytes_per_s: u64) -> RepairBudget {
        #[allow(clippy::cast_precision_loss)]
        RepairBudget {
            keys_per_s: f64::from(keys_per_s.max(1)),
            bytes_per_s: (bytes_per_s.max(1)) as f64,
            factor: 1.0,
            keys: 0.0,
            bytes: 0.0,
            at: Instant::now(),
        }
    }

    /// Takes one key of `bytes` from the budget: how long to wait before moving it.
    pub fn take(&mut self, bytes: usize) -> Duration {
        let now = Instant::now();
        let dt = now.duration_since(self.at).as_secs_f64();
        self.at = now;
        let (kr, br) = (
            self.keys_per_s * self.factor,
            self.bytes_per_s * self.factor,
        );
        self.keys = (self.keys + dt * kr).min(kr / 10.0) - 1.0;
        #[allow(clippy::cast_precision_loss)]
        let b = bytes as f64;
        self.bytes = (self.bytes + dt * br).min(br / 10.0) - b;
        let wait = (-self.keys / kr).max(-self.bytes / br).max(0.0);
        Duration::from_secs_f64(wait)
    }

    /// Scales the rates by `factor` (clamped to 1/64..=1).
    pub fn set_factor(&mut self, factor: f64) {
        self.factor = factor.clamp(1.0 / 64.0, 1.0);
    }

    /// The share of the rates in use.
    #[must_use]
    pub fn factor(&self) -> f64 {
        self.factor
    }
}

/// Bytes one core's work after answers may hold (copies kept for late replica
/// acknowledgements and background read repairs); past it such work is shed (the replicas
/// concerned get hints, or are repaired by a later read).
pub const BACKGROUND_BYTES_MAX: usize = 128 << 20;

/// A share of the core's background budget ([`Core::reserve_background`]).
#[derive(Debug)]
pub struct BackgroundBytes {
    core: Core,
    len: usize,
}

impl Drop for BackgroundBytes {
    fn drop(&mut self) {
        let c = &self.core.0;
        let held = c.background_bytes.get();
        assert!(
            held >= self.len,
            "INVARIANT: only granted bytes are given back"
        );
        c.background_bytes.set(held - self.len);
        self.core.metrics().set_background_bytes(held - self.len);
    }
}

/// Operations one core's inbox holds from the other cores; past it they are refused
/// (`Overloaded`) rather than queued without bound.
pub const INBOX_MAX: usize = 4096;

impl NodeShared {
    /// The shared state of a node with `cores` cores, and each core's inbox receiver (index `i`
    /// is core `i`'s, to hand to [`serve_inbox`] on that core).
    #[must_use]
    pub fn new(cores: u32) -> (Arc<NodeShared>, Vec<flume::Receiver<Forward>>) {
        Self::with_repair(
            cores,
            crate::storage::repair_history::PurgeRule {
                mode: crate::storage::repair_history::GcMode::Repair {
                    delay_ms: 3_600_000,
                },
                history: crate::storage::repair_history::SharedHistory::default(),
            },
            RepairBudget::new(5000, 32 << 20),
        )
    }

    /// [`NodeShared::new`] with the node's purge rule and repair budget.
    #[must_use]
    pub fn with_repair(
        cores: u32,
        purge: crate::storage::repair_history::PurgeRule,
        budget: RepairBudget,
    ) -> (Arc<NodeShared>, Vec<flume::Receiver<Forward>>) {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..cores).map(|_| flume::bounded(INBOX_MAX)).unzip();
        let shared = NodeShared {
            closing: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            inboxes: senders,
            metrics: (0..cores).map(|_| CoreMetrics::default()).collect(),
            started: Instant::now(),
            members: crate::cluster::membership::SharedMembers::default(),
            purge,
            exchanging: (0..cores).map(|_| AtomicBool::new(false)).collect(),
            repair_budget: std::sync::Mutex::new(budget),
            foreground_p99_us: Default::default(),
            keeper: std::sync::OnceLock::new(),
            data_dir: std::sync::OnceLock::new(),
            streaming: AtomicBool::new(false),
            stream_served_ms: std::sync::atomic::AtomicU64::new(0),
            cleaning: AtomicBool::new(false),
            shutdown: std::sync::OnceLock::new(),
        };
        (Arc::new(shared), receivers)
    }

    /// The purge rule and the repair history.
    #[must_use]
    pub fn purge(&self) -> &crate::storage::repair_history::PurgeRule {
        &self.purge
    }

    /// Claims core `shard`'s exchange slot; `false` if an exchange of its ranges runs.
    #[must_use]
    pub fn try_start_exchange(&self, shard: u32) -> bool {
        self.exchanging
            .get(shard as usize)
            .is_some_and(|b| !b.swap(true, Ordering::SeqCst))
    }

    /// Frees core `shard`'s exchange slot.
    pub fn end_exchange(&self, shard: u32) {
        if let Some(b) = self.exchanging.get(shard as usize) {
            b.store(false, Ordering::SeqCst);
        }
    }

    /// Whether any exchange runs on this node, or ranges stream in or out (all follow the
    /// repair budget, which backs off while the foreground p99 rises).
    #[must_use]
    pub fn exchanging(&self) -> bool {
        let served = self.stream_served_ms.load(Ordering::Relaxed);
        self.exchanging.iter().any(|b| b.load(Ordering::Relaxed))
            || self.streaming.load(Ordering::Relaxed)
            || (served > 0 && self.since_start_ms() < served + 2000)
    }

    /// Marks a `StreamRange` answered now: for two seconds the node counts as exchanging.
    pub fn served_stream(&self) {
        self.stream_served_ms
            .store(self.since_start_ms().max(1), Ordering::Relaxed);
    }

    fn since_start_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Marks a cleanup running; `false` if one already was.
    pub fn start_cleaning(&self) -> bool {
        !self.cleaning.swap(true, Ordering::SeqCst)
    }

    /// Marks the cleanup done.
    pub fn stop_cleaning(&self) {
        self.cleaning.store(false, Ordering::SeqCst);
    }

    /// Marks ranges streaming in (or done).
    pub fn set_streaming(&self, on: bool) {
        self.streaming.store(on, Ordering::SeqCst);
    }

    /// Runs `f` on the repair budget.
    pub fn repair_budget<T>(&self, f: impl FnOnce(&mut RepairBudget) -> T) -> T {
        match self.repair_budget.lock() {
            Ok(mut b) => f(&mut b),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Foreground p99 (µs) over the last window and its baseline without repair (0: not
    /// measured).
    #[must_use]
    pub fn foreground_p99_us(&self) -> (u64, u64) {
        (
            self.foreground_p99_us[0].load(Ordering::Relaxed),
            self.foreground_p99_us[1].load(Ordering::Relaxed),
        )
    }

    /// Publishes the foreground p99 of the last window and the baseline.
    pub fn set_foreground_p99_us(&self, window: u64, baseline: u64) {
        self.foreground_p99_us[0].store(window, Ordering::Relaxed);
        self.foreground_p99_us[1].store(baseline, Ordering::Relaxed);
    }

    /// The node's core count.
    #[must_use]
    pub fn cores(&self) -> u32 {
        u32::try_from(self.inboxes.len()).expect("INVARIANT: cores fit in u32")
    }

    /// Stops admitting requests (requests already admitted go on).
    pub fn start_closing(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    /// Whether the node is shutting down.
    #[must_use]
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Requests admitted and not yet answered.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Every core's counters.
    #[must_use]
    pub fn metrics(&self) -> &[CoreMetrics] {
        &self.metrics
    }

    /// Time since the node started.
    #[must_use]
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The membership as last published (`None` before the driver's first step).
    #[must_use]
    pub fn members(&self) -> &crate::cluster::membership::SharedMembers {
        &self.members
    }

    /// The ring book, for a node that gossips.
    #[must_use]
    pub fn keeper(&self) -> Option<&crate::cluster::keeper::RingKeeper> {
        self.keeper.get()
    }

    /// Stops the node as SIGTERM would (a decommissioned node, once its ranges are streamed).
    pub fn request_shutdown(&self) {
        match self.shutdown.get() {
            Some(stop) => (stop.0)(),
            None => self.start_closing(),
        }
    }

    /// Sets how the node is stopped (once, at start-up).
    pub fn set_shutdown(&self, stop: Box<dyn Fn() + Send + Sync>) {
        let _ = self.shutdown.set(Shutdown(stop));
    }

    /// Sets the ring book (once, at start-up).
    pub fn set_keeper(&self, keeper: crate::cluster::keeper::RingKeeper) {
        let _ = self.keeper.set(keeper);
    }

    /// Records the node's data directory (once, at start-up).
    pub fn set_data_dir(&self, dir: std::path::PathBuf) {
        let _ = self.data_dir.set(dir);
    }

    /// The node's data directory (`None` before start-up recorded it).
    #[must_use]
    pub fn data_dir(&self) -> Option<&std::path::Path> {
        self.data_dir.get().map(std::path::PathBuf::as_path)
    }

    /// Counts work that continues an admitted request (an operation running in its own task,
    /// which may outlive the request's deadline): admitted even while closing, so that the
    /// shards close only after it.
    pub fn hold(self: &Arc<Self>) -> Admission {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Admission(self.clone())
    }
}

/// A request being answered; the node's in-flight count drops when it is dropped.
#[derive(Debug)]
pub struct Admission(Arc<NodeShared>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

struct CoreInner {
    index: u32,
    shards: u32,
    store: LocalStore,
    /// Which core holds a token's keys on this node.
    cluster: SharedCluster,
    shared: Arc<NodeShared>,
    /// How long a request may take when its sender does not say.
    default_timeout: Duration,
    /// This core's connections to other nodes' cores.
    peers: ConnPool,
    /// TLS on the connections this core accepts (`None`: plain TCP).
    tls_acceptor: Option<dynacore_runtime::tls::TlsAcceptor>,
    /// The cluster secret's key.
    key: ClusterKey,
    /// Request-body bytes its binary connections hold (read, running, or answered but not
    /// yet written).
    body_bytes: std::cell::Cell<usize>,
    /// Bytes held by work after answers ([`Core::reserve_background`]).
    background_bytes: std::cell::Cell<usize>,
    /// This core's hints (`None`: hinted handoff is off).
    hints: Option<Rc<HintStore>>,
    replication: ReplicationConfig,
}

/// What a core is made of.
#[derive(Debug)]
pub struct CoreParts {
    /// Its index.
    pub index: u32,
    /// Its shard.
    pub store: LocalStore,
    /// The cluster as the node sees it.
    pub cluster: SharedCluster,
    /// What the node's cores share.
    pub shared: Arc<NodeShared>,
    /// How long a request may take when its sender does not say.
    pub default_timeout: Duration,
    /// Its hints (`None`: hinted handoff is off).
    pub hints: Option<Rc<HintStore>>,
    /// How the cluster replicates.
    pub replication: ReplicationConfig,
    /// The local address connections to other nodes come from (`None`: the system's choice).
    pub source_ip: Option<std::net::IpAddr>,
    /// The cluster secret's key: frames to and from other nodes are authenticated with it.
    pub key: ClusterKey,
    /// TLS: how this core's listeners accept it and how it speaks it to its peers (`None`:
    /// plain TCP).
    pub tls: Option<NodeTls>,
}

/// A node's TLS configurations (made once from its files, shared by its cores).
#[derive(Clone, Debug)]
pub struct NodeTls {
    /// What its listeners present.
    pub server: Arc<dynacore_runtime::tls::rustls::ServerConfig>,
    /// What it trusts when it connects to a peer.
    pub client: Arc<dynacore_runtime::tls::rustls::ClientConfig>,
}

/// One core's view of the node: its own shard, and the way to every other core's.
#[derive(Clone)]
pub struct Core(Rc<CoreInner>);

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("index", &self.0.index)
            .field("shards", &self.0.shards)
            .finish_non_exhaustive()
    }
}

impl Core {
    /// A core made of `parts`.
    ///
    /// # Panics
    /// If the index is not one of the node's cores (a bug in the node's start-up).
    #[must_use]
    pub fn new(parts: CoreParts) -> Core {
        let shards =
            u32::try_from(parts.shared.inboxes.len()).expect("INVARIANT: cores fit in u32");
        assert!(parts.index < shards, "core {} of {shards}", parts.index);
        let own = parts.cluster.get().own_node().clone();
        assert_eq!(
            own.shards, shards,
            "the cluster state knows this node's cores"
        );
        Core(Rc::new(CoreInner {
            index: parts.index,
            shards,
            store: parts.store,
            cluster: parts.cluster,
            shared: parts.shared,
            default_timeout: parts.default_timeout,
            peers: {
                let mut pool =
                    ConnPool::new(Duration::from_secs(1)).authenticated(parts.key.clone());
                if let Some(tls) = &parts.tls {
                    pool =
                        pool.with_tls(dynacore_runtime::tls::TlsConnector::new(tls.client.clone()));
                }
                match parts.source_ip {
                    Some(ip) => pool.from_source(ip),
                    None => pool,
                }
            },
            tls_acceptor: parts
                .tls
                .as_ref()
                .map(|t| dynacore_runtime::tls::TlsAcceptor::new(t.server.clone())),
            key: parts.key,
            body_bytes: std::cell::Cell::new(0),
            background_bytes: std::cell::Cell::new(0),
            hints: parts.hints,
            replication: parts.replication,
        }))
    }

    /// A node of one core around `store`, alone in its cluster (for tests and tools).
    #[must_use]
    pub fn single(store: LocalStore, node: NodeId) -> Core {
        let (shared, _inbox) = NodeShared::new(1);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 7400));
        let own = RingMember::new(node, addr, addr, 1, dynacore_proto::ring::VNODES_DEFAULT, 1)
            .normal_with(Vec::new());
        let book = RingBook::in_memory(own);
        let cluster = SharedCluster::new(ClusterState::build(node, &book, None, 1));
        Core::new(CoreParts {
            index: 0,
            store,
            cluster,
            shared,
            default_timeout: Duration::from_secs(10),
            hints: None,
            replication: ReplicationConfig::default(),
            source_ip: None,
            key: ClusterKey::new(&rand::random::<[u8; 32]>())
                .expect("INVARIANT: 32 bytes make a key"),
            tls: None,
        })
    }

    /// This core's index.
    #[must_use]
    pub fn index(&self) -> u32 {
        self.0.index
    }

    /// The node's core count.
    #[must_use]
    pub fn shards(&self) -> u32 {
        self.0.shards
    }

    /// The cluster as this node sees it now.
    #[must_use]
    pub fn cluster(&self) -> Arc<ClusterState> {
        self.0.cluster.get()
    }

    /// This core's connections to other nodes.
    #[must_use]
    pub fn peers(&self) -> &ConnPool {
        &self.0.peers
    }

    /// TLS on the connections this core accepts (`None`: plain TCP).
    #[must_use]
    pub fn tls_acceptor(&self) -> Option<&dynacore_runtime::tls::TlsAcceptor> {
        self.0.tls_acceptor.as_ref()
    }

    /// This core's hints (`None`: hinted handoff is off).
    #[must_use]
    pub fn hints(&self) -> Option<&Rc<HintStore>> {
        self.0.hints.as_ref()
    }

    /// How the cluster replicates.
    #[must_use]
    pub fn replication(&self) -> &ReplicationConfig {
        &self.0.replication
    }

    /// What the cores share.
    #[must_use]
    pub fn shared(&self) -> &Arc<NodeShared> {
        &self.0.shared
    }

    /// This core's counters.
    #[must_use]
    pub fn metrics(&self) -> &CoreMetrics {
        &self.0.shared.metrics[self.0.index as usize]
    }

    /// The cluster secret's key.
    #[must_use]
    pub fn cluster_key(&self) -> &ClusterKey {
        &self.0.key
    }

    /// Takes `len` bytes of this core's request-body budget of `max`: granted when they fit,
    /// or when nothing is held (a single larger body still runs alone).
    pub fn try_reserve_body_bytes(&self, len: usize, max: usize) -> bool {
        let held = self.0.body_bytes.get();
        if held == 0 || held + len <= max {
            self.0.body_bytes.set(held + len);
            true
        } else {
            false
        }
    }

    /// Gives back bytes [`Core::try_reserve_body_bytes`] granted.
    pub fn release_body_bytes(&self, len: usize) {
        let held = self.0.body_bytes.get();
        assert!(held >= len, "INVARIANT: only granted bytes are given back");
        self.0.body_bytes.set(held - len);
    }

    /// Request-body bytes this core holds now.
    #[must_use]
    pub fn body_bytes(&self) -> usize {
        self.0.body_bytes.get()
    }

    /// Takes `len` bytes of this core's budget for work that goes on after a client's answer
    /// (late replica acknowledgements, background read repair): `None` past
    /// [`BACKGROUND_BYTES_MAX`], and that work is then shed. The bytes come back when the
    /// guard is dropped.
    #[must_use]
    pub fn reserve_background(&self, len: usize) -> Option<BackgroundBytes> {
        let held = self.0.background_bytes.get();
        if held + len > BACKGROUND_BYTES_MAX {
            self.metrics().background_shed();
            return None;
        }
        self.0.background_bytes.set(held + len);
        self.metrics().set_background_bytes(held + len);
        Some(BackgroundBytes {
            core: self.clone(),
            len,
        })
    }

    /// How long a request may take when its sender does not say.
    #[must_use]
    pub fn default_timeout(&self) -> Duration {
        self.0.default_timeout
    }

    /// The core that owns `key`.
    #[must_use]
    pub fn owner_of(&self, key: &[u8]) -> u32 {
        self.cluster().own_node().shard_map.shard_of(Token::of(key))
    }

    /// Admits a request, or `None` once the node is shutting down.
    #[must_use]
    pub fn admit(&self) -> Option<Admission> {
        let shared = &self.0.shared;
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        let admission = Admission(shared.clone());
        if shared.is_closing() {
            return None; // dropping it undoes the count
        }
        Some(admission)
    }

    /// Runs `op` on the core that owns its key (this one, or another through its inbox),
    /// giving up after `timeout`. The operation itself is never abandoned half-way: a write
    /// that times out may still be applied.
    pub async fn execute(&self, op: ShardOp, timeout: Duration) -> ShardReply {
        let owner = match &op {
            ShardOp::Write { key, .. }
            | ShardOp::ReplicaRead { key }
            | ShardOp::ReplicaApply { key, .. }
            | ShardOp::Paxos { key, .. } => self.owner_of(key),
            ShardOp::StreamRange { end, .. } => {
                self.cluster().own_node().shard_map.shard_of(Token(*end))
            }
            ShardOp::TreeHashes { ranges } | ShardOp::TreeKeys { ranges, .. } => {
                ranges.first().map_or(self.0.index, |r| {
                    self.cluster().own_node().shard_map.shard_of(Token(r.1))
                })
            }
            ShardOp::Stats
            | ShardOp::Compact
            | ShardOp::VerifyTree
            | ShardOp::Cleanup(_)
            | ShardOp::Snapshot(_) => self.0.index,
        };
        self.execute_on(owner, op, timeout).await
    }

    /// Runs `op` on core `shard` (see [`Core::execute`]).
    pub async fn execute_on(&self, shard: u32, op: ShardOp, timeout: Duration) -> ShardReply {
        let (tx, rx) = flume::bounded(1);
        let kind = ReplyKind::of(&op);
        let work = self.0.shared.hold();
        if shard == self.0.index {
            // Run it in its own task so that a timeout leaves the operation to complete.
            let store = self.0.store.clone();
            runtime::spawn_detached(async move {
                let _ = tx.send(run_local(&store, op).await);
                drop(work);
            });
        } else {
            let Some(inbox) = self.0.shared.inboxes.get(shard as usize) else {
                return kind.failed(StoreError::Internal(format!(
                    "no core {shard} on this node"
                )));
            };
            if !matches!(kind, ReplyKind::Stats | ReplyKind::Cleanup) {
                self.metrics().forwarded();
            }
            let forward = Forward {
                op,
                reply: tx,
                work,
            };
            match inbox.try_send(forward) {
                Ok(()) => {}
                Err(flume::TrySendError::Full(_)) => {
                    return kind.failed(StoreError::Overloaded(format!(
                        "core {shard} has {INBOX_MAX} operations waiting; not run"
                    )));
                }
                Err(flume::TrySendError::Disconnected(_)) => {
                    return kind
                        .failed(StoreError::Unavailable(format!("core {shard} has stopped")));
                }
            }
        }
        match runtime::timeout(timeout, rx.recv_async()).await {
            Some(Ok(reply)) => reply,
            Some(Err(_)) => kind.failed(StoreError::Unavailable(format!(
                "core {shard} stopped before answering (a write may or may not be applied)"
            ))),
            None => kind.failed(StoreError::Timeout(format!(
                "no answer within {} ms (a write may still be applied)",
                timeout.as_millis()
            ))),
        }
    }
}

async fn run_local(store: &LocalStore, op: ShardOp) -> ShardReply {
    match op {
        ShardOp::Write {
            key,
            value,
            ttl_ms,
            expected,
            context,
        } => ShardReply::Object(
            store
                .coordinate(
                    &key,
                    value.as_deref(),
                    ttl_ms,
                    expected.as_ref(),
                    context.as_ref(),
                )
                .await
                .map(Some),
        ),
        ShardOp::ReplicaRead { key } => ShardReply::Object(store.read_replica(&key).await),
        ShardOp::ReplicaApply {
            key,
            object,
            expected,
        } => ShardReply::Object(
            store
                .apply_replica(&key, &object, expected.as_ref())
                .await
                .map(Some),
        ),
        ShardOp::Paxos { key, step } => ShardReply::Paxos(run_paxos(store, &key, step).await),
        ShardOp::TreeHashes { ranges } => ShardReply::Tree(tree_hashes(store, &ranges).await),
        ShardOp::TreeKeys { ranges, max } => ShardReply::Tree(tree_keys(store, &ranges, max).await),
        ShardOp::StreamRange {
            start,
            end,
            after,
            max_keys,
            max_bytes,
        } => ShardReply::Tree(
            store
                .shard()
                .range_objects(Token(start), Token(end), &after, max_keys, max_bytes)
                .await
                .map(|(objects, more)| TreeAnswer::Objects(objects, more))
                .map_err(StoreError::from),
        ),
        ShardOp::VerifyTree => ShardReply::Tree(
            store
                .shard()
                .verify_tree()
                .await
                .map(TreeAnswer::Check)
                .map_err(StoreError::from),
        ),
        ShardOp::Stats => ShardReply::Stats(Box::new(store.shard().stats())),
        ShardOp::Compact => {
            let shard = store.shard();
            let done = match shard.flush().await {
                Ok(()) => shard.compact_all().await,
                Err(e) => Err(e),
            };
            match done {
                Ok(()) => ShardReply::Stats(Box::new(shard.stats())),
                Err(e) => {
                    ShardReply::NoStats(StoreError::Internal(format!("the compaction failed: {e}")))
                }
            }
        }
        ShardOp::Cleanup(plan) => {
            let (keep, valid) = (plan.clone(), plan);
            ShardReply::Cleanup(
                store
                    .shard()
                    .cleanup(move |token| keep.keeps(token), move || valid.still_valid())
                    .await
                    .map_err(|e| StoreError::Internal(e.to_string())),
            )
        }
        ShardOp::Snapshot(into) => ShardReply::Snapshot(
            store
                .shard()
                .snapshot_into(&into)
                .await
                .map_err(|e| StoreError::Internal(format!("the snapshot failed: {e}"))),
        ),
    }
}

async fn tree_hashes(store: &LocalStore, ranges: &[(u64, u64)]) -> Result<TreeAnswer, StoreError> {
    let shard = store.shard();
    let mut hashes = Vec::with_capacity(ranges.len());
    let mut slice = runtime::CpuSlice::new(Duration::from_micros(500));
    for &(start, end) in ranges {
        match shard.tree_hash(Token(start), Token(end)).await? {
            Some(h) => hashes.push(h),
            None => return Ok(TreeAnswer::Hashes(None)),
        }
        slice.check().await;
    }
    Ok(TreeAnswer::Hashes(Some(hashes)))
}

async fn tree_keys(
    store: &LocalStore,
    ranges: &[(u64, u64)],
    max: usize,
) -> Result<TreeAnswer, StoreError> {
    let shard = store.shard();
    let mut keys = Vec::new();
    for &(start, end) in ranges {
        let left = max.saturating_sub(keys.len());
        let Some(got) = shard.tree_keys(Token(start), Token(end), left).await? else {
            return Ok(TreeAnswer::Keys(None));
        };
        let full = got.len() == left;
        keys.extend(got);
        if full {
            return Ok(TreeAnswer::Keys(Some((keys, true))));
        }
    }
    Ok(TreeAnswer::Keys(Some((keys, false))))
}

async fn run_paxos(
    store: &LocalStore,
    key: &[u8],
    step: PaxosStep,
) -> Result<PaxosAnswer, StoreError> {
    let decode = |(version, values): (Vec<u8>, Vec<u8>)| {
        dynacore_engine::object::from_parts(&version, &values)
            .map_err(|e| StoreError::Internal(format!("an accepted proposal does not decode: {e}")))
    };
    match step {
        PaxosStep::Prepare(ballot) => {
            let (promised, state) = store
                .paxos()?
                .prepare(key, ballot)
                .await
                .map_err(|e| StoreError::Internal(e.0))?;
            Ok(PaxosAnswer::Promise {
                promised,
                ballot: state.promised.unwrap_or(ballot),
                accepted: state
                    .accepted
                    .map(|(b, parts)| decode(parts).map(|o| (b, o)))
                    .transpose()?,
                committed: state.committed,
                copy: store.read_replica(key).await?,
            })
        }
        PaxosStep::Propose(ballot, object) => {
            let parts = dynacore_engine::object::to_parts(&object)
                .map_err(|e| StoreError::Internal(e.to_string()))?;
            let (accepted, promised) = store
                .paxos()?
                .propose(key, ballot, parts)
                .await
                .map_err(|e| StoreError::Internal(e.0))?;
            Ok(PaxosAnswer::Accepted(accepted, promised))
        }
        PaxosStep::Commit(ballot, object) => {
            store.apply_replica(key, &object, None).await?;
            store
                .paxos()?
                .committed(key, ballot)
                .await
                .map_err(|e| StoreError::Internal(e.0))?;
            Ok(PaxosAnswer::Committed)
        }
        PaxosStep::Mint {
            value,
            ttl_ms,
            current,
        } => store
            .mint_transaction(key, current.as_ref(), value.as_deref(), ttl_ms)
            .await
            .map(PaxosAnswer::Minted),
    }
}

/// Answers what other cores send to `core`, for as long as the core's executor runs (the
/// senders live in [`NodeShared`], which every core holds). Each operation runs in its own
/// task, so a slow one does not hold up the rest.
pub async fn serve_inbox(core: Core, inbox: flume::Receiver<Forward>) {
    while let Ok(Forward { op, reply, work }) = inbox.recv_async().await {
        if !matches!(
            op,
            ShardOp::Stats | ShardOp::Compact | ShardOp::VerifyTree | ShardOp::Cleanup(_)
        ) {
            core.metrics().forwarded_in();
        }
        let store = core.0.store.clone();
        runtime::spawn_detached(async move {
            let _ = reply.send(run_local(&store, op).await);
            drop(work);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_after_answers_is_shed_past_its_budget_and_its_bytes_come_back() {
        crate::test_util::with_store(|store, _| async move {
            let core = Core::single(store, NodeId(1));
            let half = BACKGROUND_BYTES_MAX / 2;
            let a = core.reserve_background(half).expect("within");
            let b = core.reserve_background(half).expect("at the bound");
            assert!(core.reserve_background(1).is_none(), "past the bound");
            let text = crate::metrics::render(core.shared().metrics(), &[], Duration::ZERO);
            assert!(text.contains("dynacore_background_shed_total{core=\"0\"} 1"));
            assert!(text.contains(&format!(
                "dynacore_background_bytes{{core=\"0\"}} {}",
                2 * half
            )));
            drop(a);
            let c = core.reserve_background(half).expect("room again");
            drop((b, c));
            assert!(core.reserve_background(BACKGROUND_BYTES_MAX).is_some());
            // Body bytes: a single larger body runs alone, others wait for room.
            assert!(core.try_reserve_body_bytes(10, 8));
            assert!(!core.try_reserve_body_bytes(1, 8));
            core.release_body_bytes(10);
            assert_eq!(core.body_bytes(), 0);
        });
    }
}
