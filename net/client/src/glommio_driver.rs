//! The thread-per-core driver, on Dynacore's runtime (`dynacore-runtime`, glommio): a pool of
//! connections, each a reader task and a writer task around the sans-IO [`Connection`]. It is
//! `!Send`: a pool and a client belong to the executor that made them. A node's cores reach
//! their peers through [`ConnPool`]; loadgen's and the CLI's clients are [`Client`].

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use dynacore_proto::connection::Connection;
use dynacore_proto::ClusterKey;
use dynacore_runtime::tls::TlsConnector;
use dynacore_runtime::{self as runtime, TcpReader, TcpStream, TcpWriter};

use crate::api::{self, Common, Driver};
use crate::error::ClientError;

/// A client on the current glommio executor (`!Send`; one per executor). Cheap to clone.
pub type Client = api::Client<Pool>;

/// A glommio [`Client`]'s state and connections.
#[derive(Clone, Debug)]
pub struct Pool(Rc<(Common, ConnPool)>);

impl Driver for Pool {
    fn new(common: Common) -> Pool {
        let connect_timeout = common.options().connect_timeout;
        let mut pool = ConnPool::new(connect_timeout);
        if let Some(ca) = &common.options().tls_ca {
            pool = match runtime::tls::client_config(ca) {
                Ok(config) => pool.with_tls(TlsConnector::new(config)),
                // Every connection attempt says why.
                Err(why) => pool.refusing(why),
            };
        }
        Pool(Rc::new((common, pool)))
    }

    fn common(&self) -> &Common {
        &self.0 .0
    }

    fn keep_fresh(client: &Client) {
        let weak: Weak<(Common, ConnPool)> = Rc::downgrade(&client.driver().0);
        let every = client.driver().common().refresh_check_interval();
        runtime::spawn(api::refresh_loop(
            move || weak.upgrade().map(|inner| api::Client::wrap(Pool(inner))),
            runtime::sleep,
            every,
        ))
        .detach();
    }

    async fn call_once(
        &self,
        addr: SocketAddr,
        build: &(dyn Fn(u64) -> Vec<u8> + Sync),
        deadline: Instant,
    ) -> Result<Vec<u8>, ClientError> {
        self.0 .1.call_once(addr, &build, deadline).await
    }

    fn connections(&self) -> usize {
        self.0 .1.len()
    }
}

/// What a connection's tasks and its callers share.
struct Shared {
    state: RefCell<Connection<flume::Sender<Vec<u8>>>>,
    /// A permit: bytes wait to be written.
    wake_writer: flume::Sender<()>,
    broken: Cell<bool>,
    /// When the last answer arrived.
    last_answer: Cell<Instant>,
}

impl Shared {
    /// The connection is gone: every waiting request learns it (its sender is dropped).
    fn fail(&self) {
        self.broken.set(true);
        drop(self.state.borrow_mut().fail_all());
    }
}

/// How long writing one batch of queued frames may take before the connection is given up.
const WRITE_STALL: Duration = Duration::from_secs(10);

/// One open connection; its tasks stop when it is dropped.
struct Conn {
    shared: Rc<Shared>,
    _tasks: [runtime::Task<()>; 2],
}

impl Conn {
    async fn open(
        addr: SocketAddr,
        from: Option<IpAddr>,
        timeout: Duration,
        key: Option<&ClusterKey>,
        tls: Option<&TlsConnector>,
    ) -> Result<Conn, ClientError> {
        let mut stream = match from {
            Some(ip) => TcpStream::connect_from(ip, addr, timeout).await,
            None => TcpStream::connect(addr, timeout).await,
        }
        .map_err(|source| ClientError::Connect { addr, source })?;
        if let Some(tls) = tls {
            stream = tls
                .connect(stream, addr, timeout)
                .await
                .map_err(|source| ClientError::Connect { addr, source })?;
        }
        let (reader, writer) = stream.split();
        let (wake_writer, woken) = flume::bounded(1);
        let shared = Rc::new(Shared {
            state: RefCell::new(match key {
                Some(key) => Connection::authenticated(key.clone()),
                None => Connection::new(),
            }),
            wake_writer,
            broken: Cell::new(false),
            last_answer: Cell::new(Instant::now()),
        });
        let reading = runtime::spawn(read_answers(reader, shared.clone()));
        let writing = runtime::spawn(write_requests(writer, woken, shared.clone()));
        Ok(Conn {
            shared,
            _tasks: [reading, writing],
        })
    }
}

