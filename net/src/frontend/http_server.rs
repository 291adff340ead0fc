//! The per-core HTTP server: the seed's API on top of [`http`](crate::http)'s sans-IO reader,
//! answered through the core that owns each key.
//!
//! * Keep-alive and pipelined requests are answered in order, one at a time per connection.
//! * Limits: the head ([`Limits`]), the body (`Content-Length` checked before any of it is
//!   read: an oversized value is a 413 without being buffered), the connections a core keeps
//!   open ([`HttpOptions::connections_max`]), and time: an idle keep-alive connection closes
//!   after [`HttpOptions::idle_timeout`]; a request whose head and body do not arrive within
//!   [`HttpOptions::read_timeout`] of its first byte gets 408; a response the client does not
//!   read within 30 s closes the connection.
//! * A connection closed after an error response (4xx from the reader, 408, 503) first closes
//!   its writing side and reads what the client still sends for a second, so that the
//!   response is not destroyed by a reset.
//! * Versions travel as hex strings (`{"version": "..."}`, `X-Dynacore-Version`, `If-Match`).

use std::io;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use dynacore_runtime::{self as runtime, TcpListener, TcpStream};
use serde_json::json;

use super::listen::{accept_connections, close_with, WRITE_TIMEOUT};
use crate::cluster::membership::NodeStatus;
use crate::cluster::ring_book::{MemberState, Progress};
use crate::cluster::RingMember;
use crate::coordinator::{self, ReadRequest, WriteRequest};
use crate::core::{Core, ShardOp, ShardReply};
use crate::frontend::http_codec::{
    self, error_body, parse_head, parse_json_put, response, version_from_hex, version_to_hex,
    HttpError, Limits, RequestHead, Route,
};
use crate::metrics::{self, Op, Protocol};
use crate::storage::replica::StoreError;
use dynacore_proto::ring::NodeId;
use dynacore_proto::Quorum;
use dynacore_proto::{Conflicts, KeyCondition};

/// The HTTP server's limits.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// Head and body limits.
    pub limits: Limits,
    /// How long a keep-alive connection may sit idle between requests.
    pub idle_timeout: Duration,
    /// How long a request, head and body, may take to arrive once its first byte did.
    pub read_timeout: Duration,
    /// Connections one core keeps open; more are answered 503 and closed.
    pub connections_max: usize,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            limits: Limits::default(),
            idle_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(30),
            connections_max: 4096,
        }
    }
}

/// Accepts HTTP connections on `listener` for as long as the task runs. A failed `accept` is
/// logged and retried after a short pause.
pub async fn serve_http(listener: TcpListener, core: Core, options: HttpOptions) {
    let options = Rc::new(options);
    accept_connections(
        listener,
        &core.clone(),
        Protocol::Http,
        options.connections_max,
        move |stream| {
            let (core, options) = (core.clone(), options.clone());
            async move { serve_connection(stream, &core, &options).await }
        },
        |mut stream| async move {
            let body = error_body("overloaded", "too many open HTTP connections");
            let r = response(503, "application/json", &[], body.as_bytes(), false);
            close_with(&mut stream, &r).await;
        },
    )
    .await;
}

/// Reads into `buf` until `deadline`: `Ok(0)` at end of stream, `TimedOut` past it.
async fn read_some(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> io::Result<usize> {
    let mut chunk = [0u8; 16 << 10];
    let within = deadline.saturating_duration_since(Instant::now());
    match runtime::timeout(within, stream.read(&mut chunk)).await {
        Some(Ok(n)) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(n)
        }
        Some(Err(e)) => Err(e),
        None => Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out")),
    }
}

fn timeout_response(what: &str) -> Vec<u8> {
    let body = error_body(
        "timeout",
        &format!("the request {what} did not arrive in time"),
    );
    response(408, "application/json", &[], body.as_bytes(), false)
}

