//! Versioned objects: a key's siblings read, written under a causal context or a condition,
//! and merged from other replicas, under the per-key lock that keeps dots unique.

use super::*;

impl Shard {
    /// The stored object of `key`: every sibling, tombstones and expired ones included. A key
    /// written with plain [`Shard::put`] reads as one sibling without a dot.
    ///
    /// # Errors
    /// As [`Shard::get_record`], and [`Error::Version`] for a damaged version blob.
    pub async fn read_object(&self, key: &[u8]) -> Result<Option<Object>> {
        Ok(self.read_object_for_write(key).await?.0)
    }

    /// [`Shard::read_object`], with the key's state for the tree (if the shard keeps one), for
    /// a write of the key under its lock.
    async fn read_object_for_write(
        &self,
        key: &[u8],
    ) -> Result<(Option<Object>, Option<OldState>)> {
        let epoch = self.inner.trees.as_ref().map(|t| t.borrow().purge_epoch());
        let Some(record) = self.get_record_applied(key).await? else {
            return Ok((None, epoch.map(|epoch| OldState { hash: 0, epoch })));
        };
        let old = epoch.map(|epoch| OldState {
            hash: record_state(&record).hash,
            epoch,
        });
        Ok((Self::object_of(record)?, old))
    }

    fn object_of(record: Record) -> Result<Option<Object>> {
        if record.version.is_empty() {
            return Ok(Some(Object::new(Sibling {
                value: record.value,
                hlc: HlcTimestamp::from_parts(record.write_ts_ms, 0),
                expiry_ms: record.expiry_ms,
            })));
        }
        object::decode(&record).map(Some)
    }

    /// The coordinator's versioned write: `value` (or a tombstone) from a client that had seen
    /// `ctx`, minted as a new dot of this replica, node `node`, in the shard's actor epoch. With
    /// `expected`, the write happens only if the key's current context holds nothing that
    /// `expected` does not (it equals it, or is older).
    ///
    /// # Errors
    /// [`Error::ConditionFailed`] with the current context; [`Error::Version`] when the write
    /// would leave more than 100 siblings; [`Error::Clock`] if a stored timestamp is too far
    /// ahead; the errors of [`Shard::write`].
    pub async fn coordinate_write(
        &self,
        key: &[u8],
        ctx: &VersionVector,
        value: Option<&[u8]>,
        expiry_ms: Option<u64>,
        node: u64,
        expected: Option<&VersionVector>,
    ) -> Result<Object> {
        self.coordinate(key, Some(ctx), value, expiry_ms, node, expected)
            .await
    }

    /// A blind write that supersedes whatever `key` holds: [`Shard::coordinate_write`] with the
    /// key's current context, read under the key's lock (so the one read serves both, and a
    /// write landing in between cannot turn it into a sibling).
    ///
    /// # Errors
    /// As [`Shard::coordinate_write`], without `ConditionFailed`.
    pub async fn overwrite(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        expiry_ms: Option<u64>,
        node: u64,
    ) -> Result<Object> {
        self.coordinate(key, None, value, expiry_ms, node, None)
            .await
    }

    /// [`Shard::coordinate_write`]; `ctx` `None` takes the local object's context.
    pub(super) async fn coordinate(
        &self,
        key: &[u8],
        ctx: Option<&VersionVector>,
        value: Option<&[u8]>,
        expiry_ms: Option<u64>,
        node: u64,
        expected: Option<&VersionVector>,
    ) -> Result<Object> {
        Mutation {
            key,
            value,
            write_ts_ms: None,
            expiry_ms,
            version: &[],
        }
        .validate()?;
        let held = self.inner.key_locks.lock(key).await;
        let result: Result<Object> = async {
            let (local, old) = self.read_object_for_write(key).await?;
            check_expected(local.as_ref(), expected)?;
            let sibling = self.stamp(local.as_ref(), value, expiry_ms)?;
            let current;
            let ctx = match ctx {
                Some(c) => c,
                None => {
                    current = local.as_ref().map(Object::join).unwrap_or_default();
                    &current
                }
            };
            let actor = self.minting_actor(node, ctx, local.as_ref()).await?;
            // Where this replica holds no live value of its own for the key (no copy, or one its
            // later writes superseded), the new dot starts above every counter it ever minted:
            // copies it purged may live on elsewhere (see `docs/protocol.md`, "Actor epochs").
            let floor = if reuse_dots_for_tests()
                || local
                    .iter()
                    .flat_map(Object::dots)
                    .any(|(a, _, _)| a == actor)
            {
                0
            } else {
                self.inner.state.borrow().minted_high
            };
            let obj = Object::mint(ctx, sibling, local.as_ref(), actor, floor)?;
            let counter = obj.join().get(actor);
            self.reserve_counter(counter).await?;
            self.store_object(key, &obj, old).await?;
            Ok(obj)
        }
        .await;
        // Answered only once what was read or written under the lock is durable.
        self.release_when_durable(held).await?;
        result
    }

