//! Rijndael (AES-256) the way fwknop uses it: OpenSSL `EVP_BytesToKey` (MD5, one
//! round, 8-byte salt), a `Salted__` + salt header, PKCS#7 padding in every mode.

use crate::error::{Result, SpaError};
use aes::cipher::{
    block_padding::NoPadding, AsyncStreamCipher, BlockDecryptMut, BlockEncryptMut, KeyInit,
    KeyIvInit, StreamCipher,
};
use md5::{Digest, Md5};
use std::fmt;
use std::str::FromStr;
use zeroize::Zeroizing;

pub const SALTED_MAGIC: &[u8; 8] = b"Salted__";
pub const SALT_LEN: usize = 8;
pub const BLOCK: usize = 16;
/// fwknop refuses Rijndael keys longer than this.
pub const MAX_KEY_LEN: usize = 32;
/// Legacy mode cuts or pads the passphrase to this length.
const LEGACY_KEY_LEN: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum EncryptionMode {
    #[default]
    Cbc,
    Ecb,
    Cfb,
    Ofb,
    Ctr,
    /// CBC with the passphrase cut or '0'-padded to 16 bytes (fwknop < 2.5, old Android).
    Legacy,
}

const MODE_NAMES: &str = "cbc, ecb, cfb, ofb, ctr, legacy";

impl EncryptionMode {
    pub const ALL: [EncryptionMode; 6] = [
        EncryptionMode::Cbc,
        EncryptionMode::Ecb,
        EncryptionMode::Cfb,
        EncryptionMode::Ofb,
        EncryptionMode::Ctr,
        EncryptionMode::Legacy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EncryptionMode::Cbc => "cbc",
            EncryptionMode::Ecb => "ecb",
            EncryptionMode::Cfb => "cfb",
            EncryptionMode::Ofb => "ofb",
            EncryptionMode::Ctr => "ctr",
            EncryptionMode::Legacy => "legacy",
        }
    }
}

impl fmt::Display for EncryptionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for EncryptionMode {
    type Err = SpaError;
    fn from_str(s: &str) -> Result<Self> {
        let norm = s.trim().to_ascii_lowercase();
        // fwknopd's access.conf also spells legacy mode this way.
        if norm == "cbc_legacy_iv" {
            return Ok(EncryptionMode::Legacy);
        }
        EncryptionMode::ALL
            .into_iter()
            .find(|m| m.name() == norm)
            .ok_or_else(|| SpaError::UnknownName {
                kind: "encryption mode",
                value: s.to_string(),
                expected: MODE_NAMES,
            })
    }
}

/// OpenSSL `EVP_BytesToKey(aes-256, md5, salt, pass, 1)`: 32-byte key, 16-byte IV.
pub fn evp_bytes_to_key(pass: &[u8], salt: &[u8; SALT_LEN]) -> (Zeroizing<[u8; 32]>, [u8; 16]) {
    let mut out = Zeroizing::new([0u8; 48]);
    let mut prev: Option<[u8; 16]> = None;
    for chunk in out.chunks_mut(16) {
        let mut h = Md5::new();
        if let Some(p) = prev {
            h.update(p);
        }
        h.update(pass);
        h.update(salt);
        let d: [u8; 16] = h.finalize().into();
        chunk.copy_from_slice(&d);
        prev = Some(d);
    }
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&out[..32]);
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&out[32..]);
    (key, iv)
}

/// The passphrase bytes actually fed to key derivation for `mode`.
fn effective_key(key: &[u8], mode: EncryptionMode) -> Result<Zeroizing<Vec<u8>>> {
    if key.is_empty() {
        return Err(SpaError::Key("empty Rijndael key".into()));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(SpaError::Key(format!(
            "Rijndael key is {} bytes, at most {MAX_KEY_LEN} allowed",
            key.len()
        )));
    }
    let mut k = Zeroizing::new(key.to_vec());
    if mode == EncryptionMode::Legacy {
        k.resize(LEGACY_KEY_LEN, b'0');
    }
    Ok(k)
}

