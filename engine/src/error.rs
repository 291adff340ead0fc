//! The engine's error types.
//!
//! Bad input from a caller ([`LimitError`]) and bad bytes from the disk ([`Error::Corruption`],
//! [`Error::ChecksumMismatch`]) are operating conditions and come back as values; only a broken
//! internal invariant panics.

use std::io;
use std::path::PathBuf;

/// A request that breaks one of the engine's hard limits. Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// Keys must hold at least one byte.
    #[error("key is empty; keys must be 1..={max} bytes")]
    KeyEmpty {
        /// The largest key allowed.
        max: usize,
    },
    /// The key is longer than [`crate::KEY_BYTES_MAX`].
    #[error("key is {len} bytes; keys must be 1..={max} bytes")]
    KeyTooLong {
        /// The key's length.
        len: usize,
        /// The largest key allowed.
        max: usize,
    },
    /// The value is larger than [`crate::VALUE_BYTES_MAX`].
    #[error("value is {len} bytes; values may be at most {max} bytes")]
    ValueTooLarge {
        /// The value's length.
        len: usize,
        /// The largest value allowed.
        max: usize,
    },
    /// The version blob is larger than [`crate::VERSION_BYTES_MAX`].
    #[error("version blob is {len} bytes; at most {max} bytes are allowed")]
    VersionTooLarge {
        /// The blob's length.
        len: usize,
        /// The largest blob allowed.
        max: usize,
    },
}

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request breaks a hard limit; nothing was written.
    #[error(transparent)]
    Limit(#[from] LimitError),

    /// An I/O call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What the engine was doing.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// A block or record read back from disk does not match its checksum. The bytes were not
    /// returned.
    #[error(
        "checksum mismatch in {path} at offset {offset}: expected {expected:#010x}, found {actual:#010x}"
    )]
    ChecksumMismatch {
        /// The file holding the bad bytes.
        path: PathBuf,
        /// Byte offset of the block or record in that file.
        offset: u64,
        /// The checksum stored on disk.
        expected: u32,
        /// The checksum of the bytes read.
        actual: u32,
    },

    /// A file's structure is invalid (bad magic, impossible length, valid data after a damaged
    /// record, ...). The shard refuses to guess.
    #[error("corruption in {path} at offset {offset}: {reason}")]
    Corruption {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset of the damage.
        offset: u64,
        /// What is wrong.
        reason: String,
    },

    /// A WAL `fdatasync` (or write) failed earlier. The log is fenced: every write that was not
    /// acknowledged before the failure failed, and no further write is accepted until the shard
    /// is reopened (which replays what is really on disk).
    #[error("write-ahead log is fenced after an I/O failure: {reason}")]
    WalFenced {
        /// The first failure, as text.
        reason: String,
    },

    /// A version (client context or stored object) is invalid, or the write would leave too
    /// many siblings.
    #[error(transparent)]
    Version(#[from] crate::version::DvvError),

    /// A conditional write expected another version; nothing was written.
    #[error("condition failed: the current version is {current:?}")]
    ConditionFailed {
        /// The key's current causal context (empty if the key has none).
        current: crate::version::VersionVector,
    },

    /// A timestamp from a peer is too far ahead of the local clock; nothing was written.
    #[error(transparent)]
    Clock(#[from] crate::version::ClockError),

    /// The shard is closing or closed.
    #[error("shard is closed")]
    Closed,

    /// A cleanup stopped without dropping anything: what it keeps was decided under a state
    /// that no longer holds (the reason says which).
    #[error("cleanup abandoned: {0}")]
    CleanupAbandoned(String),

    /// A cleanup did not run to its end; the tables stay as they were.
    #[error("cleanup failed: {0}")]
    CleanupFailed(String),

    /// The data directory belongs to another shard or was written by an unknown format version.
    #[error("{path}: {reason}")]
    Incompatible {
        /// The file that says so.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corruption(
        path: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        Error::Corruption {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
