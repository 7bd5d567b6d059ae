//! Custom-script actions for postern (CMD_CYCLE_OPEN / CMD_CYCLE_CLOSE style) and
//! the process runner every command-driven backend shares.

pub mod runner;

pub use runner::SystemRunner;
