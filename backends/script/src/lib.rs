//! Custom-script action for postern: fwknopd's CMD_CYCLE_OPEN / CMD_CYCLE_CLOSE
//! as a [`spa_core::firewall::Firewall`] ([`ScriptBackend`], templates in
//! [`template`], owed closes in [`state`]). The process runner, command mode and
//! child lock-down it uses live in `postern-backend-common`.
//!
//! The daemon drives [`ScriptBackend`] like any firewall: `ScriptBackend::system(&config)?`,
//! `init(now)` at start (runs closes a killed predecessor owed), `grant` per burst
//! (or [`ScriptBackend::grant_from_packet`] to fill `$PKT_SRC`/`$DST` from the
//! packet), `expire(now)` on a timer, `shutdown()` on SIGTERM.

#![forbid(unsafe_code)]

pub mod cycle;
pub mod state;
pub mod template;

pub use cycle::{ScriptBackend, ScriptConfig};
pub use spa_core::firewall::PacketAddresses;
