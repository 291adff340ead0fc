//! The per-core binary-protocol server: accepts connections and answers frames through
//! [`binary_dispatch::answer`].
//!
//! * Requests on one connection run **concurrently** and each answer is written as soon as it
//!   is ready, carrying its request's id: a client pipelines many requests and matches the
//!   answers by id. Durable writes sent together on one connection thus share WAL syncs.
//! * What one connection may hold is bounded ([`ConnectionLimits`]): requests running at once,
//!   bytes of request bodies running at once (past either, the connection is not read until
//!   answers are written), and bytes of answers waiting for the client to read them (past that
//!   the client is not reading: the connection closes). A write that makes no progress for
//!   [`ConnectionLimits::write_timeout`], or a frame whose body stalls for
//!   [`ConnectionLimits::read_timeout`], closes the connection too.
//! * A frame whose header announces more than the limit, or nothing, is answered with an error
//!   and the connection closes without its body being read; so does a body the verifier
//!   rejects. Answers already under way are written first, and the server reads (and drops)
//!   what the client still sends for a moment before closing, so that the error is not lost
//!   to a reset. Other connections are not affected.
//! * Once the node is shutting down, a new request is answered `Unavailable` and its connection
//!   closes. A request in flight holds its admission until its answer is written.

use std::cell::Cell;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use dynacore_runtime::{self as runtime, TcpListener, TcpReader, TcpStream, TcpWriter};

use super::listen::{accept_connections, close_with, linger};
use crate::core::{Admission, Core};
use crate::frontend::binary_dispatch::{self, frame_error};
use crate::metrics::{Protocol, Stage};
use dynacore_proto::{encode_authenticated_frame, AUTH_TAG_BYTES, FRAME_HEADER_BYTES};
use dynacore_proto::{
    encode_frame, fb, frame_header, parse_request, ClusterKey, Domain, ProtocolError,
};

/// What one binary connection may hold, and how long it may stall.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// Requests running at once.
    pub in_flight_max: usize,
    /// Bytes of request bodies running at once (a single larger request still runs alone).
    pub request_bytes_max: usize,
    /// Bytes of answers waiting for the client to read them; past it the connection closes.
    pub answer_bytes_max: usize,
    /// How long a write may make no progress.
    pub write_timeout: Duration,
    /// How long a frame's body may take to arrive once its header did.
    pub read_timeout: Duration,
    /// Connections one core serves at once; more are answered `Overloaded` and closed.
    pub connections_max: usize,
    /// How long a connection with nothing running and nothing to write may stay silent before
    /// it is closed (an idle client holds a slot of [`ConnectionLimits::connections_max`]).
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            in_flight_max: 1024,
            request_bytes_max: 64 << 20,
            answer_bytes_max: 256 << 20,
            write_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(30),
            connections_max: 4096,
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// Answers written to the socket in one go, at most (bytes; a single larger answer goes alone).
const WRITE_BATCH_BYTES: usize = 256 << 10;

/// Accepts connections on `listener` for as long as the task runs, serving each in its own
/// task. A failed `accept` (such as running out of file descriptors) is logged and retried
/// after a short pause.
pub async fn serve_binary(listener: TcpListener, core: Core, limits: ConnectionLimits) {
    let limits = Rc::new(limits);
    accept_connections(
        listener,
        &core.clone(),
        Protocol::Binary,
        limits.connections_max,
        move |stream| {
            let (core, limits) = (core.clone(), limits.clone());
            async move { serve_connection(stream, &core, &limits).await }
        },
        |mut stream| async move {
            let body = binary_dispatch::error_response(
                0,
                fb::ErrorCode::Overloaded,
                "too many connections",
            );
            let mut frame = Vec::new();
            if encode_frame(&body, &mut frame).is_ok() {
                close_with(&mut stream, &frame).await;
            }
        },
    )
    .await;
}

/// An answer on its way to the socket, with what it holds until written.
struct Outgoing {
    frame: Vec<u8>,
    /// For the answer to a running request: its bytes (counted against the connection's
    /// budget), its admission (which keeps the node from closing its shards before the
    /// answer is written) and its share of the core's body budget.
    request: Option<(usize, Admission, BodyBytes)>,
    /// When it was queued (the `write` stage runs from here to the socket).
    queued: Instant,
}

