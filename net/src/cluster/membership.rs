//! Cluster membership and failure detection: SWIM through the `foca` crate, sans IO.
//!
//! [`Membership`] takes datagrams and due timers in, and gives datagrams to send and timers
//! to schedule out ([`Output`]); a driver moves them over UDP and a timer heap (one task, so
//! timers are delivered in order, as foca requires), and a seeded simulation drives the same
//! code on a virtual clock (see the tests).
//!
//! * **Identity** ([`MemberId`]): the gossip address (foca's `Addr`: at most one identity per
//!   address), the node id, and a generation that grows at every start, so that a restarted
//!   node supersedes its old self (peers see a rename, then the member up).
//! * **Metadata** ([`NodeMeta`]): node id, generation, status, core and vnode counts and the
//!   node's binary and HTTP addresses travel as foca custom broadcasts. They are spread only a
//!   few times, so a node re-broadcasts its own (with a higher version) whenever a member comes
//!   up, and every [`REBROADCAST`], so that late joiners learn everyone's.
//! * **Seeds** are added as down members, so that foca's announce-to-down reaches them once
//!   they start, and the driver re-announces to them every [`REANNOUNCE`] while this node knows
//!   no one (foca stops all periodic work once idle).
//! * **Down members are announced to** every [`REANNOUNCE`] as well: foca never probes a member
//!   it declared down, so a node restarted at its old address — even on an empty disk, knowing
//!   no member and no seed — would otherwise stay alone for good.
//! * A node that is **down** changes routing (hints, sloppy quorum), never ring ownership.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU8};
use std::rc::Rc;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use dynacore_proto::version::Protocol;
use foca::{AccumulatingRuntime, Config, Foca, Invalidates, Member, OwnedNotification, Timer};
use rand_foca::SeedableRng;

pub use foca::Timer as MembershipTimer;

/// How often a node with no known member announces itself to its seeds again.
pub const REANNOUNCE: Duration = Duration::from_secs(2);
/// Up to this many members, a node re-broadcasts its metadata as soon as one comes up; beyond,
/// once per [`REANNOUNCE`] round.
pub const REBROADCAST_AT_ONCE_MAX: usize = 64;
/// Down members a node announces itself to per [`REANNOUNCE`] at most.
pub const REANNOUNCE_DOWN_MAX: usize = 4;
/// How often a node re-broadcasts its own metadata.
pub const REBROADCAST: Duration = Duration::from_secs(30);
const SIX: NonZeroU8 = match NonZeroU8::new(6) {
    Some(n) => n,
    None => NonZeroU8::MIN,
};

/// Datagram size limit (foca's default, safe for any MTU path on loopback and LANs).
pub const PACKET_BYTES_MAX: usize = 1400;

/// A member as SWIM knows it: small, because it travels in every packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct MemberId {
    /// Where its gossip goes (UDP); the member's identity as far as foca is concerned.
    pub addr: SocketAddr,
    /// Its node id (0 for a seed not heard from yet).
    pub node: u64,
    /// Grows at every start of the node.
    pub generation: u64,
}

impl foca::Identity for MemberId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(MemberId {
            generation: self.generation + 1,
            ..*self
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, other: &Self) -> bool {
        self.generation > other.generation
    }
}

/// A node's lifecycle state, as it announces it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NodeStatus {
    /// Starting; not yet serving.
    Joining,
    /// Serving.
    Normal,
    /// Shutting down or being decommissioned.
    Leaving,
}

/// What a node tells the cluster about itself.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeMeta {
    /// The node.
    pub node: u64,
    /// Its generation (as in its [`MemberId`]).
    pub generation: u64,
    /// Grows with every change, so that newer metadata replaces older.
    pub version: u32,
    /// Its state.
    pub status: NodeStatus,
    /// Its core count.
    pub shards: u32,
    /// Its vnode count.
    pub vnodes: u16,
    /// Its binary protocol's shared port (core `i` at port + 1 + i).
    pub binary: SocketAddr,
    /// Its HTTP API.
    pub http: SocketAddr,
    /// Its gossip address.
    pub gossip: SocketAddr,
    /// The digest of its ring book: nodes whose digests differ exchange books.
    pub ring: u64,
}

/// The most cores a node may announce (the same bound as a node's own `cores` setting).
pub const SHARDS_MAX: u32 = 1024;
/// The most vnodes a node may announce.
pub const VNODES_MAX: u16 = 4096;

