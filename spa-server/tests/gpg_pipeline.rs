//! GPG knocks through the whole server in-process (loopback UDP, a recording
//! firewall), with throwaway keyrings: accepted signers, refused ones, unsigned
//! and damaged packets, passphrase-protected server keys, and a GPG flood that
//! must not hold up Rijndael knocks.

use spa_core::firewall::MemoryFirewall;
use spa_core::packet::{self, HmacKey, PacketKeys};
use spa_core::{gpg, DigestType, EncryptionMode, MessageType, Secret, SpaMessage};
use spa_gpg::keyring::{GpgHome, KeyIds};
use spa_gpg::{GpgOptions, Gpgme};
use spa_server::config::{AccessStanza, AddrList, CaptureConfig, ReplayConfig, ServerConfig};
use spa_server::daemon::{start_with_backends, Running};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering::Relaxed;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const HMAC_B64: &str =
    "YME3rcTN5fZ4D1oqV0NbiFNd4Hx1Nc4bNfgICPxjTzKpIiLBENuMtmsBWU+H+5c7oN2d4/iLa9TJ5HM8gLrSrQ==";
const KEY_B64: &str = "7GUhvzM3zXNUTPqUMAixKOMqVNDh6qrIUgqWdacXNMA=";
const SERVER_PW: &str = "server-secret";

/// Grants are recorded, nothing is applied.
type Recorder = MemoryFirewall;

