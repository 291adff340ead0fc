//! A client's scan of the keyspace (Redis `SCAN`, `KEYS`, `DBSIZE`): the ring walked in token
//! order, one vnode range at a time, each range's keys read from R of its replicas and merged.
//!
//! The cursor is a token: the scan has returned every key whose token is below it. Keys are
//! read in `(token, key)` order (the order a shard keeps them), so a page cut short by its
//! bound ends at a token boundary: the keys of the last token are left for the next page, which
//! starts at that token — unless every key of the page has that one token (as many 64-bit hash
//! collisions as the page holds), when they are all returned and the next page starts after it.
//!
//! What a scan promises is Redis's promise: a key live from the first page to the last is
//! returned (at least once); a key written or deleted meanwhile may or may not be. Reading R
//! replicas of each range, as a read does, a scan sees every write acknowledged at W when
//! R + W > N. A key is returned when the merge of the copies read holds a live newest value (not
//! deleted, not expired).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dynacore_engine::{object, Object};
use dynacore_proto::reply;
use dynacore_proto::ring::{NodeId, Token};
use dynacore_proto::{build, Quorum};

use super::quorum::R_DEFAULT;
use super::replicas::{read_unavailable, replicas_needed};
use crate::core::{Core, ShardOp, TreeAnswer};
use crate::storage::hints::now_ms;
use crate::storage::replica::StoreError;

/// Bytes of copies a replica sends for one page (values travel with their keys).
const PAGE_BYTES: u32 = 1 << 20;

/// Vnode ranges one page may walk through before it answers, found keys or not (Redis's `SCAN`
/// may answer an empty page with a cursor to go on from).
const RANGES_PER_PAGE: usize = 64;

/// A replica's copies of a piece's keys, in `(token, key)` order, and whether a bound cut
/// them short.
type Copies = (Vec<(Vec<u8>, Object)>, bool);

/// A page of a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// Live keys, in token order.
    pub keys: Vec<Vec<u8>>,
    /// Where the next page starts; 0 when the whole ring was scanned.
    pub next: u64,
}

/// One page of keys from `cursor` on (0: the start), about `count` of them, read from `r`
/// replicas of each range (`Quorum::Default`: the node's read default).
///
/// # Errors
/// [`StoreError::Quorum`] when fewer than R replicas of a range answered in time;
/// [`StoreError::BadRequest`] for a bad `r`.
pub async fn scan(
    core: &Core,
    cursor: u64,
    count: usize,
    r: Quorum,
    timeout: Duration,
) -> Result<Page, StoreError> {
    let deadline = Instant::now() + timeout;
    let count = count.max(1);
    let cluster = core.cluster();
    let needed = usize::from(replicas_needed(r, &cluster, R_DEFAULT)?);
    let mut keys = Vec::new();
    let mut from = cursor;
    for _ in 0..RANGES_PER_PAGE {
        // The piece of the ring from `from` to the end of the vnode range holding it.
        let end = cluster
            .ring
            .vnodes()
            .iter()
            .map(|v| v.token.0)
            .find(|&t| t >= from)
            .unwrap_or(u64::MAX);
        let replicas: Vec<NodeId> = cluster
            .read_replicas(Token(end))
            .into_iter()
            .filter(|&n| n == cluster.own || cluster.is_up(n))
            .collect();
        if replicas.len() < needed {
            return Err(read_unavailable(
                u8::try_from(replicas.len()).unwrap_or(u8::MAX),
                u8::try_from(needed).unwrap_or(u8::MAX),
            ));
        }
        let want = u32::try_from(count - keys.len().min(count - 1)).unwrap_or(u32::MAX);
        let mut copies: Vec<Copies> = Vec::with_capacity(needed);
        // The local copy first, then the others in ring order, until R answered.
        let mut order = replicas.clone();
        order.sort_by_key(|&n| n != cluster.own);
        for node in order {
            if copies.len() == needed {
                break;
            }
            match range_at(core, node, (from, end), want, deadline).await {
                Ok(page) => copies.push(page),
                Err(e) => tracing::debug!(%node, error = %e, "a replica's scan failed"),
            }
        }
        if copies.len() < needed {
            return Err(read_unavailable(
                u8::try_from(copies.len()).unwrap_or(u8::MAX),
                u8::try_from(needed).unwrap_or(u8::MAX),
            ));
        }
        let (found, next) = merge_pages(copies, end);
        keys.extend(found);
        match next {
            Some(t) => {
                assert!(t > from, "INVARIANT: a scan moves forward ({from} to {t})");
                from = t;
            }
            None if end == u64::MAX => return Ok(Page { keys, next: 0 }),
            None => from = end + 1,
        }
        if keys.len() >= count || Instant::now() >= deadline {
            break;
        }
    }
    Ok(Page { keys, next: from })
}