impl NodeMeta {
    /// Whether what a node announces is sane: a real id, 1..=[`SHARDS_MAX`] cores,
    /// 1..=[`VNODES_MAX`] vnodes, and binary and gossip addresses peers can reach (no
    /// unspecified or multicast IP, no port 0; the HTTP address is only shown, and may be
    /// "every address"). A datagram is anyone's to forge: what fails is refused, never kept.
    ///
    /// # Errors
    /// What is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.node == 0 {
            return Err("node id 0".into());
        }
        if !(1..=SHARDS_MAX).contains(&self.shards) {
            return Err(format!("{} cores, not 1..={SHARDS_MAX}", self.shards));
        }
        if !(1..=VNODES_MAX).contains(&self.vnodes) {
            return Err(format!("{} vnodes, not 1..={VNODES_MAX}", self.vnodes));
        }
        for (what, a) in [
            ("binary", self.binary),
            ("http", self.http),
            ("gossip", self.gossip),
        ] {
            if a.port() == 0 || a.ip().is_unspecified() || a.ip().is_multicast() {
                return Err(format!("{what} address {a} cannot be reached"));
            }
        }
        Ok(())
    }

    fn key(&self) -> MetaKey {
        MetaKey {
            node: self.node,
            order: (self.generation, self.version),
        }
    }
}

/// Identifies a metadata broadcast: a newer one of the same node replaces an older one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaKey {
    node: u64,
    order: (u64, u32),
}

impl Invalidates for MetaKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.node == other.node && self.order > other.order
    }
}

/// A metadata broadcast that does not decode.
#[derive(Debug)]
pub struct MetaError(String);

impl std::fmt::Display for MetaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad node metadata: {}", self.0)
    }
}

impl std::error::Error for MetaError {}

/// A node's metadata as gossip carries it: the [`NodeMeta`] (postcard), then the internode
/// protocol it speaks and the oldest it works with (two postcard `u16`s; a node that predates
/// versions sends neither, and older nodes ignore them).
#[must_use]
pub fn encode_meta(meta: &NodeMeta, protocol: Protocol) -> Option<Vec<u8>> {
    let mut bytes = postcard::to_allocvec(meta).ok()?;
    bytes.extend(postcard::to_allocvec(&(protocol.version, protocol.min)).ok()?);
    Some(bytes)
}

/// Decodes [`encode_meta`]'s bytes.
///
/// # Errors
/// What does not decode.
pub fn decode_meta(data: &[u8]) -> Result<(NodeMeta, Protocol), MetaError> {
    let (meta, rest): (NodeMeta, &[u8]) =
        postcard::take_from_bytes(data).map_err(|e| MetaError(e.to_string()))?;
    let protocol = if rest.is_empty() {
        Protocol::UNANNOUNCED
    } else {
        let (version, min): (u16, u16) =
            postcard::from_bytes(rest).map_err(|e| MetaError(e.to_string()))?;
        Protocol::announced(version, min)
    };
    Ok((meta, protocol))
}

/// Peers refused for their protocol: when each was last logged.
type Refused = Rc<RefCell<BTreeMap<u64, Instant>>>;

/// How often a refused peer is logged again.
const REFUSED_LOG_EVERY: Duration = Duration::from_secs(30);

/// The latest metadata of every node heard of, shared between foca's handler and the view.
type MetaTable = Rc<RefCell<BTreeMap<u64, NodeMeta>>>;

/// Nodes whose metadata one node keeps at most (a bound on what datagrams can make it hold).
pub const NODES_MAX: usize = 1024;

struct MetaHandler {
    table: MetaTable,
    /// This node's id: what others say about it is not taken (it knows better), except that
    /// the version it saw is remembered so that its own next broadcast supersedes it.
    own: u64,
    own_seen: Rc<Cell<(u64, u32)>>,
    /// Bumped at every change of the table.
    revision: Rc<Cell<u64>>,
    /// Peers refused for their protocol.
    refused: Refused,
}

