//! Key material for one packet: from the rc file or command line, from a
//! `-G` key file, from standard input / a file descriptor, or typed at the
//! terminal; and `--key-gen`.

use crate::error::{ClientError, Result};
use crate::settings::{KeySpec, Settings, MAX_KEY_LEN};
use spa_core::{DigestType, GeneratedKeys, KeyGenSizes, Secret};
use std::io::BufRead;
use std::path::Path;
use zeroize::Zeroizing;

/// The keys a packet is sealed with.
#[derive(Debug)]
pub struct KeyMaterial {
    pub key: Secret,
    pub hmac: Option<(DigestType, Secret)>,
}

/// Where keys that are not configured are read from.
pub enum KeyInput {
    /// Prompt on the controlling terminal without echo.
    Terminal,
    /// One key per line: encryption key first, then the HMAC key (`--stdin`, `--fd`).
    Lines(Box<dyn BufRead>),
}

/// Where else a key could come from, for the error when none can be asked for.
const KEY_SOURCES: &str = "use --key-rijndael, --key-base64-rijndael, -G, --stdin or the rc file";
const SIGNING_PW_SOURCES: &str =
    "use GPG_SIGNING_PW in the rc file, -G, --stdin or --fd; or --gpg-agent, or --gpg-no-signing-pw for a key without one";

impl KeyInput {
    fn read(&mut self, prompt: &str, what: &str) -> Result<Zeroizing<String>> {
        self.read_or(prompt, what, KEY_SOURCES)
    }

    fn read_or(&mut self, prompt: &str, what: &str, sources: &str) -> Result<Zeroizing<String>> {
        match self {
            KeyInput::Terminal => rpassword::prompt_password(prompt)
                .map(Zeroizing::new)
                .map_err(|_| {
                    ClientError::Key(format!(
                        "no {what} given and no terminal to ask for it ({sources})"
                    ))
                }),
            KeyInput::Lines(reader) => {
                let mut line = Zeroizing::new(String::new());
                let n = reader
                    .read_line(&mut line)
                    .map_err(|e| ClientError::Key(format!("cannot read the {what}: {e}")))?;
                if n == 0 {
                    return Err(ClientError::Key(format!(
                        "no {what} on the key input (one key per line)"
                    )));
                }
                let trimmed = line.trim_end_matches(['\n', '\r']);
                Ok(Zeroizing::new(trimmed.to_string()))
            }
        }
    }
}

/// Read the key for `server` from an fwknop key file: lines `<server>: <key>`;
/// blank lines and `#` comments are skipped, the last matching line wins.
pub fn key_from_file(path: &Path, server: &str) -> Result<Secret> {
    let text =
        Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            ClientError::Key(format!("cannot read key file {}: {e}", path.display()))
        })?);
    let mut found: Option<Secret> = None;
    for raw in text.lines() {
        let line = raw.trim_start_matches([' ', '\t', '=']);
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        let Some(rest) = line.strip_prefix(server).and_then(|r| r.strip_prefix(':')) else {
            continue;
        };
        let key = rest
            .trim_start_matches([' ', '\t', '='])
            .trim_end_matches('\r');
        if !key.is_empty() {
            found = Some(Secret::from_passphrase(key));
        }
    }
    found.ok_or_else(|| {
        ClientError::Key(format!(
            "could not get a key for {server} from {}",
            path.display()
        ))
    })
}

fn check_len(what: &str, secret: Secret, max: usize) -> Result<Secret> {
    if secret.is_empty() {
        return Err(ClientError::Key(format!("the {what} is empty")));
    }
    if secret.bytes().len() > max {
        return Err(ClientError::Key(format!(
            "the {what} is {} bytes long, at most {max} allowed",
            secret.bytes().len()
        )));
    }
    Ok(secret)
}

fn resolve_spec(spec: &KeySpec, what: &str, server: &str) -> Result<Secret> {
    match spec {
        KeySpec::Passphrase(p) => Ok(Secret::from_passphrase(p.expose())),
        KeySpec::Base64(b) => Secret::from_base64(what, b.expose())
            .map_err(|_| ClientError::Key(format!("the {what} is not valid base64"))),
        KeySpec::File(path) => key_from_file(path, server),
    }
}

/// Gather the encryption key and, when HMAC is in use, the HMAC key.
pub fn acquire(settings: &Settings, server: &str, input: &mut KeyInput) -> Result<KeyMaterial> {
    let key = match &settings.key {
        Some(spec) => resolve_spec(spec, "encryption key", server)?,
        None => Secret::from_passphrase(&input.read("Enter encryption key: ", "encryption key")?),
    };
    let key = check_len("encryption key", key, MAX_KEY_LEN)?;
    let hmac = acquire_hmac(settings, server, input, Some(&key))?;
    Ok(KeyMaterial { key, hmac })
}

fn acquire_hmac(
    settings: &Settings,
    server: &str,
    input: &mut KeyInput,
    key: Option<&Secret>,
) -> Result<Option<(DigestType, Secret)>> {
    if !settings.use_hmac {
        return Ok(None);
    }
    let hkey = match &settings.hmac_key {
        Some(spec) => resolve_spec(spec, "HMAC key", server)?,
        None => Secret::from_passphrase(&input.read("Enter HMAC key: ", "HMAC key")?),
    };
    let hkey = check_len("HMAC key", hkey, MAX_KEY_LEN)?;
    if key == Some(&hkey) {
        return Err(ClientError::Key(
            "the encryption key and the HMAC key must not be identical; no SPA packet sent".into(),
        ));
    }
    Ok(Some((
        settings.hmac_digest.unwrap_or(DigestType::Sha256),
        hkey,
    )))
}

