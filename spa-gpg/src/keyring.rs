//! Throwaway GnuPG home directories for tests, benchmarks and demos: make keys
//! with the `gpg` program, exchange public keys, trust them, and clean up (the
//! directory and its gpg-agent) on drop. Only the standard library is used, so
//! other test crates can include this file with `#[path]`.
//!
//! Homes live directly under the system temp dir with short names: gpg-agent's
//! socket path must stay under the Unix socket limit of about 100 bytes.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A key made by [`GpgHome::gen_key`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyIds {
    /// Fingerprint of the primary (signing) key, upper-case hex.
    pub fingerprint: String,
    /// The last 8 hex digits (what fwknop calls the key ID).
    pub short_id: String,
}

/// A GnuPG home directory, deleted (and its agent stopped) on drop.
pub struct GpgHome {
    pub path: PathBuf,
}

fn failed(what: &str, out: &Output) -> io::Error {
    io::Error::other(format!(
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

impl GpgHome {
    /// A fresh, empty home (mode 0700) named after `tag`.
    pub fn new(tag: &str) -> io::Result<GpgHome> {
        use std::os::unix::fs::DirBuilderExt;
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let tag: String = tag
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(8)
            .collect();
        let path = std::env::temp_dir().join(format!("pg{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(GpgHome { path })
    }

    /// `gpg --homedir HOME --batch ARGS…` with `input` on stdin.
    pub fn gpg(&self, args: &[&str], input: &[u8]) -> io::Result<Output> {
        use std::io::Write;
        let mut child = Command::new("gpg")
            .arg("--homedir")
            .arg(&self.path)
            .args(["--batch", "--no-tty", "--yes"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input)?;
        }
        child.wait_with_output()
    }

    fn gpg_ok(&self, what: &str, args: &[&str], input: &[u8]) -> io::Result<Output> {
        let out = self.gpg(args, input)?;
        if !out.status.success() {
            return Err(failed(what, &out));
        }
        Ok(out)
    }

    /// An RSA key pair of `bits` (a signing primary key and an encryption subkey, the
    /// layout fwknop's wire form needs), protected by `passphrase` if given.
    pub fn gen_key(&self, name: &str, passphrase: Option<&str>, bits: u32) -> io::Result<KeyIds> {
        let protection = match passphrase {
            Some(p) => format!("Passphrase: {p}\n"),
            None => "%no-protection\n".to_string(),
        };
        let params = format!(
            "Key-Type: RSA\nKey-Length: {bits}\nKey-Usage: sign\nSubkey-Type: RSA\nSubkey-Length: {bits}\n\
             Subkey-Usage: encrypt\nName-Real: {name}\nName-Email: {name}@example.invalid\nExpire-Date: 0\n{protection}%commit\n"
        );
        self.gpg_ok(
            "gpg --gen-key",
            &["--pinentry-mode", "loopback", "--gen-key"],
            params.as_bytes(),
        )?;
        let fingerprint = self.fingerprint(name)?;
        let short_id = fingerprint[fingerprint.len() - 8..].to_string();
        Ok(KeyIds {
            fingerprint,
            short_id,
        })
    }

    /// Fingerprint of the primary key matching `name`.
    pub fn fingerprint(&self, name: &str) -> io::Result<String> {
        let out = self.gpg_ok(
            "gpg --list-keys",
            &["--with-colons", "--list-keys", name],
            b"",
        )?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                l.strip_prefix("fpr:")
                    .map(|r| r.trim_matches(':').to_string())
            })
            .ok_or_else(|| io::Error::other(format!("no fingerprint for {name}")))
    }

    /// The public key `name` in binary form.
    pub fn export(&self, name: &str) -> io::Result<Vec<u8>> {
        Ok(self
            .gpg_ok("gpg --export", &["--export", name], b"")?
            .stdout)
    }

    /// Import keys (binary or armored).
    pub fn import(&self, data: &[u8]) -> io::Result<()> {
        self.gpg_ok("gpg --import", &["--import"], data).map(|_| ())
    }

    /// Give `fingerprint` ultimate owner trust, so its signatures count as valid.
    pub fn trust(&self, fingerprint: &str) -> io::Result<()> {
        self.gpg_ok(
            "gpg --import-ownertrust",
            &["--import-ownertrust"],
            format!("{fingerprint}:6:\n").as_bytes(),
        )?;
        // Recompute validity now rather than at the next (possibly concurrent) use.
        self.gpg_ok("gpg --check-trustdb", &["--check-trustdb"], b"")
            .map(|_| ())
    }

    /// Import `other`'s public key `name` and trust it.
    pub fn import_trusted(&self, other: &GpgHome, name: &str) -> io::Result<String> {
        self.import(&other.export(name)?)?;
        let fpr = other.fingerprint(name)?;
        self.trust(&fpr)?;
        Ok(fpr)
    }

    /// Make every gpg run in this home use loopback pinentry, so a program that hands
    /// gpgme a passphrase without asking for loopback (fwknop, fwknopd) is heard.
    pub fn loopback_pinentry(&self) -> io::Result<()> {
        std::fs::write(self.path.join("gpg.conf"), "pinentry-mode loopback\n")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for GpgHome {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(&self.path)
            .args(["--kill", "all"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
