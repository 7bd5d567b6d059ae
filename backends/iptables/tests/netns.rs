//! The iptables backend against real iptables, inside network namespaces the
//! tests create (root needed; with CI=true a missing prerequisite fails the test).

use postern_backend_common::PrefixedRunner;
use postern_backend_iptables::{IptablesBackend, IptablesConfig};
use postern_e2e::{
    pair, require_program, require_root, tcp_connect_ok, tcp_listen, wait_until, which, Netns,
};
use spa_core::firewall::{CommandRunner, Firewall, FwResult, Opening, Rule};
use spa_core::request::Proto;
use std::net::IpAddr;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const REFUSED_WAIT: Duration = Duration::from_millis(700);
const OPEN_WAIT: Duration = Duration::from_secs(3);

fn can_run() -> bool {
    require_root() && require_program("iptables") && require_program("ip6tables")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A backend whose commands run inside `ns`.
fn backend_in(ns: &Netns) -> IptablesBackend {
    backend_with(ns, "iptables")
}

/// Same, with another iptables variant (`iptables-legacy`).
fn backend_with(ns: &Netns, iptables: &str) -> IptablesBackend {
    let runner = PrefixedRunner::netns(&ns.name, Duration::from_secs(30));
    let config = IptablesConfig {
        iptables: iptables.into(),
        ..IptablesConfig::default()
    };
    IptablesBackend::new(&config, Box::new(runner))
        .unwrap()
        .track_generation(Some(ns.path()))
}

/// Runs commands in a namespace and remembers each command line.
struct CountingRunner {
    inner: PrefixedRunner,
    seen: Arc<Mutex<Vec<String>>>,
}

impl CommandRunner for CountingRunner {
    fn run(&mut self, argv: &[String], stdin: Option<&str>) -> FwResult<String> {
        self.seen.lock().unwrap().push(argv.join(" "));
        self.inner.run(argv, stdin)
    }

    fn spawn(&mut self, argv: &[String]) -> Option<FwResult<Child>> {
        self.seen.lock().unwrap().push(argv.join(" "));
        self.inner.spawn(argv)
    }
}

/// Listings (`iptables … -S`) among the command lines seen since the last call.
fn listings_since(seen: &Arc<Mutex<Vec<String>>>) -> usize {
    let mut seen = seen.lock().unwrap();
    let n = seen
        .iter()
        .filter(|c| c.ends_with(" -S") || c.contains(" -S "))
        .count();
    seen.clear();
    n
}

/// Processes in `ns` whose command line names `what`.
fn processes_named(ns: &Netns, what: &str) -> usize {
    ns.pids()
        .iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(what))
        })
        .count()
}

fn opening(source: impl Into<IpAddr>, port: u16, expires_at: u64) -> Opening {
    let rule = Rule::new(source.into(), Proto::Tcp, port);
    Opening {
        rule,
        timeout_secs: expires_at.saturating_sub(now()) as u32,
        expires_at,
    }
}

