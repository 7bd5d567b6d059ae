//! The ipfw backend end to end against `postern-fake-ipfw`, an ipfw stand-in
//! that keeps rules, sets and dynamic rules, through the real process runner.

use postern_backend_ipfw::{IpfwBackend, IpfwConfig};
use postern_e2e::conformance::{self, opening, rule};
use spa_core::firewall::{Firewall, FirewallError, Rule};
use spa_core::request::Proto;
use std::path::PathBuf;
use std::process::Command;

const NOW: u64 = 1_700_000_000;

/// A state directory with `ipfw` linked to the fake.
struct FakeIpfw {
    dir: tempfile::TempDir,
}

impl FakeIpfw {
    fn new() -> FakeIpfw {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(
            env!("CARGO_BIN_EXE_postern-fake-ipfw"),
            dir.path().join("ipfw"),
        )
        .unwrap();
        let fake = FakeIpfw { dir };
        // an admin ruleset around postern's range
        for rule in [
            "add 100 allow ip from any to any via lo0",
            "add 60000 deny tcp from any to me 22",
        ] {
            let words: Vec<&str> = rule.split(' ').collect();
            assert!(fake.ipfw(&words).0);
        }
        std::fs::remove_file(fake.dir.path().join("calls.log")).unwrap();
        fake
    }

    fn tool(&self) -> PathBuf {
        self.dir.path().join("ipfw")
    }

    fn config(&self) -> IpfwConfig {
        IpfwConfig {
            ipfw: self.tool().to_string_lossy().into_owned(),
            ..IpfwConfig::default()
        }
    }

    fn backend(&self) -> IpfwBackend {
        IpfwBackend::system(&self.config()).unwrap()
    }

