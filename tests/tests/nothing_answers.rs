//! "Nothing is ever sent to an unauthenticated sender", for every capture (UDP
//! socket, pcap, TCP). posternd runs in a server namespace; after a valid knock
//! from the client namespace, an attacker namespace (its own veth to the server)
//! sends garbage, garbage of exactly a knock's length, a replay of the valid knock
//! and a knock made with the wrong keys, while an AF_PACKET socket on the
//! attacker's veth records every IPv4 packet the server sends it:
//!
//! - UDP and pcap: not one packet comes back (no UDP reply, no ICMP). The pcap
//!   setup drops the SPA port in INPUT, as a pcap deployment does (nothing listens
//!   there, so the kernel itself would answer with ICMP port unreachable);
//! - TCP: the handshake completes, then the connection ends (EOF or reset) with
//!   not one payload byte, for an idle connection too; the server sends nothing
//!   but TCP segments without payload.
//!
//! Before the attack the sniffer must see the ICMP port unreachable a probe to a
//! closed port draws (so it would see an answer), and posternd must log each
//! refusal (so the packets were judged, not lost). A fresh valid knock opens the
//! port afterwards, and only the two valid knocks were granted.

use postern_e2e::attacker::{tcp_exchange, v4, Attacker, Seen, Sniffer};
use postern_e2e::posternd::{
    knock_ok, nftables_action, run_scenarios, runnable, saved_packet, tcp_capture, udp_capture,
    udp_send_all, Posternd, Service, Setup, SPA_PORT,
};
use postern_e2e::scenario::{random_b64, random_bytes, SpaKeys};
use postern_e2e::Pair;
use std::net::SocketAddrV4;
use std::time::Duration;

const PORT: u16 = 22032;
const TIMEOUT: u64 = 3;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Capture {
    Udp,
    Pcap,
    Tcp,
}

fn capture_toml(c: Capture) -> String {
    match c {
        Capture::Udp => udp_capture(SPA_PORT),
        Capture::Pcap => format!(
            "[[capture]]\ntype = \"pcap\"\ninterfaces = [\"{}\", \"{}\"]\nfilter = \"udp port {SPA_PORT}\"\n",
            Pair::SERVER_IF,
            Attacker::SERVER_IF
        ),
        Capture::Tcp => tcp_capture(SPA_PORT),
    }
}

/// Send one payload to the capture from `ns` (source `src` for TCP) and return
/// what came back on that socket, as a description (empty: nothing).
fn send(
    capture: Capture,
    ns: &postern_e2e::Netns,
    src: std::net::Ipv4Addr,
    to: SocketAddrV4,
    payload: Vec<u8>,
) -> String {
    match capture {
        Capture::Tcp => match tcp_exchange(ns, src, to, payload, Duration::from_secs(6)) {
            Ok(back) if back.is_empty() => String::new(),
            Ok(back) => format!("{} bytes back", back.len()),
            Err(e) => e,
        },
        Capture::Udp | Capture::Pcap => {
            let ex = udp_send_all(
                ns,
                v4(*to.ip(), to.port()),
                vec![payload],
                0,
                Duration::ZERO,
                Duration::from_millis(300),
            );
            if ex.answers.is_empty() && ex.errors.is_empty() {
                String::new()
            } else {
                format!("answers {:?}, errors {:?}", ex.answers, ex.errors)
            }
        }
    }
}

