//! Snapshot tests: the exact pfctl argv and stdin the backend produces, against
//! a recording runner that answers listings from canned text.

use postern_backend_common::fake::RecordingRunner;
use postern_backend_pf::{PfBackend, PfConfig};
use spa_core::firewall::{Firewall, FirewallError, FwResult, NatRule, Opening, Rule};
use spa_core::request::Proto;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Canned pfctl answers: the main ruleset, and the tables of the anchor.
#[derive(Clone)]
struct Pf {
    main: Arc<Mutex<String>>,
    tables: Arc<Mutex<BTreeMap<String, String>>>,
    fail_on: Arc<Mutex<Option<String>>>,
}

impl Pf {
    fn new() -> Pf {
        Pf {
            main: Arc::new(Mutex::new("anchor \"postern\" all\n".into())),
            tables: Arc::default(),
            fail_on: Arc::default(),
        }
    }

    fn table(&self, name: &str, show: &str) {
        self.tables.lock().unwrap().insert(name.into(), show.into());
    }

    /// Make the first command containing `word` fail.
    fn fail_on(&self, word: &str) {
        *self.fail_on.lock().unwrap() = Some(word.into());
    }

    fn respond(&self, argv: &[String]) -> FwResult<String> {
        let fail = |stderr: &str| FirewallError::Command {
            command: argv.join(" "),
            status: "exit status: 1".into(),
            stderr: stderr.into(),
        };
        let mut fail_on = self.fail_on.lock().unwrap();
        if fail_on.as_ref().is_some_and(|w| argv.contains(w)) {
            *fail_on = None;
            return Err(fail("pfctl: Operation not permitted."));
        }
        let args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
        let tables = self.tables.lock().unwrap();
        Ok(match args.as_slice() {
            ["-s", "rules"] => self.main.lock().unwrap().clone(),
            ["-a", _, "-s", "Tables"] => tables.keys().map(|k| format!("{k}\n")).collect(),
            ["-a", _, "-t", t, "-T", "show"] => match tables.get(*t) {
                Some(show) => show.clone(),
                None => return Err(fail("pfctl: Table does not exist.")),
            },
            ["-a", _, "-t", t, "-T", "delete", ..] if !tables.contains_key(*t) => {
                return Err(fail("pfctl: Table does not exist."))
            }
            _ => String::new(),
        })
    }
}

struct Setup {
    fw: PfBackend,
    rec: RecordingRunner,
    pf: Pf,
    _dir: tempfile::TempDir,
    state: std::path::PathBuf,
}

fn setup_with(config: impl FnOnce(&mut PfConfig)) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("pf.json");
    let mut cfg = PfConfig {
        state_file: Some(state.clone()),
        ..PfConfig::default()
    };
    config(&mut cfg);
    let pf = Pf::new();
    let p = pf.clone();
    let rec = RecordingRunner::new(move |argv, _| p.respond(argv));
    let fw = PfBackend::new(&cfg, Box::new(rec.clone()))
        .unwrap()
        .with_clock(std::sync::Arc::new(|| 1000));
    Setup {
        fw,
        rec,
        pf,
        _dir: dir,
        state,
    }
}

fn setup() -> Setup {
    setup_with(|_| {})
}

fn rule(source: &str, proto: Proto, port: u16) -> Rule {
    Rule::new(source.parse().unwrap(), proto, port)
}

fn opening(source: &str, proto: Proto, port: u16, expires_at: u64) -> Opening {
    Opening {
        rule: rule(source, proto, port),
        timeout_secs: (expires_at - 1000) as u32,
        expires_at,
    }
}

#[test]
fn init_on_a_fresh_system_checks_the_anchor_and_loads_an_empty_ruleset() {
    let mut s = setup();
    s.fw.init(1000).unwrap();
    assert_eq!(
        s.rec.take_transcript(),
        "\
$ pfctl -s rules
$ pfctl -a postern -s Tables
$ pfctl -a postern -f -
"
    );
    assert!(s.state.exists());
}

