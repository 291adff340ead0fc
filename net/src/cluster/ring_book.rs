//! The cluster as one node's cores see it: which nodes are in the ring, where each one listens,
//! whether it is up, and the ring they make.
//!
//! * **Ring membership is not liveness.** A node enters the ring the first time its metadata
//!   is heard, and stays in it while it is down or stopped (its keys are not handed to
//!   anyone else: writes for it become hints, as in Dynamo). Ring members are recorded in the
//!   data directory's `RING` file, so a node that restarts while another is down still builds
//!   the same ring as everyone else. Leaving the ring for good (decommission) is a later
//!   change.
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

/// A ring member as recorded: enough to route to it while it is down.
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
}

impl RingMember {
    fn node(&self) -> Option<NodeId> {
        u64::from_str_radix(&self.id, 16).ok().map(NodeId)
    }

    /// This node's own entry.
    #[must_use]
    pub fn of(meta: &crate::cluster::membership::NodeMeta) -> RingMember {
        RingMember {
            id: NodeId(meta.node).to_string(),
            binary: meta.binary,
            http: meta.http,
            shards: meta.shards,
            vnodes: meta.vnodes,
            generation: meta.generation,
        }
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
        // This process's own entry wins over whatever the file says of it.
        members.insert(own_node, own);
        Ok(RingBook {
            path: Some(path),
            members,
            seeded: false,
        })
    }

    /// A book kept in memory only (tests, and nodes that do not gossip).
    #[must_use]
    pub fn in_memory(own: RingMember) -> RingBook {
        let mut book = RingBook {
            path: None,
            members: BTreeMap::new(),
            seeded: false,
        };
        book.record(own);
        book
    }

    /// Records what is now known of a member; `true` if that changed the book.
    pub fn record(&mut self, m: RingMember) -> bool {
        let Some(node) = m.node() else { return false };
        if m.shards == 0 {
            return false;
        }
        match self.members.get(&node) {
            Some(known) if known.generation > m.generation || *known == m => false,
            _ => {
                self.members.insert(node, m);
                true
            }
        }
    }

    /// Writes the book to its file (a new file synced, then renamed over the old one).
    ///
    /// # Errors
    /// The I/O error, as a message.
    pub fn save(&self) -> Result<(), String> {
        use std::io::Write as _;
        let Some(path) = &self.path else {
            return Ok(());
        };
        let file = RingFile {
            members: self.members.values().cloned().collect(),
        };
        let text = serde_json::to_string_pretty(&file).map_err(|e| e.to_string())?;
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

/// The cluster as one snapshot: ring members, their liveness, and the ring.
#[derive(Clone, Debug)]
pub struct ClusterState {
    /// This node.
    pub own: NodeId,
    /// Every ring member, this node included.
    pub nodes: BTreeMap<NodeId, PeerNode>,
    /// Their ring.
    pub ring: Ring,
    /// Replicas per key: the configured factor capped at the ring's node count.
    pub replication_factor: u8,
    /// The configured replication factor.
    pub configured_rf: u8,
    /// Whether this node knows the cluster's ring: it is alone by configuration (no seeds), or
    /// it knows another member (heard through gossip, or from its `RING` file). Until then it
    /// serves no request: with only itself in its ring it would clamp quorums to 1.
    pub ring_known: bool,
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
        let mut nodes = BTreeMap::new();
        for (id, m) in book.members() {
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
                    shard_map: ShardMap::new(id, m.vnodes, m.shards),
                },
            );
        }
        assert!(nodes.contains_key(&own), "the ring book holds this node");
        let list: Vec<(NodeId, u16)> = nodes.values().map(|n| (n.id, n.vnodes)).collect();
        let ring = Ring::new(&list).unwrap_or_else(|_| {
            // Only a node without vnodes is in the ring; it still serves its own keys.
            Ring::new(&[(own, 1)]).expect("INVARIANT: one vnode makes a ring")
        });
        let replication_factor = u8::try_from(ring.node_count().min(usize::from(rf)))
            .unwrap_or(rf)
            .max(1);
        let ring_known = !book.seeded || nodes.len() > 1;
        ClusterState {
            own,
            nodes,
            ring,
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

    /// The replicas of `token`, primary first.
    #[must_use]
    pub fn replicas(&self, token: Token) -> Vec<NodeId> {
        self.ring
            .preference_list(token, usize::from(self.replication_factor))
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
        }
    }

    #[test]
    fn ring_members_are_kept_across_restarts_and_down_ones_stay_in_the_ring() {
        let dir = tempfile::tempdir().expect("dir");
        let own = meta(1, 7400);
        let mut book = RingBook::load(dir.path(), RingMember::of(&own)).expect("load");
        assert!(book.record(RingMember::of(&meta(2, 7400))));
        assert!(!book.record(RingMember::of(&meta(2, 7400))), "no change");
        let mut older = RingMember::of(&meta(2, 7500));
        older.generation = 4;
        assert!(!book.record(older), "an older generation does not replace");
        book.save().expect("save");
        let book = RingBook::load(dir.path(), RingMember::of(&own)).expect("reload");
        assert_eq!(book.members().count(), 2);
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
        let own = RingMember::of(&meta(1, 7400));
        let alone = RingBook::in_memory(own.clone());
        assert!(ClusterState::build(NodeId(1), &alone, None, 3).ring_known);
        let mut seeded = RingBook::in_memory(own).seeded(true);
        let state = ClusterState::build(NodeId(1), &seeded, None, 3);
        assert!(
            !state.ring_known,
            "only itself in its ring: it must not clamp quorums to 1"
        );
        assert!(seeded.record(RingMember::of(&meta(2, 7400))));
        assert!(ClusterState::build(NodeId(1), &seeded, None, 3).ring_known);
    }
}
