//! How the log is configured and what it counts.

/// How a write is made durable before it is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Acknowledge only after `fdatasync` covered the write (the default).
    Sync,
    /// Acknowledge once queued; `fdatasync` at least every this many milliseconds.
    Periodic(u64),
    /// Acknowledge once queued; written without sync (lost on power failure, and the last
    /// pending bytes are lost if the process dies).
    None,
}

/// WAL tuning.
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// Size of a segment file, in bytes (a batch larger than this gets a segment of its own).
    pub segment_bytes: u64,
    /// Durability of writes.
    pub durability: Durability,
    /// With `Sync`: how long the writer waits, once a write is pending, for more writes to
    /// join its batch before it writes and syncs (zero: it takes what is pending at once, and
    /// what arrives during a sync makes the next batch). `dynacore-tuning wal` measures it.
    pub group_commit_window: std::time::Duration,
}

/// Statistics of the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Batches written.
    pub batches: u64,
    /// `fdatasync` calls made.
    pub syncs: u64,
    /// Records written.
    pub records: u64,
    /// Bytes written, padding included.
    pub bytes_written: u64,
    /// Segments created and zero-filled since open.
    pub segments_created: u64,
    /// Released segments reused since open.
    pub segments_recycled: u64,
}
