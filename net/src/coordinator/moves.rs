//! Topology changes' decisions, sans IO (docs/protocol.md "Topology changes"): which token
//! ranges a node gains when the change in progress completes and where it streams them from,
//! which change goes on when two started at once, and whether a change is complete.

use std::collections::BTreeSet;

use crate::cluster::ring_book::{Change, ChangeKind, MemberState, Move, RingMember};
use crate::cluster::ClusterState;
use dynacore_proto::ring::{NodeId, Ring, Token};

/// A token range (`start..=end`) a node gains, with the nodes that hold it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gained {
    /// First token.
    pub start: u64,
    /// Last token.
    pub end: u64,
    /// Its current replicas other than the gaining node.
    pub sources: Vec<NodeId>,
    /// The replica the gaining node takes the place of in this piece's replica set, when there
    /// is one (a join or a decommission): streaming from it alone loses nothing, since a write
    /// acknowledged by W replicas that did not include it is still on W of the new set
    /// (Cassandra's strict consistent range movement). Without it (a removal, a replacement,
    /// or it is down), every current replica is streamed from, so that whichever replicas
    /// took a write, the new owner gets it.
    pub strict: Option<NodeId>,
}

/// The inclusive token intervals of a ring range `(prev, end]` (two when it wraps; the whole
/// ring for a lone vnode).
fn intervals(prev: Token, end: Token) -> Vec<(u64, u64)> {
    if prev == end {
        return vec![(0, u64::MAX)];
    }
    if prev < end {
        return vec![(prev.0 + 1, end.0)];
    }
    let mut out = Vec::with_capacity(2);
    if prev.0 < u64::MAX {
        out.push((prev.0 + 1, u64::MAX));
    }
    out.push((0, end.0));
    out
}

/// Cuts `(start, end)` after each of `cuts` inside it (each piece ends at a cut or at `end`).
fn cut_at(start: u64, end: u64, cuts: &BTreeSet<u64>) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut from = start;
    for &c in cuts.range(start..end) {
        out.push((from, c));
        from = c + 1;
    }
    out.push((from, end));
    out
}

/// The ranges `node` gains when the change in progress completes, split so that each piece is
/// one range of the current ring (one set of sources) and lies on one core of every source
/// (their own vnode tokens cut it). A node replacing itself gains every range it holds.
#[must_use]
pub fn gained(state: &ClusterState, node: NodeId) -> Vec<Gained> {
    let Some(mv) = &state.moving else {
        return Vec::new();
    };
    let rf = usize::from(state.configured_rf);
    let current = &state.ring;
    let self_replace = mv.replaces == Some(mv.node);
    let future: &Ring = if self_replace {
        current
    } else {
        match &state.future {
            Some(f) => f,
            None => return Vec::new(),
        }
    };
    // Every source's own tokens, and the current ring's, cut the pieces.
    let mut cuts: BTreeSet<u64> = current.vnodes().iter().map(|v| v.token.0).collect();
    for n in state.nodes.values() {
        cuts.extend(n.tokens.iter().map(|t| t.0));
    }
    let mut out = Vec::new();
    for i in 0..future.vnodes().len() {
        if !future.preference_list_at(i, rf).contains(&node) {
            continue;
        }
        let (prev, end) = future.range_at(i);
        for (a, b) in intervals(prev, end) {
            for (s, e) in cut_at(a, b, &cuts) {
                let now = current.preference_list(Token(e), rf);
                if now.contains(&node) && !self_replace {
                    continue;
                }
                let next = future.preference_list(Token(e), rf);
                let leaving: Vec<NodeId> =
                    now.iter().copied().filter(|n| !next.contains(n)).collect();
                // Only a node that is still alive to give its data can be the strict source: a
                // removed or replaced node is dead.
                let strict = match (leaving.as_slice(), mv.state, mv.change.kind) {
                    ([one], _, ChangeKind::Join | ChangeKind::Decommission) => Some(*one),
                    _ => None,
                };
                let sources: Vec<NodeId> = now.into_iter().filter(|&n| n != node).collect();
                if !sources.is_empty() {
                    out.push(Gained {
                        start: s,
                        end: e,
                        sources,
                        strict,
                    });
                }
            }
        }
    }
    out
}

