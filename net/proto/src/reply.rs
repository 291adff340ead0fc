//! Answers: built by a node, decoded by whoever asked (the client SDK, or a coordinator asking a
//! replica). One decoder per reply kind, so the SDK and the node read answers alike.
//!
//! Every decoder verifies the body first ([`parse_response`]) and refuses an answer of another
//! kind than the request's; a server's error answer is a [`ServerError`].

use flatbuffers::FlatBufferBuilder;

use crate::api::ErrorCode;
use crate::fb;
use crate::frame::parse_response;
use crate::topology::ClusterView;

/// A server's error answer, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerError {
    /// What kind.
    pub code: ErrorCode,
    /// The server's explanation.
    pub message: String,
    /// Replicas that acknowledged (for [`ErrorCode::Unavailable`]).
    pub acks: u8,
    /// Replicas that were required (0 when the error is not about a quorum).
    pub required: u8,
    /// For [`ErrorCode::ConditionFailed`]: the current version, when the server sent it.
    pub current_version: Option<Vec<u8>>,
}

impl ServerError {
    fn from_wire(e: &fb::ErrorResponse<'_>) -> ServerError {
        ServerError {
            code: e.code().into(),
            message: e.message().unwrap_or_default().to_owned(),
            acks: e.acks(),
            required: e.required(),
            current_version: e.current_version().map(|v| v.bytes().to_vec()),
        }
    }
}

/// Why an answer could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyError {
    /// The server answered with an error.
    Server(ServerError),
    /// The body is not a valid answer, or answers another kind of request.
    Malformed(String),
}

impl std::fmt::Display for ReplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplyError::Server(e) => write!(f, "{:?}: {}", e.code, e.message),
            ReplyError::Malformed(m) => write!(f, "malformed answer: {m}"),
        }
    }
}

impl std::error::Error for ReplyError {}

/// The verified response, or its error answer as [`ReplyError::Server`].
fn open(body: &[u8]) -> Result<fb::Response<'_>, ReplyError> {
    let resp = parse_response(body).map_err(|e| ReplyError::Malformed(e.to_string()))?;
    match resp.reply_as_error() {
        Some(e) => Err(ReplyError::Server(ServerError::from_wire(&e))),
        None => Ok(resp),
    }
}

fn other_reply(request: &str) -> ReplyError {
    ReplyError::Malformed(format!("a {request} answered with another reply"))
}

fn bytes(v: Option<flatbuffers::Vector<'_, u8>>) -> Vec<u8> {
    v.map(|v| v.bytes().to_vec()).unwrap_or_default()
}

/// A `Get` answer: `None` when the key is absent, deleted or expired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The newest live value.
    pub value: Vec<u8>,
    /// The merged version.
    pub version: Vec<u8>,
    /// In siblings mode, every live value with its write time (ms since the Unix epoch), newest
    /// first; empty otherwise.
    pub siblings: Vec<(Vec<u8>, u64)>,
    /// When the newest live value expires (ms since the Unix epoch), if it does.
    pub expiry_ms: Option<u64>,
}

/// Decodes a `Get` answer.
///
/// # Errors
/// [`ReplyError`].
pub fn get(body: &[u8]) -> Result<Option<Found>, ReplyError> {
    let resp = open(body)?;
    let get = resp.reply_as_get().ok_or_else(|| other_reply("get"))?;
    if !get.found() {
        return Ok(None);
    }
    Ok(Some(Found {
        value: bytes(get.value()),
        version: bytes(get.version()),
        siblings: get
            .siblings()
            .iter()
            .flatten()
            .map(|s| (s.value().bytes().to_vec(), s.written_ms()))
            .collect(),
        expiry_ms: Some(get.expiry_ms()).filter(|&e| e > 0),
    }))
}

/// Decodes a `Put` or `Delete` answer: the new version.
///
/// # Errors
/// [`ReplyError`].
pub fn written(body: &[u8]) -> Result<Vec<u8>, ReplyError> {
    let resp = open(body)?;
    let version = resp
        .reply_as_put()
        .map(|p| p.version())
        .or_else(|| resp.reply_as_delete().map(|d| d.version()))
        .ok_or_else(|| other_reply("write"))?;
    Ok(bytes(version))
}

