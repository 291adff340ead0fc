//! The quorum coordinator's decisions, sans IO: which replicas a request goes to, when a write
//! or read has its quorum, when it has failed, which missing replicas get hints, and which
//! replicas a read repairs. The runtime around it sends the messages and feeds the answers
//! back; a seeded simulation can drive the same code.
//!
//! * **Quorums.** `W`/`R` are `1..=RF`, `quorum` (a majority of RF) or `all`; the defaults
//!   are 2 and 2, capped at RF ([`required`]).
//! * **Placement.** The preference list of a key is the first RF distinct nodes clockwise from
//!   its token ([`Ring::preference_list`]). A write goes to every preferred replica that is up.
//!   For one that is down, with a **sloppy quorum** the write goes to the next healthy node
//!   past the preference list, which keeps it as a hint for the missing replica and counts
//!   towards W; with a **strict quorum** the coordinator keeps the hint and it does not count
//!   ([`plan_write`]).
//! * **Writes** ([`WriteTally`]) succeed once W targets that count have acknowledged, and fail
//!   once that can no longer happen (outcome unknown: the write may exist on fewer replicas and
//!   spread later). Preferred replicas that failed or did not answer get hints.
//! * **Reads** ([`ReadTally`]) succeed once R replicas answered; their objects merge by DVV
//!   `sync`, and every replica whose copy differs from the merge (older, missing, or holding
//!   only part of the siblings) is a read-repair target.

use dynacore_engine::Object;

pub use crate::cluster::replication::RF_DEFAULT;
use dynacore_proto::ring::{NodeId, Ring, Token};
use dynacore_proto::Quorum;

/// The default write quorum (capped at RF).
pub const W_DEFAULT: u8 = 2;
/// The default read quorum (capped at RF).
pub const R_DEFAULT: u8 = 2;

/// A quorum that cannot be met with this replication factor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumError(pub String);

impl std::fmt::Display for QuorumError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for QuorumError {}

/// How many replicas `q` asks for with `rf` replicas (`default` for [`Quorum::Default`]).
///
/// # Errors
/// [`QuorumError`] for a count outside `1..=rf`, or `rf` of 0.
pub fn required(q: Quorum, rf: u8, default: u8) -> Result<u8, QuorumError> {
    if rf == 0 {
        return Err(QuorumError(
            "the replication factor is at least 1".to_owned(),
        ));
    }
    match q {
        Quorum::Default => Ok(default.clamp(1, rf)),
        Quorum::Quorum => Ok(rf / 2 + 1),
        Quorum::All => Ok(rf),
        Quorum::Count(n) if (1..=rf).contains(&n) => Ok(n),
        Quorum::Count(n) => Err(QuorumError(format!(
            "{n} replicas asked for, outside 1..={rf} (the replication factor)"
        ))),
    }
}

/// Where one copy of a write goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// To the replica itself.
    Replica(NodeId),
    /// To `holder`, which keeps it as a hint for `replica` (sloppy quorum: it counts).
    Hinted {
        /// The node that stores the hint.
        holder: NodeId,
        /// The preferred replica it stands in for.
        replica: NodeId,
    },
}

impl Target {
    /// The node the message goes to.
    #[must_use]
    pub fn node(&self) -> NodeId {
        match *self {
            Target::Replica(n) | Target::Hinted { holder: n, .. } => n,
        }
    }
}

/// The targets of a write, and the replicas nothing could stand in for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WritePlan {
    /// Where copies go (each counts towards W).
    pub targets: Vec<Target>,
    /// Preferred replicas that are down and got no stand-in: the coordinator keeps a hint for
    /// each (it does not count towards W).
    pub uncovered: Vec<NodeId>,
}

/// Plans a write of `token` with `rf` replicas: the preferred replicas that are up, and for
/// each one that is down, with `sloppy`, the next healthy node past the preference list (in
/// ring order, each used once).
#[must_use]
pub fn plan_write(
    ring: &Ring,
    token: Token,
    rf: u8,
    sloppy: bool,
    is_up: impl Fn(NodeId) -> bool,
) -> WritePlan {
    let all = ring.preference_list(token, ring.node_count());
    let rf = usize::from(rf).min(all.len());
    let (preferred, rest) = all.split_at(rf);
    let mut spares = rest.iter().copied().filter(|&n| is_up(n));
    let mut plan = WritePlan {
        targets: Vec::with_capacity(rf),
        uncovered: Vec::new(),
    };
    for &replica in preferred {
        if is_up(replica) {
            plan.targets.push(Target::Replica(replica));
        } else if let Some(holder) = sloppy.then(|| spares.next()).flatten() {
            plan.targets.push(Target::Hinted { holder, replica });
        } else {
            plan.uncovered.push(replica);
        }
    }
    plan
}

