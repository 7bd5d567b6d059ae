//! Drop-in: the very same fwknopd.conf + access.conf serve the real fwknopd 2.6.10
//! and then posternd (`posternd -c fwknopd.conf -a access.conf`).
//!
//! In a server namespace guarded like the fwknop tutorials (iptables DROP for the
//! port, conntrack ESTABLISHED accepted first): fwknopd runs with the files, the
//! real fwknop client knocks, the port opens and closes after FW_ACCESS_TIMEOUT;
//! fwknopd is stopped; posternd starts with the same two files (it maps fwknopd.conf
//! to its UDP-server or pcap capture and to the iptables action with fwknopd's
//! FWKNOP_INPUT chain), the client knocks again, same result.
//!
//! Three variants, run in parallel: UDP-server mode (`ENABLE_UDP_SERVER Y`),
//! fwknopd's default pcap mode (`PCAP_INTF v1`), and SPA over HTTP (pcap on the
//! TCP port, `ENABLE_TCP_SERVER Y` to take the connection, `ENABLE_SPA_OVER_HTTP
//! Y`): there fwknopd is knocked by `postern -P http` and posternd by
//! `fwknop -P http`, so the HTTP form is checked in both directions.
//!
//! Migration and replays: a packet fwknopd accepted (and recorded in its
//! DIGEST_FILE) and that is replayed after the switch to posternd, still within
//! MAX_SPA_PACKET_AGE, must not open the port again.

use postern_e2e::posternd::{
    access_conf, knock_ok, knock_with, runnable, start_fwknopd, udp_send_all, ConfDir, Posternd,
    Service, SPA_PORT,
};
use postern_e2e::scenario::{describe, SpaClient, SpaKeys};
use postern_e2e::Pair;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

const PORT: u16 = 22022;
const TIMEOUT: u64 = 3;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    UdpServer,
    Pcap,
    PcapHttp,
}

fn fwknopd_conf(dir: &ConfDir, mode: Mode) -> String {
    let run = dir.run_dir();
    let capture = match mode {
        Mode::UdpServer => "ENABLE_UDP_SERVER Y;\nUDPSERV_PORT 62201;\n".to_string(),
        Mode::Pcap => format!(
            "PCAP_INTF {};\nPCAP_FILTER udp port 62201;\n",
            Pair::SERVER_IF
        ),
        Mode::PcapHttp => format!(
            "PCAP_INTF {};\nPCAP_FILTER tcp port 62201;\nENABLE_TCP_SERVER Y;\n\
             TCPSERV_PORT 62201;\nENABLE_SPA_OVER_HTTP Y;\n",
            Pair::SERVER_IF
        ),
    };
    format!(
        "# fwknopd.conf used unchanged by fwknopd and posternd\n{capture}\
         MAX_SPA_PACKET_AGE 120;\n\
         FWKNOP_RUN_DIR {run};\n\
         FWKNOP_PID_FILE {run}/fwknopd.pid;\n\
         DIGEST_FILE {run}/digest.cache;\n\
         FLUSH_IPT_AT_INIT Y;\n\
         FLUSH_IPT_AT_EXIT Y;\n",
        run = run.display()
    )
}

/// closed → knock → open → closed after the timeout; `ctx` renders the logs.
fn knock_cycle(
    svc: &Service,
    keys: &SpaKeys,
    (client, extra): (&SpaClient, &[&str]),
    who: &str,
    ctx: &dyn Fn() -> String,
) {
    assert!(
        !svc.reachable(Duration::from_millis(700)),
        "{who}: port reachable before the knock\n{}",
        ctx()
    );
    let out = knock_with(client, svc, keys, extra);
    assert!(
        out.status.success(),
        "{who}: {} {extra:?} failed: {}",
        client.name(),
        describe(&out)
    );
    let t0 = Instant::now();
    assert!(
        svc.wait_reachable(true, Duration::from_secs(6)),
        "{who}: port not opened by the knock\n{}",
        ctx()
    );
    let opened = t0.elapsed();
    assert!(
        svc.wait_reachable(false, Duration::from_secs(TIMEOUT + 10)),
        "{who}: port still open long after FW_ACCESS_TIMEOUT\n{}",
        ctx()
    );
    println!(
        "  {who}: open after {} ms, closed after {} ms",
        opened.as_millis(),
        t0.elapsed().as_millis()
    );
}

