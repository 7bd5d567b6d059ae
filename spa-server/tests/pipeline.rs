//! The whole server in-process on loopback, with a recording firewall: real
//! packets in over UDP/TCP, grants (or none) out.

use spa_core::firewall::MemoryFirewall;
use spa_core::packet::{self, HmacKey, PacketKeys};
use spa_core::{DigestType, EncryptionMode, MessageType, Secret, SpaMessage};
use spa_server::config::{AccessStanza, AddrList, CaptureConfig, ReplayConfig, ServerConfig};
use spa_server::daemon::{start_with_backends, Running};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const KEY: &str = "7GUhvzM3zXNUTPqUMAixKOMqVNDh6qrIUgqWdacXNMA=";
const HMAC: &str =
    "YME3rcTN5fZ4D1oqV0NbiFNd4Hx1Nc4bNfgICPxjTzKpIiLBENuMtmsBWU+H+5c7oN2d4/iLa9TJ5HM8gLrSrQ==";

/// Grants are recorded, nothing is applied (kernel expiry claimed: no sweeping).
type Recorder = MemoryFirewall;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn stanza() -> AccessStanza {
    let mut s = AccessStanza::new(AddrList::Any);
    s.key_base64 = Some(Secret::from_base64("k", KEY).unwrap());
    s.hmac_key_base64 = Some(Secret::from_base64("h", HMAC).unwrap());
    s
}

fn knock(ts: u64, salt: u8) -> String {
    knock_with(ts, salt, DigestType::Sha256)
}

fn knock_with(ts: u64, salt: u8, hmac_type: DigestType) -> String {
    knock_for("127.0.0.1", ts, salt, hmac_type)
}

/// A knock asking access to tcp/22 for `allow_ip`.
fn knock_for(allow_ip: &str, ts: u64, salt: u8, hmac_type: DigestType) -> String {
    seal(access_message(allow_ip, ts, salt), hmac_type)
}

fn access_message(allow_ip: &str, ts: u64, salt: u8) -> SpaMessage {
    SpaMessage {
        rand_val: format!("{:016}", 1234567890123456u64 + u64::from(salt)),
        username: "alice".into(),
        timestamp: ts,
        version: "3.0.0".into(),
        msg_type: MessageType::Access,
        message: format!("{allow_ip},tcp/22"),
        nat_access: None,
        server_auth: None,
        client_timeout: None,
    }
}

fn seal(msg: SpaMessage, hmac_type: DigestType) -> String {
    let salt = [msg.rand_val.as_bytes()[15]; 8];
    let key = Secret::from_base64("k", KEY).unwrap();
    let hmac = Secret::from_base64("h", HMAC).unwrap();
    let keys = PacketKeys {
        key: key.bytes(),
        mode: EncryptionMode::Cbc,
        hmac: Some(HmacKey {
            digest: hmac_type,
            key: hmac.bytes(),
        }),
    };
    packet::seal(&msg, DigestType::Sha256, &keys, &salt).unwrap()
}

struct Server {
    running: Running,
    recorder: Recorder,
    udp: SocketAddr,
    tcp: SocketAddr,
}

async fn server(replay: ReplayConfig) -> Server {
    server_with(replay, |_| {}).await
}

/// [`server`] with `tweak` applied to its configuration.
async fn server_with(replay: ReplayConfig, tweak: impl FnOnce(&mut ServerConfig)) -> Server {
    let (udp, tcp): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
    );
    let mut cfg = ServerConfig {
        capture: vec![CaptureConfig::Udp { listen: udp }, CaptureConfig::tcp(tcp)],
        replay,
        access: vec![stanza()],
        ..ServerConfig::default()
    };
    tweak(&mut cfg);
    let recorder = MemoryFirewall::new(true);
    let running = start_with_backends(cfg, vec![Box::new(recorder.clone())])
        .await
        .unwrap();
    Server {
        running,
        recorder,
        udp,
        tcp,
    }
}

/// Bounded wait for the recorder to reach `n` grants.
async fn wait_for_grants(r: &Recorder, n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(3);
    while r.granted().len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    r.granted().len()
}