/// Decodes a `Ping` answer: its payload.
///
/// # Errors
/// [`ReplyError`].
pub fn ping(body: &[u8]) -> Result<u64, ReplyError> {
    let resp = open(body)?;
    resp.reply_as_ping()
        .map(|p| p.payload())
        .ok_or_else(|| other_reply("ping"))
}

/// Decodes a `Topology` answer.
///
/// # Errors
/// [`ReplyError`], also when its vnodes do not make a ring.
pub fn topology(body: &[u8]) -> Result<ClusterView, ReplyError> {
    let resp = open(body)?;
    let t = resp
        .reply_as_topology()
        .ok_or_else(|| other_reply("topology request"))?;
    ClusterView::from_wire(&t).map_err(|e| ReplyError::Malformed(e.to_string()))
}

/// A replica's copy of a key, in its two encoded parts (the version blob and the values), as a
/// `ReplicaRead` answers; `None` when it holds nothing for the key.
pub type ObjectParts = (Vec<u8>, Vec<u8>);

/// Decodes a `ReplicaRead` answer.
///
/// # Errors
/// [`ReplyError`].
pub fn replica_object(body: &[u8]) -> Result<Option<ObjectParts>, ReplyError> {
    let resp = open(body)?;
    let r = resp
        .reply_as_replica_object()
        .ok_or_else(|| other_reply("replica read"))?;
    Ok(r.found().then(|| (bytes(r.version()), bytes(r.values()))))
}

/// Decodes a `ReplicaApply` answer: `Ok` when the replica stored the copy.
///
/// # Errors
/// [`ReplyError`].
pub fn replica_applied(body: &[u8]) -> Result<(), ReplyError> {
    let resp = open(body)?;
    match resp.reply_as_replica_object() {
        Some(r) if r.found() => Ok(()),
        _ => Err(other_reply("replica apply")),
    }
}

/// A Paxos ballot: ordered by time, then by the proposer's node id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ballot {
    /// A hybrid-logical-clock time.
    pub time: u64,
    /// The proposer's node id.
    pub node: u64,
}

impl Ballot {
    /// Its wire form.
    #[must_use]
    pub fn to_wire(self) -> fb::Ballot {
        fb::Ballot::new(self.time, self.node)
    }

    /// From its wire form.
    #[must_use]
    pub fn from_wire(b: &fb::Ballot) -> Ballot {
        Ballot {
            time: b.time(),
            node: b.node(),
        }
    }
}

/// A replica's answer to a Paxos prepare, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promise {
    /// Whether it promised the ballot.
    pub promised: bool,
    /// When it did not: the higher ballot it promised.
    pub higher: Option<Ballot>,
    /// A proposal it accepted and has not seen committed: its ballot and object parts.
    pub accepted: Option<(Ballot, ObjectParts)>,
    /// The ballot of the last commit it saw.
    pub committed: Option<Ballot>,
    /// Its copy of the key.
    pub copy: Option<ObjectParts>,
}

/// Decodes a Paxos prepare's answer.
///
/// # Errors
/// [`ReplyError`].
pub fn paxos_promise(body: &[u8]) -> Result<Promise, ReplyError> {
    let resp = open(body)?;
    let r = resp
        .reply_as_paxos_promise()
        .ok_or_else(|| other_reply("paxos prepare"))?;
    Ok(Promise {
        promised: r.promised(),
        higher: (!r.promised())
            .then(|| r.ballot().map(Ballot::from_wire))
            .flatten(),
        accepted: r.accepted_ballot().map(|b| {
            (
                Ballot::from_wire(b),
                (bytes(r.accepted_version()), bytes(r.accepted_values())),
            )
        }),
        committed: r.committed_ballot().map(Ballot::from_wire),
        copy: r.found().then(|| (bytes(r.version()), bytes(r.values()))),
    })
}

/// Decodes a Paxos proposal's answer: `Ok(None)` when accepted, `Ok(Some(b))` when refused for
/// the higher promised ballot `b`.
///
/// # Errors
/// [`ReplyError`].
pub fn paxos_accepted(body: &[u8]) -> Result<Option<Ballot>, ReplyError> {
    let resp = open(body)?;
    let r = resp
        .reply_as_paxos_accept()
        .ok_or_else(|| other_reply("paxos propose"))?;
    if r.accepted() {
        Ok(None)
    } else {
        Ok(Some(r.ballot().map_or(
            Ballot {
                time: u64::MAX,
                node: u64::MAX,
            },
            Ballot::from_wire,
        )))
    }
}

