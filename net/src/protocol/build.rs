//! Builders of request bodies (unframed): what the client SDK sends, and what tests send.

use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};

use super::fb;

fn request(
    id: u64,
    timeout_ms: u32,
    build: impl FnOnce(&mut FlatBufferBuilder<'static>) -> (fb::Op, WIPOffset<UnionWIPOffset>),
) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let (op_type, op) = build(&mut b);
    let req = fb::Request::create(
        &mut b,
        &fb::RequestArgs {
            id,
            timeout_ms,
            op_type,
            op: Some(op),
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
    /// Expiry in seconds from now (0: none).
    pub ttl_seconds: u64,
    /// Write only if this is still the current version.
    pub expected_version: Option<&'a [u8]>,
    /// How many replicas must acknowledge.
    pub w: Option<fb::Quorum>,
    /// How long the client waits, in ms (0: the server's default).
    pub timeout_ms: u32,
}

/// A `Put` request.
#[must_use]
pub fn put(id: u64, p: &Put<'_>) -> Vec<u8> {
    request(id, p.timeout_ms, |b| {
        let key = b.create_vector(p.key);
        let value = b.create_vector(p.value);
        let expected_version = p.expected_version.map(|e| b.create_vector(e));
        let put = fb::PutRequest::create(
            b,
            &fb::PutRequestArgs {
                key: Some(key),
                value: Some(value),
                ttl_seconds: p.ttl_seconds,
                expected_version,
                w: p.w.as_ref(),
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
    request(id, timeout_ms, |b| {
        let key = b.create_vector(key);
        let get = fb::GetRequest::create(
            b,
            &fb::GetRequestArgs {
                key: Some(key),
                r: r.as_ref(),
                read_repair,
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
    request(id, timeout_ms, |b| {
        let key = b.create_vector(key);
        let expected_version = expected.map(|e| b.create_vector(e));
        let del = fb::DeleteRequest::create(
            b,
            &fb::DeleteRequestArgs {
                key: Some(key),
                expected_version,
                w: w.as_ref(),
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

/// A `ReplicaApply` request (node to node) carrying an object's parts.
#[must_use]
pub fn replica_apply(
    id: u64,
    timeout_ms: u32,
    key: &[u8],
    version: &[u8],
    values: &[u8],
) -> Vec<u8> {
    request(id, timeout_ms, |b| {
        let key = b.create_vector(key);
        let version = b.create_vector(version);
        let values = b.create_vector(values);
        let r = fb::ReplicaApplyRequest::create(
            b,
            &fb::ReplicaApplyRequestArgs {
                key: Some(key),
                version: Some(version),
                values: Some(values),
            },
        );
        (fb::Op::ReplicaApply, r.as_union_value())
    })
}
