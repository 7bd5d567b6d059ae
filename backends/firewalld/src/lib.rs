#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod api;
mod backend;
pub mod config;
pub mod rich;
pub mod state;

#[cfg(test)]
mod tests;

pub use api::{ApiError, DbusApi, FirewalldApi};
pub use backend::FirewalldBackend;
pub use config::{FamilyFilter, FirewalldConfig};

/// Backend name as used in config and errors.
pub const BACKEND: &str = "firewalld";
