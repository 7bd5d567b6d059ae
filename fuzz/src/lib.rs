//! What the fuzz targets share: the fixed receivers (the keys of the test
//! vectors, see tests/data/vectors/README.md) and the invariants of the server's
//! receive path, checked against an HMAC computed here with the `hmac` crate
//! directly rather than through spa-core.

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use spa_core::packet::{self, HmacKey, PacketKeys, GPG_PREFIX, RIJNDAEL_PREFIX};
use spa_core::{gpg, DecodedMessage, DigestType, SpaError};
use spa_server::config::access::parse_access_text;
use spa_server::config::AccessStanza;
use spa_server::pipeline::Keyring;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::OnceLock;

/// The sender of every fuzzed packet.
pub const PEER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// R6 of the vectors: the key and HMAC key of generated.tsv and mutation-base.tsv.
pub const R6_KEY: &str = "7GUhvzM3zXNUTPqUMAixKOMqVNDh6qrIUgqWdacXNMA=";
pub const R6_HMAC: &str =
    "YME3rcTN5fZ4D1oqV0NbiFNd4Hx1Nc4bNfgICPxjTzKpIiLBENuMtmsBWU+H+5c7oN2d4/iLa9TJ5HM8gLrSrQ==";

/// The receivers, as an access.conf read by the server's own parser. Every
/// stanza's HMAC digest is one [`oracle_hmac`] can compute.
pub fn access_conf() -> String {
    let r6 = |hmac: &str, mode: &str| {
        format!("SOURCE ANY\nKEY_BASE64 {R6_KEY}\n{hmac}ENCRYPTION_MODE {mode}\n\n")
    };
    let r6_hmac = |digest: &str| format!("HMAC_KEY_BASE64 {R6_HMAC}\nHMAC_DIGEST_TYPE {digest}\n");
    let mut conf = String::new();
    conf += &r6(&r6_hmac("sha256"), "cbc"); // R6
    conf += &r6(&r6_hmac("sha512"), "cbc");
    conf += &r6(&r6_hmac("sha384"), "ctr");
    // R5
    conf += "SOURCE ANY\nKEY_BASE64 wzNP62oPPgEc+kXDPQLHPOayQBuNbYUTPP+QrErNDmg=\n\
             HMAC_KEY_BASE64 Yh+xizBnl6FotC5ec7FanVGClRMlsOAPh2u6eovnerfBVKwaVKzjGoblFMHMc593TNyi0dWn4opLoTIV9q/ttg==\n\
             HMAC_DIGEST_TYPE sha256\n\n";
    conf += "SOURCE ANY\nKEY testtest\nENCRYPTION_MODE legacy\n\n"; // R1
    conf += "SOURCE ANY\nKEY fwknoptest\nENCRYPTION_MODE legacy\n\n"; // R3
    conf += "SOURCE ANY\nKEY fwknoptest\nENCRYPTION_MODE cbc\n\n"; // R4
    for mode in ["cbc", "ecb", "cfb", "ofb", "ctr"] {
        conf += &r6("", mode); // R6's key without HMAC, every mode
    }
    // The peer is not in SOURCE: this stanza must never be a candidate.
    conf += &format!("SOURCE 192.0.2.0/24\nKEY_BASE64 {R6_KEY}\n\n");
    // Takes GPG packets: screened (HMAC over `hQ…`), never decrypted here.
    conf += &format!(
        "SOURCE ANY\nGPG_ALLOW_NO_PW Y\nGPG_DISABLE_SIG Y\n{}\n",
        r6_hmac("sha256")
    );
    conf
}

pub struct Receivers {
    pub stanzas: Vec<AccessStanza>,
    pub keyring: Keyring,
}

pub fn receivers() -> &'static Receivers {
    static R: OnceLock<Receivers> = OnceLock::new();
    R.get_or_init(|| {
        let stanzas = parse_access_text(
            Path::new("fuzz.access.conf"),
            &access_conf(),
            &mut Default::default(),
        )
        .expect("the fuzz receivers are a valid access.conf");
        Receivers {
            keyring: Keyring::new(stanzas.clone()),
            stanzas,
        }
    })
}

pub fn hmac_key(s: &AccessStanza) -> Option<HmacKey<'_>> {
    s.hmac_secret().map(|k| HmacKey {
        digest: s.hmac_digest_type,
        key: k.bytes(),
    })
}

pub fn packet_keys(s: &AccessStanza) -> Option<PacketKeys<'_>> {
    Some(PacketKeys {
        key: s.rijndael_key()?.bytes(),
        mode: s.encryption_mode,
        hmac: hmac_key(s),
    })
}

