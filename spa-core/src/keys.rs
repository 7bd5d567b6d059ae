//! Key material: passphrases, base64 keys, and `fwknop --key-gen` compatible generation.

use crate::b64;
use crate::error::{Result, SpaError};
use zeroize::Zeroizing;

/// Bytes in a generated Rijndael key.
pub const GENERATED_KEY_LEN: usize = 32;
/// Bytes in a generated HMAC key.
pub const GENERATED_HMAC_KEY_LEN: usize = 64;
/// Random bytes [`generate_keys`] needs.
pub const KEY_GEN_RANDOM_LEN: usize = GENERATED_KEY_LEN + GENERATED_HMAC_KEY_LEN;

/// A secret byte string, wiped on drop and never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(Zeroizing::new(bytes))
    }
    pub fn from_passphrase(pass: &str) -> Self {
        Secret::new(pass.as_bytes().to_vec())
    }
    /// Decode a base64 key (padded or not); `what` names it in the error.
    pub fn from_base64(what: &str, text: &str) -> Result<Self> {
        let text = text.trim();
        match b64::decode(text) {
            Some(bytes) if !bytes.is_empty() => Ok(Secret::new(bytes)),
            _ => Err(SpaError::Key(format!("{what} is not valid base64"))),
        }
    }
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
    pub fn to_base64(&self) -> String {
        b64::encode_padded(&self.0)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

/// Keys made the way `fwknop --key-gen` makes them.
#[derive(Clone, Debug)]
pub struct GeneratedKeys {
    pub key: Secret,
    pub hmac_key: Secret,
}

impl GeneratedKeys {
    /// `KEY_BASE64: …` / `HMAC_KEY_BASE64: …`, fwknop's --key-gen output.
    pub fn to_keygen_output(&self) -> String {
        format!(
            "KEY_BASE64: {}\nHMAC_KEY_BASE64: {}\n",
            self.key.to_base64(),
            self.hmac_key.to_base64()
        )
    }
}

pub fn generate_keys(random: &[u8; KEY_GEN_RANDOM_LEN]) -> GeneratedKeys {
    GeneratedKeys {
        key: Secret::new(random[..GENERATED_KEY_LEN].to_vec()),
        hmac_key: Secret::new(random[GENERATED_KEY_LEN..].to_vec()),
    }
}
