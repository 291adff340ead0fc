//! What a front end asks the coordinator, and what a read answers.

use dynacore_proto::{Conflicts, KeyCondition, Quorum, ReadRepair};

/// A client's write.
#[derive(Clone, Debug)]
pub struct WriteRequest {
    /// The key.
    pub key: Vec<u8>,
    /// The value, or `None` for a delete.
    pub value: Option<Vec<u8>>,
    /// Expiry in milliseconds from now.
    pub ttl_ms: Option<u64>,
    /// Write only if the key's version is still this one (encoded).
    pub expected: Option<Vec<u8>>,
    /// The causal context the write builds on (encoded; `None`: blind).
    pub context: Option<Vec<u8>>,
    /// Acknowledgements required.
    pub w: Quorum,
    /// Passed on by another node: coordinate it here, never pass it on.
    pub forwarded: bool,
    /// Write only if the key holds no live value, or only if it does.
    pub condition: KeyCondition,
}

impl WriteRequest {
    /// Whether it is a lightweight transaction (a Paxos round among the key's replicas).
    #[must_use]
    pub fn is_conditional(&self) -> bool {
        self.expected.is_some() || self.condition != KeyCondition::None
    }
}

/// A client's read.
#[derive(Clone, Debug)]
pub struct ReadRequest {
    /// The key.
    pub key: Vec<u8>,
    /// Replies required.
    pub r: Quorum,
    /// Read repair.
    pub read_repair: ReadRepair,
    /// One value or all concurrent ones.
    pub conflicts: Conflicts,
}

/// What a read found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadResult {
    /// The value(s), newest first, each with its write time (ms since the Unix epoch): one in
    /// last-writer-wins mode, every live sibling in siblings mode.
    pub values: Vec<(Vec<u8>, u64)>,
    /// The merged version (encoded): the context for a write that replaces them.
    pub version: Vec<u8>,
    /// When the newest live value expires (ms since the Unix epoch), if it does.
    pub expiry_ms: Option<u64>,
}
