//! What a request does to one shard: gets, puts and deletes with opaque versions, TTL and
//! conditional writes, on top of the engine's versioned objects. The servers (binary and HTTP)
//! call it on the core that owns the key; the cluster's coordinator will call it on each
//! replica.
//!
//! * A value's **version** is the join of its object's dotted-version-vector context, encoded:
//!   opaque to clients, who hand it back for a conditional write.
//! * A **put without a version** supersedes what the key holds now (its context is the current
//!   one), so that repeated blind puts replace each other as a client of a key-value store
//!   expects, rather than piling up siblings.
//! * **Reads** return the newest live sibling by hybrid-logical-clock timestamp
//!   (last-writer-wins); a key whose newest sibling is a tombstone or expired reads as absent.

use dynacore_engine::version::{ClockHandle, PhysicalClock, VersionVector};
use dynacore_engine::{Error as EngineError, LimitError, Object, Shard};

/// Why a request failed, in the protocol's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The key is empty or too long.
    InvalidKey(String),
    /// The value is too long.
    ValueTooLarge(String),
    /// The expected version is not the current one (here, encoded).
    ConditionFailed {
        /// The current version.
        current: Vec<u8>,
    },
    /// The request itself is wrong (a version that does not decode).
    BadRequest(String),
    /// The shard failed; the message says how.
    Internal(String),
    /// The owning core cannot answer now (the node is shutting down).
    Unavailable(String),
    /// The deadline passed before the shard answered; a write's outcome is unknown (it may
    /// still be applied).
    Timeout(String),
    /// A queue on the way is full (the owning core, or a peer, is not keeping up): the request
    /// was not run. Try again later.
    Overloaded(String),
    /// Fewer replicas than required answered in time. For a write the outcome is unknown: it
    /// may exist on fewer replicas and spread later.
    Quorum {
        /// Replicas that acknowledged (writes) or answered (reads).
        acks: u8,
        /// Replicas that were required.
        required: u8,
        /// What happened.
        message: String,
    },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::InvalidKey(m)
            | StoreError::ValueTooLarge(m)
            | StoreError::BadRequest(m)
            | StoreError::Internal(m)
            | StoreError::Unavailable(m)
            | StoreError::Timeout(m)
            | StoreError::Overloaded(m)
            | StoreError::Quorum { message: m, .. } => f.write_str(m),
            StoreError::ConditionFailed { .. } => f.write_str("the version is not the current one"),
        }
    }
}

impl std::error::Error for StoreError {}

fn encode_version(v: &VersionVector) -> Vec<u8> {
    let mut out = Vec::new();
    v.encode_into(&mut out);
    out
}

impl From<EngineError> for StoreError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Limit(
                l @ (LimitError::KeyEmpty { .. } | LimitError::KeyTooLong { .. }),
            ) => StoreError::InvalidKey(l.to_string()),
            EngineError::Limit(l @ LimitError::ValueTooLarge { .. }) => {
                StoreError::ValueTooLarge(l.to_string())
            }
            EngineError::ConditionFailed { current } => StoreError::ConditionFailed {
                current: encode_version(&current),
            },
            other => StoreError::Internal(other.to_string()),
        }
    }
}

/// A value as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The value.
    pub value: Vec<u8>,
    /// Its version (opaque).
    pub version: Vec<u8>,
}

/// One shard, as requests see it.
#[derive(Clone, Debug)]
pub struct LocalStore {
    shard: Shard,
    node: u64,
    clock: ClockHandle,
    /// The acceptor state of lightweight transactions (`None`: this store takes no part).
    paxos: Option<std::rc::Rc<crate::storage::paxos::PaxosStore>>,
}

impl LocalStore {
    /// Requests to `shard`, whose writes are minted as dots of node `node` (this replica) in
    /// the shard's actor epoch, with expiry computed from `clock` (the clock the shard was
    /// opened with).
    #[must_use]
    pub fn new(shard: Shard, node: u64, clock: ClockHandle) -> Self {
        LocalStore {
            shard,
            node,
            clock,
            paxos: None,
        }
    }