async fn serve_connection(
    mut stream: TcpStream,
    core: &Core,
    options: &HttpOptions,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(16 << 10);
    loop {
        // The head: idle time allowed before its first byte; then the whole request (head and
        // body) must arrive within the read timeout.
        let mut deadline = Instant::now() + options.idle_timeout;
        let mut started = !buf.is_empty();
        if started {
            deadline = Instant::now() + options.read_timeout;
        }
        let (head, head_len) = loop {
            match parse_head(&buf, &options.limits) {
                Ok(Some(parsed)) => break parsed,
                Ok(None) => match read_some(&mut stream, &mut buf, deadline).await {
                    Ok(0) => return Ok(()),
                    Ok(_) => {
                        if !started {
                            started = true;
                            deadline = Instant::now() + options.read_timeout;
                        }
                    }
                    // An idle keep-alive connection closes quietly.
                    Err(e) if e.kind() == io::ErrorKind::TimedOut && buf.is_empty() => {
                        return Ok(())
                    }
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                        close_with(&mut stream, &timeout_response("head")).await;
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                },
                Err(e) => {
                    core.metrics().refused();
                    close_with(&mut stream, &e.to_response()).await;
                    return Ok(());
                }
            }
        };
        let arrived = Instant::now();
        let end = head_len + head.content_length;
        while buf.len() < end {
            match read_some(&mut stream, &mut buf, deadline).await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    close_with(&mut stream, &timeout_response("body")).await;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        // Health answers even while the node shuts down (that is what it reports).
        let admission = core.admit();
        if admission.is_none() && head.route != Route::Health {
            let body = error_body("unavailable", "the node is shutting down");
            let resp = response(503, "application/json", &[], body.as_bytes(), false);
            core.metrics()
                .request(Protocol::Http, Op::Other, false, arrived.elapsed());
            close_with(&mut stream, &resp).await;
            return Ok(());
        }
        let (resp, op, ok) = handle(core, &head, &buf[head_len..end]).await;
        core.metrics()
            .request(Protocol::Http, op, ok, arrived.elapsed());
        let written = runtime::timeout(WRITE_TIMEOUT, stream.write_all(&resp)).await;
        // The request counts as running until its answer is written.
        drop(admission);
        match written {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(e),
            None => return Ok(()), // the client does not read
        }
        if !head.keep_alive {
            // The end of the answer (TLS's close_notify on a TLS connection, which a client
            // must see to trust that nothing was cut).
            let _ = runtime::timeout(WRITE_TIMEOUT, stream.shutdown_write()).await;
            return Ok(());
        }
        buf.drain(..end);
        if buf.capacity() > 1 << 20 {
            buf.shrink_to(16 << 10);
        }
    }
}

/// A response: status, content type, extra headers, body.
struct Reply {
    status: u16,
    content_type: &'static str,
    version: Option<String>,
    body: Vec<u8>,
}

impl Reply {
    fn json(status: u16, value: &serde_json::Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            version: None,
            body: value.to_string().into_bytes(),
        }
    }

    fn error(status: u16, code: &str, message: &str) -> Reply {
        Reply::json(status, &json!({ "error": code, "message": message }))
    }

    fn from_http_error(e: &HttpError) -> Reply {
        Reply::error(e.status(), e.code(), &e.message())
    }

    fn from_store_error(e: &StoreError) -> Reply {
        match e {
            StoreError::InvalidKey(m) => Reply::error(400, "invalid_key", m),
            StoreError::ValueTooLarge(m) => Reply::error(413, "value_too_large", m),
            StoreError::BadRequest(m) => Reply::error(400, "bad_request", m),
            StoreError::ConditionFailed { current } => {
                let version = version_to_hex(current);
                let mut r = Reply::json(
                    412,
                    &json!({
                        "error": "condition_failed",
                        "message": "the version given in If-Match is not the current one",
                        "version": version,
                    }),
                );
                r.version = Some(version);
                r
            }
            StoreError::Unavailable(m) => Reply::error(503, "unavailable", m),
            StoreError::Timeout(m) => Reply::error(504, "timeout", m),
            StoreError::Overloaded(m) => Reply::error(503, "overloaded", m),
            StoreError::Internal(m) => Reply::error(500, "internal", m),
            StoreError::Quorum {
                acks,
                required,
                message,
            } => Reply::json(
                503,
                &json!({
                    "error": "unavailable",
                    "acks": acks,
                    "required": required,
                    "message": message,
                }),
            ),
        }
    }
}

/// Checks `?w=` / `?r=` against the replication factor.
fn check_quorum(q: Quorum, rf: u8, name: &str) -> Result<(), HttpError> {
    match q {
        Quorum::Count(n) if n > rf => Err(HttpError::BadRequest(format!(
            "{name}={n} is outside 1..={rf} (the replication factor)"
        ))),
        _ => Ok(()),
    }
}

async fn handle(core: &Core, head: &RequestHead, body: &[u8]) -> (Vec<u8>, Op, bool) {
    let (op, reply) = match &head.route {
        Route::Get(key) => (Op::Get, get(core, head, key).await),
        Route::Put(key) => (Op::Put, put(core, head, key, body).await),
        Route::Delete(key) => (Op::Delete, delete(core, head, key).await),
        Route::Health => (Op::Other, health(core)),
        Route::Cluster => (Op::Other, cluster(core)),
        Route::Metrics => (Op::Other, metrics_text(core).await),
        Route::LocalCopy(key) => (Op::Get, local_copy(core, key).await),
        Route::AdminCompact => (Op::Other, compact(core).await),
        Route::AdminSnapshot => (Op::Other, snapshot(core, head.name.as_deref()).await),
        Route::AdminRepair => (Op::Other, repair(core).await),
        Route::RepairStatus => (Op::Other, Ok(repair_status(core))),
        Route::VerifyTrees => (Op::Other, verify_trees(core).await),
        Route::Endpoints(key) => (Op::Other, Ok(endpoints(core, key))),
        Route::Decommission => (Op::Other, decommission(core).await),
        Route::RemoveNode(id) => (Op::Other, remove_node(core, id).await),
        Route::Cleanup => (Op::Other, cleanup(core).await),
    };
    let reply = reply.unwrap_or_else(|r| r);
    let ok = reply.status < 400;
    let headers: Vec<(&str, &str)> = reply
        .version
        .as_deref()
        .map(|v| vec![("X-Dynacore-Version", v)])
        .unwrap_or_default();
    let resp = response(
        reply.status,
        reply.content_type,
        &headers,
        &reply.body,
        head.keep_alive,
    );
    (resp, op, ok)
}

