//! `[metrics] listen`: posternd serves Prometheus metrics that the real
//! `promtool check metrics` accepts, and they count what happened: packets
//! per capture, refusals per stage (a forged packet at hmac, a replay at
//! replay), grants, firewall grants per backend, the knock→grant latency,
//! and the process facts.

use postern_e2e::posternd::{
    access_conf, knock_ok, metric_sample, nftables_action, pcap_capture, runnable, saved_packet,
    scrape_metrics, udp_capture, udp_send_all, Service, Setup, SPA_PORT,
};
use postern_e2e::scenario::{describe, SpaKeys};
use postern_e2e::Pair;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

const PORT: u16 = 22091;
const METRICS: &str = "127.0.0.1:19650";

#[test]
fn metrics_count_what_happened_and_promtool_accepts_them() {
    if !runnable(&["nft", "curl", "promtool"]) {
        return;
    }
    let s = Setup::new(
        Service::open("mx", PORT),
        30,
        "memory",
        &format!(
            "{}\n{}\n[metrics]\nlisten = \"{METRICS}\"\n",
            udp_capture(SPA_PORT),
            nftables_action(PORT)
        ),
    );
    let _d = s.start();

    knock_ok(&s.svc, &s.keys, &[]);
    assert!(s.svc.wait_reachable(true, Duration::from_secs(5)));
    let valid = saved_packet(&s.svc, &s.keys, &["-a", "10.9.9.9"]);
    let mut forged = valid.clone();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let to: SocketAddr = (s.svc.pair.server_ip, SPA_PORT).into();
    udp_send_all(
        s.svc.client(),
        to,
        vec![forged, valid.clone(), valid],
        0,
        Duration::ZERO,
        Duration::from_millis(500),
    );

    let text = scrape_metrics(s.svc.server(), METRICS);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let lint = promtool.wait_with_output().unwrap();
    assert!(
        lint.status.success(),
        "promtool: {}\n{text}",
        describe(&lint)
    );

    let at_least = |series: &str, n: f64| {
        let v = metric_sample(&text, series);
        assert!(v >= n, "{series} = {v}, expected at least {n}\n{text}");
    };
    at_least("postern_packets_total{capture=\"udp\"}", 4.0);
    at_least("postern_refused_total{stage=\"hmac\"}", 1.0);
    at_least("postern_refused_total{stage=\"replay\"}", 1.0);
    at_least("postern_granted_total", 2.0);
    at_least("postern_firewall_grants_total{backend=\"nftables\"}", 2.0);
    at_least("postern_knock_to_grant_seconds_count", 2.0);
    assert!(
        text.contains("process_resident_memory_bytes"),
        "no process metrics:\n{text}"
    );
    // Queue gauges: the configured sizes, and nothing left queued at rest.
    let exactly = |series: &str, n: f64| {
        let v = metric_sample(&text, series);
        assert!(v == n, "{series} = {v}, expected {n}\n{text}");
    };
    exactly("postern_pipeline_capacity", 4096.0);
    exactly("postern_action_queue_capacity", 4096.0);
    exactly("postern_pipeline_in_flight", 0.0);
    exactly("postern_action_queue_depth", 0.0);
    exactly("postern_gpg_queue_depth", 0.0);
    at_least("postern_gpg_workers", 1.0);
}