fn ports(r: &Recorder) -> Vec<u16> {
    r.granted().iter().map(|o| o.rule.port).collect()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Keys {
    server: GpgHome,
    client: GpgHome,
    /// Known to the server and trusted, but not listed in the stanzas.
    other: GpgHome,
    /// Unknown to the server.
    stranger: GpgHome,
    client_key: KeyIds,
    other_key: KeyIds,
    stranger_key: KeyIds,
}

fn keys(tag: &str, server_pw: Option<&str>) -> Keys {
    let server = GpgHome::new(&format!("{tag}s")).unwrap();
    let client = GpgHome::new(&format!("{tag}c")).unwrap();
    let other = GpgHome::new(&format!("{tag}o")).unwrap();
    let stranger = GpgHome::new(&format!("{tag}x")).unwrap();
    server.gen_key("server", server_pw, 2048).unwrap();
    let client_key = client.gen_key("client", None, 2048).unwrap();
    let other_key = other.gen_key("other", None, 2048).unwrap();
    let stranger_key = stranger.gen_key("stranger", None, 2048).unwrap();
    for h in [&client, &other, &stranger] {
        h.import_trusted(&server, "server").unwrap();
    }
    server.import_trusted(&client, "client").unwrap();
    server.import_trusted(&other, "other").unwrap();
    Keys {
        server,
        client,
        other,
        stranger,
        client_key,
        other_key,
        stranger_key,
    }
}

fn msg(port: u16, salt: u64) -> SpaMessage {
    SpaMessage {
        rand_val: format!("{:016}", 1_000_000_000_000_000 + salt),
        username: "alice".into(),
        timestamp: now(),
        version: "3.0.0".into(),
        msg_type: MessageType::Access,
        message: format!("127.0.0.1,tcp/{port}"),
        nat_access: None,
        server_auth: None,
        client_timeout: None,
    }
}

fn hmac_key() -> Secret {
    Secret::from_base64("h", HMAC_B64).unwrap()
}

/// A GPG packet for `port`, signed in `home` by `signer` (None: unsigned).
fn gpg_knock(home: &GpgHome, signer: Option<&str>, port: u16, salt: u64, hmac: bool) -> String {
    let mut engine = Gpgme::new(&GpgOptions {
        home_dir: Some(home.path.clone()),
        ..Default::default()
    })
    .unwrap();
    let h = hmac_key();
    let hk = HmacKey {
        digest: DigestType::Sha256,
        key: h.bytes(),
    };
    gpg::seal(
        &msg(port, salt),
        DigestType::Sha256,
        &mut engine,
        "server",
        signer,
        hmac.then_some(&hk),
    )
    .unwrap()
}

fn rijndael_knock(port: u16, salt: u64) -> String {
    let key = Secret::from_base64("k", KEY_B64).unwrap();
    let h = hmac_key();
    let keys = PacketKeys {
        key: key.bytes(),
        mode: EncryptionMode::Cbc,
        hmac: Some(HmacKey {
            digest: DigestType::Sha256,
            key: h.bytes(),
        }),
    };
    packet::seal(
        &msg(port, salt),
        DigestType::Sha256,
        &keys,
        &[salt as u8; 8],
    )
    .unwrap()
}

/// A GPG stanza for `k.server`, accepting `ids` as signers, opening `ports`.
fn gpg_stanza(k: &Keys, ids: &[&str], ports: &str) -> AccessStanza {
    let mut s = AccessStanza::new(AddrList::Any);
    s.gpg_home_dir = Some(k.server.path.clone());
    s.gpg_allow_no_pw = true;
    s.gpg_remote_id = ids.iter().map(|s| s.to_string()).collect();
    s.open_ports = spa_core::request::parse_proto_ports(ports).unwrap();
    s
}

struct Server {
    running: Running,
    recorder: Recorder,
    udp: SocketAddr,
}

async fn server(access: Vec<AccessStanza>) -> Server {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp = sock.local_addr().unwrap();
    drop(sock);
    for s in &access {
        s.validate().unwrap();
    }
    let cfg = ServerConfig {
        capture: vec![CaptureConfig::Udp { listen: udp }],
        replay: ReplayConfig::Memory,
        access,
        ..ServerConfig::default()
    };
    let recorder = MemoryFirewall::new(true);
    let running = start_with_backends(cfg, vec![Box::new(recorder.clone())])
        .await
        .unwrap();
    Server {
        running,
        recorder,
        udp,
    }
}

impl Server {
    fn send(&self, payload: &str) {
        UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .send_to(payload.as_bytes(), self.udp)
            .unwrap();
    }

    /// Wait (bounded) until `port` is granted; false if it never is.
    async fn granted(&self, port: u16, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if ports(&self.recorder).contains(&port) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_knocks_are_granted_and_policy_refusals_are_not() {
    let k = keys("pol", None);
    let client = k.client_key.short_id.as_str();
    // As for Rijndael, the first stanza that takes a packet decides. The HMAC stanza
    // only takes packets with its HMAC; the other one only the client's fingerprint.
    let mut hmac_stanza = gpg_stanza(&k, &["1234ABCD", client], "tcp/1001");
    hmac_stanza.hmac_key_base64 = Some(hmac_key());
    let mut fpr_stanza = gpg_stanza(&k, &[], "tcp/1002");
    fpr_stanza.gpg_fingerprint_id = vec![k.client_key.fingerprint.clone()];
    let s = server(vec![hmac_stanza, fpr_stanza]).await;

    s.send(&gpg_knock(&k.client, Some(client), 1001, 1, true));
    assert!(
        s.granted(1001, Duration::from_secs(10)).await,
        "HMAC + GPG knock (GPG_REMOTE_ID) not granted"
    );
    s.send(&gpg_knock(&k.client, Some(client), 1002, 2, false));
    assert!(
        s.granted(1002, Duration::from_secs(10)).await,
        "GPG knock (GPG_FINGERPRINT_ID) not granted"
    );

    // Refused: a known, trusted key that no stanza lists; an unknown key; no
    // signature; a damaged packet; a replay of a granted one.
    let granted = gpg_knock(&k.client, Some(client), 1002, 3, false);
    s.send(&granted);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ports(&s.recorder).len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = ports(&s.recorder).len();
    assert_eq!(before, 3, "third knock not granted");
    let mut damaged = gpg_knock(&k.client, Some(client), 1002, 4, false).into_bytes();
    let mid = damaged.len() / 2;
    damaged[mid] = if damaged[mid] == b'A' { b'B' } else { b'A' };
    let refused = [
        gpg_knock(&k.other, Some(&k.other_key.short_id), 1002, 5, false),
        gpg_knock(&k.other, Some(&k.other_key.short_id), 1001, 6, true),
        gpg_knock(&k.stranger, Some(&k.stranger_key.short_id), 1002, 7, false),
        gpg_knock(&k.client, None, 1002, 8, false),
        String::from_utf8(damaged).unwrap(),
        granted.clone(),
    ];
    for p in &refused {
        s.send(p);
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        ports(&s.recorder).len(),
        before,
        "refused packets were granted: {:?}",
        ports(&s.recorder)
    );

    // Replays of a granted packet are refused before any GPG work.
    let stats = &s.running.gpg_stats;
    let gpg_runs = || stats.decrypted.load(Relaxed) + stats.failed.load(Relaxed);
    let runs_before = gpg_runs();
    for _ in 0..50 {
        s.send(&granted);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gpg_runs(), runs_before, "replays were decrypted");
    assert_eq!(ports(&s.recorder).len(), before, "a replay was granted");
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignore_verify_error_and_disabled_signatures() {
    let k = keys("ign", None);
    let mut ignore = gpg_stanza(&k, &[&k.stranger_key.short_id], "tcp/2001");
    ignore.gpg_ignore_sig_verify_error = true;
    let mut nosig = gpg_stanza(&k, &[], "tcp/2002");
    nosig.gpg_disable_sig = true;
    let s = server(vec![
        gpg_stanza(&k, &[&k.stranger_key.short_id], "tcp/2003"),
        ignore,
        nosig,
    ])
    .await;
    // The stranger's signature cannot be verified: only the stanza ignoring that accepts it.
    s.send(&gpg_knock(
        &k.stranger,
        Some(&k.stranger_key.short_id),
        2001,
        1,
        false,
    ));
    assert!(s.granted(2001, Duration::from_secs(10)).await);
    s.send(&gpg_knock(
        &k.stranger,
        Some(&k.stranger_key.short_id),
        2003,
        2,
        false,
    ));
    // Unsigned: accepted where signatures are off.
    s.send(&gpg_knock(&k.client, None, 2002, 3, false));
    assert!(s.granted(2002, Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !ports(&s.recorder).contains(&2003),
        "{:?}",
        ports(&s.recorder)
    );
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_key_with_passphrase() {
    let k = keys("spw", Some(SERVER_PW));
    let mut wrong = gpg_stanza(&k, &[&k.client_key.short_id], "tcp/3001");
    wrong.gpg_allow_no_pw = false;
    wrong.gpg_decrypt_pw = Some(Secret::from_passphrase("not the passphrase"));
    let mut right = gpg_stanza(&k, &[&k.client_key.short_id], "tcp/3002");
    right.gpg_allow_no_pw = false;
    right.gpg_decrypt_pw = Some(Secret::from_passphrase(SERVER_PW));
    let s = server(vec![wrong]).await;
    s.send(&gpg_knock(
        &k.client,
        Some(&k.client_key.short_id),
        3001,
        1,
        false,
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        ports(&s.recorder).is_empty(),
        "granted with a wrong GPG_DECRYPT_PW"
    );
    s.running.stop().await;

    let s = server(vec![right]).await;
    s.send(&gpg_knock(
        &k.client,
        Some(&k.client_key.short_id),
        3002,
        2,
        false,
    ));
    assert!(
        s.granted(3002, Duration::from_secs(10)).await,
        "not granted with the right GPG_DECRYPT_PW"
    );
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpg_flood_does_not_hold_up_rijndael_knocks() {
    let k = keys("fld", None);
    let mut rijndael = AccessStanza::new(AddrList::Any);
    rijndael.key_base64 = Some(Secret::from_base64("k", KEY_B64).unwrap());
    rijndael.hmac_key_base64 = Some(hmac_key());
    let s = server(vec![
        gpg_stanza(&k, &[&k.client_key.short_id], "tcp/4000"),
        rijndael,
    ])
    .await;
    // The costliest flood: a captured real GPG packet sent over and over (each copy
    // that arrives before the first is granted costs an RSA decryption).
    let captured = gpg_knock(&k.client, Some(&k.client_key.short_id), 4000, 1, false);
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let flood_until = Instant::now() + Duration::from_secs(3);
    let mut knocks = Vec::new();
    let mut salt = 100;
    while Instant::now() < flood_until {
        for _ in 0..50 {
            let _ = sender.send_to(captured.as_bytes(), s.udp);
        }
        if knocks.len() < 5 && salt % 10 == 0 {
            let port = 5000 + knocks.len() as u16;
            s.send(&rijndael_knock(port, salt));
            knocks.push((port, Instant::now()));
        }
        salt += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    for (port, sent) in &knocks {
        assert!(
            s.granted(*port, Duration::from_secs(2)).await,
            "Rijndael knock {port} not granted during the flood"
        );
        let opened_at = sent.elapsed();
        assert!(opened_at < Duration::from_secs(5), "{opened_at:?}");
    }
    assert!(
        s.granted(4000, Duration::from_secs(5)).await,
        "the GPG packet itself was never granted"
    );
    s.running.stop().await;
}
