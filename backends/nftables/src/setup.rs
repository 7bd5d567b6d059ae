//! The table, sets and chain postern owns, as one `nft -j -f -` transaction.
//!
//! Built with the `nftables` crate's JSON model: setup runs once at start, so
//! clarity beats speed here. Re-running it is harmless: `add` of an existing
//! table/set is a no-op (grant sets keep their live, kernel-timed elements), and
//! the chain and the `protected` set are flushed and refilled in the same batch.

use crate::config::NftablesConfig;
use crate::keys::GrantSet;
use nftables::batch::Batch;
use nftables::expr::{BinaryOperation, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, CT};
use nftables::schema::{Chain, FlushObject, NfCmd, NfListObject, Nftables, Set, SetFlag, SetType, SetTypeValue, Table};
use nftables::stmt::{Accept, Counter, Drop, Mangle, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfHook};
use std::borrow::Cow;
use std::collections::HashSet;

/// Name of postern's input chain.
pub const INPUT_CHAIN: &str = "input";
/// Name of the set of `proto . port` postern closes.
pub const PROTECTED_SET: &str = "protected";

/// What init found in the kernel before applying (from `nft -j list table`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExistingTable {
    /// Priority of postern's input chain, if it exists.
    pub input_priority: Option<i32>,
}

/// The setup transaction for `config`, given what already exists.
pub fn setup_ruleset(config: &NftablesConfig, existing: Option<&ExistingTable>) -> Nftables<'static> {
    let family = config.family.json();
    let table: Cow<'static, str> = config.table.clone().into();
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(Table { family, name: table.clone(), handle: None }));

    for set in grant_sets(config) {
        batch.add(NfListObject::Set(Box::new(Set {
            family,
            table: table.clone(),
            name: set.name().into(),
            set_type: SetTypeValue::Concatenated(
                vec![addr_set_type(set), SetType::InetProto, SetType::InetService].into(),
            ),
            flags: Some(HashSet::from([SetFlag::Timeout])),
            ..Set::default()
        })));
    }

    let protected = Set {
        family,
        table: table.clone(),
        name: PROTECTED_SET.into(),
        set_type: SetTypeValue::Concatenated(vec![SetType::InetProto, SetType::InetService].into()),
        ..Set::default()
    };
    batch.add(NfListObject::Set(Box::new(protected.clone())));
    batch.add_cmd(NfCmd::Flush(FlushObject::Set(Box::new(protected.clone()))));
    if !config.protected.is_empty() {
        let elems: Vec<Expression> = config
            .protected
            .iter()
            .map(|p| concat(vec![Expression::String(p.proto.name().into()), Expression::Number(p.port as u32)]))
            .collect();
        batch.add(NfListObject::Element(nftables::schema::Element {
            family,
            table: table.clone(),
            name: PROTECTED_SET.into(),
            elem: elems.into(),
        }));
    }

    let chain = Chain {
        family,
        table: table.clone(),
        name: INPUT_CHAIN.into(),
        _type: Some(NfChainType::Filter),
        hook: Some(NfHook::Input),
        prio: Some(config.priority),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    };
    let existing_prio = existing.and_then(|e| e.input_priority);
    if existing_prio.is_some() {
        batch.add_cmd(NfCmd::Flush(FlushObject::Chain(chain.clone())));
    }
    if existing_prio.is_some_and(|p| p != config.priority) {
        // A base chain's priority cannot be changed in place: recreate it.
        batch.delete(NfListObject::Chain(Chain { _type: None, hook: None, prio: None, policy: None, ..chain.clone() }));
    }
    batch.add(NfListObject::Chain(chain));
    for expr in chain_rules(config) {
        batch.add(NfListObject::Rule(nftables::schema::Rule {
            family,
            table: table.clone(),
            chain: INPUT_CHAIN.into(),
            expr: expr.into(),
            ..nftables::schema::Rule::default()
        }));
    }
    batch.to_nftables()
}

/// The grant sets the configured family has.
pub fn grant_sets(config: &NftablesConfig) -> Vec<GrantSet> {
    let mut v = Vec::new();
    if config.family.has_v4() {
        v.push(GrantSet::V4);
    }
    if config.family.has_v6() {
        v.push(GrantSet::V6);
    }
    v
}

fn addr_set_type(set: GrantSet) -> SetType {
    match set {
        GrantSet::V4 => SetType::Ipv4Addr,
        GrantSet::V6 => SetType::Ipv6Addr,
    }
}

