//! Framing: length-prefixed frames holding flatbuffers (`net/proto/schema/dynacore.fbs`).
//!
//! ```text
//! frame:               [u32 little-endian length][flatbuffer of that length]
//! authenticated frame: [u32 little-endian length | 1 << 31][32-byte tag][flatbuffer]
//! ```
//! Frames between nodes are authenticated: the tag is HMAC-SHA256 under the cluster secret of
//! the flatbuffer, in the request or answer domain ([`crate::auth`]). A client's frames are
//! not, and a server refuses replica operations in them.
//! A reader learns a frame's length from its first 4 bytes, so a frame over [`FRAME_BYTES_MAX`]
//! is refused before any of its body is read. Every buffer is checked by the flatbuffers
//! verifier (bounded in depth, table count and size) before a field is read, so malformed input
//! is a [`ProtocolError`], never a panic or an out-of-bounds read.

use dynacore_types::VALUE_BYTES_MAX;

use crate::auth::{ClusterKey, Domain, TAG_BYTES};
use crate::fb;

/// The length word's bit that marks an authenticated frame.
const AUTHENTICATED: u32 = 1 << 31;

/// Bytes of a frame's length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;

/// The largest frame body: a 10 MiB value with room for the key, a version and the fields.
pub const FRAME_BYTES_MAX: usize = VALUE_BYTES_MAX + (256 << 10);

/// Why bytes are not a valid frame or message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// The length prefix announces more than [`FRAME_BYTES_MAX`].
    FrameTooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A frame of length 0.
    EmptyFrame,
    /// The body is not a valid flatbuffer of the expected message.
    Malformed(String),
    /// An authenticated frame whose tag does not match the cluster secret, one where none
    /// was expected, or a plain one where an authenticated one was.
    Unauthenticated(&'static str),
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtocolError::FrameTooLarge { len, max } => {
                write!(f, "frame of {len} bytes is over the {max}-byte limit")
            }
            ProtocolError::EmptyFrame => f.write_str("empty frame"),
            ProtocolError::Malformed(why) => write!(f, "malformed message: {why}"),
            ProtocolError::Unauthenticated(why) => write!(f, "frame refused: {why}"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// What a frame header announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// The body's length.
    pub len: usize,
    /// Whether a tag follows the header ([`AUTH_TAG_BYTES`] bytes, before the body).
    pub authenticated: bool,
}

/// Bytes of an authenticated frame's tag.
pub const AUTH_TAG_BYTES: usize = TAG_BYTES;

/// What a frame header announces.
///
/// # Errors
/// [`ProtocolError::FrameTooLarge`] or [`ProtocolError::EmptyFrame`]: the connection should
/// answer with an error and close, without reading the body.
pub fn frame_header(header: [u8; FRAME_HEADER_BYTES]) -> Result<FrameHeader, ProtocolError> {
    let word = u32::from_le_bytes(header);
    let len = (word & !AUTHENTICATED) as usize;
    if len == 0 {
        return Err(ProtocolError::EmptyFrame);
    }
    if len > FRAME_BYTES_MAX {
        return Err(ProtocolError::FrameTooLarge {
            len,
            max: FRAME_BYTES_MAX,
        });
    }
    Ok(FrameHeader {
        len,
        authenticated: word & AUTHENTICATED != 0,
    })
}

/// Appends `body` as one frame to `out`.
///
/// # Errors
/// [`ProtocolError::EmptyFrame`] or [`ProtocolError::FrameTooLarge`]: nothing is appended. A
/// server answers such a request with an error instead; a client refuses to send it.
pub fn encode_frame(body: &[u8], out: &mut Vec<u8>) -> Result<(), ProtocolError> {
    if body.is_empty() {
        return Err(ProtocolError::EmptyFrame);
    }
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&l| l as usize <= FRAME_BYTES_MAX)
        .ok_or(ProtocolError::FrameTooLarge {
            len: body.len(),
            max: FRAME_BYTES_MAX,
        })?;
    out.reserve(FRAME_HEADER_BYTES + body.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(body);
    Ok(())
}

/// Appends `body` as one authenticated frame (tagged under `key` for `domain`) to `out`.
///
/// # Errors
/// As [`encode_frame`]: nothing is appended.
pub fn encode_authenticated_frame(
    body: &[u8],
    key: &ClusterKey,
    domain: Domain,
    out: &mut Vec<u8>,
) -> Result<(), ProtocolError> {
    let at = out.len();
    encode_frame(body, out)?;
    let len = u32::try_from(body.len()).expect("INVARIANT: encode_frame checked the length");
    out[at..at + FRAME_HEADER_BYTES].copy_from_slice(&(len | AUTHENTICATED).to_le_bytes());
    let tag = key.tag(domain, body);
    out.splice(
        at + FRAME_HEADER_BYTES..at + FRAME_HEADER_BYTES,
        tag.iter().copied(),
    );
    Ok(())
}

/// Splits the first whole frame off `buf`: its body and the bytes it used, or `None` while
/// `buf` holds only part of it. With `auth`, only authenticated frames whose tag matches are
/// accepted; without it, only plain ones.
///
/// # Errors
/// As [`frame_header`], as soon as the header is in; [`ProtocolError::Unauthenticated`].
pub fn split_frame<'a>(
    buf: &'a [u8],
    auth: Option<(&ClusterKey, Domain)>,
) -> Result<Option<(&'a [u8], usize)>, ProtocolError> {
    let Some(header) = buf.first_chunk::<FRAME_HEADER_BYTES>() else {
        return Ok(None);
    };
    let header = frame_header(*header)?;
    let start = FRAME_HEADER_BYTES + if header.authenticated { TAG_BYTES } else { 0 };
    let end = start + header.len;
    let Some(body) = buf.get(start..end) else {
        return Ok(None);
    };
    match (auth, header.authenticated) {
        (None, false) => Ok(Some((body, end))),
        (Some((key, domain)), true) => {
            if key.verify(domain, body, &buf[FRAME_HEADER_BYTES..start]) {
                Ok(Some((body, end)))
            } else {
                Err(ProtocolError::Unauthenticated(
                    "its tag does not match the cluster secret",
                ))
            }
        }
        (None, true) => Err(ProtocolError::Unauthenticated(
            "an authenticated frame where a plain one was expected",
        )),
        (Some(_), false) => Err(ProtocolError::Unauthenticated(
            "a plain frame where an authenticated one was expected",
        )),
    }
}

