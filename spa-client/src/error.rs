//! The client's errors. Every variant renders as one line that names what was
//! wrong; none of them ever carries key material.

use spa_core::SpaError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    /// A command-line or rc-file value that cannot be used.
    #[error("{0}")]
    Usage(String),
    /// The rc file cannot be read, parsed, trusted or written.
    #[error("{0}")]
    RcFile(String),
    /// Missing, unreadable or malformed key material.
    #[error("{0}")]
    Key(String),
    /// The external IP could not be resolved (-R).
    #[error("{0}")]
    Resolve(String),
    /// The packet could not be sent.
    #[error("{0}")]
    Send(String),
    /// Any other file or terminal problem.
    #[error("{0}")]
    Io(String),
    /// Standard output was closed (e.g. piped into `head`); not worth a message.
    #[error("output closed")]
    OutputClosed,
    /// The OpenPGP engine failed (key lookup, passphrase, encryption).
    #[error("{0}")]
    Gpg(String),
    /// The protocol layer refused the request.
    #[error("{0}")]
    Spa(#[from] SpaError),
}

impl ClientError {
    pub fn usage(msg: impl Into<String>) -> Self {
        ClientError::Usage(msg.into())
    }

    /// An fwknop command-line flag that postern refuses, and why.
    pub fn refused_flag(flag: &str, why: &str) -> Self {
        ClientError::Usage(format!("{flag} is refused: {why}"))
    }

    pub fn io(what: impl std::fmt::Display, err: &std::io::Error) -> Self {
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            return ClientError::OutputClosed;
        }
        ClientError::Io(format!("{what}: {err}"))
    }
}

impl From<spa_core::gpg::GpgError> for ClientError {
    fn from(e: spa_core::gpg::GpgError) -> Self {
        match e {
            spa_core::gpg::GpgError::Packet(p) => ClientError::Spa(p),
            other => ClientError::Gpg(other.to_string()),
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;
