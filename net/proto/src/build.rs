//! Builders of request bodies (unframed): what the client SDK sends, and what tests send.

use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};

use super::fb;

fn request(
    id: u64,
    timeout_ms: u32,
    build: impl FnOnce(&mut FlatBufferBuilder<'static>) -> (fb::Op, WIPOffset<UnionWIPOffset>),
) -> Vec<u8> {
    request_with(id, timeout_ms, false, build)
}

fn request_with(
    id: u64,
    timeout_ms: u32,
    forwarded: bool,
    build: impl FnOnce(&mut FlatBufferBuilder<'static>) -> (fb::Op, WIPOffset<UnionWIPOffset>),
) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let (op_type, op) = build(&mut b);
    let protocol = crate::version::own();
    let req = fb::Request::create(
        &mut b,
        &fb::RequestArgs {
            id,
            timeout_ms,
            op_type,
            op: Some(op),
            forwarded,
            protocol: protocol.version,
            protocol_min: protocol.min,
        },
    );
    b.finish(req, None);
    b.finished_data().to_vec()
}

/// A put's fields.
#[derive(Clone, Copy, Debug, Default)]
pub struct Put<'a> {
    /// The key.
    pub key: &'a [u8],
    /// The value.
    pub value: &'a [u8],
    /// Expiry in milliseconds from now (0: none).
    pub ttl_ms: u64,
    /// Write only if this is still the current version.
    pub expected_version: Option<&'a [u8]>,
    /// How many replicas must acknowledge.
    pub w: Option<fb::Quorum>,
    /// How long the client waits, in ms (0: the server's default).
    pub timeout_ms: u32,
    /// The causal context the write builds on (absent: a blind write).
    pub context: Option<&'a [u8]>,
    /// Passed on by a node to a replica, which must coordinate it.
    pub forwarded: bool,
    /// Write only if the key holds no live value, or only if it does.
    pub condition: fb::KeyCondition,
}

/// A `Put` request.
#[must_use]
pub fn put(id: u64, p: &Put<'_>) -> Vec<u8> {
    request_with(id, p.timeout_ms, p.forwarded, |b| {
        let key = b.create_vector(p.key);
        let value = b.create_vector(p.value);
        let expected_version = p.expected_version.map(|e| b.create_vector(e));
        let context = p.context.map(|c| b.create_vector(c));
        let put = fb::PutRequest::create(
            b,
            &fb::PutRequestArgs {
                key: Some(key),
                value: Some(value),
                // Both fields: peers that predate `ttl_ms` read the seconds, rounded up.
                ttl_seconds: p.ttl_ms.div_ceil(1000),
                ttl_ms: p.ttl_ms,
                expected_version,
                w: p.w.as_ref(),
                context,
                condition: p.condition,
            },
        );
        (fb::Op::Put, put.as_union_value())
    })
}

/// A `Get` request.
#[must_use]
pub fn get(id: u64, key: &[u8], r: Option<fb::Quorum>, read_repair: fb::ReadRepair) -> Vec<u8> {
    get_timed(id, 0, key, r, read_repair)
}

/// A `Get` request the server gives up on after `timeout_ms` (0: its default).
#[must_use]
pub fn get_timed(
    id: u64,
    timeout_ms: u32,
    key: &[u8],
    r: Option<fb::Quorum>,
    read_repair: fb::ReadRepair,
) -> Vec<u8> {
    get_with(
        id,
        &Get {
            key,
            r,
            read_repair,
            conflicts: fb::Conflicts::Default,
            timeout_ms,
        },
    )
}

/// A get's fields.
#[derive(Clone, Copy, Debug)]
pub struct Get<'a> {
    /// The key.
    pub key: &'a [u8],
    /// How many replicas must answer.
    pub r: Option<fb::Quorum>,
    /// Whether stale replicas are repaired, and when.
    pub read_repair: fb::ReadRepair,
    /// One value (last writer wins) or every concurrent one.
    pub conflicts: fb::Conflicts,
    /// How long the client waits, in ms (0: the server's default).
    pub timeout_ms: u32,
}

/// A `Get` request with every field.
#[must_use]
pub fn get_with(id: u64, g: &Get<'_>) -> Vec<u8> {
    request(id, g.timeout_ms, |b| {
        let key = b.create_vector(g.key);
        let get = fb::GetRequest::create(
            b,
            &fb::GetRequestArgs {
                key: Some(key),
                r: g.r.as_ref(),
                read_repair: g.read_repair,
                conflicts: g.conflicts,
            },
        );
        (fb::Op::Get, get.as_union_value())
    })
}

/// A `Delete` request.
#[must_use]
pub fn delete(id: u64, key: &[u8], expected: Option<&[u8]>, w: Option<fb::Quorum>) -> Vec<u8> {
    delete_timed(id, 0, key, expected, w)
}

/// A `Delete` request the server gives up on after `timeout_ms` (0: its default).
#[must_use]
pub fn delete_timed(
    id: u64,
    timeout_ms: u32,
    key: &[u8],
    expected: Option<&[u8]>,
    w: Option<fb::Quorum>,
) -> Vec<u8> {
    delete_with(
        id,
        &Delete {
            key,
            expected_version: expected,
            w,
            timeout_ms,
            ..Delete::default()
        },
    )
}