/// What became of one target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Pending,
    Acked,
    Failed,
}

/// How a write or read ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<T> {
    /// Enough replicas answered.
    Done(T),
    /// Too few can still answer: `acks` of `required` (for a write, the outcome is unknown).
    Unavailable {
        /// Replicas that answered.
        acks: u8,
        /// Replicas that were required.
        required: u8,
    },
}

/// A write's progress towards W.
#[derive(Clone, Debug)]
pub struct WriteTally {
    required: u8,
    targets: Vec<(Target, Answer)>,
    uncovered: Vec<NodeId>,
}

impl WriteTally {
    /// Tracks `plan` until `w` targets acknowledge.
    #[must_use]
    pub fn new(plan: WritePlan, w: u8) -> WriteTally {
        WriteTally {
            required: w,
            targets: plan
                .targets
                .into_iter()
                .map(|t| (t, Answer::Pending))
                .collect(),
            uncovered: plan.uncovered,
        }
    }

    /// The targets, in plan order (an answer names its target by this index).
    #[must_use]
    pub fn targets(&self) -> Vec<Target> {
        self.targets.iter().map(|&(t, _)| t).collect()
    }

    /// Target `i` acknowledged.
    pub fn ack(&mut self, i: usize) {
        self.answer(i, Answer::Acked);
    }

    /// Target `i` failed, or its deadline passed.
    pub fn fail(&mut self, i: usize) {
        self.answer(i, Answer::Failed);
    }

    fn answer(&mut self, i: usize, a: Answer) {
        if let Some((_, slot)) = self.targets.get_mut(i) {
            // The first answer counts; a late duplicate changes nothing.
            if *slot == Answer::Pending {
                *slot = a;
            }
        }
    }

    /// Every target still pending has failed (the deadline passed).
    pub fn expire(&mut self) {
        for (_, slot) in &mut self.targets {
            if *slot == Answer::Pending {
                *slot = Answer::Failed;
            }
        }
    }

    fn count(&self, a: Answer) -> u8 {
        u8::try_from(self.targets.iter().filter(|&&(_, s)| s == a).count()).unwrap_or(u8::MAX)
    }

    /// Targets that have not answered yet.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.targets
            .iter()
            .filter(|&&(_, s)| s == Answer::Pending)
            .count()
    }

    /// `Some` once decided: `Done(acks)` at W acknowledgements, `Unavailable` once W can no
    /// longer be reached.
    #[must_use]
    pub fn outcome(&self) -> Option<Outcome<u8>> {
        let (acks, pending) = (self.count(Answer::Acked), self.count(Answer::Pending));
        if acks >= self.required {
            Some(Outcome::Done(acks))
        } else if acks.saturating_add(pending) < self.required {
            Some(Outcome::Unavailable {
                acks,
                required: self.required,
            })
        } else {
            None
        }
    }

    /// The preferred replicas that need a hint kept by the coordinator: those that were down
    /// with no stand-in, and those whose copy failed or did not answer (only once the write
    /// is decided or expired; a replica still pending may yet acknowledge).
    #[must_use]
    pub fn hints(&self) -> Vec<NodeId> {
        let mut out = self.uncovered.clone();
        for &(t, s) in &self.targets {
            if s == Answer::Failed {
                out.push(match t {
                    Target::Replica(n) | Target::Hinted { replica: n, .. } => n,
                });
            }
        }
        out
    }
}

/// A read's progress towards R, and the merge of what the replicas hold.
#[derive(Clone, Debug)]
pub struct ReadTally {
    required: u8,
    replicas: Vec<NodeId>,
    replies: Vec<Option<Option<Object>>>,
    failed: Vec<bool>,
}

impl ReadTally {
    /// Tracks a read sent to `replicas` until `r` answer.
    #[must_use]
    pub fn new(replicas: Vec<NodeId>, r: u8) -> ReadTally {
        let n = replicas.len();
        ReadTally {
            required: r,
            replicas,
            replies: vec![None; n],
            failed: vec![false; n],
        }
    }

    /// Replica `i` answered with its copy (`None`: it holds nothing for the key).
    pub fn reply(&mut self, i: usize, object: Option<Object>) {
        if let Some(slot) = self.replies.get_mut(i) {
            if slot.is_none() && !self.failed[i] {
                *slot = Some(object);
            }
        }
    }

