//! IPv6 end to end (postern's extension: fwknop 2.6.10 has none). `postern`
//! knocks over IPv6 for an IPv6 address and posternd opens exactly that, for
//! each capture and Linux backend, in namespaces whose only addresses are
//! IPv6; and, in dual-stack namespaces, a knock over one family opens the
//! other family's address when that is what it asks for.

use postern_e2e::firewalld::{can_run as firewalld_can_run, Firewalld};
use postern_e2e::posternd::{
    nftables_action, pcap_capture, run_scenarios, runnable, tcp_capture, udp_capture, Service,
    Setup, SPA_PORT,
};
use postern_e2e::scenario::{describe, SpaClient};
use postern_e2e::{tcp_connect_ok, wait_until, Netns, Pair};
use std::net::{IpAddr, SocketAddr};
use std::process::Output;
use std::time::Duration;

const TIMEOUT: u64 = 4;

/// Leave the pair with its IPv6 addresses only.
fn ipv6_only(svc: &Service) {
    svc.client()
        .run_ok(&["ip", "-4", "addr", "flush", "dev", Pair::CLIENT_IF]);
    svc.server()
        .run_ok(&["ip", "-4", "addr", "flush", "dev", Pair::SERVER_IF]);
}

fn connects(svc: &Service, to: IpAddr) -> bool {
    tcp_connect_ok(svc.client(), to, svc.port, Duration::from_millis(400))
}

fn wait_connects(svc: &Service, to: IpAddr, want: bool, within: Duration) -> bool {
    wait_until(within, Duration::from_millis(100), || {
        connects(svc, to) == want
    })
}

/// `postern -A tcp/PORT <keys> --no-rc-file EXTRA…` from the client namespace.
fn postern(s: &Setup, extra: &[&str]) -> Output {
    let home = postern_e2e::tempfile::tempdir().unwrap();
    let mut args: Vec<String> = vec!["-A".into(), format!("tcp/{}", s.svc.port)];
    args.extend(s.keys.client_key_args().expect("base64 keys"));
    args.push("--no-rc-file".into());
    args.extend(extra.iter().map(|a| a.to_string()));
    let out = SpaClient::postern().run(s.svc.client(), home.path(), &args);
    assert!(out.status.success(), "postern {args:?}: {}", describe(&out));
    out
}

/// ip6tables closing the service port as the SPA tutorials do for IPv4.
fn ip6tables_guard(svc: &Service) {
    let port = svc.port.to_string();
    let ns = svc.server();
    ns.run_ok(&[
        "ip6tables",
        "-A",
        "INPUT",
        "-m",
        "conntrack",
        "--ctstate",
        "ESTABLISHED,RELATED",
        "-j",
        "ACCEPT",
    ]);
    ns.run_ok(&[
        "ip6tables",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        &port,
        "-j",
        "DROP",
    ]);
}

#[derive(Clone, Copy, Debug)]
enum Capture {
    Udp,
    Tcp,
    Pcap,
    /// pcap taking ICMPv6 (`postern -P icmp` to an IPv6 server).
    PcapIcmp6,
    /// NFQUEUE, its rule made by posternd (with iptables: ip6tables too).
    Nfqueue,
    /// TCP taking SPA over HTTP (`postern -P http`).
    TcpHttp,
}

#[derive(Clone, Copy, Debug)]
enum Backend {
    Nftables,
    Iptables,
    /// A real firewalld on a private bus in the server's namespace.
    Firewalld,
}

