//! Key pairs and their text forms: one line `PREFIX:<base64>` each, so a public key
//! can be pasted into a server and a private key file is one line, mode 0600.
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use curve25519_dalek::montgomery::MontgomeryPoint;
use ml_kem::{DecapsulationKey768, EncapsulationKey768, KeyExport, TryKeyInit};
use zeroize::Zeroizing;

use crate::error::random;
use crate::Error;

/// Client private key line prefix.
pub const CLIENT_KEY_PREFIX: &str = "postern-key1:";
/// Client public key line prefix (what `posternd client add` takes).
pub const CLIENT_PUB_PREFIX: &str = "postern-pub1:";
/// Server private key line prefix.
pub const SERVER_KEY_PREFIX: &str = "postern-server-key1:";
/// Server public key line prefix (what clients are given).
pub const SERVER_PUB_PREFIX: &str = "postern-srv1:";

/// Length of an ML-KEM-768 encapsulation key.
pub(crate) const KEM_PUBLIC_LEN: usize = 1184;
const KEM_SEED_LEN: usize = 64;

fn x25519_public(secret: &[u8; 32]) -> [u8; 32] {
    MontgomeryPoint::mul_base_clamped(*secret).to_bytes()
}

/// Decode `PREFIX:<base64>` into exactly `len` bytes.
fn decode_line(
    line: &str,
    prefix: &str,
    len: usize,
    what: &str,
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let body = line
        .trim()
        .strip_prefix(prefix)
        .ok_or_else(|| Error::Key(format!("{what}: expected a line starting with `{prefix}`")))?;
    let bytes = Zeroizing::new(
        STANDARD
            .decode(body)
            .map_err(|_| Error::Key(format!("{what}: not base64 after `{prefix}`")))?,
    );
    if bytes.len() != len {
        return Err(Error::Key(format!(
            "{what}: {} bytes after `{prefix}`, expected {len}",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// The one key line of a file (blank lines and `#` comments allowed around it).
fn key_line_of(text: &str, path: &Path) -> Result<String, Error> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    match (lines.next(), lines.next()) {
        (Some(l), None) => Ok(l.to_string()),
        _ => Err(Error::Key(format!(
            "{}: expected exactly one key line",
            path.display()
        ))),
    }
}

/// Read a private key file, refusing one that group or others may read or write.
fn read_private(path: &Path) -> Result<Zeroizing<String>, Error> {
    let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
    crate::error::check_owner(path, &meta)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::Key(format!(
            "{}: private key file has mode {mode:04o}; it must not be readable or writable by group or others (chmod 600)",
            path.display()
        )));
    }
    let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| Error::io(path, e))?);
    Ok(Zeroizing::new(key_line_of(&text, path)?))
}

/// Write a new private key file with mode 0600; never overwrites an existing file.
fn write_private(path: &Path, line: &str) -> Result<(), Error> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    // The umask cannot widen 0600, but a pre-set ACL default could: set it explicitly.
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(path, e))?;
    f.write_all(line.as_bytes())
        .and_then(|_| f.write_all(b"\n"))
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// A client's static X25519 key pair.
pub struct ClientKey {
    secret: Zeroizing<[u8; 32]>,
    public: ClientPublicKey,
}

/// A client's public key, as registered on the server.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientPublicKey(pub [u8; 32]);

impl std::fmt::Debug for ClientPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_line())
    }
}

impl ClientPublicKey {
    /// `postern-pub1:<base64>`.
    pub fn to_line(&self) -> String {
        format!("{CLIENT_PUB_PREFIX}{}", STANDARD.encode(self.0))
    }

    pub fn from_line(line: &str) -> Result<Self, Error> {
        let b = decode_line(line, CLIENT_PUB_PREFIX, 32, "client public key")?;
        let mut k = [0u8; 32];
        k.copy_from_slice(&b);
        Ok(ClientPublicKey(k))
    }
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientKey({:?}, secret redacted)", self.public)
    }
}

impl std::fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerKey({:?}, secret redacted)", self.public)
    }
}

impl ClientKey {
    /// A fresh key from the OS generator.
    pub fn generate() -> Result<Self, Error> {
        let mut secret = Zeroizing::new([0u8; 32]);
        random(&mut secret[..])?;
        Ok(Self::from_secret(*secret))
    }

    /// The key with this X25519 secret (used by the test vectors).
    pub fn from_secret(secret: [u8; 32]) -> Self {
        let public = ClientPublicKey(x25519_public(&secret));
        ClientKey {
            secret: Zeroizing::new(secret),
            public,
        }
    }

    pub fn public(&self) -> ClientPublicKey {
        self.public
    }

    pub(crate) fn secret(&self) -> &[u8; 32] {
        &self.secret
    }

    pub fn to_line(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "{CLIENT_KEY_PREFIX}{}",
            STANDARD.encode(&self.secret[..])
        ))
    }

    pub fn from_line(line: &str) -> Result<Self, Error> {
        let b = decode_line(line, CLIENT_KEY_PREFIX, 32, "client private key")?;
        let mut s = [0u8; 32];
        s.copy_from_slice(&b);
        Ok(Self::from_secret(s))
    }

    /// Read a key file written by [`ClientKey::write_new`]; refused if group/other may read it.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let line = read_private(path)?;
        Self::from_line(&line).map_err(|e| Error::Key(format!("{}: {e}", path.display())))
    }

    /// Write the key to a new file, mode 0600 (an existing file is never replaced).
    pub fn write_new(&self, path: &Path) -> Result<(), Error> {
        write_private(path, &self.to_line())
    }
}

