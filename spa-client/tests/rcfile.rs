//! ~/.fwknoprc handling through the binary: creation, precedence, permissions,
//! --save-rc-stanza / -n round trip, --stanza-list.

mod common;

use common::*;
use spa_core::{DigestType, EncryptionMode, MessageType};
use std::os::unix::fs::PermissionsExt;

fn mode_of(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn write_rc(env: &Env, text: &str, mode: u32) {
    std::fs::write(env.rc_path(), text).unwrap();
    std::fs::set_permissions(env.rc_path(), std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn first_run_creates_a_0600_rc_file() {
    let env = Env::new();
    let out = env.ok(&[
        "-T",
        "-A",
        "tcp/22",
        "-a",
        "10.0.0.5",
        "--key-rijndael",
        "testtest",
    ]);
    assert!(
        out.starts_with(&format!(
            "[*] Creating initial rc file: {}.",
            env.rc_path().display()
        )),
        "{out}"
    );
    assert_eq!(mode_of(&env.rc_path()), 0o600);
    let text = std::fs::read_to_string(env.rc_path()).unwrap();
    assert!(text.contains("\n[default]\n"));
    // Second run: no creation message.
    let out = env.ok(&[
        "-T",
        "-A",
        "tcp/22",
        "-a",
        "10.0.0.5",
        "--key-rijndael",
        "testtest",
    ]);
    assert!(!out.contains("Creating initial rc file"));
}

#[test]
fn precedence_default_stanza_command_line() {
    let env = Env::new();
    write_rc(
        &env,
        "[default]\nDIGEST_TYPE md5\nALLOW_IP 10.9.9.9\nKEY testtest\nACCESS tcp/1\nSPOOF_USER dflt\n\n[s1]\nACCESS tcp/2\nENCRYPTION_MODE ctr\nSPOOF_USER stanza\n",
        0o600,
    );
    let pkt = env.path("p.pkt");
    let p = pkt.to_str().unwrap();

    env.ok(&["-T", "-B", p]);
    let d = open(&read_packet(&pkt), b"testtest", EncryptionMode::Cbc, None);
    assert_eq!(d.message.message, "10.9.9.9,tcp/1");
    assert_eq!(d.digest_type, DigestType::Md5);
    assert_eq!(d.message.username, "dflt");

    env.ok(&["-T", "-B", p, "-n", "s1"]);
    let d = open(&read_packet(&pkt), b"testtest", EncryptionMode::Ctr, None);
    assert_eq!(d.message.message, "10.9.9.9,tcp/2");
    assert_eq!(d.message.username, "stanza");

    env.ok(&[
        "-T", "-B", p, "-n", "S1", "-A", "udp/3", "-U", "cli", "-m", "sha1",
    ]);
    let d = open(&read_packet(&pkt), b"testtest", EncryptionMode::Ctr, None);
    assert_eq!(d.message.message, "10.9.9.9,udp/3");
    assert_eq!(d.message.username, "cli");
    assert_eq!(d.digest_type, DigestType::Sha1);
}

#[test]
fn world_readable_rc_with_keys_is_refused() {
    let env = Env::new();
    write_rc(&env, "[default]\nKEY_BASE64 AAAAAAAA\n", 0o644);
    let line = env.fails(&[
        "-T",
        "-A",
        "tcp/22",
        "-a",
        "10.0.0.5",
        "--key-rijndael",
        "x",
    ]);
    assert!(
        line.contains("chmod 600") && line.contains(".fwknoprc"),
        "{line}"
    );
    assert!(!line.contains("AAAAAAAA"));

    // Without keys it only warns.
    write_rc(&env, "[default]\nACCESS tcp/22\n", 0o644);
    let out = env.run(&["-T", "-a", "10.0.0.5", "--key-rijndael", "x"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permissions should only be user read/write")
    );
}

#[test]
fn save_stanza_then_use_it() {
    let env = Env::new();
    write_rc(
        &env,
        "# my settings\n[default]\nVERBOSE N\n\n[other]\nACCESS udp/53\n",
        0o600,
    );
    let out = env.ok(&[
        "-n",
        "work",
        "--save-rc-stanza",
        "-T",
        "-A",
        "tcp/2222",
        "-a",
        "192.0.2.44",
        "-D",
        "srv.example",
        "--key-base64-rijndael",
        KEY_B64,
        "--key-base64-hmac",
        HMAC_B64,
        "--hmac-digest-type",
        "sha512",
        "-M",
        "ofb",
        "-f",
        "120",
        "-p",
        "40001",
    ]);
    assert!(out.contains("SPA Field Values"));
    assert_eq!(mode_of(&env.rc_path()), 0o600);
    let text = std::fs::read_to_string(env.rc_path()).unwrap();
    assert!(
        text.starts_with("# my settings\n[default]\nVERBOSE N\n\n[other]\nACCESS udp/53\n"),
        "{text}"
    );
    assert!(text.contains("[work]\n"));
    assert!(text.contains("ENCRYPTION_MODE             OFB\n"), "{text}");
    assert!(
        text.contains("HMAC_DIGEST_TYPE            SHA512\n"),
        "{text}"
    );
    assert!(text.contains("USE_HMAC                    Y\n"), "{text}");

    let out = env.ok(&["--stanza-list"]);
    assert_eq!(
        out,
        format!(
            "The following stanzas are configured in {} :\n - other\n - work\n",
            env.rc_path().display()
        )
    );

    let pkt = env.path("w.pkt");
    env.ok(&["-n", "work", "-T", "-B", pkt.to_str().unwrap()]);
    let d = open(
        &read_packet(&pkt),
        &b64(KEY_B64),
        EncryptionMode::Ofb,
        Some((DigestType::Sha512, &b64(HMAC_B64))),
    );
    assert_eq!(d.message.message, "192.0.2.44,tcp/2222");
    assert_eq!(d.message.msg_type, MessageType::ClientTimeoutAccess);
    assert_eq!(d.message.client_timeout, Some(120));

    // The real fwknop reads the saved stanza too (when installed).
    if std::process::Command::new("fwknop")
        .arg("-V")
        .output()
        .is_ok()
    {
        let fpkt = env.path("f.pkt");
        let out = std::process::Command::new("fwknop")
            .args([
                "-n",
                "work",
                "-T",
                "--no-save-args",
                "-B",
                fpkt.to_str().unwrap(),
            ])
            .env("HOME", env.home.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "fwknop rejected the stanza: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let d = open(
            &read_packet(&fpkt),
            &b64(KEY_B64),
            EncryptionMode::Ofb,
            Some((DigestType::Sha512, &b64(HMAC_B64))),
        );
        assert_eq!(d.message.message, "192.0.2.44,tcp/2222");
    }
}

#[test]
fn resaving_keeps_keys_unless_forced() {
    let env = Env::new();
    write_rc(&env, "[default]\n[s]\nKEY oldkey\nACCESS tcp/1\n", 0o600);
    let out = env.run(&[
        "-n",
        "s",
        "--save-rc-stanza",
        "-T",
        "-A",
        "tcp/2",
        "-a",
        "10.0.0.5",
        "--key-rijndael",
        "newkey",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("kept the existing KEY"));
    let text = std::fs::read_to_string(env.rc_path()).unwrap();
    assert!(
        text.contains("KEY oldkey") && !text.contains("newkey") && !text.contains("tcp/1"),
        "{text}"
    );
    assert!(text.contains("ACCESS                      tcp/2"));

    env.ok(&[
        "-n",
        "s",
        "--save-rc-stanza",
        "--force-stanza",
        "-T",
        "-A",
        "tcp/3",
        "-a",
        "10.0.0.5",
        "--key-rijndael",
        "newkey",
    ]);
    let text = std::fs::read_to_string(env.rc_path()).unwrap();
    assert!(
        text.contains("KEY                         newkey") && !text.contains("oldkey"),
        "{text}"
    );
}

#[test]
fn save_stanza_named_after_destination() {
    let env = Env::new();
    env.ok(&[
        "--save-rc-stanza",
        "-T",
        "-A",
        "tcp/22",
        "-a",
        "10.0.0.5",
        "-D",
        "host.example",
        "--key-rijndael",
        "pw",
    ]);
    let out = env.ok(&["--stanza-list"]);
    assert!(out.contains(" - host.example\n"), "{out}");
}

#[test]
fn explicit_rc_file_and_unknown_variables() {
    let env = Env::new();
    let rc = env.path("custom.rc");
    std::fs::write(
        &rc,
        "[default]\nFROBNICATE yes\nKEY testtest\nACCESS tcp/80\nALLOW_IP source\n",
    )
    .unwrap();
    std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).unwrap();
    let pkt = env.path("c.pkt");
    let argv = [
        "--rc-file",
        rc.to_str().unwrap(),
        "-T",
        "-B",
        pkt.to_str().unwrap(),
    ];
    // As fwknop: an unknown variable stops the knock, naming file and line.
    let out = env.run(&argv);
    assert!(!out.status.success(), "an unknown variable was accepted");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "rc file {} line 2: unknown variable FROBNICATE",
            rc.display()
        )),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(
        &rc,
        "[default]\nKEY testtest\nACCESS tcp/80\nALLOW_IP source\n",
    )
    .unwrap();
    let out = env.run(&argv);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        open(&read_packet(&pkt), b"testtest", EncryptionMode::Cbc, None)
            .message
            .message,
        "0.0.0.0,tcp/80"
    );
    assert!(
        !env.rc_path().exists(),
        "the default rc file must not be created when --rc-file is given"
    );
}

#[test]
fn no_rc_file_mode_conflicts() {
    let env = Env::new();
    env.fails(&["--no-rc-file", "-n", "x", "-T"]);
    env.fails(&["--no-rc-file", "--stanza-list"]);
    env.fails(&["--no-rc-file", "--save-rc-stanza", "-D", "h"]);
    assert!(!env.rc_path().exists());
}
