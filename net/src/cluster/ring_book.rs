//! The cluster as one node's cores see it: which nodes are in the ring, where each one listens,
//! whether it is up, and the ring they make.
//!
//! * **Ring membership is not liveness.** A node is in the ring from the time it holds tokens
//!   and is `normal` (or `leaving`) until it has `left` or been `removed`; it stays in it while
//!   it is down or stopped (its keys are not handed to anyone else: writes for it become hints,
//!   as in Dynamo). Ring members are recorded in the data directory's `RING` file, so a node
//!   that restarts while another is down still builds the same ring as everyone else.
//! * **Each member's ring entry** (tokens, state, rack, the change it drives, what it has
//!   streamed) carries an `epoch` that grows with every change of it; two books merge entry by
//!   entry, the higher epoch winning (ties: the later state). Only a node itself changes its
//!   entry, except that `removenode` and `--replace` mark a dead node `leaving` and then
//!   `removed`. Addresses come from gossip, the newer generation winning. The books' digest
//!   ([`RingBook::digest`]) travels in gossip; nodes whose digests differ exchange books over
//!   the internode protocol.
//! * **Moves** (docs/protocol.md "Topology changes"): a `joining` node with tokens, or one that
//!   replaces another, and a `leaving` node make a *future* ring beside the current one; the
//!   replicas a key has in the future ring and not in the current one are its **pending**
//!   replicas: writes go to them too, reads do not.
//! * The membership driver (core 0) rebuilds a [`ClusterState`] whenever what gossip knows
//!   changes and publishes it; every core reads the latest one per request
//!   ([`SharedCluster`]).
//! * The effective replication factor is the configured one, capped at the ring's node count
//!   (a single node serves with one replica).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::cluster::membership::Members;
use crate::cluster::membership::NodeStatus;
use dynacore_proto::ring::{NodeId, Ring, ShardMap, Token};

/// Name of the ring membership file in the data directory.
pub const RING_FILE: &str = "RING";

/// A member's place in the ring's life.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Heard of, or entering the ring: with tokens, its ranges are streamed to it (pending).
    Joining,
    /// In the ring, serving its ranges.
    Normal,
    /// In the ring, its ranges being streamed to their next owners (decommission, or removal
    /// of a dead node).
    Leaving,
    /// Decommissioned: out of the ring for good.
    Left,
    /// Removed (dead, or replaced): out of the ring for good.
    Removed,
}

impl MemberState {
    /// Its name, as `/cluster` shows it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            MemberState::Joining => "joining",
            MemberState::Normal => "normal",
            MemberState::Leaving => "leaving",
            MemberState::Left => "left",
            MemberState::Removed => "removed",
        }
    }

    /// Out of the ring for good.
    #[must_use]
    pub fn gone(self) -> bool {
        matches!(self, MemberState::Left | MemberState::Removed)
    }
}

fn legacy_normal() -> MemberState {
    // Entries written before states existed were ring members.
    MemberState::Normal
}

/// What kind of topology change a member drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// A new node takes tokens and streams its ranges.
    Join,
    /// A node streams its ranges to their next owners and leaves.
    Decommission,
    /// A dead node's ranges are rebuilt on their next owners from the surviving replicas.
    Remove,
    /// A new node takes a dead node's tokens and streams its ranges.
    Replace,
}

/// A topology change in progress, recorded in the entry of the node whose tokens move.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    /// Identifies it: when it started (ms since the epoch). Of two changes started at once,
    /// the one with the lower `(id, node)` goes on and the other is called off.
    pub id: u64,
    /// What it is.
    pub kind: ChangeKind,
    /// The node that drives it (the moving node itself, or the one `removenode` ran on).
    pub driver: String,
}

/// How far a node has streamed the ranges a change gives it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    /// The moving node and the change's id.
    pub node: String,
    /// The change's id.
    pub change: u64,
    /// Ranges to stream, and done.
    pub ranges: u64,
    /// Ranges done.
    pub ranges_done: u64,
    /// Keys received.
    pub keys: u64,
    /// Bytes received (keys and values).
    pub bytes: u64,
    /// When streaming started (ms since the epoch).
    pub started_ms: u64,
    /// All ranges are in.
    pub done: bool,
}