/// Scrape `url` from `ns` until `series` reaches `n` (bounded); the last text.
fn scrape_until(ns: &postern_e2e::Netns, url: &str, series: &str, n: f64) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = ns.run(&["curl", "-sf", url]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if metric_sample(&text, series) >= n || std::time::Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A replay store that fails (Redis gone) refuses the knock, and the failure
/// is counted where an operator's alert can see it.
#[test]
fn replay_store_failures_are_counted_and_refuse_the_knock() {
    if !runnable(&["nft", "curl", "redis-server"]) {
        return;
    }
    const PORT_R: u16 = 22092;
    const METRICS_R: &str = "127.0.0.1:19651";
    let s = Setup::new(
        Service::open("mr", PORT_R),
        30,
        "memory",
        &format!(
            "{}\n{}\n[metrics]\nlisten = \"{METRICS_R}\"\n",
            udp_capture(SPA_PORT),
            nftables_action(PORT_R)
        ),
    );
    let mut redis = postern_e2e::fleet::Redis::start(&s.conf.path(""));
    let socket = redis.socket.clone();
    let toml = std::fs::read_to_string(s.conf.path("postern.toml"))
        .unwrap()
        .replace(
            "type = \"memory\"",
            &format!("type = \"redis\"\nurl = \"unix://{}\"", socket.display()),
        );
    s.conf.write("postern.toml", &toml);
    let _d = s.start();
    redis.stop();

    knock_ok(&s.svc, &s.keys, &[]);
    let url = format!("http://{METRICS_R}/metrics");
    let text = scrape_until(
        s.svc.server(),
        &url,
        "postern_replay_store_errors_total",
        1.0,
    );
    let errors = metric_sample(&text, "postern_replay_store_errors_total");
    assert!(errors >= 1.0, "no replay store error counted\n{text}");
    assert!(
        metric_sample(&text, "postern_refused_total{stage=\"replay\"}") >= 1.0,
        "the knock was not refused at replay\n{text}"
    );
    assert_eq!(metric_sample(&text, "postern_granted_total"), 0.0, "{text}");
    assert!(
        s.svc.stays_closed(Duration::from_millis(500)),
        "opened without the replay store"
    );
}

/// A posternd with room for one packet at a time (`queue_depth = 1`), HMAC
/// keys or none, serving `tcp/port` with nftables and metrics on `metrics`.
fn one_slot_server(tag: &str, port: u16, metrics: &str, hmac: bool) -> Setup {
    let mut s = Setup::new(
        Service::open(tag, port),
        30,
        "memory",
        &format!(
            "{}\n{}\n[metrics]\nlisten = \"{metrics}\"\n",
            udp_capture(SPA_PORT),
            nftables_action(port)
        ),
    );
    if !hmac {
        s.keys = SpaKeys::generate("cbc", None);
        s.conf.write(
            "access.conf",
            &access_conf(&s.keys, Some(&format!("tcp/{port}")), 30, ""),
        );
    }
    let toml = std::fs::read_to_string(s.conf.path("postern.toml"))
        .unwrap()
        .replacen("[server]\n", "[server]\nqueue_depth = 1\n", 1);
    s.conf.write("postern.toml", &toml);
    s
}

/// `n` knocks for different allow addresses, sent at once from the client.
fn burst(s: &Setup, n: u8) {
    let knocks: Vec<Vec<u8>> = (1..=n)
        .map(|i| saved_packet(&s.svc, &s.keys, &["-a", &format!("198.18.0.{i}")]))
        .collect();
    let to: SocketAddr = (s.svc.pair.server_ip, SPA_PORT).into();
    udp_send_all(
        s.svc.client(),
        to,
        knocks,
        usize::from(n),
        Duration::ZERO,
        Duration::from_millis(500),
    );
}

/// Backpressure: with room for one packet at a time, a burst of 40 knocks
/// (HMAC verified) is held back in the socket until there is room, and every
/// one is granted; none is refused at overload.
#[test]
fn a_burst_beyond_the_queue_waits_and_every_knock_is_granted() {
    if !runnable(&["nft", "curl", "fwknop"]) {
        return;
    }
    const METRICS_O: &str = "127.0.0.1:19652";
    let s = one_slot_server("mo", 22093, METRICS_O, true);
    let d = s.start();
    burst(&s, 40);
    let url = format!("http://{METRICS_O}/metrics");
    let text = scrape_until(s.svc.server(), &url, "postern_granted_total", 40.0);
    assert_eq!(
        metric_sample(&text, "postern_granted_total"),
        40.0,
        "{text}"
    );
    assert_eq!(
        metric_sample(&text, "postern_refused_total{stage=\"overload\"}"),
        0.0,
        "{text}"
    );
    assert!(!d.log_text().contains("at overload"), "{}", d.log_text());
}

/// Packets for a stanza without HMAC are only plausible (anyone can make
/// one): when there is no room they are shed, never silently: each is counted
/// at `overload` and logged at WARN (rate-limited), and the knocks that had
/// room are granted.
#[test]
fn packets_without_hmac_are_shed_when_full_counted_and_logged_at_warn() {
    if !runnable(&["nft", "curl", "fwknop"]) {
        return;
    }
    const METRICS_N: &str = "127.0.0.1:19653";
    let s = one_slot_server("mn", 22094, METRICS_N, false);
    let d = s.start();
    burst(&s, 40);
    let url = format!("http://{METRICS_N}/metrics");
    let text = scrape_until(
        s.svc.server(),
        &url,
        "postern_refused_total{stage=\"overload\"}",
        1.0,
    );
    assert!(
        metric_sample(&text, "postern_refused_total{stage=\"overload\"}") >= 1.0,
        "no overload in a burst of 40 with room for 1\n{text}"
    );
    assert!(
        metric_sample(&text, "postern_granted_total") >= 1.0,
        "{text}"
    );
    assert!(
        d.wait_log(
            "at overload: work queue full (a packet for a stanza without HMAC is shed)",
            1,
            Duration::from_secs(5)
        ),
        "shed packets were not logged at WARN:\n{}",
        d.log_text()
    );
    assert!(d.log_text().contains(" WARN "), "{}", d.log_text());
}

/// The kernel's drops are told apart. Datagrams of a length no stanza takes
/// are counted at `length_filter` and not warned about (the filter works as
/// meant); a flood into the full buffer of a stopped posternd is counted at
/// `buffer_full` and logged at WARN (knocks may have been among them).
#[test]
fn kernel_drops_are_counted_by_why_and_a_full_buffer_is_warned_about() {
    if !runnable(&["nft", "curl", "fwknop"]) {
        return;
    }
    const METRICS_K: &str = "127.0.0.1:19654";
    let s = Setup::new(
        Service::open("mk", 22095),
        30,
        "memory",
        &format!(
            "{}\n{}\n[metrics]\nlisten = \"{METRICS_K}\"\n",
            udp_capture(SPA_PORT),
            nftables_action(22095)
        ),
    );
    let d = s.start();
    let url = format!("http://{METRICS_K}/metrics");
    let filtered = "postern_capture_kernel_drops_total{capture=\"udp\",reason=\"length_filter\"}";
    let full = "postern_capture_kernel_drops_total{capture=\"udp\",reason=\"buffer_full\"}";
    let to: SocketAddr = (s.svc.pair.server_ip, SPA_PORT).into();
    // Garbage of a knock's length passes the filter (and fails the HMAC).
    let same_length = vec![b'A'; saved_packet(&s.svc, &s.keys, &[]).len()];
    let send = |payloads: Vec<Vec<u8>>| {
        let n = payloads.len();
        udp_send_all(
            s.svc.client(),
            to,
            payloads,
            n,
            Duration::ZERO,
            Duration::ZERO,
        )
    };

    send(vec![vec![b'A'; 7]; 50]);
    send(vec![same_length.clone()]);
    let text = scrape_until(s.svc.server(), &url, filtered, 50.0);
    assert_eq!(metric_sample(&text, filtered), 50.0, "{text}");
    assert_eq!(metric_sample(&text, full), 0.0, "{text}");

    d.signal(libc::SIGSTOP);
    let sent = send(vec![same_length.clone(); 40_000]).sent;
    d.signal(libc::SIGCONT);
    std::thread::sleep(Duration::from_millis(500));
    send(vec![same_length]);
    let text = scrape_until(s.svc.server(), &url, full, 1.0);
    let dropped = metric_sample(&text, full);
    assert!(
        dropped >= 1.0 && dropped < sent as f64,
        "{dropped} counted as buffer-full drops of {sent} sent\n{text}"
    );
    assert_eq!(metric_sample(&text, filtered), 50.0, "{text}");
    assert!(
        d.wait_log("its socket buffer was full", 1, Duration::from_secs(5)),
        "{}",
        d.log_text()
    );
    assert!(d.log_text().contains(" WARN "), "{}", d.log_text());
    let log = d.log_text();
    let filter_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("length filter refused"))
        .collect();
    assert!(
        !filter_lines.is_empty() && filter_lines.iter().all(|l| l.contains(" DEBUG ")),
        "length-filter drops are logged at debug only\n{log}"
    );
}

