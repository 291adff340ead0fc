//! Running a workload: a load phase that inserts the records, and a run phase of the
//! workload's operations, closed loop (each connection's next batch after the previous one
//! answered) or open loop (on a schedule, latency from the due time).
//!
//! Each thread runs one executor with its own connections ([`crate::driver`]); a thread's
//! connections are its workers. In the open loop a scheduler queues each operation at its due
//! time and the workers take them from the queue, so a server that falls behind makes the
//! queue, and the measured latencies, grow — nothing is left unsent and unmeasured. Figures
//! are merged across threads at the end; [`Live`] shows them while the run goes on.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dynacore_client::glommio::Client;
use dynacore_client::{ClientOptions, Quorum};
use dynacore_runtime as runtime;
use hdrhistogram::Histogram;

use crate::driver::{Conn, Done, DriverKind, Protocol, Settings, Wire};
use crate::recording::{Latencies, Schedule};
use crate::workload::{Distribution, Generator, OpKind, Operation, Workload};

/// What to run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Where to send requests: nodes of Dynacore's binary protocol (native; the topology is
    /// fetched from the first that answers), HTTP API addresses (http) or Redis-protocol
    /// servers (resp). Connections are spread over them.
    pub targets: Vec<SocketAddr>,
    /// How requests are sent.
    pub driver: DriverKind,
    /// The workload.
    pub workload: Workload,
    /// Its distribution, when not the workload's own.
    pub distribution: Option<Distribution>,
    /// Records loaded (and read over).
    pub records: u64,
    /// Operations in the run phase (`None`: until `duration`).
    pub operations: Option<u64>,
    /// How long the run phase lasts when `operations` is not given.
    pub duration: Duration,
    /// Bytes per value.
    pub value_size: usize,
    /// Prefix of every key.
    pub key_prefix: String,
    /// Connections per thread (native: requests in flight on the thread's SDK client).
    pub connections: usize,
    /// Operations sent at once on a connection before reading their answers.
    pub pipeline: usize,
    /// Executors (threads).
    pub threads: usize,
    /// Pin thread `i` to the `i`-th CPU this process may run on.
    pub pin: bool,
    /// Open loop at this many operations a second (all threads together); `None`: closed.
    pub rate: Option<f64>,
    /// Write quorum.
    pub w: Quorum,
    /// Read quorum.
    pub r: Quorum,
    /// Run the load phase.
    pub load: bool,
    /// Run the run phase.
    pub run: bool,
    /// Seed of the operation sequence.
    pub seed: u64,
    /// Time at the start of the run phase whose figures are dropped.
    pub warmup: Duration,
    /// Deadline of each request (a batch, when pipelined).
    pub timeout: Duration,
}

/// The figures of one phase.
#[derive(Clone, Debug, Default)]
pub struct PhaseReport {
    /// Per operation.
    pub ops: BTreeMap<OpKind, Latencies>,
    /// Reads of keys that were not there.
    pub not_found: u64,
    /// Operations skipped because the driver cannot run them (scans).
    pub skipped: u64,
    /// How long the phase took (after the warm-up).
    pub elapsed: Duration,
    /// Latencies of every operation that succeeded, per second of the phase (microseconds).
    pub timeline: Vec<Histogram<u64>>,
    /// Open loop only: how late the client itself queued each operation after its due time
    /// (microseconds). Large values mean `loadgen` could not keep to the schedule (a CPU
    /// shortage on the client), and that lag is inside the latencies.
    pub schedule_lag: Option<Histogram<u64>>,
}

impl PhaseReport {
    fn merge(&mut self, other: &PhaseReport) {
        for (op, l) in &other.ops {
            self.ops.entry(*op).or_default().merge(l);
        }
        self.not_found += other.not_found;
        self.skipped += other.skipped;
        self.elapsed = self.elapsed.max(other.elapsed);
        if self.timeline.len() < other.timeline.len() {
            self.timeline
                .resize_with(other.timeline.len(), new_histogram);
        }
        for (mine, theirs) in self.timeline.iter_mut().zip(&other.timeline) {
            // Same bounds on both sides: adding cannot fail.
            let _ = mine.add(theirs);
        }
        if let Some(theirs) = &other.schedule_lag {
            let _ = self
                .schedule_lag
                .get_or_insert_with(new_histogram)
                .add(theirs);
        }
    }

