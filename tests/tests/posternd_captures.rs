//! posternd end to end, captures × actions: the real fwknop client knocks from a
//! client namespace; posternd (the workspace binary) runs in the server namespace
//! with a native postern.toml. For every combination: a TCP connect fails before
//! the knock, succeeds after it, and fails again after FW_ACCESS_TIMEOUT.
//!
//! - nftables (postern closes the port itself, `protected = ["tcp/PORT"]`) with
//!   each capture: UDP socket, pcap on `v1`, pcap on `any`, TCP (`fwknop -P tcp`);
//! - iptables (DROP + conntrack in INPUT like the fwknop tutorials; posternd's own
//!   chain jumped to from INPUT 1) with UDP and pcap;
//! - script: `[[action]] type = "script"` and access.conf CMD_CYCLE_OPEN/CLOSE,
//!   both inserting/deleting an iptables ACCEPT rule via argv (no shell).
//!
//! - SPA over HTTP (`-P http`) from fwknop and postern, through the TCP and the
//!   pcap capture with `spa_over_http`, and refused without it;
//! - pcap serves only packets coming in (fwknopd's default), all with
//!   `any_direction` (ENABLE_PCAP_ANY_DIRECTION).
//!
//! The combinations of one action run concurrently, each in its own namespaces.

use postern_e2e::posternd::{
    access_conf, caps_list, caps_mask, iptables_action, knock_ok, knock_with, nftables_action,
    pcap_capture, postern_toml, run_scenarios, runnable, saved_packet, tcp_capture, udp_capture,
    udp_send_all, ConfDir, Posternd, Service, Setup, CAP_NET_ADMIN, CAP_NET_RAW, SPA_PORT,
};
use postern_e2e::scenario::{describe, SpaClient, SpaKeys};
use postern_e2e::{tcp_listen, Pair};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

const PORT: u16 = 22022;
const TIMEOUT: u64 = 3;

#[derive(Clone, Copy, Debug)]
enum Capture {
    Udp,
    PcapV1,
    PcapAny,
    Tcp,
}

#[derive(Clone, Copy, Debug)]
enum Action {
    Nftables,
    Iptables,
    /// `[[action]] type = "script"` with open/close argv templates.
    Script,
    /// CMD_CYCLE_OPEN/CLOSE/TIMER in access.conf (action `log` as the required default).
    CmdCycle,
}

fn capture_toml(c: Capture) -> String {
    match c {
        Capture::Udp => udp_capture(SPA_PORT),
        Capture::PcapV1 => pcap_capture(Pair::SERVER_IF, SPA_PORT),
        Capture::PcapAny => pcap_capture("any", SPA_PORT),
        Capture::Tcp => tcp_capture(SPA_PORT),
    }
}

/// iptables ACCEPT rule for the knocking source, as argv templates ($SRC, $PORT
/// filled in by posternd; no shell involved).
fn ipt_rule(op: &str) -> String {
    format!("iptables {op} INPUT -s $SRC -p tcp --dport $PORT -j ACCEPT")
}

fn action_toml(a: Action) -> String {
    match a {
        Action::Nftables => nftables_action(PORT),
        Action::Iptables => iptables_action(),
        // The scripts run iptables: they get only the capabilities named here.
        Action::Script => format!(
            "[[action]]\ntype = \"script\"\ncapabilities = [\"net_admin\", \"net_raw\"]\nopen = \"{}\"\nclose = \"{}\"\n",
            ipt_rule("-I"),
            ipt_rule("-D")
        ),
        Action::CmdCycle => "[[action]]\ntype = \"log\"\n".into(),
    }
}

