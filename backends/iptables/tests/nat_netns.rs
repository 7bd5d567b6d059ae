//! NAT and Docker-style grants against real iptables, in namespaces the tests
//! create: client — gateway (runs the backend) — internal. Root needed; with
//! CI=true a missing prerequisite fails the test.

use postern_backend_common::PrefixedRunner;
use postern_backend_iptables::{ChainSpec, IptablesBackend, IptablesConfig};
use postern_e2e::routed::routed;
use postern_e2e::{require_program, require_root, tcp_connect_ok, tcp_listen, wait_until, Netns};
use spa_core::firewall::{Firewall, NatRule, Opening, Rule, Snat};
use spa_core::request::Proto;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const REFUSED_WAIT: Duration = Duration::from_millis(700);
const OPEN_WAIT: Duration = Duration::from_secs(3);
const OUTER_PORT: u16 = 55000;

fn can_run() -> bool {
    require_root() && require_program("iptables") && require_program("ip6tables")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn backend(ns: &Netns, config: IptablesConfig) -> IptablesBackend {
    let runner = PrefixedRunner::netns(&ns.name, Duration::from_secs(30));
    let mut fw = IptablesBackend::new(&config, Box::new(runner))
        .unwrap()
        .track_generation(Some(ns.path()));
    fw.init(now()).unwrap();
    fw
}

fn nat_config() -> IptablesConfig {
    IptablesConfig {
        nat: true,
        ..IptablesConfig::default()
    }
}

fn nat_rule(source: IpAddr, to_addr: IpAddr, local: bool, snat: Option<Snat>) -> Rule {
    Rule {
        source,
        proto: Proto::Tcp,
        port: OUTER_PORT,
        nat: Some(NatRule {
            to_addr,
            to_port: 22,
            local,
            snat,
            dnat: true,
            forward_all: false,
        }),
        destination: None,
        source_port: None,
    }
}

fn opening(rule: &Rule, expires_at: u64) -> Opening {
    Opening {
        rule: rule.clone(),
        timeout_secs: expires_at.saturating_sub(now()) as u32,
        expires_at,
    }
}

/// `-A` lines of one chain.
fn chain_rules(ns: &Netns, iptables: &str, table: &str, chain: &str) -> Vec<String> {
    ns.run_ok(&[iptables, "-w", "5", "-t", table, "-S", chain])
        .lines()
        .filter(|l| l.starts_with("-A "))
        .map(String::from)
        .collect()
}

/// A router's usual FORWARD policy: drop, except replies of accepted flows.
fn forward_policy_drop(ns: &Netns, iptables: &str) {
    ns.run_ok(&[iptables, "-w", "5", "-P", "FORWARD", "DROP"]);
    ns.run_ok(&[
        iptables,
        "-w",
        "5",
        "-A",
        "FORWARD",
        "-m",
        "conntrack",
        "--ctstate",
        "ESTABLISHED,RELATED",
        "-j",
        "ACCEPT",
    ]);
}

/// Wait until `expire(now)` removed something, i.e. the grant's time is up.
fn expire_when_due(fw: &mut IptablesBackend) -> Vec<Rule> {
    let mut removed = Vec::new();
    let done = wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        removed = fw.expire(now()).unwrap();
        !removed.is_empty()
    });
    assert!(done, "the grant did not expire");
    removed
}

fn forward_nat(tag: &str, v6: bool) {
    let t = routed(tag, true);
    let iptables = if v6 { "ip6tables" } else { "iptables" };
    let (client, gateway) = t.outer(v6);
    let internal = t.internal_addr(v6);
    forward_policy_drop(t.gateway(), iptables);
    let _ssh = tcp_listen(&t.internal, 22);
    let mut fw = backend(t.gateway(), nat_config());
    assert!(
        !tcp_connect_ok(t.client(), gateway, OUTER_PORT, REFUSED_WAIT),
        "closed before the grant"
    );

    let rule = nat_rule(client, internal, false, None);
    let start = now();
    fw.grant(&[opening(&rule, start + 2)]).unwrap();
    assert!(
        tcp_connect_ok(t.client(), gateway, OUTER_PORT, OPEN_WAIT),
        "the grant forwards to internal:22"
    );
    // The FORWARD accept is what lets it through: without it the policy drops.
    fw.grant(&[opening(&rule, start + 3)]).unwrap();
    let listed = fw.list().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!((&listed[0].rule, listed[0].expires_at), (&rule, start + 3));
    assert_eq!(
        chain_rules(t.gateway(), iptables, "nat", "POSTERN_PREROUTING").len(),
        1,
        "refreshed, not duplicated"
    );
    assert_eq!(
        chain_rules(t.gateway(), iptables, "filter", "POSTERN_FORWARD").len(),
        1
    );

    assert_eq!(expire_when_due(&mut fw), vec![rule]);
    assert!(chain_rules(t.gateway(), iptables, "nat", "POSTERN_PREROUTING").is_empty());
    assert!(chain_rules(t.gateway(), iptables, "filter", "POSTERN_FORWARD").is_empty());
    assert!(
        !tcp_connect_ok(t.client(), gateway, OUTER_PORT, REFUSED_WAIT),
        "closed after expiry"
    );
}