    /// Notes one operation's outcome; `start` is when it was due (open loop) or sent.
    fn note(&mut self, kind: OpKind, done: &Done, start: Instant, end: Instant, epoch: Instant) {
        let l = self.ops.entry(kind).or_default();
        match done {
            Done::Ok | Done::NotFound => {
                let micros = l.record(start, end);
                let second = end.saturating_duration_since(epoch).as_secs();
                let second = usize::try_from(second).unwrap_or(usize::MAX).min(1 << 20);
                if self.timeline.len() <= second {
                    self.timeline.resize_with(second + 1, new_histogram);
                }
                self.timeline[second].saturating_record(micros);
            }
            Done::Skipped => self.skipped += 1,
            Done::Failed(kind) => l.error(kind),
        }
        if *done == Done::NotFound {
            self.not_found += 1;
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    Latencies::new().histogram().clone()
}

/// Why a run could not start.
#[derive(Debug)]
pub struct RunError(pub String);

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RunError {}

/// Which phase a run is in, as [`Live::phase`] tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Connecting.
    Starting,
    /// Inserting the records.
    Load,
    /// Running the workload.
    Run,
}

/// Figures all threads update while a run goes on, for a progress display.
#[derive(Debug)]
pub struct Live {
    phase: AtomicU8,
    done: AtomicU64,
    errors: AtomicU64,
    /// One histogram per thread, so that threads never contend for one.
    interval: Vec<Mutex<Histogram<u64>>>,
    run_started: Mutex<Option<Instant>>,
    finished: AtomicUsize,
    /// Threads at the start of the run phase (or gone), and the run's common start.
    arrived: Mutex<(usize, Option<Instant>)>,
    all_arrived: std::sync::Condvar,
    threads: usize,
}

impl Live {
    fn new(threads: usize) -> Live {
        Live {
            phase: AtomicU8::new(0),
            done: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            interval: (0..threads).map(|_| Mutex::new(new_histogram())).collect(),
            run_started: Mutex::new(None),
            finished: AtomicUsize::new(0),
            arrived: Mutex::new((0, None)),
            all_arrived: std::sync::Condvar::new(),
            threads,
        }
    }

    /// Counts this thread in at the start of the run phase; once every thread is (or has
    /// stopped), returns the instant the run phase starts for all of them.
    fn arrive(&self) -> Instant {
        let mut a = self.count_arrival();
        loop {
            if let Some(start) = a.1 {
                return start;
            }
            // Every thread arrives or is counted by its guard when it stops: this ends.
            a = self
                .all_arrived
                .wait_timeout(a, Duration::from_millis(100))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Counts one more thread at the start of the run phase (or gone); the last one sets
    /// the common start and wakes the others.
    fn count_arrival(&self) -> std::sync::MutexGuard<'_, (usize, Option<Instant>)> {
        let mut a = self
            .arrived
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        a.0 += 1;
        if a.0 >= self.threads && a.1.is_none() {
            a.1 = Some(Instant::now());
            self.all_arrived.notify_all();
        }
        a
    }

    /// The phase the first thread is in.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Starting,
            1 => Phase::Load,
            _ => Phase::Run,
        }
    }

