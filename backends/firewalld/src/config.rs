//! What the user configures: zone, bus, state file, address families, call timeout.

use serde::{Deserialize, Serialize};
use spa_core::firewall::{FirewallError, FwResult};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::BACKEND;

/// Configuration of the firewalld backend. Every field has a default, so an empty
/// `[action.firewalld]` section talks to the system bus and uses firewalld's
/// default zone.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FirewalldConfig {
    /// Zone the grants go into. Unset: firewalld's default zone, read over D-Bus
    /// (`getDefaultZone`) when the backend starts.
    pub zone: Option<String>,
    /// D-Bus address of the bus firewalld is on, e.g.
    /// `unix:path=/run/dbus/system_bus_socket`. Unset: the system bus
    /// (`DBUS_SYSTEM_BUS_ADDRESS` if set, else the standard socket).
    pub bus_address: Option<String>,
    /// File where postern records the rich rules it added and when they expire,
    /// so that after a restart `list` and `flush` still know them. Unset: kept in
    /// memory only (rules of a previous run still expire inside firewalld).
    pub state_file: Option<PathBuf>,
    /// Which source address families may be granted: `any` (default), `ipv4`,
    /// `ipv6`. A grant for another family fails with "unsupported".
    pub family: FamilyFilter,
    /// How long one D-Bus call to firewalld may take, in milliseconds.
    pub call_timeout_ms: u64,
    /// Remove postern's recorded grants at start (fwknopd's FLUSH_FIREWD_AT_INIT).
    /// Default: keep the live ones (they still expire inside firewalld).
    pub flush_at_init: bool,
    /// Remove postern's grants at shutdown (FLUSH_FIREWD_AT_EXIT). Default: leave
    /// them to expire inside firewalld.
    pub flush_at_exit: bool,
}

impl Default for FirewalldConfig {
    fn default() -> Self {
        FirewalldConfig {
            zone: None,
            bus_address: None,
            state_file: None,
            family: FamilyFilter::Any,
            call_timeout_ms: 10_000,
            flush_at_init: false,
            flush_at_exit: false,
        }
    }
}

impl FirewalldConfig {
    /// Rejects values firewalld or D-Bus would refuse, before anything connects.
    pub fn validate(&self) -> FwResult<()> {
        let bad = |message: String| {
            Err(FirewallError::Other {
                backend: BACKEND,
                message,
            })
        };
        if let Some(zone) = &self.zone {
            // firewalld zone names: file names of zone XML files, at most 17 characters
            // historically; we only reject what can never be a zone name.
            let ok = !zone.is_empty()
                && zone.len() <= 64
                && zone
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-+.".contains(&b))
                && !zone.starts_with('.');
            if !ok {
                return bad(format!(
                    "zone `{zone}` is invalid: expected a firewalld zone name (letters, digits, `_`, `-`, `+`, `.`)"
                ));
            }
        }
        if let Some(addr) = &self.bus_address {
            if let Err(e) = zbus::Address::from_str(addr) {
                return bad(format!(
                    "bus_address `{addr}` is not a D-Bus address ({e}); expected e.g. `unix:path=/run/dbus/system_bus_socket`"
                ));
            }
        }
        if let Some(path) = &self.state_file {
            if path.as_os_str().is_empty() || path.file_name().is_none() {
                return bad(format!("state_file `{}` must name a file", path.display()));
            }
        }
        if self.call_timeout_ms == 0 {
            return bad("call_timeout_ms must be at least 1".into());
        }
        Ok(())
    }

    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms)
    }
}

/// Address families the backend grants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FamilyFilter {
    #[default]
    Any,
    Ipv4,
    Ipv6,
}

impl FamilyFilter {
    pub fn allows(self, addr: &IpAddr) -> bool {
        match self {
            FamilyFilter::Any => true,
            FamilyFilter::Ipv4 => addr.is_ipv4(),
            FamilyFilter::Ipv6 => addr.is_ipv6(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FamilyFilter::Any => "any",
            FamilyFilter::Ipv4 => "ipv4",
            FamilyFilter::Ipv6 => "ipv6",
        }
    }
}

impl fmt::Display for FamilyFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_gives_defaults() {
        let c: FirewalldConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, FirewalldConfig::default());
        assert_eq!(c.zone, None);
        assert_eq!(c.family, FamilyFilter::Any);
        assert_eq!(c.call_timeout(), Duration::from_secs(10));
        c.validate().unwrap();
    }

    #[test]
    fn parses_every_field() {
        let c: FirewalldConfig = serde_json::from_str(
            r#"{"zone":"work","bus_address":"unix:path=/tmp/bus","state_file":"/var/lib/postern/firewalld.json",
                "family":"ipv6","call_timeout_ms":2500}"#,
        )
        .unwrap();
        assert_eq!(c.zone.as_deref(), Some("work"));
        assert_eq!(c.bus_address.as_deref(), Some("unix:path=/tmp/bus"));
        assert_eq!(
            c.state_file,
            Some(PathBuf::from("/var/lib/postern/firewalld.json"))
        );
        assert_eq!(c.family, FamilyFilter::Ipv6);
        assert_eq!(c.call_timeout_ms, 2500);
        c.validate().unwrap();
    }

    #[test]
    fn bad_values_say_what_was_expected() {
        assert!(serde_json::from_str::<FirewalldConfig>(r#"{"zones":"x"}"#).is_err());
        let e = serde_json::from_str::<FirewalldConfig>(r#"{"family":"inet"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("inet"), "{e}");
        let bad = FirewalldConfig {
            zone: Some("a zone".into()),
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("`a zone`"));
        let bad = FirewalldConfig {
            zone: Some("x\"y".into()),
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        let bad = FirewalldConfig {
            bus_address: Some("/run/dbus/system_bus_socket".into()),
            ..Default::default()
        };
        let e = bad.validate().unwrap_err().to_string();
        assert!(
            e.contains("not a D-Bus address") && e.contains("unix:path="),
            "{e}"
        );
        let bad = FirewalldConfig {
            call_timeout_ms: 0,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        let bad = FirewalldConfig {
            state_file: Some(PathBuf::from("/")),
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn family_filter() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert!(FamilyFilter::Any.allows(&v4) && FamilyFilter::Any.allows(&v6));
        assert!(FamilyFilter::Ipv4.allows(&v4) && !FamilyFilter::Ipv4.allows(&v6));
        assert!(!FamilyFilter::Ipv6.allows(&v4) && FamilyFilter::Ipv6.allows(&v6));
    }
}
