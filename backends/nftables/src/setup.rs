//! The table, sets and chain postern owns, as one `nft -j -f -` transaction.
//!
//! Built with the `nftables` crate's JSON model: setup runs once at start, so
//! clarity beats speed here. Re-running it is harmless: `add` of an existing
//! table/set is a no-op (grant sets keep their live, kernel-timed elements), and
//! the chain and the `protected` set are flushed and refilled in the same batch.

use crate::config::NftablesConfig;
use crate::keys::{Fam, Kind, SetId};
use nftables::batch::Batch;
use nftables::expr::{
    BinaryOperation, Expression, Fib, FibFlag, FibResult, Map, Meta, MetaKey, NamedExpression,
    Payload, PayloadField, CT,
};
use nftables::schema::{
    Chain, FlushObject, NfCmd, NfListObject, Nftables, Set, SetFlag, SetType, SetTypeValue, Table,
};
use nftables::stmt::{Accept, Counter, Drop, Mangle, Match, NATFamily, Operator, Statement, NAT};
use nftables::types::{NfChainPolicy, NfChainType, NfHook};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// Name of postern's input chain.
pub const INPUT_CHAIN: &str = "input";
/// Name of the set of `proto . port` postern closes.
pub const PROTECTED_SET: &str = "protected";
/// The other chains postern may own: NAT (`prerouting`, `forward`,
/// `postrouting`) and Docker (`docker`).
pub const OPTIONAL_CHAINS: [&str; 4] = ["prerouting", "forward", "postrouting", "docker"];

/// NAT hook priorities, as nft's `dstnat` and `srcnat`.
const DSTNAT: i32 = -100;
const SRCNAT: i32 = 100;

/// What init found in the kernel before applying (from `nft -j list table`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExistingTable {
    /// postern's chains that exist, with their priority.
    pub chains: BTreeMap<String, Option<i32>>,
    /// Names of the sets and maps that exist.
    pub sets: BTreeSet<String>,
}

/// A base chain postern wants, with its rules.
struct ChainDef {
    name: &'static str,
    kind: NfChainType,
    hook: NfHook,
    prio: i32,
    rules: Vec<Vec<Statement<'static>>>,
}

