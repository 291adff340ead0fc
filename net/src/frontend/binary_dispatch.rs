//! Answers one binary-protocol request on the core that owns its key: verify, check the
//! request's own limits (quorums against the replication factor), run it through the
//! [`LocalStore`], and build the response. Sans sockets: the server only moves frames.

use flatbuffers::FlatBufferBuilder;

use std::time::{Duration, Instant};

use dynacore_engine::object;
use dynacore_runtime as runtime;

use dynacore_proto::reply::{Ballot, KeyStateWire};
use dynacore_proto::ring::NodeId;
use dynacore_proto::version::Protocol;
use dynacore_proto::{
    fb, parse_request, reply, Conflicts, KeyCondition, Quorum, ReadRepair, FRAME_BYTES_MAX,
};

use crate::cluster::membership::NodeStatus;
use crate::cluster::ring_book::MemberState;
use crate::coordinator::{self, ReadRequest, ReadResult, WriteRequest};
use crate::core::{Core, PaxosAnswer, PaxosStep, ShardOp, TreeAnswer};
use crate::metrics::Op;
use crate::storage::replica::{decode_version, StoreError};

/// A response to send back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The response body (a `Response` flatbuffer), to be framed.
    pub body: Vec<u8>,
    /// Whether the connection must close after it (the request was malformed).
    pub close: bool,
    /// What the request was, for the metrics.
    pub op: Op,
    /// Whether it succeeded (a get of an absent key succeeds).
    pub ok: bool,
}

/// The error response for a frame that could not be read at all (too large, empty): id 0, and
/// the connection closes.
#[must_use]
pub fn frame_error(code: fb::ErrorCode, message: &str) -> Answer {
    Answer {
        body: error_body(0, code, message, None),
        close: true,
        op: Op::Other,
        ok: false,
    }
}

/// An error response to request `id`.
#[must_use]
pub fn error_response(id: u64, code: fb::ErrorCode, message: &str) -> Vec<u8> {
    error_body(id, code, message, None)
}

fn error_body(id: u64, code: fb::ErrorCode, message: &str, current: Option<&[u8]>) -> Vec<u8> {
    reply::error(id, code, message, current, (0, 0))
}

fn store_error(id: u64, e: &StoreError) -> Vec<u8> {
    match e {
        StoreError::InvalidKey(m) => error_body(id, fb::ErrorCode::InvalidKey, m, None),
        StoreError::ValueTooLarge(m) => error_body(id, fb::ErrorCode::ValueTooLarge, m, None),
        StoreError::ConditionFailed { current } => error_body(
            id,
            fb::ErrorCode::ConditionFailed,
            "the version is not the current one",
            Some(current),
        ),
        StoreError::BadRequest(m) => error_body(id, fb::ErrorCode::BadRequest, m, None),
        StoreError::Internal(m) => error_body(id, fb::ErrorCode::Internal, m, None),
        StoreError::Unavailable(m) => error_body(id, fb::ErrorCode::Unavailable, m, None),
        StoreError::Timeout(m) => error_body(id, fb::ErrorCode::Timeout, m, None),
        StoreError::Overloaded(m) => error_body(id, fb::ErrorCode::Overloaded, m, None),
        StoreError::Quorum {
            acks,
            required,
            message,
        } => reply::error(
            id,
            fb::ErrorCode::Unavailable,
            message,
            None,
            (*acks, *required),
        ),
    }
}

/// Runs a Paxos step on the core that owns `key` and builds its answer.
async fn paxos_answer(
    core: &Core,
    id: u64,
    key: &[u8],
    step: PaxosStep,
    timeout: Duration,
) -> Result<Vec<u8>, Vec<u8>> {
    let commit = matches!(step, PaxosStep::Commit(..));
    let op = ShardOp::Paxos {
        key: key.to_vec(),
        step,
    };
    let parts = |o: &dynacore_engine::Object| {
        object::to_parts(o)
            .map_err(|e| error_body(id, fb::ErrorCode::Internal, &e.to_string(), None))
    };
    match core.execute(op, timeout).await.into_paxos() {
        Err(e) => Err(store_error(id, &e)),
        Ok(PaxosAnswer::Promise {
            promised,
            ballot,
            accepted,
            committed,
            copy,
        }) => {
            let accepted = accepted
                .map(|(b, o)| parts(&o).map(|p| (b, p)))
                .transpose()?;
            let copy = copy.as_ref().map(parts).transpose()?;
            Ok(reply::paxos_promise_answer(
                id,
                &reply::PromiseParts {
                    promised,
                    ballot,
                    accepted: accepted
                        .as_ref()
                        .map(|(b, (v, vals))| (*b, (v.as_slice(), vals.as_slice()))),
                    committed,
                    copy: copy
                        .as_ref()
                        .map(|(v, vals)| (v.as_slice(), vals.as_slice())),
                },
            ))
        }
        Ok(PaxosAnswer::Accepted(accepted, ballot)) => {
            Ok(reply::paxos_accept_answer(id, accepted, ballot))
        }
        Ok(PaxosAnswer::Committed) if commit => {
            Ok(reply::replica_object_answer(id, Some((&[], None))))
        }
        Ok(_) => Err(error_body(
            id,
            fb::ErrorCode::Internal,
            "a core answered another step",
            None,
        )),
    }
}

/// Logs a refused peer's request, at most once every ten seconds per core.
fn refused_peer_log(why: &str) {
    thread_local! {
        static LAST: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
    }
    LAST.with(|last| {
        if last
            .get()
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(10))
        {
            last.set(Some(Instant::now()));
            tracing::error!("{why}");
        }
    });
}