fn case(capture: Capture, tag: &str) {
    let s = Setup::new(
        Service::open(tag, PORT),
        TIMEOUT,
        "memory",
        &format!("{}\n{}", capture_toml(capture), nftables_action(PORT)),
    );
    let svc = &s.svc;
    let attacker = Attacker::new(tag, svc.server(), 1);
    let src = attacker.addrs[0];
    if capture == Capture::Pcap {
        svc.server().run_ok(&[
            "iptables",
            "-A",
            "INPUT",
            "-p",
            "udp",
            "--dport",
            &SPA_PORT.to_string(),
            "-j",
            "DROP",
        ]);
    }
    let d: Posternd = s.start();
    if capture == Capture::Pcap {
        assert!(
            d.wait_pcap_capturing(2),
            "pcap not capturing\n{}",
            d.log_text()
        );
    }
    let ctx = |what: &str| {
        format!(
            "{capture:?}: {what}\n--- posternd log ---\n{}",
            d.log_text()
        )
    };
    let proto: &[&str] = match capture {
        Capture::Tcp => &["-P", "tcp"],
        _ => &[],
    };

    // A valid knock from the client, kept to be replayed.
    let valid = saved_packet(svc, &s.keys, &[]);
    let wrong_key = saved_packet(svc, &SpaKeys::generate("cbc", Some("sha256")), &[]);
    let server = SocketAddrV4::new(svc.pair.server_ip, SPA_PORT);
    let back = send(
        capture,
        svc.client(),
        svc.pair.client_ip,
        server,
        valid.clone(),
    );
    assert_eq!(back, "", "{}", ctx("the valid knock got an answer"));
    assert!(
        svc.wait_reachable(true, Duration::from_secs(4)),
        "{}",
        ctx("the valid knock did not open the port")
    );

    // The sniffer sees what the server sends: the ICMP a closed port draws.
    let sniffer = Sniffer::start(&attacker.ns, Attacker::IF, attacker.server_ip);
    let to = SocketAddrV4::new(attacker.server_ip, SPA_PORT);
    let probe = send(
        Capture::Udp,
        &attacker.ns,
        src,
        SocketAddrV4::new(attacker.server_ip, 9),
        b"probe".to_vec(),
    );
    assert!(
        sniffer.wait_for(Duration::from_secs(3), |p| p.protocol == 1),
        "{}",
        ctx(&format!(
            "the sniffer saw no ICMP for a closed port (socket: {probe:?})"
        ))
    );
    sniffer.take();

    let mut attacks: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", random_bytes(100)),
        (
            "garbage of a knock's length",
            random_b64(valid.len()).into_bytes()[..valid.len()].to_vec(),
        ),
        ("a replay of the valid knock", valid.clone()),
        ("a knock with the wrong keys", wrong_key),
    ];
    if capture == Capture::Tcp {
        attacks.push(("nothing (an idle connection)", Vec::new()));
    }
    for (what, payload) in attacks {
        let back = send(capture, &attacker.ns, src, to, payload);
        assert_eq!(back, "", "{}", ctx(&format!("{what} got an answer")));
    }
    let refused = format!("refused packet from {src}:");
    assert!(
        d.wait_log(&refused, 3, Duration::from_secs(3)),
        "{}",
        ctx("posternd did not judge the attacker's packets")
    );
    assert!(
        d.log_text()
            .lines()
            .any(|l| l.contains(&refused) && l.contains(" at replay:")),
        "{}",
        ctx("the replay was not refused as a replay")
    );
    std::thread::sleep(Duration::from_millis(500));
    let seen: Vec<Seen> = sniffer.take();
    let answers: Vec<&Seen> = match capture {
        Capture::Tcp => seen
            .iter()
            .filter(|p| !p.is_tcp_without_payload())
            .collect(),
        _ => seen.iter().collect(),
    };
    assert!(
        answers.is_empty(),
        "{}",
        ctx(&format!("the server sent the attacker {answers:?}"))
    );
    if capture == Capture::Tcp {
        assert!(
            !seen.is_empty(),
            "{}",
            ctx("no handshake seen: the sniffer missed the TCP traffic")
        );
    }
    drop(sniffer);

    // The valid client still gets in, and only its knocks were granted.
    assert!(
        svc.wait_reachable(false, Duration::from_secs(TIMEOUT + 6)),
        "{}",
        ctx("the port did not close after the first grant")
    );
    knock_ok(svc, &s.keys, proto);
    assert!(
        svc.wait_reachable(true, Duration::from_secs(4)),
        "{}",
        ctx("a valid knock after the attack did not open the port")
    );
    // The port may still have been open from the first grant (a connect timing
    // out on a loaded machine reads as closed): wait for the second grant's line
    // rather than reading the log once.
    d.wait_log("granted:", 2, Duration::from_secs(5));
    let grants = d.log_text().matches("granted:").count();
    assert_eq!(grants, 2, "{}", ctx(&format!("{grants} grants, not 2")));
    println!(
        "  {capture:?}: {} packets from the server seen during the attack, none with a payload",
        seen.len()
    );
}

#[test]
fn nothing_answers_an_unauthenticated_sender_on_any_capture() {
    if !runnable(&["fwknop", "nft", "iptables"]) {
        return;
    }
    let cases = [
        (Capture::Udp, "nau"),
        (Capture::Pcap, "nap"),
        (Capture::Tcp, "nat"),
    ];
    run_scenarios(
        "nothing answers an unauthenticated sender",
        cases
            .into_iter()
            .map(|(c, tag)| {
                let f: Box<dyn FnOnce() + Send> = Box::new(move || case(c, tag));
                (format!("{c:?}"), f)
            })
            .collect(),
    );
}
