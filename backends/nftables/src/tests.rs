//! Backend logic against a recording fake runner (no root, no kernel).

use crate::{ApplyWith, NftablesBackend, NftablesConfig, TableFamily};
use spa_core::firewall::{CommandRunner, Firewall, FirewallError, FwResult, NatRule, Opening, Rule};
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
        self.log.lock().unwrap().push((argv.to_vec(), stdin.map(str::to_string)));
        self.answers.pop_front().unwrap_or(Ok(String::new()))
    }
}

fn fake(config: NftablesConfig, answers: Vec<FwResult<String>>) -> (NftablesBackend, Log) {
    let log = Log::default();
    let runner = FakeRunner { log: log.clone(), answers: answers.into() };
    // `sh` exists everywhere; the fake never runs it.
    let config = NftablesConfig { nft_path: "/bin/sh".into(), apply_with: ApplyWith::Nft, ..config };
    let backend = NftablesBackend::new(config).unwrap().with_runner(Box::new(runner)).with_clock(|| 1000);
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
    Opening { rule: Rule { source: src.parse().unwrap(), proto: Proto::Tcp, port: 22, nat: None }, timeout_secs: secs, expires_at: 0 }
}

#[test]
fn init_reads_the_table_then_applies_one_document() {
    let (mut fw, log) = fake(NftablesConfig::default(), vec![no_table()]);
    fw.init(0).unwrap();
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].0, ["/bin/sh", "-j", "list", "table", "inet", "postern"]);
    assert_eq!(log[1].0, ["/bin/sh", "-j", "-f", "-"]);
    assert!(log[1].1.as_deref().unwrap().contains(r#""hook":"input""#));
}

#[test]
fn in_netns_runs_nft_under_nsenter() {
    let (fw, log) = fake(NftablesConfig::default(), vec![no_table()]);
    let mut fw = fw.in_netns("/var/run/netns/x");
    fw.init(0).unwrap();
    assert_eq!(log.lock().unwrap()[0].0[..4], ["nsenter", "--net=/var/run/netns/x", "--", "/bin/sh"]);
}

#[test]
fn a_missing_nft_is_reported_as_missing() {
    let config = NftablesConfig { nft_path: "/nonexistent/nft".into(), ..Default::default() };
    let mut fw = NftablesBackend::new(config).unwrap();
    match fw.init(0) {
        Err(e @ FirewallError::Missing { .. }) => assert!(e.to_string().contains("/nonexistent/nft"), "{e}"),
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
    assert!(matches!(e, FirewallError::Missing { .. }) && e.to_string().contains("CAP_NET_ADMIN"), "{e}");
}

#[test]
fn grant_sends_one_document_and_refuses_bad_openings_before_running_anything() {
    let (mut fw, log) = fake(NftablesConfig::default(), vec![]);
    fw.grant(&[opening("10.0.0.1", 30), opening("fd00::1", 30)]).unwrap();
    assert_eq!(log.lock().unwrap().len(), 1);

    let mut nat = opening("10.0.0.2", 30);
    nat.rule.nat = Some(NatRule { to_addr: "192.168.1.2".parse().unwrap(), to_port: 22, local: false, snat: None, dnat: true });
    assert!(matches!(fw.grant(&[opening("10.0.0.3", 30), nat]), Err(FirewallError::Unsupported { .. })));
    assert!(fw.grant(&[opening("10.0.0.3", 0)]).is_err());
    assert!(fw.grant(&[]).is_ok());
    assert_eq!(log.lock().unwrap().len(), 1, "nothing may run for a refused or empty batch");

    let (mut v4_only, _) = fake(NftablesConfig { family: TableFamily::Ip, ..Default::default() }, vec![]);
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
    assert_eq!(got, vec![Opening { rule: opening("10.0.0.1", 0).rule, timeout_secs: 42, expires_at: 1042 }]);
    let (mut fw, _) = fake(NftablesConfig::default(), vec![no_table()]);
    assert!(fw.list().unwrap_err().to_string().contains("init creates it"));
}

#[test]
fn kernel_expiry_means_expire_does_nothing() {
    let (mut fw, log) = fake(NftablesConfig::default(), vec![]);
    assert!(fw.expires_in_kernel());
    assert!(fw.expire(u64::MAX).unwrap().is_empty());
    fw.shutdown().unwrap();
    assert!(log.lock().unwrap().is_empty());
}