/// Answers one request body on `core` (the operation runs on the core that owns its key).
/// `from_peer`: it came in a frame authenticated with the cluster secret; only such frames may
/// carry replica operations (`ReplicaRead`, `ReplicaApply`, a write marked `forwarded`).
/// A peer whose internode protocol this node cannot work with is refused (and its connection
/// closed), saying why.
pub async fn answer(core: &Core, body: &[u8], from_peer: bool) -> Answer {
    let req = match parse_request(body) {
        Ok(r) => r,
        Err(e) => return frame_error(fb::ErrorCode::BadRequest, &e.to_string()),
    };
    let id = req.id();
    if from_peer {
        let peer = Protocol::announced(req.protocol(), req.protocol_min());
        let own = dynacore_proto::version::own();
        if !own.works_with(peer) {
            let why = format!("a peer's request refused: it {}", own.refusal(peer));
            refused_peer_log(&why);
            return Answer {
                body: error_body(id, fb::ErrorCode::BadRequest, &why, None),
                close: true,
                op: Op::Other,
                ok: false,
            };
        }
    }
    let replica_op = matches!(
        req.op_type(),
        fb::Op::ReplicaRead
            | fb::Op::ReplicaApply
            | fb::Op::PaxosPrepare
            | fb::Op::PaxosPropose
            | fb::Op::PaxosCommit
            | fb::Op::TreeHashes
            | fb::Op::TreeKeys
            | fb::Op::Repaired
            | fb::Op::RingSync
            | fb::Op::StreamRange
    ) || req.forwarded();
    if replica_op && !from_peer {
        core.metrics()
            .auth_refused(crate::metrics::AuthPlane::Binary);
        return Answer {
            body: error_body(
                id,
                fb::ErrorCode::BadRequest,
                "replica operations are for the cluster's nodes: frames authenticated with \
                 the cluster secret",
                None,
            ),
            close: false,
            op: Op::Other,
            ok: false,
        };
    }
    // A client may ask for less time than the server's limit, never more.
    let timeout = match req.timeout_ms() {
        0 => core.default_timeout(),
        ms => Duration::from_millis(u64::from(ms)).min(core.default_timeout()),
    };
    // Quorums are checked against the configured factor here; one the ring cannot give now is
    // the coordinator's `Unavailable`.
    let rf = core.cluster().configured_rf;
    let bad = |m: &str| Err(error_body(id, fb::ErrorCode::BadRequest, m, None));
    let (op, body) = match req.op_type() {
        fb::Op::Get => (
            Op::Get,
            match req.op_as_get() {
                Some(get) => match Quorum::from_wire(get.r(), rf, "r") {
                    Err(m) => bad(&m),
                    Ok(r) => {
                        let read = ReadRequest {
                            key: get.key().bytes().to_vec(),
                            r,
                            read_repair: ReadRepair::from_wire(get.read_repair()),
                            conflicts: Conflicts::from_wire(get.conflicts()),
                        };
                        let siblings = read.conflicts == Conflicts::Siblings
                            || (read.conflicts == Conflicts::Default
                                && core.replication().siblings);
                        match coordinator::read(core, read, timeout).await {
                            Ok(found) => Ok(get_body(id, found, siblings)),
                            Err(e) => Err(store_error(id, &e)),
                        }
                    }
                },
                None => bad("get without fields"),
            },
        ),
        fb::Op::Put => (
            Op::Put,
            match req.op_as_put() {
                Some(put) => match (
                    Quorum::from_wire(put.w(), rf, "w"),
                    KeyCondition::from_wire(put.condition()),
                ) {
                    (Err(m), _) => bad(&m),
                    (_, Err(c)) => bad(&format!("unknown key condition {c}")),
                    (Ok(w), Ok(condition)) => {
                        let write = WriteRequest {
                            key: put.key().bytes().to_vec(),
                            value: Some(put.value().bytes().to_vec()),
                            // Milliseconds when given; else the seconds an older sender gave.
                            ttl_ms: Some(put.ttl_ms()).filter(|&t| t > 0).or_else(|| {
                                Some(put.ttl_seconds().saturating_mul(1000)).filter(|&t| t > 0)
                            }),
                            expected: put.expected_version().map(|v| v.bytes().to_vec()),
                            context: put.context().map(|v| v.bytes().to_vec()),
                            w,
                            forwarded: req.forwarded(),
                            condition,
                        };
                        written(
                            id,
                            fb::Reply::Put,
                            coordinator::write(core, write, timeout).await,
                        )
                    }
                },
                None => bad("put without fields"),
            },
        ),
        fb::Op::Delete => (
            Op::Delete,
            match req.op_as_delete() {
                Some(del) => match Quorum::from_wire(del.w(), rf, "w") {
                    Err(m) => bad(&m),
                    Ok(w) => {
                        let write = WriteRequest {
                            key: del.key().bytes().to_vec(),
                            value: None,
                            ttl_ms: None,
                            expected: del.expected_version().map(|v| v.bytes().to_vec()),
                            context: del.context().map(|v| v.bytes().to_vec()),
                            w,
                            forwarded: req.forwarded(),
                            condition: KeyCondition::None,
                        };
                        written(
                            id,
                            fb::Reply::Delete,
                            coordinator::write(core, write, timeout).await,
                        )
                    }
                },
                None => bad("delete without fields"),
            },
        ),
        fb::Op::Ping => {
            let payload = req.op_as_ping().map_or(0, |p| p.payload());
            let mut b = FlatBufferBuilder::new();
            let ping = fb::PingResponse::create(&mut b, &fb::PingResponseArgs { payload });
            (
                Op::Other,
                Ok(reply::finish(b, id, fb::Reply::Ping, ping.as_union_value())),
            )
        }
        fb::Op::Topology => (Op::Other, Ok(topology_body(id, core))),
        fb::Op::ReplicaRead => (
            Op::Other,
            match req.op_as_replica_read() {
                Some(r) => {
                    let op = ShardOp::ReplicaRead {
                        key: r.key().bytes().to_vec(),
                    };
                    replica_object(id, core.execute(op, timeout).await.into_object())
                }
                None => bad("replica read without fields"),
            },
        ),
        fb::Op::ReplicaApply => (
            Op::Other,
            match req.op_as_replica_apply() {
                Some(a) => {
                    let values = a.values().map(|v| v.bytes()).unwrap_or_default();
                    let expected = a
                        .expected_version()
                        .map(|v| decode_version(v.bytes()))
                        .transpose();
                    match (object::from_parts(a.version().bytes(), values), expected) {
                        (Err(e), _) => bad(&format!("bad object: {e}")),
                        (_, Err(e)) => Err(store_error(id, &e)),
                        (Ok(object), Ok(_)) if a.hint_for() != 0 => {
                            let key = a.key().bytes();
                            match coordinator::store_hint(core, NodeId(a.hint_for()), key, &object)
                                .await
                            {
                                Ok(()) => replica_applied(id, Ok(Some(object))),
                                Err(e) => Err(store_error(id, &e)),
                            }
                        }
                        (Ok(object), Ok(expected)) => {
                            let op = ShardOp::ReplicaApply {
                                key: a.key().bytes().to_vec(),
                                object,
                                expected,
                            };
                            replica_applied(id, core.execute(op, timeout).await.into_object())
                        }
                    }
                }
                None => bad("replica apply without fields"),
            },
        ),
        fb::Op::PaxosPrepare => (
            Op::Other,
            match req.op_as_paxos_prepare() {
                Some(p) => {
                    let step = PaxosStep::Prepare(Ballot::from_wire(p.ballot()));
                    paxos_answer(core, id, p.key().bytes(), step, timeout).await
                }
                None => bad("paxos prepare without fields"),
            },
        ),
        fb::Op::PaxosPropose | fb::Op::PaxosCommit => (
            Op::Other,
            match (req.op_as_paxos_propose(), req.op_as_paxos_commit()) {
                (Some(p), _) => {
                    let values = p.values().map(|v| v.bytes()).unwrap_or_default();
                    match object::from_parts(p.version().bytes(), values) {
                        Err(e) => bad(&format!("bad object: {e}")),
                        Ok(object) => {
                            let step = PaxosStep::Propose(Ballot::from_wire(p.ballot()), object);
                            paxos_answer(core, id, p.key().bytes(), step, timeout).await
                        }
                    }
                }
                (None, Some(c)) => {
                    let values = c.values().map(|v| v.bytes()).unwrap_or_default();
                    match object::from_parts(c.version().bytes(), values) {
                        Err(e) => bad(&format!("bad object: {e}")),
                        Ok(object) => {
                            let step = PaxosStep::Commit(Ballot::from_wire(c.ballot()), object);
                            paxos_answer(core, id, c.key().bytes(), step, timeout).await
                        }
                    }
                }
                (None, None) => bad("paxos proposal without fields"),
            },
        ),
        fb::Op::TreeHashes => (
            Op::Other,
            match req.op_as_tree_hashes() {
                Some(t) => match token_ranges(core, t.ranges().iter()) {
                    Err(m) => bad(&m),
                    Ok(ranges) => {
                        match in_background(core, ShardOp::TreeHashes { ranges }, timeout).await {
                            Ok(TreeAnswer::Hashes(h)) => {
                                let oldest = core
                                    .shared()
                                    .metrics()
                                    .iter()
                                    .map(crate::metrics::CoreMetrics::oldest_hint_ms)
                                    .filter(|&t| t != 0)
                                    .min()
                                    .unwrap_or(0);
                                Ok(reply::tree_hashes_answer(id, h.as_deref(), oldest))
                            }
                            Ok(
                                TreeAnswer::Keys(_)
                                | TreeAnswer::Check(_)
                                | TreeAnswer::Objects(..),
                            ) => bad("a core answered another request"),
                            Err(e) => Err(store_error(id, &e)),
                        }
                    }
                },
                None => bad("tree hashes without fields"),
            },
        ),
        fb::Op::TreeKeys => (
            Op::Other,
            match req.op_as_tree_keys() {
                Some(t) => match token_ranges(core, t.ranges().iter()) {
                    Err(m) => bad(&m),
                    Ok(ranges) => {
                        let max = match t.max() {
                            0 => TREE_KEYS_MAX,
                            n => (n as usize).min(TREE_KEYS_MAX),
                        };
                        match in_background(core, ShardOp::TreeKeys { ranges, max }, timeout).await
                        {
                            Ok(TreeAnswer::Keys(keys)) => {
                                let wire = keys.map(|(keys, more)| {
                                    let list: Vec<KeyStateWire> = keys
                                        .into_iter()
                                        .map(|k| KeyStateWire {
                                            key: k.key,
                                            version: k.version,
                                            hash: k.hash,
                                            deleted_at_ms: k.deleted_at_ms,
                                        })
                                        .collect();
                                    (list, more)
                                });
                                Ok(reply::tree_keys_answer(
                                    id,
                                    wire.as_ref().map(|(l, more)| (l.as_slice(), *more)),
                                ))
                            }
                            Ok(
                                TreeAnswer::Hashes(_)
                                | TreeAnswer::Check(_)
                                | TreeAnswer::Objects(..),
                            ) => bad("a core answered another request"),
                            Err(e) => Err(store_error(id, &e)),
                        }
                    }
                },
                None => bad("tree keys without fields"),
            },
        ),
        fb::Op::Repaired => (
            Op::Other,
            match req.op_as_repaired() {
                Some(r) => {
                    let range = (r.range().start(), r.range().end());
                    let replicas: Vec<u64> = r.replicas().iter().collect();
                    let at = r.repaired_at_ms();
                    core.shared()
                        .purge()
                        .history
                        .update(|h| h.record(range, &replicas, at));
                    Ok(reply::repaired_answer(id))
                }
                None => bad("repaired notice without fields"),
            },
        ),
        fb::Op::RingSync => (
            Op::Other,
            match (req.op_as_ring_sync(), core.shared().keeper()) {
                (Some(r), Some(keeper)) => {
                    match crate::cluster::keeper::decode_book(r.book().bytes()) {
                        Ok(entries) => {
                            keeper.merge(&entries);
                            Ok(reply::ring_sync_answer(id, &keeper.encoded()))
                        }
                        Err(m) => bad(&m),
                    }
                }
                (None, _) => bad("ring sync without fields"),
                (_, None) => bad("this node does not gossip: it keeps no ring book"),
            },
        ),
        fb::Op::StreamRange => (
            Op::Other,
            match req.op_as_stream_range() {
                Some(r) => {
                    let (start, end) = (r.range().start(), r.range().end());
                    let scan = r.scan();
                    let after = r
                        .after_key()
                        .map(|k| k.bytes().to_vec())
                        .unwrap_or_default();
                    let own = core.cluster().own_node().shard_map.clone();
                    let (first, last) = (
                        dynacore_proto::ring::Token(start),
                        dynacore_proto::ring::Token(end),
                    );
                    if start > end || !own.on_one_core(first, last) {
                        bad("a streamed range is ordered and held by one core of the node")
                    } else {
                        let op = ShardOp::StreamRange {
                            start,
                            end,
                            after,
                            max_keys: match r.max_keys() {
                                0 => STREAM_KEYS_MAX,
                                n => (n as usize).min(STREAM_KEYS_MAX),
                            },
                            max_bytes: match r.max_bytes() {
                                0 => STREAM_BYTES_MAX,
                                n => (n as usize).min(STREAM_BYTES_MAX),
                            },
                        };
                        // A client's scan is foreground work; a range moving, background.
                        let answer = if scan {
                            core.execute(op, timeout).await.into_tree()
                        } else {
                            in_background(core, op, timeout).await
                        };
                        match answer {
                            Ok(TreeAnswer::Objects(objects, more)) => {
                                let mut entries = Vec::with_capacity(objects.len());
                                let mut failed = None;
                                for (key, object) in objects {
                                    match dynacore_engine::object::to_parts(&object) {
                                        Ok((version, values)) => {
                                            entries.push(reply::StreamEntryWire {
                                                key,
                                                version,
                                                values,
                                            });
                                        }
                                        Err(e) => {
                                            failed = Some(e.to_string());
                                            break;
                                        }
                                    }
                                }
                                if failed.is_none() && !scan {
                                    pace_stream(core, &entries).await;
                                }
                                match failed {
                                    Some(m) => Err(store_error(id, &StoreError::Internal(m))),
                                    None => Ok(reply::stream_range_answer(id, &entries, more)),
                                }
                            }
                            Ok(_) => bad("a core answered another request"),
                            Err(e) => Err(store_error(id, &e)),
                        }
                    }
                }
                None => bad("stream range without fields"),
            },
        ),
        other => (Op::Other, bad(&format!("unknown operation {}", other.0))),
    };
    let ok = body.is_ok();
    let body = body.unwrap_or_else(|e| e);
    if body.len() > FRAME_BYTES_MAX {
        // A value read with its siblings (or a replica's copy of many large siblings) can make
        // an answer no frame can carry: that request fails, with what to do instead.
        let message = format!(
            "the answer would be {} bytes, over the {FRAME_BYTES_MAX}-byte frame limit; read \
             the key without siblings (conflicts=lww) or over HTTP",
            body.len()
        );
        return Answer {
            body: error_body(id, fb::ErrorCode::ValueTooLarge, &message, None),
            close: false,
            op,
            ok: false,
        };
    }
    Answer {
        body,
        close: false,
        op,
        ok,
    }
}

