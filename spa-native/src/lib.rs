//! postern's own SPA protocol ("native"), beside fwknop's format on the same port.
//!
//! One UDP datagram, one way: a Noise `X` handshake message (`Noise_X_25519_ChaChaPoly_BLAKE2s`,
//! or `Noise_Xpsk0_…` with an ML-KEM-768 shared secret as the PSK for the hybrid suite)
//! carrying a fixed-layout [`Payload`], followed by a WireGuard-style `mac1` that the
//! server checks before any public-key work. The full layout is in `docs/protocol.md`.
//!
//! No network IO here: [`seal`] builds a datagram, [`open`] checks and reads one,
//! [`looks_native`] tells it apart from an fwknop packet.
#![forbid(unsafe_code)]

mod error;
mod keys;
mod packet;
mod payload;
mod registry;
mod totp;

pub use error::Error;
pub use keys::{
    ClientKey, ClientPublicKey, ServerKey, ServerPublicKey, CLIENT_KEY_PREFIX, CLIENT_PUB_PREFIX,
    SERVER_KEY_PREFIX, SERVER_PUB_PREFIX,
};
pub use packet::{
    looks_native, mac1_matches, open, replay_key_of, seal, seal_with, suite_of, Opened,
    SealOptions, SealRandomness, Suite, CLASSIC_MAGIC, HYBRID_MAGIC, KEM_CIPHERTEXT_LEN, MAC1_LEN,
    NOISE_CLASSIC, NOISE_HYBRID,
};
pub use payload::{Address, Payload, PortSpec, Proto, MAX_PORTS, PAYLOAD_VERSION};
pub use registry::{valid_client_name, ClientEntry, Registry};
pub use totp::TotpSecret;
