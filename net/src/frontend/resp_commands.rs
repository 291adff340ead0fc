//! What the Redis protocol serves, as `COMMAND` describes it (arity, flags, key positions, and
//! for `COMMAND DOCS` a summary), and the `INFO` sections.

use super::resp_codec::{Command, Reply};
use crate::core::Core;
use crate::metrics::{Op, Protocol};

/// One command as `COMMAND` describes it.
pub struct Spec {
    /// The name, upper case.
    pub name: &'static str,
    /// Redis's arity: the argument count with the name, negative for "at least".
    pub arity: i64,
    /// `write`, `readonly`, `fast`, …
    flags: &'static [&'static str],
    /// The first key's position, the last's (-1: the last argument), the step between keys.
    keys: (i64, i64, i64),
    /// Redis's group (`string`, `generic`, `connection`, `server`, `transactions`).
    group: &'static str,
    /// One line on what it does here.
    summary: &'static str,
}

const fn spec(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
    group: &'static str,
    summary: &'static str,
) -> Spec {
    Spec {
        name,
        arity,
        flags,
        keys,
        group,
        summary,
    }
}

const W: &[&str] = &["write"];
const R: &[&str] = &["readonly", "fast"];
const C: &[&str] = &["fast", "no-auth"];
const ONE: (i64, i64, i64) = (1, 1, 1);
const ALL: (i64, i64, i64) = (1, -1, 1);
const NONE: (i64, i64, i64) = (0, 0, 0);

