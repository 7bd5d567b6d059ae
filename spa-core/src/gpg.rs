//! GPG mode (fwknop's "asymmetric" encryption): the SPA plaintext of
//! [`crate::message`], encrypted to the server's OpenPGP key and normally signed
//! with the client's, carried as unpadded base64.
//!
//! Wire form, as fwknop 2.x writes it:
//!
//! ```text
//! base64(OpenPGP data) without '=' padding, minus its first two characters "hQ"
//! [ + unpadded base64 HMAC over "hQ" ‖ rest ]
//! ```
//!
//! Binary OpenPGP data starting with an old-format public-key-encrypted-session-key
//! packet with a two-byte length (RSA or Elgamal keys of 2048 bits and more) always
//! encodes to `hQ…`, so fwknop strips it and the server restores it. Data that does
//! not start that way (e.g. for an ECC encryption key, whose session-key packet is
//! shorter than 256 bytes) cannot be carried: [`wire_from_openpgp`] refuses it.
//!
//! fwknopd tells GPG from Rijndael packets by length alone (at least
//! [`MIN_GPG_WIRE_LEN`] characters, HMAC included) and drops longer packets that
//! still start with `hQ`.
//!
//! The OpenPGP work itself (which needs a keyring, an agent, a passphrase) is done
//! behind the [`OpenPgp`] trait by the caller; this module does no IO.

use crate::b64;
use crate::digest::DigestType;
use crate::error::SpaError;
use crate::message::{decode_plaintext, DecodedMessage, SpaMessage};
use crate::packet::{self, HmacKey, GPG_PREFIX, MAX_WIRE_LEN, MIN_GPG_WIRE_LEN};
use std::fmt;
use thiserror::Error;
use zeroize::Zeroizing;

/// Errors of the GPG mode: packet-level problems, or the OpenPGP engine's.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum GpgError {
    #[error(transparent)]
    Packet(#[from] SpaError),
    /// The engine failed (no such key, bad passphrase, decryption failed, …).
    #[error("GPG: {0}")]
    Engine(String),
    #[error(
        "the OpenPGP data does not start with `hQ`, so fwknop's wire form cannot carry it \
         (use an RSA or Elgamal encryption key of 2048 bits or more)"
    )]
    Prefix,
    #[error("the GPG packet is only {0} characters long; fwknopd would take anything shorter than {MIN_GPG_WIRE_LEN} for Rijndael")]
    TooShortForGpg(usize),
}

impl GpgError {
    pub fn engine(msg: impl fmt::Display) -> Self {
        GpgError::Engine(msg.to_string())
    }
}

/// One signature found on a decrypted packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureInfo {
    /// The signing key's fingerprint as the engine reports it (upper-case hex; only a
    /// key ID when the key is not in the keyring).
    pub fingerprint: String,
    /// fwknop's "signature ID": the last 8 hex digits of [`Self::fingerprint`].
    pub key_id: String,
    /// Cryptographically good and made by a key of at least marginal validity
    /// (fwknop's test: status "no error" and validity ≥ marginal).
    pub valid: bool,
    /// The engine's verdict in words, for logs ("Success", "No public key", …).
    pub status: String,
}

impl SignatureInfo {
    pub fn new(fingerprint: &str, valid: bool, status: impl Into<String>) -> Self {
        let fingerprint = fingerprint.to_ascii_uppercase();
        let start = fingerprint
            .char_indices()
            .rev()
            .nth(7)
            .map_or(0, |(i, _)| i);
        let key_id = fingerprint[start..].to_string();
        SignatureInfo {
            fingerprint,
            key_id,
            valid,
            status: status.into(),
        }
    }

    /// Does `id` (GPG_REMOTE_ID: 8 or 16 hex digits, optionally `0x`-prefixed)
    /// name this signer? fwknopd compares the last 8 digits exactly; postern also
    /// accepts long key IDs and ignores case.
    pub fn matches_id(&self, id: &str) -> bool {
        let id = normalize_hex(id);
        id.len() >= 8 && self.fingerprint.ends_with(&id)
    }

    /// Does `fpr` (GPG_FINGERPRINT_ID; spaces and case ignored) equal this signer's
    /// fingerprint?
    pub fn matches_fingerprint(&self, fpr: &str) -> bool {
        let fpr = normalize_hex(fpr);
        !fpr.is_empty() && self.fingerprint == fpr
    }
}

