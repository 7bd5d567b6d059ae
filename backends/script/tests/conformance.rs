//! postern's backend conformance battery (`postern_e2e::conformance`) against
//! the script backend whose open/close commands insert/delete iptables (IPv4)
//! or ip6tables (IPv6) ACCEPT rules in a network namespace, probed with real
//! TCP connections and UDP datagrams from a client namespace. The server drops
//! the battery's ports in INPUT; the open command inserts before the drops.
//! A state file carries the owed closes across the battery's restart. The
//! pinned case runs twice: with `$SPORT` in the commands (`--sport`, only the
//! pinned source port gets in) and without (the pinned grant is refused). Root
//! needed; with CI=true a missing prerequisite fails the test.

use postern_backend_common::PrefixedRunner;
use postern_backend_script::{ScriptBackend, ScriptConfig};
use postern_e2e::conformance::{self, wall_now, BatteryNet, PORTS};
use postern_e2e::{require_program, require_root};
use spa_core::firewall::{Firewall, Rule};
use std::time::{Duration, Instant};

/// `sh -c` picks ip6tables for an IPv6 source and names the protocol ($PROTO
/// is its number, as in fwknopd). `$$` is a literal `$`: the shell's own
/// positional parameters, filled from the template's variables (no shell ever
/// sees a substituted value as code). `pinning`: the command also passes
/// `$SPORT` (empty when the grant is not pinned) and adds `--sport` when set,
/// so one command serves pinned and unpinned grants.
fn command(op: &str, pinning: bool) -> String {
    let (sport_match, sport_arg) = if pinning {
        ("$${4:+--sport $$4} ", " $SPORT")
    } else {
        ("", "")
    };
    format!(
        "sh -c 'case $$1 in *:*) t=ip6tables;; *) t=iptables;; esac; \
         case $$2 in 6) p=tcp;; 17) p=udp;; *) exit 2;; esac; \
         exec $$t -w 5 {op} INPUT -s $$1 -p $$p {sport_match}--dport $$3 -j ACCEPT' \
         postern-script $SRC $PROTO $PORT{sport_arg}"
    )
}

#[test]
fn conformance_battery() {
    if !(require_root() && require_program("iptables") && require_program("ip6tables")) {
        return;
    }
    let started = Instant::now();
    let net = BatteryNet::new("scrcb");
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
    let state = tempfile::tempdir().unwrap();
    let ns = net.server().name.clone();
    let backend = |pinning: bool| {
        let mut config = ScriptConfig::new(&command("-I", pinning), Some(&command("-D", pinning)));
        config.state_file = Some(state.path().join("script.json"));
        let ns = ns.clone();
        move || {
            let runner = PrefixedRunner::netns(&ns, Duration::from_secs(30));
            Box::new(ScriptBackend::new(&config, Box::new(runner)).expect("config"))
                as Box<dyn Firewall>
        }
    };
    let mut probe = |r: &Rule| net.probe(r);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // The battery with `$SPORT` in the commands: pinned grants are pinned.
        conformance::run(&mut backend(true), &mut probe, wall_now());
        conformance::pinned(&mut backend(true), &mut probe, wall_now(), (40022, 40023));
        // Commands without `$SPORT` cannot pin: refused, nothing opened.
        conformance::pinned(&mut backend(false), &mut probe, wall_now(), (40022, 40023));
    }));
    if let Err(p) = outcome {
        eprintln!("{}", net.ruleset());
        std::panic::resume_unwind(p);
    }
    // Every open was closed again: only the DROPs are left.
    for tool in ["iptables-save", "ip6tables-save"] {
        let rules = net.server().run_ok(&[tool]);
        assert!(!rules.contains("-j ACCEPT"), "{tool}:\n{rules}");
        assert_eq!(rules.matches("-j DROP").count(), PORTS.len(), "{rules}");
    }
    println!("script battery took {:?}", started.elapsed());
}