    /// Operations completed in this phase, and how many of them failed.
    pub fn done(&self) -> (u64, u64) {
        (
            self.done.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }

    /// When the run phase started, once it has.
    pub fn run_started(&self) -> Option<Instant> {
        *self
            .run_started
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The latencies recorded since the last call (microseconds), and a fresh start.
    pub fn take_interval(&self) -> Histogram<u64> {
        let mut out = new_histogram();
        for h in &self.interval {
            let mut h = h.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let _ = out.add(&*h);
            h.reset();
        }
        out
    }

    fn enter(&self, phase: Phase) {
        let n = match phase {
            Phase::Starting => 0,
            Phase::Load => 1,
            Phase::Run => 2,
        };
        if self.phase.fetch_max(n, Ordering::Relaxed) < n {
            self.done.store(0, Ordering::Relaxed);
            self.errors.store(0, Ordering::Relaxed);
            if phase == Phase::Run {
                *self
                    .run_started
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
            }
        }
    }

    fn note(&self, t: usize, done: &Done, micros: u64) {
        self.done.fetch_add(1, Ordering::Relaxed);
        match done {
            Done::Failed(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
            Done::Skipped => {}
            Done::Ok | Done::NotFound => {
                self.interval[t]
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .saturating_record(micros);
            }
        }
    }
}

/// The load phase's report, then the run phase's; `tick` is called about four times a
/// second with the live figures until the run ends.
///
/// # Errors
/// [`RunError`] when there is no target or none answers, or an executor cannot start.
pub fn run(
    config: &RunConfig,
    tick: &mut dyn FnMut(&Live),
) -> Result<(Option<PhaseReport>, Option<PhaseReport>), RunError> {
    if config.targets.is_empty() {
        return Err(RunError("no target to send requests to".into()));
    }
    let threads = config.threads.max(1);
    let cores = if config.pin {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    let live = Arc::new(Live::new(threads));
    let mut handles = Vec::with_capacity(threads);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let (go_tx, go_rx) = flume::bounded::<bool>(threads);
    for t in 0..threads {
        let config = config.clone();
        let ready_tx = ready_tx.clone();
        let go = go_rx.clone();
        let core = (!cores.is_empty()).then(|| cores[t % cores.len()]);
        let live = live.clone();
        let handle =
            runtime::spawn_executor(&format!("loadgen-{t}"), None, 4 << 20, move || async move {
                if let Some(core) = core {
                    if !core_affinity::set_for_current(core) {
                        eprintln!("loadgen: thread {t} could not be pinned to CPU {}", core.id);
                    }
                }
                let mut guard = ThreadGuard {
                    live: live.clone(),
                    ready: Some(ready_tx),
                    arrived: false,
                };
                thread_main(t, threads, &config, &mut guard, &go).await
            })
            .map_err(|e| RunError(format!("cannot start thread {t}: {e}")))?;
        handles.push(handle);
    }
    drop(ready_tx);
    let mut failure = None;
    for _ in 0..threads {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some("a thread stopped".into()),
        }
    }
    // Every thread connected (or one failed): all start together, or all stop.
    for _ in 0..threads {
        let _ = go_tx.send(failure.is_none());
    }
    if failure.is_none() {
        while live.finished.load(Ordering::Relaxed) < threads {
            std::thread::sleep(Duration::from_millis(250));
            tick(&live);
        }
    }
    let mut load = PhaseReport::default();
    let mut run = PhaseReport::default();
    for h in handles {
        match h.join() {
            Ok(Some((l, r))) => {
                load.merge(&l);
                run.merge(&r);
            }
            Ok(None) => {}
            Err(e) => failure = failure.or(Some(format!("a thread failed: {e}"))),
        }
    }
    if let Some(e) = failure {
        return Err(RunError(e));
    }
    Ok((config.load.then_some(load), config.run.then_some(run)))
}

fn targets_text(targets: &[SocketAddr]) -> String {
    targets
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// This thread's connections, each checked open (so that an unreachable target fails the
/// run before it starts).
async fn connect(t: usize, config: &RunConfig) -> Result<Vec<Conn>, String> {
    let n = config.connections.max(1);
    let protocol = match config.driver {
        DriverKind::Native => {
            let options = ClientOptions {
                timeout: config.timeout,
                ..ClientOptions::default()
            };
            let client = Client::connect_with(&config.targets, options)
                .await
                .map_err(|e| format!("cannot reach {}: {e}", targets_text(&config.targets)))?;
            return Ok((0..n).map(|_| Conn::Native(client.clone())).collect());
        }
        DriverKind::Http => Protocol::Http,
        DriverKind::Resp => Protocol::Resp,
    };
    let mut conns = Vec::with_capacity(n);
    for c in 0..n {
        let addr = config.targets[(t * n + c) % config.targets.len()];
        let mut wire = Wire::new(protocol, addr);
        wire.open(config.timeout)
            .await
            .map_err(|e| format!("cannot reach {addr}: {e}"))?;
        conns.push(Conn::Wire(wire));
    }
    Ok(conns)
}

/// What a thread owes the others however it ends, a panic included: its answer to "are you
/// connected?", its arrival at the start of the run phase, and the count of finished threads.
struct ThreadGuard {
    live: Arc<Live>,
    ready: Option<std::sync::mpsc::Sender<Result<(), String>>>,
    arrived: bool,
}

impl ThreadGuard {
    fn ready(&mut self, r: Result<(), String>) {
        if let Some(tx) = self.ready.take() {
            let _ = tx.send(r);
        }
    }

    fn arrive(&mut self) -> Instant {
        self.arrived = true;
        self.live.arrive()
    }
}

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        self.ready(Err("a thread stopped before it connected".into()));
        if !self.arrived {
            drop(self.live.count_arrival());
        }
        self.live.finished.fetch_add(1, Ordering::Relaxed);
    }
}

async fn thread_main(
    t: usize,
    threads: usize,
    config: &RunConfig,
    guard: &mut ThreadGuard,
    go: &flume::Receiver<bool>,
) -> Option<(PhaseReport, PhaseReport)> {
    let live = &guard.live.clone();
    let mut conns = match connect(t, config).await {
        Ok(c) => c,
        Err(e) => {
            guard.ready(Err(e));
            return None;
        }
    };
    guard.ready(Ok(()));
    if !go.recv_async().await.unwrap_or(false) {
        return None;
    }
    let settings = Rc::new(Settings {
        key_prefix: config.key_prefix.clone(),
        value: (0..config.value_size).map(|i| (i % 251) as u8).collect(),
        w: config.w,
        r: config.r,
        timeout: config.timeout,
    });
    let mut load = PhaseReport::default();
    if config.load {
        live.enter(Phase::Load);
        (load, conns) = load_phase(t, threads, config, conns, &settings, live).await;
    }
    let mut run = PhaseReport::default();
    if config.run {
        // Every thread's load is done before any thread's run starts, and all share one
        // start (this thread has nothing else to do while it waits).
        let started = guard.arrive();
        live.enter(Phase::Run);
        run = run_phase(t, threads, config, conns, &settings, live, started).await;
    }
    Some((load, run))
}

/// Where a phase's outcomes go.
#[derive(Debug)]
struct Sink {
    settings: Rc<Settings>,
    report: RefCell<PhaseReport>,
    live: Arc<Live>,
    /// This thread.
    t: usize,
    /// Operations that started (were due or sent) before this are not counted (warm-up).
    measured_from: Instant,
}

impl Sink {
    fn new(
        t: usize,
        settings: &Rc<Settings>,
        live: &Arc<Live>,
        measured_from: Instant,
    ) -> Rc<Sink> {
        Rc::new(Sink {
            t,
            settings: settings.clone(),
            report: RefCell::new(PhaseReport::default()),
            live: live.clone(),
            measured_from,
        })
    }

    fn note(&self, kind: OpKind, done: &Done, start: Instant, end: Instant) {
        self.live.note(
            self.t,
            done,
            u64::try_from(end.saturating_duration_since(start).as_micros()).unwrap_or(u64::MAX),
        );
        if start >= self.measured_from {
            self.report
                .borrow_mut()
                .note(kind, done, start, end, self.measured_from);
        }
    }

    /// Runs `ops` on `conn` and notes each outcome, latency from `starts[i]`.
    async fn run_batch(&self, conn: &mut Conn, ops: &[Operation], starts: &[Instant]) {
        let mut done = |i: usize, d: Done, end: Instant| self.note(ops[i].kind, &d, starts[i], end);
        conn.run(ops, &self.settings, &mut done).await;
    }
}

/// Waits for the workers and gives their connections back.
async fn join(workers: Vec<runtime::Task<Conn>>) -> Vec<Conn> {
    let mut conns = Vec::with_capacity(workers.len());
    for w in workers {
        conns.push(w.await);
    }
    conns
}

/// Inserts this thread's share of the records (every `threads`-th), `pipeline` at a time on
/// each connection.
async fn load_phase(
    t: usize,
    threads: usize,
    config: &RunConfig,
    conns: Vec<Conn>,
    settings: &Rc<Settings>,
    live: &Arc<Live>,
) -> (PhaseReport, Vec<Conn>) {
    let started = Instant::now();
    let sink = Sink::new(t, settings, live, started);
    let next = Rc::new(Cell::new(t as u64));
    let workers: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let (sink, next) = (sink.clone(), next.clone());
            let (records, pipeline) = (config.records, config.pipeline.max(1));
            runtime::spawn(async move {
                let (mut ops, mut sent) = (Vec::with_capacity(pipeline), Vec::new());
                loop {
                    ops.clear();
                    while ops.len() < pipeline && next.get() < records {
                        ops.push(Operation {
                            kind: OpKind::Insert,
                            key: next.get(),
                            scan_length: 0,
                        });
                        next.set(next.get() + threads as u64);
                    }
                    if ops.is_empty() {
                        return conn;
                    }
                    sent.clear();
                    sent.resize(ops.len(), Instant::now());
                    sink.run_batch(&mut conn, &ops, &sent).await;
                }
            })
        })
        .collect();
    let conns = join(workers).await;
    let mut r = sink.report.take();
    r.elapsed = started.elapsed();
    (r, conns)
}

