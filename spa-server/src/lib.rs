//! posternd: capture → HMAC filter → decrypt → policy → replay cache → action.

#![deny(unsafe_code)]

pub mod actions;
pub mod attack;
pub mod audit;
pub mod backends;
// Socket options, recvmmsg(2), BPF length filters and the NFQUEUE fd: libc.
#[allow(unsafe_code)]
pub mod capture;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod fleet;
pub mod gpg;
pub mod metrics;
pub mod native;
pub mod native_admin;
pub mod pipeline;
#[cfg(feature = "plugin")]
// Action plugins are C-ABI shared libraries (dlopen and calls through symbols).
#[allow(unsafe_code)]
pub mod plugin;
pub mod policy;
pub mod privileges;
pub mod replay;
// Daemonizing: fork(2), setsid(2), dup2(2) and fstat(2) of stderr through libc.
#[allow(unsafe_code)]
pub mod service;