/// A ring member as recorded: enough to route to it while it is down, and its place in the
/// ring.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RingMember {
    /// Its node id (hex, as everywhere else).
    pub id: String,
    /// Its binary protocol's shared port (core `i` at port + 1 + i).
    pub binary: SocketAddr,
    /// Its HTTP API.
    pub http: SocketAddr,
    /// Its core count.
    pub shards: u32,
    /// Its vnode count.
    pub vnodes: u16,
    /// The generation it was last heard with.
    pub generation: u64,
    /// Its vnodes' tokens, allocated when it joined (empty for a member of a ring made before
    /// allocation: its tokens derive from its id).
    #[serde(default)]
    pub tokens: Vec<u64>,
    /// Where it is in the ring's life.
    #[serde(default = "legacy_normal")]
    pub state: MemberState,
    /// Its rack (`""`: none given).
    #[serde(default)]
    pub rack: String,
    /// Its human name (`""`: none given; left out of the encoding then, for peers that predate
    /// names).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Grows with every change of the fields from `tokens` on.
    #[serde(default)]
    pub epoch: u64,
    /// The node whose tokens it takes over (itself, for a node restarted on an empty disk).
    #[serde(default)]
    pub replaces: Option<String>,
    /// The topology change moving its tokens, while one is.
    #[serde(default)]
    pub change: Option<Change>,
    /// How far it has streamed the ranges the current change gives it.
    #[serde(default)]
    pub progress: Option<Progress>,
}

impl RingMember {
    fn node(&self) -> Option<NodeId> {
        u64::from_str_radix(&self.id, 16).ok().map(NodeId)
    }

    /// A member known by its addresses only (as gossip first describes it): not in the ring.
    #[must_use]
    pub fn new(
        node: NodeId,
        binary: SocketAddr,
        http: SocketAddr,
        shards: u32,
        vnodes: u16,
        generation: u64,
    ) -> RingMember {
        RingMember {
            id: node.to_string(),
            binary,
            http,
            shards,
            vnodes,
            generation,
            tokens: Vec::new(),
            state: MemberState::Joining,
            rack: String::new(),
            name: String::new(),
            epoch: 0,
            replaces: None,
            change: None,
            progress: None,
        }
    }

    /// What gossip says of a node: its addresses.
    #[must_use]
    pub fn of(meta: &crate::cluster::membership::NodeMeta) -> RingMember {
        RingMember::new(
            NodeId(meta.node),
            meta.binary,
            meta.http,
            meta.shards,
            meta.vnodes,
            meta.generation,
        )
    }

    /// The same member with `tokens`, `normal` (a ring's founding member, or a test's).
    #[must_use]
    pub fn normal_with(mut self, tokens: Vec<u64>) -> RingMember {
        self.tokens = tokens;
        self.state = MemberState::Normal;
        self.epoch = self.epoch.max(1);
        self
    }

    /// Its tokens: allocated, or derived from its id for a member of an older ring.
    #[must_use]
    pub fn ring_tokens(&self) -> Vec<Token> {
        if self.tokens.is_empty() {
            self.node()
                .map(|n| dynacore_proto::ring::vnode_tokens(n, self.vnodes))
                .unwrap_or_default()
        } else {
            self.tokens.iter().map(|&t| Token(t)).collect()
        }
    }

    /// Whether it holds tokens of its own: allocated, or (for a member of an older ring that
    /// is in it) derived.
    #[must_use]
    pub fn has_tokens(&self) -> bool {
        !self.tokens.is_empty() || matches!(self.state, MemberState::Normal | MemberState::Leaving)
    }

    /// Whether its ring entry supersedes `other`'s.
    fn ring_newer_than(&self, other: &RingMember) -> bool {
        (self.epoch, self.state) > (other.epoch, other.state)
    }