// ---- Building answers (the node's side) ----

/// An error answer to request `id` (`current`: the current version of a failed condition;
/// `acks`/`required`: a quorum's counts, 0 when not about a quorum).
#[must_use]
pub fn error(
    id: u64,
    code: fb::ErrorCode,
    message: &str,
    current: Option<&[u8]>,
    (acks, required): (u8, u8),
) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let message = b.create_string(message);
    let current_version = current.map(|c| b.create_vector(c));
    let err = fb::ErrorResponse::create(
        &mut b,
        &fb::ErrorResponseArgs {
            code,
            message: Some(message),
            current_version,
            acks,
            required,
        },
    );
    finish(b, id, fb::Reply::Error, err.as_union_value())
}

/// Finishes a response whose reply `builder` holds.
#[must_use]
pub fn finish(
    mut b: FlatBufferBuilder<'_>,
    id: u64,
    reply_type: fb::Reply,
    reply: flatbuffers::WIPOffset<flatbuffers::UnionWIPOffset>,
) -> Vec<u8> {
    let resp = fb::Response::create(
        &mut b,
        &fb::ResponseArgs {
            id,
            reply_type,
            reply: Some(reply),
        },
    );
    b.finish(resp, None);
    b.finished_data().to_vec()
}

/// A `Get` answer: `found` is `None` for an absent key; with `siblings`, every value is listed.
#[must_use]
pub fn get_answer(id: u64, found: Option<&Found>, siblings: bool) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let (value, version, list) = match found {
        Some(f) => {
            let list = siblings.then(|| {
                let items: Vec<_> = f
                    .siblings
                    .iter()
                    .map(|(v, written_ms)| {
                        let value = b.create_vector(v);
                        fb::SiblingValue::create(
                            &mut b,
                            &fb::SiblingValueArgs {
                                value: Some(value),
                                written_ms: *written_ms,
                            },
                        )
                    })
                    .collect();
                b.create_vector(&items)
            });
            (
                Some(b.create_vector(&f.value)),
                Some(b.create_vector(&f.version)),
                list,
            )
        }
        None => (None, None, None),
    };
    let get = fb::GetResponse::create(
        &mut b,
        &fb::GetResponseArgs {
            found: found.is_some(),
            value,
            version,
            siblings: list,
            expiry_ms: found.and_then(|f| f.expiry_ms).unwrap_or(0),
        },
    );
    finish(b, id, fb::Reply::Get, get.as_union_value())
}

/// A `Put` (`kind` [`fb::Reply::Put`]) or `Delete` answer with the new version.
#[must_use]
pub fn written_answer(id: u64, kind: fb::Reply, version: &[u8]) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let version = Some(b.create_vector(version));
    let reply = if kind == fb::Reply::Put {
        fb::PutResponse::create(&mut b, &fb::PutResponseArgs { version }).as_union_value()
    } else {
        fb::DeleteResponse::create(&mut b, &fb::DeleteResponseArgs { version }).as_union_value()
    };
    finish(b, id, kind, reply)
}

/// A replica's copy in parts (`None`: it holds nothing), or just its version part for an apply.
#[must_use]
pub fn replica_object_answer(id: u64, parts: Option<(&[u8], Option<&[u8]>)>) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let (version, values) = match parts {
        Some((version, values)) => (
            Some(b.create_vector(version)),
            values.map(|v| b.create_vector(v)),
        ),
        None => (None, None),
    };
    let r = fb::ReplicaObjectResponse::create(
        &mut b,
        &fb::ReplicaObjectResponseArgs {
            found: parts.is_some(),
            version,
            values,
        },
    );
    finish(b, id, fb::Reply::ReplicaObject, r.as_union_value())
}

/// One key's state as anti-entropy compares it (the wire form of the engine's `KeyState`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyStateWire {
    /// The key.
    pub key: Vec<u8>,
    /// The canonical version blob.
    pub version: Vec<u8>,
    /// Its contribution to the tree.
    pub hash: u64,
    /// When it became a purgeable deletion (ms since the epoch).
    pub deleted_at_ms: Option<u64>,
}