#[test]
fn forward_nat_reaches_the_internal_host_until_it_expires() {
    if can_run() {
        forward_nat("iptnf4", false);
    }
}

#[test]
fn ipv6_forward_nat_reaches_the_internal_host_until_it_expires() {
    if can_run() {
        forward_nat("iptnf6", true);
    }
}

#[test]
fn masquerade_lets_an_internal_host_without_a_route_back_answer() {
    if !can_run() {
        return;
    }
    let t = routed("iptmq", false);
    let (client, gateway) = t.outer(false);
    let internal = t.internal_addr(false);
    forward_policy_drop(t.gateway(), "iptables");
    let _ssh = tcp_listen(&t.internal, 22);
    let mut fw = backend(t.gateway(), nat_config());

    // DNAT alone: internal gets the SYN but has no route back to the client.
    let plain = nat_rule(client, internal, false, None);
    fw.grant(&[opening(&plain, now() + 60)]).unwrap();
    assert!(
        !tcp_connect_ok(t.client(), gateway, OUTER_PORT, REFUSED_WAIT),
        "no route back without SNAT"
    );
    fw.revoke(std::slice::from_ref(&plain)).unwrap();
    assert!(fw.list().unwrap().is_empty());

    let masq = nat_rule(client, internal, false, Some(Snat::Masquerade));
    let start = now();
    fw.grant(&[opening(&masq, start + 2)]).unwrap();
    assert!(
        tcp_connect_ok(t.client(), gateway, OUTER_PORT, OPEN_WAIT),
        "MASQUERADE makes the reply routable"
    );
    assert_eq!(
        chain_rules(t.gateway(), "iptables", "nat", "POSTERN_MASQUERADE").len(),
        1
    );
    assert_eq!(fw.list().unwrap()[0].rule, masq);

    assert_eq!(expire_when_due(&mut fw), vec![masq]);
    assert!(chain_rules(t.gateway(), "iptables", "nat", "POSTERN_MASQUERADE").is_empty());
    assert!(!tcp_connect_ok(
        t.client(),
        gateway,
        OUTER_PORT,
        REFUSED_WAIT
    ));

    // SNAT to the gateway's inner address works the same way.
    let snat = nat_rule(
        client,
        internal,
        false,
        Some(Snat::To(t.gateway_inner.into())),
    );
    fw.grant(&[opening(&snat, now() + 60)]).unwrap();
    assert!(
        tcp_connect_ok(t.client(), gateway, OUTER_PORT, OPEN_WAIT),
        "SNAT makes the reply routable"
    );
    assert_eq!(
        chain_rules(t.gateway(), "iptables", "nat", "POSTERN_POSTROUTING").len(),
        1
    );
    fw.shutdown().unwrap();
    let nat = t.gateway().run_ok(&["iptables", "-t", "nat", "-S"]);
    assert!(
        !nat.contains("POSTERN"),
        "shutdown removes the NAT chains: {nat}"
    );
}

