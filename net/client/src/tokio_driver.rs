//! The tokio driver: a pool of connections, each a reader task and a writer task around the
//! sans-IO [`Connection`], shared by every clone of the client and every thread.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use dynacore_proto::connection::Connection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};
use tokio::task::AbortHandle;

use crate::api::{self, Common, Driver};
use crate::error::ClientError;

/// A client on a tokio runtime: `Send + Sync`, cheap to clone (clones share connections and
/// topology). See the crate documentation.
pub type Client = api::Client<Pool>;

/// The connections of a tokio [`Client`], one per address, each carrying many requests at once.
#[derive(Clone, Debug)]
pub struct Pool(Arc<PoolInner>);

#[derive(Debug)]
struct PoolInner {
    common: Common,
    conns: Mutex<HashMap<SocketAddr, Arc<Conn>>>,
}

/// What a connection's tasks and its callers share.
#[derive(Debug)]
struct Shared {
    state: Mutex<Connection<oneshot::Sender<Vec<u8>>>>,
    /// Bytes wait to be written.
    wake_writer: Notify,
    broken: AtomicBool,
    /// When the last answer arrived.
    last_answer: Mutex<Instant>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, Connection<oneshot::Sender<Vec<u8>>>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The connection is gone: every waiting request learns it (its sender is dropped).
    fn fail(&self) {
        self.broken.store(true, Ordering::Relaxed);
        drop(self.state().fail_all());
    }
}

/// One open connection; dropping it stops its tasks.
#[derive(Debug)]
struct Conn {
    shared: Arc<Shared>,
    tasks: [AbortHandle; 2],
}

impl Drop for Conn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Conn {
    async fn open(addr: SocketAddr, timeout: Duration) -> Result<Conn, ClientError> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(ClientError::Connect { addr, source }),
            Err(_) => {
                return Err(ClientError::Connect {
                    addr,
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connection timed out",
                    ),
                })
            }
        };
        stream
            .set_nodelay(true)
            .map_err(|source| ClientError::Connect { addr, source })?;
        let (reader, writer) = stream.into_split();
        let shared = Arc::new(Shared {
            state: Mutex::new(Connection::new()),
            wake_writer: Notify::new(),
            broken: AtomicBool::new(false),
            last_answer: Mutex::new(Instant::now()),
        });
        let reading = tokio::spawn(read_answers(reader, shared.clone())).abort_handle();
        let writing = tokio::spawn(write_requests(writer, shared.clone())).abort_handle();
        Ok(Conn {
            shared,
            tasks: [reading, writing],
        })
    }
}

async fn read_answers(mut r: OwnedReadHalf, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let Ok(done) = shared.state().receive(&buf[..n]) else {
            break;
        };
        if !done.is_empty() {
            *shared
                .last_answer
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        }
        for (waiter, body) in done {
            // A caller that gave up meanwhile no longer listens.
            let _ = waiter.send(body);
        }
    }
    shared.fail();
}

async fn write_requests(mut w: OwnedWriteHalf, shared: Arc<Shared>) {
    let mut out = Vec::new();
    loop {
        shared.wake_writer.notified().await;
        loop {
            shared.state().take_outgoing(&mut out);
            if out.is_empty() {
                break;
            }
            if w.write_all(&out).await.is_err() {
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
        self.shared.state().forget(self.id);
    }
}

impl Pool {
    async fn conn(&self, addr: SocketAddr) -> Result<Arc<Conn>, ClientError> {
        let usable = |c: &Arc<Conn>| !c.shared.broken.load(Ordering::Relaxed);
        if let Some(c) = self.conns().get(&addr).filter(|c| usable(c)) {
            return Ok(c.clone());
        }
        if self.0.common.options().tls_ca.is_some() {
            return Err(ClientError::Connect {
                addr,
                source: std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "the tokio driver does not speak TLS; use the glommio driver",
                ),
            });
        }
        let conn = Arc::new(Conn::open(addr, self.0.common.options().connect_timeout).await?);
        // Another request may have connected meanwhile: keep one.
        let mut conns = self.conns();
        match conns.get(&addr) {
            Some(c) if usable(c) => Ok(c.clone()),
            _ => {
                conns.insert(addr, conn.clone());
                Ok(conn)
            }
        }
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<Conn>>> {
        self.0.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Driver for Pool {
    fn new(common: Common) -> Pool {
        Pool(Arc::new(PoolInner {
            common,
            conns: Mutex::new(HashMap::new()),
        }))
    }

    fn common(&self) -> &Common {
        &self.0.common
    }

    fn keep_fresh(client: &Client) {
        let weak: Weak<PoolInner> = Arc::downgrade(&client.driver().0);
        let every = client.driver().common().refresh_check_interval();
        tokio::spawn(api::refresh_loop(
            move || weak.upgrade().map(|inner| api::Client::wrap(Pool(inner))),
            tokio::time::sleep,
            every,
        ));
    }

    async fn call_once(
        &self,
        addr: SocketAddr,
        build: &(dyn Fn(u64) -> Vec<u8> + Sync),
        deadline: Instant,
    ) -> Result<Vec<u8>, ClientError> {
        let left = deadline.saturating_duration_since(Instant::now());
        let conn = tokio::time::timeout(left, self.conn(addr))
            .await
            .map_err(|_| ClientError::Timeout)??;
        let shared = &conn.shared;
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut state = shared.state();
            if shared.broken.load(Ordering::Relaxed) {
                return Err(ClientError::broken("the connection is closed"));
            }
            state.send(build, tx).map_err(ClientError::from)?
        };
        let _forget = Forget { shared, id };
        shared.wake_writer.notify_one();
        let sent_at = Instant::now();
        let left = deadline.saturating_duration_since(sent_at);
        match tokio::time::timeout(left, rx).await {
            Ok(Ok(body)) => Ok(body),
            Ok(Err(_)) => Err(ClientError::broken(
                "the connection closed before the answer came",
            )),
            Err(_) => {
                // Nothing at all came back on this connection since the request went out: the
                // peer may be gone without a reset. The next request opens a new connection.
                let last = *shared
                    .last_answer
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if last < sent_at {
                    shared.broken.store(true, Ordering::Relaxed);
                }
                Err(ClientError::Timeout)
            }
        }
    }

    fn connections(&self) -> usize {
        self.conns().len()
    }
}