impl foca::BroadcastHandler<MemberId> for MetaHandler {
    type Key = MetaKey;
    type Error = MetaError;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&MemberId>,
    ) -> Result<Option<MetaKey>, MetaError> {
        let (meta, protocol) = decode_meta(data)?;
        meta.check().map_err(MetaError)?;
        let own_protocol = dynacore_proto::version::own();
        if meta.node != self.own && !own_protocol.works_with(protocol) {
            // Not kept, not spread: a node this one cannot work with never enters its view
            // (nor, through it, its ring).
            let mut refused = self.refused.borrow_mut();
            let due = refused
                .get(&meta.node)
                .is_none_or(|at| at.elapsed() >= REFUSED_LOG_EVERY);
            if due && (refused.len() < NODES_MAX || refused.contains_key(&meta.node)) {
                refused.insert(meta.node, Instant::now());
                tracing::error!(
                    node = %dynacore_proto::ring::NodeId(meta.node),
                    binary = %meta.binary,
                    "refusing a peer: it {}",
                    own_protocol.refusal(protocol)
                );
            }
            return Ok(None);
        }
        if meta.node == self.own && sender.is_some() {
            // An older process of this node, or a stale copy: never adopted nor spread.
            let seen = self.own_seen.get();
            self.own_seen.set(seen.max(meta.key().order));
            return Ok(None);
        }
        let mut table = self.table.borrow_mut();
        let newer = table
            .get(&meta.node)
            .is_none_or(|known| meta.key().order > known.key().order);
        if !newer {
            return Ok(None); // stale or known: stop spreading it
        }
        if !table.contains_key(&meta.node) && table.len() >= NODES_MAX {
            return Ok(None);
        }
        let key = meta.key();
        table.insert(meta.node, meta);
        self.revision.set(self.revision.get() + 1);
        Ok(Some(key))
    }
}

/// Something for the driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send this datagram.
    Send(SocketAddr, Vec<u8>),
    /// Hand this timer back through [`Membership::handle_timer`] after the delay.
    Schedule(Duration, Timer<MemberId>),
}

/// A member in the view: its metadata (if heard) and whether it is up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    /// Its identity.
    pub id: MemberId,
    /// Whether SWIM considers it alive (or suspect).
    pub up: bool,
    /// Its latest metadata, once received.
    pub meta: Option<NodeMeta>,
}

/// Counts of what the membership saw (for metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MembershipStats {
    /// Datagrams refused (undecodable, too big, from ourselves).
    pub bad_packets: u64,
    /// Members that came up.
    pub ups: u64,
    /// Members declared down.
    pub downs: u64,
}

/// One node's membership state machine (see the module documentation).
pub struct Membership {
    foca: Foca<MemberId, foca::PostcardCodec, rand_foca::rngs::StdRng, MetaHandler>,
    runtime: AccumulatingRuntime<MemberId>,
    table: MetaTable,
    own: NodeMeta,
    seeds: Vec<SocketAddr>,
    /// Every identity foca told us about, by address, with whether it is up.
    members: BTreeMap<SocketAddr, (MemberId, bool)>,
    stats: MembershipStats,
    own_seen: Rc<Cell<(u64, u32)>>,
    revision: Rc<Cell<u64>>,
    /// Left the cluster: input is ignored from then on (foca would otherwise rejoin).
    left: bool,
    /// The cluster size foca's settings were last tuned for.
    tuned_for: u32,
    /// Where the next re-announce to down members starts (they take turns).
    down_cursor: usize,
    /// A member came up in a large cluster: this node's metadata goes out at the next
    /// re-announce round.
    rebroadcast_due: bool,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("own", &self.own)
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// The membership of the node `own` describes, joining through `seeds` (its own address
    /// among them is ignored); `rng_seed` makes probe order reproducible.
    #[must_use]
    pub fn new(own: NodeMeta, seeds: &[SocketAddr], rng_seed: u64) -> Membership {
        let id = MemberId {
            addr: own.gossip,
            node: own.node,
            generation: own.generation,
        };
        let cluster = u32::try_from(seeds.len() + 1).unwrap_or(u32::MAX);
        let config = config_for(cluster);
        let table: MetaTable = Rc::new(RefCell::new(BTreeMap::new()));
        let own_seen = Rc::new(Cell::new((0, 0)));
        let revision = Rc::new(Cell::new(0));
        let foca = Foca::with_custom_broadcast(
            id,
            config,
            rand_foca::rngs::StdRng::seed_from_u64(rng_seed),
            foca::PostcardCodec,
            MetaHandler {
                table: table.clone(),
                own: own.node,
                own_seen: own_seen.clone(),
                revision: revision.clone(),
                refused: Rc::default(),
            },
        );
        let mut seeds: Vec<SocketAddr> =
            seeds.iter().copied().filter(|&s| s != own.gossip).collect();
        seeds.sort_unstable();
        seeds.dedup();
        Membership {
            foca,
            runtime: AccumulatingRuntime::new(),
            table,
            seeds,
            own,
            members: BTreeMap::new(),
            stats: MembershipStats::default(),
            own_seen,
            revision,
            left: false,
            tuned_for: cluster,
            down_cursor: 0,
            rebroadcast_due: false,
        }
    }

