//! Token allocation for a node joining a ring, aware of replication: its vnode tokens are chosen
//! so that the ring's **replicated** ownership (each node's share of the keys it holds a replica
//! of, RF replicas per key) stays even, as Cassandra's `allocate_tokens_for_local_replication_factor`
//! does. Tokens derived from node ids leave the most loaded of 64 nodes around 1.1× the mean at
//! 256 vnodes; allocated ones stay within 1.07× from 3 to 64 nodes (the tests).
//!
//! The allocation is greedy and lazy, and sans IO (the node and a simulation run the same code):
//!
//! * A **candidate** splits one existing range `(prev, end]` at a quarter, a half or three
//!   quarters of its span. Its effect is local: the new vnode takes the front part of the range
//!   as primary, and each range whose replica walk crossed the split point now meets the new
//!   node first, so that the walk's last replica drops out. A range whose walk does not reach
//!   the split point is unchanged.
//! * Its **cost** is the change of the squared deviations from the mean of the loads it
//!   touches: each node's replicated load; each **unit**'s — a vnode's, the ranges whose walk
//!   meets its node first at that vnode, against the node's mean over its vnode count (so that
//!   each new vnode takes about its share, from the units that hold too much, rather than the
//!   first ones grabbing large ranges); and, weighted lightly, primary ownership.
//! * The best candidate is taken for each of the node's tokens in turn. While one node joins,
//!   only it gains load and the others only lose some, so a candidate's gain can only shrink,
//!   except near a split just made: candidates sit in a max-heap, the top one is re-evaluated
//!   when popped and taken if it is still the best, and the ones near each split are evaluated
//!   again (lazy greedy).
//! * A ring's first node takes evenly spaced tokens, rotated by a seed. While the ring has no
//!   more nodes than RF every node holds everything whatever the tokens; the allocation then
//!   balances the placement of one replica fewer than the nodes (the 2nd node: primary
//!   ownership; the 3rd: two replicas), which keeps the tokens mixed for the joins to come.
//!
//! Racks count too: loads are computed with the rack-aware placement of [`Ring`] as it will be
//! once the node is in (see [`Ring::preference_list`]).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};

use crate::ring::{NodeId, Placer, Ring, Token};

/// How much primary ownership weighs against replicated ownership in the cost.
const PRIMARY_WEIGHT: f64 = 0.25;
/// How much the units' (vnodes') deviations weigh against the nodes'.
const UNIT_WEIGHT: f64 = 64.0;
/// Where a candidate splits its range, in quarters of the span.
const SPLITS: [u64; 3] = [2, 1, 3];
/// How many ranges are first evaluated as candidates at most.
const CANDIDATE_RANGES_MAX: usize = 16_384;
/// Ranges before a split whose gain is evaluated again after it (in replica walks: the ranges
/// whose walk may cross the split, with room to spare for racks).
const NEIGHBOURHOOD: usize = 16;

