//! The OpenPGP engine of postern and posternd: gpgme behind spa-core's
//! [`OpenPgp`] trait. One copy serves both programs (`spa-client` and
//! `spa-server` depend on this crate; neither depends on the other).
//!
//! Why gpgme rather than a pure-Rust OpenPGP library (sequoia, rPGP):
//!
//! - **fwknop parity.** fwknop 2.x drives GnuPG through gpgme. Using the same
//!   engine means the same keyrings (`--gpg-home-dir`, `GPG_HOME_DIR`,
//!   `GNUPGHOME`), the same key lookup by short key ID, user ID or fingerprint,
//!   secret keys held by gpg-agent (`private-keys-v1.d`), and the same trust
//!   database behind the signature validity that fwknopd checks ("at least
//!   marginal"). A pure-Rust library would need its own key store and its own
//!   idea of trust, and existing fwknop users' `~/.gnupg` would not just work.
//! - **License.** gpgme is LGPL-2.1 and linked dynamically (libgpgme11), which is
//!   compatible with postern's MIT OR Apache-2.0 (see `deny.toml`). sequoia-openpgp
//!   is LGPL too, so it would not have been a licensing gain either.
//! - **Format.** gpgme/gpg write exactly the packet layout fwknop writes (old-format
//!   session-key packet, hence the constant `hQ` the wire form strips).
//!
//! The price: gpgme runs `gpg` as a child process per operation (slow, tens of
//! milliseconds) and its context is not `Send`. posternd therefore decrypts on a
//! bounded pool of threads that each own their contexts (`spa_server::gpg`).
//!
//! [`keyring`] makes throwaway GnuPG homes for tests, benchmarks and demos.

#![forbid(unsafe_code)]

pub mod keyring;

use gpgme::{Context, EncryptFlags, Key, PinentryMode, Protocol, Validity};
use spa_core::gpg::{Decrypted, GpgError, OpenPgp, SignatureInfo};
use spa_core::Secret;
use std::io::Write;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// How to reach the keyring and unlock secret keys.
#[derive(Clone, Debug, Default)]
pub struct GpgOptions {
    /// GnuPG home directory (keyrings, agent); gpgme's default (`GNUPGHOME` or
    /// `~/.gnupg`) when unset.
    pub home_dir: Option<PathBuf>,
    /// The `gpg` program gpgme should run; gpgme's default when unset.
    pub exe: Option<PathBuf>,
    /// Passphrase of the secret key (the signing key on the client, the decryption
    /// key on the server). Fed to gpg with pinentry in loopback mode.
    pub passphrase: Option<Secret>,
    /// Leave passphrases to gpg-agent (its cache or its pinentry) instead.
    pub use_agent: bool,
}

/// A gpgme context bound to one keyring.
pub struct Gpgme {
    ctx: Context,
    passphrase: Option<Secret>,
}

fn engine_error(what: &str, e: gpgme::Error) -> GpgError {
    GpgError::Engine(format!("{what}: {}", e.description()))
}

fn path_text(p: &Path) -> Result<String, GpgError> {
    p.to_str()
        .map(str::to_string)
        .ok_or_else(|| GpgError::engine(format!("path {} is not valid UTF-8", p.display())))
}

impl Gpgme {
    /// A context for the OpenPGP engine with `opts`' keyring and executable.
    pub fn new(opts: &GpgOptions) -> Result<Self, GpgError> {
        let gpgme = gpgme::init();
        gpgme
            .check_engine_version(Protocol::OpenPgp)
            .map_err(|e| engine_error("no usable OpenPGP engine (is gnupg installed?)", e))?;
        if let Some(dir) = &opts.home_dir {
            if !dir.is_dir() {
                return Err(GpgError::engine(format!(
                    "GPG home directory {} does not exist",
                    dir.display()
                )));
            }
        }
        if let Some(exe) = &opts.exe {
            if !exe.is_file() {
                return Err(GpgError::engine(format!(
                    "GPG executable {} does not exist",
                    exe.display()
                )));
            }
        }
        let mut ctx = Context::from_protocol(Protocol::OpenPgp)
            .map_err(|e| engine_error("cannot create a gpgme context", e))?;
        if opts.home_dir.is_some() || opts.exe.is_some() {
            let exe = opts.exe.as_deref().map(path_text).transpose()?;
            let exe = exe.or_else(|| ctx.engine_info().path().ok().map(str::to_string));
            let home = opts.home_dir.as_deref().map(path_text).transpose()?;
            ctx.set_engine_info(exe, home)
                .map_err(|e| engine_error("cannot configure the GPG engine", e))?;
        }
        ctx.set_armor(false);
        if !opts.use_agent {
            // gpg ≥ 2.1 only uses a caller's passphrase in loopback mode; older gpg
            // asks the callback anyway, so "not supported" is fine to ignore.
            let _ = ctx.set_pinentry_mode(PinentryMode::Loopback);
        }
        Ok(Gpgme {
            ctx,
            passphrase: opts.passphrase.clone(),
        })
    }

