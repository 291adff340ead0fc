//! The drivers: how one connection of a `loadgen` thread sends a batch of the workload's
//! operations and learns what each did.
//!
//! * `native`: Dynacore's Rust SDK. One client per thread, token- and shard-aware; a
//!   "connection" is a request slot on it, and a batch runs its operations concurrently.
//! * `http`: Dynacore's HTTP API (`GET`/`PUT /keys/{key}` with raw bytes, `?r=`/`?w=`) over
//!   one keep-alive connection; a batch is written at once (HTTP/1.1 pipelining) and the
//!   answers read in order.
//! * `resp`: the Redis protocol (`GET`, `SET`) over one connection, pipelined the same way, so
//!   that the same workload runs against Redis or any server that speaks RESP.
//!
//! Whatever a server answers or fails to answer is an outcome counted by kind ([`Done`]):
//! a bad reply, a reset connection or a timeout fails the operations it touched and the
//! connection is opened again for the next batch.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::str::FromStr;
use std::time::{Duration, Instant};

use dynacore_client::glommio::Client;
use dynacore_client::{ClientError, Quorum, ReadRepair, WriteOptions};
use dynacore_runtime::{self as runtime, TcpReader, TcpStream, TcpWriter};

use crate::resp;
use crate::workload::{key_name, OpKind, Operation};

/// Which protocol a run speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverKind {
    /// Dynacore's binary protocol through the Rust SDK.
    Native,
    /// Dynacore's HTTP API.
    Http,
    /// The Redis protocol.
    Resp,
}

impl DriverKind {
    /// The name on the command line.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            DriverKind::Native => "native",
            DriverKind::Http => "http",
            DriverKind::Resp => "resp",
        }
    }
}

impl FromStr for DriverKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "native" => Ok(DriverKind::Native),
            "http" => Ok(DriverKind::Http),
            "resp" => Ok(DriverKind::Resp),
            other => Err(format!(
                "--driver must be native, http or resp, not {other:?}"
            )),
        }
    }
}

/// What one operation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Done {
    /// It succeeded.
    Ok,
    /// A read found no value.
    NotFound,
    /// The driver cannot run it (a scan).
    Skipped,
    /// It failed, by kind (`timeout`, `connection`, `unavailable`, …).
    Failed(String),
}

/// What every connection of a run shares.
#[derive(Debug)]
pub struct Settings {
    /// Prefix of every key.
    pub key_prefix: String,
    /// The value written.
    pub value: Vec<u8>,
    /// Dynacore's write quorum (native and http).
    pub w: Quorum,
    /// Dynacore's read quorum (native and http).
    pub r: Quorum,
    /// Deadline of a batch (and of a connection attempt).
    pub timeout: Duration,
}

/// The kind of a failed SDK request, as reports count it.
#[must_use]
pub fn error_kind(e: &ClientError) -> String {
    match e {
        ClientError::Connect { .. } => "connect".into(),
        ClientError::Io(_) => "connection".into(),
        ClientError::Timeout => "timeout".into(),
        ClientError::InvalidArgument(_) => "invalid_argument".into(),
        ClientError::ConditionFailed { .. } => "condition_failed".into(),
        ClientError::Server { code, .. } => format!("{code:?}").to_lowercase(),
        ClientError::Protocol(_) => "protocol".into(),
        ClientError::Overloaded(_) => "overloaded".into(),
    }
}

/// One connection of a thread.
#[derive(Debug)]
pub enum Conn {
    /// A request slot on the thread's SDK client.
    Native(Client),
    /// A connection speaking HTTP or RESP.
    Wire(Wire),
}

impl Conn {
    /// Runs `ops` as one batch; `done(i, outcome, when)` is called once for each operation
    /// `i` as it completes.
    pub async fn run(
        &mut self,
        ops: &[Operation],
        settings: &Rc<Settings>,
        done: &mut dyn FnMut(usize, Done, Instant),
    ) {
        match self {
            Conn::Native(client) => run_native(client, ops, settings, done).await,
            Conn::Wire(wire) => wire.run(ops, settings, done).await,
        }
    }
}

async fn native_put(client: &Client, key: &[u8], s: &Settings) -> Result<(), ClientError> {
    let options = WriteOptions {
        w: Some(s.w),
        ..WriteOptions::default()
    };
    client.put_with(key, &s.value, &options).await.map(drop)
}