async fn get(core: &Core, head: &RequestHead, key: &[u8]) -> Result<Reply, Reply> {
    check_quorum(head.r, core.cluster().configured_rf, "r")
        .map_err(|e| Reply::from_http_error(&e))?;
    let conflicts = match head.siblings {
        None => Conflicts::Default,
        Some(true) => Conflicts::Siblings,
        Some(false) => Conflicts::Lww,
    };
    let siblings = head.siblings.unwrap_or(core.replication().siblings);
    let read = ReadRequest {
        key: key.to_vec(),
        r: head.r,
        read_repair: head.read_repair,
        conflicts,
    };
    let found = coordinator::read(core, read, core.default_timeout())
        .await
        .map_err(|e| Reply::from_store_error(&e))?;
    let Some(found) = found else {
        return Err(Reply::error(404, "not_found", "no value for this key"));
    };
    let version = version_to_hex(&found.version);
    if siblings && found.values.len() > 1 {
        // Concurrent values: every one, and the merged version that replaces them all.
        let list: Vec<_> = found
            .values
            .iter()
            .map(|(v, written_ms)| match std::str::from_utf8(v) {
                Ok(text) => json!({ "value": text, "written_ms": written_ms }),
                Err(_) => json!({ "value_hex": version_to_hex(v), "written_ms": written_ms }),
            })
            .collect();
        let mut r = Reply::json(300, &json!({ "siblings": list, "version": version }));
        r.version = Some(version);
        return Ok(r);
    }
    let expiry_ms = found.expiry_ms;
    let Some((value, _)) = found.values.into_iter().next() else {
        return Err(Reply::error(404, "not_found", "no value for this key"));
    };
    if head.accept_raw {
        return Ok(Reply {
            status: 200,
            content_type: "application/octet-stream",
            version: Some(version),
            body: value,
        });
    }
    let Ok(value) = String::from_utf8(value) else {
        return Err(Reply::error(
            406,
            "not_utf8",
            "the value is not UTF-8 text; read it with Accept: application/octet-stream",
        ));
    };
    let mut body = json!({ "value": value, "version": version });
    if let Some(at) = expiry_ms {
        body["expiry_ms"] = json!(at);
    }
    let mut r = Reply::json(200, &body);
    r.version = Some(version);
    Ok(r)
}

/// This node's own copy of `key`, every sibling shown (tombstones and expired values too).
async fn local_copy(core: &Core, key: &[u8]) -> Result<Reply, Reply> {
    let op = ShardOp::ReplicaRead { key: key.to_vec() };
    let object = core
        .execute(op, core.default_timeout())
        .await
        .into_object()
        .map_err(|e| Reply::from_store_error(&e))?;
    let Some(object) = object else {
        return Err(Reply::error(
            404,
            "not_found",
            "this node holds no copy of this key",
        ));
    };
    let mut version = Vec::new();
    object.join().encode_into(&mut version);
    let siblings: Vec<_> = object
        .values()
        .map(|s| {
            let text = s.value.as_ref().and_then(|v| std::str::from_utf8(v).ok());
            json!({
                "deleted": s.value.is_none(),
                "value": text,
                "value_hex": s.value.as_ref().filter(|_| text.is_none()).map(|v| version_to_hex(v)),
                "hlc": s.hlc.0,
                "written_ms": s.hlc.physical_ms(),
                "expiry_ms": s.expiry_ms,
            })
        })
        .collect();
    Ok(Reply::json(
        200,
        &json!({ "version": version_to_hex(&version), "siblings": siblings }),
    ))
}

/// A put's conditions: `If-Match: <version>` (the version), `If-Match: *` (the key holds a
/// live value), `If-None-Match: *` (it holds none); at most one.
fn conditions(head: &RequestHead) -> Result<(Option<Vec<u8>>, KeyCondition), Reply> {
    match (head.if_match.as_deref(), head.if_none_match.as_deref()) {
        (None, None) => Ok((None, KeyCondition::None)),
        (Some("*"), None) => Ok((None, KeyCondition::Present)),
        (Some(v), None) => Ok((hex_header(Some(v))?, KeyCondition::None)),
        (None, Some("*")) => Ok((None, KeyCondition::Absent)),
        (None, Some(_)) => Err(Reply::error(
            400,
            "bad_request",
            "If-None-Match takes * only (the key holds no live value)",
        )),
        (Some(_), Some(_)) => Err(Reply::error(
            400,
            "bad_request",
            "give If-Match or If-None-Match, not both",
        )),
    }
}

