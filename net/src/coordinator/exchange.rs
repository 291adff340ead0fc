//! Anti-entropy's decisions, sans IO: which ring ranges this node holds and with whom, how a
//! range whose hashes differ is narrowed down, what each divergent key needs (pull, push or
//! both), and how hard repair may push while the foreground suffers. Driven by
//! `anti_entropy.rs`.

use dynacore_engine::version::DvvSet;
use dynacore_proto::ring::{NodeId, Ring};

use crate::cluster::ClusterState;

/// Token width under which an interval's keys are listed rather than split further: one leaf
/// of the default tree (`2^20` leaves).
pub(crate) const LIST_WIDTH: u64 = 1 << (64 - dynacore_engine::hashtree::LEAF_BITS_DEFAULT);

/// Sub-intervals a differing interval is split into.
pub(crate) const FAN_OUT: u64 = 16;

/// A ring range this node holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeJob {
    /// Its vnode's previous token and its own (the repair history's name for it).
    pub id: (u64, u64),
    /// Its replicas, primary first.
    pub replicas: Vec<NodeId>,
    /// Its tokens as inclusive intervals (two when it wraps).
    pub intervals: Vec<(u64, u64)>,
    /// This node's core holding it.
    pub shard: u32,
}

/// The intervals of ring range `(prev, end]`; with one vnode, the whole ring.
pub(crate) fn intervals_of(prev: u64, end: u64, whole: bool) -> Vec<(u64, u64)> {
    if whole {
        return vec![(0, u64::MAX)];
    }
    if prev < end {
        return vec![(prev + 1, end)];
    }
    // Wraps: (prev, MAX] then [0, end].
    let mut out = Vec::with_capacity(2);
    if prev < u64::MAX {
        out.push((prev + 1, u64::MAX));
    }
    out.push((0, end));
    out
}

/// Every ring range `own` holds, with the core of `own` holding it.
pub(crate) fn ranges_held(cluster: &ClusterState) -> Vec<RangeJob> {
    let ring: &Ring = &cluster.ring;
    let own = cluster.own_node();
    let whole = ring.vnodes().len() == 1;
    let rf = usize::from(cluster.replication_factor);
    (0..ring.vnodes().len())
        .filter_map(|i| {
            let (prev, end) = ring.range_at(i);
            let replicas = ring.preference_list(end, rf);
            replicas.contains(&cluster.own).then(|| RangeJob {
                id: (prev.0, end.0),
                intervals: intervals_of(prev.0, end.0, whole),
                shard: own.shard_map.shard_of(end),
                replicas,
            })
        })
        .collect()
}

/// Whether `own` coordinates the scheduled exchanges of `job`: it is the first of its
/// replicas that `up` says is up.
pub(crate) fn coordinates(job: &RangeJob, own: NodeId, up: impl Fn(NodeId) -> bool) -> bool {
    job.replicas
        .iter()
        .copied()
        .find(|&n| n == own || up(n))
        .is_some_and(|n| n == own)
}

/// `iv` split into `parts` intervals of (about) equal width.
pub(crate) fn split(iv: (u64, u64), parts: u64) -> Vec<(u64, u64)> {
    let width = u128::from(iv.1 - iv.0) + 1;
    let parts = u128::from(parts).min(width).max(1);
    let step = width / parts;
    let mut out = Vec::with_capacity(parts as usize);
    let mut start = u128::from(iv.0);
    for i in 0..parts {
        let end = if i + 1 == parts {
            u128::from(iv.1)
        } else {
            start + step - 1
        };
        // Both ends lie within `iv`, so they fit in u64.
        out.push((start as u64, end as u64));
        start = end + 1;
    }
    out
}

/// An interval narrow enough to list its keys.
pub(crate) fn narrow(iv: (u64, u64)) -> bool {
    iv.1 - iv.0 < LIST_WIDTH
}

/// One side's state of a key, as compared.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Side<'a> {
    /// Its contribution hash.
    pub(crate) hash: u64,
    /// Its canonical version blob.
    pub(crate) version: &'a [u8],
    /// When it became a purgeable deletion.
    pub(crate) deleted_at_ms: Option<u64>,
}