#[test]
fn init_refuses_an_anchor_the_main_ruleset_does_not_reference() {
    let mut s = setup();
    *s.pf.main.lock().unwrap() = "pass all\nanchor \"fwknop\" all\n".into();
    let e = s.fw.init(1000).unwrap_err().to_string();
    assert!(
        e.contains("anchor `postern` is not referenced") && e.contains("anchor \"postern\""),
        "{e}"
    );
    assert_eq!(s.rec.take_transcript(), "$ pfctl -s rules\n");
    // the check can be turned off
    let mut s = setup_with(|c| c.check_anchor = false);
    *s.pf.main.lock().unwrap() = String::new();
    s.fw.init(1000).unwrap();
    assert!(!s.rec.take_transcript().contains("-s rules"));
}

#[test]
fn grant_adds_per_table_and_loads_rules_only_when_tables_change() {
    let mut s = setup();
    s.fw.init(1000).unwrap();
    s.rec.take_transcript();
    s.fw.grant(&[
        opening("192.0.2.1", Proto::Tcp, 22, 1030),
        opening("2001:db8::1", Proto::Tcp, 22, 1030),
        opening("192.0.2.1", Proto::Udp, 53, 1060),
    ])
    .unwrap();
    assert_eq!(
        s.rec.take_transcript(),
        "\
$ pfctl -a postern -t postern_tcp_22 -T add 192.0.2.1 2001:db8::1
$ pfctl -a postern -t postern_udp_53 -T add 192.0.2.1
$ pfctl -a postern -f -
| pass in quick proto tcp from <postern_tcp_22> to any port 22 keep state
| pass in quick proto udp from <postern_udp_53> to any port 53 keep state
"
    );
    // Repeated and refreshed grants: one add, no rule reload, expiry extended.
    s.fw.grant(&[
        opening("192.0.2.1", Proto::Tcp, 22, 1030),
        opening("192.0.2.1", Proto::Tcp, 22, 1045),
    ])
    .unwrap();
    assert_eq!(
        s.rec.take_transcript(),
        "$ pfctl -a postern -t postern_tcp_22 -T add 192.0.2.1\n"
    );
    let state = std::fs::read_to_string(&s.state).unwrap();
    assert!(state.contains("\"expires_at\": 1045"), "{state}");
    // A shorter repeat does not shorten.
    s.fw.grant(&[opening("192.0.2.1", Proto::Tcp, 22, 1010)])
        .unwrap();
    let state = std::fs::read_to_string(&s.state).unwrap();
    assert!(
        state.contains("\"expires_at\": 1045") && !state.contains("1010"),
        "{state}"
    );
}

#[test]
fn first_grant_without_init_initialises() {
    let mut s = setup();
    s.fw.grant(&[opening("192.0.2.1", Proto::Tcp, 22, 1030)])
        .unwrap();
    assert_eq!(
        s.rec.take_transcript(),
        "\
$ pfctl -s rules
$ pfctl -a postern -s Tables
$ pfctl -a postern -f -
$ pfctl -a postern -t postern_tcp_22 -T add 192.0.2.1
$ pfctl -a postern -f -
| pass in quick proto tcp from <postern_tcp_22> to any port 22 keep state
"
    );
}

#[test]
fn expire_deletes_due_entries_and_retires_empty_tables() {
    let mut s = setup();
    s.fw.init(1000).unwrap();
    s.fw.grant(&[
        opening("192.0.2.1", Proto::Tcp, 22, 1030),
        opening("192.0.2.2", Proto::Tcp, 22, 1060),
        opening("192.0.2.1", Proto::Udp, 53, 1030),
    ])
    .unwrap();
    s.pf.table("postern_tcp_22", "   192.0.2.1\n   192.0.2.2\n");
    s.pf.table("postern_udp_53", "   192.0.2.1\n");
    s.rec.take_transcript();
    assert!(s.fw.expire(1029).unwrap().is_empty());
    assert_eq!(s.rec.take_transcript(), "", "nothing due: no command");
    let mut gone = s.fw.expire(1030).unwrap();
    gone.sort_by_key(|r| r.port);
    assert_eq!(
        gone,
        vec![
            rule("192.0.2.1", Proto::Tcp, 22),
            rule("192.0.2.1", Proto::Udp, 53)
        ]
    );
    assert_eq!(
        s.rec.take_transcript(),
        "\
$ pfctl -a postern -t postern_tcp_22 -T delete 192.0.2.1
$ pfctl -a postern -t postern_udp_53 -T delete 192.0.2.1
$ pfctl -a postern -f -
| pass in quick proto tcp from <postern_tcp_22> to any port 22 keep state
$ pfctl -a postern -t postern_udp_53 -T kill
$ pfctl -a postern -t postern_tcp_22 -T expire 86400
"
    );
}