/// The workload's operations for this thread: closed or open loop.
async fn run_phase(
    t: usize,
    threads: usize,
    config: &RunConfig,
    conns: Vec<Conn>,
    settings: &Rc<Settings>,
    live: &Arc<Live>,
    started: Instant,
) -> PhaseReport {
    let generator = Rc::new(RefCell::new(
        Generator::new(
            config.workload,
            config.distribution,
            config.records.max(1),
            config.seed.wrapping_add(t as u64),
        )
        .shared(t as u64, threads as u64),
    ));
    let budget = config
        .operations
        .map(|n| n / threads as u64 + u64::from((t as u64) < n % threads as u64));
    // With a fixed count every operation counts; with a duration, the warm-up's do not.
    let measured_from = if budget.is_some() {
        started
    } else {
        started + config.warmup
    };
    let sink = Sink::new(t, settings, live, measured_from);
    let until = measured_from + config.duration;
    let issued = Rc::new(Cell::new(0u64));
    // How many more operations may be issued now (at most `want`).
    let claim = Rc::new(move |now: Instant, want: u64| -> u64 {
        let n = match budget {
            Some(b) => want.min(b.saturating_sub(issued.get())),
            None if now < until => want,
            None => 0,
        };
        issued.set(issued.get() + n);
        n
    });
    let pipeline = config.pipeline.max(1);
    match config.rate {
        None => {
            let workers: Vec<_> = conns
                .into_iter()
                .map(|mut conn| {
                    let (sink, generator, claim) = (sink.clone(), generator.clone(), claim.clone());
                    runtime::spawn(async move {
                        let (mut ops, mut sent) = (Vec::with_capacity(pipeline), Vec::new());
                        loop {
                            let n = claim(Instant::now(), pipeline as u64);
                            if n == 0 {
                                return conn;
                            }
                            ops.clear();
                            ops.extend((0..n).map(|_| generator.borrow_mut().next_op()));
                            sent.clear();
                            sent.resize(ops.len(), Instant::now());
                            sink.run_batch(&mut conn, &ops, &sent).await;
                            acknowledge_inserts(&generator, &ops);
                        }
                    })
                })
                .collect();
            join(workers).await;
        }
        Some(rate) => {
            let schedule = Schedule::new(started, rate / threads as f64);
            open_loop(&schedule, conns, &sink, &generator, &*claim, pipeline).await;
        }
    }
    let mut r = sink.report.take();
    r.elapsed = started.elapsed().saturating_sub(config.warmup);
    if budget.is_some() {
        r.elapsed = started.elapsed();
    }
    r
}