/// Drop new connections to `port` in INPUT, after the backend's jump.
fn drop_port(ns: &Netns, iptables: &str, port: u16) {
    ns.run_ok(&[
        iptables,
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
}

fn chain_rules(ns: &Netns, iptables: &str) -> Vec<String> {
    ns.run_ok(&[iptables, "-w", "5", "-S", "POSTERN_INPUT"])
        .lines()
        .filter(|l| l.starts_with("-A "))
        .map(String::from)
        .collect()
}

/// Grant, repeated grant, expiry, for one family.
fn grant_refresh_expire(tag: &str, v6: bool, variant: &str) {
    let p = pair(tag);
    let (iptables, client, server) = if v6 {
        let v6_tool = variant.replace("iptables", "ip6tables");
        (
            v6_tool,
            IpAddr::from(p.client_ip6),
            IpAddr::from(p.server_ip6),
        )
    } else {
        (
            variant.to_string(),
            IpAddr::from(p.client_ip),
            IpAddr::from(p.server_ip),
        )
    };
    let iptables = iptables.as_str();
    let port = 2201;
    let mut fw = backend_with(&p.server, variant);
    fw.init(now()).unwrap();
    drop_port(&p.server, iptables, port);
    let _listener = tcp_listen(&p.server, port);
    assert!(
        !tcp_connect_ok(&p.client, server, port, REFUSED_WAIT),
        "the DROP rule must close the port"
    );

    let start = now();
    fw.grant(&[opening(client, port, start + 2)]).unwrap();
    assert!(
        tcp_connect_ok(&p.client, server, port, OPEN_WAIT),
        "granted port must be reachable"
    );

    fw.grant(&[opening(client, port, start + 3)]).unwrap();
    let rules = chain_rules(&p.server, iptables);
    assert_eq!(
        rules.len(),
        1,
        "a repeated grant refreshes, never duplicates: {rules:?}"
    );
    assert!(
        rules[0].contains(&format!("postern_exp_{}", start + 3)),
        "{rules:?}"
    );
    assert_eq!(fw.list().unwrap().len(), 1);

    let expired = wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        !fw.expire(now()).unwrap().is_empty()
    });
    assert!(expired, "the grant must expire");
    assert!(now() >= start + 3);
    assert!(chain_rules(&p.server, iptables).is_empty());
    assert!(
        !tcp_connect_ok(&p.client, server, port, REFUSED_WAIT),
        "expired grant must close the port"
    );
}

#[test]
fn ipv4_grant_opens_refresh_does_not_duplicate_expiry_closes() {
    if can_run() {
        grant_refresh_expire("ipt4", false, "iptables");
    }
}

#[test]
fn ipv6_grant_opens_refresh_does_not_duplicate_expiry_closes() {
    if can_run() {
        grant_refresh_expire("ipt6", true, "iptables");
    }
}

#[test]
fn restart_reconciles_leftovers_then_flush_and_shutdown_clean_up() {
    if !can_run() {
        return;
    }
    let p = pair("iptr");
    let (client, server) = (IpAddr::from(p.client_ip), IpAddr::from(p.server_ip));
    let (short_port, long_port) = (2202, 2203);
    let start = now();
    {
        let mut fw = backend_in(&p.server);
        fw.init(start).unwrap();
        fw.grant(&[
            opening(client, short_port, start + 1),
            opening(client, long_port, start + 600),
        ])
        .unwrap();
        // Dropped without shutdown(): the daemon was killed.
    }
    drop_port(&p.server, "iptables", short_port);
    drop_port(&p.server, "iptables", long_port);
    let _short = tcp_listen(&p.server, short_port);
    let _long = tcp_listen(&p.server, long_port);
    assert!(wait_until(
        Duration::from_secs(5),
        Duration::from_millis(100),
        || now() > start + 1
    ));

    let mut fw = backend_in(&p.server);
    fw.init(now()).unwrap();
    let live: Vec<u16> = fw.list().unwrap().iter().map(|o| o.rule.port).collect();
    assert_eq!(live, [long_port], "expired leftover removed, live one kept");
    assert!(tcp_connect_ok(&p.client, server, long_port, OPEN_WAIT));
    assert!(!tcp_connect_ok(&p.client, server, short_port, REFUSED_WAIT));

    let before = p.server.run_ok(&["iptables", "-S"]);
    fw.init(now()).unwrap();
    assert_eq!(
        p.server.run_ok(&["iptables", "-S"]),
        before,
        "init is idempotent"
    );
    assert_eq!(before.matches("-A INPUT -j POSTERN_INPUT").count(), 1);

    fw.flush().unwrap();
    assert_eq!(fw.list().unwrap(), vec![]);
    assert!(
        !tcp_connect_ok(&p.client, server, long_port, REFUSED_WAIT),
        "flush closes"
    );
    let after_flush = p.server.run_ok(&["iptables", "-S"]);
    assert!(
        after_flush.contains("-N POSTERN_INPUT")
            && after_flush.contains("-A INPUT -j POSTERN_INPUT"),
        "{after_flush}"
    );

    // An admin's firewall reload drops our jump; the next grant puts it back.
    p.server
        .run_ok(&["iptables", "-w", "5", "-D", "INPUT", "-j", "POSTERN_INPUT"]);
    fw.grant(&[opening(client, long_port, now() + 600)])
        .unwrap();
    assert!(
        tcp_connect_ok(&p.client, server, long_port, OPEN_WAIT),
        "jump restored by the grant"
    );
    fw.shutdown().unwrap();
    let after_exit = p.server.run_ok(&["iptables", "-S"]);
    assert!(
        !after_exit.contains("POSTERN_INPUT"),
        "shutdown removes chain and jump: {after_exit}"
    );
    assert!(
        after_exit.contains(&format!("--dport {long_port} -j DROP")),
        "the admin's rules stay: {after_exit}"
    );
    assert!(!tcp_connect_ok(&p.client, server, long_port, REFUSED_WAIT));
}

