//! The gpgme engine with throwaway keyrings: encrypt+sign in a client home,
//! decrypt+verify in a server home, through spa-core's GPG packet functions.

use spa_core::gpg::{self, GpgError, OpenPgp};
use spa_core::packet::HmacKey;
use spa_core::{DigestType, MessageType, Secret, SpaMessage};
use spa_gpg::keyring::{GpgHome, KeyIds};
use spa_gpg::{GpgOptions, Gpgme};

struct Homes {
    client: GpgHome,
    server: GpgHome,
    client_key: KeyIds,
    server_key: KeyIds,
}

const CLIENT_PW: &str = "client-pass";

fn homes(tag: &str, client_pw: Option<&str>) -> Homes {
    let client = GpgHome::new(&format!("{tag}c")).unwrap();
    let server = GpgHome::new(&format!("{tag}s")).unwrap();
    let client_key = client.gen_key("client", client_pw, 2048).unwrap();
    let server_key = server.gen_key("server", None, 2048).unwrap();
    client.import_trusted(&server, "server").unwrap();
    server.import_trusted(&client, "client").unwrap();
    Homes {
        client,
        server,
        client_key,
        server_key,
    }
}

fn engine(home: &GpgHome, pw: Option<&str>) -> Gpgme {
    Gpgme::new(&GpgOptions {
        home_dir: Some(home.path.clone()),
        passphrase: pw.map(Secret::from_passphrase),
        ..Default::default()
    })
    .unwrap()
}

fn msg() -> SpaMessage {
    SpaMessage {
        rand_val: "1234567890123456".into(),
        username: "alice".into(),
        timestamp: 1_800_000_000,
        version: "3.0.0".into(),
        msg_type: MessageType::Access,
        message: "10.0.0.5,tcp/22".into(),
        nat_access: None,
        server_auth: None,
        client_timeout: None,
    }
}

#[test]
fn signed_packets_round_trip_between_keyrings() {
    let h = homes("rt", Some(CLIENT_PW));
    let hmac_key = [3u8; 64];
    let hk = HmacKey {
        digest: DigestType::Sha256,
        key: &hmac_key,
    };
    let mut client = engine(&h.client, Some(CLIENT_PW));
    let wire = gpg::seal(
        &msg(),
        DigestType::Sha256,
        &mut client,
        &h.server_key.short_id,
        Some(&h.client_key.short_id),
        Some(&hk),
    )
    .unwrap();
    assert!(
        gpg::is_gpg_wire(&wire) && wire.len() <= 1500,
        "{} chars",
        wire.len()
    );

    let mut server = engine(&h.server, None);
    let opened = gpg::open(wire.as_bytes(), Some(&hk), &mut server).unwrap();
    assert_eq!(opened.decoded.message, msg());
    let sig = &opened.signatures[0];
    assert!(sig.valid, "{sig:?}");
    assert_eq!(sig.fingerprint, h.client_key.fingerprint);
    assert_eq!(sig.key_id, h.client_key.short_id);
}

#[test]
fn unsigned_and_unknown_signer_and_wrong_passphrase() {
    let h = homes("us", Some(CLIENT_PW));
    // Unsigned: no signature reported.
    let mut client = engine(&h.client, None);
    let wire = gpg::seal(
        &msg(),
        DigestType::Sha256,
        &mut client,
        &h.server_key.fingerprint,
        None,
        None,
    )
    .unwrap();
    let opened = gpg::open(wire.as_bytes(), None, &mut engine(&h.server, None)).unwrap();
    assert!(opened.signatures.is_empty());

    // Wrong passphrase for the signing key: a clear error, no packet.
    let mut wrong = engine(&h.client, Some("not it"));
    let err = gpg::seal(
        &msg(),
        DigestType::Sha256,
        &mut wrong,
        "server",
        Some("client"),
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("passphrase"), "{err}");
    // No passphrase at all (and no agent): also refused, without a pinentry.
    let err = gpg::seal(
        &msg(),
        DigestType::Sha256,
        &mut engine(&h.client, None),
        "server",
        Some("client"),
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("passphrase"), "{err}");

    // Signed by a key the server does not know: reported, but not valid.
    let stranger = GpgHome::new("usx").unwrap();
    let s_key = stranger.gen_key("stranger", None, 2048).unwrap();
    stranger.import_trusted(&h.server, "server").unwrap();
    let wire = gpg::seal(
        &msg(),
        DigestType::Sha256,
        &mut engine(&stranger, None),
        "server",
        Some("stranger"),
        None,
    )
    .unwrap();
    let opened = gpg::open(wire.as_bytes(), None, &mut engine(&h.server, None)).unwrap();
    let sig = &opened.signatures[0];
    assert!(!sig.valid, "{sig:?}");
    assert!(
        s_key.fingerprint.ends_with(&sig.key_id),
        "{sig:?} vs {s_key:?}"
    );
}

#[test]
fn key_lookup_errors_are_clear() {
    let h = homes("kl", None);
    let mut client = engine(&h.client, None);
    let err = client.encrypt_and_sign(b"x", "DEADBEEF", None).unwrap_err();
    assert!(
        matches!(&err, GpgError::Engine(m) if m.contains("not found")),
        "{err}"
    );
    // The server's secret key is not in the client's keyring.
    let err = client
        .decrypt_and_verify(&[0x85, 0x01, 0x0c, 0, 0])
        .unwrap_err();
    assert!(matches!(err, GpgError::Engine(_)));
    let missing = GpgOptions {
        home_dir: Some("/nonexistent/gnupg".into()),
        ..Default::default()
    };
    assert!(Gpgme::new(&missing).is_err());
}
