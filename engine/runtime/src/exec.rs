//! Executors, tasks, task queues and timers.
//!
//! INVARIANT: every function here except [`spawn_executor`] and [`Executor::new_unbound`] must
//! be called from inside an executor thread; what it returns is `!Send` and never leaves that
//! thread.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::time::Duration;

pub use glommio::task::JoinHandle;
pub use glommio::{Latency, Shares, TaskQueueHandle};

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

/// Bounds the CPU a loop takes at a stretch: [`CpuSlice::check`] lets the executor poll for I/O
/// and run other tasks ([`pause_for_io`]) once `slice` has passed since the last pause. Loops
/// over many keys in the background (anti-entropy's hashing, listing and comparing) call it
/// once per key, so that a foreground request waits for at most about one slice.
#[derive(Debug)]
pub struct CpuSlice {
    slice: Duration,
    started: std::time::Instant,
}

impl CpuSlice {
    /// A slice of `slice`, starting now.
    #[must_use]
    pub fn new(slice: Duration) -> CpuSlice {
        CpuSlice {
            slice,
            started: std::time::Instant::now(),
        }
    }

    /// Pauses if the slice is used up.
    pub async fn check(&mut self) {
        if self.started.elapsed() >= self.slice {
            pause_for_io().await;
            self.started = std::time::Instant::now();
        }
    }
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
    spawn_executor_with(
        &ExecutorSpec {
            name: name.to_string(),
            cpu,
            io_memory_bytes,
            spin_before_park: None,
        },
        make,
    )
}

/// How [`spawn_executor_with`] builds an executor.
#[derive(Clone, Debug)]
pub struct ExecutorSpec {
    /// The thread's name.
    pub name: String,
    /// The CPU to pin to (`None`: unbound).
    pub cpu: Option<usize>,
    /// The DMA arena's size.
    pub io_memory_bytes: usize,
    /// How long the executor polls for work before it parks in the kernel when idle (`None`:
    /// it parks at once). Spinning trades a busy CPU for a shorter wakeup.
    pub spin_before_park: Option<Duration>,
}

/// Starts an executor as `spec` says, running the future `make` returns until it finishes.
///
/// # Errors
/// As [`spawn_executor`].
pub fn spawn_executor_with<F, Fut, T>(spec: &ExecutorSpec, make: F) -> io::Result<ExecutorHandle<T>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let placement = spec
        .cpu
        .map_or(glommio::Placement::Unbound, glommio::Placement::Fixed);
    let mut builder = glommio::LocalExecutorBuilder::new(placement)
        .name(&spec.name)
        .io_memory(spec.io_memory_bytes);
    if let Some(spin) = spec.spin_before_park {
        builder = builder.spin_before_park(spin);
    }
    builder
        .spawn(make)
        .map(ExecutorHandle)
        .map_err(|e| io::Error::other(e.to_string()))
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

/// An executor run on the calling thread (see [`Executor::new_unbound`]).
#[derive(Debug)]
pub struct Executor(glommio::LocalExecutor);

impl Executor {
    /// Builds an executor suitable for tests and tools: not pinned, with a small DMA arena, so
    /// that many can run side by side on a two-core machine.
    ///
    /// # Errors
    /// When the executor cannot be built (for example `RLIMIT_MEMLOCK` below 512 KiB).
    pub fn new_unbound(io_memory_bytes: usize) -> io::Result<Executor> {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(io_memory_bytes)
            .make()
            .map(Executor)
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// Runs `fut` to completion on this thread, with this executor.
    pub fn run<T>(&self, fut: impl Future<Output = T>) -> T {
        self.0.run(fut)
    }
}
