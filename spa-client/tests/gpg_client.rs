//! `postern` in GPG mode: flags and rc variables as fwknop 2.6.10 has them, packets
//! received on a local UDP socket and opened with the server's keyring.

mod common;

use common::*;
use spa_core::gpg;
use spa_core::packet::HmacKey;
use spa_core::DigestType;
use spa_gpg::keyring::{GpgHome, KeyIds};
use spa_gpg::{GpgOptions, Gpgme};
use std::net::UdpSocket;
use std::time::Duration;

const PW: &str = "sign-me";

struct Keys {
    client: GpgHome,
    server: GpgHome,
    signer: KeyIds,
    nopw: KeyIds,
    server_key: KeyIds,
}

fn keys(tag: &str) -> Keys {
    let client = GpgHome::new(&format!("{tag}c")).unwrap();
    let server = GpgHome::new(&format!("{tag}s")).unwrap();
    let signer = client.gen_key("client", Some(PW), 2048).unwrap();
    let nopw = client.gen_key("nopw", None, 2048).unwrap();
    let server_key = server.gen_key("server", None, 2048).unwrap();
    client.import_trusted(&server, "server").unwrap();
    server.import_trusted(&client, "client").unwrap();
    server.import_trusted(&client, "nopw").unwrap();
    Keys {
        client,
        server,
        signer,
        nopw,
        server_key,
    }
}

struct Receiver {
    sock: UdpSocket,
    port: String,
}

fn receiver() -> Receiver {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let port = sock.local_addr().unwrap().port().to_string();
    Receiver { sock, port }
}

impl Receiver {
    fn packet(&self) -> String {
        let mut buf = [0u8; 2048];
        let n = self.sock.recv(&mut buf).expect("a packet");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }
}

fn open(k: &Keys, wire: &str, hmac: Option<&HmacKey>) -> gpg::Opened {
    let mut server = Gpgme::new(&GpgOptions {
        home_dir: Some(k.server.path.clone()),
        ..Default::default()
    })
    .unwrap();
    gpg::open(wire.as_bytes(), hmac, &mut server)
        .unwrap_or_else(|e| panic!("packet does not open: {e}"))
}

