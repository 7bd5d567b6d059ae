//! fwknopd.conf's rule-shaping settings, end to end with the real fwknop
//! client, posternd started from fwknopd.conf + access.conf (iptables, the
//! FWKNOP_* chains) and real iptables in namespaces the tests create:
//!
//! - ENABLE_DESTINATION_RULE: the server has two addresses A and B; a knock
//!   sent to A opens the port at A only, B stays closed;
//! - ENABLE_IPT_OUTPUT: with the server's OUTPUT policy DROP, the grant's
//!   OUTPUT rule is what lets the replies out (closed → open → closed);
//! - FORWARD_ALL (with NAT_ALLOW INTERNAL:*): one forwarded knock opens two
//!   different ports of the inner host (also with a postern.toml and the
//!   nftables action);
//! - ENABLE_RULE_PREPEND: the newer grant is listed first with Y, last with N;
//! - RULES_CHECK_THRESHOLD: an expired rule added by hand goes at a full check,
//!   and with 0 it stays while posternd's own grants still expire.

use postern_e2e::posternd::{
    access_conf, connects, fwknop_to, runnable, udp_capture, wait_connects, ConfDir, Posternd,
    Service, SPA_PORT,
};
use postern_e2e::routed::routed;
use postern_e2e::scenario::SpaKeys;
use postern_e2e::{tcp_listen, wait_until, Netns};
use std::net::Ipv4Addr;
use std::time::Duration;

/// FW_ACCESS_TIMEOUT of every grant.
const TIMEOUT: u64 = 3;

/// posternd in `ns` from a fwknopd.conf (UDP server on the wildcard address,
/// fwknopd's iptables chains, flushed at start and exit) plus `extra` lines,
/// and an access.conf of `stanza`.
struct Daemon {
    d: Posternd,
    conf: ConfDir,
    /// The main config file's name in `conf`.
    main: &'static str,
}

impl Daemon {
    fn start(ns: &Netns, extra: &str, stanza: &str) -> Daemon {
        let conf = ConfDir::new();
        let run = conf.run_dir().display().to_string();
        conf.write(
            "fwknopd.conf",
            &format!(
                "ENABLE_UDP_SERVER Y;\nUDPSERV_PORT {SPA_PORT};\nMAX_SPA_PACKET_AGE 120;\n\
                 FWKNOP_RUN_DIR {run};\nFWKNOP_PID_FILE {run}/fwknopd.pid;\n\
                 DIGEST_FILE {run}/digest.cache;\nFLUSH_IPT_AT_INIT Y;\nFLUSH_IPT_AT_EXIT Y;\n{extra}"
            ),
        );
        conf.write("access.conf", stanza);
        let args = [
            "-c".to_string(),
            conf.arg("fwknopd.conf"),
            "-a".into(),
            conf.arg("access.conf"),
            "-v".into(),
        ];
        let d = Posternd::start(ns, &args, conf.dir.path());
        Daemon {
            d,
            conf,
            main: "fwknopd.conf",
        }
    }

    /// posternd from a native postern.toml: `[server]` lines `server`, a UDP
    /// capture on the wildcard address, then `body` (actions).
    fn start_toml(ns: &Netns, server: &str, body: &str, stanza: &str) -> Daemon {
        let conf = ConfDir::new();
        conf.write("access.conf", stanza);
        conf.write(
            "postern.toml",
            &format!(
                "access_file = \"{}\"\n\n[server]\nmax_packet_age = 120\nrun_dir = \"{}\"\n{server}\n\
                 [replay]\ntype = \"memory\"\n\n{}\n{body}",
                conf.arg("access.conf"),
                conf.run_dir().display(),
                udp_capture(SPA_PORT),
            ),
        );
        let args = ["-c".to_string(), conf.arg("postern.toml"), "-v".into()];
        let d = Posternd::start(ns, &args, conf.dir.path());
        Daemon {
            d,
            conf,
            main: "postern.toml",
        }
    }

