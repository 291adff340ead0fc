//! The thin runtime layer: everything the engine asks of glommio goes through here.
//!
//! Dynacore pins `glommio = "=0.9.0"`, which is unmaintained upstream. Keeping every executor,
//! task, timer and direct-I/O call behind this module means that moving to a maintained fork (or
//! to another io_uring runtime) is a change to this one file.
//!
//! INVARIANT: every function here must be called from inside a glommio executor thread; the
//! values it returns are `!Send` and never leave that thread.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use glommio::io::{DmaFile, OpenOptions};

pub use glommio::task::JoinHandle;
pub use glommio::{Latency, Shares, TaskQueueHandle};

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

/// Spawns a task on the current executor's default queue. The task runs to completion even if
/// the handle is dropped.
pub fn spawn_detached<T: 'static>(fut: impl Future<Output = T> + 'static) -> JoinHandle<T> {
    glommio::spawn_local(fut).detach()
}

/// Spawns a task into `queue`; falls back to the default queue if the queue no longer exists.
pub fn spawn_detached_into<T: 'static>(
    fut: impl Future<Output = T> + 'static,
    queue: TaskQueueHandle,
) -> JoinHandle<T> {
    match glommio::spawn_local_into(fut, queue) {
        Ok(task) => task.detach(),
        Err(err) => panic!("task queue vanished while the shard is alive: {err}"),
    }
}

/// Creates a task queue on the current executor.
#[must_use]
pub fn create_task_queue(shares: usize, latency: Latency, name: &str) -> TaskQueueHandle {
    glommio::executor().create_task_queue(Shares::Static(shares), latency, name)
}

/// Creates a task queue whose shares `shares()` recomputes every 250 ms (a backlog controller:
/// a queue whose work piles up gets more of the CPU).
#[must_use]
pub fn create_dynamic_task_queue(
    shares: impl Fn() -> usize + 'static,
    latency: Latency,
    name: &str,
) -> TaskQueueHandle {
    struct Dynamic<F>(F);
    impl<F: Fn() -> usize> glommio::SharesManager for Dynamic<F> {
        fn shares(&self) -> usize {
            (self.0)().clamp(1, 1000)
        }
    }
    glommio::executor().create_task_queue(
        Shares::Dynamic(std::rc::Rc::new(Dynamic(shares))),
        latency,
        name,
    )
}

/// Yields to other tasks if this one has used up its time slice.
pub async fn yield_if_needed() {
    glommio::yield_if_needed().await;
}

/// Sleeps just long enough for the executor to poll for I/O and timers and to run whatever
/// became ready (a yield alone does not make glommio 0.9 poll).
pub async fn pause_for_io() {
    glommio::timer::sleep(Duration::from_micros(1)).await;
}

/// Sleeps for `d`.
pub async fn sleep(d: Duration) {
    glommio::timer::sleep(d).await;
}

/// A task that is cancelled when dropped (see [`spawn`]).
pub use glommio::Task;

/// Spawns a task on the current executor's default queue; dropping the returned [`Task`]
/// cancels it (call `.detach()` to keep it running).
pub fn spawn<T: 'static>(fut: impl Future<Output = T> + 'static) -> Task<T> {
    glommio::spawn_local(fut)
}

/// Runs `fut` for at most `d`: `None` if the time ran out first (the future is dropped).
pub async fn timeout<T>(d: Duration, fut: impl Future<Output = T>) -> Option<T> {
    futures_lite::FutureExt::or(async { Some(fut.await) }, async {
        sleep(d).await;
        None
    })
    .await
}

/// The ids of the machine's online CPUs (from `/sys/devices/system/cpu/online`, which is what
/// glommio pins by; the process's affinity mask is not consulted).
///
/// # Errors
/// When the topology cannot be read.
pub fn online_cpus() -> io::Result<Vec<usize>> {
    let set = glommio::CpuSet::online().map_err(|e| io::Error::other(e.to_string()))?;
    let mut cpus: Vec<usize> = set.iter().map(|l| l.cpu).collect();
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// An executor running on its own thread (see [`spawn_executor`]).
#[derive(Debug)]
pub struct ExecutorHandle<T: Send + 'static>(glommio::ExecutorJoinHandle<T>);

impl<T: Send + 'static> ExecutorHandle<T> {
    /// Waits for the executor's top-level future to finish and returns its output.
    ///
    /// # Errors
    /// When the executor thread panicked or could not start.
    pub fn join(self) -> io::Result<T> {
        self.0.join().map_err(|e| io::Error::other(e.to_string()))
    }
}

/// Starts an executor on a new thread named `name`, pinned to `cpu` when given (else unbound),
/// with an `io_memory_bytes` DMA arena, running the future `make` returns until it finishes.
///
/// # Errors
/// When the executor cannot be built (a CPU that does not exist, `RLIMIT_MEMLOCK` too low).
pub fn spawn_executor<F, Fut, T>(
    name: &str,
    cpu: Option<usize>,
    io_memory_bytes: usize,
    make: F,
) -> io::Result<ExecutorHandle<T>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let placement = cpu.map_or(glommio::Placement::Unbound, glommio::Placement::Fixed);
    glommio::LocalExecutorBuilder::new(placement)
        .name(name)
        .io_memory(io_memory_bytes)
        .spawn(make)
        .map(ExecutorHandle)
        .map_err(|e| io::Error::other(e.to_string()))
}