async fn read_answers(mut r: TcpReader, shared: Rc<Shared>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let Ok(done) = shared.state.borrow_mut().receive(&buf[..n]) else {
            break;
        };
        if !done.is_empty() {
            shared.last_answer.set(Instant::now());
        }
        for (waiter, body) in done {
            // A caller that gave up meanwhile no longer listens.
            let _ = waiter.send(body);
        }
    }
    shared.fail();
}

async fn write_requests(mut w: TcpWriter, woken: flume::Receiver<()>, shared: Rc<Shared>) {
    let mut out = Vec::new();
    while woken.recv_async().await.is_ok() {
        loop {
            shared.state.borrow_mut().take_outgoing(&mut out);
            if out.is_empty() {
                break;
            }
            // A peer that has not taken one batch (at most the queue's bound) in this long is
            // not reading: the connection is given up, and what it queued with it.
            if !matches!(
                runtime::timeout(WRITE_STALL, w.write_all(&out)).await,
                Some(Ok(()))
            ) {
                shared.fail();
                return;
            }
            if out.capacity() > (1 << 20) {
                out = Vec::new();
            }
        }
    }
}

/// Forgets a request's waiter when its call ends, however it ends.
struct Forget<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.shared.state.borrow_mut().forget(self.id);
    }
}

/// Open connections to any number of servers, one per address, each carrying many requests at
/// once (matched by id). A glommio [`Client`] routes through one; each core of a node keeps one
/// to its peers.
pub struct ConnPool {
    connect_timeout: Duration,
    /// The local address connections come from (`None`: the system's choice).
    source: Option<IpAddr>,
    /// A node's pool to its peers: frames authenticated under the cluster secret.
    key: Option<ClusterKey>,
    /// Connections speak TLS (`None`: plain TCP).
    tls: Option<TlsConnector>,
    /// Why no connection can be made (a TLS configuration that did not load).
    refusing: Option<String>,
    conns: RefCell<HashMap<SocketAddr, Rc<Conn>>>,
    /// Connection attempts under way: a caller that finds one waits for it instead of
    /// opening another; it learns there whether the attempt failed.
    connecting: RefCell<HashMap<SocketAddr, Connecting>>,
}

