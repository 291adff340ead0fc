//! The SDK's API, written once over a [`Driver`] (the runtime that moves a request's bytes):
//! argument checks, routing, deadlines, which calls may be sent again, answer decoding, and
//! keeping the topology fresh. `crate::Client` (tokio) and `crate::glommio::Client` are this
//! type over their drivers.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use dynacore_proto::topology::ClusterView;
use dynacore_proto::{build, reply, Conflicts, KeyCondition, Quorum, ReadRepair, Version};
use dynacore_proto::{KEY_BYTES_MAX, VALUE_BYTES_MAX};

use crate::error::ClientError;

/// How a client behaves.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Deadline of each request (sent to the server too).
    pub timeout: Duration,
    /// Deadline of each connection attempt.
    pub connect_timeout: Duration,
    /// How often the topology is fetched again (it is also fetched soon after a node could not
    /// be reached).
    pub topology_refresh: Duration,
    /// Speak TLS to the nodes, trusting the certificates of this PEM CA bundle (each node's
    /// certificate must name its IP address). The glommio driver speaks TLS; the tokio driver
    /// refuses to connect with it set.
    pub tls_ca: Option<std::path::PathBuf>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            topology_refresh: Duration::from_secs(10),
            tls_ca: None,
        }
    }
}

/// A value as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    /// The bytes.
    pub value: Vec<u8>,
    /// Its version.
    pub version: Version,
    /// When it expires (ms since the Unix epoch), if it was written with a TTL.
    pub expiry_ms: Option<u64>,
}

/// Every concurrent value of a key, as [`Client::get_siblings`] read them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Siblings {
    /// The values, newest first.
    pub values: Vec<Vec<u8>>,
    /// The merged version: a write with it as context replaces them all.
    pub version: Version,
}

/// Options of a write.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    /// Expire the value after this long (to the millisecond; below one millisecond is refused).
    pub ttl: Option<Duration>,
    /// Write only if this is still the key's current version.
    pub expected: Option<Version>,
    /// Replicas that must acknowledge.
    pub w: Option<Quorum>,
    /// The version a read returned: the write replaces the values it covers (all siblings a
    /// [`Client::get_siblings`] returned), and values written concurrently stay as siblings.
    /// `None`: the write replaces what the coordinating replica holds.
    pub context: Option<Version>,
    /// Write only if the key holds no live value ([`KeyCondition::Absent`]) or only if it does
    /// ([`KeyCondition::Present`]). Like `expected`, it makes the write a lightweight
    /// transaction (a Paxos round among the key's replicas).
    pub condition: KeyCondition,
}

/// What every driver's client shares: its seeds and options, and the topology as last fetched.
#[derive(Debug)]
pub struct Common {
    seeds: Vec<SocketAddr>,
    options: ClientOptions,
    view: RwLock<Arc<ClusterView>>,
    fetched_at: Mutex<Instant>,
    /// A node could not be reached: fetch the topology at the next check.
    refresh_due: AtomicBool,
}

impl Common {
    /// The state of a client of `seeds` (at least one) that knows no topology yet.
    #[must_use]
    pub fn new(seeds: Vec<SocketAddr>, options: ClientOptions) -> Common {
        Common {
            seeds,
            options,
            view: RwLock::new(Arc::new(ClusterView::empty())),
            fetched_at: Mutex::new(Instant::now()),
            refresh_due: AtomicBool::new(false),
        }
    }

