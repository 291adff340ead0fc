//! The Redis protocol's data commands: reads and writes of keys through the coordinator, with
//! the node's default quorums, as the HTTP API's are.
//!
//! * Reads (`GET`, `MGET`, `EXISTS`, `STRLEN`, `TYPE`, `TTL`, `PTTL`, `EXPIRETIME`,
//!   `PEXPIRETIME`) read at R; writes (`SET`, `MSET`, `SETEX`, `PSETEX`, `DEL`, `UNLINK`) are
//!   durable at W. A command over several keys is one operation per key, in order, not atomic.
//! * `SET NX` / `XX` and `SETNX` are lightweight transactions (a Paxos round among the key's
//!   replicas). Commands that depend on what the key holds — `INCR`, `DECR`, `INCRBY`, `DECRBY`,
//!   `APPEND`, `SET … GET` / `KEEPTTL`, `GETEX` with an option, `GETDEL`, the `EXPIRE` family and
//!   `PERSIST` — are read-modify-writes: the value and its version read at R, the new value
//!   written on the condition that the version is still current, and the whole started over when
//!   another write came between ([`read_modify_write`]).
//! * Expiry is kept to the millisecond: the coordinating replica turns the TTL into an absolute
//!   time by its clock, and the key reads as absent from then on, on every replica.

use std::time::{SystemTime, UNIX_EPOCH};

use dynacore_proto::{Conflicts, KeyCondition, Quorum, ReadRepair};

use super::resp_codec::{Command, Reply};
use crate::coordinator::{self, ReadRequest, WriteRequest};
use crate::core::Core;
use crate::metrics::Op;
use crate::storage::replica::StoreError;

/// A command's name as Redis prints it in errors (lower case).
pub(super) fn lower(name: &[u8]) -> String {
    String::from_utf8_lossy(name).to_lowercase()
}

pub(super) fn wrong_args(name: &[u8]) -> Reply {
    Reply::err(format!(
        "wrong number of arguments for '{}' command",
        lower(name)
    ))
}

pub(super) fn syntax_error() -> Reply {
    Reply::err("syntax error")
}

pub(super) fn not_integer() -> Reply {
    Reply::err("value is not an integer or out of range")
}

