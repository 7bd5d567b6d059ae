//! iptables firewall backend for postern, behaving like fwknopd on Linux.
//!
//! postern's rules live in their own chain (default `POSTERN_INPUT` in `filter`,
//! jumped to from `INPUT` at position 1; fwknopd's `IPT_INPUT_ACCESS` format is
//! accepted). Each grant is an ACCEPT rule
//! `-s IP/32 -p PROTO -m PROTO --dport PORT -m comment --comment postern_exp_TS`,
//! whose comment carries the expiry, so a restarted daemon can remove what expired
//! while it was down and keep what is still live. Every change is one
//! `iptables-restore --noflush` transaction per family; a repeated grant replaces
//! the rule in that transaction instead of adding a duplicate (fwknop issue #158).
//! IPv6 uses ip6tables. NAT (forward/DNAT/SNAT) is not supported yet.

pub mod backend;
pub mod config;
pub mod rules;

pub use backend::IptablesBackend;
pub use config::{ChainSpec, IptablesConfig};
