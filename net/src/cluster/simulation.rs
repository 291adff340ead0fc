//! The cluster at scale, simulated: the node's own sans-IO membership ([`Membership`], SWIM
//! through foca) for every node, over a deterministic network and clock, and the ring's token
//! allocation ([`allocate_tokens`]) growing a ring join by join. Nothing is sent anywhere: the
//! addresses only name the simulated nodes.
//!
//! [`run`] measures what `docs/scale.md` reports, for any node count:
//! * **Formation**: nodes start 5 ms apart, each given the first three as seeds; the time until
//!   every node holds every other as up with its metadata.
//! * **Steady state**: datagrams and bytes each node sends per second (one probe period, the
//!   gossip round), the largest datagram, and the metadata each node keeps (the members'
//!   metadata it holds, and the ring: every node's tokens).
//! * **A join**: one more node starts; the time until every node holds it as up with its
//!   metadata.
//! * **A death**: a node stops answering; the time until every live node holds it as down.
//! * **A partition and its heal**: the nodes split in two halves until each half holds the
//!   other as down; then the network heals, and the time until every node holds every other as
//!   up again.
//! * **The ring**: grown by allocation one join at a time to `ring_nodes` nodes, its replicated
//!   ownership balance (max / mean) at each power of two and at the end, beside the balance of
//!   tokens derived from node ids (what rings had before allocation); and the share of all
//!   replicas that one join moves to the new node.
//!
//! Every figure is in simulated time and deterministic for a seed. Network latency is 1–5 ms.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use crate::cluster::membership::{
    MemberId, Membership, MembershipTimer, NodeMeta, NodeStatus, Output, REANNOUNCE, REBROADCAST,
};
use dynacore_proto::allocate_tokens;
use dynacore_proto::ring::{NodeId, Ring, Token};

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Nodes in the membership runs (a join then makes one more).
    pub nodes: usize,
    /// Nodes the ring is grown to by allocation.
    pub ring_nodes: usize,
    /// Vnodes per node.
    pub vnodes: u16,
    /// Replicas per key.
    pub rf: usize,
    /// Seeds the network's latencies, the probe orders and the allocation's ties.
    pub seed: u64,
    /// How long a convergence may take before it is reported as not reached.
    pub limit: Duration,
    /// Say on stderr what phase runs (long runs).
    pub verbose: bool,
}

impl SimOptions {
    /// The full run: 1,000 nodes.
    #[must_use]
    pub fn full() -> SimOptions {
        SimOptions {
            nodes: 1000,
            ring_nodes: 1000,
            vnodes: 256,
            rf: 3,
            seed: 1,
            limit: Duration::from_secs(300),
            verbose: false,
        }
    }

    /// The short run CI makes.
    #[must_use]
    pub fn short() -> SimOptions {
        SimOptions {
            nodes: 100,
            ring_nodes: 24,
            vnodes: 256,
            rf: 3,
            seed: 1,
            limit: Duration::from_secs(300),
            verbose: false,
        }
    }
}

/// The ring's balance at one size.
#[derive(Clone, Debug, PartialEq)]
pub struct RingPoint {
    /// Nodes.
    pub nodes: usize,
    /// Replicated ownership, max / mean, with allocated tokens.
    pub allocated: f64,
    /// The same with tokens derived from node ids.
    pub derived: f64,
}

