//! Planning the restore lines that make one chain hold the wanted grants.

use crate::chains::Role;
use crate::config::ChainSpec;
use crate::rules::{join, role_spec, ListedRule};
use spa_core::firewall::Rule;
use std::collections::{HashMap, HashSet};

/// Restore-file lines for one table, the lines that would undo them, and what
/// they change in each chain (to keep the backend's picture of it current).
#[derive(Default, Debug)]
pub struct Plan {
    pub lines: Vec<String>,
    pub undo: Vec<String>,
    pub changes: Vec<ChainChange>,
}

impl Plan {
    pub fn extend(&mut self, other: Plan) {
        self.lines.extend(other.lines);
        self.undo.extend(other.undo);
        self.changes.extend(other.changes);
    }
}

/// The rules a plan deletes from one chain and those it adds.
#[derive(Debug)]
pub struct ChainChange {
    pub role: Role,
    pub removed: Vec<String>,
    pub added: Vec<ListedRule>,
}

impl ChainChange {
    /// `listed` as it is once the change is committed (order aside).
    pub fn apply_to(&self, listed: &mut Vec<ListedRule>) {
        let removed: HashSet<&str> = self.removed.iter().map(String::as_str).collect();
        listed.retain(|r| !removed.contains(r.spec.as_str()));
        listed.extend(self.added.iter().cloned());
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
    let mut added = Vec::new();
    // Every rule of the chain by the grant it makes: one pass, however long the chain.
    let mut by_grant: HashMap<&Rule, Vec<(&str, u64)>> = HashMap::new();
    for r in listed {
        if let Some((g, exp)) = &r.grant {
            by_grant.entry(g).or_default().push((r.spec.as_str(), *exp));
        }
    }
    for (rule, expires_at) in wanted {
        let existing = by_grant.get(rule).map(Vec::as_slice).unwrap_or_default();
        let current = existing.iter().map(|(_, exp)| *exp).max();
        if existing.len() == 1 && current >= Some(*expires_at) {
            continue; // already open at least that long; a refresh never shortens
        }
        for (spec, _) in existing {
            deletes.push(format!("-D {chain} {spec}"));
            old_specs.push(spec.to_string());
        }
        let expiry = current.unwrap_or(0).max(*expires_at);
        let spec = join(&role_spec(role, rule, expiry, target));
        added.push(ListedRule {
            spec: spec.clone(),
            grant: Some((rule.clone(), expiry)),
        });
        inserts.push(spec);
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
    plan.changes.push(ChainChange {
        role,
        removed: old_specs,
        added,
    });
    plan
}
