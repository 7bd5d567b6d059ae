//! What the user configures: table, family, protected ports, drop rule, priority.

use serde::{Deserialize, Serialize};
use spa_core::firewall::{FirewallError, FwResult};
use spa_core::request::Proto;
use std::fmt;
use std::str::FromStr;

use crate::BACKEND;

/// Configuration of the nftables backend. Every field has a default, so an empty
/// `[action.nftables]` section gives a working `inet postern` table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NftablesConfig {
    /// Name of postern's own table. It is created if missing and never shared.
    pub table: String,
    /// Family of the table: `inet` (IPv4 and IPv6), `ip` or `ip6`.
    pub family: TableFamily,
    /// Ports postern closes itself, as `"tcp/22"`, `"udp/1194"`.
    pub protected: Vec<ProtectedPort>,
    /// Install the rule that drops connections to `protected` ports unless granted.
    /// Off: postern only marks/accepts granted packets in its own chain, and the
    /// user's own policy must let them through (see `shadowing_warnings`).
    pub drop_unauthorized: bool,
    /// Priority of the input chain. The default -10 runs after conntrack (-200)
    /// and before the usual `filter` chains (0, also iptables' INPUT), so a
    /// `grant_mark` is visible to them and unsolicited knocks on protected ports
    /// are dropped before anyone else logs them.
    pub priority: i32,
    /// Optional packet mark OR-ed onto granted packets, so a user's own policy
    /// (another table, iptables) can accept them: `meta mark & M == M accept`.
    pub grant_mark: Option<u32>,
    /// How grants and revokes reach the kernel. `netlink` (default) sends one
    /// set-element batch over a netlink socket; `nft` spawns `nft -j -f -`.
    pub apply_with: ApplyWith,
    /// The `nft` program (used for setup and listing; for grants with `apply_with = "nft"`).
    pub nft_path: String,
    /// NAT grants (fwknopd's ENABLE_IPT_FORWARDING / ENABLE_IPT_LOCAL_NAT /
    /// ENABLE_IPT_SNAT): creates the DNAT/SNAT maps and the `prerouting`,
    /// `forward` and `postrouting` chains. Off: no NAT objects exist (init removes
    /// them if an earlier run made them) and NAT grants are refused.
    pub nat: bool,
    /// Docker hosts: a `docker` chain on the prerouting hook, before Docker's
    /// DNAT (`docker_priority`), applies grants and `protected` to the port the
    /// client asked for, so ports Docker publishes are closed and granted like
    /// local ones.
    pub docker: bool,
    /// Priority of the `docker` chain: after conntrack (-200), before DNAT (-100).
    pub docker_priority: i32,
    /// Blocked sources (posternd's `[attack] block_secs`, through
    /// `Firewall::enable_blocking`, not a setting): `block4`/`block6` sets and
    /// their drop rules.
    #[serde(skip)]
    pub block_sources: bool,
}

impl Default for NftablesConfig {
    fn default() -> Self {
        NftablesConfig {
            table: "postern".into(),
            family: TableFamily::Inet,
            protected: Vec::new(),
            drop_unauthorized: true,
            priority: -10,
            grant_mark: None,
            apply_with: ApplyWith::Netlink,
            nft_path: "nft".into(),
            nat: false,
            docker: false,
            docker_priority: -150,
            block_sources: false,
        }
    }
}

impl NftablesConfig {
    /// Rejects names nft would refuse or misread, before anything runs.
    pub fn validate(&self) -> FwResult<()> {
        let ok_ident = |s: &str| {
            let mut chars = s.chars();
            matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
                && s.len() <= 200
        };
        if !ok_ident(&self.table) {
            return Err(FirewallError::Other {
                backend: BACKEND,
                message: format!(
                    "table name `{}` is invalid: expected a letter followed by letters, digits or `_`",
                    self.table
                ),
            });
        }
        if self.grant_mark == Some(0) {
            return Err(FirewallError::Other {
                backend: BACKEND,
                message: "grant_mark must not be 0".into(),
            });
        }
        if self.docker && !(-199..=-101).contains(&self.docker_priority) {
            return Err(FirewallError::Other {
                backend: BACKEND,
                message: format!(
                    "docker_priority {} must be between -199 and -101: after conntrack (-200) and before DNAT (-100)",
                    self.docker_priority
                ),
            });
        }
        Ok(())
    }