/// An integer argument as Redis reads one.
pub(super) fn integer(arg: &[u8]) -> Option<i64> {
    std::str::from_utf8(arg).ok()?.parse().ok()
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A coordinator's error as a Redis error.
pub(super) fn store_error(e: &StoreError) -> Reply {
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

fn count(n: usize) -> Reply {
    Reply::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

/// The keys a data command reads or writes (`None`: not a data command, or malformed).
pub(super) fn keys_of(args: &Command) -> Option<Vec<&[u8]>> {
    let argc = args.len();
    let name = args[0].to_ascii_uppercase();
    let one = || Some(vec![args[1].as_slice()]);
    match name.as_slice() {
        b"GET" | b"STRLEN" | b"TYPE" | b"GETDEL" | b"INCR" | b"DECR" | b"TTL" | b"PTTL"
        | b"EXPIRETIME" | b"PEXPIRETIME" | b"PERSIST"
            if argc == 2 =>
        {
            one()
        }
        b"SETNX" | b"INCRBY" | b"DECRBY" | b"APPEND" | b"GETSET" | b"INCRBYFLOAT" if argc == 3 => {
            one()
        }
        b"EXPIRE" | b"PEXPIRE" | b"EXPIREAT" | b"PEXPIREAT" | b"SET" if argc >= 3 => one(),
        b"GETEX" if argc >= 2 => one(),
        b"SETEX" | b"PSETEX" | b"GETRANGE" | b"SUBSTR" | b"SETRANGE" if argc == 4 => one(),
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
pub(super) fn writes(args: &Command) -> bool {
    [
        &b"SET"[..],
        b"SETNX",
        b"SETEX",
        b"PSETEX",
        b"MSET",
        b"DEL",
        b"UNLINK",
        b"GETDEL",
        b"GETEX",
        b"INCR",
        b"DECR",
        b"INCRBY",
        b"DECRBY",
        b"APPEND",
        b"GETSET",
        b"SETRANGE",
        b"INCRBYFLOAT",
        b"EXPIRE",
        b"PEXPIRE",
        b"EXPIREAT",
        b"PEXPIREAT",
        b"PERSIST",
    ]
    .iter()
    .any(|w| args[0].eq_ignore_ascii_case(w))
}

/// Runs a data command (a read or write of keys): its reply and what it counts as, or `None`
/// for any other command (and a data command with the wrong arguments).
#[allow(clippy::too_many_lines)]
pub(super) async fn data(core: &Core, name: &[u8], args: &Command) -> Option<(Reply, Op)> {
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
                Ok(v) => count(v.map_or(0, |v| v.len())),
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
            (count(n), Op::Get)
        }
        b"TTL" | b"PTTL" | b"EXPIRETIME" | b"PEXPIRETIME" if argc == 2 => {
            (time_to_live(core, name, &args[1]).await, Op::Get)
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
            (count(n), Op::Delete)
        }
        b"GETDEL" if argc == 2 => {
            let done = read_modify_write(core, &args[1], |current, _| match current {
                Some(c) => Ok((Change::Delete, Reply::Bulk(c.value.clone()))),
                None => Ok((Change::Keep, Reply::Null)),
            })
            .await;
            (done.unwrap_or_else(|e| e), Op::Delete)
        }
        b"GETEX" if argc >= 2 => (getex(core, args).await, Op::Put),
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
            let appended = read_modify_write(core, &args[1], |current, now| {
                let mut v = current.map(|c| c.value.clone()).unwrap_or_default();
                v.extend_from_slice(tail);
                let n = count(v.len());
                Ok((Change::put(v, current.and_then(|c| c.ttl_ms(now))), n))
            })
            .await;
            (appended.unwrap_or_else(|e| e), Op::Put)
        }
        b"EXPIRE" | b"PEXPIRE" | b"EXPIREAT" | b"PEXPIREAT" if argc >= 3 => {
            (expire(core, name, args).await, Op::Put)
        }
        b"GETRANGE" | b"SUBSTR" if argc == 4 => {
            let reply = match (integer(&args[2]), integer(&args[3])) {
                (Some(start), Some(end)) => match get(core, &args[1]).await {
                    Ok(v) => Reply::Bulk(range_of(&v.unwrap_or_default(), start, end).to_vec()),
                    Err(e) => e,
                },
                _ => not_integer(),
            };
            (reply, Op::Get)
        }
        b"GETSET" if argc == 3 => {
            let value = &args[2];
            let done = read_modify_write(core, &args[1], |current, _| {
                let old = current.map_or(Reply::Null, |c| Reply::Bulk(c.value.clone()));
                Ok((Change::put(value.clone(), None), old))
            })
            .await;
            (done.unwrap_or_else(|e| e), Op::Put)
        }
        b"SETRANGE" if argc == 4 => (set_range(core, args).await, Op::Put),
        b"INCRBYFLOAT" if argc == 3 => (incr_by_float(core, &args[1], &args[2]).await, Op::Put),
        b"PERSIST" if argc == 2 => {
            let done = read_modify_write(core, &args[1], |current, _| match current {
                Some(c) if c.expiry_ms.is_some() => {
                    Ok((Change::put(c.value.clone(), None), Reply::Integer(1)))
                }
                _ => Ok((Change::Keep, Reply::Integer(0))),
            })
            .await;
            (done.unwrap_or_else(|e| e), Op::Put)
        }
        _ => return None,
    })
}

/// What a key holds, as a read at R found it.
pub(super) struct Current {
    /// The newest live value.
    pub value: Vec<u8>,
    /// Its version (the condition of a read-modify-write).
    version: Vec<u8>,
    /// When it expires (ms since the Unix epoch).
    pub expiry_ms: Option<u64>,
}

impl Current {
    /// The time it has left at `now` (at least 1 ms: a value past its time reads as absent).
    fn ttl_ms(&self, now: u64) -> Option<u64> {
        self.expiry_ms.map(|e| e.saturating_sub(now).max(1))
    }
}

/// A read through the coordinator with the node's defaults: what the key holds, if anything.
async fn lookup(core: &Core, key: &[u8]) -> Result<Option<Current>, Reply> {
    let read = ReadRequest {
        key: key.to_vec(),
        r: Quorum::Default,
        read_repair: ReadRepair::Default,
        conflicts: Conflicts::Lww,
    };
    match coordinator::read(core, read, core.default_timeout()).await {
        Ok(found) => Ok(found.and_then(|f| {
            let (value, _) = f.values.into_iter().next()?;
            Some(Current {
                value,
                version: f.version,
                expiry_ms: f.expiry_ms,
            })
        })),
        Err(e) => Err(store_error(&e)),
    }
}

/// The value of `key`, if it holds one.
async fn get(core: &Core, key: &[u8]) -> Result<Option<Vec<u8>>, Reply> {
    Ok(lookup(core, key).await?.map(|c| c.value))
}

/// A write (a delete when `value` is `None`) through the coordinator with the node's defaults.
pub(super) async fn write(
    core: &Core,
    key: &[u8],
    value: Option<&[u8]>,
    ttl_ms: Option<u64>,
    condition: KeyCondition,
) -> Result<(), StoreError> {
    write_if(
        core,
        key,
        value.map(<[u8]>::to_vec),
        ttl_ms,
        None,
        condition,
    )
    .await
}

/// As [`write`], on the condition that the key's version is still `expected` when given.
async fn write_if(
    core: &Core,
    key: &[u8],
    value: Option<Vec<u8>>,
    ttl_ms: Option<u64>,
    expected: Option<Vec<u8>>,
    condition: KeyCondition,
) -> Result<(), StoreError> {
    let request = WriteRequest {
        key: key.to_vec(),
        value,
        ttl_ms,
        expected,
        context: None,
        w: Quorum::Default,
        forwarded: false,
        condition,
    };
    coordinator::write(core, request, core.default_timeout())
        .await
        .map(drop)
}

/// What a read-modify-write does with the key.
enum Change {
    /// Nothing: the key stays as it is.
    Keep,
    /// Stores this value, expiring after this many ms (or never).
    Put(Vec<u8>, Option<u64>),
    /// Deletes the key.
    Delete,
}

impl Change {
    fn put(value: Vec<u8>, ttl_ms: Option<u64>) -> Change {
        Change::Put(value, ttl_ms)
    }
}

/// Tries of a read-modify-write whose conditional write lost to another write of the key.
const RMW_TRIES: usize = 64;

/// A read-modify-write of `key` as a lightweight transaction: reads what the key holds and its
/// version at R, decides with `change(current, now_ms)` what to write and what to answer,
/// writes it on the condition that the version is still current (or that the key is still
/// absent), and starts over if another write came between. Returns the answer.
async fn read_modify_write(
    core: &Core,
    key: &[u8],
    change: impl Fn(Option<&Current>, u64) -> Result<(Change, Reply), Reply>,
) -> Result<Reply, Reply> {
    // Boxed: its state (a read and a conditional write in flight) would otherwise make the
    // future of every data command, a plain GET's included, that much larger to move.
    Box::pin(read_modify_write_inline(core, key, change)).await
}

async fn read_modify_write_inline(
    core: &Core,
    key: &[u8],
    change: impl Fn(Option<&Current>, u64) -> Result<(Change, Reply), Reply>,
) -> Result<Reply, Reply> {
    for _ in 0..RMW_TRIES {
        let current = lookup(core, key).await?;
        let (what, answer) = change(current.as_ref(), now_ms())?;
        let (expected, condition) = match &current {
            Some(c) => (Some(c.version.clone()), KeyCondition::None),
            None => (None, KeyCondition::Absent),
        };
        let (value, ttl_ms) = match what {
            Change::Keep => return Ok(answer),
            // Nothing to delete: the key is absent already.
            Change::Delete if current.is_none() => return Ok(answer),
            Change::Delete => (None, None),
            Change::Put(value, ttl_ms) => (Some(value), ttl_ms),
        };
        match write_if(core, key, value, ttl_ms, expected, condition).await {
            Ok(()) => return Ok(answer),
            Err(StoreError::ConditionFailed { .. }) => {}
            Err(e) => return Err(store_error(&e)),
        }
    }
    Err(Reply::err(format!(
        "the key changed under {RMW_TRIES} tries of this command in a row; try again"
    )))
}

/// `INCRBY key by` (and `INCR`, `DECR`, `DECRBY`): the new value; a TTL the key had is kept.
async fn incr_by(core: &Core, key: &[u8], by: i64) -> Reply {
    let done = read_modify_write(core, key, |current, now| {
        let was = match current {
            None => 0,
            Some(c) => integer(&c.value).ok_or_else(not_integer)?,
        };
        let next = was
            .checked_add(by)
            .ok_or_else(|| Reply::err("increment or decrement would overflow"))?;
        Ok((
            Change::put(
                next.to_string().into_bytes(),
                current.and_then(|c| c.ttl_ms(now)),
            ),
            Reply::Integer(next),
        ))
    })
    .await;
    done.unwrap_or_else(|e| e)
}

/// `GETRANGE`'s slice of `value`: `start` and `end` inclusive, negative ones from the end.
fn range_of(value: &[u8], start: i64, end: i64) -> &[u8] {
    let len = i64::try_from(value.len()).unwrap_or(i64::MAX);
    if len == 0 {
        return &[];
    }
    let start = if start < 0 {
        (len + start).max(0)
    } else {
        start
    };
    let end = if end < 0 { len + end } else { end.min(len - 1) };
    // An end before the value's start is an empty range (as Redis answers since 7.4; it
    // answered the first byte before).
    if end < 0 || start > end || start >= len {
        return &[];
    }
    let (s, e) = (
        usize::try_from(start).unwrap_or(0),
        usize::try_from(end).unwrap_or(0),
    );
    &value[s..=e]
}

/// `SETRANGE key offset value`: the value overwritten from `offset` (zero-padded), its new
/// length; a TTL the key had is kept.
async fn set_range(core: &Core, args: &Command) -> Reply {
    let Some(offset) = integer(&args[2]) else {
        return not_integer();
    };
    let Ok(offset) = usize::try_from(offset) else {
        return Reply::err("offset is out of range");
    };
    let tail = &args[3];
    let Some(end) = offset.checked_add(tail.len()) else {
        return Reply::err("string exceeds maximum allowed size");
    };
    if end > dynacore_proto::VALUE_BYTES_MAX {
        return Reply::err(format!(
            "string exceeds maximum allowed size ({} bytes)",
            dynacore_proto::VALUE_BYTES_MAX
        ));
    }
    let done = read_modify_write(core, &args[1], |current, now| {
        let mut v = current.map(|c| c.value.clone()).unwrap_or_default();
        if tail.is_empty() {
            // Nothing written: the key is left as it is (absent stays absent).
            return Ok((Change::Keep, count(v.len())));
        }
        if v.len() < end {
            v.resize(end, 0);
        }
        v[offset..end].copy_from_slice(tail);
        let n = count(v.len());
        Ok((Change::put(v, current.and_then(|c| c.ttl_ms(now))), n))
    })
    .await;
    done.unwrap_or_else(|e| e)
}

/// A float argument as Redis reads one (no spaces, no NaN).
fn float(arg: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(arg).ok()?;
    if s.is_empty() || s.trim() != s {
        return None;
    }
    s.parse::<f64>().ok().filter(|f| !f.is_nan())
}

/// A float as Redis prints `INCRBYFLOAT`'s result: plain decimal, shortest that reads back,
/// no negative zero.
fn float_text(f: f64) -> String {
    if f == 0.0 {
        "0".to_owned()
    } else {
        format!("{f}")
    }
}

/// `INCRBYFLOAT key by`: the new value (a read-modify-write; a TTL the key had is kept).
async fn incr_by_float(core: &Core, key: &[u8], by: &[u8]) -> Reply {
    let Some(by) = float(by) else {
        return Reply::err("value is not a valid float");
    };
    let done = read_modify_write(core, key, |current, now| {
        let was = match current {
            None => 0.0,
            Some(c) => float(&c.value).ok_or_else(|| Reply::err("value is not a valid float"))?,
        };
        let next = was + by;
        if !next.is_finite() {
            return Err(Reply::err("increment would produce NaN or Infinity"));
        }
        let text = float_text(next);
        let answer = Reply::Bulk(text.clone().into_bytes());
        Ok((
            Change::put(text.into_bytes(), current.and_then(|c| c.ttl_ms(now))),
            answer,
        ))
    })
    .await;
    done.unwrap_or_else(|e| e)
}

/// How a command gives an expiry.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// Seconds from now (`EX`, `EXPIRE`).
    Seconds,
    /// Milliseconds from now (`PX`, `PEXPIRE`).
    Millis,
    /// A Unix time in seconds (`EXAT`, `EXPIREAT`).
    UnixSeconds,
    /// A Unix time in milliseconds (`PXAT`, `PEXPIREAT`).
    UnixMillis,
}