fn pkcs7_pad(data: &[u8]) -> Vec<u8> {
    let pad = BLOCK - data.len() % BLOCK;
    let mut v = Vec::with_capacity(data.len() + pad);
    v.extend_from_slice(data);
    v.resize(data.len() + pad, pad as u8);
    v
}

/// Strip PKCS#7 padding when it is well formed; like fwknop, keep the data otherwise
/// (the field checks that follow reject garbage).
fn pkcs7_unpad(mut data: Vec<u8>) -> Vec<u8> {
    if let Some(&last) = data.last() {
        let n = last as usize;
        if (1..=BLOCK).contains(&n)
            && n <= data.len()
            && data[data.len() - n..].iter().all(|&b| b == last)
        {
            data.truncate(data.len() - n);
        }
    }
    data
}

type Aes = aes::Aes256;

fn apply(buf: &mut [u8], key: &[u8; 32], iv: &[u8; 16], mode: EncryptionMode, encrypt: bool) {
    // Buffers are always whole blocks here (padding is applied first / checked before).
    macro_rules! block_mode {
        ($enc:ty, $dec:ty, $init:expr) => {{
            if encrypt {
                let c: $enc = $init;
                c.encrypt_padded_mut::<NoPadding>(buf, buf.len())
                    .expect("whole blocks");
            } else {
                let c: $dec = $init;
                c.decrypt_padded_mut::<NoPadding>(buf)
                    .expect("whole blocks");
            }
        }};
    }
    match mode {
        EncryptionMode::Cbc | EncryptionMode::Legacy => block_mode!(
            cbc::Encryptor<Aes>,
            cbc::Decryptor<Aes>,
            KeyIvInit::new(key.into(), iv.into())
        ),
        EncryptionMode::Ecb => {
            block_mode!(
                ecb::Encryptor<Aes>,
                ecb::Decryptor<Aes>,
                KeyInit::new(key.into())
            )
        }
        EncryptionMode::Cfb => {
            if encrypt {
                cfb_mode::Encryptor::<Aes>::new(key.into(), iv.into()).encrypt(buf)
            } else {
                cfb_mode::Decryptor::<Aes>::new(key.into(), iv.into()).decrypt(buf)
            }
        }
        EncryptionMode::Ofb => ofb::Ofb::<Aes>::new(key.into(), iv.into()).apply_keystream(buf),
        EncryptionMode::Ctr => {
            ctr::Ctr128BE::<Aes>::new(key.into(), iv.into()).apply_keystream(buf)
        }
    }
}

/// Encrypt `plaintext`: returns `Salted__` ‖ salt ‖ AES-256(PKCS#7(plaintext)).
pub fn encrypt(
    plaintext: &[u8],
    key: &[u8],
    mode: EncryptionMode,
    salt: &[u8; SALT_LEN],
) -> Result<Vec<u8>> {
    let pass = effective_key(key, mode)?;
    let (k, iv) = evp_bytes_to_key(&pass, salt);
    let mut body = pkcs7_pad(plaintext);
    apply(&mut body, &k, &iv, mode, true);
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(SALTED_MAGIC);
    out.extend_from_slice(salt);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decrypt a `Salted__` blob. The result is only as trustworthy as the HMAC
/// check before it (or, without HMAC, the digest check after it).
pub fn decrypt(blob: &[u8], key: &[u8], mode: EncryptionMode) -> Result<Zeroizing<Vec<u8>>> {
    if blob.len() < 2 * BLOCK || !blob.len().is_multiple_of(BLOCK) || &blob[..8] != SALTED_MAGIC {
        return Err(SpaError::CipherLayout);
    }
    let pass = effective_key(key, mode)?;
    let salt: &[u8; SALT_LEN] = blob[8..16].try_into().expect("8 bytes");
    let (k, iv) = evp_bytes_to_key(&pass, salt);
    let mut body = blob[16..].to_vec();
    apply(&mut body, &k, &iv, mode, false);
    Ok(Zeroizing::new(pkcs7_unpad(body)))
}
