//! --key-gen, -K, --qr, and keys saved into a stanza.

mod common;

use common::*;
use spa_core::{DigestType, EncryptionMode};
use std::os::unix::fs::PermissionsExt;

fn parse_keys(text: &str) -> (Vec<u8>, Vec<u8>) {
    let mut lines = text.lines();
    let k = lines
        .next()
        .unwrap()
        .strip_prefix("KEY_BASE64: ")
        .expect("KEY_BASE64 line");
    let h = lines
        .next()
        .unwrap()
        .strip_prefix("HMAC_KEY_BASE64: ")
        .expect("HMAC_KEY_BASE64 line");
    (b64(k), b64(h))
}

#[test]
fn key_gen_prints_fwknop_lines() {
    let env = Env::new();
    let out = env.ok(&["--key-gen", "--no-rc-file"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    let (k, h) = parse_keys(&out);
    assert_eq!((k.len(), h.len()), (32, 64));
    let out2 = env.ok(&["-k", "--no-rc-file"]);
    assert_ne!(out, out2);
    let (_, h) = parse_keys(&env.ok(&["-k", "--no-rc-file", "--hmac-digest-type", "sha512"]));
    assert_eq!(h.len(), 128);
    let (k, h) = parse_keys(&env.ok(&[
        "-k",
        "--no-rc-file",
        "--key-len",
        "16",
        "--hmac-key-len",
        "20",
    ]));
    assert_eq!((k.len(), h.len()), (16, 20));
}

#[test]
fn key_gen_file_is_private() {
    let env = Env::new();
    let f = env.path("keys.txt");
    let out = env.ok(&["-K", f.to_str().unwrap(), "--no-rc-file"]);
    assert_eq!(
        out,
        format!("[+] Wrote Rijndael and HMAC keys to: {}\n", f.display())
    );
    assert_eq!(
        std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (k, h) = parse_keys(&std::fs::read_to_string(&f).unwrap());
    assert_eq!((k.len(), h.len()), (32, 64));
}

#[test]
fn key_gen_qr() {
    let env = Env::new();
    let out = env.ok(&["--key-gen", "--qr", "--no-rc-file"]);
    let mut lines = out.lines();
    assert!(lines.next().unwrap().starts_with("KEY_BASE64: "));
    assert!(lines.next().unwrap().starts_with("HMAC_KEY_BASE64: "));
    let qr: Vec<&str> = lines.collect();
    assert!(qr.len() > 20, "QR block too small:\n{out}");
    assert!(
        qr.iter().all(|l| l.chars().all(|c| " █▀▄".contains(c))),
        "{out}"
    );
    let line = env.fails(&["--qr", "--no-rc-file", "-T"]);
    assert!(line.contains("--qr"), "{line}");
}

#[test]
fn key_gen_into_stanza_then_send_with_it() {
    let env = Env::new();
    let out = env.ok(&[
        "--key-gen",
        "--save-rc-stanza",
        "-n",
        "gen",
        "-D",
        "127.0.0.1",
        "-A",
        "tcp/22",
        "-a",
        "10.0.0.5",
        "--use-hmac",
    ]);
    assert!(
        out.ends_with(&format!(
            "[+] Wrote Rijndael and HMAC keys to rc file: {}\n",
            env.rc_path().display()
        )),
        "{out}"
    );
    let text = std::fs::read_to_string(env.rc_path()).unwrap();
    let val = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .filter(|r| r.starts_with(' '))
                    .map(|r| r.trim().to_string())
            })
            .unwrap_or_else(|| panic!("{name} missing in {text}"))
    };
    let (k, h) = (b64(&val("KEY_BASE64")), b64(&val("HMAC_KEY_BASE64")));
    let pkt = env.path("g.pkt");
    env.ok(&["-n", "gen", "-T", "-B", pkt.to_str().unwrap()]);
    let d = open(
        &read_packet(&pkt),
        &k,
        EncryptionMode::Cbc,
        Some((DigestType::Sha256, &h)),
    );
    assert_eq!(d.message.message, "10.0.0.5,tcp/22");
}

#[test]
fn version_and_help() {
    let env = Env::new();
    let v = env.ok(&["-V"]);
    assert!(
        v.starts_with("postern client ") && v.contains("FKO protocol version 3.0.0"),
        "{v}"
    );
    let h = env.ok(&["-h"]);
    assert!(
        h.contains("--resolve-ip-https") && h.contains("--save-rc-stanza") && h.contains("--qr"),
        "{h}"
    );
}