/// The setup transaction for `config`, given what already exists.
pub fn setup_ruleset(
    config: &NftablesConfig,
    existing: Option<&ExistingTable>,
) -> Nftables<'static> {
    let family = config.family.json();
    let table: Cow<'static, str> = config.table.clone().into();
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(Table {
        family,
        name: table.clone(),
        handle: None,
    }));

    for set in all_sets(config) {
        let types = set.key_types();
        let key = match types.as_slice() {
            [one] => SetTypeValue::Single(*one),
            _ => SetTypeValue::Concatenated(types.into()),
        };
        let flags = Some(HashSet::from([SetFlag::Timeout]));
        let (name, table) = (set.name().into(), table.clone());
        match set.data_type() {
            None => batch.add(NfListObject::Set(Box::new(Set {
                family,
                table,
                name,
                set_type: key,
                flags,
                ..Set::default()
            }))),
            Some(data) => batch.add(NfListObject::Map(Box::new(nftables::schema::Map {
                family,
                table,
                name,
                set_type: key,
                map: SetTypeValue::Single(data),
                flags,
                ..nftables::schema::Map::default()
            }))),
        }
    }

    for set in crate::block::sets(config) {
        batch.add(set);
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
            .map(|p| {
                concat(vec![
                    Expression::String(p.proto.name().into()),
                    Expression::Number(p.port as u32),
                ])
            })
            .collect();
        batch.add(NfListObject::Element(nftables::schema::Element {
            family,
            table: table.clone(),
            name: PROTECTED_SET.into(),
            elem: elems.into(),
        }));
    }

    // Existing chains are flushed first, then those no longer wanted (or whose
    // priority changed: a base chain's priority cannot change in place) deleted,
    // then NAT sets no longer wanted, then the wanted chains (re)filled.
    let wanted = chain_defs(config);
    let empty = ExistingTable::default();
    let existing = existing.unwrap_or(&empty);
    let chain = |name: &str| Chain {
        family,
        table: table.clone(),
        name: name.to_string().into(),
        ..Chain::default()
    };
    let ours = [INPUT_CHAIN].into_iter().chain(OPTIONAL_CHAINS);
    for name in ours.clone().filter(|n| existing.chains.contains_key(*n)) {
        batch.add_cmd(NfCmd::Flush(FlushObject::Chain(chain(name))));
    }
    for name in ours.filter(|n| existing.chains.contains_key(*n)) {
        let keep = wanted
            .iter()
            .any(|c| c.name == name && existing.chains.get(name) == Some(&Some(c.prio)));
        if !keep {
            batch.delete(NfListObject::Chain(chain(name)));
        }
    }
    let wanted_sets: Vec<String> = all_sets(config).iter().map(|s| s.name()).collect();
    let wanted_blocks: Vec<&str> = crate::block::families(config)
        .into_iter()
        .map(crate::block::set_name)
        .collect();
    for name in &existing.sets {
        if crate::block::is_block_set(name) && !wanted_blocks.contains(&name.as_str()) {
            // Blocking is off now: an earlier run's blocks go with their set.
            batch.delete(NfListObject::Set(Box::new(Set {
                family,
                table: table.clone(),
                name: name.clone().into(),
                ..Set::default()
            })));
            continue;
        }
        let Some(id) = SetId::parse(name)
            .filter(|s| !Kind::PLAIN.contains(&s.kind) && !wanted_sets.contains(name))
        else {
            continue;
        };
        let set = Set {
            family,
            table: table.clone(),
            name: name.clone().into(),
            ..Set::default()
        };
        batch.delete(match id.data_type() {
            None => NfListObject::Set(Box::new(set)),
            Some(data) => NfListObject::Map(Box::new(nftables::schema::Map {
                family,
                table: set.table,
                name: set.name,
                map: SetTypeValue::Single(data),
                ..nftables::schema::Map::default()
            })),
        });
    }
    for def in wanted {
        batch.add(NfListObject::Chain(Chain {
            _type: Some(def.kind),
            hook: Some(def.hook),
            prio: Some(def.prio),
            policy: Some(NfChainPolicy::Accept),
            ..chain(def.name)
        }));
        for expr in def.rules {
            batch.add(NfListObject::Rule(nftables::schema::Rule {
                family,
                table: table.clone(),
                chain: def.name.into(),
                expr: expr.into(),
                ..nftables::schema::Rule::default()
            }));
        }
    }
    batch.to_nftables()
}

/// The address families the configured table has.
fn fams(config: &NftablesConfig) -> Vec<Fam> {
    let mut v = Vec::new();
    if config.family.has_v4() {
        v.push(Fam::V4);
    }
    if config.family.has_v6() {
        v.push(Fam::V6);
    }
    v
}

/// The plain grant sets the configured family has (any destination, bound to
/// a destination, pinned to a source port).
pub fn grant_sets(config: &NftablesConfig) -> Vec<SetId> {
    Kind::PLAIN
        .into_iter()
        .flat_map(|k| fams(config).into_iter().map(move |f| SetId::new(k, f)))
        .collect()
}

/// Every set and map of grants the configuration has: grant sets, and with
/// `nat` the NAT sets and maps.
pub fn all_sets(config: &NftablesConfig) -> Vec<SetId> {
    let mut sets = grant_sets(config);
    if config.nat {
        for kind in Kind::NAT {
            sets.extend(fams(config).into_iter().map(|f| SetId::new(kind, f)));
        }
    }
    sets
}