/// A delete's fields.
#[derive(Clone, Copy, Debug, Default)]
pub struct Delete<'a> {
    /// The key.
    pub key: &'a [u8],
    /// Delete only if this is still the current version.
    pub expected_version: Option<&'a [u8]>,
    /// How many replicas must acknowledge.
    pub w: Option<fb::Quorum>,
    /// How long the client waits, in ms (0: the server's default).
    pub timeout_ms: u32,
    /// The causal context the delete builds on (absent: a blind delete).
    pub context: Option<&'a [u8]>,
    /// Passed on by a node to a replica, which must coordinate it.
    pub forwarded: bool,
}

/// A `Delete` request with every field.
#[must_use]
pub fn delete_with(id: u64, d: &Delete<'_>) -> Vec<u8> {
    request_with(id, d.timeout_ms, d.forwarded, |b| {
        let key = b.create_vector(d.key);
        let expected_version = d.expected_version.map(|e| b.create_vector(e));
        let context = d.context.map(|c| b.create_vector(c));
        let del = fb::DeleteRequest::create(
            b,
            &fb::DeleteRequestArgs {
                key: Some(key),
                expected_version,
                w: d.w.as_ref(),
                context,
            },
        );
        (fb::Op::Delete, del.as_union_value())
    })
}

/// A `Ping` request.
#[must_use]
pub fn ping(id: u64, payload: u64) -> Vec<u8> {
    request(id, 0, |b| {
        let p = fb::PingRequest::create(b, &fb::PingRequestArgs { payload });
        (fb::Op::Ping, p.as_union_value())
    })
}

/// A `Topology` request.
#[must_use]
pub fn topology(id: u64) -> Vec<u8> {
    request(id, 0, |b| {
        let t = fb::TopologyRequest::create(b, &fb::TopologyRequestArgs {});
        (fb::Op::Topology, t.as_union_value())
    })
}

/// A `ReplicaRead` request (node to node).
#[must_use]
pub fn replica_read(id: u64, timeout_ms: u32, key: &[u8]) -> Vec<u8> {
    request(id, timeout_ms, |b| {
        let key = b.create_vector(key);
        let r = fb::ReplicaReadRequest::create(b, &fb::ReplicaReadRequestArgs { key: Some(key) });
        (fb::Op::ReplicaRead, r.as_union_value())
    })
}

fn token_ranges<'a>(
    b: &mut FlatBufferBuilder<'a>,
    ranges: &[(u64, u64)],
) -> WIPOffset<flatbuffers::Vector<'a, fb::TokenRange>> {
    let items: Vec<fb::TokenRange> = ranges
        .iter()
        .map(|&(start, end)| fb::TokenRange::new(start, end))
        .collect();
    b.create_vector(&items)
}

/// A `TreeHashes` request (node to node): the hash of the receiver's keys in each token range
/// `start..=end`.
#[must_use]
pub fn tree_hashes(id: u64, timeout_ms: u32, ranges: &[(u64, u64)]) -> Vec<u8> {
    request(id, timeout_ms, |b| {
        let ranges = token_ranges(b, ranges);
        let r = fb::TreeHashesRequest::create(
            b,
            &fb::TreeHashesRequestArgs {
                ranges: Some(ranges),
            },
        );
        (fb::Op::TreeHashes, r.as_union_value())
    })
}

/// A `TreeKeys` request (node to node): the receiver's keys in the token ranges with their
/// states, at most `max`.
#[must_use]
pub fn tree_keys(id: u64, timeout_ms: u32, ranges: &[(u64, u64)], max: u32) -> Vec<u8> {
    request(id, timeout_ms, |b| {
        let ranges = token_ranges(b, ranges);
        let r = fb::TreeKeysRequest::create(
            b,
            &fb::TreeKeysRequestArgs {
                ranges: Some(ranges),
                max,
            },
        );
        (fb::Op::TreeKeys, r.as_union_value())
    })
}

/// A `Repaired` request (node to node): a full repair of `range` among `replicas` completed,
/// covering everything they held at `repaired_at_ms`.
#[must_use]
pub fn repaired(
    id: u64,
    timeout_ms: u32,
    range: (u64, u64),
    replicas: &[u64],
    repaired_at_ms: u64,
) -> Vec<u8> {
    request(id, timeout_ms, |b| {
        let replicas = b.create_vector(replicas);
        let r = fb::RepairedRequest::create(
            b,
            &fb::RepairedRequestArgs {
                range: Some(&fb::TokenRange::new(range.0, range.1)),
                replicas: Some(replicas),
                repaired_at_ms,
            },
        );
        (fb::Op::Repaired, r.as_union_value())
    })
}

/// A `ReplicaApply` request (node to node) carrying an object's parts.
#[must_use]
pub fn replica_apply(
    id: u64,
    timeout_ms: u32,
    key: &[u8],
    version: &[u8],
    values: &[u8],
) -> Vec<u8> {
    replica_apply_with(
        id,
        &ReplicaApply {
            key,
            version,
            values,
            expected_version: None,
            hint_for: 0,
            timeout_ms,
        },
    )
}

