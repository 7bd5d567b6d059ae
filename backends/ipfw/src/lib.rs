//! ipfw firewall backend for postern (FreeBSD), behaving like fwknopd's ipfw
//! support.
//!
//! postern owns a range of rule numbers (default 10000-10999, fwknopd's
//! `IPFW_START_RULE_NUM` / `IPFW_MAX_RULES`) and two sets: live grants go to the
//! active set (`IPFW_ACTIVE_SET_NUM`, 1), one rule each,
//! `ipfw add 10000 set 1 pass tcp from 192.0.2.1 to me dst-port 22 setup keep-state // postern_exp_1700000030`,
//! with the expiry in the comment. At expiry the rule is moved to the disabled
//! expire set (`IPFW_EXPIRE_SET_NUM`, 2): no new connection matches it, but the
//! sessions it let in keep their dynamic rules; every
//! `IPFW_EXPIRE_PURGE_INTERVAL` seconds, rules there without dynamic rules are
//! deleted. Rules outside the range, or in other sets, are never touched.
//!
//! The comment is the record of each grant's expiry: it is written in the same
//! `ipfw add` as the rule, so it cannot disagree with the firewall, and it is
//! what fwknopd writes too (`// _exp_<ts>`), so a restarted posternd reconciles
//! its own and fwknopd's leftovers from `ipfw -S list` alone. No state file.
//!
//! ```no_run
//! use postern_backend_ipfw::{IpfwBackend, IpfwConfig};
//! use spa_core::firewall::Firewall;
//! # fn now() -> u64 { 0 }
//! # fn main() -> Result<(), spa_core::firewall::FirewallError> {
//! let mut fw = IpfwBackend::system(&IpfwConfig::default())?; // Missing without ipfw
//! fw.init(now())?; // disable the expire set, reconcile the range, purge
//! # let openings = Vec::new();
//! fw.grant(&openings)?; // one `ipfw add` per new grant
//! let _closed = fw.expire(now())?; // on a timer; lists only when something is due
//! fw.shutdown()?; // flush_at_exit: delete postern's rules in the active set
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod backend;
pub mod config;
pub mod rules;

pub use backend::IpfwBackend;
pub use config::IpfwConfig;