    /// Takes `from`'s ring entry (not its addresses).
    fn take_ring_entry(&mut self, from: &RingMember) {
        self.tokens.clone_from(&from.tokens);
        self.state = from.state;
        self.rack.clone_from(&from.rack);
        // A node's name never changes (its id derives from it, or it was set at its first
        // start); an entry that knows it teaches it.
        if !from.name.is_empty() {
            self.name.clone_from(&from.name);
        }
        self.epoch = from.epoch;
        self.replaces.clone_from(&from.replaces);
        self.change.clone_from(&from.change);
        self.progress.clone_from(&from.progress);
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RingFile {
    members: Vec<RingMember>,
}

/// The ring members this node knows, kept in the data directory.
#[derive(Debug)]
pub struct RingBook {
    path: Option<PathBuf>,
    members: BTreeMap<NodeId, RingMember>,
    /// The node was given seeds to join through: until it knows another member, it does not
    /// know the ring.
    seeded: bool,
    /// This node.
    own: NodeId,
}

impl RingBook {
    /// The book of `data_dir` (empty if it has none yet), with `own` in it.
    ///
    /// # Errors
    /// A message when the file exists but cannot be read or does not parse.
    pub fn load(data_dir: &Path, own: RingMember) -> Result<RingBook, String> {
        let path = data_dir.join(RING_FILE);
        let mut members = BTreeMap::new();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let file: RingFile = serde_json::from_str(&text)
                    .map_err(|e| format!("{} is damaged: {e}", path.display()))?;
                for m in file.members {
                    let node = m
                        .node()
                        .ok_or_else(|| format!("{}: bad node id {:?}", path.display(), m.id))?;
                    if m.shards == 0 {
                        return Err(format!("{}: node {} has no cores", path.display(), m.id));
                    }
                    members.insert(node, m);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        }
        let Some(own_node) = own.node() else {
            return Err(format!("bad own node id {:?}", own.id));
        };
        // This process's addresses win over whatever the file says of it; its ring entry is
        // the file's when there is one.
        let mut own = own;
        if let Some(known) = members.get(&own_node) {
            if known.ring_newer_than(&own) {
                own.take_ring_entry(known);
            }
        }
        members.insert(own_node, own);
        Ok(RingBook {
            path: Some(path),
            members,
            seeded: false,
            own: own_node,
        })
    }

    /// A book kept in memory only (tests, and nodes that do not gossip).
    #[must_use]
    pub fn in_memory(own: RingMember) -> RingBook {
        let own_node = own.node().unwrap_or(NodeId(0));
        let mut book = RingBook {
            path: None,
            members: BTreeMap::new(),
            seeded: false,
            own: own_node,
        };
        if let Some(node) = own.node() {
            book.members.insert(node, own);
        }
        book
    }

    /// Records what is now known of a member: its addresses if its generation is newer, its
    /// ring entry if its epoch is; `true` if that changed the book. Nothing that another node
    /// says of this one's ring entry is taken, except that it was removed or a higher epoch
    /// (which this node's next change of its entry goes past).
    pub fn record(&mut self, m: RingMember) -> bool {
        let Some(node) = m.node() else { return false };
        if m.shards == 0 {
            return false;
        }
        let Some(known) = self.members.get_mut(&node) else {
            self.members.insert(node, m);
            return true;
        };
        let mut changed = false;
        if m.generation > known.generation && node != self.own {
            known.binary = m.binary;
            known.http = m.http;
            known.shards = m.shards;
            known.vnodes = m.vnodes;
            known.generation = m.generation;
            changed = true;
        }
        if m.ring_newer_than(known) {
            if node == self.own && !m.state.gone() {
                // Only this node changes its own entry: it just goes past that epoch.
                known.epoch = m.epoch;
            } else {
                known.take_ring_entry(&m);
            }
            changed = true;
        }
        changed
    }

    /// Merges every entry of `other` (a peer's book); `true` if that changed this one.
    pub fn merge(&mut self, other: &[RingMember]) -> bool {
        let mut changed = false;
        for m in other {
            changed |= self.record(m.clone());
        }
        changed
    }

    /// Records this node's generation as its membership now has it (it grows when the node
    /// rejoins after being declared down); `true` if that changed the book.
    pub fn set_own_generation(&mut self, generation: u64) -> bool {
        let own = self.own;
        match self.members.get_mut(&own) {
            Some(m) if m.generation < generation => {
                m.generation = generation;
                true
            }
            _ => false,
        }
    }

    /// Changes this node's own ring entry with `f`, one epoch up.
    pub fn update_own(&mut self, f: impl FnOnce(&mut RingMember)) {
        let own = self.own;
        self.update(own, f);
    }

    /// Changes `node`'s ring entry with `f`, one epoch up (this node's own, or a dead node's
    /// that `removenode` or a replacement takes out). Nothing if the book lacks it.
    pub fn update(&mut self, node: NodeId, f: impl FnOnce(&mut RingMember)) {
        if let Some(m) = self.members.get_mut(&node) {
            f(m);
            m.epoch += 1;
        }
    }

    /// This node's own entry.
    ///
    /// # Panics
    /// Never: the book is made with it.
    #[must_use]
    pub fn own(&self) -> &RingMember {
        self.members
            .get(&self.own)
            .expect("INVARIANT: the book holds this node")
    }

    /// `node`'s entry.
    #[must_use]
    pub fn get(&self, node: NodeId) -> Option<&RingMember> {
        self.members.get(&node)
    }

    /// Every entry, for a peer.
    #[must_use]
    pub fn entries(&self) -> Vec<RingMember> {
        self.members.values().cloned().collect()
    }

    /// What peers compare to know whether their books differ: a hash of every entry's id,
    /// epoch and generation.
    #[must_use]
    pub fn digest(&self) -> u64 {
        self.hash_members(true)
    }

    /// A hash of every member's epoch: it changes whenever a member's tokens, state, rack or
    /// change do (never with addresses or generations alone), so it tells whether the ring
    /// decided on is still the ring.
    #[must_use]
    pub fn ring_epochs(&self) -> u64 {
        self.hash_members(false)
    }

    /// A hash of every member's id and epoch, and its generation too if `generations`.
    fn hash_members(&self, generations: bool) -> u64 {
        let mut bytes = Vec::with_capacity(self.members.len() * 24);
        for (id, m) in &self.members {
            bytes.extend_from_slice(&id.0.to_le_bytes());
            bytes.extend_from_slice(&m.epoch.to_le_bytes());
            if generations {
                bytes.extend_from_slice(&m.generation.to_le_bytes());
            }
        }
        xxhash_rust::xxh3::xxh3_64(&bytes)
    }

    /// Whether the node was given seeds to join through.
    #[must_use]
    pub fn is_seeded(&self) -> bool {
        self.seeded
    }

    /// Writes the book to its file (a new file synced, then renamed over the old one).
    ///
    /// # Errors
    /// The I/O error, as a message.
    pub fn save(&self) -> Result<(), String> {
        match self.file_text()? {
            Some((path, text)) => write_file(&path, &text),
            None => Ok(()),
        }
    }

    /// The file's path and the text to write there (`None`: a book kept in memory only).
    ///
    /// # Errors
    /// The encoding error, as a message.
    pub fn file_text(&self) -> Result<Option<(PathBuf, String)>, String> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        let file = RingFile {
            members: self.members.values().cloned().collect(),
        };
        let text = serde_json::to_string_pretty(&file).map_err(|e| e.to_string())?;
        Ok(Some((path.clone(), text)))
    }

    /// The same book, for a node given seeds to join through (`true`) or alone by
    /// configuration (`false`, the default).
    #[must_use]
    pub fn seeded(mut self, seeded: bool) -> RingBook {
        self.seeded = seeded;
        self
    }

    /// Every member.
    pub fn members(&self) -> impl Iterator<Item = (NodeId, &RingMember)> {
        self.members.iter().map(|(&n, m)| (n, m))
    }
}

/// Writes a book's `text` to `path` durably: a new file synced, renamed over the old one, the
/// directory synced.
///
/// # Errors
/// The I/O error, as a message.
pub fn write_file(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_data()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A node of the ring, as this node sees it.
#[derive(Clone, Debug)]
pub struct PeerNode {
    /// Its id.
    pub id: NodeId,
    /// Its binary protocol's shared port.
    pub binary: SocketAddr,
    /// Its HTTP API.
    pub http: SocketAddr,
    /// Its core count.
    pub shards: u32,
    /// Its vnode count.
    pub vnodes: u16,
    /// The generation it was last heard with.
    pub generation: u64,
    /// Whether the failure detector considers it alive (always true for this node).
    pub up: bool,
    /// The state it last announced (`None` if only known from the `RING` file).
    pub status: Option<NodeStatus>,
    /// Which of its cores holds a token's keys.
    pub shard_map: ShardMap,
    /// Its place in the ring's life.
    pub state: MemberState,
    /// Its rack.
    pub rack: String,
    /// Its human name (`""`: none).
    pub name: String,
    /// Whether it is in the current ring (requests are routed to it).
    pub in_ring: bool,
    /// Its vnode tokens (empty while it has none).
    pub tokens: Vec<Token>,
}

impl PeerNode {
    /// The port of the core of this node that holds `token`'s keys.
    #[must_use]
    pub fn core_addr(&self, token: Token) -> SocketAddr {
        let shard = self.shard_map.shard_of(token);
        let port = u32::from(self.binary.port()) + 1 + shard;
        SocketAddr::new(
            self.binary.ip(),
            u16::try_from(port).unwrap_or(self.binary.port()),
        )
    }
}

/// The topology change in progress, as the ring book records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    /// The node whose tokens move.
    pub node: NodeId,
    /// Its state: `joining` (a join or a replacement) or `leaving` (decommission, removal).
    pub state: MemberState,
    /// The change.
    pub change: Change,
    /// The node it replaces, for a replacement (itself, for a restart on an empty disk).
    pub replaces: Option<NodeId>,
}

/// The cluster as one snapshot: ring members, their liveness, and the ring.
#[derive(Clone, Debug)]
pub struct ClusterState {
    /// This node.
    pub own: NodeId,
    /// Every member not gone for good, this node included.
    pub nodes: BTreeMap<NodeId, PeerNode>,
    /// The current ring: reads and writes.
    pub ring: Ring,
    /// The ring once the change in progress is done, if one is: writes go to it too.
    pub future: Option<Ring>,
    /// The change in progress.
    pub moving: Option<Move>,
    /// Replicas per key: the configured factor capped at the ring's node count.
    pub replication_factor: u8,
    /// The configured replication factor.
    pub configured_rf: u8,
    /// Whether this node knows the cluster's ring: it is alone by configuration (no seeds), or
    /// it knows another member (heard through gossip, or from its `RING` file) and the ring has
    /// members. Until then it serves no request: with only itself in its ring it would clamp
    /// quorums to 1.
    pub ring_known: bool,
}

/// The ring of `members` (each with its tokens), with their racks; `None` without a token.
fn ring_of(members: &[&RingMember]) -> Option<Ring> {
    let tokens: Vec<(NodeId, Vec<Token>)> = members
        .iter()
        .filter_map(|m| m.node().map(|n| (n, m.ring_tokens())))
        .collect();
    let list: Vec<(NodeId, &[Token])> = tokens.iter().map(|(n, t)| (*n, t.as_slice())).collect();
    let racks: BTreeMap<NodeId, String> = members
        .iter()
        .filter_map(|m| m.node().map(|n| (n, m.rack.clone())))
        .collect();
    Ring::from_tokens(&list).ok().map(|r| r.with_racks(&racks))
}

impl ClusterState {
    /// The state made of `book`'s members, live as `members` says (`None`: only this node is
    /// known to be up).
    ///
    /// # Panics
    /// If the book lacks this node (it is recorded at load), or `rf` is 0.
    #[must_use]
    pub fn build(own: NodeId, book: &RingBook, members: Option<&Members>, rf: u8) -> ClusterState {
        assert!(rf > 0, "the replication factor is at least 1");
        let entries: Vec<(NodeId, &RingMember)> = book.members().collect();
        let replaces = |m: &RingMember| {
            m.replaces
                .as_deref()
                .and_then(|r| u64::from_str_radix(r, 16).ok())
                .map(NodeId)
        };
        // The current ring: normal and leaving members, and a node replacing itself.
        let in_ring = |id: NodeId, m: &RingMember| {
            m.has_tokens()
                && match m.state {
                    MemberState::Normal | MemberState::Leaving => true,
                    MemberState::Joining => replaces(m) == Some(id),
                    MemberState::Left | MemberState::Removed => false,
                }
        };
        let current: Vec<&RingMember> = entries
            .iter()
            .filter(|(id, m)| in_ring(*id, m))
            .map(|(_, m)| *m)
            .collect();
        // The change in progress, if any: a joining member with tokens, or a leaving one.
        let moving = entries.iter().find_map(|(id, m)| {
            let moves = match m.state {
                MemberState::Joining => !m.tokens.is_empty(),
                MemberState::Leaving => m.change.is_some(),
                _ => false,
            };
            moves.then(|| Move {
                node: *id,
                state: m.state,
                change: m.change.clone().unwrap_or(Change {
                    id: 0,
                    kind: ChangeKind::Join,
                    driver: m.id.clone(),
                }),
                replaces: replaces(m),
            })
        });
        let future = moving.as_ref().and_then(|mv| {
            let mut next: Vec<&RingMember> = current.clone();
            match mv.state {
                MemberState::Joining => {
                    if let Some(gone) = mv.replaces.filter(|&r| r != mv.node) {
                        next.retain(|m| m.node() != Some(gone));
                    }
                    if mv.replaces != Some(mv.node) {
                        if let Some(m) = book.get(mv.node) {
                            next.push(m);
                        }
                    }
                }
                _ => next.retain(|m| m.node() != Some(mv.node)),
            }
            ring_of(&next)
        });
        let ring = ring_of(&current);
        let ring_has_members = ring.is_some();
        let ring = ring.unwrap_or_else(|| {
            // No member holds tokens yet: a stand-in that routes nothing (ring_known is false).
            Ring::new(&[(own, 1)]).expect("INVARIANT: one vnode makes a ring")
        });
        let mut nodes = BTreeMap::new();
        for (id, m) in &entries {
            let id = *id;
            if m.state.gone() && id != own {
                continue;
            }
            let view = members.and_then(|ms| ms.others.iter().find(|v| v.id.node == id.0));
            let (up, status) = if id == own {
                (true, members.map(|ms| ms.own.status))
            } else {
                // Up only as the incarnation whose addresses the book holds: a node that
                // restarted elsewhere is reached once its new metadata has arrived.
                (
                    view.is_some_and(|v| v.up && v.id.generation == m.generation),
                    view.and_then(|v| v.meta.as_ref()).map(|meta| meta.status),
                )
            };
            let tokens = if m.has_tokens() {
                m.ring_tokens()
            } else {
                Vec::new()
            };
            nodes.insert(
                id,
                PeerNode {
                    id,
                    binary: m.binary,
                    http: m.http,
                    shards: m.shards,
                    vnodes: m.vnodes,
                    generation: m.generation,
                    up,
                    status,
                    shard_map: ShardMap::from_tokens(&tokens, m.shards.max(1)),
                    state: m.state,
                    rack: m.rack.clone(),
                    name: m.name.clone(),
                    in_ring: in_ring(id, m),
                    tokens,
                },
            );
        }
        assert!(nodes.contains_key(&own), "the ring book holds this node");
        let replication_factor = u8::try_from(ring.node_count().min(usize::from(rf)))
            .unwrap_or(rf)
            .max(1);
        let ring_known = ring_has_members && (!book.seeded || nodes.len() > 1);
        ClusterState {
            own,
            nodes,
            ring,
            future,
            moving,
            replication_factor,
            configured_rf: rf,
            ring_known,
        }
    }

