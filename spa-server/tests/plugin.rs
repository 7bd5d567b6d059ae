#![cfg(feature = "plugin")]
//! The example in-house plugin (examples/grant-file-plugin), built as a real
//! shared library, loaded through config: a knock's grant arrives in the plugin
//! and is revoked at its expiry. ABI mismatches are clear errors.

use spa_core::packet::{self, HmacKey, PacketKeys};
use spa_core::{DigestType, EncryptionMode, MessageType, Secret, SpaMessage};
use spa_server::config::{
    AccessStanza, ActionConfig, AddrList, CaptureConfig, ReplayConfig, ServerConfig,
};
use spa_server::plugin::{PluginBackend, PluginConfig};
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn build_example_plugin() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-q", "-p", "grant-file-plugin"])
        .current_dir(workspace())
        .status()
        .unwrap();
    assert!(status.success(), "building the example plugin failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    target.join("debug/libgrant_file_plugin.so")
}

/// A knock over `at`'s family to `at:port`, asking for `at` itself.
fn knock(at: std::net::IpAddr, port: u16) {
    let key = Secret::from_base64("k", "7GUhvzM3zXNUTPqUMAixKOMqVNDh6qrIUgqWdacXNMA=").unwrap();
    let hmac = Secret::from_base64(
        "h",
        "YME3rcTN5fZ4D1oqV0NbiFNd4Hx1Nc4bNfgICPxjTzKpIiLBENuMtmsBWU+H+5c7oN2d4/iLa9TJ5HM8gLrSrQ==",
    )
    .unwrap();
    let msg = SpaMessage {
        rand_val: "1111222233334444".into(),
        username: "alice".into(),
        timestamp: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        version: "3.0.0".into(),
        msg_type: MessageType::Access,
        message: format!("{at},tcp/2222"),
        nat_access: None,
        server_auth: None,
        client_timeout: None,
    };
    let keys = PacketKeys {
        key: key.bytes(),
        mode: EncryptionMode::Cbc,
        hmac: Some(HmacKey {
            digest: DigestType::Sha256,
            key: hmac.bytes(),
        }),
    };
    let wire = packet::seal(&msg, DigestType::Sha256, &keys, &[9; 8]).unwrap();
    let any: std::net::SocketAddr = if at.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    UdpSocket::bind(any)
        .unwrap()
        .send_to(wire.as_bytes(), (at, port))
        .unwrap();
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(6);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_knock_reaches_the_plugin_and_is_revoked_at_expiry() {
    // With ENABLE_DESTINATION_RULE the rule carries the packet's destination
    // (the example plugin declares POSTERN_PLUGIN_DESTINATION and keeps it).
    // IPv6 reaches the plugin's ABI as IPv6 (source and destination).
    for (at, destination_rule) in [("127.0.0.1", false), ("127.0.0.1", true), ("::1", true)] {
        knock_through_plugin(at.parse().unwrap(), destination_rule).await;
    }
}

async fn knock_through_plugin(at: std::net::IpAddr, destination_rule: bool) {
    let plugin = build_example_plugin();
    let dir = tempfile::tempdir().unwrap();
    let grants = dir.path().join("grants.jsonl");
    let port = UdpSocket::bind((at, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut stanza = AccessStanza::new(AddrList::Any);
    stanza.key_base64 =
        Some(Secret::from_base64("k", "7GUhvzM3zXNUTPqUMAixKOMqVNDh6qrIUgqWdacXNMA=").unwrap());
    stanza.hmac_key_base64 = Some(Secret::from_base64("h", "YME3rcTN5fZ4D1oqV0NbiFNd4Hx1Nc4bNfgICPxjTzKpIiLBENuMtmsBWU+H+5c7oN2d4/iLa9TJ5HM8gLrSrQ==").unwrap());
    stanza.fw_access_timeout = 2;
    let cfg = ServerConfig {
        capture: vec![CaptureConfig::Udp {
            listen: (at, port).into(),
        }],
        action: vec![ActionConfig::Plugin(spa_server::plugin::PluginConfig {
            path: plugin.clone(),
            config: serde_json::json!({ "path": grants }),
        })],
        replay: ReplayConfig::Memory,
        access: vec![stanza],
        ..ServerConfig::default()
    };
    let mut cfg = cfg;
    cfg.server.destination_rule = destination_rule;
    let running = spa_server::daemon::start(cfg).await.unwrap();
    let read = || std::fs::read_to_string(&grants).unwrap_or_default();
    assert_eq!(read(), "", "the plugin starts empty");
    knock(at, port);
    wait_for("the grant", || read().contains("\"port\":2222"));
    assert!(
        read().contains(&format!("\"source\":\"{at}\"")),
        "{}",
        read()
    );
    assert_eq!(
        read().contains(&format!("\"destination\":\"{at}\"")),
        destination_rule,
        "{}",
        read()
    );
    wait_for("the revoke at expiry", || read().is_empty());
    running.stop().await;
}

#[test]
fn a_plugin_of_another_abi_version_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("old.c");
    std::fs::write(
        &src,
        "unsigned postern_plugin_abi_version(void) { return 999; }\n",
    )
    .unwrap();
    let lib = dir.path().join("libold.so");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .status()
        .unwrap();
    assert!(status.success());
    let err = PluginBackend::load(&PluginConfig {
        path: lib,
        config: serde_json::Value::Null,
    })
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("plugin ABI version 999") && err.contains("version 1"),
        "{err}"
    );
}

#[test]
fn a_library_that_is_no_plugin_or_no_file_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("x.c");
    std::fs::write(&src, "int unrelated(void) { return 1; }\n").unwrap();
    let lib = dir.path().join("libx.so");
    assert!(Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .status()
        .unwrap()
        .success());
    let err = PluginBackend::load(&PluginConfig {
        path: lib,
        config: serde_json::Value::Null,
    })
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("not a postern plugin: symbol `postern_plugin_abi_version` is missing"),
        "{err}"
    );
    let err = PluginBackend::load(&PluginConfig {
        path: dir.path().join("nope.so"),
        config: serde_json::Value::Null,
    })
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("nope.so"), "{err}");
}

