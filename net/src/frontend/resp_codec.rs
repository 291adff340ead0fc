//! The Redis protocol's command reader and reply writer (RESP2 and RESP3): sans-IO, so that
//! every rule can be tested on bytes and the server only moves them.
//!
//! A client sends a command as an array of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`, what
//! every client library and `redis-benchmark` send) or as an *inline* command, one line of
//! words (what `redis-cli` piped from a file or a telnet session sends), in which `"…"` and
//! `'…'` quote a word with spaces, and `"…"` knows the escapes `\n`, `\r`, `\t`, `\b`, `\a`,
//! `\\`, `\"` and `\xHH`. Commands are read one after another from one buffer (pipelining).
//!
//! What the reader refuses is a [`ProtocolError`], worded as Redis words it (`Protocol error:
//! invalid bulk length`); Redis answers it as an error and closes the connection, and so does
//! the server. A bulk string longer than [`Limits::bulk_bytes_max`] is refused from its length
//! alone, before any of it is buffered.
//!
//! Replies are [`Reply`] values written for the connection's protocol version ([`Protocol`]):
//! RESP3's types (null, map, set, double, boolean, verbatim string) become their RESP2 forms on
//! a RESP2 connection, as Redis 6 and later write them.

use std::fmt;

use dynacore_proto::VALUE_BYTES_MAX;

/// Limits on what a command may hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Arguments of one command (the command's name included).
    pub args_max: usize,
    /// Bytes of one bulk string (an argument).
    pub bulk_bytes_max: usize,
    /// Bytes of an inline command's line.
    pub inline_bytes_max: usize,
}

impl Default for Limits {
    /// A million arguments (an `MSET` of half a million pairs), a bulk string of a value's
    /// 10 MiB limit plus 64 KiB, an inline line of 64 KiB (Redis's own inline limit).
    fn default() -> Self {
        Limits {
            args_max: 1 << 20,
            bulk_bytes_max: VALUE_BYTES_MAX + (64 << 10),
            inline_bytes_max: 64 << 10,
        }
    }
}

/// Why bytes from a client are not a command. The connection is answered `-ERR <this>` and
/// closed: the reader cannot know where the next command would start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// An array's count is not a number, or is over [`Limits::args_max`].
    MultibulkLength,
    /// A bulk string's length is not a number, or is over [`Limits::bulk_bytes_max`].
    BulkLength,
    /// An array element is not a bulk string.
    ExpectedBulk(u8),
    /// A bulk string is not followed by `\r\n`.
    BulkTerminator,
    /// An inline line longer than [`Limits::inline_bytes_max`] (or an array's or bulk's header
    /// line that long).
    TooBigInline,
    /// An inline line with a quote that is not closed, or a closing quote not followed by a
    /// space.
    UnbalancedQuotes,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::MultibulkLength => {
                f.write_str("Protocol error: invalid multibulk length")
            }
            ProtocolError::BulkLength => f.write_str("Protocol error: invalid bulk length"),
            ProtocolError::ExpectedBulk(b) => write!(
                f,
                "Protocol error: expected '$', got '{}'",
                char::from(*b).escape_default()
            ),
            ProtocolError::BulkTerminator => {
                f.write_str("Protocol error: a bulk string is not followed by CRLF")
            }
            ProtocolError::TooBigInline => f.write_str("Protocol error: too big inline request"),
            ProtocolError::UnbalancedQuotes => {
                f.write_str("Protocol error: unbalanced quotes in request")
            }
        }
    }
}

impl std::error::Error for ProtocolError {}

/// One command as read: its arguments, the command's name first (an empty inline line is no
/// command and is skipped, as Redis skips it).
pub type Command = Vec<Vec<u8>>;

/// Reads the next command from `buf`: `Ok(Some((command, used)))` with the bytes it took,
/// `Ok(None)` while `buf` does not hold all of it yet (read more and call again with the same
/// start).
///
/// # Errors
/// [`ProtocolError`] when the bytes are not a command; nothing after them can be read.
pub fn read_command(
    buf: &[u8],
    limits: &Limits,
) -> Result<Option<(Command, usize)>, ProtocolError> {
    let mut at = 0;
    loop {
        match buf.get(at) {
            None => return Ok(None),
            Some(b'*') => return read_array(buf, at, limits),
            Some(_) => {
                let Some((args, used)) = read_inline(&buf[at..], limits)? else {
                    return Ok(None);
                };
                at += used;
                if !args.is_empty() {
                    return Ok(Some((args, at)));
                }
            }
        }
    }
}

