//! One core's Paxos acceptor state: per key, the highest ballot promised, the proposal
//! accepted and not yet seen committed, and the ballot of the last commit seen. It lives in an
//! engine shard of its own (`<data-dir>/paxos-<i>/`, always synced: a promise or an acceptance
//! is durable before it is answered), one record per key, expiring after the tombstone grace
//! (a round left that long is moot: its proposal was committed or superseded).
//!
//! Record value: `u8 format (1) | u8 flags (bit 0 promised, bit 1 accepted, bit 2 committed)
//! | promised (16) | accepted ballot (16) | committed (16) | u32 version length | version |
//! values`, ballots as `time u64 | node u64`, little-endian.

use std::path::PathBuf;
use std::time::Duration;

use dynacore_engine::{KeyLocks, Mutation, Shard, ShardId, ShardOptions};
use dynacore_proto::reply::Ballot;

/// An object's parts (version, values), as replicas send them.
pub type Parts = (Vec<u8>, Vec<u8>);

/// Why an acceptor state could not be read or stored.
#[derive(Debug)]
pub struct PaxosError(pub String);

impl std::fmt::Display for PaxosError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PaxosError {}

/// One key's acceptor state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PaxosState {
    /// The highest ballot promised.
    pub promised: Option<Ballot>,
    /// The proposal accepted and not yet seen committed.
    pub accepted: Option<(Ballot, Parts)>,
    /// The ballot of the last commit seen.
    pub committed: Option<Ballot>,
}

const FORMAT: u8 = 1;

impl PaxosState {
    fn encode(&self) -> Vec<u8> {
        let ballot = |b: Option<Ballot>, out: &mut Vec<u8>| {
            let b = b.unwrap_or_default();
            out.extend_from_slice(&b.time.to_le_bytes());
            out.extend_from_slice(&b.node.to_le_bytes());
        };
        let (accepted, (version, values)) = match &self.accepted {
            Some((b, parts)) => (Some(*b), (parts.0.as_slice(), parts.1.as_slice())),
            None => (None, (&[][..], &[][..])),
        };
        let mut out = Vec::with_capacity(54 + version.len() + values.len());
        out.push(FORMAT);
        out.push(
            u8::from(self.promised.is_some())
                | u8::from(accepted.is_some()) << 1
                | u8::from(self.committed.is_some()) << 2,
        );
        ballot(self.promised, &mut out);
        ballot(accepted, &mut out);
        ballot(self.committed, &mut out);
        let len = u32::try_from(version.len()).expect("INVARIANT: versions are bounded");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(version);
        out.extend_from_slice(values);
        out
    }

    fn decode(b: &[u8]) -> Option<PaxosState> {
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
        };
        let ballot = |at: usize| -> Option<Ballot> {
            Some(Ballot {
                time: u64_at(at)?,
                node: u64_at(at + 8)?,
            })
        };
        if *b.first()? != FORMAT {
            return None;
        }
        let flags = *b.get(1)?;
        let len = u32::from_le_bytes(b.get(50..54)?.try_into().ok()?) as usize;
        let version = b.get(54..54 + len)?.to_vec();
        let values = b.get(54 + len..)?.to_vec();
        Some(PaxosState {
            promised: if flags & 1 != 0 {
                Some(ballot(2)?)
            } else {
                None
            },
            accepted: if flags & 2 != 0 {
                Some((ballot(18)?, (version, values)))
            } else {
                None
            },
            committed: if flags & 4 != 0 {
                Some(ballot(34)?)
            } else {
                None
            },
        })
    }
}

/// One core's acceptor states (see the module documentation).
#[derive(Debug)]
pub struct PaxosStore {
    shard: Shard,
    locks: KeyLocks,
    /// How long a key's state is kept after its last change.
    keep: Duration,
}

impl PaxosStore {
    /// Opens (or creates) the store in `dir`, keeping states `keep` after their last change.
    ///
    /// # Errors
    /// The engine's error.
    pub async fn open(
        dir: PathBuf,
        shard_id: ShardId,
        keep: Duration,
    ) -> Result<PaxosStore, dynacore_engine::Error> {
        let mut options = ShardOptions::new(dir, shard_id);
        options.memtable_bytes_max = 8 << 20;
        options.wal_segment_bytes = 8 << 20;
        options.block_cache_bytes = 8 << 20;
        // Records hold acceptor states, not objects.
        options.retire_actor_epochs = false;
        Ok(PaxosStore {
            shard: Shard::open(options).await?,
            locks: KeyLocks::default(),
            keep,
        })
    }

    async fn load(&self, key: &[u8]) -> Result<PaxosState, PaxosError> {
        let record = self
            .shard
            .get(key)
            .await
            .map_err(|e| PaxosError(format!("reading a paxos state: {e}")))?;
        match record {
            None => Ok(PaxosState::default()),
            Some(record) => PaxosState::decode(record.value.as_deref().unwrap_or_default())
                .ok_or_else(|| PaxosError("a paxos state does not decode".into())),
        }
    }

