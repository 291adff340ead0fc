//! The per-core binary-protocol server: accepts connections and answers frames through
//! [`dispatch::answer`].
//!
//! * Requests on one connection run **concurrently** (up to [`IN_FLIGHT_PER_CONNECTION`]; past
//!   that the connection is not read until one finishes), and each answer is written as soon as
//!   it is ready, carrying its request's id: a client pipelines many requests and matches the
//!   answers by id. Durable writes sent together on one connection thus share WAL syncs.
//! * A frame whose header announces more than the limit, or nothing, is answered with an error
//!   and the connection closes without its body being read; so does a body the verifier
//!   rejects. Answers already under way are written first. Other connections are not affected.
//! * Once the node is shutting down, a new request is answered `Unavailable` and its connection
//!   closes.

use std::io;
use std::time::Instant;

use dynacore_engine::runtime::{self, TcpListener, TcpReader, TcpStream, TcpWriter};

use crate::cores::Core;
use crate::dispatch::{self, frame_error};
use crate::metrics::Protocol;
use crate::protocol::FRAME_HEADER_BYTES;
use crate::protocol::{encode_frame, fb, frame_len, parse_request, ProtocolError};

/// Requests one connection may have running at once.
pub const IN_FLIGHT_PER_CONNECTION: usize = 1024;

/// Answers written to the socket in one go, at most (bytes; a single larger answer goes alone).
const WRITE_BATCH_BYTES: usize = 256 << 10;

/// Accepts connections on `listener` until accepting fails, serving each in its own task.
///
/// # Errors
/// The error that stopped `accept`.
pub async fn serve_binary(listener: TcpListener, core: Core) -> io::Result<()> {
    loop {
        let stream = listener.accept().await?;
        core.metrics().connection(Protocol::Binary);
        let core = core.clone();
        runtime::spawn_detached(async move {
            if let Err(e) = serve_connection(stream, &core).await {
                tracing::debug!(error = %e, "binary connection ended with an error");
            }
        });
    }
}

/// Answers the frames of one connection until the peer closes it or sends a bad frame.
///
/// # Errors
/// I/O errors of the connection.
pub async fn serve_connection(stream: TcpStream, core: &Core) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let (reader, writer) = stream.split();
    let (out_tx, out_rx) = flume::unbounded::<Vec<u8>>();
    let writing = runtime::spawn(write_answers(writer, out_rx));
    let read_result = read_requests(reader, core, out_tx).await;
    // Every sender is gone once the last running request has answered: the writer then
    // drains what is queued and ends.
    let write_result = writing.await;
    read_result.and(write_result)
}

async fn read_requests(
    mut reader: TcpReader,
    core: &Core,
    out: flume::Sender<Vec<u8>>,
) -> io::Result<()> {
    // A token per running request: sending blocks while the connection is at its limit.
    let (slots_tx, slots_rx) = flume::bounded::<()>(IN_FLIGHT_PER_CONNECTION);
    let mut header = [0u8; FRAME_HEADER_BYTES];
    loop {
        match reader.read_exact(&mut header).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let len = match frame_len(header) {
            Ok(len) => len,
            Err(e) => {
                core.metrics().refused();
                let code = match e {
                    ProtocolError::FrameTooLarge { .. } => fb::ErrorCode::ValueTooLarge,
                    _ => fb::ErrorCode::BadRequest,
                };
                send_answer(&out, &frame_error(code, &e.to_string()).body);
                return Ok(());
            }
        };
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).await?;
        let started = Instant::now();
        if let Err(e) = parse_request(&body) {
            core.metrics().refused();
            send_answer(
                &out,
                &frame_error(fb::ErrorCode::BadRequest, &e.to_string()).body,
            );
            return Ok(());
        }
        let Some(admission) = core.admit() else {
            let id = parse_request(&body).map_or(0, |r| r.id());
            send_answer(&out, &shutting_down(id));
            return Ok(());
        };
        if slots_tx.send_async(()).await.is_err() {
            return Ok(()); // INVARIANT: slots_rx lives as long as this loop.
        }
        let (core, out, slots_rx) = (core.clone(), out.clone(), slots_rx.clone());
        runtime::spawn_detached(async move {
            let answer = dispatch::answer(&core, &body).await;
            core.metrics()
                .request(Protocol::Binary, answer.op, answer.ok, started.elapsed());
            send_answer(&out, &answer.body);
            drop(admission);
            let _ = slots_rx.try_recv();
        });
    }
}

fn send_answer(out: &flume::Sender<Vec<u8>>, body: &[u8]) {
    let mut frame = Vec::with_capacity(body.len() + FRAME_HEADER_BYTES);
    encode_frame(body, &mut frame);
    // The writer only stops early when the connection broke; the answer is then moot.
    let _ = out.send(frame);
}

/// The answer to a request that arrives while the node shuts down.
fn shutting_down(id: u64) -> Vec<u8> {
    dispatch::error_response(id, fb::ErrorCode::Unavailable, "the node is shutting down")
}

async fn write_answers(mut writer: TcpWriter, answers: flume::Receiver<Vec<u8>>) -> io::Result<()> {
    let mut batch = Vec::new();
    while let Ok(first) = answers.recv_async().await {
        batch.clear();
        batch.extend_from_slice(&first);
        while batch.len() < WRITE_BATCH_BYTES {
            match answers.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        writer.write_all(&batch).await?;
    }
    writer.close().await
}