/// Runs a tree operation for a peer's exchange in this core's anti-entropy queue (low shares),
/// not in the connection's (the foreground's).
async fn in_background(
    core: &Core,
    op: ShardOp,
    timeout: Duration,
) -> Result<TreeAnswer, StoreError> {
    let core = core.clone();
    runtime::spawn_detached_into(
        async move { core.execute(op, timeout).await.into_tree() },
        coordinator::anti_entropy_queue(),
    )
    .await
    .unwrap_or_else(|| Err(StoreError::Unavailable("the core stopped".into())))
}

/// The longest a source holds a `StreamRange` answer back for its budget (well within the
/// streaming node's call timeout).
const STREAM_PACE_MAX: Duration = Duration::from_secs(2);

/// A source paces what it streams by its own repair budget, which follows its own foreground
/// p99 (the streaming node sees only its own): it takes the entries from the budget and holds
/// the answer back for what went past it.
async fn pace_stream(core: &Core, entries: &[reply::StreamEntryWire]) {
    let shared = core.shared();
    shared.served_stream();
    let (mut wait, mut total) = (Duration::ZERO, 0u64);
    for e in entries {
        let bytes = e.key.len() + e.version.len() + e.values.len();
        total += bytes as u64;
        wait = shared.repair_budget(|b| b.take(bytes));
    }
    core.metrics().streamed_out(entries.len() as u64, total);
    if !wait.is_zero() {
        runtime::sleep(wait.min(STREAM_PACE_MAX)).await;
    }
}

