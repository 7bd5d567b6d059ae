//! fwknop's raw knock modes through pcap captures, in both directions:
//! `-P icmp` (fwknop's default type 0, echo reply, and `--icmp-type 8`, echo
//! request), `-P tcpraw` (a SYN carrying the packet), `-P udpraw`, and a spoofed
//! source address (`-Q`, with `-s` so the grant goes to the packet's IP source).
//!
//! Each mode has its own namespace pair, guarded like the fwknop tutorials
//! (iptables DROP for the port, conntrack ESTABLISHED accepted), and one
//! fwknopd.conf (`PCAP_INTF v1`, a PCAP_FILTER letting in only that mode's
//! carrier, e.g. `icmp[icmptype] = icmp-echo`) used unchanged by both servers:
//!
//! 1. the real fwknopd 2.6.10: `postern` knocks, the port opens, then closes
//!    after FW_ACCESS_TIMEOUT;
//! 2. posternd with the same files (pcap capture, iptables action in fwknopd's
//!    FWKNOP_INPUT chain): the real `fwknop` client knocks, same result; then a
//!    knock in the same mode sealed with other keys (garbage to posternd) is
//!    refused: the port stays closed.
//!
//! With `-Q` the client namespace owns the spoofed address too and the server
//! routes it back over the veth: the port opens for connections from that address
//! and stays closed to the client's own.

use postern_e2e::posternd::{
    access_conf, nftables_action, run_scenarios, runnable, start_fwknopd, ConfDir, Posternd,
    Service, SPA_PORT,
};
use postern_e2e::scenario::{describe, SpaClient, SpaKeys};
use postern_e2e::{tempfile, wait_until, Netns, Pair};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};

const PORT: u16 = 22022;
const TIMEOUT: u64 = 3;
/// The client namespace's second address, written by `-Q` as the IP source.
const SPOOFED: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);

struct Mode {
    name: &'static str,
    /// Client flags selecting the mode.
    args: &'static [&'static str],
    /// PCAP_FILTER: only the mode's own carrier (and ICMP type) reaches the
    /// servers, so a client sending anything else opens nothing.
    filter: &'static str,
    spoofed: bool,
}

const MODES: &[Mode] = &[
    Mode {
        name: "icmp",
        args: &["-P", "icmp"],
        filter: "icmp[icmptype] = icmp-echoreply",
        spoofed: false,
    },
    Mode {
        name: "icmp-type-8",
        args: &["-P", "icmp", "--icmp-type", "8", "--icmp-code", "0"],
        filter: "icmp[icmptype] = icmp-echo",
        spoofed: false,
    },
    Mode {
        name: "tcpraw",
        args: &["-P", "tcpraw"],
        filter: "tcp dst port 62201 and tcp[tcpflags] = tcp-syn",
        spoofed: false,
    },
    Mode {
        name: "udpraw",
        args: &["-P", "udpraw"],
        filter: "udp dst port 62201",
        spoofed: false,
    },
    Mode {
        name: "udpraw-spoofed",
        args: &["-P", "udpraw", "-s", "-Q", "192.0.2.77"],
        filter: "udp dst port 62201 and src host 192.0.2.77",
        spoofed: true,
    },
    Mode {
        name: "icmp-spoofed",
        args: &["-P", "icmp", "-s", "-Q", "192.0.2.77"],
        filter: "icmp and src host 192.0.2.77",
        spoofed: true,
    },
];

fn fwknopd_conf(dir: &ConfDir, mode: &Mode) -> String {
    format!(
        "PCAP_INTF {};\nPCAP_FILTER {};\n\
         MAX_SPA_PACKET_AGE 120;\nFWKNOP_RUN_DIR {run};\nFWKNOP_PID_FILE {run}/fwknopd.pid;\n\
         DIGEST_FILE {run}/digest.cache;\nFLUSH_IPT_AT_INIT Y;\nFLUSH_IPT_AT_EXIT Y;\n",
        Pair::SERVER_IF,
        mode.filter,
        run = dir.run_dir().display()
    )
}

/// One TCP connection from `from` (an address of `ns`) to `to`.
fn connect_from(ns: &Netns, from: Ipv4Addr, to: SocketAddrV4, timeout: Duration) -> bool {
    ns.in_ns(move || {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("TCP socket");
        sock.bind(&SocketAddr::from((from, 0)).into())
            .unwrap_or_else(|e| panic!("bind {from}: {e}"));
        sock.connect_timeout(&SocketAddr::V4(to).into(), timeout)
            .is_ok()
    })
}

struct Probe<'a> {
    svc: &'a Service,
    /// The address the grant must be for.
    granted: Ipv4Addr,
}