/// What a divergent key needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// The peer's copy holds everything this one does: fetch it and merge it here.
    Pull,
    /// This copy holds everything the peer's does: send it.
    Push,
    /// Each holds something the other lacks: fetch, merge here, send the merge.
    Both,
}

/// What key needs, given this node's and the peer's states (`None`: no copy). Deletions that
/// took effect before `gc_before` may be purged on one side and kept on the other: that is
/// not a divergence (or anti-entropy would bring back tombstones replicas purged at different
/// times).
pub(crate) fn decide(
    local: Option<Side<'_>>,
    remote: Option<Side<'_>>,
    gc_before: Option<u64>,
) -> Option<Action> {
    let purgeable = |s: &Side<'_>| {
        s.deleted_at_ms
            .zip(gc_before)
            .is_some_and(|(at, before)| at < before)
    };
    match (local, remote) {
        (None, None) => None,
        (Some(l), None) => (!purgeable(&l)).then_some(Action::Push),
        (None, Some(r)) => (!purgeable(&r)).then_some(Action::Pull),
        (Some(l), Some(r)) if l.hash == r.hash => None,
        (Some(l), Some(r)) => {
            let join = |v: &[u8]| {
                DvvSet::<Vec<u8>>::decode(v, |b| Ok(b.to_vec()))
                    .ok()
                    .map(|s| s.join())
            };
            match (join(l.version), join(r.version)) {
                (Some(lj), Some(rj)) if lj == rj => Some(Action::Both),
                (Some(lj), Some(rj)) if rj.descends(&lj) => Some(Action::Pull),
                (Some(lj), Some(rj)) if lj.descends(&rj) => Some(Action::Push),
                _ => Some(Action::Both),
            }
        }
    }
}

/// The p99 (µs, a bucket's upper bound) of the observations between two cumulative bucket
/// snapshots of the latency histogram; `None` under 20 observations.
pub(crate) fn window_p99_us(before: &[u64], after: &[u64], bounds_us: &[u64]) -> Option<u64> {
    let counts: Vec<u64> = after
        .iter()
        .zip(before)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    let total: u64 = counts.iter().sum();
    if total < 20 {
        return None;
    }
    let want = total - total / 100;
    let mut seen = 0;
    for (c, bound) in counts.iter().zip(bounds_us) {
        seen += c;
        if seen >= want {
            return Some(*bound);
        }
    }
    bounds_us.last().copied()
}

