//! Blocked sources (posternd's `[attack] block_secs`): `block4`/`block6`, sets of
//! addresses with kernel timeouts, and one drop rule per set in the input chain,
//! after the grant accepts (a block never cuts a grant, nor, after `ct state
//! established,related accept`, an established connection).
//!
//! The sets exist only while blocking is enabled: `init` without it deletes
//! those an earlier run left (with their elements). A block is added as a grant
//! is (add · delete · add in one transaction), so re-blocking a source sets its
//! timeout anew on any kernel.

use crate::config::NftablesConfig;
use crate::keys::Fam;
use crate::netlink::batch::{self, Batch, ElemOp, SetTarget};
use nftables::expr::{Elem, Expression, NamedExpression, Payload, PayloadField};
use nftables::schema::{NfListObject, Set, SetFlag, SetType, SetTypeValue};
use nftables::stmt::{Counter, Drop, Match, Operator, Statement};
use spa_core::firewall::Block;
use std::collections::HashSet;
use std::net::IpAddr;

/// Comment on each element, so `nft list` says why an address is there.
const COMMENT: &str = "postern attack block";

/// Name of the block set of one family.
pub fn set_name(fam: Fam) -> &'static str {
    match fam {
        Fam::V4 => "block4",
        Fam::V6 => "block6",
    }
}

/// Whether `name` is one of the block sets.
pub fn is_block_set(name: &str) -> bool {
    Fam::ALL.iter().any(|f| set_name(*f) == name)
}

/// The families the configured table blocks in (none unless enabled).
pub fn families(config: &NftablesConfig) -> Vec<Fam> {
    if !config.block_sources {
        return Vec::new();
    }
    let mut fams = Vec::new();
    if config.family.has_v4() {
        fams.push(Fam::V4);
    }
    if config.family.has_v6() {
        fams.push(Fam::V6);
    }
    fams
}

/// `add set` for each block set (a no-op for one that exists, elements kept).
pub fn sets(config: &NftablesConfig) -> Vec<NfListObject<'static>> {
    families(config)
        .into_iter()
        .map(|f| {
            NfListObject::Set(Box::new(Set {
                family: config.family.json(),
                table: config.table.clone().into(),
                name: set_name(f).into(),
                set_type: SetTypeValue::Single(match f {
                    Fam::V4 => SetType::Ipv4Addr,
                    Fam::V6 => SetType::Ipv6Addr,
                }),
                flags: Some(HashSet::from([SetFlag::Timeout])),
                ..Set::default()
            }))
        })
        .collect()
}

/// `ip saddr @block4 counter drop` (and `ip6 …`), for the input chain.
pub fn drop_rules(config: &NftablesConfig) -> Vec<Vec<Statement<'static>>> {
    families(config)
        .into_iter()
        .map(|f| {
            vec![
                Statement::Match(Match {
                    left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(
                        PayloadField {
                            protocol: f.proto().into(),
                            field: "saddr".into(),
                        },
                    ))),
                    right: Expression::String(format!("@{}", set_name(f)).into()),
                    op: Operator::EQ,
                }),
                Statement::Counter(Counter::Anonymous(None)),
                Statement::Drop(Some(Drop {})),
            ]
        })
        .collect()
}

/// The blocks the table can hold, and the sources of those it cannot (a
/// family it has no set for).
pub fn split<'a>(config: &NftablesConfig, blocks: &'a [Block]) -> (Vec<&'a Block>, Vec<IpAddr>) {
    let fams = families(config);
    let (fit, rest): (Vec<&Block>, Vec<&Block>) = blocks
        .iter()
        .partition(|b| fams.contains(&Fam::of(b.source)));
    (fit, rest.into_iter().map(|b| b.source).collect())
}