/// The chains the configuration wants, with their rules.
fn chain_defs(config: &NftablesConfig) -> Vec<ChainDef> {
    let fams = fams(config);
    let mut defs = vec![ChainDef {
        name: INPUT_CHAIN,
        kind: NfChainType::Filter,
        hook: NfHook::Input,
        prio: config.priority,
        rules: input_rules(config, &fams),
    }];
    if config.nat {
        defs.push(ChainDef {
            name: "prerouting",
            kind: NfChainType::NAT,
            hook: NfHook::Prerouting,
            prio: DSTNAT,
            rules: fams
                .iter()
                .flat_map(|&f| [vec![dnat(f)], vec![dnat_all(f)]])
                .collect(),
        });
        defs.push(ChainDef {
            name: "forward",
            kind: NfChainType::Filter,
            hook: NfHook::Forward,
            prio: config.priority,
            rules: fams
                .iter()
                .flat_map(|&f| {
                    [
                        accept_in(config, flow_key(f), SetId::new(Kind::Fwd, f)),
                        accept_in(config, addrs_key(f), SetId::new(Kind::FwdAll, f)),
                    ]
                })
                .collect(),
        });
        let mut post = Vec::new();
        for &f in &fams {
            post.push(vec![
                in_set(flow_key(f), SetId::new(Kind::Masq, f)),
                counter(),
                Statement::Masquerade(None),
            ]);
            post.push(vec![snat(f)]);
            post.push(vec![
                in_set(addrs_key(f), SetId::new(Kind::MasqAll, f)),
                counter(),
                Statement::Masquerade(None),
            ]);
            post.push(vec![snat_all(f)]);
        }
        defs.push(ChainDef {
            name: "postrouting",
            kind: NfChainType::NAT,
            hook: NfHook::Postrouting,
            prio: SRCNAT,
            rules: post,
        });
    }
    if config.docker {
        defs.push(ChainDef {
            name: "docker",
            kind: NfChainType::Filter,
            hook: NfHook::Prerouting,
            prio: config.docker_priority,
            rules: docker_rules(config, &fams),
        });
    }
    defs
}

/// `ct state established,related accept` and `iif "lo" accept`.
fn preamble() -> Vec<Vec<Statement<'static>>> {
    vec![
        vec![
            Statement::Match(Match {
                left: Expression::Named(NamedExpression::CT(CT {
                    key: "state".into(),
                    family: None,
                    dir: None,
                })),
                right: Expression::List(vec![
                    Expression::String("established".into()),
                    Expression::String("related".into()),
                ]),
                op: Operator::IN,
            }),
            Statement::Accept(Some(Accept {})),
        ],
        vec![
            Statement::Match(Match {
                left: meta(MetaKey::Iif),
                right: Expression::String("lo".into()),
                op: Operator::EQ,
            }),
            Statement::Accept(Some(Accept {})),
        ],
    ]
}

/// The input chain, in order:
/// 1. established/related accepted: a grant's expiry never cuts a live session,
///    and installing postern never cuts the admin's own SSH session;
/// 2. loopback is not postern's business;
/// 3. `saddr . l4proto . dport` in a grant set, `saddr . daddr . l4proto .
///    dport` in a destination-bound one, or `saddr . l4proto . sport . dport`
///    in a pinned one → (mark and) accept;
/// 4. with `nat`: `saddr . l4proto . dport` in a local-NAT set (the port DNAT
///    led to) → (mark and) accept;
/// 5. with blocking enabled: `saddr` in `block4`/`block6` → drop (after the
///    grants: a block never cuts a grant);
/// 6. `l4proto . dport` in `protected` → drop (unless `drop_unauthorized = false`).
fn input_rules(config: &NftablesConfig, fams: &[Fam]) -> Vec<Vec<Statement<'static>>> {
    let mut rules = preamble();
    for &f in fams {
        rules.push(accept_in(config, host_key(f), SetId::new(Kind::Grants, f)));
        rules.push(accept_in(
            config,
            flow_key(f),
            SetId::new(Kind::GrantsDst, f),
        ));
        rules.push(accept_in(
            config,
            pinned_key(f),
            SetId::new(Kind::GrantsPin, f),
        ));
    }
    if config.nat {
        for &f in fams {
            rules.push(accept_in(config, host_key(f), SetId::new(Kind::Local, f)));
        }
    }
    rules.extend(crate::block::drop_rules(config));
    if config.installs_drop_rule() {
        rules.push(drop_protected(None));
    }
    rules
}

