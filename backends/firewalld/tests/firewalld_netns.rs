//! The backend against a real firewalld, started by each test on a private bus in
//! network namespaces of its own. Needs root and firewalld installed; skips
//! elsewhere, fails when CI=true.

mod support;

use postern_backend_firewalld::{FirewalldBackend, FirewalldConfig};
use postern_e2e::{pair, tcp_connect_ok, tcp_listen, wait_until, Netns};
use spa_core::firewall::{Firewall, FirewallError, Opening, Rule};
use spa_core::request::Proto;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use support::{can_run, Firewalld};

const CONNECT: Duration = Duration::from_millis(500);

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn opening(source: IpAddr, port: u16, secs: u32) -> Opening {
    Opening {
        rule: Rule::new(source, Proto::Tcp, port),
        timeout_secs: secs,
        expires_at: now() + secs as u64,
    }
}

fn backend(config: FirewalldConfig) -> FirewalldBackend {
    let mut b = FirewalldBackend::new(config).unwrap();
    b.init(now()).unwrap();
    b
}

fn plain(source: IpAddr, port: u16) -> String {
    let fam = if source.is_ipv4() { "ipv4" } else { "ipv6" };
    format!(
        r#"rule family="{fam}" source address="{source}" port port="{port}" protocol="tcp" accept"#
    )
}

#[test]
fn grant_opens_the_port_and_firewalld_closes_it_at_the_timeout() {
    if !can_run() {
        return;
    }
    let p = pair("fdexp");
    let fwd = Firewalld::start(&p.server);
    let _listener = tcp_listen(&p.server, 23001);
    let server = IpAddr::V4(p.server_ip);
    let client = IpAddr::V4(p.client_ip);
    assert!(
        !tcp_connect_ok(&p.client, server, 23001, CONNECT),
        "port must be closed before a grant"
    );

    let mut fw = backend(fwd.config());
    assert_eq!(fw.zone(), Some("public"), "firewalld's default zone");
    let t0 = now();
    fw.grant(&[opening(client, 23001, 3)]).unwrap();
    let granted_at = Instant::now();
    assert!(
        tcp_connect_ok(&p.client, server, 23001, CONNECT),
        "granted port must open"
    );
    assert_eq!(fwd.rich_rules("public"), vec![plain(client, 23001)]);
    let listed = fw.list().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].rule.source, client);
    assert!(
        (t0 + 3..=now() + 3).contains(&listed[0].expires_at),
        "{listed:?}"
    );

    // No call into postern from here: firewalld alone must close it again.
    drop(fw);
    let closed = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        !tcp_connect_ok(&p.client, server, 23001, Duration::from_millis(300))
    });
    assert!(closed, "grant did not expire inside firewalld");
    assert!(
        granted_at.elapsed() >= Duration::from_millis(2500),
        "closed too early: {:?}",
        granted_at.elapsed()
    );
    assert!(fwd.rich_rules("public").is_empty());
}

#[test]
fn ipv6_grant_opens_the_port_for_that_address_only() {
    if !can_run() {
        return;
    }
    let p = pair("fdv6");
    let fwd = Firewalld::start(&p.server);
    let _listener = tcp_listen(&p.server, 23002);
    let (server4, server6) = (IpAddr::V4(p.server_ip), IpAddr::V6(p.server_ip6));
    assert!(
        !tcp_connect_ok(&p.client, server6, 23002, CONNECT),
        "closed over IPv6 before a grant"
    );

    let mut fw = backend(fwd.config());
    fw.grant(&[opening(IpAddr::V6(p.client_ip6), 23002, 30)])
        .unwrap();
    assert!(
        tcp_connect_ok(&p.client, server6, 23002, CONNECT),
        "IPv6 grant must open"
    );
    assert!(
        !tcp_connect_ok(&p.client, server4, 23002, CONNECT),
        "the client's IPv4 address was not granted"
    );
    assert_eq!(
        fwd.rich_rules("public"),
        vec![plain(IpAddr::V6(p.client_ip6), 23002)]
    );
    fw.flush().unwrap();
    assert!(
        !tcp_connect_ok(&p.client, server6, 23002, CONNECT),
        "closed again after flush"
    );
}