#[test]
fn list_merges_tables_with_recorded_expiry() {
    let mut s = setup();
    s.fw.init(1000).unwrap();
    s.fw.grant(&[opening("192.0.2.1", Proto::Tcp, 22, 1030)])
        .unwrap();
    s.pf.table(
        "postern_tcp_22",
        "   192.0.2.1\n   192.0.2.99\n  !192.0.2.0/24\n",
    );
    s.pf.table("admin_table", "   10.0.0.1\n");
    s.rec.take_transcript();
    let listed = s.fw.list().unwrap();
    assert_eq!(
        listed,
        vec![
            Opening {
                rule: rule("192.0.2.1", Proto::Tcp, 22),
                timeout_secs: 30,
                expires_at: 1030
            },
            // in the table but not recorded: owed a removal
            Opening {
                rule: rule("192.0.2.99", Proto::Tcp, 22),
                timeout_secs: 0,
                expires_at: 0
            },
        ]
    );
    assert_eq!(
        s.rec.take_transcript(),
        "\
$ pfctl -a postern -s Tables
$ pfctl -a postern -t postern_tcp_22 -T show
"
    );
}

#[test]
fn flush_and_shutdown_flush_the_anchor_only() {
    let mut s = setup();
    s.fw.init(1000).unwrap();
    s.fw.grant(&[opening("192.0.2.1", Proto::Tcp, 22, 1030)])
        .unwrap();
    s.rec.take_transcript();
    s.fw.flush().unwrap();
    assert_eq!(s.rec.take_transcript(), "$ pfctl -a postern -F all\n");
    s.fw.grant(&[opening("192.0.2.1", Proto::Tcp, 22, 1030)])
        .unwrap();
    assert_eq!(
        s.rec.take_transcript(),
        "\
$ pfctl -a postern -t postern_tcp_22 -T add 192.0.2.1
$ pfctl -a postern -f -
| pass in quick proto tcp from <postern_tcp_22> to any port 22 keep state
"
    );
    s.fw.shutdown().unwrap();
    assert_eq!(s.rec.take_transcript(), "$ pfctl -a postern -F all\n");
    let mut s = setup_with(|c| c.flush_at_exit = false);
    s.fw.shutdown().unwrap();
    assert_eq!(s.rec.take_transcript(), "");
}

#[test]
fn restart_reconciles_leftovers_with_the_state_file() {
    let mut s = setup();
    s.fw.init(1000).unwrap();
    s.fw.grant(&[
        opening("192.0.2.1", Proto::Tcp, 22, 1030),
        opening("192.0.2.2", Proto::Tcp, 22, 1300),
        opening("192.0.2.3", Proto::Udp, 53, 1030),
    ])
    .unwrap();
    // What pf holds after the daemon died: plus one address nobody recorded.
    s.pf.table(
        "postern_tcp_22",
        "   192.0.2.1\n   192.0.2.2\n   192.0.2.50\n",
    );
    s.pf.table("postern_udp_53", "   192.0.2.3\n");
    s.pf.table("admin_table", "   10.0.0.1\n");
    let cfg = PfConfig {
        state_file: Some(s.state.clone()),
        ..PfConfig::default()
    };
    let p = s.pf.clone();
    let rec = RecordingRunner::new(move |argv, _| p.respond(argv));
    let mut fw = PfBackend::new(&cfg, Box::new(rec.clone())).unwrap();
    fw.init(1100).unwrap();
    assert_eq!(
        rec.take_transcript(),
        "\
$ pfctl -s rules
$ pfctl -a postern -s Tables
$ pfctl -a postern -t postern_tcp_22 -T show
$ pfctl -a postern -t postern_tcp_22 -T delete 192.0.2.1 192.0.2.50
$ pfctl -a postern -t postern_udp_53 -T show
$ pfctl -a postern -t postern_udp_53 -T delete 192.0.2.3
$ pfctl -a postern -f -
| pass in quick proto tcp from <postern_tcp_22> to any port 22 keep state
$ pfctl -a postern -t postern_udp_53 -T kill
$ pfctl -a postern -t postern_tcp_22 -T expire 86400
"
    );
    let state = std::fs::read_to_string(&s.state).unwrap();
    assert!(
        state.contains("192.0.2.2")
            && !state.contains("192.0.2.1\"")
            && !state.contains("192.0.2.3"),
        "{state}"
    );
}

