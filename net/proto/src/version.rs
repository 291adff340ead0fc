//! The internode protocol's version, for rolling upgrades: every node announces the version it
//! speaks and the oldest it works with (in its gossip metadata and in every request it sends),
//! and refuses a peer it cannot work with, saying why, instead of misreading it.
//!
//! Two nodes work together when each speaks at least the oldest version the other works with.
//! A release that changes what nodes exchange in a way older nodes would misread raises
//! [`PROTOCOL_VERSION`]; one that stops reading what older nodes send raises [`PROTOCOL_MIN`].
//! A rolling upgrade goes one release at a time, so that every pair of versions in the cluster
//! works together. Nodes that predate versions announce none: they count as version 1.
//!
//! | version | what changed |
//! | --- | --- |
//! | 1 | (nodes before versions were announced) |
//! | 2 | `PutRequest.ttl_ms`, `GetResponse.expiry_ms`, `StreamRangeRequest.scan`, node names in the ring book (only when a node has one), versions announced |

/// The internode protocol this build speaks.
pub const PROTOCOL_VERSION: u16 = 2;

/// The oldest internode protocol this build works with.
pub const PROTOCOL_MIN: u16 = 1;

/// A node's protocol: the version it speaks and the oldest it works with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Protocol {
    /// The version it speaks.
    pub version: u16,
    /// The oldest version it works with.
    pub min: u16,
}

impl Protocol {
    /// What a peer that announces nothing (one that predates versions) speaks.
    pub const UNANNOUNCED: Protocol = Protocol { version: 1, min: 1 };

    /// What a peer announced (`0` for a field it does not know: [`Protocol::UNANNOUNCED`]).
    #[must_use]
    pub fn announced(version: u16, min: u16) -> Protocol {
        if version == 0 {
            Protocol::UNANNOUNCED
        } else {
            Protocol {
                version,
                min: min.max(1),
            }
        }
    }

    /// Whether a node speaking `self` works with a peer speaking `peer`.
    #[must_use]
    pub fn works_with(self, peer: Protocol) -> bool {
        self.version >= peer.min && peer.version >= self.min
    }

    /// Why a node speaking `self` refuses `peer` (who the peer is goes before it).
    #[must_use]
    pub fn refusal(self, peer: Protocol) -> String {
        let advice = if peer.version > self.version {
            "upgrade this node (a rolling upgrade goes one release at a time)"
        } else {
            "upgrade the peer, or stop it (a rolling upgrade goes one release at a time)"
        };
        format!(
            "speaks internode protocol {} (works with {} and later); this node speaks {} (works \
             with {} and later): they cannot work together; {advice}",
            peer.version, peer.min, self.version, self.min
        )
    }
}

/// The protocol this process speaks: [`PROTOCOL_VERSION`] and [`PROTOCOL_MIN`], or in a debug
/// build the `version:min` that `DYNACORE_TEST_PROTOCOL` gives (tests play a newer node).
#[must_use]
pub fn own() -> Protocol {
    static OWN: std::sync::OnceLock<Protocol> = std::sync::OnceLock::new();
    *OWN.get_or_init(|| {
        let built = Protocol {
            version: PROTOCOL_VERSION,
            min: PROTOCOL_MIN,
        };
        if !cfg!(debug_assertions) {
            return built;
        }
        std::env::var("DYNACORE_TEST_PROTOCOL")
            .ok()
            .and_then(|v| {
                let (version, min) = v.split_once(':')?;
                Some(Protocol {
                    version: version.parse().ok()?,
                    min: min.parse().ok()?,
                })
            })
            .unwrap_or(built)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_work_together_when_each_reaches_the_others_oldest() {
        let p = |version, min| Protocol { version, min };
        assert!(p(2, 1).works_with(Protocol::UNANNOUNCED));
        assert!(Protocol::UNANNOUNCED.works_with(p(2, 1)));
        assert!(p(3, 2).works_with(p(2, 1)));
        assert!(!p(3, 3).works_with(p(2, 1)), "the peer is too old");
        assert!(
            !p(2, 1).works_with(p(3, 3)),
            "the peer no longer works with us"
        );
        assert_eq!(Protocol::announced(0, 0), Protocol::UNANNOUNCED);
        assert_eq!(Protocol::announced(3, 0), p(3, 1));
        assert!(p(2, 1)
            .refusal(p(3, 3))
            .contains("speaks internode protocol 3 (works with 3 and later); this node speaks 2"));
    }
}
