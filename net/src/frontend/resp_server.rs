//! The Redis protocol's server: each core accepts RESP connections on the shared RESP port
//! (`SO_REUSEPORT`, as the binary and HTTP ports) and runs each command through the
//! coordinator, as an HTTP request is run: any node, any core, the node's default quorums.
//!
//! Commands are read with [`super::resp_codec`] and run one after another, in the order they
//! came; the replies of every command a read brought in go out in one write (pipelining).
//! What is served, and what each command promises, is in `docs/protocol.md` ("Redis
//! protocol"). In short: the store is database 0; `SET`, `GET`, `DEL`, `MSET`, `MGET` and the
//! others are the HTTP API's writes and reads (durable at W replicas, read at R); `SET NX` /
//! `XX` and `SETNX` are lightweight transactions, and `INCR` / `APPEND` read-modify-writes on
//! them; a command over several keys is one operation
//! per key, not atomic; `MULTI` / `EXEC` queue commands and run them in order, without
//! isolation. TTLs are kept to the second (a `PX` of 1,500 ms lives 2 s) until the binary
//! protocol carries milliseconds.

use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dynacore_proto::{Conflicts, KeyCondition, Quorum, ReadRepair};
use dynacore_runtime::{self as runtime, TcpListener, TcpStream};

use super::listen::{accept_connections, close_with, WRITE_TIMEOUT};
use super::resp_codec::{read_command, Command, Limits, Protocol as Resp, Reply};
use crate::coordinator::{self, ReadRequest, WriteRequest};
use crate::core::Core;
use crate::metrics::{Op, Protocol};
use crate::storage::replica::StoreError;

/// How the server treats connections.
#[derive(Clone, Debug)]
pub struct RespOptions {
    /// A connection with nothing to run for this long is closed (Redis's `timeout`; Redis's
    /// default is never, this one an hour).
    pub idle_timeout: Duration,
    /// Connections served at once per core.
    pub connections_max: usize,
    /// What a command may hold.
    pub limits: Limits,
    /// The password clients must give with `AUTH` or `HELLO … AUTH` before anything else
    /// (`None`: none asked).
    pub password: Option<String>,
}

impl Default for RespOptions {
    fn default() -> Self {
        RespOptions {
            idle_timeout: Duration::from_secs(3600),
            connections_max: 4096,
            limits: Limits::default(),
            password: None,
        }
    }
}

/// Accepts RESP connections on `listener` for as long as the task runs.
pub async fn serve_resp(listener: TcpListener, core: Core, options: RespOptions) {
    let options = Rc::new(options);
    accept_connections(
        listener,
        &core.clone(),
        Protocol::Resp,
        options.connections_max,
        |stream| {
            let (core, options) = (core.clone(), options.clone());
            async move { serve_connection(stream, &core, &options).await }
        },
        |mut stream| async move {
            let mut out = Vec::new();
            Reply::err("max number of clients reached").encode(Resp::Resp2, &mut out);
            close_with(&mut stream, &out).await;
        },
    )
    .await;
}

/// What a connection remembers between commands.
struct Session {
    protocol: Resp,
    id: u64,
    name: Option<Vec<u8>>,
    /// Commands queued since `MULTI`.
    queued: Option<Vec<Command>>,
    /// The password asked, if any.
    password: Option<String>,
    /// Whether the client gave it (or none is asked).
    authenticated: bool,
}

/// What to do after a command.
#[derive(PartialEq, Eq)]
enum Then {
    Go,
    Close,
}