/// Request body bytes the core holds at once, over all its binary connections; past it a new
/// frame waits for room (up to the read timeout), then is refused `Overloaded`. A single larger
/// frame still runs when the core holds nothing else. A running write holds a few copies of
/// its value on the way to the WAL and the memtable, so the core's memory for requests is a
/// small multiple of this.
pub const CORE_BODY_BYTES_MAX: usize = 64 << 20;

/// Bytes of a body read at once (its buffer grows as they arrive).
const BODY_CHUNK: usize = 64 << 10;

/// A share of the core's body budget, given back when dropped (once the answer is written).
struct BodyBytes {
    core: Core,
    len: usize,
}

impl Drop for BodyBytes {
    fn drop(&mut self) {
        self.core.release_body_bytes(self.len);
    }
}

/// Takes `len` bytes of the core's body budget, waiting up to `within` for room.
async fn reserve_body(core: &Core, len: usize, within: Duration) -> Option<BodyBytes> {
    let until = Instant::now() + within;
    loop {
        if core.try_reserve_body_bytes(len, CORE_BODY_BYTES_MAX) {
            return Some(BodyBytes {
                core: core.clone(),
                len,
            });
        }
        if Instant::now() >= until {
            return None;
        }
        runtime::sleep(Duration::from_millis(1)).await;
    }
}

/// What the reader, the request tasks and the writer of one connection share.
struct ConnState {
    limits: Rc<ConnectionLimits>,
    running: Cell<usize>,
    request_bytes: Cell<usize>,
    answer_bytes: Cell<usize>,
    /// Set when the connection must stop (the writer failed or the client does not read).
    closed: Cell<bool>,
    /// Signalled whenever a running request finishes or the connection closes.
    progress: (flume::Sender<()>, flume::Receiver<()>),
    /// When a frame last arrived or an answer was last written.
    last_activity: Cell<Instant>,
}

impl ConnState {
    fn notify(&self) {
        let _ = self.progress.0.try_send(());
    }

    fn close(&self) {
        self.closed.set(true);
        self.notify();
    }

    /// Nothing running, nothing to write, and silent for the idle timeout.
    fn idle_too_long(&self) -> bool {
        self.running.get() == 0
            && self.answer_bytes.get() == 0
            && self.last_activity.get().elapsed() >= self.limits.idle_timeout
    }

    /// Whether a request of `len` bytes may start now.
    fn has_room(&self, len: usize) -> bool {
        let running = self.running.get();
        running == 0
            || (running < self.limits.in_flight_max
                && self.request_bytes.get() + len <= self.limits.request_bytes_max)
    }
}

/// Answers the frames of one connection until the peer closes it or sends a bad frame.
///
/// # Errors
/// I/O errors of the connection.
pub async fn serve_connection(
    stream: TcpStream,
    core: &Core,
    limits: &Rc<ConnectionLimits>,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let (mut reader, writer) = stream.split();
    let (out_tx, out_rx) = flume::unbounded::<Outgoing>();
    let state = Rc::new(ConnState {
        limits: limits.clone(),
        running: Cell::new(0),
        request_bytes: Cell::new(0),
        answer_bytes: Cell::new(0),
        closed: Cell::new(false),
        progress: flume::bounded(1),
        last_activity: Cell::new(Instant::now()),
    });
    let writing = runtime::spawn(write_answers(writer, out_rx, state.clone(), core.clone()));
    let read = read_requests(&mut reader, core, out_tx, &state).await;
    // Every sender is gone once the last running request has answered: the writer then
    // drains what is queued, closes its side and ends.
    let written = writing.await;
    if matches!(read, Ok(Ending::Refused)) {
        linger(&mut reader).await;
    }
    read.and(written).map(drop)
}

/// Why the reader stopped.
enum Ending {
    /// The client closed its side, or the connection broke down.
    Closed,
    /// A frame was refused: the connection closes after its error answer.
    Refused,
}