/// The nodes that gain ranges in the change in progress (each must stream them before it
/// completes): for every piece of a future range cut at the current ring's tokens, its future
/// replicas that are not current ones.
#[must_use]
pub fn gaining_nodes(state: &ClusterState) -> Vec<NodeId> {
    let Some(mv) = &state.moving else {
        return Vec::new();
    };
    if mv.replaces == Some(mv.node) {
        return vec![mv.node];
    }
    let Some(future) = &state.future else {
        return Vec::new();
    };
    let rf = usize::from(state.configured_rf);
    let cuts: BTreeSet<u64> = state.ring.vnodes().iter().map(|v| v.token.0).collect();
    let mut out: BTreeSet<NodeId> = BTreeSet::new();
    for i in 0..future.vnodes().len() {
        let next = future.preference_list_at(i, rf);
        let (prev, end) = future.range_at(i);
        for (a, b) in intervals(prev, end) {
            for (_, e) in cut_at(a, b, &cuts) {
                let now = state.ring.preference_list(Token(e), rf);
                out.extend(next.iter().filter(|n| !now.contains(n)));
            }
        }
    }
    out.into_iter().collect()
}

/// Whether `member` has streamed everything the change `mv` gives it.
#[must_use]
pub fn streamed(member: &RingMember, mv: &Move) -> bool {
    member
        .progress
        .as_ref()
        .is_some_and(|p| p.done && p.change == mv.change.id && p.node == mv.node.to_string())
}

/// Of the changes in progress (each the moving node and its change), the one that goes on:
/// the lowest `(change id, node)`. The others are called off by their drivers.
#[must_use]
pub fn winner(changes: &[(NodeId, Change)]) -> Option<(NodeId, Change)> {
    changes
        .iter()
        .min_by_key(|(n, c)| (c.id, *n))
        .map(|(n, c)| (*n, c.clone()))
}

/// Every change in progress in a book: members joining with tokens or leaving under a change.
#[must_use]
pub fn changes_in(entries: &[(NodeId, RingMember)]) -> Vec<(NodeId, Change)> {
    entries
        .iter()
        .filter(|(_, m)| match m.state {
            MemberState::Joining => !m.tokens.is_empty(),
            MemberState::Leaving => true,
            _ => false,
        })
        .filter_map(|(n, m)| m.change.clone().map(|c| (*n, c)))
        .collect()
}

/// Whether `x` lies in the ring range `(prev, end]`.
fn in_range(prev: u64, end: u64, x: u64) -> bool {
    match prev.cmp(&end) {
        std::cmp::Ordering::Less => prev < x && x <= end,
        std::cmp::Ordering::Greater => x > prev || x <= end,
        std::cmp::Ordering::Equal => true,
    }
}