/// Keys one `StreamRange` answer carries at most.
const STREAM_KEYS_MAX: usize = 4096;
/// About how many bytes one `StreamRange` answer carries at most (a frame holds 10 MiB).
const STREAM_BYTES_MAX: usize = 4 << 20;

/// Keys one `TreeKeys` answer carries at most.
const TREE_KEYS_MAX: usize = 8192;

/// Token ranges of an anti-entropy request, checked: ordered ends, a bounded count, all held
/// by one core of this node.
fn token_ranges<'a>(
    core: &Core,
    ranges: impl Iterator<Item = &'a fb::TokenRange>,
) -> Result<Vec<(u64, u64)>, String> {
    let ranges: Vec<(u64, u64)> = ranges.map(|r| (r.start(), r.end())).collect();
    if ranges.is_empty() || ranges.len() > 8192 {
        return Err(format!("1 to 8192 token ranges, not {}", ranges.len()));
    }
    if let Some(r) = ranges.iter().find(|r| r.0 > r.1) {
        return Err(format!("token range {}..={} is reversed", r.0, r.1));
    }
    let own = core.cluster().own_node().shard_map.clone();
    let first = own.shard_of(dynacore_proto::ring::Token(ranges[0].1));
    if ranges.iter().any(|r| {
        own.shard_of(dynacore_proto::ring::Token(r.1)) != first
            || !own.on_one_core(
                dynacore_proto::ring::Token(r.0),
                dynacore_proto::ring::Token(r.1),
            )
    }) {
        return Err("the token ranges of one request must lie on one core".into());
    }
    Ok(ranges)
}

