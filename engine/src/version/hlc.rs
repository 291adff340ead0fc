//! Hybrid logical clock (Kulkarni et al., 2014): physical milliseconds plus a logical counter,
//! packed in one `u64` so that comparing timestamps is comparing integers.
//!
//! ```text
//! bit 63 ............ 16 15 ........ 0
//!     Unix milliseconds     counter
//! ```
//! Rules, in packed form (`pt` = wall clock in ms):
//! * local event / send: `ts = max(pt << 16, last + 1)`
//! * receive `m`:        `ts = max(pt << 16, last + 1, m + 1)`
//!
//! A counter overflow carries into the millisecond part, which keeps the clock monotonic at the
//! price of running at most 1 ms ahead.
//!
//! INVARIANT: every timestamp a clock returns is greater than every timestamp it returned or
//! observed before. A received timestamp whose physical part leads the local wall clock by more
//! than `max_offset_ms` is refused ([`ClockError::TooFarAhead`]) and leaves the clock untouched:
//! storing it would let that write win last-writer-wins until wall time caught up.

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Bits of the logical counter.
const COUNTER_BITS: u32 = 16;

/// The default bound on how far a received timestamp may lead the local wall clock.
pub const MAX_OFFSET_MS_DEFAULT: u64 = 500;

/// A hybrid logical clock timestamp.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HlcTimestamp(pub u64);

impl HlcTimestamp {
    /// A timestamp from its parts.
    #[must_use]
    pub fn from_parts(physical_ms: u64, counter: u16) -> Self {
        HlcTimestamp((physical_ms << COUNTER_BITS) | u64::from(counter))
    }

    /// The physical part, in milliseconds since the Unix epoch.
    #[must_use]
    pub fn physical_ms(self) -> u64 {
        self.0 >> COUNTER_BITS
    }

    /// The logical counter.
    #[must_use]
    pub fn counter(self) -> u16 {
        // Truncation is the point: the low 16 bits are the counter.
        (self.0 & 0xFFFF) as u16
    }
}

impl fmt::Display for HlcTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.physical_ms(), self.counter())
    }
}

/// Why a received timestamp was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    /// The remote clock leads ours by more than the configured bound.
    #[error(
        "timestamp {remote} is {lead_ms} ms ahead of the local clock; at most {max_offset_ms} ms is accepted"
    )]
    TooFarAhead {
        /// The refused timestamp.
        remote: HlcTimestamp,
        /// How far it leads the local wall clock.
        lead_ms: u64,
        /// The bound.
        max_offset_ms: u64,
    },
}

/// A source of wall-clock milliseconds (injectable for tests).
pub trait PhysicalClock {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl PhysicalClock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A shareable wall clock: the system clock unless a test injects another (to move time by
/// hand for TTL tests).
#[derive(Clone)]
pub struct ClockHandle(Arc<dyn PhysicalClock + Send + Sync>);

impl ClockHandle {
    /// The system wall clock.
    #[must_use]
    pub fn system() -> Self {
        ClockHandle(Arc::new(SystemClock))
    }

    /// Any clock.
    pub fn new(clock: impl PhysicalClock + Send + Sync + 'static) -> Self {
        ClockHandle(Arc::new(clock))
    }
}

impl Default for ClockHandle {
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Debug for ClockHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClockHandle(now_ms = {})", self.0.now_ms())
    }
}

impl PhysicalClock for ClockHandle {
    fn now_ms(&self) -> u64 {
        self.0.now_ms()
    }
}

/// A shard's hybrid logical clock (single-threaded, like the shard).
#[derive(Debug)]
pub struct Hlc<C = SystemClock> {
    clock: C,
    last: Cell<u64>,
    max_offset_ms: u64,
}

impl Hlc<SystemClock> {
    /// A clock on the system wall clock with the default offset bound.
    #[must_use]
    pub fn system() -> Self {
        Hlc::new(SystemClock, MAX_OFFSET_MS_DEFAULT)
    }
}

impl<C: PhysicalClock> Hlc<C> {
    /// A clock reading `clock`, refusing remote timestamps more than `max_offset_ms` ahead.
    pub fn new(clock: C, max_offset_ms: u64) -> Self {
        Hlc {
            clock,
            last: Cell::new(0),
            max_offset_ms,
        }
    }

    /// Makes every later timestamp greater than `floor` (for example the largest timestamp
    /// found in the data at open, so that a restart never reissues a timestamp).
    pub fn advance_past(&self, floor: HlcTimestamp) {
        self.last.set(self.last.get().max(floor.0));
    }