impl Probe<'_> {
    fn open_from(&self, from: Ipv4Addr) -> bool {
        let to = SocketAddrV4::new(self.svc.pair.server_ip, PORT);
        connect_from(self.svc.client(), from, to, Duration::from_millis(400))
    }

    fn wait_open(&self, want: bool, within: Duration) -> bool {
        wait_until(within, Duration::from_millis(100), || {
            self.open_from(self.granted) == want
        })
    }
}

fn knock(svc: &Service, client: &SpaClient, keys: &SpaKeys, mode: &Mode) -> Result<(), String> {
    let home = tempfile::tempdir().expect("tempdir");
    let mut args: Vec<String> = vec![
        "-A".into(),
        format!("tcp/{PORT}"),
        "-D".into(),
        svc.pair.server_ip.to_string(),
        "--no-rc-file".into(),
    ];
    args.extend(keys.client_key_args().expect("base64 keys"));
    if !mode.spoofed {
        args.extend(["-a".into(), svc.pair.client_ip.to_string()]);
    }
    args.extend(mode.args.iter().map(|a| a.to_string()));
    let out = client.run(svc.client(), home.path(), &args);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} {args:?} failed: {}",
            client.name(),
            describe(&out)
        ))
    }
}

/// closed → knock → open (for the granted address only) → closed after the timeout.
fn knock_cycle(
    probe: &Probe,
    (client, keys, mode): (&SpaClient, &SpaKeys, &Mode),
    ctx: &dyn Fn(&str) -> String,
) -> Duration {
    let client_ip = probe.svc.pair.client_ip;
    assert!(
        !probe.open_from(probe.granted) && !probe.open_from(client_ip),
        "{}",
        ctx("port reachable before the knock")
    );
    knock(probe.svc, client, keys, mode).unwrap_or_else(|e| panic!("{}", ctx(&e)));
    let t0 = Instant::now();
    assert!(
        probe.wait_open(true, Duration::from_secs(6)),
        "{}",
        ctx("port not opened by the knock")
    );
    let opened = t0.elapsed();
    if probe.granted != client_ip {
        assert!(
            !probe.open_from(client_ip),
            "{}",
            ctx("the spoofed knock opened the port for the client's own address")
        );
    }
    assert!(
        probe.wait_open(false, Duration::from_secs(TIMEOUT + 10)),
        "{}",
        ctx("port still open long after FW_ACCESS_TIMEOUT")
    );
    opened
}

