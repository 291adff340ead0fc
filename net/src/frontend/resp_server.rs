//! The Redis protocol's server: each core accepts RESP connections on the shared RESP port
//! (`SO_REUSEPORT`, as the binary and HTTP ports) and runs each command through the
//! coordinator, as an HTTP request is run: any node, any core, the node's default quorums.
//!
//! Commands are read with [`super::resp_codec`] and run one after another, in the order they
//! came; the replies of every command a read brought in go out in one write (pipelining).
//! What is served, and what each command promises, is in `docs/protocol.md` ("Redis
//! protocol"). In short: the store is database 0; the data commands ([`super::resp_data`]) are
//! the HTTP API's writes and reads (durable at W replicas, read at R), with lightweight
//! transactions for those that depend on what a key holds; the keyspace commands
//! ([`super::resp_keyspace`]) walk the ring's token ranges; `MULTI` / `EXEC` queue commands and
//! run them in order, without isolation.

use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use dynacore_runtime::{self as runtime, TcpListener, TcpStream};

use super::listen::{accept_connections, close_with, WRITE_TIMEOUT};
use super::resp_codec::{read_command, Command, Limits, Protocol as Resp, Reply};
use super::resp_commands::{command, find, info};
use super::resp_data::{
    data, integer, keys_of, lower, not_integer, syntax_error, writes, wrong_args,
};
use super::resp_keyspace::{self as keyspace, glob};
use crate::core::Core;
use crate::metrics::{Op, Protocol};

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
    /// Whether `FLUSHDB` / `FLUSHALL` may delete every key of the cluster.
    pub flush: bool,
}

impl Default for RespOptions {
    fn default() -> Self {
        RespOptions {
            idle_timeout: Duration::from_secs(3600),
            connections_max: 4096,
            limits: Limits::default(),
            password: None,
            flush: false,
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
        move |stream| {
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
    /// Whether `FLUSHDB` / `FLUSHALL` are allowed.
    flush: bool,
    /// Connections served at once per core (for `INFO`).
    connections_max: usize,
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
        flush: options.flush,
        connections_max: options.connections_max,
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
            b"INFO" => other(info(core, args, self.connections_max)),
            b"TIME" if argc == 1 => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                other(Reply::Array(vec![
                    Reply::Bulk(now.as_secs().to_string().into_bytes()),
                    Reply::Bulk(now.subsec_micros().to_string().into_bytes()),
                ]))
            }
            // Boxed, as every command that walks the ring: their state would otherwise make
            // every command's future larger to move.
            b"SCAN" if argc >= 2 => other(Box::pin(keyspace::scan(core, args)).await),
            b"KEYS" if argc == 2 => other(Box::pin(keyspace::keys(core, &args[1])).await),
            b"DBSIZE" if argc == 1 => other(Box::pin(keyspace::dbsize(core)).await),
            b"FLUSHDB" | b"FLUSHALL" => {
                other(Box::pin(keyspace::flush(core, name, args, self.flush)).await)
            }
            _ if find(name).is_some() => other(wrong_args(name)),
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
        if args[2..].iter().any(|p| glob(p, key.as_bytes(), true)) {
            pairs.push((
                Reply::Bulk(key.as_bytes().to_vec()),
                Reply::Bulk(value.as_bytes().to_vec()),
            ));
        }
    }
    Reply::Map(pairs)
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