fn hex_header(value: Option<&str>) -> Result<Option<Vec<u8>>, Reply> {
    value
        .map(version_from_hex)
        .transpose()
        .map_err(|e| Reply::from_http_error(&e))
}

async fn put(core: &Core, head: &RequestHead, key: &[u8], body: &[u8]) -> Result<Reply, Reply> {
    check_quorum(head.w, core.cluster().configured_rf, "w")
        .map_err(|e| Reply::from_http_error(&e))?;
    let in_query = http_codec::ttl_ms(head.ttl_seconds, head.ttl_ms)
        .map_err(|e| Reply::from_http_error(&e))?;
    let (value, ttl_ms) = if head.raw_body {
        (body.to_vec(), in_query)
    } else {
        let (value, ttl) = parse_json_put(body).map_err(|e| Reply::from_http_error(&e))?;
        (value, ttl.or(in_query))
    };
    let (expected, condition) = conditions(head)?;
    let write = WriteRequest {
        key: key.to_vec(),
        value: Some(value),
        ttl_ms: ttl_ms.filter(|&t| t > 0),
        expected,
        context: hex_header(head.context.as_deref())?,
        w: head.w,
        forwarded: false,
        condition,
    };
    written(coordinator::write(core, write, core.default_timeout()).await)
}

async fn delete(core: &Core, head: &RequestHead, key: &[u8]) -> Result<Reply, Reply> {
    check_quorum(head.w, core.cluster().configured_rf, "w")
        .map_err(|e| Reply::from_http_error(&e))?;
    if head.if_none_match.is_some() || head.if_match.as_deref() == Some("*") {
        return Err(Reply::error(
            400,
            "bad_request",
            "a delete takes If-Match with a version only",
        ));
    }
    let write = WriteRequest {
        key: key.to_vec(),
        value: None,
        ttl_ms: None,
        expected: hex_header(head.if_match.as_deref())?,
        context: hex_header(head.context.as_deref())?,
        w: head.w,
        forwarded: false,
        condition: KeyCondition::None,
    };
    written(coordinator::write(core, write, core.default_timeout()).await)
}

fn written(reply: Result<Vec<u8>, StoreError>) -> Result<Reply, Reply> {
    match reply {
        Ok(version) => {
            let version = version_to_hex(&version);
            let mut r = Reply::json(200, &json!({ "version": version }));
            r.version = Some(version);
            Ok(r)
        }
        Err(e) => Err(Reply::from_store_error(&e)),
    }
}

fn health(core: &Core) -> Result<Reply, Reply> {
    if core.shared().is_closing() {
        return Err(Reply::json(503, &json!({ "status": "shutting_down" })));
    }
    Ok(Reply::json(
        200,
        &json!({
            "status": "ok",
            "cores": core.shards(),
            "uptime_seconds": core.shared().uptime().as_secs(),
        }),
    ))
}

/// `node`'s ring book entry (a node that gossips keeps a book).
fn book_entry(core: &Core, node: NodeId) -> Option<RingMember> {
    core.shared()
        .keeper()
        .and_then(|k| k.read(|b| b.get(node).cloned()))
}

/// A node's streaming progress, with the rate so far and the time left at that rate.
fn progress_json(p: &Progress) -> serde_json::Value {
    let elapsed_s = crate::storage::hints::now_ms().saturating_sub(p.started_ms) as f64 / 1000.0;
    #[allow(clippy::cast_precision_loss)]
    let eta_s = if p.done {
        Some(0.0)
    } else if p.ranges_done > 0 && elapsed_s > 0.0 {
        let per_range = elapsed_s / p.ranges_done as f64;
        Some(per_range * (p.ranges - p.ranges_done) as f64)
    } else {
        None
    };
    json!({
        "moving_node": p.node,
        "change": p.change,
        "ranges": p.ranges,
        "ranges_done": p.ranges_done,
        "keys": p.keys,
        "bytes": p.bytes,
        "seconds": elapsed_s,
        "eta_seconds": eta_s,
        "done": p.done,
    })
}