#[test]
fn flags_stdin_passphrase_and_hmac() {
    let k = keys("fl");
    let env = Env::new();
    let rx = receiver();
    let home = k.client.path.to_str().unwrap();
    let args = [
        "--no-rc-file",
        "-A",
        "tcp/22",
        "-a",
        "10.0.0.5",
        "-D",
        "127.0.0.1",
        "-p",
        &rx.port,
        "--gpg-recipient-key",
        &k.server_key.short_id,
        "--gpg-signer-key",
        &k.signer.short_id,
        "--gpg-home-dir",
        home,
        "--key-base64-hmac",
        HMAC_B64,
        "--stdin",
        "-v",
    ];
    let out = env.run_with_stdin(&args, &format!("{PW}\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("Encryption Type: 2 (GPG)")
            && text.contains("Encryption Mode: 7 (Asymmetric)"),
        "{text}"
    );
    assert!(
        text.contains(&format!("  GPG recipient: {}", k.server_key.short_id)),
        "{text}"
    );
    let wire = rx.packet();
    assert!(text.contains(&format!(" Final SPA Data: {wire}")), "{text}");
    let hkey = b64(HMAC_B64);
    let opened = open(
        &k,
        &wire,
        Some(&HmacKey {
            digest: DigestType::Sha256,
            key: &hkey,
        }),
    );
    assert_eq!(opened.decoded.message.message, "10.0.0.5,tcp/22");
    assert_eq!(opened.decoded.message.username, "tester");
    assert!(opened.signatures[0].valid);
    assert_eq!(opened.signatures[0].fingerprint, k.signer.fingerprint);
}

#[test]
fn rc_file_variables_and_saved_stanza() {
    let k = keys("rc");
    let env = Env::new();
    let rx = receiver();
    let rc = format!(
        "[default]\nVERBOSE N\n\n[gpgsrv]\nSPA_SERVER 127.0.0.1\nSPA_SERVER_PORT {}\nACCESS tcp/2222\nALLOW_IP 10.0.0.7\n\
         USE_GPG Y\nGPG_RECIPIENT {}\nGPG_SIGNER {}\nGPG_HOMEDIR {}/\nGPG_SIGNING_PW {PW}\n",
        rx.port,
        k.server_key.fingerprint,
        k.signer.short_id,
        k.client.path.display()
    );
    std::fs::write(env.rc_path(), rc).unwrap();
    std::fs::set_permissions(
        env.rc_path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    env.ok(&["-n", "gpgsrv"]);
    let opened = open(&k, &rx.packet(), None);
    assert_eq!(opened.decoded.message.message, "10.0.0.7,tcp/2222");
    assert_eq!(opened.signatures[0].key_id, k.signer.short_id);

    // --save-rc-stanza writes the GPG variables as fwknop does.
    let home = k.client.path.to_str().unwrap();
    env.ok(&[
        "-A",
        "tcp/22",
        "-a",
        "10.0.0.5",
        "-D",
        "127.0.0.1",
        "-p",
        &rx.port,
        "-n",
        "saved",
        "--save-rc-stanza",
        "--gpg-recipient-key",
        &k.server_key.short_id,
        "--gpg-signer-key",
        &k.nopw.short_id,
        "--gpg-home-dir",
        home,
        "--gpg-no-signing-pw",
    ]);
    rx.packet();
    let text = std::fs::read_to_string(env.rc_path()).unwrap();
    let saved = &text[text.find("[saved]").unwrap()..];
    for want in [
        "USE_GPG",
        "GPG_RECIPIENT",
        "GPG_SIGNER",
        "GPG_HOMEDIR",
        "GPG_NO_SIGNING_PW",
    ] {
        assert!(saved.contains(want), "{want} missing from {saved}");
    }
    // …and the saved stanza is enough on its own.
    env.ok(&["-n", "saved"]);
    assert_eq!(
        open(&k, &rx.packet(), None).signatures[0].key_id,
        k.nopw.short_id
    );
}

#[test]
fn passphrase_handling() {
    let k = keys("pw");
    let env = Env::new();
    let rx = receiver();
    let home = k.client.path.to_str().unwrap();
    let base = |signer: &str| -> Vec<String> {
        [
            "--no-rc-file",
            "-A",
            "tcp/22",
            "-a",
            "10.0.0.5",
            "-D",
            "127.0.0.1",
            "-p",
            &rx.port,
            "--gpg-recipient-key",
            &k.server_key.short_id,
            "--gpg-signer-key",
            signer,
            "--gpg-home-dir",
            home,
        ]
        .map(String::from)
        .to_vec()
    };
    let run = |args: &[String]| env.run(&args.iter().map(String::as_str).collect::<Vec<_>>());

    // Key without passphrase: fwknop's note, and a signed packet.
    let mut a = base(&k.nopw.short_id);
    a.push("--gpg-no-signing-pw".into());
    let out = run(&a);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("[+] GPG mode set, signing passphrase not required"));
    assert!(open(&k, &rx.packet(), None).signatures[0].valid);

    // A signer with a passphrase and no way to get it: one line, nothing sent.
    let line = one_line_failure(run(&base(&k.signer.short_id)), &["(no passphrase)"]);
    assert!(
        line.contains("GPG_SIGNING_PW") && line.contains("--gpg-no-signing-pw"),
        "{line}"
    );
    // The wrong one (from -G's key file): refused by gpg.
    let key_file = env.path("keys");
    std::fs::write(&key_file, "127.0.0.1: wrong-pass\n").unwrap();
    let mut a = base(&k.signer.short_id);
    a.extend(["-G".to_string(), key_file.display().to_string()]);
    let line = one_line_failure(run(&a), &["(wrong passphrase)"]);
    assert!(line.contains("passphrase"), "{line}");
    // Unknown recipient.
    let mut a = base(&k.nopw.short_id);
    a.push("--gpg-no-signing-pw".into());
    a[10] = "0xDEADBEEF".into();
    let line = one_line_failure(run(&a), &["(unknown recipient)"]);
    assert!(
        line.contains("DEADBEEF") && line.contains("not found"),
        "{line}"
    );
}

#[test]
fn test_mode_saves_the_packet_then_cannot_decrypt_it() {
    let k = keys("tm");
    let env = Env::new();
    let pkt = env.path("gpg.pkt");
    let home = k.client.path.to_str().unwrap();
    let args = [
        "--no-rc-file",
        "-T",
        "-B",
        pkt.to_str().unwrap(),
        "-A",
        "tcp/22",
        "-a",
        "10.0.0.5",
        "-g",
        "--gpg-recipient-key",
        &k.server_key.short_id,
        "--gpg-home-dir",
        home,
    ];
    let line = env.fails(&args);
    assert!(line.contains("private key"), "{line}");
    // Unsigned (no signer) but complete.
    let opened = open(&k, &read_packet(&pkt), None);
    assert!(opened.signatures.is_empty());
}
