//! posternd refuses replays and stale packets, end to end.
//!
//! - One packet built by the real client (`fwknop -T -B FILE`: saved, not sent),
//!   then its bytes sent over UDP from the client namespace: the first copy (sent
//!   twice back to back, racing) opens the port; once the grant has expired, the
//!   copy sent again opens nothing; after posternd restarts with the same run dir
//!   (file replay store), the copy still opens nothing, while a fresh knock does.
//! - A packet stamped 300 s in the past (`fwknop --time-offset-minus 300s`) or in
//!   the future (`--time-offset-plus`) is refused with MAX_SPA_PACKET_AGE 120,
//!   and a fresh knock still opens.
//! - `posternd -v` logs why a packet was refused (HMAC, age, replay).

use postern_e2e::posternd::{
    knock_ok, nft_grants4, nftables_action, runnable, saved_packet, udp_capture, udp_send_all,
    Posternd, Service, Setup, SPA_PORT,
};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

const PORT: u16 = 22022;
const TIMEOUT: u64 = 2;

fn setup(tag: &str) -> Setup {
    Setup::new(
        Service::open(tag, PORT),
        TIMEOUT,
        "file",
        &format!("{}\n{}", udp_capture(SPA_PORT), nftables_action(PORT)),
    )
}

fn send(svc: &Service, packet: &[u8], copies: usize) {
    let to = SocketAddr::new(IpAddr::V4(svc.pair.server_ip), SPA_PORT);
    let ex = udp_send_all(
        svc.client(),
        to,
        vec![packet.to_vec(); copies],
        0,
        Duration::ZERO,
        Duration::ZERO,
    );
    assert!(ex.errors.is_empty(), "sending the packet: {:?}", ex.errors);
}

#[test]
fn replayed_packet_opens_nothing_also_after_restart() {
    if !runnable(&["fwknop", "nft"]) {
        return;
    }
    let s = setup("rp");
    let svc = &s.svc;
    let mut d = Posternd::start(svc.server(), &s.args, s.conf.dir.path());
    let ctx = |what: &str, d: &Posternd| {
        format!(
            "{what}\n--- posternd log ---\n{}\n--- nft ---\n{}",
            d.log_text(),
            svc.nft_ruleset()
        )
    };
    let packet = saved_packet(svc, &s.keys, &[]);
    assert!(
        !svc.reachable(Duration::from_millis(700)),
        "{}",
        ctx(
            "open before anything was sent (fwknop -T must not send)",
            &d
        )
    );

    // The packet, twice back to back: one grant.
    send(svc, &packet, 2);
    assert!(
        svc.wait_reachable(true, Duration::from_secs(5)),
        "{}",
        ctx("the saved packet did not open the port", &d)
    );
    let grants = nft_grants4(svc.server()).unwrap_or_else(|e| panic!("{}", ctx(&e, &d)));
    assert_eq!(
        grants.len(),
        1,
        "{}",
        ctx(&format!("grants4: {grants:?}"), &d)
    );
    assert!(
        svc.wait_reachable(false, Duration::from_secs(TIMEOUT + 6)),
        "{}",
        ctx("did not close after the timeout", &d)
    );

    // The same bytes again: refused.
    send(svc, &packet, 1);
    assert!(
        svc.stays_closed(Duration::from_millis(1500)),
        "{}",
        ctx("the replayed packet reopened the port", &d)
    );
    assert_eq!(
        nft_grants4(svc.server()).map(|g| g.len()),
        Ok(0),
        "{}",
        ctx("a grant appeared for the replay", &d)
    );

    // Restart with the same run dir: the replay store remembers.
    let st = d.terminate(Duration::from_secs(3));
    assert!(
        st.is_some_and(|s| s.success()),
        "{}",
        ctx(&format!("posternd did not exit cleanly: {st:?}"), &d)
    );
    let d2 = Posternd::start(svc.server(), &s.args, s.conf.dir.path());
    send(svc, &packet, 1);
    assert!(
        svc.stays_closed(Duration::from_millis(1500)),
        "{}",
        ctx("after a restart the replayed packet opened the port", &d2)
    );
    // The restarted daemon does serve: a fresh knock opens.
    knock_ok(svc, &s.keys, &[]);
    assert!(
        svc.wait_reachable(true, Duration::from_secs(5)),
        "{}",
        ctx("the restarted posternd did not open for a fresh knock", &d2)
    );
}

#[test]
fn packets_outside_max_packet_age_open_nothing() {
    if !runnable(&["fwknop", "nft"]) {
        return;
    }
    let s = setup("ra");
    let svc = &s.svc;
    let d = Posternd::start(svc.server(), &s.args, s.conf.dir.path());
    let ctx = |what: &str| format!("{what}\n--- posternd log ---\n{}", d.log_text());
    for offset in ["--time-offset-minus", "--time-offset-plus"] {
        knock_ok(svc, &s.keys, &[offset, "300s"]);
        assert!(
            svc.stays_closed(Duration::from_millis(1500)),
            "{}",
            ctx(&format!("a packet with {offset} 300s opened the port"))
        );
    }
    assert_eq!(nft_grants4(svc.server()).map(|g| g.len()), Ok(0));
    knock_ok(svc, &s.keys, &[]);
    assert!(
        svc.wait_reachable(true, Duration::from_secs(5)),
        "{}",
        ctx("a fresh knock did not open the port")
    );
}

/// `posternd -v` ("debug: why each packet was refused"): a refused packet leaves a
/// log line with the reason, as fwknopd does for the same cases.
#[test]
fn refused_packets_are_logged_with_the_reason_at_debug() {
    if !runnable(&["fwknop", "nft"]) {
        return;
    }
    let s = setup("rl");
    let svc = &s.svc;
    let d = Posternd::start(svc.server(), &s.args, s.conf.dir.path());
    let mut missing = Vec::new();
    let mut expect = |what: &str, needles: &[&str]| {
        let found =
            postern_e2e::wait_until(Duration::from_secs(2), Duration::from_millis(50), || {
                let log = d.log_text().to_lowercase();
                needles.iter().any(|n| log.contains(&n.to_lowercase()))
            });
        if !found {
            missing.push(format!("{what} (none of {needles:?})"));
        }
    };

    // Wrong HMAC key.
    let mut wrong = s.keys.clone();
    wrong.hmac = Some((
        "sha256".into(),
        postern_e2e::scenario::Secret::Base64(postern_e2e::scenario::random_b64(64)),
    ));
    knock_ok(svc, &wrong, &[]);
    expect("wrong HMAC key", &["hmac"]);

    // Stale packet.
    knock_ok(svc, &s.keys, &["--time-offset-minus", "300s"]);
    expect(
        "packet 300 s old",
        &["MAX_SPA_PACKET_AGE", "too old", "timestamp"],
    );

    // Replay.
    let packet = saved_packet(svc, &s.keys, &[]);
    send(svc, &packet, 1);
    assert!(svc.wait_reachable(true, Duration::from_secs(5)));
    send(svc, &packet, 1);
    expect("replayed packet", &["replay"]);

    assert!(
        missing.is_empty(),
        "posternd -v logged no reason for: {}\n--- posternd log ---\n{}",
        missing.join(", "),
        d.log_text()
    );
}
