//! Finding rules outside postern's table that would drop what postern grants.
//!
//! Every base chain on a hook sees the packet: an `accept` in postern's chain only
//! ends postern's chain, and a `drop` in any other table (or in iptables, which
//! hooks into the same points) still drops it. postern cannot override that, so
//! posternd warns at start. The check is a heuristic: it reports base chains on
//! `input`/`prerouting` (and `forward` when postern forwards: NAT, Docker) with
//! policy drop, and rules there that drop or reject unconditionally, unless
//! they accept postern's `grant_mark` first.

use crate::config::TableFamily;
use serde_json::Value;
use std::fmt;

/// One place that may drop granted packets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShadowWarning {
    /// `nft inet filter input` or `iptables-legacy filter INPUT`.
    pub location: String,
    pub reason: String,
}

impl fmt::Display for ShadowWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}; packets postern grants are dropped there unless it accepts them \
             (an accept in postern's own table cannot override a drop elsewhere). \
             Accept granted traffic there (set grant_mark and add `meta mark & MARK == MARK accept`), \
             or let postern close the ports itself (`protected`) and relax that rule",
            self.location, self.reason
        )
    }
}

/// The hooks where a drop elsewhere defeats postern's grants.
fn hooks(forward: bool) -> &'static [&'static str] {
    if forward {
        &["input", "prerouting", "forward"]
    } else {
        &["input", "prerouting"]
    }
}

/// Inspects `nft -j list ruleset` output; postern's own table is skipped.
/// `forward`: postern forwards traffic (NAT, Docker), so the forward hook counts too.
pub fn shadowing_in_ruleset(
    json: &str,
    family: TableFamily,
    own_table: &str,
    grant_mark: Option<u32>,
    forward: bool,
) -> Vec<ShadowWarning> {
    let Ok(doc) = serde_json::from_str::<Value>(json) else {
        return Vec::new();
    };
    let objects = doc
        .get("nftables")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let relevant = |fam: &str, table: &str| {
        let fam_ok = match fam {
            "inet" => true,
            "ip" => family.has_v4(),
            "ip6" => family.has_v6(),
            _ => false,
        };
        fam_ok && !(fam == family.name() && table == own_table)
    };
    let mut warnings = Vec::new();
    for chain in objects.iter().filter_map(|o| o.get("chain")) {
        let field = |k: &str| chain.get(k).and_then(Value::as_str).unwrap_or_default();
        let (fam, table, name, hook) = (
            field("family"),
            field("table"),
            field("name"),
            field("hook"),
        );
        if !hooks(forward).contains(&hook) || !relevant(fam, table) {
            continue;
        }
        let rules: Vec<&Value> = objects
            .iter()
            .filter_map(|o| o.get("rule"))
            .filter(|r| {
                let f = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or_default();
                f("family") == fam && f("table") == table && f("chain") == name
            })
            .filter_map(|r| r.get("expr"))
            .collect();
        if grant_mark.is_some() && rules.iter().any(|e| accepts_mark(e)) {
            continue;
        }
        let location = format!("nft {fam} {table} {name}");
        let prio = chain.get("prio").map(|p| p.to_string()).unwrap_or_default();
        if field("policy") == "drop" {
            warnings.push(ShadowWarning {
                location: location.clone(),
                reason: format!("hook {hook} priority {prio} has policy drop"),
            });
        }
        if rules.iter().any(|e| unconditional_drop(e)) {
            warnings.push(ShadowWarning {
                location,
                reason: format!("hook {hook} priority {prio} drops or rejects unconditionally"),
            });
        }
    }
    warnings
}

/// A rule with no match statement whose verdict is drop or reject.
fn unconditional_drop(expr: &Value) -> bool {
    let Some(stmts) = expr.as_array() else {
        return false;
    };
    let has_match = stmts
        .iter()
        .any(|s| s.get("match").is_some() || s.get("xt").is_some());
    let drops = stmts
        .iter()
        .any(|s| s.get("drop").is_some() || s.get("reject").is_some());
    drops && !has_match
}

