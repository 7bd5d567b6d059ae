//! pf firewall backend for postern (OpenBSD, FreeBSD, macOS), behaving like
//! fwknopd's pf support but with tables instead of one rule per grant.
//!
//! postern works only inside its own anchor (default `postern`, fwknopd's
//! `PF_ANCHOR_NAME`), which the admin references once from /etc/pf.conf
//! (`anchor "postern"`). A grant is an address in a per-port table of that
//! anchor, `pfctl -a postern -t postern_tcp_22 -T add 192.0.2.1`; the anchor holds
//! one rule per table in use,
//! `pass in quick proto tcp from <postern_tcp_22> to any port 22 keep state`,
//! loaded with `pfctl -a postern -f -`. The main ruleset is never touched.
//!
//! pf tables have no per-entry timeout, so the daemon expires grants
//! (`expires_in_kernel() == false`) from a state file recording each entry's
//! expiry; `pfctl -T expire max_grant_secs` runs as a safety net. See README.md.
//!
//! Everything is done with pfctl(8) commands through a
//! [`CommandRunner`](spa_core::firewall::CommandRunner), so the same code
//! drives every pf flavour and is tested on Linux against recorded commands and
//! a fake pfctl (`postern-fake-pfctl`, a test tool built with this crate).
//!
//! ```no_run
//! use postern_backend_pf::{PfBackend, PfConfig};
//! use spa_core::firewall::Firewall;
//! # fn now() -> u64 { 0 }
//! # fn main() -> Result<(), spa_core::firewall::FirewallError> {
//! let mut fw = PfBackend::system(&PfConfig::default())?; // Missing without pfctl
//! fw.init(now())?; // anchor check, reconcile leftovers, load the anchor's rules
//! # let openings = Vec::new();
//! fw.grant(&openings)?; // one `-T add` per table
//! let _closed = fw.expire(now())?; // on a timer; no command unless something expired
//! fw.shutdown()?; // flush_at_exit: `pfctl -a postern -F all`
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod backend;
pub mod config;
pub mod render;
pub mod state;

pub use backend::PfBackend;
pub use config::PfConfig;
