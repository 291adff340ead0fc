//! The Rust client SDK for the binary protocol.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dynacore_net::client::ClientError> {
//! use dynacore_net::client::{Client, Quorum, ReadRepair};
//! let client = Client::connect(&["127.0.0.1:7400".parse().unwrap()]).await?;
//! let version = client.put(b"user:1", b"Ada").await?;
//! let got = client.consistent_get(b"user:1", Quorum::Quorum, ReadRepair::Default).await?;
//! assert_eq!(got.map(|v| v.value), Some(b"Ada".to_vec()));
//! // Optimistic locking: only if nobody wrote since.
//! client.put_if(b"user:1", b"Ada Lovelace", &version).await?;
//! # Ok(()) }
//! ```
//!
//! * **Runs on a glommio executor** (Dynacore's [`runtime`](dynacore_engine::runtime)), like
//!   the node: a [`Client`] is `!Send` and belongs to the executor that made it. One executor
//!   per thread, one client per executor.
//! * **Token- and shard-aware.** [`Client::connect`] fetches the topology from the first seed
//!   that answers (nodes, their core counts, the ring) and sends each request straight to the
//!   port of the core that owns the key (`base_port + 1 + shard`), so no request is forwarded
//!   between cores.
//! * **Pipelined.** Requests are futures: many may be in flight on one connection at once
//!   (each carries an id; answers come back in any order). Run them concurrently (for example
//!   with `futures_lite::future::zip`, or tasks) to pipeline.
//! * **Timeouts.** Every request has a deadline ([`ClientOptions::timeout`]), which is also sent
//!   to the server. A write that times out has an *unknown* outcome.
//! * **Retries only where safe.** A read, ping or topology request whose connection breaks is
//!   retried once on a fresh connection; puts and deletes are never retried.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use dynacore_engine::runtime::{self, TcpReader, TcpStream, TcpWriter};
use dynacore_engine::{Token, KEY_BYTES_MAX, VALUE_BYTES_MAX};

use crate::dispatch::NodeDesc;
pub use crate::http::{Quorum, ReadRepair};
use crate::protocol::{
    build, encode_frame, fb, frame_len, parse_response, FRAME_BYTES_MAX, FRAME_HEADER_BYTES,
};
use crate::ring::{NodeId, Ring, ShardMap, Vnode};

/// How a client behaves.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Deadline of each request (sent to the server too).
    pub timeout: Duration,
    /// Deadline of each connection attempt.
    pub connect_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// An opaque version of a value, as a read or write returned it; give it back for a
/// conditional write. Shown (and parsed) as hex, as the HTTP API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Version(pub Vec<u8>);

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::http::version_to_hex(&self.0))
    }
}

impl std::str::FromStr for Version {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        crate::http::version_from_hex(s)
            .map(Version)
            .map_err(|e| ClientError::InvalidArgument(e.message()))
    }
}

/// A value as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    /// The bytes.
    pub value: Vec<u8>,
    /// Its version.
    pub version: Version,
}

/// A `Get`'s answer, decoded.
struct Read {
    value: Vec<u8>,
    version: Version,
    siblings: Vec<Vec<u8>>,
}

/// Every concurrent value of a key, as [`Client::get_siblings`] read them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Siblings {
    /// The values, newest first.
    pub values: Vec<Vec<u8>>,
    /// The merged version: a write with it as context replaces them all.
    pub version: Version,
}

/// The server's error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The key is empty or longer than 256 bytes.
    InvalidKey,
    /// The value is longer than 10 MiB.
    ValueTooLarge,
    /// The expected version is not the current one.
    ConditionFailed,
    /// The server sheds load.
    Overloaded,
    /// Too few replicas answered (a write's outcome is unknown).
    Unavailable,
    /// The server's deadline passed (a write's outcome is unknown).
    Timeout,
    /// The request does not make sense.
    BadRequest,
    /// The server failed.
    Internal,
    /// A code this client does not know.
    Unknown(u16),
}

