//! Message digests and HMACs used by fwknop: md5, sha1, sha2 and sha3 families.

use crate::error::{Result, SpaError};
use hmac::{Mac, SimpleHmac};
use sha2::Digest;
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DigestType {
    Md5,
    Sha1,
    Sha256,
    Sha384,
    Sha512,
    Sha3_256,
    Sha3_512,
}

const NAMES: &str = "md5, sha1, sha256, sha384, sha512, sha3_256, sha3_512";

impl DigestType {
    pub const ALL: [DigestType; 7] = [
        DigestType::Md5,
        DigestType::Sha1,
        DigestType::Sha256,
        DigestType::Sha384,
        DigestType::Sha512,
        DigestType::Sha3_256,
        DigestType::Sha3_512,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DigestType::Md5 => "md5",
            DigestType::Sha1 => "sha1",
            DigestType::Sha256 => "sha256",
            DigestType::Sha384 => "sha384",
            DigestType::Sha512 => "sha512",
            DigestType::Sha3_256 => "sha3_256",
            DigestType::Sha3_512 => "sha3_512",
        }
    }

    /// Raw output length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            DigestType::Md5 => 16,
            DigestType::Sha1 => 20,
            DigestType::Sha256 | DigestType::Sha3_256 => 32,
            DigestType::Sha384 => 48,
            DigestType::Sha512 | DigestType::Sha3_512 => 64,
        }
    }

    /// Length of the unpadded base64 form (what travels in packets).
    pub fn b64_len(self) -> usize {
        (self.output_len() * 4).div_ceil(3)
    }

    /// The digest types whose unpadded base64 form has `len` characters.
    /// sha256/sha3_256 and sha512/sha3_512 share a length, so a decoder must try both.
    pub fn candidates_for_b64_len(len: usize) -> &'static [DigestType] {
        match len {
            22 => &[DigestType::Md5],
            27 => &[DigestType::Sha1],
            43 => &[DigestType::Sha256, DigestType::Sha3_256],
            64 => &[DigestType::Sha384],
            86 => &[DigestType::Sha512, DigestType::Sha3_512],
            _ => &[],
        }
    }

    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            DigestType::Md5 => md5::Md5::digest(data).to_vec(),
            DigestType::Sha1 => sha1::Sha1::digest(data).to_vec(),
            DigestType::Sha256 => sha2::Sha256::digest(data).to_vec(),
            DigestType::Sha384 => sha2::Sha384::digest(data).to_vec(),
            DigestType::Sha512 => sha2::Sha512::digest(data).to_vec(),
            DigestType::Sha3_256 => sha3::Sha3_256::digest(data).to_vec(),
            DigestType::Sha3_512 => sha3::Sha3_512::digest(data).to_vec(),
        }
    }

    pub fn digest_b64(self, data: &[u8]) -> String {
        crate::b64::encode_nopad(&self.digest(data))
    }

    /// HMAC over the concatenation of `parts` (so callers need not join them).
    pub fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        fn run<D>(key: &[u8], parts: &[&[u8]]) -> Vec<u8>
        where
            D: Digest + hmac::digest::core_api::BlockSizeUser,
        {
            let mut mac =
                <SimpleHmac<D> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
            for p in parts {
                mac.update(p);
            }
            mac.finalize().into_bytes().to_vec()
        }
        match self {
            DigestType::Md5 => run::<md5::Md5>(key, parts),
            DigestType::Sha1 => run::<sha1::Sha1>(key, parts),
            DigestType::Sha256 => run::<sha2::Sha256>(key, parts),
            DigestType::Sha384 => run::<sha2::Sha384>(key, parts),
            DigestType::Sha512 => run::<sha2::Sha512>(key, parts),
            DigestType::Sha3_256 => run::<sha3::Sha3_256>(key, parts),
            DigestType::Sha3_512 => run::<sha3::Sha3_512>(key, parts),
        }
    }
}

impl fmt::Display for DigestType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DigestType {
    type Err = SpaError;
    fn from_str(s: &str) -> Result<Self> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        DigestType::ALL
            .into_iter()
            .find(|d| d.name() == norm)
            .ok_or_else(|| SpaError::UnknownName {
                kind: "digest type",
                value: s.to_string(),
                expected: NAMES,
            })
    }
}

/// An HMAC key with its inner and outer pads already absorbed (RFC 2104), so
/// each message costs only its own blocks: made once per stanza and cloned per
/// packet, which saves two compressions and every allocation of [`DigestType::hmac`].
#[derive(Clone)]
pub struct KeyedHmac(Keyed);

#[derive(Clone)]
enum Keyed {
    Md5(hmac::Hmac<md5::Md5>),
    Sha1(hmac::Hmac<sha1::Sha1>),
    Sha256(hmac::Hmac<sha2::Sha256>),
    Sha384(hmac::Hmac<sha2::Sha384>),
    Sha512(hmac::Hmac<sha2::Sha512>),
    Sha3_256(hmac::Hmac<sha3::Sha3_256>),
    Sha3_512(hmac::Hmac<sha3::Sha3_512>),
}

