//! The cluster as a client sees it (a `Topology` answer, decoded) and where it sends a key.
//!
//! A node's core `i` listens on `base_port + 1 + i` (its shard-aware port); the core that holds a
//! token on a node is given by that node's [`ShardMap`], which a client computes from the node's
//! id, vnode count (from the ring) and core count, exactly as the node does.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use crate::fb;
use crate::ring::{NodeId, Ring, RingError, ShardMap, Token, Vnode};

/// A node as the topology describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeDesc {
    /// The node.
    pub id: NodeId,
    /// Host of its binary protocol.
    pub host: String,
    /// Its base port; core `i` listens on `base_port + 1 + i`.
    pub base_port: u16,
    /// Its core count.
    pub shards: u32,
}

/// A node's state as the answering node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Serving.
    Normal,
    /// Starting.
    Joining,
    /// Shutting down or being decommissioned.
    Leaving,
    /// Not answering the failure detector.
    Down,
}

impl NodeState {
    /// From the wire form (an unknown value is `Normal`).
    #[must_use]
    pub fn from_wire(s: fb::NodeState) -> NodeState {
        match s {
            fb::NodeState::Joining => NodeState::Joining,
            fb::NodeState::Leaving => NodeState::Leaving,
            fb::NodeState::Down => NodeState::Down,
            _ => NodeState::Normal,
        }
    }
}

/// A node the answering node knows of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// Its addresses and cores.
    pub node: NodeDesc,
    /// Grows at every start of the node.
    pub generation: u64,
    /// Its state.
    pub state: NodeState,
    /// Whether requests are routed to it (its vnodes are in the ring).
    pub in_ring: bool,
    /// Its human name (`--node-id n1`), if it was given one.
    pub name: Option<String>,
}

/// The cluster as a client sees it.
#[derive(Clone, Debug)]
pub struct ClusterView {
    /// The nodes requests are routed to (those in the ring).
    pub nodes: Vec<NodeDesc>,
    /// Every node the answering node knows of, itself first.
    pub members: Vec<MemberInfo>,
    /// Replicas per key.
    pub replication_factor: u8,
    /// The ring.
    pub ring: Ring,
    /// Which core of each node holds a token's keys.
    pub shard_maps: BTreeMap<NodeId, ShardMap>,
}

impl ClusterView {
    /// A view that knows no node yet: every key goes to the seed.
    #[must_use]
    pub fn empty() -> ClusterView {
        ClusterView {
            nodes: Vec::new(),
            members: Vec::new(),
            replication_factor: 1,
            ring: Ring::placeholder(),
            shard_maps: BTreeMap::new(),
        }
    }

    /// Decodes a `Topology` answer.
    ///
    /// # Errors
    /// [`RingError`] when its vnodes do not make a ring.
    pub fn from_wire(t: &fb::TopologyResponse<'_>) -> Result<ClusterView, RingError> {
        let members: Vec<MemberInfo> = t
            .nodes()
            .iter()
            .map(|n| MemberInfo {
                node: NodeDesc {
                    id: NodeId(n.id()),
                    host: n.host().to_owned(),
                    base_port: n.base_port(),
                    shards: n.shards(),
                },
                generation: n.generation(),
                state: NodeState::from_wire(n.state()),
                in_ring: n.in_ring(),
                name: n.name().filter(|s| !s.is_empty()).map(str::to_owned),
            })
            .collect();
        let nodes: Vec<NodeDesc> = members
            .iter()
            .filter(|m| m.in_ring)
            .map(|m| m.node.clone())
            .collect();
        let vnodes = t
            .vnodes()
            .iter()
            .map(|v| Vnode {
                token: Token(v.token()),
                node: NodeId(v.node()),
                index: v.index(),
            })
            .collect();
        let ring = Ring::from_vnodes(vnodes)?;
        // A node's keys live on the core of its own next vnode: its tokens are the ring's
        // (allocated when it joined, or derived from its id in an older ring).
        let shard_maps = nodes
            .iter()
            .map(|n| {
                (
                    n.id,
                    ShardMap::from_tokens(&ring.tokens_of(n.id), n.shards.max(1)),
                )
            })
            .collect();
        Ok(ClusterView {
            nodes,
            members,
            replication_factor: t.replication_factor().max(1),
            ring,
            shard_maps,
        })
    }

