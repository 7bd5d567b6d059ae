//! Planning the restore lines that make one chain hold the wanted grants.

use crate::chains::Role;
use crate::config::ChainSpec;
use crate::rules::{join, role_spec, ListedRule};
use spa_core::firewall::Rule;

/// Restore-file lines for one table, and the lines that would undo them.
#[derive(Default, Debug)]
pub struct Plan {
    pub lines: Vec<String>,
    pub undo: Vec<String>,
}

impl Plan {
    pub fn extend(&mut self, other: Plan) {
        self.lines.extend(other.lines);
        self.undo.extend(other.undo);
    }
}

/// Insert or refresh `wanted` (deduplicated, each with the expiry it should
/// have) in one chain, against its listing: at the chain's `rule_position`,
/// at the top with `prepend = Some(true)`, at the end with `Some(false)`. A rule already there once with
/// that expiry or later is left alone; otherwise every copy (fwknopd could
/// leave duplicates) is replaced by one rule, so a refresh never duplicates.
pub fn plan_chain(
    role: Role,
    spec: &ChainSpec,
    prepend: Option<bool>,
    listed: &[ListedRule],
    wanted: &[(Rule, u64)],
) -> Plan {
    let ChainSpec {
        chain,
        target,
        rule_position,
        ..
    } = spec;
    let (mut deletes, mut inserts, mut old_specs) = (Vec::new(), Vec::new(), Vec::new());
    for (rule, expires_at) in wanted {
        let existing: Vec<(&str, u64)> = listed
            .iter()
            .filter_map(|r| {
                r.grant
                    .as_ref()
                    .filter(|(g, _)| g == rule)
                    .map(|(_, exp)| (r.spec.as_str(), *exp))
            })
            .collect();
        let current = existing.iter().map(|(_, exp)| *exp).max();
        if existing.len() == 1 && current >= Some(*expires_at) {
            continue; // already open at least that long; a refresh never shortens
        }
        for (spec, _) in &existing {
            deletes.push(format!("-D {chain} {spec}"));
            old_specs.push(spec.to_string());
        }
        let expiry = current.unwrap_or(0).max(*expires_at);
        inserts.push(join(&role_spec(role, rule, expiry, target)));
    }
    let remaining = listed.len() - deletes.len();
    let placement = match prepend {
        Some(false) => format!("-A {chain}"),
        Some(true) => format!("-I {chain} 1"),
        None => format!(
            "-I {chain} {}",
            (*rule_position as usize).min(remaining + 1)
        ),
    };
    let mut plan = Plan::default();
    plan.lines.extend(deletes);
    plan.lines
        .extend(inserts.iter().map(|spec| format!("{placement} {spec}")));
    plan.undo
        .extend(inserts.iter().map(|spec| format!("-D {chain} {spec}")));
    plan.undo
        .extend(old_specs.iter().map(|spec| format!("{placement} {spec}")));
    plan
}