fn normalize_hex(text: &str) -> String {
    let t = text.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    t.chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_uppercase()
}

/// What decrypting one packet's OpenPGP data gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decrypted {
    pub plaintext: Zeroizing<Vec<u8>>,
    /// In the order the data carries them; fwknop only looks at the first.
    pub signatures: Vec<SignatureInfo>,
}

/// An OpenPGP engine (gpgme in postern, a fake in tests).
pub trait OpenPgp {
    /// Encrypt `plaintext` to `recipient` (a key ID, fingerprint or user ID) as
    /// binary OpenPGP data, signed by `signer` when given.
    fn encrypt_and_sign(
        &mut self,
        plaintext: &[u8],
        recipient: &str,
        signer: Option<&str>,
    ) -> Result<Vec<u8>, GpgError>;

    /// Decrypt binary OpenPGP data and report its signatures (without judging them).
    fn decrypt_and_verify(&mut self, data: &[u8]) -> Result<Decrypted, GpgError>;
}

/// Is this (prechecked) payload one fwknopd would treat as GPG?
pub fn is_gpg_wire(wire: impl AsRef<[u8]>) -> bool {
    wire.as_ref().len() >= MIN_GPG_WIRE_LEN
}

/// fwknopd drops a long payload that still starts with `hQ`: the prefix must have
/// been stripped, and a prefixed copy could otherwise slip past the replay cache.
pub fn carries_prefix(wire: impl AsRef<[u8]>) -> bool {
    let wire = wire.as_ref();
    wire.len() > MIN_GPG_WIRE_LEN && wire.starts_with(GPG_PREFIX.as_bytes())
}

/// Turn binary OpenPGP data into the wire form (prefix stripped, HMAC appended).
pub fn wire_from_openpgp(data: &[u8], hmac: Option<&HmacKey>) -> Result<String, GpgError> {
    if let Some(h) = hmac {
        h.check()?;
    }
    let full = b64::encode_nopad(data);
    let body = full.strip_prefix(GPG_PREFIX).ok_or(GpgError::Prefix)?;
    let mut wire = body.to_string();
    if let Some(h) = hmac {
        wire.push_str(&h.compute_b64(GPG_PREFIX, body));
    }
    if wire.len() > MAX_WIRE_LEN {
        return Err(SpaError::TooLong {
            len: wire.len(),
            max: MAX_WIRE_LEN,
        }
        .into());
    }
    if wire.len() < MIN_GPG_WIRE_LEN {
        return Err(GpgError::TooShortForGpg(wire.len()));
    }
    Ok(wire)
}

/// Encrypt (and sign) `msg` and build the wire form.
pub fn seal(
    msg: &SpaMessage,
    digest: DigestType,
    pgp: &mut dyn OpenPgp,
    recipient: &str,
    signer: Option<&str>,
    hmac: Option<&HmacKey>,
) -> Result<String, GpgError> {
    if let Some(h) = hmac {
        h.check()?;
    }
    let plaintext = Zeroizing::new(msg.to_plaintext(digest)?);
    let data = pgp.encrypt_and_sign(plaintext.as_bytes(), recipient, signer)?;
    wire_from_openpgp(&data, hmac)
}

/// The OpenPGP data of a wire body (HMAC already removed): prefix restored, base64 decoded.
pub fn openpgp_data(body: &str) -> Result<Vec<u8>, SpaError> {
    if body.starts_with(GPG_PREFIX) {
        return packet::decode_wire(body, "GPG data");
    }
    let mut full = String::with_capacity(GPG_PREFIX.len() + body.len());
    full.push_str(GPG_PREFIX);
    full.push_str(body);
    packet::decode_wire(&full, "GPG data")
}

/// Decode what the engine decrypted: like fwknop, the text ends at the first NUL.
pub fn decode_decrypted(plaintext: &[u8]) -> Result<DecodedMessage, SpaError> {
    let end = plaintext
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(plaintext.len());
    decode_plaintext(&plaintext[..end])
}

