//! `postern -T -B FILE`: the saved packet opens with spa-core to the requested fields.

mod common;

use common::*;
use spa_core::{DigestType, EncryptionMode, MessageType};

fn build(env: &Env, extra: &[&str]) -> String {
    let pkt = env.path("out.pkt");
    let pkt_s = pkt.to_str().unwrap().to_string();
    let mut args = vec!["-T", "-B", &pkt_s, "--no-rc-file"];
    args.extend_from_slice(extra);
    env.ok(&args);
    read_packet(&pkt)
}

#[test]
fn modes_digests_and_hmac_types() {
    let env = Env::new();
    let key = b64(KEY_B64);
    let hkey = b64(HMAC_B64);
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("cbc", "sha256", Some("sha256")),
        ("ecb", "md5", Some("md5")),
        ("cfb", "sha1", Some("sha1")),
        ("ofb", "sha384", Some("sha384")),
        ("ctr", "sha512", Some("sha512")),
        ("cbc", "sha3_256", Some("sha3_256")),
        ("ctr", "sha3_512", Some("sha3_512")),
        ("cfb", "sha256", None),
        ("legacy", "sha256", None),
    ];
    for &(mode, digest, hmac) in cases {
        let mut args = vec![
            "-A",
            "tcp/22",
            "-a",
            "10.0.0.5",
            "-D",
            "127.0.0.1",
            "--key-base64-rijndael",
            KEY_B64,
            "-M",
            mode,
            "-m",
            digest,
        ];
        if let Some(h) = hmac {
            args.extend_from_slice(&["--key-base64-hmac", HMAC_B64, "--hmac-digest-type", h]);
        }
        let wire = build(&env, &args);
        let mode_v: EncryptionMode = mode.parse().unwrap();
        let hmac_v = hmac.map(|h| (h.parse::<DigestType>().unwrap(), hkey.as_slice()));
        let d = open(&wire, &key, mode_v, hmac_v);
        let m = &d.message;
        assert_eq!(m.message, "10.0.0.5,tcp/22", "{mode} {digest}");
        assert_eq!(m.msg_type, MessageType::Access);
        assert_eq!(m.username, "tester");
        assert_eq!(m.version, "3.0.0");
        assert!(now().abs_diff(m.timestamp) <= 5);
        let expected: DigestType = digest.parse().unwrap();
        // sha256/sha3_256 and sha512/sha3_512 have equal lengths; the decoder reports the first match.
        assert_eq!(d.digest_type.b64_len(), expected.b64_len());
        assert_eq!(d.digest, expected.digest_b64(d.encoded_data.as_bytes()));
    }
}

#[test]
fn passphrase_keys_and_hmac_key() {
    let env = Env::new();
    let wire = build(
        &env,
        &[
            "-A",
            "udp/53,tcp/22",
            "-a",
            "192.0.2.7",
            "--key-rijndael",
            "testtest",
            "--key-hmac",
            "hmacpass",
            "-M",
            "cfb",
        ],
    );
    let d = open(
        &wire,
        b"testtest",
        EncryptionMode::Cfb,
        Some((DigestType::Sha256, b"hmacpass")),
    );
    assert_eq!(d.message.message, "192.0.2.7,udp/53,tcp/22");
}

#[test]
fn nat_access_with_timeout_and_spoofed_user() {
    let env = Env::new();
    let wire = build(
        &env,
        &[
            "-A",
            "tcp/22",
            "-a",
            "10.0.0.5",
            "-D",
            "srv.example",
            "-N",
            "192.168.10.2:55000",
            "-f",
            "45",
            "-U",
            "alice",
            "--key-rijndael",
            "testtest",
        ],
    );
    let m = open(&wire, b"testtest", EncryptionMode::Cbc, None).message;
    assert_eq!(m.msg_type, MessageType::ClientTimeoutNatAccess);
    assert_eq!(m.nat_access.as_deref(), Some("192.168.10.2,55000"));
    assert_eq!(m.client_timeout, Some(45));
    assert_eq!(m.username, "alice");
}

