//! NAT grants against a real firewalld on the gateway of three namespaces
//! (client — gateway — internal; `postern_e2e::routed`): a forwarded port
//! reaches the internal host's listener, a local NAT port reaches a listener of
//! the gateway, and firewalld alone closes both at the timeout. Needs root and
//! firewalld; skips elsewhere, fails when CI=true.

mod support;

use postern_backend_firewalld::FirewalldBackend;
use postern_e2e::routed::routed;
use postern_e2e::{tcp_connect_ok, tcp_listen, wait_until};
use spa_core::firewall::{Firewall, NatRule, Opening, Rule, Snat};
use spa_core::request::Proto;
use std::net::IpAddr;
use std::time::Duration;
use support::{can_run, Firewalld};

const CONNECT: Duration = Duration::from_millis(500);

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn nat_opening(source: IpAddr, port: u16, nat: NatRule, secs: u32) -> Opening {
    Opening {
        rule: Rule {
            nat: Some(nat),
            ..Rule::new(source, Proto::Tcp, port)
        },
        timeout_secs: secs,
        expires_at: now() + secs as u64,
    }
}

fn forward_to(to_addr: IpAddr, to_port: u16, snat: Option<Snat>) -> NatRule {
    NatRule {
        to_addr,
        to_port,
        local: false,
        snat,
        dnat: true,
        forward_all: false,
    }
}

/// Waits (bounded) until a new connection is refused or times out.
fn closes(ns: &postern_e2e::Netns, addr: IpAddr, port: u16) -> bool {
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        !tcp_connect_ok(ns, addr, port, Duration::from_millis(300))
    })
}

#[test]
fn a_forwarded_port_reaches_the_inner_host_masqueraded_and_closes_at_the_timeout() {
    if !can_run() {
        return;
    }
    // No route back from the internal host: only masquerading lets it answer.
    let r = routed("fdnm", false);
    let fwd = Firewalld::start(r.gateway());
    let _inner4 = tcp_listen(&r.internal, 22);
    let mut fw = FirewalldBackend::new(fwd.config()).unwrap();
    fw.init(now()).unwrap();

    for v6 in [false, true] {
        let (client, gateway) = r.outer(v6);
        let inner = r.internal_addr(v6);
        let port = if v6 { 2226 } else { 2222 };
        assert!(
            !tcp_connect_ok(r.client(), gateway, port, CONNECT),
            "{gateway} port {port} must be closed before the grant"
        );
        let grant = nat_opening(
            client,
            port,
            forward_to(inner, 22, Some(Snat::Masquerade)),
            3,
        );
        let t = std::time::Instant::now();
        fw.grant(std::slice::from_ref(&grant)).unwrap();
        eprintln!("NAT grant with masquerade ({inner}) took {:?}", t.elapsed());
        assert!(
            tcp_connect_ok(r.client(), gateway, port, CONNECT),
            "{gateway} port {port} must reach {inner}:22 after the grant; rules: {:?}",
            fwd.rich_rules("public")
        );
        assert!(fw.list().unwrap().iter().any(|o| o.rule == grant.rule));
    }
    assert_eq!(
        fwd.rich_rules("public").len(),
        4,
        "forward-port and masquerade per family"
    );

    // No call into postern from here: firewalld alone removes both.
    drop(fw);
    for v6 in [false, true] {
        let (_, gateway) = r.outer(v6);
        let port = if v6 { 2226 } else { 2222 };
        assert!(
            closes(r.client(), gateway, port),
            "{gateway}:{port} did not close"
        );
    }
    assert!(fwd.rich_rules("public").is_empty());
}

#[test]
fn forwarding_without_masquerade_and_local_nat_open_exactly_their_targets() {
    if !can_run() {
        return;
    }
    let r = routed("fdnl", true);
    let fwd = Firewalld::start(r.gateway());
    let _inner = tcp_listen(&r.internal, 8080);
    let _local = tcp_listen(r.gateway(), 2201);
    let (client, gateway) = r.outer(false);
    let inner = r.internal_addr(false);
    let mut fw = FirewalldBackend::new(fwd.config()).unwrap();
    fw.init(now()).unwrap();
    let forward = nat_opening(client, 8000, forward_to(inner, 8080, None), 30);
    let local = nat_opening(
        client,
        2200,
        NatRule {
            to_addr: gateway,
            to_port: 2201,
            local: true,
            snat: None,
            dnat: true,
            forward_all: false,
        },
        30,
    );
    for (what, port) in [
        ("forwarded", 8000),
        ("local NAT", 2200),
        ("local target", 2201),
    ] {
        assert!(
            !tcp_connect_ok(r.client(), gateway, port, CONNECT),
            "{what} port {port} must be closed before the grant"
        );
    }
    fw.grant(&[forward.clone(), local.clone()]).unwrap();
    assert!(
        tcp_connect_ok(r.client(), gateway, 8000, CONNECT),
        "forwarded port must reach {inner}:8080"
    );
    assert!(
        tcp_connect_ok(r.client(), gateway, 2200, CONNECT),
        "local NAT port must reach the gateway's port 2201"
    );
    assert!(
        !tcp_connect_ok(r.client(), gateway, 2201, CONNECT),
        "the local target itself was not granted"
    );
    let mut listed: Vec<Rule> = fw.list().unwrap().into_iter().map(|o| o.rule).collect();
    listed.sort_by_key(|r| r.port);
    assert_eq!(listed, vec![local.rule.clone(), forward.rule.clone()]);

    fw.revoke(&[forward.rule]).unwrap();
    assert!(
        closes(r.client(), gateway, 8000),
        "revoked forward still open"
    );
    assert!(tcp_connect_ok(r.client(), gateway, 2200, CONNECT));
    fw.flush().unwrap();
    assert!(
        closes(r.client(), gateway, 2200),
        "flushed local NAT still open"
    );
    assert!(fwd.rich_rules("public").is_empty());
}

#[test]
fn forward_all_reaches_every_port_of_the_inner_host_until_revoked() {
    if !can_run() {
        return;
    }
    let r = routed("fdna", true);
    let fwd = Firewalld::start(r.gateway());
    let _a = tcp_listen(&r.internal, 8081);
    let _b = tcp_listen(&r.internal, 9091);
    let (client, gateway) = r.outer(false);
    let inner = r.internal_addr(false);
    let mut fw = FirewalldBackend::new(fwd.config()).unwrap();
    fw.init(now()).unwrap();
    for port in [8081, 9091] {
        assert!(
            !tcp_connect_ok(r.client(), gateway, port, CONNECT),
            "{port} before"
        );
    }
    let mut nat = forward_to(inner, 0, None);
    nat.forward_all = true;
    let grant = nat_opening(client, 8081, nat, 30);
    fw.grant(std::slice::from_ref(&grant)).unwrap();
    for port in [8081, 9091] {
        assert!(
            tcp_connect_ok(r.client(), gateway, port, CONNECT),
            "gateway port {port} must reach {inner}:{port}; rules: {:?}",
            fwd.rich_rules("public")
        );
    }
    assert_eq!(fw.list().unwrap()[0].rule, grant.rule);
    fw.revoke(&[grant.rule]).unwrap();
    for port in [8081, 9091] {
        assert!(
            closes(r.client(), gateway, port),
            "{port} still open after revoke"
        );
    }
    assert!(fwd.rich_rules("public").is_empty());
}
