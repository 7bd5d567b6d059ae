//! Blocked sources (posternd's `[attack] block_secs`): an ipset per family,
//! `postern_block4` (`hash:ip family inet timeout …`) and `postern_block6`,
//! whose entries the kernel removes at their timeout, matched by one rule in a
//! chain of postern's own, `POSTERN_BLOCK`:
//!
//! ```text
//! -A POSTERN_BLOCK -m set --match-set postern_block4 src -m conntrack ! --ctstate RELATED,ESTABLISHED -m comment --comment postern_block -j DROP
//! ```
//!
//! jumped to from the input chain's `from_chain` (INPUT) right after the jump
//! to postern's input chain, so a grant (accepted there) is never cut by a
//! block, nor is an established connection; everything new from a blocked
//! source is dropped, posternd's UDP port included.
//!
//! Nothing exists unless blocking is enabled ([`Firewall::enable_blocking`],
//! which needs the `ipset` program). `init` creates the sets (`-exist`: live
//! entries of an earlier run stay) and the chain, rule and jump if missing;
//! `flush_at_init` empties the sets. `flush` empties them. At exit with
//! `flush_at_exit` the jump and chain are removed and the sets destroyed, as
//! postern's other chains are; without it all stays and the entries expire.
//!
//! [`Firewall::enable_blocking`]: spa_core::firewall::Firewall::enable_blocking

use crate::backend::IptablesBackend;
use postern_backend_common::{find_program, require_program};
use spa_core::firewall::{Block, FirewallError, FwResult};
use std::net::IpAddr;

const BACKEND: &str = "iptables";
/// postern's chain holding the block rule (filter table).
pub const BLOCK_CHAIN: &str = "POSTERN_BLOCK";
/// The comment on the block rule.
const RULE_COMMENT: &str = "postern_block";
/// The sets' default timeout (each entry is added with its own).
const DEFAULT_TIMEOUT: u32 = 600;

/// Whether blocking is on, and the `ipset` program.
#[derive(Clone, Debug, Default)]
pub struct Blocking {
    ipset: Option<String>,
}

/// The ipset of a family (0: IPv4, 1: IPv6).
pub fn set_name(family: usize) -> &'static str {
    match family {
        0 => "postern_block4",
        _ => "postern_block6",
    }
}

fn ipset_family(family: usize) -> &'static str {
    match family {
        0 => "inet",
        _ => "inet6",
    }
}

/// The rule that drops what is new from a source in the family's set.
pub fn rule_spec(family: usize) -> String {
    format!(
        "-m set --match-set {} src -m conntrack ! --ctstate RELATED,ESTABLISHED -m comment --comment {RULE_COMMENT} -j DROP",
        set_name(family)
    )
}

/// `ipset restore` lines adding (or refreshing) each block.
pub fn restore_lines(family: usize, blocks: &[&Block]) -> String {
    blocks
        .iter()
        .map(|b| {
            format!(
                "add {} {} timeout {}\n",
                set_name(family),
                b.source,
                b.timeout_secs
            )
        })
        .collect()
}

fn is_missing_set(e: &FirewallError) -> bool {
    matches!(e, FirewallError::Command { stderr, .. } if stderr.contains("does not exist"))
}

impl IptablesBackend {
    /// The `ipset` program, when blocking is on.
    fn ipset(&self) -> Option<String> {
        self.blocking.ipset.clone()
    }

    fn run_ipset(&mut self, args: &[&str], stdin: Option<&str>) -> FwResult<String> {
        let Some(ipset) = self.ipset() else {
            return Err(FirewallError::Other {
                backend: BACKEND,
                message: "blocking was not enabled before init".into(),
            });
        };
        let mut argv = vec![ipset];
        argv.extend(args.iter().map(|a| a.to_string()));
        self.run(&argv, stdin)
    }

    /// See [`spa_core::firewall::Firewall::enable_blocking`]: needs `ipset`.
    pub(crate) fn enable_block_sets(&mut self) -> FwResult<()> {
        require_program("ipset", BACKEND, || {
            "install ipset (Debian: `apt install ipset`) to block sources".into()
        })?;
        let path = find_program("ipset").map(|p| p.display().to_string());
        self.blocking.ipset = path.or_else(|| Some("ipset".into()));
        Ok(())
    }

    /// At init: the sets, the chain with its rule, and the jump to it.
    pub(crate) fn init_block_sets(&mut self) -> FwResult<()> {
        if self.ipset().is_none() {
            return Ok(());
        }
        for family in 0..self.family_count() {
            let set = set_name(family);
            let timeout = DEFAULT_TIMEOUT.to_string();
            self.run_ipset(
                &[
                    "create",
                    "-exist",
                    set,
                    "hash:ip",
                    "family",
                    ipset_family(family),
                    "timeout",
                    &timeout,
                ],
                None,
            )?;
            if self.flush_at_init {
                self.run_ipset(&["flush", set], None)?;
            }
            let lines = self.plan_block_chain(family)?;
            let table = self.input_spec().table.clone();
            self.apply(family, &table, &lines)?;
        }
        Ok(())
    }

