//! NAT and Docker-style grants against real nftables, in namespaces the tests
//! create: client — gateway (runs the backend) — internal. Needs root; skips
//! elsewhere, fails when CI=true.

use postern_backend_nftables::{ApplyWith, NftablesBackend, NftablesConfig};
use postern_e2e::routed::routed;
use postern_e2e::{require_root, tcp_connect_ok, tcp_listen, wait_until, Netns};
use spa_core::firewall::{Firewall, FirewallError, NatRule, Opening, Rule, Snat};
use spa_core::request::Proto;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

const CONNECT: Duration = Duration::from_millis(700);
const OUTER_PORT: u16 = 55000;
const MARK: u32 = 0x2000_0000;

fn nat_config(table: &str) -> NftablesConfig {
    NftablesConfig {
        table: table.into(),
        nat: true,
        grant_mark: Some(MARK),
        ..NftablesConfig::default()
    }
}

fn backend(ns: &Netns, config: NftablesConfig) -> NftablesBackend {
    let mut b = NftablesBackend::new(config).unwrap().in_netns(ns.path());
    b.init(0).unwrap();
    b
}

fn nat_rule(
    source: IpAddr,
    to_addr: IpAddr,
    to_port: u16,
    local: bool,
    snat: Option<Snat>,
) -> Rule {
    Rule {
        source,
        proto: Proto::Tcp,
        port: OUTER_PORT,
        nat: Some(NatRule {
            to_addr,
            to_port,
            local,
            snat,
            dnat: true,
            forward_all: false,
        }),
        destination: None,
        source_port: None,
    }
}

fn opening(rule: &Rule, secs: u32) -> Opening {
    Opening {
        rule: rule.clone(),
        timeout_secs: secs,
        expires_at: 0,
    }
}

fn nft(ns: &Netns, args: &[&str]) -> String {
    let mut argv = vec!["nft"];
    argv.extend_from_slice(args);
    ns.run_ok(&argv)
}

/// The admin's own router firewall: forward policy drop, replies and
/// postern-marked packets accepted.
fn forward_policy_drop(ns: &Netns) {
    nft(ns, &["add", "table", "inet", "adminfw"]);
    nft(
        ns,
        &[
            "add",
            "chain",
            "inet",
            "adminfw",
            "forwarding",
            "{ type filter hook forward priority 0; policy drop; }",
        ],
    );
    nft(
        ns,
        &[
            "add",
            "rule",
            "inet",
            "adminfw",
            "forwarding",
            "ct",
            "state",
            "established,related",
            "accept",
        ],
    );
    nft(
        ns,
        &[
            "add",
            "rule",
            "inet",
            "adminfw",
            "forwarding",
            "meta",
            "mark",
            "&",
            "0x20000000",
            "==",
            "0x20000000",
            "accept",
        ],
    );
}

/// Elements of one set or map, from `nft -j list`.
fn element_count(ns: &Netns, kind: &str, table: &str, name: &str) -> usize {
    nft(ns, &["-j", "list", kind, "inet", table, name])
        .matches("\"elem\": {")
        .count()
}

/// The kernel alone closes it: poll from the client until the connection fails.
fn closes_by_itself(client: &Netns, addr: IpAddr, port: u16, granted_at: Instant) {
    let closed = wait_until(Duration::from_secs(8), Duration::from_millis(100), || {
        !tcp_connect_ok(client, addr, port, Duration::from_millis(300))
    });
    assert!(closed, "the NAT grant did not expire in the kernel");
    assert!(
        granted_at.elapsed() >= Duration::from_millis(1500),
        "closed too early: {:?}",
        granted_at.elapsed()
    );
}