/// What a run measured (times in simulated milliseconds; `None`: not reached within the limit).
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The options it ran with.
    pub nodes: usize,
    /// Every node holds every other as up, described.
    pub formation_ms: Option<u64>,
    /// Datagrams each node sends per second in steady state.
    pub packets_per_node_s: f64,
    /// Bytes each node sends per second (one probe period) in steady state.
    pub bytes_per_node_s: f64,
    /// The largest datagram sent.
    pub datagram_max: usize,
    /// One node's announced metadata, encoded.
    pub meta_bytes: usize,
    /// The metadata every node keeps of the others (their announced metadata).
    pub meta_table_bytes: usize,
    /// The ring every node keeps: every node's tokens (8 bytes each) at `ring_nodes`.
    pub ring_bytes: usize,
    /// A new node is held as up, described, by every node.
    pub join_ms: Option<u64>,
    /// A dead node is held as down by every live node.
    pub death_ms: Option<u64>,
    /// Each half of a partition holds the other as down.
    pub split_ms: Option<u64>,
    /// After the partition heals, every node holds every other as up again.
    pub heal_ms: Option<u64>,
    /// The ring's balance as it grew.
    pub ring: Vec<RingPoint>,
    /// The share of all replicas the last join moved to the new node.
    pub join_moves: f64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |v: Option<u64>| v.map_or_else(|| "not reached".to_owned(), |v| format!("{v} ms"));
        writeln!(f, "| {} nodes | |", self.nodes)?;
        writeln!(f, "| --- | --- |")?;
        writeln!(f, "| formation (all see all) | {} |", ms(self.formation_ms))?;
        writeln!(f, "| join seen by all | {} |", ms(self.join_ms))?;
        writeln!(f, "| death seen by all | {} |", ms(self.death_ms))?;
        writeln!(
            f,
            "| partition: halves see each other down | {} |",
            ms(self.split_ms)
        )?;
        writeln!(
            f,
            "| partition heal: all see all again | {} |",
            ms(self.heal_ms)
        )?;
        writeln!(
            f,
            "| steady state per node | {:.1} datagrams/s, {:.0} B/s (one probe period) |",
            self.packets_per_node_s, self.bytes_per_node_s
        )?;
        writeln!(f, "| largest datagram | {} B |", self.datagram_max)?;
        writeln!(
            f,
            "| metadata per node | {} B announced; {} B of members' metadata kept; ring {} B |",
            self.meta_bytes, self.meta_table_bytes, self.ring_bytes
        )?;
        for p in &self.ring {
            writeln!(
                f,
                "| ring of {} nodes: replicated ownership max/mean | allocated {:.4}, derived {:.4} |",
                p.nodes, p.allocated, p.derived
            )?;
        }
        writeln!(
            f,
            "| one join moves | {:.4} % of all replicas |",
            self.join_moves * 100.0
        )
    }
}

enum Event {
    Deliver {
        from: usize,
        to: SocketAddr,
        data: Vec<u8>,
    },
    Timer {
        node: usize,
        timer: MembershipTimer<MemberId>,
    },
    Duty {
        node: usize,
    },
    Rebroadcast {
        node: usize,
    },
}

struct SimNode {
    membership: Membership,
    alive: bool,
}

/// The simulated network and clock.
struct Net {
    now_ms: u64,
    seq: u64,
    rng: u64,
    events: BTreeMap<(u64, u64), Event>,
    nodes: Vec<SimNode>,
    by_addr: HashMap<SocketAddr, usize>,
    /// Each node's side while partitioned.
    side: Option<Vec<bool>>,
    packets: u64,
    bytes: u64,
    datagram_max: usize,
    /// Where the next convergence check starts.
    cursor: std::cell::Cell<usize>,
}

fn addr(i: usize) -> SocketAddr {
    let i = u32::try_from(i).unwrap_or(u32::MAX);
    // Loopback names; nothing is sent.
    SocketAddr::from(([127, 1, (i / 250) as u8, (i % 250 + 1) as u8], 7000))
}

fn meta(i: usize) -> NodeMeta {
    NodeMeta {
        node: 1000 + i as u64,
        generation: 1,
        version: 0,
        status: NodeStatus::Normal,
        shards: 16,
        vnodes: 256,
        binary: addr(i),
        http: SocketAddr::new(addr(i).ip(), 8000),
        gossip: addr(i),
        ring: 0,
    }
}