    /// The same store, taking part in lightweight transactions with `paxos`'s states.
    #[must_use]
    pub fn with_paxos(mut self, paxos: std::rc::Rc<crate::storage::paxos::PaxosStore>) -> Self {
        self.paxos = Some(paxos);
        self
    }

    /// Its acceptor states.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when it takes no part in transactions.
    pub fn paxos(&self) -> Result<&crate::storage::paxos::PaxosStore, StoreError> {
        self.paxos.as_deref().ok_or_else(|| {
            StoreError::Unavailable("this replica takes no part in transactions".into())
        })
    }

    /// A transaction's new version of `key` replacing `current`, minted here and not stored
    /// (see `Shard::mint_transaction`).
    ///
    /// # Errors
    /// As [`LocalStore::put`].
    pub async fn mint_transaction(
        &self,
        key: &[u8],
        current: Option<&Object>,
        value: Option<&[u8]>,
        ttl_ms: Option<u64>,
    ) -> Result<Object, StoreError> {
        let expiry_ms = ttl_ms
            .filter(|&t| t > 0)
            .map(|t| self.clock.now_ms().saturating_add(t));
        Ok(self
            .shard
            .mint_transaction(key, current, value, expiry_ms, self.node)
            .await?)
    }

    /// The shard.
    #[must_use]
    pub fn shard(&self) -> &Shard {
        &self.shard
    }