fn forward_nat(tag: &str, table: &str, v6: bool, apply_with: ApplyWith) {
    let t = routed(tag, true);
    let (client, gateway) = t.outer(v6);
    let internal = t.internal_addr(v6);
    forward_policy_drop(t.gateway());
    let _ssh = tcp_listen(&t.internal, 22);
    let mut fw = backend(
        t.gateway(),
        NftablesConfig {
            apply_with,
            ..nat_config(table)
        },
    );
    assert!(
        !tcp_connect_ok(t.client(), gateway, OUTER_PORT, CONNECT),
        "closed before the grant"
    );

    let rule = nat_rule(client, internal, 22, false, None);
    fw.grant(&[opening(&rule, 30)]).unwrap();
    fw.grant(&[opening(&rule, 2)]).unwrap(); // a refresh, shorter
    let granted_at = Instant::now();
    assert!(
        tcp_connect_ok(t.client(), gateway, OUTER_PORT, CONNECT),
        "the grant forwards to internal:22:\n{}",
        nft(t.gateway(), &["list", "ruleset"])
    );
    let listed = fw.list().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].rule, rule);
    assert!(listed[0].timeout_secs <= 2, "{listed:?}");
    let fam = if v6 { "6" } else { "4" };
    for name in ["dnat", "dnatport"] {
        assert_eq!(
            element_count(t.gateway(), "map", table, &format!("{name}{fam}")),
            1,
            "{name}: refreshed, not duplicated"
        );
    }
    assert_eq!(
        element_count(t.gateway(), "set", table, &format!("fwd{fam}")),
        1
    );

    drop(fw);
    closes_by_itself(t.client(), gateway, OUTER_PORT, granted_at);
    let mut fresh = backend(t.gateway(), nat_config(table));
    assert!(fresh.list().unwrap().is_empty());
}

#[test]
fn forward_nat_reaches_the_internal_host_until_the_kernel_expires_it() {
    if require_root() {
        forward_nat("nfnf4", "pt_fnat4", false, ApplyWith::Netlink);
    }
}

#[test]
fn ipv6_forward_nat_reaches_the_internal_host() {
    if require_root() {
        forward_nat("nfnf6", "pt_fnat6", true, ApplyWith::Netlink);
    }
}

#[test]
fn forward_nat_through_the_nft_path() {
    if require_root() {
        forward_nat("nfnfc", "pt_fnatc", false, ApplyWith::Nft);
    }
}

#[test]
fn masquerade_and_snat_let_an_internal_host_without_a_route_back_answer() {
    if !require_root() {
        return;
    }
    let t = routed("nfmq", false);
    let (client, gateway) = t.outer(false);
    let internal = t.internal_addr(false);
    forward_policy_drop(t.gateway());
    let _ssh = tcp_listen(&t.internal, 22);
    let mut fw = backend(t.gateway(), nat_config("pt_masq"));

    let plain = nat_rule(client, internal, 22, false, None);
    fw.grant(&[opening(&plain, 60)]).unwrap();
    assert!(
        !tcp_connect_ok(t.client(), gateway, OUTER_PORT, CONNECT),
        "no route back without SNAT"
    );
    fw.revoke(std::slice::from_ref(&plain)).unwrap();
    assert!(fw.list().unwrap().is_empty());

    let masq = nat_rule(client, internal, 22, false, Some(Snat::Masquerade));
    fw.grant(&[opening(&masq, 2)]).unwrap();
    let granted_at = Instant::now();
    assert!(
        tcp_connect_ok(t.client(), gateway, OUTER_PORT, CONNECT),
        "masquerade makes the reply routable"
    );
    assert_eq!(fw.list().unwrap()[0].rule, masq);
    assert_eq!(element_count(t.gateway(), "set", "pt_masq", "masq4"), 1);
    closes_by_itself(t.client(), gateway, OUTER_PORT, granted_at);

    let snat = nat_rule(
        client,
        internal,
        22,
        false,
        Some(Snat::To(t.gateway_inner.into())),
    );
    fw.grant(&[opening(&snat, 60)]).unwrap();
    assert!(
        tcp_connect_ok(t.client(), gateway, OUTER_PORT, CONNECT),
        "SNAT makes the reply routable"
    );
    assert_eq!(element_count(t.gateway(), "map", "pt_masq", "snat4"), 1);
    fw.flush().unwrap();
    assert!(fw.list().unwrap().is_empty());
    assert!(
        !tcp_connect_ok(t.client(), gateway, OUTER_PORT, CONNECT),
        "flush closes NAT grants"
    );
}