    /// Whether the answering node holds `node` as down.
    #[must_use]
    pub fn is_down(&self, node: NodeId) -> bool {
        self.members
            .iter()
            .any(|m| m.node.id == node && m.state == NodeState::Down)
    }

    /// Where to send a request for `key`, best first: the port of the core that holds it on each
    /// replica, those not known to be down before those that are. `seed` stands in for a node
    /// whose host is the unspecified address (it listens on every address: reach it where the
    /// seed was), and is the only address when no replica is known.
    #[must_use]
    pub fn routes(&self, key: &[u8], seed: SocketAddr) -> Vec<SocketAddr> {
        let token = Token::of(key);
        let replicas = self
            .ring
            .preference_list(token, usize::from(self.replication_factor));
        let (up, down): (Vec<NodeId>, Vec<NodeId>) =
            replicas.into_iter().partition(|&id| !self.is_down(id));
        let routes: Vec<SocketAddr> = up
            .into_iter()
            .chain(down)
            .filter_map(|id| self.nodes.iter().find(|n| n.id == id))
            .map(|node| self.core_addr(node, token, seed))
            .collect();
        if routes.is_empty() {
            vec![seed]
        } else {
            routes
        }
    }

    /// The port of the core of `node` that holds `token`.
    fn core_addr(&self, node: &NodeDesc, token: Token, seed: SocketAddr) -> SocketAddr {
        let shard = self
            .shard_maps
            .get(&node.id)
            .map_or(0, |m| m.shard_of(token));
        let ip = match node.host.parse::<IpAddr>() {
            Ok(ip) if !ip.is_unspecified() => ip,
            _ => seed.ip(),
        };
        let port = u64::from(node.base_port) + 1 + u64::from(shard);
        SocketAddr::new(ip, u16::try_from(port).unwrap_or(node.base_port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(states: &[(u64, NodeState)]) -> ClusterView {
        let ids: Vec<(NodeId, u16)> = states.iter().map(|&(id, _)| (NodeId(id), 8)).collect();
        let ring = Ring::new(&ids).expect("ring");
        let nodes: Vec<NodeDesc> = states
            .iter()
            .map(|&(id, _)| NodeDesc {
                id: NodeId(id),
                host: format!("127.0.0.{id}"),
                base_port: 7400,
                shards: 2,
            })
            .collect();
        let members = nodes
            .iter()
            .zip(states)
            .map(|(n, &(_, state))| MemberInfo {
                node: n.clone(),
                generation: 1,
                state,
                in_ring: true,
                name: None,
            })
            .collect();
        let shard_maps = nodes
            .iter()
            .map(|n| (n.id, ShardMap::new(n.id, 8, 2)))
            .collect();
        ClusterView {
            nodes,
            members,
            replication_factor: 2,
            ring,
            shard_maps,
        }
    }

    #[test]
    fn a_key_goes_to_its_replicas_cores_live_ones_first() {
        let seed: SocketAddr = "127.0.0.9:7400".parse().expect("addr");
        assert_eq!(ClusterView::empty().routes(b"k", seed), vec![seed]);
        let all_up = view(&[
            (1, NodeState::Normal),
            (2, NodeState::Normal),
            (3, NodeState::Normal),
        ]);
        let routes = all_up.routes(b"user:1", seed);
        assert_eq!(routes.len(), 2);
        let replicas = all_up.ring.preference_list(Token::of(b"user:1"), 2);
        for (route, id) in routes.iter().zip(&replicas) {
            assert_eq!(route.ip().to_string(), format!("127.0.0.{}", id.0));
            let shard = all_up.shard_maps[id].shard_of(Token::of(b"user:1"));
            assert_eq!(u32::from(route.port()), 7401 + shard);
        }
        // The first replica down: it comes last.
        let first = replicas[0].0;
        let states: Vec<_> = [1, 2, 3]
            .iter()
            .map(|&id| {
                (
                    id,
                    if id == first {
                        NodeState::Down
                    } else {
                        NodeState::Normal
                    },
                )
            })
            .collect();
        let one_down = view(&states);
        let routes = one_down.routes(b"user:1", seed);
        assert_eq!(routes[1].ip().to_string(), format!("127.0.0.{first}"));
    }
}