    /// A lightweight transaction's new version of `key`: `value` (or a tombstone) replacing
    /// everything `current` (the key's value as a quorum of replicas hold it) holds, minted as
    /// a dot of this node's transaction actor, and **not stored**: it is stored where and when
    /// the transaction commits. Its counter is above every one this shard minted (durably
    /// reserved first), so it is new whatever any copy holds.
    ///
    /// # Errors
    /// [`Error::Limit`] for a bad key or value; [`Error::Clock`]; the manifest's errors.
    pub async fn mint_transaction(
        &self,
        key: &[u8],
        current: Option<&Object>,
        value: Option<&[u8]>,
        expiry_ms: Option<u64>,
        node: u64,
    ) -> Result<Object> {
        Mutation {
            key,
            value,
            write_ts_ms: None,
            expiry_ms,
            version: &[],
        }
        .validate()?;
        let _held = self.inner.key_locks.lock(key).await;
        let sibling = self.stamp(current, value, expiry_ms)?;
        let (epoch, high) = self.actor_epoch();
        let actor = ActorId::new(node, epoch | crate::version::TRANSACTION_EPOCH_BIT);
        let ctx = current.map(Object::join).unwrap_or_default();
        // The context covers every value of `current`: no value of any actor is left beside
        // the new one, so the counter may start above everything minted.
        let obj = Object::mint(&ctx, sibling, current, actor, high)?;
        self.reserve_counter(obj.join().get(actor)).await?;
        Ok(obj)
    }

    /// A new sibling, stamped by the shard's clock after it observed the newest timestamp of
    /// `seen` (what the write builds on).
    fn stamp(
        &self,
        seen: Option<&Object>,
        value: Option<&[u8]>,
        expiry_ms: Option<u64>,
    ) -> Result<Sibling> {
        if let Some(newest) = seen.iter().flat_map(|o| o.values()).map(|s| s.hlc).max() {
            self.inner.hlc.observe(newest)?;
        }
        Ok(Sibling {
            value: value.map(<[u8]>::to_vec),
            hlc: self.inner.hlc.now(),
            expiry_ms,
        })
    }

    /// The actor epoch this shard mints in, and the highest counter it may have minted in it.
    #[must_use]
    pub fn actor_epoch(&self) -> (u64, u64) {
        let s = self.inner.state.borrow();
        (s.manifest.actor_epoch, s.minted_high)
    }

    /// This replica's actor for a write of node `node` that has seen `ctx` over `local`. Where
    /// either names this node in a later epoch than the shard's, or in its epoch with a counter
    /// above any it minted, this shard has forgotten dots it made (a restored backup, a clock
    /// that went back before a new epoch was drawn) or the context is forged: either way it
    /// moves to an epoch above every one it has seen before minting.
    async fn minting_actor(
        &self,
        node: u64,
        ctx: &VersionVector,
        local: Option<&Object>,
    ) -> Result<ActorId> {
        let (epoch, high) = self.actor_epoch();
        let named = ctx
            .pairs()
            .iter()
            .copied()
            .chain(local.iter().flat_map(|l| l.join().pairs().to_vec()))
            // (Transaction actors are another family: their epochs say nothing of this one; an
            // epoch at the family's very top is forged, and ignored.)
            .filter(|(a, _)| a.node == node && a.epoch < crate::version::TRANSACTION_EPOCH_BIT - 1);
        let mut newest = None;
        for (a, counter) in named {
            if a.epoch > epoch || (a.epoch == epoch && counter > high) {
                newest = newest.max(Some(a.epoch));
            }
        }
        if let Some(seen) = newest {
            tracing::warn!(
                node = format_args!("{node:x}"),
                epoch,
                seen,
                "a version names dots of this replica that it does not remember; moving to a \
                 new actor epoch"
            );
            self.new_actor_epoch(seen).await?;
        }
        Ok(ActorId::new(node, self.actor_epoch().0))
    }

    /// Moves to an actor epoch above both the current one and `seen`, durably.
    async fn new_actor_epoch(&self, seen: u64) -> Result<()> {
        let inner = &*self.inner;
        let _held = inner.manifest_lock.lock(&[]).await;
        let mut m = inner.state.borrow().manifest.clone();
        if m.actor_epoch > seen {
            return Ok(()); // Another write moved it while this one waited.
        }
        m.actor_epoch = next_actor_epoch(seen, inner.options.clock.now_ms());
        m.counter_ceiling = COUNTER_LEASE;
        m.generation += 1;
        m.store(&inner.options.dir).await?;
        let mut s = inner.state.borrow_mut();
        s.manifest = m;
        s.minted_high = 0;
        Ok(())
    }