/// A TCP listener on the current executor.
#[derive(Debug)]
pub struct TcpListener(glommio::net::TcpListener);

impl TcpListener {
    /// Listens on `addr` (port 0: any free port).
    ///
    /// # Errors
    /// Any error from `bind` or `listen`.
    pub fn bind(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
        glommio::net::TcpListener::bind(addr)
            .map(TcpListener)
            .map_err(io::Error::from)
    }

    /// The address it listens on.
    ///
    /// # Errors
    /// Any error from `getsockname`.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.0.local_addr().map_err(io::Error::from)
    }

    /// The next connection.
    ///
    /// # Errors
    /// Any error from `accept`.
    pub async fn accept(&self) -> io::Result<TcpStream> {
        self.0
            .accept()
            .await
            .map(TcpStream)
            .map_err(io::Error::from)
    }
}

/// A TCP connection on the current executor.
#[derive(Debug)]
pub struct TcpStream(glommio::net::TcpStream);

impl TcpStream {
    /// Connects to `addr`, giving up after `timeout`; the connection has `TCP_NODELAY` set.
    ///
    /// # Errors
    /// `TimedOut`, or any error from `connect`.
    pub async fn connect(addr: std::net::SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        let s = glommio::net::TcpStream::connect_timeout(addr, timeout)
            .await
            .map_err(io::Error::from)?;
        s.set_nodelay(true).map_err(io::Error::from)?;
        Ok(TcpStream(s))
    }

    /// Connects to `addr` from the local address `from` (port chosen by the system), giving up
    /// after `timeout`: what a node does so that its peers see its connections come from its
    /// own address (a multi-homed host, a firewall, a test's fault-injecting proxy).
    ///
    /// # Errors
    /// `TimedOut`, or any error from `bind` or `connect`.
    pub async fn connect_from(
        from: std::net::IpAddr,
        addr: std::net::SocketAddr,
        timeout: Duration,
    ) -> io::Result<TcpStream> {
        use socket2::{Domain, Protocol, SockAddr, Socket, Type};
        let domain = if addr.is_ipv6() {
            Domain::IPV6
        } else {
            Domain::IPV4
        };
        let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
        socket.set_nonblocking(true)?;
        socket.bind(&SockAddr::from(std::net::SocketAddr::new(from, 0)))?;
        match socket.connect(&SockAddr::from(addr)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(EINPROGRESS) => {
                // Wait for the handshake (on loopback and LANs it is usually done at once).
                let until = std::time::Instant::now() + timeout;
                let mut pause = Duration::from_micros(50);
                loop {
                    if let Some(e) = socket.take_error()? {
                        return Err(e);
                    }
                    if socket.peer_addr().is_ok() {
                        break;
                    }
                    if std::time::Instant::now() >= until {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "connection timed out",
                        ));
                    }
                    glommio::timer::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(5));
                }
            }
            Err(e) => return Err(e),
        }
        let s = glommio::net::TcpStream::from(socket);
        s.set_nodelay(true).map_err(io::Error::from)?;
        Ok(TcpStream(s))
    }

    /// Sets `TCP_NODELAY` (no Nagle delay for small writes).
    ///
    /// # Errors
    /// Any error from `setsockopt`.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.0.set_nodelay(on).map_err(io::Error::from)
    }

    /// Reads what is available (at least one byte, or 0 at end of stream) into `buf`.
    ///
    /// # Errors
    /// Any read error.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        futures_lite::AsyncReadExt::read(&mut self.0, buf).await
    }

    /// Closes the writing direction (the peer reads end of stream); reading goes on.
    ///
    /// # Errors
    /// Any error from `shutdown`.
    pub async fn shutdown_write(&self) -> io::Result<()> {
        self.0
            .shutdown(std::net::Shutdown::Write)
            .await
            .map_err(io::Error::from)
    }

    /// Splits the connection into halves that separate tasks of this executor can read and
    /// write at the same time.
    #[must_use]
    pub fn split(self) -> (TcpReader, TcpWriter) {
        let (r, w) = futures_lite::io::split(self.0);
        (TcpReader(r), TcpWriter(w))
    }

    /// Fills `buf` from the connection.
    ///
    /// # Errors
    /// `UnexpectedEof` if the peer closes first; any read error.
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        futures_lite::AsyncReadExt::read_exact(&mut self.0, buf).await
    }

    /// Writes all of `buf` and flushes it.
    ///
    /// # Errors
    /// Any write error.
    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        futures_lite::AsyncWriteExt::write_all(&mut self.0, buf).await?;
        futures_lite::AsyncWriteExt::flush(&mut self.0).await
    }
}

/// A UDP socket on the current executor.
#[derive(Debug)]
pub struct UdpSocket(glommio::net::UdpSocket);