    /// A failure message with the config, the daemon's log and the rules.
    fn ctx(&self, ns: &Netns, msg: &str) -> String {
        let read = |n: &str| std::fs::read_to_string(self.conf.path(n)).unwrap_or_default();
        let rules = |argv: &[&str]| String::from_utf8_lossy(&ns.run(argv).stdout).into_owned();
        format!(
            "{msg}\n--- {} ---\n{}\n--- posternd log ---\n{}\n--- iptables-save ---\n{}\n--- nft ---\n{}",
            self.main,
            read(self.main),
            self.d.log_text(),
            rules(&["iptables-save"]),
            rules(&["nft", "list", "ruleset"]),
        )
    }
}

fn iptables_s(ns: &Netns, chain: &str) -> String {
    String::from_utf8_lossy(&ns.run(&["iptables", "-w", "5", "-S", chain]).stdout).into_owned()
}

fn request(port: u16) -> Vec<String> {
    vec!["-A".into(), format!("tcp/{port}")]
}

#[test]
fn destination_rule_opens_only_the_address_knocked_at() {
    if !runnable(&["fwknop", "iptables"]) {
        return;
    }
    const PORT: u16 = 22051;
    let svc = Service::iptables_guarded("prd", PORT);
    let (server, client) = (svc.server(), svc.client());
    let (a, b, client_ip) = (
        svc.pair.server_ip,
        Ipv4Addr::new(198, 51, 100, 7),
        svc.pair.client_ip,
    );
    server.run_ok(&["ip", "addr", "add", &format!("{b}/32"), "dev", "v1"]);
    client.run_ok(&["ip", "route", "add", &format!("{b}/32"), "dev", "v0"]);
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let daemon = Daemon::start(
        server,
        "ENABLE_DESTINATION_RULE Y;\n",
        &access_conf(&keys, Some(&format!("tcp/{PORT}")), TIMEOUT, ""),
    );
    let ctx = |m: &str| daemon.ctx(server, m);
    for addr in [a, b] {
        assert!(
            !connects(client, addr, PORT),
            "{}",
            ctx(&format!("{addr} open before any knock"))
        );
    }

    fwknop_to(client, &keys, client_ip, a, &request(PORT));
    assert!(
        wait_connects(client, a, PORT, true, Duration::from_secs(5)),
        "{}",
        ctx("the knocked address A did not open")
    );
    assert!(
        !connects(client, b, PORT),
        "{}",
        ctx("B opened by a knock sent to A")
    );
    let rules = iptables_s(server, "FWKNOP_INPUT");
    assert!(
        rules.contains(&format!("-s {client_ip}/32 -d {a}/32 -p tcp")),
        "{}",
        ctx("no -d A in the grant")
    );
    assert!(
        wait_connects(client, a, PORT, false, Duration::from_secs(TIMEOUT + 8)),
        "{}",
        ctx("A still open long after FW_ACCESS_TIMEOUT")
    );

    // The other way round: a knock sent to B opens B only.
    fwknop_to(client, &keys, client_ip, b, &request(PORT));
    assert!(
        wait_connects(client, b, PORT, true, Duration::from_secs(5)),
        "{}",
        ctx("B did not open after a knock sent to B")
    );
    assert!(
        !connects(client, a, PORT),
        "{}",
        ctx("A opened by a knock sent to B")
    );
}

