//! Snapshot tests: the exact ipfw argv the backend produces, against a
//! recording runner that answers listings from canned text.

use postern_backend_common::fake::RecordingRunner;
use postern_backend_ipfw::{IpfwBackend, IpfwConfig};
use spa_core::firewall::{Firewall, FirewallError, FwResult, NatRule, Opening, Rule};
use spa_core::request::Proto;
use std::sync::{Arc, Mutex};

const DEFAULT_RULE: &str = "65535 set 31 deny ip from any to any\n";

/// Canned answers: `ipfw -S list`, `ipfw -d set N list`; optionally fail one command.
#[derive(Clone, Default)]
struct Canned {
    list: Arc<Mutex<String>>,
    dynamic: Arc<Mutex<String>>,
    fail_on: Arc<Mutex<Option<String>>>,
}

impl Canned {
    fn set_list(&self, rules: &str) {
        *self.list.lock().unwrap() = format!("{rules}{DEFAULT_RULE}");
    }

    fn respond(&self, argv: &[String]) -> FwResult<String> {
        let line = argv.join(" ");
        let mut fail_on = self.fail_on.lock().unwrap();
        if fail_on.as_ref().is_some_and(|w| line.contains(w.as_str())) {
            *fail_on = None;
            return Err(FirewallError::Command {
                command: line,
                status: "exit status: 71".into(),
                stderr: "ipfw: getsockopt(IP_FW_XADD): Operation not permitted".into(),
            });
        }
        let args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
        Ok(match args.as_slice() {
            ["-S", "list"] => self.list.lock().unwrap().clone(),
            ["-d", "set", _, "list"] => self.dynamic.lock().unwrap().clone(),
            ["add", num, ..] => format!("{num} ...\n"),
            _ => String::new(),
        })
    }
}

fn setup_with(f: impl FnOnce(&mut IpfwConfig)) -> (IpfwBackend, RecordingRunner, Canned) {
    let mut cfg = IpfwConfig::default();
    f(&mut cfg);
    let canned = Canned::default();
    canned.set_list("");
    let c = canned.clone();
    let rec = RecordingRunner::new(move |argv, _| c.respond(argv));
    let fw = IpfwBackend::new(&cfg, Box::new(rec.clone()))
        .unwrap()
        .with_clock(std::sync::Arc::new(|| 1000));
    (fw, rec, canned)
}

