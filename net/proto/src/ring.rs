//! The hash ring: sans-IO, so that the server, the client SDK and a seeded simulation all compute
//! the same placement from the same membership.
//!
//! * A key's token is `xxh3_64(key)` ([`Token::of`]).
//! * Each node has `vnodes` virtual nodes whose tokens derive from its id alone
//!   ([`vnode_tokens`]), so any node rebuilds the same ring from the membership list.
//! * The ring is the sorted array of `(token, node)` over all vnodes. A vnode owns
//!   `(previous token, its token]`, wrapping around: the first vnode also owns everything above
//!   the last token.
//! * The preference list of a token is the first `rf` distinct nodes met walking clockwise from
//!   the vnode that owns it.
//! * Inside a node, each of the node's **own** vnodes belongs to one core
//!   ([`shard_for_vnode`] of its token and the node's core count), and a token's keys live on
//!   the core of the node's first own vnode at or after the token ([`ShardMap`]). The map
//!   depends on the node alone (its id, vnode count and core count), never on the rest of the
//!   ring: when nodes join or leave, no key changes core on the nodes that keep it. Every ring
//!   vnode's range is a sub-range of one own vnode's range, so it is one contiguous
//!   `(token, key)` range of one shard (what anti-entropy hashes and streaming moves), and a
//!   client that knows a node's id, vnode count and core count routes a key to its core
//!   directly.
//!
//! INVARIANT: a [`Ring`] is sorted by `(token, node)` and holds at least one vnode; equal tokens
//! (two nodes' vnodes hashing alike, about one chance in 2^64 / vnodes²) are ordered by node id,
//! so every node still builds the same ring.

use std::collections::BTreeMap;
use std::fmt;

pub use dynacore_types::Token;

/// The default number of vnodes per node (the seed design suggests 150–300).
pub const VNODES_DEFAULT: u16 = 256;

/// Identifies a node for its whole life (generated once and kept in its data directory).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The tokens of `node`'s `count` vnodes, derived from its id alone (unsorted; index `i` is
/// vnode `i`).
#[must_use]
pub fn vnode_tokens(node: NodeId, count: u16) -> Vec<Token> {
    (0..count)
        .map(|i| {
            let mut seed = [0u8; 26];
            seed[..16].copy_from_slice(b"dynacore-vnode-1");
            seed[16..24].copy_from_slice(&node.0.to_le_bytes());
            seed[24..].copy_from_slice(&i.to_le_bytes());
            Token(xxhash_rust::xxh3::xxh3_64(&seed))
        })
        .collect()
}

/// The core that holds vnode `vnode_token`'s keys on a node with `shards` cores.
///
/// # Panics
/// If `shards` is 0 (a node has at least one core).
#[must_use]
pub fn shard_for_vnode(vnode_token: Token, shards: u32) -> u32 {
    assert!(shards > 0, "a node has at least one shard");
    // The vnode token is already a uniform hash: its high bits, scaled, spread vnodes evenly.
    u32::try_from((u128::from(vnode_token.0) * u128::from(shards)) >> 64)
        .expect("INVARIANT: the product shifted down is below `shards`")
}

/// Which core of one node holds a token's keys: the core of the node's first own vnode at or
/// after the token (wrapping), so that the map depends on the node alone (see the module
/// documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardMap {
    /// The node's own vnode tokens, sorted, each with its core.
    tokens: Vec<(Token, u32)>,
    shards: u32,
}

impl ShardMap {
    /// The map of `node` with `vnodes` vnodes and `shards` cores (a node without vnodes keeps
    /// everything on core 0).
    ///
    /// # Panics
    /// If `shards` is 0 (a node has at least one core).
    #[must_use]
    pub fn new(node: NodeId, vnodes: u16, shards: u32) -> ShardMap {
        ShardMap::from_tokens(&vnode_tokens(node, vnodes), shards)
    }