#[test]
fn output_rule_lets_replies_out_under_an_output_drop_policy() {
    if !runnable(&["fwknop", "iptables"]) {
        return;
    }
    const PORT: u16 = 22052;
    let svc = Service::iptables_guarded("pro", PORT);
    let (server, client) = (svc.server(), svc.client());
    server.run_ok(&["iptables", "-w", "5", "-P", "OUTPUT", "DROP"]);
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let daemon = Daemon::start(
        server,
        "ENABLE_IPT_OUTPUT Y;\n",
        &access_conf(&keys, Some(&format!("tcp/{PORT}")), TIMEOUT, ""),
    );
    let ctx = |m: &str| daemon.ctx(server, m);
    assert!(
        !svc.reachable(Duration::from_millis(700)),
        "{}",
        ctx("open before the knock")
    );

    fwknop_to(
        client,
        &keys,
        svc.pair.client_ip,
        svc.pair.server_ip,
        &request(PORT),
    );
    assert!(
        svc.wait_reachable(true, Duration::from_secs(5)),
        "{}",
        ctx("not reachable after the knock (replies dropped by OUTPUT?)")
    );
    let out = iptables_s(server, "FWKNOP_OUTPUT");
    assert!(
        out.contains(&format!(
            "-d {}/32 -p tcp -m tcp --sport {PORT}",
            svc.pair.client_ip
        )),
        "{}",
        ctx("no OUTPUT rule for the grant")
    );
    assert!(
        svc.wait_reachable(false, Duration::from_secs(TIMEOUT + 8)),
        "{}",
        ctx("still reachable long after FW_ACCESS_TIMEOUT")
    );
    assert!(
        !iptables_s(server, "FWKNOP_OUTPUT").contains("--sport"),
        "{}",
        ctx("the OUTPUT rule outlived its grant")
    );
}

#[test]
fn forward_all_opens_every_port_of_the_inner_host() {
    if !runnable(&["fwknop", "iptables", "nft"]) {
        return;
    }
    for nftables in [false, true] {
        forward_all_cycle(nftables);
    }
}

/// With fwknopd's files (iptables, under a FORWARD DROP policy) or a postern.toml
/// with the nftables action (its own table: another table's FORWARD DROP would
/// still drop, so the gateway has none).
fn forward_all_cycle(nftables: bool) {
    let t = routed(if nftables { "prfn" } else { "prfi" }, true);
    let (gw, client) = (t.gateway(), t.client());
    let (gw_ip, client_ip, internal) = (t.pair.server_ip, t.pair.client_ip, t.internal_ip);
    let (_ssh, _pg) = (tcp_listen(&t.internal, 22), tcp_listen(&t.internal, 5432));
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let stanza = access_conf(
        &keys,
        None,
        TIMEOUT,
        &format!("FORWARD_ALL Y\nNAT_ALLOW {internal}:*\n"),
    );
    let daemon = if nftables {
        Daemon::start_toml(
            gw,
            "[server.nat]\nforwarding = true\n",
            "[[action]]\ntype = \"nftables\"\n",
            &stanza,
        )
    } else {
        // A router's FORWARD policy: only replies and what postern accepts pass.
        gw.run_ok(&["iptables", "-w", "5", "-P", "FORWARD", "DROP"]);
        gw.run_ok(&[
            "iptables",
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
        Daemon::start(gw, "ENABLE_IPT_FORWARDING Y;\n", &stanza)
    };
    let ctx = |m: &str| daemon.ctx(gw, &format!("nftables {nftables}: {m}"));
    for port in [22, 5432] {
        assert!(
            !connects(client, gw_ip, port),
            "{}",
            ctx(&format!("gateway:{port} open before the knock"))
        );
    }
    let mut req = request(22);
    req.extend(["-N".into(), format!("{internal}:22")]);
    fwknop_to(client, &keys, client_ip, gw_ip, &req);
    for port in [22, 5432] {
        assert!(
            wait_connects(client, gw_ip, port, true, Duration::from_secs(5)),
            "{}",
            ctx(&format!(
                "gateway:{port} not forwarded to the inner host after the knock"
            ))
        );
    }
    for port in [22, 5432] {
        assert!(
            wait_connects(client, gw_ip, port, false, Duration::from_secs(TIMEOUT + 8)),
            "{}",
            ctx(&format!(
                "gateway:{port} still forwarded long after FW_ACCESS_TIMEOUT"
            ))
        );
    }
}

#[test]
fn prepend_puts_the_newest_grant_first_and_append_last() {
    if !runnable(&["fwknop", "iptables"]) {
        return;
    }
    const PORT: u16 = 22053;
    for (prepend, newest_first) in [("Y", true), ("N", false)] {
        let svc = Service::iptables_guarded("prp", PORT);
        let (server, client) = (svc.server(), svc.client());
        let keys = SpaKeys::generate("cbc", Some("sha256"));
        let daemon = Daemon::start(
            server,
            &format!("ENABLE_RULE_PREPEND {prepend};\n"),
            &access_conf(&keys, None, 30, ""),
        );
        let (c, s) = (svc.pair.client_ip, svc.pair.server_ip);
        fwknop_to(client, &keys, c, s, &request(PORT));
        assert!(
            svc.wait_reachable(true, Duration::from_secs(5)),
            "{}",
            daemon.ctx(server, "first knock")
        );
        fwknop_to(client, &keys, c, s, &request(PORT + 1));
        let listing = || {
            String::from_utf8_lossy(
                &server
                    .run(&[
                        "iptables",
                        "-w",
                        "5",
                        "-n",
                        "-L",
                        "FWKNOP_INPUT",
                        "--line-numbers",
                    ])
                    .stdout,
            )
            .into_owned()
        };
        assert!(
            wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
                listing().contains(&format!("dpt:{}", PORT + 1))
            }),
            "{}",
            daemon.ctx(server, "second grant not in the chain")
        );
        let text = listing();
        let line_of = |port: u16| {
            text.lines()
                .find(|l| {
                    l.contains(&format!("dpt:{port} ")) || l.ends_with(&format!("dpt:{port}"))
                })
                .and_then(|l| l.split_whitespace().next()?.parse::<u32>().ok())
        };
        let (first, second) = (line_of(PORT), line_of(PORT + 1));
        assert!(first.is_some() && second.is_some(), "{text}");
        assert_eq!(
            second < first,
            newest_first,
            "ENABLE_RULE_PREPEND {prepend}:\n{text}"
        );
    }
}

