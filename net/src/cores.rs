//! The cores of one node and the way a request reaches the core that owns its key.
//!
//! Every core runs one executor with one engine shard. A key belongs to the core
//! [`Ring::shard_of`](crate::ring::Ring::shard_of) names for its token; a request that arrives on
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

use dynacore_engine::{runtime, Object, ShardStats, Token};

use crate::dispatch::Topology;
use crate::metrics::CoreMetrics;
use crate::store::{Found, LocalStore, StoreError};

/// What one shard is asked to do.
#[derive(Debug)]
pub enum ShardOp {
    /// Read a key.
    Get {
        /// The key.
        key: Vec<u8>,
    },
    /// Write a value.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// Expiry in seconds from now.
        ttl_seconds: Option<u64>,
        /// The version the write is conditional on.
        expected: Option<Vec<u8>>,
    },
    /// Write a tombstone.
    Delete {
        /// The key.
        key: Vec<u8>,
        /// The version the delete is conditional on.
        expected: Option<Vec<u8>>,
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
    },
    /// Report the shard's statistics.
    Stats,
}

/// A shard's answer.
#[derive(Debug)]
pub enum ShardReply {
    /// To [`ShardOp::Get`].
    Get(Result<Option<Found>, StoreError>),
    /// To [`ShardOp::Put`] and [`ShardOp::Delete`]: the new version.
    Written(Result<Vec<u8>, StoreError>),
    /// To [`ShardOp::Stats`].
    Stats(Box<ShardStats>),
    /// To [`ShardOp::Stats`], when the core could not answer.
    NoStats(StoreError),
    /// To [`ShardOp::ReplicaRead`] and [`ShardOp::ReplicaApply`]: the replica's copy.
    Object(Result<Option<Object>, StoreError>),
}

/// Which kind of reply an operation gets.
#[derive(Clone, Copy)]
enum ReplyKind {
    Get,
    Written,
    Stats,
    Object,
}

impl ReplyKind {
    fn of(op: &ShardOp) -> ReplyKind {
        match op {
            ShardOp::Get { .. } => ReplyKind::Get,
            ShardOp::Put { .. } | ShardOp::Delete { .. } => ReplyKind::Written,
            ShardOp::Stats => ReplyKind::Stats,
            ShardOp::ReplicaRead { .. } | ShardOp::ReplicaApply { .. } => ReplyKind::Object,
        }
    }

    /// The reply when the operation could not be run or answered.
    fn failed(self, e: StoreError) -> ShardReply {
        match self {
            ReplyKind::Get => ShardReply::Get(Err(e)),
            ReplyKind::Written => ShardReply::Written(Err(e)),
            ReplyKind::Stats => ShardReply::NoStats(e),
            ReplyKind::Object => ShardReply::Object(Err(e)),
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
    members: crate::gossip::SharedMembers,
}

impl NodeShared {
    /// The shared state of a node with `cores` cores, and each core's inbox receiver (index `i`
    /// is core `i`'s, to hand to [`serve_inbox`] on that core).
    #[must_use]
    pub fn new(cores: u32) -> (Arc<NodeShared>, Vec<flume::Receiver<Forward>>) {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..cores).map(|_| flume::unbounded()).unzip();
        let shared = NodeShared {
            closing: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            inboxes: senders,
            metrics: (0..cores).map(|_| CoreMetrics::default()).collect(),
            started: Instant::now(),
            members: crate::gossip::SharedMembers::default(),
        };
        (Arc::new(shared), receivers)
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
    pub fn members(&self) -> &crate::gossip::SharedMembers {
        &self.members
    }

    /// Counts work that continues an admitted request (an operation running in its own task,
    /// which may outlive the request's deadline): admitted even while closing, so that the
    /// shards close only after it.
    fn hold(self: &Arc<Self>) -> Admission {
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
    topology: Rc<Topology>,
    shared: Arc<NodeShared>,
    /// How long a request may take when its sender does not say.
    default_timeout: Duration,
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
    /// Core `index` of a node with `shared`'s cores, answering from `store`.
    ///
    /// # Panics
    /// If `index` is not one of `shared`'s cores (a bug in the node's start-up).
    #[must_use]
    pub fn new(
        index: u32,
        store: LocalStore,
        topology: Rc<Topology>,
        shared: Arc<NodeShared>,
        default_timeout: Duration,
    ) -> Core {
        let shards = u32::try_from(shared.inboxes.len()).expect("INVARIANT: cores fit in u32");
        assert!(index < shards, "core {index} of {shards}");
        Core(Rc::new(CoreInner {
            index,
            shards,
            store,
            topology,
            shared,
            default_timeout,
        }))
    }

    /// A node of one core around `store` (for tests and tools).
    #[must_use]
    pub fn single(store: LocalStore, topology: Rc<Topology>) -> Core {
        let (shared, _inbox) = NodeShared::new(1);
        Core::new(0, store, topology, shared, Duration::from_secs(10))
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

    /// The topology this node serves.
    #[must_use]
    pub fn topology(&self) -> &Topology {
        &self.0.topology
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

    /// How long a request may take when its sender does not say.
    #[must_use]
    pub fn default_timeout(&self) -> Duration {
        self.0.default_timeout
    }

    /// The core that owns `key`.
    #[must_use]
    pub fn owner_of(&self, key: &[u8]) -> u32 {
        self.0.topology.ring.shard_of(Token::of(key), self.0.shards)
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
            ShardOp::Get { key }
            | ShardOp::Put { key, .. }
            | ShardOp::Delete { key, .. }
            | ShardOp::ReplicaRead { key }
            | ShardOp::ReplicaApply { key, .. } => self.owner_of(key),
            ShardOp::Stats => self.0.index,
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
            if !matches!(kind, ReplyKind::Stats) {
                self.metrics().forwarded();
            }
            let forward = Forward {
                op,
                reply: tx,
                work,
            };
            if inbox.send(forward).is_err() {
                return kind.failed(StoreError::Unavailable(format!("core {shard} has stopped")));
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
        ShardOp::Get { key } => ShardReply::Get(store.get(&key).await),
        ShardOp::Put {
            key,
            value,
            ttl_seconds,
            expected,
        } => ShardReply::Written(
            store
                .put(&key, &value, ttl_seconds, expected.as_deref())
                .await,
        ),
        ShardOp::Delete { key, expected } => {
            ShardReply::Written(store.delete(&key, expected.as_deref()).await)
        }
        ShardOp::ReplicaRead { key } => ShardReply::Object(store.read_replica(&key).await),
        ShardOp::ReplicaApply { key, object } => {
            ShardReply::Object(store.apply_replica(&key, &object).await.map(Some))
        }
        ShardOp::Stats => ShardReply::Stats(Box::new(store.shard().stats())),
    }
}

/// Answers what other cores send to `core`, for as long as the core's executor runs (the
/// senders live in [`NodeShared`], which every core holds). Each operation runs in its own
/// task, so a slow one does not hold up the rest.
pub async fn serve_inbox(core: Core, inbox: flume::Receiver<Forward>) {
    while let Ok(Forward { op, reply, work }) = inbox.recv_async().await {
        if !matches!(op, ShardOp::Stats) {
            core.metrics().forwarded_in();
        }
        let store = core.0.store.clone();
        runtime::spawn_detached(async move {
            let _ = reply.send(run_local(&store, op).await);
            drop(work);
        });
    }
}