fn replica_object(
    id: u64,
    reply: Result<Option<dynacore_engine::Object>, StoreError>,
) -> Result<Vec<u8>, Vec<u8>> {
    match reply {
        Ok(found) => {
            let parts = found.as_ref().map(object::to_parts).transpose();
            match parts {
                Ok(parts) => Ok(reply::replica_object_answer(
                    id,
                    parts
                        .as_ref()
                        .map(|(v, values)| (v.as_slice(), Some(values.as_slice()))),
                )),
                Err(e) => Err(error_body(
                    id,
                    fb::ErrorCode::Internal,
                    &e.to_string(),
                    None,
                )),
            }
        }
        Err(e) => Err(store_error(id, &e)),
    }
}

/// The answer to a `ReplicaApply`: the merged copy's version part only (the sender does not
/// need the values back).
fn replica_applied(
    id: u64,
    reply: Result<Option<dynacore_engine::Object>, StoreError>,
) -> Result<Vec<u8>, Vec<u8>> {
    match reply {
        Ok(Some(merged)) => match object::to_parts(&merged) {
            Ok((version, _)) => Ok(reply::replica_object_answer(id, Some((&version, None)))),
            Err(e) => Err(error_body(
                id,
                fb::ErrorCode::Internal,
                &e.to_string(),
                None,
            )),
        },
        Ok(None) => Err(error_body(
            id,
            fb::ErrorCode::Internal,
            "an apply returned no object",
            None,
        )),
        Err(e) => Err(store_error(id, &e)),
    }
}

fn written(
    id: u64,
    kind: fb::Reply,
    reply: Result<Vec<u8>, StoreError>,
) -> Result<Vec<u8>, Vec<u8>> {
    match reply {
        Ok(version) => Ok(reply::written_answer(id, kind, &version)),
        Err(e) => Err(store_error(id, &e)),
    }
}

/// A read's answer: the newest value, and with `siblings` every live value.
fn get_body(id: u64, found: Option<ReadResult>, siblings: bool) -> Vec<u8> {
    let found = found.map(|f| reply::Found {
        value: f.values.first().map(|(v, _)| v.clone()).unwrap_or_default(),
        version: f.version,
        siblings: f.values,
        expiry_ms: f.expiry_ms,
    });
    reply::get_answer(id, found.as_ref(), siblings)
}

