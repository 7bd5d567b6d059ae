//! postern's backend conformance battery (`postern_e2e::conformance`) against a
//! real firewalld on a private bus in a network namespace of its own (see
//! `support`), probed with real TCP connections and UDP datagrams from a client
//! namespace. firewalld expires grants itself: the battery's expiry step is a
//! grant of 2 s that must close by itself. The zone is `public` without its
//! `ssh` service (else port 22 would be open to everyone); the backend keeps a
//! state file so that the battery's restart knows the previous run's grants.
//! Needs root and firewalld; skips elsewhere, fails when CI=true.

mod support;

use postern_backend_firewalld::{FirewalldBackend, FirewalldConfig};
use postern_e2e::conformance::{self, wall_now, BatteryNet};
use spa_core::firewall::{Firewall, Rule};
use std::time::{Duration, Instant};
use support::{can_run, Firewalld};

/// Runtime `removeService(zone, service)`, as `firewall-cmd --remove-service` does.
fn remove_service(fwd: &Firewalld, zone: &str, service: &str) {
    let conn = zbus::blocking::connection::Builder::address(fwd.address.as_str())
        .expect("bus address")
        .method_timeout(Duration::from_secs(10))
        .build()
        .expect("connect to the private bus");
    conn.call_method(
        Some("org.fedoraproject.FirewallD1"),
        "/org/fedoraproject/FirewallD1",
        Some("org.fedoraproject.FirewallD1.zone"),
        "removeService",
        &(zone, service),
    )
    .unwrap_or_else(|e| panic!("removeService {zone} {service}: {e}"));
}

#[test]
fn conformance_battery() {
    if !can_run() {
        return;
    }
    let started = Instant::now();
    let net = BatteryNet::new("fdcb");
    let fwd = Firewalld::start(net.server());
    remove_service(&fwd, "public", "ssh");
    let state = tempfile::tempdir().unwrap();
    let config = FirewalldConfig {
        zone: Some("public".into()),
        state_file: Some(state.path().join("firewalld.json")),
        ..fwd.config()
    };
    let mut make =
        || Box::new(FirewalldBackend::new(config.clone()).expect("config")) as Box<dyn Firewall>;
    let mut probe = |r: &Rule| net.probe(r);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        conformance::run(&mut make, &mut probe, wall_now());
        conformance::pinned(&mut make, &mut probe, wall_now(), (40022, 40023));
    }));
    if let Err(p) = outcome {
        eprintln!("rich rules: {:?}", fwd.rich_rules("public"));
        std::panic::resume_unwind(p);
    }
    assert!(
        fwd.rich_rules("public").is_empty(),
        "{:?}",
        fwd.rich_rules("public")
    );
    println!("firewalld battery took {:?}", started.elapsed());
}
