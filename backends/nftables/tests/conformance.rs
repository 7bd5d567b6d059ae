//! postern's backend conformance battery (`postern_e2e::conformance`) against
//! real nftables in a network namespace, probed with real TCP connections and
//! UDP datagrams from a client namespace. nftables expires grants in the
//! kernel: the battery's expiry step is a grant of 2 s that must close by
//! itself. Needs root; skips elsewhere, fails when CI=true.

use postern_backend_nftables::{ApplyWith, NftablesBackend, NftablesConfig};
use postern_e2e::conformance::{self, port_specs, wall_now, BatteryNet};
use postern_e2e::require_root;
use spa_core::firewall::{Firewall, Rule};
use std::time::Instant;

fn config(nat: bool, apply_with: ApplyWith) -> NftablesConfig {
    NftablesConfig {
        protected: port_specs().iter().map(|p| p.parse().unwrap()).collect(),
        nat,
        apply_with,
        ..NftablesConfig::default()
    }
}

fn battery(tag: &str, config: NftablesConfig) {
    if !require_root() {
        return;
    }
    let started = Instant::now();
    let net = BatteryNet::new(tag);
    let path = net.server().path();
    let mut make = || {
        Box::new(
            NftablesBackend::new(config.clone())
                .expect("config")
                .in_netns(path.clone()),
        ) as Box<dyn Firewall>
    };
    let mut probe = |r: &Rule| net.probe(r);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        conformance::run(&mut make, &mut probe, wall_now());
        conformance::pinned(&mut make, &mut probe, wall_now(), (40022, 40023));
    }));
    if let Err(p) = outcome {
        eprintln!("{}", net.ruleset());
        std::panic::resume_unwind(p);
    }
    println!("nftables battery ({tag}) took {:?}", started.elapsed());
}

#[test]
fn conformance_battery() {
    battery("nfcb", config(false, ApplyWith::Netlink));
}

/// The same through the `nft` fallback path.
#[test]
fn conformance_battery_nft_path() {
    battery("nfcbn", config(false, ApplyWith::Nft));
}

/// With `nat = true` the battery's NAT grant is accepted in the mixed batch,
/// listed with its `NatRule` and revoked.
#[test]
fn conformance_battery_with_nat() {
    battery("nfcbt", config(true, ApplyWith::Netlink));
}
