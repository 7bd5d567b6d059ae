//! posternd: capture → HMAC filter → decrypt → policy → replay cache → action.

pub mod actions;
pub mod attack;
pub mod audit;
pub mod backends;
pub mod capture;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod fleet;
pub mod gpg;
pub mod metrics;
pub mod native_admin;
pub mod pipeline;
#[cfg(feature = "plugin")]
pub mod plugin;
pub mod policy;
pub mod privileges;
pub mod replay;
pub mod service;