fn topology_body(id: u64, core: &Core) -> Vec<u8> {
    let cluster = core.cluster();
    let members = core.shared().members().read().ok().and_then(|m| m.clone());
    let mut b = FlatBufferBuilder::new();
    let state_of = |up: bool, status: Option<NodeStatus>| match (up, status) {
        (false, _) => fb::NodeState::Down,
        (true, Some(NodeStatus::Joining)) => fb::NodeState::Joining,
        (true, Some(NodeStatus::Leaving)) => fb::NodeState::Leaving,
        (true, _) => fb::NodeState::Normal,
    };
    // The ring's nodes first (this one first of all), then members not (yet) in the ring.
    let mut ring_nodes: Vec<_> = cluster.nodes.values().collect();
    ring_nodes.sort_by_key(|n| (n.id != cluster.own, n.id));
    let mut nodes: Vec<_> = ring_nodes
        .iter()
        .map(|n| {
            let host = b.create_string(&n.binary.ip().to_string());
            let name = (!n.name.is_empty()).then(|| b.create_string(&n.name));
            fb::NodeInfo::create(
                &mut b,
                &fb::NodeInfoArgs {
                    id: n.id.0,
                    host: Some(host),
                    base_port: n.binary.port(),
                    shards: n.shards,
                    generation: n.generation,
                    // The ring's view of a node that is joining or leaving wins over what it
                    // last announced.
                    state: match (n.up, n.state) {
                        (true, MemberState::Joining) => fb::NodeState::Joining,
                        (true, MemberState::Leaving) => fb::NodeState::Leaving,
                        _ => state_of(n.up, n.status),
                    },
                    in_ring: n.in_ring,
                    name,
                },
            )
        })
        .collect();
    for v in members.iter().flat_map(|m| &m.others) {
        if cluster.nodes.contains_key(&NodeId(v.id.node)) {
            continue;
        }
        let meta = v.meta.as_ref();
        let host = b.create_string(&meta.map_or(v.id.addr.ip(), |m| m.binary.ip()).to_string());
        nodes.push(fb::NodeInfo::create(
            &mut b,
            &fb::NodeInfoArgs {
                id: v.id.node,
                host: Some(host),
                base_port: meta.map_or(v.id.addr.port(), |m| m.binary.port()),
                shards: meta.map_or(0, |m| m.shards),
                generation: v.id.generation,
                state: state_of(v.up, meta.map(|m| m.status)),
                in_ring: false,
                name: None,
            },
        ));
    }
    let nodes = b.create_vector(&nodes);
    let vnodes: Vec<fb::VnodeEntry> = cluster
        .ring
        .vnodes()
        .iter()
        .map(|v| fb::VnodeEntry::new(v.token.0, v.node.0, v.index))
        .collect();
    let vnodes = b.create_vector(&vnodes);
    let topo = fb::TopologyResponse::create(
        &mut b,
        &fb::TopologyResponseArgs {
            nodes: Some(nodes),
            vnodes: Some(vnodes),
            replication_factor: cluster.replication_factor,
        },
    );
    reply::finish(b, id, fb::Reply::Topology, topo.as_union_value())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::with_store;
    use dynacore_proto::ring::VNODES_DEFAULT;
    use dynacore_proto::{build, parse_response};

    fn put(
        id: u64,
        key: &[u8],
        value: &[u8],
        expected: Option<&[u8]>,
        w: Option<fb::Quorum>,
    ) -> Vec<u8> {
        build::put(
            id,
            &build::Put {
                key,
                value,
                expected_version: expected,
                w,
                ..build::Put::default()
            },
        )
    }

    fn get(id: u64, key: &[u8], r: Option<fb::Quorum>) -> Vec<u8> {
        build::get(id, key, r, fb::ReadRepair::Default)
    }

    #[test]
    fn puts_gets_and_conditions_over_the_protocol() {
        with_store(|store, _| async move {
            // Conditional writes are transactions: this replica keeps acceptor states.
            let paxos = crate::storage::paxos::PaxosStore::open(
                store.shard().dir().with_extension("paxos"),
                dynacore_engine::ShardId(0),
                std::time::Duration::from_secs(3600),
            )
            .await
            .expect("paxos store");
            let paxos = std::rc::Rc::new(paxos);
            let core = Core::single(store.with_paxos(paxos.clone()), NodeId(7));
            let a = answer(&core, &put(1, b"k", b"v1", None, None), false).await;
            assert!(!a.close);
            let resp = parse_response(&a.body).expect("response");
            assert_eq!(resp.id(), 1);
            let v1 = resp
                .reply_as_put()
                .and_then(|p| p.version())
                .expect("version")
                .bytes()
                .to_vec();
            let a = answer(&core, &get(2, b"k", None), false).await;
            let resp = parse_response(&a.body).expect("response");
            let g = resp.reply_as_get().expect("get reply");
            assert!(g.found());
            assert_eq!(g.value().map(|v| v.bytes()), Some(&b"v1"[..]));
            assert_eq!(g.version().map(|v| v.bytes().to_vec()), Some(v1.clone()));
            // A conditional put on the current version goes through, on a stale one it fails
            // and says what the current version is.
            let a = answer(&core, &put(3, b"k", b"v2", Some(&v1), None), false).await;
            let v2 = parse_response(&a.body)
                .expect("response")
                .reply_as_put()
                .and_then(|p| p.version())
                .expect("v")
                .bytes()
                .to_vec();
            let a = answer(&core, &put(4, b"k", b"v3", Some(&v1), None), false).await;
            let resp = parse_response(&a.body).expect("response");
            let e = resp.reply_as_error().expect("error");
            assert_eq!(e.code(), fb::ErrorCode::ConditionFailed);
            assert_eq!(e.current_version().map(|v| v.bytes().to_vec()), Some(v2));
            let a = answer(&core, &get(5, b"absent", None), false).await;
            let resp = parse_response(&a.body).expect("response");
            assert!(!resp.reply_as_get().expect("get").found());
            drop(core);
            paxos.close().await.expect("close");
        });
    }

    #[test]
    fn bad_requests_are_typed_errors_and_malformed_ones_close() {
        with_store(|store, _| async move {
            let core = Core::single(store, NodeId(7));
            let code = |a: &Answer| {
                parse_response(&a.body)
                    .expect("response")
                    .reply_as_error()
                    .map(|e| e.code())
            };
            let with_w = |kind, count| put(1, b"k", b"v", None, Some(fb::Quorum::new(kind, count)));
            // W=2 with one replica: refused, the connection stays.
            let a = answer(&core, &with_w(fb::QuorumKind::Count, 2), false).await;
            assert_eq!(
                (code(&a), a.close),
                (Some(fb::ErrorCode::BadRequest), false)
            );
            let a = answer(&core, &with_w(fb::QuorumKind::Quorum, 0), false).await;
            assert_eq!(code(&a), None, "quorum is accepted");
            let a = answer(
                &core,
                &get(2, b"", Some(fb::Quorum::new(fb::QuorumKind::Count, 1))),
                false,
            )
            .await;
            assert_eq!(code(&a), Some(fb::ErrorCode::InvalidKey));
            let a = answer(&core, &put(3, b"k", b"v", Some(b"\xff"), None), false).await;
            assert_eq!(code(&a), Some(fb::ErrorCode::BadRequest));
            // Garbage: an error with id 0, and the connection closes.
            let a = answer(&core, b"definitely not a flatbuffer", false).await;
            assert!(a.close);
            let resp = parse_response(&a.body).expect("response");
            assert_eq!(resp.id(), 0);
            assert_eq!(code(&a), Some(fb::ErrorCode::BadRequest));
        });
    }

    #[test]
    fn replicas_read_and_merge_objects() {
        use dynacore_engine::version::{ActorId, HlcTimestamp, VersionVector};
        use dynacore_engine::{Object, Sibling};
        with_store(|store, _| async move {
            let core = Core::single(store, NodeId(7));
            let object_of = |body: &[u8]| {
                let resp = parse_response(body).expect("response");
                let r = resp.reply_as_replica_object().expect("replica object");
                r.found().then(|| {
                    object::from_parts(
                        r.version().expect("version").bytes(),
                        r.values().map(|v| v.bytes()).unwrap_or_default(),
                    )
                    .expect("decodes")
                })
            };
            // From a client (a frame without the cluster's MAC): refused, and counted.
            let refused = |body: &[u8]| {
                let resp = parse_response(body).expect("response");
                resp.reply_as_error().map(|e| e.code()) == Some(fb::ErrorCode::BadRequest)
            };
            let a = answer(&core, &build::replica_read(1, 0, b"k"), false).await;
            assert!(refused(&a.body));
            let (version, values) = object::to_parts(&Object::new(Sibling {
                value: Some(b"forged".to_vec()),
                hlc: HlcTimestamp::from_parts(1, 0),
                expiry_ms: None,
            }))
            .expect("parts");
            let a = answer(
                &core,
                &build::replica_apply(1, 0, b"k", &version, &values),
                false,
            )
            .await;
            assert!(refused(&a.body));
            assert_eq!(
                core.metrics()
                    .auth_refused_count(crate::metrics::AuthPlane::Binary),
                2
            );
            let a = answer(&core, &build::replica_read(1, 0, b"k"), true).await;
            assert_eq!(
                object_of(&a.body),
                None,
                "nothing yet: the forged apply was refused"
            );
            answer(&core, &put(2, b"k", b"local", None, None), false).await;
            let a = answer(&core, &build::replica_read(3, 0, b"k"), true).await;
            let local = object_of(&a.body).expect("found");
            assert_eq!(local.size(), 1);
            // Another replica's concurrent write: after the merge both siblings are kept.
            let remote = Object::update(
                &VersionVector::new(),
                Sibling {
                    value: Some(b"remote".to_vec()),
                    hlc: HlcTimestamp::from_parts(1_000_100, 0),
                    expiry_ms: None,
                },
                None,
                ActorId::new(99, 0),
            )
            .expect("object");
            let (version, values) = object::to_parts(&remote).expect("parts");
            let a = answer(
                &core,
                &build::replica_apply(4, 0, b"k", &version, &values),
                true,
            )
            .await;
            assert!(
                a.ok,
                "{:?}",
                parse_response(&a.body)
                    .ok()
                    .and_then(|r| r.reply_as_error())
                    .and_then(|e| e.message())
            );
            let resp = parse_response(&a.body).expect("response");
            let ack = resp.reply_as_replica_object().expect("replica object");
            assert!(
                ack.found() && ack.values().is_none(),
                "an apply answers its version only"
            );
            let read_back = |id| {
                let core = core.clone();
                async move {
                    let a = answer(&core, &build::replica_read(id, 0, b"k"), true).await;
                    object_of(&a.body).expect("found")
                }
            };
            let merged = read_back(30).await;
            assert_eq!(
                ack.version().map(|v| v.bytes().to_vec()),
                Some(object::to_parts(&merged).expect("parts").0)
            );
            assert_eq!(merged.size(), 2, "concurrent siblings both survive");
            assert!(merged.equal(&local.sync(&remote)));
            // Reads return the newest sibling (last writer wins by HLC).
            let a = answer(&core, &get(5, b"k", None), false).await;
            let resp = parse_response(&a.body).expect("response");
            assert_eq!(
                resp.reply_as_get()
                    .and_then(|g| g.value())
                    .map(|v| v.bytes()),
                Some(&b"remote"[..])
            );
            // Applying the same object again changes nothing (idempotent).
            let a = answer(
                &core,
                &build::replica_apply(6, 0, b"k", &version, &values),
                true,
            )
            .await;
            assert!(a.ok);
            assert!(read_back(31).await.equal(&merged));
            // Two replicas' copies each within the sibling bound, whose merge is not: the
            // replica keeps the newest (LWW), so the key stays readable and replicas converge.
            let many = |actors: std::ops::Range<u64>| {
                actors
                    .map(|a| {
                        Object::update(
                            &VersionVector::new(),
                            Sibling {
                                value: Some(a.to_le_bytes().to_vec()),
                                hlc: HlcTimestamp::from_parts(
                                    1_000_000,
                                    u16::try_from(a).expect("small"),
                                ),
                                expiry_ms: None,
                            },
                            None,
                            ActorId::new(1000 + a, 0),
                        )
                        .expect("object")
                    })
                    .reduce(|x, y| x.sync(&y))
                    .expect("some")
            };
            for (id, half) in [(20, many(0..60)), (21, many(60..120))] {
                let (v, vals) = object::to_parts(&half).expect("parts");
                let a = answer(
                    &core,
                    &build::replica_apply(id, 0, b"wide", &v, &vals),
                    true,
                )
                .await;
                assert!(a.ok);
                let a = answer(&core, &build::replica_read(id + 10, 0, b"wide"), true).await;
                assert!(object_of(&a.body).expect("merged").size() <= 100);
            }
            let a = answer(&core, &get(22, b"wide", None), false).await;
            let resp = parse_response(&a.body).expect("response");
            assert_eq!(
                resp.reply_as_get()
                    .and_then(|g| g.value())
                    .map(|v| v.bytes().to_vec()),
                Some(119u64.to_le_bytes().to_vec()),
                "the newest sibling wins"
            );
            // An object from a clock far ahead is refused.
            let future = Object::update(
                &VersionVector::new(),
                Sibling {
                    value: Some(b"future".to_vec()),
                    hlc: HlcTimestamp::from_parts(u64::MAX >> 20, 0),
                    expiry_ms: None,
                },
                None,
                ActorId::new(98, 0),
            )
            .expect("object");
            let (fv, fvals) = object::to_parts(&future).expect("parts");
            let a = answer(&core, &build::replica_apply(8, 0, b"k", &fv, &fvals), true).await;
            let resp = parse_response(&a.body).expect("response");
            assert_eq!(
                resp.reply_as_error().map(|e| e.code()),
                Some(fb::ErrorCode::BadRequest)
            );
            // A damaged object is a typed error; the connection stays.
            let a = answer(
                &core,
                &build::replica_apply(7, 0, b"k", b"\x09garbage", b""),
                true,
            )
            .await;
            assert!(!a.close);
            let resp = parse_response(&a.body).expect("response");
            assert_eq!(
                resp.reply_as_error().map(|e| e.code()),
                Some(fb::ErrorCode::BadRequest)
            );
        });
    }

    #[test]
    fn ping_and_topology() {
        with_store(|store, _| async move {
            let core = Core::single(store, NodeId(7));
            let ping = build::ping(9, 77);
            let a = answer(&core, &ping, false).await;
            let resp = parse_response(&a.body).expect("response");
            assert_eq!(resp.reply_as_ping().map(|p| p.payload()), Some(77));
            let topo = build::topology(10);
            let a = answer(&core, &topo, false).await;
            let resp = parse_response(&a.body).expect("response");
            let topo = resp.reply_as_topology().expect("topology");
            assert_eq!(topo.nodes().len(), 1);
            assert_eq!(topo.nodes().get(0).host(), "127.0.0.1");
            assert_eq!(topo.nodes().get(0).shards(), 1);
            assert_eq!(topo.nodes().get(0).id(), 7);
            let vnodes = topo.vnodes();
            assert_eq!(vnodes.len(), usize::from(VNODES_DEFAULT));
            assert!(vnodes
                .iter()
                .zip(vnodes.iter().skip(1))
                .all(|(a, b)| a.token() <= b.token()));
            assert_eq!(topo.replication_factor(), 1);
        });
    }
}

