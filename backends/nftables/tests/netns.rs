//! The backend against real nftables, each test in network namespaces of its own.
//! Needs root; skips elsewhere, fails when CI=true.

use postern_backend_nftables::{ApplyWith, NftablesBackend, NftablesConfig, TableFamily};
use postern_e2e::{pair, require_root, tcp_connect_ok, tcp_listen, wait_until, Netns};
use spa_core::firewall::{Firewall, FirewallError, Opening, Rule};
use spa_core::request::Proto;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

const CONNECT: Duration = Duration::from_millis(400);

fn config(table: &str, ports: &[&str]) -> NftablesConfig {
    NftablesConfig {
        table: table.into(),
        protected: ports.iter().map(|p| p.parse().unwrap()).collect(),
        ..NftablesConfig::default()
    }
}

fn backend(ns: &Netns, config: NftablesConfig) -> NftablesBackend {
    let mut b = NftablesBackend::new(config).unwrap().in_netns(ns.path());
    b.init(0).unwrap();
    b
}

fn opening(source: IpAddr, port: u16, secs: u32) -> Opening {
    Opening {
        rule: Rule::new(source, Proto::Tcp, port),
        timeout_secs: secs,
        expires_at: 0,
    }
}

fn nft(ns: &Netns, args: &[&str]) -> String {
    let mut argv = vec!["nft"];
    argv.extend_from_slice(args);
    ns.run_ok(&argv)
}

/// Number of rules in a chain, from `nft -j list chain`.
fn rule_count(ns: &Netns, family: &str, table: &str, chain: &str) -> usize {
    nft(ns, &["-j", "list", "chain", family, table, chain])
        .matches("\"rule\"")
        .count()
}

#[test]
fn grant_opens_the_port_and_the_kernel_closes_it_at_the_timeout() {
    if !require_root() {
        return;
    }
    let p = pair("nfexp");
    let _listener = tcp_listen(&p.server, 2201);
    let mut fw = backend(&p.server, config("pt_expiry", &["tcp/2201"]));
    let server = IpAddr::V4(p.server_ip);
    assert!(
        !tcp_connect_ok(&p.client, server, 2201, CONNECT),
        "protected port must be closed before a grant"
    );

    fw.grant(&[opening(IpAddr::V4(p.client_ip), 2201, 2)])
        .unwrap();
    let granted_at = Instant::now();
    assert!(
        tcp_connect_ok(&p.client, server, 2201, CONNECT),
        "granted port must open"
    );
    let listed = fw.list().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].rule.source, IpAddr::V4(p.client_ip));
    assert!(listed[0].timeout_secs <= 2);

    // No call into postern from here: the kernel alone must close it again.
    drop(fw);
    let closed = wait_until(Duration::from_secs(8), Duration::from_millis(100), || {
        !tcp_connect_ok(&p.client, server, 2201, Duration::from_millis(200))
    });
    assert!(closed, "grant did not expire in the kernel");
    assert!(
        granted_at.elapsed() >= Duration::from_millis(1500),
        "closed too early: {:?}",
        granted_at.elapsed()
    );
    let mut fresh = backend(&p.server, config("pt_expiry", &["tcp/2201"]));
    assert!(fresh.list().unwrap().is_empty());
}

#[test]
fn repeated_grant_refreshes_one_element() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("nfrep");
    let mut fw = backend(&ns, config("pt_repeat", &["tcp/22"]));
    let src = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
    fw.grant(&[opening(src, 22, 2)]).unwrap();
    fw.grant(&[opening(src, 22, 120)]).unwrap();
    fw.grant(&[opening(src, 22, 60), opening(src, 22, 90)])
        .unwrap();
    let listed = fw.list().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(
        listed[0].timeout_secs > 80,
        "timeout not refreshed: {listed:?}"
    );
}

#[test]
fn ipv6_grant_opens_the_port() {
    if !require_root() {
        return;
    }
    let p = pair("nfv6");
    let _listener = tcp_listen(&p.server, 2202);
    let mut fw = backend(&p.server, config("pt_v6", &["tcp/2202"]));
    let server = IpAddr::V6(p.server_ip6);
    assert!(!tcp_connect_ok(&p.client, server, 2202, CONNECT));
    fw.grant(&[opening(IpAddr::V6(p.client_ip6), 2202, 30)])
        .unwrap();
    assert!(tcp_connect_ok(&p.client, server, 2202, CONNECT));
    // The IPv4 address of the same client was not granted.
    assert!(!tcp_connect_ok(
        &p.client,
        IpAddr::V4(p.server_ip),
        2202,
        CONNECT
    ));
    let listed = fw.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].rule.source, IpAddr::V6(p.client_ip6));
    fw.revoke(&[listed[0].rule.clone()]).unwrap();
    assert!(!tcp_connect_ok(&p.client, server, 2202, CONNECT));
}