thread_local! {
    /// This core's last connection number.
    static CONNECTIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A connection id unique on this node: the core in the high bits.
fn next_id(core: &Core) -> u64 {
    let n = CONNECTIONS.with(|c| {
        c.set(c.get() + 1);
        c.get()
    });
    (u64::from(core.index()) << 48) | n
}

async fn serve_connection(
    mut stream: TcpStream,
    core: &Core,
    options: &RespOptions,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut session = Session {
        protocol: Resp::Resp2,
        id: next_id(core),
        name: None,
        queued: None,
        password: options.password.clone(),
        authenticated: options.password.is_none(),
    };
    let mut buf: Vec<u8> = Vec::with_capacity(16 << 10);
    let mut chunk = vec![0u8; 16 << 10];
    loop {
        // Every command the buffer holds whole, then what ended the reading.
        let mut batch = Vec::new();
        let mut used = 0;
        let mut bad = None;
        loop {
            match read_command(&buf[used..], &options.limits) {
                Ok(Some((args, n))) => {
                    used += n;
                    batch.push(args);
                }
                Ok(None) => break,
                Err(e) => {
                    bad = Some(e);
                    break;
                }
            }
        }
        buf.drain(..used);
        let mut out = Vec::new();
        let mut then = Then::Go;
        if !batch.is_empty() {
            let Some(admission) = core.admit() else {
                Reply::err("the node is shutting down").encode(session.protocol, &mut out);
                close_with(&mut stream, &out).await;
                return Ok(());
            };
            // Reads of a single replica are CPU work on this core: running them at once only
            // adds tasks. Writes share group commits, and reads from other replicas overlap.
            let worth_it = core.cluster().replication_factor > 1 || batch.iter().any(writes);
            if session.authenticated && session.queued.is_none() && worth_it && independent(&batch)
            {
                run_together(core, batch, session.protocol, &mut out).await;
            } else {
                for args in batch {
                    let started = Instant::now();
                    let (reply, op, next) = session.run(core, args).await;
                    let ok = !matches!(reply, Reply::Error(_));
                    core.metrics()
                        .request(Protocol::Resp, op, ok, started.elapsed());
                    reply.encode(session.protocol, &mut out);
                    then = next;
                    if then == Then::Close {
                        break;
                    }
                }
            }
            drop(admission);
        }
        if let Some(e) = bad.filter(|_| then == Then::Go) {
            core.metrics().refused();
            Reply::err(&e).encode(session.protocol, &mut out);
            then = Then::Close;
        }
        if then == Then::Close {
            close_with(&mut stream, &out).await;
            return Ok(());
        }
        if !out.is_empty() {
            match runtime::timeout(WRITE_TIMEOUT, stream.write_all(&out)).await {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()), // the client does not read
            }
        }
        if buf.capacity() > 1 << 20 && buf.len() < 16 << 10 {
            buf.shrink_to(16 << 10);
        }
        match runtime::timeout(options.idle_timeout, stream.read(&mut chunk)).await {
            Some(Ok(0)) | None => return Ok(()),
            Some(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Some(Err(e)) => return Err(e),
        }
    }
}

/// The keys a data command reads or writes (`None`: not a data command, or malformed).
fn keys_of(args: &Command) -> Option<Vec<&[u8]>> {
    let argc = args.len();
    let name = args[0].to_ascii_uppercase();
    match name.as_slice() {
        b"GET" | b"STRLEN" | b"TYPE" | b"GETDEL" | b"INCR" | b"DECR" if argc == 2 => {
            Some(vec![args[1].as_slice()])
        }
        b"SETNX" | b"INCRBY" | b"DECRBY" | b"APPEND" if argc == 3 => Some(vec![args[1].as_slice()]),
        b"SET" if argc >= 3 => Some(vec![args[1].as_slice()]),
        b"SETEX" | b"PSETEX" if argc == 4 => Some(vec![args[1].as_slice()]),
        b"MGET" | b"EXISTS" | b"DEL" | b"UNLINK" if argc >= 2 => {
            Some(args[1..].iter().map(Vec::as_slice).collect())
        }
        b"MSET" if argc >= 3 && argc % 2 == 1 => {
            Some(args[1..].iter().step_by(2).map(Vec::as_slice).collect())
        }
        _ => None,
    }
}

/// Whether a command writes.
fn writes(args: &Command) -> bool {
    [
        &b"SET"[..],
        b"SETNX",
        b"SETEX",
        b"PSETEX",
        b"MSET",
        b"DEL",
        b"UNLINK",
        b"GETDEL",
        b"INCR",
        b"DECR",
        b"INCRBY",
        b"DECRBY",
        b"APPEND",
    ]
    .iter()
    .any(|w| args[0].eq_ignore_ascii_case(w))
}

/// Whether a pipelined batch may run all at once: every command a data command, and no key
/// touched by two of them — then no command can see another's effect, and running them
/// together (their writes sharing group commits) answers as running them in order would.
fn independent(batch: &[Command]) -> bool {
    if batch.len() < 2 {
        return false;
    }
    let mut seen = std::collections::HashSet::new();
    for args in batch {
        let Some(keys) = keys_of(args) else {
            return false;
        };
        for k in keys {
            if !seen.insert(k) {
                return false;
            }
        }
    }
    true
}

/// Runs an [`independent`] batch at once, each command in its own task; the replies in order.
async fn run_together(core: &Core, batch: Vec<Command>, protocol: Resp, out: &mut Vec<u8>) {
    let started = Instant::now();
    let tasks: Vec<_> = batch
        .into_iter()
        .map(|args| {
            let core = core.clone();
            runtime::spawn(async move {
                let name = args[0].to_ascii_uppercase();
                let done = data(&core, &name, &args).await;
                (done, started.elapsed())
            })
        })
        .collect();
    for task in tasks {
        let (done, elapsed) = task.await;
        let (reply, op) = done.expect("INVARIANT: an independent batch holds data commands only");
        let ok = !matches!(reply, Reply::Error(_));
        core.metrics().request(Protocol::Resp, op, ok, elapsed);
        reply.encode(protocol, out);
    }
}

/// A command's name as Redis prints it in errors (lower case).
fn lower(name: &[u8]) -> String {
    String::from_utf8_lossy(name).to_lowercase()
}

fn wrong_args(name: &[u8]) -> Reply {
    Reply::err(format!(
        "wrong number of arguments for '{}' command",
        lower(name)
    ))
}

fn syntax_error() -> Reply {
    Reply::err("syntax error")
}

fn not_integer() -> Reply {
    Reply::err("value is not an integer or out of range")
}

/// An integer argument as Redis reads one.
fn integer(arg: &[u8]) -> Option<i64> {
    std::str::from_utf8(arg).ok()?.parse().ok()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A coordinator's error as a Redis error.
fn store_error(e: &StoreError) -> Reply {
    match e {
        StoreError::InvalidKey(m) => Reply::err(format!("invalid key: {m}")),
        StoreError::ValueTooLarge(m) => Reply::err(format!("value too large: {m}")),
        StoreError::BadRequest(m) => Reply::err(m),
        StoreError::ConditionFailed { .. } => Reply::err("the condition failed"),
        StoreError::Unavailable(m) | StoreError::Overloaded(m) | StoreError::Internal(m) => {
            Reply::err(m)
        }
        StoreError::Timeout(m) => Reply::err(format!("timeout: {m}")),
        StoreError::Quorum { message, .. } => Reply::err(message),
    }
}

/// When a `SET` makes the key expire.
enum Expiry {
    /// No expiry.
    Never,
    /// In this many milliseconds.
    InMs(u64),
    /// Already past: the key ends up absent.
    Past,
}

/// The commands served (a known one with the wrong arguments is answered as such).
const COMMANDS: [&str; 32] = [
    "APPEND", "AUTH", "CLIENT", "COMMAND", "CONFIG", "DECR", "DECRBY", "DEL", "DISCARD", "ECHO",
    "EXEC", "EXISTS", "GET", "GETDEL", "HELLO", "INCR", "INCRBY", "INFO", "MGET", "MSET", "MULTI",
    "PING", "PSETEX", "QUIT", "RESET", "SELECT", "SET", "SETEX", "SETNX", "STRLEN", "TYPE",
    "UNLINK",
];

impl Session {
    /// Runs one command: its reply, what it counts as, and whether the connection goes on.
    async fn run(&mut self, core: &Core, args: Command) -> (Reply, Op, Then) {
        let name = args[0].to_ascii_uppercase();
        if !self.authenticated
            && !matches!(name.as_slice(), b"AUTH" | b"HELLO" | b"QUIT" | b"RESET")
        {
            return (
                Reply::Error("NOAUTH Authentication required.".into()),
                Op::Other,
                Then::Go,
            );
        }
        if let Some(queue) = &mut self.queued {
            match name.as_slice() {
                b"EXEC" | b"DISCARD" | b"MULTI" | b"QUIT" | b"RESET" => {}
                _ => {
                    queue.push(args);
                    return (Reply::Simple("QUEUED".into()), Op::Other, Then::Go);
                }
            }
        }
        match name.as_slice() {
            b"EXEC" => {
                let Some(queue) = self.queued.take() else {
                    return (Reply::err("EXEC without MULTI"), Op::Other, Then::Go);
                };
                let mut replies = Vec::with_capacity(queue.len());
                for args in queue {
                    // (Nested EXEC/MULTI cannot be queued: see above.)
                    let (reply, _, _) = Box::pin(self.run(core, args)).await;
                    replies.push(reply);
                }
                (Reply::Array(replies), Op::Other, Then::Go)
            }
            _ => {
                let (reply, op, then) = self.run_one(core, &name, &args).await;
                (reply, op, then)
            }
        }
    }

    #[allow(clippy::too_many_lines)]
    async fn run_one(&mut self, core: &Core, name: &[u8], args: &Command) -> (Reply, Op, Then) {
        if let Some((reply, op)) = data(core, name, args).await {
            return (reply, op, Then::Go);
        }
        let argc = args.len();
        let other = |reply| (reply, Op::Other, Then::Go);
        match name {
            b"PING" => other(match argc {
                1 => Reply::Simple("PONG".into()),
                2 => Reply::Bulk(args[1].clone()),
                _ => wrong_args(name),
            }),
            b"ECHO" if argc == 2 => other(Reply::Bulk(args[1].clone())),
            b"QUIT" => (Reply::ok(), Op::Other, Then::Close),
            b"RESET" => {
                self.protocol = Resp::Resp2;
                self.name = None;
                self.queued = None;
                self.authenticated = self.password.is_none();
                other(Reply::Simple("RESET".into()))
            }
            b"HELLO" => other(self.hello(args)),
            b"AUTH" if argc == 2 => other(self.auth(b"default", &args[1])),
            b"AUTH" if argc == 3 => other(self.auth(&args[1], &args[2])),
            b"SELECT" if argc == 2 => other(match integer(&args[1]) {
                Some(0) => Reply::ok(),
                Some(_) => Reply::err("DB index is out of range"),
                None => not_integer(),
            }),
            b"CLIENT" if argc >= 2 => other(self.client(args)),
            b"COMMAND" => other(command(args)),
            b"CONFIG" if argc >= 2 => other(config(args)),
            b"MULTI" if argc == 1 => other(if self.queued.is_some() {
                Reply::err("MULTI calls can not be nested")
            } else {
                self.queued = Some(Vec::new());
                Reply::ok()
            }),
            b"DISCARD" if argc == 1 => other(if self.queued.take().is_some() {
                Reply::ok()
            } else {
                Reply::err("DISCARD without MULTI")
            }),
            b"INFO" => other(info(core)),
            _ if COMMANDS.iter().any(|c| c.as_bytes() == name) => other(wrong_args(name)),
            _ => other(unknown(args)),
        }
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`: switches the protocol and says what
    /// the server is.
    fn hello(&mut self, args: &Command) -> Reply {
        let mut protocol = self.protocol;
        if let Some(v) = args.get(1) {
            protocol = match integer(v) {
                Some(2) => Resp::Resp2,
                Some(3) => Resp::Resp3,
                Some(_) => return Reply::Error("NOPROTO unsupported protocol version".into()),
                None => return Reply::err("Protocol version is not an integer or out of range"),
            };
        }
        let mut i = 2;
        while i < args.len() {
            match args[i].to_ascii_uppercase().as_slice() {
                b"AUTH" if i + 2 < args.len() => {
                    if let Reply::Error(e) = self.auth(&args[i + 1], &args[i + 2]) {
                        return Reply::Error(e);
                    }
                    i += 3;
                }
                b"SETNAME" if i + 1 < args.len() => {
                    self.name = Some(args[i + 1].clone());
                    i += 2;
                }
                _ => return syntax_error(),
            }
        }
        if !self.authenticated {
            return Reply::Error(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise \
                 the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the \
                 client and select the RESP protocol version at the same time"
                    .into(),
            );
        }
        self.protocol = protocol;
        let bulk = |s: &str| Reply::Bulk(s.as_bytes().to_vec());
        Reply::Map(vec![
            (bulk("server"), bulk("dynacore")),
            (bulk("version"), bulk(env!("CARGO_PKG_VERSION"))),
            (
                bulk("proto"),
                Reply::Integer(if protocol == Resp::Resp3 { 3 } else { 2 }),
            ),
            (
                bulk("id"),
                Reply::Integer(i64::try_from(self.id).unwrap_or(i64::MAX)),
            ),
            (bulk("mode"), bulk("standalone")),
            (bulk("role"), bulk("master")),
            (bulk("modules"), Reply::Array(Vec::new())),
        ])
    }

    /// `AUTH [user] password`: the only user is `default`, with the node's `resp_password`.
    fn auth(&mut self, user: &[u8], password: &[u8]) -> Reply {
        let Some(expected) = &self.password else {
            return Reply::err(
                "AUTH <password> called without any password configured for the default user. \
                 Are you sure your configuration is correct?",
            );
        };
        if user == b"default" && same(password, expected.as_bytes()) {
            self.authenticated = true;
            Reply::ok()
        } else {
            Reply::Error("WRONGPASS invalid username-password pair or user is disabled.".into())
        }
    }

    /// `CLIENT ID | GETNAME | SETNAME name | SETINFO attr value`.
    fn client(&mut self, args: &Command) -> Reply {
        match (args[1].to_ascii_uppercase().as_slice(), args.len()) {
            (b"ID", 2) => Reply::Integer(i64::try_from(self.id).unwrap_or(i64::MAX)),
            (b"GETNAME", 2) => self.name.clone().map_or(Reply::Null, Reply::Bulk),
            (b"SETNAME", 3) => {
                if args[2].iter().any(|&b| b <= b' ' || b > b'~') {
                    return Reply::err(
                        "Client names cannot contain spaces, newlines or special characters.",
                    );
                }
                self.name = (!args[2].is_empty()).then(|| args[2].clone());
                Reply::ok()
            }
            // Client libraries announce themselves (redis-py, go-redis): accepted, not kept.
            (b"SETINFO", 4) => Reply::ok(),
            (sub, _) => Reply::err(format!(
                "unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.",
                lower(sub)
            )),
        }
    }
}

/// Runs a data command (a read or write of keys): its reply and what it counts as, or `None`
/// for any other command (and a data command with the wrong arguments).
#[allow(clippy::too_many_lines)]
async fn data(core: &Core, name: &[u8], args: &Command) -> Option<(Reply, Op)> {
    let argc = args.len();
    Some(match name {
        b"GET" if argc == 2 => (
            match get(core, &args[1]).await {
                Ok(Some(v)) => Reply::Bulk(v),
                Ok(None) => Reply::Null,
                Err(e) => e,
            },
            Op::Get,
        ),
        b"MGET" if argc >= 2 => {
            let mut values = Vec::with_capacity(argc - 1);
            for key in &args[1..] {
                values.push(match get(core, key).await {
                    Ok(Some(v)) => Reply::Bulk(v),
                    Ok(None) => Reply::Null,
                    Err(e) => return Some((e, Op::Get)),
                });
            }
            (Reply::Array(values), Op::Get)
        }
        b"STRLEN" if argc == 2 => (
            match get(core, &args[1]).await {
                Ok(v) => {
                    Reply::Integer(v.map_or(0, |v| i64::try_from(v.len()).unwrap_or(i64::MAX)))
                }
                Err(e) => e,
            },
            Op::Get,
        ),
        b"TYPE" if argc == 2 => (
            match get(core, &args[1]).await {
                Ok(Some(_)) => Reply::Simple("string".into()),
                Ok(None) => Reply::Simple("none".into()),
                Err(e) => e,
            },
            Op::Get,
        ),
        b"EXISTS" if argc >= 2 => {
            let mut n = 0;
            for key in &args[1..] {
                match get(core, key).await {
                    Ok(Some(_)) => n += 1,
                    Ok(None) => {}
                    Err(e) => return Some((e, Op::Get)),
                }
            }
            (Reply::Integer(n), Op::Get)
        }
        b"SET" if argc >= 3 => (set(core, args).await, Op::Put),
        b"SETNX" if argc == 3 => (
            match write(core, &args[1], Some(&args[2]), None, KeyCondition::Absent).await {
                Ok(()) => Reply::Integer(1),
                Err(StoreError::ConditionFailed { .. }) => Reply::Integer(0),
                Err(e) => store_error(&e),
            },
            Op::Put,
        ),
        b"SETEX" | b"PSETEX" if argc == 4 => {
            let unit = if name == b"SETEX" { 1000 } else { 1 };
            let reply = match integer(&args[2]) {
                Some(t) if t > 0 => {
                    let ms = u64::try_from(t).unwrap_or(u64::MAX).saturating_mul(unit);
                    match write(core, &args[1], Some(&args[3]), Some(ms), KeyCondition::None).await
                    {
                        Ok(()) => Reply::ok(),
                        Err(e) => store_error(&e),
                    }
                }
                Some(_) => Reply::err(format!("invalid expire time in '{}' command", lower(name))),
                None => not_integer(),
            };
            (reply, Op::Put)
        }
        b"MSET" if argc >= 3 && argc % 2 == 1 => {
            for pair in args[1..].chunks(2) {
                if let Err(e) =
                    write(core, &pair[0], Some(&pair[1]), None, KeyCondition::None).await
                {
                    return Some((store_error(&e), Op::Put));
                }
            }
            (Reply::ok(), Op::Put)
        }
        b"DEL" | b"UNLINK" if argc >= 2 => {
            let mut n = 0;
            for key in &args[1..] {
                match get(core, key).await {
                    Ok(Some(_)) => {}
                    Ok(None) => continue,
                    Err(e) => return Some((e, Op::Delete)),
                }
                match write(core, key, None, None, KeyCondition::None).await {
                    Ok(()) => n += 1,
                    Err(e) => return Some((store_error(&e), Op::Delete)),
                }
            }
            (Reply::Integer(n), Op::Delete)
        }
        b"GETDEL" if argc == 2 => {
            let reply = match get(core, &args[1]).await {
                Ok(Some(v)) => match write(core, &args[1], None, None, KeyCondition::None).await {
                    Ok(()) => Reply::Bulk(v),
                    Err(e) => store_error(&e),
                },
                Ok(None) => Reply::Null,
                Err(e) => e,
            };
            (reply, Op::Delete)
        }
        b"INCR" | b"DECR" if argc == 2 => {
            let by = if name == b"INCR" { 1 } else { -1 };
            (incr_by(core, &args[1], by).await, Op::Put)
        }
        b"INCRBY" | b"DECRBY" if argc == 3 => {
            let by = integer(&args[2]).and_then(|n| {
                if name == b"INCRBY" {
                    Some(n)
                } else {
                    n.checked_neg()
                }
            });
            let reply = match by {
                Some(by) => incr_by(core, &args[1], by).await,
                None => not_integer(),
            };
            (reply, Op::Put)
        }
        b"APPEND" if argc == 3 => {
            let tail = &args[2];
            let appended = read_modify_write(core, &args[1], |current| {
                let mut v = current.map(<[u8]>::to_vec).unwrap_or_default();
                v.extend_from_slice(tail);
                Ok(v)
            })
            .await;
            let reply = match appended {
                Ok(v) => Reply::Integer(i64::try_from(v.len()).unwrap_or(i64::MAX)),
                Err(e) => e,
            };
            (reply, Op::Put)
        }
        _ => return None,
    })
}

/// Tries of a read-modify-write whose conditional write lost to another write of the key.
const RMW_TRIES: usize = 64;

/// A read-modify-write of `key` as a lightweight transaction: reads the value and its version
/// at R, writes `change(value)` on the condition that the version is still current (or that the
/// key is still absent), and starts over if another write came between. Returns what it wrote.
/// (The new value has no expiry: a TTL the key had is not kept yet.)
async fn read_modify_write(
    core: &Core,
    key: &[u8],
    change: impl Fn(Option<&[u8]>) -> Result<Vec<u8>, Reply>,
) -> Result<Vec<u8>, Reply> {
    for _ in 0..RMW_TRIES {
        let read = ReadRequest {
            key: key.to_vec(),
            r: Quorum::Default,
            read_repair: ReadRepair::Default,
            conflicts: Conflicts::Lww,
        };
        let found = coordinator::read(core, read, core.default_timeout())
            .await
            .map_err(|e| store_error(&e))?;
        let (current, expected, condition) = match &found {
            Some(f) => (
                f.values.first().map(|(v, _)| v.as_slice()),
                Some(f.version.clone()),
                KeyCondition::None,
            ),
            None => (None, None, KeyCondition::Absent),
        };
        let new = change(current)?;
        let write = WriteRequest {
            key: key.to_vec(),
            value: Some(new.clone()),
            ttl_seconds: None,
            expected,
            context: None,
            w: Quorum::Default,
            forwarded: false,
            condition,
        };
        match coordinator::write(core, write, core.default_timeout()).await {
            Ok(_) => return Ok(new),
            Err(StoreError::ConditionFailed { .. }) => {}
            Err(e) => return Err(store_error(&e)),
        }
    }
    Err(Reply::err(format!(
        "the key changed under {RMW_TRIES} tries of this command in a row; try again"
    )))
}

/// `INCRBY key by` (and `INCR`, `DECR`, `DECRBY`): the new value.
async fn incr_by(core: &Core, key: &[u8], by: i64) -> Reply {
    let done = read_modify_write(core, key, |current| {
        let now = match current {
            None => 0,
            Some(v) => integer(v).ok_or_else(not_integer)?,
        };
        let next = now
            .checked_add(by)
            .ok_or_else(|| Reply::err("increment or decrement would overflow"))?;
        Ok(next.to_string().into_bytes())
    })
    .await;
    match done {
        Ok(v) => integer(&v).map_or_else(not_integer, Reply::Integer),
        Err(e) => e,
    }
}

/// Whether two secrets are equal, in a time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Redis's answer to a command it does not know.
fn unknown(args: &Command) -> Reply {
    let mut message = format!(
        "unknown command '{}', with args beginning with: ",
        String::from_utf8_lossy(&args[0])
    );
    for a in args[1..].iter().take(8) {
        message.push_str(&format!("'{}' ", String::from_utf8_lossy(a)));
    }
    Reply::err(message)
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND DOCS`: the count of commands served; no per-command
/// documentation yet (an empty answer, which `redis-cli` takes as "no hints").
fn command(args: &Command) -> Reply {
    match args.get(1).map(|a| a.to_ascii_uppercase()).as_deref() {
        Some(b"COUNT") => Reply::Integer(i64::try_from(COMMANDS.len()).unwrap_or(0)),
        Some(b"DOCS") => Reply::Map(Vec::new()),
        _ => Reply::Array(Vec::new()),
    }
}

/// `CONFIG GET pattern...`: a few read-only settings tools ask for (`redis-benchmark` asks for
/// `save` and `appendonly`); `CONFIG SET` and the rest are refused.
fn config(args: &Command) -> Reply {
    if !args[1].eq_ignore_ascii_case(b"GET") || args.len() < 3 {
        return Reply::err(format!(
            "unknown subcommand or wrong number of arguments for '{}'. CONFIG is read-only here: \
             CONFIG GET <pattern>",
            lower(&args[1])
        ));
    }
    const SETTINGS: [(&str, &str); 4] = [
        ("appendonly", "yes"),
        ("databases", "1"),
        ("save", ""),
        ("timeout", "3600"),
    ];
    let mut pairs = Vec::new();
    for (key, value) in SETTINGS {
        if args[2..].iter().any(|p| glob(p, key.as_bytes())) {
            pairs.push((
                Reply::Bulk(key.as_bytes().to_vec()),
                Reply::Bulk(value.as_bytes().to_vec()),
            ));
        }
    }
    Reply::Map(pairs)
}

/// Redis's glob match (`*`, `?`, case-insensitive), enough for `CONFIG GET`.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob(&pattern[1..], text) || (!text.is_empty() && glob(pattern, &text[1..]))
        }
        (Some(b'?'), Some(_)) => glob(&pattern[1..], &text[1..]),
        (Some(p), Some(t)) if p.eq_ignore_ascii_case(t) => glob(&pattern[1..], &text[1..]),
        _ => false,
    }
}

/// `INFO`: the server section.
fn info(core: &Core) -> Reply {
    let text = format!(
        "# Server\r\nredis_version:7.2.0\r\ndynacore_version:{}\r\nredis_mode:standalone\r\n\
         uptime_in_seconds:{}\r\n",
        env!("CARGO_PKG_VERSION"),
        core.shared().uptime().as_secs()
    );
    Reply::Verbatim("txt", text)
}

/// A read through the coordinator with the node's defaults: the value, if the key holds one.
async fn get(core: &Core, key: &[u8]) -> Result<Option<Vec<u8>>, Reply> {
    let read = ReadRequest {
        key: key.to_vec(),
        r: Quorum::Default,
        read_repair: ReadRepair::Default,
        conflicts: Conflicts::Lww,
    };
    match coordinator::read(core, read, core.default_timeout()).await {
        Ok(found) => Ok(found
            .and_then(|f| f.values.into_iter().next())
            .map(|(v, _)| v)),
        Err(e) => Err(store_error(&e)),
    }
}

/// A write (a delete when `value` is `None`) through the coordinator with the node's defaults.
async fn write(
    core: &Core,
    key: &[u8],
    value: Option<&[u8]>,
    ttl_ms: Option<u64>,
    condition: KeyCondition,
) -> Result<(), StoreError> {
    let request = WriteRequest {
        key: key.to_vec(),
        value: value.map(<[u8]>::to_vec),
        // Kept to the second, rounded up (see the module's documentation).
        ttl_seconds: ttl_ms.map(|ms| ms.div_ceil(1000).max(1)),
        expected: None,
        context: None,
        w: Quorum::Default,
        forwarded: false,
        condition,
    };
    coordinator::write(core, request, core.default_timeout())
        .await
        .map(drop)
}

/// `SET key value [EX s | PX ms | EXAT ts | PXAT ts-ms] [NX | XX]`.
async fn set(core: &Core, args: &Command) -> Reply {
    let mut expiry = Expiry::Never;
    let mut condition = KeyCondition::None;
    let mut expiry_given = false;
    let mut i = 3;
    while i < args.len() {
        let option = args[i].to_ascii_uppercase();
        match option.as_slice() {
            b"NX" | b"XX" if condition == KeyCondition::None => {
                condition = if option == b"NX" {
                    KeyCondition::Absent
                } else {
                    KeyCondition::Present
                };
                i += 1;
            }
            b"EX" | b"PX" | b"EXAT" | b"PXAT" if !expiry_given && i + 1 < args.len() => {
                let Some(n) = integer(&args[i + 1]) else {
                    return not_integer();
                };
                if n <= 0 {
                    return Reply::err("invalid expire time in 'set' command");
                }
                let n = u64::try_from(n).unwrap_or(u64::MAX);
                let now = now_ms();
                let at_ms = match option.as_slice() {
                    b"EX" => now.saturating_add(n.saturating_mul(1000)),
                    b"PX" => now.saturating_add(n),
                    b"EXAT" => n.saturating_mul(1000),
                    _ => n,
                };
                expiry = if at_ms <= now {
                    Expiry::Past
                } else {
                    Expiry::InMs(at_ms - now)
                };
                expiry_given = true;
                i += 2;
            }
            b"KEEPTTL" | b"GET" => {
                return Reply::err(format!(
                    "SET {} is not supported yet",
                    String::from_utf8_lossy(&option)
                ))
            }
            _ => return syntax_error(),
        }
    }
    let (value, ttl_ms) = match expiry {
        Expiry::Never => (Some(args[2].as_slice()), None),
        Expiry::InMs(ms) => (Some(args[2].as_slice()), Some(ms)),
        // A time already past leaves the key absent, as in Redis.
        Expiry::Past => (None, None),
    };
    match write(core, &args[1], value, ttl_ms, condition).await {
        Ok(()) => Reply::ok(),
        // NX / XX not met: a null reply, as Redis answers it.
        Err(StoreError::ConditionFailed { .. }) => Reply::Null,
        Err(e) => store_error(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(lines: &[&[&str]]) -> Vec<Command> {
        lines
            .iter()
            .map(|words| words.iter().map(|w| w.as_bytes().to_vec()).collect())
            .collect()
    }

    #[test]
    fn a_batch_runs_at_once_only_when_no_command_can_see_another() {
        assert!(independent(&batch(&[
            &["SET", "a", "1"],
            &["get", "b"],
            &["MSET", "c", "1", "d", "2"]
        ])));
        assert!(
            !independent(&batch(&[&["SET", "a", "1"], &["GET", "a"]])),
            "one key twice"
        );
        assert!(!independent(&batch(&[
            &["MSET", "a", "1", "b", "2"],
            &["DEL", "b"]
        ])));
        assert!(
            !independent(&batch(&[&["SET", "a", "1"], &["MULTI"]])),
            "not a data command"
        );
        assert!(
            !independent(&batch(&[&["SET", "a"], &["GET", "b"]])),
            "wrong arguments"
        );
        assert!(
            !independent(&batch(&[&["GET", "a"]])),
            "one command: nothing to gain"
        );
    }

    #[test]
    fn glob_matches_like_redis() {
        assert!(glob(b"*", b"save"));
        assert!(glob(b"app*", b"appendonly"));
        assert!(glob(b"SAVE", b"save"));
        assert!(glob(b"s?ve", b"save"));
        assert!(!glob(b"s?ve", b"saves"));
        assert!(!glob(b"x*", b"save"));
    }

    #[test]
    fn unknown_commands_are_answered_as_redis_answers_them() {
        let args = vec![b"FOO".to_vec(), b"a".to_vec(), b"b".to_vec()];
        let mut out = Vec::new();
        unknown(&args).encode(Resp::Resp2, &mut out);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "-ERR unknown command 'FOO', with args beginning with: 'a' 'b' \r\n"
        );
    }
}