    /// The live value of `key` and its version, or `None` if absent, deleted or expired.
    ///
    /// # Errors
    /// [`StoreError::InvalidKey`]; [`StoreError::Internal`] for storage errors.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Found>, StoreError> {
        let Some(obj) = self.shard.read_object(key).await? else {
            return Ok(None);
        };
        let now = self.clock.now_ms();
        // The newest sibling decides: a newer tombstone or expired value hides older values.
        let newest = obj.values().max_by_key(|s| s.hlc);
        Ok(newest
            .filter(|s| s.is_live_at(now))
            .and_then(|s| s.value.clone())
            .map(|value| Found {
                value,
                version: encode_version(&obj.join()),
            }))
    }

    /// Stores `value` under `key` (expiring after `ttl_ms` when given), only if the key's
    /// version is still `expected` when that is given. Returns the new version.
    ///
    /// # Errors
    /// [`StoreError::ConditionFailed`] with the current version; [`StoreError::BadRequest`] for
    /// an `expected` that does not decode; [`StoreError::InvalidKey`],
    /// [`StoreError::ValueTooLarge`]; [`StoreError::Internal`].
    pub async fn put(
        &self,
        key: &[u8],
        value: &[u8],
        ttl_ms: Option<u64>,
        expected: Option<&[u8]>,
    ) -> Result<Vec<u8>, StoreError> {
        let expiry_ms = ttl_ms
            .filter(|&t| t > 0)
            .map(|t| self.clock.now_ms().saturating_add(t));
        self.write(key, Some(value), expiry_ms, expected).await
    }

    /// Deletes `key` (writes a tombstone), only if its version is still `expected` when that is
    /// given. Returns the tombstone's version.
    ///
    /// # Errors
    /// As [`LocalStore::put`].
    pub async fn delete(&self, key: &[u8], expected: Option<&[u8]>) -> Result<Vec<u8>, StoreError> {
        self.write(key, None, None, expected).await
    }

    /// This replica's own copy of `key`, as stored (every sibling, tombstones and expired
    /// values included): what a coordinator merges.
    ///
    /// # Errors
    /// [`StoreError::InvalidKey`]; [`StoreError::Internal`] for storage errors.
    pub async fn read_replica(&self, key: &[u8]) -> Result<Option<Object>, StoreError> {
        Ok(self.shard.read_object(key).await?)
    }

    /// Merges `incoming` (a coordinator's or another replica's copy) into this replica's copy
    /// of `key` by DVV `sync`, durably; returns the merged object. With `expected`, only if
    /// the copy holds nothing that version does not.
    ///
    /// # Errors
    /// [`StoreError::ConditionFailed`]; [`StoreError::BadRequest`] for an object that breaks
    /// the DVV invariants or carries a timestamp too far ahead of this node's clock;
    /// [`StoreError::InvalidKey`], [`StoreError::ValueTooLarge`], [`StoreError::Internal`].
    pub async fn apply_replica(
        &self,
        key: &[u8],
        incoming: &Object,
        expected: Option<&VersionVector>,
    ) -> Result<Object, StoreError> {
        // The incoming object is the peer's; anything else that fails to decode is ours.
        incoming
            .check()
            .map_err(|e| StoreError::BadRequest(format!("bad object: {e}")))?;
        match self.shard.apply_object(key, incoming, expected).await {
            // A timestamp too far ahead of this node's clock: refused, not stored.
            Err(EngineError::Clock(e)) => Err(StoreError::BadRequest(format!(
                "the object's timestamp is refused: {e}"
            ))),
            other => Ok(other?),
        }
    }

    async fn write(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        expiry_ms: Option<u64>,
        expected: Option<&[u8]>,
    ) -> Result<Vec<u8>, StoreError> {
        let expected = expected.map(decode_version).transpose()?;
        let obj = self
            .coordinate_at(key, value, expiry_ms, expected.as_ref(), None)
            .await?;
        Ok(encode_version(&obj.join()))
    }

    /// A coordinator's write on this replica: `value` (or a tombstone when `None`) as a new
    /// version minted by this replica, expiring after `ttl_ms` when given. It replaces
    /// what `context` covers (`None`: the copy's own context, so a blind write replaces the
    /// copy). With `expected`, only if the copy holds nothing that version does not; a
    /// conditional write without a context builds on `expected`. Returns the new object.
    ///
    /// # Errors
    /// As [`LocalStore::put`].
    pub async fn coordinate(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        ttl_ms: Option<u64>,
        expected: Option<&VersionVector>,
        context: Option<&VersionVector>,
    ) -> Result<Object, StoreError> {
        let expiry_ms = ttl_ms
            .filter(|&t| t > 0)
            .map(|t| self.clock.now_ms().saturating_add(t));
        self.coordinate_at(key, value, expiry_ms, expected, context)
            .await
    }

    async fn coordinate_at(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        expiry_ms: Option<u64>,
        expected: Option<&VersionVector>,
        context: Option<&VersionVector>,
    ) -> Result<Object, StoreError> {
        // A conditional write builds on the version the client read; a blind one on what the
        // key holds now, so that it replaces it.
        match context.or(expected) {
            Some(ctx) => Ok(self
                .shard
                .coordinate_write(key, ctx, value, expiry_ms, self.node, expected)
                .await?),
            None => Ok(self
                .shard
                .overwrite(key, value, expiry_ms, self.node)
                .await?),
        }
    }
}

/// Decodes a client's version.
///
/// # Errors
/// [`StoreError::BadRequest`] when it does not decode.
pub fn decode_version(v: &[u8]) -> Result<VersionVector, StoreError> {
    VersionVector::decode(v).map_err(|e| StoreError::BadRequest(format!("bad version: {e}")))
}