    /// Use `passphrase` for the secret keys from now on (posternd sets it per packet,
    /// from the stanza that packet is tried against).
    pub fn set_passphrase(&mut self, passphrase: Option<Secret>) {
        self.passphrase = passphrase;
    }

    /// The gpg program this context runs.
    pub fn engine_path(&self) -> Option<String> {
        self.ctx.engine_info().path().ok().map(str::to_string)
    }

    /// The one key `name` designates (as fwknop: none or several is an error).
    fn key(&mut self, name: &str, secret: bool) -> Result<Key, GpgError> {
        let what = if secret { "signer" } else { "recipient" };
        let mut keys = if secret {
            self.ctx.find_secret_keys([name])
        } else {
            self.ctx.find_keys([name])
        }
        .map_err(|e| engine_error(&format!("cannot list keys for the GPG {what} `{name}`"), e))?;
        let first = keys
            .next()
            .transpose()
            .map_err(|e| engine_error(&format!("cannot list keys for the GPG {what} `{name}`"), e))?
            .ok_or_else(|| {
                GpgError::engine(format!("GPG {what} key `{name}` not found in the keyring"))
            })?;
        if let Some(Ok(_)) = keys.next() {
            return Err(GpgError::engine(format!(
                "GPG {what} key `{name}` is ambiguous (several keys match)"
            )));
        }
        Ok(first)
    }

    /// Run `f` with the passphrase callback installed.
    fn with_passphrase<R>(&mut self, f: impl FnOnce(&mut Context) -> R) -> R {
        let pass = self.passphrase.clone();
        let provider =
            move |req: gpgme::PassphraseRequest<'_>, out: &mut dyn Write| -> gpgme::Result<()> {
                // Like fwknop: one try only; no passphrase means "cannot".
                let Some(p) = pass.as_ref().filter(|_| !req.prev_attempt_failed) else {
                    return Err(gpgme::Error::CANCELED);
                };
                out.write_all(p.bytes())
                    .and_then(|_| out.write_all(b"\n"))
                    .map_err(|_| gpgme::Error::from_errno(libc::EIO))
            };
        self.ctx.with_passphrase_provider(provider, f)
    }
}

fn passphrase_problem(e: gpgme::Error) -> GpgError {
    let code = e.code();
    if code == gpgme::Error::CANCELED.code()
        || code == gpgme::Error::BAD_PASSPHRASE.code()
        || code == gpgme::Error::NO_PIN.code()
    {
        return GpgError::engine(format!(
            "{}: wrong or missing passphrase for the secret key",
            e.description()
        ));
    }
    GpgError::Engine(e.description().into_owned())
}

impl OpenPgp for Gpgme {
    fn encrypt_and_sign(
        &mut self,
        plaintext: &[u8],
        recipient: &str,
        signer: Option<&str>,
    ) -> Result<Vec<u8>, GpgError> {
        let rkey = self.key(recipient, false)?;
        let skey = signer.map(|s| self.key(s, true)).transpose()?;
        self.ctx.clear_signers();
        if let Some(k) = &skey {
            self.ctx
                .add_signer(k)
                .map_err(|e| engine_error("cannot use the signing key", e))?;
        }
        let mut out = Vec::new();
        let result = self.with_passphrase(|ctx| match &skey {
            Some(_) => ctx
                .sign_and_encrypt_with_flags(
                    [&rkey],
                    plaintext,
                    &mut out,
                    EncryptFlags::ALWAYS_TRUST,
                )
                .map(|_| ()),
            None => ctx
                .encrypt_with_flags([&rkey], plaintext, &mut out, EncryptFlags::ALWAYS_TRUST)
                .map(|_| ()),
        });
        result.map_err(passphrase_problem)?;
        Ok(out)
    }

    fn decrypt_and_verify(&mut self, data: &[u8]) -> Result<Decrypted, GpgError> {
        let mut plain = Zeroizing::new(Vec::new());
        let result = self.with_passphrase(|ctx| ctx.decrypt_and_verify(data, &mut *plain));
        let (decryption, verification) = result.map_err(passphrase_problem)?;
        if let Ok(alg) = decryption.unsupported_algorithm() {
            return Err(GpgError::engine(format!("unsupported algorithm {alg}")));
        }
        let signatures = verification
            .signatures()
            .map(|s| {
                let fpr = s.fingerprint().unwrap_or("");
                let status = s.status();
                let trusted = matches!(
                    s.validity(),
                    Validity::Marginal | Validity::Full | Validity::Ultimate
                );
                let text = match status {
                    Ok(()) if trusted => "Success".to_string(),
                    Ok(()) => format!(
                        "good signature, but the key's validity is only `{}`",
                        s.validity()
                    ),
                    Err(e) => e.description().into_owned(),
                };
                SignatureInfo::new(fpr, status.is_ok() && trusted, text)
            })
            .collect();
        Ok(Decrypted {
            plaintext: plain,
            signatures,
        })
    }
}