/// A GPG packet opened, with the signatures it carried.
#[derive(Clone, Debug)]
pub struct Opened {
    pub decoded: DecodedMessage,
    pub signatures: Vec<SignatureInfo>,
}

/// All receiving stages: precheck, HMAC (when keyed), decrypt, decode. The
/// signatures are returned for [`check_signatures`] to judge.
pub fn open(
    wire: &[u8],
    hmac: Option<&HmacKey>,
    pgp: &mut dyn OpenPgp,
) -> Result<Opened, GpgError> {
    let wire = packet::precheck(wire)?;
    if carries_prefix(wire) {
        return Err(GpgError::Prefix);
    }
    let body = match hmac {
        Some(h) => packet::verify_hmac(wire, h, GPG_PREFIX)?,
        None => wire,
    };
    let data = openpgp_data(body)?;
    let d = pgp.decrypt_and_verify(&data)?;
    let decoded = decode_decrypted(&d.plaintext)?;
    Ok(Opened {
        decoded,
        signatures: d.signatures,
    })
}

/// How a server stanza judges signatures (fwknopd's GPG_* access.conf settings).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SignaturePolicy {
    /// Check signatures at all (GPG_REQUIRE_SIG, unless GPG_DISABLE_SIG).
    pub verify: bool,
    /// Accept a signature that did not verify (GPG_IGNORE_SIG_VERIFY_ERROR).
    pub ignore_verify_error: bool,
    /// GPG_REMOTE_ID: the signer's key ID must be one of these (when not empty).
    pub remote_ids: Vec<String>,
    /// GPG_FINGERPRINT_ID: the signer's fingerprint must be one of these (when not empty).
    pub fingerprints: Vec<String>,
}

/// Why a stanza refused a packet's signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignatureDenial {
    Missing,
    Bad { fingerprint: String, status: String },
    FingerprintNotListed(String),
    IdNotListed(String),
}

impl fmt::Display for SignatureDenial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignatureDenial::Missing => {
                f.write_str("the packet is not signed but the stanza requires a GPG signature")
            }
            SignatureDenial::Bad {
                fingerprint,
                status,
            } => {
                write!(
                    f,
                    "the GPG signature by {fingerprint} did not verify ({status})"
                )
            }
            SignatureDenial::FingerprintNotListed(fpr) => {
                write!(f, "signed by {fpr}, which is not in GPG_FINGERPRINT_ID")
            }
            SignatureDenial::IdNotListed(id) => {
                write!(f, "signed by key ID {id}, which is not in GPG_REMOTE_ID")
            }
        }
    }
}