/// The secrets of a GPG packet.
#[derive(Debug)]
pub struct GpgKeyMaterial {
    /// Passphrase of the signing key; `None` when there is no signer, when gpg-agent
    /// supplies it (--gpg-agent) or when the key has none (--gpg-no-signing-pw).
    pub signing_passphrase: Option<Secret>,
    pub hmac: Option<(DigestType, Secret)>,
}

/// Gather the GPG signing passphrase as fwknop does: a configured key (KEY,
/// GPG_SIGNING_PW[_BASE64], -G, --key-rijndael) wins; otherwise it is asked for
/// only when a signer is set and neither --gpg-agent nor --gpg-no-signing-pw is.
pub fn acquire_gpg(
    settings: &Settings,
    server: &str,
    input: &mut KeyInput,
) -> Result<GpgKeyMaterial> {
    const WHAT: &str = "GPG signing passphrase";
    let pass = match &settings.key {
        Some(spec) => Some(resolve_spec(spec, WHAT, server)?),
        None if settings.use_gpg_agent
            || settings.gpg_no_signing_pw
            || settings.gpg_signer.is_none() =>
        {
            None
        }
        None => Some(Secret::from_passphrase(&input.read_or(
            "Enter passphrase for signing: ",
            WHAT,
            SIGNING_PW_SOURCES,
        )?)),
    };
    let pass = pass.map(|p| check_len(WHAT, p, MAX_KEY_LEN)).transpose()?;
    let hmac = acquire_hmac(settings, server, input, pass.as_ref())?;
    Ok(GpgKeyMaterial {
        signing_passphrase: pass,
        hmac,
    })
}

/// `--key-gen`: random keys of the requested (or default) sizes.
pub fn generate(
    key_len: Option<&str>,
    hmac_key_len: Option<&str>,
    hmac_digest: DigestType,
) -> Result<GeneratedKeys> {
    let sizes = KeyGenSizes::parse(key_len, hmac_key_len, hmac_digest)
        .map_err(|e| ClientError::usage(e.to_string()))?;
    Ok(sizes.generate(crate::random::fill))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Var;
    use std::io::Cursor;

    #[test]
    fn key_file_lines_match_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys");
        std::fs::write(
            &p,
            "# keys\n10.0.0.1: first\n  192.0.2.1: wanted key\n192.0.2.10: other\n",
        )
        .unwrap();
        assert_eq!(
            key_from_file(&p, "192.0.2.1").unwrap().bytes(),
            b"wanted key"
        );
        assert!(key_from_file(&p, "198.51.100.1").is_err());
    }

    #[test]
    fn keys_come_from_lines_when_not_configured() {
        let mut s = Settings::default();
        s.apply(Var::UseHmac, "Y").unwrap();
        let mut input = KeyInput::Lines(Box::new(Cursor::new(b"enc key\r\nhmac key\n".to_vec())));
        let k = acquire(&s, "h", &mut input).unwrap();
        assert_eq!(k.key.bytes(), b"enc key");
        assert_eq!(k.hmac.unwrap().1.bytes(), b"hmac key");
    }

    #[test]
    fn identical_keys_are_refused() {
        let mut s = Settings::default();
        s.apply(Var::Key, "same").unwrap();
        s.apply(Var::HmacKey, "same").unwrap();
        assert!(acquire(&s, "h", &mut KeyInput::Terminal).is_err());
    }

    #[test]
    fn gpg_signing_passphrase_sources() {
        let mut s = Settings::default();
        s.apply(Var::UseGpg, "Y").unwrap();
        s.apply(Var::UseHmac, "Y").unwrap();
        s.apply(Var::HmacKey, "hmac").unwrap();
        // No signer: nothing to unlock, nothing asked.
        let k = acquire_gpg(&s, "h", &mut KeyInput::Terminal).unwrap();
        assert!(k.signing_passphrase.is_none() && k.hmac.is_some());
        // A signer: read from the key input.
        s.apply(Var::GpgSigner, "ABCD1234").unwrap();
        let mut input = KeyInput::Lines(Box::new(Cursor::new(b"sign pw\n".to_vec())));
        assert_eq!(
            acquire_gpg(&s, "h", &mut input)
                .unwrap()
                .signing_passphrase
                .unwrap()
                .bytes(),
            b"sign pw"
        );
        // gpg-agent or a key without passphrase: not asked.
        let mut agent = s.clone();
        agent.apply(Var::UseGpgAgent, "Y").unwrap();
        assert!(acquire_gpg(&agent, "h", &mut KeyInput::Terminal)
            .unwrap()
            .signing_passphrase
            .is_none());
        // GPG_SIGNING_PW wins.
        s.apply(Var::GpgSigningPw, "from rc").unwrap();
        assert_eq!(
            acquire_gpg(&s, "h", &mut KeyInput::Terminal)
                .unwrap()
                .signing_passphrase
                .unwrap()
                .bytes(),
            b"from rc"
        );
        s.apply(Var::GpgSigningPw, "hmac").unwrap();
        assert!(acquire_gpg(&s, "h", &mut KeyInput::Terminal).is_err());
    }

    #[test]
    fn keygen_sizes() {
        let k = generate(None, None, DigestType::Sha256).unwrap();
        assert_eq!((k.key.bytes().len(), k.hmac_key.bytes().len()), (32, 64));
        let k = generate(Some("16"), Some("10"), DigestType::Sha256).unwrap();
        assert_eq!((k.key.bytes().len(), k.hmac_key.bytes().len()), (16, 10));
        let k = generate(None, None, DigestType::Sha512).unwrap();
        assert_eq!(k.hmac_key.bytes().len(), 128);
        assert!(generate(Some("33"), None, DigestType::Sha256).is_err());
    }
}