impl Unit {
    /// The `SET` / `GETEX` option that names it (`None`: another word).
    fn of_option(word: &[u8]) -> Option<Unit> {
        match word.to_ascii_uppercase().as_slice() {
            b"EX" => Some(Unit::Seconds),
            b"PX" => Some(Unit::Millis),
            b"EXAT" => Some(Unit::UnixSeconds),
            b"PXAT" => Some(Unit::UnixMillis),
            _ => None,
        }
    }

    /// The unit of an `EXPIRE` command (`None`: another command).
    fn of_command(name: &[u8]) -> Option<Unit> {
        match name.to_ascii_uppercase().as_slice() {
            b"EXPIRE" => Some(Unit::Seconds),
            b"PEXPIRE" => Some(Unit::Millis),
            b"EXPIREAT" => Some(Unit::UnixSeconds),
            b"PEXPIREAT" => Some(Unit::UnixMillis),
            _ => None,
        }
    }

    /// The Unix time in ms that `n` of this unit gives at `now` (`None`: out of range).
    fn at_ms(self, n: i64, now: u64) -> Option<i64> {
        let now = i64::try_from(now).ok()?;
        match self {
            Unit::Seconds => n.checked_mul(1000)?.checked_add(now),
            Unit::Millis => n.checked_add(now),
            Unit::UnixSeconds => n.checked_mul(1000),
            Unit::UnixMillis => Some(n),
        }
    }
}