#[test]
fn repeated_grant_keeps_one_rule_and_refreshes_its_timeout() {
    if !can_run() {
        return;
    }
    let p = pair("fdrep");
    let fwd = Firewalld::start(&p.server);
    let _listener = tcp_listen(&p.server, 23003);
    let (server, client) = (IpAddr::V4(p.server_ip), IpAddr::V4(p.client_ip));
    let mut fw = backend(fwd.config());

    let t = Instant::now();
    fw.grant(&[opening(client, 23003, 3)]).unwrap();
    let first = Instant::now();
    eprintln!("first grant took {:?}", first - t);
    std::thread::sleep(Duration::from_millis(1500));
    let t = Instant::now();
    fw.grant(&[opening(client, 23003, 4)]).unwrap();
    let second = Instant::now();
    eprintln!("refreshing grant took {:?}", second - t);
    let rules = fwd.rich_rules("public");
    assert_eq!(rules.len(), 1, "one rule after a repeated grant: {rules:?}");
    assert_eq!(fw.list().unwrap().len(), 1);
    // A shorter repeat changes nothing; a longer one refreshes again.
    fw.grant(&[opening(client, 23003, 1)]).unwrap();
    assert_eq!(
        fwd.rich_rules("public").len(),
        1,
        "a shorter repeat leaves the rule alone"
    );
    fw.grant(&[opening(client, 23003, 5)]).unwrap();
    assert_eq!(
        fwd.rich_rules("public"),
        vec![plain(client, 23003)],
        "back to the plain form"
    );

    // Past the first grant's 3 s the port is still open: the timeout was refreshed.
    let wait = Duration::from_millis(3500).saturating_sub(first.elapsed());
    std::thread::sleep(wait);
    assert!(
        tcp_connect_ok(&p.client, server, 23003, CONNECT),
        "still open after the first grant's timeout"
    );
    let closed = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        !tcp_connect_ok(&p.client, server, 23003, Duration::from_millis(300))
    });
    assert!(closed, "refreshed grant did not expire");
    assert!(
        second.elapsed() >= Duration::from_millis(3000),
        "closed too early: {:?}",
        second.elapsed()
    );
}

#[test]
fn list_and_flush_touch_only_postern_rules() {
    if !can_run() {
        return;
    }
    let p = pair("fdfl");
    let fwd = Firewalld::start(&p.server);
    let _l1 = tcp_listen(&p.server, 23004);
    let _l2 = tcp_listen(&p.server, 23006);
    let (server, client) = (IpAddr::V4(p.server_ip), IpAddr::V4(p.client_ip));
    // The administrator's own rules, one of exactly postern's shape.
    let admin_same = plain(client, 23004);
    let admin_other = r#"rule family="ipv4" source address="192.0.2.0/24" port port="23005" protocol="tcp" accept"#;
    fwd.add_admin_rule("public", &admin_same, 0);
    fwd.add_admin_rule("public", admin_other, 0);

    let mut fw = backend(fwd.config());
    fw.grant(&[opening(client, 23004, 60), opening(client, 23006, 60)])
        .unwrap();
    assert_eq!(
        fwd.rich_rules("public").len(),
        4,
        "{:?}",
        fwd.rich_rules("public")
    );
    let mut listed: Vec<u16> = fw.list().unwrap().iter().map(|o| o.rule.port).collect();
    listed.sort();
    assert_eq!(listed, vec![23004, 23006]);
    assert!(tcp_connect_ok(&p.client, server, 23006, CONNECT));

    fw.flush().unwrap();
    let mut expected = vec![admin_same, admin_other.to_string()];
    expected.sort();
    assert_eq!(
        fwd.rich_rules("public"),
        expected,
        "flush removed only postern's rules"
    );
    assert!(fw.list().unwrap().is_empty());
    assert!(
        !tcp_connect_ok(&p.client, server, 23006, CONNECT),
        "postern's grant is gone"
    );
    assert!(
        tcp_connect_ok(&p.client, server, 23004, CONNECT),
        "the admin's rule still allows its port"
    );

    // revoke of a rule postern does not own leaves it alone too.
    fw.revoke(&[Rule::new(client, Proto::Tcp, 23004)]).unwrap();
    assert_eq!(fwd.rich_rules("public").len(), 2);
}

#[test]
fn zones_bad_and_explicit() {
    if !can_run() {
        return;
    }
    let ns = Netns::new("fdzone");
    let fwd = Firewalld::start(&ns);
    let mut bad = FirewalldBackend::new(FirewalldConfig {
        zone: Some("nosuchzone".into()),
        ..fwd.config()
    })
    .unwrap();
    let e = bad.init(now()).unwrap_err().to_string();
    assert!(
        e.contains("zone `nosuchzone` does not exist") && e.contains("public"),
        "{e}"
    );

    let mut work = backend(FirewalldConfig {
        zone: Some("work".into()),
        ..fwd.config()
    });
    let src: IpAddr = "198.51.100.7".parse().unwrap();
    work.grant(&[opening(src, 2222, 30)]).unwrap();
    assert_eq!(fwd.rich_rules("work"), vec![plain(src, 2222)]);
    assert!(fwd.rich_rules("public").is_empty());
    work.revoke(&[Rule::new(src, Proto::Tcp, 2222)]).unwrap();
    assert!(fwd.rich_rules("work").is_empty());
}

