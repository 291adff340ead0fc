//! Blob files: the value log for large values (BlobDB-style key-value separation,
//! `docs/compaction.md`). A flush writes each value above the shard's separation threshold to
//! a new blob file and puts a [`BlobRef`] in the SSTable instead; compaction copies references,
//! not values, except for values in files that are mostly garbage, which it relocates to a new
//! file. Each table records how many bytes of each blob file it points at, so the live bytes of
//! every file are known without reading it; a file nothing points at is deleted.
//!
//! # Layout
//!
//! ```text
//! block 0 (4096 bytes): BlobHeader (32 bytes, bytemuck Pod) then zeros
//!    0 u64 magic "DYNBLOB1"   8 u32 format_version (1)   12 u32 header_crc
//!   16 u64 file_id           24 u32 shard_id            28 u32 reserved
//!    header_crc = crc32c of the 32 bytes with header_crc zeroed
//!
//! from offset 4096: entries, each starting on a 4096-byte boundary and zero-padded to the next
//!    0 u32 magic "DBV1"       4 u32 crc32c over bytes 8.. of the entry (header rest, key, value)
//!    8 u32 value_len         12 u32 key_len
//!   16 key, then value
//! ```
//!
//! Every entry is aligned, so a reference is read with one direct read of exactly its blocks.
//! The key is stored beside the value so that garbage collection can ask the LSM whether the
//! entry is still the live version of its key (as WiscKey does).
//!
//! INVARIANT: a [`BlobRef`] is only handed out for an entry that is written; it is durable once
//! [`BlobWriter::finish`] has returned (the file and its directory synced).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytemuck::{Pod, Zeroable};

use crate::cache::BlockCache;
use crate::error::{Error, Result};
use crate::record::{BlobRef, Record, ShardId, VALUE_BYTES_MAX};
use dynacore_runtime::{self as runtime, align_up, File, IO_ALIGN};

const BLOB_MAGIC: u64 = u64::from_le_bytes(*b"DYNBLOB1");
const BLOB_FORMAT_VERSION: u32 = 1;
const ENTRY_MAGIC: u32 = u32::from_le_bytes(*b"DBV1");
const ENTRY_HEADER_BYTES: usize = 16;
/// Offset of the first entry (the bytes before it are the header block).
pub const FIRST_ENTRY_OFFSET: u64 = crate::record::BLOB_FIRST_ENTRY_OFFSET;
/// Unwritten bytes after which the writer writes a chunk out.
const WRITE_CHUNK_BYTES: usize = 256 << 10;

/// The fixed header in block 0 of a blob file.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
struct BlobHeader {
    magic: u64,
    format_version: u32,
    header_crc: u32,
    file_id: u64,
    shard_id: u32,
    reserved: u32,
}

impl BlobHeader {
    fn new(file_id: u64, shard_id: ShardId) -> Self {
        let mut h = BlobHeader {
            magic: BLOB_MAGIC,
            format_version: BLOB_FORMAT_VERSION,
            header_crc: 0,
            file_id,
            shard_id: shard_id.0,
            reserved: 0,
        };
        h.header_crc = h.checksum();
        h
    }

    fn checksum(&self) -> u32 {
        let mut copy = *self;
        copy.header_crc = 0;
        crc32c::crc32c(bytemuck::bytes_of(&copy))
    }
}

/// Bytes the entry that `r` points at occupies on disk, for a key of `key_len` bytes
/// (block-aligned).
#[must_use]
pub fn entry_bytes(r: &BlobRef, key_len: usize) -> u64 {
    align_up((ENTRY_HEADER_BYTES + key_len + r.value_len as usize) as u64)
}

/// The path of blob file `id` in `dir`.
#[must_use]
pub fn blob_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("blob-{id:016x}.blob"))
}

/// Parses a blob file name back to its id.
#[must_use]
pub fn parse_blob_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("blob-")?.strip_suffix(".blob")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Appends values to a new blob file.
#[derive(Debug)]
pub struct BlobWriter {
    id: u64,
    path: PathBuf,
    file: File,
    /// Bytes written to the file so far (block-aligned).
    written: u64,
    out: Vec<u8>,
}

