//! GPG mode end to end, in network namespaces, with throwaway keyrings made by
//! the test (gpg in temporary GNUPGHOME directories, public keys exchanged and
//! trusted, agents stopped at the end):
//!
//! - the real `fwknop` client in GPG mode → `posternd` opens the port;
//! - `postern` in GPG mode → the real `fwknopd` opens the port;
//! - refused knocks (a signer the stanza does not list, no signature, a damaged
//!   packet) leave the port closed and get no answer.
//!
//! Each direction runs with a client key that has a passphrase and one that has
//! none, and with a server key that has a passphrase and one that has none.
//! fwknop and fwknopd hand passphrases to gpgme without asking for loopback
//! pinentry, so their homes get `pinentry-mode loopback` in gpg.conf (postern and
//! posternd ask for it themselves).

#[path = "../../spa-gpg/src/keyring.rs"]
#[allow(dead_code)]
mod gpg_keyring;

use gpg_keyring::{GpgHome, KeyIds};
use postern_e2e::posternd::{
    nftables_action, postern_toml, run_scenarios, runnable, udp_capture, write_private, ConfDir,
    Posternd, Service, SPA_PORT,
};
use postern_e2e::scenario::{describe, guarded_service, random_b64, Fwknopd, SpaClient};
use postern_e2e::{require_program, tempfile};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

const PORT: u16 = 22022;
const TIMEOUT: u64 = 3;
const CLIENT_PW: &str = "client-pw-1";
const SERVER_PW: &str = "server-pw-1";

/// Keyrings for one scenario: the client's (its key, plus another key the server
/// knows but does not list) and the server's.
struct Keyrings {
    client: GpgHome,
    server: GpgHome,
    client_key: KeyIds,
    other_key: KeyIds,
    server_key: KeyIds,
}

fn keyrings(tag: &str, client_pw: Option<&str>, server_pw: Option<&str>) -> Keyrings {
    let client = GpgHome::new(&format!("{tag}c")).expect("client home");
    let server = GpgHome::new(&format!("{tag}s")).expect("server home");
    let client_key = client
        .gen_key("client", client_pw, 2048)
        .expect("client key");
    let other_key = client.gen_key("other", None, 2048).expect("other key");
    let server_key = server
        .gen_key("server", server_pw, 2048)
        .expect("server key");
    client
        .import_trusted(&server, "server")
        .expect("server key into the client home");
    server
        .import_trusted(&client, "client")
        .expect("client key into the server home");
    server
        .import_trusted(&client, "other")
        .expect("other key into the server home");
    // For fwknop/fwknopd, which do not ask gpgme for loopback pinentry themselves.
    client.loopback_pinentry().unwrap();
    server.loopback_pinentry().unwrap();
    Keyrings {
        client,
        server,
        client_key,
        other_key,
        server_key,
    }
}

#[derive(Clone, Copy, Debug)]
struct Variant {
    client_pw: bool,
    server_pw: bool,
    hmac: bool,
}

const VARIANTS: [Variant; 2] = [
    Variant {
        client_pw: true,
        server_pw: false,
        hmac: true,
    },
    Variant {
        client_pw: false,
        server_pw: true,
        hmac: false,
    },
];

impl Variant {
    fn name(&self) -> String {
        format!(
            "client key {}, server key {}, {}",
            if self.client_pw {
                "with passphrase"
            } else {
                "without passphrase"
            },
            if self.server_pw {
                "with passphrase"
            } else {
                "without passphrase"
            },
            if self.hmac { "HMAC" } else { "no HMAC" }
        )
    }
}

/// The access.conf stanza (fwknopd's syntax, read by both servers).
fn access_conf(k: &Keyrings, v: Variant, hmac: &str) -> String {
    let mut s = format!(
        "SOURCE ANY\nGPG_HOME_DIR {}\nGPG_DECRYPT_ID {}\nGPG_REMOTE_ID {}\nOPEN_PORTS tcp/{PORT}\nFW_ACCESS_TIMEOUT {TIMEOUT}\n",
        k.server.path.display(),
        k.server_key.short_id,
        k.client_key.short_id
    );
    s += &if v.server_pw {
        format!("GPG_DECRYPT_PW {SERVER_PW}\n")
    } else {
        "GPG_ALLOW_NO_PW Y\n".to_string()
    };
    if v.hmac {
        s += &format!("HMAC_KEY_BASE64 {hmac}\nHMAC_DIGEST_TYPE SHA256\n");
    }
    s
}