#[test]
fn local_nat_redirects_a_port_to_the_gateways_own_service() {
    if !require_root() {
        return;
    }
    let t = routed("nfln", true);
    let (client, gateway) = t.outer(false);
    let gw = t.gateway();
    let _ssh = tcp_listen(gw, 22);
    let config = NftablesConfig {
        protected: vec!["tcp/22".parse().unwrap()],
        ..nat_config("pt_local")
    };
    let mut fw = backend(gw, config.clone());
    assert!(
        !tcp_connect_ok(t.client(), gateway, 22, CONNECT),
        "port 22 is protected"
    );
    assert!(
        !tcp_connect_ok(t.client(), gateway, OUTER_PORT, CONNECT),
        "nothing on 55000"
    );

    let rule = nat_rule(client, gateway, 22, true, None);
    fw.grant(&[opening(&rule, 2)]).unwrap();
    let granted_at = Instant::now();
    assert!(
        tcp_connect_ok(t.client(), gateway, OUTER_PORT, CONNECT),
        "55000 leads to the local port 22"
    );
    assert_eq!(fw.list().unwrap()[0].rule, rule);
    assert_eq!(element_count(gw, "set", "pt_local", "local4"), 1);
    drop(fw);
    closes_by_itself(t.client(), gateway, OUTER_PORT, granted_at);
    assert!(backend(gw, config).list().unwrap().is_empty());
}

#[test]
fn a_new_destination_for_the_same_client_and_port_replaces_the_old_grant() {
    if !require_root() {
        return;
    }
    for apply_with in [ApplyWith::Netlink, ApplyWith::Nft] {
        let ns = Netns::new("nfclash");
        let mut fw = backend(
            &ns,
            NftablesConfig {
                apply_with,
                ..nat_config("pt_clash")
            },
        );
        let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        let first = nat_rule(client, "10.0.0.2".parse().unwrap(), 22, false, None);
        let second = nat_rule(
            client,
            "10.0.0.3".parse().unwrap(),
            2222,
            false,
            Some(Snat::Masquerade),
        );
        fw.grant(&[opening(&first, 60)]).unwrap();
        fw.grant(&[opening(&second, 60)]).unwrap();
        let listed: Vec<Rule> = fw.list().unwrap().into_iter().map(|o| o.rule).collect();
        assert_eq!(listed, std::slice::from_ref(&second), "{apply_with:?}");
        assert_eq!(
            element_count(&ns, "set", "pt_clash", "fwd4"),
            1,
            "the old forward element went with it"
        );
        // Revoking the replaced grant leaves the new one alone.
        fw.revoke(std::slice::from_ref(&first)).unwrap();
        assert_eq!(fw.list().unwrap().len(), 1);
        fw.revoke(std::slice::from_ref(&second)).unwrap();
        assert!(fw.list().unwrap().is_empty());
    }
}

#[test]
fn a_nat_burst_is_one_transaction_and_nat_off_removes_the_nat_objects() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("nfnatb");
    let mut fw = backend(&ns, nat_config("pt_natb"));
    let burst: Vec<Opening> = (0..200u32)
        .map(|i| {
            let source = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            let snat = (i % 2 == 0).then_some(Snat::Masquerade);
            opening(
                &nat_rule(source, "172.16.0.2".parse().unwrap(), 22, i % 3 == 0, snat),
                60,
            )
        })
        .chain((0..50u32).map(|i| {
            let plain = Rule::new(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i)), Proto::Udp, 53);
            opening(&plain, 60)
        }))
        .collect();
    let before = fw.ruleset_generation().unwrap();
    fw.grant(&burst).unwrap();
    assert_eq!(
        fw.ruleset_generation().unwrap().wrapping_sub(before),
        1,
        "one kernel transaction"
    );
    assert_eq!(fw.list().unwrap().len(), 250);
    let chains = nft(&ns, &["list", "table", "inet", "pt_natb"])
        .matches("counter")
        .count();
    fw.init(0).unwrap();
    assert_eq!(fw.list().unwrap().len(), 250, "init keeps live NAT grants");
    assert_eq!(
        nft(&ns, &["list", "table", "inet", "pt_natb"])
            .matches("counter")
            .count(),
        chains,
        "init is idempotent"
    );

    // Restart with NAT off: the NAT chains and maps go, plain grants stay.
    let mut off = backend(
        &ns,
        NftablesConfig {
            nat: false,
            ..nat_config("pt_natb")
        },
    );
    let table = nft(&ns, &["list", "table", "inet", "pt_natb"]);
    assert!(
        !table.contains("dnat4")
            && !table.contains("chain prerouting")
            && !table.contains("local4"),
        "{table}"
    );
    assert_eq!(off.list().unwrap().len(), 50);
    let nat = burst[0].rule.clone();
    assert!(matches!(
        off.grant(&[opening(&nat, 60)]),
        Err(FirewallError::Unsupported { .. })
    ));
}