/// The commands served, by name.
#[rustfmt::skip]
pub const COMMANDS: [Spec; 53] = [
    spec("APPEND", 3, W, ONE, "string", "Appends to the value (a read-modify-write; keeps the TTL)."),
    spec("AUTH", -2, C, NONE, "connection", "Gives the node's resp_password."),
    spec("CLIENT", -2, &["fast"], NONE, "connection", "CLIENT ID, GETNAME, SETNAME, SETINFO."),
    spec("COMMAND", -1, &["loading"], NONE, "server", "Describes the commands served."),
    spec("CONFIG", -2, &["admin"], NONE, "server", "CONFIG GET of a few read-only settings."),
    spec("DBSIZE", 1, R, NONE, "server", "Counts the keys by scanning one replica of each range (approximate)."),
    spec("DECR", 2, W, ONE, "string", "Decrements the integer value by one (a read-modify-write)."),
    spec("DECRBY", 3, W, ONE, "string", "Decrements the integer value (a read-modify-write)."),
    spec("DEL", -2, W, ALL, "generic", "Deletes keys, one write per key."),
    spec("DISCARD", 1, &["fast"], NONE, "transactions", "Drops the commands queued since MULTI."),
    spec("ECHO", 2, &["fast"], NONE, "connection", "Answers its argument."),
    spec("EXEC", 1, &["loading"], NONE, "transactions", "Runs the queued commands in order (no isolation)."),
    spec("EXISTS", -2, R, ALL, "generic", "Counts the keys that hold a value."),
    spec("EXPIRE", -3, W, ONE, "generic", "Sets a TTL in seconds (NX, XX, GT, LT)."),
    spec("EXPIREAT", -3, W, ONE, "generic", "Sets the expiry as a Unix time in seconds."),
    spec("EXPIRETIME", 2, R, ONE, "generic", "The expiry as a Unix time in seconds."),
    spec("FLUSHALL", -1, W, NONE, "server", "Deletes every key of the cluster (if resp_flush)."),
    spec("FLUSHDB", -1, W, NONE, "server", "Deletes every key of the cluster (if resp_flush)."),
    spec("GET", 2, R, ONE, "string", "Reads the value at R."),
    spec("GETDEL", 2, W, ONE, "string", "Reads and deletes the value (a read-modify-write)."),
    spec("GETEX", -2, W, ONE, "string", "Reads the value and sets or clears its TTL."),
    spec("GETRANGE", 4, R, ONE, "string", "A slice of the value (negative offsets from its end)."),
    spec("GETSET", 3, W, ONE, "string", "Writes the value and answers the old one (a read-modify-write)."),
    spec("HELLO", -1, C, NONE, "connection", "Picks RESP2 or RESP3; describes the server."),
    spec("INCR", 2, W, ONE, "string", "Increments the integer value by one (a read-modify-write)."),
    spec("INCRBY", 3, W, ONE, "string", "Increments the integer value (a read-modify-write)."),
    spec("INCRBYFLOAT", 3, W, ONE, "string", "Increments the number (a read-modify-write; keeps the TTL)."),
    spec("INFO", -1, &["loading"], NONE, "server", "The server, clients, stats and keyspace sections."),
    spec("KEYS", 2, &["readonly"], NONE, "generic", "Every key matching, by scanning the whole cluster."),
    spec("MGET", -2, R, ALL, "string", "Reads several keys, one read per key."),
    spec("MSET", -3, W, (1, -1, 2), "string", "Writes several keys, one write per key (not atomic)."),
    spec("MULTI", 1, &["fast"], NONE, "transactions", "Queues the commands up to EXEC."),
    spec("PERSIST", 2, W, ONE, "generic", "Clears the TTL."),
    spec("PEXPIRE", -3, W, ONE, "generic", "Sets a TTL in milliseconds (NX, XX, GT, LT)."),
    spec("PEXPIREAT", -3, W, ONE, "generic", "Sets the expiry as a Unix time in milliseconds."),
    spec("PEXPIRETIME", 2, R, ONE, "generic", "The expiry as a Unix time in milliseconds."),
    spec("PING", -1, &["fast"], NONE, "connection", "Answers PONG."),
    spec("PSETEX", 4, W, ONE, "string", "Writes the value with a TTL in milliseconds."),
    spec("PTTL", 2, R, ONE, "generic", "The time to live in milliseconds (-1: none, -2: no key)."),
    spec("QUIT", -1, C, NONE, "connection", "Closes the connection."),
    spec("RESET", 1, C, NONE, "connection", "Forgets the connection's state."),
    spec("SCAN", -2, &["readonly"], NONE, "generic", "A page of keys; the cursor is a token."),
    spec("SELECT", 2, &["fast"], NONE, "connection", "Database 0 is the store; no other exists."),
    spec("SET", -3, W, ONE, "string", "Writes the value (EX, PX, EXAT, PXAT, NX, XX, KEEPTTL, GET)."),
    spec("SETEX", 4, W, ONE, "string", "Writes the value with a TTL in seconds."),
    spec("SETNX", 3, W, ONE, "string", "Writes the value if the key is absent (a lightweight transaction)."),
    spec("SETRANGE", 4, W, ONE, "string", "Overwrites part of the value (a read-modify-write; keeps the TTL)."),
    spec("STRLEN", 2, R, ONE, "string", "The value's length."),
    spec("SUBSTR", 4, R, ONE, "string", "GETRANGE's old name."),
    spec("TIME", 1, &["fast"], NONE, "server", "The node's clock: Unix seconds and microseconds."),
    spec("TTL", 2, R, ONE, "generic", "The time to live in seconds (-1: none, -2: no key)."),
    spec("TYPE", 2, R, ONE, "generic", "string, or none."),
    spec("UNLINK", -2, W, ALL, "generic", "Deletes keys, one write per key."),
];

/// The command named `name` (any case), if served.
pub fn find(name: &[u8]) -> Option<&'static Spec> {
    COMMANDS
        .iter()
        .find(|c| c.name.as_bytes().eq_ignore_ascii_case(name))
}

fn bulk(s: &str) -> Reply {
    Reply::Bulk(s.as_bytes().to_vec())
}

fn simple_list(words: &[&str]) -> Reply {
    Reply::Array(words.iter().map(|w| Reply::Simple((*w).into())).collect())
}

