//! The node's metrics: counters and latency histograms per core, written by that core with
//! relaxed atomics (no contention: one writer each) and read by whichever core renders
//! `GET /metrics` in the Prometheus text format, together with each shard's engine statistics.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dynacore_engine::{DurationCounts, ShardStats, STAGE_BUCKETS_US};

/// Which front door a request came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// The flatbuffers protocol.
    Binary = 0,
    /// The HTTP API.
    Http = 1,
    /// The Redis protocol.
    Resp = 2,
}

const PROTOCOLS: [(Protocol, &str); 3] = [
    (Protocol::Binary, "binary"),
    (Protocol::Http, "http"),
    (Protocol::Resp, "resp"),
];

/// What a request did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// A read.
    Get = 0,
    /// A write.
    Put = 1,
    /// A tombstone.
    Delete = 2,
    /// Anything else (ping, topology, health, cluster, metrics).
    Other = 3,
}

const OPS: [(Op, &str); 4] = [
    (Op::Get, "get"),
    (Op::Put, "put"),
    (Op::Delete, "delete"),
    (Op::Other, "other"),
];

/// Upper bounds of the latency buckets, in microseconds (the `+Inf` bucket is the count).
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 10_000_000,
];

/// Observations counted by bucket (not cumulative: rendering adds them up), with their count
/// and sum; one writer per core, so relaxed atomics.
#[derive(Debug)]
struct Counts<const N: usize> {
    buckets: [AtomicU64; N],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl<const N: usize> Default for Counts<N> {
    fn default() -> Self {
        Counts {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl<const N: usize> Counts<N> {
    /// Records one observation into the bucket of the first of `bounds` (µs) it is within.
    fn record(&self, d: Duration, bounds: &[u64; N]) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        if let Some(i) = bounds.iter().position(|&b| us <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

/// A cumulative-on-render latency histogram.
#[derive(Debug, Default)]
pub struct Histogram(Counts<{ LATENCY_BUCKETS_US.len() }>);

impl Histogram {
    /// Records one observation.
    pub fn record(&self, d: Duration) {
        self.0.record(d, &LATENCY_BUCKETS_US);
    }

    /// Observations so far.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.0.count.load(Ordering::Relaxed)
    }
}

/// A stage of a binary request on the core that received it (`dynacore_request_stage_seconds`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Reading the frame's body off the socket, once its header arrived.
    Read = 0,
    /// Checking the frame is a well-formed request (flatbuffers verification).
    Decode = 1,
    /// From the request's task being spawned to its first poll: time spent behind other work
    /// on the core (the executor's queue).
    Queue = 2,
    /// Answering: routing, the coordinator (replicas, quorum), the engine, encoding the answer.
    Dispatch = 3,
    /// From the answer queued for the connection's writer to its bytes written to the socket.
    Write = 4,
}

const STAGES: [(Stage, &str); 5] = [
    (Stage::Read, "read"),
    (Stage::Decode, "decode"),
    (Stage::Queue, "queue"),
    (Stage::Dispatch, "dispatch"),
    (Stage::Write, "write"),
];

/// A stage-duration histogram with the engine's fine buckets ([`STAGE_BUCKETS_US`]).
#[derive(Debug, Default)]
struct StageHistogram(Counts<{ STAGE_BUCKETS_US.len() }>);

impl StageHistogram {
    fn record(&self, d: Duration) {
        self.0.record(d, &STAGE_BUCKETS_US);
    }

    fn counts(&self) -> DurationCounts {
        let mut c = DurationCounts::default();
        for (to, from) in c.buckets.iter_mut().zip(&self.0.buckets) {
            *to = from.load(Ordering::Relaxed);
        }
        c.count = self.0.count.load(Ordering::Relaxed);
        c.sum_us = self.0.sum_us.load(Ordering::Relaxed);
        c
    }
}

/// Writes one histogram series of `name` with `labels` (`core="0",stage="read"`).
fn stage_histogram(o: &mut String, name: &str, labels: &str, c: &DurationCounts) {
    let mut cumulative = 0;
    for (i, bound) in STAGE_BUCKETS_US.iter().enumerate() {
        cumulative += c.buckets[i];
        #[allow(clippy::cast_precision_loss)]
        let le = *bound as f64 / 1e6;
        let _ = writeln!(o, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(o, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", c.count);
    #[allow(clippy::cast_precision_loss)]
    let sum = c.sum_us as f64 / 1e6;
    let _ = writeln!(o, "{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(o, "{name}_count{{{labels}}} {}", c.count);
}

/// Where input without a valid cluster MAC was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthPlane {
    /// Binary frames: a tag that does not match, or a replica operation in a client's frame.
    Binary = 0,
    /// Gossip datagrams.
    Gossip = 1,
}

/// One core's counters.
#[derive(Debug, Default)]
pub struct CoreMetrics {
    requests: [[AtomicU64; OPS.len()]; PROTOCOLS.len()],
    errors: [[AtomicU64; OPS.len()]; PROTOCOLS.len()],
    latency: [Histogram; OPS.len()],
    /// Binary requests' stages, per [`Stage`].
    stages: [StageHistogram; STAGES.len()],
    forwarded: AtomicU64,
    forwarded_in: AtomicU64,
    connections_accepted: [AtomicU64; PROTOCOLS.len()],
    connections_open: [AtomicU64; PROTOCOLS.len()],
    frames_refused: AtomicU64,
    /// Unauthenticated input refused, per [`AuthPlane`].
    unauthenticated: [AtomicU64; 2],
    /// Bytes held by work after answers, now.
    background_bytes: AtomicU64,
    /// Work after answers shed for want of budget.
    background_shed: AtomicU64,
    writes_passed_on: AtomicU64,
    read_repairs: AtomicU64,
    hints_pending: AtomicU64,
    hints_pending_bytes: AtomicU64,
    hints_stored: AtomicU64,
    hints_replayed: AtomicU64,
    hints_dropped: AtomicU64,
    hints_oldest_ms: AtomicU64,
    /// Anti-entropy exchanges by [`ExchangeOutcome`].
    exchanges: [AtomicU64; 4],
    ae_keys_compared: AtomicU64,
    ae_keys_divergent: AtomicU64,
    ae_keys_repaired: AtomicU64,
    ae_keys_pulled: AtomicU64,
    ae_keys_pushed: AtomicU64,
    ae_bytes: AtomicU64,
    /// Full repairs of a range: completed, failed.
    full_repairs: [AtomicU64; 2],
    /// Topology changes' streaming: keys and bytes streamed in, keys and bytes sent.
    streamed: [AtomicU64; 4],
}

/// How an anti-entropy exchange (this node and one peer, some ranges) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExchangeOutcome {
    /// The ranges were equal.
    InSync = 0,
    /// Divergent keys were found (and repaired, budget permitting).
    Repaired = 1,
    /// A tree was not ready (being rebuilt): tried again later.
    NotReady = 2,
    /// The peer could not be reached, or answered an error.
    Failed = 3,
}

const OUTCOMES: [(ExchangeOutcome, &str); 4] = [
    (ExchangeOutcome::InSync, "in_sync"),
    (ExchangeOutcome::Repaired, "repaired"),
    (ExchangeOutcome::NotReady, "not_ready"),
    (ExchangeOutcome::Failed, "failed"),
];

/// What anti-entropy did, as counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AeCounts {
    /// Keys whose states were compared (both sides' keys in the differing leaves).
    pub compared: u64,
    /// Keys found divergent.
    pub divergent: u64,
    /// Divergent keys brought in line (on either side).
    pub repaired: u64,
    /// Copies fetched from a peer.
    pub pulled: u64,
    /// Copies sent to a peer.
    pub pushed: u64,
    /// Bytes moved: exchange messages both ways and copies.
    pub bytes: u64,
}

/// A core's hints, as its metrics show them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HintGauges {
    /// Hints waiting for their target.
    pub pending: u64,
    /// Their bytes.
    pub pending_bytes: u64,
    /// Hints stored since start.
    pub stored: u64,
    /// Hints handed over since start.
    pub replayed: u64,
    /// Hints refused or dropped since start.
    pub dropped: u64,
    /// When the oldest pending hint was stored (ms since the epoch; 0: none).
    pub oldest_ms: u64,
}

impl CoreMetrics {
    /// Counts one answered request and its latency.
    pub fn request(&self, protocol: Protocol, op: Op, ok: bool, latency: Duration) {
        self.requests[protocol as usize][op as usize].fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors[protocol as usize][op as usize].fetch_add(1, Ordering::Relaxed);
        }
        self.latency[op as usize].record(latency);
    }

    /// Records how long a binary request spent in `stage`.
    pub fn stage(&self, stage: Stage, d: Duration) {
        self.stages[stage as usize].record(d);
    }

    /// Counts a request this core sent to the core that owns its key.
    pub fn forwarded(&self) {
        self.forwarded.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `keys` copies of `bytes` streamed in from another node for a topology change.
    pub fn streamed_in(&self, keys: u64, bytes: u64) {
        self.streamed[0].fetch_add(keys, Ordering::Relaxed);
        self.streamed[1].fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts `keys` copies of `bytes` sent to a node that streams a range in.
    pub fn streamed_out(&self, keys: u64, bytes: u64) {
        self.streamed[2].fetch_add(keys, Ordering::Relaxed);
        self.streamed[3].fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts a request another core sent here.
    pub fn forwarded_in(&self) {
        self.forwarded_in.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a write passed to a replica because this node is not one of the key's.
    pub fn passed_on(&self) {
        self.writes_passed_on.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a stale replica brought up to date by a read.
    pub fn read_repaired(&self) {
        self.read_repairs.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets what this core's hints are.
    pub fn set_hints(&self, h: HintGauges) {
        self.hints_pending.store(h.pending, Ordering::Relaxed);
        self.hints_pending_bytes
            .store(h.pending_bytes, Ordering::Relaxed);
        self.hints_stored.store(h.stored, Ordering::Relaxed);
        self.hints_replayed.store(h.replayed, Ordering::Relaxed);
        self.hints_dropped.store(h.dropped, Ordering::Relaxed);
        self.hints_oldest_ms.store(h.oldest_ms, Ordering::Relaxed);
    }

    /// Counts an exchange's end.
    pub fn exchange(&self, outcome: ExchangeOutcome) {
        self.exchanges[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Exchanges that ended with `outcome` so far.
    #[must_use]
    pub fn exchanges(&self, outcome: ExchangeOutcome) -> u64 {
        self.exchanges[outcome as usize].load(Ordering::Relaxed)
    }

    /// Adds what an exchange did.
    pub fn anti_entropy(&self, c: AeCounts) {
        self.ae_keys_compared
            .fetch_add(c.compared, Ordering::Relaxed);
        self.ae_keys_divergent
            .fetch_add(c.divergent, Ordering::Relaxed);
        self.ae_keys_repaired
            .fetch_add(c.repaired, Ordering::Relaxed);
        self.ae_keys_pulled.fetch_add(c.pulled, Ordering::Relaxed);
        self.ae_keys_pushed.fetch_add(c.pushed, Ordering::Relaxed);
        self.ae_bytes.fetch_add(c.bytes, Ordering::Relaxed);
    }

    /// What anti-entropy did on this core so far.
    #[must_use]
    pub fn anti_entropy_counts(&self) -> AeCounts {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        AeCounts {
            compared: load(&self.ae_keys_compared),
            divergent: load(&self.ae_keys_divergent),
            repaired: load(&self.ae_keys_repaired),
            pulled: load(&self.ae_keys_pulled),
            pushed: load(&self.ae_keys_pushed),
            bytes: load(&self.ae_bytes),
        }
    }

    /// Counts full repairs of ranges: `completed` ones, `failed` ones.
    pub fn full_repairs(&self, completed: u64, failed: u64) {
        self.full_repairs[0].fetch_add(completed, Ordering::Relaxed);
        self.full_repairs[1].fetch_add(failed, Ordering::Relaxed);
    }

    /// The cumulative latency buckets of the foreground requests (gets, puts, deletes).
    #[must_use]
    pub fn foreground_buckets(&self) -> [u64; LATENCY_BUCKETS_US.len()] {
        let mut out = [0; LATENCY_BUCKETS_US.len()];
        for op in [Op::Get, Op::Put, Op::Delete] {
            for (o, b) in out.iter_mut().zip(&self.latency[op as usize].0.buckets) {
                *o += b.load(Ordering::Relaxed);
            }
        }
        out
    }

    /// When this core's oldest queued hint was stored (ms since the epoch; 0: none).
    #[must_use]
    pub fn oldest_hint_ms(&self) -> u64 {
        self.hints_oldest_ms.load(Ordering::Relaxed)
    }

    /// Counts an accepted connection.
    pub fn connection(&self, protocol: Protocol) {
        self.connections_accepted[protocol as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection served from now on (`open`), or one that ended (`!open`).
    pub fn connection_open(&self, protocol: Protocol, open: bool) {
        let gauge = &self.connections_open[protocol as usize];
        if open {
            gauge.fetch_add(1, Ordering::Relaxed);
        } else {
            gauge.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Connections accepted through `protocol` so far, and those served now.
    #[must_use]
    pub fn connections(&self, protocol: Protocol) -> (u64, u64) {
        (
            self.connections_accepted[protocol as usize].load(Ordering::Relaxed),
            self.connections_open[protocol as usize].load(Ordering::Relaxed),
        )
    }

    /// Sets the bytes work after answers holds.
    pub fn set_background_bytes(&self, bytes: usize) {
        self.background_bytes.store(bytes as u64, Ordering::Relaxed);
    }

    /// Counts work after an answer that was shed (late acknowledgements not awaited, a read
    /// repair not made).
    pub fn background_shed(&self) {
        self.background_shed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts input refused for want of the cluster's MAC.
    pub fn auth_refused(&self, plane: AuthPlane) {
        self.unauthenticated[plane as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Input refused for want of the cluster's MAC on `plane` so far.
    #[must_use]
    pub fn auth_refused_count(&self, plane: AuthPlane) -> u64 {
        self.unauthenticated[plane as usize].load(Ordering::Relaxed)
    }

    /// Counts a frame or request refused before it was read (malformed, oversized).
    pub fn refused(&self) {
        self.frames_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests of `op` through `protocol` so far.
    #[must_use]
    pub fn requests(&self, protocol: Protocol, op: Op) -> u64 {
        self.requests[protocol as usize][op as usize].load(Ordering::Relaxed)
    }

    /// Requests this core forwarded so far.
    #[must_use]
    pub fn forwarded_count(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders every core's counters and its shard's statistics (index `i` of `stats` is core
/// `i`; `None` when that core did not answer) in the Prometheus text format.
#[must_use]
#[allow(clippy::too_many_lines)]
pub fn render(cores: &[CoreMetrics], stats: &[Option<ShardStats>], uptime: Duration) -> String {
    let mut o = String::with_capacity(16 << 10);
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    family(
        &mut o,
        "dynacore_uptime_seconds",
        "gauge",
        "Seconds since the node started.",
    );
    let _ = writeln!(o, "dynacore_uptime_seconds {:.3}", uptime.as_secs_f64());
    type ByOp = [[AtomicU64; OPS.len()]; PROTOCOLS.len()];
    type ByOpFn = fn(&CoreMetrics) -> &ByOp;
    let by_op: [(&str, &str, ByOpFn); 2] = [
        (
            "dynacore_requests_total",
            "Requests answered, per core (the one that received it), protocol and operation.",
            |m| &m.requests,
        ),
        (
            "dynacore_request_errors_total",
            "Requests answered with an error, per core, protocol and operation.",
            |m| &m.errors,
        ),
    ];
    for (name, help, counters) in by_op {
        family(&mut o, name, "counter", help);
        for (c, m) in cores.iter().enumerate() {
            for (p, pname) in PROTOCOLS {
                for (op, oname) in OPS {
                    let _ = writeln!(
                        o,
                        "{name}{{core=\"{c}\",protocol=\"{pname}\",op=\"{oname}\"}} {}",
                        load(&counters(m)[p as usize][op as usize])
                    );
                }
            }
        }
    }
    family(
        &mut o,
        "dynacore_request_duration_seconds",
        "histogram",
        "Time from a request's arrival to its answer, per core and operation.",
    );
    for (c, m) in cores.iter().enumerate() {
        for (op, oname) in OPS {
            let h = &m.latency[op as usize];
            let mut cumulative = 0;
            for (i, bound) in LATENCY_BUCKETS_US.iter().enumerate() {
                cumulative += load(&h.0.buckets[i]);
                #[allow(clippy::cast_precision_loss)]
                let le = *bound as f64 / 1e6;
                let _ = writeln!(
                    o,
                    "dynacore_request_duration_seconds_bucket{{core=\"{c}\",op=\"{oname}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let count = load(&h.0.count);
            let _ = writeln!(
                o,
                "dynacore_request_duration_seconds_bucket{{core=\"{c}\",op=\"{oname}\",le=\"+Inf\"}} {count}"
            );
            #[allow(clippy::cast_precision_loss)]
            let sum = load(&h.0.sum_us) as f64 / 1e6;
            let _ = writeln!(
                o,
                "dynacore_request_duration_seconds_sum{{core=\"{c}\",op=\"{oname}\"}} {sum}"
            );
            let _ = writeln!(
                o,
                "dynacore_request_duration_seconds_count{{core=\"{c}\",op=\"{oname}\"}} {count}"
            );
        }
    }
    family(
        &mut o,
        "dynacore_request_stage_seconds",
        "histogram",
        "Time binary requests spent in each stage on the core that received them: read (the body \
         off the socket), decode, queue (behind other work on the core), dispatch (routing, \
         replicas, engine, encoding), write (the answer to the socket).",
    );
    for (c, m) in cores.iter().enumerate() {
        for (stage, sname) in STAGES {
            let labels = format!("core=\"{c}\",stage=\"{sname}\"");
            stage_histogram(
                &mut o,
                "dynacore_request_stage_seconds",
                &labels,
                &m.stages[stage as usize].counts(),
            );
        }
    }
    family(
        &mut o,
        "dynacore_engine_stage_seconds",
        "histogram",
        "Durations in each core's storage engine: write_admission (a write's wait for a memtable \
         slot, compaction or WAL space), wal_wait (a durable write's wait for its fdatasync), \
         flush (a memtable to a table), compaction (one merge).",
    );
    for (c, s) in stats.iter().enumerate() {
        let Some(s) = s else { continue };
        let t = &s.timings;
        for (sname, counts) in [
            ("write_admission", &t.write_admission),
            ("wal_wait", &t.wal_wait),
            ("flush", &t.flush),
            ("compaction", &t.compaction),
        ] {
            let labels = format!("core=\"{c}\",stage=\"{sname}\"");
            stage_histogram(&mut o, "dynacore_engine_stage_seconds", &labels, counts);
        }
    }
    type CoreFn<'a> = &'a dyn Fn(&CoreMetrics) -> u64;
    let simple: [(&str, &str, CoreFn); 14] = [
        (
            "dynacore_stream_in_keys_total",
            "Keys streamed in from other nodes for topology changes (joins, replacements, ranges gained from a leaving or removed node).",
            &|m| load(&m.streamed[0]),
        ),
        (
            "dynacore_stream_in_bytes_total",
            "Bytes of the answers those keys came in.",
            &|m| load(&m.streamed[1]),
        ),
        (
            "dynacore_stream_out_keys_total",
            "Keys sent to nodes streaming ranges in.",
            &|m| load(&m.streamed[2]),
        ),
        (
            "dynacore_stream_out_bytes_total",
            "Bytes of the keys sent (keys, versions and values).",
            &|m| load(&m.streamed[3]),
        ),
        (
            "dynacore_background_shed_total",
            "Work after answers shed for want of budget: late replica acknowledgements not awaited (those replicas get hints), read repairs not made.",
            &|m| load(&m.background_shed),
        ),
        (
            "dynacore_writes_passed_on_total",
            "Writes passed to a replica of their key because this node is not one.",
            &|m| load(&m.writes_passed_on),
        ),
        (
            "dynacore_read_repairs_total",
            "Stale replicas brought up to date by a read.",
            &|m| load(&m.read_repairs),
        ),
        (
            "dynacore_hints_stored_total",
            "Hints stored for replicas that missed a write.",
            &|m| load(&m.hints_stored),
        ),
        (
            "dynacore_hints_replayed_total",
            "Hints handed over to their replica.",
            &|m| load(&m.hints_replayed),
        ),
        (
            "dynacore_hints_dropped_total",
            "Hints refused (over the per-target bound) or dropped (too old).",
            &|m| load(&m.hints_dropped),
        ),
        (
            "dynacore_forwarded_requests_total",
            "Requests that arrived on a core that does not own their key and were forwarded to the owner.",
            &|m| load(&m.forwarded),
        ),
        (
            "dynacore_forwarded_requests_received_total",
            "Requests this core answered for another core.",
            &|m| load(&m.forwarded_in),
        ),
        (
            "dynacore_refused_frames_total",
            "Frames or HTTP requests refused before being read (malformed or over a limit).",
            &|m| load(&m.frames_refused),
        ),
        (
            "dynacore_connections_accepted_total",
            "Connections accepted (binary, HTTP and Redis protocol).",
            &|m| m.connections_accepted.iter().map(load).sum(),
        ),
    ];
    for (name, help, get) in simple {
        family(&mut o, name, "counter", help);
        for (c, m) in cores.iter().enumerate() {
            let _ = writeln!(o, "{name}{{core=\"{c}\"}} {}", get(m));
        }
    }
    family(
        &mut o,
        "dynacore_unauthenticated_refused_total",
        "counter",
        "Input refused for want of the cluster secret's MAC: binary frames (a tag that does not \
         match, or a replica operation from a client) and gossip datagrams.",
    );
    for (c, m) in cores.iter().enumerate() {
        for (plane, name) in [(AuthPlane::Binary, "binary"), (AuthPlane::Gossip, "gossip")] {
            let _ = writeln!(
                o,
                "dynacore_unauthenticated_refused_total{{core=\"{c}\",plane=\"{name}\"}} {}",
                m.auth_refused_count(plane)
            );
        }
    }
    family(
        &mut o,
        "dynacore_ae_exchanges_total",
        "counter",
        "Anti-entropy exchanges (this node and one peer, a set of ranges) by outcome.",
    );
    for (c, m) in cores.iter().enumerate() {
        for (outcome, name) in OUTCOMES {
            let _ = writeln!(
                o,
                "dynacore_ae_exchanges_total{{core=\"{c}\",outcome=\"{name}\"}} {}",
                m.exchanges(outcome)
            );
        }
    }
    let ae: [(&str, &str, CoreFn); 8] = [
        (
            "dynacore_ae_keys_compared_total",
            "Keys whose states anti-entropy compared (the keys of leaves whose hashes differed).",
            &|m| load(&m.ae_keys_compared),
        ),
        (
            "dynacore_ae_keys_divergent_total",
            "Keys anti-entropy found divergent between two replicas.",
            &|m| load(&m.ae_keys_divergent),
        ),
        (
            "dynacore_ae_keys_repaired_total",
            "Divergent keys anti-entropy brought in line.",
            &|m| load(&m.ae_keys_repaired),
        ),
        (
            "dynacore_ae_keys_pulled_total",
            "Copies anti-entropy fetched from a peer and merged here.",
            &|m| load(&m.ae_keys_pulled),
        ),
        (
            "dynacore_ae_keys_pushed_total",
            "Copies anti-entropy sent to a peer.",
            &|m| load(&m.ae_keys_pushed),
        ),
        (
            "dynacore_ae_bytes_total",
            "Bytes anti-entropy moved: exchange messages both ways and copies.",
            &|m| load(&m.ae_bytes),
        ),
        (
            "dynacore_repairs_completed_total",
            "Ranges whose full repair (every replica compared, pushed and pulled) completed here.",
            &|m| load(&m.full_repairs[0]),
        ),
        (
            "dynacore_repairs_failed_total",
            "Ranges whose full repair could not complete (a replica down, unreachable or not ready).",
            &|m| load(&m.full_repairs[1]),
        ),
    ];
    for (name, help, get) in ae {
        family(&mut o, name, "counter", help);
        for (c, m) in cores.iter().enumerate() {
            let _ = writeln!(o, "{name}{{core=\"{c}\"}} {}", get(m));
        }
    }
    family(
        &mut o,
        "dynacore_connections_open",
        "gauge",
        "Client connections served now, per protocol.",
    );
    for (c, m) in cores.iter().enumerate() {
        for (p, name) in PROTOCOLS {
            let _ = writeln!(
                o,
                "dynacore_connections_open{{core=\"{c}\",protocol=\"{name}\"}} {}",
                load(&m.connections_open[p as usize])
            );
        }
    }
    let gauges: [(&str, &str, CoreFn); 3] = [
        (
            "dynacore_background_bytes",
            "Bytes held by work after answers (copies for late acknowledgements and read repairs).",
            &|m| load(&m.background_bytes),
        ),
        (
            "dynacore_hints_pending",
            "Hints waiting for their replica to come back (updated every second).",
            &|m| load(&m.hints_pending),
        ),
        (
            "dynacore_hints_pending_bytes",
            "Bytes of hints waiting for their replica.",
            &|m| load(&m.hints_pending_bytes),
        ),
    ];
    for (name, help, get) in gauges {
        family(&mut o, name, "gauge", help);
        for (c, m) in cores.iter().enumerate() {
            let _ = writeln!(o, "{name}{{core=\"{c}\"}} {}", get(m));
        }
    }
    type StatFn = fn(&ShardStats) -> u64;
    let shard: [(&str, &str, &str, StatFn); 24] = [
        (
            "dynacore_wal_segments_created_total",
            "counter",
            "WAL segment files created and zero-filled (since the node started).",
            |s| s.wal.segments_created,
        ),
        (
            "dynacore_wal_segments_recycled_total",
            "counter",
            "Released WAL segments reused instead of creating new ones.",
            |s| s.wal.segments_recycled,
        ),
        (
            "dynacore_flushes_total",
            "counter",
            "Memtables flushed to tables.",
            |s| s.flushes,
        ),
        (
            "dynacore_purged_total",
            "counter",
            "Tombstones and expired values compactions dropped (since the node started).",
            |s| s.purged,
        ),
        (
            "dynacore_tombstones_kept_unrepaired_total",
            "counter",
            "Tombstones and expired values compactions kept because their range has not completed a full repair since (tombstone_gc = repair).",
            |s| s.kept_by_gate,
        ),
        (
            "dynacore_cleanup_keys_dropped_total",
            "counter",
            "Keys cleanups dropped: copies of ranges the node no longer replicates (since the node started).",
            |s| s.cleaned_up,
        ),
        (
            "dynacore_tree_ready",
            "gauge",
            "1 when the shard's hash tree describes it (exchanges use it), 0 while it is rebuilt.",
            |s| s.tree.as_ref().map_or(0, |t| u64::from(t.ready)),
        ),
        (
            "dynacore_tree_memory_bytes",
            "gauge",
            "Bytes of the shard's hash trees (two while a scheduled rebuild runs).",
            |s| s.tree.as_ref().map_or(0, |t| t.memory_bytes as u64),
        ),
        (
            "dynacore_tree_rebuilds_total",
            "counter",
            "Hash tree rebuilds from a scan (at open without a saved tree, scheduled, or after a failure).",
            |s| s.tree.as_ref().map_or(0, |t| t.rebuilds),
        ),
        (
            "dynacore_tree_rebuild_mismatched_leaves_total",
            "counter",
            "Leaves in which a scheduled rebuild found the live tree wrong (a missed change, or damage).",
            |s| s.tree.as_ref().map_or(0, |t| t.rebuild_mismatched_leaves),
        ),
        (
            "dynacore_tree_loaded",
            "gauge",
            "1 when the hash tree was loaded from the file the last clean shutdown saved.",
            |s| s.tree.as_ref().map_or(0, |t| u64::from(t.loaded)),
        ),
        (
            "dynacore_wal_syncs_total",
            "counter",
            "fdatasync calls of the WAL.",
            |s| s.wal.syncs,
        ),
        (
            "dynacore_wal_batches_total",
            "counter",
            "Group-commit batches written to the WAL.",
            |s| s.wal.batches,
        ),
        (
            "dynacore_wal_records_total",
            "counter",
            "Records written to the WAL (batch size = records / batches).",
            |s| s.wal.records,
        ),
        (
            "dynacore_wal_bytes_written_total",
            "counter",
            "Bytes written to the WAL, padding included.",
            |s| s.wal.bytes_written,
        ),
        (
            "dynacore_memtable_bytes",
            "gauge",
            "Accounted bytes of the active memtable.",
            |s| s.memtable_bytes as u64,
        ),
        (
            "dynacore_immutable_memtables",
            "gauge",
            "Frozen memtables waiting to be flushed.",
            |s| s.immutable_memtables as u64,
        ),
        ("dynacore_sstables", "gauge", "Live SSTables.", |s| {
            s.tables as u64
        }),
        (
            "dynacore_sstable_bytes",
            "gauge",
            "Bytes of live SSTables.",
            |s| s.table_bytes,
        ),
        (
            "dynacore_compactions_total",
            "counter",
            "Compactions completed.",
            |s| s.compactions,
        ),
        (
            "dynacore_write_stalls_total",
            "counter",
            "Writes that waited for compaction.",
            |s| s.write_stalls,
        ),
        (
            "dynacore_block_cache_hits_total",
            "counter",
            "Block lookups served from the cache.",
            |s| s.block_cache_hits,
        ),
        (
            "dynacore_block_cache_misses_total",
            "counter",
            "Block lookups read from disk.",
            |s| s.block_cache_misses,
        ),
        (
            "dynacore_blob_file_bytes",
            "gauge",
            "Bytes of live value-log files.",
            |s| s.blob_file_bytes,
        ),
    ];
    for (name, kind, help, get) in shard {
        family(&mut o, name, kind, help);
        for (c, s) in stats.iter().enumerate() {
            if let Some(s) = s {
                let _ = writeln!(o, "{name}{{core=\"{c}\"}} {}", get(s));
            }
        }
    }
    o
}

/// Adds the age of the last full repair of the ranges this node holds: quantiles over the
/// repaired ones (seconds), and how many were never repaired.
pub fn render_repair_ages(o: &mut String, ages: &mut [u64], never: u64) {
    ages.sort_unstable();
    family(
        o,
        "dynacore_repair_age_seconds",
        "gauge",
        "Age of the last full repair of the ranges this node holds (quantiles over the repaired ones; with tombstone_gc = repair, tombstones younger than it plus the propagation delay are kept).",
    );
    for (q, name) in [(0.0, "0"), (0.5, "0.5"), (1.0, "1")] {
        if ages.is_empty() {
            continue;
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((ages.len() - 1) as f64 * q).round() as usize;
        let _ = writeln!(
            o,
            "dynacore_repair_age_seconds{{quantile=\"{name}\"}} {}",
            ages[i]
        );
    }
    family(
        o,
        "dynacore_ranges_never_repaired",
        "gauge",
        "Ranges this node holds that never completed a full repair with their replicas as the ring gives them now.",
    );
    let _ = writeln!(o, "dynacore_ranges_never_repaired {never}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_counts_add_up() {
        let cores = [CoreMetrics::default(), CoreMetrics::default()];
        cores[0].request(Protocol::Binary, Op::Get, true, Duration::from_micros(40));
        cores[0].request(Protocol::Binary, Op::Get, false, Duration::from_micros(700));
        cores[0].request(Protocol::Http, Op::Put, true, Duration::from_secs(100));
        cores[1].forwarded();
        cores[0].stage(Stage::Dispatch, Duration::from_micros(7));
        cores[0].stage(Stage::Dispatch, Duration::from_millis(3));
        let mut stats = ShardStats::default();
        stats.timings.wal_wait.record(Duration::from_micros(120));
        let text = render(&cores, &[Some(stats), None], Duration::from_secs(3));
        for line in [
            "dynacore_requests_total{core=\"0\",protocol=\"binary\",op=\"get\"} 2",
            "dynacore_request_errors_total{core=\"0\",protocol=\"binary\",op=\"get\"} 1",
            "dynacore_request_duration_seconds_bucket{core=\"0\",op=\"get\",le=\"0.00005\"} 1",
            "dynacore_request_duration_seconds_bucket{core=\"0\",op=\"get\",le=\"0.001\"} 2",
            "dynacore_request_duration_seconds_bucket{core=\"0\",op=\"get\",le=\"+Inf\"} 2",
            // Beyond the last bound: only in +Inf.
            "dynacore_request_duration_seconds_bucket{core=\"0\",op=\"put\",le=\"10\"} 0",
            "dynacore_request_duration_seconds_bucket{core=\"0\",op=\"put\",le=\"+Inf\"} 1",
            "dynacore_forwarded_requests_total{core=\"1\"} 1",
            "dynacore_wal_syncs_total{core=\"0\"} 0",
            "dynacore_request_stage_seconds_bucket{core=\"0\",stage=\"dispatch\",le=\"0.000005\"} 0",
            "dynacore_request_stage_seconds_bucket{core=\"0\",stage=\"dispatch\",le=\"0.00001\"} 1",
            "dynacore_request_stage_seconds_bucket{core=\"0\",stage=\"dispatch\",le=\"0.005\"} 2",
            "dynacore_request_stage_seconds_count{core=\"0\",stage=\"dispatch\"} 2",
            "dynacore_request_stage_seconds_count{core=\"1\",stage=\"dispatch\"} 0",
            "dynacore_engine_stage_seconds_bucket{core=\"0\",stage=\"wal_wait\",le=\"0.00025\"} 1",
            "dynacore_engine_stage_seconds_count{core=\"0\",stage=\"wal_wait\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
        assert!(!text.contains("dynacore_wal_syncs_total{core=\"1\"}"));
        // Every sample line belongs to a family declared before it.
        let mut declared = std::collections::HashSet::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().expect("name").to_owned());
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().expect("name");
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .filter(|b| declared.contains(*b))
                    .unwrap_or(name);
                assert!(declared.contains(base), "undeclared {name}");
            }
        }
    }
}