/// A rule that looks at the packet mark and accepts.
fn accepts_mark(expr: &Value) -> bool {
    let text = expr.to_string();
    text.contains(r#"{"meta":{"key":"mark"}}"#) && text.contains(r#""accept""#)
}

/// Inspects `iptables-legacy-save` (or `ip6tables-legacy-save`) output: these
/// rules live outside nftables and never show in `nft list ruleset`.
pub fn shadowing_in_iptables_save(
    save: &str,
    tool: &str,
    grant_mark: Option<u32>,
    forward: bool,
) -> Vec<ShadowWarning> {
    let mut warnings = Vec::new();
    let mut table = "";
    let chains: &[&str] = if forward {
        &["INPUT", "PREROUTING", "FORWARD"]
    } else {
        &["INPUT", "PREROUTING"]
    };
    let accepts_mark = grant_mark.is_some()
        && save
            .lines()
            .any(|l| l.contains("-m mark") && l.contains("-j ACCEPT"));
    if accepts_mark {
        return warnings;
    }
    for line in save.lines().map(str::trim) {
        if let Some(t) = line.strip_prefix('*') {
            table = t;
        } else if let Some(rest) = line.strip_prefix(':') {
            let mut parts = rest.split_whitespace();
            if let (Some(chain), Some("DROP")) = (parts.next(), parts.next()) {
                if chains.contains(&chain) {
                    warnings.push(ShadowWarning {
                        location: format!("{tool} {table} {chain}"),
                        reason: "policy DROP".into(),
                    });
                }
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let mut parts = rest.split_whitespace();
            let chain = parts.next().unwrap_or_default();
            let (next, target) = (parts.next(), parts.next());
            if chains.contains(&chain)
                && next == Some("-j")
                && matches!(target, Some("DROP" | "REJECT"))
            {
                warnings.push(ShadowWarning {
                    location: format!("{tool} {table} {chain}"),
                    reason: format!("`{line}` drops or rejects unconditionally"),
                });
            }
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULESET: &str = r#"{"nftables": [{"metainfo": {}},
      {"chain": {"family": "inet", "table": "postern", "name": "input", "hook": "input", "prio": -10, "policy": "accept"}},
      {"rule": {"family": "inet", "table": "postern", "chain": "input", "expr": [{"drop": null}]}},
      {"chain": {"family": "inet", "table": "filter", "name": "input", "hook": "input", "prio": 0, "policy": "drop"}},
      {"rule": {"family": "inet", "table": "filter", "chain": "input", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 80}}, {"accept": null}]}},
      {"chain": {"family": "ip", "table": "filter", "name": "INPUT", "hook": "input", "prio": 0, "policy": "accept"}},
      {"rule": {"family": "ip", "table": "filter", "chain": "INPUT", "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}},
      {"chain": {"family": "ip6", "table": "six", "name": "in", "hook": "input", "prio": 0, "policy": "drop"}},
      {"chain": {"family": "inet", "table": "filter", "name": "output", "hook": "output", "prio": 0, "policy": "drop"}}]}"#;

    #[test]
    fn reports_drop_policies_and_catch_all_drops_but_not_our_table() {
        let w = shadowing_in_ruleset(RULESET, TableFamily::Inet, "postern", None, false);
        let locs: Vec<&str> = w.iter().map(|w| w.location.as_str()).collect();
        assert_eq!(
            locs,
            [
                "nft inet filter input",
                "nft ip filter INPUT",
                "nft ip6 six in"
            ],
            "{w:?}"
        );
        assert!(
            w[0].to_string().contains("policy drop") && w[0].to_string().contains("grant_mark")
        );
        // For an `ip postern` table, `inet postern` is somebody else's; ip6 is irrelevant.
        let v4_only = shadowing_in_ruleset(RULESET, TableFamily::Ip, "postern", None, false);
        let locs: Vec<&str> = v4_only.iter().map(|w| w.location.as_str()).collect();
        assert_eq!(
            locs,
            [
                "nft inet postern input",
                "nft inet filter input",
                "nft ip filter INPUT"
            ]
        );
        // With NAT, a forward chain with policy drop counts too.
        let fwd = RULESET.replace(
            r#""name": "output", "hook": "output""#,
            r#""name": "fwd", "hook": "forward""#,
        );
        assert_eq!(
            shadowing_in_ruleset(&fwd, TableFamily::Inet, "postern", None, false).len(),
            3
        );
        let w = shadowing_in_ruleset(&fwd, TableFamily::Inet, "postern", None, true);
        assert_eq!(w.last().unwrap().location, "nft inet filter fwd", "{w:?}");
    }

    #[test]
    fn a_chain_that_accepts_the_grant_mark_is_fine() {
        let json = r#"{"nftables": [
          {"chain": {"family": "inet", "table": "filter", "name": "input", "hook": "input", "prio": 0, "policy": "drop"}},
          {"rule": {"family": "inet", "table": "filter", "chain": "input", "expr": [{"match": {"op": "==", "left": {"&": [{"meta":{"key":"mark"}}, 256]}, "right": 256}}, {"accept": null}]}}]}"#;
        assert!(
            shadowing_in_ruleset(json, TableFamily::Inet, "postern", Some(256), false).is_empty()
        );
        assert_eq!(
            shadowing_in_ruleset(json, TableFamily::Inet, "postern", None, false).len(),
            1
        );
    }

    #[test]
    fn legacy_iptables_policy_and_catch_all() {
        let save = "# Generated\n*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n-A INPUT -p tcp --dport 80 -j ACCEPT\n-A INPUT -j REJECT --reject-with icmp-port-unreachable\nCOMMIT\n";
        let w = shadowing_in_iptables_save(save, "iptables-legacy", None, false);
        assert_eq!(w.len(), 2, "{w:?}");
        assert_eq!(w[0].location, "iptables-legacy filter INPUT");
        assert!(shadowing_in_iptables_save("", "iptables-legacy", None, false).is_empty());
        let router = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\nCOMMIT\n";
        assert!(shadowing_in_iptables_save(router, "iptables-legacy", None, false).is_empty());
        assert_eq!(
            shadowing_in_iptables_save(router, "iptables-legacy", None, true)[0].location,
            "iptables-legacy filter FORWARD"
        );
    }
}