#[test]
fn init_is_idempotent_and_a_restart_sees_live_grants() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("nfinit");
    let cfg = config("pt_init", &["tcp/22", "udp/1194"]);
    let mut fw = backend(&ns, cfg.clone());
    let rules = rule_count(&ns, "inet", "pt_init", "input");
    assert_eq!(
        rules, 9,
        "ct, lo, grants4, grantsdst4, grantspin4, grants6, grantsdst6, grantspin6, drop"
    );
    let src = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9));
    fw.grant(&[opening(src, 22, 60)]).unwrap();
    fw.init(0).unwrap();
    fw.init(0).unwrap();
    assert_eq!(rule_count(&ns, "inet", "pt_init", "input"), rules);
    let protected = nft(&ns, &["-j", "list", "set", "inet", "pt_init", "protected"]);
    assert_eq!(protected.matches("concat").count(), 2, "{protected}");

    // A new daemon: new instance, init again, the kernel-timed grant is still there.
    drop(fw);
    let mut restarted = backend(&ns, cfg);
    let listed = restarted.list().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].rule.source, src);
    assert!(listed[0].timeout_secs > 50);
}

#[test]
fn changed_priority_recreates_the_chain_and_keeps_grants() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("nfprio");
    let mut fw = backend(&ns, config("pt_prio", &["tcp/22"]));
    fw.grant(&[opening(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 22, 60)])
        .unwrap();
    let mut moved = backend(
        &ns,
        NftablesConfig {
            priority: 5,
            ..config("pt_prio", &["tcp/22"])
        },
    );
    let chain = nft(&ns, &["-j", "list", "chain", "inet", "pt_prio", "input"]);
    assert!(chain.contains("\"prio\": 5"), "{chain}");
    assert_eq!(moved.list().unwrap().len(), 1);
}

#[test]
fn flush_and_revoke_remove_grants_and_missing_ones_are_fine() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("nfflush");
    let mut fw = backend(&ns, config("pt_flush", &["tcp/22"]));
    let a = opening("192.0.2.1".parse().unwrap(), 22, 60);
    let b = opening("2001:db8::1".parse().unwrap(), 22, 60);
    let c = opening("192.0.2.3".parse().unwrap(), 443, 60);
    fw.grant(&[a.clone(), b.clone(), c.clone()]).unwrap();
    assert_eq!(fw.list().unwrap().len(), 3);
    let never_granted = opening("192.0.2.99".parse().unwrap(), 22, 60).rule;
    fw.revoke(&[c.rule.clone(), never_granted.clone()]).unwrap();
    fw.revoke(&[never_granted]).unwrap();
    assert_eq!(fw.list().unwrap().len(), 2);
    fw.flush().unwrap();
    assert!(fw.list().unwrap().is_empty());
    // The table stays usable.
    fw.grant(&[a]).unwrap();
    assert_eq!(fw.list().unwrap().len(), 1);
}

#[test]
fn a_burst_of_500_grants_is_one_transaction() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("nfburst");
    let mut fw = backend(&ns, config("pt_burst", &["tcp/22"]));
    let burst: Vec<Opening> = (0..500u32)
        .map(|i| {
            let source = if i % 5 == 0 {
                IpAddr::V6(format!("2001:db8::{:x}", i + 1).parse().unwrap())
            } else {
                IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
            };
            opening(source, 22, 60)
        })
        .collect();
    let before = fw.ruleset_generation().unwrap();
    let started = Instant::now();
    fw.grant(&burst).unwrap();
    let took = started.elapsed();
    let after = fw.ruleset_generation().unwrap();
    assert_eq!(
        after.wrapping_sub(before),
        1,
        "a burst must be exactly one kernel transaction"
    );
    assert_eq!(fw.list().unwrap().len(), 500);
    eprintln!("500 grants in {took:?}");
}