async fn native_op(client: &Client, op: Operation, s: &Settings) -> Done {
    let key = key_name(&s.key_prefix, op.key);
    let key = key.as_bytes();
    let read = || client.consistent_get(key, s.r, ReadRepair::Default);
    let outcome = match op.kind {
        OpKind::Read => read().await.map(|v| v.is_some()),
        OpKind::Update | OpKind::Insert => native_put(client, key, s).await.map(|()| true),
        OpKind::ReadModifyWrite => match read().await {
            Ok(_) => native_put(client, key, s).await.map(|()| true),
            Err(e) => Err(e),
        },
        OpKind::Scan => return Done::Skipped,
    };
    match outcome {
        Ok(true) => Done::Ok,
        Ok(false) => Done::NotFound,
        Err(e) => Done::Failed(error_kind(&e)),
    }
}

async fn run_native(
    client: &Client,
    ops: &[Operation],
    settings: &Rc<Settings>,
    done: &mut dyn FnMut(usize, Done, Instant),
) {
    if let [op] = ops {
        let d = native_op(client, *op, settings).await;
        done(0, d, Instant::now());
        return;
    }
    // A batch on the SDK: its operations in flight at once, each noted as it completes.
    let (tx, rx) = flume::unbounded();
    for (i, op) in ops.iter().enumerate() {
        let (client, settings, tx, op) = (client.clone(), settings.clone(), tx.clone(), *op);
        runtime::spawn_detached(async move {
            let d = native_op(&client, op, &settings).await;
            let _ = tx.send((i, d, Instant::now()));
        });
    }
    drop(tx);
    while let Ok((i, d, at)) = rx.recv_async().await {
        done(i, d, at);
    }
}

/// Which wire protocol a [`Wire`] speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Dynacore's HTTP API.
    Http,
    /// The Redis protocol.
    Resp,
}

/// One request on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmd {
    Get,
    Set,
}

/// What one answer said.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Answer {
    Found,
    Absent,
    Written,
    Failed(String),
}

/// The longest HTTP response head read.
const HEAD_BYTES_MAX: usize = 64 << 10;
/// The longest HTTP response body read.
const BODY_BYTES_MAX: usize = 64 << 20;

/// One HTTP or RESP connection, opened on first use and again after a failure.
#[derive(Debug)]
pub struct Wire {
    protocol: Protocol,
    addr: SocketAddr,
    reader: Option<TcpReader>,
    writer: Option<TcpWriter>,
    out: Vec<u8>,
    /// Bytes read and not yet parsed start at `inbuf[in_at]`.
    inbuf: Vec<u8>,
    in_at: usize,
    chunk: Vec<u8>,
}

/// Why an exchange stopped before every answer came.
#[derive(Debug)]
enum Broken {
    Io,
    Protocol,
    Closed,
}

/// One command of a round: its operation, what it is, and whether its answer completes the
/// operation (a read-modify-write's read does not).
type Step = (usize, Cmd, bool);

impl Wire {
    /// A connection to `addr` (not opened yet).
    #[must_use]
    pub fn new(protocol: Protocol, addr: SocketAddr) -> Wire {
        Wire {
            protocol,
            addr,
            reader: None,
            writer: None,
            out: Vec::new(),
            inbuf: Vec::new(),
            in_at: 0,
            chunk: vec![0u8; 64 << 10],
        }
    }

    /// Opens the connection now, if it is not open.
    ///
    /// # Errors
    /// When it cannot be opened within `timeout`.
    pub async fn open(&mut self, timeout: Duration) -> std::io::Result<()> {
        if self.reader.is_none() || self.writer.is_none() {
            let stream = TcpStream::connect(self.addr, timeout).await?;
            stream.set_nodelay(true)?;
            let (r, w) = stream.split();
            self.reader = Some(r);
            self.writer = Some(w);
            self.inbuf.clear();
            self.in_at = 0;
        }
        Ok(())
    }

    fn close(&mut self) {
        self.reader = None;
        self.writer = None;
    }

