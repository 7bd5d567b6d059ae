//! The server's registered clients: a directory with one file per client
//! (`NAME.pub`), so one client is added or revoked without touching the others.
//!
//! A client file holds `KEY VALUE` lines; blank lines and `#` comments are ignored:
//!
//! ```text
//! public-key postern-pub1:<base64>
//! totp otpauth://totp/postern:alice?secret=...&issuer=postern   (optional)
//! ```
use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::{ClientPublicKey, Error, TotpSecret};

/// One registered client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientEntry {
    pub name: String,
    pub key: ClientPublicKey,
    pub totp: Option<TotpSecret>,
    pub path: PathBuf,
}

/// All registered clients, by public key.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    by_key: HashMap<ClientPublicKey, ClientEntry>,
}

/// Client names: 1–64 of `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`.
pub fn valid_client_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The permission bits, after checking the owner (root or this user).
fn mode_of(path: &Path) -> Result<u32, Error> {
    let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
    crate::error::check_owner(path, &meta).map_err(|e| Error::Registry(e.to_string()))?;
    Ok(meta.permissions().mode() & 0o777)
}

/// Parse one client file.
fn parse_client(path: &Path, name: &str, text: &str) -> Result<ClientEntry, Error> {
    let at = |n: usize, msg: String| Error::Registry(format!("{}:{n}: {msg}", path.display()));
    let mut key = None;
    let mut totp = None;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once(char::is_whitespace)
            .map(|(k, v)| (k, v.trim()))
            .ok_or_else(|| {
                at(
                    n,
                    format!(
                        "expected `KEY VALUE`, got `{k}`",
                        k = line.split_whitespace().next().unwrap_or("")
                    ),
                )
            })?;
        match k {
            "public-key" if key.is_none() => {
                key = Some(ClientPublicKey::from_line(v).map_err(|e| at(n, e.to_string()))?)
            }
            "totp" if totp.is_none() => {
                totp = Some(TotpSecret::from_uri(v).map_err(|e| at(n, e.to_string()))?)
            }
            "public-key" | "totp" => return Err(at(n, format!("`{k}` given twice"))),
            other => return Err(at(n, format!("unknown key `{other}`"))),
        }
    }
    let key =
        key.ok_or_else(|| Error::Registry(format!("{}: no `public-key` line", path.display())))?;
    Ok(ClientEntry {
        name: name.to_string(),
        key,
        totp,
        path: path.to_path_buf(),
    })
}

impl Registry {
    /// Read every `NAME.pub` in `dir` (dotfiles and other names are ignored). Refuses
    /// a directory or file owned by someone other than root or this user, or that others may write, a file with a TOTP secret others may read,
    /// an invalid name and a public key registered twice.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        if mode_of(dir)? & 0o022 != 0 {
            return Err(Error::Registry(format!(
                "{}: clients directory is writable by group or others",
                dir.display()
            )));
        }
        let mut files: Vec<(String, PathBuf)> = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let file = entry.file_name();
            let Some(file) = file.to_str() else { continue };
            if file.starts_with('.') {
                continue;
            }
            let Some(name) = file.strip_suffix(".pub") else {
                continue;
            };
            if !valid_client_name(name) {
                return Err(Error::Registry(format!(
                    "{}: `{name}` is not a valid client name (A-Z a-z 0-9 . _ -)",
                    entry.path().display()
                )));
            }
            files.push((name.to_string(), entry.path()));
        }
        files.sort();
        let mut reg = Registry::default();
        for (name, path) in files {
            let mode = mode_of(&path)?;
            if mode & 0o022 != 0 {
                return Err(Error::Registry(format!(
                    "{}: writable by group or others (mode {mode:04o})",
                    path.display()
                )));
            }
            let text = fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let entry = parse_client(&path, &name, &text)?;
            if entry.totp.is_some() && mode & 0o004 != 0 {
                return Err(Error::Registry(format!(
                    "{}: holds a TOTP secret and is readable by others (mode {mode:04o})",
                    path.display()
                )));
            }
            reg.insert(entry)?;
        }
        Ok(reg)
    }

    /// Add one client; a key registered twice is an error naming both files.
    pub fn insert(&mut self, entry: ClientEntry) -> Result<(), Error> {
        if let Some(old) = self.by_key.get(&entry.key) {
            return Err(Error::Registry(format!(
                "{}: the same public key as {} (`{}`)",
                entry.path.display(),
                old.path.display(),
                old.name
            )));
        }
        self.by_key.insert(entry.key, entry);
        Ok(())
    }

    pub fn lookup(&self, key: &ClientPublicKey) -> Option<&ClientEntry> {
        self.by_key.get(key)
    }

    /// Clients sorted by name.
    pub fn clients(&self) -> Vec<&ClientEntry> {
        let mut v: Vec<_> = self.by_key.values().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Register a client: writes `dir/NAME.pub` (mode 0600) through a temporary file and
    /// a rename, so a reader never sees half a file. Refuses an existing name and a key
    /// already registered under another name.
    pub fn add_client(
        dir: &Path,
        name: &str,
        key: &ClientPublicKey,
        totp: Option<&TotpSecret>,
    ) -> Result<PathBuf, Error> {
        if !valid_client_name(name) {
            return Err(Error::Registry(format!(
                "`{name}` is not a valid client name (1-64 of A-Z a-z 0-9 . _ -, not starting with . or -)"
            )));
        }
        let path = dir.join(format!("{name}.pub"));
        if path.exists() {
            return Err(Error::Registry(format!(
                "{}: client `{name}` exists; remove it first",
                path.display()
            )));
        }
        let current = Registry::load(dir)?;
        if let Some(old) = current.lookup(key) {
            return Err(Error::Registry(format!(
                "this public key is already registered as `{}` ({})",
                old.name,
                old.path.display()
            )));
        }
        let mut text = format!("# postern client `{name}`\npublic-key {}\n", key.to_line());
        if let Some(t) = totp {
            text.push_str(&format!("totp {}\n", t.to_uri()?));
        }
        let tmp = dir.join(format!(".{name}.pub.tmp"));
        let _ = fs::remove_file(&tmp);
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            fs::File::open(dir)?.sync_all()
        })();
        written.map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::io(&path, e)
        })?;
        Ok(path)
    }

    /// Revoke a client: removes `dir/NAME.pub` only.
    pub fn remove_client(dir: &Path, name: &str) -> Result<PathBuf, Error> {
        if !valid_client_name(name) {
            return Err(Error::Registry(format!(
                "`{name}` is not a valid client name"
            )));
        }
        let path = dir.join(format!("{name}.pub"));
        fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(dir, e))?;
        Ok(path)
    }
}