async fn read_requests(
    reader: &mut TcpReader,
    core: &Core,
    out: flume::Sender<Outgoing>,
    state: &Rc<ConnState>,
) -> io::Result<Ending> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    loop {
        // Wait for the next header, unless the writer gave up on the connection meanwhile.
        let header_read = futures_lite::FutureExt::or(
            async { Some(reader.read_exact(&mut header).await) },
            async {
                // Woken by progress, and at least every second to notice an idle connection.
                let tick = state.limits.idle_timeout.min(Duration::from_secs(1));
                while !state.closed.get() {
                    if state.idle_too_long() {
                        tracing::debug!("closing an idle binary connection");
                        state.close();
                        break;
                    }
                    let _ = runtime::timeout(tick, state.progress.1.recv_async()).await;
                }
                None
            },
        )
        .await;
        match header_read {
            None => return Ok(Ending::Closed),
            Some(Ok(())) => {}
            Some(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Ending::Closed),
            Some(Err(e)) => return Err(e),
        }
        let head = match frame_header(header) {
            Ok(head) => head,
            Err(e) => {
                core.metrics().refused();
                let code = match e {
                    ProtocolError::FrameTooLarge { .. } => fb::ErrorCode::ValueTooLarge,
                    _ => fb::ErrorCode::BadRequest,
                };
                send(
                    &out,
                    state,
                    &frame_error(code, &e.to_string()).body,
                    None,
                    None,
                );
                return Ok(Ending::Refused);
            }
        };
        let len = head.len;
        state.last_activity.set(Instant::now());
        // Back-pressure before a byte of the body is held: past the connection's budget, wait
        // for its answers to be written; past the core's (every connection's bodies
        // together), wait a while, then refuse.
        while !state.has_room(len) {
            if state.closed.get() {
                return Ok(Ending::Closed);
            }
            let _ = state.progress.1.recv_async().await;
        }
        let Some(held) = reserve_body(core, len, state.limits.read_timeout).await else {
            core.metrics().refused();
            let error = frame_error(
                fb::ErrorCode::Overloaded,
                "the core holds as many request bytes as it may; try again later",
            );
            send(&out, state, &error.body, None, None);
            return Ok(Ending::Refused);
        };
        let mut tag = [0u8; AUTH_TAG_BYTES];
        let reading = Instant::now();
        // The body's buffer grows as its bytes arrive: a header alone commits no memory.
        let mut body = Vec::with_capacity(len.min(BODY_CHUNK));
        let read = async {
            if head.authenticated {
                reader.read_exact(&mut tag).await?;
            }
            while body.len() < len {
                let at = body.len();
                body.resize(at + (len - at).min(BODY_CHUNK.max(at)), 0);
                reader.read_exact(&mut body[at..]).await?;
            }
            Ok::<(), io::Error>(())
        };
        match runtime::timeout(state.limits.read_timeout, read).await {
            Some(r) => r?,
            None => return Ok(Ending::Closed), // a frame cut short: drop the connection
        }
        core.metrics().stage(Stage::Read, reading.elapsed());
        // A frame from another node carries the cluster's MAC; a client's carries none (and
        // may not ask for replica operations).
        let from_peer = head.authenticated;
        if from_peer && !core.cluster_key().verify(Domain::Request, &body, &tag) {
            core.metrics()
                .auth_refused(crate::metrics::AuthPlane::Binary);
            tracing::warn!(
                "refused a frame whose tag does not match this node's cluster secret (is the \
                 sender given the same --cluster-secret-file?)"
            );
            let error = frame_error(
                fb::ErrorCode::BadRequest,
                "frame refused: its tag does not match the cluster secret",
            );
            send(&out, state, &error.body, None, None);
            return Ok(Ending::Refused);
        }
        let started = Instant::now();
        let id = match parse_request(&body) {
            Ok(req) => {
                core.metrics().stage(Stage::Decode, started.elapsed());
                req.id()
            }
            Err(e) => {
                core.metrics().refused();
                let error = frame_error(fb::ErrorCode::BadRequest, &e.to_string());
                send(&out, state, &error.body, None, None);
                return Ok(Ending::Refused);
            }
        };
        let Some(admission) = core.admit() else {
            let body = binary_dispatch::error_response(
                id,
                fb::ErrorCode::Unavailable,
                "the node is shutting down",
            );
            send(
                &out,
                state,
                &body,
                None,
                from_peer.then(|| core.cluster_key()),
            );
            return Ok(Ending::Refused);
        };
        if state.closed.get() {
            return Ok(Ending::Closed);
        }
        state.running.set(state.running.get() + 1);
        state.request_bytes.set(state.request_bytes.get() + len);
        let (core, out, state) = (core.clone(), out.clone(), state.clone());
        let spawned = Instant::now();
        runtime::spawn_detached(async move {
            let dispatching = Instant::now();
            core.metrics().stage(Stage::Queue, dispatching - spawned);
            let answer = binary_dispatch::answer(&core, &body, from_peer).await;
            core.metrics().stage(Stage::Dispatch, dispatching.elapsed());
            drop(body);
            core.metrics()
                .request(Protocol::Binary, answer.op, answer.ok, started.elapsed());
            let key = from_peer.then(|| core.cluster_key());
            send(
                &out,
                &state,
                &answer.body,
                Some((len, admission, held)),
                key,
            );
        });
    }
}

