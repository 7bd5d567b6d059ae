//! Backend logic against a recording fake runner (no root, no kernel).

use crate::{ApplyWith, NftablesBackend, NftablesConfig, TableFamily};
use spa_core::firewall::{
    CommandRunner, Firewall, FirewallError, FwResult, NatRule, Opening, Rule, Snat,
};
use spa_core::request::Proto;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

type Log = Arc<Mutex<Vec<(Vec<String>, Option<String>)>>>;

/// Records every command and answers from a queue (default: empty success).
struct FakeRunner {
    log: Log,
    answers: VecDeque<FwResult<String>>,
}

impl CommandRunner for FakeRunner {
    fn run(&mut self, argv: &[String], stdin: Option<&str>) -> FwResult<String> {
        self.log
            .lock()
            .unwrap()
            .push((argv.to_vec(), stdin.map(str::to_string)));
        self.answers.pop_front().unwrap_or(Ok(String::new()))
    }
}

fn fake(config: NftablesConfig, answers: Vec<FwResult<String>>) -> (NftablesBackend, Log) {
    let log = Log::default();
    let runner = FakeRunner {
        log: log.clone(),
        answers: answers.into(),
    };
    // `sh` exists everywhere; the fake never runs it.
    let config = NftablesConfig {
        nft_path: "/bin/sh".into(),
        apply_with: ApplyWith::Nft,
        ..config
    };
    let backend = NftablesBackend::new(config)
        .unwrap()
        .with_runner(Box::new(runner))
        .with_clock(std::sync::Arc::new(|| 1000));
    (backend, log)
}

fn no_table() -> FwResult<String> {
    Err(FirewallError::Command {
        command: "nft -j list table inet postern".into(),
        status: "exit status: 1".into(),
        stderr: "Error: No such file or directory".into(),
    })
}

fn opening(src: &str, secs: u32) -> Opening {
    Opening {
        rule: Rule::new(src.parse().unwrap(), Proto::Tcp, 22),
        timeout_secs: secs,
        expires_at: 0,
    }
}

