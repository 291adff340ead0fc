//! Versioned objects: a key's siblings under one dotted version vector set, stored as one
//! record, and the per-key read-modify-write that keeps dots unique.
//!
//! Storage layout of an object in a record:
//! * `version` blob: the [`DvvSet`] encoding whose values are sibling metadata
//!   `u8 flags (bit 0 tombstone, bit 1 expiry) | u64 hlc | [u64 expiry_ms] | u32 value_len`;
//! * `value`: the siblings' bytes concatenated in the blob's value order, or `None` when every
//!   sibling is a tombstone (the engine then treats the key as deleted while keeping its
//!   causal context);
//! * `expiry_ms`: the latest sibling expiry when every sibling expires, else none;
//! * `write_ts_ms`: the physical part of the newest sibling's HLC timestamp.
//!
//! INVARIANT: a read-modify-write of one key never interleaves with another on the same shard
//! (a per-key lock is held from the read to the durable write), so the dot a coordinator mints
//! is above every dot of that key it ever minted.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::error::{Error, Result};
use crate::record::{Record, VALUE_BYTES_MAX};
use crate::version::{DvvError, DvvSet, HlcTimestamp};

/// One sibling: a value or a tombstone, stamped by the coordinator's clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sibling {
    /// The value, or `None` for a delete.
    pub value: Option<Vec<u8>>,
    /// When the coordinator wrote it (orders concurrent siblings for last-writer-wins).
    pub hlc: HlcTimestamp,
    /// When it expires, in ms since the epoch.
    pub expiry_ms: Option<u64>,
}

impl Sibling {
    /// Whether it is a live value at `now_ms`.
    #[must_use]
    pub fn is_live_at(&self, now_ms: u64) -> bool {
        self.value.is_some() && self.expiry_ms.is_none_or(|e| e > now_ms)
    }
}

/// A key's versioned object.
pub type Object = DvvSet<Sibling>;

const FLAG_TOMBSTONE: u8 = 1;
const FLAG_EXPIRY: u8 = 2;

/// What a record stores for an object.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub value: Option<Vec<u8>>,
    pub version: Vec<u8>,
    pub expiry_ms: Option<u64>,
    pub write_ts_ms: u64,
}

/// Encodes an object for storage.
///
/// # Errors
/// [`crate::LimitError::ValueTooLarge`] when the siblings together exceed the value limit.
pub(crate) fn encode(obj: &Object) -> Result<Encoded> {
    let mut values = Vec::new();
    let mut version = Vec::new();
    obj.encode_into(&mut version, |s, out| {
        let mut flags = 0;
        if s.value.is_none() {
            flags |= FLAG_TOMBSTONE;
        }
        if s.expiry_ms.is_some() {
            flags |= FLAG_EXPIRY;
        }
        out.push(flags);
        out.extend_from_slice(&s.hlc.0.to_le_bytes());
        if let Some(e) = s.expiry_ms {
            out.extend_from_slice(&e.to_le_bytes());
        }
        let bytes = s.value.as_deref().unwrap_or_default();
        // Lengths are bounded below: the total is checked against the value limit.
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        values.extend_from_slice(bytes);
    });
    if values.len() > VALUE_BYTES_MAX {
        return Err(crate::LimitError::ValueTooLarge {
            len: values.len(),
            max: VALUE_BYTES_MAX,
        }
        .into());
    }
    let live = obj.values().any(|s| s.value.is_some());
    let expiry_ms = obj
        .values()
        .map(|s| s.expiry_ms)
        .try_fold(0u64, |acc, e| e.map(|e| acc.max(e)));
    let write_ts_ms = obj.values().map(|s| s.hlc.physical_ms()).max().unwrap_or(0);
    Ok(Encoded {
        value: live.then_some(values),
        version,
        expiry_ms,
        write_ts_ms,
    })
}

/// The version blob of a stored object with its retired actor epochs dropped
/// ([`DvvSet::retire_epochs`]), or `None` when it has none (or is not an object's blob). The
/// value bytes stay as they are: a retired entry holds no value.
pub(crate) fn retire_epochs(version: &[u8]) -> Option<Vec<u8>> {
    let set = DvvSet::decode(version, |b| Ok(b.to_vec())).ok()?;
    let retired = set.retire_epochs()?;
    let mut out = Vec::with_capacity(version.len());
    retired.encode_into(&mut out, |meta, out| out.extend_from_slice(meta));
    Some(out)
}

/// An object as two byte strings, as a record stores it: its version blob (the causal context
/// and each sibling's metadata) and its siblings' values concatenated. This is also how
/// replicas send objects to each other.
///
/// # Errors
/// [`crate::LimitError::ValueTooLarge`] when the siblings together exceed the value limit.
pub fn to_parts(obj: &Object) -> Result<(Vec<u8>, Vec<u8>)> {
    let e = encode(obj)?;
    Ok((e.version, e.value.unwrap_or_default()))
}

/// The object [`to_parts`] made, checked (bytes from a peer or the disk are not trusted).
///
/// # Errors
/// [`Error::Version`] if the parts are malformed or do not agree.
pub fn from_parts(version: &[u8], values: &[u8]) -> Result<Object> {
    let obj = decode_parts(version, values)?;
    obj.check().map_err(Error::Version)?;
    Ok(obj)
}