/// When a write makes the key expire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// No expiry (none given).
    Never,
    /// In this many milliseconds.
    InMs(u64),
    /// Already past: the key ends up absent.
    Past,
}

impl Expiry {
    /// The expiry an absolute time in ms gives at `now`.
    fn at(at_ms: i64, now: u64) -> Expiry {
        match u64::try_from(at_ms) {
            Ok(at) if at > now => Expiry::InMs(at - now),
            _ => Expiry::Past,
        }
    }
}

/// The expiry of a `SET` / `GETEX` option (`EX 10`): the number must be positive.
fn option_expiry(command: &str, unit: Unit, arg: &[u8], now: u64) -> Result<Expiry, Reply> {
    let n = integer(arg).ok_or_else(not_integer)?;
    let invalid = || Reply::err(format!("invalid expire time in '{command}' command"));
    if n <= 0 {
        return Err(invalid());
    }
    Ok(Expiry::at(unit.at_ms(n, now).ok_or_else(invalid)?, now))
}

/// `SET key value [NX | XX] [GET] [EX s | PX ms | EXAT ts | PXAT ts-ms | KEEPTTL]`.
async fn set(core: &Core, args: &Command) -> Reply {
    let now = now_ms();
    let mut expiry = Expiry::Never;
    let mut expiry_given = false;
    let mut keep_ttl = false;
    let mut condition = KeyCondition::None;
    let mut get_old = false;
    let mut i = 3;
    while i < args.len() {
        let option = args[i].to_ascii_uppercase();
        match (option.as_slice(), Unit::of_option(&option)) {
            (b"NX" | b"XX", _) if condition == KeyCondition::None => {
                condition = if option == b"NX" {
                    KeyCondition::Absent
                } else {
                    KeyCondition::Present
                };
            }
            (b"GET", _) => get_old = true,
            (b"KEEPTTL", _) if !expiry_given => keep_ttl = true,
            (_, Some(unit)) if !expiry_given && !keep_ttl && i + 1 < args.len() => {
                expiry = match option_expiry("set", unit, &args[i + 1], now) {
                    Ok(e) => e,
                    Err(reply) => return reply,
                };
                expiry_given = true;
                i += 1;
            }
            _ => return syntax_error(),
        }
        i += 1;
    }
    let key = &args[1];
    if !get_old && !keep_ttl {
        let (value, ttl_ms) = match expiry {
            Expiry::Never => (Some(args[2].as_slice()), None),
            Expiry::InMs(ms) => (Some(args[2].as_slice()), Some(ms)),
            // A time already past leaves the key absent, as in Redis.
            Expiry::Past => (None, None),
        };
        return match write(core, key, value, ttl_ms, condition).await {
            Ok(()) => Reply::ok(),
            // NX / XX not met: a null reply, as Redis answers it.
            Err(StoreError::ConditionFailed { .. }) => Reply::Null,
            Err(e) => store_error(&e),
        };
    }
    // What the key holds decides: a read-modify-write.
    let value = &args[2];
    let done = read_modify_write(core, key, |current, now| {
        let met = match condition {
            KeyCondition::Absent => current.is_none(),
            KeyCondition::Present => current.is_some(),
            KeyCondition::None => true,
        };
        let answer = if get_old {
            current.map_or(Reply::Null, |c| Reply::Bulk(c.value.clone()))
        } else if met {
            Reply::ok()
        } else {
            Reply::Null
        };
        if !met {
            return Ok((Change::Keep, answer));
        }
        let change = match expiry {
            Expiry::Past => Change::Delete,
            Expiry::InMs(ms) => Change::put(value.clone(), Some(ms)),
            Expiry::Never if keep_ttl => {
                Change::put(value.clone(), current.and_then(|c| c.ttl_ms(now)))
            }
            Expiry::Never => Change::put(value.clone(), None),
        };
        Ok((change, answer))
    })
    .await;
    done.unwrap_or_else(|e| e)
}