/// Closed → knock over IPv6 for the client's IPv6 address → open → closed,
/// with a replay of that knock refused, in an IPv6-only pair.
fn ipv6_only_knock(tag: &str, port: u16, capture: Capture, backend: Backend) {
    let svc = Service::open(tag, port);
    ipv6_only(&svc);
    let capture_toml = match capture {
        Capture::Udp => udp_capture(SPA_PORT),
        Capture::Tcp | Capture::TcpHttp => tcp_capture(SPA_PORT),
        Capture::Pcap => pcap_capture(Pair::SERVER_IF, SPA_PORT),
        Capture::PcapIcmp6 => format!(
            "[[capture]]\ntype = \"pcap\"\ninterfaces = [\"{}\"]\nfilter = \"icmp6\"\n",
            Pair::SERVER_IF
        ),
        Capture::Nfqueue => "[[capture]]\ntype = \"nfqueue\"\n".into(),
    };
    let mut firewalld = None;
    let action = match backend {
        Backend::Nftables => nftables_action(port),
        Backend::Iptables => {
            ip6tables_guard(&svc);
            "[[action]]\ntype = \"iptables\"\nipv6 = true\n".into()
        }
        Backend::Firewalld => {
            let fwd = Firewalld::start(svc.server());
            // The knock port is opened in firewalld, as on a real server.
            fwd.firewall_cmd(&[&format!("--add-port={SPA_PORT}/udp")])
                .expect("open the knock port");
            let action = format!(
                "[[action]]\ntype = \"firewalld\"\nbus_address = \"{}\"\n",
                fwd.address
            );
            firewalld = Some(fwd);
            action
        }
    };
    let s = Setup::new(svc, TIMEOUT, "memory", &format!("{capture_toml}\n{action}"));
    if matches!(capture, Capture::TcpHttp) {
        let toml = std::fs::read_to_string(s.conf.path("postern.toml")).unwrap();
        let toml = toml.replacen("[server]\n", "[server]\nspa_over_http = true\n", 1);
        s.conf.write("postern.toml", &toml);
    }
    let mut d = s.start();
    if matches!(capture, Capture::Pcap | Capture::PcapIcmp6) {
        assert!(
            d.wait_pcap_capturing(1),
            "pcap did not start:\n{}",
            d.log_text()
        );
    }
    let server6 = IpAddr::V6(s.svc.pair.server_ip6);
    let client6 = s.svc.pair.client_ip6.to_string();
    assert!(!connects(&s.svc, server6), "open before the knock");

    let packet = s.conf.path("knock.spa");
    let (packet_arg, server6_arg) = (packet.display().to_string(), server6.to_string());
    let mut args = vec!["-6", "-D", &server6_arg, "-a", &client6, "-B", &packet_arg];
    match capture {
        Capture::Tcp => args.extend(["-P", "tcp"]),
        Capture::TcpHttp => args.extend(["-P", "http"]),
        Capture::PcapIcmp6 => args.extend(["-P", "icmp"]),
        _ => {}
    }
    postern(&s, &args);
    assert!(
        wait_connects(&s.svc, server6, true, Duration::from_secs(5)),
        "{capture:?}/{backend:?}: not opened over IPv6\n{}",
        d.log_text()
    );
    assert!(
        wait_connects(&s.svc, server6, false, Duration::from_secs(TIMEOUT + 6)),
        "{capture:?}/{backend:?}: not closed again"
    );
    if matches!(capture, Capture::Udp) {
        // The same bytes again, over IPv6: a replay, refused.
        let bytes = std::fs::read_to_string(&packet)
            .unwrap()
            .trim_end()
            .as_bytes()
            .to_vec();
        let to = SocketAddr::new(server6, SPA_PORT);
        postern_e2e::posternd::udp_send_all(
            s.svc.client(),
            to,
            vec![bytes],
            0,
            Duration::ZERO,
            Duration::from_millis(200),
        );
        assert!(
            d.wait_log("Replay detected from source IP", 1, Duration::from_secs(5)),
            "the replay over IPv6 was not refused:\n{}",
            d.log_text()
        );
        assert!(!connects(&s.svc, server6), "a replay opened the port");
    }
    d.terminate(Duration::from_secs(5));
    drop(firewalld);
}

#[test]
fn knocks_over_ipv6_open_ipv6_addresses_for_each_capture_and_backend() {
    if !runnable(&["nft", "ip6tables"]) {
        return;
    }
    let cases = [
        ("u6n", 22301, Capture::Udp, Backend::Nftables),
        ("t6n", 22302, Capture::Tcp, Backend::Nftables),
        ("h6n", 22312, Capture::TcpHttp, Backend::Nftables),
        ("p6n", 22303, Capture::Pcap, Backend::Nftables),
        ("i6n", 22304, Capture::PcapIcmp6, Backend::Nftables),
        ("u6i", 22305, Capture::Udp, Backend::Iptables),
        ("t6i", 22306, Capture::Tcp, Backend::Iptables),
        ("p6i", 22307, Capture::Pcap, Backend::Iptables),
        ("u6f", 22308, Capture::Udp, Backend::Firewalld),
        // (The nftables form of the queue rule is not tested: this kernel's
        // nf_tables has no `queue` expression.)
        ("q6i", 22311, Capture::Nfqueue, Backend::Iptables),
    ];
    let cases = cases
        .into_iter()
        .filter(|c| !matches!(c.3, Backend::Firewalld) || firewalld_can_run());
    let scenarios = cases
        .into_iter()
        .map(|(tag, port, capture, backend)| {
            let f: Box<dyn FnOnce() + Send> =
                Box::new(move || ipv6_only_knock(tag, port, capture, backend));
            (format!("{capture:?} / {backend:?}"), f)
        })
        .collect();
    run_scenarios("IPv6-only knocks", scenarios);
}