#[test]
fn rules_check_threshold_removes_expired_rules_added_by_hand() {
    if !runnable(&["fwknop", "iptables"]) {
        return;
    }
    const PORT: u16 = 22054;
    for threshold in [2u32, 0] {
        let svc = Service::iptables_guarded("prc", PORT);
        let (server, client) = (svc.server(), svc.client());
        let keys = SpaKeys::generate("cbc", Some("sha256"));
        let daemon = Daemon::start(
            server,
            &format!("RULES_CHECK_THRESHOLD {threshold};\n"),
            &access_conf(&keys, Some(&format!("tcp/{PORT}")), TIMEOUT, ""),
        );
        let ctx = |m: &str| daemon.ctx(server, &format!("RULES_CHECK_THRESHOLD {threshold}: {m}"));
        // Another program's rule, expired long ago, in posternd's chain.
        server.run_ok(&[
            "iptables",
            "-w",
            "5",
            "-A",
            "FWKNOP_INPUT",
            "-s",
            "192.0.2.99/32",
            "-p",
            "tcp",
            "--dport",
            "9",
            "-m",
            "comment",
            "--comment",
            "_exp_1000000000",
            "-j",
            "ACCEPT",
        ]);
        let by_hand_present = || iptables_s(server, "FWKNOP_INPUT").contains("192.0.2.99");
        if threshold > 0 {
            assert!(
                wait_until(Duration::from_secs(6), Duration::from_millis(100), || {
                    !by_hand_present()
                }),
                "{}",
                ctx("the expired rule added by hand is still there")
            );
        } else {
            assert!(
                !wait_until(Duration::from_secs(3), Duration::from_millis(100), || {
                    !by_hand_present()
                }),
                "{}",
                ctx("removed although full checks are off")
            );
        }
        // posternd's own grants expire either way.
        fwknop_to(
            client,
            &keys,
            svc.pair.client_ip,
            svc.pair.server_ip,
            &request(PORT),
        );
        assert!(
            svc.wait_reachable(true, Duration::from_secs(5)),
            "{}",
            ctx("not opened")
        );
        assert!(
            svc.wait_reachable(false, Duration::from_secs(TIMEOUT + 8)),
            "{}",
            ctx("own grant still open long after FW_ACCESS_TIMEOUT")
        );
    }
}