fn addr_bytes(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// add · delete · add of every block, per set, into a netlink batch.
pub fn to_netlink(batch: &mut Batch, family: u8, table: &str, blocks: &[&Block]) {
    for fam in Fam::ALL {
        let here: Vec<&&Block> = blocks.iter().filter(|b| Fam::of(b.source) == fam).collect();
        if here.is_empty() {
            continue;
        }
        let target = SetTarget {
            family,
            table,
            set: set_name(fam),
        };
        for op in [ElemOp::Add, ElemOp::Delete, ElemOp::Add] {
            let elements: Vec<batch::Element> = here
                .iter()
                .map(|b| batch::Element {
                    key: addr_bytes(b.source),
                    timeout_ms: (op == ElemOp::Add).then(|| u64::from(b.timeout_secs) * 1000),
                    data: None,
                    comment: (op == ElemOp::Add).then(|| COMMENT.to_string()),
                })
                .collect();
            batch.set_elements(op, target, &elements);
        }
    }
}

/// The same as an `nft -j -f -` batch.
pub fn to_nft_json(
    batch: &mut nftables::batch::Batch<'static>,
    config: &NftablesConfig,
    blocks: &[&Block],
) {
    for fam in Fam::ALL {
        let here: Vec<&&Block> = blocks.iter().filter(|b| Fam::of(b.source) == fam).collect();
        if here.is_empty() {
            continue;
        }
        let element = |elem: Vec<Expression<'static>>| {
            NfListObject::Element(nftables::schema::Element {
                family: config.family.json(),
                table: config.table.clone().into(),
                name: set_name(fam).into(),
                elem: elem.into(),
            })
        };
        let added = || {
            here.iter()
                .map(|b| {
                    Expression::Named(NamedExpression::Elem(Elem {
                        val: Box::new(Expression::String(b.source.to_string().into())),
                        timeout: Some(b.timeout_secs),
                        expires: None,
                        comment: Some(COMMENT.into()),
                        counter: None,
                    }))
                })
                .collect::<Vec<_>>()
        };
        let keys = here
            .iter()
            .map(|b| Expression::String(b.source.to_string().into()))
            .collect();
        batch.add(element(added()));
        batch.delete(element(keys));
        batch.add(element(added()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TableFamily;

    fn block(source: &str, secs: u32) -> Block {
        Block {
            source: source.parse().unwrap(),
            timeout_secs: secs,
            expires_at: 1000 + u64::from(secs),
        }
    }

    #[test]
    fn nothing_exists_unless_blocking_is_enabled() {
        let off = NftablesConfig::default();
        assert!(sets(&off).is_empty() && drop_rules(&off).is_empty());
        let on = NftablesConfig {
            block_sources: true,
            family: TableFamily::Ip,
            ..Default::default()
        };
        assert_eq!((sets(&on).len(), drop_rules(&on).len()), (1, 1));
        let blocks = [block("192.0.2.1", 60), block("2001:db8::1", 60)];
        let (fit, rest) = split(&on, &blocks);
        assert_eq!(fit, [&blocks[0]]);
        assert_eq!(rest, ["2001:db8::1".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn a_block_renders_add_delete_add_with_its_timeout() {
        let config = NftablesConfig {
            block_sources: true,
            ..Default::default()
        };
        let b = block("192.0.2.1", 600);
        let mut batch = nftables::batch::Batch::new();
        to_nft_json(&mut batch, &config, &[&b]);
        let j = serde_json::to_string(&batch.to_nftables()).unwrap();
        let add = r#"{"add":{"element":{"family":"inet","table":"postern","name":"block4","elem":[{"elem":{"val":"192.0.2.1","timeout":600,"expires":null,"comment":"postern attack block","counter":null}}]}}}"#;
        let del = r#"{"delete":{"element":{"family":"inet","table":"postern","name":"block4","elem":["192.0.2.1"]}}}"#;
        assert_eq!(j.matches(add).count(), 2, "{j}");
        assert_eq!(j.matches(del).count(), 1, "{j}");
        let mut nl = Batch::new(1);
        to_netlink(&mut nl, 1, "postern", &[&b, &block("2001:db8::1", 5)]);
        let f = nl.finish();
        assert_eq!(f.acked.len(), 6, "{:?}", f.acked);
    }
}