fn verifier_options() -> flatbuffers::VerifierOptions {
    flatbuffers::VerifierOptions {
        max_depth: 16,
        max_tables: 100_000,
        max_apparent_size: FRAME_BYTES_MAX * 2,
        ..Default::default()
    }
}

/// Verifies and opens a request body.
///
/// # Errors
/// [`ProtocolError::Malformed`] for anything the verifier rejects.
pub fn parse_request(body: &[u8]) -> Result<fb::Request<'_>, ProtocolError> {
    flatbuffers::root_with_opts::<fb::Request>(&verifier_options(), body)
        .map_err(|e| ProtocolError::Malformed(e.to_string()))
}

/// Verifies and opens a response body.
///
/// # Errors
/// [`ProtocolError::Malformed`] for anything the verifier rejects.
pub fn parse_response(body: &[u8]) -> Result<fb::Response<'_>, ProtocolError> {
    flatbuffers::root_with_opts::<fb::Response>(&verifier_options(), body)
        .map_err(|e| ProtocolError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build;
    use proptest::prelude::*;

    fn put_request(id: u64, key: &[u8], value: &[u8]) -> Vec<u8> {
        build::put(
            id,
            &build::Put {
                key,
                value,
                ttl_ms: 29_500,
                w: Some(fb::Quorum::new(fb::QuorumKind::Quorum, 0)),
                ..build::Put::default()
            },
        )
    }

    #[test]
    fn a_request_round_trips_through_a_frame() {
        let body = put_request(42, b"user:1", &[7u8; 1000]);
        let mut wire = Vec::new();
        encode_frame(&body, &mut wire).expect("within the limit");
        encode_frame(&body, &mut wire).expect("within the limit");
        let (first, used) = split_frame(&wire, None).expect("valid").expect("whole");
        assert_eq!(used, 4 + body.len());
        let req = parse_request(first).expect("parses");
        assert_eq!(req.id(), 42);
        assert_eq!(req.timeout_ms(), 0);
        let put = req.op_as_put().expect("a put");
        assert_eq!(put.key().bytes(), b"user:1");
        assert_eq!(put.value().len(), 1000);
        assert_eq!(put.ttl_ms(), 29_500);
        // For peers that predate `ttl_ms`: the seconds, rounded up.
        assert_eq!(put.ttl_seconds(), 30);
        assert_eq!(put.w().map(fb::Quorum::kind), Some(fb::QuorumKind::Quorum));
        assert!(put.expected_version().is_none());
        // The second frame follows; a partial one waits for more bytes.
        assert!(split_frame(&wire[used..], None).expect("valid").is_some());
        for cut in 0..wire.len() - used {
            assert_eq!(
                split_frame(&wire[used..used + cut], None),
                Ok(None),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn oversized_and_empty_frames_are_refused_from_the_header() {
        let too_big = u32::try_from(FRAME_BYTES_MAX + 1).expect("fits");
        assert_eq!(
            split_frame(&too_big.to_le_bytes(), None),
            Err(ProtocolError::FrameTooLarge {
                len: FRAME_BYTES_MAX + 1,
                max: FRAME_BYTES_MAX
            })
        );
        assert_eq!(frame_header([0; 4]), Err(ProtocolError::EmptyFrame));
        // Nothing over the limit or empty is ever encoded: a typed error, nothing appended.
        let mut out = vec![1, 2];
        assert_eq!(
            encode_frame(&vec![0u8; FRAME_BYTES_MAX + 1], &mut out),
            Err(ProtocolError::FrameTooLarge {
                len: FRAME_BYTES_MAX + 1,
                max: FRAME_BYTES_MAX
            })
        );
        assert_eq!(encode_frame(&[], &mut out), Err(ProtocolError::EmptyFrame));
        assert_eq!(out, vec![1, 2]);
        assert!(frame_header(u32::MAX.to_le_bytes()).is_err());
    }

    #[test]
    fn authenticated_frames_pass_only_with_the_same_key_and_domain() {
        use crate::auth::{ClusterKey, Domain};
        let key = ClusterKey::new(&[3u8; 32]).expect("key");
        let other = ClusterKey::new(&[4u8; 32]).expect("key");
        let body = put_request(9, b"k", b"v");
        let mut wire = Vec::new();
        encode_authenticated_frame(&body, &key, Domain::Request, &mut wire).expect("small");
        assert_eq!(wire.len(), 4 + AUTH_TAG_BYTES + body.len());
        let auth = Some((&key, Domain::Request));
        assert_eq!(split_frame(&wire, auth), Ok(Some((&body[..], wire.len()))));
        for cut in 0..wire.len() {
            assert_eq!(split_frame(&wire[..cut], auth), Ok(None), "cut at {cut}");
        }
        let refused = |r: Result<Option<(&[u8], usize)>, ProtocolError>| {
            matches!(r, Err(ProtocolError::Unauthenticated(_)))
        };
        assert!(refused(split_frame(&wire, Some((&other, Domain::Request)))));
        assert!(refused(split_frame(&wire, Some((&key, Domain::Answer)))));
        assert!(
            refused(split_frame(&wire, None)),
            "a client expects plain frames"
        );
        let mut flipped = wire.clone();
        *flipped.last_mut().expect("bytes") ^= 1;
        assert!(refused(split_frame(&flipped, auth)));
        let mut plain = Vec::new();
        encode_frame(&body, &mut plain).expect("small");
        assert!(
            refused(split_frame(&plain, auth)),
            "a node expects authenticated frames"
        );
    }

    #[test]
    fn a_request_missing_a_required_field_is_malformed() {
        // A Request with only an id and no op (the generated builder refuses to make one, so
        // the table is built by hand): the verifier refuses it, as op is required.
        let mut b = flatbuffers::FlatBufferBuilder::new();
        let start = b.start_table();
        b.push_slot::<u64>(fb::Request::VT_ID, 1, 0);
        let table = b.end_table(start);
        b.finish_minimal(table);
        assert!(matches!(
            parse_request(b.finished_data()),
            Err(ProtocolError::Malformed(_))
        ));
    }

    proptest! {
        /// Arbitrary bytes, and valid requests with bytes flipped or cut, never panic the
        /// decoder: they parse or they are a typed error.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = split_frame(&bytes, None);
            let _ = parse_request(&bytes).map(|r| (r.id(), r.op_type()));
            let _ = parse_response(&bytes).map(|r| r.id());
        }

        #[test]
        fn damaged_requests_never_panic(flip in 0usize..200, bit in 0u8..8, cut in 0usize..200) {
            let mut body = put_request(7, b"k", b"value");
            let at = flip % body.len();
            body[at] ^= 1 << bit;
            body.truncate(body.len() - cut % body.len());
            if let Ok(req) = parse_request(&body) {
                // A verified buffer can be read field by field without panicking.
                if let Some(put) = req.op_as_put() {
                    let _ = (put.key().len(), put.value().len(), put.ttl_seconds());
                }
            }
        }
    }
}