#[test]
fn a_restarted_backend_knows_its_grants_from_the_state_file() {
    if !can_run() {
        return;
    }
    let ns = Netns::new("fdstate");
    let fwd = Firewalld::start(&ns);
    let dir = tempfile::tempdir().unwrap();
    let config = FirewalldConfig {
        state_file: Some(dir.path().join("lib/firewalld.json")),
        ..fwd.config()
    };
    let (a, b): (IpAddr, IpAddr) = (
        "198.51.100.1".parse().unwrap(),
        "198.51.100.2".parse().unwrap(),
    );
    {
        let mut fw = backend(config.clone());
        fw.grant(&[opening(a, 2222, 60), opening(b, 2222, 1)])
            .unwrap();
        fw.shutdown().unwrap();
    }
    // b's rule expires inside firewalld while no posternd runs.
    let gone = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        fwd.rich_rules("public").len() == 1
    });
    assert!(gone, "{:?}", fwd.rich_rules("public"));

    let mut fw = backend(config.clone());
    let listed = fw.list().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].rule.source, a);
    assert!(
        listed[0].timeout_secs > 50 && listed[0].timeout_secs <= 60,
        "{listed:?}"
    );
    // Refreshing a grant of the previous run keeps one rule.
    fw.grant(&[opening(a, 2222, 60)]).unwrap();
    assert_eq!(fwd.rich_rules("public").len(), 1);
    fw.flush().unwrap();
    assert!(fwd.rich_rules("public").is_empty());
}

#[test]
fn no_firewalld_or_no_bus_is_reported_as_missing() {
    if !can_run() {
        return;
    }
    let ns = Netns::new("fdmiss");
    let bus = Firewalld::bus_only(&ns);
    let mut fw = FirewalldBackend::new(bus.config()).unwrap();
    let e = fw.init(now()).unwrap_err();
    assert!(
        matches!(&e, FirewallError::Missing { backend: "firewalld", what, .. } if what.contains("firewalld")),
        "{e:?}"
    );
    assert!(e.to_string().contains("start firewalld"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let config = FirewalldConfig {
        bus_address: Some(format!("unix:path={}", dir.path().join("none").display())),
        ..Default::default()
    };
    let e = FirewalldBackend::new(config)
        .unwrap()
        .init(now())
        .unwrap_err();
    assert!(
        matches!(&e, FirewallError::Missing { what, .. } if what.contains("D-Bus")),
        "{e:?}"
    );
}

#[test]
fn a_firewalld_restart_is_noticed_and_survived() {
    if !can_run() {
        return;
    }
    let p = pair("fdrst");
    let mut fwd = Firewalld::start(&p.server);
    let _listener = tcp_listen(&p.server, 23007);
    let (server, client) = (IpAddr::V4(p.server_ip), IpAddr::V4(p.client_ip));
    let dir = tempfile::tempdir().unwrap();
    let config = FirewalldConfig {
        state_file: Some(dir.path().join("firewalld.json")),
        ..fwd.config()
    };
    let mut fw = backend(config);
    fw.grant(&[opening(client, 23007, 60)]).unwrap();
    assert!(tcp_connect_ok(&p.client, server, 23007, CONNECT));

    fwd.stop();
    let e = fw.grant(&[opening(client, 23007, 60)]).unwrap_err();
    assert!(
        matches!(&e, FirewallError::Missing { what, .. } if what.contains("firewalld")),
        "{e:?}"
    );
    fwd.restart(&p.server);
    // Runtime rules do not survive a firewalld restart: the port is closed, and
    // postern's records of it are dropped rather than reported as open.
    assert!(
        !tcp_connect_ok(&p.client, server, 23007, CONNECT),
        "closed after the restart"
    );
    assert!(fw.list().unwrap().is_empty());
    // The same backend (same bus connection) keeps working with the new firewalld.
    fw.grant(&[opening(client, 23007, 60)]).unwrap();
    assert!(
        tcp_connect_ok(&p.client, server, 23007, CONNECT),
        "granted again"
    );
    assert_eq!(fw.list().unwrap().len(), 1);
    assert_eq!(fwd.rich_rules("public"), vec![plain(client, 23007)]);
}

#[test]
fn a_destination_bound_grant_opens_the_port_at_that_address_only() {
    if !can_run() {
        return;
    }
    let p = pair("fddst");
    let fwd = Firewalld::start(&p.server);
    let _listener = tcp_listen(&p.server, 23007);
    // A second address of the server, reached through the first.
    let other: IpAddr = "192.0.2.80".parse().unwrap();
    p.server
        .run_ok(&["ip", "addr", "add", "192.0.2.80/32", "dev", "v1"]);
    p.client.run_ok(&[
        "ip",
        "route",
        "add",
        "192.0.2.80/32",
        "via",
        &p.server_ip.to_string(),
    ]);
    let (server, client) = (IpAddr::V4(p.server_ip), IpAddr::V4(p.client_ip));
    let mut fw = backend(fwd.config());
    let mut grant = opening(client, 23007, 30);
    grant.rule.destination = Some(server);
    fw.grant(std::slice::from_ref(&grant)).unwrap();
    assert!(
        tcp_connect_ok(&p.client, server, 23007, CONNECT),
        "open at the knock's destination"
    );
    assert!(
        !tcp_connect_ok(&p.client, other, 23007, CONNECT),
        "closed at the server's other address"
    );
    assert_eq!(fw.list().unwrap()[0].rule, grant.rule);
    fw.flush().unwrap();
    assert!(!tcp_connect_ok(&p.client, server, 23007, CONNECT));
}
