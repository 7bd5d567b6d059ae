//! Key material: passphrases, base64 keys, and `fwknop --key-gen` compatible generation.

use crate::b64;
use crate::digest::DigestType;
use crate::error::{Result, SpaError};
use zeroize::Zeroizing;

/// Bytes in a generated Rijndael key.
pub const GENERATED_KEY_LEN: usize = 32;
/// Bytes in a generated HMAC key.
pub const GENERATED_HMAC_KEY_LEN: usize = 64;
/// Longest HMAC key `--hmac-key-len` may ask for (fwknop's MAX_KEY_LEN).
pub const MAX_GENERATED_HMAC_KEY_LEN: usize = 128;

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

/// fwknop's default HMAC key length for --key-gen, by HMAC digest.
pub fn default_hmac_key_len(digest: DigestType) -> usize {
    match digest {
        DigestType::Md5 => 16,
        DigestType::Sha1 => 20,
        DigestType::Sha256 | DigestType::Sha3_256 | DigestType::Sha3_512 => GENERATED_HMAC_KEY_LEN,
        DigestType::Sha384 | DigestType::Sha512 => 128,
    }
}

/// A `--key-len` / `--hmac-key-len` that fwknop (and so postern) refuses; the
/// text is the one line both programs print.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {flag} '{value}': must be within [1-{max}]")]
pub struct KeyLenError {
    flag: &'static str,
    value: String,
    max: usize,
}

/// The sizes `--key-gen` makes keys of, for postern and posternd alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyGenSizes {
    pub key_len: usize,
    pub hmac_key_len: usize,
}

impl KeyGenSizes {
    /// `--key-len` (1..=32, default 32) and `--hmac-key-len` (1..=128, default by
    /// `hmac_digest`: [`default_hmac_key_len`]) as given on the command line.
    pub fn parse(
        key_len: Option<&str>,
        hmac_key_len: Option<&str>,
        hmac_digest: DigestType,
    ) -> std::result::Result<Self, KeyLenError> {
        let key_len = parse_len("--key-len", key_len, GENERATED_KEY_LEN)?;
        let hmac_key_len = parse_len("--hmac-key-len", hmac_key_len, MAX_GENERATED_HMAC_KEY_LEN)?;
        Ok(KeyGenSizes {
            key_len: key_len.unwrap_or(GENERATED_KEY_LEN),
            hmac_key_len: hmac_key_len.unwrap_or(default_hmac_key_len(hmac_digest)),
        })
    }

    /// Keys of these sizes from the random bytes `fill` writes (the caller's
    /// source of randomness, e.g. the operating system's).
    pub fn generate(&self, fill: impl FnOnce(&mut [u8])) -> GeneratedKeys {
        let mut random = Zeroizing::new(vec![0u8; self.key_len + self.hmac_key_len]);
        fill(&mut random);
        GeneratedKeys {
            key: Secret::new(random[..self.key_len].to_vec()),
            hmac_key: Secret::new(random[self.key_len..].to_vec()),
        }
    }
}

fn parse_len(
    flag: &'static str,
    value: Option<&str>,
    max: usize,
) -> std::result::Result<Option<usize>, KeyLenError> {
    value
        .map(|s| {
            s.parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| KeyLenError {
                    flag,
                    value: s.to_string(),
                    max,
                })
        })
        .transpose()
}

/// Write `--key-gen` output to `path`, mode 0600 (also when the file existed).
/// The one file spa-core writes: `--key-gen-file` of postern and posternd.
pub fn write_key_file(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_sizes_and_limits() {
        let sizes = |k, h, d| KeyGenSizes::parse(k, h, d).map(|s| (s.key_len, s.hmac_key_len));
        assert_eq!(sizes(None, None, DigestType::Sha256), Ok((32, 64)));
        assert_eq!(
            sizes(Some("16"), Some("10"), DigestType::Sha256),
            Ok((16, 10))
        );
        assert_eq!(sizes(None, None, DigestType::Sha512), Ok((32, 128)));
        assert_eq!(sizes(None, None, DigestType::Md5), Ok((32, 16)));
        assert_eq!(
            sizes(Some("33"), None, DigestType::Sha256)
                .unwrap_err()
                .to_string(),
            "invalid --key-len '33': must be within [1-32]"
        );
        assert_eq!(
            sizes(None, Some("0"), DigestType::Sha256)
                .unwrap_err()
                .to_string(),
            "invalid --hmac-key-len '0': must be within [1-128]"
        );
    }

    #[test]
    fn generated_keys_split_the_random_bytes() {
        let sizes = KeyGenSizes {
            key_len: 2,
            hmac_key_len: 3,
        };
        let keys = sizes.generate(|buf| buf.copy_from_slice(&[1, 2, 3, 4, 5]));
        assert_eq!(
            (keys.key.bytes(), keys.hmac_key.bytes()),
            (&[1u8, 2][..], &[3u8, 4, 5][..])
        );
    }
}