/// `GETEX key [EX s | PX ms | EXAT ts | PXAT ts-ms | PERSIST]`: the value, its expiry changed.
async fn getex(core: &Core, args: &Command) -> Reply {
    let now = now_ms();
    // `None`: no option (a plain read); `Some(Never)`: PERSIST.
    let expiry = match &args[2..] {
        [] => None,
        [word] if word.eq_ignore_ascii_case(b"PERSIST") => Some(Expiry::Never),
        [word, n] => match Unit::of_option(word) {
            Some(unit) => match option_expiry("getex", unit, n, now) {
                Ok(e) => Some(e),
                Err(reply) => return reply,
            },
            None => return syntax_error(),
        },
        _ => return syntax_error(),
    };
    let Some(expiry) = expiry else {
        return match get(core, &args[1]).await {
            Ok(Some(v)) => Reply::Bulk(v),
            Ok(None) => Reply::Null,
            Err(e) => e,
        };
    };
    let done = read_modify_write(core, &args[1], |current, _| {
        let Some(c) = current else {
            return Ok((Change::Keep, Reply::Null));
        };
        let answer = Reply::Bulk(c.value.clone());
        let change = match expiry {
            Expiry::Past => Change::Delete,
            Expiry::InMs(ms) => Change::put(c.value.clone(), Some(ms)),
            // PERSIST of a key without expiry: nothing to write.
            Expiry::Never if c.expiry_ms.is_none() => Change::Keep,
            Expiry::Never => Change::put(c.value.clone(), None),
        };
        Ok((change, answer))
    })
    .await;
    done.unwrap_or_else(|e| e)
}

