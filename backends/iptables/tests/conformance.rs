//! postern's backend conformance battery (`postern_e2e::conformance`) against
//! real iptables/ip6tables in a network namespace, probed with real TCP
//! connections and UDP datagrams from a client namespace. The server drops the
//! battery's ports in INPUT (like the fwknop tutorials), after the backend's
//! jump. Root needed; with CI=true a missing prerequisite fails the test.

use postern_backend_common::PrefixedRunner;
use postern_backend_iptables::{IptablesBackend, IptablesConfig};
use postern_e2e::conformance::{self, wall_now, BatteryNet, PORTS};
use postern_e2e::{require_program, require_root};
use spa_core::firewall::{Firewall, Rule};
use std::time::{Duration, Instant};

fn battery(tag: &str, config: IptablesConfig) {
    if !(require_root() && require_program("iptables") && require_program("ip6tables")) {
        return;
    }
    let started = Instant::now();
    let net = BatteryNet::new(tag);
    for tool in ["iptables", "ip6tables"] {
        for (proto, port) in PORTS {
            net.server().run_ok(&[
                tool,
                "-w",
                "5",
                "-A",
                "INPUT",
                "-p",
                proto.name(),
                "--dport",
                &port.to_string(),
                "-j",
                "DROP",
            ]);
        }
    }
    let ns = net.server().name.clone();
    let path = net.server().path();
    let mut make = || {
        let runner = PrefixedRunner::netns(&ns, Duration::from_secs(30));
        let fw = IptablesBackend::new(&config, Box::new(runner)).expect("config");
        Box::new(fw.track_generation(Some(path.clone()))) as Box<dyn Firewall>
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
    // shutdown (flush_at_exit) removed the jumps and chains; the admin's DROPs stay.
    let rules = net.server().run_ok(&["iptables-save"]);
    assert!(!rules.contains("POSTERN"), "{rules}");
    assert_eq!(rules.matches("-j DROP").count(), PORTS.len(), "{rules}");
    println!("iptables battery ({tag}) took {:?}", started.elapsed());
}

#[test]
fn conformance_battery() {
    battery("iptcb", IptablesConfig::default());
}

/// With `nat = true` the battery's NAT grant is accepted in the mixed batch,
/// listed with its `NatRule` and revoked.
#[test]
fn conformance_battery_with_nat() {
    battery(
        "iptcbt",
        IptablesConfig {
            nat: true,
            ..IptablesConfig::default()
        },
    );
}
