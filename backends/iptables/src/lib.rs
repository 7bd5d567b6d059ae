//! iptables firewall backend for postern, behaving like fwknopd on Linux.
//!
//! postern's rules live in their own chain (default `POSTERN_INPUT` in `filter`,
//! jumped to from `INPUT` at position 1; fwknopd's `IPT_INPUT_ACCESS` format is
//! accepted). Each grant is an ACCEPT rule
//! `-s IP/32 -p PROTO -m PROTO --dport PORT -m comment --comment postern_exp_TS`,
//! whose comment carries the expiry, so a restarted daemon can remove what expired
//! while it was down and keep what is still live. Every change is one
//! `iptables-restore --noflush` transaction per family and table; a repeated
//! grant replaces the rule in that transaction instead of adding a duplicate
//! (fwknop issue #158). IPv6 uses ip6tables.
//!
//! NAT grants (forward NAT with DNAT, FORWARD accept and optional SNAT or
//! MASQUERADE; local NAT with DNAT and INPUT accept) use fwknopd's
//! IPT_FORWARD/DNAT/SNAT/MASQUERADE_ACCESS chains (`nat = true` for postern's
//! defaults); `docker` adds a chain under DOCKER-USER for Docker-published
//! ports. The crate's README.md shows every rule produced.
//!
//! How the daemon drives it (one task owns the backend):
//!
//! ```no_run
//! use postern_backend_iptables::{IptablesBackend, IptablesConfig};
//! use spa_core::firewall::Firewall;
//! # fn now() -> u64 { 0 }
//! # fn main() -> Result<(), spa_core::firewall::FirewallError> {
//! let config = IptablesConfig::default(); // or deserialized from `[action]`
//! let mut fw = IptablesBackend::system(&config)?; // Missing if iptables is absent
//! fw.init(now())?; // chain + jump, drop what expired while we were down
//! // for each burst of grants from the policy stage:
//! # let openings = Vec::new();
//! fw.grant(&openings)?; // one iptables-restore transaction per family
//! // on a timer (e.g. every second, or at the next expiry):
//! let _closed = fw.expire(now())?;
//! // on SIGTERM:
//! fw.shutdown()?; // flush_at_exit: remove rules, jump and chain
//! # Ok(()) }
//! ```

#![deny(unsafe_code)]

pub mod backend;
pub mod block;
pub mod chains;
pub mod config;
mod plan;
pub mod rules;
// The iptables-restore session polls its pipes: fcntl(2) O_NONBLOCK and poll(2).
#[allow(unsafe_code)]
mod session;

pub use backend::IptablesBackend;
pub use chains::Role;
pub use config::{ChainSpec, IptablesConfig};