/// The input chain, in order:
/// 1. established/related accepted: a grant's expiry never cuts a live session,
///    and installing postern never cuts the admin's own SSH session;
/// 2. loopback is not postern's business;
/// 3. `saddr . l4proto . dport` in a grant set → (mark and) accept;
/// 4. `l4proto . dport` in `protected` → drop (unless `drop_unauthorized = false`).
fn chain_rules(config: &NftablesConfig) -> Vec<Vec<Statement<'static>>> {
    let mut rules = vec![
        vec![
            Statement::Match(Match {
                left: Expression::Named(NamedExpression::CT(CT { key: "state".into(), family: None, dir: None })),
                right: Expression::List(vec![Expression::String("established".into()), Expression::String("related".into())]),
                op: Operator::IN,
            }),
            Statement::Accept(Some(Accept {})),
        ],
        vec![
            Statement::Match(Match { left: meta(MetaKey::Iif), right: Expression::String("lo".into()), op: Operator::EQ }),
            Statement::Accept(Some(Accept {})),
        ],
    ];
    for set in grant_sets(config) {
        let proto = match set {
            GrantSet::V4 => "ip",
            GrantSet::V6 => "ip6",
        };
        let mut rule = vec![
            Statement::Match(Match {
                left: concat(vec![payload(proto, "saddr"), meta(MetaKey::L4proto), payload("th", "dport")]),
                right: Expression::String(format!("@{}", set.name()).into()),
                op: Operator::EQ,
            }),
            Statement::Counter(Counter::Anonymous(None)),
        ];
        if let Some(mark) = config.grant_mark {
            rule.push(Statement::Mangle(Mangle {
                key: meta(MetaKey::Mark),
                value: Expression::BinaryOperation(Box::new(BinaryOperation::OR(vec![
                    meta(MetaKey::Mark),
                    Expression::Number(mark),
                ]))),
            }));
        }
        rule.push(Statement::Accept(Some(Accept {})));
        rules.push(rule);
    }
    if config.installs_drop_rule() {
        rules.push(vec![
            Statement::Match(Match {
                left: concat(vec![meta(MetaKey::L4proto), payload("th", "dport")]),
                right: Expression::String(format!("@{PROTECTED_SET}").into()),
                op: Operator::EQ,
            }),
            Statement::Counter(Counter::Anonymous(None)),
            Statement::Drop(Some(Drop {})),
        ]);
    }
    rules
}

fn concat(parts: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Concat(parts))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField {
        protocol: protocol.into(),
        field: field.into(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ProtectedPort, TableFamily};

    fn json(config: &NftablesConfig, existing: Option<&ExistingTable>) -> String {
        serde_json::to_string(&setup_ruleset(config, existing)).unwrap()
    }

    #[test]
    fn fresh_setup_creates_table_sets_chain_and_rules() {
        let config = NftablesConfig { protected: vec!["tcp/22".parse::<ProtectedPort>().unwrap()], ..Default::default() };
        let j = json(&config, None);
        assert!(j.starts_with(r#"{"nftables":[{"add":{"table":{"family":"inet","name":"postern"}}}"#), "{j}");
        assert!(j.contains(r#""name":"grants4","type":["ipv4_addr","inet_proto","inet_service"],"flags":["timeout"]"#), "{j}");
        assert!(j.contains(r#""name":"grants6","type":["ipv6_addr","inet_proto","inet_service"]"#), "{j}");
        assert!(j.contains(r#"{"flush":{"set":{"family":"inet","table":"postern","name":"protected""#), "{j}");
        assert!(j.contains(r#""elem":[{"concat":["tcp",22]}]"#), "{j}");
        assert!(j.contains(r#""type":"filter","hook":"input","prio":-10,"policy":"accept""#), "{j}");
        assert!(j.contains(r#"{"match":{"left":{"concat":[{"payload":{"protocol":"ip","field":"saddr"}},{"meta":{"key":"l4proto"}},{"payload":{"protocol":"th","field":"dport"}}]},"right":"@grants4","op":"=="}}"#), "{j}");
        assert!(j.contains(r#"{"drop":null}"#) || j.contains(r#"{"drop":{}}"#), "{j}");
        // Fresh: no flush of a chain that does not exist yet.
        assert!(!j.contains(r#"{"flush":{"chain""#), "{j}");
    }

    #[test]
    fn rerun_flushes_chain_and_recreates_it_only_when_priority_changed() {
        let config = NftablesConfig::default();
        let same = json(&config, Some(&ExistingTable { input_priority: Some(-10) }));
        assert!(same.contains(r#"{"flush":{"chain""#) && !same.contains(r#"{"delete""#), "{same}");
        let changed = json(&config, Some(&ExistingTable { input_priority: Some(0) }));
        assert!(changed.contains(r#"{"delete":{"chain":{"family":"inet","table":"postern","name":"input"}}}"#), "{changed}");
    }

    #[test]
    fn no_drop_rule_without_protected_ports_or_when_disabled_and_mark_is_set() {
        let j = json(&NftablesConfig::default(), None);
        assert!(!j.contains("drop"), "{j}");
        let c = NftablesConfig {
            protected: vec!["tcp/22".parse().unwrap()],
            drop_unauthorized: false,
            grant_mark: Some(0x100),
            family: TableFamily::Ip,
            ..Default::default()
        };
        let j = json(&c, None);
        assert!(!j.contains("drop") && !j.contains("grants6"), "{j}");
        assert!(j.contains(r#"{"mangle":{"key":{"meta":{"key":"mark"}},"value":{"|":[{"meta":{"key":"mark"}},256]}}}"#), "{j}");
    }
}