#[test]
fn init_reads_the_table_then_applies_one_document() {
    let (mut fw, log) = fake(NftablesConfig::default(), vec![no_table()]);
    fw.init(0).unwrap();
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(
        log[0].0,
        ["/bin/sh", "-j", "list", "table", "inet", "postern"]
    );
    assert_eq!(log[1].0, ["/bin/sh", "-j", "-f", "-"]);
    assert!(log[1].1.as_deref().unwrap().contains(r#""hook":"input""#));
}

#[test]
fn in_netns_runs_nft_under_nsenter() {
    let (fw, log) = fake(NftablesConfig::default(), vec![no_table()]);
    let mut fw = fw.in_netns("/var/run/netns/x");
    fw.init(0).unwrap();
    assert_eq!(
        log.lock().unwrap()[0].0[..4],
        ["nsenter", "--net=/var/run/netns/x", "--", "/bin/sh"]
    );
}

#[test]
fn a_missing_nft_is_reported_as_missing() {
    let config = NftablesConfig {
        nft_path: "/nonexistent/nft".into(),
        ..Default::default()
    };
    let mut fw = NftablesBackend::new(config).unwrap();
    match fw.init(0) {
        Err(e @ FirewallError::Missing { .. }) => {
            assert!(e.to_string().contains("/nonexistent/nft"), "{e}")
        }
        other => panic!("expected Missing, got {other:?}"),
    }
}

#[test]
fn permission_denied_is_reported_as_missing_capability() {
    let denied = Err(FirewallError::Command {
        command: "nft".into(),
        status: "exit status: 1".into(),
        stderr: "Error: Could not process rule: Operation not permitted".into(),
    });
    let (mut fw, _) = fake(NftablesConfig::default(), vec![denied]);
    let e = fw.init(0).unwrap_err();
    assert!(
        matches!(e, FirewallError::Missing { .. }) && e.to_string().contains("CAP_NET_ADMIN"),
        "{e}"
    );
}

#[test]
fn grant_sends_one_document_and_refuses_bad_openings_before_running_anything() {
    let (mut fw, log) = fake(NftablesConfig::default(), vec![]);
    fw.grant(&[opening("10.0.0.1", 30), opening("fd00::1", 30)])
        .unwrap();
    assert_eq!(log.lock().unwrap().len(), 1);

    let mut nat = opening("10.0.0.2", 30);
    nat.rule.nat = Some(NatRule {
        to_addr: "192.168.1.2".parse().unwrap(),
        to_port: 22,
        local: false,
        snat: None,
        dnat: true,
        forward_all: false,
    });
    assert!(matches!(
        fw.grant(&[opening("10.0.0.3", 30), nat]),
        Err(FirewallError::Unsupported { .. })
    ));
    assert!(fw.grant(&[opening("10.0.0.3", 0)]).is_err());
    assert!(fw.grant(&[]).is_ok());
    assert_eq!(
        log.lock().unwrap().len(),
        1,
        "nothing may run for a refused or empty batch"
    );

    let (mut v4_only, _) = fake(
        NftablesConfig {
            family: TableFamily::Ip,
            ..Default::default()
        },
        vec![],
    );
    let e = v4_only.grant(&[opening("fd00::1", 30)]).unwrap_err();
    assert!(e.to_string().contains("family = \"inet\""), "{e}");
    // Revoking what such a table cannot hold is a no-op, not an error.
    v4_only.revoke(&[opening("fd00::1", 30).rule]).unwrap();
}

#[test]
fn list_maps_remaining_time_to_absolute_expiry() {
    let listed = r#"{"nftables": [{"set": {"family": "inet", "name": "grants4", "table": "postern",
        "elem": [{"elem": {"val": {"concat": ["10.0.0.1", "tcp", 22]}, "timeout": 60, "expires": 42}}]}}]}"#;
    let (mut fw, _) = fake(NftablesConfig::default(), vec![Ok(listed.into())]);
    let got = fw.list().unwrap();
    assert_eq!(
        got,
        vec![Opening {
            rule: opening("10.0.0.1", 0).rule,
            timeout_secs: 42,
            expires_at: 1042
        }]
    );
    let (mut fw, _) = fake(NftablesConfig::default(), vec![no_table()]);
    assert!(fw
        .list()
        .unwrap_err()
        .to_string()
        .contains("init creates it"));
}

#[test]
fn kernel_expiry_means_expire_does_nothing() {
    let (mut fw, log) = fake(NftablesConfig::default(), vec![]);
    assert!(fw.expires_in_kernel());
    assert!(fw.expire(u64::MAX).unwrap().is_empty());
    fw.shutdown().unwrap();
    assert!(log.lock().unwrap().is_empty());
}

fn nat_opening(local: bool, snat: Option<Snat>) -> Opening {
    let mut o = opening("192.0.2.7", 30);
    o.rule.port = 55000;
    o.rule.nat = Some(NatRule {
        to_addr: "10.0.0.2".parse().unwrap(),
        to_port: 22,
        local,
        snat,
        dnat: true,
        forward_all: false,
    });
    o
}

fn setup_json(config: NftablesConfig, listing: FwResult<String>) -> String {
    let (mut fw, log) = fake(config, vec![listing]);
    fw.init(0).unwrap();
    let log = log.lock().unwrap();
    log[1].1.clone().unwrap()
}