    /// The map of a node whose own vnodes have `tokens` (derived or allocated) and `shards`
    /// cores.
    ///
    /// # Panics
    /// If `shards` is 0 (a node has at least one core).
    #[must_use]
    pub fn from_tokens(tokens: &[Token], shards: u32) -> ShardMap {
        let mut tokens: Vec<(Token, u32)> = tokens
            .iter()
            .map(|&t| (t, shard_for_vnode(t, shards)))
            .collect();
        tokens.sort_unstable();
        ShardMap { tokens, shards }
    }

    /// The core that holds `token`'s keys.
    #[must_use]
    pub fn shard_of(&self, token: Token) -> u32 {
        let i = self.tokens.partition_point(|&(t, _)| t < token);
        self.tokens
            .get(i)
            .or_else(|| self.tokens.first())
            .map_or(0, |&(_, shard)| shard)
    }

    /// Whether every token of `start..=end` (ordered) is held by one core.
    #[must_use]
    pub fn on_one_core(&self, start: Token, end: Token) -> bool {
        let core = self.shard_of(end);
        let i = self.tokens.partition_point(|&(t, _)| t < start);
        self.tokens[i..]
            .iter()
            .take_while(|&&(t, _)| t < end)
            .all(|&(_, shard)| shard == core)
    }

    /// The node's own vnode tokens, sorted.
    pub fn tokens(&self) -> impl Iterator<Item = Token> + '_ {
        self.tokens.iter().map(|&(t, _)| t)
    }

    /// The node's core count.
    #[must_use]
    pub fn shards(&self) -> u32 {
        self.shards
    }
}

/// Why a ring cannot be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RingError {
    /// No node has a vnode.
    Empty,
    /// A node is listed twice.
    DuplicateNode(NodeId),
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingError::Empty => f.write_str("the ring has no vnodes"),
            RingError::DuplicateNode(n) => write!(f, "node {n} is listed twice"),
        }
    }
}

impl std::error::Error for RingError {}

/// One vnode on the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vnode {
    /// The highest token it owns.
    pub token: Token,
    /// The node it belongs to.
    pub node: NodeId,
    /// Its index among its node's vnodes.
    pub index: u16,
}

/// The ring of a membership: every node's vnodes, sorted by token, and the rack of each node
/// (placement puts a key's replicas in distinct racks where there are enough).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ring {
    vnodes: Vec<Vnode>,
    nodes: usize,
    /// Each node's rack, as an index into `rack_names`; a node not listed is in rack 0 (the
    /// unnamed one). With fewer than two racks, placement ignores them.
    racks: BTreeMap<NodeId, u32>,
    rack_names: Vec<String>,
}

/// Chooses a token's replicas from the nodes met walking clockwise, as Cassandra's
/// `NetworkTopologyStrategy` does within one datacenter: while some rack holds no replica yet,
/// a node of a rack already used is skipped (remembered in order); once every rack holds one,
/// the skipped nodes come first, then any node met.
#[derive(Debug)]
pub(crate) struct Placer {
    want: usize,
    racks: usize,
    pub(crate) out: Vec<NodeId>,
    skipped: Vec<NodeId>,
    seen_racks: Vec<u32>,
}

impl Placer {
    pub(crate) fn new(want: usize, racks: usize) -> Placer {
        Placer {
            want,
            racks,
            out: Vec::with_capacity(want),
            skipped: Vec::new(),
            seen_racks: Vec::new(),
        }
    }

    /// Offers the next node met (of `rack`); `true` once the list is complete.
    pub(crate) fn offer(&mut self, node: NodeId, rack: u32) -> bool {
        if self.out.len() >= self.want {
            return true;
        }
        if self.out.contains(&node) || self.skipped.contains(&node) {
            return false;
        }
        if self.racks < 2 || self.seen_racks.len() >= self.racks {
            self.out.push(node);
        } else if self.seen_racks.contains(&rack) {
            self.skipped.push(node);
        } else {
            self.out.push(node);
            self.seen_racks.push(rack);
            if self.seen_racks.len() == self.racks {
                let take = self
                    .want
                    .saturating_sub(self.out.len())
                    .min(self.skipped.len());
                self.out.extend(self.skipped.drain(..take));
            }
        }
        self.out.len() >= self.want
    }

