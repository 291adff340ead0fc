//! Running a workload against Dynacore through the Rust SDK (the `native` driver): a load
//! phase that inserts the records, and a run phase of the workload's operations, closed loop
//! (each connection's next request after the previous answer) or open loop (on a schedule,
//! latency from the due time). Each thread runs one executor with its own client and
//! connections; their figures are merged at the end.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use dynacore_engine::runtime;
use dynacore_net::client::{Client, ClientError, ClientOptions, Quorum, ReadRepair, WriteOptions};

use crate::recording::{Latencies, Schedule};
use crate::workload::{key_name, Distribution, Generator, OpKind, Workload};

/// What to run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Nodes to connect through (the topology is fetched from the first that answers).
    pub targets: Vec<SocketAddr>,
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
    /// Requests in flight at once per thread in the closed loop (one SDK client per thread).
    pub connections: usize,
    /// Executors (threads).
    pub threads: usize,
    /// Pin thread `i` to CPU `i`.
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
    /// Deadline of each request.
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
}

impl PhaseReport {
    fn merge(&mut self, other: &PhaseReport) {
        for (op, l) in &other.ops {
            self.ops.entry(*op).or_default().merge(l);
        }
        self.not_found += other.not_found;
        self.skipped += other.skipped;
        self.elapsed = self.elapsed.max(other.elapsed);
    }
}

