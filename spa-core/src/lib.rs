//! spa-core: the fwknop 2.x Single Packet Authorization protocol, byte-exact.
//!
//! Plain functions and types, no IO, no clock, no randomness: callers pass the
//! time and random bytes in (the one exception: [`keys::write_key_file`] writes
//! a `--key-gen-file`). Receiving is staged ([`packet::precheck`] →
//! [`packet::verify_hmac`] → [`packet::decrypt`]) so the server can reject garbage
//! cheaply and never decrypt before the HMAC is verified in constant time.

#![forbid(unsafe_code)]

pub mod b64;
pub mod cipher;
pub mod clock;
pub mod digest;
pub mod error;
pub mod firewall;
pub mod gpg;
pub mod http;
pub mod keys;
pub mod message;
pub mod packet;
pub mod request;

pub use cipher::EncryptionMode;
pub use clock::{Clock, ManualClock, SystemClock};
pub use digest::DigestType;
pub use error::{Result, SpaError};
pub use keys::{GeneratedKeys, KeyGenSizes, Secret};
pub use message::{DecodedMessage, MessageType, SpaMessage};
pub use packet::{HmacKey, PacketKeys};
pub use request::{AccessRequest, CommandRequest, NatTarget, Proto, ProtoPort, Request};
