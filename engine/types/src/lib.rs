//! `dynacore-types`: what the storage engine (`dynacore-engine`) and the wire protocol
//! (`dynacore-proto`) must agree on, and nothing else — so that neither depends on the other.
//!
//! * [`Token`] — a key's position on the ring, `xxh3_64(key)`. The engine orders keys by
//!   `(token, key)` (so a vnode's range is one contiguous range of a shard); the ring places
//!   keys by it; the client routes by it. One hash, defined once.
//! * The hard limits of a key, a value and a version blob. A client refuses what a node would,
//!   before sending it.
#![forbid(unsafe_code)]

/// The largest key, in bytes (keys hold at least one byte).
pub const KEY_BYTES_MAX: usize = 256;
/// The largest value, in bytes.
pub const VALUE_BYTES_MAX: usize = 10 * 1024 * 1024;
/// The largest version blob, in bytes.
pub const VERSION_BYTES_MAX: usize = 64 * 1024;

/// A key's position on the ring: `xxh3_64(key)`. Keys are ordered by `(token, key)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Token(pub u64);

impl Token {
    /// The token of `key`.
    #[must_use]
    pub fn of(key: &[u8]) -> Token {
        Token(xxhash_rust::xxh3::xxh3_64(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_the_keys_xxh3_and_stable() {
        // Pinned: every node and client must place keys alike, across versions.
        assert_eq!(Token::of(b""), Token(0x2d06_8005_38d3_94c2));
        assert_eq!(Token::of(b"user:1"), Token::of(b"user:1"));
        assert_ne!(Token::of(b"user:1"), Token::of(b"user:2"));
    }
}