/// With iptables-nft, one long-lived iptables-restore takes every change, and a
/// grant lists nothing while the ruleset is as the backend left it; anyone
/// else's change (a rule by hand, a lost jump) makes the next grant list again,
/// restore the jump and keep the other rule.
#[test]
fn grants_list_nothing_until_someone_else_changes_the_ruleset() {
    if !can_run() {
        return;
    }
    let p = pair("iptg");
    let (client, server) = (IpAddr::from(p.client_ip), IpAddr::from(p.server_ip));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let runner = CountingRunner {
        inner: PrefixedRunner::netns(&p.server.name, Duration::from_secs(30)),
        seen: seen.clone(),
    };
    let config = IptablesConfig {
        ipv6: false,
        ..IptablesConfig::default()
    };
    let fw = IptablesBackend::new(&config, Box::new(runner)).unwrap();
    let mut fw = fw.track_generation(Some(p.server.path()));
    if !fw.tracks_generation() {
        eprintln!("skipped: iptables is not the nf_tables variant here");
        return;
    }
    let (a, b) = (2211, 2212);
    for port in [a, b] {
        drop_port(&p.server, "iptables", port);
    }
    let _la = tcp_listen(&p.server, a);
    let _lb = tcp_listen(&p.server, b);
    fw.init(now()).unwrap();
    fw.grant(&[opening(client, a, now() + 600)]).unwrap();
    assert!(
        listings_since(&seen) > 0,
        "the first grant lists the chains"
    );
    fw.grant(&[opening(client, b, now() + 600)]).unwrap();
    assert_eq!(listings_since(&seen), 0, "the second grant lists nothing");
    assert!(tcp_connect_ok(&p.client, server, b, OPEN_WAIT));
    let start = now();
    fw.grant(&[opening(client, b, start + 900)]).unwrap();
    assert_eq!(listings_since(&seen), 0, "a refresh lists nothing either");
    let rules = chain_rules(&p.server, "iptables");
    let of_b: Vec<&String> = rules
        .iter()
        .filter(|r| r.contains("--dport 2212"))
        .collect();
    assert_eq!(of_b.len(), 1, "refreshed, not duplicated: {rules:?}");
    assert!(
        of_b[0].contains(&format!("postern_exp_{}", start + 900)),
        "{rules:?}"
    );
    assert_eq!(
        processes_named(&p.server, "restore"),
        1,
        "one long-lived iptables-restore"
    );

    // Someone else: a hand-made rule in our chain and the jump gone.
    p.server.run_ok(&[
        "iptables",
        "-w",
        "5",
        "-A",
        "POSTERN_INPUT",
        "-s",
        "198.51.100.9/32",
        "-p",
        "tcp",
        "--dport",
        "9",
        "-j",
        "ACCEPT",
    ]);
    p.server
        .run_ok(&["iptables", "-w", "5", "-D", "INPUT", "-j", "POSTERN_INPUT"]);
    assert!(!tcp_connect_ok(&p.client, server, a, REFUSED_WAIT));
    fw.grant(&[opening(client, a, now() + 700)]).unwrap();
    assert!(
        listings_since(&seen) > 0,
        "a changed ruleset is listed again"
    );
    assert!(
        tcp_connect_ok(&p.client, server, a, OPEN_WAIT),
        "jump restored by the grant"
    );
    let rules = chain_rules(&p.server, "iptables");
    assert!(
        rules.iter().any(|r| r.contains("198.51.100.9")),
        "{rules:?}"
    );
    assert_eq!(rules.len(), 3, "{rules:?}");
    fw.shutdown().unwrap();
    drop(fw);
    assert_eq!(
        processes_named(&p.server, "restore"),
        0,
        "reaped at the end"
    );
}