    /// Re-tunes foca for the cluster's size when it has changed by half or more since the last
    /// tuning: how many times an update is spread and how long a suspect has before it is
    /// declared down grow with the logarithm of the size (foca's LAN settings), so that a
    /// cluster of a thousand spreads news as surely as one of three.
    fn retune(&mut self) {
        let size = u32::try_from(self.foca.num_members() + 1).unwrap_or(u32::MAX);
        let changed = size > self.tuned_for.saturating_mul(3) / 2 || size < self.tuned_for / 2;
        if changed && self.foca.set_config(config_for(size)).is_ok() {
            self.tuned_for = size;
        }
    }

    /// This node's identity.
    #[must_use]
    pub fn id(&self) -> MemberId {
        *self.foca.identity()
    }

    /// Starts: spreads this node's metadata, adds the seeds as down members and announces to
    /// them.
    pub fn start(&mut self, out: &mut Vec<Output>) {
        self.broadcast_own();
        let seeds: Vec<Member<MemberId>> = self
            .seeds
            .iter()
            .map(|&a| Member::down(seed_id(a)))
            .collect();
        let _ = self
            .foca
            .apply_many(seeds.into_iter(), false, &mut self.runtime);
        self.announce_to_seeds();
        self.drain(out);
    }

    /// A datagram arrived. A bad one is counted and dropped.
    pub fn handle_data(&mut self, data: &[u8], out: &mut Vec<Output>) {
        if self.left {
            return;
        }
        if data.len() > PACKET_BYTES_MAX || self.foca.handle_data(data, &mut self.runtime).is_err()
        {
            self.stats.bad_packets += 1;
        }
        self.drain(out);
    }

    /// A timer this membership scheduled is due.
    pub fn handle_timer(&mut self, timer: Timer<MemberId>, out: &mut Vec<Output>) {
        if self.left {
            return;
        }
        // Errors here are foca noticing stale or out-of-order timers, which it recovers from.
        let _ = self.foca.handle_timer(timer, &mut self.runtime);
        self.drain(out);
    }

    /// The driver's periodic duty ([`REANNOUNCE`]): a node that knows no one announces to its
    /// seeds and to every member it knew (foca alone would stay idle, split from the cluster);
    /// and every node announces to the members it holds as down. A node restarted at a known
    /// address is so found again within a round, even one that lost its disk and with it every
    /// member and seed it knew (foca never probes a member it declared down).
    pub fn reannounce(&mut self, out: &mut Vec<Output>) {
        if self.left {
            return;
        }
        if std::mem::take(&mut self.rebroadcast_due) {
            self.broadcast_own();
        }
        if self.foca.num_members() > 0 {
            let down: Vec<MemberId> = self
                .members
                .values()
                .filter(|&&(id, up)| !up && id.node != 0)
                .map(|&(id, _)| id)
                .collect();
            // A few per round, taking turns: after a partition of a large cluster, hundreds are
            // down, and one announce across is enough to start the healing that gossip spreads.
            let take = down.len().min(REANNOUNCE_DOWN_MAX);
            for k in 0..take {
                let id = down[(self.down_cursor + k) % down.len()];
                let _ = self.foca.announce(id, &mut self.runtime);
            }
            self.down_cursor = self.down_cursor.wrapping_add(take);
        } else {
            self.announce_to_seeds();
            // A node with no seed (or whose seeds are gone) finds its way back through the
            // members it knew.
            let known: Vec<MemberId> = self
                .members
                .values()
                .filter(|(id, _)| id.node != 0)
                .map(|&(id, _)| id)
                .collect();
            for id in known {
                let _ = self.foca.announce(id, &mut self.runtime);
            }
        }
        self.drain(out);
    }

    /// The driver's periodic duty ([`REBROADCAST`]): spreads this node's metadata again.
    pub fn rebroadcast(&mut self, out: &mut Vec<Output>) {
        if self.left {
            return;
        }
        self.broadcast_own();
        self.drain(out);
    }

    /// Changes the ring digest this node announces (spread with a higher version).
    pub fn set_ring_digest(&mut self, digest: u64, out: &mut Vec<Output>) {
        if self.own.ring == digest {
            return;
        }
        self.own.ring = digest;
        self.broadcast_own();
        self.drain(out);
    }

    /// Changes this node's announced status (spread with a higher version).
    pub fn set_status(&mut self, status: NodeStatus, out: &mut Vec<Output>) {
        self.own.status = status;
        self.broadcast_own();
        self.drain(out);
    }

