//! The Redis protocol (RESP2), sans IO: what the `resp` driver sends (`GET`, `SET`, `DEL`,
//! pipelined) and an incremental reader of what Redis-protocol servers answer.
//!
//! * Commands are arrays of bulk strings ([`command`]).
//! * [`parse`] reads one reply from the front of a buffer: `Ok(None)` when more bytes are
//!   needed, `Ok(Some((reply, used)))` when one is complete. Bad input is a [`RespError`],
//!   never a panic; lengths are bounded ([`BULK_BYTES_MAX`], [`ARRAY_ITEMS_MAX`], nesting
//!   [`DEPTH_MAX`]) so that a hostile server cannot make the reader allocate without limit.

use std::fmt;

/// The longest bulk string read (Redis's own `proto-max-bulk-len` default is 512 MiB; a
/// benchmark never needs more than its values).
pub const BULK_BYTES_MAX: usize = 64 << 20;
/// The most items in an array read.
pub const ARRAY_ITEMS_MAX: usize = 1 << 20;
/// The deepest nesting of arrays read.
pub const DEPTH_MAX: usize = 8;

/// One reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`.
    Simple(String),
    /// `-ERR …`.
    Error(String),
    /// `:42`.
    Integer(i64),
    /// `$3\r\nabc` (`None`: the null bulk string, `$-1`).
    Bulk(Option<Vec<u8>>),
    /// `*2\r\n…` (`None`: the null array, `*-1`).
    Array(Option<Vec<Reply>>),
}

/// A reply that does not follow the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RespError(pub String);

impl fmt::Display for RespError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad RESP reply: {}", self.0)
    }
}

impl std::error::Error for RespError {}

/// Appends the command `args` (an array of bulk strings) to `out`.
pub fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// The line at the front of `buf` (without its CRLF) and the bytes it used, or `None` if it
/// is not complete yet.
fn line(buf: &[u8]) -> Result<Option<(&[u8], usize)>, RespError> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some((&buf[..i], i + 2))),
        // A line is short: a long one without its end is not a reply.
        None if buf.len() > 64 << 10 => Err(RespError("a line over 64 KiB".into())),
        None => Ok(None),
    }
}

fn number(text: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| RespError(format!("not a number: {:?}", String::from_utf8_lossy(text))))
}

/// Reads one reply from the front of `buf` (see the module documentation).
///
/// # Errors
/// [`RespError`] for bytes that are not a reply, or lengths past the bounds.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, RespError> {
    parse_at(buf, 0)
}

fn parse_at(buf: &[u8], depth: usize) -> Result<Option<(Reply, usize)>, RespError> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let Some((text, used)) = line(&buf[1..])? else {
        return Ok(None);
    };
    let used = used + 1;
    let utf8 = |t: &[u8]| String::from_utf8_lossy(t).into_owned();
    match kind {
        b'+' => Ok(Some((Reply::Simple(utf8(text)), used))),
        b'-' => Ok(Some((Reply::Error(utf8(text)), used))),
        b':' => Ok(Some((Reply::Integer(number(text)?), used))),
        b'$' => {
            let n = number(text)?;
            if n == -1 {
                return Ok(Some((Reply::Bulk(None), used)));
            }
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n <= BULK_BYTES_MAX)
                .ok_or_else(|| RespError(format!("bulk length {n}")))?;
            let rest = &buf[used..];
            if rest.len() < n + 2 {
                return Ok(None);
            }
            if &rest[n..n + 2] != b"\r\n" {
                return Err(RespError("a bulk string without its CRLF".into()));
            }
            Ok(Some((Reply::Bulk(Some(rest[..n].to_vec())), used + n + 2)))
        }
        b'*' => {
            let n = number(text)?;
            if n == -1 {
                return Ok(Some((Reply::Array(None), used)));
            }
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n <= ARRAY_ITEMS_MAX)
                .ok_or_else(|| RespError(format!("array length {n}")))?;
            if depth >= DEPTH_MAX {
                return Err(RespError("arrays nested too deep".into()));
            }
            let mut items = Vec::with_capacity(n.min(1024));
            let mut at = used;
            for _ in 0..n {
                match parse_at(&buf[at..], depth + 1)? {
                    Some((item, len)) => {
                        items.push(item);
                        at += len;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(Some(items)), at)))
        }
        other => Err(RespError(format!("unknown reply type {other:#04x}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        command(&mut out, &[b"SET", b"k", b"v\r\n"]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n");
    }

    #[test]
    fn every_reply_type_and_partial_input() {
        let cases: Vec<(&[u8], Reply)> = vec![
            (b"+OK\r\n", Reply::Simple("OK".into())),
            (b"-ERR wrong\r\n", Reply::Error("ERR wrong".into())),
            (b":42\r\n", Reply::Integer(42)),
            (b"$3\r\nabc\r\n", Reply::Bulk(Some(b"abc".to_vec()))),
            (b"$0\r\n\r\n", Reply::Bulk(Some(Vec::new()))),
            (b"$-1\r\n", Reply::Bulk(None)),
            (b"*-1\r\n", Reply::Array(None)),
            (
                b"*2\r\n$1\r\na\r\n:7\r\n",
                Reply::Array(Some(vec![
                    Reply::Bulk(Some(b"a".to_vec())),
                    Reply::Integer(7),
                ])),
            ),
        ];
        for (bytes, want) in cases {
            // Every prefix asks for more; the whole is one reply; pipelined ones come apart.
            for cut in 0..bytes.len() {
                assert_eq!(parse(&bytes[..cut]), Ok(None), "{:?}", &bytes[..cut]);
            }
            assert_eq!(parse(bytes), Ok(Some((want.clone(), bytes.len()))));
            let two = [bytes, bytes].concat();
            assert_eq!(parse(&two), Ok(Some((want, bytes.len()))));
        }
    }

    #[test]
    fn bad_replies_are_errors() {
        for bad in [
            &b"?\r\n"[..],
            b":x\r\n",
            b"$-2\r\n",
            b"$3\r\nabcde",
            b"*-5\r\n",
            b"$999999999999\r\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let deep = "*1\r\n".repeat(DEPTH_MAX + 1) + ":1\r\n";
        assert!(parse(deep.as_bytes()).is_err());
        assert!(parse(&vec![b'+'; 70_000]).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn bulk_strings_round_trip(value in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut out = Vec::new();
            command(&mut out, &[&value]);
            // A command is an array of one bulk string: it parses back.
            let parsed = parse(&out).expect("valid");
            prop_assert_eq!(
                parsed,
                Some((Reply::Array(Some(vec![Reply::Bulk(Some(value))])), out.len()))
            );
        }
    }
}
