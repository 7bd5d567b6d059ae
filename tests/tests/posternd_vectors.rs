//! Every line of the shared `vectors/must-reject.txt` (2948 packets: fuzzed,
//! truncated, HMAC-stripped, oversized, empty, …) sent over UDP to posternd from
//! the client namespace, posternd configured with receiver R6's keys (the receiver
//! most of the generated mutations were made for; see vectors/README.md):
//!
//! - every datagram reaches posternd's socket (the server namespace's UDP counters
//!   grow by the count, no receive-buffer drops);
//! - nothing opens (TCP connect still fails, `grants4` is empty);
//! - nothing is answered (the sending socket receives no datagram and no ICMP error);
//! - posternd still runs and a valid knock with R6's keys opens the port.

use postern_e2e::posternd::{
    access_conf, knock_ok, nft_grants4, nftables_action, postern_toml, runnable, udp_capture,
    udp_send_all, ConfDir, Posternd, Service, SPA_PORT,
};
use postern_e2e::scenario::{Secret, SpaKeys};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

const PORT: u16 = 22022;

/// Receiver R6 from vectors/README.md.
fn r6() -> SpaKeys {
    SpaKeys {
        key: Secret::Base64("7GUhvzM3zXNUTPqUMAixKOMqVNDh6qrIUgqWdacXNMA=".into()),
        hmac: Some((
            "sha256".into(),
            Secret::Base64(
                "YME3rcTN5fZ4D1oqV0NbiFNd4Hx1Nc4bNfgICPxjTzKpIiLBENuMtmsBWU+H+5c7oN2d4/iLa9TJ5HM8gLrSrQ=="
                    .into(),
            ),
        )),
        mode: "cbc".into(),
    }
}

fn must_reject_lines() -> Vec<Vec<u8>> {
    let path = postern_e2e::test_data_dir()
        .join("vectors")
        .join("must-reject.txt");
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines: Vec<Vec<u8>> = text.split(|&b| b == b'\n').map(|l| l.to_vec()).collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop(); // the newline ending the file
    }
    lines
}

/// `Udp:` InDatagrams and RcvbufErrors of the network namespace `pid` lives in.
fn udp_counters(pid: u32) -> (u64, u64) {
    let snmp = std::fs::read_to_string(format!("/proc/{pid}/net/snmp")).expect("net/snmp");
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = udp.next().expect("Udp header").split_whitespace().collect();
    let values: Vec<u64> = udp
        .next()
        .expect("Udp values")
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let get = |n: &str| {
        names
            .iter()
            .skip(1)
            .position(|x| *x == n)
            .map(|i| values[i])
            .unwrap_or(0)
    };
    // Datagrams the socket's length filter refused count as InErrors (as do
    // receive-buffer drops, reported apart): both reached posternd's socket.
    let (errors, rcvbuf) = (get("InErrors"), get("RcvbufErrors"));
    (get("InDatagrams") + errors.saturating_sub(rcvbuf), rcvbuf)
}

#[test]
fn must_reject_vectors_open_nothing_and_get_no_answer() {
    if !runnable(&["fwknop", "nft"]) {
        return;
    }
    let lines = must_reject_lines();
    assert_eq!(lines.len(), 2948, "must-reject.txt should hold 2948 lines");
    assert!(
        lines.iter().any(|l| l.is_empty()),
        "the empty packet is there"
    );

    let svc = Service::open("vr", PORT);
    let keys = r6();
    let conf = ConfDir::new();
    conf.write(
        "access.conf",
        &access_conf(&keys, Some(&format!("tcp/{PORT}")), 3, ""),
    );
    conf.write(
        "postern.toml",
        &postern_toml(
            &conf,
            "access.conf",
            "memory",
            &format!("{}\n{}", udp_capture(SPA_PORT), nftables_action(PORT)),
        ),
    );
    let mut d = Posternd::start(
        svc.server(),
        &["-c".into(), conf.arg("postern.toml"), "-v".into()],
        conf.dir.path(),
    );
    let ctx = |what: &str, d: &Posternd| {
        format!(
            "{what}\n--- posternd log ---\n{}\n--- nft ---\n{}",
            d.log_text(),
            svc.nft_ruleset()
        )
    };

    let (in_before, drops_before) = udp_counters(d.pid());
    let n = lines.len();
    let to = SocketAddr::new(IpAddr::V4(svc.pair.server_ip), SPA_PORT);
    // Paced so that no datagram is lost in the receive buffer.
    let ex = udp_send_all(
        svc.client(),
        to,
        lines,
        16,
        Duration::from_millis(2),
        Duration::from_millis(1000),
    );
    assert_eq!(ex.sent, n);
    let (in_after, drops_after) = udp_counters(d.pid());
    assert_eq!(
        (in_after - in_before, drops_after - drops_before),
        (n as u64, 0),
        "{}",
        ctx(
            "not every datagram reached posternd's socket (delivered or refused by its length filter, buffer drops)",
            &d
        )
    );
    assert!(
        ex.answers.is_empty() && ex.errors.is_empty(),
        "{}",
        ctx(
            &format!(
                "posternd answered: {} datagram(s) {:?}, socket errors {:?}",
                ex.answers.len(),
                ex.answers.first(),
                ex.errors
            ),
            &d
        )
    );
    assert!(d.is_running(), "{}", ctx("posternd died", &d));
    assert_eq!(
        nft_grants4(svc.server()).map(|g| g.len()),
        Ok(0),
        "{}",
        ctx("a must-reject packet was granted", &d)
    );
    assert!(
        !svc.reachable(Duration::from_millis(700)),
        "{}",
        ctx("the port is open after the must-reject packets", &d)
    );

    knock_ok(&svc, &keys, &[]);
    assert!(
        svc.wait_reachable(true, Duration::from_secs(5)),
        "{}",
        ctx(
            "after the must-reject packets a valid knock did not open the port",
            &d
        )
    );
}