/// Encodes a version for a client.
#[must_use]
pub fn version_bytes(v: &VersionVector) -> Vec<u8> {
    encode_version(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::with_store;
    use std::sync::atomic::Ordering;

    #[test]
    fn blind_puts_replace_each_other_and_deletes_hide() {
        with_store(|store, _| async move {
            assert_eq!(store.get(b"k").await, Ok(None));
            let v1 = store.put(b"k", b"one", None, None).await.expect("put");
            let got = store.get(b"k").await.expect("get").expect("found");
            assert_eq!((got.value.as_slice(), &got.version), (&b"one"[..], &v1));
            for i in 0..150u32 {
                // Far more than the 100-sibling limit: blind puts must not pile up.
                store
                    .put(b"k", &i.to_le_bytes(), None, None)
                    .await
                    .expect("put");
            }
            let got = store.get(b"k").await.expect("get").expect("found");
            assert_eq!(got.value, 149u32.to_le_bytes());
            let obj = store
                .shard()
                .read_object(b"k")
                .await
                .expect("read")
                .expect("some");
            assert_eq!(obj.size(), 1, "one sibling");
            store.delete(b"k", None).await.expect("delete");
            assert_eq!(store.get(b"k").await, Ok(None));
        });
    }

    #[test]
    fn conditional_writes_succeed_only_on_the_current_version() {
        with_store(|store, _| async move {
            let v1 = store.put(b"k", b"one", None, None).await.expect("put");
            let v2 = store
                .put(b"k", b"two", None, Some(&v1))
                .await
                .expect("conditional put");
            assert_ne!(v1, v2);
            let err = store.put(b"k", b"three", None, Some(&v1)).await;
            assert_eq!(
                err,
                Err(StoreError::ConditionFailed {
                    current: v2.clone()
                })
            );
            assert_eq!(
                store.get(b"k").await.expect("get").map(|f| f.value),
                Some(b"two".to_vec())
            );
            assert!(matches!(
                store.put(b"k", b"x", None, Some(b"\xff\xff")).await,
                Err(StoreError::BadRequest(_))
            ));
            assert!(matches!(
                store.delete(b"k", Some(&v1)).await,
                Err(StoreError::ConditionFailed { .. })
            ));
            store
                .delete(b"k", Some(&v2))
                .await
                .expect("conditional delete");
            assert_eq!(store.get(b"k").await, Ok(None));
        });
    }

    #[test]
    fn a_replica_that_already_holds_a_conditional_write_accepts_it() {
        with_store(|store, _| async move {
            let v1 = store.put(b"k", b"one", None, None).await.expect("put");
            let v1 = decode_version(&v1).expect("version");
            // The coordinator's conditional write on v1, as it reaches this replica...
            let write = store
                .coordinate(b"k", Some(b"two"), None, Some(&v1), None)
                .await
                .expect("conditional write");
            // ...after read repair already brought it here: not a conflict, a no-op.
            let merged = store
                .apply_replica(b"k", &write, Some(&v1))
                .await
                .expect("already held");
            assert!(merged.equal(&write));
            // A write the copy has not seen, on a stale version, is still refused.
            let other = store
                .coordinate(b"k", Some(b"three"), None, None, None)
                .await
                .expect("blind write");
            assert!(matches!(
                store.apply_replica(b"k", &write, Some(&v1)).await,
                Err(StoreError::ConditionFailed { .. })
            ));
            assert!(store.get(b"k").await.expect("get").is_some());
            drop(other);
        });
    }

    #[test]
    fn ttl_expires_exactly_and_limits_are_typed() {
        with_store(|store, wall| async move {
            store
                .put(b"t", b"soon", Some(5_000), None)
                .await
                .expect("put");
            wall.fetch_add(4_999, Ordering::Relaxed);
            assert!(store.get(b"t").await.expect("get").is_some());
            wall.fetch_add(1, Ordering::Relaxed);
            assert_eq!(store.get(b"t").await, Ok(None), "expired at 5 s");
            assert!(matches!(
                store.put(b"", b"v", None, None).await,
                Err(StoreError::InvalidKey(_))
            ));
            assert!(matches!(
                store.get(&[b'k'; 257]).await,
                Err(StoreError::InvalidKey(_))
            ));
            let big = vec![0u8; dynacore_engine::VALUE_BYTES_MAX + 1];
            assert!(matches!(
                store.put(b"big", &big, None, None).await,
                Err(StoreError::ValueTooLarge(_))
            ));
        });
    }
}
