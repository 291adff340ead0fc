//! Latency recording without coordinated omission.
//!
//! * **Open loop** (`--rate R`): request `i` is *due* at `start + i / R` ([`Schedule`]),
//!   whether or not the previous ones have answered, and its latency is measured from when it
//!   was due, not from when it was sent ([`Latencies::record_open`]). A server stall then
//!   counts against every request it held back — as wrk2 measures — instead of against one.
//! * **Closed loop** (no rate): each connection sends its next request when the previous one
//!   answers, and latency is measured from the send ([`Latencies::record_closed`]). That loop
//!   cannot see the requests a stall kept it from sending (coordinated omission); its figures
//!   are for throughput, and reports say so.
//! * Values go to an HdrHistogram in microseconds (1 µs to 1 hour, 3 significant digits).
//!   Errors are counted by kind and never recorded as latencies.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// The largest latency recorded: longer ones are clamped to it.
pub const LATENCY_MAX: Duration = Duration::from_secs(3600);

/// When each request of an open-loop run is due.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    start: Instant,
    interval: Duration,
}

impl Schedule {
    /// `rate` requests a second from `start`.
    ///
    /// # Panics
    /// If `rate` is not a positive finite number.
    #[must_use]
    pub fn new(start: Instant, rate: f64) -> Schedule {
        assert!(rate.is_finite() && rate > 0.0, "a rate is positive");
        Schedule {
            start,
            interval: Duration::from_secs_f64(1.0 / rate),
        }
    }

    /// When request `i` (from 0) is due.
    #[must_use]
    pub fn due(&self, i: u64) -> Instant {
        // Multiplying rather than adding keeps the schedule free of accumulated rounding.
        self.start + self.interval.mul_f64(i as f64)
    }

    /// How many requests are due by `now`.
    #[must_use]
    pub fn due_by(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start);
        (elapsed.as_secs_f64() / self.interval.as_secs_f64()).floor() as u64 + 1
    }
}

/// The latencies and errors of one operation.
#[derive(Clone, Debug)]
pub struct Latencies {
    hist: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies::new()
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.min(LATENCY_MAX).as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl Latencies {
    /// Empty.
    ///
    /// # Panics
    /// Never: the bounds are constant and valid.
    #[must_use]
    pub fn new() -> Latencies {
        Latencies {
            hist: Histogram::new_with_bounds(1, micros(LATENCY_MAX), 3)
                .expect("INVARIANT: constant, valid bounds"),
            errors: BTreeMap::new(),
        }
    }

    /// A request answered at `done`, measured from `start`: when it was due in the open
    /// loop, when it was sent in the closed loop. Returns the microseconds recorded.
    pub fn record(&mut self, start: Instant, done: Instant) -> u64 {
        let us = micros(done.saturating_duration_since(start));
        self.hist.saturating_record(us);
        us
    }

    /// An open-loop request, due at `due`, answered at `done`.
    pub fn record_open(&mut self, due: Instant, done: Instant) {
        self.record(due, done);
    }

    /// A closed-loop request, sent at `sent`, answered at `done`.
    pub fn record_closed(&mut self, sent: Instant, done: Instant) {
        self.record(sent, done);
    }

    /// A request that failed, by kind (`timeout`, `unavailable`, …).
    pub fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_owned()).or_insert(0) += 1;
    }

    /// Adds another recorder's values (from another thread).
    pub fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.hist.add(&other.hist);
        for (k, n) in &other.errors {
            *self.errors.entry(k.clone()).or_insert(0) += n;
        }
    }

    /// The histogram (microseconds).
    #[must_use]
    pub fn histogram(&self) -> &Histogram<u64> {
        &self.hist
    }

    /// Successful requests.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// Errors by kind.
    #[must_use]
    pub fn errors(&self) -> &BTreeMap<String, u64> {
        &self.errors
    }

    /// The latency at quantile `q` (0..=1).
    #[must_use]
    pub fn quantile(&self, q: f64) -> Duration {
        Duration::from_micros(self.hist.value_at_quantile(q))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that answers in 1 ms, except for one 1-second stall, driven at 100 requests a
    /// second for 10 s: the open loop sees the stall in its percentiles, the closed loop
    /// records it once.
    #[test]
    fn a_stall_counts_for_every_request_it_delays_in_the_open_loop_only() {
        let t0 = Instant::now();
        let service = Duration::from_millis(1);
        let stall_from = t0 + Duration::from_secs(5);
        let stall_until = stall_from + Duration::from_secs(1);
        // Open loop: requests are sent when due, but the server answers nothing during the
        // stall; one request at a time is served (a queue).
        let schedule = Schedule::new(t0, 100.0);
        let mut open = Latencies::new();
        let mut server_free = t0;
        for i in 0..1000 {
            let due = schedule.due(i);
            let mut start = due.max(server_free);
            if start >= stall_from && start < stall_until {
                start = stall_until;
            }
            let done = start + service;
            server_free = done;
            open.record_open(due, done);
        }
        // Closed loop, one connection, same duration: after the stall it goes on as before.
        let mut closed = Latencies::new();
        let mut now = t0;
        while now < t0 + Duration::from_secs(10) {
            let sent = now;
            let mut start = sent;
            if start >= stall_from && start < stall_until {
                start = stall_until;
            }
            let done = start + service;
            closed.record_closed(sent, done);
            now = done + Duration::from_millis(9);
        }
        // About 10 % of the open loop's requests were due during the stall: its p95 shows it.
        assert_eq!(open.count(), 1000);
        assert!(
            open.quantile(0.95) > Duration::from_millis(400),
            "{:?}",
            open.quantile(0.95)
        );
        assert!(open.quantile(0.5) < Duration::from_millis(2));
        // The closed loop sent one request into the stall and recorded it once.
        assert!(
            closed.quantile(0.99) < Duration::from_millis(2),
            "{:?}",
            closed.quantile(0.99)
        );
        assert!(closed.histogram().max() >= 900_000);
    }

    #[test]
    fn schedules_do_not_drift_and_errors_are_counted_apart() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, 3.0);
        assert_eq!(s.due(0), t0);
        let far = s.due(3_000_000) - t0;
        assert!(far.as_secs_f64() - 1_000_000.0 < 1e-3);
        assert_eq!(s.due_by(t0), 1);
        assert_eq!(s.due_by(t0 + Duration::from_secs(1)), 4);
        let mut a = Latencies::new();
        a.error("timeout");
        a.record_closed(t0, t0 + Duration::from_millis(2));
        let mut b = Latencies::new();
        b.error("timeout");
        b.error("unavailable");
        b.record_open(t0, t0 + Duration::from_secs(7200));
        a.merge(&b);
        assert_eq!(a.count(), 2);
        assert_eq!(a.errors()["timeout"], 2);
        assert_eq!(a.errors()["unavailable"], 1);
        // A latency past the bound is clamped, not lost.
        assert!(a.quantile(1.0) >= Duration::from_secs(3599));
    }
}
