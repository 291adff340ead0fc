//! The cluster's keyed MAC: HMAC-SHA256 under the cluster secret, over internode frames
//! (requests and answers) and gossip datagrams, so that only holders of the secret speak as a
//! node. Each use has its own domain, so a tag made for one cannot pass for another.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of a tag.
pub const TAG_BYTES: usize = 32;

/// The shortest secret accepted, in bytes.
pub const SECRET_BYTES_MIN: usize = 32;

/// What a tag is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    /// A request frame from a node.
    Request,
    /// An answer frame to a node.
    Answer,
    /// A gossip datagram.
    Gossip,
}

impl Domain {
    fn label(self) -> &'static [u8] {
        match self {
            Domain::Request => b"dynacore request v1\0",
            Domain::Answer => b"dynacore answer v1\0",
            Domain::Gossip => b"dynacore gossip v1\0",
        }
    }
}

/// A secret shorter than [`SECRET_BYTES_MIN`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShortSecret {
    /// Its length.
    pub len: usize,
}

impl std::fmt::Display for ShortSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the cluster secret holds {} bytes; at least {SECRET_BYTES_MIN} are needed \
             (for example 64 hex digits, as `openssl rand -hex 32` prints)",
            self.len
        )
    }
}

impl std::error::Error for ShortSecret {}

/// The cluster secret, ready to tag and check. Cheap to clone; never printed.
#[derive(Clone)]
pub struct ClusterKey {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// The key of `secret` (the secret file's content, surrounding whitespace already removed).
    ///
    /// # Errors
    /// [`ShortSecret`] below [`SECRET_BYTES_MIN`] bytes.
    pub fn new(secret: &[u8]) -> Result<ClusterKey, ShortSecret> {
        if secret.len() < SECRET_BYTES_MIN {
            return Err(ShortSecret { len: secret.len() });
        }
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
            .map_err(|_| ShortSecret { len: secret.len() })?;
        Ok(ClusterKey { mac })
    }

    /// The tag of `data` for `domain`.
    #[must_use]
    pub fn tag(&self, domain: Domain, data: &[u8]) -> [u8; TAG_BYTES] {
        let mut mac = self.mac.clone();
        mac.update(domain.label());
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` is `data`'s tag for `domain` (compared in constant time).
    #[must_use]
    pub fn verify(&self, domain: Domain, data: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.mac.clone();
        mac.update(domain.label());
        mac.update(data);
        mac.verify_slice(tag).is_ok()
    }

    /// `data` with its tag appended (a gossip datagram).
    #[must_use]
    pub fn seal(&self, domain: Domain, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + TAG_BYTES);
        out.extend_from_slice(data);
        out.extend_from_slice(&self.tag(domain, data));
        out
    }

    /// The data of a [`ClusterKey::seal`]ed message, or `None` when its tag is not this key's.
    #[must_use]
    pub fn open<'a>(&self, domain: Domain, sealed: &'a [u8]) -> Option<&'a [u8]> {
        let at = sealed.len().checked_sub(TAG_BYTES)?;
        let (data, tag) = sealed.split_at(at);
        self.verify(domain, data, tag).then_some(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_check_only_with_the_same_secret_and_domain() {
        let a = ClusterKey::new(&[7u8; 32]).expect("key");
        let b = ClusterKey::new(&[8u8; 32]).expect("key");
        let sealed = a.seal(Domain::Gossip, b"ping");
        assert_eq!(a.open(Domain::Gossip, &sealed), Some(&b"ping"[..]));
        assert_eq!(b.open(Domain::Gossip, &sealed), None, "another secret");
        assert_eq!(a.open(Domain::Request, &sealed), None, "another domain");
        let mut flipped = sealed.clone();
        flipped[0] ^= 1;
        assert_eq!(a.open(Domain::Gossip, &flipped), None, "changed data");
        assert_eq!(a.open(Domain::Gossip, &sealed[..10]), None, "cut");
        assert_eq!(a.open(Domain::Gossip, b""), None);
        assert_eq!(
            ClusterKey::new(&[1u8; 31]).unwrap_err(),
            ShortSecret { len: 31 }
        );
        assert_eq!(format!("{a:?}"), "ClusterKey(..)");
    }
}
