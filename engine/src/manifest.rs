//! The manifest: the durable list of a shard's live SSTables and the WAL position they cover.
//!
//! It is replaced atomically: the new version is written to `MANIFEST.tmp` with direct I/O,
//! synced, renamed over `MANIFEST`, and the directory is synced. A crash at any point leaves
//! either the old or the new version.
//!
//! ```text
//! MANIFEST (zero-padded to 4 KiB):
//!   ManifestHeader (40 bytes, Pod): magic "DYNMAN01" | format_version u32 | body_crc u32 |
//!                                   body_len u32 | shard_id u32 | generation u64 | header_crc u32 | pad
//!   body: u64 flushed_seq | u64 next_table_id | u32 table count | u64 table id x count
//!         (oldest first) | u64 actor_epoch | u64 counter_ceiling | u8 run
//! ```
//! `run` (format 2; format 1 has none of the last three fields and is still read): 0 closed
//! cleanly, 1 running with every acknowledged write synced (`sync` durability), 2 running with
//! acknowledged writes that may be unsynced, 3 unknown, 4 a snapshot's copy (a shard restored
//! from it draws a new actor epoch). The actor epoch and the counter ceiling are the
//! dot minting state (see `docs/protocol.md`, "Actor epochs"): no counter above the ceiling is
//! minted before a manifest naming a higher one is durable.
//! INVARIANT: every table the manifest names was synced (file and directory) before the manifest
//! naming it was written; every WAL record with a sequence number at or below `flushed_seq` is in
//! one of those tables.

use std::path::{Path, PathBuf};

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::record::{SeqNo, ShardId};
use crate::sstable::TableId;
use dynacore_runtime::{self as runtime, File};

const MANIFEST_MAGIC: u64 = u64::from_le_bytes(*b"DYNMAN01");
const MANIFEST_FORMAT_VERSION: u32 = 2;
const MANIFEST_FORMAT_V1: u32 = 1;
/// The manifest file's name.
pub const MANIFEST_NAME: &str = "MANIFEST";
const MANIFEST_TMP_NAME: &str = "MANIFEST.tmp";

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct ManifestHeader {
    magic: u64,
    format_version: u32,
    body_crc: u32,
    body_len: u32,
    shard_id: u32,
    generation: u64,
    header_crc: u32,
    reserved: u32,
}

const HEADER_BYTES: usize = std::mem::size_of::<ManifestHeader>();
const _: () = assert!(HEADER_BYTES == 40);

/// The contents of a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The shard it belongs to.
    pub shard_id: ShardId,
    /// Bumped on every write.
    pub generation: u64,
    /// Every record at or below this sequence number is in `tables`.
    pub flushed_seq: SeqNo,
    /// The next table id to hand out.
    pub next_table_id: u64,
    /// Live tables, oldest data first (a compaction's output takes the place of its inputs, so
    /// ids need not increase along the list).
    pub tables: Vec<TableId>,
    /// The actor epoch the shard mints dots in (0: none yet).
    pub actor_epoch: u64,
    /// No dot counter above this has been minted in `actor_epoch`.
    pub counter_ceiling: u64,
    /// How the shard last stopped, as far as this manifest knows.
    pub run: RunState,
}

/// How a shard stopped, as its manifest records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Unknown (a new shard, or a manifest from before format 2).
    Unknown,
    /// Closed cleanly: every acknowledged write is durable.
    Clean,
    /// Open (or crashed) with `synced` telling whether every acknowledged write was synced
    /// before it was acknowledged.
    Running {
        /// `sync` durability.
        synced: bool,
    },
    /// A copy taken by a snapshot: a shard opened from it draws a new actor epoch (the shard it
    /// was taken from went on minting dots).
    Restored,
}

impl RunState {
    fn to_byte(self) -> u8 {
        match self {
            RunState::Unknown => 3,
            RunState::Clean => 0,
            RunState::Running { synced: true } => 1,
            RunState::Running { synced: false } => 2,
            RunState::Restored => 4,
        }
    }

    fn from_byte(b: u8) -> Option<RunState> {
        Some(match b {
            0 => RunState::Clean,
            1 => RunState::Running { synced: true },
            2 => RunState::Running { synced: false },
            3 => RunState::Unknown,
            4 => RunState::Restored,
            _ => return None,
        })
    }
}

