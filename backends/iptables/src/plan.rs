//! Planning the restore lines that make one chain hold the wanted grants.

use crate::chains::Role;
use crate::config::ChainSpec;
use crate::rules::{join, role_spec, ListedRule};
use spa_core::firewall::Rule;
use std::collections::HashMap;

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

/// The rules a plan deletes from one chain and those it adds, by grant.
#[derive(Debug)]
pub struct ChainChange {
    pub role: Role,
    pub removed: Vec<(Rule, String)>,
    pub added: Vec<(Rule, String, u64)>,
}

/// A chain's rules indexed by the grant each makes (the others only counted):
/// what planning needs, looked up per wanted rule, however long the chain.
#[derive(Clone, Debug, Default)]
pub struct ChainRules {
    grants: HashMap<Rule, Vec<(String, u64)>>,
    len: usize,
}

impl ChainRules {
    pub fn from_listing(listed: Vec<ListedRule>) -> Self {
        let mut rules = ChainRules {
            len: listed.len(),
            ..ChainRules::default()
        };
        for r in listed {
            if let Some((rule, exp)) = r.grant {
                rules.grants.entry(rule).or_default().push((r.spec, exp));
            }
        }
        rules
    }

    /// The rules (spec, expiry) that make `rule`.
    pub fn of(&self, rule: &Rule) -> &[(String, u64)] {
        self.grants.get(rule).map(Vec::as_slice).unwrap_or_default()
    }

    /// Rules in the chain, grants or not.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The chain once `change` is committed.
    pub fn apply(&mut self, change: &ChainChange) {
        for (rule, spec) in &change.removed {
            if let Some(specs) = self.grants.get_mut(rule) {
                let before = specs.len();
                specs.retain(|(s, _)| s != spec);
                self.len -= before - specs.len();
                if specs.is_empty() {
                    self.grants.remove(rule);
                }
            }
        }
        for (rule, spec, exp) in &change.added {
            self.grants
                .entry(rule.clone())
                .or_default()
                .push((spec.clone(), *exp));
            self.len += 1;
        }
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
    listed: &ChainRules,
    wanted: &[(Rule, u64)],
) -> Plan {
    let ChainSpec {
        chain,
        target,
        rule_position,
        ..
    } = spec;
    let (mut deletes, mut inserts, mut old_specs) = (Vec::new(), Vec::new(), Vec::new());
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    for (rule, expires_at) in wanted {
        let existing = listed.of(rule);
        let current = existing.iter().map(|(_, exp)| *exp).max();
        if existing.len() == 1 && current >= Some(*expires_at) {
            continue; // already open at least that long; a refresh never shortens
        }
        for (spec, _) in existing {
            deletes.push(format!("-D {chain} {spec}"));
            old_specs.push(spec.to_string());
            removed.push((rule.clone(), spec.clone()));
        }
        let expiry = current.unwrap_or(0).max(*expires_at);
        let spec = join(&role_spec(role, rule, expiry, target));
        added.push((rule.clone(), spec.clone(), expiry));
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
        removed,
        added,
    });
    plan
}
