//! NFQUEUE capture (fwknopd's ENABLE_NFQ_CAPTURE): the kernel queues the UDP
//! packets for the SPA port to posternd, which screens each like every capture
//! does and gives it its verdict. posternd adds the queue rule itself once it
//! listens on the queue, and removes it before it stops listening ([`rule`]).
//!
//! Crate: `nfq` (MIT OR Apache-2.0) speaks the queue protocol over netlink in
//! plain Rust. The others bind the GPL C library libnetfilter_queue (`nfqueue`,
//! GPL itself; `netfilter_queue`, unmaintained since 2016) or lack the queue
//! messages (`netlink-packet-netfilter`: nflog and conntrack only).
//!
//! Verdict, as fwknopd's: a packet queued from the input hook is dropped (it was
//! sent to the SPA port), one from another hook accepted. Every packet gets it
//! right after screening, garbage included; at shutdown the rule goes first, then
//! what is still queued is read and given its verdict.
//!
//! Fail closed: no `--queue-bypass`, and a full queue drops (fail-open off). So
//! while no posternd listens (killed, restarting) the kernel drops packets for
//! the SPA port: they never reach whatever else might listen there, and no ICMP
//! port-unreachable tells a scanner the port is there; the queue only delays
//! knocks, it never lets anything through.
//!
//! Netfilter is Linux's: elsewhere only the settings below are built, so a
//! configuration asking for this capture is read and then refused
//! (config/platform.rs); the capture itself is in `capture.rs`.

#[cfg(target_os = "linux")]
mod capture;
#[cfg(target_os = "linux")]
mod rule;
#[cfg(target_os = "linux")]
mod socket;

use crate::config::ActionConfig;
use serde::{Deserialize, Serialize};

#[cfg(target_os = "linux")]
pub use capture::NfqueueCapture;
#[cfg(target_os = "linux")]
pub use rule::nft_table;

/// `[[capture]] type = "nfqueue"`; the defaults are fwknopd's NFQ_* defaults.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// NFQ_QUEUE_NUMBER.
    #[serde(default = "default_queue")]
    pub queue: u16,
    /// NFQ_PORT: the UDP port whose packets are queued.
    #[serde(default = "default_port")]
    pub port: u16,
    /// NFQ_INTERFACE: only packets coming in on it (`eth+` for a prefix); all if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// NFQ_TABLE: the iptables table of the chain (`mangle` or `filter`).
    #[serde(default = "default_table")]
    pub table: String,
    /// NFQ_CHAIN: posternd's own iptables chain for the rule.
    #[serde(default = "default_chain")]
    pub chain: String,
    /// Who adds the queue rule; unset: nftables with an nftables action, else iptables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<RuleTool>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            queue: default_queue(),
            port: default_port(),
            interface: None,
            table: default_table(),
            chain: default_chain(),
            rules: None,
        }
    }
}

fn default_queue() -> u16 {
    1
}
fn default_port() -> u16 {
    62201
}
fn default_table() -> String {
    "mangle".into()
}
fn default_chain() -> String {
    "FWKNOP_NFQ".into()
}

/// How the queue rule is made.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RuleTool {
    Iptables,
    Nftables,
    /// The operator queues the packets; posternd only listens.
    #[serde(rename = "none")]
    Unmanaged,
}

impl RuleTool {
    /// The tool `settings` asks for, or the one matching the actions.
    pub fn for_capture(settings: &Settings, actions: &[ActionConfig]) -> RuleTool {
        settings.rules.unwrap_or_else(|| {
            if actions.iter().any(|a| a.kind() == "nftables") {
                RuleTool::Nftables
            } else {
                RuleTool::Iptables
            }
        })
    }
}

/// The iptables program for the rule: the iptables action's (fwknopd's
/// FIREWALL_EXE), else `iptables` from PATH.
pub fn iptables_program(actions: &[ActionConfig]) -> String {
    actions
        .iter()
        .find_map(ActionConfig::iptables_program)
        .unwrap_or("iptables")
        .to_string()
}

/// A setting that cannot be used: which one, and why.
#[derive(Debug, PartialEq, Eq)]
pub struct BadSetting {
    /// `port`, `table`, `chain` or `interface`.
    pub field: &'static str,
    pub message: String,
}

/// Chains an iptables table has built in: NFQ_CHAIN is flushed and deleted at
/// exit, so it must be posternd's own.
const BUILTIN_CHAINS: [&str; 5] = ["INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"];