/// One full cycle: closed → knock → open → closed after the timeout.
fn cycle(capture: Capture, action: Action, tag: &str) {
    let svc = match action {
        Action::Nftables => Service::open(tag, PORT),
        _ => Service::iptables_guarded(tag, PORT),
    };
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let conf = ConfDir::new();
    let extra = match action {
        Action::CmdCycle => format!(
            "CMD_CYCLE_OPEN {}\nCMD_CYCLE_CLOSE {}\nCMD_CYCLE_TIMER {TIMEOUT}\nCMD_CAPABILITIES net_admin,net_raw\n",
            ipt_rule("-I"),
            ipt_rule("-D")
        ),
        _ => String::new(),
    };
    conf.write(
        "access.conf",
        &access_conf(&keys, Some(&format!("tcp/{PORT}")), TIMEOUT, &extra),
    );
    let toml = postern_toml(
        &conf,
        "access.conf",
        "memory",
        &format!("{}\n{}", capture_toml(capture), action_toml(action)),
    );
    conf.write("postern.toml", &toml);
    let mut d = Posternd::start(
        svc.server(),
        &["-c".into(), conf.arg("postern.toml"), "-v".into()],
        conf.dir.path(),
    );
    let ctx = |what: &str, d: &Posternd| {
        format!(
            "{capture:?} × {action:?}: {what}\n--- postern.toml ---\n{toml}\n--- posternd log ---\n{}\
             \n--- nft ruleset ---\n{}\n--- iptables-save ---\n{}",
            d.log_text(),
            svc.nft_ruleset(),
            svc.iptables_save()
        )
    };

    // The daemon keeps only what it needs, scripts' capabilities included.
    let want = match (capture, action) {
        (Capture::Udp | Capture::Tcp, Action::Nftables) => Some(caps_mask(&[CAP_NET_ADMIN])),
        _ => Some(caps_mask(&[CAP_NET_ADMIN, CAP_NET_RAW])),
    };
    if let Some(want) = want {
        let eff = d.cap_set("CapEff");
        assert_eq!(
            eff,
            want,
            "{}",
            ctx(
                &format!(
                    "CapEff is {:?}, expected {:?}",
                    caps_list(eff),
                    caps_list(want)
                ),
                &d
            )
        );
    }

    assert!(
        !svc.reachable(Duration::from_millis(700)),
        "{}",
        ctx("port reachable before the knock", &d)
    );
    let proto: &[&str] = match capture {
        Capture::Tcp => &["-P", "tcp"],
        _ => &[],
    };
    knock_ok(&svc, &keys, proto);
    let t0 = Instant::now();
    assert!(
        svc.wait_reachable(true, Duration::from_secs(5)),
        "{}",
        ctx("port not opened by the knock", &d)
    );
    let opened = t0.elapsed();
    if let Action::Iptables = action {
        // posternd's own chain, jumped to from INPUT position 1, holds the grant.
        let input = svc.server().run_ok(&["iptables", "-S", "INPUT"]);
        let first = input.lines().find(|l| l.starts_with("-A INPUT"));
        assert_eq!(
            first,
            Some("-A INPUT -j POSTERN_INPUT"),
            "{}",
            ctx("the jump to POSTERN_INPUT is not the first INPUT rule", &d)
        );
        let chain = svc.server().run_ok(&["iptables", "-S", "POSTERN_INPUT"]);
        assert!(
            chain
                .lines()
                .any(|l| l.contains(&format!("-s {}/32", svc.pair.client_ip))
                    && l.contains(&format!("--dport {PORT}"))
                    && l.contains("-j ACCEPT")),
            "{}",
            ctx("no grant rule for the client in POSTERN_INPUT", &d)
        );
    }
    assert!(
        svc.wait_reachable(false, Duration::from_secs(TIMEOUT + 8)),
        "{}",
        ctx("port still open long after FW_ACCESS_TIMEOUT", &d)
    );
    let closed = t0.elapsed();
    assert!(
        closed >= Duration::from_secs(TIMEOUT - 1),
        "{}",
        ctx(&format!("closed already after {closed:?}"), &d)
    );
    println!("  {capture:?} × {action:?}: open after {opened:?}, closed after {closed:?}");
    assert!(d.is_running(), "{}", ctx("posternd died", &d));
}

fn run(action: Action, captures: &[Capture], tag: &str) {
    if !runnable(&["fwknop", "iptables", "nft"]) {
        return;
    }
    let scenarios = captures
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let tag = format!("{tag}{i}");
            let f: Box<dyn FnOnce() + Send> = Box::new(move || cycle(c, action, &tag));
            (format!("{c:?} × {action:?}"), f)
        })
        .collect();
    run_scenarios(&format!("posternd captures × {action:?}"), scenarios);
}

#[test]
fn nftables_with_udp_pcap_and_tcp_captures() {
    run(
        Action::Nftables,
        &[
            Capture::Udp,
            Capture::PcapV1,
            Capture::PcapAny,
            Capture::Tcp,
        ],
        "cn",
    );
}

#[test]
fn iptables_with_udp_and_pcap_captures() {
    run(Action::Iptables, &[Capture::Udp, Capture::PcapV1], "ci");
}