/// The pcap capture's ring: a flood into the ring of a stopped posternd is
/// counted at `buffer_full` and logged at WARN, as the UDP socket's.
#[test]
fn a_full_pcap_ring_is_counted_and_warned_about() {
    if !runnable(&["nft", "curl", "fwknop"]) {
        return;
    }
    const METRICS_P: &str = "127.0.0.1:19655";
    let s = Setup::new(
        Service::open("mp", 22096),
        30,
        "memory",
        &format!(
            "{}\n{}\n[metrics]\nlisten = \"{METRICS_P}\"\n",
            pcap_capture(Pair::SERVER_IF, SPA_PORT),
            nftables_action(22096)
        ),
    );
    let d = s.start();
    let url = format!("http://{METRICS_P}/metrics");
    let full = "postern_capture_kernel_drops_total{capture=\"pcap\",reason=\"buffer_full\"}";
    let to: SocketAddr = (s.svc.pair.server_ip, SPA_PORT).into();
    let same_length = vec![b'A'; saved_packet(&s.svc, &s.keys, &[]).len()];
    d.signal(libc::SIGSTOP);
    // Four times what the ring holds.
    let n = 40_000;
    let sent = udp_send_all(
        s.svc.client(),
        to,
        vec![same_length; n],
        n,
        Duration::ZERO,
        Duration::ZERO,
    )
    .sent;
    d.signal(libc::SIGCONT);
    let text = scrape_until(s.svc.server(), &url, full, 1.0);
    let dropped = metric_sample(&text, full);
    assert!(
        dropped >= 1.0 && dropped < sent as f64,
        "{dropped} counted as buffer-full drops of {sent} sent\n{text}"
    );
    assert!(
        d.wait_log("its capture ring was full", 1, Duration::from_secs(5)),
        "{}",
        d.log_text()
    );
    assert!(d.log_text().contains(" WARN "), "{}", d.log_text());
    // And the capture still takes knocks: closed, knock, open.
    assert!(!s.svc.reachable(Duration::from_millis(400)));
    knock_ok(&s.svc, &s.keys, &[]);
    assert!(
        s.svc.wait_reachable(true, Duration::from_secs(5)),
        "{}",
        d.log_text()
    );
}