impl Net {
    fn new(seed: u64) -> Net {
        Net {
            now_ms: 0,
            seq: 0,
            rng: seed | 1,
            events: BTreeMap::new(),
            nodes: Vec::new(),
            by_addr: HashMap::new(),
            side: None,
            packets: 0,
            bytes: 0,
            datagram_max: 0,
            cursor: std::cell::Cell::new(0),
        }
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: deterministic, good enough for latencies.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn push(&mut self, at_ms: u64, e: Event) {
        self.seq += 1;
        self.events.insert((at_ms, self.seq), e);
    }

    fn add(&mut self, seeds: &[SocketAddr]) -> usize {
        let i = self.nodes.len();
        self.by_addr.insert(addr(i), i);
        let m = Membership::new(meta(i), seeds, self.random());
        self.nodes.push(SimNode {
            membership: m,
            alive: true,
        });
        let mut out = Vec::new();
        self.nodes[i].membership.start(&mut out);
        self.apply(i, out);
        let duty = self.now_ms + REANNOUNCE.as_millis() as u64;
        self.push(duty, Event::Duty { node: i });
        let rebroadcast = self.now_ms + REBROADCAST.as_millis() as u64;
        self.push(rebroadcast, Event::Rebroadcast { node: i });
        i
    }

    fn apply(&mut self, from: usize, out: Vec<Output>) {
        for o in out {
            match o {
                Output::Send(to, data) => {
                    self.packets += 1;
                    self.bytes += data.len() as u64;
                    self.datagram_max = self.datagram_max.max(data.len());
                    let delay = 1 + self.random() % 5;
                    self.push(self.now_ms + delay, Event::Deliver { from, to, data });
                }
                Output::Schedule(after, timer) => {
                    let at = self.now_ms + u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
                    self.push(at, Event::Timer { node: from, timer });
                }
            }
        }
    }

    fn step_until(&mut self, until_ms: u64) {
        while let Some((&(at, seq), _)) = self.events.iter().next() {
            if at > until_ms {
                break;
            }
            let Some(e) = self.events.remove(&(at, seq)) else {
                break;
            };
            self.now_ms = at;
            let mut out = Vec::new();
            let node = match e {
                Event::Deliver { from, to, data } => {
                    let Some(&i) = self.by_addr.get(&to) else {
                        continue;
                    };
                    let cut = self.side.as_ref().is_some_and(|s| s[i] != s[from]);
                    if !self.nodes[i].alive || !self.nodes[from].alive || cut {
                        continue;
                    }
                    self.nodes[i].membership.handle_data(&data, &mut out);
                    i
                }
                Event::Timer { node, timer } => {
                    if !self.nodes[node].alive {
                        continue;
                    }
                    self.nodes[node].membership.handle_timer(timer, &mut out);
                    node
                }
                Event::Duty { node } => {
                    if !self.nodes[node].alive {
                        continue;
                    }
                    self.nodes[node].membership.reannounce(&mut out);
                    let next = self.now_ms + REANNOUNCE.as_millis() as u64;
                    self.push(next, Event::Duty { node });
                    node
                }
                Event::Rebroadcast { node } => {
                    if !self.nodes[node].alive {
                        continue;
                    }
                    self.nodes[node].membership.rebroadcast(&mut out);
                    let next = self.now_ms + REBROADCAST.as_millis() as u64;
                    self.push(next, Event::Rebroadcast { node });
                    node
                }
            };
            self.apply(node, out);
        }
        self.now_ms = self.now_ms.max(until_ms);
    }

    /// Runs until `done` holds (checked every 100 ms of simulated time) or `limit` passes;
    /// the time it took.
    fn until(&mut self, limit: Duration, mut done: impl FnMut(&Net) -> bool) -> Option<u64> {
        let start = self.now_ms;
        let end = start + u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        loop {
            if done(self) {
                return Some(self.now_ms - start);
            }
            if self.now_ms >= end {
                return None;
            }
            self.step_until(self.now_ms + 100);
        }
    }

    fn live(&self) -> impl Iterator<Item = (usize, &SimNode)> {
        self.nodes.iter().enumerate().filter(|(_, n)| n.alive)
    }

    /// Every live node holds every other live node as up, described. The check starts from the
    /// node that failed it last (while most have converged, checking them all over again at
    /// every tick would cost more than the simulation).
    fn all_see_all(&self) -> bool {
        let live = self.live().count();
        let n = self.nodes.len();
        let start = self.cursor.get() % n.max(1);
        for k in 0..n {
            let i = (start + k) % n;
            let node = &self.nodes[i];
            if node.alive && node.membership.up_with_meta() < live - 1 {
                self.cursor.set(i);
                return false;
            }
        }
        true
    }

    /// Every live node other than `j` holds `j` as `up` (with its metadata, when up).
    fn all_see(&self, j: usize, up: bool) -> bool {
        self.live()
            .filter(|&(i, _)| i != j)
            .all(|(_, n)| match n.membership.sees(addr(j)) {
                Some((true, meta)) => up && meta,
                Some((false, _)) | None => !up,
            })
    }
}

/// Runs every measurement of `opts` (see the module documentation).
#[must_use]
pub fn run(opts: &SimOptions) -> Report {
    let started = std::time::Instant::now();
    let phase = |what: &str| {
        if opts.verbose {
            eprintln!("[{:>7.1} s] {what}", started.elapsed().as_secs_f64());
        }
    };
    let mut net = Net::new(opts.seed);
    phase("forming");
    let seeds: Vec<SocketAddr> = (0..opts.nodes.min(3)).map(addr).collect();
    for _ in 0..opts.nodes {
        net.add(&seeds);
        let next = net.now_ms + 5;
        net.step_until(next);
    }
    let formation_ms = net.until(opts.limit, Net::all_see_all);
    phase("steady state");
    // Steady state: ten seconds once the cluster has settled.
    let settle = net.now_ms + 10_000;
    net.step_until(settle);
    let (packets, bytes) = (net.packets, net.bytes);
    let window = net.now_ms + 10_000;
    net.step_until(window);
    #[allow(clippy::cast_precision_loss)]
    let per_node_s = |v: u64| v as f64 / opts.nodes as f64 / 10.0;
    let packets_per_node_s = per_node_s(net.packets - packets);
    let bytes_per_node_s = per_node_s(net.bytes - bytes);
    let meta_bytes = postcard::to_allocvec(&meta(opts.nodes))
        .map(|v| v.len())
        .unwrap_or(0);
    phase("a join");
    let new = net.add(&seeds);
    let join_ms = net.until(opts.limit, |n| n.all_see(new, true));
    phase("a death");
    let victim = opts.nodes / 2;
    net.nodes[victim].alive = false;
    let death_ms = net.until(opts.limit, |n| n.all_see(victim, false));
    net.nodes[victim].alive = true;
    net.nodes[victim].membership = Membership::new(meta(victim), &seeds, 99);
    let mut out = Vec::new();
    net.nodes[victim].membership.start(&mut out);
    net.apply(victim, out);
    net.until(opts.limit, Net::all_see_all);
    phase("a partition");
    let sides: Vec<bool> = (0..net.nodes.len()).map(|i| i % 2 == 0).collect();
    net.side = Some(sides.clone());
    let split_ms = net.until(opts.limit, |n| {
        n.live().all(|(i, node)| {
            (0..n.nodes.len())
                .filter(|&j| sides[j] != sides[i])
                .all(|j| !matches!(node.membership.sees(addr(j)), Some((true, _))))
        })
    });
    net.side = None;
    phase("the heal");
    let heal_ms = net.until(opts.limit, Net::all_see_all);
    phase("the ring");
    let (ring, join_moves) = grow_ring(opts);
    phase("done");
    Report {
        nodes: opts.nodes,
        formation_ms,
        packets_per_node_s,
        bytes_per_node_s,
        datagram_max: net.datagram_max,
        meta_bytes,
        meta_table_bytes: meta_bytes * opts.nodes,
        ring_bytes: opts.ring_nodes * usize::from(opts.vnodes) * 8,
        join_ms,
        death_ms,
        split_ms,
        heal_ms,
        ring,
        join_moves,
    }
}

/// Grows a ring by allocation to `opts.ring_nodes` nodes: its balance at each power of two and
/// at the end, and the share of replicas the last join moved.
fn grow_ring(opts: &SimOptions) -> (Vec<RingPoint>, f64) {
    let mut members: Vec<(NodeId, Vec<Token>)> = Vec::new();
    let mut points = Vec::new();
    let mut join_moves = 0.0;
    let mut ring: Option<Ring> = None;
    for i in 0..opts.ring_nodes {
        let id = NodeId(1000 + i as u64);
        let tokens = allocate_tokens(
            ring.as_ref(),
            id,
            "",
            opts.vnodes,
            opts.rf,
            opts.seed + i as u64,
        );
        members.push((id, tokens));
        let list: Vec<(NodeId, &[Token])> =
            members.iter().map(|(id, t)| (*id, t.as_slice())).collect();
        let grown = Ring::from_tokens(&list).expect("INVARIANT: allocated tokens make a ring");
        let n = members.len();
        if n == opts.ring_nodes || (n >= 4 && n.is_power_of_two()) {
            let owned = grown.replicated_ownership(opts.rf);
            let total: u128 = owned.values().sum();
            #[allow(clippy::cast_precision_loss)]
            if n == opts.ring_nodes && total > 0 {
                join_moves = owned[&id] as f64 / total as f64;
            }
            let derived_members: Vec<(NodeId, u16)> =
                members.iter().map(|(id, _)| (*id, opts.vnodes)).collect();
            let derived = Ring::new(&derived_members)
                .expect("INVARIANT: vnodes make a ring")
                .replicated_balance(opts.rf);
            points.push(RingPoint {
                nodes: n,
                allocated: grown.replicated_balance(opts.rf),
                derived,
            });
        }
        ring = Some(grown);
    }
    (points, join_moves)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The short mode CI runs (the full one, 1,000 nodes, is run by hand: docs/scale.md).
    #[test]
    fn a_hundred_nodes_form_and_notice_joins_deaths_and_partitions() {
        let report = run(&SimOptions::short());
        assert!(report.formation_ms.is_some(), "{report}");
        assert!(report.join_ms.is_some(), "{report}");
        assert!(report.death_ms.is_some(), "{report}");
        assert!(report.split_ms.is_some(), "{report}");
        assert!(report.heal_ms.is_some(), "{report}");
        assert!(report.datagram_max <= crate::cluster::membership::PACKET_BYTES_MAX);
        assert_eq!(report.ring.last().map(|p| p.nodes), Some(24));
        assert!(report.ring.iter().all(|p| p.allocated <= 1.10), "{report}");
        // A new node of 24 holds about RF/24 of the ring: a 24th of all replicas.
        assert!((0.03..0.06).contains(&report.join_moves), "{report}");
    }
}
