//! Wakeups coalesced under a flood, for the captures that read in a loop of
//! their own (UDP, pcap).
//!
//! At 50,000 packets/s a blocking receive returns about one packet per wakeup,
//! and the wakeup (a context switch; in a VM also a timer write that traps)
//! costs more than screening the packet. So while packets arrive faster than
//! [`FLOOD_PER_WINDOW`] per [`RATE_WINDOW`], a receive that took all there was
//! is followed by a nap of [`NAP`], and the next takes what came meanwhile. A
//! knock during a flood waits at most that much longer; a quiet server never
//! naps. Measured: README, "Coalescing wakeups under a flood".

use std::time::{Duration, Instant};

pub const NAP: Duration = Duration::from_millis(2);
/// Packets one receive takes before the capture stops napping (at 64,000/s,
/// what a nap lets in): a capture that takes more is behind, and reads on.
pub const PER_RECEIVE: usize = 128;
const RATE_WINDOW: Duration = Duration::from_millis(10);
/// 5,000 packets/s.
const FLOOD_PER_WINDOW: usize = 50;

#[derive(Debug)]
pub struct Coalesce {
    window_started: Instant,
    in_window: usize,
    flooding: bool,
}

impl Coalesce {
    pub fn new() -> Self {
        Coalesce {
            window_started: Instant::now(),
            in_window: 0,
            flooding: false,
        }
    }

    /// After a receive of `n` packets at `now` that took all there was
    /// (`took_all`; else more are waiting): how long to nap before the next.
    pub fn after_receive(&mut self, n: usize, took_all: bool, now: Instant) -> Option<Duration> {
        self.in_window += n;
        let elapsed = now.saturating_duration_since(self.window_started);
        if elapsed >= RATE_WINDOW {
            // Scaled to a full window, so a long blocked receive counts as quiet.
            let rate = self.in_window as u128 * RATE_WINDOW.as_nanos() / elapsed.as_nanos();
            self.flooding = rate >= FLOOD_PER_WINDOW as u128;
            self.window_started = now;
            self.in_window = 0;
        }
        (self.flooding && took_all).then_some(NAP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_capture_never_naps_and_a_flood_naps_while_receives_empty_the_queue() {
        let start = Instant::now();
        let at = |us: u64| start + Duration::from_micros(us);
        let mut c = Coalesce::new();
        // One knock now and then: never a nap.
        for i in 1..=20 {
            assert_eq!(c.after_receive(1, true, at(i * 50_000)), None);
        }
        // 50,000 packets/s, one per receive: naps once the window shows it.
        let base = 1_100_000;
        let naps = (0..1_000)
            .filter(|i| c.after_receive(1, true, at(base + i * 20)).is_some())
            .count();
        assert!(naps > 400, "{naps} naps of 1,000 receives");
        // More are waiting: receive again at once.
        assert_eq!(c.after_receive(128, false, at(base + 20_100)), None);
        // The flood ends: a receive blocked for a second shows the rate fell.
        assert_eq!(c.after_receive(1, true, at(base + 1_030_000)), None);
        assert_eq!(c.after_receive(1, true, at(base + 1_031_000)), None);
    }
}