    /// Leaves the cluster cleanly (peers learn at once rather than after suspicion).
    pub fn leave(&mut self, out: &mut Vec<Output>) {
        self.own.status = NodeStatus::Leaving;
        self.broadcast_own();
        let _ = self.foca.leave_cluster(&mut self.runtime);
        self.drain(out);
        self.left = true;
    }

    /// Grows whenever what [`Membership::view`] returns may have changed.
    #[must_use]
    pub fn revision(&self) -> u64 {
        self.revision.get()
    }

    /// Every member heard of (not this node), by gossip address; a node heard at several
    /// addresses (it restarted on another one) appears once, as its latest generation.
    #[must_use]
    pub fn view(&self) -> Vec<MemberView> {
        let table = self.table.borrow();
        let mut latest: BTreeMap<u64, (u64, bool)> = BTreeMap::new();
        for (id, up) in self.members.values() {
            let e = latest.entry(id.node).or_insert((id.generation, *up));
            if (id.generation, *up) > *e {
                *e = (id.generation, *up);
            }
        }
        self.members
            .values()
            .filter(|(id, _)| id.node != 0 && id.node != self.own.node)
            .filter(|(id, up)| latest.get(&id.node) == Some(&(id.generation, *up)))
            .map(|&(id, up)| MemberView {
                id,
                up,
                // Metadata of an earlier process of that node does not describe this one.
                meta: table
                    .get(&id.node)
                    .filter(|m| m.generation == id.generation)
                    .cloned(),
            })
            .collect()
    }

    /// How many members this node holds as up with their current metadata (a cheap count of
    /// what [`Membership::view`] lists as up and described).
    #[must_use]
    pub fn up_with_meta(&self) -> usize {
        let table = self.table.borrow();
        self.members
            .values()
            .filter(|&&(id, up)| up && id.node != 0 && id.node != self.own.node)
            .filter(|(id, _)| {
                table
                    .get(&id.node)
                    .is_some_and(|m| m.generation == id.generation)
            })
            .count()
    }

    /// Whether this node holds the member gossiping at `addr` as up, and with its current
    /// metadata (`None`: never heard of).
    #[must_use]
    pub fn sees(&self, addr: SocketAddr) -> Option<(bool, bool)> {
        let table = self.table.borrow();
        self.members.get(&addr).map(|&(id, up)| {
            let meta = table
                .get(&id.node)
                .is_some_and(|m| m.generation == id.generation);
            (up, meta)
        })
    }

    /// This node's own metadata as it last announced it.
    #[must_use]
    pub fn own(&self) -> &NodeMeta {
        &self.own
    }

    /// What it counted.
    #[must_use]
    pub fn stats(&self) -> MembershipStats {
        self.stats
    }

    fn announce_to_seeds(&mut self) {
        for &seed in &self.seeds {
            let _ = self.foca.announce(seed_id(seed), &mut self.runtime);
        }
    }

    fn broadcast_own(&mut self) {
        // Past anything the cluster has seen for this node at this generation (an earlier
        // process may have used the same generation after a rejoin).
        let (gen_seen, version_seen) = self.own_seen.get();
        let floor = if gen_seen == self.own.generation {
            version_seen
        } else {
            0
        };
        self.own.version = self.own.version.max(floor).saturating_add(1);
        self.revision.set(self.revision.get() + 1);
        match encode_meta(&self.own, dynacore_proto::version::own()) {
            Some(bytes) => {
                let _ = self.foca.add_broadcast(&bytes);
            }
            None => tracing::error!("cannot encode this node's metadata"),
        }
    }

