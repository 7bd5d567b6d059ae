use std::path::PathBuf;

/// Everything that can go wrong; no variant carries secret material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not a native datagram (wrong first byte or a length no native packet has).
    #[error("not a native postern packet")]
    NotNative,
    /// mac1 does not match this server's public key: garbage, or meant for another server.
    #[error("mac1 mismatch")]
    Mac1,
    /// The Noise message (or the ML-KEM ciphertext bound into it) did not authenticate.
    #[error("handshake failed")]
    Handshake,
    /// The handshake authenticated a client key that is not registered.
    #[error("unknown client key")]
    UnknownClient,
    /// The decrypted payload is not in its one canonical v1 layout.
    #[error("bad payload: {0}")]
    Payload(&'static str),
    /// A request that cannot be encoded (too many ports, port 0, ...).
    #[error("bad request: {0}")]
    Request(String),
    /// A key line or file that cannot be read.
    #[error("{0}")]
    Key(String),
    /// A file error, with its path.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A registry problem, naming `file:line`.
    #[error("{0}")]
    Registry(String),
    /// A TOTP secret or URI that cannot be used.
    #[error("TOTP: {0}")]
    Totp(String),
    /// The operating system's random generator failed.
    #[error("random generator: {0}")]
    Random(String),
}

impl Error {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Fill `buf` from the operating system's generator.
pub(crate) fn random(buf: &mut [u8]) -> Result<(), Error> {
    getrandom::fill(buf).map_err(|e| Error::Random(e.to_string()))
}

/// Refuse a file or directory owned by someone other than root or this process's
/// effective user (they could swap keys or clients in).
pub(crate) fn check_owner(path: &std::path::Path, meta: &std::fs::Metadata) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(Error::Key(format!(
            "{}: owned by uid {}, not root or this user (uid {me})",
            path.display(),
            meta.uid()
        )));
    }
    Ok(())
}