    async fn save(&self, key: &[u8], state: &PaxosState) -> Result<(), PaxosError> {
        let value = state.encode();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let expiry =
            now_ms.saturating_add(u64::try_from(self.keep.as_millis()).unwrap_or(u64::MAX));
        self.shard
            .write(Mutation {
                key,
                value: Some(&value),
                write_ts_ms: None,
                expiry_ms: Some(expiry),
                version: &[],
            })
            .await
            .map(drop)
            .map_err(|e| PaxosError(format!("storing a paxos state: {e}")))
    }

    /// Prepare: promises `ballot` if it is above every ballot promised. Returns whether it did
    /// and the state (after the promise).
    ///
    /// # Errors
    /// [`PaxosError`] when the state cannot be read or stored.
    pub async fn prepare(
        &self,
        key: &[u8],
        ballot: Ballot,
    ) -> Result<(bool, PaxosState), PaxosError> {
        let _held = self.locks.lock(key).await;
        let mut state = self.load(key).await?;
        if state.promised.is_some_and(|p| p >= ballot) {
            return Ok((false, state));
        }
        state.promised = Some(ballot);
        self.save(key, &state).await?;
        Ok((true, state))
    }

    /// Propose: accepts `parts` at `ballot` unless a higher ballot was promised. Returns
    /// whether it did, and the highest ballot promised.
    ///
    /// # Errors
    /// As [`PaxosStore::prepare`].
    pub async fn propose(
        &self,
        key: &[u8],
        ballot: Ballot,
        parts: Parts,
    ) -> Result<(bool, Ballot), PaxosError> {
        let _held = self.locks.lock(key).await;
        let mut state = self.load(key).await?;
        if let Some(p) = state.promised.filter(|&p| p > ballot) {
            return Ok((false, p));
        }
        state.promised = Some(ballot);
        state.accepted = Some((ballot, parts));
        self.save(key, &state).await?;
        Ok((true, ballot))
    }

    /// Commit seen at `ballot` (the caller applied its object to the key's copy first): the
    /// proposal accepted at or below it is done.
    ///
    /// # Errors
    /// As [`PaxosStore::prepare`].
    pub async fn committed(&self, key: &[u8], ballot: Ballot) -> Result<(), PaxosError> {
        let _held = self.locks.lock(key).await;
        let mut state = self.load(key).await?;
        if state.committed.is_some_and(|c| c >= ballot) {
            return Ok(());
        }
        state.committed = Some(ballot);
        if state.accepted.as_ref().is_some_and(|(a, _)| *a <= ballot) {
            state.accepted = None;
        }
        self.save(key, &state).await
    }

    /// Closes the store (its log synced).
    ///
    /// # Errors
    /// The engine's error.
    pub async fn close(&self) -> Result<(), dynacore_engine::Error> {
        self.shard.clone().close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(time: u64, node: u64) -> Ballot {
        Ballot { time, node }
    }

    #[test]
    fn states_encode_and_decode() {
        let s = PaxosState {
            promised: Some(b(9, 1)),
            accepted: Some((b(8, 2), (vec![1, 2], vec![3]))),
            committed: Some(b(7, 3)),
        };
        assert_eq!(PaxosState::decode(&s.encode()), Some(s.clone()));
        assert_eq!(
            PaxosState::decode(&PaxosState::default().encode()),
            Some(PaxosState::default())
        );
        let e = s.encode();
        for cut in 0..53 {
            assert_eq!(PaxosState::decode(&e[..cut]), None, "cut at {cut}");
        }
    }

    #[test]
    fn promises_and_acceptances_follow_the_ballots_and_survive_a_reopen() {
        let dir = tempfile::Builder::new()
            .prefix("dynacore-paxos-")
            .tempdir_in(crate::test_util::disk_tmp())
            .expect("dir");
        let path = dir.path().join("paxos-0");
        crate::test_util::on_test_executor(move || async move {
            let keep = Duration::from_secs(3600);
            let store = PaxosStore::open(path.clone(), ShardId(0), keep)
                .await
                .expect("open");
            assert!(store.prepare(b"k", b(10, 1)).await.expect("prepare").0);
            assert!(
                !store.prepare(b"k", b(9, 2)).await.expect("prepare").0,
                "lower"
            );
            assert!(
                !store.prepare(b"k", b(10, 1)).await.expect("prepare").0,
                "equal"
            );
            // A proposal below the promise is refused, at or above it accepted.
            let parts = (vec![1], vec![2]);
            assert_eq!(
                store
                    .propose(b"k", b(9, 9), parts.clone())
                    .await
                    .expect("propose"),
                (false, b(10, 1))
            );
            assert!(
                store
                    .propose(b"k", b(10, 1), parts.clone())
                    .await
                    .expect("propose")
                    .0
            );
            store.close().await.expect("close");
            drop(store);
            let store = PaxosStore::open(path, ShardId(0), keep)
                .await
                .expect("reopen");
            let (promised, state) = store.prepare(b"k", b(11, 2)).await.expect("prepare");
            assert!(promised);
            assert_eq!(state.accepted, Some((b(10, 1), parts)), "durable");
            store.committed(b"k", b(10, 1)).await.expect("commit");
            let (_, state) = store.prepare(b"k", b(12, 2)).await.expect("prepare");
            assert_eq!(state.accepted, None, "done once committed");
            assert_eq!(state.committed, Some(b(10, 1)));
            store.close().await.expect("close");
        });
    }
}