    fn encode(&mut self, cmd: Cmd, key: &str, s: &Settings) {
        match self.protocol {
            Protocol::Resp => match cmd {
                Cmd::Get => resp::command(&mut self.out, &[b"GET", key.as_bytes()]),
                Cmd::Set => resp::command(&mut self.out, &[b"SET", key.as_bytes(), &s.value]),
            },
            Protocol::Http => {
                let key = percent_encode(key);
                let head = match cmd {
                    Cmd::Get => format!(
                        "GET /keys/{key}{} HTTP/1.1\r\nHost: {}\r\nAccept: application/octet-stream\r\n\r\n",
                        quorum_query("r", s.r),
                        self.addr
                    ),
                    Cmd::Set => format!(
                        "PUT /keys/{key}{} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                        quorum_query("w", s.w),
                        self.addr,
                        s.value.len()
                    ),
                };
                self.out.extend_from_slice(head.as_bytes());
                if cmd == Cmd::Set {
                    self.out.extend_from_slice(&s.value);
                }
            }
        }
    }

    async fn run(
        &mut self,
        ops: &[Operation],
        settings: &Rc<Settings>,
        done: &mut dyn FnMut(usize, Done, Instant),
    ) {
        // Round one: every read and write, and the read of each read-modify-write; round
        // two: the writes of the read-modify-writes whose read succeeded, sent after it
        // answered (as a client that modifies what it read must).
        let mut finished = vec![false; ops.len()];
        let mut first = Vec::with_capacity(ops.len());
        for (i, op) in ops.iter().enumerate() {
            match op.kind {
                OpKind::Read => first.push((i, Cmd::Get, true)),
                OpKind::Update | OpKind::Insert => first.push((i, Cmd::Set, true)),
                OpKind::ReadModifyWrite => first.push((i, Cmd::Get, false)),
                OpKind::Scan => {
                    finished[i] = true;
                    done(i, Done::Skipped, Instant::now());
                }
            }
        }
        let mut read_ok = vec![false; ops.len()];
        let deadline = Instant::now() + settings.timeout;
        let mut round = first;
        for _ in 0..2 {
            if round.is_empty() {
                break;
            }
            let outcome = self
                .round(
                    &round,
                    ops,
                    settings,
                    deadline,
                    &mut |i, answer, at, last| {
                        if !last {
                            match answer {
                                Answer::Failed(kind) => {
                                    finished[i] = true;
                                    done(i, Done::Failed(kind), at);
                                }
                                _ => read_ok[i] = true,
                            }
                            return;
                        }
                        finished[i] = true;
                        let d = match answer {
                            Answer::Found | Answer::Written => Done::Ok,
                            Answer::Absent => Done::NotFound,
                            Answer::Failed(k) => Done::Failed(k),
                        };
                        done(i, d, at);
                    },
                )
                .await;
            if let Err(kind) = outcome {
                // The connection's state is unknown: every operation not finished failed,
                // and the next batch opens a new connection.
                self.close();
                for (i, f) in finished.iter().enumerate() {
                    if !f {
                        done(i, Done::Failed(kind.to_owned()), Instant::now());
                    }
                }
                if kind == "connect" {
                    // A server that refuses connections must not turn the loop into a spin.
                    runtime::sleep(Duration::from_millis(100)).await;
                }
                return;
            }
            round = (0..ops.len())
                .filter(|&i| read_ok[i] && !finished[i])
                .map(|i| (i, Cmd::Set, true))
                .collect();
        }
    }

    /// Sends one round and reads its answers, on a connection opened if need be; a reused
    /// connection that the server had closed (no byte came back) is opened again and the
    /// round sent once more. `answer(i, answer, when, completes)` is called in order.
    async fn round(
        &mut self,
        steps: &[Step],
        ops: &[Operation],
        settings: &Settings,
        deadline: Instant,
        answer: &mut dyn FnMut(usize, Answer, Instant, bool),
    ) -> Result<(), &'static str> {
        self.out.clear();
        for &(i, cmd, _) in steps {
            let key = key_name(&settings.key_prefix, ops[i].key);
            self.encode(cmd, &key, settings);
        }
        for attempt in 0..2 {
            let reused = self.reader.is_some();
            let left = deadline.saturating_duration_since(Instant::now());
            match runtime::timeout(left, self.open(left)).await {
                Some(Ok(())) => {}
                Some(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => return Err("timeout"),
                Some(Err(_)) => return Err("connect"),
                None => return Err("timeout"),
            }
            let answered = Cell::new(0usize);
            let left = deadline.saturating_duration_since(Instant::now());
            let outcome = runtime::timeout(left, self.exchange(steps, &answered, answer)).await;
            match outcome {
                Some(Ok(close)) => {
                    if close {
                        self.close();
                    }
                    return Ok(());
                }
                Some(Err(Broken::Io | Broken::Closed))
                    if reused && attempt == 0 && answered.get() == 0 =>
                {
                    // A keep-alive connection the server closed while it was idle.
                    self.close();
                }
                Some(Err(Broken::Io | Broken::Closed)) => return Err("connection"),
                Some(Err(Broken::Protocol)) => return Err("protocol"),
                None => return Err("timeout"),
            }
        }
        Err("connection")
    }

