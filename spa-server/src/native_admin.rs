//! `posternd key ...` and `posternd client ...`: the server's key and the registered
//! clients of postern's native protocol (docs/protocol.md). The packet pipeline
//! reads them with `spa_native::ServerKey::load` and `spa_native::Registry::load`.
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use anyhow::Context;
use spa_native::{ClientPublicKey, Registry, ServerKey, TotpSecret};

use crate::cli::{ClientCommand, KeyCommand};

pub fn key(cmd: &KeyCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::Generate { file } => {
            let key = ServerKey::generate()?;
            key.write_new(file)?;
            writeln!(
                out,
                "[+] Wrote the native server key to: {}",
                file.display()
            )?;
            writeln!(
                out,
                "[+] Give clients this public key line (postern --server-key / SERVER_PUBLIC_KEY):"
            )?;
            writeln!(out, "{}", key.public().to_line())?;
        }
        KeyCommand::Public { file } => {
            writeln!(out, "{}", ServerKey::load(file)?.public().to_line())?;
        }
    }
    Ok(())
}

fn totp_from(value: &str) -> anyhow::Result<TotpSecret> {
    if value.trim_start().starts_with("otpauth://") {
        return Ok(TotpSecret::from_uri(value)?);
    }
    let text = std::fs::read_to_string(value).with_context(|| format!("--totp-secret {value}"))?;
    TotpSecret::from_uri(text.trim()).with_context(|| format!("--totp-secret {value}"))
}

pub fn client(cmd: &ClientCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    match cmd {
        ClientCommand::Add {
            name,
            public_key,
            totp_secret,
            dir,
        } => {
            let key = ClientPublicKey::from_line(public_key)?;
            let totp = totp_secret.as_deref().map(totp_from).transpose()?;
            ensure_dir(dir)?;
            let path = Registry::add_client(dir, name, &key, totp.as_ref())?;
            writeln!(out, "[+] Registered client `{name}` in {}", path.display())?;
        }
        ClientCommand::Remove { name, dir } => {
            let path = Registry::remove_client(dir, name)?;
            writeln!(out, "[+] Removed client `{name}` ({})", path.display())?;
        }
        ClientCommand::List { dir } => {
            for c in Registry::load(dir)?.clients() {
                let totp = if c.totp.is_some() { "totp" } else { "-" };
                writeln!(out, "{}\t{}\t{totp}", c.name, c.key.to_line())?;
            }
        }
    }
    Ok(())
}

/// The clients directory, made 0700 when missing.
fn ensure_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Ok(())
}