/// The docker chain (prerouting, before any DNAT, so `th dport` is the port
/// the client asked for): established and loopback accepted; grants (and NAT
/// grants' outer ports) accepted and marked; new connections to a protected
/// port of a local address dropped, whether the host or a container behind a
/// DNAT serves it.
fn docker_rules(config: &NftablesConfig, fams: &[Fam]) -> Vec<Vec<Statement<'static>>> {
    let mut rules = preamble();
    for &f in fams {
        rules.push(accept_in(config, host_key(f), SetId::new(Kind::Grants, f)));
        // Before DNAT, daddr is still the address the client knocked at.
        rules.push(accept_in(
            config,
            flow_key(f),
            SetId::new(Kind::GrantsDst, f),
        ));
        rules.push(accept_in(
            config,
            pinned_key(f),
            SetId::new(Kind::GrantsPin, f),
        ));
        if config.nat {
            rules.push(accept_in(
                config,
                host_key(f),
                SetId::new(Kind::DnatAddr, f),
            ));
        }
    }
    if config.installs_drop_rule() {
        let local = Statement::Match(Match {
            left: Expression::Named(NamedExpression::Fib(Fib {
                result: FibResult::Type,
                flags: HashSet::from([FibFlag::Daddr]),
            })),
            right: Expression::String("local".into()),
            op: Operator::EQ,
        });
        rules.push(drop_protected(Some(local)));
    }
    rules
}

fn drop_protected(first: Option<Statement<'static>>) -> Vec<Statement<'static>> {
    let mut rule: Vec<Statement<'static>> = first.into_iter().collect();
    rule.extend([
        Statement::Match(Match {
            left: concat(vec![meta(MetaKey::L4proto), payload("th", "dport")]),
            right: Expression::String(format!("@{PROTECTED_SET}").into()),
            op: Operator::EQ,
        }),
        counter(),
        Statement::Drop(Some(Drop {})),
    ]);
    rule
}

/// `saddr . l4proto . dport`.
fn host_key(f: Fam) -> Expression<'static> {
    concat(vec![
        payload(f.proto(), "saddr"),
        meta(MetaKey::L4proto),
        payload("th", "dport"),
    ])
}

/// `saddr . l4proto . sport . dport` (a grant pinned to a source port).
fn pinned_key(f: Fam) -> Expression<'static> {
    concat(vec![
        payload(f.proto(), "saddr"),
        meta(MetaKey::L4proto),
        payload("th", "sport"),
        payload("th", "dport"),
    ])
}

/// `saddr . daddr . l4proto . dport`.
fn flow_key(f: Fam) -> Expression<'static> {
    concat(vec![
        payload(f.proto(), "saddr"),
        payload(f.proto(), "daddr"),
        meta(MetaKey::L4proto),
        payload("th", "dport"),
    ])
}

/// `saddr . daddr` (FORWARD_ALL: no protocol or port).
fn addrs_key(f: Fam) -> Expression<'static> {
    concat(vec![
        payload(f.proto(), "saddr"),
        payload(f.proto(), "daddr"),
    ])
}

fn in_set(key: Expression<'static>, set: SetId) -> Statement<'static> {
    Statement::Match(Match {
        left: key,
        right: Expression::String(format!("@{}", set.name()).into()),
        op: Operator::EQ,
    })
}

fn counter() -> Statement<'static> {
    Statement::Counter(Counter::Anonymous(None))
}

/// `KEY @SET counter [meta mark set mark | M] accept`.
fn accept_in(
    config: &NftablesConfig,
    key: Expression<'static>,
    set: SetId,
) -> Vec<Statement<'static>> {
    let mut rule = vec![in_set(key, set), counter()];
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
    rule
}

fn map_lookup(key: Expression<'static>, set: SetId) -> Expression<'static> {
    Expression::Named(NamedExpression::Map(Box::new(Map {
        key,
        data: Expression::String(format!("@{}", set.name()).into()),
    })))
}

fn nat_family(f: Fam) -> NATFamily {
    match f {
        Fam::V4 => NATFamily::IP,
        Fam::V6 => NATFamily::IP6,
    }
}

/// `dnat ip to ip saddr . meta l4proto . th dport map @dnat4 : ip saddr . meta l4proto . th dport map @dnatport4`
/// (two maps: nft 1.0.6 cannot create a map with `addr . port` data from JSON).
fn dnat(f: Fam) -> Statement<'static> {
    Statement::DNAT(Some(NAT {
        addr: Some(map_lookup(host_key(f), SetId::new(Kind::DnatAddr, f))),
        family: Some(nat_family(f)),
        port: Some(map_lookup(host_key(f), SetId::new(Kind::DnatPort, f))),
        flags: None,
    }))
}