#[test]
fn nat_without_port_uses_access_port_and_nat_port_rewrites_access() {
    let env = Env::new();
    let wire = build(
        &env,
        &[
            "-A",
            "tcp/22",
            "-a",
            "10.0.0.5",
            "-N",
            "inner.example",
            "--nat-port",
            "40022",
            "--key-rijndael",
            "testtest",
        ],
    );
    let m = open(&wire, b"testtest", EncryptionMode::Cbc, None).message;
    assert_eq!(m.msg_type, MessageType::NatAccess);
    assert_eq!(m.message, "10.0.0.5,tcp/40022");
    assert_eq!(m.nat_access.as_deref(), Some("inner.example,22"));
}

#[test]
fn local_nat_uses_the_server_name() {
    let env = Env::new();
    let wire = build(
        &env,
        &[
            "-A",
            "tcp/22",
            "-a",
            "10.0.0.5",
            "-D",
            "203.0.113.1",
            "--nat-local",
            "--key-rijndael",
            "testtest",
        ],
    );
    let m = open(&wire, b"testtest", EncryptionMode::Cbc, None).message;
    assert_eq!(m.msg_type, MessageType::LocalNatAccess);
    assert_eq!(m.nat_access.as_deref(), Some("203.0.113.1,22"));

    let wire = build(
        &env,
        &[
            "-A",
            "tcp/22",
            "-a",
            "10.0.0.5",
            "-D",
            "203.0.113.1",
            "--nat-local",
            "-f",
            "60",
            "--key-rijndael",
            "testtest",
        ],
    );
    let m = open(&wire, b"testtest", EncryptionMode::Cbc, None).message;
    assert_eq!(m.msg_type, MessageType::ClientTimeoutLocalNatAccess);
    assert_eq!(m.client_timeout, Some(60));
}

#[test]
fn nat_rand_port_is_announced() {
    let env = Env::new();
    let pkt = env.path("r.pkt");
    let out = env.ok(&[
        "-T",
        "-B",
        pkt.to_str().unwrap(),
        "--no-rc-file",
        "-A",
        "tcp/22",
        "-a",
        "10.0.0.5",
        "-N",
        "10.1.1.1,22",
        "--nat-rand-port",
        "--key-rijndael",
        "testtest",
    ]);
    let m = open(&read_packet(&pkt), b"testtest", EncryptionMode::Cbc, None).message;
    let port: u16 = m.message.rsplit('/').next().unwrap().parse().unwrap();
    assert!(port >= 10_000);
    assert!(out.contains(&format!("[+] Randomly assigned port '{port}' on: '10.0.0.5,tcp/{port}' will grant access to: '10.1.1.1,22'")), "{out}");
}

#[test]
fn server_command_and_fw_timeout_zero() {
    let env = Env::new();
    let wire = build(
        &env,
        &[
            "-C",
            "echo hello > /tmp/x",
            "-a",
            "10.0.0.5",
            "--key-rijndael",
            "testtest",
        ],
    );
    let m = open(&wire, b"testtest", EncryptionMode::Cbc, None).message;
    assert_eq!(m.msg_type, MessageType::Command);
    assert_eq!(m.message, "10.0.0.5,echo hello > /tmp/x");

    // fwknop sends no client timeout for -f 0.
    let wire = build(
        &env,
        &[
            "-A",
            "tcp/22",
            "-a",
            "10.0.0.5",
            "-f",
            "0",
            "--key-rijndael",
            "testtest",
        ],
    );
    let m = open(&wire, b"testtest", EncryptionMode::Cbc, None).message;
    assert_eq!(m.msg_type, MessageType::Access);
    assert_eq!(m.client_timeout, None);
}

#[test]
fn source_ip_and_time_offsets() {
    let env = Env::new();
    let wire = build(
        &env,
        &[
            "-A",
            "tcp/22",
            "-s",
            "--time-offset-minus",
            "2h",
            "--key-rijndael",
            "testtest",
        ],
    );
    let m = open(&wire, b"testtest", EncryptionMode::Cbc, None).message;
    assert_eq!(m.message, "0.0.0.0,tcp/22");
    assert!((now() - 7200).abs_diff(m.timestamp) <= 5);

    let wire = build(
        &env,
        &[
            "-A",
            "tcp/22",
            "-s",
            "--time-offset-plus",
            "90",
            "--key-rijndael",
            "testtest",
        ],
    );
    let m = open(&wire, b"testtest", EncryptionMode::Cbc, None).message;
    assert!((now() + 90).abs_diff(m.timestamp) <= 5);
}