fn setup() -> (IpfwBackend, RecordingRunner, Canned) {
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
fn init_on_a_fresh_system() {
    let (mut fw, rec, _) = setup();
    fw.init(1000).unwrap();
    assert_eq!(
        rec.take_transcript(),
        "$ ipfw -S list\n$ ipfw set disable 2\n"
    );
    let (mut fw, rec, _) = setup_with(|c| {
        c.add_check_state = true;
        c.expire_set = 0;
    });
    fw.init(1000).unwrap();
    assert_eq!(
        rec.take_transcript(),
        "$ ipfw -S list\n$ ipfw add 10000 set 1 check-state\n"
    );
}

#[test]
fn grant_adds_one_numbered_rule_per_grant() {
    let (mut fw, rec, canned) = setup();
    fw.init(1000).unwrap();
    canned.set_list(
        "00100 set 0 allow ip from any to any via lo0\n10000 set 0 deny tcp from any to any 25\n",
    );
    rec.take_transcript();
    fw.grant(&[
        opening("192.0.2.1", Proto::Tcp, 22, 1030),
        opening("192.0.2.1", Proto::Udp, 53, 1030),
        opening("2001:db8::1", Proto::Tcp, 22, 1060),
    ])
    .unwrap();
    // 10000 is taken by someone else's rule (another set): skipped.
    assert_eq!(
        rec.take_transcript(),
        "\
$ ipfw -S list
$ ipfw add 10001 set 1 pass tcp from 192.0.2.1 to me dst-port 22 setup keep-state // postern_exp_1030
$ ipfw add 10002 set 1 pass udp from 192.0.2.1 to me dst-port 53 keep-state // postern_exp_1030
$ ipfw add 10003 set 1 pass tcp from 2001:db8::1 to me6 dst-port 22 setup keep-state // postern_exp_1060
"
    );
}

#[test]
fn repeated_grant_is_a_no_op_and_a_refresh_replaces_the_rule() {
    let (mut fw, rec, canned) = setup();
    fw.init(1000).unwrap();
    canned.set_list("10000 set 1 allow tcp from 192.0.2.1 to me 22 setup keep-state :default // postern_exp_1030\n");
    rec.take_transcript();
    fw.grant(&[opening("192.0.2.1", Proto::Tcp, 22, 1030)])
        .unwrap();
    fw.grant(&[opening("192.0.2.1", Proto::Tcp, 22, 1010)])
        .unwrap();
    assert_eq!(
        rec.take_transcript(),
        "$ ipfw -S list\n$ ipfw -S list\n",
        "no change"
    );
    fw.grant(&[opening("192.0.2.1", Proto::Tcp, 22, 1045)])
        .unwrap();
    assert_eq!(
        rec.take_transcript(),
        "\
$ ipfw -S list
$ ipfw add 10001 set 1 pass tcp from 192.0.2.1 to me dst-port 22 setup keep-state // postern_exp_1045
$ ipfw set move rule 10000 to 2
"
    );
}

#[test]
fn expire_moves_due_rules_to_the_expire_set_and_purges_later() {
    let (mut fw, rec, canned) = setup();
    fw.init(1000).unwrap();
    fw.grant(&[
        opening("192.0.2.1", Proto::Tcp, 22, 1030),
        opening("192.0.2.2", Proto::Tcp, 22, 1060),
    ])
    .unwrap();
    canned.set_list(
        "\
10000 set 1 allow tcp from 192.0.2.1 to me 22 setup keep-state :default // postern_exp_1030
10001 set 1 allow tcp from 192.0.2.2 to me 22 setup keep-state :default // postern_exp_1060
",
    );
    rec.take_transcript();
    assert!(fw.expire(1029).unwrap().is_empty());
    assert_eq!(rec.take_transcript(), "", "nothing due: not even a listing");
    assert_eq!(
        fw.expire(1030).unwrap(),
        vec![rule("192.0.2.1", Proto::Tcp, 22)]
    );
    assert_eq!(
        rec.take_transcript(),
        "$ ipfw -S list\n$ ipfw set move rule 10000 to 2\n"
    );
    // The purge interval (30 s since init at 1000) has passed at 1031; 10000 still
    // has a session, a leftover 10005 has none.
    canned.set_list(
        "\
10001 set 1 allow tcp from 192.0.2.2 to me 22 setup keep-state :default // postern_exp_1060
# DISABLED 10000 set 2 allow tcp from 192.0.2.1 to me 22 setup keep-state :default // postern_exp_1030
# DISABLED 10005 set 2 allow tcp from 192.0.2.5 to me 22 setup keep-state :default // postern_exp_900
",
    );
    *canned.dynamic.lock().unwrap() = "## Dynamic rules (1 160):\n10000 3 180 (287s) STATE tcp 192.0.2.1 50000 <-> 198.51.100.1 22 :default\n".into();
    assert!(fw.expire(1031).unwrap().is_empty());
    assert_eq!(
        rec.take_transcript(),
        "\
$ ipfw -S list
$ ipfw -d set 2 list
$ ipfw set 2 delete 10005
"
    );
    // Next purge only after another interval.
    assert!(fw.expire(1040).unwrap().is_empty());
    assert_eq!(rec.take_transcript(), "");
}

#[test]
fn without_an_expire_set_expiry_deletes() {
    let (mut fw, rec, canned) = setup_with(|c| c.expire_set = 0);
    canned.set_list(
        "10000 set 1 allow udp from 192.0.2.1 to me 53 keep-state :default // postern_exp_1030\n",
    );
    fw.init(1000).unwrap();
    rec.take_transcript();
    assert_eq!(
        fw.expire(1030).unwrap(),
        vec![rule("192.0.2.1", Proto::Udp, 53)]
    );
    assert_eq!(
        rec.take_transcript(),
        "$ ipfw -S list\n$ ipfw set 1 delete 10000\n"
    );
}

#[test]
fn list_reports_active_grants_in_range_only() {
    let (mut fw, rec, canned) = setup();
    canned.set_list(
        "\
00100 set 0 allow ip from any to any via lo0
10000 set 1 check-state :default
10001 set 1 allow tcp from 192.0.2.1 to me 22 setup keep-state :default // postern_exp_1030
10002 set 0 allow tcp from 192.0.2.9 to me 22 setup keep-state :default // postern_exp_1030
# DISABLED 10003 set 2 allow tcp from 192.0.2.3 to me 22 setup keep-state :default // postern_exp_900
20000 set 1 allow tcp from 192.0.2.4 to me 22 setup keep-state :default // postern_exp_1030
",
    );
    let listed = fw.list().unwrap();
    assert_eq!(
        listed,
        vec![Opening {
            rule: rule("192.0.2.1", Proto::Tcp, 22),
            timeout_secs: 30,
            expires_at: 1030
        }]
    );
    assert_eq!(rec.take_transcript(), "$ ipfw -S list\n");
}

#[test]
fn restart_reconciles_the_range() {
    let (mut fw, rec, canned) = setup_with(|c| c.add_check_state = true);
    canned.set_list(
        "\
10000 set 1 check-state :default
10001 set 1 allow tcp from 192.0.2.1 to me 22 setup keep-state :default // postern_exp_900
10002 set 1 allow tcp from 192.0.2.2 to me 22 setup keep-state :default // postern_exp_2000
10003 set 1 allow tcp from 192.0.2.3 to me 22 setup keep-state :default
10004 set 1 allow tcp from 192.0.2.4 to me 80 setup keep-state :default // _exp_900
10004 set 1 allow tcp from 192.0.2.4 to me 443 setup keep-state :default // _exp_900
10006 set 0 allow tcp from 192.0.2.6 to me 22 setup keep-state :default // postern_exp_900
# DISABLED 10007 set 2 allow tcp from 192.0.2.7 to me 22 setup keep-state :default // postern_exp_800
",
    );
    fw.init(1000).unwrap();
    // expired grants (also fwknopd's, two ports under one number) retired to the
    // expire set; the rule without an expiry deleted; set 0 untouched; the purge
    // deletes everything in the expire set that has no session.
    assert_eq!(
        rec.take_transcript(),
        "\
$ ipfw -S list
$ ipfw set disable 2
$ ipfw set move rule 10001 to 2
$ ipfw set move rule 10004 to 2
$ ipfw set 1 delete 10003
$ ipfw -d set 2 list
$ ipfw set 2 delete 10001 10004 10007
"
    );
    let listed: Vec<Rule> = {
        canned.set_list(
            "10000 set 1 check-state :default\n10002 set 1 allow tcp from 192.0.2.2 to me 22 setup keep-state :default // postern_exp_2000\n",
        );
        fw.list().unwrap().into_iter().map(|o| o.rule).collect()
    };
    assert_eq!(listed, vec![rule("192.0.2.2", Proto::Tcp, 22)]);
}

#[test]
fn refreshing_one_port_of_a_fwknop_group_keeps_the_others() {
    let (mut fw, rec, canned) = setup();
    fw.init(1000).unwrap();
    canned.set_list(
        "\
10000 set 1 allow tcp from 192.0.2.4 to me 80 setup keep-state :default // _exp_1100
10000 set 1 allow tcp from 192.0.2.4 to me 443 setup keep-state :default // _exp_1100
",
    );
    rec.take_transcript();
    fw.grant(&[opening("192.0.2.4", Proto::Tcp, 443, 1200)])
        .unwrap();
    assert_eq!(
        rec.take_transcript(),
        "\
$ ipfw -S list
$ ipfw add 10001 set 1 pass tcp from 192.0.2.4 to me dst-port 443 setup keep-state // postern_exp_1200
$ ipfw add 10002 set 1 pass tcp from 192.0.2.4 to me dst-port 80 setup keep-state // postern_exp_1100
$ ipfw set move rule 10000 to 2
"
    );
}

#[test]
fn flush_and_shutdown() {
    let (mut fw, rec, canned) = setup_with(|c| c.add_check_state = true);
    canned.set_list(
        "\
10000 set 1 check-state :default
10001 set 1 allow tcp from 192.0.2.1 to me 22 setup keep-state :default // postern_exp_1030
# DISABLED 10002 set 2 allow tcp from 192.0.2.2 to me 22 setup keep-state :default // postern_exp_900
",
    );
    fw.flush().unwrap();
    assert_eq!(
        rec.take_transcript(),
        "$ ipfw -S list\n$ ipfw set 1 delete 10001\n$ ipfw set 2 delete 10002\n"
    );
    fw.shutdown().unwrap();
    assert_eq!(
        rec.take_transcript(),
        "$ ipfw -S list\n$ ipfw set 1 delete 10000 10001\n"
    );
    let (mut fw, rec, _) = setup_with(|c| c.flush_at_exit = false);
    fw.shutdown().unwrap();
    assert_eq!(rec.take_transcript(), "");
}

#[test]
fn a_failed_add_deletes_what_the_batch_added() {
    let (mut fw, rec, canned) = setup();
    fw.init(1000).unwrap();
    rec.take_transcript();
    *canned.fail_on.lock().unwrap() = Some("dst-port 53".into());
    let e = fw
        .grant(&[
            opening("192.0.2.1", Proto::Tcp, 22, 1030),
            opening("192.0.2.1", Proto::Udp, 53, 1030),
        ])
        .unwrap_err();
    assert!(e.to_string().contains("Operation not permitted"), "{e}");
    assert_eq!(
        rec.take_transcript(),
        "\
$ ipfw -S list
$ ipfw add 10000 set 1 pass tcp from 192.0.2.1 to me dst-port 22 setup keep-state // postern_exp_1030
$ ipfw add 10001 set 1 pass udp from 192.0.2.1 to me dst-port 53 keep-state // postern_exp_1030
$ ipfw set 1 delete 10000
"
    );
}

#[test]
fn a_full_range_refuses_the_grant() {
    let (mut fw, rec, canned) = setup_with(|c| c.max_rules = 2);
    fw.init(1000).unwrap();
    canned.set_list(
        "10000 set 1 allow tcp from 192.0.2.1 to me 22 // postern_exp_2000\n10001 set 0 count ip from any to any\n",
    );
    rec.take_transcript();
    let e = fw
        .grant(&[opening("192.0.2.2", Proto::Tcp, 22, 1030)])
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("all 2 rule numbers from 10000 are in use"),
        "{e}"
    );
    assert_eq!(rec.take_transcript(), "$ ipfw -S list\n");
}

