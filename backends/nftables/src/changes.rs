//! One change to the grant sets (grant, revoke, flush), rendered for either path:
//! a netlink batch (fast) or an `nft -j -f -` document (the measured alternative).
//!
//! Both render the same transaction:
//! - grant:  add(all, timeout) · delete(all) · add(all, timeout). The first add makes
//!   every element exist, so the delete cannot fail with ENOENT; the second add
//!   re-creates it with a fresh timeout. Kernels ≥ 6.10 refresh on a plain add,
//!   older ones keep the old timeout, so this works everywhere and never duplicates.
//! - revoke: add(all, 1 s) · delete(all): missing elements are not an error.
//! - flush:  delete every element of each grant set.

use crate::keys::{key_bytes, GrantSet};
use crate::netlink::batch::{Batch, ElemOp, Element, SetTarget};
use nftables::expr::{Elem, Expression, NamedExpression};
use nftables::schema::{FlushObject, NfCmd, NfListObject, Nftables, Set};
use spa_core::firewall::Rule;
use std::collections::BTreeMap;

/// Elements per grant set, deduplicated (the last opening of a rule wins: a
/// key twice in one delete message would fail the batch with ENOENT).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetChange {
    pub by_set: BTreeMap<GrantSet, Vec<(Rule, Option<u32>)>>,
}

impl SetChange {
    pub fn new<'a>(items: impl IntoIterator<Item = (&'a Rule, Option<u32>)>) -> SetChange {
        let mut by_set: BTreeMap<GrantSet, Vec<(Rule, Option<u32>)>> = BTreeMap::new();
        for (rule, timeout) in items {
            let list = by_set.entry(GrantSet::of(rule.source)).or_default();
            match list.iter_mut().find(|(r, _)| r.source == rule.source && r.proto == rule.proto && r.port == rule.port) {
                Some(slot) => slot.1 = timeout,
                None => list.push((rule.clone(), timeout)),
            }
        }
        SetChange { by_set }
    }

    pub fn is_empty(&self) -> bool {
        self.by_set.values().all(Vec::is_empty)
    }
}

/// What to do with a [`SetChange`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Grant,
    Revoke,
}

/// Seconds a revoke's placeholder lives; it is deleted in the same transaction.
const PLACEHOLDER_SECS: u32 = 1;

fn steps(change: Change) -> &'static [ElemOp] {
    match change {
        Change::Grant => &[ElemOp::Add, ElemOp::Delete, ElemOp::Add],
        Change::Revoke => &[ElemOp::Add, ElemOp::Delete],
    }
}

fn timeout_for(change: Change, requested: Option<u32>) -> u32 {
    match change {
        Change::Grant => requested.unwrap_or(PLACEHOLDER_SECS),
        Change::Revoke => PLACEHOLDER_SECS,
    }
}

/// Appends the change to a netlink batch.
pub fn to_netlink(batch: &mut Batch, family: u8, table: &str, change: Change, set_change: &SetChange) {
    for (set, items) in &set_change.by_set {
        let target = SetTarget { family, table, set: set.name() };
        for op in steps(change) {
            let elements: Vec<Element> = items
                .iter()
                .map(|(rule, t)| Element {
                    key: key_bytes(rule),
                    timeout_ms: (*op == ElemOp::Add).then(|| u64::from(timeout_for(change, *t)) * 1000),
                })
                .collect();
            batch.set_elements(*op, target, &elements);
        }
    }
}

/// Appends a flush of `sets` to a netlink batch.
pub fn flush_netlink(batch: &mut Batch, family: u8, table: &str, sets: &[GrantSet]) {
    for set in sets {
        batch.flush_set(SetTarget { family, table, set: set.name() });
    }
}

/// The same change as an nft JSON document.
pub fn to_nft_json(config_family: nftables::types::NfFamily, table: &str, change: Change, set_change: &SetChange) -> Nftables<'static> {
    let mut batch = nftables::batch::Batch::new();
    for (set, items) in &set_change.by_set {
        for op in steps(change) {
            let elem: Vec<Expression> = items
                .iter()
                .map(|(rule, t)| {
                    let val = element_value(rule);
                    match op {
                        ElemOp::Add => Expression::Named(NamedExpression::Elem(Elem {
                            val: Box::new(val),
                            timeout: Some(timeout_for(change, *t)),
                            expires: None,
                            comment: None,
                            counter: None,
                        })),
                        ElemOp::Delete => val,
                    }
                })
                .collect();
            let obj = NfListObject::Element(nftables::schema::Element {
                family: config_family,
                table: table.to_string().into(),
                name: set.name().into(),
                elem: elem.into(),
            });
            match op {
                ElemOp::Add => batch.add(obj),
                ElemOp::Delete => batch.delete(obj),
            }
        }
    }
    batch.to_nftables()
}

/// A flush of `sets` as an nft JSON document.
pub fn flush_nft_json(config_family: nftables::types::NfFamily, table: &str, sets: &[GrantSet]) -> Nftables<'static> {
    let mut batch = nftables::batch::Batch::new();
    for set in sets {
        batch.add_cmd(NfCmd::Flush(FlushObject::Set(Box::new(Set {
            family: config_family,
            table: table.to_string().into(),
            name: set.name().into(),
            ..Set::default()
        }))));
    }
    batch.to_nftables()
}

fn element_value(rule: &Rule) -> Expression<'static> {
    Expression::Named(NamedExpression::Concat(vec![
        Expression::String(rule.source.to_string().into()),
        Expression::String(rule.proto.name().into()),
        Expression::Number(u32::from(rule.port)),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use spa_core::request::Proto;

    fn rule(src: &str, port: u16) -> Rule {
        Rule { source: src.parse().unwrap(), proto: Proto::Tcp, port, nat: None }
    }

    #[test]
    fn duplicates_in_one_change_collapse_to_the_last() {
        let (a, b) = (rule("10.0.0.1", 22), rule("fd00::1", 22));
        let c = SetChange::new([(&a, Some(30)), (&b, Some(5)), (&a, Some(60))]);
        assert_eq!(c.by_set[&GrantSet::V4], vec![(a, Some(60))]);
        assert_eq!(c.by_set[&GrantSet::V6].len(), 1);
    }

    #[test]
    fn grant_renders_add_delete_add_in_one_document() {
        let a = rule("10.0.0.1", 22);
        let c = SetChange::new([(&a, Some(30))]);
        let j = serde_json::to_string(&to_nft_json(nftables::types::NfFamily::INet, "postern", Change::Grant, &c)).unwrap();
        let add = r#"{"add":{"element":{"family":"inet","table":"postern","name":"grants4","elem":[{"elem":{"val":{"concat":["10.0.0.1","tcp",22]},"timeout":30"#;
        let del = r#"{"delete":{"element":{"family":"inet","table":"postern","name":"grants4","elem":[{"concat":["10.0.0.1","tcp",22]}]}}}"#;
        assert_eq!(j.matches(add).count(), 2, "{j}");
        assert_eq!(j.matches(del).count(), 1, "{j}");
        assert!(j.find(del).unwrap() < j.rfind(add).unwrap());
    }

    #[test]
    fn revoke_renders_placeholder_then_delete_as_netlink() {
        let a = rule("10.0.0.1", 22);
        let mut batch = Batch::new(1);
        to_netlink(&mut batch, 1, "postern", Change::Revoke, &SetChange::new([(&a, None)]));
        let f = batch.finish();
        assert_eq!(f.acked.len(), 2);
        assert!(f.acked[0].1.starts_with("adding 1") && f.acked[1].1.starts_with("deleting 1"), "{:?}", f.acked);
    }
}