#[test]
fn a_failing_batch_leaves_nothing_applied() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("nffail");
    let mut fw = backend(&ns, config("pt_fail", &["tcp/22"]));
    // Break the table: the IPv6 grant set disappears (its rule must go first).
    nft(&ns, &["flush", "chain", "inet", "pt_fail", "input"]);
    nft(&ns, &["delete", "set", "inet", "pt_fail", "grants6"]);
    let before = fw.ruleset_generation().unwrap();
    let v4 = opening("192.0.2.1".parse().unwrap(), 22, 60);
    let v6 = opening("2001:db8::1".parse().unwrap(), 22, 60);
    let err = fw.grant(&[v4.clone(), v6]).unwrap_err();
    assert!(
        err.to_string().contains("grants6")
            && err
                .to_string()
                .contains("Nothing of this batch was applied"),
        "{err}"
    );
    assert_eq!(
        fw.ruleset_generation().unwrap(),
        before,
        "a failed batch must not commit"
    );
    assert!(
        fw.list().unwrap().is_empty(),
        "IPv4 half of a failed batch was applied"
    );
    // init repairs the table; grants work again.
    fw.init(0).unwrap();
    fw.grant(&[v4]).unwrap();
    assert_eq!(fw.list().unwrap().len(), 1);
}

#[test]
fn the_nft_path_does_the_same() {
    if !require_root() {
        return;
    }
    let p = pair("nfcli");
    let _listener = tcp_listen(&p.server, 2203);
    let cfg = NftablesConfig {
        apply_with: ApplyWith::Nft,
        ..config("pt_cli", &["tcp/2203"])
    };
    let mut fw = backend(&p.server, cfg);
    let server = IpAddr::V4(p.server_ip);
    assert!(!tcp_connect_ok(&p.client, server, 2203, CONNECT));
    let grant = opening(IpAddr::V4(p.client_ip), 2203, 30);
    fw.grant(std::slice::from_ref(&grant)).unwrap();
    fw.grant(std::slice::from_ref(&grant)).unwrap();
    assert!(tcp_connect_ok(&p.client, server, 2203, CONNECT));
    assert_eq!(fw.list().unwrap().len(), 1);
    fw.revoke(&[
        grant.rule.clone(),
        opening("192.0.2.5".parse().unwrap(), 1, 1).rule,
    ])
    .unwrap();
    assert!(!tcp_connect_ok(&p.client, server, 2203, CONNECT));
    fw.grant(&[grant]).unwrap();
    fw.flush().unwrap();
    assert!(fw.list().unwrap().is_empty());
}

#[test]
fn a_users_drop_policy_shadows_grants_unless_it_accepts_the_grant_mark() {
    if !require_root() {
        return;
    }
    let p = pair("nfshadow");
    let _listener = tcp_listen(&p.server, 2204);
    // The user's own firewall: drop everything on input except established.
    p.server.run_ok(&["nft", "add", "table", "inet", "userfw"]);
    p.server.run_ok(&[
        "nft",
        "add",
        "chain",
        "inet",
        "userfw",
        "in",
        "{ type filter hook input priority 0; policy drop; }",
    ]);
    p.server.run_ok(&[
        "nft",
        "add",
        "rule",
        "inet",
        "userfw",
        "in",
        "ct",
        "state",
        "established,related",
        "accept",
    ]);

    let cfg = NftablesConfig {
        grant_mark: Some(0x2000_0000),
        ..config("pt_shadow", &["tcp/2204"])
    };
    let mut fw = backend(&p.server, cfg);
    let warnings = fw.shadowing_warnings().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].to_string().contains("nft inet userfw in"),
        "{}",
        warnings[0]
    );

    let server = IpAddr::V4(p.server_ip);
    fw.grant(&[opening(IpAddr::V4(p.client_ip), 2204, 30)])
        .unwrap();
    assert!(
        !tcp_connect_ok(&p.client, server, 2204, CONNECT),
        "the user's drop policy wins over postern's accept"
    );

    // The documented fix: accept postern's mark in the user's chain.
    p.server.run_ok(&[
        "nft",
        "add",
        "rule",
        "inet",
        "userfw",
        "in",
        "meta",
        "mark",
        "&",
        "0x20000000",
        "==",
        "0x20000000",
        "accept",
    ]);
    assert!(fw.shadowing_warnings().unwrap().is_empty());
    assert!(tcp_connect_ok(&p.client, server, 2204, CONNECT));
}