    /// Replica `i` failed, or its deadline passed.
    pub fn fail(&mut self, i: usize) {
        if let Some(f) = self.failed.get_mut(i) {
            if self.replies[i].is_none() {
                *f = true;
            }
        }
    }

    /// Every replica that has not answered has failed (the deadline passed).
    pub fn expire(&mut self) {
        for i in 0..self.replicas.len() {
            self.fail(i);
        }
    }

    fn answered(&self) -> u8 {
        u8::try_from(self.replies.iter().filter(|r| r.is_some()).count()).unwrap_or(u8::MAX)
    }

    /// Replicas that have neither answered nor failed.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.replies
            .iter()
            .zip(&self.failed)
            .filter(|(r, f)| r.is_none() && !**f)
            .count()
    }

    /// The merge of every copy received so far (`None`: no replica holds the key).
    #[must_use]
    pub fn merged(&self) -> Option<Object> {
        self.replies
            .iter()
            .flatten()
            .flatten()
            .fold(None, |acc: Option<Object>, o| {
                Some(acc.map_or_else(|| o.clone(), |a| a.sync(o)))
            })
    }

    /// `Some` once decided: `Done(merge)` at R answers, `Unavailable` once R can no longer
    /// be reached.
    #[must_use]
    pub fn outcome(&self) -> Option<Outcome<Option<Object>>> {
        let answered = self.answered();
        let failed = u8::try_from(self.failed.iter().filter(|&&f| f).count()).unwrap_or(u8::MAX);
        let pending = u8::try_from(self.replicas.len())
            .unwrap_or(u8::MAX)
            .saturating_sub(answered)
            .saturating_sub(failed);
        if answered >= self.required {
            Some(Outcome::Done(self.merged()))
        } else if answered.saturating_add(pending) < self.required {
            Some(Outcome::Unavailable {
                acks: answered,
                required: self.required,
            })
        } else {
            None
        }
    }

    /// The replicas that answered with a copy that differs from `merged` (older, missing, or
    /// with other siblings): they get `merged` written back. Replicas that did not answer are
    /// not included (hints and anti-entropy cover them).
    #[must_use]
    pub fn repairs(&self, merged: Option<&Object>) -> Vec<NodeId> {
        let Some(merged) = merged else {
            return Vec::new();
        };
        self.replicas
            .iter()
            .zip(&self.replies)
            .filter_map(|(&node, reply)| match reply {
                Some(Some(copy)) if copy.equal(merged) => None,
                Some(_) => Some(node),
                None => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynacore_engine::version::{ActorId, HlcTimestamp, VersionVector};
    use dynacore_engine::Sibling;
    use proptest::prelude::*;

    fn ring(n: u64) -> Ring {
        let members: Vec<_> = (1..=n).map(|i| (NodeId(i), 64)).collect();
        Ring::new(&members).expect("ring")
    }

    #[test]
    fn quorums_resolve_against_the_replication_factor() {
        assert_eq!(required(Quorum::Default, 3, W_DEFAULT), Ok(2));
        assert_eq!(required(Quorum::Default, 1, W_DEFAULT), Ok(1));
        assert_eq!(required(Quorum::Quorum, 3, W_DEFAULT), Ok(2));
        assert_eq!(required(Quorum::Quorum, 5, W_DEFAULT), Ok(3));
        assert_eq!(required(Quorum::Quorum, 1, W_DEFAULT), Ok(1));
        assert_eq!(required(Quorum::All, 3, W_DEFAULT), Ok(3));
        assert_eq!(required(Quorum::Count(3), 3, W_DEFAULT), Ok(3));
        assert!(required(Quorum::Count(4), 3, W_DEFAULT).is_err());
        assert!(required(Quorum::Count(0), 3, W_DEFAULT).is_err());
        assert!(required(Quorum::All, 0, W_DEFAULT).is_err());
    }

    #[test]
    fn a_down_replica_gets_a_stand_in_only_with_a_sloppy_quorum() {
        let ring = ring(5);
        let token = Token(12_345);
        let all = ring.preference_list(token, 5);
        let down = all[1];
        let up = |n: NodeId| n != down;
        let sloppy = plan_write(&ring, token, 3, true, up);
        assert_eq!(
            sloppy.targets,
            vec![
                Target::Replica(all[0]),
                Target::Hinted {
                    holder: all[3],
                    replica: down
                },
                Target::Replica(all[2]),
            ]
        );
        assert!(sloppy.uncovered.is_empty());
        let strict = plan_write(&ring, token, 3, false, up);
        assert_eq!(
            strict.targets,
            vec![Target::Replica(all[0]), Target::Replica(all[2])]
        );
        assert_eq!(strict.uncovered, vec![down]);
        // No spare node left: the replica is uncovered even with a sloppy quorum.
        let small = self::ring(3);
        let all = small.preference_list(token, 3);
        let plan = plan_write(&small, token, 3, true, |n| n != all[0]);
        assert_eq!(plan.uncovered, vec![all[0]]);
        assert_eq!(plan.targets.len(), 2);
    }

    #[test]
    fn writes_decide_at_w_or_when_w_is_out_of_reach() {
        let ring = ring(3);
        let plan = plan_write(&ring, Token(7), 3, true, |_| true);
        let mut t = WriteTally::new(plan.clone(), 2);
        assert_eq!(t.outcome(), None);
        t.ack(0);
        assert_eq!(t.outcome(), None);
        t.fail(1);
        assert_eq!(t.outcome(), None, "one may still answer");
        t.ack(2);
        assert_eq!(t.outcome(), Some(Outcome::Done(2)));
        assert_eq!(t.hints(), vec![plan.targets[1].node()]);
        // Two failures of three with W=2: unavailable with one ack.
        let mut t = WriteTally::new(plan.clone(), 2);
        t.ack(0);
        t.fail(1);
        t.fail(2);
        t.ack(2); // late: ignored
        assert_eq!(
            t.outcome(),
            Some(Outcome::Unavailable {
                acks: 1,
                required: 2
            })
        );
        // Decided before every target answered: what is still pending is counted.
        let mut t = WriteTally::new(plan.clone(), 3);
        assert_eq!(t.pending(), 3);
        t.fail(0);
        assert!(matches!(t.outcome(), Some(Outcome::Unavailable { .. })));
        assert_eq!(t.pending(), 2);
        // The deadline: everything pending fails.
        let mut t = WriteTally::new(plan, 3);
        t.ack(0);
        t.expire();
        assert_eq!(t.pending(), 0);
        assert_eq!(
            t.outcome(),
            Some(Outcome::Unavailable {
                acks: 1,
                required: 3
            })
        );
        assert_eq!(t.hints().len(), 2);
    }

    fn object(actor: u64, value: &[u8], hlc: u64) -> Object {
        let sibling = Sibling {
            value: Some(value.to_vec()),
            hlc: HlcTimestamp::from_parts(hlc, 0),
            expiry_ms: None,
        };
        Object::update(&VersionVector::new(), sibling, None, ActorId::new(actor, 0))
            .expect("update")
    }

    #[test]
    fn reads_merge_and_repair_the_replicas_that_differ() {
        let a = object(1, b"a", 10);
        let nodes = vec![NodeId(1), NodeId(2), NodeId(3)];
        let mut t = ReadTally::new(nodes.clone(), 2);
        t.reply(0, Some(a.clone()));
        assert_eq!(t.outcome(), None);
        t.reply(1, None);
        let Some(Outcome::Done(merged)) = t.outcome() else {
            panic!("decided at R=2")
        };
        assert!(merged.as_ref().is_some_and(|m| m.equal(&a)));
        assert_eq!(t.repairs(merged.as_ref()), vec![NodeId(2)]);
        // Unavailable: two failures with R=2.
        let mut t = ReadTally::new(nodes, 2);
        assert_eq!(t.pending(), 3);
        t.reply(0, Some(a));
        t.fail(1);
        assert_eq!(t.pending(), 1);
        t.expire();
        assert_eq!(t.pending(), 0);
        assert_eq!(
            t.outcome(),
            Some(Outcome::Unavailable {
                acks: 1,
                required: 2
            })
        );
    }

    proptest! {
        /// A write plan never targets a node twice, covers every preferred replica exactly
        /// once (as a target or uncovered), and uses only nodes that are up.
        #[test]
        fn plans_cover_each_replica_once(nodes in 1u64..8, rf in 1u8..5, token: u64, down in prop::collection::vec(any::<bool>(), 8), sloppy: bool) {
            let ring = ring(nodes);
            let up = |n: NodeId| !down[usize::try_from(n.0 - 1).expect("small")];
            let plan = plan_write(&ring, Token(token), rf, sloppy, up);
            let preferred = ring.preference_list(Token(token), usize::from(rf));
            let mut sent: Vec<NodeId> = plan.targets.iter().map(Target::node).collect();
            prop_assert!(sent.iter().all(|&n| up(n)));
            sent.sort_unstable();
            let before = sent.len();
            sent.dedup();
            prop_assert_eq!(before, sent.len());
            let mut covered: Vec<NodeId> = plan
                .targets
                .iter()
                .map(|t| match *t { Target::Replica(n) | Target::Hinted { replica: n, .. } => n })
                .chain(plan.uncovered.iter().copied())
                .collect();
            covered.sort_unstable();
            let mut want = preferred.clone();
            want.sort_unstable();
            prop_assert_eq!(covered, want);
            if !sloppy {
                prop_assert!(plan.targets.iter().all(|t| matches!(t, Target::Replica(_))));
            }
        }

        /// Replicas holding different histories of a key (prefixes of a lineage and
        /// concurrent branches): the merge does not depend on the order of the replies, and
        /// after read repair (each repaired replica syncs the merge) every replica that
        /// answered holds it.
        #[test]
        fn read_merge_is_order_free_and_repair_converges(
            steps in prop::collection::vec((0u64..3, 0usize..4), 1..12),
            order in Just(vec![0usize, 1, 2]).prop_shuffle(),
        ) {
            // Three replicas start empty; each step writes through one of them (actor = the
            // replica), from the context it has, then maybe syncs another's copy in.
            let mut copies: Vec<Option<Object>> = vec![None, None, None];
            for (n, (actor, from)) in steps.into_iter().enumerate() {
                let i = usize::try_from(actor).expect("small");
                let local = copies[i].clone();
                let ctx = local.as_ref().map_or_else(VersionVector::new, Object::join);
                let sibling = Sibling {
                    value: Some(vec![u8::try_from(n).expect("small")]),
                    hlc: HlcTimestamp::from_parts(n as u64 + 1, 0),
                    expiry_ms: None,
                };
                let written = Object::update(&ctx, sibling, local.as_ref(), ActorId::new(actor + 1, 0)).expect("update");
                copies[i] = Some(written);
                if from < 3 && from != i {
                    if let (Some(a), Some(b)) = (copies[i].clone(), copies[from].clone()) {
                        copies[from] = Some(b.sync(&a));
                    }
                }
            }
            let nodes = vec![NodeId(1), NodeId(2), NodeId(3)];
            let mut in_order = ReadTally::new(nodes.clone(), 3);
            let mut shuffled = ReadTally::new(nodes, 3);
            for i in 0..3 {
                in_order.reply(i, copies[i].clone());
                shuffled.reply(order[i], copies[order[i]].clone());
            }
            let (a, b) = (in_order.merged(), shuffled.merged());
            prop_assert_eq!(a.is_some(), b.is_some());
            if let (Some(a), Some(b)) = (&a, &b) {
                prop_assert!(a.equal(b));
            }
            let repairs = in_order.repairs(a.as_ref());
            for (i, copy) in copies.iter().enumerate() {
                let node = NodeId(i as u64 + 1);
                let repaired = match (copy, &a) {
                    (Some(c), Some(m)) if repairs.contains(&node) => Some(c.sync(m)),
                    (None, Some(m)) if repairs.contains(&node) => Some(m.clone()),
                    (c, _) => c.clone(),
                };
                if let Some(m) = &a {
                    prop_assert!(repaired.as_ref().is_some_and(|r| r.equal(m)), "replica {} converged", i);
                }
            }
        }

        /// Whatever order answers come in, a write decides when W acks exist or W is out of
        /// reach, and never changes its mind; after the deadline it is always decided.
        #[test]
        fn write_decisions_are_final(w in 1u8..4, answers in prop::collection::vec((0usize..3, any::<bool>()), 0..10)) {
            let ring = ring(3);
            let plan = plan_write(&ring, Token(99), 3, false, |_| true);
            let mut t = WriteTally::new(plan, w);
            let mut decided: Option<Outcome<u8>> = None;
            for (i, ok) in answers {
                if ok { t.ack(i) } else { t.fail(i) }
                // Once decided, the kind of outcome never changes (late acks may add to a
                // success's count).
                if let Some(d) = &decided {
                    let now = t.outcome();
                    prop_assert!(matches!(
                        (d, &now),
                        (Outcome::Done(_), Some(Outcome::Done(_)))
                            | (Outcome::Unavailable { .. }, Some(Outcome::Unavailable { .. }))
                    ), "{:?} became {:?}", d, now);
                } else {
                    decided = t.outcome();
                }
            }
            t.expire();
            prop_assert!(t.outcome().is_some());
        }
    }
}
