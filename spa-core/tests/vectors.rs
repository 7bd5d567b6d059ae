//! The shared fwknop vectors: every known-good and generated packet decodes to its
//! listed fields; every must-reject line is refused (with an error, never a panic).

use spa_core::packet::{self, HmacKey, PacketKeys};
use spa_core::{DigestType, EncryptionMode, Secret};
use std::collections::HashMap;
use std::path::PathBuf;

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/vectors")
}

fn read_tsv(name: &str) -> Vec<HashMap<String, String>> {
    let path = vectors_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split('\t').collect();
    lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            header
                .iter()
                .map(|h| h.to_string())
                .zip(l.split('\t').map(str::to_string))
                .collect()
        })
        .collect()
}

fn secret(text: &str, encoding: &str) -> Secret {
    match encoding {
        "base64" => Secret::from_base64("key", text).unwrap(),
        "passphrase" => Secret::from_passphrase(text),
        other => panic!("unknown key encoding {other}"),
    }
}

struct Row {
    key: Secret,
    hmac: Option<(DigestType, Secret)>,
    mode: EncryptionMode,
}

fn row_keys(r: &HashMap<String, String>) -> Row {
    let hmac = match r["hmac_type"].as_str() {
        "none" | "" => None,
        t => Some((
            t.parse().unwrap(),
            secret(&r["hmac_key"], &r["hmac_key_encoding"]),
        )),
    };
    Row {
        key: secret(&r["key"], &r["key_encoding"]),
        hmac,
        mode: r["enc_mode"].parse().unwrap(),
    }
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn check_row(r: &HashMap<String, String>) {
    let id = &r["id"];
    let keys = row_keys(r);
    let pk = PacketKeys {
        key: keys.key.bytes(),
        mode: keys.mode,
        hmac: keys.hmac.as_ref().map(|(d, k)| HmacKey {
            digest: *d,
            key: k.bytes(),
        }),
    };
    let d = packet::open(r["packet"].as_bytes(), &pk).unwrap_or_else(|e| panic!("{id}: {e}"));
    let m = &d.message;
    assert_eq!(m.rand_val, r["rand_val"], "{id} rand_val");
    assert_eq!(m.username, r["username"], "{id} username");
    assert_eq!(m.timestamp.to_string(), r["timestamp"], "{id} timestamp");
    assert_eq!(m.version, r["fko_version"], "{id} version");
    assert_eq!(
        m.msg_type.number().to_string(),
        r["msg_type"],
        "{id} msg_type"
    );
    assert_eq!(m.message, r["message"], "{id} message");
    assert_eq!(m.nat_access, opt(&r["nat_access"]), "{id} nat_access");
    assert_eq!(m.server_auth, opt(&r["server_auth"]), "{id} server_auth");
    assert_eq!(
        m.client_timeout.unwrap_or(0).to_string(),
        r["client_timeout"],
        "{id} client_timeout"
    );
    assert_eq!(d.digest, r["digest"], "{id} digest");
    assert_eq!(d.digest_type.name(), r["digest_type"], "{id} digest_type");
    if let Some(enc) = r.get("encoded_data") {
        assert_eq!(&d.encoded_data, enc, "{id} encoded_data");
    }
}

#[test]
fn generated_packets_decode_to_their_fields() {
    let rows = read_tsv("generated.tsv");
    assert_eq!(rows.len(), 48);
    rows.iter().for_each(check_row);
}

#[test]
fn mutation_base_packets_decode() {
    let rows = read_tsv("mutation-base.tsv");
    assert_eq!(rows.len(), 20);
    rows.iter().for_each(check_row);
}

#[test]
fn known_good_packets_decode_to_their_fields() {
    let rows = read_tsv("known-good.tsv");
    assert_eq!(rows.len(), 42);
    rows.iter().for_each(check_row);
}

#[test]
fn must_reject_lines_are_refused_by_every_receiver() {
    let b64 = |s: &str| Secret::from_base64("k", s).unwrap();
    let r5 = (b64("wzNP62oPPgEc+kXDPQLHPOayQBuNbYUTPP+QrErNDmg="), b64("Yh+xizBnl6FotC5ec7FanVGClRMlsOAPh2u6eovnerfBVKwaVKzjGoblFMHMc593TNyi0dWn4opLoTIV9q/ttg=="));
    let r6 = (b64("7GUhvzM3zXNUTPqUMAixKOMqVNDh6qrIUgqWdacXNMA="), b64("YME3rcTN5fZ4D1oqV0NbiFNd4Hx1Nc4bNfgICPxjTzKpIiLBENuMtmsBWU+H+5c7oN2d4/iLa9TJ5HM8gLrSrQ=="));
    let testtest = Secret::from_passphrase("testtest");
    let fwknoptest = Secret::from_passphrase("fwknoptest");
    let receivers: Vec<(&str, PacketKeys)> = vec![
        (
            "R1",
            PacketKeys {
                key: testtest.bytes(),
                mode: EncryptionMode::Legacy,
                hmac: None,
            },
        ),
        (
            "R2",
            PacketKeys {
                key: testtest.bytes(),
                mode: EncryptionMode::Cbc,
                hmac: None,
            },
        ),
        (
            "R3",
            PacketKeys {
                key: fwknoptest.bytes(),
                mode: EncryptionMode::Legacy,
                hmac: None,
            },
        ),
        (
            "R4",
            PacketKeys {
                key: fwknoptest.bytes(),
                mode: EncryptionMode::Cbc,
                hmac: None,
            },
        ),
        (
            "R5",
            PacketKeys {
                key: r5.0.bytes(),
                mode: EncryptionMode::Cbc,
                hmac: Some(HmacKey {
                    digest: DigestType::Sha256,
                    key: r5.1.bytes(),
                }),
            },
        ),
        (
            "R6",
            PacketKeys {
                key: r6.0.bytes(),
                mode: EncryptionMode::Cbc,
                hmac: Some(HmacKey {
                    digest: DigestType::Sha256,
                    key: r6.1.bytes(),
                }),
            },
        ),
    ];
    let text = std::fs::read(vectors_dir().join("must-reject.txt")).unwrap();
    let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    // A trailing newline leaves one empty element after the last line.
    let lines = &lines[..2948];
    let mut accepted = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        for (name, keys) in &receivers {
            if let Ok(d) = packet::open(line, keys) {
                accepted.push(format!(
                    "line {} accepted by {name}: {:?}",
                    i + 1,
                    d.message
                ));
            }
        }
    }
    assert!(
        accepted.is_empty(),
        "{} accepted:\n{}",
        accepted.len(),
        accepted.join("\n")
    );
}

