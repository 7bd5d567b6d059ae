//! The pf backend end to end against `postern-fake-pfctl`, a pfctl stand-in that
//! keeps anchors and tables, through the real process runner.

use postern_backend_pf::{PfBackend, PfConfig};
use postern_e2e::conformance::{self, opening, rule};
use spa_core::firewall::{Firewall, FirewallError, Rule};
use spa_core::request::Proto;
use std::path::PathBuf;
use std::process::Command;

const NOW: u64 = 1_700_000_000;

/// A state directory with `pfctl` linked to the fake and a main ruleset that
/// references the anchor `postern`.
struct FakePf {
    dir: tempfile::TempDir,
}

impl FakePf {
    fn new() -> FakePf {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(
            env!("CARGO_BIN_EXE_postern-fake-pfctl"),
            dir.path().join("pfctl"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("pf.conf"),
            "set skip on lo\nblock in all\nanchor \"postern\" all\npass out all keep state\n",
        )
        .unwrap();
        FakePf { dir }
    }

    fn tool(&self) -> PathBuf {
        self.dir.path().join("pfctl")
    }

    fn config(&self) -> PfConfig {
        PfConfig {
            pfctl: self.tool().to_string_lossy().into_owned(),
            state_file: Some(self.dir.path().join("state/pf.json")),
            ..PfConfig::default()
        }
    }

    fn backend(&self) -> PfBackend {
        PfBackend::system(&self.config()).unwrap()
    }

    /// Run the fake as a test would by hand.
    fn pfctl(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(self.tool()).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn probe(&self, r: &Rule) -> bool {
        let (source, port) = (r.source.to_string(), r.port.to_string());
        let sport = r.source_port.map(|p| p.to_string());
        let mut args = vec!["--probe", &source, r.proto.name(), &port];
        args.extend(sport.as_deref());
        let (ok, out, err) = self.pfctl(&args);
        assert!(ok, "probe failed: {err}");
        out.trim() == "pass"
    }

    fn show(&self, table: &str) -> String {
        self.pfctl(&["-a", "postern", "-t", table, "-T", "show"]).1
    }

    fn set_clock(&self, t: u64) {
        std::fs::write(self.dir.path().join("clock"), t.to_string()).unwrap();
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("calls.log")).unwrap_or_default()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

#[test]
fn conformance_battery() {
    let fake = FakePf::new();
    let cfg = fake.config();
    let mut make = || Box::new(PfBackend::system(&cfg).unwrap()) as Box<dyn Firewall>;
    let mut probe = |r: &Rule| fake.probe(r);
    conformance::run(&mut make, &mut probe, NOW);
    conformance::pinned(&mut make, &mut probe, NOW, (40022, 40023));
    assert!(
        fake.calls().contains(
            "pass in quick proto tcp from <postern_tcp_8080_s40022> port 40022 to any port 8080 keep state"
        ),
        "{}",
        fake.calls()
    );
    // The main ruleset was only ever read.
    assert!(fake
        .calls()
        .lines()
        .filter(|l| !l.starts_with("| "))
        .all(|l| l == "pfctl -s rules"
            || l.contains("-a postern")
            || l.starts_with("pfctl --probe")));
}

#[test]
fn grant_shows_in_the_table_once_and_rules_are_loaded() {
    let fake = FakePf::new();
    let mut fw = fake.backend();
    fw.init(NOW).unwrap();
    let a = rule("192.0.2.1", Proto::Tcp, 22);
    fw.grant(&[opening(&a, NOW, 30)]).unwrap();
    fw.grant(&[opening(&a, NOW, 30)]).unwrap();
    assert_eq!(fake.show("postern_tcp_22"), "   192.0.2.1\n");
    let (_, rules, _) = fake.pfctl(&["-a", "postern", "-s", "rules"]);
    assert_eq!(
        rules,
        "pass in quick proto tcp from <postern_tcp_22> to any port = 22 flags S/SA keep state\n"
    );
    assert!(fake.probe(&a));
    assert!(!fake.probe(&rule("192.0.2.2", Proto::Tcp, 22)));
    assert!(!fake.probe(&rule("192.0.2.1", Proto::Tcp, 23)));
}

#[test]
fn state_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let fake = FakePf::new();
    let mut fw = fake.backend();
    fw.grant(&[opening(&rule("192.0.2.1", Proto::Tcp, 22), NOW, 30)])
        .unwrap();
    let mode = std::fs::metadata(fake.path("state/pf.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn restart_without_state_removes_unknown_entries() {
    let fake = FakePf::new();
    let mut fw = fake.backend();
    fw.init(NOW).unwrap();
    let a = rule("192.0.2.1", Proto::Tcp, 22);
    fw.grant(&[opening(&a, NOW, 300)]).unwrap();
    // Added by hand, and then the state file is lost.
    assert!(
        fake.pfctl(&[
            "-a",
            "postern",
            "-t",
            "postern_tcp_22",
            "-T",
            "add",
            "192.0.2.77"
        ])
        .0
    );
    let (ok, _, _) = fake.pfctl(&["-a", "postern", "-t", "admin_list", "-T", "add", "10.1.1.1"]);
    assert!(ok);
    drop(fw);
    std::fs::remove_file(fake.path("state/pf.json")).unwrap();
    let mut fw = fake.backend();
    fw.init(NOW + 10).unwrap();
    assert!(fw.list().unwrap().is_empty());
    assert!(!fake.probe(&a), "unknown expiry: closed");
    // a table in our anchor that postern does not name is left alone
    assert_eq!(fake.show("admin_list"), "   10.1.1.1\n");
}

#[test]
fn unlinked_anchor_is_a_clear_error_and_changes_nothing() {
    let fake = FakePf::new();
    std::fs::write(fake.path("pf.conf"), "block in all\n").unwrap();
    let mut fw = fake.backend();
    let e = fw.init(NOW).unwrap_err().to_string();
    assert!(e.contains("not referenced from the main pf ruleset"), "{e}");
    let e = fw
        .grant(&[opening(&rule("192.0.2.1", Proto::Tcp, 22), NOW, 30)])
        .unwrap_err();
    assert!(e.to_string().contains("not referenced"), "{e}");
    assert!(!fake.path("pf.json").exists(), "nothing was written to pf");
}

#[test]
fn ipv6_disabled_is_refused_and_nothing_changes() {
    let fake = FakePf::new();
    let cfg = PfConfig {
        ipv6: false,
        ..fake.config()
    };
    let mut fw = PfBackend::system(&cfg).unwrap();
    fw.init(NOW).unwrap();
    let calls = fake.calls();
    let good = rule("192.0.2.1", Proto::Tcp, 22);
    let e = fw
        .grant(&[
            opening(&good, NOW, 30),
            opening(&rule("2001:db8::1", Proto::Tcp, 22), NOW, 30),
        ])
        .unwrap_err();
    assert!(
        matches!(e, FirewallError::Unsupported { backend: "pf", .. }),
        "{e}"
    );
    assert!(e.to_string().contains("IPv6"), "{e}");
    assert_eq!(fake.calls(), calls, "no pfctl command ran");
    assert!(!fake.probe(&good));
}

#[test]
fn ipv6_shares_the_table() {
    let fake = FakePf::new();
    let mut fw = fake.backend();
    let v6 = rule("2001:db8::1", Proto::Tcp, 22);
    fw.grant(&[
        opening(&rule("192.0.2.1", Proto::Tcp, 22), NOW, 30),
        opening(&v6, NOW, 30),
    ])
    .unwrap();
    assert_eq!(
        fake.show("postern_tcp_22"),
        "   192.0.2.1\n   2001:db8::1\n"
    );
    assert!(fake.probe(&v6));
}

#[test]
fn fake_pfctl_fails_like_pfctl() {
    let fake = FakePf::new();
    let (ok, _, err) = fake.pfctl(&["-a", "postern", "-t", "t", "-T", "show"]);
    assert!(!ok && err.contains("pfctl: Table does not exist."), "{err}");
    let (ok, _, err) = fake.pfctl(&["-a", "postern", "-t", "t", "-T", "add", "300.1.1.1"]);
    assert!(
        !ok && err.contains("no IP address found for 300.1.1.1"),
        "{err}"
    );
    let (ok, _, err) = fake.pfctl(&["-a", "nowhere", "-s", "Tables"]);
    assert!(
        !ok && err.contains("Anchor or Ruleset does not exist"),
        "{err}"
    );
    let (ok, _, err) = fake.pfctl(&["-f", "/etc/pf.conf"]);
    assert!(!ok && err.contains("refusing"), "{err}");
    let (ok, _, err) = fake.pfctl(&["-F", "all"]);
    assert!(!ok && err.contains("refusing"), "{err}");
    let (ok, _, err) = fake.pfctl(&["-x"]);
    assert!(!ok && err.contains("illegal option"), "{err}");
    // A syntax error loads nothing.
    let mut child = Command::new(fake.tool())
        .args(["-a", "postern", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"pass in quick proto tcp from <postern_tcp_22> to any port 22 keep state\npass in bogus\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("stdin:2: syntax error"),
        "{err}"
    );
    assert_eq!(fake.pfctl(&["-a", "postern", "-s", "rules"]).1, "");
}

/// The safety net: an entry pf has held longer than `max_grant_secs` is
/// expired; refreshes past that bound re-add the entry so pf's age restarts.
#[test]
fn table_expiry_safety_net_never_cuts_a_live_grant() {
    let fake = FakePf::new();
    let cfg = PfConfig {
        max_grant_secs: 100,
        ..fake.config()
    };
    let mut fw = PfBackend::system(&cfg).unwrap();
    let a = rule("192.0.2.1", Proto::Tcp, 22);
    let b = rule("192.0.2.2", Proto::Tcp, 22);
    fake.set_clock(NOW);
    fw.grant(&[opening(&a, NOW, 60), opening(&b, NOW, 60)])
        .unwrap();
    // a is refreshed at NOW+50 for 60 s: alive until NOW+110
    fake.set_clock(NOW + 50);
    fw.grant(&[opening(&a, NOW + 50, 60)]).unwrap();
    // posternd is dead; a cron job runs the safety net at NOW+101
    fake.set_clock(NOW + 101);
    let (ok, _, err) = fake.pfctl(&[
        "-a",
        "postern",
        "-t",
        "postern_tcp_22",
        "-T",
        "expire",
        "100",
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("1/2 addresses expired"), "{err}");
    assert!(fake.probe(&a), "refreshed grant survives");
    assert!(!fake.probe(&b), "expired grant is gone without posternd");
}

/// A destination-bound grant's rule (`to DST`) is accepted by the fake's pfctl
/// parser and the grant lists back with its destination.
#[test]
fn destination_bound_grant_round_trips_through_pfctl() {
    let pf = FakePf::new();
    pf.set_clock(NOW);
    let mut fw = pf.backend();
    fw.init(NOW).unwrap();
    let mut o = opening(&rule("192.0.2.1", Proto::Tcp, 22), NOW, 30);
    o.rule.destination = Some("203.0.113.5".parse().unwrap());
    fw.grant(std::slice::from_ref(&o)).unwrap();
    assert!(pf.show("postern_tcp_22_cb007105").contains("192.0.2.1"));
    let (_, rules, _) = pf.pfctl(&["-a", "postern", "-s", "rules"]);
    assert!(rules.contains("to 203.0.113.5 port = 22"), "{rules}");
    let listed = fw.list().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].rule, o.rule);
    fw.revoke(&[o.rule]).unwrap();
    assert!(fw.list().unwrap().is_empty());
}