#[test]
fn unsupported_input_runs_nothing() {
    let (mut fw, rec, _) = setup_with(|c| c.ipv6 = false);
    let e = fw
        .grant(&[
            opening("192.0.2.1", Proto::Tcp, 22, 1030),
            opening("2001:db8::1", Proto::Tcp, 22, 1030),
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
    assert!(e.to_string().contains("IPv6"), "{e}");
    let mut nat = opening("192.0.2.1", Proto::Tcp, 22, 1030);
    nat.rule.nat = Some(NatRule {
        to_addr: "10.0.0.2".parse().unwrap(),
        to_port: 22,
        local: true,
        snat: None,
        dnat: true,
        forward_all: false,
    });
    let e = fw.grant(&[nat]).unwrap_err();
    assert!(e.to_string().contains("does not support NAT"), "{e}");
    assert_eq!(rec.take_transcript(), "");
}

#[test]
fn config_errors_and_missing_tool() {
    let cfg = IpfwConfig {
        expire_set: 1,
        ..IpfwConfig::default()
    };
    let e = IpfwBackend::new(&cfg, Box::new(RecordingRunner::succeeding()))
        .err()
        .unwrap();
    assert!(e.to_string().contains("active_set and expire_set"), "{e}");
    let cfg = IpfwConfig {
        ipfw: "/nonexistent/ipfw".into(),
        ..IpfwConfig::default()
    };
    let e = IpfwBackend::system(&cfg).err().unwrap();
    assert!(
        matches!(
            e,
            FirewallError::Missing {
                backend: "ipfw",
                ..
            }
        ),
        "{e}"
    );
}

/// ENABLE_DESTINATION_RULE: `to DST` instead of `to me`, as fwknopd's
/// use_destination; the listed rule reads back with its destination.
#[test]
fn destination_bound_grant_names_the_destination() {
    let (mut fw, rec, canned) = setup();
    fw.init(1000).unwrap();
    rec.take_transcript();
    let mut o = opening("192.0.2.1", Proto::Tcp, 22, 1030);
    o.rule.destination = Some("203.0.113.5".parse().unwrap());
    fw.grant(std::slice::from_ref(&o)).unwrap();
    assert_eq!(
        rec.take_transcript(),
        "\
$ ipfw -S list
$ ipfw add 10000 set 1 pass tcp from 192.0.2.1 to 203.0.113.5 dst-port 22 setup keep-state // postern_exp_1030
"
    );
    canned.set_list(
        "10000 set 1 allow tcp from 192.0.2.1 to 203.0.113.5 22 setup keep-state :default // postern_exp_1030\n",
    );
    let listed = fw.list().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].rule, o.rule);
    let mut mixed = opening("192.0.2.1", Proto::Tcp, 22, 1030);
    mixed.rule.destination = Some("2001:db8::5".parse().unwrap());
    assert!(matches!(
        fw.grant(&[mixed]),
        Err(FirewallError::Unsupported { .. })
    ));
}