/// The live keys of replicas' pages of one piece ending at `end`, and where the next page
/// starts (`None`: the piece is done).
fn merge_pages(pages: Vec<Copies>, end: u64) -> (Vec<Vec<u8>>, Option<u64>) {
    // Keys below the lowest last token of a page cut short are complete in every page.
    let bound = pages
        .iter()
        .filter(|(entries, more)| *more && !entries.is_empty())
        .filter_map(|(entries, _)| entries.last().map(|(k, _)| Token::of(k).0))
        .min();
    let mut merged: BTreeMap<(u64, Vec<u8>), Object> = BTreeMap::new();
    for (entries, _) in pages {
        for (key, copy) in entries {
            let token = Token::of(&key).0;
            merged
                .entry((token, key))
                .and_modify(|o| *o = o.sync(&copy))
                .or_insert(copy);
        }
    }
    let first = merged.keys().next().map(|(t, _)| *t);
    let (cut, next) = match bound {
        None => (None, None),
        // Every key has the one token: all of them, and the next page starts after it.
        Some(b) if first == Some(b) && b == end => (None, None),
        Some(b) if first == Some(b) => (Some(b + 1), Some(b + 1)),
        Some(b) => (Some(b), Some(b)),
    };
    let now = now_ms();
    let keys = merged
        .into_iter()
        .filter(|((t, _), _)| cut.is_none_or(|c| *t < c))
        .filter(|(_, o)| {
            o.values()
                .max_by_key(|s| s.hlc)
                .is_some_and(|s| s.is_live_at(now))
        })
        .map(|((_, k), _)| k)
        .collect();
    (keys, next)
}