    fn ipfw(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(self.tool()).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `--probe|--connect SRC PROTO PORT [SPORT]`: from the rule's pinned
    /// source port if it has one, else from an ephemeral port.
    fn test_cmd(&self, cmd: &str, r: &Rule) -> bool {
        let mut args = vec![
            cmd.to_string(),
            r.source.to_string(),
            r.proto.name().to_string(),
            r.port.to_string(),
        ];
        args.extend(r.source_port.map(|p| p.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, out, err) = self.ipfw(&args);
        assert!(ok, "{cmd}: {err}");
        out.trim() == "pass"
    }

    fn probe(&self, r: &Rule) -> bool {
        self.test_cmd("--probe", r)
    }

    fn list(&self) -> String {
        self.ipfw(&["-S", "list"]).1
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("calls.log")).unwrap_or_default()
    }
}

#[test]
fn conformance_battery() {
    let fake = FakeIpfw::new();
    let cfg = fake.config();
    let mut make = || Box::new(IpfwBackend::system(&cfg).unwrap()) as Box<dyn Firewall>;
    let mut probe = |r: &Rule| fake.probe(r);
    conformance::run(&mut make, &mut probe, NOW);
    conformance::pinned(&mut make, &mut probe, NOW, (40022, 40023));
    // The admin's rules are where they were.
    let list = fake.list();
    assert!(
        list.contains("00100 set 0 allow ip from any to any via lo0"),
        "{list}"
    );
    assert!(
        list.contains("60000 set 0 deny tcp from any to me 22"),
        "{list}"
    );
}

/// A pinned grant is `from SRC SPORT to me dst-port PORT`: only that source
/// port gets in; a restart and the listing keep the pin.
#[test]
fn pinned_grant_lets_in_only_its_source_port() {
    let fake = FakeIpfw::new();
    let mut fw = fake.backend();
    fw.init(NOW).unwrap();
    let plain = rule("192.0.2.1", Proto::Tcp, 22);
    let pinned = plain.clone().pinned(Some(40022));
    fw.grant(&[opening(&pinned, NOW, 30)]).unwrap();
    let tool = fake.tool().display().to_string();
    let adds: Vec<String> = fake
        .calls()
        .lines()
        .filter(|l| l.starts_with("ipfw add"))
        .map(str::to_string)
        .collect();
    assert_eq!(
        adds,
        vec![
            "ipfw add 10000 set 1 pass tcp from 192.0.2.1 40022 to me dst-port 22 setup keep-state // postern_exp_1700000030"
                .to_string()
        ],
        "argv of {tool}"
    );
    assert!(fake
        .list()
        .contains("10000 set 1 allow tcp from 192.0.2.1 40022 to me 22 setup keep-state :default // postern_exp_1700000030"));
    assert!(fake.probe(&pinned), "the pinned source port gets in");
    assert!(
        !fake.probe(&plain.clone().pinned(Some(40023))),
        "another source port does not"
    );
    assert!(!fake.probe(&plain), "an ephemeral source port does not");
    assert_eq!(fw.list().unwrap()[0].rule, pinned);
    // A restarted daemon reconciles the grant with its pin: kept, not re-added wider.
    drop(fw);
    let mut fw = fake.backend();
    fw.init(NOW + 1).unwrap();
    assert_eq!(
        fw.list()
            .unwrap()
            .iter()
            .map(|o| o.rule.clone())
            .collect::<Vec<_>>(),
        vec![pinned.clone()]
    );
    // The same grant again is a no-op; the unpinned grant is a second rule.
    fw.grant(&[opening(&pinned, NOW, 30)]).unwrap();
    fw.grant(&[opening(&plain, NOW, 30)]).unwrap();
    let mut rules: Vec<Rule> = fw.list().unwrap().into_iter().map(|o| o.rule).collect();
    rules.sort_by_key(|r| r.source_port);
    assert_eq!(rules, vec![plain.clone(), pinned.clone()]);
    fw.revoke(std::slice::from_ref(&pinned)).unwrap();
    let list = fw.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        list[0].rule, plain,
        "revoking the pinned grant leaves the plain one"
    );
    // Pinned grants are plain ones: with a destination, refused, nothing run.
    let calls = fake.calls().len();
    let mut bound = pinned.clone();
    bound.destination = Some("198.51.100.1".parse().unwrap());
    let e = fw.grant(&[opening(&bound, NOW, 30)]).unwrap_err();
    assert!(e.to_string().contains("source port"), "{e}");
    assert_eq!(fake.calls().len(), calls, "refused before anything ran");
    // `native_listing` (--fw-list) shows the pin as ipfw prints it.
    fw.grant(&[opening(&pinned, NOW, 30)]).unwrap();
    let native = fw.native_listing().unwrap().unwrap();
    assert!(native.contains("from 192.0.2.1 40022 to me 22"), "{native}");
}

#[test]
fn grant_is_listed_once_in_the_active_set() {
    let fake = FakeIpfw::new();
    let mut fw = fake.backend();
    fw.init(NOW).unwrap();
    let a = rule("192.0.2.1", Proto::Tcp, 22);
    fw.grant(&[opening(&a, NOW, 30)]).unwrap();
    fw.grant(&[opening(&a, NOW, 30)]).unwrap();
    assert_eq!(
        fake.list(),
        "\
00100 set 0 allow ip from any to any via lo0
10000 set 1 allow tcp from 192.0.2.1 to me 22 setup keep-state :default // postern_exp_1700000030
60000 set 0 deny tcp from any to me 22
65535 set 31 deny ip from any to any
"
    );
    assert!(fake.probe(&a));
    assert!(!fake.probe(&rule("192.0.2.2", Proto::Tcp, 22)));
}