impl From<fb::ErrorCode> for ErrorCode {
    fn from(c: fb::ErrorCode) -> Self {
        match c {
            fb::ErrorCode::InvalidKey => ErrorCode::InvalidKey,
            fb::ErrorCode::ValueTooLarge => ErrorCode::ValueTooLarge,
            fb::ErrorCode::ConditionFailed => ErrorCode::ConditionFailed,
            fb::ErrorCode::Overloaded => ErrorCode::Overloaded,
            fb::ErrorCode::Unavailable => ErrorCode::Unavailable,
            fb::ErrorCode::Timeout => ErrorCode::Timeout,
            fb::ErrorCode::BadRequest => ErrorCode::BadRequest,
            fb::ErrorCode::Internal => ErrorCode::Internal,
            other => ErrorCode::Unknown(other.0),
        }
    }
}

/// Why a request failed.
#[derive(Debug)]
pub enum ClientError {
    /// No seed or node could be reached.
    Connect {
        /// The address tried last.
        addr: SocketAddr,
        /// What happened.
        source: io::Error,
    },
    /// The connection broke while the request was in flight (a write's outcome is unknown).
    Io(io::Error),
    /// No answer within the deadline (a write's outcome is unknown).
    Timeout,
    /// Refused before sending: the key, value or quorum is out of range.
    InvalidArgument(String),
    /// The conditional write's version is not the current one.
    ConditionFailed {
        /// The current version.
        current: Version,
    },
    /// The server answered with an error.
    Server {
        /// What kind.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
        /// Replicas that acknowledged (for [`ErrorCode::Unavailable`]).
        acks: u8,
        /// Replicas that were required.
        required: u8,
    },
    /// The server's answer could not be understood.
    Protocol(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect { addr, source } => {
                write!(f, "cannot connect to {addr}: {source}")
            }
            ClientError::Io(e) => write!(f, "connection failed: {e}"),
            ClientError::Timeout => f.write_str("no answer within the deadline"),
            ClientError::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            ClientError::ConditionFailed { current } => {
                write!(f, "condition failed: the current version is {current}")
            }
            ClientError::Server { code, message, .. } => write!(f, "{code:?}: {message}"),
            ClientError::Protocol(m) => write!(f, "protocol error: {m}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// Options of a write.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    /// Expire the value after this long (whole seconds; below one second is refused).
    pub ttl: Option<Duration>,
    /// Write only if this is still the key's current version.
    pub expected: Option<Version>,
    /// Replicas that must acknowledge.
    pub w: Option<Quorum>,
    /// The version a read returned: the write replaces the values it covers (all siblings a
    /// [`Client::get_siblings`] returned), and values written concurrently stay as siblings.
    /// `None`: the write replaces what the coordinating replica holds.
    pub context: Option<Version>,
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

/// One open connection: a writer task fed by a queue, a reader task that hands each answer to
/// the request waiting for its id.
struct Conn {
    frames: flume::Sender<Vec<u8>>,
    pending: Pending,
    broken: Rc<Cell<bool>>,
    /// When the last answer arrived on it.
    last_answer: Rc<Cell<Instant>>,
    _tasks: [runtime::Task<()>; 2],
}

/// Requests waiting for their answer on one connection, by id.
type Pending = Rc<RefCell<HashMap<u64, flume::Sender<Vec<u8>>>>>;

/// Removes a request's pending entry when its call ends, however it ends (answered, timed
/// out, or the caller dropped the future).
struct PendingGuard<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.pending.borrow_mut().remove(&self.id);
    }
}

impl Conn {
    async fn open(
        addr: SocketAddr,
        from: Option<IpAddr>,
        timeout: Duration,
    ) -> Result<Conn, ClientError> {
        let stream = match from {
            Some(ip) => TcpStream::connect_from(ip, addr, timeout).await,
            None => TcpStream::connect(addr, timeout).await,
        }
        .map_err(|source| ClientError::Connect { addr, source })?;
        let (reader, writer) = stream.split();
        let (frames, queue) = flume::unbounded();
        let pending: Pending = Rc::new(RefCell::new(HashMap::new()));
        let broken = Rc::new(Cell::new(false));
        let last_answer = Rc::new(Cell::new(Instant::now()));
        let writing = runtime::spawn(write_frames(writer, queue, pending.clone(), broken.clone()));
        let reading = runtime::spawn(read_frames(
            reader,
            pending.clone(),
            broken.clone(),
            last_answer.clone(),
        ));
        Ok(Conn {
            frames,
            pending,
            broken,
            last_answer,
            _tasks: [writing, reading],
        })
    }
}

async fn write_frames(
    mut w: TcpWriter,
    queue: flume::Receiver<Vec<u8>>,
    pending: Pending,
    broken: Rc<Cell<bool>>,
) {
    let mut batch = Vec::new();
    while let Ok(first) = queue.recv_async().await {
        batch.clear();
        batch.extend_from_slice(&first);
        while batch.len() < (256 << 10) {
            match queue.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if w.write_all(&batch).await.is_err() {
            // Every request waiting on this connection learns it is gone.
            broken.set(true);
            pending.borrow_mut().clear();
            return;
        }
        if batch.capacity() > (1 << 20) {
            batch = Vec::new();
        }
    }
}

async fn read_frames(
    mut r: TcpReader,
    pending: Pending,
    broken: Rc<Cell<bool>>,
    last_answer: Rc<Cell<Instant>>,
) {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    loop {
        if r.read_exact(&mut header).await.is_err() {
            break;
        }
        let Ok(len) = frame_len(header) else { break };
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).await.is_err() {
            break;
        }
        let Ok(id) = parse_response(&body).map(|resp| resp.id()) else {
            break;
        };
        last_answer.set(Instant::now());
        // An answer nobody waits for any more (timed out) is dropped.
        if let Some(waiter) = pending.borrow_mut().remove(&id) {
            let _ = waiter.send(body);
        }
    }
    // Every request still waiting learns the connection is gone.
    broken.set(true);
    pending.borrow_mut().clear();
}

/// Open connections to any number of servers, one per address, each carrying many requests
/// at once (matched by id). The client SDK routes through one; each core of a node keeps one
/// to its peers.
pub struct ConnPool {
    connect_timeout: Duration,
    /// The local address connections come from (`None`: the system's choice).
    source: Option<IpAddr>,
    conns: RefCell<HashMap<SocketAddr, Rc<Conn>>>,
    next_id: Cell<u64>,
}

impl fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnPool")
            .field("connections", &self.conns.borrow().len())
            .finish_non_exhaustive()
    }
}

