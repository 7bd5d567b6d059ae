//! What every command-driven backend, and posternd itself, shares: running
//! programs as argv, never through a shell, with a time limit and locked-down
//! children; command mode; program lookup; private state files.
//!
//! - [`SystemRunner`], [`ConfinedRunner`], [`PrefixedRunner`]: run tools as argv
//!   with a time limit ([`runner`], on top of [`exec::run_limited`]);
//!   [`fake::RecordingRunner`] records argv for snapshot tests.
//! - [`find_program`], [`require_program`], [`missing_for`]: program lookup and
//!   the start error naming what is missing.
//! - [`child`]: what every child keeps (no inherited descriptors; for commands
//!   and scripts only the configured capabilities).
//! - [`run_command`]: command mode (ENABLE_CMD_EXEC / CMD_EXEC_USER), no shell.
//! - [`state::write_private`]: a state file replaced atomically, mode 0600.
//! - [`platform::Platform`]: Linux or a BSD, for settings only Linux honours.

#![deny(unsafe_code)]

// Between fork and exec only raw system calls may run (setresuid, capset, prctl,
// procctl, close_range): libc, unsafe by nature.
#[allow(unsafe_code)]
pub mod child;
pub mod command;
pub mod exec;
pub mod fake;
pub mod platform;
pub mod runner;
pub mod state;

pub use child::{CapSet, ChildPrivileges, Identity};
#[cfg(target_os = "linux")]
pub use command::SUDO_CAPABILITIES;
pub use command::{
    run_command, run_command_with, sudo_capabilities, CommandError, CommandExec, CommandOutput,
    SudoExec,
};
pub use platform::Platform;
pub use runner::{
    find_program, missing_for, require_program, ConfinedRunner, PrefixedRunner, SystemRunner,
};