/// Client arguments (the same flags for fwknop and postern): GPG keys, the signing
/// passphrase from a `-G` key file or `--gpg-no-signing-pw`, and the HMAC key.
fn client_args(
    k: &Keyrings,
    v: Variant,
    hmac: &str,
    signer: &KeyIds,
    allow: &str,
    server: &str,
    home: &Path,
) -> Vec<String> {
    let mut a: Vec<String> = [
        "--no-rc-file",
        "-A",
        &format!("tcp/{PORT}"),
        "-a",
        allow,
        "-D",
        server,
        "--gpg-recipient-key",
        &k.server_key.short_id,
        "--gpg-signer-key",
        &signer.short_id,
        "--gpg-home-dir",
        &k.client.path.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    if v.client_pw && signer == &k.client_key {
        let key_file = home.join("spa.key");
        write_private(&key_file, &format!("{server}: {CLIENT_PW}\n"));
        a.extend(["-G".to_string(), key_file.display().to_string()]);
    } else {
        a.push("--gpg-no-signing-pw".into());
    }
    if v.hmac {
        a.extend(["--use-hmac", "--key-base64-hmac", hmac].map(String::from));
    }
    a
}

fn posternd_for(svc: &Service, access: &str) -> (ConfDir, Posternd) {
    let conf = ConfDir::new();
    conf.write("access.conf", access);
    let body = format!("{}\n{}", udp_capture(SPA_PORT), nftables_action(PORT));
    conf.write(
        "postern.toml",
        &postern_toml(&conf, "access.conf", "memory", &body),
    );
    let d = Posternd::start(
        svc.server(),
        &["-c".into(), conf.arg("postern.toml"), "-v".into()],
        conf.dir.path(),
    );
    (conf, d)
}

/// (a) The real fwknop client in GPG mode knocks; posternd opens the port.
fn fwknop_to_posternd(v: Variant, tag: &str) {
    let k = keyrings(
        tag,
        v.client_pw.then_some(CLIENT_PW),
        v.server_pw.then_some(SERVER_PW),
    );
    let hmac = random_b64(64);
    let svc = Service::open(tag, PORT);
    let (_conf, d) = posternd_for(&svc, &access_conf(&k, v, &hmac));
    let ctx = |what: &str| {
        format!(
            "{}: {what}\n--- posternd log ---\n{}",
            v.name(),
            d.log_text()
        )
    };
    assert!(
        !svc.reachable(Duration::from_millis(700)),
        "{}",
        ctx("port open before the knock")
    );
    let home = tempfile::tempdir().unwrap();
    let args = client_args(
        &k,
        v,
        &hmac,
        &k.client_key,
        &svc.pair.client_ip.to_string(),
        &svc.pair.server_ip.to_string(),
        home.path(),
    );
    let out = SpaClient::Fwknop.run(svc.client(), home.path(), &args);
    assert!(
        out.status.success(),
        "{}",
        ctx(&format!("fwknop {args:?}: {}", describe(&out)))
    );
    assert!(
        svc.wait_reachable(true, Duration::from_secs(10)),
        "{}",
        ctx("port not opened by the fwknop GPG knock")
    );
    assert!(
        svc.wait_reachable(false, Duration::from_secs(TIMEOUT + 12)),
        "{}",
        ctx("port still open long after FW_ACCESS_TIMEOUT")
    );
}

/// (b) postern in GPG mode knocks; the real fwknopd opens the port.
fn postern_to_fwknopd(v: Variant, tag: &str) {
    let k = keyrings(
        tag,
        v.client_pw.then_some(CLIENT_PW),
        v.server_pw.then_some(SERVER_PW),
    );
    let hmac = random_b64(64);
    let svc = guarded_service(tag, PORT);
    let fwknopd = Fwknopd::start(&svc.pair.server, &access_conf(&k, v, &hmac), "");
    let ctx = |what: &str| {
        format!(
            "{}: {what}\n--- fwknopd log ---\n{}",
            v.name(),
            fwknopd.log_text()
        )
    };
    assert!(
        !svc.reachable(Duration::from_millis(700)),
        "{}",
        ctx("port open before the knock")
    );
    let home = tempfile::tempdir().unwrap();
    let args = client_args(
        &k,
        v,
        &hmac,
        &k.client_key,
        &svc.pair.client_ip.to_string(),
        &svc.pair.server_ip.to_string(),
        home.path(),
    );
    let postern = SpaClient::postern();
    let out = postern.run(&svc.pair.client, home.path(), &args);
    assert!(
        out.status.success(),
        "{}",
        ctx(&format!("postern {args:?}: {}", describe(&out)))
    );
    assert!(
        svc.wait_reachable(true, Duration::from_secs(10)),
        "{}",
        ctx("port not opened by the postern GPG knock")
    );
    assert!(
        svc.wait_reachable(false, Duration::from_secs(TIMEOUT + 12)),
        "{}",
        ctx("port still open long after FW_ACCESS_TIMEOUT")
    );
}

#[test]
fn fwknop_gpg_knocks_open_posternd() {
    if !runnable(&["fwknop", "nft", "gpg", "gpgconf"]) {
        return;
    }
    let scenarios = VARIANTS
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            (
                v.name(),
                Box::new(move || fwknop_to_posternd(v, &format!("gf{i}")))
                    as Box<dyn FnOnce() + Send>,
            )
        })
        .collect();
    run_scenarios("fwknop (GPG) → posternd", scenarios);
}

