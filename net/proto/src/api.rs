//! The API's vocabulary, shared by every front end (binary, HTTP), the client SDK and the
//! coordinator: quorums, read repair, conflict presentation, versions and error codes, with their
//! wire forms.

use std::fmt::{self, Write as _};

use crate::fb;

/// How many replicas a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quorum {
    /// The server's default.
    Default,
    /// Exactly this many (1..=255; checked against RF by the coordinator).
    Count(u8),
    /// A majority.
    Quorum,
    /// Every replica.
    All,
}

impl Quorum {
    /// The wire form of this quorum (`None`: the server's default), checked against the
    /// replication factor `rf` first. `name` (`"w"` or `"r"`) is for the message.
    ///
    /// # Errors
    /// A count outside `1..=rf`, with the reason.
    pub fn to_wire(self, rf: u8, name: &str) -> Result<Option<fb::Quorum>, String> {
        Ok(match self {
            Quorum::Default => None,
            Quorum::Quorum => Some(fb::Quorum::new(fb::QuorumKind::Quorum, 0)),
            Quorum::All => Some(fb::Quorum::new(fb::QuorumKind::All, 0)),
            Quorum::Count(n) if (1..=rf).contains(&n) => {
                Some(fb::Quorum::new(fb::QuorumKind::Count, n))
            }
            Quorum::Count(n) => return Err(out_of_range(name, n, rf)),
        })
    }

    /// The quorum a request's wire field asks for, checked against the replication factor.
    ///
    /// # Errors
    /// A count outside `1..=rf` or an unknown kind, with the reason.
    pub fn from_wire(q: Option<&fb::Quorum>, rf: u8, name: &str) -> Result<Quorum, String> {
        let Some(q) = q else {
            return Ok(Quorum::Default);
        };
        match q.kind() {
            fb::QuorumKind::Default => Ok(Quorum::Default),
            fb::QuorumKind::Quorum => Ok(Quorum::Quorum),
            fb::QuorumKind::All => Ok(Quorum::All),
            fb::QuorumKind::Count if (1..=rf).contains(&q.count()) => Ok(Quorum::Count(q.count())),
            fb::QuorumKind::Count => Err(out_of_range(name, q.count(), rf)),
            other => Err(format!("unknown {name} kind {}", other.0)),
        }
    }
}

fn out_of_range(name: &str, n: u8, rf: u8) -> String {
    format!("{name}={n} is outside 1..={rf} (the replication factor)")
}

/// Read-repair choice of a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadRepair {
    /// The server's default (background).
    Default,
    /// None.
    Off,
    /// In the background.
    Background,
    /// Before the reply.
    Blocking,
}

impl ReadRepair {
    /// The wire form.
    #[must_use]
    pub fn to_wire(self) -> fb::ReadRepair {
        match self {
            ReadRepair::Default => fb::ReadRepair::Default,
            ReadRepair::Off => fb::ReadRepair::Off,
            ReadRepair::Background => fb::ReadRepair::Background,
            ReadRepair::Blocking => fb::ReadRepair::Blocking,
        }
    }

    /// From the wire form (an unknown value is the default).
    #[must_use]
    pub fn from_wire(r: fb::ReadRepair) -> ReadRepair {
        match r {
            fb::ReadRepair::Off => ReadRepair::Off,
            fb::ReadRepair::Blocking => ReadRepair::Blocking,
            fb::ReadRepair::Background => ReadRepair::Background,
            _ => ReadRepair::Default,
        }
    }
}

/// A write's condition on whether its key holds a live value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyCondition {
    /// None.
    #[default]
    None,
    /// Only if the key holds no live value (absent, deleted or expired): Redis SET NX.
    Absent,
    /// Only if it holds one: Redis SET XX.
    Present,
}

impl KeyCondition {
    /// The wire form.
    #[must_use]
    pub fn to_wire(self) -> fb::KeyCondition {
        match self {
            KeyCondition::None => fb::KeyCondition::None,
            KeyCondition::Absent => fb::KeyCondition::Absent,
            KeyCondition::Present => fb::KeyCondition::Present,
        }
    }

    /// From the wire form (`None` for an unknown value).
    ///
    /// # Errors
    /// The value, when it is not one this version knows (refused, never guessed).
    pub fn from_wire(c: fb::KeyCondition) -> Result<KeyCondition, u8> {
        match c {
            fb::KeyCondition::None => Ok(KeyCondition::None),
            fb::KeyCondition::Absent => Ok(KeyCondition::Absent),
            fb::KeyCondition::Present => Ok(KeyCondition::Present),
            other => Err(other.0),
        }
    }
}

/// How a read presents concurrent values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conflicts {
    /// The node's setting.
    Default,
    /// The newest value (last writer wins by HLC timestamp).
    Lww,
    /// Every live concurrent value.
    Siblings,
}

