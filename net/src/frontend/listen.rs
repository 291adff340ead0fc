//! What both servers of a core do with connections: accept them, refuse those over the limit
//! with a last answer, serve the rest each in its own task, and close politely (write the last
//! answer, then read and drop what the client still sends for a moment, so that the answer is
//! not destroyed by a reset).

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use dynacore_runtime::{self as runtime, TcpListener, TcpReader, TcpStream};

use crate::core::Core;
use crate::metrics::Protocol;

/// How long a closing connection still reads (and drops) what the client sends.
pub(crate) const LINGER: Duration = Duration::from_secs(1);

/// How long writing an answer may make no progress.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The pause after a failed `accept` (out of file descriptors, for instance).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections forever: at most `connections_max` are served at once (each by
/// `serve`, in its own task); one more is handed to `refuse`, which answers and closes it. On
/// a node with TLS, each connection is served once its handshake is done (one that fails is
/// closed and counted as refused), and one over the limit is closed without an answer.
pub(crate) async fn accept_connections<S, SF, R, RF>(
    listener: TcpListener,
    core: &Core,
    protocol: Protocol,
    connections_max: usize,
    serve: S,
    refuse: R,
) where
    S: Fn(TcpStream) -> SF + 'static,
    SF: Future<Output = io::Result<()>> + 'static,
    R: Fn(TcpStream) -> RF,
    RF: Future<Output = ()> + 'static,
{
    let open = Rc::new(Cell::new(0usize));
    let serve = Rc::new(serve);
    let tls = core.tls_acceptor().cloned();
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, ?protocol, "accepting a connection failed");
                runtime::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        core.metrics().connection(protocol);
        if open.get() >= connections_max {
            core.metrics().refused();
            if tls.is_none() {
                runtime::spawn_detached(refuse(stream));
            }
            continue;
        }
        open.set(open.get() + 1);
        core.metrics().connection_open(protocol, true);
        let (serve, open, metrics_core, tls) =
            (serve.clone(), open.clone(), core.clone(), tls.clone());
        runtime::spawn_detached(async move {
            let stream = match tls {
                None => Some(stream),
                Some(acceptor) => match acceptor.accept(stream, HANDSHAKE_TIMEOUT).await {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::debug!(error = %e, ?protocol, "a TLS handshake failed");
                        metrics_core.metrics().refused();
                        None
                    }
                },
            };
            if let Some(stream) = stream {
                if let Err(e) = serve(stream).await {
                    tracing::debug!(error = %e, ?protocol, "a connection ended with an error");
                }
            }
            open.set(open.get() - 1);
            metrics_core.metrics().connection_open(protocol, false);
        });
    }
}

/// Something to read the client's last bytes from.
pub(crate) trait ReadSome {
    /// Reads what has arrived into `buf` (0: the client closed).
    async fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize>;
}

impl ReadSome for TcpStream {
    async fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read(buf).await
    }
}

impl ReadSome for TcpReader {
    async fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read(buf).await
    }
}

/// Reads and drops what the client still sends, until it closes or [`LINGER`] passes.
pub(crate) async fn linger(reader: &mut impl ReadSome) {
    let until = Instant::now() + LINGER;
    let mut sink = vec![0u8; 16 << 10];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match runtime::timeout(left, reader.read_some(&mut sink)).await {
            Some(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

/// Writes a last answer, closes the writing side, and lingers before the connection is dropped.
pub(crate) async fn close_with(stream: &mut TcpStream, last: &[u8]) {
    if runtime::timeout(WRITE_TIMEOUT, stream.write_all(last))
        .await
        .is_none_or(|r| r.is_err())
    {
        return;
    }
    if stream.shutdown_write().await.is_err() {
        return;
    }
    linger(stream).await;
}