#[test]
fn an_ip_table_refuses_ipv6_grants_before_touching_the_kernel() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("nffam");
    let mut fw = backend(
        &ns,
        NftablesConfig {
            family: TableFamily::Ip,
            ..config("pt_fam", &["tcp/22"])
        },
    );
    let v4 = opening("192.0.2.1".parse().unwrap(), 22, 60);
    let v6 = opening("2001:db8::1".parse().unwrap(), 22, 60);
    assert!(matches!(
        fw.grant(&[v4.clone(), v6]),
        Err(FirewallError::Unsupported { .. })
    ));
    assert!(fw.list().unwrap().is_empty());
    fw.grant(&[v4]).unwrap();
    assert_eq!(fw.list().unwrap().len(), 1);
}

/// Clears CAP_NET_ADMIN from the calling thread's effective set (capabilities
/// are per thread, so the rest of the test process keeps it).
fn drop_net_admin_in_this_thread() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_ADMIN: u32 = 12;
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget/capset with a v3 header and two data structs, as the ABI requires.
    unsafe {
        assert_eq!(
            libc::syscall(
                libc::SYS_capget,
                &mut header as *mut Header,
                data.as_mut_ptr()
            ),
            0
        );
        data[0].effective &= !(1 << CAP_NET_ADMIN);
        assert_eq!(
            libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()),
            0
        );
    }
}

#[test]
fn without_cap_net_admin_a_netlink_grant_says_what_is_missing() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("nfcap");
    let fw = backend(&ns, config("pt_cap", &["tcp/22"]));
    let result = std::thread::spawn(move || {
        let mut fw = fw;
        drop_net_admin_in_this_thread();
        fw.grant(&[opening("192.0.2.1".parse().unwrap(), 22, 60)])
    })
    .join()
    .unwrap();
    match result {
        Err(e @ FirewallError::Missing { .. }) => {
            assert!(e.to_string().contains("CAP_NET_ADMIN"), "{e}")
        }
        other => panic!("expected Missing, got {other:?}"),
    }
}

/// ENABLE_DESTINATION_RULE: a grant bound to address A of the server opens
/// the port at A only; the server's other address B stays closed. It lists
/// back with its destination and is revoked by it.
#[test]
fn destination_bound_grant_opens_only_that_address() {
    if !require_root() {
        return;
    }
    let p = pair("nfdst");
    let _listener = tcp_listen(&p.server, 2207);
    let b = Ipv4Addr::new(198, 51, 100, 7);
    p.server
        .run_ok(&["ip", "addr", "add", &format!("{b}/32"), "dev", "v1"]);
    p.client
        .run_ok(&["ip", "route", "add", &format!("{b}/32"), "dev", "v0"]);
    let mut fw = backend(&p.server, config("pt_dst", &["tcp/2207"]));
    let (a, b) = (IpAddr::V4(p.server_ip), IpAddr::V4(b));
    let mut o = opening(IpAddr::V4(p.client_ip), 2207, 30);
    o.rule.destination = Some(a);
    fw.grant(std::slice::from_ref(&o)).unwrap();
    assert!(tcp_connect_ok(&p.client, a, 2207, CONNECT), "A must open");
    assert!(
        !tcp_connect_ok(&p.client, b, 2207, CONNECT),
        "B must stay closed"
    );
    let listed = fw.list().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].rule, o.rule);
    fw.revoke(&[o.rule.clone()]).unwrap();
    assert!(fw.list().unwrap().is_empty());
    assert!(
        !tcp_connect_ok(&p.client, a, 2207, CONNECT),
        "revoked, A must close"
    );
}