#[test]
fn postern_gpg_knocks_open_fwknopd() {
    if !(runnable(&["fwknopd", "iptables", "gpg", "gpgconf"]) && require_program("fwknop")) {
        return;
    }
    let scenarios = VARIANTS
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            (
                v.name(),
                Box::new(move || postern_to_fwknopd(v, &format!("gp{i}")))
                    as Box<dyn FnOnce() + Send>,
            )
        })
        .collect();
    run_scenarios("postern (GPG) → fwknopd", scenarios);
}

/// Build a packet with postern without reaching the server (sent to a closed local
/// port), saved with -B.
fn postern_packet(
    k: &Keyrings,
    v: Variant,
    svc: &Service,
    signer: Option<&KeyIds>,
    home: &Path,
    hmac: &str,
) -> String {
    let pkt = home.join("pkt");
    let signer_key = signer.unwrap_or(&k.client_key);
    let mut args = client_args(
        k,
        v,
        hmac,
        signer_key,
        &svc.pair.client_ip.to_string(),
        "127.0.0.1",
        home,
    );
    if signer.is_none() {
        let i = args.iter().position(|a| a == "--gpg-signer-key").unwrap();
        args.drain(i..i + 2);
    }
    args.extend([
        "-p".to_string(),
        "9".to_string(),
        "-B".to_string(),
        pkt.display().to_string(),
    ]);
    let out = SpaClient::postern().run(svc.client(), home, &args);
    assert!(out.status.success(), "postern {args:?}: {}", describe(&out));
    std::fs::read_to_string(&pkt).unwrap().trim().to_string()
}

/// Send `payload` from the client namespace; true if anything came back within a second.
fn answered(svc: &Service, payload: String) -> bool {
    let to = SocketAddr::from((svc.pair.server_ip, SPA_PORT));
    svc.client().in_ns(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        s.send_to(payload.as_bytes(), to).unwrap();
        let mut buf = [0u8; 2048];
        s.recv_from(&mut buf).is_ok()
    })
}

/// (c) Refused GPG knocks: nothing opens, nothing answers; then a good one opens.
#[test]
fn refused_gpg_knocks_stay_closed_and_unanswered() {
    if !runnable(&["nft", "gpg", "gpgconf"]) {
        return;
    }
    let v = Variant {
        client_pw: true,
        server_pw: false,
        hmac: false,
    };
    let k = keyrings("gr", Some(CLIENT_PW), None);
    let svc = Service::open("gr", PORT);
    let (_conf, d) = posternd_for(&svc, &access_conf(&k, v, ""));
    let home = tempfile::tempdir().unwrap();
    let ctx = |what: &str| format!("{what}\n--- posternd log ---\n{}", d.log_text());

    let good = postern_packet(&k, v, &svc, Some(&k.client_key), home.path(), "");
    let mut tampered = good.clone().into_bytes();
    let mid = tampered.len() / 2;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    let refused = [
        (
            "signed by a key the stanza does not list",
            postern_packet(&k, v, &svc, Some(&k.other_key), home.path(), ""),
        ),
        (
            "unsigned",
            postern_packet(&k, v, &svc, None, home.path(), ""),
        ),
        ("damaged", String::from_utf8(tampered).unwrap()),
    ];
    for (what, pkt) in refused {
        assert!(
            !answered(&svc, pkt),
            "{}",
            ctx(&format!("{what}: posternd answered"))
        );
        assert!(
            svc.stays_closed(Duration::from_secs(2)),
            "{}",
            ctx(&format!("{what}: port opened"))
        );
    }
    assert!(
        d.wait_log("refused", 3, Duration::from_secs(5)),
        "{}",
        ctx("posternd did not log three refusals")
    );
    assert!(
        !answered(&svc, good),
        "{}",
        ctx("posternd answered the good knock")
    );
    assert!(
        svc.wait_reachable(true, Duration::from_secs(10)),
        "{}",
        ctx("the good knock did not open the port")
    );
}