    fn drain(&mut self, out: &mut Vec<Output>) {
        let mut rebroadcast = false;
        let mut member_up = false;
        while let Some(n) = self.runtime.to_notify() {
            self.revision.set(self.revision.get() + 1);
            match n {
                OwnedNotification::MemberUp(id) => {
                    self.stats.ups += 1;
                    self.members.insert(id.addr, (id, true));
                    member_up = true;
                }
                OwnedNotification::MemberDown(id) => {
                    self.stats.downs += 1;
                    if self
                        .members
                        .get(&id.addr)
                        .is_none_or(|(known, _)| known.generation <= id.generation)
                    {
                        self.members.insert(id.addr, (id, false));
                    }
                }
                OwnedNotification::Rename(_, new) => {
                    let up = self.members.get(&new.addr).is_some_and(|&(_, up)| up);
                    self.members.insert(new.addr, (new, up));
                    rebroadcast = true;
                }
                OwnedNotification::Rejoin(id) => {
                    self.own.generation = id.generation;
                    rebroadcast = true;
                }
                // Idle, Active, Defunct: the driver's re-announce covers idleness; a defunct
                // node (declared down, cannot renew) rejoins through it too.
                _ => {}
            }
        }
        self.retune();
        // Custom broadcasts are spread a few times only: a member that just came up would never
        // learn this node's metadata otherwise. In a large cluster members come up by the
        // hundred: once per re-announce round is enough for them (and each broadcast costs a
        // pass over the queue of them); a new identity of this node goes out at once.
        if member_up && self.members.len() > REBROADCAST_AT_ONCE_MAX {
            self.rebroadcast_due = true;
        } else if member_up {
            rebroadcast = true;
        }
        if rebroadcast {
            self.broadcast_own();
        }
        while let Some((to, data)) = self.runtime.to_send() {
            out.push(Output::Send(to.addr, data.to_vec()));
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            out.push(Output::Schedule(after, timer));
        }
        debug_assert_eq!(self.runtime.backlog(), 0, "the runtime is drained");
    }
}

/// foca's LAN settings for a cluster of `size`, with two changes: every update is spread at
/// least six times (small clusters), and a down member is never forgotten (seeds are added as
/// down ones, and must not rot away).
fn config_for(size: u32) -> Config {
    let mut config = Config::new_lan(NonZeroU32::new(size).unwrap_or(NonZeroU32::MIN));
    config.max_transmissions = config.max_transmissions.max(SIX);
    config.remove_down_after = None;
    config
}

/// A seed's placeholder identity: foca accepts an announce whose destination address matches.
fn seed_id(addr: SocketAddr) -> MemberId {
    MemberId {
        addr,
        node: 0,
        generation: 0,
    }
}

/// What the membership knows, as the other cores read it.
#[derive(Clone, Debug)]
pub struct Members {
    /// This node, as it announces itself.
    pub own: NodeMeta,
    /// Every other node heard of.
    pub others: Vec<MemberView>,
    /// Counters.
    pub stats: MembershipStats,
}

/// The node's shared view of the membership (written by the driver, read by any core).
pub type SharedMembers = Arc<RwLock<Option<Members>>>;

#[cfg(test)]
mod tests {
    use super::*;
    use foca::BroadcastHandler as _;
    use std::collections::{BTreeSet, HashMap};

    /// A deterministic network and clock for several memberships.
    struct Sim {
        now_ms: u64,
        seq: u64,
        events: BTreeMap<(u64, u64), Event>,
        nodes: Vec<SimNode>,
        by_addr: HashMap<SocketAddr, usize>,
        /// Pairs of nodes that cannot reach each other.
        cut: BTreeSet<(usize, usize)>,
    }

    struct SimNode {
        membership: Membership,
        alive: bool,
        /// Bumped at each restart: timers of an earlier process are dropped.
        epoch: u64,
    }

    enum Event {
        Deliver {
            from: usize,
            to: SocketAddr,
            data: Vec<u8>,
        },
        Timer {
            node: usize,
            epoch: u64,
            timer: Timer<MemberId>,
        },
        Duty {
            node: usize,
            epoch: u64,
        },
    }

