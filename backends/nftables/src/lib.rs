#![doc = include_str!("../README.md")]
#![deny(unsafe_code)]

mod backend;
mod block;
mod changes;
pub mod config;
mod keys;
mod listing;
// The grant path talks nf_tables netlink on a raw socket (socket, bind, setns, send, recv).
#[allow(unsafe_code)]
pub mod netlink;
mod setup;
pub mod shadow;

#[cfg(test)]
mod tests;

pub use backend::NftablesBackend;
pub use config::{ApplyWith, NftablesConfig, ProtectedPort, TableFamily};
pub use keys::{Fam, Kind, SetId};
pub use setup::{INPUT_CHAIN, OPTIONAL_CHAINS, PROTECTED_SET};
pub use shadow::ShadowWarning;

/// Backend name as used in config and errors.
pub const BACKEND: &str = "nftables";