fn cluster(core: &Core) -> Result<Reply, Reply> {
    let cluster = core.cluster();
    let ring = &cluster.ring;
    let ownership = ring.ownership();
    let replicated = ring.replicated_ownership(usize::from(cluster.replication_factor));
    let members = core.shared().members().read().ok().and_then(|m| m.clone());
    let status_name = |s: NodeStatus| match s {
        NodeStatus::Joining => "joining",
        NodeStatus::Normal => "normal",
        NodeStatus::Leaving => "leaving",
    };
    let gossip_of = |id: NodeId| {
        members.as_ref().and_then(|m| {
            m.others
                .iter()
                .find(|v| v.id.node == id.0)
                .map(|v| v.id.addr.to_string())
        })
    };
    // This node first, then the other ring members, then members not in the ring.
    let mut ring_nodes: Vec<_> = cluster.nodes.values().collect();
    ring_nodes.sort_by_key(|n| (n.id != cluster.own, n.id));
    let mut nodes: Vec<_> = ring_nodes
        .iter()
        .map(|n| {
            #[allow(clippy::cast_precision_loss)]
            let owned = ownership.get(&n.id).copied().unwrap_or(0) as f64 / (1u128 << 64) as f64;
            let is_self = n.id == cluster.own;
            let progress = book_entry(core, n.id).and_then(|m| m.progress);
            json!({
                "id": n.id.to_string(),
                "name": (!n.name.is_empty()).then_some(&n.name),
                "self": is_self,
                "in_ring": n.in_ring,
                "host": n.binary.ip().to_string(),
                "port": n.binary.port(),
                "shard_ports": (0..n.shards).map(|s| u32::from(n.binary.port()) + 1 + s).collect::<Vec<_>>(),
                "http": n.http.to_string(),
                "gossip": if is_self { Some(n.binary.to_string()) } else { gossip_of(n.id) },
                "shards": n.shards,
                "vnodes": n.vnodes,
                "tokens": n.tokens.len(),
                "rack": n.rack,
                "generation": n.generation,
                "owned_fraction": owned,
                "replicated_fraction": replicated.get(&n.id).map_or(0.0, |&r| {
                    #[allow(clippy::cast_precision_loss)]
                    let f = r as f64 / (1u128 << 64) as f64;
                    f
                }),
                "up": n.up,
                "state": n.state.name(),
                // A node that announced it was leaving and then went away stopped cleanly
                // ("left", as before decommission existed); one decommissioned or removed
                // says so.
                "status": match (n.up, n.state, n.status) {
                    (_, MemberState::Left | MemberState::Removed, _)
                    | (true, MemberState::Joining | MemberState::Leaving, _) => n.state.name(),
                    (true, _, status) => status.map_or("normal", status_name),
                    (false, _, Some(NodeStatus::Leaving)) => "left",
                    (false, _, _) => "down",
                },
                "streaming": progress.map(|p| progress_json(&p)),
            })
        })
        .collect();
    // Members gone from the ring for good (decommissioned, removed), as the book keeps them.
    let gone: Vec<RingMember> = core
        .shared()
        .keeper()
        .map(|k| {
            k.read(|b| {
                b.members()
                    .filter(|(id, m)| m.state.gone() && !cluster.nodes.contains_key(id))
                    .map(|(_, m)| m.clone())
                    .collect()
            })
        })
        .unwrap_or_default();
    for m in &gone {
        nodes.push(json!({
            "id": m.id,
            "self": false,
            "in_ring": false,
            "host": m.binary.ip().to_string(),
            "port": m.binary.port(),
            "http": m.http.to_string(),
            "shards": m.shards,
            "vnodes": m.vnodes,
            "tokens": m.tokens.len(),
            "rack": m.rack,
            "generation": m.generation,
            "up": false,
            "state": m.state.name(),
            "status": m.state.name(),
        }));
    }
    if let Some(m) = &members {
        for v in m.others.iter().filter(|v| {
            let id = NodeId(v.id.node).to_string();
            !cluster.nodes.contains_key(&NodeId(v.id.node)) && !gone.iter().any(|g| g.id == id)
        }) {
            let meta = v.meta.as_ref();
            nodes.push(json!({
                "id": NodeId(v.id.node).to_string(),
                "self": false,
                "in_ring": false,
                "host": meta.map(|m| m.binary.ip().to_string()),
                "port": meta.map(|m| m.binary.port()),
                "http": meta.map(|m| m.http.to_string()),
                "gossip": v.id.addr.to_string(),
                "shards": meta.map(|m| m.shards),
                "vnodes": meta.map(|m| m.vnodes),
                "generation": v.id.generation,
                "up": v.up,
                "state": "joining",
                "status": match (v.up, meta.map(|m| m.status)) {
                    (true, status) => status.map_or("normal", status_name),
                    (false, Some(NodeStatus::Leaving)) => "left",
                    (false, _) => "down",
                },
            }));
        }
    }
    // How this node's own vnodes spread over its cores.
    let own = cluster.own_node();
    let mut per_shard = vec![0usize; own.shards as usize];
    for &t in &own.tokens {
        per_shard[dynacore_proto::ring::shard_for_vnode(t, own.shards) as usize] += 1;
    }
    Ok(Reply::json(
        200,
        &json!({
            "nodes": nodes,
            "replication_factor": cluster.replication_factor,
            "configured_replication_factor": cluster.configured_rf,
            "sloppy_quorum": core.replication().sloppy_quorum,
            "hinted_handoff": core.replication().hinted_handoff,
            "conflicts": if core.replication().siblings { "siblings" } else { "lww" },
            "ring_nodes": ring.node_count(),
            "vnodes": ring.vnodes().len(),
            "vnodes_per_shard": per_shard,
            "ownership_balance": ring.ownership_balance(),
            "replicated_ownership_balance": ring.replicated_balance(usize::from(cluster.replication_factor)),
            "moving": cluster.moving.as_ref().map(|mv| json!({
                "node": mv.node.to_string(),
                "state": mv.state.name(),
                "kind": format!("{:?}", mv.change.kind).to_lowercase(),
                "change": mv.change.id,
                "driver": mv.change.driver,
                "replaces": mv.replaces.map(|r| r.to_string()),
                "gaining": crate::coordinator::moves::gaining_nodes(&cluster)
                    .into_iter()
                    .map(|n| json!({
                        "node": n.to_string(),
                        "streaming": book_entry(core, n)
                            .and_then(|m| m.progress)
                            .filter(|p| p.change == mv.change.id)
                            .map(|p| progress_json(&p)),
                    }))
                    .collect::<Vec<_>>(),
            })),
            "membership": members.map(|m| json!({
                "bad_packets": m.stats.bad_packets,
                "members_up": m.stats.ups,
                "members_down": m.stats.downs,
            })),
        }),
    ))
}