    /// The list, once the walk is over (skipped nodes last if a rack was never met).
    pub(crate) fn finish(mut self) -> Vec<NodeId> {
        let take = self
            .want
            .saturating_sub(self.out.len())
            .min(self.skipped.len());
        self.out.extend(self.skipped.drain(..take));
        self.out
    }
}

impl Ring {
    /// The ring of `members`: each node with its vnode count. Order does not matter.
    ///
    /// # Errors
    /// [`RingError::Empty`] when there is no vnode; [`RingError::DuplicateNode`].
    pub fn new(members: &[(NodeId, u16)]) -> Result<Ring, RingError> {
        let mut seen = std::collections::HashSet::with_capacity(members.len());
        let mut vnodes = Vec::with_capacity(members.iter().map(|&(_, n)| usize::from(n)).sum());
        for &(node, count) in members {
            if !seen.insert(node) {
                return Err(RingError::DuplicateNode(node));
            }
            vnodes.extend(
                vnode_tokens(node, count)
                    .into_iter()
                    .zip(0u16..)
                    .map(|(token, index)| Vnode { token, node, index }),
            );
        }
        if vnodes.is_empty() {
            return Err(RingError::Empty);
        }
        vnodes.sort_unstable_by_key(|v| (v.token, v.node, v.index));
        let nodes = members.iter().filter(|&&(_, n)| n > 0).count();
        Ok(Ring {
            vnodes,
            nodes,
            racks: BTreeMap::new(),
            rack_names: Vec::new(),
        })
    }

    /// The ring of `members`, each with its own vnode tokens (allocated, or derived); vnode `i`
    /// of a node is `tokens[i]`. Order does not matter.
    ///
    /// # Errors
    /// [`RingError::Empty`] when there is no token; [`RingError::DuplicateNode`].
    pub fn from_tokens(members: &[(NodeId, &[Token])]) -> Result<Ring, RingError> {
        let mut seen = std::collections::HashSet::with_capacity(members.len());
        let mut vnodes = Vec::with_capacity(members.iter().map(|(_, t)| t.len()).sum());
        for &(node, tokens) in members {
            if !seen.insert(node) {
                return Err(RingError::DuplicateNode(node));
            }
            vnodes.extend(tokens.iter().zip(0u16..).map(|(&token, index)| Vnode {
                token,
                node,
                index,
            }));
        }
        Ring::from_vnodes(vnodes)
    }

    /// The same ring with each node's rack (`racks`; a node not named is in the unnamed rack
    /// `""`). With two racks or more, a token's replicas go to distinct racks as far as there
    /// are racks ([`Ring::preference_list`]).
    #[must_use]
    pub fn with_racks(mut self, racks: &BTreeMap<NodeId, String>) -> Ring {
        let mut names: Vec<String> = vec![String::new()];
        let mut of = BTreeMap::new();
        let nodes: std::collections::BTreeSet<NodeId> =
            self.vnodes.iter().map(|v| v.node).collect();
        for node in nodes {
            let name = racks.get(&node).map_or("", String::as_str);
            let i = names.iter().position(|n| n == name).unwrap_or_else(|| {
                names.push(name.to_owned());
                names.len() - 1
            });
            of.insert(node, u32::try_from(i).unwrap_or(u32::MAX));
        }
        self.racks = of;
        self.rack_names = names;
        self
    }

    /// The rack of `node` (`""` when none was given).
    #[must_use]
    pub fn rack(&self, node: NodeId) -> &str {
        let i = self.rack_index(node) as usize;
        self.rack_names.get(i).map_or("", String::as_str)
    }

    pub(crate) fn rack_index(&self, node: NodeId) -> u32 {
        self.racks.get(&node).copied().unwrap_or(0)
    }

    /// How many distinct racks the ring's nodes are in (1 when none was named).
    #[must_use]
    pub fn rack_count(&self) -> usize {
        let mut used: Vec<u32> = self.racks.values().copied().collect();
        used.sort_unstable();
        used.dedup();
        used.len().max(1)
    }