fn same_files(mode: Mode, tag: &str) {
    if !runnable(&["fwknop", "fwknopd", "iptables"]) {
        return;
    }
    let svc = Service::iptables_guarded(tag, PORT);
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let dir = ConfDir::new();
    let conf = dir.write("fwknopd.conf", &fwknopd_conf(&dir, mode));
    let access = dir.write(
        "access.conf",
        &access_conf(&keys, Some(&format!("tcp/{PORT}")), TIMEOUT, ""),
    );
    let fwknop = SpaClient::Fwknop;
    let postern = SpaClient::postern();
    let http: &[&str] = &["-P", "http"];
    let (to_fwknopd, to_posternd) = match mode {
        Mode::PcapHttp => ((&postern, http), (&fwknop, http)),
        _ => ((&fwknop, &[][..]), (&fwknop, &[][..])),
    };

    // 1. The real fwknopd with the files.
    let flog = dir.path("fwknopd.log");
    let flog_text = || std::fs::read_to_string(&flog).unwrap_or_default();
    let mut fwknopd = start_fwknopd(svc.server(), &conf, &access, &flog);
    let fctx = || {
        format!(
            "--- fwknopd log ---\n{}\n--- iptables-save ---\n{}",
            flog_text(),
            svc.iptables_save()
        )
    };
    knock_cycle(
        &svc,
        &keys,
        to_fwknopd,
        &format!("fwknopd ({mode:?})"),
        &fctx,
    );
    let st = fwknopd.terminate(Duration::from_secs(5));
    assert!(st.is_some(), "fwknopd did not stop on SIGTERM\n{}", fctx());

    // 2. posternd with the very same files.
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
    let pctx = || {
        format!(
            "--- fwknopd.conf ---\n{}\n--- posternd log ---\n{}\n--- iptables-save ---\n{}",
            std::fs::read_to_string(&conf).unwrap_or_default(),
            d.log_text(),
            svc.iptables_save()
        )
    };
    knock_cycle(
        &svc,
        &keys,
        to_posternd,
        &format!("posternd ({mode:?})"),
        &pctx,
    );
    // It used fwknopd's chain, as fwknopd.conf's IPT_INPUT_ACCESS default says.
    assert!(
        d.log_text().contains("iptables") && svc.iptables_save().contains("FWKNOP_INPUT"),
        "posternd did not use the iptables action with fwknopd's FWKNOP_INPUT chain\n{}",
        pctx()
    );
}

#[test]
fn packet_accepted_by_fwknopd_is_refused_by_posternd_after_the_switch() {
    if !runnable(&["fwknop", "fwknopd", "iptables"]) {
        return;
    }
    let svc = Service::iptables_guarded("fr", PORT);
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let dir = ConfDir::new();
    let conf = dir.write("fwknopd.conf", &fwknopd_conf(&dir, Mode::UdpServer));
    let access = dir.write(
        "access.conf",
        &access_conf(&keys, Some(&format!("tcp/{PORT}")), TIMEOUT, ""),
    );
    let flog = dir.path("fwknopd.log");
    let mut fwknopd = start_fwknopd(svc.server(), &conf, &access, &flog);
    // Sent and saved (-B): what an eavesdropper would have captured.
    let saved = dir.path("seen.pkt");
    knock_ok(&svc, &keys, &["-B", &saved.display().to_string()]);
    assert!(
        svc.wait_reachable(true, Duration::from_secs(6)),
        "fwknopd did not open\n{}",
        std::fs::read_to_string(&flog).unwrap_or_default()
    );
    assert!(fwknopd.terminate(Duration::from_secs(5)).is_some());
    assert!(svc.wait_reachable(false, Duration::from_secs(TIMEOUT + 10)));
    let packet = std::fs::read_to_string(&saved).unwrap().trim().to_string();

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
    let to = SocketAddr::new(IpAddr::V4(svc.pair.server_ip), SPA_PORT);
    let ex = udp_send_all(
        svc.client(),
        to,
        vec![packet.into_bytes()],
        0,
        Duration::ZERO,
        Duration::ZERO,
    );
    assert!(ex.errors.is_empty(), "{:?}", ex.errors);
    assert!(
        svc.stays_closed(Duration::from_millis(1500)),
        "a packet fwknopd had accepted (in its DIGEST_FILE) opened the port again under \
         posternd\n--- posternd log ---\n{}",
        d.log_text()
    );
    knock_ok(&svc, &keys, &[]);
    assert!(
        svc.wait_reachable(true, Duration::from_secs(6)),
        "posternd does not serve a fresh knock\n{}",
        d.log_text()
    );
}