/// The line starting at `at` (without its `\r\n`) and the offset after it; `None` while
/// incomplete.
fn line<'a>(
    buf: &'a [u8],
    at: usize,
    limits: &Limits,
) -> Result<Option<(&'a [u8], usize)>, ProtocolError> {
    let rest = &buf[at..];
    match rest.iter().position(|&b| b == b'\n') {
        Some(end) => {
            if end > limits.inline_bytes_max {
                return Err(ProtocolError::TooBigInline);
            }
            let text = &rest[..end];
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            Ok(Some((text, at + end + 1)))
        }
        None if rest.len() > limits.inline_bytes_max => Err(ProtocolError::TooBigInline),
        None => Ok(None),
    }
}

/// A decimal integer as RESP writes counts and lengths: an optional `-`, then digits.
fn number(text: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(text).ok()?;
    if s.is_empty() || s.starts_with('+') {
        return None;
    }
    s.parse().ok()
}

fn read_array(
    buf: &[u8],
    start: usize,
    limits: &Limits,
) -> Result<Option<(Command, usize)>, ProtocolError> {
    let Some((header, mut at)) = line(buf, start, limits)? else {
        return Ok(None);
    };
    let count = number(&header[1..]).ok_or(ProtocolError::MultibulkLength)?;
    if count <= 0 {
        // `*0` and `*-1` are no command: skipped, as Redis skips them.
        return match read_command(&buf[at..], limits)? {
            Some((args, used)) => Ok(Some((args, at + used))),
            None => Ok(None),
        };
    }
    let count = usize::try_from(count).map_err(|_| ProtocolError::MultibulkLength)?;
    if count > limits.args_max {
        return Err(ProtocolError::MultibulkLength);
    }
    // The count is the client's word: grow the list as arguments arrive, not from it.
    let mut args = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let Some(&kind) = buf.get(at) else {
            return Ok(None);
        };
        if kind != b'$' {
            return Err(ProtocolError::ExpectedBulk(kind));
        }
        let Some((header, body)) = line(buf, at, limits)? else {
            return Ok(None);
        };
        let len = number(&header[1..]).ok_or(ProtocolError::BulkLength)?;
        let len = usize::try_from(len).map_err(|_| ProtocolError::BulkLength)?;
        if len > limits.bulk_bytes_max {
            return Err(ProtocolError::BulkLength);
        }
        let end = body + len;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ProtocolError::BulkTerminator);
        }
        args.push(buf[body..end].to_vec());
        at = end + 2;
    }
    Ok(Some((args, at)))
}

/// An inline command's words and the bytes its line took (empty words: a blank line).
fn read_inline(buf: &[u8], limits: &Limits) -> Result<Option<(Command, usize)>, ProtocolError> {
    let Some((text, used)) = line(buf, 0, limits)? else {
        return Ok(None);
    };
    Ok(Some((split_words(text)?, used)))
}

/// Splits an inline line into words as Redis's `sdssplitargs` does.
fn split_words(text: &[u8]) -> Result<Command, ProtocolError> {
    let mut words = Vec::new();
    let mut i = 0;
    while i < text.len() {
        while i < text.len() && text[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == text.len() {
            break;
        }
        let mut word = Vec::new();
        match text[i] {
            b'"' => {
                i += 1;
                loop {
                    match text.get(i) {
                        None => return Err(ProtocolError::UnbalancedQuotes),
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') => {
                            let (byte, took) = escape(&text[i..]);
                            word.push(byte);
                            i += took;
                        }
                        Some(&b) => {
                            word.push(b);
                            i += 1;
                        }
                    }
                }
                end_of_quoted(text, i)?;
            }
            b'\'' => {
                i += 1;
                loop {
                    match text.get(i) {
                        None => return Err(ProtocolError::UnbalancedQuotes),
                        Some(b'\'') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') if text.get(i + 1) == Some(&b'\'') => {
                            word.push(b'\'');
                            i += 2;
                        }
                        Some(&b) => {
                            word.push(b);
                            i += 1;
                        }
                    }
                }
                end_of_quoted(text, i)?;
            }
            _ => {
                while i < text.len() && !text[i].is_ascii_whitespace() {
                    word.push(text[i]);
                    i += 1;
                }
            }
        }
        words.push(word);
    }
    Ok(words)
}

/// A closing quote must end its word.
fn end_of_quoted(text: &[u8], i: usize) -> Result<(), ProtocolError> {
    match text.get(i) {
        None => Ok(()),
        Some(b) if b.is_ascii_whitespace() => Ok(()),
        Some(_) => Err(ProtocolError::UnbalancedQuotes),
    }
}