    /// A ring of one vnode of node 0, standing in until a real membership is known (no view
    /// lists a node 0, so nothing is routed by it).
    #[must_use]
    pub fn placeholder() -> Ring {
        Ring {
            vnodes: vec![Vnode {
                token: Token(0),
                node: NodeId(0),
                index: 0,
            }],
            nodes: 1,
            racks: BTreeMap::new(),
            rack_names: Vec::new(),
        }
    }

    /// Every vnode, by token.
    #[must_use]
    pub fn vnodes(&self) -> &[Vnode] {
        &self.vnodes
    }

    /// Number of nodes with at least one vnode.
    #[must_use]
    pub fn node_count(&self) -> usize {
        self.nodes
    }

    /// The position (in [`Ring::vnodes`]) of the vnode that owns `token`: the first whose token
    /// is at or above it, wrapping to the first.
    #[must_use]
    pub fn owner_position(&self, token: Token) -> usize {
        let i = self.vnodes.partition_point(|v| v.token < token);
        if i == self.vnodes.len() {
            0
        } else {
            i
        }
    }

    /// The vnode that owns `token`.
    #[must_use]
    pub fn owner(&self, token: Token) -> Vnode {
        self.vnodes[self.owner_position(token)]
    }

    /// The range of the vnode that owns `token`: the previous vnode's token (excluded) and its
    /// own (included); the first vnode's range wraps (`prev >= end`; with one vnode it is the
    /// whole ring, `prev == end`).
    #[must_use]
    pub fn range_of(&self, token: Token) -> (Token, Token) {
        self.range_at(self.owner_position(token))
    }

    /// The range of the vnode at position `i` (see [`Ring::range_of`]).
    #[must_use]
    pub fn range_at(&self, i: usize) -> (Token, Token) {
        let prev = if i == 0 {
            self.vnodes[self.vnodes.len() - 1].token
        } else {
            self.vnodes[i - 1].token
        };
        (prev, self.vnodes[i].token)
    }

    /// The first `rf` distinct nodes clockwise from `token`'s vnode (fewer if the ring has fewer
    /// nodes), primary first; with two racks or more, in distinct racks as far as there are
    /// racks ([`Ring::with_racks`]).
    #[must_use]
    pub fn preference_list(&self, token: Token, rf: usize) -> Vec<NodeId> {
        self.preference_list_at(self.owner_position(token), rf)
    }

    /// The preference list of the range of the vnode at position `i` (see
    /// [`Ring::preference_list`]).
    #[must_use]
    pub fn preference_list_at(&self, start: usize, rf: usize) -> Vec<NodeId> {
        let want = rf.min(self.nodes);
        let racks = self.rack_count();
        let mut placer = Placer::new(want, racks);
        for step in 0..self.vnodes.len() {
            let node = self.vnodes[(start + step) % self.vnodes.len()].node;
            let rack = if racks > 1 { self.rack_index(node) } else { 0 };
            if placer.offer(node, rack) {
                break;
            }
        }
        placer.finish()
    }

    /// The ring of explicit vnodes (as a topology response lists them). Order does not matter.
    ///
    /// # Errors
    /// [`RingError::Empty`] when there is none.
    pub fn from_vnodes(mut vnodes: Vec<Vnode>) -> Result<Ring, RingError> {
        if vnodes.is_empty() {
            return Err(RingError::Empty);
        }
        vnodes.sort_unstable_by_key(|v| (v.token, v.node, v.index));
        let mut nodes: Vec<NodeId> = vnodes.iter().map(|v| v.node).collect();
        nodes.sort_unstable();
        nodes.dedup();
        Ok(Ring {
            vnodes,
            nodes: nodes.len(),
            racks: BTreeMap::new(),
            rack_names: Vec::new(),
        })
    }

    /// Each node's own vnode tokens, in vnode index order.
    #[must_use]
    pub fn tokens_of(&self, node: NodeId) -> Vec<Token> {
        let mut own: Vec<(u16, Token)> = self
            .vnodes
            .iter()
            .filter(|v| v.node == node)
            .map(|v| (v.index, v.token))
            .collect();
        own.sort_unstable();
        own.into_iter().map(|(_, t)| t).collect()
    }