/// The longest unpadded base64 HMAC (sha512: 86 characters).
const MAX_B64_HMAC: usize = 88;

impl KeyedHmac {
    pub fn new(digest: DigestType, key: &[u8]) -> KeyedHmac {
        fn keyed<M: Mac + hmac::digest::KeyInit>(key: &[u8]) -> M {
            <M as hmac::digest::KeyInit>::new_from_slice(key).expect("HMAC accepts any key length")
        }
        KeyedHmac(match digest {
            DigestType::Md5 => Keyed::Md5(keyed(key)),
            DigestType::Sha1 => Keyed::Sha1(keyed(key)),
            DigestType::Sha256 => Keyed::Sha256(keyed(key)),
            DigestType::Sha384 => Keyed::Sha384(keyed(key)),
            DigestType::Sha512 => Keyed::Sha512(keyed(key)),
            DigestType::Sha3_256 => Keyed::Sha3_256(keyed(key)),
            DigestType::Sha3_512 => Keyed::Sha3_512(keyed(key)),
        })
    }

    pub fn digest(&self) -> DigestType {
        match self.0 {
            Keyed::Md5(_) => DigestType::Md5,
            Keyed::Sha1(_) => DigestType::Sha1,
            Keyed::Sha256(_) => DigestType::Sha256,
            Keyed::Sha384(_) => DigestType::Sha384,
            Keyed::Sha512(_) => DigestType::Sha512,
            Keyed::Sha3_256(_) => DigestType::Sha3_256,
            Keyed::Sha3_512(_) => DigestType::Sha3_512,
        }
    }

    /// Is `carried` the unpadded base64 of the HMAC over the concatenation of
    /// `parts`? Compared in constant time.
    pub fn verify_b64(&self, parts: &[&[u8]], carried: &[u8]) -> bool {
        fn b64_of<M: Mac + Clone>(mac: &M, parts: &[&[u8]], out: &mut [u8]) -> usize {
            let mut mac = mac.clone();
            for p in parts {
                mac.update(p);
            }
            crate::b64::encode_nopad_into(&mac.finalize().into_bytes(), out)
        }
        let mut expected = [0u8; MAX_B64_HMAC];
        let len = match &self.0 {
            Keyed::Md5(m) => b64_of(m, parts, &mut expected),
            Keyed::Sha1(m) => b64_of(m, parts, &mut expected),
            Keyed::Sha256(m) => b64_of(m, parts, &mut expected),
            Keyed::Sha384(m) => b64_of(m, parts, &mut expected),
            Keyed::Sha512(m) => b64_of(m, parts, &mut expected),
            Keyed::Sha3_256(m) => b64_of(m, parts, &mut expected),
            Keyed::Sha3_512(m) => b64_of(m, parts, &mut expected),
        };
        ct_eq(&expected[..len], carried)
    }
}

/// Never the key, only which digest it is for.
impl fmt::Debug for KeyedHmac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyedHmac({})", self.digest())
    }
}

/// Constant-time equality of two byte strings (length is not secret).
/// constant_time_eq, not subtle: it compares a word at a time (SSE2 here)
/// where subtle fences every byte, a cost each garbage packet's tag paid.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    constant_time_eq::constant_time_eq(a, b)
}

#[cfg(test)]
mod keyed_tests {
    use super::*;

    #[test]
    fn a_keyed_hmac_agrees_with_the_plain_one_for_every_digest_and_key_length() {
        let message: Vec<u8> = (0..=255u8).cycle().take(700).collect();
        for digest in DigestType::ALL {
            for key_len in [1, 16, 64, 65, 128, 129, 200] {
                let key: Vec<u8> = (0..key_len).map(|i| (i * 7 + 3) as u8).collect();
                let keyed = KeyedHmac::new(digest, &key);
                let parts: [&[u8]; 2] = [b"U2FsdGVkX1", &message];
                let right = crate::b64::encode_nopad(&digest.hmac(&key, &parts));
                assert!(
                    keyed.verify_b64(&parts, right.as_bytes()),
                    "{digest} {key_len}"
                );
                // Reused: the pads are not consumed by a check.
                assert!(
                    keyed.verify_b64(&parts, right.as_bytes()),
                    "{digest} {key_len} again"
                );
                let mut wrong = right.clone().into_bytes();
                wrong[3] ^= 1;
                assert!(!keyed.verify_b64(&parts, &wrong));
                assert!(!keyed.verify_b64(&parts, &right.as_bytes()[1..]));
                assert!(!keyed.verify_b64(&[b"U2FsdGVkX1", &message[1..]], right.as_bytes()));
                assert_eq!(format!("{keyed:?}"), format!("KeyedHmac({digest})"));
            }
        }
    }
}
