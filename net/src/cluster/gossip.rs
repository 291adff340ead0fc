//! The membership driver: runs a [`Membership`] on one core (core 0) over UDP, with its timers
//! in one heap inside one task (foca needs every timer delivered, in order), and publishes
//! what it knows to the node's other cores as a snapshot ([`Members`]).
//!
//! The gossip socket is the node's binary address, over UDP (the same port number as the TCP
//! listener: the two do not collide).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use dynacore_runtime::{self as runtime, UdpSocket};

use crate::cluster::keeper::RingKeeper;
use crate::cluster::membership::{
    Members, Membership, MembershipTimer, NodeMeta, Output, SharedMembers, PACKET_BYTES_MAX,
    REANNOUNCE, REBROADCAST,
};
use crate::cluster::RingMember;
use dynacore_proto::auth::TAG_BYTES;
use dynacore_proto::{ClusterKey, Domain};

/// Asks the driver to do something.
#[derive(Debug)]
pub enum Control {
    /// Leave the cluster (announce it), then answer.
    Leave(flume::Sender<()>),
}

enum Input {
    Datagram(Vec<u8>),
    Control(Control),
    Digest(u64),
    Due,
}

/// Where the driver publishes what it learns.
#[derive(Debug)]
pub struct Publish {
    /// The membership snapshot.
    pub members: SharedMembers,
    /// The ring book (new members' addresses go in; the cluster state comes out).
    pub keeper: RingKeeper,
    /// The book's digest after each change (announced in this node's metadata).
    pub digests: flume::Receiver<u64>,
}

/// How datagrams are authenticated: every one carries a tag under the cluster secret, and one
/// whose tag does not check is dropped and counted.
pub struct Sealing {
    /// The cluster secret's key.
    pub key: ClusterKey,
    /// Counts a dropped datagram.
    pub refused: Box<dyn Fn()>,
}

impl std::fmt::Debug for Sealing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealing").finish_non_exhaustive()
    }
}

/// How often a dropped datagram is logged at most.
const REFUSED_LOG_EVERY: Duration = Duration::from_secs(10);

