//! The optional second factor: RFC 6238 codes (SHA-1, 30 s steps, 6–8 digits), checked
//! with a window of one step either side. Provisioned as an otpauth:// URI.
use totp_rs::{Algorithm, Builder, Totp};

use crate::error::random;
use crate::Error;

/// A TOTP secret with its parameters.
#[derive(Clone, PartialEq, Eq)]
pub struct TotpSecret(Totp);

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TotpSecret({} digits, redacted)", self.0.digits())
    }
}

impl TotpSecret {
    /// A new 160-bit secret (RFC 4226's recommended length), 6 digits, 30 s.
    pub fn generate(account: &str) -> Result<Self, Error> {
        let mut secret = zeroize::Zeroizing::new([0u8; 20]);
        random(&mut secret[..])?;
        Builder::new()
            .with_algorithm(Algorithm::SHA1)
            .with_secret(*secret)
            .with_issuer(Some("postern"))
            .with_account_name(account)
            .build()
            .map(TotpSecret)
            .map_err(|e| Error::Totp(e.to_string()))
    }

    /// Read an `otpauth://totp/...` URI (as authenticator apps and `postern --totp-setup` use).
    pub fn from_uri(uri: &str) -> Result<Self, Error> {
        let t = Totp::from_url(uri.trim()).map_err(|e| Error::Totp(e.to_string()))?;
        if t.skew() != 1 || t.step() != 30 {
            return Err(Error::Totp("only 30-second steps are supported".into()));
        }
        Ok(TotpSecret(t))
    }

    /// The otpauth:// URI (contains the secret).
    pub fn to_uri(&self) -> Result<String, Error> {
        self.0.to_url().map_err(|e| Error::Totp(e.to_string()))
    }

    /// The code at `unix_time` as a number (leading zeros dropped).
    pub fn code_at(&self, unix_time: u64) -> u32 {
        self.0
            .generate(unix_time)
            .to_string()
            .parse()
            .unwrap_or(u32::MAX)
    }

    /// Whether `code` is the code of the step holding `unix_time` or of the step just
    /// before or after it.
    pub fn verify(&self, code: u32, unix_time: u64) -> bool {
        let digits = usize::from(self.0.digits());
        if u64::from(code) >= 10u64.pow(digits as u32) {
            return false;
        }
        self.0
            .check(&format!("{code:0digits$}"), unix_time)
            .is_some()
    }
}
