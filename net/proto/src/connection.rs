//! One client-side connection, sans IO: requests with ids in, bytes out; bytes in, completed
//! answers out. Every driver (the tokio and glommio SDKs, a node's connections to its peers)
//! runs this and only moves bytes.
//!
//! ```text
//! send(build, waiter) ──► id, frame queued (bounded) ──► take_outgoing() ──► socket
//! socket ──► receive(bytes) ──► [(waiter, answer body)] for every whole frame whose id waits
//! ```
//!
//! Many requests are in flight at once; answers come back in any order and are matched by id.
//! A waiter is whatever the driver wakes with the answer (a one-shot sender); `W` is its type.
//!
//! INVARIANT: an id is handed out once per connection (a `u64` counter never wraps in
//! practice), and a waiter is returned at most once: by [`Connection::receive`] with its answer,
//! by [`Connection::forget`] when its caller gave up, or by [`Connection::fail_all`].

use std::collections::{HashMap, VecDeque};

use crate::auth::{ClusterKey, Domain};
use crate::frame::parse_response;
use crate::frame::{
    encode_authenticated_frame, encode_frame, split_frame, ProtocolError, FRAME_BYTES_MAX,
};

/// Bytes of frames a connection queues before the socket takes them; past it a request is
/// refused ([`SendError::Overloaded`]) rather than queued (a single larger one still goes
/// alone).
pub const OUTGOING_BYTES_MAX: usize = 32 << 20;

/// Bytes of frames [`Connection::take_outgoing`] hands out at once (a larger frame alone).
pub const TAKE_BYTES_MAX: usize = 1 << 20;

/// Requests one connection has waiting for their answers at most.
pub const IN_FLIGHT_MAX: usize = 4096;

/// Why a request was not queued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The request's body is empty or over [`FRAME_BYTES_MAX`].
    TooLarge {
        /// Its size.
        bytes: usize,
    },
    /// The connection already queues [`OUTGOING_BYTES_MAX`] bytes or waits for
    /// [`IN_FLIGHT_MAX`] answers: the server is not keeping up (or not reading).
    Overloaded {
        /// Bytes queued.
        queued: usize,
        /// Answers waited for.
        in_flight: usize,
    },
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::TooLarge { bytes } => write!(
                f,
                "the request is {bytes} bytes, over the {FRAME_BYTES_MAX}-byte frame limit"
            ),
            SendError::Overloaded { queued, in_flight } => write!(
                f,
                "the connection is overloaded: {queued} bytes queued, {in_flight} answers awaited"
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
    /// Frames not yet taken by the driver, with their request's id (a forgotten request's
    /// frame is dropped before it is sent).
    outgoing: VecDeque<(u64, Vec<u8>)>,
    /// Their bytes.
    outgoing_bytes: usize,
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
            outgoing: VecDeque::new(),
            outgoing_bytes: 0,
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
        if self.waiting.len() >= IN_FLIGHT_MAX || self.outgoing_bytes >= OUTGOING_BYTES_MAX {
            return Err(SendError::Overloaded {
                queued: self.outgoing_bytes,
                in_flight: self.waiting.len(),
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        let body = build(id);
        if body.is_empty() || body.len() > FRAME_BYTES_MAX {
            return Err(SendError::TooLarge { bytes: body.len() });
        }
        let mut frame = Vec::new();
        match &self.key {
            None => encode_frame(&body, &mut frame),
            Some(key) => encode_authenticated_frame(&body, key, Domain::Request, &mut frame),
        }
        .map_err(|_| SendError::TooLarge { bytes: body.len() })?;
        self.outgoing_bytes += frame.len();
        self.outgoing.push_back((id, frame));
        self.waiting.insert(id, waiter);
        Ok(id)
    }

    /// The caller of request `id` gave up (timed out, dropped): its answer, if it comes, is
    /// dropped. Returns its waiter if it was still waiting.
    pub fn forget(&mut self, id: u64) -> Option<W> {
        let waiter = self.waiting.remove(&id);
        // Its frame, if not taken yet, is not worth sending: its bytes are freed now.
        if let Some(at) = self.outgoing.iter().position(|(i, _)| *i == id) {
            if let Some((_, frame)) = self.outgoing.remove(at) {
                self.outgoing_bytes -= frame.len();
            }
        }
        waiter
    }

    /// Whether bytes wait to be sent.
    #[must_use]
    pub fn has_outgoing(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Bytes of frames waiting to be taken.
    #[must_use]
    pub fn outgoing_bytes(&self) -> usize {
        self.outgoing_bytes
    }

    /// Moves the next frames to send into `out` (cleared first): at least one, and no more
    /// than [`TAKE_BYTES_MAX`] bytes of them, skipping those of requests given up meanwhile;
    /// the driver writes all of them, then takes again. What it has not taken stays counted
    /// against the queue's bound (and a request given up can still be dropped from it).
    pub fn take_outgoing(&mut self, out: &mut Vec<u8>) {
        out.clear();
        while let Some((id, frame)) = self.outgoing.front() {
            if !out.is_empty() && out.len() + frame.len() > TAKE_BYTES_MAX {
                break;
            }
            if self.waiting.contains_key(id) {
                out.extend_from_slice(frame);
            }
            let (_, frame) = self
                .outgoing
                .pop_front()
                .expect("INVARIANT: a front was seen");
            self.outgoing_bytes -= frame.len();
        }
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
        self.outgoing_bytes = 0;
        self.incoming.clear();
        self.waiting.drain().map(|(_, w)| w).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{build, fb, reply};

    #[test]
    fn the_queue_is_bounded_and_a_forgotten_request_is_never_sent() {
        let mut c: Connection<u64> = Connection::new();
        let value = vec![7u8; 1 << 20];
        let put = |id| {
            build::put(
                id,
                &build::Put {
                    key: b"k",
                    value: &value,
                    ..build::Put::default()
                },
            )
        };
        // A peer that does not read: frames pile up to the bound, then requests are refused.
        let mut ids = Vec::new();
        loop {
            match c.send(put, 0) {
                Ok(id) => ids.push(id),
                Err(SendError::Overloaded { queued, .. }) => {
                    assert!(queued >= OUTGOING_BYTES_MAX);
                    break;
                }
                Err(e) => panic!("{e}"),
            }
            assert!(ids.len() <= 64, "never bounded");
        }
        assert!(c.outgoing_bytes() < OUTGOING_BYTES_MAX + (2 << 20));
        // Their callers give up: the frames are freed, never sent, and room is back.
        for &id in &ids[1..] {
            c.forget(id);
        }
        assert!(c.outgoing_bytes() < 2 << 20);
        let last = c.send(put, 0).expect("room again");
        // Taken a frame at a time (each is over the batch size), and only these two.
        let mut out = Vec::new();
        let mut sent = Vec::new();
        while c.has_outgoing() {
            c.take_outgoing(&mut out);
            let (frame, used) = split_frame(&out, None).expect("valid").expect("whole");
            assert_eq!(used, out.len(), "one frame per take");
            sent.push(crate::frame::parse_request(frame).expect("parses").id());
        }
        assert_eq!(sent, vec![ids[0], last], "nothing else went out");
        assert_eq!(c.outgoing_bytes(), 0);
        // Answers awaited are bounded too.
        let mut c: Connection<u64> = Connection::new();
        for _ in 0..IN_FLIGHT_MAX {
            c.send(|id| build::ping(id, 1), 0).expect("queued");
            c.take_outgoing(&mut out);
        }
        assert!(matches!(
            c.send(|id| build::ping(id, 1), 0),
            Err(SendError::Overloaded { .. })
        ));
    }

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