    /// Each node's vnode count.
    #[must_use]
    pub fn vnode_counts(&self) -> BTreeMap<NodeId, u16> {
        let mut out = BTreeMap::new();
        for v in &self.vnodes {
            let n: &mut u16 = out.entry(v.node).or_insert(0);
            *n = n.saturating_add(1);
        }
        out
    }

    /// The number of tokens each vnode owns: the distance from the previous vnode's token.
    fn owned(&self, i: usize) -> u128 {
        let prev = if i == 0 {
            self.vnodes[self.vnodes.len() - 1].token.0
        } else {
            self.vnodes[i - 1].token.0
        };
        let span = self.vnodes[i].token.0.wrapping_sub(prev);
        // One vnode alone owns the whole ring.
        if self.vnodes.len() == 1 {
            1 << 64
        } else {
            u128::from(span)
        }
    }

    /// Tokens owned as primary, per node.
    #[must_use]
    pub fn ownership(&self) -> BTreeMap<NodeId, u128> {
        let mut out = BTreeMap::new();
        for (i, v) in self.vnodes.iter().enumerate() {
            *out.entry(v.node).or_insert(0) += self.owned(i);
        }
        out
    }

    /// Tokens each node holds a replica of with `rf` replicas per key (its replicated
    /// ownership: the ranges it is primary for and those it is a further replica of).
    #[must_use]
    pub fn replicated_ownership(&self, rf: usize) -> BTreeMap<NodeId, u128> {
        let mut out: BTreeMap<NodeId, u128> = BTreeMap::new();
        for (i, v) in self.vnodes.iter().enumerate() {
            out.entry(v.node).or_insert(0);
            let owned = self.owned(i);
            for node in self.preference_list_at(i, rf) {
                *out.entry(node).or_insert(0) += owned;
            }
        }
        out
    }

    /// Replicated ownership balance with `rf` replicas: the most loaded node's replicated
    /// ownership over the mean (1.0 is perfect).
    #[must_use]
    pub fn replicated_balance(&self, rf: usize) -> f64 {
        let owned = self.replicated_ownership(rf);
        let max = owned.values().copied().max().unwrap_or(0);
        let total: u128 = owned.values().sum();
        #[allow(clippy::cast_precision_loss)]
        let (max, total, n) = (max as f64, total as f64, owned.len().max(1) as f64);
        if total == 0.0 {
            1.0
        } else {
            max / (total / n)
        }
    }