/// The tokens for `node` (in rack `rack`, `""` for none) joining `ring` (`None`: it is the first
/// node) with `count` vnodes and `rf` replicas per key; `seed` decides only between equally good
/// choices. The tokens are distinct from the ring's and from each other, in vnode index order.
///
/// # Panics
/// If `node` is already in `ring` (a node's tokens are chosen once, when it joins).
#[must_use]
pub fn allocate_tokens(
    ring: Option<&Ring>,
    node: NodeId,
    rack: &str,
    count: u16,
    rf: usize,
    seed: u64,
) -> Vec<Token> {
    let Some(ring) = ring.filter(|r| r.node_count() > 0 && r.vnodes()[0].node != NodeId(0)) else {
        return evenly_spaced(count, seed);
    };
    assert!(
        ring.vnodes().iter().all(|v| v.node != node),
        "node {node} is already in the ring"
    );
    let mut alloc = Alloc::new(ring, node, rack, rf.max(1), count);
    let mut heap = BinaryHeap::new();
    // Every range of a ring of up to 64 nodes of 256 vnodes is a candidate; of a larger one, an
    // even sample of that many (a join places a few hundred tokens: thousands of good
    // candidates are plenty, and a thousand-node ring has a quarter million ranges).
    let len = alloc.tokens.len();
    let stride = len.div_ceil(CANDIDATE_RANGES_MAX);
    let offset = usize::try_from(seed % stride as u64).unwrap_or(0);
    for p in (offset..len).step_by(stride) {
        alloc.push_candidates(p, &mut heap);
    }
    let mut out = Vec::with_capacity(usize::from(count));
    while out.len() < usize::from(count) {
        let Some(top) = heap.pop() else {
            // Every range is one token wide: nothing left to split (a ring of absurd density).
            break;
        };
        let Some(p) = alloc.position_of(top.end) else {
            continue;
        };
        let Some(now) = alloc.gain(p, top.split) else {
            continue;
        };
        let still_best = heap.peek().is_none_or(|next| now >= next.gain - 1e-15);
        if !still_best {
            heap.push(Candidate { gain: now, ..top });
            continue;
        }
        let (p, token) = alloc.apply(p, top.split);
        out.push(Token(token));
        // The new range and its neighbourhood: their gains may have grown.
        let len = alloc.tokens.len();
        for back in 0..=NEIGHBOURHOOD.min(len - 1) {
            alloc.push_candidates((p + len - back) % len, &mut heap);
        }
        alloc.push_candidates((p + 1) % len, &mut heap);
    }
    out
}

/// `count` evenly spaced tokens rotated by `seed`.
fn evenly_spaced(count: u16, seed: u64) -> Vec<Token> {
    let step = (1u128 << 64) / u128::from(count.max(1));
    let offset = xxhash_rust::xxh3::xxh3_64(&seed.to_le_bytes());
    (0..u128::from(count))
        .map(|i| {
            let t = u64::try_from((i * step) & u128::from(u64::MAX)).unwrap_or(0);
            Token(t.wrapping_add(offset))
        })
        .collect()
}

/// A candidate split in the heap (its gain as last evaluated).
#[derive(Clone, Copy, Debug)]
struct Candidate {
    gain: f64,
    /// The range's end token (a range keeps its end while splits take its front).
    end: u64,
    split: u64,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.gain
            .total_cmp(&other.gain)
            .then(other.end.cmp(&self.end))
            .then(other.split.cmp(&self.split))
    }
}

/// The ring as the allocation works on it: node indices, loads as fractions of the ring.
struct Alloc {
    tokens: Vec<u64>,
    owner: Vec<u32>,
    rack_of: Vec<u32>,
    racks: usize,
    /// Replicated load per node.
    load: Vec<f64>,
    /// Primary ownership per node.
    primary: Vec<f64>,
    rf: usize,
    new: u32,
    /// Whether the new node has a vnode in `owner` yet.
    placed: bool,
    /// Replicated load per unit (vnode, by token): the ranges whose walk met the unit's node
    /// first at that vnode.
    unit: std::collections::HashMap<u64, f64>,
    /// Each node's vnode count (the new node's: the tokens it will have).
    vnodes_of: Vec<f64>,
}

/// What one candidate changes (see [`Alloc::deltas`]).
struct Deltas {
    repl: Vec<(u32, f64)>,
    units: Vec<(u64, u32, f64)>,
    primary: Vec<(u32, f64)>,
    ins: Insert,
}

impl Deltas {
    fn add(&mut self, node: u32, unit: u64, d: f64) {
        match self.repl.iter_mut().find(|(n, _)| *n == node) {
            Some(e) => e.1 += d,
            None => self.repl.push((node, d)),
        }
        match self
            .units
            .iter_mut()
            .find(|(u, n, _)| *u == unit && *n == node)
        {
            Some(e) => e.2 += d,
            None => self.units.push((unit, node, d)),
        }
    }
}

/// A virtual insertion: a vnode of `node` with `token` at position `at`.
#[derive(Clone, Copy)]
struct Insert {
    at: usize,
    token: u64,
    node: u32,
}

