//! The packet on the wire: base64 ciphertext with the constant `U2FsdGVkX1` prefix
//! stripped, then the unpadded base64 HMAC appended (encrypt-then-MAC).
//!
//! Receiving is split in stages so a server can order them cheapest first:
//! [`precheck`] (length, charset) → [`verify_hmac`] (constant time) → [`decrypt`].

use crate::b64;
use crate::cipher::{self, EncryptionMode};
use crate::digest::{DigestType, KeyedHmac};
use crate::error::{Result, SpaError};
use crate::message::{decode_plaintext, DecodedMessage, SpaMessage};

/// base64 of `Salted__`'s first 7.5 bytes: identical in every Rijndael packet.
pub const RIJNDAEL_PREFIX: &str = "U2FsdGVkX1";
/// Constant start of base64 OpenPGP data, stripped by fwknop for GPG packets.
pub const GPG_PREFIX: &str = "hQ";
pub const MIN_WIRE_LEN: usize = 140;
pub const MAX_WIRE_LEN: usize = 1500;
/// fwknopd treats payloads at least this long without the Rijndael prefix as GPG.
pub const MIN_GPG_WIRE_LEN: usize = 400;
/// fwknop refuses longer HMAC keys.
pub const MAX_HMAC_KEY_LEN: usize = 128;

#[derive(Clone, Copy, Debug)]
pub struct HmacKey<'a> {
    pub digest: DigestType,
    pub key: &'a [u8],
}

/// Everything needed to seal or open a packet for one peer.
#[derive(Clone, Copy, Debug)]
pub struct PacketKeys<'a> {
    pub key: &'a [u8],
    pub mode: EncryptionMode,
    pub hmac: Option<HmacKey<'a>>,
}

impl HmacKey<'_> {
    /// A key of a length fwknop's HMAC takes (1 to [`MAX_HMAC_KEY_LEN`] bytes)?
    pub fn check(&self) -> Result<()> {
        if self.key.is_empty() || self.key.len() > MAX_HMAC_KEY_LEN {
            return Err(SpaError::Key(format!(
                "HMAC key must be 1..={MAX_HMAC_KEY_LEN} bytes, got {}",
                self.key.len()
            )));
        }
        Ok(())
    }

    /// Unpadded base64 HMAC over `prefix ‖ body` without joining them.
    pub(crate) fn compute_b64(&self, prefix: &str, body: &str) -> String {
        b64::encode_nopad(
            &self
                .digest
                .hmac(self.key, &[prefix.as_bytes(), body.as_bytes()]),
        )
    }
}

/// Build the wire form of `msg`. `salt` must be fresh random bytes.
pub fn seal(
    msg: &SpaMessage,
    digest: DigestType,
    keys: &PacketKeys,
    salt: &[u8; 8],
) -> Result<String> {
    if keys.mode == EncryptionMode::Legacy && keys.hmac.is_some() {
        return Err(SpaError::Unsupported(
            "HMAC cannot be used with legacy encryption mode".into(),
        ));
    }
    if let Some(h) = &keys.hmac {
        h.check()?;
    }
    let plaintext = zeroize::Zeroizing::new(msg.to_plaintext(digest)?);
    let blob = cipher::encrypt(plaintext.as_bytes(), keys.key, keys.mode, salt)?;
    let full = b64::encode_nopad(&blob);
    let body = full
        .strip_prefix(RIJNDAEL_PREFIX)
        .expect("Salted__ always encodes to the prefix");
    let mut wire = body.to_string();
    if let Some(h) = &keys.hmac {
        wire.push_str(&h.compute_b64(RIJNDAEL_PREFIX, body));
    }
    if wire.len() > MAX_WIRE_LEN {
        return Err(SpaError::TooLong {
            len: wire.len(),
            max: MAX_WIRE_LEN,
        });
    }
    Ok(wire)
}

/// The cheap checks fwknopd makes before any crypto: size, prefix, charset.
pub fn precheck(wire: &[u8]) -> Result<&str> {
    precheck_shape(wire)?;
    check_charset(wire)?;
    Ok(std::str::from_utf8(wire).expect("base64 alphabet is ASCII"))
}