/// When the IPv6 restore process has died (killed by someone), a batch whose
/// IPv6 transaction therefore fails leaves nothing of its IPv4 one (the IPv4
/// restore undoes it), the error is reported, and the next batch works again
/// with a fresh IPv6 restore.
#[test]
fn a_batch_failing_in_one_family_is_rolled_back_in_the_other() {
    if !can_run() {
        return;
    }
    let p = pair("iptf");
    let (client, server) = (IpAddr::from(p.client_ip), IpAddr::from(p.server_ip));
    let mut fw = backend_in(&p.server);
    let port = 2221;
    drop_port(&p.server, "iptables", port);
    let _listener = tcp_listen(&p.server, port);
    fw.init(now()).unwrap();
    fw.grant(&[opening(client, 2222, now() + 600)]).unwrap();

    let v6_restores: Vec<u32> = p
        .server
        .pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("ip6tables-restore"))
        })
        .collect();
    assert_eq!(v6_restores.len(), 1, "init started the IPv6 restore");
    let killed = std::process::Command::new("kill")
        .args(["-9", &v6_restores[0].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let v6_client = IpAddr::from(p.client_ip6);
    let e = fw
        .grant(&[
            opening(client, port, now() + 600),
            opening(v6_client, port, now() + 600),
        ])
        .unwrap_err();
    assert!(
        e.to_string().contains("ip6tables-restore"),
        "the failing command is named: {e}"
    );
    let rules = chain_rules(&p.server, "iptables");
    assert!(
        !rules.iter().any(|r| r.contains(&format!("--dport {port}"))),
        "the IPv4 half was undone: {rules:?}"
    );
    assert_eq!(rules.len(), 1, "the earlier grant stays: {rules:?}");
    assert!(!tcp_connect_ok(&p.client, server, port, REFUSED_WAIT));

    fw.grant(&[
        opening(client, port, now() + 600),
        opening(v6_client, port, now() + 600),
    ])
    .unwrap();
    assert!(tcp_connect_ok(&p.client, server, port, OPEN_WAIT));
    assert_eq!(fw.list().unwrap().len(), 3);
    fw.shutdown().unwrap();
}

/// The same behaviour with the legacy (x_tables) variant, where it is installed
/// (an optional extra, so its absence is not a CI failure).
#[test]
fn legacy_iptables_variant_behaves_the_same() {
    if can_run() && which("iptables-legacy").is_some() && which("ip6tables-legacy").is_some() {
        grant_refresh_expire("iptl4", false, "iptables-legacy");
        grant_refresh_expire("iptl6", true, "iptables-legacy");
    }
}

/// Blocking (posternd's `[attack] block_secs`) with ipset: a blocked source can
/// no longer open a connection to an unguarded port, its grant and a
/// connection it had already still work (the block chain comes after
/// postern's input chain and passes established traffic); the kernel lifts
/// the block at its timeout; flush empties the set; `flush_at_init` empties it
/// at start; at exit (`flush_at_exit`) the chain, its jump and the set are gone.
#[test]
fn a_blocked_source_is_dropped_until_the_kernel_lifts_the_block() {
    if !(can_run() && require_program("ipset")) {
        return;
    }
    let p = pair("iptblk");
    let _open = tcp_listen(&p.server, 2220);
    let _granted = tcp_listen(&p.server, 2221);
    drop_port(&p.server, "iptables", 2221);
    let mut fw = backend_in(&p.server);
    assert!(
        fw.block(&[]).is_err(),
        "blocking before enable_blocking must fail"
    );
    fw.enable_blocking().unwrap();
    fw.init(now()).unwrap();
    let (server, client) = (IpAddr::V4(p.server_ip), IpAddr::V4(p.client_ip));
    assert!(tcp_connect_ok(&p.client, server, 2220, OPEN_WAIT));
    fw.grant(&[opening(p.client_ip, 2221, now() + 60)]).unwrap();
    let block = |secs: u32| spa_core::firewall::Block {
        source: client,
        timeout_secs: secs,
        expires_at: now() + u64::from(secs),
    };
    let (mut held, mut far) = postern_e2e::tcp_established(&p, 2222);
    fw.block(&[block(3)]).unwrap();
    assert!(
        postern_e2e::tcp_carries(&mut held, &mut far)
            && postern_e2e::tcp_carries(&mut far, &mut held),
        "a block cut an established connection"
    );
    let listed = p.server.run_ok(&["ipset", "list", "postern_block4"]);
    assert!(listed.contains(&format!("{client} timeout")), "{listed}");
    assert!(
        !tcp_connect_ok(&p.client, server, 2220, REFUSED_WAIT),
        "a blocked source still connects"
    );
    assert!(
        tcp_connect_ok(&p.client, server, 2221, OPEN_WAIT),
        "a block cut a grant"
    );
    // init again (a restart) keeps the chain, jump and rule single.
    fw.init(now()).unwrap();
    let input = p.server.run_ok(&["iptables", "-S", "INPUT"]);
    assert_eq!(input.matches("-j POSTERN_BLOCK").count(), 1, "{input}");
    assert!(
        input.find("-j POSTERN_INPUT") < input.find("-j POSTERN_BLOCK"),
        "{input}"
    );
    let lifted = wait_until(Duration::from_secs(8), Duration::from_millis(100), || {
        tcp_connect_ok(&p.client, server, 2220, Duration::from_millis(300))
    });
    assert!(lifted, "the kernel did not lift the block");
    fw.block(&[block(100)]).unwrap();
    fw.block(&[block(200)]).unwrap();
    let listed = p.server.run_ok(&["ipset", "list", "postern_block4"]);
    let left: u32 = listed
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{client} timeout ")))
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(left > 150, "not refreshed to the new timeout: {listed}");
    assert!(!tcp_connect_ok(&p.client, server, 2220, REFUSED_WAIT));
    // IPv6 (ip6tables, postern_block6).
    let server6 = IpAddr::V6(p.server_ip6);
    assert!(tcp_connect_ok(&p.client, server6, 2220, OPEN_WAIT));
    fw.block(&[spa_core::firewall::Block {
        source: IpAddr::V6(p.client_ip6),
        timeout_secs: 100,
        expires_at: now() + 100,
    }])
    .unwrap();
    let listed = p.server.run_ok(&["ipset", "list", "postern_block6"]);
    assert!(listed.contains(&p.client_ip6.to_string()), "{listed}");
    assert!(
        !tcp_connect_ok(&p.client, server6, 2220, REFUSED_WAIT),
        "a blocked IPv6 source still connects"
    );
    fw.flush().unwrap();
    assert!(tcp_connect_ok(&p.client, server, 2220, OPEN_WAIT));
    assert!(tcp_connect_ok(&p.client, server6, 2220, OPEN_WAIT));
    fw.block(&[block(100)]).unwrap();
    let runner = PrefixedRunner::netns(&p.server.name, Duration::from_secs(30));
    let config = IptablesConfig {
        flush_at_init: true,
        ..IptablesConfig::default()
    };
    let mut flushing = IptablesBackend::new(&config, Box::new(runner)).unwrap();
    flushing.enable_blocking().unwrap();
    flushing.init(now()).unwrap();
    assert!(
        tcp_connect_ok(&p.client, server, 2220, OPEN_WAIT),
        "flush_at_init kept the block"
    );
    fw.block(&[block(100)]).unwrap();
    fw.shutdown().unwrap();
    assert!(tcp_connect_ok(&p.client, server, 2220, OPEN_WAIT));
    let all = p.server.run_ok(&["iptables-save"]);
    assert!(!all.contains("POSTERN_BLOCK"), "{all}");
    let sets = p.server.run_ok(&["ipset", "list", "-n"]);
    assert!(sets.trim().is_empty(), "{sets}");
}