/// The server's static keys: X25519 always, ML-KEM-768 for the hybrid suite.
pub struct ServerKey {
    x25519_secret: Zeroizing<[u8; 32]>,
    kem_seed: Zeroizing<[u8; KEM_SEED_LEN]>,
    kem: DecapsulationKey768,
    public: ServerPublicKey,
}

/// What clients are given: the X25519 public key and the ML-KEM-768 encapsulation key.
#[derive(Clone)]
pub struct ServerPublicKey {
    pub(crate) x25519: [u8; 32],
    pub(crate) kem: EncapsulationKey768,
    /// BLAKE2s("mac1----" || x25519), computed once.
    pub(crate) mac1_key: [u8; 32],
}

impl PartialEq for ServerPublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.x25519 == other.x25519 && self.kem == other.kem
    }
}

impl std::fmt::Debug for ServerPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerPublicKey({})", STANDARD.encode(self.x25519))
    }
}

impl ServerPublicKey {
    fn new(x25519: [u8; 32], kem: EncapsulationKey768) -> Self {
        let mac1_key = crate::packet::mac1_key(&x25519);
        ServerPublicKey {
            x25519,
            kem,
            mac1_key,
        }
    }

    /// The server's X25519 public key.
    pub fn x25519(&self) -> &[u8; 32] {
        &self.x25519
    }

    /// `postern-srv1:<base64(x25519 public ‖ ML-KEM-768 encapsulation key)>`.
    pub fn to_line(&self) -> String {
        let mut b = Vec::with_capacity(32 + KEM_PUBLIC_LEN);
        b.extend_from_slice(&self.x25519);
        b.extend_from_slice(&self.kem.to_bytes());
        format!("{SERVER_PUB_PREFIX}{}", STANDARD.encode(b))
    }

    pub fn from_line(line: &str) -> Result<Self, Error> {
        let b = decode_line(
            line,
            SERVER_PUB_PREFIX,
            32 + KEM_PUBLIC_LEN,
            "server public key",
        )?;
        let mut x = [0u8; 32];
        x.copy_from_slice(&b[..32]);
        let kem = EncapsulationKey768::new_from_slice(&b[32..])
            .map_err(|_| Error::Key("server public key: invalid ML-KEM-768 key".into()))?;
        Ok(Self::new(x, kem))
    }

    /// A line given directly, or the one key line of the file it names.
    pub fn from_line_or_file(value: &str) -> Result<Self, Error> {
        if value.trim().starts_with(SERVER_PUB_PREFIX) {
            return Self::from_line(value);
        }
        let path = Path::new(value);
        let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_line(&key_line_of(&text, path)?)
            .map_err(|e| Error::Key(format!("{}: {e}", path.display())))
    }
}

impl ServerKey {
    pub fn generate() -> Result<Self, Error> {
        let mut x = Zeroizing::new([0u8; 32]);
        let mut seed = Zeroizing::new([0u8; KEM_SEED_LEN]);
        random(&mut x[..])?;
        random(&mut seed[..])?;
        Ok(Self::from_secrets(*x, *seed))
    }

    /// The key from its X25519 secret and ML-KEM-768 seed (d ‖ z, FIPS 203).
    pub fn from_secrets(x25519_secret: [u8; 32], kem_seed: [u8; KEM_SEED_LEN]) -> Self {
        let kem = DecapsulationKey768::from_seed(kem_seed.into());
        let public = ServerPublicKey::new(
            x25519_public(&x25519_secret),
            kem.encapsulation_key().clone(),
        );
        ServerKey {
            x25519_secret: Zeroizing::new(x25519_secret),
            kem_seed: Zeroizing::new(kem_seed),
            kem,
            public,
        }
    }

    pub fn public(&self) -> &ServerPublicKey {
        &self.public
    }

    pub(crate) fn x25519_secret(&self) -> &[u8; 32] {
        &self.x25519_secret
    }

    pub(crate) fn kem(&self) -> &DecapsulationKey768 {
        &self.kem
    }

    pub fn to_line(&self) -> Zeroizing<String> {
        let mut b = Zeroizing::new(Vec::with_capacity(32 + KEM_SEED_LEN));
        b.extend_from_slice(&self.x25519_secret[..]);
        b.extend_from_slice(&self.kem_seed[..]);
        Zeroizing::new(format!("{SERVER_KEY_PREFIX}{}", STANDARD.encode(&b[..])))
    }

    pub fn from_line(line: &str) -> Result<Self, Error> {
        let b = decode_line(
            line,
            SERVER_KEY_PREFIX,
            32 + KEM_SEED_LEN,
            "server private key",
        )?;
        let mut x = [0u8; 32];
        let mut seed = [0u8; KEM_SEED_LEN];
        x.copy_from_slice(&b[..32]);
        seed.copy_from_slice(&b[32..]);
        let key = Self::from_secrets(x, seed);
        zeroize::Zeroize::zeroize(&mut x);
        zeroize::Zeroize::zeroize(&mut seed);
        Ok(key)
    }

    pub fn load(path: &Path) -> Result<Self, Error> {
        let line = read_private(path)?;
        Self::from_line(&line).map_err(|e| Error::Key(format!("{}: {e}", path.display())))
    }

    pub fn write_new(&self, path: &Path) -> Result<(), Error> {
        write_private(path, &self.to_line())
    }
}