/// The other spellings of `text`'s last base64 character, where `text` ends a
/// base64 string of `encoded_len` characters: the same bytes with non-zero unused
/// bits (15 when 4 bits are unused, 3 when 2 are, none when the length is a
/// multiple of 4). A lenient decoder takes them all.
fn respellings(text: &str, encoded_len: usize) -> Vec<String> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let unused_bits = match encoded_len % 4 {
        2 => 4,
        3 => 2,
        _ => 0,
    };
    let mask = (1u8 << unused_bits) - 1;
    let (head, last) = text.split_at(text.len() - 1);
    let value = ALPHABET
        .iter()
        .position(|&c| c == last.as_bytes()[0])
        .expect("base64 character") as u8;
    (0..=mask)
        .filter(|&low| low != value & mask)
        .map(|low| {
            format!(
                "{head}{}",
                ALPHABET[usize::from((value & !mask) | low)] as char
            )
        })
        .collect()
}

fn all_valid_rows() -> Vec<HashMap<String, String>> {
    let mut rows = read_tsv("known-good.tsv");
    rows.extend(read_tsv("generated.tsv"));
    rows.extend(read_tsv("mutation-base.tsv"));
    assert_eq!(rows.len(), 42 + 48 + 20);
    rows
}

fn open_row(r: &HashMap<String, String>, wire: &str) -> spa_core::Result<spa_core::DecodedMessage> {
    let keys = row_keys(r);
    let pk = PacketKeys {
        key: keys.key.bytes(),
        mode: keys.mode,
        hmac: keys.hmac.as_ref().map(|(d, k)| HmacKey {
            digest: *d,
            key: k.bytes(),
        }),
    };
    packet::open(wire.as_bytes(), &pk)
}