/// Decodes the object a record stores.
///
/// # Errors
/// [`DvvError::Malformed`] (as [`Error::Version`]) if the blob and value do not agree.
pub fn decode(record: &Record) -> Result<Object> {
    decode_parts(&record.version, record.value.as_deref().unwrap_or_default())
}

fn decode_parts(version: &[u8], values: &[u8]) -> Result<Object> {
    let mut at = 0usize;
    let malformed = |why| Error::Version(DvvError::Malformed(why));
    let obj = Object::decode(version, |meta| {
        let flags = *meta.first().ok_or(DvvError::Malformed("empty sibling"))?;
        let word = |i: usize| -> std::result::Result<[u8; 8], DvvError> {
            meta.get(i..i + 8)
                .and_then(|b| b.try_into().ok())
                .ok_or(DvvError::Malformed("sibling truncated"))
        };
        let hlc = HlcTimestamp(u64::from_le_bytes(word(1)?));
        let (expiry_ms, len_at) = if flags & FLAG_EXPIRY != 0 {
            (Some(u64::from_le_bytes(word(9)?)), 17)
        } else {
            (None, 9)
        };
        let len: [u8; 4] = meta
            .get(len_at..len_at + 4)
            .and_then(|b| b.try_into().ok())
            .ok_or(DvvError::Malformed("sibling truncated"))?;
        if meta.len() != len_at + 4 || flags & !(FLAG_TOMBSTONE | FLAG_EXPIRY) != 0 {
            return Err(DvvError::Malformed("sibling metadata"));
        }
        let len = u32::from_le_bytes(len) as usize;
        let bytes = values
            .get(at..at + len)
            .ok_or(DvvError::Malformed("sibling runs past the value"))?;
        at += len;
        let tombstone = flags & FLAG_TOMBSTONE != 0;
        if tombstone && len != 0 {
            return Err(DvvError::Malformed("tombstone with bytes"));
        }
        Ok(Sibling {
            value: (!tombstone).then(|| bytes.to_vec()),
            hlc,
            expiry_ms,
        })
    })?;
    if at != values.len() {
        return Err(malformed("value bytes left over"));
    }
    Ok(obj)
}

/// Keys with a read-modify-write in progress, and who waits for them.
#[derive(Debug, Default)]
pub struct KeyLocks {
    held: RefCell<HashMap<Vec<u8>, Vec<Waker>>>,
}

impl KeyLocks {
    /// Waits until no one else holds `key`, then holds it until the guard drops.
    pub fn lock<'a>(&'a self, key: &[u8]) -> LockKey<'a> {
        LockKey {
            locks: self,
            key: key.to_vec(),
        }
    }
}

/// The future of [`KeyLocks::lock`].
#[derive(Debug)]
pub struct LockKey<'a> {
    locks: &'a KeyLocks,
    key: Vec<u8>,
}

impl<'a> Future for LockKey<'a> {
    type Output = KeyGuard<'a>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<KeyGuard<'a>> {
        let mut held = self.locks.held.borrow_mut();
        if let Some(waiters) = held.get_mut(&self.key) {
            waiters.push(cx.waker().clone());
            return Poll::Pending;
        }
        held.insert(self.key.clone(), Vec::new());
        drop(held);
        Poll::Ready(KeyGuard {
            locks: self.locks,
            key: std::mem::take(&mut self.key),
        })
    }
}

/// Holds a key's lock; releasing wakes the waiters.
#[derive(Debug)]
pub struct KeyGuard<'a> {
    locks: &'a KeyLocks,
    key: Vec<u8>,
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        let waiters = self.locks.held.borrow_mut().remove(&self.key);
        for w in waiters.into_iter().flatten() {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::{ActorId, VersionVector};
    use proptest::prelude::*;

    fn sibling(value: Option<Vec<u8>>, hlc: u64, expiry_ms: Option<u64>) -> Sibling {
        Sibling {
            value,
            hlc: HlcTimestamp(hlc),
            expiry_ms,
        }
    }

    proptest! {
        /// An object's parts give the same object back, and any bytes given as parts are an
        /// object or a typed error, never a panic (parts come from peers).
        #[test]
        fn parts_round_trip_and_garbage_is_an_error(
            writes in prop::collection::vec((0u64..4, prop::option::of(prop::collection::vec(any::<u8>(), 0..40)), any::<u64>(), prop::option::of(any::<u64>())), 1..8),
            version_junk in prop::collection::vec(any::<u8>(), 0..64),
            values_junk in prop::collection::vec(any::<u8>(), 0..64),
            flip in any::<prop::sample::Index>(),
        ) {
            let mut obj: Option<Object> = None;
            for (actor, value, hlc, expiry) in writes {
                let ctx = obj.as_ref().map_or_else(VersionVector::new, Object::join);
                let written = Object::update(&ctx, sibling(value, hlc, expiry), obj.as_ref(), ActorId::new(actor + 1, 0)).expect("update");
                obj = Some(written);
            }
            let obj = obj.expect("written");
            let (version, values) = to_parts(&obj).expect("parts");
            let back = from_parts(&version, &values).expect("round trip");
            prop_assert_eq!(&back, &obj);
            let _ = from_parts(&version_junk, &values_junk);
            let mut damaged = version.clone();
            let i = flip.index(damaged.len());
            damaged[i] ^= 0x5a;
            let _ = from_parts(&damaged, &values);
        }
    }
}