/// Decodes a `TreeHashes` answer: one hash per range asked and the replica's oldest queued
/// hint (ms since the epoch, 0: none); `None` when its tree is not ready.
///
/// # Errors
/// [`ReplyError`].
pub fn tree_hashes(body: &[u8]) -> Result<Option<(Vec<u64>, u64)>, ReplyError> {
    let resp = open(body)?;
    let r = resp
        .reply_as_tree_hashes()
        .ok_or_else(|| other_reply("tree hashes request"))?;
    if !r.ready() {
        return Ok(None);
    }
    let hashes = r.hashes().map(|h| h.iter().collect()).unwrap_or_default();
    Ok(Some((hashes, r.oldest_hint_ms())))
}

/// Decodes a `TreeKeys` answer: the keys, and whether the bound cut it short; `None` when the
/// replica's tree is not ready.
///
/// # Errors
/// [`ReplyError`].
pub fn tree_keys(body: &[u8]) -> Result<Option<(Vec<KeyStateWire>, bool)>, ReplyError> {
    let resp = open(body)?;
    let r = resp
        .reply_as_tree_keys()
        .ok_or_else(|| other_reply("tree keys request"))?;
    if !r.ready() {
        return Ok(None);
    }
    let keys = r
        .keys()
        .iter()
        .flatten()
        .map(|k| KeyStateWire {
            key: k.key().bytes().to_vec(),
            version: bytes(k.version()),
            hash: k.hash(),
            deleted_at_ms: (k.deleted_at_ms() != 0).then_some(k.deleted_at_ms()),
        })
        .collect();
    Ok(Some((keys, r.more())))
}

/// Decodes a `Repaired` answer.
///
/// # Errors
/// [`ReplyError`].
pub fn repaired(body: &[u8]) -> Result<(), ReplyError> {
    let resp = open(body)?;
    resp.reply_as_repaired()
        .map(drop)
        .ok_or_else(|| other_reply("repaired notice"))
}

/// The answer to `TreeHashes`: the hashes (`None`: the tree is not ready) and the oldest
/// queued hint's time.
#[must_use]
pub fn tree_hashes_answer(id: u64, hashes: Option<&[u64]>, oldest_hint_ms: u64) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let list = hashes.map(|h| b.create_vector(h));
    let r = fb::TreeHashesResponse::create(
        &mut b,
        &fb::TreeHashesResponseArgs {
            ready: hashes.is_some(),
            hashes: list,
            oldest_hint_ms,
        },
    );
    finish(b, id, fb::Reply::TreeHashes, r.as_union_value())
}

/// The answer to `TreeKeys` (`None`: the tree is not ready).
#[must_use]
pub fn tree_keys_answer(id: u64, keys: Option<(&[KeyStateWire], bool)>) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let list = keys.map(|(keys, _)| {
        let items: Vec<_> = keys
            .iter()
            .map(|k| {
                let key = b.create_vector(&k.key);
                let version = b.create_vector(&k.version);
                fb::KeyStateEntry::create(
                    &mut b,
                    &fb::KeyStateEntryArgs {
                        key: Some(key),
                        version: Some(version),
                        hash: k.hash,
                        deleted_at_ms: k.deleted_at_ms.unwrap_or(0),
                    },
                )
            })
            .collect();
        b.create_vector(&items)
    });
    let r = fb::TreeKeysResponse::create(
        &mut b,
        &fb::TreeKeysResponseArgs {
            ready: keys.is_some(),
            keys: list,
            more: keys.is_some_and(|(_, more)| more),
        },
    );
    finish(b, id, fb::Reply::TreeKeys, r.as_union_value())
}

/// The answer to `Repaired`.
#[must_use]
pub fn repaired_answer(id: u64) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let r = fb::RepairedResponse::create(&mut b, &fb::RepairedResponseArgs {});
    finish(b, id, fb::Reply::Repaired, r.as_union_value())
}

/// One key's copy in a `StreamRange` answer: the object's parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamEntryWire {
    /// The key.
    pub key: Vec<u8>,
    /// The object's version part.
    pub version: Vec<u8>,
    /// Its values part.
    pub values: Vec<u8>,
}

/// Decodes a `RingSync` answer: the peer's book, encoded.
///
/// # Errors
/// [`ReplyError`].
pub fn ring_sync(body: &[u8]) -> Result<Vec<u8>, ReplyError> {
    let resp = open(body)?;
    let r = resp
        .reply_as_ring_sync()
        .ok_or_else(|| other_reply("ring sync"))?;
    Ok(r.book().bytes().to_vec())
}