    /// Ownership balance: the largest node's primary token range over the mean (1.0 is perfect).
    #[must_use]
    pub fn ownership_balance(&self) -> f64 {
        let owned = self.ownership();
        let max = owned.values().copied().max().unwrap_or(0);
        #[allow(clippy::cast_precision_loss)]
        let (max, total, n) = (max as f64, (1u128 << 64) as f64, owned.len() as f64);
        max / (total / n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn three() -> Vec<(NodeId, u16)> {
        vec![(NodeId(1), 256), (NodeId(2), 256), (NodeId(3), 256)]
    }

    #[test]
    fn tokens_derive_from_the_node_id_alone() {
        assert_eq!(vnode_tokens(NodeId(7), 4), vnode_tokens(NodeId(7), 4));
        assert_ne!(vnode_tokens(NodeId(7), 4), vnode_tokens(NodeId(8), 4));
        // A node with more vnodes keeps the ones it had.
        assert_eq!(
            vnode_tokens(NodeId(7), 8)[..4],
            vnode_tokens(NodeId(7), 4)[..]
        );
        let mut members = three();
        let a = Ring::new(&members).expect("ring");
        members.reverse();
        assert_eq!(
            Ring::new(&members).expect("ring"),
            a,
            "order does not matter"
        );
    }

    #[test]
    fn bad_memberships_are_errors() {
        assert_eq!(Ring::new(&[]), Err(RingError::Empty));
        assert_eq!(Ring::new(&[(NodeId(1), 0)]), Err(RingError::Empty));
        assert_eq!(
            Ring::new(&[(NodeId(1), 4), (NodeId(1), 4)]),
            Err(RingError::DuplicateNode(NodeId(1)))
        );
    }

    #[test]
    fn a_vnode_owns_from_its_predecessor_exclusive_to_its_token_inclusive() {
        let ring = Ring::new(&three()).expect("ring");
        let v = ring.vnodes();
        assert_eq!(ring.owner(v[5].token), v[5]);
        assert_eq!(ring.owner(Token(v[4].token.0 + 1)), v[5]);
        // Below the first token and above the last: the first vnode (wrap-around).
        assert_eq!(ring.owner(Token(0)), v[0]);
        assert_eq!(ring.owner(Token(v[v.len() - 1].token.0 + 1)), v[0]);
    }

    #[test]
    fn preference_lists_hold_distinct_nodes_primary_first() {
        let ring = Ring::new(&three()).expect("ring");
        for key in 0u32..1000 {
            let token = Token::of(&key.to_le_bytes());
            let list = ring.preference_list(token, 3);
            assert_eq!(list.len(), 3);
            assert_eq!(list[0], ring.owner(token).node);
            let mut sorted = list.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), 3, "{list:?}");
            // RF above the node count gives every node once.
            assert_eq!(ring.preference_list(token, 5).len(), 3);
            assert_eq!(ring.preference_list(token, 1), list[..1]);
        }
    }

    #[test]
    fn ownership_is_balanced_and_sums_to_the_whole_ring() {
        let ring = Ring::new(&three()).expect("ring");
        let owned = ring.ownership();
        assert_eq!(owned.values().sum::<u128>(), 1 << 64);
        let balance = ring.ownership_balance();
        // 256 random vnodes per node: each node's share is within a few percent of a third.
        assert!((1.0..1.15).contains(&balance), "{balance}");
        let single = Ring::new(&[(NodeId(9), 1)]).expect("ring");
        assert!((single.ownership_balance() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn vnodes_spread_evenly_over_cores() {
        let ring = Ring::new(&[(NodeId(1), 256)]).expect("ring");
        for shards in [1u32, 2, 3, 16] {
            let mut per = vec![0u32; shards as usize];
            for v in ring.vnodes() {
                per[shard_for_vnode(v.token, shards) as usize] += 1;
            }
            let mean = 256 / shards;
            assert!(
                per.iter()
                    .all(|&n| n + mean / 2 + 4 >= mean && n <= mean + mean / 2 + 4),
                "{shards} shards: {per:?}"
            );
        }
    }

    #[test]
    fn a_nodes_own_vnodes_split_its_keys_evenly_over_its_cores() {
        let map = ShardMap::new(NodeId(1), 256, 4);
        let mut per = [0u32; 4];
        for key in 0u32..40_000 {
            per[map.shard_of(Token::of(&key.to_le_bytes())) as usize] += 1;
        }
        assert!(per.iter().all(|&n| (6_000..14_000).contains(&n)), "{per:?}");
        assert_eq!(ShardMap::new(NodeId(1), 0, 4).shard_of(Token(5)), 0);
    }

    proptest! {
        /// A key's core on a node is the core of the node's own vnode at or after its token,
        /// below the core count, and does not change when other nodes join the ring.
        #[test]
        fn keys_route_to_their_own_vnodes_core(key in prop::collection::vec(any::<u8>(), 1..64), shards in 1u32..64) {
            let token = Token::of(&key);
            let map = ShardMap::new(NodeId(1), 256, shards);
            let shard = map.shard_of(token);
            prop_assert!(shard < shards);
            let alone = Ring::new(&[(NodeId(1), 256)]).expect("ring");
            prop_assert_eq!(shard, shard_for_vnode(alone.owner(token).token, shards));
            // However many nodes join, the node's own map is what it was.
            prop_assert_eq!(ShardMap::new(NodeId(1), 256, shards), map);
        }
    }
}