impl BlobWriter {
    /// The file's id.
    #[must_use]
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Bytes of entries appended so far (block-aligned, header excluded).
    #[must_use]
    pub fn entry_bytes(&self) -> u64 {
        self.written + self.out.len() as u64 - FIRST_ENTRY_OFFSET
    }

    /// Creates blob file `id` in `dir` and writes its header.
    ///
    /// # Errors
    /// I/O errors, `AlreadyExists` included.
    pub async fn create(dir: &Path, id: u64, shard_id: ShardId) -> Result<BlobWriter> {
        let path = blob_path(dir, id);
        let file = File::create_new(&path)
            .await
            .map_err(|e| Error::io("create", &path, e))?;
        let mut out = Vec::with_capacity(WRITE_CHUNK_BYTES * 2);
        out.resize(IO_ALIGN as usize, 0);
        out[..std::mem::size_of::<BlobHeader>()]
            .copy_from_slice(bytemuck::bytes_of(&BlobHeader::new(id, shard_id)));
        Ok(BlobWriter {
            id,
            path,
            file,
            written: 0,
            out,
        })
    }

    /// Appends `value` for `key` and returns its reference.
    ///
    /// # Errors
    /// [`Error::Limit`] for a key or value over the limits; I/O errors.
    pub async fn append(&mut self, key: &[u8], value: &[u8]) -> Result<BlobRef> {
        crate::record::validate_key(key)?;
        if value.len() > VALUE_BYTES_MAX {
            return Err(crate::error::LimitError::ValueTooLarge {
                len: value.len(),
                max: VALUE_BYTES_MAX,
            }
            .into());
        }
        let offset = self.written + self.out.len() as u64;
        debug_assert!(offset.is_multiple_of(IO_ALIGN));
        let start = self.out.len();
        let value_len = u32::try_from(value.len()).expect("INVARIANT: checked against the limit");
        let key_len = u32::try_from(key.len()).expect("INVARIANT: checked against the limit");
        self.out.extend_from_slice(&ENTRY_MAGIC.to_le_bytes());
        self.out.extend_from_slice(&[0u8; 4]);
        self.out.extend_from_slice(&value_len.to_le_bytes());
        self.out.extend_from_slice(&key_len.to_le_bytes());
        self.out.extend_from_slice(key);
        self.out.extend_from_slice(value);
        let crc = crc32c::crc32c(&self.out[start + 8..]);
        self.out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        let padded = align_up(self.out.len() as u64) as usize;
        self.out.resize(padded, 0);
        if self.out.len() >= WRITE_CHUNK_BYTES {
            self.write_out().await?;
        }
        Ok(BlobRef {
            file_id: self.id,
            offset,
            value_len,
        })
    }

    async fn write_out(&mut self) -> Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.file
            .write_aligned(self.written, &self.out)
            .await
            .map_err(|e| Error::io("write", &self.path, e))?;
        self.written += self.out.len() as u64;
        self.out.clear();
        Ok(())
    }

    /// Writes what is buffered, syncs the file and its directory, and returns the file's size.
    /// Every reference handed out is durable after this.
    ///
    /// # Errors
    /// I/O errors.
    /// On an error the file is removed (nothing may point at it).
    pub async fn finish(mut self, dir: &Path) -> Result<u64> {
        if let Err(e) = self.write_out().await {
            self.abandon().await;
            return Err(e);
        }
        let path = self.path.clone();
        let synced = match crate::durable::sync_and_close(self.file, &path).await {
            Ok(()) => runtime::sync_dir(dir)
                .await
                .map_err(|e| Error::io("sync directory", dir, e)),
            Err(e) => Err(e),
        };
        if let Err(e) = synced {
            if let Err(r) = runtime::remove(&path).await {
                tracing::warn!(path = %path.display(), error = %r, "removing unsynced blob file");
            }
            return Err(e);
        }
        Ok(self.written)
    }

    /// Removes the unfinished file (after an error).
    pub async fn abandon(self) {
        let _ = self.file.close().await;
        let _ = runtime::remove(&self.path).await;
    }
}

