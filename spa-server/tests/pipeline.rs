//! The whole server in-process on loopback, with a recording firewall: real
//! packets in over UDP/TCP, grants (or none) out.

use spa_core::firewall::{Firewall, FwResult, Opening, Rule};
use spa_core::packet::{self, HmacKey, PacketKeys};
use spa_core::{DigestType, EncryptionMode, MessageType, Secret, SpaMessage};
use spa_server::config::{AccessStanza, AddrList, CaptureConfig, ReplayConfig, ServerConfig};
use spa_server::daemon::{start_with_backends, Running};
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const KEY: &str = "7GUhvzM3zXNUTPqUMAixKOMqVNDh6qrIUgqWdacXNMA=";
const HMAC: &str =
    "YME3rcTN5fZ4D1oqV0NbiFNd4Hx1Nc4bNfgICPxjTzKpIiLBENuMtmsBWU+H+5c7oN2d4/iLa9TJ5HM8gLrSrQ==";

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Opening>>>);

impl Recorder {
    fn grants(&self) -> Vec<Opening> {
        self.0.lock().unwrap().clone()
    }
}

impl Firewall for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }
    fn init(&mut self, _now: u64) -> FwResult<()> {
        Ok(())
    }
    fn grant(&mut self, openings: &[Opening]) -> FwResult<()> {
        self.0.lock().unwrap().extend_from_slice(openings);
        Ok(())
    }
    fn revoke(&mut self, _rules: &[Rule]) -> FwResult<()> {
        Ok(())
    }
    fn list(&mut self) -> FwResult<Vec<Opening>> {
        Ok(self.grants())
    }
    fn flush(&mut self) -> FwResult<()> {
        Ok(())
    }
    fn expires_in_kernel(&self) -> bool {
        true
    }
}

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
    let msg = SpaMessage {
        rand_val: format!("{:016}", 1234567890123456u64 + u64::from(salt)),
        username: "alice".into(),
        timestamp: ts,
        version: "3.0.0".into(),
        msg_type: MessageType::Access,
        message: "127.0.0.1,tcp/22".into(),
        nat_access: None,
        server_auth: None,
        client_timeout: None,
    };
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
    packet::seal(&msg, DigestType::Sha256, &keys, &[salt; 8]).unwrap()
}

struct Server {
    running: Running,
    recorder: Recorder,
    udp: SocketAddr,
    tcp: SocketAddr,
}

async fn server(replay: ReplayConfig) -> Server {
    let (udp, tcp): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
    );
    let cfg = ServerConfig {
        capture: vec![CaptureConfig::Udp { listen: udp }, CaptureConfig::tcp(tcp)],
        replay,
        access: vec![stanza()],
        ..ServerConfig::default()
    };
    let recorder = Recorder::default();
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
    while r.grants().len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    r.grants().len()
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
    let g = &s.recorder.grants()[0];
    assert_eq!(g.rule.source.to_string(), "127.0.0.1");
    assert_eq!(g.rule.port, 22);
    assert_eq!(g.timeout_secs, 30);
    // Same packet again, and racing copies: no further grant.
    for _ in 0..5 {
        send(s.udp, pkt.as_bytes());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.recorder.grants().len(), 1);
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
        s.recorder.grants().len(),
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
    assert!(s.recorder.grants().is_empty());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn must_reject_lines_open_nothing_answer_nothing_and_the_server_keeps_serving() {
    let s = server(ReplayConfig::Memory).await;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/vectors/must-reject.txt");
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
        s.recorder.grants().is_empty(),
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
    // The capture looks for a reload at least once a second; resend until it has.
    let deadline = Instant::now() + Duration::from_secs(4);
    while s.recorder.grants().is_empty() && Instant::now() < deadline {
        send(s.udp, sha1.as_bytes());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        s.recorder.grants().len(),
        1,
        "a knock of the reloaded stanza's length never got through"
    );
    s.running.stop().await;
}