/// Dual stack: the knock's transport and the address it asks for are
/// independent; only the asked address opens.
#[test]
fn a_knock_over_one_family_opens_the_address_it_asks_for() {
    if !runnable(&["nft"]) {
        return;
    }
    let port = 22310;
    let s = Setup::new(
        Service::open("x6", port),
        TIMEOUT,
        "memory",
        &format!("{}\n{}", udp_capture(SPA_PORT), nftables_action(port)),
    );
    let _d = s.start();
    let pair = &s.svc.pair;
    let (v4, v6) = (IpAddr::V4(pair.server_ip), IpAddr::V6(pair.server_ip6));
    let (server4, server6) = (pair.server_ip.to_string(), pair.server_ip6.to_string());
    let (client4, client6) = (pair.client_ip.to_string(), pair.client_ip6.to_string());

    // Over IPv6, for the client's IPv4 address.
    postern(&s, &["-D", &server6, "-a", &client4]);
    assert!(
        wait_connects(&s.svc, v4, true, Duration::from_secs(5)),
        "IPv4 not opened"
    );
    assert!(!connects(&s.svc, v6), "IPv6 opened without being asked for");
    assert!(wait_connects(
        &s.svc,
        v4,
        false,
        Duration::from_secs(TIMEOUT + 6)
    ));

    // Over IPv4, for the client's IPv6 address.
    postern(&s, &["-D", &server4, "-a", &client6]);
    assert!(
        wait_connects(&s.svc, v6, true, Duration::from_secs(5)),
        "IPv6 not opened"
    );
    assert!(!connects(&s.svc, v4), "IPv4 opened without being asked for");
    assert!(wait_connects(
        &s.svc,
        v6,
        false,
        Duration::from_secs(TIMEOUT + 6)
    ));

    // -s over IPv6: the address the packet came from.
    postern(&s, &["-6", "-D", &server6, "-s"]);
    assert!(
        wait_connects(&s.svc, v6, true, Duration::from_secs(5)),
        "-s over IPv6"
    );
    assert!(!connects(&s.svc, v4), "-s over IPv6 opened IPv4");
}

/// A name with only an IPv6 address (AAAA, here from the namespace's own
/// hosts file, which `ip netns exec` mounts over /etc/hosts) is knocked over
/// IPv6 without any flag; `-4` with it is a clear error.
#[test]
fn names_with_only_ipv6_addresses_are_knocked_over_ipv6() {
    if !runnable(&[]) {
        return;
    }
    let ns = Netns::new("n6");
    ns.run_ok(&["ip", "link", "set", "lo", "up"]);
    let _hosts = own_hosts_file(&ns, "127.0.0.1 localhost\n::1 spa-v6only.test\n");
    let home = postern_e2e::tempfile::tempdir().unwrap();
    let client = SpaClient::postern();
    let args = |extra: &[&str]| -> Vec<String> {
        [
            "-A",
            "tcp/22",
            "--key-rijndael",
            "x",
            "--key-hmac",
            "y",
            "--no-rc-file",
            "-a",
            "2001:db8::5",
            "-D",
            "spa-v6only.test",
        ]
        .iter()
        .chain(extra)
        .map(|a| a.to_string())
        .collect()
    };
    let received = ns.in_ns(|| {
        let sock = std::net::UdpSocket::bind("[::1]:62201").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        sock
    });
    let out = client.run(&ns, home.path(), &args(&[]));
    assert!(out.status.success(), "{}", describe(&out));
    let mut buf = [0u8; 2048];
    let (n, from) = received
        .recv_from(&mut buf)
        .expect("no knock on [::1]:62201");
    assert!(from.is_ipv6() && n > 100, "{from} {n}");
    let out = client.run(&ns, home.path(), &args(&["-4"]));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("spa-v6only.test has no IPv4 address"),
        "{}",
        describe(&out)
    );
}