/// An open blob file, for reading values by reference.
#[derive(Debug)]
pub struct BlobFile {
    id: u64,
    path: PathBuf,
    file: File,
    size: u64,
}

impl BlobFile {
    /// Opens blob file `id` in `dir` and checks its header.
    ///
    /// # Errors
    /// [`Error::Corruption`] / [`Error::ChecksumMismatch`] for a damaged header,
    /// [`Error::Incompatible`] for another shard's or format's file; I/O errors.
    pub async fn open(dir: &Path, id: u64, shard_id: ShardId) -> Result<BlobFile> {
        let path = blob_path(dir, id);
        let file = File::open_read(&path)
            .await
            .map_err(|e| Error::io("open", &path, e))?;
        let size = file.size().await.map_err(|e| Error::io("stat", &path, e))?;
        if size < FIRST_ENTRY_OFFSET {
            return Err(Error::corruption(
                &path,
                0,
                "blob file shorter than its header",
            ));
        }
        let raw = file
            .read_exact_at(0, std::mem::size_of::<BlobHeader>())
            .await
            .map_err(|e| Error::io("read header of", &path, e))?;
        let h: BlobHeader = bytemuck::pod_read_unaligned(&raw);
        if h.magic != BLOB_MAGIC {
            return Err(Error::corruption(&path, 0, "bad blob file magic"));
        }
        let actual = h.checksum();
        if actual != h.header_crc {
            return Err(Error::ChecksumMismatch {
                path,
                offset: 0,
                expected: h.header_crc,
                actual,
            });
        }
        if h.format_version != BLOB_FORMAT_VERSION || h.shard_id != shard_id.0 || h.file_id != id {
            return Err(Error::Incompatible {
                path,
                reason: format!(
                    "blob file says format {}, shard {}, id {}",
                    h.format_version, h.shard_id, h.file_id
                ),
            });
        }
        Ok(BlobFile {
            id,
            path,
            file,
            size,
        })
    }

    /// The file's id.
    #[must_use]
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Bytes of entries in the file (its size less the header block).
    #[must_use]
    pub fn entry_bytes(&self) -> u64 {
        self.size - FIRST_ENTRY_OFFSET
    }

    /// Reads the value `r` points at, checking that the entry is whole, undamaged and belongs
    /// to `key`.
    ///
    /// # Errors
    /// [`Error::Corruption`] for a reference that does not fit the file or an entry of another
    /// key, [`Error::ChecksumMismatch`] for damaged bytes; I/O errors.
    pub async fn read(&self, r: &BlobRef, key: &[u8]) -> Result<Vec<u8>> {
        assert_eq!(r.file_id, self.id, "a reference is read from its own file");
        let len = entry_bytes(r, key.len());
        if r.offset < FIRST_ENTRY_OFFSET || r.offset.saturating_add(len) > self.size {
            return Err(Error::corruption(
                &self.path,
                r.offset,
                "blob reference points outside the file",
            ));
        }
        let entry = self
            .file
            .read_exact_at(r.offset, usize::try_from(len).unwrap_or(usize::MAX))
            .await
            .map_err(|e| Error::io("read blob of", &self.path, e))?;
        let word = |at: usize| {
            u32::from_le_bytes([entry[at], entry[at + 1], entry[at + 2], entry[at + 3]])
        };
        if word(0) != ENTRY_MAGIC {
            return Err(Error::corruption(
                &self.path,
                r.offset,
                "bad blob entry magic",
            ));
        }
        let (value_len, key_len) = (word(8) as usize, word(12) as usize);
        if value_len != r.value_len as usize || key_len != key.len() {
            return Err(Error::corruption(
                &self.path,
                r.offset,
                "blob entry lengths differ from the reference",
            ));
        }
        let body_end = ENTRY_HEADER_BYTES + key_len + value_len;
        let actual = crc32c::crc32c(&entry[8..body_end]);
        if actual != word(4) {
            return Err(Error::ChecksumMismatch {
                path: self.path.clone(),
                offset: r.offset,
                expected: word(4),
                actual,
            });
        }
        if &entry[ENTRY_HEADER_BYTES..ENTRY_HEADER_BYTES + key_len] != key {
            return Err(Error::corruption(
                &self.path,
                r.offset,
                "blob entry belongs to another key",
            ));
        }
        Ok(entry[ENTRY_HEADER_BYTES + key_len..body_end].to_vec())
    }