    /// Whether `node` is a ring member the failure detector considers alive.
    #[must_use]
    pub fn is_up(&self, node: NodeId) -> bool {
        self.nodes.get(&node).is_some_and(|n| n.up)
    }

    /// The replicas of `token` in the current ring, primary first.
    #[must_use]
    pub fn replicas(&self, token: Token) -> Vec<NodeId> {
        self.ring
            .preference_list(token, usize::from(self.replication_factor))
    }

    /// The replicas a read of `token` asks: the current ones, less a node streaming its ranges
    /// back in (restarted on an empty disk).
    #[must_use]
    pub fn read_replicas(&self, token: Token) -> Vec<NodeId> {
        let mut replicas = self.replicas(token);
        if let Some(mv) = self
            .moving
            .as_ref()
            .filter(|mv| mv.replaces == Some(mv.node))
        {
            replicas.retain(|&n| n != mv.node);
        }
        replicas
    }

    /// The pending replicas of `token`: its replicas once the change in progress is done that
    /// are not replicas now (writes go to them too, and wait for each of them).
    #[must_use]
    pub fn pending_replicas(&self, token: Token) -> Vec<NodeId> {
        let Some(future) = &self.future else {
            return Vec::new();
        };
        let now = self.replicas(token);
        future
            .preference_list(token, usize::from(self.configured_rf))
            .into_iter()
            .filter(|n| !now.contains(n))
            .collect()
    }

