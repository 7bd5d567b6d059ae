//! The time, as unix seconds, from one source handed down from the daemon:
//! backends and the expiry of grants read it instead of the system clock, so
//! tests can move time on without sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Unix seconds now.
pub trait Clock: Send + Sync {
    fn now(&self) -> u64;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// A clock that stands still until told to move (tests).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(now: u64) -> Self {
        ManualClock(AtomicU64::new(now))
    }

    pub fn set(&self, now: u64) {
        self.0.store(now, Ordering::SeqCst);
    }

    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Any `Fn() -> u64` is a clock (a fixed time in a test: `|| 1000`).
impl<F: Fn() -> u64 + Send + Sync> Clock for F {
    fn now(&self) -> u64 {
        self()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let clock = Arc::new(ManualClock::new(100));
        let shared: Arc<dyn Clock> = clock.clone();
        assert_eq!(shared.now(), 100);
        clock.advance(5);
        assert_eq!(shared.now(), 105);
        clock.set(7);
        assert_eq!(shared.now(), 7);
    }

    #[test]
    fn the_system_clock_is_past_2020() {
        assert!(SystemClock.now() > 1_577_836_800);
        let fixed: Arc<dyn Clock> = Arc::new(|| 1000);
        assert_eq!(fixed.now(), 1000);
    }
}
