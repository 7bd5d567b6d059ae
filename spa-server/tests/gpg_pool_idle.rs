//! The GPG worker pool sleeps while idle (its threads block on the queue and
//! do not poll), and still stops at once when asked or when dropped. Its own
//! test binary, so the only `gpg-*` threads in the process are this pool's.

use spa_server::gpg::GpgPool;
use std::time::{Duration, Instant};

mod support;

/// (thread id, voluntary context switches) of this process's `gpg-*` threads.
fn gpg_threads() -> Vec<(String, u64)> {
    support::threads_named(|name| name.starts_with("gpg-"))
}

/// Wait (bounded) until this process has `n` `gpg-*` threads (a new thread
/// names itself once it runs).
fn wait_for_gpg_threads(n: usize, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if gpg_threads().len() == n {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn an_idle_pool_never_wakes_and_stops_at_once() {
    let pool = GpgPool::start(2, 8).unwrap();
    assert!(
        wait_for_gpg_threads(2, Duration::from_secs(2)),
        "{:?}",
        gpg_threads()
    );
    std::thread::sleep(Duration::from_millis(100));
    let before = gpg_threads();
    std::thread::sleep(Duration::from_millis(800));
    let after = gpg_threads();
    assert_eq!(before, after, "idle GPG workers woke up");

    let asked = Instant::now();
    assert!(pool.live_workers().stop_and_wait(Duration::from_secs(5)));
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "{:?}",
        asked.elapsed()
    );
    assert!(wait_for_gpg_threads(0, Duration::from_secs(1)));

    // The last handle dropped: the workers end too.
    let pool = GpgPool::start(2, 8).unwrap();
    assert!(
        wait_for_gpg_threads(2, Duration::from_secs(2)),
        "{:?}",
        gpg_threads()
    );
    drop(pool);
    assert!(
        wait_for_gpg_threads(0, Duration::from_millis(500)),
        "{:?}",
        gpg_threads()
    );
}