    /// Whether the drop rule is installed (it needs at least one protected port).
    pub(crate) fn installs_drop_rule(&self) -> bool {
        self.drop_unauthorized && !self.protected.is_empty()
    }
}

/// nftables family of postern's table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableFamily {
    #[default]
    Inet,
    Ip,
    Ip6,
}

impl TableFamily {
    pub fn name(self) -> &'static str {
        match self {
            TableFamily::Inet => "inet",
            TableFamily::Ip => "ip",
            TableFamily::Ip6 => "ip6",
        }
    }
    pub(crate) fn has_v4(self) -> bool {
        self != TableFamily::Ip6
    }
    pub(crate) fn has_v6(self) -> bool {
        self != TableFamily::Ip
    }
    /// NFPROTO_* value used in netlink messages.
    pub(crate) fn nfproto(self) -> u8 {
        match self {
            TableFamily::Inet => libc::NFPROTO_INET as u8,
            TableFamily::Ip => libc::NFPROTO_IPV4 as u8,
            TableFamily::Ip6 => libc::NFPROTO_IPV6 as u8,
        }
    }
    pub(crate) fn json(self) -> nftables::types::NfFamily {
        match self {
            TableFamily::Inet => nftables::types::NfFamily::INet,
            TableFamily::Ip => nftables::types::NfFamily::IP,
            TableFamily::Ip6 => nftables::types::NfFamily::IP6,
        }
    }
}

impl fmt::Display for TableFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How grant/revoke/flush reach the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplyWith {
    #[default]
    Netlink,
    Nft,
}

/// A port postern closes: written `tcp/22` like fwknop's access.conf.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProtectedPort {
    pub proto: Proto,
    pub port: u16,
}

impl FromStr for ProtectedPort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let expected =
            || format!("protected port `{s}`: expected PROTO/PORT such as `tcp/22` or `udp/1194`");
        let (proto, port) = s.split_once('/').ok_or_else(expected)?;
        let proto = Proto::from_str(proto.trim()).map_err(|_| expected())?;
        let port: u16 = port.trim().parse().map_err(|_| expected())?;
        if port == 0 {
            return Err(expected());
        }
        Ok(ProtectedPort { proto, port })
    }
}

impl TryFrom<String> for ProtectedPort {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<ProtectedPort> for String {
    fn from(p: ProtectedPort) -> String {
        p.to_string()
    }
}

impl fmt::Display for ProtectedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.proto, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_gives_defaults() {
        let c: NftablesConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, NftablesConfig::default());
        assert_eq!(c.table, "postern");
        assert_eq!(c.priority, -10);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn parses_every_field() {
        let c: NftablesConfig = serde_json::from_str(
            r#"{"table":"spa","family":"ip6","protected":["tcp/22","udp/1194"],
                "drop_unauthorized":false,"priority":5,"grant_mark":256,"apply_with":"nft","nft_path":"/usr/sbin/nft",
                "nat":true,"docker":true,"docker_priority":-160}"#,
        )
        .unwrap();
        assert_eq!(c.family, TableFamily::Ip6);
        assert_eq!(
            c.protected,
            vec![
                ProtectedPort {
                    proto: Proto::Tcp,
                    port: 22
                },
                ProtectedPort {
                    proto: Proto::Udp,
                    port: 1194
                }
            ]
        );
        assert_eq!(c.apply_with, ApplyWith::Nft);
        assert_eq!(c.grant_mark, Some(256));
        assert!(c.nat && c.docker && c.docker_priority == -160);
        assert!(c.validate().is_ok());
        let late = NftablesConfig {
            docker: true,
            docker_priority: -100,
            ..c
        };
        assert!(late
            .validate()
            .unwrap_err()
            .to_string()
            .contains("before DNAT"));
    }

    #[test]
    fn bad_values_say_what_was_expected() {
        let e = serde_json::from_str::<NftablesConfig>(r#"{"protected":["ssh"]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected PROTO/PORT"), "{e}");
        let e = serde_json::from_str::<NftablesConfig>(r#"{"protected":["icmp/1"]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("icmp/1"), "{e}");
        assert!(serde_json::from_str::<NftablesConfig>(r#"{"tabel":"x"}"#).is_err());
        let bad = NftablesConfig {
            table: "a b".into(),
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("`a b`"));
    }
}