/// Loads and tokens are fractions of the ring: a `u64` span over 2^64.
fn frac(span: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let f = span as f64 / 18_446_744_073_709_551_616.0;
    f
}

impl Alloc {
    fn new(ring: &Ring, node: NodeId, rack: &str, rf: usize, count: u16) -> Alloc {
        let mut index: BTreeMap<NodeId, u32> = BTreeMap::new();
        let mut ids: Vec<NodeId> = Vec::new();
        for v in ring.vnodes() {
            index.entry(v.node).or_insert_with(|| {
                ids.push(v.node);
                u32::try_from(ids.len() - 1).unwrap_or(u32::MAX)
            });
        }
        ids.push(node);
        let new = u32::try_from(ids.len() - 1).unwrap_or(u32::MAX);
        let mut rack_names: Vec<&str> = Vec::new();
        let mut rack_of = Vec::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            let name = if i == ids.len() - 1 {
                rack
            } else {
                ring.rack(*id)
            };
            let r = rack_names
                .iter()
                .position(|n| *n == name)
                .unwrap_or_else(|| {
                    rack_names.push(name);
                    rack_names.len() - 1
                });
            rack_of.push(u32::try_from(r).unwrap_or(u32::MAX));
        }
        let tokens: Vec<u64> = ring.vnodes().iter().map(|v| v.token.0).collect();
        let owner: Vec<u32> = ring.vnodes().iter().map(|v| index[&v.node]).collect();
        let mut alloc = Alloc {
            tokens,
            owner,
            rack_of,
            racks: rack_names.len(),
            load: vec![0.0; ids.len()],
            primary: vec![0.0; ids.len()],
            // While the ring has no more nodes than RF every node holds everything: the tokens
            // are then placed for the placement one node fewer than the nodes would give, so
            // that they stay mixed for the joins that come next.
            rf: if ids.len() <= rf { ids.len() - 1 } else { rf },
            new,
            placed: false,
            unit: std::collections::HashMap::new(),
            vnodes_of: Vec::new(),
        };
        let mut counts = vec![0.0f64; alloc.load.len()];
        for &o in &alloc.owner {
            counts[o as usize] += 1.0;
        }
        counts[new as usize] = f64::from(count.max(1));
        alloc.vnodes_of = counts;
        for p in 0..alloc.tokens.len() {
            let size = frac(alloc.span(p, None));
            alloc.primary[alloc.owner[p] as usize] += size;
            let (replicas, _) = alloc.replicas(p, None);
            for (n, u) in replicas {
                alloc.load[n as usize] += size;
                *alloc.unit.entry(u).or_insert(0.0) += size;
            }
        }
        alloc
    }

    fn len(&self, ins: Option<Insert>) -> usize {
        self.tokens.len() + usize::from(ins.is_some())
    }

    /// The vnode at virtual position `v`.
    fn at(&self, v: usize, ins: Option<Insert>) -> (u64, u32) {
        match ins {
            Some(i) if v == i.at => (i.token, i.node),
            Some(i) if v > i.at => (self.tokens[v - 1], self.owner[v - 1]),
            _ => (self.tokens[v], self.owner[v]),
        }
    }

    /// The span of the range at virtual position `v` (the whole ring for a lone vnode).
    fn span(&self, v: usize, ins: Option<Insert>) -> u64 {
        let len = self.len(ins);
        let (end, _) = self.at(v, ins);
        let (prev, _) = self.at((v + len - 1) % len, ins);
        if len == 1 {
            u64::MAX
        } else {
            end.wrapping_sub(prev)
        }
    }

    /// The replicas of the range at virtual position `start`, and how many vnodes the walk
    /// looked at.
    fn replicas(&self, start: usize, ins: Option<Insert>) -> (Vec<(u32, u64)>, usize) {
        let len = self.len(ins);
        let nodes = if ins.is_some() || self.placed {
            self.load.len()
        } else {
            self.load.len() - 1
        };
        let mut placer = Placer::new(self.rf.min(nodes), self.racks);
        // Each node met, with the token of its first vnode met (the unit that holds the replica).
        let mut first: Vec<(u32, u64)> = Vec::with_capacity(self.rf + 2);
        let mut steps = 0;
        for step in 0..len {
            steps = step + 1;
            let (token, node) = self.at((start + step) % len, ins);
            if !first.iter().any(|&(n, _)| n == node) {
                first.push((node, token));
            }
            if placer.offer(NodeId(u64::from(node)), self.rack_of[node as usize]) {
                break;
            }
        }
        let out = placer
            .finish()
            .into_iter()
            .map(|n| {
                let node = u32::try_from(n.0).unwrap_or(u32::MAX);
                let unit = first
                    .iter()
                    .find(|&&(m, _)| m == node)
                    .map_or(0, |&(_, t)| t);
                (node, unit)
            })
            .collect();
        (out, steps)
    }

    fn position_of(&self, end: u64) -> Option<usize> {
        self.tokens.binary_search(&end).ok()
    }

    /// The insertion that splits range `p` at `split` quarters, if the range can be split.
    fn insertion(&self, p: usize, split: u64) -> Option<Insert> {
        let span = self.span(p, None);
        let front = u64::try_from(u128::from(span) * u128::from(split) / 4).unwrap_or(0);
        if front == 0 || front >= span {
            return None;
        }
        let len = self.tokens.len();
        let prev = self.tokens[(p + len - 1) % len];
        let token = prev.wrapping_add(front);
        if self.tokens.binary_search(&token).is_ok() {
            return None;
        }
        // Position in sorted order: the ring's first range wraps, so a token past the last
        // vnode's goes at the end, and one below the first vnode's at the front.
        let at = if p == 0 && token > self.tokens[len - 1] {
            len
        } else {
            p
        };
        Some(Insert {
            at,
            token,
            node: self.new,
        })
    }

    /// What splitting range `p` at `split` quarters changes: each touched node's replicated
    /// load, each touched unit's (a vnode, by token, with its node), each touched node's
    /// primary ownership; and where the new vnode would go.
    fn deltas(&self, p: usize, split: u64) -> Option<Deltas> {
        let ins = self.insertion(p, split)?;
        let len = self.tokens.len();
        let front = frac(self.span(ins.at, Some(ins)));
        let mut d = Deltas {
            repl: Vec::new(),
            units: Vec::new(),
            primary: vec![(self.new, front), (self.owner[p], -front)],
            ins,
        };
        // The new range's replicas gain its front part; the split range's lose it.
        for (n, u) in self.replicas(ins.at, Some(ins)).0 {
            d.add(n, u, front);
        }
        for (n, u) in self.replicas(p, None).0 {
            d.add(n, u, -front);
        }
        // Ranges before the split whose walk crossed it.
        for back in 1..len {
            let q = (p + len - back) % len;
            let (old, steps) = self.replicas(q, None);
            if steps <= back {
                break; // its walk ended before the split point
            }
            let vq = if q >= ins.at { q + 1 } else { q };
            let (new, _) = self.replicas(vq, Some(ins));
            let size = frac(self.span(q, None));
            for &(n, u) in old.iter().filter(|x| !new.contains(x)) {
                d.add(n, u, -size);
            }
            for &(n, u) in new.iter().filter(|x| !old.contains(x)) {
                d.add(n, u, size);
            }
        }
        Some(d)
    }

    /// How much splitting range `p` at `split` quarters lowers the cost (negative: raises it).
    fn gain(&self, p: usize, split: u64) -> Option<f64> {
        let d = self.deltas(p, split)?;
        #[allow(clippy::cast_precision_loss)]
        let n = self.load.len() as f64;
        let sq = |loads: &[f64], ds: &[(u32, f64)], mean: f64| -> f64 {
            ds.iter()
                .map(|&(node, d)| {
                    let l = loads[node as usize];
                    (l + d - mean).powi(2) - (l - mean).powi(2)
                })
                .sum()
        };
        #[allow(clippy::cast_precision_loss)]
        let rf = self.rf.min(self.load.len()) as f64;
        let mean = rf / n;
        let units: f64 = d
            .units
            .iter()
            .map(|&(u, node, dd)| {
                let target = mean / self.vnodes_of[node as usize];
                let l = self.unit.get(&u).copied().unwrap_or(0.0);
                (l + dd - target).powi(2) - (l - target).powi(2)
            })
            .sum();
        Some(
            -(sq(&self.load, &d.repl, mean)
                + UNIT_WEIGHT * units
                + PRIMARY_WEIGHT * sq(&self.primary, &d.primary, 1.0 / n)),
        )
    }

    fn push_candidates(&self, p: usize, heap: &mut BinaryHeap<Candidate>) {
        for split in SPLITS {
            if let Some(gain) = self.gain(p, split) {
                heap.push(Candidate {
                    gain,
                    end: self.tokens[p],
                    split,
                });
            }
        }
    }

    /// Takes the split: the loads change, the vnode goes in. Returns its position and token.
    fn apply(&mut self, p: usize, split: u64) -> (usize, u64) {
        let d = self
            .deltas(p, split)
            .expect("INVARIANT: a candidate just evaluated can be applied");
        for &(n, dd) in &d.repl {
            self.load[n as usize] += dd;
        }
        for &(u, _, dd) in &d.units {
            *self.unit.entry(u).or_insert(0.0) += dd;
        }
        for &(n, dd) in &d.primary {
            self.primary[n as usize] += dd;
        }
        let ins = d.ins;
        self.tokens.insert(ins.at, ins.token);
        self.owner.insert(ins.at, ins.node);
        self.placed = true;
        (ins.at, ins.token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Grows a ring one allocated node at a time, as joins do.
    fn grow(n: u64, vnodes: u16, rf: usize, racks: usize) -> Vec<(Ring, usize)> {
        let mut members: Vec<(NodeId, Vec<Token>)> = Vec::new();
        let mut rack_of: BTreeMap<NodeId, String> = BTreeMap::new();
        let mut rings = Vec::new();
        for i in 1..=n {
            let id = NodeId(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let rack = if racks > 1 {
                format!("r{}", i % racks as u64)
            } else {
                String::new()
            };
            let ring = (!members.is_empty()).then(|| {
                let list: Vec<(NodeId, &[Token])> =
                    members.iter().map(|(id, t)| (*id, t.as_slice())).collect();
                Ring::from_tokens(&list).expect("ring").with_racks(&rack_of)
            });
            let tokens = allocate_tokens(ring.as_ref(), id, &rack, vnodes, rf, i);
            assert_eq!(tokens.len(), usize::from(vnodes));
            members.push((id, tokens));
            rack_of.insert(id, rack);
            let list: Vec<(NodeId, &[Token])> =
                members.iter().map(|(id, t)| (*id, t.as_slice())).collect();
            let ring = Ring::from_tokens(&list).expect("ring").with_racks(&rack_of);
            rings.push((ring, members.len()));
        }
        rings
    }

    #[test]
    fn allocated_ownership_stays_within_ten_percent_of_the_mean_from_3_to_64_nodes() {
        for (ring, n) in grow(64, 256, 3, 1) {
            assert_eq!(ring.vnodes().len(), n * 256, "distinct tokens");
            if [3, 4, 5, 8, 16, 64].contains(&n) || n % 7 == 0 {
                let balance = ring.replicated_balance(3);
                assert!(balance <= 1.10, "{n} nodes: max/mean {balance:.4}");
            }
            if n == 64 {
                // Tokens derived from the ids (what a ring had before allocation) do worse.
                let members: Vec<(NodeId, u16)> = ring.vnode_counts().into_iter().collect();
                let derived = Ring::new(&members).expect("ring").replicated_balance(3);
                let allocated = ring.replicated_balance(3);
                assert!(
                    allocated < derived,
                    "allocated {allocated}, derived {derived}"
                );
            }
        }
    }

    #[test]
    fn racks_get_distinct_replicas_and_stay_balanced() {
        for (ring, n) in grow(12, 64, 3, 3) {
            if n < 3 {
                continue;
            }
            for key in 0u32..200 {
                let list = ring.preference_list(Token::of(&key.to_le_bytes()), 3);
                let mut racks: Vec<&str> = list.iter().map(|&node| ring.rack(node)).collect();
                racks.sort_unstable();
                racks.dedup();
                assert_eq!(racks.len(), 3, "{n} nodes: {list:?}");
            }
            if n % 3 == 0 {
                let balance = ring.replicated_balance(3);
                assert!(balance <= 1.15, "{n} nodes in 3 racks: {balance:.4}");
            }
        }
    }

    #[test]
    fn the_first_node_spreads_its_tokens_evenly() {
        let tokens = allocate_tokens(None, NodeId(1), "", 4, 3, 7);
        let mut sorted: Vec<u64> = tokens.iter().map(|t| t.0).collect();
        sorted.sort_unstable();
        for w in sorted.windows(2) {
            assert_eq!(w[1] - w[0], 1 << 62);
        }
    }

    fn f(x: u128) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let v = x as f64 / 18_446_744_073_709_551_616.0;
        v
    }

    /// The allocation's node indices: the ring's nodes in order of first vnode, then the new one.
    fn indices(ring: &Ring, new: NodeId) -> Vec<NodeId> {
        let mut idx: Vec<NodeId> = Vec::new();
        for v in ring.vnodes() {
            if !idx.contains(&v.node) {
                idx.push(v.node);
            }
        }
        idx.push(new);
        idx
    }

    #[test]
    fn a_candidates_local_deltas_are_what_the_whole_ring_recomputed_says() {
        let members: Vec<(NodeId, u16)> = (1..=6).map(|i| (NodeId(i), 16)).collect();
        let ring = Ring::new(&members).expect("ring");
        let alloc = Alloc::new(&ring, NodeId(99), "", 3, 16);
        let idx = indices(&ring, NodeId(99));
        let before = ring.replicated_ownership(3);
        for p in [0usize, 1, 5, 40, 95] {
            for split in SPLITS {
                let d = alloc.deltas(p, split).expect("splittable");
                let mut vnodes = ring.vnodes().to_vec();
                vnodes.push(crate::ring::Vnode {
                    token: Token(d.ins.token),
                    node: NodeId(99),
                    index: 0,
                });
                let after = Ring::from_vnodes(vnodes)
                    .expect("ring")
                    .replicated_ownership(3);
                for (i, id) in idx.iter().enumerate() {
                    let real = f(after.get(id).copied().unwrap_or(0))
                        - f(before.get(id).copied().unwrap_or(0));
                    let model = d
                        .repl
                        .iter()
                        .find(|(n, _)| *n as usize == i)
                        .map_or(0.0, |x| x.1);
                    assert!(
                        (real - model).abs() < 1e-9,
                        "split {p}/{split}, node {id}: {real} but the model says {model}"
                    );
                }
            }
        }
    }

    #[test]
    fn loads_stay_exact_as_vnodes_go_in() {
        let members: Vec<(NodeId, u16)> = (1..=6).map(|i| (NodeId(i), 16)).collect();
        let ring = Ring::new(&members).expect("ring");
        let mut alloc = Alloc::new(&ring, NodeId(99), "", 3, 30);
        let idx = indices(&ring, NodeId(99));
        let mut vnodes = ring.vnodes().to_vec();
        for k in 0..30u16 {
            let p = (usize::from(k) * 37) % alloc.tokens.len();
            let (_, token) = alloc.apply(p, SPLITS[usize::from(k) % 3]);
            vnodes.push(crate::ring::Vnode {
                token: Token(token),
                node: NodeId(99),
                index: k,
            });
            let real = Ring::from_vnodes(vnodes.clone())
                .expect("ring")
                .replicated_ownership(3);
            for (i, id) in idx.iter().enumerate() {
                let r = f(real.get(id).copied().unwrap_or(0));
                assert!(
                    (r - alloc.load[i]).abs() < 1e-9,
                    "after {k} vnodes, node {id}: {r} but the model says {}",
                    alloc.load[i]
                );
            }
        }
    }
}