/// `text` as `ns`'s /etc/hosts (`ip netns exec` mounts /etc/netns/NAME/*
/// over /etc); removed when the guard drops.
fn own_hosts_file(ns: &Netns, text: &str) -> RemoveOnDrop {
    let etc = std::path::PathBuf::from(format!("/etc/netns/{}", ns.name));
    std::fs::create_dir_all(&etc).unwrap();
    let guard = RemoveOnDrop(etc.clone());
    std::fs::write(etc.join("hosts"), text).unwrap();
    guard
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// access.conf's SOURCE and DESTINATION take IPv6 prefixes and addresses: a
/// stanza limited to the client's IPv6 /32 and the server's IPv6 address
/// grants a knock sent from and to those, and refuses the same knock sent
/// over IPv4 (another source, another destination).
#[test]
fn source_and_destination_take_ipv6_prefixes() {
    if !runnable(&["nft"]) {
        return;
    }
    let port = 22313;
    let s = Setup::new(
        Service::open("sd6", port),
        TIMEOUT,
        "memory",
        &format!("{}\n{}", udp_capture(SPA_PORT), nftables_action(port)),
    );
    let pair = &s.svc.pair;
    let access = std::fs::read_to_string(s.conf.path("access.conf"))
        .unwrap()
        .replace(
            "SOURCE ANY\n",
            &format!("SOURCE fd00:5057::/32\nDESTINATION {}\n", pair.server_ip6),
        );
    s.conf.write("access.conf", &access);
    let d = s.start();
    let (v4, v6) = (IpAddr::V4(pair.server_ip), IpAddr::V6(pair.server_ip6));
    let (server4, server6) = (pair.server_ip.to_string(), pair.server_ip6.to_string());
    let client6 = pair.client_ip6.to_string();

    // Over IPv4 (source and destination outside the stanza): refused.
    postern(&s, &["-D", &server4, "-a", &client6]);
    assert!(
        !wait_connects(&s.svc, v6, true, Duration::from_secs(2)),
        "a knock from outside SOURCE/DESTINATION opened\n{}",
        d.log_text()
    );
    // Over IPv6, from the prefix to the address: granted.
    postern(&s, &["-D", &server6, "-a", &client6]);
    assert!(
        wait_connects(&s.svc, v6, true, Duration::from_secs(5)),
        "a knock inside SOURCE/DESTINATION did not open\n{}",
        d.log_text()
    );
    assert!(!connects(&s.svc, v4));
}

/// `-R` asks its resolver over the family the knock goes out over: with `-6`
/// it reaches a resolver that listens on IPv6 only and takes the IPv6 address
/// it answers; with `-4` the same URL (the name has both addresses) finds no
/// resolver, and the knock is not built.
#[test]
fn resolve_asks_over_the_knocks_family() {
    if !runnable(&[]) {
        return;
    }
    let ns = Netns::new("r6");
    let _hosts = own_hosts_file(
        &ns,
        "127.0.0.1 localhost resolver.test\n::1 resolver.test\n",
    );
    // A resolver on [::1] only, answering one request with an IPv6 address.
    let listener = ns.in_ns(|| std::net::TcpListener::bind("[::1]:0").unwrap());
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut c, _) = listener.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = c.read(&mut buf);
        let body = "2001:db8::77\n";
        let _ = write!(
            c,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    });
    let home = postern_e2e::tempfile::tempdir().unwrap();
    let url = format!("http://resolver.test:{port}/myip");
    let args = |family: &str| -> Vec<String> {
        [
            "-A",
            "tcp/22",
            "--key-rijndael",
            "x",
            "--key-hmac",
            "y",
            "--no-rc-file",
            "-T",
            "-v",
            "-R",
            "--resolve-http-only",
            "--resolve-url",
            &url,
            family,
            "-D",
            "::1",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let client = SpaClient::postern();
    let out = client.run(&ns, home.path(), &args("-6"));
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("2001:db8::77,tcp/22"), "{text}");
    server.join().unwrap();
    let out = client.run(&ns, home.path(), &args("-4"));
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("could not resolve the external IP"),
        "{}",
        describe(&out)
    );
}