/// The byte a backslash escape in a double-quoted word stands for, and the bytes it took.
fn escape(at: &[u8]) -> (u8, usize) {
    let hex = |b: u8| char::from(b).to_digit(16);
    match at.get(1) {
        Some(b'x') => {
            if let (Some(&h), Some(&l)) = (at.get(2), at.get(3)) {
                if let (Some(h), Some(l)) = (hex(h), hex(l)) {
                    // Two hex digits: below 256.
                    return (u8::try_from(h * 16 + l).unwrap_or(0), 4);
                }
            }
            (b'x', 2)
        }
        Some(b'n') => (b'\n', 2),
        Some(b'r') => (b'\r', 2),
        Some(b't') => (b'\t', 2),
        Some(b'b') => (8, 2),
        Some(b'a') => (7, 2),
        Some(&other) => (other, 2),
        // A backslash at the end: the quote is never closed (caught by the caller).
        None => (b'\\', 1),
    }
}

/// The protocol version a connection speaks (`HELLO 3` moves it to RESP3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// RESP2, every connection's start.
    #[default]
    Resp2,
    /// RESP3.
    Resp3,
}

/// A reply, in RESP3's types; [`Reply::encode`] writes it for either protocol.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// `+OK`: a line without `\r` or `\n`.
    Simple(String),
    /// `-ERR …`: the first word is the error's code (`ERR`, `WRONGTYPE`, `NOAUTH`, …).
    Error(String),
    /// `:42`.
    Integer(i64),
    /// `$3\r\nabc`.
    Bulk(Vec<u8>),
    /// No value: `_` in RESP3, `$-1` in RESP2.
    Null,
    /// No array (a transaction that was not run): `_` in RESP3, `*-1` in RESP2.
    NullArray,
    /// `*N`.
    Array(Vec<Reply>),
    /// `%N` in RESP3; a flat array of keys and values in RESP2.
    Map(Vec<(Reply, Reply)>),
    /// `~N` in RESP3; an array in RESP2.
    Set(Vec<Reply>),
    /// `,1.5` in RESP3; a bulk string in RESP2.
    Double(f64),
    /// `#t` in RESP3; `:1` / `:0` in RESP2.
    Boolean(bool),
    /// `=N\r\ntxt:…` in RESP3 (the format is three bytes, e.g. `txt`); a bulk string in RESP2.
    Verbatim(&'static str, String),
}

impl Reply {
    /// `+OK`.
    #[must_use]
    pub fn ok() -> Reply {
        Reply::Simple("OK".to_owned())
    }

    /// `-ERR <message>`.
    #[must_use]
    pub fn err(message: impl fmt::Display) -> Reply {
        Reply::Error(format!("ERR {message}"))
    }

    /// Writes the reply for `protocol` at the end of `out`.
    pub fn encode(&self, protocol: Protocol, out: &mut Vec<u8>) {
        let resp3 = protocol == Protocol::Resp3;
        match self {
            Reply::Simple(s) => line_out(out, b'+', s),
            Reply::Error(s) => line_out(out, b'-', s),
            Reply::Integer(n) => header(out, b':', *n),
            Reply::Bulk(b) => bulk(out, b'$', b),
            Reply::Null | Reply::NullArray if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::Null => out.extend_from_slice(b"$-1\r\n"),
            Reply::NullArray => out.extend_from_slice(b"*-1\r\n"),
            Reply::Array(items) => {
                header(out, b'*', len_i64(items.len()));
                for r in items {
                    r.encode(protocol, out);
                }
            }
            Reply::Map(pairs) => {
                if resp3 {
                    header(out, b'%', len_i64(pairs.len()));
                } else {
                    header(out, b'*', len_i64(pairs.len().saturating_mul(2)));
                }
                for (k, v) in pairs {
                    k.encode(protocol, out);
                    v.encode(protocol, out);
                }
            }
            Reply::Set(items) => {
                header(out, if resp3 { b'~' } else { b'*' }, len_i64(items.len()));
                for r in items {
                    r.encode(protocol, out);
                }
            }
            Reply::Double(d) => {
                let text = double_text(*d);
                if resp3 {
                    line_out(out, b',', &text);
                } else {
                    bulk(out, b'$', text.as_bytes());
                }
            }
            Reply::Boolean(b) if resp3 => {
                out.extend_from_slice(if *b { b"#t\r\n" } else { b"#f\r\n" });
            }
            Reply::Boolean(b) => header(out, b':', i64::from(*b)),
            Reply::Verbatim(format, text) => {
                if resp3 {
                    assert_eq!(format.len(), 3, "a verbatim string's format is three bytes");
                    let mut body = Vec::with_capacity(4 + text.len());
                    body.extend_from_slice(format.as_bytes());
                    body.push(b':');
                    body.extend_from_slice(text.as_bytes());
                    bulk(out, b'=', &body);
                } else {
                    bulk(out, b'$', text.as_bytes());
                }
            }
        }
    }
}

