//! Reading postern's table back from `nft -j list table FAMILY NAME`.
//!
//! Parsed as plain JSON values rather than the `nftables` crate's types: we only
//! need a few fields, and a rule expression the crate does not model must not
//! make `list()` fail.

use crate::keys::{Kind, SetId};
use crate::setup::ExistingTable;
use serde_json::Value;
use spa_core::firewall::{NatRule, Rule};
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
    /// Each grant once, however many elements it has.
    pub grants: Vec<ListedGrant>,
}

/// Parses the output of `nft -j list table`. Unknown things are skipped.
pub fn parse_table(json: &str) -> Result<TableState, String> {
    let doc: Value =
        serde_json::from_str(json).map_err(|e| format!("unreadable `nft -j` output: {e}"))?;
    let objects = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or("`nft -j` output has no `nftables` array")?;
    let mut state = TableState::default();
    for obj in objects {
        if let Some(chain) = obj.get("chain") {
            if let Some(name) = chain.get("name").and_then(Value::as_str) {
                let prio = chain.get("prio").and_then(Value::as_i64).map(|p| p as i32);
                state.existing.chains.insert(name.to_string(), prio);
            }
        }
        let Some(set) = obj.get("set").or_else(|| obj.get("map")) else {
            continue;
        };
        let name = set.get("name").and_then(Value::as_str).unwrap_or_default();
        state.existing.sets.insert(name.to_string());
        let Some(id) = SetId::parse(name) else {
            continue;
        };
        for elem in set
            .get("elem")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(g) = parse_element(id, elem) {
                match state.grants.iter_mut().find(|seen| seen.rule == g.rule) {
                    Some(seen) => seen.remaining_secs = seen.remaining_secs.max(g.remaining_secs),
                    None => state.grants.push(g),
                }
            }
        }
    }
    Ok(state)
}

/// A FORWARD_ALL element: the key is the source (or `source . to_addr`), the
/// protocol and the grant are in the comment, `<proto>_nat_…_all…`.
fn parse_forward_all(val: &Value, remaining: Option<u32>, comment: &str) -> Option<ListedGrant> {
    let source = match val.get("concat") {
        Some(parts) => parts.as_array()?.first()?.as_str()?,
        None => val.as_str()?,
    };
    let (proto, tag) = comment.split_once('_')?;
    let (port, nat) = NatRule::parse_tag(tag)?;
    nat.forward_all.then_some(())?;
    Some(ListedGrant {
        rule: Rule {
            nat: Some(nat),
            ..Rule::new(source.parse().ok()?, proto.parse().ok()?, port)
        },
        remaining_secs: remaining,
    })
}

/// `{"elem": {"val": {"concat": [...]}, "timeout": T, "expires": E, "comment": C}}`,
/// or the bare `{"concat": …}` nft prints for an element without a timeout; in
/// a map, `[element, data]`. A NAT set's element is a grant only with postern's
/// comment.
fn parse_element(set: SetId, elem: &Value) -> Option<ListedGrant> {
    let elem = match elem.as_array() {
        Some(pair) => pair.first()?,
        None => elem,
    };
    let (val, remaining, comment) = match elem.get("elem") {
        Some(e) => {
            let expires = e
                .get("expires")
                .and_then(Value::as_u64)
                .or_else(|| e.get("timeout").and_then(Value::as_u64));
            (
                e.get("val")?,
                expires.map(|s| s.min(u64::from(u32::MAX)) as u32),
                e.get("comment").and_then(Value::as_str),
            )
        }
        None => (elem, None, None),
    };
    if !set.kind.has_ports() {
        return parse_forward_all(val, remaining, comment?);
    }
    let parts = val.get("concat")?.as_array()?;
    let expected = if set.kind.two_addrs() || set.kind == Kind::GrantsPin {
        4
    } else {
        3
    };
    if parts.len() != expected {
        return None;
    }
    let source: IpAddr = parts[0].as_str()?.parse().ok()?;
    if set.kind == Kind::GrantsPin {
        let rule = Rule::new(source, parse_proto(&parts[1])?, parse_port(&parts[3])?)
            .pinned(Some(parse_port(&parts[2])?));
        return Some(ListedGrant {
            rule,
            remaining_secs: remaining,
        });
    }
    let proto = parse_proto(&parts[expected - 2])?;
    let rule = if set.kind == Kind::Grants {
        Rule::new(source, proto, parse_port(&parts[expected - 1])?)
    } else if set.kind == Kind::GrantsDst {
        Rule {
            destination: Some(parts[1].as_str()?.parse().ok()?),
            ..Rule::new(source, proto, parse_port(&parts[expected - 1])?)
        }
    } else {
        let (port, nat) = NatRule::parse_tag(comment?)?;
        Rule {
            source,
            proto,
            port,
            nat: Some(nat),
            destination: None,
            source_port: None,
        }
    };
    Some(ListedGrant {
        rule,
        remaining_secs: remaining,
    })
}

