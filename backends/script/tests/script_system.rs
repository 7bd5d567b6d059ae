//! The script backend running real commands: marker files anywhere, and iptables
//! rules inside network namespaces (root; with CI=true a missing prerequisite
//! fails the test instead of skipping it).

use postern_backend_common::{PrefixedRunner, SystemRunner};
use postern_backend_script::{ScriptBackend, ScriptConfig};
use postern_e2e::{
    pair, require_program, require_root, tcp_connect_ok, tcp_listen, wait_until, Netns,
};
use spa_core::firewall::{Firewall, Opening, Rule};
use spa_core::request::Proto;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn opening(source: impl Into<IpAddr>, port: u16, expires_at: u64) -> Opening {
    let rule = Rule::new(source.into(), Proto::Tcp, port);
    Opening {
        rule,
        timeout_secs: expires_at.saturating_sub(now()) as u32,
        expires_at,
    }
}

#[test]
fn marker_files_follow_open_and_close() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("open-192.0.2.7-6-22");
    let d = dir.path().display();
    let config = ScriptConfig::new(
        &format!("touch '{d}/open-$SRC-$PROTO-$PORT'"),
        Some(&format!("rm '{d}/open-$SRC-$PROTO-$PORT'")),
    );
    let mut fw = ScriptBackend::system(&config).unwrap();
    fw.init(1000).unwrap();
    fw.grant(&[Opening {
        rule: Rule::new("192.0.2.7".parse().unwrap(), Proto::Tcp, 22),
        timeout_secs: 30,
        expires_at: 1030,
    }])
    .unwrap();
    assert!(marker.exists());
    fw.expire(1029).unwrap();
    assert!(marker.exists());
    assert_eq!(fw.expire(1030).unwrap().len(), 1);
    assert!(!marker.exists());

    // A failing open (rm of a missing file) records nothing.
    let config = ScriptConfig::new(&format!("rm '{d}/absent'"), Some("true"));
    let mut fw = ScriptBackend::new(&config, Box::new(SystemRunner::default())).unwrap();
    assert!(fw.grant(&[opening([192, 0, 2, 8], 22, 1030)]).is_err());
    assert_eq!(fw.list().unwrap(), vec![]);
}

fn rule_count(ns: &Netns, port: u16) -> usize {
    ns.run_ok(&["iptables", "-w", "5", "-S", "INPUT"])
        .lines()
        .filter(|l| l.contains(&format!("--dport {port} ")) && l.ends_with("-j ACCEPT"))
        .count()
}

#[test]
fn cycle_commands_drive_iptables_in_a_namespace() {
    if !(require_root() && require_program("iptables")) {
        return;
    }
    let p = pair("scr");
    let (client, server) = (IpAddr::from(p.client_ip), IpAddr::from(p.server_ip));
    let port = 2301;
    p.server.run_ok(&[
        "iptables",
        "-w",
        "5",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        &port.to_string(),
        "-j",
        "DROP",
    ]);
    let _listener = tcp_listen(&p.server, port);
    assert!(!tcp_connect_ok(
        &p.client,
        server,
        port,
        Duration::from_millis(700)
    ));

    let state = tempfile::tempdir().unwrap();
    let mut config = ScriptConfig::new(
        "iptables -w 5 -I INPUT 1 -s $SRC -p $PROTO --dport $PORT -j ACCEPT",
        Some("iptables -w 5 -D INPUT -s $SRC -p $PROTO --dport $PORT -j ACCEPT"),
    );
    config.state_file = Some(state.path().join("script.json"));
    let runner = || {
        Box::new(PrefixedRunner::netns(
            &p.server.name,
            Duration::from_secs(30),
        ))
    };

    let mut fw = ScriptBackend::new(&config, runner()).unwrap();
    fw.init(now()).unwrap();
    let start = now();
    fw.grant(&[opening(client, port, start + 2)]).unwrap();
    assert!(tcp_connect_ok(
        &p.client,
        server,
        port,
        Duration::from_secs(3)
    ));
    fw.grant(&[opening(client, port, start + 3)]).unwrap();
    assert_eq!(
        rule_count(&p.server, port),
        1,
        "a repeated grant does not stack rules"
    );

    assert!(wait_until(
        Duration::from_secs(10),
        Duration::from_millis(200),
        || !fw.expire(now()).unwrap().is_empty()
    ));
    assert!(now() >= start + 3);
    assert_eq!(rule_count(&p.server, port), 0);
    assert!(!tcp_connect_ok(
        &p.client,
        server,
        port,
        Duration::from_millis(700)
    ));

    // Killed with an opening owed a close: the next start runs it.
    let start = now();
    fw.grant(&[opening(client, port, start + 1)]).unwrap();
    drop(fw);
    assert_eq!(rule_count(&p.server, port), 1);
    assert!(wait_until(
        Duration::from_secs(5),
        Duration::from_millis(100),
        || now() > start + 1
    ));
    let mut fw = ScriptBackend::new(&config, runner()).unwrap();
    fw.init(now()).unwrap();
    assert_eq!(rule_count(&p.server, port), 0, "restart ran the owed close");
    assert_eq!(fw.list().unwrap(), vec![]);
}