fn len_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn header(out: &mut Vec<u8>, kind: u8, n: i64) {
    out.push(kind);
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn bulk(out: &mut Vec<u8>, kind: u8, bytes: &[u8]) {
    header(out, kind, len_i64(bytes.len()));
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// A simple string or error: a line break inside would end it early and desynchronize the
/// client, so each becomes a space (as Redis does).
fn line_out(out: &mut Vec<u8>, kind: u8, text: &str) {
    out.push(kind);
    out.extend(
        text.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

/// A double as RESP3 writes it: `inf`, `-inf`, `nan`, or the shortest decimal that reads back.
fn double_text(d: f64) -> String {
    if d.is_nan() {
        "nan".to_owned()
    } else if d.is_infinite() {
        if d > 0.0 { "inf" } else { "-inf" }.to_owned()
    } else {
        format!("{d}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8]) -> Result<Option<(Command, usize)>, ProtocolError> {
        read_command(bytes, &Limits::default())
    }

    fn args(words: &[&str]) -> Command {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    fn encoded(r: &Reply, p: Protocol) -> String {
        let mut out = Vec::new();
        r.encode(p, &mut out);
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn arrays_of_bulk_strings_are_read_one_after_another() {
        let two = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n";
        let (first, used) = read(two).expect("valid").expect("complete");
        assert_eq!(first, args(&["GET", "k"]));
        let (second, used2) = read(&two[used..]).expect("valid").expect("complete");
        assert_eq!(second, args(&["SET", "k", ""]));
        assert_eq!(used + used2, two.len());
        // Binary-safe: CR and LF inside a bulk string are its bytes.
        let (bin, _) = read(b"*2\r\n$3\r\nSET\r\n$4\r\na\r\nb\r\n")
            .expect("valid")
            .expect("complete");
        assert_eq!(bin[1], b"a\r\nb".to_vec());
    }

    #[test]
    fn a_command_cut_anywhere_waits_for_the_rest() {
        let whole = b"*3\r\n$3\r\nSET\r\n$5\r\nhello\r\n$5\r\nworld\r\n";
        for cut in 0..whole.len() {
            assert_eq!(read(&whole[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(
            read(whole),
            Ok(Some((args(&["SET", "hello", "world"]), whole.len())))
        );
        let inline = b"SET k \"a b\"\r\n";
        for cut in 0..inline.len() {
            assert_eq!(read(&inline[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn inline_commands_split_like_redis() {
        let (words, used) = read(b"  set  key   value \r\n")
            .expect("valid")
            .expect("complete");
        assert_eq!((words, used), (args(&["set", "key", "value"]), 21));
        // A bare \n ends a line too, and blank lines are skipped.
        let (words, used) = read(b"\r\n\nPING\n").expect("valid").expect("complete");
        assert_eq!((words, used), (args(&["PING"]), 8));
        let (words, _) = read(b"SET \"a b\\x41\\n\" 'it\\'s' \"\"\r\n")
            .expect("valid")
            .expect("complete");
        assert_eq!(
            words,
            vec![
                b"SET".to_vec(),
                b"a bA\n".to_vec(),
                b"it's".to_vec(),
                Vec::new()
            ]
        );
        assert_eq!(
            read(b"\r\n\r\n"),
            Ok(None),
            "blank lines only: no command yet"
        );
    }

    #[test]
    fn bad_input_is_a_protocol_error_worded_like_redis() {
        let cases: &[(&[u8], ProtocolError)] = &[
            (b"*x\r\n", ProtocolError::MultibulkLength),
            (b"*+1\r\n", ProtocolError::MultibulkLength),
            (b"*1\r\n:1\r\n", ProtocolError::ExpectedBulk(b':')),
            (b"*1\r\n$-1\r\n", ProtocolError::BulkLength),
            (b"*1\r\n$abc\r\n", ProtocolError::BulkLength),
            (b"*1\r\n$3\r\nabcde\r\n", ProtocolError::BulkTerminator),
            (b"SET \"unclosed\r\n", ProtocolError::UnbalancedQuotes),
            (b"SET \"a\"b\r\n", ProtocolError::UnbalancedQuotes),
            (b"SET 'a\r\n", ProtocolError::UnbalancedQuotes),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                read(bytes).as_ref(),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        assert_eq!(
            ProtocolError::ExpectedBulk(b':').to_string(),
            "Protocol error: expected '$', got ':'"
        );
        assert_eq!(
            ProtocolError::BulkLength.to_string(),
            "Protocol error: invalid bulk length"
        );
    }

    #[test]
    fn limits_refuse_before_buffering() {
        let limits = Limits {
            args_max: 2,
            bulk_bytes_max: 8,
            inline_bytes_max: 16,
        };
        assert_eq!(
            read_command(b"*3\r\n", &limits),
            Err(ProtocolError::MultibulkLength)
        );
        // Refused from the length alone: none of the 9 bytes has arrived.
        assert_eq!(
            read_command(b"*1\r\n$9\r\n", &limits),
            Err(ProtocolError::BulkLength)
        );
        assert_eq!(
            read_command(b"*1\r\n$8\r\n12345678\r\n", &limits),
            Ok(Some((vec![b"12345678".to_vec()], 18)))
        );
        // A line that has not ended within the limit is refused without waiting for its end.
        assert_eq!(
            read_command(&[b'a'; 17], &limits),
            Err(ProtocolError::TooBigInline)
        );
        assert_eq!(read_command(&[b'a'; 16], &limits), Ok(None));
        // A huge count is the client's word only: nothing is reserved for it.
        let big = format!("*{}\r\n", 1 << 20);
        assert_eq!(read(big.as_bytes()), Ok(None));
        assert_eq!(
            read(format!("*{}\r\n", (1 << 20) + 1).as_bytes()),
            Err(ProtocolError::MultibulkLength)
        );
    }

    #[test]
    fn empty_arrays_are_skipped() {
        assert_eq!(read(b"*0\r\n"), Ok(None));
        assert_eq!(
            read(b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n"),
            Ok(Some((args(&["PING"]), 23)))
        );
    }

    #[test]
    fn replies_are_written_for_each_protocol() {
        use Protocol::{Resp2, Resp3};
        let cases: Vec<(Reply, &str, &str)> = vec![
            (Reply::ok(), "+OK\r\n", "+OK\r\n"),
            (
                Reply::err("bad\r\nthing"),
                "-ERR bad  thing\r\n",
                "-ERR bad  thing\r\n",
            ),
            (Reply::Integer(-3), ":-3\r\n", ":-3\r\n"),
            (
                Reply::Bulk(b"a\r\nb".to_vec()),
                "$4\r\na\r\nb\r\n",
                "$4\r\na\r\nb\r\n",
            ),
            (Reply::Null, "$-1\r\n", "_\r\n"),
            (Reply::NullArray, "*-1\r\n", "_\r\n"),
            (
                Reply::Array(vec![Reply::Integer(1), Reply::Null]),
                "*2\r\n:1\r\n$-1\r\n",
                "*2\r\n:1\r\n_\r\n",
            ),
            (
                Reply::Map(vec![(Reply::Bulk(b"proto".to_vec()), Reply::Integer(3))]),
                "*2\r\n$5\r\nproto\r\n:3\r\n",
                "%1\r\n$5\r\nproto\r\n:3\r\n",
            ),
            (
                Reply::Set(vec![Reply::Bulk(b"x".to_vec())]),
                "*1\r\n$1\r\nx\r\n",
                "~1\r\n$1\r\nx\r\n",
            ),
            (Reply::Double(1.5), "$3\r\n1.5\r\n", ",1.5\r\n"),
            (Reply::Double(f64::INFINITY), "$3\r\ninf\r\n", ",inf\r\n"),
            (Reply::Boolean(true), ":1\r\n", "#t\r\n"),
            (
                Reply::Verbatim("txt", "a:b".to_owned()),
                "$3\r\na:b\r\n",
                "=7\r\ntxt:a:b\r\n",
            ),
        ];
        for (reply, resp2, resp3) in cases {
            assert_eq!(encoded(&reply, Resp2), resp2, "{reply:?}");
            assert_eq!(encoded(&reply, Resp3), resp3, "{reply:?}");
        }
    }

    #[test]
    fn what_the_writer_writes_the_reader_reads_back_as_a_command() {
        // An array of bulk strings is both a reply and a command: the two agree.
        let words = args(&["MSET", "k", "v\r\n", ""]);
        let reply = Reply::Array(words.iter().cloned().map(Reply::Bulk).collect());
        let mut out = Vec::new();
        reply.encode(Protocol::Resp2, &mut out);
        assert_eq!(read(&out), Ok(Some((words, out.len()))));
    }
}
