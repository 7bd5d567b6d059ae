//! Custom-script actions for postern and the process runner every command-driven
//! backend shares.
//!
//! - [`ScriptBackend`]: fwknopd's CMD_CYCLE_OPEN / CMD_CYCLE_CLOSE as a
//!   [`spa_core::firewall::Firewall`] (templates in [`template`]).
//! - [`run_command`]: command mode (ENABLE_CMD_EXEC / CMD_EXEC_USER), no shell.
//! - [`child`]: what every child keeps (no inherited descriptors; for commands
//!   and scripts only the configured capabilities).
//! - [`SystemRunner`], [`PrefixedRunner`]: run tools as argv with a time limit;
//!   [`fake::RecordingRunner`] records argv for snapshot tests.

//!
//! The daemon drives [`ScriptBackend`] like any firewall: `ScriptBackend::system(&config)?`,
//! `init(now)` at start (runs closes a killed predecessor owed), `grant` per burst
//! (or [`ScriptBackend::grant_from_packet`] to fill `$PKT_SRC`/`$DST` from the
//! packet), `expire(now)` on a timer, `shutdown()` on SIGTERM. For a command
//! message it calls [`run_command_with`] on a blocking thread and logs the result.

pub mod child;
pub mod command;
pub mod cycle;
pub mod exec;
pub mod fake;
pub mod runner;
pub mod state;
pub mod template;

pub use child::{CapSet, ChildPrivileges, Identity};
pub use command::{
    run_command, run_command_with, CommandError, CommandExec, CommandOutput, SudoExec,
    SUDO_CAPABILITIES,
};
pub use cycle::{ScriptBackend, ScriptConfig};
pub use runner::{
    find_program, missing_for, require_program, ConfinedRunner, PrefixedRunner, SystemRunner,
};
pub use spa_core::firewall::PacketAddresses;