#[cfg(test)]
mod huge_ring {
    use super::*;
    use crate::cluster::{ClusterState, RingBook, RingMember, SharedCluster};
    use crate::core::{CoreParts, NodeShared};
    use crate::test_util::with_store;
    use dynacore_proto::{build, parse_response};

    #[test]
    fn a_topology_too_large_for_a_frame_is_an_error_and_the_core_keeps_answering() {
        with_store(|store, _| async move {
            // The largest ring members may announce: 1,024 nodes of 4,096 vnodes each.
            let member = |i: u64| {
                RingMember::new(
                    NodeId(i + 1),
                    std::net::SocketAddr::from(([127, 0, 0, 1], 7400)),
                    std::net::SocketAddr::from(([127, 0, 0, 1], 8400)),
                    1,
                    crate::cluster::membership::VNODES_MAX,
                    1,
                )
                .normal_with(Vec::new())
            };
            let mut book = RingBook::in_memory(member(0));
            let nodes = u64::try_from(crate::cluster::membership::NODES_MAX).expect("fits");
            for i in 1..nodes {
                book.record(member(i));
            }
            let cluster = SharedCluster::new(ClusterState::build(NodeId(1), &book, None, 3));
            let (shared, _inbox) = NodeShared::new(1);
            let core = Core::new(CoreParts {
                index: 0,
                store,
                cluster,
                shared,
                default_timeout: Duration::from_secs(10),
                hints: None,
                replication: crate::cluster::replication::ReplicationConfig::default(),
                source_ip: None,
                key: dynacore_proto::ClusterKey::new(&[1u8; 32]).expect("key"),
                tls: None,
            });
            let a = answer(&core, &build::topology(1), false).await;
            let resp = parse_response(&a.body).expect("a response");
            assert_eq!(
                resp.reply_as_error().map(|e| e.code()),
                Some(fb::ErrorCode::ValueTooLarge)
            );
            assert!(a.body.len() < FRAME_BYTES_MAX);
            let a = answer(&core, &build::ping(2, 7), false).await;
            assert_eq!(parse_response(&a.body).expect("pong").id(), 2);
        });
    }
}
