//! Direct-I/O files and the file-system calls that go with them.
//!
//! INVARIANT: called from inside an executor thread only.

#[cfg(feature = "fault-injection")]
use std::cell::Cell;
use std::cell::RefCell;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use glommio::io::{DmaFile, OpenOptions};

/// Alignment of every direct-I/O write position and length, in bytes.
///
/// The disks Dynacore targets have 512 B logical and 4 KiB physical blocks; writing whole 4 KiB
/// blocks keeps every write aligned whatever the logical block size is (up to 4 KiB).
pub const IO_ALIGN: u64 = 4096;

/// Rounds `v` up to the next multiple of [`IO_ALIGN`].
#[must_use]
pub const fn align_up(v: u64) -> u64 {
    v.div_ceil(IO_ALIGN) * IO_ALIGN
}

#[cfg(feature = "fault-injection")]
thread_local! {
    /// Test hook: when set, that many more `fdatasync` calls succeed before every later one
    /// fails with EIO.
    static FAIL_SYNC_AFTER: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Makes every `fdatasync` after the next `successes` fail with EIO on this thread (`None`:
/// none fails). For tests of the engine's fencing; only with the `fault-injection` feature.
#[cfg(feature = "fault-injection")]
pub fn inject_sync_failure_after(successes: Option<u64>) {
    FAIL_SYNC_AFTER.with(|c| c.set(successes));
}

#[cfg(feature = "fault-injection")]
fn injected_sync_failure() -> bool {
    FAIL_SYNC_AFTER.with(|c| match c.get() {
        None => false,
        Some(0) => true,
        Some(n) => {
            c.set(Some(n - 1));
            false
        }
    })
}

#[cfg(not(feature = "fault-injection"))]
const fn injected_sync_failure() -> bool {
    false
}

/// Name of the small file each data directory keeps for the poll-ring probe.
pub const IOPOLL_PROBE_NAME: &str = ".iopoll-probe";

thread_local! {
    /// Devices whose io_uring poll-ring support this thread has made glommio probe correctly.
    static PROBED_DEVICES: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// Makes glommio's poll-ring probe for the device holding `path` run against a non-empty file.
///
/// NOTE: glommio 0.9 decides once per device (process-wide) whether reads may use the io_uring
/// poll ring, by reading 512 bytes at offset 0 of the first file it opens there. If that file is
/// empty the read "succeeds" with 0 bytes, the poll ring is wrongly enabled, and every later
/// read on that device fails with EOPNOTSUPP on disks without poll queues (virtio, most SATA).
/// Opening a non-empty file first makes the probe honest.
async fn ensure_probed(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dev = std::fs::metadata(dir)?.dev();
    if PROBED_DEVICES.with(|d| d.borrow().contains(&dev)) {
        return Ok(());
    }
    let probe = dir.join(IOPOLL_PROBE_NAME);
    if std::fs::metadata(&probe).map_or(true, |m| m.len() < IO_ALIGN) {
        std::fs::write(&probe, vec![0u8; IO_ALIGN as usize])?;
    }
    let f = DmaFile::open(&probe).await?;
    f.close().await?;
    PROBED_DEVICES.with(|d| d.borrow_mut().push(dev));
    Ok(())
}

/// A file opened for direct I/O. Writes must be [`IO_ALIGN`]-aligned in position and length.
#[derive(Debug)]
pub struct File {
    inner: DmaFile,
    path: PathBuf,
    /// Opened with `O_DSYNC`: every completed write is durable (FUA or write + flush).
    dsync: bool,
}

impl File {
    async fn open_with(path: &Path, options: &OpenOptions, dsync: bool) -> io::Result<File> {
        ensure_probed(path).await?;
        let inner = options.dma_open(path).await?;
        Ok(File {
            inner,
            path: path.to_path_buf(),
            dsync,
        })
    }

    /// Opens (creating it if needed) a file for direct reads and writes.
    ///
    /// # Errors
    /// Any I/O error, with the path in its message.
    pub async fn open_rw(path: &Path) -> io::Result<File> {
        let mut o = OpenOptions::new();
        o.read(true).write(true).create(true);
        Self::open_with(path, &o, false).await
    }

    /// Opens an existing file for direct reads and writes with `O_DSYNC`: a write is durable
    /// when it completes, with no separate `fdatasync` (one I/O per group commit instead of
    /// two).
    ///
    /// # Errors
    /// Any I/O error.
    pub async fn open_rw_dsync(path: &Path) -> io::Result<File> {
        let mut o = OpenOptions::new();
        o.read(true).write(true).custom_flags(libc_o_dsync());
        Self::open_with(path, &o, true).await
    }

    /// Whether completed writes are durable by themselves (`O_DSYNC`).
    #[must_use]
    pub fn is_dsync(&self) -> bool {
        self.dsync
    }

    /// Creates a new file for direct reads and writes; fails if it exists.
    ///
    /// # Errors
    /// Any I/O error, `AlreadyExists` included.
    pub async fn create_new(path: &Path) -> io::Result<File> {
        let mut o = OpenOptions::new();
        o.read(true).write(true).create_new(true);
        Self::open_with(path, &o, false).await
    }

    /// Opens an existing file for direct reads.
    ///
    /// # Errors
    /// Any I/O error.
    pub async fn open_read(path: &Path) -> io::Result<File> {
        let mut o = OpenOptions::new();
        o.read(true);
        Self::open_with(path, &o, false).await
    }

    /// The path this file was opened with.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `data` at `pos`. Both must be multiples of [`IO_ALIGN`].
    ///
    /// # Errors
    /// Any I/O error, or a short write.
    pub async fn write_aligned(&self, pos: u64, data: &[u8]) -> io::Result<()> {
        self.write_filled(pos, data.len(), |out| out.copy_from_slice(data))
            .await
    }

    /// Writes `len` bytes at `pos`, produced by `fill` straight into the DMA buffer (no
    /// intermediate copy). Both must be multiples of [`IO_ALIGN`].
    ///
    /// # Errors
    /// Any I/O error, or a short write.
    pub async fn write_filled(
        &self,
        pos: u64,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> io::Result<()> {
        assert!(
            pos.is_multiple_of(IO_ALIGN) && (len as u64).is_multiple_of(IO_ALIGN),
            "unaligned direct write: pos {pos}, len {len}"
        );
        if self.dsync && injected_sync_failure() {
            return Err(io::Error::other(format!(
                "injected O_DSYNC write failure on {}",
                self.path.display()
            )));
        }
        let mut buf = self.inner.alloc_dma_buffer(len);
        fill(buf.as_bytes_mut());
        let written = self.inner.write_at(buf, pos).await?;
        if written != len {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!(
                    "short direct write to {}: {written} of {len} bytes at {pos}",
                    self.path.display()
                ),
            ));
        }
        Ok(())
    }

    /// Reads up to `len` bytes at `pos` (any alignment); shorter only at end of file.
    ///
    /// # Errors
    /// Any I/O error.
    pub async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let result = self.inner.read_at(pos, len).await?;
        Ok(result.to_vec())
    }

    /// Reads exactly `len` bytes at `pos`.
    ///
    /// # Errors
    /// Any I/O error, or `UnexpectedEof` if the file is shorter.
    pub async fn read_exact_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let data = self.read_at(pos, len).await?;
        if data.len() != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: wanted {len} bytes at offset {pos}, file ends after {}",
                    self.path.display(),
                    data.len()
                ),
            ));
        }
        Ok(data)
    }

    /// Makes written data durable (`fdatasync`).
    ///
    /// # Errors
    /// Any I/O error. After an error the caller must not assume that any unsynced write is
    /// durable, nor retry the sync and carry on.
    pub async fn sync_data(&self) -> io::Result<()> {
        if injected_sync_failure() {
            return Err(io::Error::other(format!(
                "injected fdatasync failure on {}",
                self.path.display()
            )));
        }
        self.inner.fdatasync().await.map_err(io::Error::from)
    }

    /// Allocates `size` bytes of disk space for the file without changing its apparent size
    /// unless `extend` is set.
    ///
    /// # Errors
    /// Any I/O error (ENOSPC included).
    pub async fn pre_allocate(&self, size: u64, extend: bool) -> io::Result<()> {
        self.inner
            .pre_allocate(size, !extend)
            .await
            .map_err(io::Error::from)
    }

    /// Truncates or extends the file to `size` bytes.
    ///
    /// # Errors
    /// Any I/O error.
    pub async fn truncate(&self, size: u64) -> io::Result<()> {
        self.inner.truncate(size).await.map_err(io::Error::from)
    }

    /// The file's size in bytes.
    ///
    /// # Errors
    /// Any I/O error.
    pub async fn size(&self) -> io::Result<u64> {
        self.inner.file_size().await.map_err(io::Error::from)
    }

    /// Closes the file.
    ///
    /// # Errors
    /// Any I/O error from `close`.
    pub async fn close(self) -> io::Result<()> {
        self.inner.close().await.map_err(io::Error::from)
    }
}

/// `O_DSYNC` on Linux (all architectures Dynacore builds for).
const fn libc_o_dsync() -> i32 {
    0o10000
}

/// Makes the directory entries of `dir` durable (fsync of the directory).
///
/// # Errors
/// Any I/O error.
pub async fn sync_dir(dir: &Path) -> io::Result<()> {
    let d = glommio::io::Directory::open(dir).await?;
    d.sync().await?;
    d.close().await?;
    Ok(())
}

/// Renames `from` to `to` (atomic within one filesystem).
///
/// # Errors
/// Any I/O error.
pub async fn rename(from: &Path, to: &Path) -> io::Result<()> {
    glommio::io::rename(from, to).await.map_err(io::Error::from)
}

/// Removes a file.
///
/// # Errors
/// Any I/O error.
pub async fn remove(path: &Path) -> io::Result<()> {
    glommio::io::remove(path).await.map_err(io::Error::from)
}
