//! How the cluster replicates: the settings every core reads per request (replicas per key,
//! quorum mode, hints, how conflicts are shown).

use std::time::Duration;

/// Replicas per key unless configured otherwise.
pub const RF_DEFAULT: u8 = 3;

/// How the cluster replicates: replicas per key, quorums, hints and conflicts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// Replicas per key (capped at the ring's node count).
    pub replication_factor: u8,
    /// A down replica's write goes to the next healthy node, which keeps it as a hint and
    /// counts towards W (`false`: strict quorums; hints are still kept but do not count).
    pub sloppy_quorum: bool,
    /// Writes that miss a replica are kept as hints and handed over when it is back.
    pub hinted_handoff: bool,
    /// Hints not handed over this long after their target returned are dropped (an outage
    /// however long expires none).
    pub hint_max_age: Duration,
    /// Bytes of hints the node keeps for one target node.
    pub hint_bytes_per_target: u64,
    /// Hints each core hands back per second.
    pub hint_replay_per_second: u32,
    /// Reads return every concurrent value (siblings) unless a request says otherwise.
    pub siblings: bool,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            replication_factor: RF_DEFAULT,
            sloppy_quorum: true,
            hinted_handoff: true,
            hint_max_age: Duration::from_secs(3 * 3600),
            hint_bytes_per_target: 1 << 30,
            hint_replay_per_second: 2000,
            siblings: false,
        }
    }
}