    /// Closes the file.
    ///
    /// # Errors
    /// I/O errors from `close`.
    pub async fn close(self) -> Result<()> {
        self.file
            .close()
            .await
            .map_err(|e| Error::io("close", &self.path, e))
    }
}

/// A live blob file: what the shard knows of it without opening it.
#[derive(Debug)]
pub(crate) struct BlobMeta {
    /// The file's id.
    pub(crate) id: u64,
    /// Bytes of entries in the file (its size less the header block).
    pub(crate) entry_bytes: u64,
}

/// A shard's open blob-file handles: at most `capacity` are kept open (CLOCK eviction, as the
/// block cache), the others are opened, and their header checked, when a read needs them. A
/// shard may have thousands of blob files; it does not hold a descriptor for each. Values read
/// go through the shard's block cache (direct I/O bypasses the page cache).
pub(crate) struct BlobHandles {
    dir: PathBuf,
    shard_id: ShardId,
    values: Rc<BlockCache>,
    /// Per file, the offsets of values put in `values` (so a deleted file's values can be
    /// dropped; some may have been evicted since).
    cached: std::cell::RefCell<HashMap<u64, std::collections::HashSet<u64>>>,
    cache: std::cell::RefCell<quick_cache::unsync::Cache<u64, Rc<BlobFile>>>,
    opens: std::cell::Cell<u64>,
}

impl std::fmt::Debug for BlobHandles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobHandles")
            .field("dir", &self.dir)
            .field("open", &self.cache.borrow().len())
            .field("opens", &self.opens.get())
            .finish()
    }
}

impl BlobHandles {
    /// Handles for the blob files of shard `shard_id` in `dir`, at most `capacity` open, with
    /// values cached in `values`.
    pub(crate) fn new(
        dir: &Path,
        shard_id: ShardId,
        capacity: usize,
        values: Rc<BlockCache>,
    ) -> Self {
        BlobHandles {
            dir: dir.to_path_buf(),
            shard_id,
            values,
            cached: std::cell::RefCell::new(HashMap::new()),
            cache: std::cell::RefCell::new(quick_cache::unsync::Cache::new(capacity.max(1))),
            opens: std::cell::Cell::new(0),
        }
    }

    /// The open file `id`, opening it if it is not.
    async fn get(&self, id: u64) -> Result<Rc<BlobFile>> {
        if let Some(f) = self.cache.borrow().get(&id) {
            return Ok(f.clone());
        }
        let f = match BlobFile::open(&self.dir, id, self.shard_id).await {
            Ok(f) => Rc::new(f),
            // The shard holds the file live: gone is damage, as at open.
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::corruption(
                    blob_path(&self.dir, id),
                    0,
                    "a table points at this blob file, which is missing",
                ));
            }
            Err(e) => return Err(e),
        };
        self.opens.set(self.opens.get() + 1);
        // An eviction drops a handle here; glommio closes a dropped file in the background.
        self.cache.borrow_mut().insert(id, f.clone());
        Ok(f)
    }

    /// Takes file `id`'s handle out (to close it before deleting the file).
    pub(crate) fn take(&self, id: u64) -> Option<Rc<BlobFile>> {
        self.cache.borrow_mut().remove(&id).map(|(_, f)| f)
    }

    /// Files opened since the shard opened.
    pub(crate) fn opens(&self) -> u64 {
        self.opens.get()
    }

    /// The directory the files are in.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Caches a value just written at `r` (a flush's data is what is read next), if the cache
    /// has room for it without evicting.
    pub(crate) fn cache_written(&self, r: &BlobRef, value: &[u8]) {
        if self.values.has_room_for(value.len() as u64) {
            self.cache_value(r, Rc::from(value));
        }
    }

    fn cache_value(&self, r: &BlobRef, value: Rc<[u8]>) {
        if self.values.capacity_bytes() == 0 {
            return;
        }
        self.values.insert_value(r.file_id, r.offset, value);
        self.cached
            .borrow_mut()
            .entry(r.file_id)
            .or_default()
            .insert(r.offset);
    }

    /// Forgets file `id` (being deleted): returns the offsets of its values that may still be
    /// cached, for the caller to drop from the block cache.
    pub(crate) fn forget(&self, id: u64) -> Vec<u64> {
        self.cached
            .borrow_mut()
            .remove(&id)
            .map(|o| o.into_iter().collect())
            .unwrap_or_default()
    }

    /// The block cache the values go through.
    pub(crate) fn values(&self) -> &Rc<BlockCache> {
        &self.values
    }
}