#[test]
fn script_action_and_cmd_cycle() {
    if !runnable(&["fwknop", "iptables", "nft"]) {
        return;
    }
    let scenarios: Vec<(String, Box<dyn FnOnce() + Send>)> = vec![
        (
            "Udp × Script".into(),
            Box::new(|| cycle(Capture::Udp, Action::Script, "cs0")),
        ),
        (
            "Tcp × CmdCycle".into(),
            Box::new(|| cycle(Capture::Tcp, Action::CmdCycle, "cs1")),
        ),
    ];
    run_scenarios("posternd script actions", scenarios);
}

/// A knock the server host itself sends out (here: a captured packet naming the
/// client with `-a`, sent from the server namespace to the client) must not be
/// served by the pcap capture: like fwknopd, it looks only at packets coming in,
/// unless `any_direction` (ENABLE_PCAP_ANY_DIRECTION) says otherwise.
fn direction_case(tag: &str, any_direction: bool) {
    let capture = format!(
        "{}any_direction = {any_direction}\n",
        pcap_capture(Pair::SERVER_IF, SPA_PORT)
    );
    let s = Setup::new(
        Service::open(tag, PORT),
        TIMEOUT,
        "memory",
        &format!("{capture}\n{}", nftables_action(PORT)),
    );
    let (svc, keys, d) = (&s.svc, &s.keys, s.start());
    let client_ip = svc.pair.client_ip.to_string();
    let packet = saved_packet(svc, keys, &["-a", &client_ip]);
    let ctx = |what: &str| format!("any_direction {any_direction}: {what}\n{}", d.log_text());
    let outward = SocketAddr::new(IpAddr::V4(svc.pair.client_ip), SPA_PORT);
    udp_send_all(
        svc.server(),
        outward,
        vec![packet.clone()],
        0,
        Duration::ZERO,
        Duration::ZERO,
    );
    if any_direction {
        assert!(
            svc.wait_reachable(true, Duration::from_secs(4)),
            "{}",
            ctx("the outgoing knock was not served")
        );
        return;
    }
    assert!(
        svc.stays_closed(Duration::from_millis(1500)),
        "{}",
        ctx("an outgoing packet opened the port")
    );
    // The same packet coming in is served (so it was not seen before).
    let inward = SocketAddr::new(IpAddr::V4(svc.pair.server_ip), SPA_PORT);
    udp_send_all(
        svc.client(),
        inward,
        vec![packet],
        0,
        Duration::ZERO,
        Duration::ZERO,
    );
    assert!(
        svc.wait_reachable(true, Duration::from_secs(4)),
        "{}",
        ctx("the incoming knock was not served")
    );
}

#[test]
fn pcap_serves_incoming_packets_only_unless_any_direction() {
    if !runnable(&["fwknop", "nft"]) {
        return;
    }
    run_scenarios(
        "pcap direction",
        vec![
            (
                "inbound only".into(),
                Box::new(|| direction_case("cdi", false)),
            ),
            (
                "any direction".into(),
                Box::new(|| direction_case("cda", true)),
            ),
        ],
    );
}

/// SPA over HTTP (`-P http`: the packet as the path of a GET request over TCP).
/// With `spa_over_http` the TCP capture and the pcap capture (filter on TCP, a
/// plain listener taking the connection) open the port for fwknop and postern;
/// without it the same knock opens nothing.
fn http_case(tag: &str, client: SpaClient, pcap: bool, spa_over_http: bool) {
    let capture = if pcap {
        format!(
            "[[capture]]\ntype = \"pcap\"\ninterfaces = [\"{}\"]\nfilter = \"tcp port {SPA_PORT}\"\n",
            Pair::SERVER_IF
        )
    } else {
        tcp_capture(SPA_PORT)
    };
    let s = Setup::new(
        Service::open(tag, PORT),
        TIMEOUT,
        "memory",
        &format!("{capture}\n{}", nftables_action(PORT)),
    );
    let toml = std::fs::read_to_string(s.conf.path("postern.toml")).unwrap();
    s.conf.write(
        "postern.toml",
        &toml.replacen(
            "[server]\n",
            &format!("[server]\nspa_over_http = {spa_over_http}\n"),
            1,
        ),
    );
    let svc = &s.svc;
    // With pcap, something must take the TCP connection the client opens.
    let _listener = pcap.then(|| tcp_listen(svc.server(), SPA_PORT));
    let d = s.start();
    let out = knock_with(&client, svc, &s.keys, &["-P", "http"]);
    assert!(
        out.status.success(),
        "{} -P http: {}",
        client.name(),
        describe(&out)
    );
    let ctx = |what: &str| format!("{}, pcap {pcap}: {what}\n{}", client.name(), d.log_text());
    if spa_over_http {
        assert!(
            svc.wait_reachable(true, Duration::from_secs(4)),
            "{}",
            ctx("the HTTP knock did not open the port")
        );
        assert!(
            svc.wait_reachable(false, Duration::from_secs(TIMEOUT + 6)),
            "{}",
            ctx("the port did not close again")
        );
    } else {
        assert!(
            svc.stays_closed(Duration::from_millis(1500)),
            "{}",
            ctx("an HTTP knock opened the port without spa_over_http")
        );
    }
}