/// Unpadded base64 HMAC of `prefix ‖ body`, computed without spa-core.
pub fn oracle_hmac(digest: DigestType, key: &[u8], prefix: &str, body: &str) -> String {
    fn mac<M: Mac + hmac::digest::KeyInit>(key: &[u8], prefix: &str, body: &str) -> Vec<u8> {
        let mut m = <M as Mac>::new_from_slice(key).expect("HMAC takes any key length");
        m.update(prefix.as_bytes());
        m.update(body.as_bytes());
        m.finalize().into_bytes().to_vec()
    }
    let raw = match digest {
        DigestType::Sha256 => mac::<Hmac<sha2::Sha256>>(key, prefix, body),
        DigestType::Sha384 => mac::<Hmac<sha2::Sha384>>(key, prefix, body),
        DigestType::Sha512 => mac::<Hmac<sha2::Sha512>>(key, prefix, body),
        other => panic!("the oracle has no {other}: keep the fuzz receivers to sha2"),
    };
    STANDARD_NO_PAD.encode(raw)
}

/// Split `wire` into (body, carried HMAC) if its tail is the right HMAC for `h`.
fn oracle_body<'a>(wire: &'a str, h: &HmacKey, prefix: &str) -> Option<&'a str> {
    let n = h.digest.b64_len();
    let (body, carried) = wire.split_at_checked(wire.len().checked_sub(n)?)?;
    (!body.is_empty() && oracle_hmac(h.digest, h.key, prefix, body) == carried).then_some(body)
}

/// fwknopd's cheap checks, written out independently of spa-core.
fn oracle_precheck(bytes: &[u8]) -> bool {
    (packet::MIN_WIRE_LEN..=packet::MAX_WIRE_LEN).contains(&bytes.len())
        && !bytes.starts_with(RIJNDAEL_PREFIX.as_bytes())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(b))
}

/// What the server made of one packet for one stanza.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // a few per input; boxing would only add noise
pub enum Verdict {
    /// Screened out (bad shape, wrong source, HMAC failed, impossible length).
    Screened,
    /// Passed screening; the decrypt stage's result.
    Decrypted(Result<DecodedMessage, SpaError>),
}

/// Run `bytes` through the server's receive path (Keyring::screen, then
/// packet::decrypt for each candidate, as the decrypt stage does) and check it
/// against the oracle and against spa-core's one-call `packet::open`.
/// Returns the verdict for each stanza of [`receivers`].
pub fn check_receive_path(bytes: &[u8]) -> Vec<Verdict> {
    let r = receivers();
    let screened = r.keyring.screen(bytes, PEER, &r.keyring.snapshot());

    // Plain screening: precheck agrees with the oracle, in both directions.
    let prechecked = packet::precheck(bytes);
    assert_eq!(
        prechecked.is_ok(),
        oracle_precheck(bytes),
        "precheck disagrees with the oracle: {prechecked:?}"
    );
    if screened.is_ok() {
        assert!(
            prechecked.is_ok(),
            "screen passed a packet precheck refuses"
        );
    }

    // The candidates the screen must return: no more (no packet past a failed
    // HMAC or a foreign SOURCE) and no fewer (no valid packet dropped).
    let mut expect_rijndael = Vec::new();
    let mut expect_gpg = Vec::new();
    if let Ok(wire) = prechecked {
        if !gpg::carries_prefix(wire) {
            for (i, s) in r.stanzas.iter().enumerate() {
                if !s.source.contains(PEER) {
                    continue;
                }
                let body = |prefix: &str| match hmac_key(s) {
                    Some(h) => oracle_body(wire, &h, prefix).map(str::len),
                    None => Some(wire.len()),
                };
                if s.rijndael_key().is_some() && s.takes_rijndael_len(wire.len()) {
                    if let Some(len) = body(RIJNDAEL_PREFIX) {
                        expect_rijndael.push((i, len));
                    }
                }
                if s.uses_gpg() && gpg::is_gpg_wire(wire) {
                    if let Some(len) = body(GPG_PREFIX) {
                        expect_gpg.push((i, len));
                    }
                }
            }
        }
    }
    let (got_rijndael, got_gpg) = match &screened {
        Ok(c) => (c.rijndael().to_vec(), c.gpg().to_vec()),
        Err(_) => (vec![], vec![]),
    };
    assert_eq!(got_rijndael, expect_rijndael, "Rijndael candidates");
    assert_eq!(got_gpg, expect_gpg, "GPG candidates");

    let mut verdicts: Vec<Verdict> = r.stanzas.iter().map(|_| Verdict::Screened).collect();
    for &(i, body_len) in &got_rijndael {
        let s = &r.stanzas[i];
        let wire = prechecked.as_ref().expect("candidates imply precheck");
        let key = s.rijndael_key().expect("a Rijndael candidate has a key");
        let result = packet::decrypt(&wire[..body_len], key.bytes(), s.encryption_mode);
        if let Ok(d) = &result {
            check_decoded(d);
        }
        verdicts[i] = Verdict::Decrypted(result);
    }

    // spa-core's one-call receive must agree with the staged server path.
    for (i, s) in r.stanzas.iter().enumerate() {
        let Some(keys) = packet_keys(s) else { continue };
        let opened = packet::open(bytes, &keys);
        if let (Ok(_), Some(h)) = (&opened, &keys.hmac) {
            let wire = std::str::from_utf8(bytes).expect("an opened packet is text");
            assert!(
                oracle_body(wire, h, RIJNDAEL_PREFIX).is_some(),
                "packet::open accepted a packet whose HMAC does not verify"
            );
        }
        if !s.source.contains(PEER) || prechecked.as_ref().is_ok_and(|w| gpg::carries_prefix(w)) {
            continue; // refused by the server before keys matter
        }
        let server = match &verdicts[i] {
            Verdict::Decrypted(Ok(d)) => Some(d),
            _ => None,
        };
        assert_eq!(
            opened.as_ref().ok(),
            server,
            "packet::open and the server path disagree for stanza {i}"
        );
    }
    verdicts
}