/// A shard's live blob files. The shard replaces its set (copy on write) when files come and
/// go, so a read or scan holds the set it started with, and a file is deleted only once no
/// such snapshot holds it.
#[derive(Debug)]
pub(crate) struct BlobSet {
    files: HashMap<u64, Rc<BlobMeta>>,
    handles: Rc<BlobHandles>,
}

impl BlobSet {
    /// An empty set reading through `handles`.
    pub(crate) fn new(handles: Rc<BlobHandles>) -> Self {
        BlobSet {
            files: HashMap::new(),
            handles,
        }
    }

    /// The handles the set reads through.
    pub(crate) fn handles(&self) -> &Rc<BlobHandles> {
        &self.handles
    }

    /// Every file, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Rc<BlobMeta>> {
        self.files.values()
    }

    /// Number of files.
    pub(crate) fn len(&self) -> usize {
        self.files.len()
    }

    /// A set with `added` too.
    pub(crate) fn with(&self, added: impl IntoIterator<Item = BlobMeta>) -> BlobSet {
        let mut files = self.files.clone();
        for f in added {
            let previous = files.insert(f.id, Rc::new(f));
            assert!(previous.is_none(), "blob file ids are never reused");
        }
        BlobSet {
            files,
            handles: self.handles.clone(),
        }
    }

    /// A set without `removed`, and the files taken out.
    pub(crate) fn without(&self, removed: &[u64]) -> (BlobSet, Vec<Rc<BlobMeta>>) {
        let mut files = self.files.clone();
        let taken = removed.iter().filter_map(|id| files.remove(id)).collect();
        (
            BlobSet {
                files,
                handles: self.handles.clone(),
            },
            taken,
        )
    }

    /// Reads the value a reference points at, through the cache (filling it when `fill`).
    ///
    /// # Errors
    /// [`Error::Corruption`] if the file is not in the set (a table points at a file the shard
    /// does not have), and the errors of [`BlobFile::open`] and [`BlobFile::read`].
    pub(crate) async fn read(&self, r: &BlobRef, key: &[u8], fill: bool) -> Result<Vec<u8>> {
        if !self.files.contains_key(&r.file_id) {
            return Err(Error::corruption(
                blob_path(self.handles.dir(), r.file_id),
                r.offset,
                "a table points at a blob file the shard does not have",
            ));
        }
        if let Some(v) = self.handles.values.get_value(r.file_id, r.offset) {
            // A (file, offset) holds one entry for the file's life: a reference that disagrees
            // with it comes from a damaged table.
            if v.len() != r.value_len as usize {
                return Err(Error::corruption(
                    blob_path(self.handles.dir(), r.file_id),
                    r.offset,
                    "blob reference length differs from the entry",
                ));
            }
            return Ok(v.to_vec());
        }
        let value = self.handles.get(r.file_id).await?.read(r, key).await?;
        if fill {
            self.handles.cache_value(r, Rc::from(value.as_slice()));
        }
        Ok(value)
    }

    /// Replaces a blob record's reference by its value, in place (other records are left
    /// alone); the value is cached when `fill`.
    ///
    /// # Errors
    /// As [`BlobSet::read`].
    pub(crate) async fn resolve(&self, rec: &mut Record, fill: bool) -> Result<()> {
        if let Some(r) = rec.blob_ref() {
            rec.value = Some(self.read(&r, &rec.key, fill).await?);
            rec.blob = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{run, temp_dir};

    fn value(i: usize, len: usize) -> Vec<u8> {
        (0..len).map(|j| (i * 31 + j) as u8).collect()
    }

    #[test]
    fn reference_encoding_round_trips_and_rejects_nonsense() {
        let r = BlobRef {
            file_id: 7,
            offset: 3 * IO_ALIGN,
            value_len: 70_000,
        };
        assert_eq!(BlobRef::decode(&r.encode()), Some(r));
        assert_eq!(BlobRef::decode(&r.encode()[..19]), None);
        let mut unaligned = r;
        unaligned.offset += 1;
        assert_eq!(BlobRef::decode(&unaligned.encode()), None);
        let mut header = r;
        header.offset = 0;
        assert_eq!(BlobRef::decode(&header.encode()), None);
        assert_eq!(parse_blob_name("blob-00000000000000ff.blob"), Some(255));
        assert_eq!(parse_blob_name("blob-ff.blob"), None);
    }

    #[test]
    fn values_round_trip_through_a_blob_file() {
        let dir = temp_dir();
        let path = dir.path().to_path_buf();
        run(async move {
            let mut w = BlobWriter::create(&path, 1, ShardId(3))
                .await
                .expect("create");
            let lens = [65 << 10, 1, 300 << 10, 0, 10 << 20, 4090];
            let mut refs = Vec::new();
            for (i, &len) in lens.iter().enumerate() {
                let key = format!("key-{i}");
                refs.push((key.clone(), w.append(key.as_bytes(), &value(i, len)).await));
            }
            w.finish(&path).await.expect("finish");
            let f = BlobFile::open(&path, 1, ShardId(3)).await.expect("open");
            for (i, (key, r)) in refs.iter().enumerate() {
                let r = r.as_ref().expect("append");
                assert_eq!(r.offset % IO_ALIGN, 0);
                let got = f.read(r, key.as_bytes()).await.expect("read");
                assert_eq!(got, value(i, lens[i]), "value {i}");
            }
            // A reference read with the wrong key is refused, not answered.
            let (_, r) = &refs[0];
            assert!(matches!(
                f.read(r.as_ref().expect("append"), b"other").await,
                Err(Error::Corruption { .. })
            ));
            f.close().await.expect("close");
            assert!(matches!(
                BlobFile::open(&path, 1, ShardId(4)).await,
                Err(Error::Incompatible { .. })
            ));
        });
    }

    #[test]
    fn damaged_or_out_of_range_entries_are_typed_errors() {
        let dir = temp_dir();
        let path = dir.path().to_path_buf();
        let p = path.clone();
        let refs = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let r2 = refs.clone();
        run(async move {
            let mut w = BlobWriter::create(&p, 2, ShardId(0)).await.expect("create");
            for i in 0..3 {
                let r = w.append(b"k", &value(i, 100 << 10)).await.expect("append");
                r2.borrow_mut().push(r);
            }
            w.finish(&p).await.expect("finish");
        });
        let refs = refs.borrow().clone();
        // Flip a bit inside the second value.
        let file = blob_path(&path, 2);
        let mut bytes = std::fs::read(&file).expect("read");
        bytes[usize::try_from(refs[1].offset).expect("fits") + 5000] ^= 0x04;
        std::fs::write(&file, &bytes).expect("write");
        run(async move {
            let f = BlobFile::open(&path, 2, ShardId(0)).await.expect("open");
            assert_eq!(
                f.read(&refs[0], b"k").await.expect("read"),
                value(0, 100 << 10)
            );
            assert!(matches!(
                f.read(&refs[1], b"k").await,
                Err(Error::ChecksumMismatch { .. })
            ));
            let beyond = BlobRef {
                offset: refs[2].offset + 1024 * IO_ALIGN,
                ..refs[2]
            };
            assert!(matches!(
                f.read(&beyond, b"k").await,
                Err(Error::Corruption { .. })
            ));
            let misread = BlobRef {
                value_len: 5,
                ..refs[2]
            };
            assert!(matches!(
                f.read(&misread, b"k").await,
                Err(Error::Corruption { .. })
            ));
            f.close().await.expect("close");
        });
    }
}