/// `node`'s copies of the keys of `start..=end`, at most `max_keys`, and whether it had more.
async fn range_at(
    core: &Core,
    node: NodeId,
    (start, end): (u64, u64),
    max_keys: u32,
    deadline: Instant,
) -> Result<Copies, StoreError> {
    let timeout = deadline.saturating_duration_since(Instant::now());
    let cluster = core.cluster();
    if node == cluster.own {
        let op = ShardOp::StreamRange {
            start,
            end,
            after: Vec::new(),
            max_keys: max_keys as usize,
            max_bytes: PAGE_BYTES as usize,
        };
        return match core.execute(op, timeout).await.into_tree()? {
            TreeAnswer::Objects(objects, more) => Ok((objects, more)),
            _ => Err(StoreError::Internal(
                "a core answered another request".into(),
            )),
        };
    }
    let Some(peer) = cluster.nodes.get(&node).cloned() else {
        return Err(StoreError::Unavailable(format!("node {node} left")));
    };
    let timeout_ms = u32::try_from(timeout.as_millis())
        .unwrap_or(u32::MAX)
        .max(1);
    let request = |id| {
        build::stream_range_for(
            id,
            timeout_ms,
            (start, end),
            &[],
            (max_keys, PAGE_BYTES),
            true,
        )
    };
    let body = core
        .peers()
        .call_once(peer.core_addr(Token(end)), &request, deadline)
        .await
        .map_err(|e| StoreError::Unavailable(format!("scanning {node}: {e}")))?;
    let (entries, more) = reply::stream_range(&body)
        .map_err(|e| StoreError::Unavailable(format!("scanning {node}: {e}")))?;
    let mut objects = Vec::with_capacity(entries.len());
    for e in entries {
        let t = Token::of(&e.key).0;
        if t < start || t > end {
            return Err(StoreError::Internal(format!(
                "{node} sent a key outside the range asked"
            )));
        }
        let copy = object::from_parts(&e.version, &e.values).map_err(|err| {
            StoreError::Internal(format!("{node} sent a copy that does not decode: {err}"))
        })?;
        objects.push((e.key, copy));
    }
    Ok((objects, more))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynacore_engine::version::{ActorId, HlcTimestamp, VersionVector};
    use dynacore_engine::Sibling;

    fn copy(value: Option<&[u8]>, hlc: u64, expiry_ms: Option<u64>) -> Object {
        copy_by(1, value, hlc, expiry_ms)
    }

    /// A copy written by `actor` alone.
    fn copy_by(actor: u64, value: Option<&[u8]>, hlc: u64, expiry_ms: Option<u64>) -> Object {
        let sibling = Sibling {
            value: value.map(<[u8]>::to_vec),
            hlc: HlcTimestamp::from_parts(hlc, 0),
            expiry_ms,
        };
        Object::update(&VersionVector::new(), sibling, None, ActorId::new(actor, 0))
            .expect("update")
    }

    /// `n` keys in `(token, key)` order, each with a live copy.
    fn keys(n: usize) -> Vec<(Vec<u8>, Object)> {
        let mut keys: Vec<_> = (0..n)
            .map(|i| (format!("k{i}").into_bytes(), copy(Some(b"v"), 10, None)))
            .collect();
        keys.sort_by_key(|(k, _)| (Token::of(k), k.clone()));
        keys
    }

    #[test]
    fn a_page_cut_short_ends_at_a_token_both_replicas_covered() {
        let all = keys(20);
        // One replica cut after 10 keys, the other gave all 20: keys below the tenth's token
        // are complete; the tenth is left for the next page, which starts at its token.
        let cut = all[..10].to_vec();
        let bound = Token::of(&all[9].0).0;
        let (found, next) = merge_pages(vec![(cut, true), (all.clone(), false)], u64::MAX);
        assert_eq!(next, Some(bound));
        let want: Vec<Vec<u8>> = all[..9].iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(found, want);
        // Neither cut: the piece is done, every key returned.
        let (found, next) = merge_pages(vec![(all.clone(), false)], u64::MAX);
        assert_eq!((found.len(), next), (20, None));
    }

    #[test]
    fn deleted_and_expired_keys_are_not_listed_and_replicas_merge() {
        let now = now_ms();
        let live = (b"live".to_vec(), copy(Some(b"v"), 10, None));
        let expired = (b"expired".to_vec(), copy(Some(b"v"), 10, Some(now - 1)));
        let deleted = (b"deleted".to_vec(), copy(None, 10, None));
        let mut one = vec![live, expired, deleted.clone()];
        one.sort_by_key(|(k, _)| (Token::of(k), k.clone()));
        // The other replica holds an older concurrent value: the newest (the tombstone) decides.
        let older = (b"deleted".to_vec(), copy_by(2, Some(b"old"), 5, None));
        let (found, next) = merge_pages(vec![(one, false), (vec![older], false)], u64::MAX);
        assert_eq!((found, next), (vec![b"live".to_vec()], None));
    }

    #[test]
    fn keys_of_one_token_filling_a_page_are_all_returned_and_the_scan_moves_on() {
        let key = b"same".to_vec();
        let token = Token::of(&key).0;
        let page = vec![(key.clone(), copy(Some(b"v"), 10, None))];
        let (found, next) = merge_pages(vec![(page.clone(), true)], u64::MAX);
        assert_eq!((found, next), (vec![key.clone()], Some(token + 1)));
        // At the piece's end, the piece is done.
        let (found, next) = merge_pages(vec![(page, true)], token);
        assert_eq!((found, next), (vec![key], None));
    }
}