#[test]
fn nat_setup_creates_maps_and_the_three_chains() {
    let j = setup_json(
        NftablesConfig {
            nat: true,
            protected: vec!["tcp/22".parse().unwrap()],
            ..Default::default()
        },
        no_table(),
    );
    for fragment in [
        r#"{"add":{"map":{"family":"inet","table":"postern","name":"dnat4","type":["ipv4_addr","inet_proto","inet_service"],"map":"ipv4_addr","flags":["timeout"]}}}"#,
        r#"{"add":{"map":{"family":"inet","table":"postern","name":"dnatport6","type":["ipv6_addr","inet_proto","inet_service"],"map":"inet_service","flags":["timeout"]}}}"#,
        r#"{"add":{"set":{"family":"inet","table":"postern","name":"fwd4","type":["ipv4_addr","ipv4_addr","inet_proto","inet_service"],"flags":["timeout"]}}}"#,
        r#"{"add":{"map":{"family":"inet","table":"postern","name":"snat4","type":["ipv4_addr","ipv4_addr","inet_proto","inet_service"],"map":"ipv4_addr","flags":["timeout"]}}}"#,
        r#"{"add":{"chain":{"family":"inet","table":"postern","name":"prerouting","type":"nat","hook":"prerouting","prio":-100,"policy":"accept"}}}"#,
        r#"{"add":{"chain":{"family":"inet","table":"postern","name":"forward","type":"filter","hook":"forward","prio":-10,"policy":"accept"}}}"#,
        r#"{"add":{"chain":{"family":"inet","table":"postern","name":"postrouting","type":"nat","hook":"postrouting","prio":100,"policy":"accept"}}}"#,
        // dnat ip to ip saddr . meta l4proto . th dport map @dnat4 : ip saddr . meta l4proto . th dport map @dnatport4
        r#"{"add":{"rule":{"family":"inet","table":"postern","chain":"prerouting","expr":[{"dnat":{"addr":{"map":{"key":{"concat":[{"payload":{"protocol":"ip","field":"saddr"}},{"meta":{"key":"l4proto"}},{"payload":{"protocol":"th","field":"dport"}}]},"data":"@dnat4"}},"family":"ip","port":{"map":{"key":{"concat":[{"payload":{"protocol":"ip","field":"saddr"}},{"meta":{"key":"l4proto"}},{"payload":{"protocol":"th","field":"dport"}}]},"data":"@dnatport4"}}}}]}}}"#,
        // ip saddr . ip daddr . meta l4proto . th dport @fwd4 counter accept
        r#"{"add":{"rule":{"family":"inet","table":"postern","chain":"forward","expr":[{"match":{"left":{"concat":[{"payload":{"protocol":"ip","field":"saddr"}},{"payload":{"protocol":"ip","field":"daddr"}},{"meta":{"key":"l4proto"}},{"payload":{"protocol":"th","field":"dport"}}]},"right":"@fwd4","op":"=="}},{"counter":null},{"accept":{}}]}}}"#,
        // ip saddr . ip daddr . meta l4proto . th dport @masq4 counter masquerade
        r#"{"add":{"rule":{"family":"inet","table":"postern","chain":"postrouting","expr":[{"match":{"left":{"concat":[{"payload":{"protocol":"ip","field":"saddr"}},{"payload":{"protocol":"ip","field":"daddr"}},{"meta":{"key":"l4proto"}},{"payload":{"protocol":"th","field":"dport"}}]},"right":"@masq4","op":"=="}},{"counter":null},{"masquerade":null}]}}}"#,
        // snat ip to ip saddr . ip daddr . meta l4proto . th dport map @snat4
        r#"{"add":{"rule":{"family":"inet","table":"postern","chain":"postrouting","expr":[{"snat":{"addr":{"map":{"key":{"concat":[{"payload":{"protocol":"ip","field":"saddr"}},{"payload":{"protocol":"ip","field":"daddr"}},{"meta":{"key":"l4proto"}},{"payload":{"protocol":"th","field":"dport"}}]},"data":"@snat4"}},"family":"ip"}}]}}}"#,
    ] {
        assert!(j.contains(fragment), "missing {fragment}\nin {j}");
    }
    // The local-NAT accept comes before the drop of protected ports.
    let local = j.find(r#""right":"@local4""#).expect("local4 rule");
    assert!(local < j.find(r#""right":"@protected""#).unwrap(), "{j}");
    assert!(!j.contains(r#""name":"docker""#));
}

#[test]
fn docker_setup_adds_a_prerouting_chain_before_dnat() {
    let config = NftablesConfig {
        docker: true,
        protected: vec!["tcp/8080".parse().unwrap()],
        grant_mark: Some(0x100),
        ..Default::default()
    };
    let j = setup_json(config, no_table());
    assert!(j.contains(r#"{"add":{"chain":{"family":"inet","table":"postern","name":"docker","type":"filter","hook":"prerouting","prio":-150,"policy":"accept"}}}"#), "{j}");
    let docker_rules: Vec<&str> = j
        .split(r#"{"add":{"rule":"#)
        .filter(|r| r.contains(r#""chain":"docker""#))
        .collect();
    assert_eq!(
        docker_rules.len(),
        9,
        "ct, lo, grants4, grantsdst4, grantspin4, grants6, grantsdst6, grantspin6, drop: {docker_rules:?}"
    );
    assert!(
        docker_rules[4].contains(r#""right":"@grantspin4""#)
            && docker_rules[4].contains(r#"{"payload":{"protocol":"th","field":"sport"}}"#),
        "{}",
        docker_rules[4]
    );
    assert!(
        docker_rules[3].contains(r#""right":"@grantsdst4""#),
        "{}",
        docker_rules[3]
    );
    assert!(
        docker_rules[2].contains(r#""right":"@grants4""#)
            && docker_rules[2].contains(r#"{"mangle""#),
        "{}",
        docker_rules[2]
    );
    assert!(
        docker_rules[8].contains(r#"{"match":{"left":{"fib":{"result":"type","flags":["daddr"]}},"right":"local","op":"=="}}"#)
            && docker_rules[8].contains(r#""right":"@protected""#)
            && docker_rules[8].contains(r#"{"drop":{}}"#),
        "{}",
        docker_rules[8]
    );
}

#[test]
fn init_with_nat_off_removes_nat_chains_and_maps_a_previous_run_made() {
    let listed = r#"{"nftables": [{"table": {"family": "inet", "name": "postern"}},
      {"set": {"family": "inet", "name": "grants4", "table": "postern", "type": ["ipv4_addr", "inet_proto", "inet_service"], "flags": ["timeout"]}},
      {"map": {"family": "inet", "name": "dnat4", "table": "postern", "type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "ipv4_addr", "flags": ["timeout"]}},
      {"set": {"family": "inet", "name": "local4", "table": "postern", "type": ["ipv4_addr", "inet_proto", "inet_service"], "flags": ["timeout"]}},
      {"chain": {"family": "inet", "table": "postern", "name": "input", "type": "filter", "hook": "input", "prio": -10, "policy": "accept"}},
      {"chain": {"family": "inet", "table": "postern", "name": "prerouting", "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}}]}"#;
    let j = setup_json(NftablesConfig::default(), Ok(listed.into()));
    let flush_input = j
        .find(r#"{"flush":{"chain":{"family":"inet","table":"postern","name":"input"}}}"#)
        .expect(&j);
    let flush_pre = j
        .find(r#"{"flush":{"chain":{"family":"inet","table":"postern","name":"prerouting"}}}"#)
        .expect(&j);
    let del_pre = j
        .find(r#"{"delete":{"chain":{"family":"inet","table":"postern","name":"prerouting"}}}"#)
        .expect(&j);
    let del_map = j
        .find(r#"{"delete":{"map":{"family":"inet","table":"postern","name":"dnat4""#)
        .expect(&j);
    let del_local = j
        .find(r#"{"delete":{"set":{"family":"inet","table":"postern","name":"local4""#)
        .expect(&j);
    let add_input = j
        .find(r#"{"add":{"chain":{"family":"inet","table":"postern","name":"input""#)
        .expect(&j);
    assert!(
        flush_input < del_local && flush_pre < del_pre && del_pre < del_map && del_map < add_input,
        "{j}"
    );
    assert!(
        !j.contains(r#"{"delete":{"chain":{"family":"inet","table":"postern","name":"input"}}}"#),
        "input stays: {j}"
    );
    assert!(
        !j.contains(r#""name":"grants4"}}},{"delete"#)
            && !j.contains(
                r#"{"delete":{"set":{"family":"inet","table":"postern","name":"grants4""#
            )
    );
}

#[test]
fn forward_nat_grant_document() {
    let (mut fw, log) = fake(
        NftablesConfig {
            nat: true,
            ..Default::default()
        },
        vec![],
    );
    fw.grant(&[nat_opening(false, Some(Snat::Masquerade))])
        .unwrap();
    let doc = log.lock().unwrap()[0].1.clone().unwrap();
    let elem = |val: &str, data: Option<&str>| {
        let e = format!(
            r#"{{"elem":{{"val":{{"concat":[{val}]}},"timeout":30,"expires":null,"comment":"nat_55000_10.0.0.2_22_masq","counter":null}}}}"#
        );
        match data {
            Some(d) => format!("[{e},{d}]"),
            None => e,
        }
    };
    let mut want = Vec::new();
    for (set, val, data) in [
        ("dnat4", r#""192.0.2.7","tcp",55000"#, Some(r#""10.0.0.2""#)),
        ("dnatport4", r#""192.0.2.7","tcp",55000"#, Some("22")),
        ("fwd4", r#""192.0.2.7","10.0.0.2","tcp",22"#, None),
        ("masq4", r#""192.0.2.7","10.0.0.2","tcp",22"#, None),
    ] {
        let add = format!(
            r#"{{"add":{{"element":{{"family":"inet","table":"postern","name":"{set}","elem":[{}]}}}}}}"#,
            elem(val, data)
        );
        let del = format!(
            r#"{{"delete":{{"element":{{"family":"inet","table":"postern","name":"{set}","elem":[{{"concat":[{val}]}}]}}}}}}"#
        );
        want.extend([add.clone(), del, add]);
    }
    assert_eq!(doc, format!(r#"{{"nftables":[{}]}}"#, want.join(",")));
}

#[test]
fn local_nat_grant_elements_and_checks_before_anything_runs() {
    let (mut fw, log) = fake(
        NftablesConfig {
            nat: true,
            ..Default::default()
        },
        vec![],
    );
    fw.grant(&[nat_opening(true, Some(Snat::Masquerade))])
        .unwrap();
    let doc = log.lock().unwrap()[0].1.clone().unwrap();
    let names: Vec<&str> = doc
        .split(r#""name":""#)
        .skip(1)
        .map(|s| &s[..s.find('"').unwrap()])
        .collect();
    assert_eq!(
        names,
        [
            "local4",
            "local4",
            "local4",
            "dnat4",
            "dnat4",
            "dnat4",
            "dnatport4",
            "dnatport4",
            "dnatport4"
        ],
        "{doc}"
    );
    assert!(doc.contains(r#"{"elem":{"val":{"concat":["192.0.2.7","tcp",22]},"timeout":30,"expires":null,"comment":"nat_55000_10.0.0.2_22_local_masq","counter":null}}"#), "{doc}");

    let mut mixed = nat_opening(false, None);
    mixed.rule.nat.as_mut().unwrap().to_addr = "fd00::2".parse().unwrap();
    let e = fw.grant(&[opening("10.0.0.9", 30), mixed]).unwrap_err();
    assert!(
        matches!(e, FirewallError::Unsupported { .. }) && e.to_string().contains("IPv4 and IPv6"),
        "{e}"
    );
    assert_eq!(
        log.lock().unwrap().len(),
        1,
        "nothing ran for the refused batch"
    );
}