#[test]
fn plugin_init_errors_are_reported() {
    let plugin = build_example_plugin();
    let err = PluginBackend::load(&PluginConfig {
        path: plugin,
        config: serde_json::json!({ "wrong": 1 }),
    })
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("init failed: config: missing field `path`"),
        "{err}"
    );
}

/// A library others may write is never loaded: loading runs its code (here a
/// constructor that leaves a marker) with posternd's privileges.
#[test]
fn a_plugin_others_may_write_is_refused_before_it_runs() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("constructor-ran");
    let src = dir.path().join("evil.c");
    std::fs::write(
        &src,
        format!(
            "#include <stdio.h>\n__attribute__((constructor)) static void run(void) {{ \
             FILE *f = fopen(\"{}\", \"w\"); if (f) fclose(f); }}\n\
             unsigned postern_plugin_abi_version(void) {{ return 1; }}\n",
            marker.display()
        ),
    )
    .unwrap();
    let lib = dir.path().join("libevil.so");
    assert!(Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .status()
        .unwrap()
        .success());
    for mode in [0o664, 0o646] {
        std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = PluginBackend::load(&PluginConfig {
            path: lib.clone(),
            config: serde_json::Value::Null,
        })
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("writable by group or others"), "{err}");
        assert!(!marker.exists(), "mode {mode:o}: the library's code ran");
    }
    // The check is what stopped it: with a safe mode the same library loads.
    std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _ = PluginBackend::load(&PluginConfig {
        path: lib,
        config: serde_json::Value::Null,
    });
    assert!(marker.exists(), "the library was never loadable");
}
