//! postern: a drop-in successor of the fwknop 2.x client.
//!
//! The binary accepts fwknop 2.6.10's client flags with the same meanings and
//! reads/writes `~/.fwknoprc` in fwknop's format. The pieces are usable on
//! their own:
//!
//! - [`cli`]: the command-line flags;
//! - [`rcfile`]: reading, checking and rewriting the rc file;
//! - [`settings`]: rc variables and precedence ([default] < stanza < command line);
//! - [`keys`]: key acquisition and `--key-gen`;
//! - [`build`]: the SPA message and the sealed packet;
//! - [`resolve`]: `-R` external address lookup;
//! - [`native`]: postern's own protocol (`--native`, `--gen-client-key`, `--totp-setup`);
//! - [`send`]: UDP / TCP / HTTP transmission;
//! - [`raw`]: raw IPv4 knocks (ICMP, raw TCP/UDP, spoofed source);
//! - [`output`]: fwknop-style `-v` / `-T` text;
//! - [`connect`]: `--connect HOST:PORT`, knock then carry stdin/stdout (ssh's ProxyCommand);
//! - [`ssh`]: `postern ssh HOST`, the real ssh through `--connect`;
//! - [`app`]: one complete run ([`app::run`]).

#![deny(unsafe_code)]

pub mod app;
pub mod build;
pub mod cli;
pub mod connect;
pub mod error;
pub mod keys;
pub mod native;
pub mod output;
pub mod random;
pub mod raw;
pub mod rcfile;
pub mod resolve;
pub mod saved_args;
pub mod send;
pub mod settings;
pub mod ssh;
// getpwuid_r(3) and geteuid(2) through libc: the invoking user's name and home.
#[allow(unsafe_code)]
pub mod user;
pub mod wait;

pub use app::run;
pub use error::{ClientError, Result};