    /// Writes `self.out` while reading the answers (so that neither side's buffers can fill
    /// and stall the other); `answered` counts the answers read. Returns whether the server
    /// closes the connection after the last.
    async fn exchange(
        &mut self,
        steps: &[Step],
        answered: &Cell<usize>,
        answer: &mut dyn FnMut(usize, Answer, Instant, bool),
    ) -> Result<bool, Broken> {
        let Wire {
            protocol,
            reader,
            writer,
            out,
            inbuf,
            in_at,
            chunk,
            ..
        } = self;
        let (Some(reader), Some(writer)) = (reader.as_mut(), writer.as_mut()) else {
            return Err(Broken::Closed);
        };
        let protocol = *protocol;
        let write = async { writer.write_all(out).await.map_err(|_| Broken::Io) };
        let read = async {
            let mut close = false;
            for (n, &(i, cmd, last)) in steps.iter().enumerate() {
                let (a, closes) = loop {
                    let parsed = match protocol {
                        Protocol::Resp => resp_answer(&inbuf[*in_at..], cmd)
                            .map(|a| a.map(|(a, used)| (a, used, false))),
                        Protocol::Http => http_answer(&inbuf[*in_at..], cmd),
                    };
                    match parsed.map_err(|()| Broken::Protocol)? {
                        Some((a, used, closes)) => {
                            *in_at += used;
                            break (a, closes);
                        }
                        None => {
                            // Keep what is not parsed yet at the front, then read more.
                            inbuf.drain(..*in_at);
                            *in_at = 0;
                            let got = reader.read(chunk).await.map_err(|_| Broken::Io)?;
                            if got == 0 {
                                return Err(Broken::Closed);
                            }
                            inbuf.extend_from_slice(&chunk[..got]);
                        }
                    }
                };
                answered.set(n + 1);
                answer(i, a, Instant::now(), last);
                close |= closes;
                if close && n + 1 < steps.len() {
                    // The server closed after this answer: the rest are lost.
                    return Err(Broken::Closed);
                }
            }
            Ok(close)
        };
        let ((), close) = futures_lite::future::try_zip(write, read).await?;
        Ok(close)
    }
}

/// `?name=value` for a quorum other than the server's default.
fn quorum_query(name: &str, q: Quorum) -> String {
    match q {
        Quorum::Default => String::new(),
        Quorum::Quorum => format!("?{name}=quorum"),
        Quorum::All => format!("?{name}=all"),
        Quorum::Count(n) => format!("?{name}={n}"),
    }
}

/// A key as one path segment: unreserved characters as they are, the rest `%XX`.
fn percent_encode(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A RESP answer to `cmd` at the front of `buf`, and the bytes it used.
fn resp_answer(buf: &[u8], cmd: Cmd) -> Result<Option<(Answer, usize)>, ()> {
    let Some((reply, used)) = resp::parse(buf).map_err(drop)? else {
        return Ok(None);
    };
    let answer = match (cmd, reply) {
        (_, resp::Reply::Error(text)) => Answer::Failed(resp_error_kind(&text)),
        (Cmd::Get, resp::Reply::Bulk(Some(_))) => Answer::Found,
        (Cmd::Get, resp::Reply::Bulk(None)) => Answer::Absent,
        (Cmd::Set, resp::Reply::Simple(_)) => Answer::Written,
        (_, _) => Answer::Failed("unexpected_reply".into()),
    };
    Ok(Some((answer, used)))
}

/// `ERR …` → `err`, `WRONGTYPE …` → `wrongtype`: the error's code, as Redis names them.
fn resp_error_kind(text: &str) -> String {
    let code: String = text
        .split_whitespace()
        .next()
        .unwrap_or("error")
        .chars()
        .take(32)
        .collect();
    code.to_lowercase()
}

/// An HTTP answer to `cmd` at the front of `buf`: the answer, the bytes it used and
/// whether the server closes the connection after it.
fn http_answer(buf: &[u8], cmd: Cmd) -> Result<Option<(Answer, usize, bool)>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > HEAD_BYTES_MAX => return Err(()),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let status = response.code.ok_or(())?;
    let mut length = None;
    let mut close = response.version == Some(0);
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n: usize = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or(())?;
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Dynacore always sends a length; a chunked body is not its answer.
            return Err(());
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            close = v.contains("close");
        }
    }
    let length = length.unwrap_or(0);
    if length > BODY_BYTES_MAX {
        return Err(());
    }
    if buf.len() < head_len + length {
        return Ok(None);
    }
    let body = &buf[head_len..head_len + length];
    let answer = match (cmd, status) {
        (Cmd::Get, 200) => Answer::Found,
        (Cmd::Get, 404) => Answer::Absent,
        (Cmd::Set, 200..=204) => Answer::Written,
        (_, status) => Answer::Failed(http_error_kind(status, body)),
    };
    Ok(Some((answer, head_len + length, close)))
}