    fn addr(i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9000 + u16::try_from(i).expect("small")))
    }

    fn meta(i: usize, generation: u64) -> NodeMeta {
        NodeMeta {
            node: 100 + i as u64,
            generation,
            version: 0,
            status: NodeStatus::Normal,
            shards: 2,
            vnodes: 256,
            binary: SocketAddr::from(([127, 0, 0, 1], 7400 + u16::try_from(i).expect("small"))),
            http: SocketAddr::from(([127, 0, 0, 1], 8400)),
            gossip: addr(i),
            ring: 0,
        }
    }

    impl Sim {
        fn new(n: usize) -> Sim {
            let mut sim = Sim {
                now_ms: 0,
                seq: 0,
                events: BTreeMap::new(),
                nodes: Vec::new(),
                by_addr: HashMap::new(),
                cut: BTreeSet::new(),
            };
            for i in 0..n {
                sim.by_addr.insert(addr(i), i);
                // Everyone is given node 0 as its seed.
                let m = Membership::new(meta(i, 1), &[addr(0)], i as u64 + 1);
                sim.nodes.push(SimNode {
                    membership: m,
                    alive: true,
                    epoch: 0,
                });
                sim.boot(i);
            }
            sim
        }

        fn push(&mut self, at_ms: u64, e: Event) {
            self.seq += 1;
            self.events.insert((at_ms, self.seq), e);
        }

        fn boot(&mut self, i: usize) {
            let mut out = Vec::new();
            self.nodes[i].membership.start(&mut out);
            self.apply(i, out);
            let epoch = self.nodes[i].epoch;
            self.push(self.now_ms + 2_000, Event::Duty { node: i, epoch });
        }

        fn apply(&mut self, from: usize, out: Vec<Output>) {
            let epoch = self.nodes[from].epoch;
            for o in out {
                match o {
                    Output::Send(to, data) => {
                        // A deterministic 2..=9 ms of latency.
                        let delay = 2 + self.seq % 8;
                        self.push(self.now_ms + delay, Event::Deliver { from, to, data });
                    }
                    Output::Schedule(after, timer) => {
                        let at = self.now_ms + u64::try_from(after.as_millis()).expect("ms");
                        self.push(
                            at,
                            Event::Timer {
                                node: from,
                                epoch,
                                timer,
                            },
                        );
                    }
                }
            }
        }

        fn run_until(&mut self, until_ms: u64) {
            while let Some((&(at, seq), _)) = self.events.iter().next() {
                if at > until_ms {
                    break;
                }
                let e = self.events.remove(&(at, seq)).expect("present");
                self.now_ms = at;
                let mut out = Vec::new();
                let node = match e {
                    Event::Deliver { from, to, data } => {
                        let Some(&i) = self.by_addr.get(&to) else {
                            continue;
                        };
                        let blocked = self.cut.contains(&(from.min(i), from.max(i)));
                        if !self.nodes[i].alive || !self.nodes[from].alive || blocked {
                            continue;
                        }
                        self.nodes[i].membership.handle_data(&data, &mut out);
                        i
                    }
                    Event::Timer { node, epoch, timer } => {
                        if !self.nodes[node].alive || self.nodes[node].epoch != epoch {
                            continue;
                        }
                        self.nodes[node].membership.handle_timer(timer, &mut out);
                        node
                    }
                    Event::Duty { node, epoch } => {
                        if !self.nodes[node].alive || self.nodes[node].epoch != epoch {
                            continue;
                        }
                        self.nodes[node].membership.reannounce(&mut out);
                        self.push(
                            self.now_ms + REANNOUNCE.as_millis() as u64,
                            Event::Duty { node, epoch },
                        );
                        node
                    }
                };
                self.apply(node, out);
            }
            self.now_ms = until_ms;
        }

        fn kill(&mut self, i: usize) {
            self.nodes[i].alive = false;
        }

        fn restart(&mut self, i: usize, generation: u64) {
            self.nodes[i] = SimNode {
                membership: Membership::new(meta(i, generation), &[addr(0)], 77 + generation),
                alive: true,
                epoch: self.nodes[i].epoch + 1,
            };
            self.boot(i);
        }

        /// What node `i` sees of node `j`: up, generation, and whether it has its metadata.
        fn sees(&self, i: usize, j: usize) -> Option<(bool, u64, bool)> {
            self.nodes[i]
                .membership
                .view()
                .into_iter()
                .find(|v| v.id.addr == addr(j))
                .map(|v| {
                    let meta_ok = v.meta.as_ref().is_some_and(|m| {
                        m.generation == v.id.generation
                            && m.shards == 2
                            && m.binary.port() == 7400 + u16::try_from(j).expect("small")
                    });
                    (v.up, v.id.generation, meta_ok)
                })
        }
    }

    #[test]
    fn three_nodes_join_detect_a_death_and_take_back_a_restart() {
        let mut sim = Sim::new(3);
        sim.run_until(5_000);
        for i in 0..3 {
            for j in (0..3).filter(|&j| j != i) {
                assert_eq!(
                    sim.sees(i, j),
                    Some((true, 1, true)),
                    "node {i} sees node {j} at 5 s"
                );
            }
        }
        // Kill node 2: the others declare it down within the probe period plus suspicion.
        sim.kill(2);
        sim.run_until(25_000);
        for i in 0..2 {
            assert_eq!(
                sim.sees(i, 2).map(|s| s.0),
                Some(false),
                "node {i} sees node 2 down"
            );
            assert_eq!(sim.sees(i, 1 - i).map(|s| s.0), Some(true));
        }
        // It comes back as generation 2: a new identity that supersedes the old one, and it
        // learns everyone's metadata although those broadcasts were spread long ago.
        sim.restart(2, 2);
        sim.run_until(45_000);
        for i in 0..2 {
            assert_eq!(
                sim.sees(i, 2),
                Some((true, 2, true)),
                "node {i} sees node 2 back"
            );
        }
        for j in 0..2 {
            assert_eq!(
                sim.sees(2, j),
                Some((true, 1, true)),
                "node 2 sees node {j}"
            );
        }
        assert_eq!(sim.nodes[0].membership.stats().bad_packets, 0);
    }

    #[test]
    fn a_split_pair_heals_once_the_partition_ends() {
        let mut sim = Sim::new(2);
        sim.run_until(5_000);
        assert_eq!(sim.sees(1, 0).map(|s| s.0), Some(true));
        sim.cut.insert((0, 1));
        sim.run_until(40_000);
        assert_eq!(
            sim.sees(0, 1).map(|s| s.0),
            Some(false),
            "split: node 0 sees 1 down"
        );
        assert_eq!(
            sim.sees(1, 0).map(|s| s.0),
            Some(false),
            "split: node 1 sees 0 down"
        );
        sim.cut.clear();
        sim.run_until(80_000);
        assert_eq!(
            sim.sees(0, 1).map(|s| s.0),
            Some(true),
            "healed: node 0 sees 1"
        );
        assert_eq!(
            sim.sees(1, 0).map(|s| s.0),
            Some(true),
            "healed: node 1 sees 0"
        );
    }

    #[test]
    fn garbage_datagrams_are_counted_and_dropped() {
        let mut m = Membership::new(meta(0, 1), &[], 1);
        let mut out = Vec::new();
        m.start(&mut out);
        for junk in [&b""[..], b"\x00\x01\x02", &[0xffu8; 2000][..]] {
            out.clear();
            m.handle_data(junk, &mut out);
            assert!(out.iter().all(|o| !matches!(o, Output::Send(..))));
        }
        assert_eq!(m.stats().bad_packets, 3);
        assert!(m.view().is_empty());
    }

    #[test]
    fn forged_or_absurd_metadata_is_refused() {
        let good: SocketAddr = "127.0.0.2:7400".parse().expect("addr");
        let meta = |shards: u32, vnodes: u16, binary: SocketAddr| NodeMeta {
            node: 9,
            generation: 1,
            version: 1,
            status: NodeStatus::Normal,
            shards,
            vnodes,
            binary,
            http: good,
            gossip: good,
            ring: 0,
        };
        let mut handler = MetaHandler {
            table: Rc::new(RefCell::new(BTreeMap::new())),
            own: 1,
            own_seen: Rc::new(Cell::new((0, 0))),
            revision: Rc::new(Cell::new(0)),
            refused: Rc::default(),
        };
        let sender = MemberId {
            addr: good,
            node: 9,
            generation: 1,
        };
        for bad in [
            meta(u32::MAX, 256, good),
            meta(0, 256, good),
            meta(2, 0, good),
            meta(2, u16::MAX, good),
            meta(2, 256, "0.0.0.0:7400".parse().expect("addr")),
            meta(2, 256, "127.0.0.2:0".parse().expect("addr")),
        ] {
            let data = postcard::to_allocvec(&bad).expect("encode");
            assert!(
                handler.receive_item(&data, Some(&sender)).is_err(),
                "{bad:?} accepted"
            );
        }
        assert!(
            handler.table.borrow().is_empty(),
            "nothing refused was kept"
        );
        // A node that speaks a protocol this one cannot work with is not taken.
        let newer = Protocol {
            version: u16::MAX,
            min: u16::MAX,
        };
        let data = encode_meta(&meta(2, 256, good), newer).expect("encode");
        assert_eq!(handler.receive_item(&data, Some(&sender)).ok(), Some(None));
        assert!(
            handler.table.borrow().is_empty(),
            "an incompatible peer is not kept"
        );
        assert!(handler.refused.borrow().contains_key(&9));
        // Without a protocol (a node that predates versions), or with a compatible one: taken.
        let data = postcard::to_allocvec(&meta(2, 256, good)).expect("encode");
        assert!(handler
            .receive_item(&data, Some(&sender))
            .expect("sane")
            .is_some());
        let mut later = meta(2, 256, good);
        later.version = 2;
        let data = encode_meta(&later, dynacore_proto::version::own()).expect("encode");
        assert_eq!(
            decode_meta(&data).expect("decodes").1,
            dynacore_proto::version::own()
        );
        assert!(handler
            .receive_item(&data, Some(&sender))
            .expect("sane")
            .is_some());
    }
}
