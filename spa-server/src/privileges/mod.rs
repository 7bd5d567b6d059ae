//! What posternd keeps of root's powers: on Linux only the capabilities its
//! work needs (`linux.rs`); FreeBSD and macOS have no capabilities, so there
//! is nothing to reduce (`bsd.rs`).

#[cfg(not(target_os = "linux"))]
mod bsd;
#[cfg(target_os = "linux")]
mod linux;

#[cfg(not(target_os = "linux"))]
pub use bsd::*;
#[cfg(target_os = "linux")]
pub use linux::*;