/// `GET /cluster/endpoints/{key}`: where the key lives.
fn endpoints(core: &Core, key: &[u8]) -> Reply {
    let cluster = core.cluster();
    let token = dynacore_proto::ring::Token::of(key);
    let describe = |n: NodeId| {
        let node = cluster.nodes.get(&n);
        json!({
            "id": n.to_string(),
            "name": node.map(|p| p.name.clone()).filter(|s| !s.is_empty()),
            "http": node.map(|p| p.http.to_string()),
            "binary": node.map(|p| p.core_addr(token).to_string()),
            "rack": node.map(|p| p.rack.clone()),
            "up": cluster.is_up(n),
        })
    };
    Reply::json(
        200,
        &json!({
            "key": String::from_utf8_lossy(key),
            "token": token.0,
            "replicas": cluster.replicas(token).into_iter().map(describe).collect::<Vec<_>>(),
            "pending": cluster.pending_replicas(token).into_iter().map(describe).collect::<Vec<_>>(),
        }),
    )
}

/// `POST /admin/decommission`: this node starts leaving (see `coordinator::topology`).
async fn decommission(core: &Core) -> Result<Reply, Reply> {
    crate::coordinator::topology::decommission(core)
        .await
        .map(|change| {
            Reply::json(
                202,
                &json!({
                    "node": core.cluster().own.to_string(),
                    "state": "leaving",
                    "change": change,
                    "message": "streaming this node's ranges to their next owners; it leaves the \
                                ring and stops once they hold them (GET /cluster shows the progress)",
                }),
            )
        })
        .map_err(|e| Reply::error(409, "conflict", &e))
}

/// `POST /admin/cleanup`: this node drops its copies of the ranges it no longer replicates;
/// answers once every core is done, with what each dropped.
async fn cleanup(core: &Core) -> Result<Reply, Reply> {
    let started = Instant::now();
    let done = crate::coordinator::topology::cleanup(core)
        .await
        .map_err(|e| Reply::error(409, "conflict", &e))?;
    let mut cores = Vec::with_capacity(done.cores.len());
    let (mut dropped, mut failed) = (0u64, Vec::new());
    for (i, r) in done.cores.iter().enumerate() {
        match r {
            Ok(s) => {
                dropped += s.keys_dropped;
                cores.push(json!({
                    "core": i,
                    "keys_dropped": s.keys_dropped,
                    "passes": s.passes,
                    "table_bytes_before": s.table_bytes_before,
                    "table_bytes_after": s.table_bytes_after,
                }));
            }
            Err(e) => {
                failed.push(i);
                cores.push(json!({ "core": i, "error": e }));
            }
        }
    }
    let mut body = json!({
        "keys_dropped": dropped,
        "ranges_kept": done.kept_ranges.0,
        "ranges": done.kept_ranges.1,
        "cores": cores,
        "ms": started.elapsed().as_millis(),
    });
    if failed.is_empty() {
        Ok(Reply::json(200, &body))
    } else {
        // A core whose ring changed meanwhile dropped nothing; the others did their part.
        body["error"] = json!("cleanup_incomplete");
        body["message"] = json!(format!(
            "the cleanup did not finish on core(s) {failed:?}: they dropped nothing (the others \
             did); run it again once no topology change is in progress"
        ));
        Err(Reply::json(409, &body))
    }
}

