//! One client-side connection, sans IO: requests with ids in, bytes out; bytes in, completed
//! answers out. Every driver (the tokio and glommio SDKs, a node's connections to its peers)
//! runs this and only moves bytes.
//!
//! ```text
//! send(build, waiter) ──► id, frame appended to the outgoing bytes ──► take_outgoing() ──► socket
//! socket ──► receive(bytes) ──► [(waiter, answer body)] for every whole frame whose id waits
//! ```
//!
//! Many requests are in flight at once; answers come back in any order and are matched by id.
//! A waiter is whatever the driver wakes with the answer (a one-shot sender); `W` is its type.
//!
//! INVARIANT: an id is handed out once per connection (a `u64` counter never wraps in
//! practice), and a waiter is returned at most once: by [`Connection::receive`] with its answer,
//! by [`Connection::forget`] when its caller gave up, or by [`Connection::fail_all`].

use std::collections::HashMap;

use crate::auth::{ClusterKey, Domain};
use crate::frame::parse_response;
use crate::frame::{
    encode_authenticated_frame, encode_frame, split_frame, ProtocolError, FRAME_BYTES_MAX,
};

/// Why a request was not queued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The request's body is empty or over [`FRAME_BYTES_MAX`].
    TooLarge {
        /// Its size.
        bytes: usize,
    },
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::TooLarge { bytes } => write!(
                f,
                "the request is {bytes} bytes, over the {FRAME_BYTES_MAX}-byte frame limit"
            ),
        }
    }
}

impl std::error::Error for SendError {}

/// A connection's state: requests waiting for answers, bytes to send, bytes of a partial answer.
#[derive(Debug)]
pub struct Connection<W> {
    next_id: u64,
    waiting: HashMap<u64, W>,
    outgoing: Vec<u8>,
    incoming: Vec<u8>,
    /// A node's connection to another: its frames are tagged, and its answers must be.
    key: Option<ClusterKey>,
}

impl<W> Default for Connection<W> {
    fn default() -> Self {
        Connection::new()
    }
}

impl<W> Connection<W> {
    /// A connection with nothing in flight.
    #[must_use]
    pub fn new() -> Connection<W> {
        Connection {
            next_id: 1,
            waiting: HashMap::new(),
            outgoing: Vec::new(),
            incoming: Vec::new(),
            key: None,
        }
    }

    /// A node's connection to another node: requests are authenticated frames under `key`,
    /// and only answers authenticated under it are taken.
    #[must_use]
    pub fn authenticated(key: ClusterKey) -> Connection<W> {
        Connection {
            key: Some(key),
            ..Connection::new()
        }
    }

    /// Queues the request `build` makes from its id, to be answered to `waiter`; returns the id.
    ///
    /// # Errors
    /// [`SendError::TooLarge`]: nothing is queued.
    pub fn send(
        &mut self,
        build: impl FnOnce(u64) -> Vec<u8>,
        waiter: W,
    ) -> Result<u64, SendError> {
        let id = self.next_id;
        self.next_id += 1;
        let body = build(id);
        if body.is_empty() || body.len() > FRAME_BYTES_MAX {
            return Err(SendError::TooLarge { bytes: body.len() });
        }
        match &self.key {
            None => encode_frame(&body, &mut self.outgoing),
            Some(key) => {
                encode_authenticated_frame(&body, key, Domain::Request, &mut self.outgoing)
            }
        }
        .map_err(|_| SendError::TooLarge { bytes: body.len() })?;
        self.waiting.insert(id, waiter);
        Ok(id)
    }

    /// The caller of request `id` gave up (timed out, dropped): its answer, if it comes, is
    /// dropped. Returns its waiter if it was still waiting.
    pub fn forget(&mut self, id: u64) -> Option<W> {
        self.waiting.remove(&id)
    }

    /// Whether bytes wait to be sent.
    #[must_use]
    pub fn has_outgoing(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Moves the bytes to send into `out` (cleared first); the driver writes all of them.
    pub fn take_outgoing(&mut self, out: &mut Vec<u8>) {
        out.clear();
        std::mem::swap(out, &mut self.outgoing);
    }

    /// Requests waiting for their answer.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.waiting.len()
    }

