//! The closed-loop driver every latency benchmark shares (the engine's `put_latency`, the node's
//! `loopback` and `cluster`): `depth` tasks on the current executor, each sending its next
//! request once the last one answered, until the time is up; every request timed into one
//! HdrHistogram (µs, 1 µs to 60 s, 3 significant digits).
//!
//! Closed-loop latency counts from the send, so it hides a stall's effect on requests that
//! would have been sent meanwhile; open-loop measurements (`loadgen --rate`, the cluster
//! benchmark's open phase) count from the due time.

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use dynacore_runtime as runtime;
use hdrhistogram::Histogram;

/// What a run did.
#[derive(Debug)]
pub struct Outcome {
    /// Requests sent.
    pub ops: u64,
    /// Requests that failed (not in the histogram).
    pub errors: u64,
    /// How long the run took, from the first send to the last answer.
    pub elapsed: Duration,
    /// Latencies of the requests that succeeded, in µs.
    pub hist: Histogram<u64>,
}

impl Outcome {
    /// Requests a second.
    #[must_use]
    #[allow(clippy::cast_precision_loss)]
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

/// An empty latency histogram (µs, 1 µs to 60 s, 3 significant digits).
///
/// # Panics
/// Never: the bounds are valid.
#[must_use]
pub fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("INVARIANT: valid bounds")
}

/// `d` in whole microseconds, at least 1.
#[must_use]
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// The next number of a xorshift64 sequence (a cheap, reproducible key chooser).
pub fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Runs `depth` tasks for `time`, each calling `request` with a fresh random number (its own
/// xorshift sequence) one call after another; `request` answers whether it succeeded.
pub async fn closed_loop<F, Fut>(depth: usize, time: Duration, request: F) -> Outcome
where
    F: Fn(u64) -> Fut + Clone + 'static,
    Fut: Future<Output = bool>,
{
    let hist = Rc::new(RefCell::new(histogram()));
    let errors = Rc::new(RefCell::new(0u64));
    let started = Instant::now();
    let deadline = started + time;
    let tasks: Vec<_> = (0..depth as u64)
        .map(|t| {
            let (request, hist, errors) = (request.clone(), hist.clone(), errors.clone());
            runtime::spawn(async move {
                let mut rng = (t + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let r = next_random(&mut rng);
                    let t0 = Instant::now();
                    if request(r).await {
                        hist.borrow_mut().saturating_record(micros(t0.elapsed()));
                    } else {
                        *errors.borrow_mut() += 1;
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut ops = 0;
    for t in tasks {
        ops += t.await;
    }
    let elapsed = started.elapsed();
    let hist = hist.borrow().clone();
    let errors = *errors.borrow();
    Outcome {
        ops,
        errors,
        elapsed,
        hist,
    }
}

/// The environment variable `name` parsed, or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