fn send(to: SocketAddr, payload: &[u8]) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.send_to(payload, to).unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_knock_over_udp_is_granted_once_and_a_replay_is_not() {
    let s = server(ReplayConfig::Memory).await;
    let pkt = knock(now(), 1);
    send(s.udp, pkt.as_bytes());
    assert_eq!(wait_for_grants(&s.recorder, 1).await, 1);
    let g = &s.recorder.granted()[0];
    assert_eq!(g.rule.source.to_string(), "127.0.0.1");
    assert_eq!(g.rule.port, 22);
    assert_eq!(g.timeout_secs, 30);
    // Same packet again, and racing copies: no further grant.
    for _ in 0..5 {
        send(s.udp, pkt.as_bytes());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.recorder.granted().len(), 1);
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_after_restart_is_rejected_with_the_file_store() {
    let dir = tempfile::tempdir().unwrap();
    let replay = ReplayConfig::File {
        path: Some(dir.path().join("replay.redb")),
        import_fwknop: None,
    };
    let pkt = knock(now(), 2);
    let s = server(replay.clone()).await;
    send(s.udp, pkt.as_bytes());
    assert_eq!(wait_for_grants(&s.recorder, 1).await, 1);
    s.running.stop().await;

    let s = server(replay).await;
    send(s.udp, pkt.as_bytes());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        s.recorder.granted().len(),
        0,
        "replayed packet granted after restart"
    );
    send(s.udp, knock(now(), 3).as_bytes());
    assert_eq!(
        wait_for_grants(&s.recorder, 1).await,
        1,
        "fresh packet still served"
    );
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_and_future_packets_are_rejected() {
    let s = server(ReplayConfig::Memory).await;
    send(s.udp, knock(now() - 500, 4).as_bytes());
    send(s.udp, knock(now() + 500, 5).as_bytes());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(s.recorder.granted().is_empty());
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tcp_capture_reads_the_packet_from_the_stream() {
    use tokio::io::AsyncWriteExt;
    let s = server(ReplayConfig::Memory).await;
    let mut stream = tokio::net::TcpStream::connect(s.tcp).await.unwrap();
    stream.write_all(knock(now(), 6).as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();
    assert_eq!(wait_for_grants(&s.recorder, 1).await, 1);
    // A silent connection is cut at the read timeout and grants nothing.
    let _idle = tokio::net::TcpStream::connect(s.tcp).await.unwrap();
    s.running.stop().await;
}

/// The captures stamp each packet's arrival with the daemon's clock, not the
/// system's: with the clock ten years back, a knock made now is too old and
/// one made ten years ago is fresh, over UDP and over TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_read_arrival_from_the_daemons_clock() {
    use tokio::io::AsyncWriteExt;
    const TEN_YEARS: u64 = 10 * 365 * 86_400;
    let then = now() - TEN_YEARS;
    let clock = std::sync::Arc::new(spa_core::ManualClock::new(then));
    let (udp, tcp): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
    );
    let cfg = ServerConfig {
        capture: vec![CaptureConfig::Udp { listen: udp }, CaptureConfig::tcp(tcp)],
        access: vec![stanza()],
        ..ServerConfig::default()
    };
    let recorder = MemoryFirewall::new(true);
    let running =
        spa_server::daemon::start_with_clock(cfg, vec![Box::new(recorder.clone())], clock.clone())
            .await
            .unwrap();
    // Made now: ten years in the future for posternd, refused.
    send(udp, knock(now(), 40).as_bytes());
    let mut stream = tokio::net::TcpStream::connect(tcp).await.unwrap();
    stream.write_all(knock(now(), 41).as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        recorder.granted().len(),
        0,
        "a knock from the future granted"
    );
    // Made at the clock's time: granted over both.
    send(udp, knock(then, 42).as_bytes());
    assert_eq!(wait_for_grants(&recorder, 1).await, 1, "over UDP");
    let mut stream = tokio::net::TcpStream::connect(tcp).await.unwrap();
    stream.write_all(knock(then, 43).as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();
    assert_eq!(wait_for_grants(&recorder, 2).await, 2, "over TCP");
    running.stop().await;
}

/// A NAT request naming its target by host name: refused by default (fwknopd
/// too), resolved with `[server.nat] dns` (ENABLE_NAT_DNS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_host_names_are_resolved_only_with_nat_dns() {
    for dns in [false, true] {
        let s = server_with(ReplayConfig::Memory, |c| {
            c.server.nat.forwarding = true;
            c.server.nat.dns = dns;
            // `localhost` is a loopback target: only an explicit entry allows it.
            c.access[0].nat_allow =
                spa_server::config::access::parse_nat_allow("127.0.0.1:2222").unwrap();
        })
        .await;
        let mut msg = access_message("127.0.0.1", now(), 60);
        msg.msg_type = MessageType::NatAccess;
        msg.nat_access = Some("localhost,2222".into());
        send(s.udp, seal(msg, DigestType::Sha256).as_bytes());
        if dns {
            assert_eq!(wait_for_grants(&s.recorder, 1).await, 1, "not granted");
            let nat = s.recorder.granted()[0]
                .rule
                .nat
                .clone()
                .expect("a NAT rule");
            assert_eq!(nat.to_addr.to_string(), "127.0.0.1");
            assert_eq!(nat.to_port, 2222);
        } else {
            tokio::time::sleep(Duration::from_millis(400)).await;
            assert!(s.recorder.granted().is_empty(), "granted a host name");
        }
        s.running.stop().await;
    }
}

/// SPA over HTTP through a proxy: a knock for 0.0.0.0 opens for the client the
/// proxy names in X-Forwarded-For when that is enabled, else for the sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_names_the_client_of_a_proxied_http_knock() {
    use tokio::io::AsyncWriteExt;
    for (xff_enabled, want) in [(true, "192.0.2.55"), (false, "127.0.0.1")] {
        let s = server_with(ReplayConfig::Memory, |c| {
            c.server.spa_over_http = true;
            c.server.x_forwarded_for = xff_enabled;
        })
        .await;
        let wire = knock_for("0.0.0.0", now(), 50, DigestType::Sha256);
        let request = spa_core::http::request(&wire, "server", "Fwknop/2.6.10").replacen(
            "\r\nHost:",
            "\r\nX-Forwarded-For: 192.0.2.55\r\nHost:",
            1,
        );
        let mut stream = tokio::net::TcpStream::connect(s.tcp).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        stream.shutdown().await.unwrap();
        assert_eq!(
            wait_for_grants(&s.recorder, 1).await,
            1,
            "xff {xff_enabled}"
        );
        assert_eq!(
            s.recorder.granted()[0].rule.source.to_string(),
            want,
            "xff {xff_enabled}"
        );
        s.running.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn must_reject_lines_open_nothing_answer_nothing_and_the_server_keeps_serving() {
    let s = server(ReplayConfig::Memory).await;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/vectors/must-reject.txt");
    let text = std::fs::read(path).unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').take(2948).collect();
    for (i, line) in lines.iter().enumerate() {
        sock.send_to(line, s.udp).unwrap();
        if i % 200 == 0 {
            // Let the loop drain so the kernel buffer never drops test traffic.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        s.recorder.granted().is_empty(),
        "a must-reject line was granted"
    );
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        sock.recv_from(&mut buf).is_err(),
        "the server answered a bad packet"
    );
    send(s.udp, knock(now(), 7).as_bytes());
    assert_eq!(wait_for_grants(&s.recorder, 1).await, 1);
    s.running.stop().await;
}

/// A reload that changes the packet lengths a stanza takes (here the HMAC type)
/// refits the UDP socket's kernel length filter: the new knocks get through
/// (sha1 HMACs are 27 characters: no sha1 packet has a length a sha256 stanza takes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_refits_the_kernel_length_filter() {
    let s = server(ReplayConfig::Memory).await;
    let sha1 = knock_with(now(), 8, DigestType::Sha1);
    let mut reloaded = stanza();
    reloaded.hmac_digest_type = DigestType::Sha1;
    s.running.keyring.replace(vec![reloaded]);
    // The capture refits its filter as the stanzas are swapped, from a task of
    // its own; resend until that has happened.
    let deadline = Instant::now() + Duration::from_secs(4);
    while s.recorder.granted().is_empty() && Instant::now() < deadline {
        send(s.udp, sha1.as_bytes());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        s.recorder.granted().len(),
        1,
        "a knock of the reloaded stanza's length never got through"
    );
    s.running.stop().await;
}

/// The pipeline itself, one packet at a time, with the real action task and a
/// recording firewall: each call returns the packet's verdict, so a test knows a
/// copy was refused before it sends the next one.
mod stages {
    use super::*;
    use spa_server::actions::Executor;
    use spa_server::config::AccessStanza;
    use spa_server::pipeline::{self, Keyring, Outcome, Pipeline, Received, Stage};
    use spa_server::policy::PolicySettings;
    use spa_server::replay::{MemoryStore, PacketDigest, ReplayError, ReplayStore};
    use std::net::IpAddr;
    use std::sync::Arc;
    use tower::ServiceExt;

    pub(super) struct Direct {
        pipeline: Pipeline,
        keyring: Arc<Keyring>,
        recorder: Recorder,
        shutdown: tokio_util::sync::CancellationToken,
    }

    impl Direct {
        fn new(stanzas: Vec<AccessStanza>) -> Direct {
            Direct::with_store(stanzas, Arc::new(MemoryStore::default()))
        }

        pub(super) fn with_store(
            stanzas: Vec<AccessStanza>,
            store: Arc<dyn ReplayStore>,
        ) -> Direct {
            let keyring = Arc::new(Keyring::new(stanzas));
            let server = ServerConfig::default().server;
            let settings = PolicySettings::of(&server);
            let recorder = MemoryFirewall::new(true);
            let shutdown = tokio_util::sync::CancellationToken::new();
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            Executor::new(
                vec![Box::new(recorder.clone())],
                &server,
                std::sync::Arc::new(spa_core::SystemClock),
            )
            .spawn(rx, shutdown.clone());
            Direct {
                pipeline: pipeline::build_with_gpg(keyring.clone(), store, settings, tx, 64, None),
                keyring,
                recorder,
                shutdown,
            }
        }

        /// `wire` from `from` to `to` (None: the capture does not know), and its verdict.
        pub(super) async fn knock(&self, wire: &str, from: &str, to: Option<&str>) -> Outcome {
            match self.screen(wire, from, to) {
                Ok(packet) => self.pipeline.clone().oneshot(packet).await.unwrap(),
                Err(refused) => refused,
            }
        }

        /// Only the screen, as a capture runs it.
        pub(super) fn screen(
            &self,
            wire: &str,
            from: &str,
            to: Option<&str>,
        ) -> Result<pipeline::Authenticated, Outcome> {
            self.pipeline.clone().screen(Received {
                bytes: wire.as_bytes(),
                peer: SocketAddr::new(from.parse().unwrap(), 40000),
                forwarded_for: None,
                destination: to.map(|a| a.parse::<IpAddr>().unwrap()),
                received_at: now(),
                capture: "test",
            })
        }
    }

    impl Drop for Direct {
        fn drop(&mut self) {
            self.shutdown.cancel();
        }
    }

    fn stage_of(o: &Outcome) -> Option<Stage> {
        o.stage()
    }

    /// A refusal as a replay (the stage and reason; the packet's facts vary).
    fn replay() -> (Option<Stage>, Option<&'static str>) {
        (Some(Stage::Replay), Some("packet seen before (replay)"))
    }

    fn verdict(o: &Outcome) -> (Option<Stage>, Option<&str>) {
        (o.stage(), o.reason())
    }

    fn no_hmac_stanza() -> AccessStanza {
        let mut s = stanza();
        s.hmac_key_base64 = None;
        s
    }

    fn seal_without_hmac(msg: SpaMessage) -> String {
        let key = Secret::from_base64("k", KEY).unwrap();
        let keys = PacketKeys {
            key: key.bytes(),
            mode: EncryptionMode::Cbc,
            hmac: None,
        };
        packet::seal(&msg, DigestType::Sha256, &keys, &[9; 8]).unwrap()
    }

    /// A copy sent to an address the stanza's DESTINATION does not list, raced in
    /// before the real knock: refused by policy, and the real knock is still
    /// granted (once). Recorded before policy, the copy would burn it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_copy_to_another_destination_does_not_burn_the_real_knock() {
        let mut s = stanza();
        s.destination = Some(AddrList::parse("127.0.0.1").unwrap());
        let d = Direct::new(vec![s]);
        let pkt = knock(now(), 70);
        let copy = d.knock(&pkt, "127.0.0.1", Some("127.0.0.2")).await;
        assert_eq!(stage_of(&copy), Some(Stage::Policy), "{copy:?}");
        let real = d.knock(&pkt, "127.0.0.1", Some("127.0.0.1")).await;
        assert!(real.is_granted(), "real knock refused: {real:?}");
        assert_eq!(
            verdict(&d.knock(&pkt, "127.0.0.1", Some("127.0.0.1")).await),
            replay()
        );
        assert_eq!(d.recorder.granted().len(), 1);
    }

    /// The copy comes from another address (an attacker on the path), where a
    /// stanza with the same keys has REQUIRE_SOURCE_ADDRESS: a knock for 0.0.0.0
    /// fails there, and is still granted from the real client.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_copy_from_a_stricter_stanzas_source_does_not_burn_the_real_knock() {
        let mut strict = stanza();
        strict.source = AddrList::parse("192.0.2.66").unwrap();
        strict.require_source_address = true;
        let mut client = stanza();
        client.source = AddrList::parse("127.0.0.1").unwrap();
        let d = Direct::new(vec![strict, client]);
        let pkt = knock_for("0.0.0.0", now(), 71, DigestType::Sha256);
        let copy = d.knock(&pkt, "192.0.2.66", None).await;
        assert_eq!(stage_of(&copy), Some(Stage::Policy), "{copy:?}");
        let real = d.knock(&pkt, "127.0.0.1", None).await;
        assert!(real.is_granted(), "real knock refused: {real:?}");
        assert_eq!(verdict(&d.knock(&pkt, "127.0.0.1", None).await), replay());
        let granted = d.recorder.granted();
        assert_eq!(granted.len(), 1);
        assert_eq!(granted[0].rule.source.to_string(), "127.0.0.1");
    }

    /// A store without the early `seen` hint (as the Redis one): every copy gets
    /// through decryption and policy, only the check-and-insert decides.
    #[derive(Default)]
    struct NoHint(MemoryStore);

    #[async_trait::async_trait]
    impl ReplayStore for NoHint {
        async fn check_and_insert(
            &self,
            digest: PacketDigest,
            stamp: u64,
        ) -> Result<bool, ReplayError> {
            self.0.check_and_insert(digest, stamp).await
        }
        async fn prune(&self, cutoff: u64) -> Result<usize, ReplayError> {
            self.0.prune(cutoff).await
        }
        fn len(&self) -> usize {
            self.0.len()
        }
    }

    /// Copies racing through policy at once: the store's atomic check-and-insert
    /// lets one by.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_copies_that_pass_policy_are_granted_once() {
        let d = Arc::new(Direct::with_store(
            vec![stanza()],
            Arc::new(NoHint::default()),
        ));
        let pkt = knock(now(), 72);
        let start = Arc::new(tokio::sync::Barrier::new(8));
        let racers: Vec<_> = (0..8)
            .map(|_| {
                let (d, pkt, start) = (d.clone(), pkt.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    d.knock(&pkt, "127.0.0.1", None).await
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for r in racers {
            outcomes.push(r.await.unwrap());
        }
        assert_eq!(outcomes.iter().filter(|o| o.is_granted()).count(), 1);
        assert!(outcomes
            .iter()
            .all(|o| o.is_granted() || verdict(o) == replay()));
        assert_eq!(d.recorder.granted().len(), 1);
    }

    /// One capture's handle remembers its last replays (their digests), yet
    /// asks the store each time: every copy is refused, and once the store
    /// forgot the packet, a copy passes the screen again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn remembered_replays_are_still_asked_of_the_store() {
        let store = Arc::new(MemoryStore::default());
        let d = Direct::with_store(vec![stanza()], store.clone());
        let pkt = knock(now(), 75);
        assert!(d.knock(&pkt, "127.0.0.1", None).await.is_granted());
        let mut capture = d.pipeline.clone();
        let mut screen = |wire: &str| {
            capture.screen(Received {
                bytes: wire.as_bytes(),
                peer: SocketAddr::new([127, 0, 0, 1].into(), 40000),
                forwarded_for: None,
                destination: None,
                received_at: now(),
                capture: "test",
            })
        };
        for _ in 0..3 {
            let refused = screen(&pkt).expect_err("a copy passed the screen");
            assert_eq!(verdict(&refused), replay());
        }
        assert!(screen(&knock(now(), 76)).is_ok(), "another packet");
        store.prune(u64::MAX).await.unwrap();
        assert!(screen(&pkt).is_ok(), "the store forgot it");
    }

    /// Refusing a flood is hashing, not the allocator: garbage of a knock's
    /// length (a wrong HMAC) allocates nothing, a copy of a granted knock only
    /// its facts for the audit log (one box). Counted by this test binary's
    /// allocator, on this thread.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refusing_garbage_and_replays_barely_allocates() {
        let d = Direct::new(vec![stanza()]);
        let pkt = knock(now(), 77);
        assert!(d.knock(&pkt, "127.0.0.1", None).await.is_granted());
        let mut forged = pkt.clone().into_bytes();
        let middle = forged.len() / 2;
        forged[middle] = if forged[middle] == b'A' { b'B' } else { b'A' };
        let mut capture = d.pipeline.clone();
        let mut allocations_per_screen = |wire: &[u8], want: Stage| {
            let mut screen = || {
                capture.screen(Received {
                    bytes: wire,
                    peer: SocketAddr::new([127, 0, 0, 1].into(), 40000),
                    forwarded_for: None,
                    destination: None,
                    received_at: now(),
                    capture: "test",
                })
            };
            // The first refusal remembers the replay and starts the line budget.
            drop(screen());
            let before = counting::allocations();
            for _ in 0..100 {
                let refused = screen().expect_err("refused");
                assert_eq!(stage_of(&refused), Some(want), "{refused:?}");
            }
            (counting::allocations() - before) as f64 / 100.0
        };
        assert_eq!(allocations_per_screen(&forged, Stage::Hmac), 0.0);
        assert_eq!(allocations_per_screen(pkt.as_bytes(), Stage::Replay), 1.0);
    }

    /// A recorded packet is refused before decryption: after the grant the
    /// stanza's encryption key changes (same HMAC key), and the replay is still
    /// refused as a replay, not as a failed decryption.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replay_is_refused_before_decryption() {
        let d = Direct::new(vec![stanza()]);
        let pkt = knock(now(), 73);
        assert!(d.knock(&pkt, "127.0.0.1", None).await.is_granted());
        let mut rekeyed = stanza();
        rekeyed.key_base64 =
            Some(Secret::from_base64("k", &spa_core::b64::encode_padded(&[1; 32])).unwrap());
        d.keyring.replace(vec![rekeyed]);
        assert_eq!(verdict(&d.knock(&pkt, "127.0.0.1", None).await), replay());
        // A packet never recorded does reach the (now failing) decryption.
        let fresh = d.knock(&knock(now(), 74), "127.0.0.1", None).await;
        assert_eq!(stage_of(&fresh), Some(Stage::Decrypt), "{fresh:?}");
    }

    /// Copies of a knock just refused as a replay skip the HMAC (the
    /// screen's answer is remembered), but are refused as the whole screen
    /// would: a sender put on the BLACKLIST is refused as such, a reload
    /// that changes the HMAC key makes them HMAC failures, and a sender
    /// another stanza lists is screened afresh.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn copies_of_a_replay_are_refused_as_the_whole_screen_would() {
        let mut only_local = stanza();
        only_local.source = AddrList::parse("127.0.0.0/8").unwrap();
        let d = Direct::new(vec![only_local.clone(), stanza()]);
        let pkt = knock(now(), 75);
        assert!(d.knock(&pkt, "127.0.0.1", None).await.is_granted());
        let mut capture = d.pipeline.clone();
        let mut screen = |from: &str| {
            let refused = capture
                .screen(Received {
                    bytes: pkt.as_bytes(),
                    peer: SocketAddr::new(from.parse().unwrap(), 40000),
                    forwarded_for: None,
                    destination: None,
                    received_at: now(),
                    capture: "test",
                })
                .expect_err("a copy is refused");
            let (stage, reason) = verdict(&refused);
            (
                (stage, reason.map(str::to_owned)),
                refused.decision().map(|d| d.candidates.to_vec()),
            )
        };
        let as_replay = |candidates: &[usize]| {
            let (stage, reason) = replay();
            (
                (stage, reason.map(str::to_owned)),
                Some(candidates.to_vec()),
            )
        };
        for _ in 0..3 {
            assert_eq!(screen("127.0.0.1"), as_replay(&[1, 2]));
        }
        // Another sender: the first stanza does not list it.
        assert_eq!(screen("192.0.2.7"), as_replay(&[2]));
        assert_eq!(screen("192.0.2.7"), as_replay(&[2]));
        assert_eq!(screen("127.0.0.1"), as_replay(&[1, 2]));
        d.keyring
            .set_blacklist(vec!["127.0.0.0/8".parse().unwrap()]);
        assert_eq!(screen("127.0.0.1").0 .0, Some(Stage::Blacklist));
        d.keyring.set_blacklist(Vec::new());
        assert_eq!(screen("127.0.0.1"), as_replay(&[1, 2]));
        let mut rekeyed = stanza();
        rekeyed.hmac_key_base64 =
            Some(Secret::from_base64("h", &spa_core::b64::encode_padded(&[2; 32])).unwrap());
        d.keyring.replace(vec![rekeyed]);
        assert_eq!(screen("127.0.0.1").0 .0, Some(Stage::Hmac));
    }

    /// A stanza without HMAC: a valid packet, then every respelling of its last
    /// character (the same ciphertext, another replay digest): one grant each.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn respellings_of_a_packet_without_hmac_are_not_granted_again() {
        let d = Direct::new(vec![no_hmac_stanza()]);
        let (mut grants, mut counts) = (0, std::collections::BTreeSet::new());
        // More ports, longer ciphertexts: lengths with 15, 3 and no respellings.
        for n in 1..=6u8 {
            let mut msg = access_message("127.0.0.1", now(), 80 + n);
            let ports: Vec<String> = (0..n)
                .map(|i| format!("tcp/{}", 22 + u16::from(i)))
                .collect();
            msg.message = format!("127.0.0.1,{}", ports.join(","));
            let pkt = seal_without_hmac(msg);
            grants += usize::from(d.knock(&pkt, "127.0.0.1", None).await.is_granted());
            let prefixed =
                |w: &str| spa_core::b64::decode(&format!("{}{w}", packet::RIJNDAEL_PREFIX));
            let head = &pkt[..pkt.len() - 1];
            let mut respelt = 0;
            for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".chars() {
                let other = format!("{head}{c}");
                if other == pkt || prefixed(&other) != prefixed(&pkt) {
                    continue;
                }
                let o = d.knock(&other, "127.0.0.1", None).await;
                assert_eq!(stage_of(&o), Some(Stage::Decrypt), "{other}: {o:?}");
                grants += usize::from(o.is_granted());
                respelt += 1;
            }
            assert_eq!(verdict(&d.knock(&pkt, "127.0.0.1", None).await), replay());
            counts.insert(respelt);
        }
        assert_eq!(grants, 6, "a respelling was granted");
        assert!(counts.contains(&3) && counts.contains(&15), "{counts:?}");
    }

    /// What each outcome carries for the audit log: a grant, who asked what,
    /// until when, applied by which backend; a refusal by policy, what was
    /// asked but no grant; a replay, only the stanzas whose HMAC took it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn outcomes_carry_the_facts_the_audit_log_records() {
        let mut s = stanza();
        s.open_ports = vec!["tcp/22".parse().unwrap()];
        s.fw_access_timeout = 45;
        let d = Direct::new(vec![stanza_for_another_key(), s]);
        let ts = now();
        let pkt = knock(ts, 72);
        let granted = d.knock(&pkt, "127.0.0.1", Some("127.0.0.2")).await;
        assert!(granted.is_granted(), "{granted:?}");
        let facts = granted.decision().unwrap();
        assert_eq!(facts.capture, "test");
        assert_eq!(facts.destination, Some("127.0.0.2".parse().unwrap()));
        assert_eq!(facts.stanza.as_ref().unwrap().number, 2);
        assert_eq!(facts.user.as_deref(), Some("alice"));
        let asked = facts.request.as_ref().unwrap();
        assert_eq!(
            (asked.kind, asked.message.as_str()),
            ("access", "127.0.0.1,tcp/22")
        );
        assert_eq!(asked.timestamp, ts);
        let grant = facts.grant.as_ref().unwrap();
        assert_eq!(grant.ports, ["tcp/22"]);
        assert_eq!(grant.timeout_seconds, Some(45));
        let opened = d.recorder.granted()[0].clone();
        assert_eq!(
            grant.expires,
            Some(opened.expires_at),
            "the firewall's expiry"
        );
        assert_eq!(facts.backends, ["memory"]);

        let replay = d.knock(&pkt, "127.0.0.1", None).await;
        let facts = replay.decision().unwrap();
        assert_eq!(replay.stage(), Some(Stage::Replay));
        assert_eq!(
            facts.candidates.as_slice(),
            [2],
            "only stanza #2's HMAC key fits"
        );
        assert!(facts.stanza.is_none() && facts.request.is_none());

        let refused = d
            .knock(
                &seal(access_message_to("127.0.0.1", 23, ts), DigestType::Sha256),
                "127.0.0.1",
                None,
            )
            .await;
        assert_eq!(refused.stage(), Some(Stage::Policy), "{refused:?}");
        let facts = refused.decision().unwrap();
        assert_eq!(facts.request.as_ref().unwrap().message, "127.0.0.1,tcp/23");
        assert!(facts.grant.is_none() && facts.backends.is_empty());

        let garbage = d.knock("not a knock", "127.0.0.1", None).await;
        assert_eq!(garbage.decision(), None, "garbage carries nothing");
    }

    /// A stanza with other keys, before the one the test's knocks are for.
    fn stanza_for_another_key() -> AccessStanza {
        let mut s = AccessStanza::new(AddrList::Any);
        s.key_base64 =
            Some(Secret::from_base64("k", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap());
        s.hmac_key_base64 =
            Some(Secret::from_base64("h", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap());
        s
    }

    fn access_message_to(allow_ip: &str, port: u16, ts: u64) -> SpaMessage {
        SpaMessage {
            message: format!("{allow_ip},tcp/{port}"),
            ..access_message(allow_ip, ts, 73)
        }
    }
}

/// The shared replay cache, with a real redis-server.
#[cfg(feature = "redis")]
mod shared_replay {
    use super::*;

    /// A real redis-server of the test's own, on a unix socket in a temp dir (no TCP
    /// port, no persistence); killed on drop.
    struct RedisServer {
        dir: tempfile::TempDir,
        child: Option<std::process::Child>,
    }

    impl RedisServer {
        /// `None` (test skipped) without redis-server, except under CI where it must be.
        fn start() -> Option<RedisServer> {
            let dir = tempfile::tempdir().unwrap();
            let mut r = RedisServer { dir, child: None };
            match r.spawn() {
                Ok(()) => Some(r),
                Err(e) if std::env::var_os("CI").is_none() => {
                    eprintln!("skipped: cannot run redis-server ({e})");
                    None
                }
                Err(e) => panic!("redis-server is needed under CI: {e}"),
            }
        }

        fn socket(&self) -> std::path::PathBuf {
            self.dir.path().join("redis.sock")
        }

        fn url(&self) -> String {
            format!("unix://{}", self.socket().display())
        }

        fn spawn(&mut self) -> std::io::Result<()> {
            let _ = std::fs::remove_file(self.socket());
            let child = std::process::Command::new("redis-server")
                .args(["--port", "0", "--unixsocket"])
                .arg(self.socket())
                .args([
                    "--unixsocketperm",
                    "700",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(std::process::Stdio::null())
                .spawn()?;
            self.child = Some(child);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(std::io::Error::other(
                "redis-server did not open its socket",
            ))
        }

        fn stop(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            self.stop();
        }
    }

    fn redis_replay(r: &RedisServer) -> ReplayConfig {
        ReplayConfig::Redis {
            url: r.url(),
            key_prefix: "test:".into(),
        }
    }

    /// With Redis too, a copy of a granted packet stops at the screen (a
    /// replay, before decryption and without a work slot): each server
    /// remembers the digests it saw recorded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_copy_of_a_packet_recorded_in_redis_stops_at_the_screen() {
        let Some(redis) = RedisServer::start() else {
            return;
        };
        let store = spa_server::replay::redis::RedisStore::connect(
            &redis.url(),
            "hint:",
            Some(120),
            std::sync::Arc::new(spa_core::SystemClock),
        )
        .await
        .unwrap();
        let d = super::stages::Direct::with_store(vec![stanza()], std::sync::Arc::new(store));
        let pkt = knock(now(), 90);
        assert!(d.knock(&pkt, "127.0.0.1", None).await.is_granted());
        let refused = d
            .screen(&pkt, "127.0.0.1", None)
            .expect_err("the copy passed the screen");
        assert_eq!(
            (refused.stage(), refused.reason()),
            (
                Some(spa_server::pipeline::Stage::Replay),
                Some("packet seen before (replay)")
            )
        );
        // A packet never recorded passes.
        assert!(d.screen(&knock(now(), 91), "127.0.0.1", None).is_ok());
    }

    /// Two servers sharing one Redis: a packet one granted is a replay for the other.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn servers_sharing_redis_refuse_each_others_packets() {
        let Some(redis) = RedisServer::start() else {
            return;
        };
        let a = server(redis_replay(&redis)).await;
        let b = server(redis_replay(&redis)).await;
        let pkt = knock(now(), 30);
        send(a.udp, pkt.as_bytes());
        assert_eq!(wait_for_grants(&a.recorder, 1).await, 1, "A did not grant");
        // The copy an eavesdropper replays to the other server…
        send(b.udp, pkt.as_bytes());
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            b.recorder.granted().is_empty(),
            "B granted A's packet again"
        );
        // …while B grants a fresh one.
        send(b.udp, knock(now(), 31).as_bytes());
        assert_eq!(wait_for_grants(&b.recorder, 1).await, 1, "B did not grant");

        // The digest expires in Redis once the packet is too old anyway.
        let client = redis::Client::open(redis.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("test:*")
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(keys.len(), 2, "{keys:?}");
        let ttl: i64 = redis::cmd("TTL")
            .arg(&keys[0])
            .query_async(&mut c)
            .await
            .unwrap();
        let max_age = ServerConfig::default().server.max_packet_age as i64;
        assert!(ttl > 0 && ttl <= max_age + 2, "TTL {ttl}");
        a.running.stop().await;
        b.running.stop().await;
    }

    /// Redis gone: knocks are refused (never granted unrecorded), the server lives on
    /// and grants again once Redis is back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn knocks_are_refused_while_redis_is_down_and_served_after() {
        let Some(mut redis) = RedisServer::start() else {
            return;
        };
        let s = server(redis_replay(&redis)).await;
        redis.stop();
        send(s.udp, knock(now(), 40).as_bytes());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(s.recorder.granted().is_empty(), "granted without Redis");
        redis.spawn().unwrap();
        // The connection comes back by itself; a fresh knock (each one new) until it does.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut salt = 41;
        while s.recorder.granted().is_empty() && Instant::now() < deadline {
            send(s.udp, knock(now(), salt).as_bytes());
            salt += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert_eq!(
            s.recorder.granted().len(),
            1,
            "not served after Redis came back"
        );
        s.running.stop().await;
    }

    #[tokio::test]
    async fn an_unreachable_redis_fails_the_start_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("unix://{}/none.sock", dir.path().display());
        let cfg = ServerConfig {
            capture: vec![CaptureConfig::Udp {
                listen: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            }],
            replay: ReplayConfig::Redis {
                url: url.clone(),
                key_prefix: "x:".into(),
            },
            access: vec![stanza()],
            ..ServerConfig::default()
        };
        let err = match start_with_backends(cfg, vec![Box::new(MemoryFirewall::new(true))]).await {
            Ok(_) => panic!("started without its Redis"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains("redis") && err.contains("none.sock"), "{err}");
    }
}

/// Counts this thread's allocations (for the test that refusals barely allocate).
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    }

    pub fn allocations() -> u64 {
        ALLOCATIONS.with(Cell::get)
    }

    struct Counting;

    #[global_allocator]
    static COUNTING: Counting = Counting;

    fn count() {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    }

    // SAFETY: every call is passed on to the system allocator unchanged.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count();
            System.alloc(layout)
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            System.dealloc(ptr, layout)
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            count();
            System.alloc_zeroed(layout)
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            count();
            System.realloc(ptr, layout, new_size)
        }
    }
}