/// The repair budget's new share: halved while the foreground p99 of the last window is over
/// twice its baseline without repair (plus 200 µs), regained by a quarter per window while it
/// is within 1.5 times (plus 200 µs), held in between. Without a baseline (a node that joins
/// streams before it ever served alone) it grows: the sources it streams from pace what they
/// send by their own foreground p99.
pub(crate) fn next_factor(factor: f64, window_p99_us: Option<u64>, baseline_us: u64) -> f64 {
    let grow = (factor * 1.25).min(1.0);
    match window_p99_us {
        Some(p99) if baseline_us > 0 => {
            if p99 > 2 * baseline_us + 200 {
                factor / 2.0
            } else if p99 <= baseline_us + baseline_us / 2 + 200 {
                grow
            } else {
                factor
            }
        }
        _ => grow,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_become_intervals_that_cover_them_once() {
        assert_eq!(intervals_of(10, 20, false), vec![(11, 20)]);
        assert_eq!(intervals_of(20, 10, false), vec![(21, u64::MAX), (0, 10)]);
        assert_eq!(intervals_of(u64::MAX, 10, false), vec![(0, 10)]);
        assert_eq!(intervals_of(5, 5, true), vec![(0, u64::MAX)]);
        for iv in [(0, u64::MAX), (3, 3), (10, 25), (u64::MAX - 5, u64::MAX)] {
            let parts = split(iv, FAN_OUT);
            assert_eq!(parts.first().map(|p| p.0), Some(iv.0));
            assert_eq!(parts.last().map(|p| p.1), Some(iv.1));
            assert!(parts.windows(2).all(|w| w[0].1 + 1 == w[1].0), "{parts:?}");
            assert!(parts.len() as u64 <= FAN_OUT);
        }
        assert_eq!(split((3, 3), 16), vec![(3, 3)]);
        assert!(narrow((0, LIST_WIDTH - 1)) && !narrow((0, LIST_WIDTH)));
    }

    #[test]
    fn the_coordinator_is_the_first_replica_up() {
        let job = RangeJob {
            id: (1, 2),
            replicas: vec![NodeId(3), NodeId(1), NodeId(2)],
            intervals: vec![(2, 2)],
            shard: 0,
        };
        assert!(coordinates(&job, NodeId(3), |_| true));
        assert!(!coordinates(&job, NodeId(1), |_| true));
        assert!(coordinates(&job, NodeId(1), |n| n != NodeId(3)));
        assert!(!coordinates(&job, NodeId(2), |n| n != NodeId(3)));
    }

    #[test]
    fn divergent_keys_go_the_way_their_versions_say() {
        use dynacore_engine::object::{self, Object, Sibling};
        use dynacore_engine::version::{ActorId, HlcTimestamp, VersionVector};
        let sib = |v: &[u8], ms: u64| Sibling {
            value: Some(v.to_vec()),
            hlc: HlcTimestamp::from_parts(ms, 0),
            expiry_ms: None,
        };
        let a = Object::mint(
            &VersionVector::default(),
            sib(b"a", 1),
            None,
            ActorId::new(1, 1),
            0,
        )
        .expect("mint");
        let b =
            Object::mint(&a.join(), sib(b"b", 2), Some(&a), ActorId::new(1, 1), 0).expect("mint");
        let c = Object::mint(
            &VersionVector::default(),
            sib(b"c", 3),
            None,
            ActorId::new(2, 1),
            0,
        )
        .expect("mint");
        let state = |o: &Object| {
            let (v, _) = object::to_parts(o).expect("parts");
            dynacore_engine::hashtree::key_state(b"k", false, 0, None, &v)
        };
        let (sa, sb, sc) = (state(&a), state(&b), state(&c));
        fn side(s: &dynacore_engine::KeyState) -> Side<'_> {
            Side {
                hash: s.hash,
                version: &s.version,
                deleted_at_ms: s.deleted_at_ms,
            }
        }
        assert_eq!(decide(Some(side(&sa)), Some(side(&sa)), None), None);
        assert_eq!(
            decide(Some(side(&sa)), Some(side(&sb)), None),
            Some(Action::Pull)
        );
        assert_eq!(
            decide(Some(side(&sb)), Some(side(&sa)), None),
            Some(Action::Push)
        );
        assert_eq!(
            decide(Some(side(&sb)), Some(side(&sc)), None),
            Some(Action::Both)
        );
        assert_eq!(decide(None, Some(side(&sc)), None), Some(Action::Pull));
        assert_eq!(decide(Some(side(&sc)), None, None), Some(Action::Push));
        // A tombstone old enough to be purged on one side only is no divergence.
        let dead = Side {
            hash: 1,
            version: &sa.version,
            deleted_at_ms: Some(100),
        };
        assert_eq!(decide(Some(dead), None, Some(101)), None);
        assert_eq!(decide(None, Some(dead), Some(101)), None);
        assert_eq!(decide(Some(dead), None, Some(100)), Some(Action::Push));
        assert_eq!(
            decide(Some(dead), None, None),
            Some(Action::Push),
            "never repaired"
        );
    }

    #[test]
    fn the_budget_halves_while_the_foreground_suffers() {
        let bounds = [50, 100, 250, 500, 1000];
        let before = [0, 0, 0, 0, 0];
        assert_eq!(window_p99_us(&before, &[10, 0, 0, 0, 0], &bounds), None);
        assert_eq!(
            window_p99_us(&before, &[100, 50, 0, 0, 0], &bounds),
            Some(100)
        );
        assert_eq!(
            window_p99_us(&before, &[100, 0, 0, 0, 10], &bounds),
            Some(1000)
        );
        assert!((next_factor(1.0, Some(1000), 250) - 0.5).abs() < 1e-9);
        assert!((next_factor(0.5, Some(250), 250) - 0.625).abs() < 1e-9);
        assert!((next_factor(1.0, None, 250) - 1.0).abs() < 1e-9);
        assert!(
            (next_factor(1.0, Some(1000), 0) - 1.0).abs() < 1e-9,
            "no baseline yet"
        );
        assert!(
            (next_factor(0.5, Some(600), 250) - 0.5).abs() < 1e-9,
            "held between 1.5 and 2 times the baseline"
        );
    }
}