/// Blocking (posternd's `[attack] block_secs`), on both paths: a blocked source
/// can no longer open a connection to an unprotected port, a grant of it and
/// a connection it had already still work (the drop comes after the grant
/// accepts and `ct state established`); the kernel lifts the block at its timeout; init keeps live
/// blocks, init without blocking deletes the sets, and flush empties them.
#[test]
fn a_blocked_source_is_dropped_until_the_kernel_lifts_the_block() {
    if !require_root() {
        return;
    }
    for apply_with in [ApplyWith::Netlink, ApplyWith::Nft] {
        let p = pair("nfblk");
        let _open = tcp_listen(&p.server, 2210);
        let _granted = tcp_listen(&p.server, 2211);
        let table = "pt_blk";
        let mut cfg = NftablesConfig {
            apply_with,
            ..config(table, &["tcp/2211"])
        };
        let mut fw = NftablesBackend::new(cfg.clone())
            .unwrap()
            .in_netns(p.server.path());
        assert!(
            fw.block(&[]).is_err(),
            "{apply_with:?}: blocking before enable_blocking must fail"
        );
        fw.enable_blocking().unwrap();
        fw.init(0).unwrap();
        let (server, client) = (IpAddr::V4(p.server_ip), IpAddr::V4(p.client_ip));
        assert!(tcp_connect_ok(&p.client, server, 2210, CONNECT));
        fw.grant(&[opening(client, 2211, 60)]).unwrap();
        let block = |secs| spa_core::firewall::Block {
            source: client,
            timeout_secs: secs,
            expires_at: 0,
        };
        let (mut held, mut far) = postern_e2e::tcp_established(&p, 2212);
        fw.block(&[block(3)]).unwrap();
        let blocked_at = Instant::now();
        assert!(
            postern_e2e::tcp_carries(&mut held, &mut far)
                && postern_e2e::tcp_carries(&mut far, &mut held),
            "{apply_with:?}: a block cut an established connection"
        );
        let listed = nft(&p.server, &["list", "set", "inet", table, "block4"]);
        assert!(
            listed.contains(&format!("{client} timeout 3s")),
            "{apply_with:?}: {listed}"
        );
        assert!(
            !tcp_connect_ok(&p.client, server, 2210, CONNECT),
            "{apply_with:?}: a blocked source still connects"
        );
        assert!(
            tcp_connect_ok(&p.client, server, 2211, CONNECT),
            "{apply_with:?}: a block cut a grant"
        );
        // Re-init keeps the live block.
        fw.init(0).unwrap();
        assert!(!tcp_connect_ok(&p.client, server, 2210, CONNECT));
        let lifted = wait_until(Duration::from_secs(8), Duration::from_millis(100), || {
            tcp_connect_ok(&p.client, server, 2210, Duration::from_millis(200))
        });
        assert!(lifted, "{apply_with:?}: the kernel did not lift the block");
        assert!(blocked_at.elapsed() >= Duration::from_millis(1500));
        // Blocked again: refreshed to the new timeout; flush lifts it.
        fw.block(&[block(100)]).unwrap();
        fw.block(&[block(200)]).unwrap();
        let listed = nft(&p.server, &["list", "set", "inet", table, "block4"]);
        assert!(listed.contains("timeout 3m20s"), "{apply_with:?}: {listed}");
        assert!(!tcp_connect_ok(&p.client, server, 2210, CONNECT));
        // IPv6: its own set; the client's IPv4 address stays blocked meanwhile.
        let server6 = IpAddr::V6(p.server_ip6);
        assert!(tcp_connect_ok(&p.client, server6, 2210, CONNECT));
        fw.block(&[spa_core::firewall::Block {
            source: IpAddr::V6(p.client_ip6),
            timeout_secs: 100,
            expires_at: 0,
        }])
        .unwrap();
        let listed = nft(&p.server, &["list", "set", "inet", table, "block6"]);
        assert!(
            listed.contains(&p.client_ip6.to_string()),
            "{apply_with:?}: {listed}"
        );
        assert!(
            !tcp_connect_ok(&p.client, server6, 2210, CONNECT),
            "{apply_with:?}: a blocked IPv6 source still connects"
        );
        fw.flush().unwrap();
        assert!(tcp_connect_ok(&p.client, server, 2210, CONNECT));
        assert!(tcp_connect_ok(&p.client, server6, 2210, CONNECT));
        // A start without blocking removes the sets and their rules.
        fw.block(&[block(100)]).unwrap();
        cfg.block_sources = false;
        let mut off = NftablesBackend::new(cfg).unwrap().in_netns(p.server.path());
        off.init(0).unwrap();
        let ruleset = nft(&p.server, &["list", "table", "inet", table]);
        assert!(
            !ruleset.contains("@block4") && !ruleset.contains("set block4"),
            "{apply_with:?}: {ruleset}"
        );
        assert!(tcp_connect_ok(&p.client, server, 2210, CONNECT));
        assert!(off.block(&[block(5)]).is_err());
    }
}