impl ConnPool {
    /// A pool whose connection attempts give up after `connect_timeout`.
    #[must_use]
    pub fn new(connect_timeout: Duration) -> ConnPool {
        ConnPool {
            connect_timeout,
            source: None,
            conns: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
        }
    }

    /// The same pool, its connections made from local address `ip`.
    #[must_use]
    pub fn from_source(mut self, ip: IpAddr) -> ConnPool {
        self.source = Some(ip);
        self
    }

    /// Open connections.
    #[must_use]
    pub fn len(&self) -> usize {
        self.conns.borrow().len()
    }

    /// Whether no connection is open.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    async fn conn(&self, addr: SocketAddr) -> Result<Rc<Conn>, ClientError> {
        if let Some(c) = self.conns.borrow().get(&addr) {
            if !c.broken.get() {
                return Ok(c.clone());
            }
        }
        let conn = Rc::new(Conn::open(addr, self.source, self.connect_timeout).await?);
        // Another request may have connected meanwhile: keep one.
        let mut conns = self.conns.borrow_mut();
        match conns.get(&addr) {
            Some(c) if !c.broken.get() => Ok(c.clone()),
            _ => {
                conns.insert(addr, conn.clone());
                Ok(conn)
            }
        }
    }

    /// Sends the request `build` makes (given its id) to `addr` and waits for its answer until
    /// `deadline`; never retries.
    ///
    /// # Errors
    /// [`ClientError::Connect`], [`ClientError::Io`] when the connection breaks,
    /// [`ClientError::Timeout`], [`ClientError::InvalidArgument`] for a request over the
    /// frame limit.
    pub async fn call_once(
        &self,
        addr: SocketAddr,
        build: &impl Fn(u64) -> Vec<u8>,
        deadline: Instant,
    ) -> Result<Vec<u8>, ClientError> {
        let left = deadline.saturating_duration_since(Instant::now());
        let conn = runtime::timeout(left, self.conn(addr))
            .await
            .ok_or(ClientError::Timeout)??;
        let id = self.next_id.get();
        self.next_id.set(id.wrapping_add(1));
        let body = build(id);
        if body.len() > FRAME_BYTES_MAX {
            return Err(ClientError::InvalidArgument(format!(
                "the request is {} bytes, over the {FRAME_BYTES_MAX}-byte frame limit",
                body.len()
            )));
        }
        let mut frame = Vec::with_capacity(body.len() + FRAME_HEADER_BYTES);
        encode_frame(&body, &mut frame);
        let (tx, rx) = flume::bounded(1);
        conn.pending.borrow_mut().insert(id, tx);
        let _guard = PendingGuard {
            pending: &conn.pending,
            id,
        };
        let sent_at = Instant::now();
        if conn.frames.send(frame).is_err() || conn.broken.get() {
            return Err(ClientError::Io(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the connection is closed",
            )));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match runtime::timeout(left, rx.recv_async()).await {
            Some(Ok(body)) => Ok(body),
            Some(Err(_)) => Err(ClientError::Io(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the connection closed before the answer came",
            ))),
            None => {
                // Nothing at all came back on this connection since the request went out: the
                // peer may be gone without a reset. The next request opens a new connection.
                if conn.last_answer.get() < sent_at {
                    conn.broken.set(true);
                }
                Err(ClientError::Timeout)
            }
        }
    }
}