/// The `error` field of a JSON error body (`unavailable`, `timeout`, …), or `http_<status>`.
fn http_error_kind(status: u16, body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
        .filter(|e| !e.is_empty() && e.len() <= 32)
        .unwrap_or_else(|| format!("http_{status}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn http_answers_by_status_and_body() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 404";
        assert_eq!(
            http_answer(ok, Cmd::Get),
            Ok(Some((Answer::Found, ok.len() - 12, false)))
        );
        let absent = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(
            http_answer(absent, Cmd::Get),
            Ok(Some((Answer::Absent, absent.len(), false)))
        );
        let unavailable = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 24\r\n\r\n{\"error\":\"unavailable\"}\n";
        assert_eq!(
            http_answer(unavailable, Cmd::Set),
            Ok(Some((
                Answer::Failed("unavailable".into()),
                unavailable.len(),
                true
            )))
        );
        let plain = b"HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\noops";
        assert_eq!(
            http_answer(plain, Cmd::Get).map(|a| a.map(|a| a.0)),
            Ok(Some(Answer::Failed("http_500".into())))
        );
        // Incomplete heads and bodies ask for more; garbage and chunked bodies are errors.
        assert_eq!(http_answer(&ok[..20], Cmd::Get), Ok(None));
        assert_eq!(http_answer(&ok[..40], Cmd::Get), Ok(None));
        assert!(http_answer(b"SSH-2.0\r\n\r\n", Cmd::Get).is_err());
        assert!(http_answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            Cmd::Get
        )
        .is_err());
        assert!(http_answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
            Cmd::Get
        )
        .is_err());
    }

    #[test]
    fn resp_answers_by_reply() {
        assert_eq!(
            resp_answer(b"+OK\r\n", Cmd::Set),
            Ok(Some((Answer::Written, 5)))
        );
        assert_eq!(
            resp_answer(b"$1\r\nx\r\n", Cmd::Get),
            Ok(Some((Answer::Found, 7)))
        );
        assert_eq!(
            resp_answer(b"$-1\r\n", Cmd::Get),
            Ok(Some((Answer::Absent, 5)))
        );
        assert_eq!(
            resp_answer(b"-OOM command not allowed\r\n", Cmd::Set),
            Ok(Some((Answer::Failed("oom".into()), 26)))
        );
        assert_eq!(
            resp_answer(b":1\r\n", Cmd::Get),
            Ok(Some((Answer::Failed("unexpected_reply".into()), 4)))
        );
        assert_eq!(resp_answer(b"$5\r\nab", Cmd::Get), Ok(None));
        assert!(resp_answer(b"?\r\n", Cmd::Get).is_err());
    }

    #[test]
    fn keys_and_quorums_in_urls() {
        assert_eq!(percent_encode("user:1 a/b"), "user%3A1%20a%2Fb");
        assert_eq!(percent_encode("user123"), "user123");
        assert_eq!(quorum_query("w", Quorum::Default), "");
        assert_eq!(quorum_query("w", Quorum::Count(2)), "?w=2");
        assert_eq!(quorum_query("r", Quorum::All), "?r=all");
    }

    proptest! {
        #[test]
        fn arbitrary_http_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = http_answer(&bytes, Cmd::Get);
            let _ = http_answer(&bytes, Cmd::Set);
        }

        #[test]
        fn encoded_keys_decode_back(key in "[ -~]{1,40}") {
            let encoded = percent_encode(&key);
            let decoded = dynacore_net::frontend::http_codec::percent_decode(&encoded).expect("valid escapes");
            prop_assert_eq!(decoded, key.into_bytes());
        }
    }
}