/// `POST /admin/removenode/{id}`: a dead node's ranges are rebuilt on their next owners.
async fn remove_node(core: &Core, id: &str) -> Result<Reply, Reply> {
    let node = u64::from_str_radix(id, 16)
        .ok()
        .filter(|&n| n != 0 && id.len() <= 16)
        .map(NodeId)
        .ok_or_else(|| {
            Reply::error(
                400,
                "bad_request",
                &format!("{id:?} is not a node id (16 hex digits)"),
            )
        })?;
    crate::coordinator::topology::remove_node(core, node)
        .await
        .map(|change| {
            Reply::json(
                202,
                &json!({
                    "node": node.to_string(),
                    "state": "leaving",
                    "change": change,
                    "message": "rebuilding its ranges on their next owners from the surviving \
                                replicas; it leaves the ring for good once they hold them",
                }),
            )
        })
        .map_err(|e| Reply::error(409, "conflict", &e))
}

/// How long an operator's compaction may take on one core before the answer gives up waiting
/// (the compaction itself goes on).
const COMPACT_TIMEOUT: Duration = Duration::from_secs(3600);

/// Flushes and merges every core's tables into one, all cores at once; answers when every core
/// is done, with what each holds afterwards.
async fn compact(core: &Core) -> Result<Reply, Reply> {
    let started = Instant::now();
    let runs: Vec<_> = (0..core.shards())
        .map(|shard| {
            let core = core.clone();
            runtime::spawn(async move {
                core.execute_on(shard, ShardOp::Compact, COMPACT_TIMEOUT)
                    .await
            })
        })
        .collect();
    let mut cores = Vec::with_capacity(runs.len());
    for (i, run) in runs.into_iter().enumerate() {
        match run.await {
            ShardReply::Stats(s) => cores.push(json!({
                "core": i,
                "tables": s.tables,
                "table_bytes": s.table_bytes,
                "compactions": s.compactions,
            })),
            ShardReply::NoStats(e) => return Err(Reply::from_store_error(&e)),
            ShardReply::Object(_)
            | ShardReply::Paxos(_)
            | ShardReply::Tree(_)
            | ShardReply::Cleanup(_)
            | ShardReply::Snapshot(_) => {
                return Err(Reply::error(
                    500,
                    "internal",
                    "a core answered another request",
                ))
            }
        }
    }
    Ok(Reply::json(
        200,
        &json!({ "compacted": cores, "ms": started.elapsed().as_millis() }),
    ))
}

/// How long a snapshot may take (each core flushes its memtables first).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);

/// A snapshot's name: the one given, or the time (UTC, to the millisecond).
fn snapshot_name(given: Option<&str>) -> Result<String, Reply> {
    match given {
        Some(n)
            if !n.is_empty()
                && n.len() <= 64
                && !n.starts_with('.')
                && n
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) =>
        {
            Ok(n.to_owned())
        }
        Some(n) => Err(Reply::error(
            400,
            "bad_request",
            &format!(
                "a snapshot name is 1 to 64 letters, digits, '.', '_' or '-', not starting with                  '.', not {n:?}"
            ),
        )),
        None => Ok(format!("snapshot-{}", crate::storage::hints::now_ms())),
    }
}

/// Every core's tables and blob files hard-linked under `<data_dir>/snapshots/<name>/shard-<i>/`
/// (after a flush), with the node's identity and ring beside them: a directory a node can be
/// restored from (copied as its data directory). Answered once done.
async fn snapshot(core: &Core, name: Option<&str>) -> Result<Reply, Reply> {
    let started = Instant::now();
    let name = snapshot_name(name)?;
    let Some(data_dir) = core.shared().data_dir().map(Path::to_path_buf) else {
        return Err(Reply::error(503, "unavailable", "the node is starting"));
    };
    let root = data_dir.join("snapshots").join(&name);
    if root.exists() {
        return Err(Reply::error(
            409,
            "conflict",
            &format!("a snapshot named {name:?} exists"),
        ));
    }
    let internal = |what: &str, e: &dyn std::fmt::Display| {
        Reply::error(500, "internal", &format!("{what}: {e}"))
    };
    std::fs::create_dir_all(&root)
        .map_err(|e| internal("creating the snapshot's directory", &e))?;
    // The node's identity, ring and cluster secret: the restored node is this node.
    for file in ["NODE", "RING", "cluster.secret"] {
        let from = data_dir.join(file);
        if from.exists() {
            std::fs::copy(&from, root.join(file))
                .map_err(|e| internal(&format!("copying {file}"), &e))?;
        }
    }
    let runs: Vec<_> = (0..core.shards())
        .map(|shard| {
            let core = core.clone();
            let into = root.join(format!("shard-{shard}"));
            runtime::spawn(async move {
                core.execute_on(shard, ShardOp::Snapshot(into), SNAPSHOT_TIMEOUT)
                    .await
            })
        })
        .collect();
    let mut shards = Vec::with_capacity(runs.len());
    for (i, run) in runs.into_iter().enumerate() {
        match run.await {
            ShardReply::Snapshot(Ok(f)) => shards.push(json!({
                "shard": i,
                "tables": f.tables,
                "blob_files": f.blob_files,
                "bytes": f.bytes,
            })),
            ShardReply::Snapshot(Err(e)) => return Err(Reply::from_store_error(&e)),
            _ => {
                return Err(Reply::error(
                    500,
                    "internal",
                    "a core answered another request",
                ))
            }
        }
    }
    let path = root.canonicalize().unwrap_or(root);
    Ok(Reply::json(
        200,
        &json!({
            "snapshot": name,
            "path": path.display().to_string(),
            "shards": shards,
            "ms": started.elapsed().as_millis(),
        }),
    ))
}