fn logs(parts: &[(&str, String)]) -> String {
    parts
        .iter()
        .map(|(name, text)| format!("--- {name} ---\n{text}\n"))
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn mode_scenario(mode: &'static Mode, tag: String) {
    let svc = Service::iptables_guarded(&tag, PORT);
    let granted = if mode.spoofed {
        svc.client().run_ok(&[
            "ip",
            "addr",
            "add",
            &format!("{SPOOFED}/32"),
            "dev",
            Pair::CLIENT_IF,
        ]);
        svc.server().run_ok(&[
            "ip",
            "route",
            "add",
            &format!("{SPOOFED}/32"),
            "dev",
            Pair::SERVER_IF,
        ]);
        SPOOFED
    } else {
        svc.pair.client_ip
    };
    let probe = Probe { svc: &svc, granted };
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let dir = ConfDir::new();
    let conf = dir.write("fwknopd.conf", &fwknopd_conf(&dir, mode));
    let access = dir.write(
        "access.conf",
        &access_conf(&keys, Some(&format!("tcp/{PORT}")), TIMEOUT, ""),
    );

    // 1. postern → the real fwknopd (pcap).
    let flog = dir.path("fwknopd.log");
    let mut fwknopd = start_fwknopd(svc.server(), &conf, &access, &flog);
    let fctx = |what: &str| {
        format!(
            "{}: postern → fwknopd: {what}\n{}",
            mode.name,
            logs(&[
                ("fwknopd log", read(&flog)),
                ("iptables", svc.iptables_save())
            ])
        )
    };
    let postern = SpaClient::postern();
    let opened = knock_cycle(&probe, (&postern, &keys, mode), &fctx);
    println!(
        "  {}: fwknopd opened after {} ms",
        mode.name,
        opened.as_millis()
    );
    assert!(
        fwknopd.terminate(Duration::from_secs(5)).is_some(),
        "{}",
        fctx("fwknopd did not stop")
    );

    // 2. The real fwknop client → posternd with the same files.
    let d = Posternd::start(
        svc.server(),
        &[
            "-c".into(),
            conf.display().to_string(),
            "-a".into(),
            access.display().to_string(),
            "-v".into(),
        ],
        dir.dir.path(),
    );
    let pctx = |what: &str| {
        format!(
            "{}: fwknop → posternd: {what}\n{}",
            mode.name,
            logs(&[
                ("posternd log", d.log_text()),
                ("iptables", svc.iptables_save())
            ])
        )
    };
    assert!(d.wait_pcap_capturing(1), "{}", pctx("pcap not capturing"));
    // The kernel length filter (UDP, ICMP, TCP lengths) compiled with PCAP_FILTER.
    assert!(
        !d.log_text().contains("no length filter"),
        "{}",
        pctx("the length filter was not applied")
    );
    let opened = knock_cycle(&probe, (&SpaClient::Fwknop, &keys, mode), &pctx);
    println!(
        "  {}: posternd opened after {} ms",
        mode.name,
        opened.as_millis()
    );
    assert!(
        d.log_text().contains("FWKNOP_INPUT") || svc.iptables_save().contains("FWKNOP_INPUT"),
        "{}",
        pctx("posternd did not use fwknopd's FWKNOP_INPUT chain")
    );

    // 3. Garbage in the same carrier (a packet sealed with other keys) opens nothing.
    let refused_before = d.log_text().matches("refused").count();
    let stranger = SpaKeys::generate("cbc", Some("sha256"));
    knock(&svc, &SpaClient::Fwknop, &stranger, mode).unwrap_or_else(|e| panic!("{}", pctx(&e)));
    assert!(
        d.wait_log("refused", refused_before + 1, Duration::from_secs(5)),
        "{}",
        pctx("posternd did not see (and refuse) the foreign packet")
    );
    assert!(
        !probe.open_from(granted) && !probe.open_from(svc.pair.client_ip),
        "{}",
        pctx("a packet sealed with other keys opened the port")
    );
}

#[test]
fn every_raw_mode_opens_through_fwknopd_and_posternd_pcap() {
    if !runnable(&["fwknop", "fwknopd", "iptables"]) {
        return;
    }
    let scenarios = MODES
        .iter()
        .enumerate()
        .map(|(i, mode)| {
            let f: Box<dyn FnOnce() + Send> =
                Box::new(move || mode_scenario(mode, format!("km{i}")));
            (mode.name.to_string(), f)
        })
        .collect();
    run_scenarios(
        "raw knock modes (postern → fwknopd, fwknop → posternd)",
        scenarios,
    );
}

/// posternd's own TOML: one pcap capture taking ICMP echo requests and TCP to the
/// SPA port with `spa_over_http` on, the nftables action protecting the port.
/// `fwknop -P icmp --icmp-type 8`, `-P tcpraw` (a raw SYN, not HTTP) and
/// `-P http` (a GET request over a real connection) each open it in turn.
#[test]
fn one_native_pcap_capture_takes_icmp_tcpraw_and_http() {
    if !runnable(&["fwknop", "nft"]) {
        return;
    }
    let svc = Service::open("kmn", PORT);
    // Something must take the HTTP knock's connection on the SPA port.
    let _http_listener = postern_e2e::tcp_listen(svc.server(), SPA_PORT);
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let dir = ConfDir::new();
    dir.write(
        "access.conf",
        &access_conf(&keys, Some(&format!("tcp/{PORT}")), TIMEOUT, ""),
    );
    let toml = format!(
        "access_file = \"{access}\"\n\n[server]\nmax_packet_age = 120\nrun_dir = \"{run}\"\n\
         spa_over_http = true\n\n[replay]\ntype = \"memory\"\n\n\
         [[capture]]\ntype = \"pcap\"\ninterfaces = [\"{iface}\"]\n\
         filter = \"icmp[icmptype] = icmp-echo or tcp dst port {SPA_PORT}\"\n\n{action}",
        access = dir.arg("access.conf"),
        run = dir.run_dir().display(),
        iface = Pair::SERVER_IF,
        action = nftables_action(PORT),
    );
    let conf = dir.write("postern.toml", &toml);
    let d = Posternd::start(
        svc.server(),
        &["-c".into(), conf.display().to_string(), "-v".into()],
        dir.dir.path(),
    );
    let probe = Probe {
        svc: &svc,
        granted: svc.pair.client_ip,
    };
    for mode in [&MODES[1], &MODES[2], &HTTP] {
        let ctx = |what: &str| {
            format!(
                "{}: fwknop → posternd (TOML, nftables): {what}\n{}",
                mode.name,
                logs(&[("posternd log", d.log_text()), ("nft", svc.nft_ruleset())])
            )
        };
        assert!(d.wait_pcap_capturing(1), "{}", ctx("pcap not capturing"));
        knock_cycle(&probe, (&SpaClient::Fwknop, &keys, mode), &ctx);
    }
}

const HTTP: Mode = Mode {
    name: "http",
    args: &["-P", "http"],
    filter: "",
    spoofed: false,
};