/// Tells the generator which of its inserts have completed.
fn acknowledge_inserts(generator: &RefCell<Generator>, ops: &[Operation]) {
    let mut g = generator.borrow_mut();
    for op in ops.iter().filter(|o| o.kind == OpKind::Insert) {
        g.acknowledge(op.key);
    }
}

/// Past this many operations queued, the scheduler counts new ones as never sent.
const QUEUED_MAX: usize = 1 << 20;

/// The open loop: operations queued at their due times, taken by the connections, up to
/// `pipeline` at once.
async fn open_loop(
    schedule: &Schedule,
    conns: Vec<Conn>,
    sink: &Rc<Sink>,
    generator: &Rc<RefCell<Generator>>,
    claim: &dyn Fn(Instant, u64) -> u64,
    pipeline: usize,
) {
    let (tx, rx) = flume::unbounded::<(Operation, Instant)>();
    // Operations still queued this long after the schedule ends are given up as `unsent`,
    // so that a dead server cannot hold the run for a timeout per queued operation.
    let give_up: Rc<Cell<Option<Instant>>> = Rc::new(Cell::new(None));
    let workers: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let (sink, rx, give_up, generator) =
                (sink.clone(), rx.clone(), give_up.clone(), generator.clone());
            runtime::spawn(async move {
                let mut ops = Vec::with_capacity(pipeline);
                let mut dues = Vec::with_capacity(pipeline);
                while let Ok(first) = rx.recv_async().await {
                    ops.clear();
                    dues.clear();
                    for (op, due) in std::iter::once(first).chain(rx.try_iter().take(pipeline - 1))
                    {
                        ops.push(op);
                        dues.push(due);
                    }
                    if give_up.get().is_some_and(|g| Instant::now() > g) {
                        let now = Instant::now();
                        for (op, due) in ops.iter().zip(&dues) {
                            sink.note(op.kind, &Done::Failed("unsent".into()), *due, now);
                        }
                        continue;
                    }
                    sink.run_batch(&mut conn, &ops, &dues).await;
                    acknowledge_inserts(&generator, &ops);
                }
                conn
            })
        })
        .collect();
    let mut lag = new_histogram();
    let mut i = 0u64;
    loop {
        let due = schedule.due(i);
        if claim(due, 1) == 0 {
            break;
        }
        let now = Instant::now();
        if due > now {
            runtime::sleep(due - now).await;
        }
        let late = Instant::now().saturating_duration_since(due);
        if due >= sink.measured_from {
            lag.saturating_record(u64::try_from(late.as_micros()).unwrap_or(u64::MAX));
        }
        i += 1;
        let op = generator.borrow_mut().next_op();
        if tx.len() >= QUEUED_MAX {
            // The server is far behind: the schedule keeps its pace (so the run ends on
            // time), and what cannot be queued is counted as never sent.
            sink.note(op.kind, &Done::Failed("unsent".into()), due, Instant::now());
            continue;
        }
        let _ = tx.send((op, due));
    }
    drop(tx);
    give_up.set(Some(
        Instant::now() + sink.settings.timeout + Duration::from_secs(1),
    ));
    join(workers).await;
    sink.report.borrow_mut().schedule_lag = Some(lag);
}