/// The answer to `RingSync`.
#[must_use]
pub fn ring_sync_answer(id: u64, book: &[u8]) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let book = b.create_vector(book);
    let r = fb::RingSyncResponse::create(&mut b, &fb::RingSyncResponseArgs { book: Some(book) });
    finish(b, id, fb::Reply::RingSync, r.as_union_value())
}

/// Decodes a `StreamRange` answer: the entries, and whether a bound cut it short.
///
/// # Errors
/// [`ReplyError`].
pub fn stream_range(body: &[u8]) -> Result<(Vec<StreamEntryWire>, bool), ReplyError> {
    let resp = open(body)?;
    let r = resp
        .reply_as_stream_range()
        .ok_or_else(|| other_reply("stream range request"))?;
    let entries = r
        .entries()
        .iter()
        .flatten()
        .map(|e| StreamEntryWire {
            key: e.key().bytes().to_vec(),
            version: e.version().bytes().to_vec(),
            values: bytes(e.values()),
        })
        .collect();
    Ok((entries, r.more()))
}

/// The answer to `StreamRange`.
#[must_use]
pub fn stream_range_answer(id: u64, entries: &[StreamEntryWire], more: bool) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let items: Vec<_> = entries
        .iter()
        .map(|e| {
            let key = b.create_vector(&e.key);
            let version = b.create_vector(&e.version);
            let values = b.create_vector(&e.values);
            fb::StreamEntry::create(
                &mut b,
                &fb::StreamEntryArgs {
                    key: Some(key),
                    version: Some(version),
                    values: Some(values),
                },
            )
        })
        .collect();
    let list = b.create_vector(&items);
    let r = fb::StreamRangeResponse::create(
        &mut b,
        &fb::StreamRangeResponseArgs {
            entries: Some(list),
            more,
        },
    );
    finish(b, id, fb::Reply::StreamRange, r.as_union_value())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_answers_decode_as_they_were_built() {
        assert_eq!(
            ring_sync(&ring_sync_answer(3, b"[{}]")).expect("decodes"),
            b"[{}]".to_vec()
        );
        let entries = vec![
            StreamEntryWire {
                key: b"k".to_vec(),
                version: vec![1, 2],
                values: vec![3],
            },
            StreamEntryWire {
                key: b"l".to_vec(),
                version: vec![4],
                values: Vec::new(),
            },
        ];
        assert_eq!(
            stream_range(&stream_range_answer(4, &entries, true)).expect("decodes"),
            (entries, true)
        );
        assert!(stream_range(&ring_sync_answer(3, b"x")).is_err());
    }

    #[test]
    fn anti_entropy_answers_decode_as_they_were_built() {
        let hashes = [1u64, u64::MAX, 0];
        assert_eq!(
            tree_hashes(&tree_hashes_answer(1, Some(&hashes), 77)).expect("decodes"),
            Some((hashes.to_vec(), 77))
        );
        assert_eq!(
            tree_hashes(&tree_hashes_answer(1, None, 0)).expect("decodes"),
            None
        );
        let keys = vec![
            KeyStateWire {
                key: b"a".to_vec(),
                version: vec![2, 0],
                hash: 9,
                deleted_at_ms: Some(5),
            },
            KeyStateWire {
                key: b"b".to_vec(),
                version: Vec::new(),
                hash: 3,
                deleted_at_ms: None,
            },
        ];
        assert_eq!(
            tree_keys(&tree_keys_answer(2, Some((&keys, true)))).expect("decodes"),
            Some((keys, true))
        );
        assert_eq!(
            tree_keys(&tree_keys_answer(2, None)).expect("decodes"),
            None
        );
        repaired(&repaired_answer(3)).expect("decodes");
        assert!(repaired(&tree_hashes_answer(1, None, 0)).is_err());
    }

    #[test]
    fn answers_decode_as_they_were_built() {
        let found = Found {
            value: b"v2".to_vec(),
            version: vec![1, 2, 3],
            siblings: vec![(b"v2".to_vec(), 20), (b"v1".to_vec(), 10)],
            expiry_ms: Some(1_800_000_000_000),
        };
        assert_eq!(
            get(&get_answer(1, Some(&found), true)),
            Ok(Some(found.clone()))
        );
        let lww = get(&get_answer(1, Some(&found), false)).expect("decodes");
        assert_eq!(lww.map(|f| f.siblings.len()), Some(0));
        assert_eq!(get(&get_answer(1, None, true)), Ok(None));
        assert_eq!(
            written(&written_answer(2, fb::Reply::Put, &[9])),
            Ok(vec![9])
        );
        assert_eq!(
            written(&written_answer(2, fb::Reply::Delete, &[8])),
            Ok(vec![8])
        );
        let object = replica_object_answer(3, Some((&[1][..], Some(&[2, 2][..]))));
        assert_eq!(replica_object(&object), Ok(Some((vec![1], vec![2, 2]))));
        assert_eq!(replica_object(&replica_object_answer(3, None)), Ok(None));
        assert_eq!(
            replica_applied(&replica_object_answer(3, Some((&[1][..], None)))),
            Ok(())
        );
        assert!(replica_applied(&replica_object_answer(3, None)).is_err());
    }

    #[test]
    fn errors_and_answers_of_another_kind_are_typed() {
        let e = error(
            4,
            fb::ErrorCode::ConditionFailed,
            "stale",
            Some(&[7]),
            (0, 0),
        );
        match written(&e) {
            Err(ReplyError::Server(s)) => {
                assert_eq!(s.code, ErrorCode::ConditionFailed);
                assert_eq!(s.message, "stale");
                assert_eq!(s.current_version, Some(vec![7]));
            }
            other => panic!("{other:?}"),
        }
        let quorum = error(4, fb::ErrorCode::Unavailable, "1 of 2", None, (1, 2));
        assert!(matches!(
            get(&quorum),
            Err(ReplyError::Server(ServerError {
                acks: 1,
                required: 2,
                ..
            }))
        ));
        let put = written_answer(5, fb::Reply::Put, &[1]);
        assert!(matches!(get(&put), Err(ReplyError::Malformed(_))));
        assert!(matches!(ping(&put), Err(ReplyError::Malformed(_))));
        assert!(matches!(topology(b"junk"), Err(ReplyError::Malformed(_))));
    }
}

