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

use crate::keys::{elements, Element, SetId};
use crate::netlink::batch::{self, Batch, ElemOp, SetTarget};
use nftables::expr::{Elem, Expression, NamedExpression};
use nftables::schema::{FlushObject, NfCmd, NfListObject, Nftables, Set};
use spa_core::firewall::Rule;
use std::collections::hash_map::{Entry, HashMap};
use std::collections::BTreeMap;

/// Elements per set, deduplicated by key (the last one wins: a key twice in one
/// delete message would fail the batch with ENOENT), each with its timeout.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetChange {
    pub by_set: BTreeMap<SetId, Vec<(Element, Option<u32>)>>,
}

impl SetChange {
    /// The elements of each rule (one for a plain grant, several for NAT).
    pub fn new<'a>(items: impl IntoIterator<Item = (&'a Rule, Option<u32>)>) -> SetChange {
        let mut change = SetChange::default();
        change.extend(
            items
                .into_iter()
                .flat_map(|(rule, timeout)| elements(rule).into_iter().map(move |e| (e, timeout))),
        );
        change
    }

    /// Add `items`; a key already there keeps its place and takes the new
    /// element. Keys are found through a hash of their places, not a scan: a
    /// burst's batch of 1,024 grants compared half a million keys that way.
    pub fn extend(&mut self, items: impl IntoIterator<Item = (Element, Option<u32>)>) {
        let mut places: HashMap<(SetId, Vec<u8>), usize> = self
            .by_set
            .iter()
            .flat_map(|(set, list)| {
                list.iter()
                    .enumerate()
                    .map(|(i, (e, _))| ((*set, e.key.clone()), i))
            })
            .collect();
        for (element, timeout) in items {
            let list = self.by_set.entry(element.set).or_default();
            match places.entry((element.set, element.key.clone())) {
                Entry::Occupied(at) => list[*at.get()] = (element, timeout),
                Entry::Vacant(at) => {
                    at.insert(list.len());
                    list.push((element, timeout));
                }
            }
        }
    }

    /// Keep only the elements `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&Element) -> bool) {
        for list in self.by_set.values_mut() {
            list.retain(|(e, _)| keep(e));
        }
        self.by_set.retain(|_, list| !list.is_empty());
    }

    pub fn is_empty(&self) -> bool {
        self.by_set.values().all(Vec::is_empty)
    }

    /// True if any element is a map element (its add can clash with the same
    /// key holding other data).
    pub fn has_map_elements(&self) -> bool {
        self.by_set.keys().any(|s| s.data_type().is_some())
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
pub fn to_netlink(
    batch: &mut Batch,
    family: u8,
    table: &str,
    change: Change,
    set_change: &SetChange,
) {
    for (set, items) in &set_change.by_set {
        let name = set.name();
        let target = SetTarget {
            family,
            table,
            set: &name,
        };
        for op in steps(change) {
            let elements: Vec<batch::Element> = items
                .iter()
                .map(|(e, t)| batch::Element {
                    key: e.key.clone(),
                    timeout_ms: (*op == ElemOp::Add)
                        .then(|| u64::from(timeout_for(change, *t)) * 1000),
                    data: e.data.clone(),
                    comment: e.comment.clone(),
                })
                .collect();
            batch.set_elements(*op, target, &elements);
        }
    }
}

/// Appends a flush of `sets` to a netlink batch.
pub fn flush_netlink(batch: &mut Batch, family: u8, table: &str, sets: &[SetId]) {
    for set in sets {
        let name = set.name();
        batch.flush_set(SetTarget {
            family,
            table,
            set: &name,
        });
    }
}

/// Appends the change to an nft JSON batch.
pub fn to_nft_json(
    batch: &mut nftables::batch::Batch<'static>,
    config_family: nftables::types::NfFamily,
    table: &str,
    change: Change,
    set_change: &SetChange,
) {
    for (set, items) in &set_change.by_set {
        for op in steps(change) {
            let elem: Vec<Expression> = items
                .iter()
                .map(|(e, t)| match op {
                    ElemOp::Add => {
                        let key = Expression::Named(NamedExpression::Elem(Elem {
                            val: Box::new(e.key_json.clone()),
                            timeout: Some(timeout_for(change, *t)),
                            expires: None,
                            comment: e.comment.clone().map(Into::into),
                            counter: None,
                        }));
                        match &e.data_json {
                            Some(data) => Expression::List(vec![key, data.clone()]),
                            None => key,
                        }
                    }
                    ElemOp::Delete => e.key_json.clone(),
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
}

/// A flush of `sets` as an nft JSON document.
pub fn flush_nft_json(
    config_family: nftables::types::NfFamily,
    table: &str,
    sets: &[SetId],
) -> Nftables<'static> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{Fam, Kind};
    use spa_core::firewall::NatRule;
    use spa_core::request::Proto;

    fn rule(src: &str, port: u16) -> Rule {
        Rule::new(src.parse().unwrap(), Proto::Tcp, port)
    }

    #[test]
    fn duplicates_in_one_change_collapse_to_the_last() {
        let (a, b) = (rule("10.0.0.1", 22), rule("fd00::1", 22));
        let c = SetChange::new([(&a, Some(30)), (&b, Some(5)), (&a, Some(60))]);
        let v4 = &c.by_set[&SetId::new(Kind::Grants, Fam::V4)];
        assert_eq!((v4.len(), v4[0].1), (1, Some(60)));
        assert_eq!(c.by_set[&SetId::new(Kind::Grants, Fam::V6)].len(), 1);
    }

    #[test]
    fn a_key_met_again_keeps_its_place_and_takes_the_new_element() {
        let rules: Vec<Rule> = (1..=300)
            .map(|i| rule(&format!("10.0.{}.{}", i / 250, i % 250), 22))
            .collect();
        let mut c = SetChange::new(rules.iter().map(|r| (r, Some(30))));
        c.extend(elements(&rules[7]).into_iter().map(|e| (e, Some(90))));
        c.extend(
            elements(&rule("10.9.9.9", 22))
                .into_iter()
                .map(|e| (e, None)),
        );
        let v4 = &c.by_set[&SetId::new(Kind::Grants, Fam::V4)];
        assert_eq!(v4.len(), 301);
        assert_eq!(v4[7], (elements(&rules[7]).remove(0), Some(90)));
        assert_eq!(v4[6].1, Some(30));
        assert_eq!(v4[300], (elements(&rule("10.9.9.9", 22)).remove(0), None));
    }

    #[test]
    fn grant_renders_add_delete_add_in_one_document() {
        let a = rule("10.0.0.1", 22);
        let c = SetChange::new([(&a, Some(30))]);
        let mut batch = nftables::batch::Batch::new();
        to_nft_json(
            &mut batch,
            nftables::types::NfFamily::INet,
            "postern",
            Change::Grant,
            &c,
        );
        let j = serde_json::to_string(&batch.to_nftables()).unwrap();
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
        to_netlink(
            &mut batch,
            1,
            "postern",
            Change::Revoke,
            &SetChange::new([(&a, None)]),
        );
        let f = batch.finish();
        assert_eq!(f.acked.len(), 2);
        assert!(
            f.acked[0].1.starts_with("adding 1") && f.acked[1].1.starts_with("deleting 1"),
            "{:?}",
            f.acked
        );
    }

    #[test]
    fn nat_map_elements_render_as_key_data_pairs_with_comments() {
        let mut r = rule("10.0.0.1", 55000);
        r.nat = Some(NatRule {
            to_addr: "192.168.1.2".parse().unwrap(),
            to_port: 22,
            local: false,
            snat: None,
            dnat: true,
            forward_all: false,
        });
        let c = SetChange::new([(&r, Some(30))]);
        assert!(c.has_map_elements());
        let mut batch = nftables::batch::Batch::new();
        to_nft_json(
            &mut batch,
            nftables::types::NfFamily::INet,
            "postern",
            Change::Grant,
            &c,
        );
        let j = serde_json::to_string(&batch.to_nftables()).unwrap();
        let add = r#"{"add":{"element":{"family":"inet","table":"postern","name":"dnat4","elem":[[{"elem":{"val":{"concat":["10.0.0.1","tcp",55000]},"timeout":30,"expires":null,"comment":"nat_55000_192.168.1.2_22","counter":null}},"192.168.1.2"]]}}}"#;
        assert!(j.contains(add), "{j}");
        assert!(j.contains(r#""name":"dnatport4","elem":[[{"elem":{"val":{"concat":["10.0.0.1","tcp",55000]},"timeout":30,"expires":null,"comment":"nat_55000_192.168.1.2_22","counter":null}},22]]"#), "{j}");
        assert!(j.contains(r#"{"delete":{"element":{"family":"inet","table":"postern","name":"fwd4","elem":[{"concat":["10.0.0.1","192.168.1.2","tcp",22]}]}}}"#), "{j}");
    }

    /// The netlink batch of a forward NAT grant, decoded message by message:
    /// add · delete · add per set, map data and the comment as nft stores them.
    #[test]
    fn nat_grant_netlink_messages() {
        use crate::netlink::batch::find_attr;
        let mut r = rule("192.0.2.7", 55000);
        r.nat = Some(NatRule {
            to_addr: "10.0.0.2".parse().unwrap(),
            to_port: 22,
            local: false,
            snat: Some(spa_core::firewall::Snat::Masquerade),
            dnat: true,
            forward_all: false,
        });
        let mut batch = Batch::new(100);
        to_netlink(
            &mut batch,
            1,
            "postern",
            Change::Grant,
            &SetChange::new([(&r, Some(30))]),
        );
        let f = batch.finish();
        let mut rest = &f.bytes[20..f.bytes.len() - 20]; // without BATCH_BEGIN/END
        let mut seen = Vec::new();
        let tag = b"nat_55000_10.0.0.2_22_masq\0";
        while !rest.is_empty() {
            let len = u32::from_ne_bytes(rest[..4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes([rest[4], rest[5]]) & 0xff;
            let attrs = &rest[20..len];
            let set = String::from_utf8(find_attr(attrs, 2).unwrap().to_vec()).unwrap();
            let elem = find_attr(find_attr(attrs, 3).unwrap(), 1).unwrap();
            let key = find_attr(find_attr(elem, 1).unwrap(), 1).unwrap().to_vec();
            let data = find_attr(elem, 2).map(|d| find_attr(d, 1).unwrap().to_vec());
            let user = find_attr(elem, 6).map(<[u8]>::to_vec);
            if kind == 12 {
                assert_eq!(find_attr(elem, 4), Some(&30_000u64.to_be_bytes()[..]));
                let mut want = vec![0, tag.len() as u8];
                want.extend_from_slice(tag);
                assert_eq!(user.as_deref(), Some(&want[..]), "{set}");
            }
            seen.push((kind, set.trim_end_matches('\0').to_string(), key, data));
            rest = &rest[len..];
        }
        let flow = vec![192, 0, 2, 7, 10, 0, 0, 2, 6, 0, 0, 0, 0, 22, 0, 0];
        let outer = vec![192, 0, 2, 7, 6, 0, 0, 0, 0xd6, 0xd8, 0, 0];
        let expect = |set: &str, key: &Vec<u8>, data: Option<Vec<u8>>| {
            vec![
                (12, set.to_string(), key.clone(), data.clone()),
                (14, set.to_string(), key.clone(), None),
                (12, set.to_string(), key.clone(), data),
            ]
        };
        let mut want = expect("dnat4", &outer, Some(vec![10, 0, 0, 2]));
        want.extend(expect("dnatport4", &outer, Some(vec![0, 22])));
        want.extend(expect("fwd4", &flow, None));
        want.extend(expect("masq4", &flow, None));
        assert_eq!(seen, want);
        assert_eq!(f.acked.len(), 12);
    }
}
