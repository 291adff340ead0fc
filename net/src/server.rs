//! The per-core binary-protocol server: accepts connections and answers frames through
//! [`dispatch::answer`]. Requests on one connection are answered in order (a client may send
//! many before reading: pipelining); connections are served concurrently.
//!
//! A frame whose header announces more than the limit, or nothing, is answered with an error
//! and the connection closes without its body being read; so does a body the verifier rejects.
//! Other connections are not affected.

use std::io;
use std::rc::Rc;

use dynacore_engine::runtime::{self, TcpListener, TcpStream};

use crate::dispatch::{self, frame_error, Topology};
use crate::protocol::{encode_frame, fb, frame_len, ProtocolError, FRAME_HEADER_BYTES};
use crate::store::LocalStore;

/// Accepts connections on `listener` until accepting fails, serving each in its own task.
///
/// # Errors
/// The error that stopped `accept`.
pub async fn serve_binary(
    listener: TcpListener,
    store: LocalStore,
    topology: Rc<Topology>,
) -> io::Result<()> {
    loop {
        let stream = listener.accept().await?;
        let (store, topology) = (store.clone(), topology.clone());
        runtime::spawn_detached(async move {
            if let Err(e) = serve_connection(stream, &store, &topology).await {
                tracing::debug!(error = %e, "binary connection ended with an error");
            }
        });
    }
}

/// Answers the frames of one connection until the peer closes it or sends a bad frame.
///
/// # Errors
/// I/O errors of the connection.
pub async fn serve_connection(
    mut stream: TcpStream,
    store: &LocalStore,
    topology: &Topology,
) -> io::Result<()> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    let mut out = Vec::new();
    loop {
        match stream.read_exact(&mut header).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let answer = match frame_len(header) {
            Ok(len) => {
                let mut body = vec![0u8; len];
                stream.read_exact(&mut body).await?;
                dispatch::answer(store, topology, &body).await
            }
            Err(e @ ProtocolError::FrameTooLarge { .. }) => {
                frame_error(fb::ErrorCode::ValueTooLarge, &e.to_string())
            }
            Err(e) => frame_error(fb::ErrorCode::BadRequest, &e.to_string()),
        };
        out.clear();
        encode_frame(&answer.body, &mut out);
        stream.write_all(&out).await?;
        if answer.close {
            return Ok(());
        }
    }
}