fn parse_proto(v: &Value) -> Option<Proto> {
    match v {
        Value::String(s) => s.parse::<Proto>().ok(),
        Value::Number(n) => match n.as_u64()? {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            _ => None,
        },
        _ => None,
    }
}

fn parse_port(v: &Value) -> Option<u16> {
    match v {
        Value::Number(n) => u16::try_from(n.as_u64()?).ok(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
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
      {"set": {"family": "inet", "name": "grantspin4", "table": "postern", "type": ["ipv4_addr", "inet_proto", "inet_service", "inet_service"], "handle": 6, "flags": ["timeout"],
        "elem": [{"elem": {"val": {"concat": ["10.0.0.4", "tcp", 40123, 22]}, "timeout": 60, "expires": 50}}]}},
      {"set": {"family": "inet", "name": "protected", "table": "postern", "type": ["inet_proto", "inet_service"], "handle": 3,
        "elem": [{"concat": ["tcp", 22]}]}},
      {"chain": {"family": "inet", "table": "postern", "name": "input", "handle": 4, "type": "filter", "hook": "input", "prio": -10, "policy": "accept"}},
      {"rule": {"family": "inet", "table": "postern", "chain": "input", "handle": 9, "expr": [{"weird": {}}]}}]}"#;

    #[test]
    fn reads_grants_with_remaining_time_and_the_chain_priority() {
        let s = parse_table(LISTED).unwrap();
        assert_eq!(s.existing.chains.get("input"), Some(&Some(-10)));
        assert!(s.existing.sets.contains("protected"));
        assert_eq!(s.grants.len(), 4, "{:?}", s.grants);
        assert_eq!(
            s.grants[3].rule.to_string(),
            "10.0.0.4 port 40123 -> tcp/22"
        );
        assert_eq!(s.grants[3].remaining_secs, Some(50));
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

    #[test]
    fn nat_elements_from_several_maps_make_one_grant() {
        let json = r#"{"nftables": [
          {"map": {"family": "inet", "name": "dnat4", "table": "postern", "type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "ipv4_addr", "flags": ["timeout"],
            "elem": [[{"elem": {"val": {"concat": ["192.0.2.7", "tcp", 55000]}, "timeout": 30, "expires": 20, "comment": "nat_55000_10.0.0.2_22_masq"}}, "10.0.0.2"],
                     [{"elem": {"val": {"concat": ["192.0.2.8", "tcp", 55000]}, "timeout": 30, "expires": 20}}, "10.0.0.2"]]}},
          {"set": {"family": "inet", "name": "fwd4", "table": "postern", "type": ["ipv4_addr", "ipv4_addr", "inet_proto", "inet_service"], "flags": ["timeout"],
            "elem": [{"elem": {"val": {"concat": ["192.0.2.7", "10.0.0.2", "tcp", 22]}, "timeout": 30, "expires": 21, "comment": "nat_55000_10.0.0.2_22_masq"}}]}},
          {"set": {"family": "inet", "name": "local6", "table": "postern", "type": ["ipv6_addr", "inet_proto", "inet_service"], "flags": ["timeout"],
            "elem": [{"elem": {"val": {"concat": ["fd00::7", "udp", 53]}, "timeout": 30, "expires": 9, "comment": "nat_5353_fd00::1_53_local"}}]}},
          {"chain": {"family": "inet", "table": "postern", "name": "prerouting", "type": "nat", "hook": "prerouting", "prio": -100}}]}"#;
        let s = parse_table(json).unwrap();
        assert_eq!(
            s.grants.len(),
            2,
            "the element without postern's comment is not a grant: {:?}",
            s.grants
        );
        assert_eq!(
            s.grants[0].rule.to_string(),
            "192.0.2.7 -> tcp/55000 (NAT to 10.0.0.2:22)"
        );
        assert_eq!(s.grants[0].remaining_secs, Some(21));
        let nat = s.grants[1].rule.nat.as_ref().unwrap();
        assert!(
            nat.local && s.grants[1].rule.port == 5353,
            "{:?}",
            s.grants[1]
        );
        assert_eq!(s.existing.chains.get("prerouting"), Some(&Some(-100)));
        assert!(s.existing.sets.contains("dnat4") && s.existing.sets.contains("fwd4"));
    }
}
