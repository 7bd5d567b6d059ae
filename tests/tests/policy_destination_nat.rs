//! Policy end to end, with the real fwknop client and posternd's UDP capture on
//! the wildcard address (the default):
//!
//! - DESTINATION: the server has two addresses A and B, the stanza says
//!   `DESTINATION A`; a knock sent to B opens nothing, one sent to A opens the
//!   port (closed → open → closed);
//! - NAT targets: with `OPEN_PORTS tcp/22` and `RESTRICT_PORTS tcp/3306`,
//!   `--nat-local --nat-port 22 -A tcp/3306` (reaching the gateway's 3306) and
//!   `-A tcp/22 -N INTERNAL:5432` are refused; `-N INTERNAL:22` (a port
//!   OPEN_PORTS allows) and, from a stanza with `NAT_ALLOW INTERNAL:5432`,
//!   `-N INTERNAL:5432` still work;
//! - BLACKLIST (fwknopd.conf): a valid knock from a blacklisted address opens
//!   nothing, the same client's knock from another address opens the port.

use postern_e2e::posternd::{
    access_conf, connects, fwknop_to, nftables_action, runnable, udp_capture, wait_connects,
    ConfDir, Posternd, Service, Setup, SPA_PORT,
};
use postern_e2e::scenario::SpaKeys;
use postern_e2e::tcp_listen;
use std::net::Ipv4Addr;
use std::time::Duration;

/// FW_ACCESS_TIMEOUT of every grant.
const TIMEOUT: u64 = 3;

#[test]
fn destination_is_enforced_on_a_wildcard_udp_capture() {
    if !runnable(&["fwknop", "nft"]) {
        return;
    }
    const PORT: u16 = 22031;
    let svc = Service::open("pdd", PORT);
    let setup = Setup::new(
        svc,
        TIMEOUT,
        "memory",
        &format!("{}\n{}", udp_capture(SPA_PORT), nftables_action(PORT)),
    );
    let (a, b) = (setup.svc.pair.server_ip, Ipv4Addr::new(198, 51, 100, 7));
    setup.conf.write(
        "access.conf",
        &access_conf(
            &setup.keys,
            Some(&format!("tcp/{PORT}")),
            TIMEOUT,
            &format!("DESTINATION {a}\n"),
        ),
    );
    // B is the server's second address; the client reaches it over the veth.
    let b_s = b.to_string();
    setup
        .svc
        .server()
        .run_ok(&["ip", "addr", "add", &format!("{b_s}/32"), "dev", "v1"]);
    setup
        .svc
        .client()
        .run_ok(&["ip", "route", "add", &format!("{b_s}/32"), "dev", "v0"]);
    let d = setup.start();
    let (svc, client_ip) = (&setup.svc, setup.svc.pair.client_ip);
    let ctx = |m: &str| format!("{m}\n--- posternd log ---\n{}", d.log_text());
    let request = format!("tcp/{PORT}");

    assert!(
        !svc.reachable(Duration::from_millis(700)),
        "{}",
        ctx("open before any knock")
    );
    fwknop_to(svc.client(), &setup.keys, client_ip, b, &["-A", &request]);
    assert!(
        !svc.wait_reachable(true, Duration::from_secs(3)),
        "{}",
        ctx("a knock sent to B opened a DESTINATION A stanza")
    );
    assert!(
        d.wait_log(
            &format!("{b} is not in DESTINATION"),
            1,
            Duration::from_secs(5)
        ),
        "{}",
        ctx("no refusal logged for the knock to B")
    );

    fwknop_to(svc.client(), &setup.keys, client_ip, a, &["-A", &request]);
    assert!(
        svc.wait_reachable(true, Duration::from_secs(5)),
        "{}",
        ctx("a knock sent to A did not open the port")
    );
    assert!(
        svc.wait_reachable(false, Duration::from_secs(TIMEOUT + 8)),
        "{}",
        ctx("still open long after FW_ACCESS_TIMEOUT")
    );
}