/// `dnat ip to ip saddr map @dnatall4` (FORWARD_ALL: every port, kept as is).
fn dnat_all(f: Fam) -> Statement<'static> {
    Statement::DNAT(Some(NAT {
        addr: Some(map_lookup(
            payload(f.proto(), "saddr"),
            SetId::new(Kind::DnatAll, f),
        )),
        family: Some(nat_family(f)),
        port: None,
        flags: None,
    }))
}

/// `snat ip to ip saddr . ip daddr map @snatall4` (FORWARD_ALL).
fn snat_all(f: Fam) -> Statement<'static> {
    Statement::SNAT(Some(NAT {
        addr: Some(map_lookup(addrs_key(f), SetId::new(Kind::SnatAll, f))),
        family: Some(nat_family(f)),
        port: None,
        flags: None,
    }))
}

/// `snat ip to ip saddr . ip daddr . meta l4proto . th dport map @snat4`.
fn snat(f: Fam) -> Statement<'static> {
    Statement::SNAT(Some(NAT {
        addr: Some(map_lookup(flow_key(f), SetId::new(Kind::Snat, f))),
        family: Some(nat_family(f)),
        port: None,
        flags: None,
    }))
}

fn concat(parts: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Concat(parts))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ProtectedPort, TableFamily};

    fn existing_input(prio: i32) -> ExistingTable {
        ExistingTable {
            chains: BTreeMap::from([("input".to_string(), Some(prio))]),
            ..Default::default()
        }
    }

    fn json(config: &NftablesConfig, existing: Option<&ExistingTable>) -> String {
        serde_json::to_string(&setup_ruleset(config, existing)).unwrap()
    }

    #[test]
    fn fresh_setup_creates_table_sets_chain_and_rules() {
        let config = NftablesConfig {
            protected: vec!["tcp/22".parse::<ProtectedPort>().unwrap()],
            ..Default::default()
        };
        let j = json(&config, None);
        assert!(
            j.starts_with(r#"{"nftables":[{"add":{"table":{"family":"inet","name":"postern"}}}"#),
            "{j}"
        );
        assert!(j.contains(r#""name":"grants4","type":["ipv4_addr","inet_proto","inet_service"],"flags":["timeout"]"#), "{j}");
        assert!(
            j.contains(r#""name":"grants6","type":["ipv6_addr","inet_proto","inet_service"]"#),
            "{j}"
        );
        assert!(
            j.contains(r#"{"flush":{"set":{"family":"inet","table":"postern","name":"protected""#),
            "{j}"
        );
        assert!(j.contains(r#""elem":[{"concat":["tcp",22]}]"#), "{j}");
        assert!(
            j.contains(r#""type":"filter","hook":"input","prio":-10,"policy":"accept""#),
            "{j}"
        );
        assert!(j.contains(r#"{"match":{"left":{"concat":[{"payload":{"protocol":"ip","field":"saddr"}},{"meta":{"key":"l4proto"}},{"payload":{"protocol":"th","field":"dport"}}]},"right":"@grants4","op":"=="}}"#), "{j}");
        assert!(
            j.contains(r#"{"drop":null}"#) || j.contains(r#"{"drop":{}}"#),
            "{j}"
        );
        // Fresh: no flush of a chain that does not exist yet.
        assert!(!j.contains(r#"{"flush":{"chain""#), "{j}");
    }

    #[test]
    fn rerun_flushes_chain_and_recreates_it_only_when_priority_changed() {
        let config = NftablesConfig::default();
        let same = json(&config, Some(&existing_input(-10)));
        assert!(
            same.contains(r#"{"flush":{"chain""#) && !same.contains(r#"{"delete""#),
            "{same}"
        );
        let changed = json(&config, Some(&existing_input(0)));
        assert!(
            changed.contains(
                r#"{"delete":{"chain":{"family":"inet","table":"postern","name":"input"}}}"#
            ),
            "{changed}"
        );
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