    /// Makes sure counter `counter` is covered by a durable ceiling before a dot with it is
    /// stored, and records it as minted.
    async fn reserve_counter(&self, counter: u64) -> Result<()> {
        let inner = &*self.inner;
        if counter > inner.state.borrow().manifest.counter_ceiling {
            let _held = inner.manifest_lock.lock(&[]).await;
            let mut m = inner.state.borrow().manifest.clone();
            if counter > m.counter_ceiling {
                m.counter_ceiling = counter.saturating_add(COUNTER_LEASE);
                m.generation += 1;
                m.store(&inner.options.dir).await?;
                inner.state.borrow_mut().manifest = m;
            }
        }
        let mut s = inner.state.borrow_mut();
        s.minted_high = s.minted_high.max(counter);
        Ok(())
    }

    /// A replica's apply: merges `incoming` (a coordinator's result, a read repair, an
    /// anti-entropy transfer) with the local object, so that replicas converge whatever order
    /// writes arrive in. Writes only if the merge changed something. With `expected`, applies
    /// only if the local context holds nothing that `expected` does not, or nothing that
    /// `incoming` does not (the copy already has the write).
    ///
    /// # Errors
    /// [`Error::ConditionFailed`]; [`Error::Version`] for an invalid incoming object;
    /// [`Error::Clock`] if it carries a timestamp too far ahead (nothing is stored); the errors
    /// of [`Shard::write`].
    pub async fn apply_object(
        &self,
        key: &[u8],
        incoming: &Object,
        expected: Option<&VersionVector>,
    ) -> Result<Object> {
        validate_key(key)?;
        incoming.check()?;
        let held = self.inner.key_locks.lock(key).await;
        let result: Result<Object> = async {
            let (local, old) = self.read_object_for_write(key).await?;
            // A copy that already holds the incoming write (it came by read repair or a hint
            // first) has nothing the write did not see either: the merge below is a no-op.
            let already_has_it = local
                .as_ref()
                .is_some_and(|l| incoming.join().descends(&l.join()));
            if !already_has_it {
                check_expected(local.as_ref(), expected)?;
            }
            if let Some(newest) = incoming.values().map(|s| s.hlc).max() {
                self.inner.hlc.observe(newest)?;
            }
            let mut merged = match &local {
                Some(l) => l.sync(incoming),
                None => incoming.clone(),
            };
            if merged.size() > crate::version::SIBLINGS_MAX {
                // Each side was within the bound but their merge is not: resolve by last writer
                // wins (the context is kept, so the result still covers both). Every replica
                // resolves the same way, so they converge.
                tracing::warn!(
                    siblings = merged.size(),
                    "a replica merge exceeds the sibling bound; keeping the newest"
                );
                merged = merged.lww_by(|s| s.hlc);
            }
            let bytes: usize = merged
                .values()
                .filter_map(|s| s.value.as_ref())
                .map(Vec::len)
                .sum();
            if bytes > crate::record::VALUE_BYTES_MAX {
                tracing::warn!(
                    bytes,
                    "a replica merge exceeds the value limit; keeping the newest"
                );
                merged = merged.lww_by(|s| s.hlc);
            }
            if local.as_ref() != Some(&merged) {
                self.store_object(key, &merged, old).await?;
            }
            Ok(merged)
        }
        .await;
        // Answered only once what was read or written under the lock is durable.
        self.release_when_durable(held).await?;
        result
    }

    /// Stores `obj` as `key`'s record, under the key's lock; `old` is the key's state as read
    /// under it. The record is applied, not yet durable: the caller waits for that once it has
    /// released the lock ([`Shard::release_when_durable`]).
    pub(super) async fn store_object(
        &self,
        key: &[u8],
        obj: &Object,
        old: Option<OldState>,
    ) -> Result<SeqNo> {
        let e = object::encode(obj)?;
        let m = Mutation {
            key,
            value: e.value.as_deref(),
            write_ts_ms: Some(e.write_ts_ms),
            expiry_ms: e.expiry_ms,
            version: &e.version,
        };
        m.validate()?;
        self.write_inner(m, old).await
    }
}

/// Checks a conditional write's expected context against the local object.
pub(super) fn check_expected(
    local: Option<&Object>,
    expected: Option<&VersionVector>,
) -> Result<()> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let current = local.map(Object::join).unwrap_or_default();
    // The copy holds no write the client did not see: the version it read, or an older one
    // (a replica that missed the latest write is not a conflict; a write the client has not
    // seen is).
    if expected.descends(&current) {
        Ok(())
    } else {
        Err(Error::ConditionFailed { current })
    }
}