impl Manifest {
    /// The manifest of an empty shard.
    #[must_use]
    pub fn empty(shard_id: ShardId) -> Self {
        Manifest {
            shard_id,
            generation: 0,
            flushed_seq: SeqNo(0),
            next_table_id: 1,
            tables: Vec::new(),
            actor_epoch: 0,
            counter_ceiling: 0,
            run: RunState::Unknown,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(20 + self.tables.len() * 8);
        body.extend_from_slice(&self.flushed_seq.0.to_le_bytes());
        body.extend_from_slice(&self.next_table_id.to_le_bytes());
        let count = u32::try_from(self.tables.len()).expect("INVARIANT: table count is bounded");
        body.extend_from_slice(&count.to_le_bytes());
        for t in &self.tables {
            body.extend_from_slice(&t.0.to_le_bytes());
        }
        body.extend_from_slice(&self.actor_epoch.to_le_bytes());
        body.extend_from_slice(&self.counter_ceiling.to_le_bytes());
        body.push(self.run.to_byte());
        let mut header = ManifestHeader {
            magic: MANIFEST_MAGIC,
            format_version: MANIFEST_FORMAT_VERSION,
            body_crc: crc32c::crc32c(&body),
            body_len: u32::try_from(body.len()).expect("INVARIANT: bounded"),
            shard_id: self.shard_id.0,
            generation: self.generation,
            header_crc: 0,
            reserved: 0,
        };
        header.header_crc = crc32c::crc32c(bytemuck::bytes_of(&header));
        let mut out = bytemuck::bytes_of(&header).to_vec();
        out.extend_from_slice(&body);
        let padded = runtime::align_up(out.len() as u64);
        out.resize(usize::try_from(padded).unwrap_or(out.len()), 0);
        out
    }

    fn decode(path: &Path, buf: &[u8]) -> Result<Self> {
        let head = buf
            .get(..HEADER_BYTES)
            .ok_or_else(|| Error::corruption(path, 0, "manifest shorter than its header"))?;
        let mut header: ManifestHeader = bytemuck::pod_read_unaligned(head);
        if header.magic != MANIFEST_MAGIC {
            return Err(Error::corruption(path, 0, "bad manifest magic"));
        }
        let stored = header.header_crc;
        header.header_crc = 0;
        let actual = crc32c::crc32c(bytemuck::bytes_of(&header));
        if actual != stored {
            return Err(Error::ChecksumMismatch {
                path: path.to_path_buf(),
                offset: 0,
                expected: stored,
                actual,
            });
        }
        let v1 = header.format_version == MANIFEST_FORMAT_V1;
        if header.format_version != MANIFEST_FORMAT_VERSION && !v1 {
            return Err(Error::Incompatible {
                path: path.to_path_buf(),
                reason: format!(
                    "manifest format version {} is unknown",
                    header.format_version
                ),
            });
        }
        let body = buf
            .get(HEADER_BYTES..HEADER_BYTES + header.body_len as usize)
            .ok_or_else(|| {
                Error::corruption(path, HEADER_BYTES as u64, "manifest body truncated")
            })?;
        let actual = crc32c::crc32c(body);
        if actual != header.body_crc {
            return Err(Error::ChecksumMismatch {
                path: path.to_path_buf(),
                offset: HEADER_BYTES as u64,
                expected: header.body_crc,
                actual,
            });
        }
        let bad = || Error::corruption(path, HEADER_BYTES as u64, "manifest body malformed");
        let u64_at = |at: usize| -> Result<u64> {
            Ok(u64::from_le_bytes(
                body.get(at..at + 8)
                    .ok_or_else(bad)?
                    .try_into()
                    .map_err(|_| bad())?,
            ))
        };
        let flushed_seq = SeqNo(u64_at(0)?);
        let next_table_id = u64_at(8)?;
        let count = u32::from_le_bytes(
            body.get(16..20)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        ) as usize;
        let tables_end = 20 + count * 8;
        if body.len() != tables_end + if v1 { 0 } else { 17 } {
            return Err(bad());
        }
        let tables = (0..count)
            .map(|i| u64_at(20 + i * 8).map(TableId))
            .collect::<Result<Vec<_>>>()?;
        let (actor_epoch, counter_ceiling, run) = if v1 {
            (0, 0, RunState::Unknown)
        } else {
            (
                u64_at(tables_end)?,
                u64_at(tables_end + 8)?,
                RunState::from_byte(body[tables_end + 16]).ok_or_else(bad)?,
            )
        };
        let mut sorted = tables.clone();
        sorted.sort_unstable();
        if tables.iter().any(|t| t.0 >= next_table_id) || sorted.windows(2).any(|w| w[0] == w[1]) {
            return Err(bad());
        }
        Ok(Manifest {
            shard_id: ShardId(header.shard_id),
            generation: header.generation,
            flushed_seq,
            next_table_id,
            tables,
            actor_epoch,
            counter_ceiling,
            run,
        })
    }

    /// Loads the manifest of `dir`; `None` if the shard has none yet.
    ///
    /// # Errors
    /// Damage ([`Error::Corruption`], [`Error::ChecksumMismatch`]) or I/O errors.
    pub async fn load(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(MANIFEST_NAME);
        let tmp = dir.join(MANIFEST_TMP_NAME);
        if tmp.exists() {
            // A write that did not reach its rename: the old manifest stands.
            runtime::remove(&tmp)
                .await
                .map_err(|e| Error::io("remove", &tmp, e))?;
        }
        if !path.exists() {
            return Ok(None);
        }
        let file = File::open_read(&path)
            .await
            .map_err(|e| Error::io("open", &path, e))?;
        let size = file.size().await.map_err(|e| Error::io("stat", &path, e))?;
        let buf = file
            .read_exact_at(0, usize::try_from(size).unwrap_or(usize::MAX))
            .await
            .map_err(|e| Error::io("read", &path, e))?;
        file.close()
            .await
            .map_err(|e| Error::io("close", &path, e))?;
        Self::decode(&path, &buf).map(Some)
    }

    /// Durably replaces the manifest of `dir` with this one.
    ///
    /// # Errors
    /// I/O errors; the old manifest then still stands.
    pub async fn store(&self, dir: &Path) -> Result<()> {
        let tmp: PathBuf = dir.join(MANIFEST_TMP_NAME);
        let path = dir.join(MANIFEST_NAME);
        if tmp.exists() {
            runtime::remove(&tmp)
                .await
                .map_err(|e| Error::io("remove", &tmp, e))?;
        }
        let file = File::create_new(&tmp)
            .await
            .map_err(|e| Error::io("create", &tmp, e))?;
        let bytes = self.encode();
        file.write_aligned(0, &bytes)
            .await
            .map_err(|e| Error::io("write", &tmp, e))?;
        file.sync_data()
            .await
            .map_err(|e| Error::io("sync", &tmp, e))?;
        file.close()
            .await
            .map_err(|e| Error::io("close", &tmp, e))?;
        runtime::rename(&tmp, &path)
            .await
            .map_err(|e| Error::io("rename", &tmp, e))?;
        runtime::sync_dir(dir)
            .await
            .map_err(|e| Error::io("sync directory", dir, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            shard_id: ShardId(2),
            generation: 7,
            flushed_seq: SeqNo(99),
            next_table_id: 5,
            tables: vec![TableId(1), TableId(3), TableId(4)],
            actor_epoch: 1_700_000_000_000,
            counter_ceiling: 1 << 20,
            run: RunState::Running { synced: false },
        }
    }

    #[test]
    fn a_format_1_manifest_reads_with_no_actor_epoch() {
        // Format 1: the same without the last 17 body bytes.
        let m = sample();
        let v2 = m.encode();
        let mut header: ManifestHeader = bytemuck::pod_read_unaligned(&v2[..HEADER_BYTES]);
        let body = &v2[HEADER_BYTES..HEADER_BYTES + header.body_len as usize - 17];
        header.format_version = MANIFEST_FORMAT_V1;
        header.body_len = body.len() as u32;
        header.body_crc = crc32c::crc32c(body);
        header.header_crc = 0;
        header.header_crc = crc32c::crc32c(bytemuck::bytes_of(&header));
        let mut v1 = bytemuck::bytes_of(&header).to_vec();
        v1.extend_from_slice(body);
        let read = Manifest::decode(Path::new("M"), &v1).expect("decodes");
        assert_eq!(
            read,
            Manifest {
                actor_epoch: 0,
                counter_ceiling: 0,
                run: RunState::Unknown,
                ..m
            }
        );
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let enc = m.encode();
        assert_eq!(enc.len() % 4096, 0);
        assert_eq!(Manifest::decode(Path::new("M"), &enc).expect("decodes"), m);
    }

    #[test]
    fn every_flipped_bit_in_header_and_body_is_caught() {
        let enc = sample().encode();
        let used = HEADER_BYTES + 20 + 3 * 8 + 17;
        for i in 0..used * 8 {
            let mut bad = enc.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(Manifest::decode(Path::new("M"), &bad).is_err(), "bit {i}");
        }
    }
}