    /// Restore lines making `POSTERN_BLOCK`, its rule and the jump to it
    /// right after the jump to postern's input chain, where missing.
    fn plan_block_chain(&mut self, family: usize) -> FwResult<Vec<String>> {
        let spec = self.input_spec().clone();
        let mut lines = Vec::new();
        match self.list_chain(family, &spec.table, BLOCK_CHAIN)? {
            None => {
                lines.push(format!(":{BLOCK_CHAIN} - [0:0]"));
                lines.push(format!("-A {BLOCK_CHAIN} {}", rule_spec(family)));
            }
            Some(listed) if !listed.iter().any(|r| r.spec.contains(RULE_COMMENT)) => {
                lines.push(format!("-A {BLOCK_CHAIN} {}", rule_spec(family)));
            }
            Some(_) => {}
        }
        let from = self
            .list_chain(family, &spec.table, &spec.from_chain)?
            .unwrap_or_default();
        if !from.iter().any(|r| r.spec == format!("-j {BLOCK_CHAIN}")) {
            let ours = format!("-j {}", spec.chain);
            let position = match from.iter().position(|r| r.spec == ours) {
                Some(i) => i + 2,
                None => (spec.jump_position as usize).min(from.len() + 1),
            };
            lines.push(format!(
                "-I {} {position} -j {BLOCK_CHAIN}",
                spec.from_chain
            ));
        }
        Ok(lines)
    }

    /// Add each block to its family's set; sources of a family without a set
    /// (IPv6 with `ipv6 = false`) are named in the error once the rest are in.
    pub(crate) fn block_in_sets(&mut self, blocks: &[Block]) -> FwResult<()> {
        if self.ipset().is_none() {
            return self.run_ipset(&[], None).map(drop);
        }
        let mut unsupported = Vec::new();
        for family in 0..2 {
            let here: Vec<&Block> = blocks
                .iter()
                .filter(|b| matches!((family, b.source), (0, IpAddr::V4(_)) | (1, IpAddr::V6(_))))
                .collect();
            if here.is_empty() {
                continue;
            }
            if family >= self.family_count() {
                unsupported.extend(here.iter().map(|b| b.source.to_string()));
                continue;
            }
            self.run_ipset(&["restore", "-exist"], Some(&restore_lines(family, &here)))?;
        }
        if unsupported.is_empty() {
            return Ok(());
        }
        Err(FirewallError::Unsupported {
            backend: BACKEND,
            what: format!("blocking {} with `ipv6 = false`", unsupported.join(", ")),
        })
    }

    /// Empty the sets (a part of flush); a set that does not exist is no error.
    pub(crate) fn flush_block_sets(&mut self) -> FwResult<()> {
        if self.ipset().is_none() {
            return Ok(());
        }
        for family in 0..self.family_count() {
            match self.run_ipset(&["flush", set_name(family)], None) {
                Err(e) if !is_missing_set(&e) => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// At exit with `flush_at_exit`: the jump, the chain, then the sets.
    pub(crate) fn remove_block_sets(&mut self) -> FwResult<()> {
        if self.ipset().is_none() {
            return Ok(());
        }
        let spec = self.input_spec().clone();
        for family in 0..self.family_count() {
            if self.list_chain(family, &spec.table, BLOCK_CHAIN)?.is_some() {
                let from = self
                    .list_chain(family, &spec.table, &spec.from_chain)?
                    .unwrap_or_default();
                let jump = format!("-j {BLOCK_CHAIN}");
                let mut lines: Vec<String> = from
                    .iter()
                    .filter(|r| r.spec == jump)
                    .map(|_| format!("-D {} {jump}", spec.from_chain))
                    .collect();
                lines.push(format!("-F {BLOCK_CHAIN}"));
                lines.push(format!("-X {BLOCK_CHAIN}"));
                self.apply(family, &spec.table, &lines)?;
            }
            self.destroy_set(family)?;
        }
        Ok(())
    }

    /// `ipset destroy`, waiting out the kernel: with iptables-nft, a rule
    /// that used the set lets go of it a moment after its deletion commits
    /// ("in use by a kernel component" until then).
    fn destroy_set(&mut self, family: usize) -> FwResult<()> {
        const TRIES: u32 = 50;
        for attempt in 1..=TRIES {
            match self.run_ipset(&["destroy", set_name(family)], None) {
                Ok(_) => return Ok(()),
                Err(e) if is_missing_set(&e) => return Ok(()),
                Err(e) if attempt < TRIES && e.to_string().contains("in use") => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// `ipset list` of each set, for `--fw-list`.
    pub(crate) fn block_listing(&mut self) -> FwResult<String> {
        let mut out = String::new();
        if self.ipset().is_none() {
            return Ok(out);
        }
        for family in 0..self.family_count() {
            match self.run_ipset(&["list", set_name(family)], None) {
                Ok(text) => {
                    out.push_str(&text);
                    out.push('\n');
                }
                Err(e) if is_missing_set(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_lines_name_the_family_set_and_each_timeout() {
        let b = |s: &str, t| Block {
            source: s.parse().unwrap(),
            timeout_secs: t,
            expires_at: 0,
        };
        let (a, c) = (b("192.0.2.1", 600), b("192.0.2.2", 30));
        assert_eq!(
            restore_lines(0, &[&a, &c]),
            "add postern_block4 192.0.2.1 timeout 600\nadd postern_block4 192.0.2.2 timeout 30\n"
        );
        assert!(rule_spec(1).starts_with("-m set --match-set postern_block6 src "));
    }
}
