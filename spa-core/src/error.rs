//! Typed errors. Their detail is for logs only: posternd never answers a
//! sender, whatever failed.

use thiserror::Error;

/// The text of [`SpaError::HmacMismatch`], the refusal of nearly every forged
/// packet: a server refusing a flood of them borrows it instead of formatting
/// it each time ([`SpaError::fixed_text`]).
pub const HMAC_MISMATCH: &str = "HMAC verification failed";

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SpaError {
    #[error("packet is empty")]
    Empty,
    #[error("packet too short: {len} bytes, at least {min} expected")]
    TooShort { len: usize, min: usize },
    #[error("packet too long: {len} bytes, at most {max} allowed")]
    TooLong { len: usize, max: usize },
    #[error(
        "packet still carries the constant `U2FsdGVkX1` prefix (it must be stripped on the wire)"
    )]
    SaltedPrefix,
    #[error("packet contains a byte outside the base64 alphabet at offset {offset}")]
    Charset { offset: usize },
    #[error("{}", HMAC_MISMATCH)]
    HmacMismatch,
    #[error("packet shorter than its {0}-character HMAC")]
    HmacMissing(usize),
    #[error("invalid base64 in {0}")]
    Base64(&'static str),
    /// Decodes leniently, but is not the one spelling fwknop writes (a respelt copy).
    #[error("{0} is not in canonical base64 (padding or non-zero trailing bits)")]
    NonCanonical(&'static str),
    #[error("ciphertext is not `Salted__` + salt + whole AES blocks")]
    CipherLayout,
    #[error("decryption failed or wrong key")]
    Decrypt,
    #[error("inner digest does not match")]
    DigestMismatch,
    #[error("invalid digest length {0}")]
    DigestLength(usize),
    #[error("plaintext length {0} outside 36..=1500")]
    PlaintextLength(usize),
    #[error("plaintext contains a non-printable byte")]
    NonPrintable,
    #[error("wrong number of fields: {0}")]
    FieldCount(usize),
    #[error("invalid field `{field}`: {reason}")]
    Field { field: &'static str, reason: String },
    #[error("invalid key: {0}")]
    Key(String),
    #[error("unknown {kind} `{value}` (expected one of: {expected})")]
    UnknownName {
        kind: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{0}")]
    Unsupported(String),
}

impl SpaError {
    /// The message, when it has no variable part, as a static string.
    pub fn fixed_text(&self) -> Option<&'static str> {
        match self {
            SpaError::HmacMismatch => Some(HMAC_MISMATCH),
            _ => None,
        }
    }

    pub(crate) fn field(field: &'static str, reason: impl Into<String>) -> Self {
        SpaError::Field {
            field,
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = SpaError> = std::result::Result<T, E>;