#[test]
fn nat_grants_are_checked_at_what_they_reach() {
    if !runnable(&["fwknop", "nft"]) {
        return;
    }
    let t = postern_e2e::routed::routed("pdn", true);
    let (gw, client) = (t.gateway(), t.client());
    let (gw_ip, client_ip, internal) = (t.pair.server_ip, t.pair.client_ip, t.internal_ip);
    // Nothing listens on the gateway's 22 or 2222: only a DNAT makes them answer.
    let _gw_mysql = tcp_listen(gw, 3306);
    let _ssh = tcp_listen(&t.internal, 22);
    let _pg = tcp_listen(&t.internal, 5432);

    let plain = SpaKeys::generate("cbc", Some("sha256"));
    let listed = SpaKeys::generate("cbc", Some("sha256"));
    let conf = ConfDir::new();
    let access = format!(
        "{}\n{}",
        access_conf(&plain, Some("tcp/22"), TIMEOUT, "RESTRICT_PORTS tcp/3306\n"),
        access_conf(
            &listed,
            Some("tcp/2222"),
            TIMEOUT,
            &format!("NAT_ALLOW {internal}:5432\n")
        ),
    );
    conf.write("access.conf", &access);
    let toml = format!(
        "access_file = \"{access}\"\n\n[server]\nmax_packet_age = 120\nrun_dir = \"{run}\"\n\n\
         [server.nat]\nforwarding = true\nlocal = true\n\n[replay]\ntype = \"memory\"\n\n\
         {capture}\n[[action]]\ntype = \"nftables\"\nprotected = [\"tcp/3306\"]\n",
        access = conf.arg("access.conf"),
        run = conf.run_dir().display(),
        capture = udp_capture(SPA_PORT),
    );
    conf.write("postern.toml", &toml);
    let d = Posternd::start(
        gw,
        &["-c".into(), conf.arg("postern.toml"), "-v".into()],
        conf.dir.path(),
    );
    let ctx = |m: &str| {
        format!(
            "{m}\n--- access.conf ---\n{access}\n--- posternd log ---\n{}\n--- nft ---\n{}",
            d.log_text(),
            String::from_utf8_lossy(&gw.run(&["nft", "list", "ruleset"]).stdout)
        )
    };
    assert!(
        !connects(client, gw_ip, 22),
        "{}",
        ctx("gateway:22 open before any knock")
    );

    // Refused: each must leave gateway:22 closed, and say why.
    let internal_5432 = format!("{internal}:5432");
    let refused: [(&[&str], String); 2] = [
        (
            &["--nat-local", "--nat-port", "22", "-A", "tcp/3306"],
            "NAT leads to tcp/3306, which is in RESTRICT_PORTS".into(),
        ),
        (
            &["-A", "tcp/22", "-N", &internal_5432],
            format!("NAT target {internal} tcp/5432: tcp/5432 is not in OPEN_PORTS"),
        ),
    ];
    for (request, why) in &refused {
        fwknop_to(client, &plain, client_ip, gw_ip, request);
        assert!(
            !wait_connects(client, gw_ip, 22, true, Duration::from_secs(3)),
            "{}",
            ctx(&format!("{request:?} opened gateway:22"))
        );
        assert!(
            d.wait_log(why, 1, Duration::from_secs(5)),
            "{}",
            ctx(&format!("{request:?}: no `{why}` logged"))
        );
    }

    // Allowed: closed → open → closed.
    let internal_22 = format!("{internal}:22");
    let allowed: [(&SpaKeys, &[&str], u16); 2] = [
        (&plain, &["-A", "tcp/22", "-N", &internal_22], 22),
        (&listed, &["-A", "tcp/2222", "-N", &internal_5432], 2222),
    ];
    for (keys, request, outer) in allowed {
        assert!(
            !connects(client, gw_ip, outer),
            "{}",
            ctx(&format!("{outer} open before {request:?}"))
        );
        fwknop_to(client, keys, client_ip, gw_ip, request);
        assert!(
            wait_connects(client, gw_ip, outer, true, Duration::from_secs(5)),
            "{}",
            ctx(&format!("{request:?} did not open gateway:{outer}"))
        );
        assert!(
            wait_connects(
                client,
                gw_ip,
                outer,
                false,
                Duration::from_secs(TIMEOUT + 8)
            ),
            "{}",
            ctx(&format!(
                "gateway:{outer} still open long after FW_ACCESS_TIMEOUT"
            ))
        );
    }
}