/// Docker without Docker: a DNAT of the published port 8080 to a "container",
/// made by hand in another table as Docker's iptables-nft rules would.
#[test]
fn docker_published_port_is_closed_and_granted_before_the_dnat() {
    if !require_root() {
        return;
    }
    let t = routed("nfdk", true);
    let (client, gateway) = t.outer(false);
    let gw = t.gateway();
    nft(gw, &["add", "table", "ip", "dockermimic"]);
    nft(
        gw,
        &[
            "add",
            "chain",
            "ip",
            "dockermimic",
            "pre",
            "{ type nat hook prerouting priority dstnat; }",
        ],
    );
    let container = format!("{}:80", t.internal_ip);
    nft(
        gw,
        &[
            "add",
            "rule",
            "ip",
            "dockermimic",
            "pre",
            "fib",
            "daddr",
            "type",
            "local",
            "tcp",
            "dport",
            "8080",
            "dnat",
            "to",
            &container,
        ],
    );
    let _web = tcp_listen(&t.internal, 80);

    let config = NftablesConfig {
        table: "pt_docker".into(),
        protected: vec!["tcp/8080".parse().unwrap()],
        ..NftablesConfig::default()
    };
    let _input_only = backend(gw, config.clone());
    assert!(
        tcp_connect_ok(t.client(), gateway, 8080, CONNECT),
        "the input chain alone cannot close a published port"
    );

    let mut fw = backend(
        gw,
        NftablesConfig {
            docker: true,
            ..config.clone()
        },
    );
    assert!(
        !tcp_connect_ok(t.client(), gateway, 8080, CONNECT),
        "the docker chain closes it"
    );
    fw.grant(&[Opening {
        rule: Rule::new(client, Proto::Tcp, 8080),
        timeout_secs: 2,
        expires_at: 0,
    }])
    .unwrap();
    let granted_at = Instant::now();
    assert!(
        tcp_connect_ok(t.client(), gateway, 8080, CONNECT),
        "granted before Docker's DNAT"
    );
    drop(fw);
    closes_by_itself(t.client(), gateway, 8080, granted_at);

    // Turning it off again removes the chain.
    backend(gw, config);
    assert!(!nft(gw, &["list", "table", "inet", "pt_docker"]).contains("chain docker"));
}

/// FORWARD_ALL: one grant forwards every port of the gateway to the inner host
/// (here 22 and 5432, with masquerade, through a forward-drop policy); it lists
/// back as made, and a revoke closes both ports.
#[test]
fn forward_all_forwards_every_port_to_the_inner_host() {
    if !require_root() {
        return;
    }
    let t = routed("nffa", false);
    let (client, gateway) = t.outer(false);
    let internal = t.internal_addr(false);
    let gw = t.gateway();
    forward_policy_drop(gw);
    let (_ssh, _pg) = (tcp_listen(&t.internal, 22), tcp_listen(&t.internal, 5432));
    let mut fw = backend(gw, nat_config("pt_fwdall"));
    for port in [22, 5432] {
        assert!(
            !tcp_connect_ok(t.client(), gateway, port, CONNECT),
            "{port} open before the grant"
        );
    }
    let mut rule = nat_rule(client, internal, 22, false, Some(Snat::Masquerade));
    rule.nat.as_mut().unwrap().forward_all = true;
    fw.grant(&[Opening {
        rule: rule.clone(),
        timeout_secs: 30,
        expires_at: 0,
    }])
    .unwrap();
    let ruleset = || nft(gw, &["list", "table", "inet", "pt_fwdall"]);
    for port in [22, 5432] {
        assert!(
            tcp_connect_ok(t.client(), gateway, port, CONNECT),
            "gateway:{port} not forwarded\n{}",
            ruleset()
        );
    }
    let listed = fw.list().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].rule, rule);
    fw.revoke(&[rule]).unwrap();
    assert!(fw.list().unwrap().is_empty(), "{}", ruleset());
    for port in [22, 5432] {
        assert!(
            !tcp_connect_ok(t.client(), gateway, port, CONNECT),
            "gateway:{port} still forwarded after the revoke"
        );
    }
}