    /// The options.
    #[must_use]
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    fn view(&self) -> Arc<ClusterView> {
        self.view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_view(&self, view: ClusterView) {
        *self.view.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(view);
        *self
            .fetched_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.refresh_due.store(false, Ordering::Relaxed);
    }

    /// Whether the topology should be fetched again now.
    #[must_use]
    pub fn refresh_is_due(&self) -> bool {
        self.refresh_due.load(Ordering::Relaxed)
            || self
                .fetched_at
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .elapsed()
                >= self.options.topology_refresh
    }

    /// How long a driver's refresh task sleeps between checks of [`Common::refresh_is_due`].
    #[must_use]
    pub fn refresh_check_interval(&self) -> Duration {
        self.options
            .topology_refresh
            .min(Duration::from_millis(250))
    }
}

/// What a client needs of a runtime: one request's bytes sent and its answer's bytes back, and
/// a task that keeps the topology fresh.
pub trait Driver: Clone + Sized + 'static {
    /// A driver with no connection yet, around the client's shared state.
    fn new(common: Common) -> Self;

    /// The client's shared state.
    fn common(&self) -> &Common;

    /// Starts the task that runs [`refresh_loop`] for `client` on this runtime, holding it
    /// weakly (the task ends once every clone of the client is gone).
    fn keep_fresh(client: &Client<Self>);

    /// Sends the request `build` makes (given its id) to `addr` over a pooled connection and
    /// waits for its answer until `deadline`; never sends it twice.
    ///
    /// Errors: [`ClientError::Connect`] when no connection could be made (nothing was sent),
    /// [`ClientError::Io`] when the connection broke, [`ClientError::Timeout`],
    /// [`ClientError::InvalidArgument`] for a request over the frame limit.
    fn call_once(
        &self,
        addr: SocketAddr,
        build: &(dyn Fn(u64) -> Vec<u8> + Sync),
        deadline: Instant,
    ) -> impl Future<Output = Result<Vec<u8>, ClientError>>;

    /// Open connections.
    fn connections(&self) -> usize;
}

/// Whether a request may be sent again.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Resend {
    /// A read: once more on a fresh connection when its connection broke, and to the next
    /// replica when one cannot be reached or its fresh connection broke too.
    Idempotent,
    /// A write: only to the next replica when it was never sent (no connection could be made);
    /// once sent, its outcome is unknown and it is never sent again.
    WhenNotSent,
}

/// A client of a Dynacore cluster over driver `D` (see the crate documentation). Cheap to clone:
/// clones share connections and topology.
#[derive(Clone)]
pub struct Client<D: Driver> {
    driver: D,
}

impl<D: Driver> std::fmt::Debug for Client<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("seeds", &self.driver.common().seeds)
            .field("connections", &self.driver.connections())
            .finish_non_exhaustive()
    }
}

impl<D: Driver> Client<D> {
    /// Connects with the default options (see [`Client::connect_with`]).
    ///
    /// # Errors
    /// As [`Client::connect_with`].
    pub async fn connect(seeds: &[SocketAddr]) -> Result<Client<D>, ClientError> {
        Client::connect_with(seeds, ClientOptions::default()).await
    }