/// A connection attempt others wait for: its end is the channel closing, its outcome the cell
/// (the failure's kind and message).
#[derive(Clone)]
struct Connecting {
    done: flume::Receiver<()>,
    failed: Rc<RefCell<Option<(std::io::ErrorKind, String)>>>,
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
            key: None,
            tls: None,
            refusing: None,
            conns: RefCell::new(HashMap::new()),
            connecting: RefCell::new(HashMap::new()),
        }
    }

    /// The same pool, its frames authenticated under the cluster secret `key` (a node's pool
    /// to its peers: they refuse replica operations otherwise).
    #[must_use]
    pub fn authenticated(mut self, key: ClusterKey) -> ConnPool {
        self.key = Some(key);
        self
    }

    /// The same pool, its connections speaking TLS through `tls` (the server's certificate must
    /// name the IP address connected to).
    #[must_use]
    pub fn with_tls(mut self, tls: TlsConnector) -> ConnPool {
        self.tls = Some(tls);
        self
    }

    /// The same pool, refusing every connection for `why`.
    #[must_use]
    pub fn refusing(mut self, why: String) -> ConnPool {
        self.refusing = Some(why);
        self
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
            if !c.shared.broken.get() {
                return Ok(c.clone());
            }
        }
        // One attempt at a time per address: the others wait for it and share its outcome.
        let under_way = self.connecting.borrow().get(&addr).cloned();
        if let Some(attempt) = under_way {
            let _ = attempt.done.recv_async().await;
            if let Some((kind, why)) = attempt.failed.borrow().clone() {
                return Err(ClientError::Connect {
                    addr,
                    source: std::io::Error::new(kind, why),
                });
            }
            if let Some(c) = self.conns.borrow().get(&addr) {
                return Ok(c.clone());
            }
        }
        let (finished, done) = flume::bounded::<()>(1);
        let failed = Rc::new(RefCell::new(None));
        self.connecting.borrow_mut().insert(
            addr,
            Connecting {
                done,
                failed: failed.clone(),
            },
        );
        let opened = match &self.refusing {
            Some(why) => Err(ClientError::Connect {
                addr,
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, why.clone()),
            }),
            // Boxed: opening a connection (a TLS handshake perhaps) is rare, and its state
            // would otherwise be part of every call's future — a local replica read's too,
            // which is spawned, and so moved, on every request.
            None => {
                Box::pin(Conn::open(
                    addr,
                    self.source,
                    self.connect_timeout,
                    self.key.as_ref(),
                    self.tls.as_ref(),
                ))
                .await
            }
        };
        self.connecting.borrow_mut().remove(&addr);
        if let Err(ClientError::Connect { source, .. }) = &opened {
            *failed.borrow_mut() = Some((source.kind(), source.to_string()));
        }
        drop(finished);
        let conn = Rc::new(opened?);
        // Another request may have connected meanwhile: keep one.
        let mut conns = self.conns.borrow_mut();
        match conns.get(&addr) {
            Some(c) if !c.shared.broken.get() => Ok(c.clone()),
            _ => {
                conns.insert(addr, conn.clone());
                Ok(conn)
            }
        }
    }

    /// Sends the request `build` makes (given its id) to `addr` and waits for its answer until
    /// `deadline`; never sends it twice.
    ///
    /// # Errors
    /// [`ClientError::Connect`] (nothing was sent), [`ClientError::Io`] when the connection
    /// breaks, [`ClientError::Timeout`], [`ClientError::InvalidArgument`] for a request over the
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
        let shared = &*conn.shared;
        if shared.broken.get() {
            return Err(ClientError::broken("the connection is closed"));
        }
        let (tx, rx) = flume::bounded(1);
        let id = shared
            .state
            .borrow_mut()
            .send(build, tx)
            .map_err(ClientError::from)?;
        let _forget = Forget { shared, id };
        // A full channel already holds a wake-up the writer has not taken.
        let _ = shared.wake_writer.try_send(());
        let sent_at = Instant::now();
        let left = deadline.saturating_duration_since(sent_at);
        match runtime::timeout(left, rx.recv_async()).await {
            Some(Ok(body)) => Ok(body),
            Some(Err(_)) => Err(ClientError::broken(
                "the connection closed before the answer came",
            )),
            None => {
                // Nothing at all came back on this connection since the request went out: the
                // peer may be gone without a reset. The next request opens a new connection.
                if shared.last_answer.get() < sent_at {
                    shared.broken.set(true);
                }
                Err(ClientError::Timeout)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call's future is part of every replica read's spawned future (a local one's too), so
    /// its size is copied on every request: opening a connection (a TLS handshake) must stay
    /// behind a box. Unboxed, the handshake made it several KiB and cost a quarter of a
    /// node's GET rate (see the commit that boxed it).
    #[test]
    fn a_calls_future_stays_small() {
        let pool = ConnPool::new(Duration::from_secs(1));
        let build = |id: u64| id.to_le_bytes().to_vec();
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let call = pool.call_once(addr, &build, Instant::now());
        let size = std::mem::size_of_val(&call);
        assert!(size <= 1024, "ConnPool::call_once's future is {size} bytes");
    }
}