/// The kind of a failed request, as reports count it.
#[must_use]
pub fn error_kind(e: &ClientError) -> String {
    match e {
        ClientError::Connect { .. } => "connect".into(),
        ClientError::Io(_) => "connection".into(),
        ClientError::Timeout => "timeout".into(),
        ClientError::InvalidArgument(_) => "invalid_argument".into(),
        ClientError::ConditionFailed { .. } => "condition_failed".into(),
        ClientError::Server { code, .. } => format!("{code:?}").to_lowercase(),
        ClientError::Protocol(_) => "protocol".into(),
    }
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

/// The load phase's report, then the run phase's.
///
/// # Errors
/// [`RunError`] when no target answers, or an executor cannot start.
pub fn run(config: &RunConfig) -> Result<(Option<PhaseReport>, Option<PhaseReport>), RunError> {
    let threads = config.threads.max(1);
    let cpus = runtime::online_cpus().unwrap_or_default();
    let mut handles = Vec::with_capacity(threads);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let (go_tx, go_rx) = flume::bounded::<bool>(threads);
    for t in 0..threads {
        let config = config.clone();
        let ready_tx = ready_tx.clone();
        let go = go_rx.clone();
        let cpu = config.pin.then(|| cpus.get(t).copied()).flatten();
        let handle =
            runtime::spawn_executor(&format!("loadgen-{t}"), cpu, 4 << 20, move || async move {
                thread_main(t, threads, &config, &ready_tx, &go).await
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

async fn thread_main(
    t: usize,
    threads: usize,
    config: &RunConfig,
    ready: &std::sync::mpsc::Sender<Result<(), String>>,
    go: &flume::Receiver<bool>,
) -> Option<(PhaseReport, PhaseReport)> {
    let options = ClientOptions {
        timeout: config.timeout,
        ..ClientOptions::default()
    };
    let client = match Client::connect_with(&config.targets, options).await {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(format!(
                "cannot reach {}: {e}",
                config
                    .targets
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            )));
            return None;
        }
    };
    let _ = ready.send(Ok(()));
    if !go.recv_async().await.unwrap_or(false) {
        return None;
    }
    let value: Rc<Vec<u8>> = Rc::new((0..config.value_size).map(|i| (i % 251) as u8).collect());
    let load = if config.load {
        load_phase(t, threads, config, &client, &value).await
    } else {
        PhaseReport::default()
    };
    let run = if config.run {
        run_phase(t, threads, config, &client, &value).await
    } else {
        PhaseReport::default()
    };
    Some((load, run))
}

/// Inserts this thread's share of the records (every `threads`-th), `connections` at once.
async fn load_phase(
    t: usize,
    threads: usize,
    config: &RunConfig,
    client: &Client,
    value: &Rc<Vec<u8>>,
) -> PhaseReport {
    let report = Rc::new(RefCell::new(PhaseReport::default()));
    let next = Rc::new(Cell::new(t as u64));
    let started = Instant::now();
    let tasks: Vec<_> = (0..config.connections.max(1))
        .map(|_| {
            let (client, value, report, next) =
                (client.clone(), value.clone(), report.clone(), next.clone());
            let (prefix, records, w) = (config.key_prefix.clone(), config.records, config.w);
            runtime::spawn(async move {
                loop {
                    let i = next.get();
                    if i >= records {
                        return;
                    }
                    next.set(i + threads as u64);
                    let key = key_name(&prefix, i);
                    let sent = Instant::now();
                    let r = put(&client, key.as_bytes(), &value, w).await;
                    let mut rep = report.borrow_mut();
                    let l = rep.ops.entry(OpKind::Insert).or_default();
                    match r {
                        Ok(()) => l.record_closed(sent, Instant::now()),
                        Err(e) => l.error(&error_kind(&e)),
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
    let mut r = report.take();
    r.elapsed = started.elapsed();
    r
}

async fn put(client: &Client, key: &[u8], value: &[u8], w: Quorum) -> Result<(), ClientError> {
    let options = WriteOptions {
        w: Some(w),
        ..WriteOptions::default()
    };
    client.put_with(key, value, &options).await.map(drop)
}

/// What one operation did.
enum Done {
    Ok,
    NotFound,
    Skipped,
    Failed(String),
}

async fn execute(
    client: &Client,
    config: &RunConfig,
    value: &[u8],
    op: crate::workload::Operation,
) -> Done {
    let key = key_name(&config.key_prefix, op.key);
    let key = key.as_bytes();
    let read = || client.consistent_get(key, config.r, ReadRepair::Default);
    let outcome = match op.kind {
        OpKind::Read => match read().await {
            Ok(Some(_)) => Ok(true),
            Ok(None) => Ok(false),
            Err(e) => Err(e),
        },
        OpKind::Update | OpKind::Insert => put(client, key, value, config.w).await.map(|()| true),
        OpKind::ReadModifyWrite => match read().await {
            Ok(_) => put(client, key, value, config.w).await.map(|()| true),
            Err(e) => Err(e),
        },
        OpKind::Scan => return Done::Skipped,
    };
    match outcome {
        Ok(true) => Done::Ok,
        Ok(false) => Done::NotFound,
        Err(e) => Done::Failed(error_kind(&e)),
    }
}

/// The workload's operations for this thread: closed or open loop.
async fn run_phase(
    t: usize,
    threads: usize,
    config: &RunConfig,
    client: &Client,
    value: &Rc<Vec<u8>>,
) -> PhaseReport {
    let generator = Rc::new(RefCell::new(Generator::new(
        config.workload,
        config.distribution,
        config.records.max(1),
        config.seed.wrapping_add(t as u64),
    )));
    let report = Rc::new(RefCell::new(PhaseReport::default()));
    let budget = config
        .operations
        .map(|n| n / threads as u64 + u64::from((t as u64) < n % threads as u64));
    let started = Instant::now();
    let measured_from = started + config.warmup;
    let until = measured_from + config.duration;
    let issued = Rc::new(Cell::new(0u64));
    let more = {
        let issued = issued.clone();
        move |now: Instant| match budget {
            Some(b) => issued.get() < b,
            None => now < until,
        }
    };
    let note = {
        let report = report.clone();
        move |kind: OpKind, done: Done, start: Instant, end: Instant, open: bool| {
            if start < measured_from && budget.is_none() {
                return;
            }
            let mut rep = report.borrow_mut();
            let l = rep.ops.entry(kind).or_default();
            match &done {
                Done::Ok | Done::NotFound => {
                    if open {
                        l.record_open(start, end);
                    } else {
                        l.record_closed(start, end);
                    }
                }
                Done::Skipped => {}
                Done::Failed(kind) => l.error(kind),
            }
            match done {
                Done::NotFound => rep.not_found += 1,
                Done::Skipped => rep.skipped += 1,
                _ => {}
            }
        }
    };
    let note = Rc::new(note);
    let more = Rc::new(more);
    match config.rate {
        None => {
            let tasks: Vec<_> = (0..config.connections.max(1))
                .map(|_| {
                    let (client, value, generator, issued, note, more, config) = (
                        client.clone(),
                        value.clone(),
                        generator.clone(),
                        issued.clone(),
                        note.clone(),
                        more.clone(),
                        config.clone(),
                    );
                    runtime::spawn(async move {
                        while more(Instant::now()) {
                            issued.set(issued.get() + 1);
                            let op = generator.borrow_mut().next_op();
                            let sent = Instant::now();
                            let done = execute(&client, &config, &value, op).await;
                            note(op.kind, done, sent, Instant::now(), false);
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await;
            }
        }
        Some(rate) => {
            let schedule = Schedule::new(started, rate / threads as f64);
            let in_flight = Rc::new(Cell::new(0usize));
            let mut i = 0u64;
            loop {
                let due = schedule.due(i);
                if !more(due) {
                    break;
                }
                let now = Instant::now();
                if due > now {
                    runtime::sleep(due - now).await;
                }
                // Bounded memory: past this many in flight the schedule waits (the latency of
                // what waits still counts from its due time).
                while in_flight.get() >= 65_536 {
                    runtime::sleep(Duration::from_millis(1)).await;
                }
                i += 1;
                issued.set(issued.get() + 1);
                let op = generator.borrow_mut().next_op();
                let (client, value, note, config, in_flight) = (
                    client.clone(),
                    value.clone(),
                    note.clone(),
                    config.clone(),
                    in_flight.clone(),
                );
                in_flight.set(in_flight.get() + 1);
                runtime::spawn_detached(async move {
                    let done = execute(&client, &config, &value, op).await;
                    note(op.kind, done, due, Instant::now(), true);
                    in_flight.set(in_flight.get() - 1);
                });
            }
            let give_up = Instant::now() + config.timeout + Duration::from_secs(1);
            while in_flight.get() > 0 && Instant::now() < give_up {
                runtime::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    let mut r = report.take();
    r.elapsed = started.elapsed().saturating_sub(config.warmup);
    r
}