    /// Fetches the topology from the first of `seeds` that answers, and keeps it fresh in a task
    /// of the current runtime (for tokio: one with its time and I/O drivers enabled).
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] without seeds; the last seed's error when none
    /// answers.
    pub async fn connect_with(
        seeds: &[SocketAddr],
        options: ClientOptions,
    ) -> Result<Client<D>, ClientError> {
        if seeds.is_empty() {
            return Err(ClientError::InvalidArgument("no seed address".to_owned()));
        }
        let client = Client {
            driver: D::new(Common::new(seeds.to_vec(), options)),
        };
        client.refresh_topology().await?;
        D::keep_fresh(&client);
        Ok(client)
    }

    /// A client over `driver` as it is (for a driver's refresh task).
    pub(crate) fn wrap(driver: D) -> Client<D> {
        Client { driver }
    }

    /// The driver (for the refresh task).
    pub(crate) fn driver(&self) -> &D {
        &self.driver
    }

    /// Fetches the topology again from the seeds (it is also done on a timer, see
    /// [`ClientOptions::topology_refresh`], and soon after a node could not be reached).
    ///
    /// # Errors
    /// The last seed's error when none answers; [`ClientError::InvalidArgument`] without seeds.
    pub async fn refresh_topology(&self) -> Result<(), ClientError> {
        let common = self.driver.common();
        let mut last = ClientError::InvalidArgument("no seed address".to_owned());
        // The seeds first, then every node last seen (seeds may have left or moved).
        let known: Vec<SocketAddr> = {
            let view = common.view();
            view.nodes
                .iter()
                .filter_map(|n| n.host.parse::<std::net::IpAddr>().ok().map(|ip| (ip, n)))
                .filter(|(ip, _)| !ip.is_unspecified())
                .map(|(ip, n)| SocketAddr::new(ip, n.base_port))
                .collect()
        };
        let mut tried = Vec::new();
        for addr in common.seeds.iter().chain(&known) {
            if tried.contains(addr) {
                continue;
            }
            tried.push(*addr);
            let deadline = Instant::now() + common.options.timeout;
            let answer = self
                .call_resending(*addr, &build::topology, deadline)
                .await
                .and_then(|body| reply::topology(&body).map_err(ClientError::from));
            match answer {
                Ok(view) => {
                    common.set_view(view);
                    return Ok(());
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The cluster as last fetched.
    #[must_use]
    pub fn cluster(&self) -> ClusterView {
        ClusterView::clone(&self.driver.common().view())
    }

    /// The address of the core that holds `key` on its first replica not known to be down
    /// (the replica coordinates the request without a hop).
    #[must_use]
    pub fn route(&self, key: &[u8]) -> SocketAddr {
        self.routes(key)[0]
    }

    /// Where requests for `key` go, best first (never empty).
    fn routes(&self, key: &[u8]) -> Vec<SocketAddr> {
        let common = self.driver.common();
        common.view().routes(key, common.seeds[0])
    }

    /// The value of `key` and its version, or `None` when it is absent, deleted or expired.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn get(&self, key: &[u8]) -> Result<Option<Value>, ClientError> {
        self.consistent_get(key, Quorum::Default, ReadRepair::Default)
            .await
    }

    /// [`Client::get`] answered by `r` replicas, with the given read repair.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for a bad key or `r`; [`ClientError`].
    pub async fn consistent_get(
        &self,
        key: &[u8],
        r: Quorum,
        read_repair: ReadRepair,
    ) -> Result<Option<Value>, ClientError> {
        let found = self.read(key, r, read_repair, Conflicts::Default).await?;
        Ok(found.map(|f| Value {
            value: f.value,
            version: Version(f.version),
            expiry_ms: f.expiry_ms,
        }))
    }

    /// Every concurrent value of `key` (siblings, newest first) and one merged version to
    /// write back as a [`WriteOptions::context`] to replace them all; `None` when it is
    /// absent, deleted or expired.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for a bad key or `r`; [`ClientError`].
    pub async fn get_siblings(
        &self,
        key: &[u8],
        r: Quorum,
    ) -> Result<Option<Siblings>, ClientError> {
        let found = self
            .read(key, r, ReadRepair::Default, Conflicts::Siblings)
            .await?;
        Ok(found.map(|f| Siblings {
            values: f.siblings.into_iter().map(|(v, _)| v).collect(),
            version: Version(f.version),
        }))
    }

    /// One `Get` request and its answer, decoded.
    async fn read(
        &self,
        key: &[u8],
        r: Quorum,
        read_repair: ReadRepair,
        conflicts: Conflicts,
    ) -> Result<Option<reply::Found>, ClientError> {
        check_key(key)?;
        let r = self.quorum(r, "r")?;
        let timeout_ms = self.timeout_ms();
        let get = build::Get {
            key,
            r,
            read_repair: read_repair.to_wire(),
            conflicts: conflicts.to_wire(),
            timeout_ms,
        };
        let body = self
            .call(key, Resend::Idempotent, &|id| build::get_with(id, &get))
            .await?;
        Ok(reply::get(&body)?)
    }

    /// Stores `value` under `key`, replacing what it holds; returns the new version.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<Version, ClientError> {
        self.put_with(key, value, &WriteOptions::default()).await
    }

    /// [`Client::put`] acknowledged by `w` replicas.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for a bad `w`; [`ClientError`].
    pub async fn consistent_put(
        &self,
        key: &[u8],
        value: &[u8],
        w: Quorum,
    ) -> Result<Version, ClientError> {
        let options = WriteOptions {
            w: Some(w),
            ..WriteOptions::default()
        };
        self.put_with(key, value, &options).await
    }

    /// Stores `value` only if `key`'s current version is still `expected`.
    ///
    /// # Errors
    /// [`ClientError::ConditionFailed`] with the current version; [`ClientError`].
    pub async fn put_if(
        &self,
        key: &[u8],
        value: &[u8],
        expected: &Version,
    ) -> Result<Version, ClientError> {
        let options = WriteOptions {
            expected: Some(expected.clone()),
            ..WriteOptions::default()
        };
        self.put_with(key, value, &options).await
    }

    /// Stores `value` under `key` with a TTL, a condition and a write quorum as given.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn put_with(
        &self,
        key: &[u8],
        value: &[u8],
        options: &WriteOptions,
    ) -> Result<Version, ClientError> {
        check_key(key)?;
        if value.len() > VALUE_BYTES_MAX {
            return Err(ClientError::InvalidArgument(format!(
                "a value holds at most {VALUE_BYTES_MAX} bytes, not {}",
                value.len()
            )));
        }
        let ttl_ms = match options.ttl {
            None => 0,
            Some(t) if t.as_millis() == 0 => {
                return Err(ClientError::InvalidArgument(
                    "a TTL is at least one millisecond".to_owned(),
                ))
            }
            Some(t) => u64::try_from(t.as_millis()).unwrap_or(u64::MAX),
        };
        let put = build::Put {
            key,
            value,
            ttl_ms,
            expected_version: options.expected.as_ref().map(|v| v.0.as_slice()),
            w: self.quorum(options.w.unwrap_or(Quorum::Default), "w")?,
            timeout_ms: self.timeout_ms(),
            context: options.context.as_ref().map(|v| v.0.as_slice()),
            forwarded: false,
            condition: options.condition.to_wire(),
        };
        let body = self
            .call(key, Resend::WhenNotSent, &|id| build::put(id, &put))
            .await?;
        Ok(Version(reply::written(&body)?))
    }

    /// Deletes `key` (writes a tombstone); returns the tombstone's version.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn delete(&self, key: &[u8]) -> Result<Version, ClientError> {
        self.delete_with(key, &WriteOptions::default()).await
    }

    /// Deletes `key` under a condition and a write quorum (a TTL is refused).
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn delete_with(
        &self,
        key: &[u8],
        options: &WriteOptions,
    ) -> Result<Version, ClientError> {
        check_key(key)?;
        if options.ttl.is_some() {
            return Err(ClientError::InvalidArgument(
                "a delete has no TTL".to_owned(),
            ));
        }
        if options.condition != KeyCondition::None {
            return Err(ClientError::InvalidArgument(
                "a delete takes a version condition only".to_owned(),
            ));
        }
        let delete = build::Delete {
            key,
            expected_version: options.expected.as_ref().map(|v| v.0.as_slice()),
            w: self.quorum(options.w.unwrap_or(Quorum::Default), "w")?,
            timeout_ms: self.timeout_ms(),
            context: options.context.as_ref().map(|v| v.0.as_slice()),
            forwarded: false,
        };
        let body = self
            .call(key, Resend::WhenNotSent, &|id| {
                build::delete_with(id, &delete)
            })
            .await?;
        Ok(Version(reply::written(&body)?))
    }

    /// Round-trip time to `addr` (any node's port).
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn ping(&self, addr: SocketAddr) -> Result<Duration, ClientError> {
        let started = Instant::now();
        let payload: u64 = rand::random();
        let deadline = started + self.driver.common().options.timeout;
        let body = self
            .call_resending(addr, &|id| build::ping(id, payload), deadline)
            .await?;
        if reply::ping(&body)? == payload {
            Ok(started.elapsed())
        } else {
            Err(ClientError::Protocol(
                "ping answered with another payload".into(),
            ))
        }
    }

    /// The deadline sent to the server: a little shorter than the client's own, so that the
    /// server's `Timeout` answer arrives before the client gives up.
    fn timeout_ms(&self) -> u32 {
        let ms = self.driver.common().options.timeout.as_millis();
        u32::try_from(ms - (ms / 10).min(100))
            .unwrap_or(u32::MAX)
            .max(1)
    }

    fn quorum(
        &self,
        q: Quorum,
        name: &str,
    ) -> Result<Option<dynacore_proto::fb::Quorum>, ClientError> {
        let rf = self.driver.common().view().replication_factor;
        q.to_wire(rf, name).map_err(ClientError::InvalidArgument)
    }

    /// Sends a request for `key` to its replicas in route order, as far as `resend` allows.
    async fn call(
        &self,
        key: &[u8],
        resend: Resend,
        build: &(dyn Fn(u64) -> Vec<u8> + Sync),
    ) -> Result<Vec<u8>, ClientError> {
        let common = self.driver.common();
        let deadline = Instant::now() + common.options.timeout;
        let mut last = None;
        for addr in self.routes(key) {
            let result = match resend {
                Resend::Idempotent => self.call_resending(addr, build, deadline).await,
                Resend::WhenNotSent => self.driver.call_once(addr, build, deadline).await,
            };
            // A node that cannot be reached: the view may be stale. A read also moves on when
            // its connection broke on the fresh try too (the node died after accepting it).
            let next = |e: &ClientError| {
                e.is_not_sent() || (resend == Resend::Idempotent && matches!(e, ClientError::Io(_)))
            };
            match result {
                Err(e) if next(&e) && Instant::now() < deadline => {
                    common.refresh_due.store(true, Ordering::Relaxed);
                    last = Some(e);
                }
                other => return other,
            }
        }
        Err(last.unwrap_or(ClientError::Timeout))
    }

    /// An idempotent request to `addr`, sent once more on a fresh connection when the pooled one
    /// turns out to be broken (the node restarted since it was opened).
    async fn call_resending(
        &self,
        addr: SocketAddr,
        build: &(dyn Fn(u64) -> Vec<u8> + Sync),
        deadline: Instant,
    ) -> Result<Vec<u8>, ClientError> {
        match self.driver.call_once(addr, build, deadline).await {
            Err(ClientError::Io(_)) => self.driver.call_once(addr, build, deadline).await,
            other => other,
        }
    }
}