impl UdpSocket {
    /// Binds `addr`.
    ///
    /// # Errors
    /// Any error from `bind`.
    pub fn bind(addr: std::net::SocketAddr) -> io::Result<UdpSocket> {
        glommio::net::UdpSocket::bind(addr)
            .map(UdpSocket)
            .map_err(io::Error::from)
    }

    /// The address it is bound to.
    ///
    /// # Errors
    /// Any error from `getsockname`.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.0.local_addr().map_err(io::Error::from)
    }

    /// Sends one datagram.
    ///
    /// # Errors
    /// Any error from `sendto`.
    pub async fn send_to(&self, buf: &[u8], to: std::net::SocketAddr) -> io::Result<usize> {
        self.0.send_to(buf, to).await.map_err(io::Error::from)
    }

    /// Receives one datagram into `buf` (a longer one is cut to `buf`'s size).
    ///
    /// # Errors
    /// Any error from `recvfrom`.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, std::net::SocketAddr)> {
        self.0.recv_from(buf).await.map_err(io::Error::from)
    }
}

/// The reading half of a [`TcpStream`].
#[derive(Debug)]
pub struct TcpReader(futures_lite::io::ReadHalf<glommio::net::TcpStream>);

impl TcpReader {
    /// Reads what is available (at least one byte, or 0 at end of stream) into `buf`.
    ///
    /// # Errors
    /// Any read error.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        futures_lite::AsyncReadExt::read(&mut self.0, buf).await
    }

    /// Fills `buf` from the connection.
    ///
    /// # Errors
    /// `UnexpectedEof` if the peer closes first; any read error.
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        futures_lite::AsyncReadExt::read_exact(&mut self.0, buf).await
    }
}

/// The writing half of a [`TcpStream`].
#[derive(Debug)]
pub struct TcpWriter(futures_lite::io::WriteHalf<glommio::net::TcpStream>);

impl TcpWriter {
    /// Writes all of `buf` and flushes it.
    ///
    /// # Errors
    /// Any write error.
    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        futures_lite::AsyncWriteExt::write_all(&mut self.0, buf).await?;
        futures_lite::AsyncWriteExt::flush(&mut self.0).await
    }

    /// Closes the writing direction (the peer reads end of stream).
    ///
    /// # Errors
    /// Any error from `shutdown`.
    pub async fn close(&mut self) -> io::Result<()> {
        futures_lite::AsyncWriteExt::close(&mut self.0).await
    }
}

/// How often [`ensure_heartbeat`] wakes the executor.
pub const HEARTBEAT: Duration = Duration::from_millis(50);

thread_local! {
    /// Alive while this thread's executor runs a heartbeat task (the task holds the `Rc`; it
    /// is dropped with the executor).
    static HEARTBEAT_ALIVE: RefCell<std::rc::Weak<()>> = const { RefCell::new(std::rc::Weak::new()) };
}

/// Makes sure the current executor wakes at least every [`HEARTBEAT`] (once per executor;
/// later calls do nothing).
///
/// NOTE: glommio 0.9 can lose a wakeup. About once in a few hundred runs of a flush-and-compact
/// test, the executor went to sleep in `io_uring_enter` with no timeout while a flush and a
/// table deletion waited for I/O that had completed: the test hung until a timer woke the
/// executor, and then went on at once (seen with a 20 s watchdog timer; the completions were
/// there to be reaped). A periodic timer bounds such a stall to one heartbeat instead of
/// forever. The cost is one wakeup of an idle executor per heartbeat.
pub fn ensure_heartbeat() {
    if HEARTBEAT_ALIVE.with(|h| h.borrow().strong_count() > 0) {
        return;
    }
    let alive = std::rc::Rc::new(());
    HEARTBEAT_ALIVE.with(|h| *h.borrow_mut() = std::rc::Rc::downgrade(&alive));
    spawn_detached(async move {
        let _alive = alive;
        loop {
            sleep(HEARTBEAT).await;
        }
    });
}

/// Builds an executor suitable for tests and tools: not pinned, with a small DMA arena, so that
/// many can run side by side on a two-core machine.
///
/// # Errors
/// When the executor cannot be built (for example `RLIMIT_MEMLOCK` below 512 KiB).
pub fn build_unbound_executor(io_memory_bytes: usize) -> io::Result<glommio::LocalExecutor> {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(io_memory_bytes)
        .make()
        .map_err(|e| io::Error::other(e.to_string()))
}

thread_local! {
    /// Test hook: when non-zero, that many more `fdatasync` calls succeed before every later one
    /// fails with EIO. Only compiled into the crate's own unit tests.
    static FAIL_SYNC_AFTER: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Makes every `fdatasync` after the next `successes` fail with EIO on this thread (tests only).
#[cfg(test)]
pub(crate) fn inject_sync_failure_after(successes: Option<u64>) {
    FAIL_SYNC_AFTER.with(|c| c.set(successes));
}

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

/// `EINPROGRESS` on Linux: a non-blocking connect under way.
const EINPROGRESS: i32 = 115;