/// The O(1) part of [`precheck`]: empty, too short, too long, prefix left in.
pub fn precheck_shape(wire: &[u8]) -> Result<()> {
    if wire.is_empty() {
        return Err(SpaError::Empty);
    }
    if wire.len() < MIN_WIRE_LEN {
        return Err(SpaError::TooShort {
            len: wire.len(),
            min: MIN_WIRE_LEN,
        });
    }
    if wire.len() > MAX_WIRE_LEN {
        return Err(SpaError::TooLong {
            len: wire.len(),
            max: MAX_WIRE_LEN,
        });
    }
    if wire.starts_with(RIJNDAEL_PREFIX.as_bytes()) {
        return Err(SpaError::SaltedPrefix);
    }
    Ok(())
}

/// The O(n) part of [`precheck`]: every byte in the base64 alphabet. (A
/// server's screen goes on with the bytes: no UTF-8 pass over garbage.)
pub fn check_charset(wire: &[u8]) -> Result<()> {
    match b64::first_non_base64(wire) {
        Some(offset) => Err(SpaError::Charset { offset }),
        None => Ok(()),
    }
}

/// Can a Rijndael ciphertext of `body_len` wire characters (prefix stripped, HMAC
/// removed) be `Salted__` + salt + whole AES blocks? Only about one length in 21
/// can, so this rejects most garbage before any hashing.
pub fn plausible_rijndael_body(body_len: usize) -> bool {
    let full = RIJNDAEL_PREFIX.len() + body_len;
    let bytes = full * 3 / 4;
    bytes >= 2 * cipher::BLOCK
        && bytes.is_multiple_of(cipher::BLOCK)
        && (4 * bytes).div_ceil(3) == full
}

/// Verify the trailing HMAC in constant time; returns the ciphertext part.
pub fn verify_hmac<'a>(wire: &'a str, hmac: &HmacKey, prefix: &str) -> Result<&'a str> {
    hmac.check()?;
    let body = verify_keyed_hmac(
        wire.as_bytes(),
        &KeyedHmac::new(hmac.digest, hmac.key),
        prefix,
    )?;
    Ok(&wire[..body.len()])
}

/// [`verify_hmac`] with a key made once ([`KeyedHmac`]), as a server screening
/// many packets for one stanza does.
pub fn verify_keyed_hmac<'a>(wire: &'a [u8], hmac: &KeyedHmac, prefix: &str) -> Result<&'a [u8]> {
    let n = hmac.digest().b64_len();
    if wire.len() <= n {
        return Err(SpaError::HmacMissing(n));
    }
    let (body, carried) = wire.split_at(wire.len() - n);
    if hmac.verify_b64(&[prefix.as_bytes(), body], carried) {
        Ok(body)
    } else {
        Err(SpaError::HmacMismatch)
    }
}

/// Decode the base64 of a packet (prefix restored). Only the canonical spelling is
/// taken: without an HMAC (or with GPG) the respellings of the last character
/// would be the same packet under a new replay digest.
pub(crate) fn decode_wire(text: &str, what: &'static str) -> Result<Vec<u8>> {
    b64::decode_canonical(text).ok_or_else(|| match b64::decode(text) {
        Some(_) => SpaError::NonCanonical(what),
        None => SpaError::Base64(what),
    })
}

/// Decrypt and decode a Rijndael ciphertext (wire form, HMAC already removed).
pub fn decrypt(body: &str, key: &[u8], mode: EncryptionMode) -> Result<DecodedMessage> {
    let mut full = String::with_capacity(RIJNDAEL_PREFIX.len() + body.len());
    full.push_str(RIJNDAEL_PREFIX);
    full.push_str(body);
    let blob = decode_wire(&full, "ciphertext")?;
    let plaintext = cipher::decrypt(&blob, key, mode)?;
    decode_plaintext(&plaintext)
}

/// All receiving stages for one set of keys.
pub fn open(wire: &[u8], keys: &PacketKeys) -> Result<DecodedMessage> {
    let wire = precheck(wire)?;
    let hmac_len = keys.hmac.as_ref().map_or(0, |h| h.digest.b64_len());
    if !plausible_rijndael_body(wire.len().saturating_sub(hmac_len)) {
        return Err(SpaError::CipherLayout);
    }
    let body = match &keys.hmac {
        Some(h) => verify_hmac(wire, h, RIJNDAEL_PREFIX)?,
        None => wire,
    };
    decrypt(body, keys.key, keys.mode)
}