#[test]
fn spa_over_http_from_fwknop_and_postern() {
    if !runnable(&["fwknop", "nft"]) {
        return;
    }
    let postern = SpaClient::postern();
    let cases: Vec<(&str, SpaClient, bool, bool)> = vec![
        ("ch1", SpaClient::Fwknop, false, true),
        ("ch2", SpaClient::Fwknop, true, true),
        ("ch3", postern.clone(), false, true),
        ("ch4", postern, true, true),
        ("ch5", SpaClient::Fwknop, false, false),
    ];
    run_scenarios(
        "SPA over HTTP",
        cases
            .into_iter()
            .map(|(tag, client, pcap, on)| {
                let name = format!(
                    "{} via {}{}",
                    client.name(),
                    if pcap { "pcap" } else { "tcp" },
                    if on { "" } else { ", spa_over_http off" }
                );
                let run: Box<dyn FnOnce() + Send> =
                    Box::new(move || http_case(tag, client, pcap, on));
                (name, run)
            })
            .collect(),
    );
}

/// `$PKT_SRC` and `$DST` of a script action are the knock's own IP header
/// addresses, in production: a knock from the client namespace asking access
/// for another address (`-a`) runs the open command with the allowed address
/// (`$SRC`), the client's real address (`$PKT_SRC`) and the server address it
/// was sent to (`$DST`). Garbage of a real packet's length and a replay run
/// nothing and get no answer.
#[test]
fn script_action_gets_the_packets_addresses() {
    if !runnable(&["fwknop"]) {
        return;
    }
    let out_dir = tempfile::tempdir().expect("tempdir");
    let out = out_dir.path().join("addresses");
    let body = format!(
        "{}[[action]]\ntype = \"script\"\nopen = \"sh -c 'echo $SRC $PKT_SRC $DST >> {}'\"\n",
        udp_capture(SPA_PORT),
        out.display()
    );
    let s = Setup::new(Service::open("cpa", PORT), 30, "memory", &body);
    let mut d = s.start();
    let lines = || -> Vec<String> {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    };
    let pair = &s.svc.pair;
    let server: SocketAddr = (IpAddr::V4(pair.server_ip), SPA_PORT).into();

    // A valid packet (not sent yet), and garbage as long as it.
    let valid = saved_packet(&s.svc, &s.keys, &[]);
    let garbage: Vec<Vec<u8>> = (0..50u8)
        .map(|i| {
            (0..valid.len())
                .map(|j| b'A' + ((j as u8).wrapping_mul(7) ^ i) % 26)
                .collect()
        })
        .collect();
    let ex = udp_send_all(
        &pair.client,
        server,
        garbage,
        10,
        Duration::from_millis(5),
        Duration::from_millis(200),
    );
    assert!(ex.answers.is_empty(), "garbage was answered: {ex:?}");

    let allowed = std::net::Ipv4Addr::new(192, 0, 2, 77);
    postern_e2e::posternd::fwknop_to(
        &pair.client,
        &s.keys,
        allowed,
        pair.server_ip,
        &["-A", &format!("tcp/{PORT}")],
    );
    let want = format!("{allowed} {} {}", pair.client_ip, pair.server_ip);
    let ran = postern_e2e::wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        !lines().is_empty()
    });
    assert!(
        ran && lines() == vec![want.clone()],
        "script wrote {:?}, expected [{want:?}]\n--- posternd log ---\n{}",
        lines(),
        d.log_text()
    );

    // The saved packet, then the same bytes again: one more line, not two.
    for _ in 0..2 {
        udp_send_all(
            &pair.client,
            server,
            vec![valid.clone()],
            1,
            Duration::ZERO,
            Duration::ZERO,
        );
    }
    assert!(
        d.wait_log("packet seen before (replay)", 1, Duration::from_secs(5)),
        "replay not refused\n{}",
        d.log_text()
    );
    let client = pair.client_ip;
    let both = vec![want, format!("{client} {client} {}", pair.server_ip)];
    postern_e2e::wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        lines().len() >= 2
    });
    assert_eq!(lines(), both, "{}", d.log_text());
    assert!(d.is_running(), "{}", d.log_text());
}