#[test]
fn fwknopd_files_udp_server_mode_work_for_posternd() {
    same_files(Mode::UdpServer, "fu");
}

#[test]
fn fwknopd_files_pcap_mode_work_for_posternd() {
    same_files(Mode::Pcap, "fp");
}

#[test]
fn fwknopd_files_spa_over_http_work_for_posternd() {
    same_files(Mode::PcapHttp, "fh");
}

/// `posternd --fw-list` next to a running daemon lists its grant and leaves it in
/// place, although fwknopd.conf says FLUSH_IPT_AT_INIT Y (that is for the daemon).
#[test]
fn fw_list_next_to_the_running_daemon_keeps_its_grants() {
    if !runnable(&["fwknop", "iptables"]) {
        return;
    }
    let svc = Service::iptables_guarded("fwlist", PORT);
    let keys = SpaKeys::generate("cbc", Some("sha256"));
    let dir = ConfDir::new();
    let conf = dir.write("fwknopd.conf", &fwknopd_conf(&dir, Mode::UdpServer));
    let access = dir.write(
        "access.conf",
        &access_conf(&keys, Some(&format!("tcp/{PORT}")), 30, ""),
    );
    let files = [
        "-c".to_string(),
        conf.display().to_string(),
        "-a".into(),
        access.display().to_string(),
    ];
    let d = Posternd::start(svc.server(), &files, dir.dir.path());
    knock_ok(&svc, &keys, &[]);
    assert!(
        svc.wait_reachable(true, Duration::from_secs(6)),
        "not opened\n{}",
        d.log_text()
    );
    let bin = postern_e2e::posternd::posternd_bin();
    let mut argv: Vec<&str> = vec![bin.to_str().unwrap()];
    argv.extend(files.iter().map(String::as_str));
    argv.push("--fw-list");
    let listed = svc.server().run_ok(&argv);
    assert!(
        listed.contains("1 active grant") && listed.contains(&format!("tcp/{PORT}")),
        "{listed}"
    );
    // The firewall's own listing, as the real fwknopd prints it for the same files.
    let mut fwknopd_argv = vec!["fwknopd"];
    fwknopd_argv.extend(files.iter().map(String::as_str));
    fwknopd_argv.push("--fw-list");
    let fwknopd_listed = svc.server().run_ok(&fwknopd_argv);
    assert!(
        fwknopd_listed.contains("Chain FWKNOP_INPUT")
            && fwknopd_listed.contains(&svc.pair.client_ip.to_string()),
        "{fwknopd_listed}"
    );
    assert!(
        listed.starts_with(fwknopd_listed.trim_end()),
        "posternd --fw-list:\n{listed}\nfwknopd --fw-list:\n{fwknopd_listed}"
    );
    assert!(
        svc.reachable(Duration::from_secs(2)),
        "--fw-list reset the daemon's grant"
    );
    assert!(
        svc.iptables_save().contains("postern_exp_"),
        "{}",
        svc.iptables_save()
    );
}
