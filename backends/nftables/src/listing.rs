//! Reading postern's table back from `nft -j list table FAMILY NAME`.
//!
//! Parsed as plain JSON values rather than the `nftables` crate's types: we only
//! need a few fields, and a rule expression the crate does not model must not
//! make `list()` fail.

use crate::keys::GrantSet;
use crate::setup::{ExistingTable, INPUT_CHAIN};
use serde_json::Value;
use spa_core::firewall::Rule;
use spa_core::request::Proto;
use std::net::IpAddr;

/// A grant found in the kernel, with the seconds it has left (`None`: no timeout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedGrant {
    pub rule: Rule,
    pub remaining_secs: Option<u32>,
}

/// What `nft -j list table` says about postern's table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableState {
    pub existing: ExistingTable,
    pub grants: Vec<ListedGrant>,
}

/// Parses the output of `nft -j list table`. Unknown things are skipped.
pub fn parse_table(json: &str) -> Result<TableState, String> {
    let doc: Value = serde_json::from_str(json).map_err(|e| format!("unreadable `nft -j` output: {e}"))?;
    let objects = doc.get("nftables").and_then(Value::as_array).ok_or("`nft -j` output has no `nftables` array")?;
    let mut state = TableState::default();
    for obj in objects {
        if let Some(chain) = obj.get("chain") {
            if chain.get("name").and_then(Value::as_str) == Some(INPUT_CHAIN) {
                state.existing.input_priority = chain.get("prio").and_then(Value::as_i64).map(|p| p as i32);
            }
        }
        let Some(set) = obj.get("set") else { continue };
        let name = set.get("name").and_then(Value::as_str).unwrap_or_default();
        if !GrantSet::ALL.iter().any(|s| s.name() == name) {
            continue;
        }
        for elem in set.get("elem").and_then(Value::as_array).into_iter().flatten() {
            if let Some(g) = parse_element(elem) {
                state.grants.push(g);
            }
        }
    }
    Ok(state)
}

/// `{"elem": {"val": {"concat": [addr, proto, port]}, "timeout": T, "expires": E}}`,
/// or the bare `{"concat": …}` nft prints for an element without a timeout.
fn parse_element(elem: &Value) -> Option<ListedGrant> {
    let (val, remaining) = match elem.get("elem") {
        Some(e) => {
            let expires = e.get("expires").and_then(Value::as_u64).or_else(|| e.get("timeout").and_then(Value::as_u64));
            (e.get("val")?, expires.map(|s| s.min(u64::from(u32::MAX)) as u32))
        }
        None => (elem, None),
    };
    let parts = val.get("concat")?.as_array()?;
    let [addr, proto, port] = parts.as_slice() else { return None };
    let source: IpAddr = addr.as_str()?.parse().ok()?;
    let proto = match proto {
        Value::String(s) => s.parse::<Proto>().ok()?,
        Value::Number(n) => match n.as_u64()? {
            6 => Proto::Tcp,
            17 => Proto::Udp,
            _ => return None,
        },
        _ => return None,
    };
    let port = match port {
        Value::Number(n) => u16::try_from(n.as_u64()?).ok()?,
        Value::String(s) => s.parse().ok()?,
        _ => return None,
    };
    Some(ListedGrant { rule: Rule { source, proto, port, nat: None }, remaining_secs: remaining })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTED: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
      {"table": {"family": "inet", "name": "postern", "handle": 5}},
      {"set": {"family": "inet", "name": "grants4", "table": "postern", "type": ["ipv4_addr", "inet_proto", "inet_service"], "handle": 1, "flags": ["timeout"],
        "elem": [{"elem": {"val": {"concat": ["10.0.0.1", "tcp", 22]}, "timeout": 60, "expires": 59}},
                 {"concat": ["10.0.0.3", "udp", 53]}]}},
      {"set": {"family": "inet", "name": "grants6", "table": "postern", "type": ["ipv6_addr", "inet_proto", "inet_service"], "handle": 2, "flags": ["timeout"],
        "elem": [{"elem": {"val": {"concat": ["fd00::2", 17, 1194]}, "timeout": 30, "expires": 3}}]}},
      {"set": {"family": "inet", "name": "protected", "table": "postern", "type": ["inet_proto", "inet_service"], "handle": 3,
        "elem": [{"concat": ["tcp", 22]}]}},
      {"chain": {"family": "inet", "table": "postern", "name": "input", "handle": 4, "type": "filter", "hook": "input", "prio": -10, "policy": "accept"}},
      {"rule": {"family": "inet", "table": "postern", "chain": "input", "handle": 9, "expr": [{"weird": {}}]}}]}"#;

    #[test]
    fn reads_grants_with_remaining_time_and_the_chain_priority() {
        let s = parse_table(LISTED).unwrap();
        assert_eq!(s.existing.input_priority, Some(-10));
        assert_eq!(s.grants.len(), 3, "{:?}", s.grants);
        assert_eq!(s.grants[0].rule.to_string(), "10.0.0.1 -> tcp/22");
        assert_eq!(s.grants[0].remaining_secs, Some(59));
        assert_eq!(s.grants[1].remaining_secs, None);
        assert_eq!(s.grants[2].rule.to_string(), "fd00::2 -> udp/1194");
        assert_eq!(s.grants[2].remaining_secs, Some(3));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse_table("Error: x").is_err());
        assert!(parse_table("{}").is_err());
    }
}