/// A replica apply's fields.
#[derive(Clone, Copy, Debug)]
pub struct ReplicaApply<'a> {
    /// The key.
    pub key: &'a [u8],
    /// The object's version part.
    pub version: &'a [u8],
    /// The object's values part.
    pub values: &'a [u8],
    /// Apply only if the replica holds nothing this version does not.
    pub expected_version: Option<&'a [u8]>,
    /// Not 0: store it as a hint for this node.
    pub hint_for: u64,
    /// How long the sender waits, in ms.
    pub timeout_ms: u32,
}

/// A `ReplicaApply` request with every field.
#[must_use]
pub fn replica_apply_with(id: u64, a: &ReplicaApply<'_>) -> Vec<u8> {
    request(id, a.timeout_ms, |b| {
        let key = b.create_vector(a.key);
        let version = b.create_vector(a.version);
        let values = b.create_vector(a.values);
        let expected_version = a.expected_version.map(|e| b.create_vector(e));
        let r = fb::ReplicaApplyRequest::create(
            b,
            &fb::ReplicaApplyRequestArgs {
                key: Some(key),
                version: Some(version),
                values: Some(values),
                expected_version,
                hint_for: a.hint_for,
            },
        );
        (fb::Op::ReplicaApply, r.as_union_value())
    })
}

/// A Paxos `Prepare` for `key` at `ballot` (node to node).
#[must_use]
pub fn paxos_prepare(
    id: u64,
    timeout_ms: u32,
    key: &[u8],
    ballot: crate::reply::Ballot,
) -> Vec<u8> {
    let ballot = ballot.to_wire();
    request(id, timeout_ms, |b| {
        let key = b.create_vector(key);
        let r = fb::PaxosPrepareRequest::create(
            b,
            &fb::PaxosPrepareRequestArgs {
                key: Some(key),
                ballot: Some(&ballot),
            },
        );
        (fb::Op::PaxosPrepare, r.as_union_value())
    })
}

/// A Paxos `Propose` (`commit` false) or `Commit` (true) of an object's parts for `key` at
/// `ballot` (node to node).
#[must_use]
pub fn paxos_proposal(
    id: u64,
    timeout_ms: u32,
    commit: bool,
    key: &[u8],
    ballot: crate::reply::Ballot,
    (version, values): (&[u8], &[u8]),
) -> Vec<u8> {
    let ballot = ballot.to_wire();
    request(id, timeout_ms, |b| {
        let key = b.create_vector(key);
        let version = b.create_vector(version);
        let values = b.create_vector(values);
        if commit {
            let r = fb::PaxosCommitRequest::create(
                b,
                &fb::PaxosCommitRequestArgs {
                    key: Some(key),
                    ballot: Some(&ballot),
                    version: Some(version),
                    values: Some(values),
                },
            );
            (fb::Op::PaxosCommit, r.as_union_value())
        } else {
            let r = fb::PaxosProposeRequest::create(
                b,
                &fb::PaxosProposeRequestArgs {
                    key: Some(key),
                    ballot: Some(&ballot),
                    version: Some(version),
                    values: Some(values),
                },
            );
            (fb::Op::PaxosPropose, r.as_union_value())
        }
    })
}

/// A `RingSync` request (node to node): the sender's ring book, encoded.
#[must_use]
pub fn ring_sync(id: u64, timeout_ms: u32, book: &[u8]) -> Vec<u8> {
    request(id, timeout_ms, |b| {
        let book = b.create_vector(book);
        let r = fb::RingSyncRequest::create(b, &fb::RingSyncRequestArgs { book: Some(book) });
        (fb::Op::RingSync, r.as_union_value())
    })
}

/// A `StreamRange` request (node to node): the receiver's copies of the keys of `range`
/// (`start..=end`) past `after_key`, at most `max_keys` keys and about `max_bytes` bytes.
#[must_use]
pub fn stream_range(
    id: u64,
    timeout_ms: u32,
    range: (u64, u64),
    after_key: &[u8],
    max_keys: u32,
    max_bytes: u32,
) -> Vec<u8> {
    stream_range_for(
        id,
        timeout_ms,
        range,
        after_key,
        (max_keys, max_bytes),
        false,
    )
}

/// A `StreamRange` request, for a client's key scan when `scan` (see the schema).
#[must_use]
pub fn stream_range_for(
    id: u64,
    timeout_ms: u32,
    range: (u64, u64),
    after_key: &[u8],
    (max_keys, max_bytes): (u32, u32),
    scan: bool,
) -> Vec<u8> {
    request(id, timeout_ms, |b| {
        let after_key = (!after_key.is_empty()).then(|| b.create_vector(after_key));
        let r = fb::StreamRangeRequest::create(
            b,
            &fb::StreamRangeRequestArgs {
                range: Some(&fb::TokenRange::new(range.0, range.1)),
                after_key,
                max_keys,
                max_bytes,
                scan,
            },
        );
        (fb::Op::StreamRange, r.as_union_value())
    })
}