/// Every vector with its last character respelt (the base64 trailing-bit
/// malleability) is refused: by the canonical decoding without an HMAC, by the
/// HMAC (over the text) with one. Each respelling would otherwise be a new
/// replay digest for the same packet.
#[test]
fn every_respelling_of_the_last_character_of_every_vector_is_refused() {
    let (mut variants, mut without_hmac) = (0, 0);
    for r in all_valid_rows() {
        let (id, wire) = (&r["id"], r["packet"].as_str());
        open_row(&r, wire).unwrap_or_else(|e| panic!("{id}: {e}"));
        let hmac = row_keys(&r).hmac.map(|(d, _)| d);
        // The last character ends the HMAC, or the ciphertext with its prefix put back.
        let encoded_len = hmac.map_or(packet::RIJNDAEL_PREFIX.len() + wire.len(), |d| d.b64_len());
        let others = respellings(wire, encoded_len);
        assert!([0, 3, 15].contains(&others.len()), "{id}");
        for other in others {
            let err =
                open_row(&r, &other).expect_err(&format!("{id}: respelling {other} accepted"));
            match hmac {
                None => {
                    assert_eq!(err, spa_core::SpaError::NonCanonical("ciphertext"), "{id}");
                    without_hmac += 1;
                }
                Some(_) => assert_eq!(err, spa_core::SpaError::HmacMismatch, "{id}"),
            }
            variants += 1;
        }
    }
    assert!(
        variants > 100 && without_hmac > 50,
        "{variants} {without_hmac}"
    );
}

/// The decoder alone refuses respellings, HMAC or not: each HMAC vector with the
/// last character of its ciphertext respelt, or `=` padding added, and the HMAC
/// recomputed over that text (as only the key holder could) is still refused.
#[test]
fn respelt_or_padded_ciphertexts_are_refused_even_under_a_valid_hmac() {
    let mut tried = 0;
    for r in all_valid_rows() {
        let Some((digest, key)) = row_keys(&r).hmac else {
            continue;
        };
        let id = &r["id"];
        let wire = r["packet"].as_str();
        let body = &wire[..wire.len() - digest.b64_len()];
        let encoded_len = packet::RIJNDAEL_PREFIX.len() + body.len();
        let padding = "=".repeat((4 - encoded_len % 4) % 4);
        let mut bodies: Vec<(String, bool)> = respellings(body, encoded_len)
            .into_iter()
            .map(|b| (b, false))
            .collect();
        if !padding.is_empty() {
            bodies.push((format!("{body}{padding}"), true));
        }
        for (other, padded) in bodies {
            let mac = digest.hmac(
                key.bytes(),
                &[packet::RIJNDAEL_PREFIX.as_bytes(), other.as_bytes()],
            );
            let resealed = format!("{other}{}", spa_core::b64::encode_nopad(&mac));
            let err = open_row(&r, &resealed).expect_err(&format!("{id}: {other} accepted"));
            // Padding also makes a length no whole number of AES blocks has.
            let expected = err == spa_core::SpaError::NonCanonical("ciphertext")
                || (padded && err == spa_core::SpaError::CipherLayout);
            assert!(expected, "{id}: {err}");
            tried += 1;
        }
    }
    assert!(tried > 50, "{tried}");
}