#[test]
fn flush_at_init_flushes_the_anchor() {
    let mut s = setup_with(|c| c.flush_at_init = true);
    s.fw.init(1000).unwrap();
    assert_eq!(
        s.rec.take_transcript(),
        "$ pfctl -s rules\n$ pfctl -a postern -F all\n"
    );
}

#[test]
fn a_failed_rule_load_takes_the_new_addresses_back_out() {
    let mut s = setup();
    s.fw.init(1000).unwrap();
    s.fw.grant(&[opening("192.0.2.1", Proto::Tcp, 22, 1030)])
        .unwrap();
    s.rec.take_transcript();
    s.pf.fail_on("-f");
    let e =
        s.fw.grant(&[
            opening("192.0.2.1", Proto::Tcp, 22, 1090),
            opening("192.0.2.2", Proto::Udp, 53, 1030),
        ])
        .unwrap_err();
    assert!(e.to_string().contains("Operation not permitted"), "{e}");
    assert_eq!(
        s.rec.take_transcript(),
        "\
$ pfctl -a postern -t postern_tcp_22 -T add 192.0.2.1
$ pfctl -a postern -t postern_udp_53 -T add 192.0.2.2
$ pfctl -a postern -f -
| pass in quick proto tcp from <postern_tcp_22> to any port 22 keep state
| pass in quick proto udp from <postern_udp_53> to any port 53 keep state
$ pfctl -a postern -t postern_udp_53 -T delete 192.0.2.2
"
    );
    // The record is unchanged: the refresh did not happen either.
    let state = std::fs::read_to_string(&s.state).unwrap();
    assert!(
        state.contains("1030") && !state.contains("1090") && !state.contains("192.0.2.2"),
        "{state}"
    );
}

#[test]
fn unsupported_input_runs_nothing() {
    let mut s = setup_with(|c| c.ipv6 = false);
    s.fw.init(1000).unwrap();
    s.rec.take_transcript();
    let mut nat = opening("192.0.2.1", Proto::Tcp, 22, 1030);
    nat.rule.nat = Some(NatRule {
        to_addr: "10.0.0.2".parse().unwrap(),
        to_port: 22,
        local: false,
        snat: None,
        dnat: true,
        forward_all: false,
    });
    let e =
        s.fw.grant(&[opening("192.0.2.9", Proto::Tcp, 22, 1030), nat])
            .unwrap_err();
    assert!(
        matches!(e, FirewallError::Unsupported { .. }) && e.to_string().contains("NAT"),
        "{e}"
    );
    let e =
        s.fw.grant(&[
            opening("192.0.2.9", Proto::Tcp, 22, 1030),
            opening("2001:db8::1", Proto::Tcp, 22, 1030),
        ])
        .unwrap_err();
    assert!(e.to_string().contains("IPv6 with `ipv6 = false`"), "{e}");
    let mut long = opening("192.0.2.9", Proto::Tcp, 22, 1030);
    long.timeout_secs = 100_000;
    let e = s.fw.grant(&[long]).unwrap_err();
    assert!(e.to_string().contains("max_grant_secs"), "{e}");
    assert_eq!(s.rec.take_transcript(), "");
}