impl Settings {
    /// Refuse names that would make the rule act on something not posternd's.
    pub fn check(&self) -> Result<(), BadSetting> {
        let bad = |field, message: String| Err(BadSetting { field, message });
        if self.port == 0 {
            return bad("port", "0 is not a port".into());
        }
        if !["mangle", "filter"].contains(&self.table.as_str()) {
            return bad(
                "table",
                format!(
                    "`{}` is not a table whose INPUT chain can queue packets (mangle or filter)",
                    self.table
                ),
            );
        }
        let chain_ok = (1..=28).contains(&self.chain.len())
            && !self.chain.starts_with('-')
            && self
                .chain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !chain_ok || BUILTIN_CHAINS.contains(&self.chain.as_str()) {
            return bad(
                "chain",
                format!(
                    "`{}` cannot be posternd's own chain (1-28 letters, digits, _ or -, \
                     not a built-in chain: it is flushed and deleted at exit)",
                    self.chain
                ),
            );
        }
        if let Some(i) = &self.interface {
            let name = i.strip_suffix('+').unwrap_or(i);
            let ok = (1..=15).contains(&name.len())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-@:".contains(c));
            if !ok {
                return bad("interface", format!("`{i}` is not an interface name"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_not_posternds_own_are_refused() {
        let ok = Settings::default();
        assert_eq!(ok.check(), Ok(()));
        let with = |f: fn(&mut Settings)| {
            let mut s = Settings::default();
            f(&mut s);
            s.check().err().map(|b| b.field)
        };
        assert_eq!(with(|s| s.chain = "INPUT".into()), Some("chain"));
        assert_eq!(with(|s| s.chain = "-F".into()), Some("chain"));
        assert_eq!(with(|s| s.chain = "A B".into()), Some("chain"));
        assert_eq!(with(|s| s.chain = "X".repeat(29)), Some("chain"));
        assert_eq!(with(|s| s.table = "nat".into()), Some("table"));
        assert_eq!(with(|s| s.port = 0), Some("port"));
        assert_eq!(
            with(|s| s.interface = Some("eth0 -j".into())),
            Some("interface")
        );
        assert_eq!(
            with(|s| s.interface = Some("\"x".into())),
            Some("interface")
        );
        assert_eq!(with(|s| s.interface = Some("veth+".into())), None);
        assert_eq!(with(|s| s.table = "filter".into()), None);
    }

    #[test]
    fn toml_capture_table_with_defaults_and_unknown_keys_refused() {
        use crate::config::CaptureConfig;
        let parse = |text: &str| toml::from_str::<CaptureConfig>(text);
        assert_eq!(
            parse("type = \"nfqueue\"").unwrap(),
            CaptureConfig::Nfqueue(Settings::default())
        );
        assert_eq!(
            parse("type = \"nfqueue\"\nqueue = 3\nport = 5000\ninterface = \"eth1\"\nrules = \"nftables\"")
                .unwrap(),
            CaptureConfig::Nfqueue(Settings {
                queue: 3,
                port: 5000,
                interface: Some("eth1".into()),
                rules: Some(RuleTool::Nftables),
                ..Settings::default()
            })
        );
        assert_eq!(
            parse("type = \"nfqueue\"\nrules = \"none\"").unwrap(),
            CaptureConfig::Nfqueue(Settings {
                rules: Some(RuleTool::Unmanaged),
                ..Settings::default()
            })
        );
        let err = parse("type = \"nfqueue\"\nqueue_num = 3").unwrap_err();
        assert!(err.to_string().contains("queue_num"), "{err}");
    }

    #[test]
    fn iptables_is_the_iptables_actions_program() {
        let iptables = ActionConfig::default_of("iptables").unwrap();
        assert_eq!(iptables_program(&[iptables]), "iptables");
        let legacy: ActionConfig = serde_json::from_value(serde_json::json!(
            {"type": "iptables", "iptables": "/usr/sbin/iptables-legacy"}
        ))
        .unwrap();
        assert_eq!(iptables_program(&[legacy]), "/usr/sbin/iptables-legacy");
        assert_eq!(iptables_program(&[]), "iptables");
    }

    #[test]
    fn the_rule_tool_follows_the_action_unless_set() {
        let action = |kind: &str| ActionConfig::default_of(kind).unwrap();
        let unset = Settings::default();
        assert_eq!(
            RuleTool::for_capture(&unset, &[action("nftables")]),
            RuleTool::Nftables
        );
        assert_eq!(
            RuleTool::for_capture(&unset, &[action("iptables")]),
            RuleTool::Iptables
        );
        let set = Settings {
            rules: Some(RuleTool::Unmanaged),
            ..Settings::default()
        };
        assert_eq!(
            RuleTool::for_capture(&set, &[action("nftables")]),
            RuleTool::Unmanaged
        );
    }
}
