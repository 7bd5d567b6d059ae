//! An idle UDP capture's receive thread wakes once a second (to report the
//! kernel's drops), not to look for reloads and stops: a reload refits its
//! length filter from the runtime, and a stop wakes it. Its own test binary,
//! so the only `postern-udp` thread is this capture's.

use spa_core::firewall::MemoryFirewall;
use spa_server::actions::Executor;
use spa_server::capture::udp::{UdpCapture, RECEIVE_THREAD};
use spa_server::capture::Capture;
use spa_server::config::{AccessStanza, AddrList, ServerConfig};
use spa_server::pipeline::{self, Keyring};
use spa_server::policy::PolicySettings;
use spa_server::replay::MemoryStore;
use std::sync::Arc;
use std::time::Duration;

mod support;

fn stanza() -> AccessStanza {
    let mut s = AccessStanza::new(AddrList::Any);
    s.key = Some(spa_core::Secret::from_passphrase("a key"));
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_udp_capture_wakes_once_a_second_and_not_for_a_reload() {
    let keyring = Arc::new(Keyring::new(vec![stanza()]));
    let server = ServerConfig::default().server;
    let settings = PolicySettings::of(&server);
    let shutdown = tokio_util::sync::CancellationToken::new();
    // A failed assert still stops the threads, or the runtime would wait on them.
    let _stop_at_exit = shutdown.clone().drop_guard();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let actions = Executor::new(
        vec![Box::new(MemoryFirewall::new(true))],
        &server,
        Arc::new(spa_core::SystemClock),
    )
    .spawn(rx, shutdown.clone());
    let pipeline = pipeline::build_with_gpg(
        keyring.clone(),
        Arc::new(MemoryStore::default()),
        settings,
        tx,
        8,
        None,
    );
    let capture = UdpCapture::open(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(spa_core::SystemClock),
    )
    .unwrap();
    let running = Box::new(capture).start(pipeline, shutdown.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = support::switches_of(RECEIVE_THREAD).expect("the receive thread runs");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // A reload halfway: the filter is refitted without the thread.
    keyring.replace(vec![stanza(), stanza()]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = support::switches_of(RECEIVE_THREAD).expect("the receive thread runs");
    // Once a second: 3 in 3 s (a look every 200 ms would be 15).
    assert!(after - before <= 4, "{} wakeups in 3 s", after - before);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("the capture stopped")
        .unwrap();
    tokio::task::spawn_blocking(move || actions.join().unwrap())
        .await
        .unwrap();
}