/// A message the decoder accepted is one the encoder would write, and reading
/// back what the encoder writes gives the same message.
pub fn check_decoded(d: &DecodedMessage) {
    if let Err(e) = d.message.validate() {
        panic!("decoded a message that fails validation ({e}): {d:?}");
    }
    let again = d
        .message
        .to_plaintext(d.digest_type)
        .unwrap_or_else(|e| panic!("cannot re-encode a decoded message ({e}): {d:?}"));
    let back = spa_core::message::decode_plaintext(again.as_bytes())
        .unwrap_or_else(|e| panic!("re-encoded message does not decode ({e}): {again}"));
    assert_eq!(
        back.message, d.message,
        "decode ∘ encode changed the message"
    );
}

/// Invariants of the fwknop-format config parsers.
pub mod conf {
    use spa_server::config::ConfError;
    use std::path::Path;

    /// The pseudo file name the fuzzed text is parsed under.
    pub const FILE: &str = "fuzz.conf";

    /// Every error names the file, and a line of it unless it is about the whole file.
    pub fn check_error(text: &str, e: &ConfError, file_level: bool) {
        assert_eq!(e.origin.file, Path::new(FILE), "{e}");
        if file_level {
            assert_eq!(e.origin.line, 0, "{e}");
        } else {
            assert!(
                (1..=text.lines().count()).contains(&e.origin.line),
                "error without a valid line number: {e}"
            );
        }
    }

    /// Keys never show up in messages (they end up in logs): a message about
    /// line `line` does not quote that line's value if it is a key. Only long
    /// values without spaces are checked, so that no fixed message text can
    /// contain one by chance (the fuzzer copies message text into its inputs).
    pub fn check_no_secret_in(text: &str, line: usize, message: &str) {
        const SECRETS: [&str; 5] = [
            "KEY",
            "KEY_BASE64",
            "HMAC_KEY",
            "HMAC_KEY_BASE64",
            "GPG_DECRYPT_PW",
        ];
        let Some(raw) = line.checked_sub(1).and_then(|i| text.lines().nth(i)) else {
            return;
        };
        let mut words = raw.trim_start().splitn(2, char::is_whitespace);
        let var = words.next().unwrap_or("").trim_end_matches(':');
        let value = words
            .next()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim();
        if SECRETS.contains(&var) && value.len() >= 16 && !value.contains(char::is_whitespace) {
            assert!(
                !message.contains(value),
                "a secret is in the message: {message}"
            );
        }
    }

    /// The line number a warning starts with (`FILE:LINE: …`).
    pub fn warning_line(warning: &str) -> usize {
        let rest = warning
            .strip_prefix(FILE)
            .and_then(|r| r.strip_prefix(':'))
            .unwrap_or_else(|| panic!("warning without the file name: {warning}"));
        let digits = rest.split(':').next().unwrap_or("");
        digits
            .parse()
            .unwrap_or_else(|_| panic!("warning without a line number: {warning}"))
    }
}
