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
    // The capture looks for a reload at least once a second; resend until it has.
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