#[test]
fn refreshing_past_max_grant_secs_re_adds_the_entry() {
    let mut s = setup_with(|c| c.max_grant_secs = 100);
    s.fw.init(1000).unwrap();
    s.fw.grant(&[opening("192.0.2.1", Proto::Tcp, 22, 1060)])
        .unwrap();
    s.rec.take_transcript();
    // granted at 1050 for 60 s: 110 s after the entry was added
    s.fw.grant(&[Opening {
        rule: rule("192.0.2.1", Proto::Tcp, 22),
        timeout_secs: 60,
        expires_at: 1110,
    }])
    .unwrap();
    assert_eq!(
        s.rec.take_transcript(),
        "\
$ pfctl -a postern -t postern_tcp_22 -T delete 192.0.2.1
$ pfctl -a postern -t postern_tcp_22 -T add 192.0.2.1
"
    );
    let state = std::fs::read_to_string(&s.state).unwrap();
    assert!(state.contains("\"added_at\": 1050"), "{state}");
}

#[test]
fn revoke_deletes_recorded_and_unrecorded_addresses() {
    let mut s = setup();
    s.fw.init(1000).unwrap();
    s.fw.grant(&[opening("192.0.2.1", Proto::Tcp, 22, 1030)])
        .unwrap();
    s.pf.table("postern_tcp_22", "   192.0.2.1\n");
    s.rec.take_transcript();
    s.fw.revoke(&[
        rule("192.0.2.1", Proto::Tcp, 22),
        rule("192.0.2.7", Proto::Udp, 99),
    ])
    .unwrap();
    assert_eq!(
        s.rec.take_transcript(),
        "\
$ pfctl -a postern -t postern_tcp_22 -T delete 192.0.2.1
$ pfctl -a postern -t postern_udp_99 -T delete 192.0.2.7
$ pfctl -a postern -f -
$ pfctl -a postern -t postern_tcp_22 -T kill
"
    );
}

#[test]
fn missing_pfctl_is_reported_with_a_hint() {
    let cfg = PfConfig {
        pfctl: "/nonexistent/pfctl".into(),
        ..PfConfig::default()
    };
    let e = PfBackend::system(&cfg).err().expect("no pfctl");
    assert!(
        matches!(e, FirewallError::Missing { backend: "pf", .. }),
        "{e}"
    );
    assert!(e.to_string().contains("/nonexistent/pfctl"), "{e}");
}

#[test]
fn bad_anchor_names_are_refused() {
    let cfg = PfConfig {
        anchor: "x y".into(),
        ..PfConfig::default()
    };
    let e = PfBackend::new(&cfg, Box::new(RecordingRunner::succeeding()))
        .err()
        .unwrap();
    assert!(e.to_string().contains("anchor `x y`"), "{e}");
}

/// ENABLE_DESTINATION_RULE: a table per destination, its rule `to DST` (as
/// fwknopd's use_destination); the grant lists back with its destination. An
/// IPv6 destination (no room in a pf table name) is refused before anything runs.
#[test]
fn destination_bound_grants_get_a_table_of_their_own() {
    let mut s = setup();
    s.fw.init(1000).unwrap();
    s.rec.take_transcript();
    let mut bound = opening("192.0.2.1", Proto::Tcp, 22, 1030);
    bound.rule.destination = Some("203.0.113.5".parse().unwrap());
    s.fw.grant(&[bound.clone(), opening("192.0.2.2", Proto::Tcp, 22, 1030)])
        .unwrap();
    assert_eq!(
        s.rec.take_transcript(),
        "\
$ pfctl -a postern -t postern_tcp_22 -T add 192.0.2.2
$ pfctl -a postern -t postern_tcp_22_cb007105 -T add 192.0.2.1
$ pfctl -a postern -f -
| pass in quick proto tcp from <postern_tcp_22> to any port 22 keep state
| pass in quick proto tcp from <postern_tcp_22_cb007105> to 203.0.113.5 port 22 keep state
"
    );
    s.pf.table("postern_tcp_22_cb007105", "   192.0.2.1\n");
    let listed = s.fw.list().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].rule, bound.rule);
    assert_eq!(listed[0].expires_at, 1030, "known to the state file");
    s.rec.take_transcript();
    let mut v6 = opening("2001:db8::7", Proto::Tcp, 22, 1030);
    v6.rule.destination = Some("2001:db8::1".parse().unwrap());
    let err = s.fw.grant(&[v6]).unwrap_err();
    assert!(err.to_string().contains("IPv6 destination"), "{err}");
    assert_eq!(s.rec.take_transcript(), "");
}