impl Conflicts {
    /// The wire form.
    #[must_use]
    pub fn to_wire(self) -> fb::Conflicts {
        match self {
            Conflicts::Default => fb::Conflicts::Default,
            Conflicts::Lww => fb::Conflicts::Lww,
            Conflicts::Siblings => fb::Conflicts::Siblings,
        }
    }

    /// From the wire form (an unknown value is the default).
    #[must_use]
    pub fn from_wire(c: fb::Conflicts) -> Conflicts {
        match c {
            fb::Conflicts::Lww => Conflicts::Lww,
            fb::Conflicts::Siblings => Conflicts::Siblings,
            _ => Conflicts::Default,
        }
    }
}

/// An opaque version of a value, as a read or write returned it; give it back for a
/// conditional write or as a write's context. Shown (and parsed) as lower-case hex, as the HTTP
/// API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Version(pub Vec<u8>);

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&version_to_hex(&self.0))
    }
}

impl std::str::FromStr for Version {
    type Err = VersionHexError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        version_from_hex(s).map(Version)
    }
}

/// A string that is not a version's hex form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionHexError(pub String);

impl fmt::Display for VersionHexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not a version (hex digits)", self.0)
    }
}

impl std::error::Error for VersionHexError {}

/// A version's bytes as lower-case hex.
#[must_use]
pub fn version_to_hex(version: &[u8]) -> String {
    let mut out = String::with_capacity(version.len() * 2);
    for b in version {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The bytes of a version given as hex.
///
/// # Errors
/// [`VersionHexError`] for anything but an even number of hex digits.
pub fn version_from_hex(hex: &str) -> Result<Vec<u8>, VersionHexError> {
    let bad = || VersionHexError(hex.to_owned());
    if !hex.len().is_multiple_of(2) || !hex.is_ascii() {
        return Err(bad());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| bad()))
        .collect()
}

/// The server's error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The key is empty or longer than 256 bytes.
    InvalidKey,
    /// The value is longer than 10 MiB.
    ValueTooLarge,
    /// The expected version is not the current one.
    ConditionFailed,
    /// The server sheds load.
    Overloaded,
    /// Too few replicas answered (a write's outcome is unknown).
    Unavailable,
    /// The server's deadline passed (a write's outcome is unknown).
    Timeout,
    /// The request does not make sense.
    BadRequest,
    /// The server failed.
    Internal,
    /// A code this side does not know.
    Unknown(u16),
}

impl From<fb::ErrorCode> for ErrorCode {
    fn from(c: fb::ErrorCode) -> Self {
        match c {
            fb::ErrorCode::InvalidKey => ErrorCode::InvalidKey,
            fb::ErrorCode::ValueTooLarge => ErrorCode::ValueTooLarge,
            fb::ErrorCode::ConditionFailed => ErrorCode::ConditionFailed,
            fb::ErrorCode::Overloaded => ErrorCode::Overloaded,
            fb::ErrorCode::Unavailable => ErrorCode::Unavailable,
            fb::ErrorCode::Timeout => ErrorCode::Timeout,
            fb::ErrorCode::BadRequest => ErrorCode::BadRequest,
            fb::ErrorCode::Internal => ErrorCode::Internal,
            other => ErrorCode::Unknown(other.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_round_trip_through_hex_and_bad_hex_is_refused() {
        let v = Version(vec![0x01, 0xab, 0x00, 0xff]);
        assert_eq!(v.to_string(), "01ab00ff");
        assert_eq!("01ab00ff".parse::<Version>(), Ok(v));
        assert_eq!("".parse::<Version>(), Ok(Version(Vec::new())));
        for bad in ["0", "zz", "0é", "01 2"] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn quorums_are_checked_against_the_replication_factor_both_ways() {
        assert_eq!(Quorum::Default.to_wire(3, "w"), Ok(None));
        let two = Quorum::Count(2).to_wire(3, "w").expect("in range");
        assert_eq!(
            Quorum::from_wire(two.as_ref(), 3, "w"),
            Ok(Quorum::Count(2))
        );
        assert!(Quorum::Count(4).to_wire(3, "w").is_err());
        assert!(Quorum::Count(0).to_wire(3, "r").is_err());
        let all = Quorum::All.to_wire(1, "r").expect("always");
        assert_eq!(Quorum::from_wire(all.as_ref(), 1, "r"), Ok(Quorum::All));
        let four = fb::Quorum::new(fb::QuorumKind::Count, 4);
        assert!(Quorum::from_wire(Some(&four), 3, "w").is_err());
        for rr in [
            ReadRepair::Off,
            ReadRepair::Blocking,
            ReadRepair::Background,
        ] {
            assert_eq!(ReadRepair::from_wire(rr.to_wire()), rr);
        }
        for c in [Conflicts::Lww, Conflicts::Siblings, Conflicts::Default] {
            assert_eq!(Conflicts::from_wire(c.to_wire()), c);
        }
    }
}