/// Queues an answer for the writer (authenticated under `key` for a node's request); closes
/// the connection when the client is not reading.
fn send(
    out: &flume::Sender<Outgoing>,
    state: &ConnState,
    body: &[u8],
    request: Option<(usize, Admission, BodyBytes)>,
    key: Option<&ClusterKey>,
) {
    let mut frame = Vec::with_capacity(body.len() + FRAME_HEADER_BYTES + AUTH_TAG_BYTES);
    let framed = match key {
        None => encode_frame(body, &mut frame),
        Some(key) => encode_authenticated_frame(body, key, Domain::Answer, &mut frame),
    };
    if let Err(e) = framed {
        // INVARIANT: dispatch answers within the frame limit; should an answer still not fit,
        // the connection pays, never the core.
        tracing::error!(error = %e, "an answer could not be framed; closing the connection");
        state.close();
        return;
    }
    state
        .answer_bytes
        .set(state.answer_bytes.get() + frame.len());
    if state.answer_bytes.get() > state.limits.answer_bytes_max {
        tracing::debug!("closing a binary connection whose client does not read its answers");
        state.close();
    }
    // Once the writer has stopped the answer is moot; dropping it releases what it holds.
    let _ = out.send(Outgoing {
        frame,
        request,
        queued: Instant::now(),
    });
}

async fn write_answers(
    mut writer: TcpWriter,
    answers: flume::Receiver<Outgoing>,
    state: Rc<ConnState>,
    core: Core,
) -> io::Result<()> {
    let mut batch = Vec::new();
    let mut done = Vec::new();
    let result = loop {
        let Ok(first) = answers.recv_async().await else {
            break Ok(());
        };
        if state.closed.get() {
            break Ok(());
        }
        batch.clear();
        done.push(first);
        while done.iter().map(|o| o.frame.len()).sum::<usize>() < WRITE_BATCH_BYTES {
            match answers.try_recv() {
                Ok(more) => done.push(more),
                Err(_) => break,
            }
        }
        let written = if done.len() == 1 {
            runtime::timeout(state.limits.write_timeout, writer.write_all(&done[0].frame)).await
        } else {
            for o in &done {
                batch.extend_from_slice(&o.frame);
            }
            runtime::timeout(state.limits.write_timeout, writer.write_all(&batch)).await
        };
        match written {
            Some(Ok(())) => {}
            Some(Err(e)) => break Err(e),
            None => {
                break Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client did not read its answers",
                ))
            }
        }
        let written_at = Instant::now();
        for o in done.drain(..) {
            core.metrics().stage(Stage::Write, written_at - o.queued);
            state
                .answer_bytes
                .set(state.answer_bytes.get() - o.frame.len());
            if let Some((len, admission, held)) = o.request {
                state.running.set(state.running.get() - 1);
                state.request_bytes.set(state.request_bytes.get() - len);
                drop(admission);
                drop(held);
            }
        }
        state.last_activity.set(Instant::now());
        state.notify();
        if batch.capacity() > 4 * WRITE_BATCH_BYTES {
            batch = Vec::new();
        }
    };
    // On a failure the reader must stop too; queued answers are dropped with the channel.
    state.close();
    drop(answers);
    let closed = writer.close().await;
    result.and(closed)
}
