//! Command mode (message type 0, ENABLE_CMD_EXEC): the client's command runs as
//! CMD_EXEC_USER, as argv without a shell; a stanza without ENABLE_CMD_EXEC runs nothing.

use spa_core::packet::{self, HmacKey, PacketKeys};
use spa_core::{DigestType, EncryptionMode, MessageType, Secret, SpaMessage};
use spa_server::config::{AccessStanza, AddrList, CaptureConfig, ReplayConfig, ServerConfig};
use std::net::UdpSocket;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const KEY: &str = "7GUhvzM3zXNUTPqUMAixKOMqVNDh6qrIUgqWdacXNMA=";
const HMAC: &str =
    "YME3rcTN5fZ4D1oqV0NbiFNd4Hx1Nc4bNfgICPxjTzKpIiLBENuMtmsBWU+H+5c7oN2d4/iLa9TJ5HM8gLrSrQ==";

fn command_packet(command: &str, salt: u8) -> String {
    let msg = SpaMessage {
        rand_val: format!("{:016}", 4_444_000_000_000_000u64 + u64::from(salt)),
        username: "alice".into(),
        timestamp: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        version: "3.0.0".into(),
        msg_type: MessageType::Command,
        message: format!("127.0.0.1,{command}"),
        nat_access: None,
        server_auth: None,
        client_timeout: None,
    };
    let (key, hmac) = (
        Secret::from_base64("k", KEY).unwrap(),
        Secret::from_base64("h", HMAC).unwrap(),
    );
    let keys = PacketKeys {
        key: key.bytes(),
        mode: EncryptionMode::Cbc,
        hmac: Some(HmacKey {
            digest: DigestType::Sha256,
            key: hmac.bytes(),
        }),
    };
    packet::seal(&msg, DigestType::Sha256, &keys, &[salt; 8]).unwrap()
}

fn stanza(enabled: bool, user: Option<&str>) -> AccessStanza {
    let mut s = AccessStanza::new(AddrList::Any);
    s.key_base64 = Some(Secret::from_base64("k", KEY).unwrap());
    s.hmac_key_base64 = Some(Secret::from_base64("h", HMAC).unwrap());
    s.enable_cmd_exec = enabled;
    s.cmd_exec_user = user.map(String::from);
    s
}

async fn server(stanza: AccessStanza) -> (spa_server::daemon::Running, u16) {
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = ServerConfig {
        capture: vec![CaptureConfig::Udp {
            listen: ([127, 0, 0, 1], port).into(),
        }],
        replay: ReplayConfig::Memory,
        access: vec![stanza],
        ..ServerConfig::default()
    };
    (
        spa_server::daemon::start_with_backends(cfg, Vec::new())
            .await
            .unwrap(),
        port,
    )
}

fn send(port: u16, wire: &str) {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(wire.as_bytes(), ("127.0.0.1", port))
        .unwrap();
}

fn wait_for(path: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !path.exists() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_runs_as_argv_without_a_shell_and_as_cmd_exec_user() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let d = dir.path().display();
    let user = is_root().then_some("nobody");
    let (running, port) = server(stanza(true, user)).await;
    // With a shell this would make two files, `a` and `b`.
    send(
        port,
        &command_packet(&format!("touch {d}/a;touch {d}/b"), 1),
    );
    let made = dir.path().join("a;touch");
    assert!(wait_for(&made), "the command did not run");
    assert!(!dir.path().join("a").exists(), "a shell interpreted `;`");
    if is_root() {
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        assert_eq!(
            std::fs::metadata(&made).unwrap().uid(),
            nobody.uid.as_raw(),
            "not run as CMD_EXEC_USER"
        );
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_enable_cmd_exec_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let (running, port) = server(stanza(false, None)).await;
    send(
        port,
        &command_packet(&format!("touch {}", marker.display()), 2),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!marker.exists(), "a command ran without ENABLE_CMD_EXEC");
    running.stop().await;
}