    /// A timestamp for a local event.
    pub fn now(&self) -> HlcTimestamp {
        let pt = self.clock.now_ms() << COUNTER_BITS;
        let ts = pt.max(self.last.get().saturating_add(1));
        self.last.set(ts);
        HlcTimestamp(ts)
    }

    /// Takes a timestamp received from a peer into account and returns a timestamp greater than
    /// both it and everything this clock issued.
    ///
    /// # Errors
    /// [`ClockError::TooFarAhead`] if `remote` leads the wall clock by more than the bound; the
    /// clock is then unchanged.
    pub fn observe(&self, remote: HlcTimestamp) -> Result<HlcTimestamp, ClockError> {
        let now_ms = self.clock.now_ms();
        let lead_ms = remote.physical_ms().saturating_sub(now_ms);
        if lead_ms > self.max_offset_ms {
            return Err(ClockError::TooFarAhead {
                remote,
                lead_ms,
                max_offset_ms: self.max_offset_ms,
            });
        }
        let ts = (now_ms << COUNTER_BITS)
            .max(self.last.get().saturating_add(1))
            .max(remote.0.saturating_add(1));
        self.last.set(ts);
        Ok(HlcTimestamp(ts))
    }

    /// The last timestamp issued.
    pub fn last(&self) -> HlcTimestamp {
        HlcTimestamp(self.last.get())
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use proptest::prelude::*;

    use super::*;

    /// A wall clock the test moves by hand (forwards and backwards).
    #[derive(Clone, Default)]
    struct ManualClock(Rc<Cell<u64>>);

    impl PhysicalClock for ManualClock {
        fn now_ms(&self) -> u64 {
            self.0.get()
        }
    }

    #[test]
    fn monotonic_when_the_wall_clock_stalls_or_goes_back() {
        let wall = ManualClock::default();
        wall.0.set(1_000);
        let hlc = Hlc::new(wall.clone(), 500);
        let a = hlc.now();
        let b = hlc.now();
        assert_eq!((a.physical_ms(), a.counter()), (1_000, 0));
        assert_eq!((b.physical_ms(), b.counter()), (1_000, 1));
        wall.0.set(900); // NTP stepped back
        let c = hlc.now();
        assert!(c > b);
        assert_eq!(c.physical_ms(), 1_000);
        wall.0.set(2_000);
        assert_eq!(hlc.now(), HlcTimestamp::from_parts(2_000, 0));
    }

    #[test]
    fn observe_moves_past_remote_and_refuses_the_far_future() {
        let wall = ManualClock::default();
        wall.0.set(10_000);
        let hlc = Hlc::new(wall, 500);
        let remote = HlcTimestamp::from_parts(10_400, 7);
        let t = hlc.observe(remote).expect("within bound");
        assert_eq!(t, HlcTimestamp::from_parts(10_400, 8));
        assert!(hlc.now() > t);
        let before = hlc.last();
        let far = HlcTimestamp::from_parts(10_501, 0);
        assert!(matches!(
            hlc.observe(far),
            Err(ClockError::TooFarAhead { lead_ms: 501, .. })
        ));
        assert_eq!(
            hlc.last(),
            before,
            "a refused timestamp leaves the clock alone"
        );
    }

    #[test]
    fn counter_overflow_carries_into_milliseconds() {
        let wall = ManualClock::default();
        wall.0.set(5);
        let hlc = Hlc::new(wall, 500);
        hlc.advance_past(HlcTimestamp::from_parts(5, u16::MAX));
        assert_eq!(hlc.now(), HlcTimestamp::from_parts(6, 0));
    }

    proptest! {
        /// Whatever the wall clock does and whatever (acceptable) remote timestamps arrive,
        /// every issued timestamp exceeds everything issued or observed before.
        #[test]
        fn strictly_increasing(steps in prop::collection::vec((0u64..3_000, any::<bool>(), 0u64..700), 1..200)) {
            let wall = ManualClock::default();
            let hlc = Hlc::new(wall.clone(), 500);
            let mut high = HlcTimestamp(0);
            for (pt, receive, lead) in steps {
                wall.0.set(pt);
                let t = if receive {
                    let remote = HlcTimestamp::from_parts(pt + lead, 3);
                    match hlc.observe(remote) {
                        Ok(t) => {
                            prop_assert!(t > remote);
                            t
                        }
                        Err(_) => {
                            prop_assert!(lead > 500);
                            continue;
                        }
                    }
                } else {
                    hlc.now()
                };
                prop_assert!(t > high);
                prop_assert!(t.physical_ms() >= pt);
                high = t;
            }
        }
    }
}
