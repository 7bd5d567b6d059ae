//! Self-tests of the namespace harness.

use postern_e2e::*;
use std::net::IpAddr;
use std::time::Duration;

const T: Duration = Duration::from_secs(2);

#[test]
fn pair_connects_v4_and_v6_and_iptables_drop_blocks() {
    if !require_root() {
        return;
    }
    let p = pair("hs");
    let port = 22022;
    let _l = tcp_listen(&p.server, port);
    assert!(
        tcp_connect_ok(&p.client, IpAddr::V4(p.server_ip), port, T),
        "v4 connect"
    );
    assert!(
        tcp_connect_ok(&p.client, IpAddr::V6(p.server_ip6), port, T),
        "v6 connect"
    );
    assert!(
        !tcp_connect_ok(&p.client, IpAddr::V4(p.server_ip), port + 1, T),
        "closed port"
    );
    p.server.run_ok(&[
        "iptables",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        &port.to_string(),
        "-j",
        "DROP",
    ]);
    assert!(
        !tcp_connect_ok(
            &p.client,
            IpAddr::V4(p.server_ip),
            port,
            Duration::from_millis(500)
        ),
        "iptables DROP must block"
    );
    // The root namespace is untouched.
    let out = std::process::Command::new("iptables")
        .args(["-S", "INPUT"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("22022"));
}

#[test]
fn netns_drop_kills_processes_and_deletes() {
    if !require_root() {
        return;
    }
    let name;
    let pid;
    {
        let ns = Netns::new("hk");
        name = ns.name.clone();
        let g = ns.spawn(&["sleep", "30"]);
        pid = g.pid();
        // Leak the guard: Netns drop must still kill it.
        std::mem::forget(g);
        // `ip netns exec` joins the namespace after fork: wait for it.
        assert!(
            wait_until(Duration::from_secs(3), Duration::from_millis(10), || ns
                .pids()
                .contains(&pid)),
            "spawned process never showed up in the namespace"
        );
        assert_eq!(ns.run_ok(&["echo", "hi"]).trim(), "hi");
    }
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&name));
    assert!(wait_until(
        Duration::from_secs(3),
        Duration::from_millis(20),
        || {
            // zombie or gone is fine: check state
            match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => true,
                Ok(s) => s.split_whitespace().nth(2) == Some("Z"),
            }
        }
    ));
}

#[test]
fn parallel_pairs_get_distinct_addresses() {
    if !require_root() {
        return;
    }
    let a = pair("pa");
    let b = pair("pb");
    assert_ne!(a.server_ip, b.server_ip);
    assert_ne!(a.server_ip6, b.server_ip6);
    assert_ne!(a.client.name, b.client.name);
}

/// The audit log check every posternd gets at drop: the examples in
/// docs/audit-log.md pass it, and lines that break the schema do not.
#[test]
fn audit_lines_are_checked_against_the_schema() {
    use postern_e2e::posternd::{audit_file_lines, audit_line};
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/audit-log.md"),
    )
    .unwrap();
    let examples: Vec<&str> = doc
        .split("```json\n")
        .nth(1)
        .and_then(|block| block.split("```").next())
        .expect("a json block in docs/audit-log.md")
        .lines()
        .collect();
    assert_eq!(examples.len(), 3);
    for line in &examples {
        audit_line(line).unwrap_or_else(|e| panic!("docs/audit-log.md example: {e}"));
    }
    let granted = examples[0];
    for (bad, why) in [
        (granted.replace("\"v\":1", "\"v\":2"), "another version"),
        (
            granted.replace(",\"backends\":[\"nftables\"]", ""),
            "a grant without backends",
        ),
        (
            granted.replace("\"user\"", "\"username\""),
            "a field the schema lacks",
        ),
        (
            granted.replace("\"outcome\":\"granted\"", "\"outcome\":\"refused\""),
            "a refusal without stage",
        ),
        (
            granted.replace("\"tcp/22\"", "\"tcp22\""),
            "a port not as proto/port",
        ),
        (
            examples[2].replace("\"hmac\":2", "\"hmac\":\"2\""),
            "a count as a string",
        ),
        (granted[..granted.len() - 1].to_string(), "not JSON"),
    ] {
        assert!(audit_line(&bad).is_err(), "{why} passed: {bad}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    std::fs::write(&file, format!("{}\n{{\"v\":1}}\n", examples[1])).unwrap();
    let err = audit_file_lines(&file).unwrap_err();
    assert!(err.contains("audit.jsonl:2:"), "{err}");
    // A last line still being written is not read.
    std::fs::write(&file, format!("{}\n{{\"v\":1,", examples[1])).unwrap();
    assert_eq!(audit_file_lines(&file).unwrap().len(), 1);
}
