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