/// `EXPIRE key seconds [NX | XX | GT | LT]` (and `PEXPIRE`, `EXPIREAT`, `PEXPIREAT`): 1 when
/// the expiry was set (a time already past deletes the key), 0 when the key is absent or a
/// condition was not met.
async fn expire(core: &Core, name: &[u8], args: &Command) -> Reply {
    let command = lower(name);
    let unit = Unit::of_command(name).expect("INVARIANT: an EXPIRE command names its unit");
    let Some(n) = integer(&args[2]) else {
        return not_integer();
    };
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for flag in &args[3..] {
        match flag.to_ascii_uppercase().as_slice() {
            b"NX" => nx = true,
            b"XX" => xx = true,
            b"GT" => gt = true,
            b"LT" => lt = true,
            _ => {
                return Reply::err(format!(
                    "Unsupported option {}",
                    String::from_utf8_lossy(flag)
                ))
            }
        }
    }
    if nx && (xx || gt || lt) {
        return Reply::err("NX and XX, GT or LT options at the same time are not compatible");
    }
    if gt && lt {
        return Reply::err("GT and LT options at the same time are not compatible");
    }
    let now = now_ms();
    let Some(at) = unit.at_ms(n, now) else {
        return Reply::err(format!("invalid expire time in '{command}' command"));
    };
    let done = read_modify_write(core, &args[1], |current, now| {
        let Some(c) = current else {
            return Ok((Change::Keep, Reply::Integer(0)));
        };
        // A key without expiry counts as expiring never (after any time).
        let has = c.expiry_ms.map(|e| i64::try_from(e).unwrap_or(i64::MAX));
        let refused = (nx && has.is_some())
            || (xx && has.is_none())
            || (gt && has.is_none_or(|e| at <= e))
            || (lt && has.is_some_and(|e| at >= e));
        if refused {
            return Ok((Change::Keep, Reply::Integer(0)));
        }
        let change = match Expiry::at(at, now) {
            Expiry::InMs(ms) => Change::put(c.value.clone(), Some(ms)),
            Expiry::Past | Expiry::Never => Change::Delete,
        };
        Ok((change, Reply::Integer(1)))
    })
    .await;
    done.unwrap_or_else(|e| e)
}

