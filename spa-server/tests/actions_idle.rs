//! The action thread wakes for expiry only when something waits on it: with
//! a firewall that expires its grants in the kernel (nftables) an idle
//! posternd's action thread sleeps; with one the daemon sweeps, it ticks. Its
//! own test binary, so the only `postern-actions` thread is the executor's.

use spa_core::firewall::MemoryFirewall;
use spa_server::actions::Executor;
use spa_server::config::ServerConfig;
use std::time::Duration;

mod support;

/// Voluntary context switches of this process's `postern-actions` thread.
fn action_thread_switches() -> Option<u64> {
    support::switches_of("postern-actions")
}

/// Switches of an idle executor's thread over 1.2 s, the firewall claiming
/// kernel expiry or not.
fn idle_wakeups(kernel_expiry: bool) -> u64 {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (_tx, rx) = tokio::sync::mpsc::channel(8);
    let server = ServerConfig::default().server;
    let thread = Executor::new(
        vec![Box::new(MemoryFirewall::new(kernel_expiry))],
        &server,
        std::sync::Arc::new(spa_core::SystemClock),
    )
    .spawn(rx, shutdown.clone());
    // Past its start (the first tick is at once).
    std::thread::sleep(Duration::from_millis(300));
    let before = action_thread_switches().expect("the action thread runs");
    std::thread::sleep(Duration::from_millis(1200));
    let after = action_thread_switches().expect("the action thread runs");
    shutdown.cancel();
    thread.join().unwrap();
    after - before
}

#[test]
fn an_idle_action_thread_wakes_only_when_something_expires_by_it() {
    assert_eq!(idle_wakeups(true), 0, "kernel expiry: the thread woke");
    // The same measure sees the ticks of a firewall the daemon sweeps.
    assert!(idle_wakeups(false) >= 2, "swept firewall: no ticks seen");
}
