//! A fake clock for components whose time is injected.
//!
//! Components never read the system clock themselves: they take `Instant`s / ticks from the
//! caller or a clock they are given. Tests drive a [`FakeClock`] by hand, so time-dependent
//! behaviour (TTLs, windows, rate limits) is reproducible.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A clock that only moves when told to. Cloning shares the same time.
#[derive(Debug, Clone)]
pub struct FakeClock {
    base: Instant,
    nanos: Arc<AtomicU64>,
}

impl Default for FakeClock {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeClock {
    /// A clock at time zero.
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            nanos: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Time since the clock was made.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }

    /// The current time as an `Instant` (a fixed base plus [`elapsed`](Self::elapsed)).
    pub fn now(&self) -> Instant {
        self.base + self.elapsed()
    }

    /// Moves the clock forward by `d`.
    ///
    /// # Panics
    /// If the clock would pass `u64::MAX` nanoseconds (about 584 years).
    pub fn advance(&self, d: Duration) {
        let add = u64::try_from(d.as_nanos()).expect("duration too large");
        self.nanos
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_add(add))
            .expect("fake clock overflow");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_only_when_advanced_and_is_shared() {
        let c = FakeClock::new();
        let t0 = c.now();
        let c2 = c.clone();
        c2.advance(Duration::from_millis(250));
        assert_eq!(c.elapsed(), Duration::from_millis(250));
        assert_eq!(c.now() - t0, Duration::from_millis(250));
    }
}