/// A command as `COMMAND` / `COMMAND INFO` describe it.
fn info_of(c: &Spec) -> Reply {
    Reply::Array(vec![
        bulk(&c.name.to_lowercase()),
        Reply::Integer(c.arity),
        simple_list(c.flags),
        Reply::Integer(c.keys.0),
        Reply::Integer(c.keys.1),
        Reply::Integer(c.keys.2),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
    ])
}

/// A command as `COMMAND DOCS` describes it.
fn docs_of(c: &Spec) -> Reply {
    Reply::Map(vec![
        (bulk("summary"), bulk(c.summary)),
        (bulk("since"), bulk("1.0.0")),
        (bulk("group"), bulk(c.group)),
    ])
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND LIST`, `COMMAND INFO name…`, `COMMAND DOCS [name…]`.
pub fn command(args: &Command) -> Reply {
    let named = || args[2..].iter().map(|n| find(n));
    match args.get(1).map(|a| a.to_ascii_uppercase()).as_deref() {
        None => Reply::Array(COMMANDS.iter().map(info_of).collect()),
        Some(b"COUNT") => Reply::Integer(i64::try_from(COMMANDS.len()).unwrap_or(0)),
        Some(b"LIST") => Reply::Array(
            COMMANDS
                .iter()
                .map(|c| bulk(&c.name.to_lowercase()))
                .collect(),
        ),
        Some(b"INFO") => Reply::Array(named().map(|c| c.map_or(Reply::Null, info_of)).collect()),
        Some(b"DOCS") => {
            let pick: Vec<&Spec> = if args.len() == 2 {
                COMMANDS.iter().collect()
            } else {
                named().flatten().collect()
            };
            Reply::Map(
                pick.into_iter()
                    .map(|c| (bulk(&c.name.to_lowercase()), docs_of(c)))
                    .collect(),
            )
        }
        Some(other) => Reply::err(format!(
            "unknown subcommand '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(other).to_lowercase()
        )),
    }
}

/// `INFO [section …]`: `server`, `clients`, `stats`, `keyspace` (`all`, `everything` and
/// `default`: every one). The keyspace section lists no `db0` line: key counts are not kept
/// (`DBSIZE` counts by scanning).
pub fn info(core: &Core, args: &Command, connections_max: usize) -> Reply {
    let asked: Vec<String> = args[1..]
        .iter()
        .map(|a| String::from_utf8_lossy(a).to_lowercase())
        .collect();
    let wants = |section: &str| {
        asked.is_empty()
            || asked
                .iter()
                .any(|a| a == section || a == "all" || a == "everything" || a == "default")
    };
    let shared = core.shared();
    let metrics = shared.metrics();
    let (mut accepted, mut open, mut commands) = (0u64, 0u64, 0u64);
    for m in metrics {
        let (a, o) = m.connections(Protocol::Resp);
        accepted += a;
        open += o;
        commands += [Op::Get, Op::Put, Op::Delete, Op::Other]
            .into_iter()
            .map(|op| m.requests(Protocol::Resp, op))
            .sum::<u64>();
    }
    let uptime = shared.uptime().as_secs();
    let mut text = String::new();
    if wants("server") {
        text.push_str(&format!(
            "# Server\r\nredis_version:7.2.0\r\ndynacore_version:{}\r\nredis_mode:standalone\r\n\
             os:{}\r\narch_bits:64\r\nprocess_id:{}\r\nuptime_in_seconds:{uptime}\r\n\
             uptime_in_days:{}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::process::id(),
            uptime / 86_400
        ));
    }
    if wants("clients") {
        text.push_str(&format!(
            "# Clients\r\nconnected_clients:{open}\r\nmaxclients:{}\r\nblocked_clients:0\r\n\r\n",
            connections_max.saturating_mul(metrics.len())
        ));
    }
    if wants("stats") {
        text.push_str(&format!(
            "# Stats\r\ntotal_connections_received:{accepted}\r\n\
             total_commands_processed:{commands}\r\n\r\n"
        ));
    }
    if wants("keyspace") {
        text.push_str("# Keyspace\r\n");
    }
    Reply::Verbatim("txt", text)
}