/// fwknopd's design: an expired rule waits in the disabled expire set while
/// the session it let in lasts, and is purged once that session is gone.
#[test]
fn expiry_keeps_established_sessions_until_the_purge() {
    let fake = FakeIpfw::new();
    let mut fw = fake.backend();
    fw.init(NOW).unwrap();
    let a = rule("192.0.2.1", Proto::Tcp, 22);
    fw.grant(&[opening(&a, NOW, 30)]).unwrap();
    assert!(fake.test_cmd("--connect", &a), "the client connects");
    assert_eq!(fw.expire(NOW + 30).unwrap(), vec![a.clone()]);
    assert!(!fake.probe(&a), "no new connection after expiry");
    assert!(fake.test_cmd("--established", &a), "the session lives on");
    assert!(fake
        .list()
        .contains("# DISABLED 10000 set 2 allow tcp from 192.0.2.1"));
    // A purge while the session lasts keeps the rule.
    fw.expire(NOW + 31).unwrap();
    assert!(fake.test_cmd("--established", &a));
    // The session ends (its dynamic rule is gone): the next purge deletes the rule.
    let state = fake.dir.path().join("ipfw.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    json["dynamic"] = serde_json::json!([]);
    std::fs::write(&state, json.to_string()).unwrap();
    fw.expire(NOW + 61).unwrap();
    assert!(!fake.list().contains("10000"), "{}", fake.list());
}

#[test]
fn flush_deletes_both_sets_and_ends_sessions() {
    let fake = FakeIpfw::new();
    let mut fw = fake.backend();
    let a = rule("192.0.2.1", Proto::Tcp, 22);
    let b = rule("192.0.2.2", Proto::Udp, 53);
    fw.grant(&[opening(&a, NOW, 30), opening(&b, NOW, 300)])
        .unwrap();
    assert!(fake.test_cmd("--connect", &a));
    fw.expire(NOW + 30).unwrap();
    fw.flush().unwrap();
    assert!(!fake.test_cmd("--established", &a));
    assert!(!fake.probe(&b));
    assert!(
        !fake.list().contains("set 1 ") && !fake.list().contains("set 2 "),
        "{}",
        fake.list()
    );
}

#[test]
fn check_state_rule_and_shutdown() {
    let fake = FakeIpfw::new();
    let cfg = IpfwConfig {
        add_check_state: true,
        ..fake.config()
    };
    let mut fw = IpfwBackend::system(&cfg).unwrap();
    fw.init(NOW).unwrap();
    fw.init(NOW).unwrap();
    let a = rule("192.0.2.1", Proto::Tcp, 22);
    fw.grant(&[opening(&a, NOW, 30)]).unwrap();
    let list = fake.list();
    assert_eq!(list.matches("check-state").count(), 1, "{list}");
    assert!(
        list.contains("10000 set 1 check-state :default") && list.contains("10001 set 1 allow tcp"),
        "{list}"
    );
    fw.shutdown().unwrap();
    let list = fake.list();
    assert!(!list.contains("set 1 "), "{list}");
    assert!(!fake.probe(&a));
}

#[test]
fn ipv6_rules_use_me6() {
    let fake = FakeIpfw::new();
    let mut fw = fake.backend();
    let v6 = rule("2001:db8::1", Proto::Tcp, 22);
    fw.grant(&[opening(&v6, NOW, 30)]).unwrap();
    assert!(fake
        .list()
        .contains("allow tcp from 2001:db8::1 to me6 22 setup keep-state"));
    assert!(fake.probe(&v6));
}

#[test]
fn ipv6_disabled_is_refused_and_nothing_changes() {
    let fake = FakeIpfw::new();
    let cfg = IpfwConfig {
        ipv6: false,
        ..fake.config()
    };
    let mut fw = IpfwBackend::system(&cfg).unwrap();
    fw.init(NOW).unwrap();
    let calls = fake.calls();
    let before = fake.list();
    let good = rule("192.0.2.1", Proto::Tcp, 22);
    let e = fw
        .grant(&[
            opening(&good, NOW, 30),
            opening(&rule("2001:db8::1", Proto::Tcp, 22), NOW, 30),
        ])
        .unwrap_err();
    assert!(
        matches!(
            e,
            FirewallError::Unsupported {
                backend: "ipfw",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("IPv6 with `ipv6 = false`"), "{e}");
    let after_calls = fake.calls();
    assert_eq!(
        after_calls[calls.len()..]
            .lines()
            .filter(|l| !l.contains("-S list"))
            .count(),
        0
    );
    assert_eq!(fake.list(), before);
    assert!(!fake.probe(&good));
}

#[test]
fn restart_keeps_live_and_retires_expired_and_foreign_rules() {
    let fake = FakeIpfw::new();
    // Leftovers: fwknopd's multi-port rule (expired), a rule without expiry in
    // postern's set and range, and a live grant.
    for rule in [
        "add 10000 set 1 pass tcp from 192.0.2.4 to me dst-port 80 setup keep-state // _exp_1699999000",
        "add 10000 set 1 pass tcp from 192.0.2.4 to me dst-port 443 setup keep-state // _exp_1699999000",
        "add 10001 set 1 pass tcp from 192.0.2.5 to any dst-port 22",
        "add 10002 set 1 pass tcp from 192.0.2.6 to me dst-port 22 setup keep-state // postern_exp_1700000300",
    ] {
        let words: Vec<&str> = rule.split(' ').collect();
        let (ok, _, err) = fake.ipfw(&words);
        assert!(ok, "{err}");
    }
    let mut fw = fake.backend();
    fw.init(NOW).unwrap();
    let live = rule("192.0.2.6", Proto::Tcp, 22);
    assert_eq!(
        fw.list()
            .unwrap()
            .into_iter()
            .map(|o| o.rule)
            .collect::<Vec<_>>(),
        vec![live.clone()]
    );
    assert!(fake.probe(&live));
    assert!(!fake.probe(&rule("192.0.2.4", Proto::Tcp, 443)));
    assert!(!fake.probe(&rule("192.0.2.5", Proto::Tcp, 22)));
}

#[test]
fn fake_ipfw_fails_like_ipfw() {
    let fake = FakeIpfw::new();
    let before = fake.list();
    let (ok, _, err) = fake.ipfw(&[
        "add", "10000", "set", "1", "pass", "tcp", "from", "bogus", "to", "me", "dst-port", "22",
    ]);
    assert!(!ok && err.contains("hostname ``bogus'' unknown"), "{err}");
    let (ok, _, err) = fake.ipfw(&[
        "add", "10000", "set", "32", "pass", "tcp", "from", "any", "to", "me",
    ]);
    assert!(!ok && err.contains("illegal set 32"), "{err}");
    let (ok, _, err) = fake.ipfw(&["add", "65535", "pass", "tcp", "from", "any", "to", "me"]);
    assert!(!ok && err.contains("Invalid argument"), "{err}");
    let (ok, _, err) = fake.ipfw(&[
        "add",
        "10000",
        "pass",
        "tcp",
        "from",
        "any",
        "to",
        "me",
        "frobnicate",
    ]);
    assert!(!ok && err.contains("unrecognised option"), "{err}");
    let (ok, _, err) = fake.ipfw(&["set", "2", "delete", "12345"]);
    assert!(
        !ok && err.contains("rule 12345") && err.contains("No such process"),
        "{err}"
    );
    let (ok, _, err) = fake.ipfw(&["set", "disable", "31"]);
    assert!(!ok && err.contains("set 31"), "{err}");
    assert_eq!(fake.list(), before, "nothing changed");
    // without -S, rules of disabled sets are hidden
    assert!(
        fake.ipfw(&["add", "10000", "set", "2", "pass", "udp", "from", "any", "to", "me", "53"])
            .0
    );
    assert!(fake.ipfw(&["set", "disable", "2"]).0);
    assert!(!fake.ipfw(&["list"]).1.contains("10000"));
    assert!(fake
        .ipfw(&["-S", "list"])
        .1
        .contains("# DISABLED 10000 set 2 allow udp from any to me 53"));
}