#[test]
fn fwknopd_conf_blacklist_drops_a_valid_knock() {
    if !runnable(&["fwknop", "iptables"]) {
        return;
    }
    const PORT: u16 = 22032;
    let svc = Service::iptables_guarded("pdb", PORT);
    let (server_ip, client_ip) = (svc.pair.server_ip, svc.pair.client_ip);
    // The client's second address, not blacklisted; the server routes it back.
    let other = Ipv4Addr::new(192, 0, 2, 10);
    svc.client()
        .run_ok(&["ip", "addr", "add", &format!("{other}/32"), "dev", "v0"]);
    svc.server()
        .run_ok(&["ip", "route", "add", &format!("{other}/32"), "dev", "v1"]);

    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let dir = ConfDir::new();
    let run = dir.run_dir().display().to_string();
    let conf = format!(
        "ENABLE_UDP_SERVER Y;\nUDPSERV_PORT {SPA_PORT};\nMAX_SPA_PACKET_AGE 120;\n\
         FWKNOP_RUN_DIR {run};\nFWKNOP_PID_FILE {run}/fwknopd.pid;\nDIGEST_FILE {run}/digest.cache;\n\
         FLUSH_IPT_AT_INIT Y;\nFLUSH_IPT_AT_EXIT Y;\nBLACKLIST 203.0.113.0/24, {client_ip};\n"
    );
    dir.write("fwknopd.conf", &conf);
    dir.write(
        "access.conf",
        &access_conf(&keys, Some(&format!("tcp/{PORT}")), TIMEOUT, ""),
    );
    let d = Posternd::start(
        svc.server(),
        &[
            "-c".into(),
            dir.arg("fwknopd.conf"),
            "-a".into(),
            dir.arg("access.conf"),
            "-v".into(),
        ],
        dir.dir.path(),
    );
    let ctx = |m: &str| {
        format!(
            "{m}\n--- fwknopd.conf ---\n{conf}\n--- posternd log ---\n{}\n--- iptables ---\n{}",
            d.log_text(),
            svc.iptables_save()
        )
    };
    let request = format!("tcp/{PORT}");

    assert!(
        !connects(svc.client(), server_ip, PORT),
        "{}",
        ctx("open before any knock")
    );
    fwknop_to(svc.client(), &keys, client_ip, server_ip, &["-A", &request]);
    assert!(
        !wait_connects(svc.client(), server_ip, PORT, true, Duration::from_secs(3)),
        "{}",
        ctx("a blacklisted sender's knock opened the port")
    );
    assert!(
        d.wait_log(
            &format!("source {client_ip} is in BLACKLIST"),
            1,
            Duration::from_secs(5)
        ),
        "{}",
        ctx("no BLACKLIST refusal logged")
    );

    // The same client from its other address: its packets now come from `other`.
    svc.client().run_ok(&[
        "ip",
        "route",
        "replace",
        &format!("{server_ip}/32"),
        "dev",
        "v0",
        "src",
        &other.to_string(),
    ]);
    fwknop_to(svc.client(), &keys, other, server_ip, &["-A", &request]);
    assert!(
        wait_connects(svc.client(), server_ip, PORT, true, Duration::from_secs(5)),
        "{}",
        ctx("a knock from a sender not in BLACKLIST did not open the port")
    );
    assert!(
        wait_connects(
            svc.client(),
            server_ip,
            PORT,
            false,
            Duration::from_secs(TIMEOUT + 8)
        ),
        "{}",
        ctx("still open long after FW_ACCESS_TIMEOUT")
    );
}