/// The answer to a Paxos prepare (see [`Promise`]).
#[must_use]
pub fn paxos_promise_answer(id: u64, p: &PromiseParts<'_>) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let (accepted_ballot, accepted_version, accepted_values) = match p.accepted {
        Some((ballot, (version, values))) => (
            Some(ballot.to_wire()),
            Some(b.create_vector(version)),
            Some(b.create_vector(values)),
        ),
        None => (None, None, None),
    };
    let (version, values) = match p.copy {
        Some((version, values)) => (
            Some(b.create_vector(version)),
            Some(b.create_vector(values)),
        ),
        None => (None, None),
    };
    let r = fb::PaxosPromiseResponse::create(
        &mut b,
        &fb::PaxosPromiseResponseArgs {
            promised: p.promised,
            ballot: Some(&p.ballot.to_wire()),
            accepted_ballot: accepted_ballot.as_ref(),
            accepted_version,
            accepted_values,
            committed_ballot: p.committed.map(Ballot::to_wire).as_ref(),
            found: p.copy.is_some(),
            version,
            values,
        },
    );
    finish(b, id, fb::Reply::PaxosPromise, r.as_union_value())
}

/// What a Paxos prepare's answer holds (see [`Promise`]).
#[derive(Clone, Copy, Debug)]
pub struct PromiseParts<'a> {
    /// Whether the ballot was promised.
    pub promised: bool,
    /// The highest ballot promised (the one asked for, when promised).
    pub ballot: Ballot,
    /// An accepted proposal not seen committed.
    pub accepted: Option<(Ballot, PartsRef<'a>)>,
    /// The last commit's ballot.
    pub committed: Option<Ballot>,
    /// The replica's copy.
    pub copy: Option<PartsRef<'a>>,
}

/// An object's parts (version, values), borrowed.
pub type PartsRef<'a> = (&'a [u8], &'a [u8]);

/// The answer to a Paxos proposal: accepted, or refused for the higher promised `ballot`.
#[must_use]
pub fn paxos_accept_answer(id: u64, accepted: bool, ballot: Ballot) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let r = fb::PaxosAcceptResponse::create(
        &mut b,
        &fb::PaxosAcceptResponseArgs {
            accepted,
            ballot: Some(&ballot.to_wire()),
        },
    );
    finish(b, id, fb::Reply::PaxosAccept, r.as_union_value())
}