/// Runs the membership of `own` (gossiping on `socket`, joining through `seeds`) until the
/// task is dropped, publishing into `shared` after every change. Datagrams are sealed and
/// opened with `sealing`.
pub async fn run(
    socket: UdpSocket,
    own: NodeMeta,
    seeds: Vec<SocketAddr>,
    mut shared: Publish,
    control: flume::Receiver<Control>,
    sealing: Sealing,
) {
    let socket = Rc::new(socket);
    let (datagrams_tx, datagrams) = flume::bounded::<Vec<u8>>(1024);
    let key = sealing.key.clone();
    let _receiving = {
        let socket = socket.clone();
        runtime::spawn(async move {
            let mut buf = vec![0u8; PACKET_BYTES_MAX + TAG_BYTES + 1];
            let mut logged: Option<Instant> = None;
            loop {
                match socket.recv_from(&mut buf).await {
                    Ok((n, from)) => match sealing.key.open(Domain::Gossip, &buf[..n]) {
                        // A full queue means the actor is far behind: dropping is what UDP
                        // does.
                        Some(data) => {
                            let _ = datagrams_tx.try_send(data.to_vec());
                        }
                        None => {
                            (sealing.refused)();
                            if logged.is_none_or(|at| at.elapsed() >= REFUSED_LOG_EVERY) {
                                logged = Some(Instant::now());
                                tracing::warn!(
                                    %from,
                                    "dropped a gossip datagram whose tag does not match this \
                                     node's cluster secret (a node given another \
                                     --cluster-secret-file, or not a node): it cannot join \
                                     this cluster"
                                );
                            }
                        }
                    },
                    Err(e) => {
                        tracing::debug!(error = %e, "gossip receive failed");
                        runtime::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        })
    };
    let seed = own.node ^ own.generation.rotate_left(17);
    let mut membership = Membership::new(own, &seeds, seed);
    let mut timers: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut pending: HashMap<u64, MembershipTimer<crate::cluster::membership::MemberId>> =
        HashMap::new();
    let mut seq = 0u64;
    let mut next_reannounce = Instant::now() + REANNOUNCE;
    let mut next_rebroadcast = Instant::now() + REBROADCAST;
    let mut out = Vec::new();
    let mut published = None;
    // Datagrams handled in a row before timers get a turn (a flood must not starve them).
    let mut burst = 0u32;
    membership.start(&mut out);
    loop {
        for o in out.drain(..) {
            match o {
                Output::Send(to, data) => {
                    let data = key.seal(Domain::Gossip, &data);
                    if let Err(e) = socket.send_to(&data, to).await {
                        tracing::debug!(error = %e, %to, "gossip send failed");
                    }
                }
                Output::Schedule(after, timer) => {
                    seq += 1;
                    timers.push(Reverse((Instant::now() + after, seq)));
                    pending.insert(seq, timer);
                }
            }
        }
        if published != Some(membership.revision()) {
            published = Some(membership.revision());
            publish(&mut shared, &membership);
        }
        // Datagrams already here go first (an ack waiting in the queue must not lose to the
        // probe timer that would call its sender suspect), then control, then due timers.
        if burst < 64 {
            if let Ok(d) = datagrams.try_recv() {
                burst += 1;
                membership.handle_data(&d, &mut out);
                continue;
            }
        }
        burst = 0;
        if let Ok(digest) = shared.digests.try_recv() {
            membership.set_ring_digest(digest, &mut out);
            continue;
        }
        if let Ok(Control::Leave(done)) = control.try_recv() {
            leave(&socket, &key, &mut membership, &mut shared, &mut out).await;
            let _ = done.send(());
            continue;
        }
        // Every due timer, in deadline order.
        let now = Instant::now();
        if let Some(&Reverse((at, id))) = timers.peek() {
            if at <= now {
                timers.pop();
                if let Some(timer) = pending.remove(&id) {
                    membership.handle_timer(timer, &mut out);
                }
                continue;
            }
        }
        if now >= next_reannounce {
            next_reannounce = now + REANNOUNCE;
            membership.reannounce(&mut out);
            continue;
        }
        if now >= next_rebroadcast {
            next_rebroadcast = now + REBROADCAST;
            membership.rebroadcast(&mut out);
            continue;
        }
        let next = timers
            .peek()
            .map_or(next_reannounce, |&Reverse((at, _))| at)
            .min(next_reannounce)
            .min(next_rebroadcast);
        let wait = next.saturating_duration_since(now);
        let digests = shared.digests.clone();
        let input = futures_lite::FutureExt::or(
            futures_lite::FutureExt::or(
                futures_lite::FutureExt::or(
                    async {
                        match control.recv_async().await {
                            Ok(c) => Input::Control(c),
                            // Nobody can ask anything any more: keep gossiping.
                            Err(_) => std::future::pending().await,
                        }
                    },
                    async {
                        match digests.recv_async().await {
                            Ok(d) => Input::Digest(d),
                            Err(_) => std::future::pending().await,
                        }
                    },
                ),
                async {
                    datagrams
                        .recv_async()
                        .await
                        .map_or(Input::Due, Input::Datagram)
                },
            ),
            async {
                runtime::sleep(wait).await;
                Input::Due
            },
        )
        .await;
        match input {
            Input::Datagram(d) => membership.handle_data(&d, &mut out),
            Input::Control(Control::Leave(done)) => {
                leave(&socket, &key, &mut membership, &mut shared, &mut out).await;
                let _ = done.send(());
            }
            Input::Digest(d) => membership.set_ring_digest(d, &mut out),
            Input::Due => {}
        }
    }
}

/// Leaves the cluster and sends the news at once (the loop ignores input afterwards).
async fn leave(
    socket: &UdpSocket,
    key: &ClusterKey,
    membership: &mut Membership,
    shared: &mut Publish,
    out: &mut Vec<Output>,
) {
    membership.leave(out);
    for o in out.drain(..) {
        if let Output::Send(to, data) = o {
            let _ = socket.send_to(&key.seal(Domain::Gossip, &data), to).await;
        }
    }
    publish(shared, membership);
}

fn publish(shared: &mut Publish, m: &Membership) {
    let snapshot = Members {
        own: m.own().clone(),
        others: m.view(),
        stats: m.stats(),
    };
    // Every node heard with its metadata is in the book (its addresses; it enters the ring
    // only as the book's entries say).
    let heard: Vec<RingMember> = snapshot
        .others
        .iter()
        .filter_map(|v| v.meta.as_ref())
        .map(RingMember::of)
        .collect();
    let own_generation = snapshot.own.generation;
    if let Ok(mut slot) = shared.members.write() {
        *slot = Some(snapshot);
    }
    // A rejoin renews this node's generation: its own entry follows (else every book digest
    // would differ from its peers' for good).
    shared.keeper.edit(|b| b.set_own_generation(own_generation));
    if !shared.keeper.merge(&heard) {
        shared.keeper.republish();
    }
}