/// `TTL`, `PTTL`, `EXPIRETIME`, `PEXPIRETIME`: -2 for an absent key, -1 for one without expiry.
async fn time_to_live(core: &Core, name: &[u8], key: &[u8]) -> Reply {
    let current = match lookup(core, key).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let Some(c) = current else {
        return Reply::Integer(-2);
    };
    let Some(at) = c.expiry_ms else {
        return Reply::Integer(-1);
    };
    let left = at.saturating_sub(now_ms());
    let n = match name {
        // Rounded as Redis rounds it.
        b"TTL" => left.saturating_add(500) / 1000,
        b"PTTL" => left,
        b"EXPIRETIME" => at / 1000,
        _ => at,
    };
    Reply::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getrange_slices_as_redis_does() {
        let v = b"Hello World";
        assert_eq!(range_of(v, 0, 3), b"Hell");
        assert_eq!(range_of(v, 0, -1), v);
        assert_eq!(range_of(v, -3, -1), b"rld");
        assert_eq!(range_of(v, 5, 3), b"");
        assert_eq!(range_of(v, 5, 5000), b" World");
        assert_eq!(range_of(v, -5000, 2), b"Hel");
        assert_eq!(range_of(v, 0, -100), b"");
        assert_eq!(range_of(b"", 0, -1), b"");
        assert_eq!(range_of(v, i64::MIN, i64::MAX), v);
    }

    #[test]
    fn floats_read_and_print_as_redis_does() {
        assert_eq!(float(b"1.5"), Some(1.5));
        assert_eq!(float(b" 1.5"), None);
        assert_eq!(float(b"1.5 "), None);
        assert_eq!(float(b"nan"), None);
        assert_eq!(float(b""), None);
        assert_eq!(float_text(17_179_869_185.5), "17179869185.5");
        assert_eq!(float_text(3.0), "3");
        assert_eq!(float_text(-0.0), "0");
    }
}