struct Inner {
    seeds: Vec<SocketAddr>,
    options: ClientOptions,
    view: RefCell<ClusterView>,
    pool: ConnPool,
}

/// A connection pool to a Dynacore cluster (see the module documentation).
#[derive(Clone)]
pub struct Client(Rc<Inner>);

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("seeds", &self.0.seeds)
            .field("connections", &self.0.pool.len())
            .finish_non_exhaustive()
    }
}

/// Whether a request may be sent again after its connection broke.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    Once,
    Never,
}

impl Client {
    /// Connects with the default options (see [`Client::connect_with`]).
    ///
    /// # Errors
    /// As [`Client::connect_with`].
    pub async fn connect(seeds: &[SocketAddr]) -> Result<Client, ClientError> {
        Client::connect_with(seeds, ClientOptions::default()).await
    }

    /// Fetches the topology from the first of `seeds` that answers.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] without seeds; the last seed's error when none
    /// answers.
    pub async fn connect_with(
        seeds: &[SocketAddr],
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let Some(&first) = seeds.first() else {
            return Err(ClientError::InvalidArgument("no seed address".to_owned()));
        };
        let placeholder = ClusterView {
            nodes: Vec::new(),
            members: Vec::new(),
            replication_factor: 1,
            ring: Ring::new(&[(NodeId(0), 1)]).map_err(|e| ClientError::Protocol(e.to_string()))?,
            shard_maps: BTreeMap::new(),
        };
        let options_connect_timeout = options.connect_timeout;
        let client = Client(Rc::new(Inner {
            seeds: seeds.to_vec(),
            options,
            view: RefCell::new(placeholder),
            pool: ConnPool::new(options_connect_timeout),
        }));
        let mut last = ClientError::Connect {
            addr: first,
            source: io::Error::other("not tried"),
        };
        for &seed in seeds {
            match client.fetch_topology(seed).await {
                Ok(view) => {
                    *client.0.view.borrow_mut() = view;
                    return Ok(client);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Fetches the topology again from the seeds (after the cluster changed).
    ///
    /// # Errors
    /// The last seed's error when none answers.
    pub async fn refresh_topology(&self) -> Result<(), ClientError> {
        let mut last = ClientError::InvalidArgument("no seed address".to_owned());
        for &seed in &self.0.seeds {
            match self.fetch_topology(seed).await {
                Ok(view) => {
                    *self.0.view.borrow_mut() = view;
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
        self.0.view.borrow().clone()
    }

    /// The address of the core that holds `key` on its first replica not known to be down
    /// (the replica coordinates the request without a hop).
    #[must_use]
    pub fn route(&self, key: &[u8]) -> SocketAddr {
        let view = self.0.view.borrow();
        let token = Token::of(key);
        let seed = self.0.seeds[0];
        let replicas = view
            .ring
            .preference_list(token, usize::from(view.replication_factor));
        let down = |id: NodeId| {
            view.members
                .iter()
                .any(|m| m.node.id == id && m.state == NodeState::Down)
        };
        let chosen = replicas
            .iter()
            .find(|&&id| !down(id))
            .or(replicas.first())
            .and_then(|id| view.nodes.iter().find(|n| n.id == *id));
        match chosen {
            Some(node) => {
                let shard = view
                    .shard_maps
                    .get(&node.id)
                    .map_or(0, |m| m.shard_of(token));
                let ip = match node.host.parse::<IpAddr>() {
                    // A node listening on every address is reached where the seed was.
                    Ok(ip) if !ip.is_unspecified() => ip,
                    _ => seed.ip(),
                };
                let port = u64::from(node.base_port) + 1 + u64::from(shard);
                SocketAddr::new(ip, u16::try_from(port).unwrap_or(node.base_port))
            }
            None => seed,
        }
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
        check_key(key)?;
        let r = self.quorum(r, "r")?;
        let rr = match read_repair {
            ReadRepair::Default => fb::ReadRepair::Default,
            ReadRepair::Off => fb::ReadRepair::Off,
            ReadRepair::Background => fb::ReadRepair::Background,
            ReadRepair::Blocking => fb::ReadRepair::Blocking,
        };
        let found = self.read(key, r, rr, fb::Conflicts::Default).await?;
        Ok(found.map(|f| Value {
            value: f.value,
            version: f.version,
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
        check_key(key)?;
        let r = self.quorum(r, "r")?;
        let found = self
            .read(key, r, fb::ReadRepair::Default, fb::Conflicts::Siblings)
            .await?;
        Ok(found.map(|f| Siblings {
            values: f.siblings,
            version: f.version,
        }))
    }

    /// One `Get` request and its answer, decoded.
    async fn read(
        &self,
        key: &[u8],
        r: Option<fb::Quorum>,
        read_repair: fb::ReadRepair,
        conflicts: fb::Conflicts,
    ) -> Result<Option<Read>, ClientError> {
        let timeout_ms = self.timeout_ms();
        let body = self
            .call(self.route(key), Retry::Once, |id| {
                build::get_with(
                    id,
                    &build::Get {
                        key,
                        r,
                        read_repair,
                        conflicts,
                        timeout_ms,
                    },
                )
            })
            .await?;
        let resp = parse_response(&body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if let Some(e) = resp.reply_as_error() {
            return Err(server_error(&e));
        }
        let get = resp
            .reply_as_get()
            .ok_or_else(|| ClientError::Protocol("a get answered with another reply".into()))?;
        if !get.found() {
            return Ok(None);
        }
        let bytes = |v: Option<flatbuffers::Vector<'_, u8>>| {
            v.map(|v| v.bytes().to_vec()).unwrap_or_default()
        };
        Ok(Some(Read {
            value: bytes(get.value()),
            version: Version(bytes(get.version())),
            siblings: get
                .siblings()
                .iter()
                .flatten()
                .map(|s| s.value().bytes().to_vec())
                .collect(),
        }))
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
        let ttl_seconds = match options.ttl {
            None => 0,
            Some(t) if t.as_secs() == 0 => {
                return Err(ClientError::InvalidArgument(
                    "a TTL is at least one second".to_owned(),
                ))
            }
            Some(t) => t.as_secs(),
        };
        let w = self.quorum(options.w.unwrap_or(Quorum::Default), "w")?;
        let timeout_ms = self.timeout_ms();
        let body = self
            .call(self.route(key), Retry::Never, |id| {
                build::put(
                    id,
                    &build::Put {
                        key,
                        value,
                        ttl_seconds,
                        expected_version: options.expected.as_ref().map(|v| v.0.as_slice()),
                        w,
                        timeout_ms,
                        context: options.context.as_ref().map(|v| v.0.as_slice()),
                        forwarded: false,
                    },
                )
            })
            .await?;
        written(&body, fb::Reply::Put)
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
        let w = self.quorum(options.w.unwrap_or(Quorum::Default), "w")?;
        let timeout_ms = self.timeout_ms();
        let expected = options.expected.as_ref().map(|v| v.0.as_slice());
        let body = self
            .call(self.route(key), Retry::Never, |id| {
                build::delete_with(
                    id,
                    &build::Delete {
                        key,
                        expected_version: expected,
                        w,
                        timeout_ms,
                        context: options.context.as_ref().map(|v| v.0.as_slice()),
                        forwarded: false,
                    },
                )
            })
            .await?;
        written(&body, fb::Reply::Delete)
    }

    /// Round-trip time to `addr` (any node's port).
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn ping(&self, addr: SocketAddr) -> Result<Duration, ClientError> {
        let started = Instant::now();
        let payload: u64 = rand::random();
        let body = self
            .call(addr, Retry::Once, |id| build::ping(id, payload))
            .await?;
        let resp = parse_response(&body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        match resp.reply_as_ping() {
            Some(p) if p.payload() == payload => Ok(started.elapsed()),
            Some(_) => Err(ClientError::Protocol(
                "ping answered with another payload".into(),
            )),
            None => Err(resp.reply_as_error().map_or_else(
                || ClientError::Protocol("ping answered with another reply".into()),
                |e| server_error(&e),
            )),
        }
    }

    /// The deadline sent to the server: a little shorter than the client's own, so that the
    /// server's `Timeout` answer arrives before the client gives up.
    fn timeout_ms(&self) -> u32 {
        let ms = self.0.options.timeout.as_millis();
        u32::try_from(ms - (ms / 10).min(100))
            .unwrap_or(u32::MAX)
            .max(1)
    }

    fn quorum(&self, q: Quorum, name: &str) -> Result<Option<fb::Quorum>, ClientError> {
        let rf = self.0.view.borrow().replication_factor;
        Ok(match q {
            Quorum::Default => None,
            Quorum::Quorum => Some(fb::Quorum::new(fb::QuorumKind::Quorum, 0)),
            Quorum::All => Some(fb::Quorum::new(fb::QuorumKind::All, 0)),
            Quorum::Count(n) if (1..=rf).contains(&n) => {
                Some(fb::Quorum::new(fb::QuorumKind::Count, n))
            }
            Quorum::Count(n) => {
                return Err(ClientError::InvalidArgument(format!(
                    "{name}={n} is outside 1..={rf} (the replication factor)"
                )))
            }
        })
    }

    async fn fetch_topology(&self, seed: SocketAddr) -> Result<ClusterView, ClientError> {
        let body = self.call(seed, Retry::Once, build::topology).await?;
        let resp = parse_response(&body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if let Some(e) = resp.reply_as_error() {
            return Err(server_error(&e));
        }
        let t = resp
            .reply_as_topology()
            .ok_or_else(|| ClientError::Protocol("topology answered with another reply".into()))?;
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
                state: match n.state() {
                    fb::NodeState::Joining => NodeState::Joining,
                    fb::NodeState::Leaving => NodeState::Leaving,
                    fb::NodeState::Down => NodeState::Down,
                    _ => NodeState::Normal,
                },
                in_ring: n.in_ring(),
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
        let ring = Ring::from_vnodes(vnodes).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let counts = ring.vnode_counts();
        let shard_maps = nodes
            .iter()
            .map(|n: &NodeDesc| {
                let vnodes = counts.get(&n.id).copied().unwrap_or(0);
                (n.id, ShardMap::new(n.id, vnodes, n.shards.max(1)))
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

    async fn call(
        &self,
        addr: SocketAddr,
        retry: Retry,
        build: impl Fn(u64) -> Vec<u8>,
    ) -> Result<Vec<u8>, ClientError> {
        let deadline = Instant::now() + self.0.options.timeout;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.0.pool.call_once(addr, &build, deadline).await {
                Err(ClientError::Io(_)) if retry == Retry::Once && attempt == 1 => {}
                other => return other,
            }
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

fn server_error(e: &fb::ErrorResponse<'_>) -> ClientError {
    if e.code() == fb::ErrorCode::ConditionFailed {
        if let Some(current) = e.current_version() {
            return ClientError::ConditionFailed {
                current: Version(current.bytes().to_vec()),
            };
        }
    }
    ClientError::Server {
        code: e.code().into(),
        message: e.message().unwrap_or_default().to_owned(),
        acks: e.acks(),
        required: e.required(),
    }
}

fn written(body: &[u8], kind: fb::Reply) -> Result<Version, ClientError> {
    let resp = parse_response(body).map_err(|e| ClientError::Protocol(e.to_string()))?;
    if let Some(e) = resp.reply_as_error() {
        return Err(server_error(&e));
    }
    let version = match kind {
        fb::Reply::Put => resp.reply_as_put().map(|p| p.version()),
        _ => resp.reply_as_delete().map(|d| d.version()),
    };
    match version {
        Some(v) => Ok(Version(v.map(|v| v.bytes().to_vec()).unwrap_or_default())),
        None => Err(ClientError::Protocol(
            "a write answered with another reply".into(),
        )),
    }
}