#[test]
fn keys_from_key_file_and_stdin() {
    let env = Env::new();
    let kf = env.path("keys");
    std::fs::write(
        &kf,
        "# my keys\nother.example: nope\nsrv.example: filepass\n",
    )
    .unwrap();
    let wire = build(
        &env,
        &[
            "-A",
            "tcp/22",
            "-a",
            "10.0.0.5",
            "-D",
            "srv.example",
            "-G",
            kf.to_str().unwrap(),
        ],
    );
    assert_eq!(
        open(&wire, b"filepass", EncryptionMode::Cbc, None)
            .message
            .message,
        "10.0.0.5,tcp/22"
    );

    let pkt = env.path("s.pkt");
    let out = env.run_with_stdin(
        &[
            "-T",
            "-B",
            pkt.to_str().unwrap(),
            "--no-rc-file",
            "-A",
            "tcp/22",
            "-a",
            "10.0.0.5",
            "--stdin",
            "--use-hmac",
        ],
        "stdinkey\nstdinhmac\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = open(
        &read_packet(&pkt),
        b"stdinkey",
        EncryptionMode::Cbc,
        Some((DigestType::Sha256, b"stdinhmac")),
    );
    assert_eq!(d.message.message, "10.0.0.5,tcp/22");
}

#[test]
fn save_packet_append() {
    let env = Env::new();
    let pkt = env.path("a.pkt");
    let p = pkt.to_str().unwrap();
    for _ in 0..2 {
        env.ok(&[
            "-T",
            "-B",
            p,
            "-b",
            "--no-rc-file",
            "-A",
            "tcp/22",
            "-a",
            "10.0.0.5",
            "--key-rijndael",
            "testtest",
        ]);
    }
    let text = std::fs::read_to_string(&pkt).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    assert_ne!(lines[0], lines[1]);
    for l in lines {
        open(l, b"testtest", EncryptionMode::Cbc, None);
    }
    // Without -b the file is replaced.
    env.ok(&[
        "-T",
        "-B",
        p,
        "--no-rc-file",
        "-A",
        "tcp/22",
        "-a",
        "10.0.0.5",
        "--key-rijndael",
        "testtest",
    ]);
    assert_eq!(std::fs::read_to_string(&pkt).unwrap().lines().count(), 1);
}

#[test]
fn verbose_test_output_has_fwknop_layout() {
    let env = Env::new();
    let out = env.ok(&[
        "-T",
        "-v",
        "--no-rc-file",
        "-A",
        "tcp/22",
        "-a",
        "10.0.0.5",
        "-D",
        "127.0.0.1",
        "--key-base64-rijndael",
        KEY_B64,
        "--key-base64-hmac",
        HMAC_B64,
    ]);
    for needle in [
        "SPA Field Values:\n=================\n   Random Value: ",
        "       Username: tester\n",
        "    FKO Version: 3.0.0\n   Message Type: 1 (Access msg)\n Message String: 10.0.0.5,tcp/22\n     Nat Access: <NULL>\n",
        "    Digest Type: 3 (SHA256)\n      HMAC Type: 3 (SHA256)\nEncryption Type: 1 (Rijndael)\nEncryption Mode: 2 (CBC)\n",
        "Generating SPA packet:\n            protocol: udp\n         source port: <OS assigned>\n    destination port: 62201\n             IP/host: 127.0.0.1\n",
        "test mode enabled, SPA packet not actually sent.\n",
        "\nDump of the Decoded Data\nSPA Field Values:",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    assert!(
        !out.contains(KEY_B64) && !out.contains(HMAC_B64),
        "keys must not be printed"
    );
    // Without -v, -T still shows one field block but no decode dump.
    let out = env.ok(&[
        "-T",
        "--no-rc-file",
        "-A",
        "tcp/22",
        "-a",
        "10.0.0.5",
        "--key-rijndael",
        "testtest",
    ]);
    assert_eq!(out.matches("SPA Field Values").count(), 1);
    assert!(out.contains("test mode enabled"));
}