#[test]
fn local_nat_redirects_a_port_to_the_gateways_own_service() {
    if !can_run() {
        return;
    }
    let t = routed("iptln", true);
    let (client, gateway) = t.outer(false);
    let gw = t.gateway();
    gw.run_ok(&[
        "iptables", "-w", "5", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "DROP",
    ]);
    let _ssh = tcp_listen(gw, 22);
    let mut fw = backend(gw, nat_config());
    assert!(
        !tcp_connect_ok(t.client(), gateway, 22, REFUSED_WAIT),
        "port 22 is dropped"
    );
    assert!(
        !tcp_connect_ok(t.client(), gateway, OUTER_PORT, REFUSED_WAIT),
        "nothing on 55000"
    );

    let rule = nat_rule(client, gateway, true, None);
    let start = now();
    fw.grant(&[opening(&rule, start + 2)]).unwrap();
    assert!(
        tcp_connect_ok(t.client(), gateway, OUTER_PORT, OPEN_WAIT),
        "55000 leads to the local port 22"
    );
    assert_eq!(fw.list().unwrap()[0].rule, rule);
    let input = chain_rules(gw, "iptables", "filter", "POSTERN_INPUT");
    assert!(
        input.len() == 1 && input[0].contains("--dport 22"),
        "{input:?}"
    );

    // A restarted daemon keeps the live NAT grant, then expires it.
    drop(fw);
    let mut fw = backend(gw, nat_config());
    assert_eq!(fw.list().unwrap().len(), 1);
    assert_eq!(expire_when_due(&mut fw), vec![rule]);
    assert!(
        !tcp_connect_ok(t.client(), gateway, OUTER_PORT, REFUSED_WAIT),
        "closed after expiry"
    );
}

/// Docker without Docker: a DOCKER-USER chain with the admin's drop for a
/// published port, and Docker's DNAT of that port to a "container".
#[test]
fn docker_published_port_is_granted_in_docker_user() {
    if !can_run() {
        return;
    }
    let t = routed("iptdk", true);
    let (client, gateway) = t.outer(false);
    let gw = t.gateway();
    let ipt = |args: &[&str]| {
        let mut argv = vec!["iptables", "-w", "5"];
        argv.extend_from_slice(args);
        gw.run_ok(&argv);
    };
    ipt(&["-N", "DOCKER-USER"]);
    ipt(&["-A", "FORWARD", "-j", "DOCKER-USER"]);
    ipt(&[
        "-A",
        "DOCKER-USER",
        "-p",
        "tcp",
        "-m",
        "conntrack",
        "--ctstate",
        "NEW",
        "--ctorigdstport",
        "8080",
        "-j",
        "DROP",
    ]);
    ipt(&["-A", "DOCKER-USER", "-j", "RETURN"]);
    let container = format!("{}:80", t.internal_ip);
    ipt(&[
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-p",
        "tcp",
        "--dport",
        "8080",
        "-j",
        "DNAT",
        "--to-destination",
        &container,
    ]);
    let _web = tcp_listen(&t.internal, 80);

    let config = IptablesConfig {
        docker: Some(ChainSpec::default_docker()),
        ipv6: false,
        ..IptablesConfig::default()
    };
    let mut fw = backend(gw, config);
    let docker_user = chain_rules(gw, "iptables", "filter", "DOCKER-USER");
    assert_eq!(
        docker_user[0], "-A DOCKER-USER -j POSTERN_DOCKER",
        "{docker_user:?}"
    );
    assert!(
        !tcp_connect_ok(t.client(), gateway, 8080, REFUSED_WAIT),
        "the published port is closed"
    );

    let rule = Rule::new(client, Proto::Tcp, 8080);
    let start = now();
    fw.grant(&[opening(&rule, start + 2)]).unwrap();
    assert!(
        tcp_connect_ok(t.client(), gateway, 8080, OPEN_WAIT),
        "granted through DOCKER-USER"
    );
    let ours = chain_rules(gw, "iptables", "filter", "POSTERN_DOCKER");
    assert!(
        ours.len() == 1 && ours[0].contains("--ctorigdstport 8080"),
        "{ours:?}"
    );
    assert_eq!(fw.list().unwrap().len(), 1, "one grant, in both chains");

    assert_eq!(expire_when_due(&mut fw), vec![rule]);
    assert!(chain_rules(gw, "iptables", "filter", "POSTERN_DOCKER").is_empty());
    assert!(
        !tcp_connect_ok(t.client(), gateway, 8080, REFUSED_WAIT),
        "closed after expiry"
    );
    fw.shutdown().unwrap();
    let filter = gw.run_ok(&["iptables", "-S"]);
    assert!(
        !filter.contains("POSTERN") && filter.contains("-N DOCKER-USER"),
        "Docker's chain stays: {filter}"
    );
}