    /// Takes bytes read from the socket; returns every answer they complete, with the waiter of
    /// its request. Answers nobody waits for any more are dropped.
    ///
    /// # Errors
    /// [`ProtocolError`] when the bytes are not answers (a frame over the limit, a body that is
    /// not a response): the connection is unusable and the driver closes it
    /// ([`Connection::fail_all`]).
    pub fn receive(&mut self, bytes: &[u8]) -> Result<Vec<(W, Vec<u8>)>, ProtocolError> {
        self.incoming.extend_from_slice(bytes);
        let mut done = Vec::new();
        let mut used = 0;
        let auth = self.key.as_ref().map(|k| (k, Domain::Answer));
        while let Some((body, len)) = split_frame(&self.incoming[used..], auth)? {
            let id = parse_response(body)?.id();
            if let Some(waiter) = self.waiting.remove(&id) {
                done.push((waiter, body.to_vec()));
            }
            used += len;
        }
        self.incoming.drain(..used);
        if self.incoming.is_empty() && self.incoming.capacity() > (1 << 20) {
            // A large answer passed: give its buffer back.
            self.incoming = Vec::new();
        }
        Ok(done)
    }

    /// The connection is gone: every waiter, to be told so. Nothing is in flight afterwards.
    pub fn fail_all(&mut self) -> Vec<W> {
        self.outgoing.clear();
        self.incoming.clear();
        self.waiting.drain().map(|(_, w)| w).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{build, fb, reply};

    #[test]
    fn answers_in_any_order_reach_their_waiters_whatever_the_chunking() {
        let mut c: Connection<&str> = Connection::new();
        let a = c.send(|id| build::ping(id, 1), "a").expect("queued");
        let b = c.send(|id| build::ping(id, 2), "b").expect("queued");
        assert_ne!(a, b);
        assert_eq!(c.in_flight(), 2);
        let mut out = Vec::new();
        c.take_outgoing(&mut out);
        assert!(!c.has_outgoing());
        // Two frames went out: each parses as the ping it was.
        let (first, used) = split_frame(&out, None).expect("valid").expect("whole");
        assert_eq!(crate::frame::parse_request(first).expect("parses").id(), a);
        assert!(split_frame(&out[used..], None).expect("valid").is_some());

        // Answers: b's first, then a's, fed one byte at a time.
        let mut wire = Vec::new();
        let answer = |id| reply::written_answer(id, fb::Reply::Put, &[id as u8]);
        encode_frame(&answer(b), &mut wire).expect("small");
        encode_frame(&answer(a), &mut wire).expect("small");
        let mut got = Vec::new();
        for byte in &wire {
            for (w, body) in c.receive(std::slice::from_ref(byte)).expect("answers") {
                got.push((w, reply::written(&body).expect("a put answer")));
            }
        }
        assert_eq!(got, vec![("b", vec![b as u8]), ("a", vec![a as u8])]);
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn a_forgotten_request_drops_its_answer_and_bad_bytes_fail_the_connection() {
        let mut c: Connection<u32> = Connection::new();
        let a = c.send(|id| build::ping(id, 1), 10).expect("queued");
        let _b = c.send(|id| build::ping(id, 2), 20).expect("queued");
        assert_eq!(c.forget(a), Some(10));
        let mut wire = Vec::new();
        encode_frame(&reply::written_answer(a, fb::Reply::Put, &[1]), &mut wire).expect("small");
        assert_eq!(c.receive(&wire), Ok(Vec::new()));
        assert!(c.receive(&u32::MAX.to_le_bytes()).is_err());
        assert_eq!(c.fail_all(), vec![20]);
        assert_eq!(c.in_flight(), 0);
        let huge = vec![0u8; FRAME_BYTES_MAX + 1];
        assert!(matches!(
            c.send(|_| huge.clone(), 1),
            Err(SendError::TooLarge { .. })
        ));
        assert_eq!(c.in_flight(), 0);
    }
}