/// Judge the signatures as fwknopd does: only the first one counts; it must exist,
/// verify (unless verification errors are ignored), and match the fingerprint list
/// and the key ID list when they are given. Returns the accepted signature (None
/// when the policy does not verify signatures).
pub fn check_signatures<'a>(
    policy: &SignaturePolicy,
    signatures: &'a [SignatureInfo],
) -> Result<Option<&'a SignatureInfo>, SignatureDenial> {
    if !policy.verify {
        return Ok(None);
    }
    let sig = signatures.first().ok_or(SignatureDenial::Missing)?;
    if !sig.valid && !policy.ignore_verify_error {
        return Err(SignatureDenial::Bad {
            fingerprint: sig.fingerprint.clone(),
            status: sig.status.clone(),
        });
    }
    if !policy.fingerprints.is_empty()
        && !policy
            .fingerprints
            .iter()
            .any(|f| sig.matches_fingerprint(f))
    {
        return Err(SignatureDenial::FingerprintNotListed(
            sig.fingerprint.clone(),
        ));
    }
    if !policy.remote_ids.is_empty() && !policy.remote_ids.iter().any(|id| sig.matches_id(id)) {
        return Err(SignatureDenial::IdNotListed(sig.key_id.clone()));
    }
    Ok(Some(sig))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::MessageType;

    /// A stand-in engine: "encryption" is a fixed `0x85 0x01` header plus the
    /// plaintext reversed, the signer is recorded in a trailer.
    struct Fake {
        signer_valid: bool,
    }

    const HEADER: [u8; 3] = [0x85, 0x01, 0x0c];

    impl OpenPgp for Fake {
        fn encrypt_and_sign(
            &mut self,
            plaintext: &[u8],
            _recipient: &str,
            signer: Option<&str>,
        ) -> Result<Vec<u8>, GpgError> {
            let mut out = HEADER.to_vec();
            out.extend(plaintext.iter().rev());
            out.extend([b'x'; 300]);
            out.push(0);
            out.extend(signer.unwrap_or("").as_bytes());
            Ok(out)
        }
        fn decrypt_and_verify(&mut self, data: &[u8]) -> Result<Decrypted, GpgError> {
            let data = data
                .strip_prefix(&HEADER[..])
                .ok_or_else(|| GpgError::engine("not ours"))?;
            let nul = data.iter().position(|&b| b == 0).unwrap();
            let (body, signer) = (&data[..nul - 300], &data[nul + 1..]);
            let plaintext = Zeroizing::new(body.iter().rev().copied().collect());
            let signatures = if signer.is_empty() {
                vec![]
            } else {
                vec![SignatureInfo::new(
                    std::str::from_utf8(signer).unwrap(),
                    self.signer_valid,
                    "Success",
                )]
            };
            Ok(Decrypted {
                plaintext,
                signatures,
            })
        }
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

    const FPR: &str = "E17DB9209E5AE5FE132304F9B5CFAD844F88624F";

    #[test]
    fn round_trip_with_and_without_hmac() {
        let key = [7u8; 64];
        let hk = HmacKey {
            digest: DigestType::Sha256,
            key: &key,
        };
        for hmac in [None, Some(&hk)] {
            let mut pgp = Fake { signer_valid: true };
            let wire = seal(
                &msg(),
                DigestType::Sha512,
                &mut pgp,
                "server",
                Some(FPR),
                hmac,
            )
            .unwrap();
            assert!(!wire.starts_with(GPG_PREFIX) && is_gpg_wire(&wire));
            let opened = open(wire.as_bytes(), hmac, &mut pgp).unwrap();
            assert_eq!(opened.decoded.message, msg());
            assert_eq!(opened.decoded.digest_type, DigestType::Sha512);
            assert_eq!(opened.signatures[0].key_id, "4F88624F");
        }
    }

    #[test]
    fn hmac_covers_the_restored_prefix() {
        let key = [9u8; 32];
        let hk = HmacKey {
            digest: DigestType::Sha256,
            key: &key,
        };
        let wire = seal(
            &msg(),
            DigestType::Sha256,
            &mut Fake { signer_valid: true },
            "s",
            None,
            Some(&hk),
        )
        .unwrap();
        let body = &wire[..wire.len() - DigestType::Sha256.b64_len()];
        let expected = b64::encode_nopad(&DigestType::Sha256.hmac(&key, &[b"hQ", body.as_bytes()]));
        assert!(wire.ends_with(&expected));
        // One flipped character anywhere is refused before any decryption.
        let mut bad = wire.clone().into_bytes();
        bad[5] = if bad[5] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            open(&bad, Some(&hk), &mut Fake { signer_valid: true }).unwrap_err(),
            GpgError::Packet(SpaError::HmacMismatch)
        );
    }

    #[test]
    fn data_without_the_prefix_is_refused() {
        assert_eq!(
            wire_from_openpgp(&[0x84, 0x5e, 0x03], None),
            Err(GpgError::Prefix)
        );
        assert!(matches!(
            wire_from_openpgp(&[0x85, 0x01, 0x0c, 1, 2, 3], None),
            Err(GpgError::TooShortForGpg(_))
        ));
        let long_prefixed = format!("hQ{}", "A".repeat(500));
        assert!(carries_prefix(&long_prefixed));
        assert_eq!(
            open(
                long_prefixed.as_bytes(),
                None,
                &mut Fake { signer_valid: true }
            )
            .unwrap_err(),
            GpgError::Prefix
        );
    }

    /// Without an HMAC, the lenient spellings of a GPG packet (the last character
    /// with non-zero unused bits, `=` padding) would be new replay digests for the
    /// same OpenPGP data: only the canonical one is opened.
    #[test]
    fn only_the_canonical_spelling_is_opened() {
        let mut respelt = 0;
        for signer in ["", "a", "ab"] {
            let wire = seal(
                &msg(),
                DigestType::Sha256,
                &mut Fake { signer_valid: true },
                "s",
                Some(signer),
                None,
            )
            .unwrap();
            let full = format!("{GPG_PREFIX}{wire}");
            let same_data =
                |w: &str| b64::decode(&format!("{GPG_PREFIX}{w}")) == b64::decode(&full);
            let head = &wire[..wire.len() - 1];
            let mut others: Vec<String> = (b'A'..=b'Z')
                .chain(b'a'..=b'z')
                .chain(b'0'..=b'9')
                .chain([b'+', b'/'])
                .map(|c| format!("{head}{}", c as char))
                .filter(|w| *w != wire && same_data(w))
                .collect();
            let padding = "=".repeat((4 - full.len() % 4) % 4);
            if !padding.is_empty() {
                others.push(format!("{wire}{padding}"));
            }
            assert!(open(wire.as_bytes(), None, &mut Fake { signer_valid: true }).is_ok());
            for other in others {
                assert!(same_data(&other));
                assert_eq!(
                    open(other.as_bytes(), None, &mut Fake { signer_valid: true }).unwrap_err(),
                    GpgError::Packet(SpaError::NonCanonical("GPG data")),
                    "{other}"
                );
                respelt += 1;
            }
        }
        assert!(respelt >= 4, "{respelt}");
    }

    #[test]
    fn decrypted_text_stops_at_nul() {
        let pt = msg().to_plaintext(DigestType::Sha256).unwrap();
        let mut with_nul = pt.clone().into_bytes();
        with_nul.extend([0, b'j', b'u', b'n', b'k']);
        assert_eq!(decode_decrypted(&with_nul).unwrap().message, msg());
    }

    fn sig(fpr: &str, valid: bool) -> SignatureInfo {
        SignatureInfo::new(fpr, valid, if valid { "Success" } else { "Bad signature" })
    }

    #[test]
    fn signature_policy_follows_fwknopd() {
        let ids = |ids: &[&str]| SignaturePolicy {
            verify: true,
            remote_ids: ids.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let good = [sig(FPR, true)];
        assert!(check_signatures(&ids(&["4F88624F"]), &good)
            .unwrap()
            .is_some());
        assert!(check_signatures(&ids(&["1234AAAA", "0x4f88624f"]), &good).is_ok());
        assert!(check_signatures(&ids(&["B5CFAD844F88624F"]), &good).is_ok());
        assert_eq!(
            check_signatures(&ids(&["1234AAAA"]), &good),
            Err(SignatureDenial::IdNotListed("4F88624F".into()))
        );
        assert_eq!(
            check_signatures(&ids(&["4F88624F"]), &[]),
            Err(SignatureDenial::Missing)
        );
        let bad = [sig(FPR, false)];
        assert!(matches!(
            check_signatures(&ids(&["4F88624F"]), &bad),
            Err(SignatureDenial::Bad { .. })
        ));
        let mut ignore = ids(&["4F88624F"]);
        ignore.ignore_verify_error = true;
        assert!(check_signatures(&ignore, &bad).is_ok());
        // Missing stays denied even when verification errors are ignored.
        assert_eq!(
            check_signatures(&ignore, &[]),
            Err(SignatureDenial::Missing)
        );
        // Only the first signature counts.
        assert!(check_signatures(
            &ids(&["4F88624F"]),
            &[sig("AAAA0000BBBB1111", true), sig(FPR, true)]
        )
        .is_err());

        let fprs = SignaturePolicy {
            verify: true,
            fingerprints: vec!["e17d b920 9e5a e5fe 1323  04f9 b5cf ad84 4f88 624f".into()],
            ..Default::default()
        };
        assert!(check_signatures(&fprs, &good).is_ok());
        let other = [sig("00CC95F05BC146B6AC4038C9E36F443C6A3FAD56", true)];
        assert!(matches!(
            check_signatures(&fprs, &other),
            Err(SignatureDenial::FingerprintNotListed(_))
        ));
        // Both lists given: both must match.
        let both = SignaturePolicy {
            remote_ids: vec!["6A3FAD56".into()],
            ..fprs.clone()
        };
        assert!(check_signatures(&both, &good).is_err());

        let off = SignaturePolicy::default();
        assert_eq!(check_signatures(&off, &[]), Ok(None));
    }
}