/// A full repair of every range the node holds; answers with what it did once done.
async fn repair(core: &Core) -> Result<Reply, Reply> {
    let started = Instant::now();
    let r = crate::coordinator::repair_all(core).await;
    Ok(Reply::json(
        200,
        &json!({
            "ranges": r.ranges,
            "ranges_repaired": r.ranges_repaired,
            "ranges_failed": r.ranges_failed,
            "exchanges": {
                "in_sync": r.exchanges[0],
                "repaired": r.exchanges[1],
                "not_ready": r.exchanges[2],
                "failed": r.exchanges[3],
            },
            "keys_compared": r.counts.compared,
            "keys_divergent": r.counts.divergent,
            "keys_repaired": r.counts.repaired,
            "keys_pulled": r.counts.pulled,
            "keys_pushed": r.counts.pushed,
            "bytes": r.counts.bytes,
            "errors": r.errors,
            "ms": started.elapsed().as_millis(),
        }),
    ))
}

/// Every core's hash tree compared with a full scan of its shard, all cores at once.
async fn verify_trees(core: &Core) -> Result<Reply, Reply> {
    let started = Instant::now();
    let runs: Vec<_> = (0..core.shards())
        .map(|shard| {
            let core = core.clone();
            runtime::spawn(async move {
                core.execute_on(shard, ShardOp::VerifyTree, COMPACT_TIMEOUT)
                    .await
                    .into_tree()
            })
        })
        .collect();
    let mut cores = Vec::with_capacity(runs.len());
    for (i, run) in runs.into_iter().enumerate() {
        match run.await {
            Ok(crate::core::TreeAnswer::Check(Some(c))) => cores.push(json!({
                "core": i,
                "keys": c.keys,
                "differing_leaves": c.differing_leaves,
                "ms": c.duration.as_millis(),
            })),
            Ok(crate::core::TreeAnswer::Check(None)) => {
                cores.push(json!({ "core": i, "ready": false }));
            }
            Ok(_) => {
                return Err(Reply::error(
                    500,
                    "internal",
                    "a core answered another request",
                ))
            }
            Err(e) => return Err(Reply::from_store_error(&e)),
        }
    }
    Ok(Reply::json(
        200,
        &json!({ "cores": cores, "ms": started.elapsed().as_millis() }),
    ))
}

/// When each range the node holds was last fully repaired.
fn repair_status(core: &Core) -> Reply {
    let now = crate::storage::hints::now_ms();
    let ranges: Vec<_> = crate::coordinator::repair_status(core)
        .into_iter()
        .map(|(job, at)| {
            json!({
                "range": [job.id.0.to_string(), job.id.1.to_string()],
                "replicas": job.replicas.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "core": job.shard,
                "repaired_at_ms": at,
                "age_s": at.map(|at| now.saturating_sub(at) / 1000),
            })
        })
        .collect();
    let never = ranges
        .iter()
        .filter(|r| r["repaired_at_ms"].is_null())
        .count();
    Reply::json(200, &json!({ "ranges": ranges, "never_repaired": never }))
}

async fn metrics_text(core: &Core) -> Result<Reply, Reply> {
    let mut stats = Vec::with_capacity(core.shards() as usize);
    for shard in 0..core.shards() {
        stats.push(
            match core
                .execute_on(shard, ShardOp::Stats, Duration::from_secs(2))
                .await
            {
                ShardReply::Stats(s) => Some(*s),
                _ => None,
            },
        );
    }
    let mut text = metrics::render(core.shared().metrics(), &stats, core.shared().uptime());
    // The age of each held range's last full repair, summarised.
    let now = crate::storage::hints::now_ms();
    let mut ages: Vec<u64> = Vec::new();
    let mut never = 0u64;
    for (_, at) in crate::coordinator::repair_status(core) {
        match at {
            Some(at) => ages.push(now.saturating_sub(at) / 1000),
            None => never += 1,
        }
    }
    metrics::render_repair_ages(&mut text, &mut ages, never);
    Ok(Reply {
        status: 200,
        content_type: "text/plain; version=0.0.4",
        version: None,
        body: text.into_bytes(),
    })
}