fn check_key(key: &[u8]) -> Result<(), ClientError> {
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err(ClientError::InvalidArgument(format!(
            "a key holds 1 to {KEY_BYTES_MAX} bytes, not {}",
            key.len()
        )));
    }
    Ok(())
}

/// Fetches the topology whenever it is due, until `alive` says the client is gone. Drivers run
/// it as a task, with `sleep` their runtime's timer.
pub async fn refresh_loop<D, S, F>(
    mut alive: impl FnMut() -> Option<Client<D>>,
    sleep: S,
    check_every: Duration,
) where
    D: Driver,
    S: Fn(Duration) -> F,
    F: Future<Output = ()>,
{
    loop {
        sleep(check_every).await;
        let Some(client) = alive() else { return };
        if client.driver().common().refresh_is_due() {
            // A failure leaves the last view in place; the next check tries again.
            let _ = client.refresh_topology().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynacore_proto::topology::NodeDesc;
    use dynacore_proto::{NodeId, Ring, ShardMap};
    use std::collections::BTreeMap;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    /// A driver whose nodes are scripted: requests to `broken` addresses lose their connection
    /// after being sent; the others answer with the request's bytes.
    #[derive(Clone)]
    struct Scripted {
        common: Arc<Common>,
        broken: Arc<Vec<SocketAddr>>,
        sent: Arc<Mutex<Vec<SocketAddr>>>,
    }

    impl Driver for Scripted {
        fn new(common: Common) -> Self {
            Scripted {
                common: Arc::new(common),
                broken: Arc::new(Vec::new()),
                sent: Arc::new(Mutex::new(Vec::new())),
            }
        }

        fn common(&self) -> &Common {
            &self.common
        }

        fn keep_fresh(_client: &Client<Self>) {}

        async fn call_once(
            &self,
            addr: SocketAddr,
            build: &(dyn Fn(u64) -> Vec<u8> + Sync),
            _deadline: Instant,
        ) -> Result<Vec<u8>, ClientError> {
            self.sent.lock().expect("lock").push(addr);
            if self.broken.contains(&addr) {
                Err(ClientError::broken(
                    "the connection closed before the answer came",
                ))
            } else {
                Ok(build(7))
            }
        }

        fn connections(&self) -> usize {
            0
        }
    }

    /// Runs a future that never waits (the scripted driver answers at once).
    fn ready<T>(f: impl Future<Output = T>) -> T {
        match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("the scripted driver never waits"),
        }
    }

    /// Three nodes on loopback, every key on all three; requests to the key's first route break.
    fn three_nodes_first_broken(key: &[u8]) -> (Client<Scripted>, Vec<SocketAddr>) {
        let ids = [NodeId(1), NodeId(2), NodeId(3)];
        let nodes: Vec<NodeDesc> = ids
            .iter()
            .zip([7100u16, 7200, 7300])
            .map(|(&id, base_port)| NodeDesc {
                id,
                host: "127.0.0.1".to_owned(),
                base_port,
                shards: 1,
            })
            .collect();
        let view = ClusterView {
            ring: Ring::new(&ids.map(|id| (id, 8))).expect("ring"),
            shard_maps: ids
                .iter()
                .map(|&id| (id, ShardMap::new(id, 8, 1)))
                .collect::<BTreeMap<_, _>>(),
            nodes,
            members: Vec::new(),
            replication_factor: 3,
        };
        let seed: SocketAddr = "127.0.0.1:7100".parse().expect("addr");
        let mut driver = Scripted::new(Common::new(vec![seed], ClientOptions::default()));
        driver.common.set_view(view);
        let client = Client::wrap(driver.clone());
        let routes = client.routes(key);
        assert_eq!(routes.len(), 3);
        driver.broken = Arc::new(vec![routes[0]]);
        (Client::wrap(driver), routes)
    }

    #[test]
    fn a_read_whose_connection_breaks_twice_goes_to_the_next_replica() {
        let (client, routes) = three_nodes_first_broken(b"k");
        let body = ready(client.call(b"k", Resend::Idempotent, &|id| vec![id as u8]))
            .expect("the next replica answers");
        assert_eq!(body, vec![7]);
        // Once more on a fresh connection to the first, then the second.
        let sent = client.driver.sent.lock().expect("lock").clone();
        assert_eq!(sent, vec![routes[0], routes[0], routes[1]]);
    }

    #[test]
    fn a_write_whose_connection_broke_is_never_sent_again() {
        let (client, routes) = three_nodes_first_broken(b"k");
        let got = ready(client.call(b"k", Resend::WhenNotSent, &|id| vec![id as u8]));
        assert!(matches!(got, Err(ClientError::Io(_))), "{got:?}");
        let sent = client.driver.sent.lock().expect("lock").clone();
        assert_eq!(sent, vec![routes[0]]);
    }
}