    /// The ring range holding `token` (its vnode's previous token and its own) and that
    /// range's replicas (node ids).
    #[must_use]
    pub fn range_replicas(&self, token: Token) -> ((u64, u64), Vec<u64>) {
        let (prev, end) = self.ring.range_of(token);
        let replicas = self.replicas(token).into_iter().map(|n| n.0).collect();
        ((prev.0, end.0), replicas)
    }

    /// This node.
    ///
    /// # Panics
    /// Never: [`ClusterState::build`] checks that the node is in.
    #[must_use]
    pub fn own_node(&self) -> &PeerNode {
        self.nodes
            .get(&self.own)
            .expect("INVARIANT: the cluster state holds this node")
    }
}

/// The latest cluster state, shared by every core of a node.
#[derive(Clone, Debug)]
pub struct SharedCluster(Arc<RwLock<Arc<ClusterState>>>);

impl SharedCluster {
    /// Starts with `state`.
    #[must_use]
    pub fn new(state: ClusterState) -> SharedCluster {
        SharedCluster(Arc::new(RwLock::new(Arc::new(state))))
    }

    /// The latest state.
    #[must_use]
    pub fn get(&self) -> Arc<ClusterState> {
        match self.0.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Publishes a new state.
    pub fn set(&self, state: ClusterState) {
        let state = Arc::new(state);
        match self.0.write() {
            Ok(mut s) => *s = state,
            Err(poisoned) => *poisoned.into_inner() = state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::membership::{MemberId, MemberView, MembershipStats, NodeMeta};

    fn meta(node: u64, port: u16) -> NodeMeta {
        let addr: SocketAddr = format!("127.0.0.{node}:{port}").parse().expect("addr");
        NodeMeta {
            node,
            generation: 5,
            version: 0,
            status: NodeStatus::Normal,
            shards: 2,
            vnodes: 16,
            binary: addr,
            http: addr,
            gossip: addr,
            ring: 0,
        }
    }

    #[test]
    fn ring_members_are_kept_across_restarts_and_down_ones_stay_in_the_ring() {
        let dir = tempfile::tempdir().expect("dir");
        let own = meta(1, 7400);
        let normal = |m: &NodeMeta| RingMember::of(m).normal_with(Vec::new());
        let mut book = RingBook::load(dir.path(), normal(&own)).expect("load");
        assert!(book.record(normal(&meta(2, 7400))));
        assert!(!book.record(normal(&meta(2, 7400))), "no change");
        let mut older = RingMember::of(&meta(2, 7500));
        older.generation = 4;
        assert!(!book.record(older), "an older generation does not replace");
        book.save().expect("save");
        // The file's ring entry of this node is kept (its addresses are this process's).
        let book = RingBook::load(dir.path(), RingMember::of(&own)).expect("reload");
        assert_eq!(book.members().count(), 2);
        assert_eq!(book.own().state, MemberState::Normal);
        // Node 2 is known from the file only: in the ring, down.
        let state = ClusterState::build(NodeId(1), &book, None, 3);
        assert_eq!(state.ring.node_count(), 2);
        assert_eq!(state.replication_factor, 2, "capped at the node count");
        assert!(state.is_up(NodeId(1)) && !state.is_up(NodeId(2)));
        // Gossip says it is up.
        let members = Members {
            own: own.clone(),
            others: vec![MemberView {
                id: MemberId {
                    addr: meta(2, 7400).gossip,
                    node: 2,
                    generation: 5,
                },
                up: true,
                meta: Some(meta(2, 7400)),
            }],
            stats: MembershipStats::default(),
        };
        let state = ClusterState::build(NodeId(1), &book, Some(&members), 3);
        assert!(state.is_up(NodeId(2)));
        let token = Token::of(b"k");
        let peer = &state.nodes[&NodeId(2)];
        assert_eq!(
            u32::from(peer.core_addr(token).port()),
            7401 + peer.shard_map.shard_of(token)
        );
        // A damaged file is an error, not an empty ring.
        std::fs::write(dir.path().join(RING_FILE), "{nope").expect("write");
        assert!(RingBook::load(dir.path(), RingMember::of(&own)).is_err());
    }

    #[test]
    fn a_seeded_node_knows_the_ring_only_once_it_knows_another_member() {
        let own = RingMember::of(&meta(1, 7400)).normal_with(Vec::new());
        let alone = RingBook::in_memory(own.clone());
        assert!(ClusterState::build(NodeId(1), &alone, None, 3).ring_known);
        let mut seeded = RingBook::in_memory(own).seeded(true);
        let state = ClusterState::build(NodeId(1), &seeded, None, 3);
        assert!(
            !state.ring_known,
            "only itself in its ring: it must not clamp quorums to 1"
        );
        assert!(seeded.record(RingMember::of(&meta(2, 7400)).normal_with(Vec::new())));
        assert!(ClusterState::build(NodeId(1), &seeded, None, 3).ring_known);
        // A joining node with no tokens yet, knowing only members without any, knows no ring.
        let mut fresh = RingBook::in_memory(RingMember::of(&meta(3, 7400))).seeded(true);
        fresh.record(RingMember::of(&meta(4, 7400)));
        assert!(!ClusterState::build(NodeId(3), &fresh, None, 3).ring_known);
    }

    #[test]
    fn books_merge_entry_by_entry_the_higher_epoch_winning() {
        let one = RingMember::of(&meta(1, 7400)).normal_with(vec![1, 2]);
        let mut a = RingBook::in_memory(one.clone());
        let mut b = RingBook::in_memory(RingMember::of(&meta(2, 7400)).normal_with(vec![3]));
        assert!(b.merge(&a.entries()) && a.merge(&b.entries()));
        assert_eq!(a.digest(), b.digest());
        // Node 1 leaves: its own change, one epoch up, wins in b.
        a.update_own(|m| m.state = MemberState::Leaving);
        assert!(b.merge(&a.entries()));
        assert_eq!(
            b.get(NodeId(1)).map(|m| m.state),
            Some(MemberState::Leaving)
        );
        // A stale copy changes nothing; gossip's addresses do not touch ring entries.
        assert!(!b.merge(&[one]));
        let mut newer = RingMember::of(&meta(1, 7500));
        newer.generation = 9;
        assert!(b.record(newer));
        let m = b.get(NodeId(1)).expect("member");
        assert_eq!(
            (m.state, m.binary.port(), m.tokens.len()),
            (MemberState::Leaving, 7500, 2)
        );
        // What others say of node 1's entry is not taken by node 1, but a removal is.
        let mut removed = b.get(NodeId(1)).cloned().expect("member");
        removed.state = MemberState::Removed;
        removed.epoch += 5;
        let before = a.own().state;
        assert!(a.merge(&[removed]));
        assert_ne!(before, a.own().state);
        assert_eq!(a.own().state, MemberState::Removed);
    }
}