/// The repair history a completed change leaves: for each range of `new` that `own`
/// replicates, the time its replicas were last all in sync, inherited from the ranges of `old`
/// it was made of (`repaired_at` reads this node's history of `old`). A change completes only
/// once every node that gained a piece streamed it from the piece's old replicas, which held
/// everything up to their last repair, and the piece's other new replicas were old replicas
/// too: so the new replicas hold everything up to the oldest of those repairs. A range made of
/// any piece never repaired inherits nothing. Each as (range, replicas sorted, time).
pub fn inherited_repairs(
    old: &Ring,
    new: &Ring,
    rf: usize,
    own: NodeId,
    repaired_at: impl Fn((u64, u64), &[u64]) -> Option<u64>,
) -> Vec<((u64, u64), Vec<u64>, u64)> {
    let mut out = Vec::new();
    if old.vnodes().len() < 2 || new.vnodes().len() < 2 {
        return out;
    }
    for i in 0..new.vnodes().len() {
        let replicas = new.preference_list_at(i, rf);
        if !replicas.contains(&own) {
            continue;
        }
        let (prev, end) = new.range_at(i);
        let first = prev.0.wrapping_add(1);
        // The old ranges it overlaps: from the one holding its last token back to the one
        // holding its first.
        let mut j = old.owner_position(end);
        let mut since: Option<u64> = Some(u64::MAX);
        for _ in 0..old.vnodes().len() {
            let (p, e) = old.range_at(j);
            let mut was: Vec<u64> = old.preference_list_at(j, rf).iter().map(|n| n.0).collect();
            was.sort_unstable();
            since = since
                .zip(repaired_at((p.0, e.0), &was))
                .map(|(a, b)| a.min(b));
            if since.is_none() || in_range(p.0, e.0, first) {
                break;
            }
            j = if j == 0 {
                old.vnodes().len() - 1
            } else {
                j - 1
            };
        }
        if let Some(at) = since.filter(|&at| at != u64::MAX) {
            let mut now: Vec<u64> = replicas.iter().map(|n| n.0).collect();
            now.sort_unstable();
            out.push(((prev.0, end.0), now, at));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{RingBook, RingMember};
    use std::net::SocketAddr;

    fn member(i: u64, tokens: Vec<u64>, state: MemberState) -> RingMember {
        let addr: SocketAddr = format!("127.0.0.{i}:7400").parse().expect("addr");
        let mut m = RingMember::new(NodeId(i), addr, addr, 2, 8, 1).normal_with(tokens);
        m.state = state;
        m
    }

    fn tokens(i: u64) -> Vec<u64> {
        dynacore_proto::ring::vnode_tokens(NodeId(i), 8)
            .into_iter()
            .map(|t| t.0)
            .collect()
    }

    /// A book of nodes 1..=3 normal, and node 4 as given.
    fn book_with(four: RingMember) -> RingBook {
        let mut book = RingBook::in_memory(member(1, tokens(1), MemberState::Normal));
        for i in 2..=3 {
            book.record(member(i, tokens(i), MemberState::Normal));
        }
        book.record(four);
        book
    }

    fn covered(ranges: &[Gained]) -> u128 {
        ranges.iter().map(|g| u128::from(g.end - g.start) + 1).sum()
    }

    #[test]
    fn a_joining_node_gains_what_the_future_ring_gives_it_and_streams_from_every_replica() {
        let mut four = member(4, tokens(4), MemberState::Joining);
        four.change = Some(Change {
            id: 5,
            kind: ChangeKind::Join,
            driver: NodeId(4).to_string(),
        });
        let state = ClusterState::build(NodeId(1), &book_with(four), None, 3);
        assert_eq!(
            state.ring.node_count(),
            3,
            "the joiner is not in the current ring"
        );
        let future = state.future.clone().expect("a future ring");
        assert_eq!(future.node_count(), 4);
        let ranges = gained(&state, NodeId(4));
        // Node 4 holds, in the future ring, its replicated share: every token it will be a
        // replica of, and nothing else.
        let owned = future.replicated_ownership(3)[&NodeId(4)];
        assert_eq!(covered(&ranges), owned);
        for g in &ranges {
            assert_eq!(g.sources, state.replicas(Token(g.end)));
            // The replica node 4 displaces is the strict source.
            let strict = g.strict.expect("a join has a strict source");
            assert!(g.sources.contains(&strict));
            assert!(!future.preference_list(Token(g.end), 3).contains(&strict));
            assert!(future
                .preference_list(Token(g.start), 3)
                .contains(&NodeId(4)));
            // Writes to its keys wait for node 4 too.
            assert_eq!(state.pending_replicas(Token(g.end)), vec![NodeId(4)]);
        }
        assert_eq!(gaining_nodes(&state), vec![NodeId(4)]);
    }

    #[test]
    fn a_leaving_nodes_ranges_go_to_their_next_owners() {
        let mut three = member(3, tokens(3), MemberState::Leaving);
        three.change = Some(Change {
            id: 9,
            kind: ChangeKind::Decommission,
            driver: NodeId(3).to_string(),
        });
        let mut book = RingBook::in_memory(member(1, tokens(1), MemberState::Normal));
        for i in [2, 4] {
            book.record(member(i, tokens(i), MemberState::Normal));
        }
        book.record(three);
        let state = ClusterState::build(NodeId(1), &book, None, 3);
        assert_eq!(
            state.ring.node_count(),
            4,
            "a leaving node is still in the ring"
        );
        let gaining = gaining_nodes(&state);
        assert!(!gaining.is_empty() && !gaining.contains(&NodeId(3)));
        // Everything node 3 holds goes somewhere: the gained ranges cover its share.
        let held = state.ring.replicated_ownership(3)[&NodeId(3)];
        let moved: u128 = gaining.iter().map(|&n| covered(&gained(&state, n))).sum();
        assert_eq!(moved, held);
    }

    #[test]
    fn of_two_changes_started_at_once_the_lower_id_goes_on() {
        let c = |id| Change {
            id,
            kind: ChangeKind::Join,
            driver: String::new(),
        };
        let w = winner(&[(NodeId(9), c(20)), (NodeId(4), c(10)), (NodeId(2), c(10))]);
        assert_eq!(w.map(|(n, c)| (n, c.id)), Some((NodeId(2), 10)));
        assert_eq!(winner(&[]), None);
    }

    #[test]
    fn ranges_are_cut_into_inclusive_intervals() {
        assert_eq!(intervals(Token(5), Token(9)), vec![(6, 9)]);
        assert_eq!(intervals(Token(9), Token(5)), vec![(10, u64::MAX), (0, 5)]);
        assert_eq!(intervals(Token(u64::MAX), Token(5)), vec![(0, 5)]);
        assert_eq!(intervals(Token(3), Token(3)), vec![(0, u64::MAX)]);
        let cuts: BTreeSet<u64> = [7, 20].into_iter().collect();
        assert_eq!(cut_at(5, 9, &cuts), vec![(5, 7), (8, 9)]);
        assert_eq!(cut_at(8, 9, &cuts), vec![(8, 9)]);
    }

    /// After a join every range the joiner splits inherits its old range's repair; after a
    /// leave, a merged range inherits the oldest of its pieces'; a piece never repaired leaves
    /// its new range without one.
    #[test]
    fn repair_history_follows_the_ranges_of_a_completed_change() {
        let three: Vec<(NodeId, Vec<Token>)> = (1..=3)
            .map(|i| (NodeId(i), tokens(i).into_iter().map(Token).collect()))
            .collect();
        let ring = |members: &[(NodeId, Vec<Token>)]| {
            let list: Vec<(NodeId, &[Token])> =
                members.iter().map(|(n, t)| (*n, t.as_slice())).collect();
            Ring::from_tokens(&list).expect("ring")
        };
        let old = ring(&three);
        let mut four = three.clone();
        four.push((NodeId(4), tokens(4).into_iter().map(Token).collect()));
        let new = ring(&four);
        // Old ranges repaired at 1000 + their index, one never.
        let never = old.range_at(3);
        let history = |old: &Ring| {
            let old = old.clone();
            move |range: (u64, u64), replicas: &[u64]| {
                let i = (0..old.vnodes().len()).find(|&i| {
                    let (p, e) = old.range_at(i);
                    (p.0, e.0) == range
                })?;
                let mut want: Vec<u64> = old.preference_list_at(i, 3).iter().map(|n| n.0).collect();
                want.sort_unstable();
                (replicas == want.as_slice() && (range != (never.0 .0, never.1 .0)))
                    .then_some(1000 + i as u64)
            }
        };
        let got = inherited_repairs(&old, &new, 3, NodeId(1), history(&old));
        assert!(!got.is_empty());
        let mut unrepaired = 0;
        for i in 0..new.vnodes().len() {
            let (p, e) = new.range_at(i);
            let mut replicas: Vec<u64> = new.preference_list_at(i, 3).iter().map(|n| n.0).collect();
            replicas.sort_unstable();
            let entry = got.iter().find(|(r, _, _)| *r == (p.0, e.0));
            if !replicas.contains(&1) {
                assert!(entry.is_none(), "only ranges node 1 replicates");
                continue;
            }
            // A join splits old ranges: each new range lies in exactly one old one.
            let j = old.owner_position(e);
            if old.range_at(j) == never {
                assert!(entry.is_none(), "a piece never repaired passes nothing on");
                unrepaired += 1;
            } else {
                let (_, r, at) = entry.expect("an inherited repair");
                assert_eq!(*at, 1000 + j as u64);
                assert_eq!(r, &replicas);
            }
        }
        assert!(unrepaired <= 2);
        // Back to three (node 4 leaves): ranges merge; each gets the oldest of its pieces.
        let back = inherited_repairs(&new, &old, 3, NodeId(1), |range, replicas| {
            got.iter()
                .find(|(r, rs, _)| *r == range && rs.as_slice() == replicas)
                .map(|(_, _, at)| *at)
        });
        let mut whole = 0;
        for i in 0..old.vnodes().len() {
            let (p, e) = old.range_at(i);
            let entry = back.iter().find(|(r, _, _)| *r == (p.0, e.0));
            // The pieces of old range i in the four-node ring: each inherited only if node 1
            // replicated it there too.
            let pieces: Vec<usize> = (0..new.vnodes().len())
                .filter(|&k| old.owner_position(new.range_at(k).1) == i)
                .collect();
            let all_held = pieces
                .iter()
                .all(|&k| new.preference_list_at(k, 3).contains(&NodeId(1)));
            if !old.preference_list_at(i, 3).contains(&NodeId(1)) || (p, e) == never || !all_held {
                assert!(entry.is_none(), "range {i}: nothing to inherit from");
            } else {
                assert_eq!(
                    entry.map(|(_, _, at)| *at),
                    Some(1000 + i as u64),
                    "range {i}"
                );
                whole += 1;
            }
        }
        assert!(whole > 0, "some ranges came back whole");
    }
}
