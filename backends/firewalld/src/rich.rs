//! The rich rules postern writes, and recognising them again.
//!
//! A plain grant is one rule of exactly this shape:
//!
//! ```text
//! rule family="ipv4" source address="192.0.2.7" port port="22" protocol="tcp" accept
//! ```
//!
//! A NAT grant is a `forward-port` rule (DNAT to an inner host, or without
//! `to-addr` a redirect to a port of this host), and when the grant masquerades,
//! a `masquerade` rule for the source and the inner host, shared by every grant
//! between the two (see [`Part`]):
//!
//! ```text
//! rule family="ipv4" source address="192.0.2.7" forward-port port="2222" protocol="tcp" to-port="22" to-addr="10.0.0.5"
//! rule family="ipv4" source address="192.0.2.7" destination address="10.0.0.5" masquerade
//! ```
//!
//! The source is written in one of two equivalent forms, plain (`192.0.2.7`) or as a
//! host prefix (`192.0.2.7/32`, `2001:db8::7/128`). firewalld keys rules by their
//! text, so the two forms are two rules that match the same packets. A repeated
//! grant adds the other form with the new timeout and then removes the old one, so
//! the port never closes in between (see the crate README).

use spa_core::firewall::{NatRule, Rule, Snat};
use spa_core::request::Proto;
use std::net::IpAddr;

/// How the source address is written in the rule text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceForm {
    /// `address="192.0.2.7"`
    Plain,
    /// `address="192.0.2.7/32"` (IPv6: `/128`)
    HostPrefix,
}

impl SourceForm {
    pub fn other(self) -> SourceForm {
        match self {
            SourceForm::Plain => SourceForm::HostPrefix,
            SourceForm::HostPrefix => SourceForm::Plain,
        }
    }
}

/// The address a rule is written with: IPv4-mapped IPv6 (`::ffff:a.b.c.d`, what a
/// dual-stack socket reports for an IPv4 peer) becomes the IPv4 address, because
/// that is what the packets carry.
pub fn canonical_source(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The rule as postern identifies it: canonical addresses, the NAT kept.
pub fn canonical_rule(rule: &Rule) -> Rule {
    let mut rule = rule.clone();
    rule.source = canonical_source(rule.source);
    rule.destination = rule.destination.map(canonical_source);
    if let Some(nat) = &mut rule.nat {
        nat.to_addr = canonical_source(nat.to_addr);
    }
    rule
}

fn family(addr: &IpAddr) -> &'static str {
    if addr.is_ipv4() {
        "ipv4"
    } else {
        "ipv6"
    }
}

/// One rich rule's worth of a grant: what a state entry records and what is
/// added to firewalld with a timeout.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    /// The grant itself (canonical): an accept, or with NAT a forward-port.
    Grant(Rule),
    /// One protocol's half of a FORWARD_ALL grant (canonical): every port of
    /// `proto` forwarded to the inner host. A forward-port names one protocol,
    /// so TCP and UDP are forwarded (not ICMP or other protocols, as fwknopd's
    /// protocol-less DNAT would).
    ForwardAll { rule: Rule, proto: Proto },
    /// Masquerading of `source`'s traffic to `destination` (a NAT grant's
    /// FORCE_MASQUERADE / ENABLE_FIREWD_SNAT). Rich rules cannot name a port
    /// here, so one such rule serves every grant between the two addresses and
    /// lives as long as the longest of them.
    Masquerade { source: IpAddr, destination: IpAddr },
}

impl Part {
    pub fn source(&self) -> IpAddr {
        match self {
            Part::Grant(rule) | Part::ForwardAll { rule, .. } => rule.source,
            Part::Masquerade { source, .. } => *source,
        }
    }

    /// The grant this part belongs to alone (a masquerade may serve several).
    pub fn rule(&self) -> Option<&Rule> {
        match self {
            Part::Grant(rule) | Part::ForwardAll { rule, .. } => Some(rule),
            Part::Masquerade { .. } => None,
        }
    }

    /// The parts a grant needs, its own first.
    pub fn of(rule: &Rule) -> Vec<Part> {
        let rule = canonical_rule(rule);
        let mut parts = Vec::new();
        if let Some(nat) = rule.nat.as_ref().filter(|n| wants_masquerade(n)) {
            parts.push(Part::Masquerade {
                source: rule.source,
                destination: nat.to_addr,
            });
        }
        if rule.nat.as_ref().is_some_and(|n| n.forward_all) {
            for proto in [Proto::Udp, Proto::Tcp] {
                parts.insert(
                    0,
                    Part::ForwardAll {
                        rule: rule.clone(),
                        proto,
                    },
                );
            }
        } else {
            parts.insert(0, Part::Grant(rule));
        }
        parts
    }
}

/// Forwarded (not local) NAT that masquerades.
pub fn wants_masquerade(nat: &NatRule) -> bool {
    !nat.local && nat.snat == Some(Snat::Masquerade)
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Part::Grant(rule) => write!(f, "{rule}"),
            Part::ForwardAll { rule, proto } => write!(f, "{rule}, {proto}"),
            Part::Masquerade {
                source,
                destination,
            } => write!(f, "masquerade {source} -> {destination}"),
        }
    }
}

fn address(addr: IpAddr, form: SourceForm) -> String {
    match (form, addr) {
        (SourceForm::Plain, a) => a.to_string(),
        (SourceForm::HostPrefix, IpAddr::V4(a)) => format!("{a}/32"),
        (SourceForm::HostPrefix, IpAddr::V6(a)) => format!("{a}/128"),
    }
}

/// Rich-rule text for a plain grant or a NAT grant's forward-port (see
/// [`render_part`]).
pub fn render(rule: &Rule, form: SourceForm) -> String {
    render_part(&Part::Grant(canonical_rule(rule)), form)
}

/// Rich-rule text for `part`, its source written in `form`. A local NAT grant is
/// a forward-port without `to-addr`, which firewalld makes a redirect to a port
/// of this host (with `to-addr` it would also switch on IP forwarding).
pub fn render_part(part: &Part, form: SourceForm) -> String {
    let source = canonical_source(part.source());
    let mut head = format!(
        r#"rule family="{}" source address="{}""#,
        family(&source),
        address(source, form)
    );
    // ENABLE_DESTINATION_RULE: only packets sent to the address the knock was.
    if let Some(d) = part.rule().and_then(|r| r.destination) {
        head.push_str(&format!(
            r#" destination address="{}""#,
            canonical_source(d)
        ));
    }
    match part {
        Part::Grant(rule) => match &rule.nat {
            None => format!(
                r#"{head} port port="{}" protocol="{}" accept"#,
                rule.port,
                rule.proto.name()
            ),
            Some(nat) => {
                let mut text = format!(
                    r#"{head} forward-port port="{}" protocol="{}" to-port="{}""#,
                    rule.port,
                    rule.proto.name(),
                    nat.to_port
                );
                if !nat.local {
                    text.push_str(&format!(r#" to-addr="{}""#, canonical_source(nat.to_addr)));
                }
                text
            }
        },
        Part::ForwardAll { rule, proto } => {
            let to = rule.nat.as_ref().map_or(rule.source, |n| n.to_addr);
            format!(
                r#"{head} forward-port port="{ALL_PORTS}" protocol="{}" to-addr="{}""#,
                proto.name(),
                canonical_source(to)
            )
        }
        Part::Masquerade { destination, .. } => {
            format!(r#"{head} destination address="{destination}" masquerade"#)
        }
    }
}

/// Reads `key="value"` at the start of `rest` (after one space).
fn attr<'a>(rest: &'a str, key: &str) -> Option<(&'a str, &'a str)> {
    let rest = rest
        .strip_prefix(' ')?
        .strip_prefix(key)?
        .strip_prefix("=\"")?;
    rest.split_once('"')
}

/// A port as postern writes it: digits only (u16's parser would also take
/// `+22`), not 0.
fn port_number(text: &str) -> Option<u16> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|p| *p != 0)
}

/// The port range of a FORWARD_ALL forward-port.
const ALL_PORTS: &str = "1-65535";

pub(crate) fn protocol(text: &str) -> Option<Proto> {
    match text {
        "tcp" => Some(Proto::Tcp),
        "udp" => Some(Proto::Udp),
        _ => None,
    }
}

/// What a state entry records next to a NAT grant's text, because the text
/// leaves it out: the grant's port and [`NatRule`] (its [`NatRule::tag`]), and
/// for FORWARD_ALL the grant's protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub port: u16,
    pub nat: NatRule,
    pub proto: Option<Proto>,
}

/// Reads back a rule of exactly a shape [`render_part`] writes, as firewalld
/// returns it from `getRichRules`. Anything else (other elements, other order,
/// a network instead of a host, a family that does not match the address) is
/// not postern's. A local forward-port does not say which local address the
/// grant named, a forward-port whether the grant masquerades, a FORWARD_ALL one
/// the grant's port and protocol: those come from `recorded`, which must agree
/// with the text.
pub fn parse_part(text: &str, recorded: Option<&Recorded>) -> Option<(Part, SourceForm)> {
    let rest = text.trim().strip_prefix("rule")?;
    let (fam, rest) = attr(rest, "family")?;
    let (address, rest) = attr(rest.strip_prefix(" source")?, "address")?;
    let (addr, form) = match address.split_once('/') {
        None => (address, SourceForm::Plain),
        Some((a, "32")) if !a.contains(':') => (a, SourceForm::HostPrefix),
        Some((a, "128")) if a.contains(':') => (a, SourceForm::HostPrefix),
        Some(_) => return None,
    };
    let source: IpAddr = addr.parse().ok()?;
    if family(&source) != fam || canonical_source(source) != source {
        return None;
    }
    let same_family = |a: &IpAddr| family(a) == fam && canonical_source(*a) == *a;
    // A destination: a grant bound to it, or a masquerade's inner host.
    let (destination, rest) = match rest.strip_prefix(" destination") {
        Some(rest) => {
            let (d, rest) = attr(rest, "address")?;
            (Some(d.parse::<IpAddr>().ok().filter(same_family)?), rest)
        }
        None => (None, rest),
    };
    let part = if let Some(rest) = rest.strip_prefix(" port") {
        let (port, rest) = attr(rest, "port")?;
        let (proto, rest) = attr(rest, "protocol")?;
        if rest != " accept" || recorded.is_some() {
            return None;
        }
        Part::Grant(Rule {
            destination,
            ..Rule::new(source, protocol(proto)?, port_number(port)?)
        })
    } else if let Some(rest) = rest.strip_prefix(" forward-port") {
        let recorded = recorded?;
        let nat = &recorded.nat;
        let (port, rest) = attr(rest, "port")?;
        let (proto, rest) = attr(rest, "protocol")?;
        let proto = protocol(proto)?;
        if nat.forward_all {
            let (to_addr, rest) = attr(rest, "to-addr")?;
            let to_addr: IpAddr = to_addr.parse().ok().filter(same_family)?;
            if port != ALL_PORTS || !rest.is_empty() || nat.local || to_addr != nat.to_addr {
                return None;
            }
            let rule = Rule {
                nat: Some(nat.clone()),
                destination,
                ..Rule::new(source, recorded.proto?, recorded.port)
            };
            return Some((Part::ForwardAll { rule, proto }, form));
        }
        let (to_port, rest) = attr(rest, "to-port")?;
        let to_addr = match rest {
            "" => None,
            rest => {
                let (to_addr, rest) = attr(rest, "to-addr")?;
                if !rest.is_empty() {
                    return None;
                }
                Some(to_addr.parse::<IpAddr>().ok().filter(same_family)?)
            }
        };
        let agrees = nat.to_port == port_number(to_port)?
            && recorded.port == port_number(port)?
            && nat.dnat
            && match to_addr {
                None => nat.local,
                Some(a) => !nat.local && a == nat.to_addr,
            };
        if !agrees {
            return None;
        }
        Part::Grant(Rule {
            nat: Some(nat.clone()),
            destination,
            ..Rule::new(source, proto, recorded.port)
        })
    } else if rest == " masquerade" && recorded.is_none() {
        Part::Masquerade {
            source,
            destination: destination?,
        }
    } else {
        return None;
    };
    Some((part, form))
}

/// A plain grant read back (see [`parse_part`]).
pub fn parse(text: &str) -> Option<(Rule, SourceForm)> {
    match parse_part(text, None)? {
        (Part::Grant(rule), form) => Some((rule, form)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(source: &str, proto: Proto, port: u16) -> Rule {
        Rule::new(source.parse().unwrap(), proto, port)
    }

    #[test]
    fn renders_the_documented_shape() {
        let r = rule("192.0.2.7", Proto::Tcp, 22);
        assert_eq!(
            render(&r, SourceForm::Plain),
            r#"rule family="ipv4" source address="192.0.2.7" port port="22" protocol="tcp" accept"#
        );
        assert_eq!(
            render(&r, SourceForm::HostPrefix),
            r#"rule family="ipv4" source address="192.0.2.7/32" port port="22" protocol="tcp" accept"#
        );
        let r6 = rule("2001:db8:0:0::7", Proto::Udp, 1194);
        assert_eq!(
            render(&r6, SourceForm::Plain),
            r#"rule family="ipv6" source address="2001:db8::7" port port="1194" protocol="udp" accept"#
        );
        assert_eq!(
            render(&r6, SourceForm::HostPrefix),
            r#"rule family="ipv6" source address="2001:db8::7/128" port port="1194" protocol="udp" accept"#
        );
    }

    #[test]
    fn ipv4_mapped_sources_are_written_as_ipv4() {
        let r = rule("::ffff:198.51.100.9", Proto::Tcp, 443);
        assert_eq!(
            render(&r, SourceForm::Plain),
            r#"rule family="ipv4" source address="198.51.100.9" port port="443" protocol="tcp" accept"#
        );
        assert_eq!(canonical_rule(&r), rule("198.51.100.9", Proto::Tcp, 443));
    }

    #[test]
    fn round_trips_every_form() {
        for r in [
            rule("10.1.2.3", Proto::Tcp, 1),
            rule("fd00::1", Proto::Udp, 65535),
            rule("::1", Proto::Tcp, 80),
        ] {
            for form in [SourceForm::Plain, SourceForm::HostPrefix] {
                assert_eq!(
                    parse(&render(&r, form)),
                    Some((r.clone(), form)),
                    "{r} {form:?}"
                );
            }
        }
    }

    #[test]
    fn other_rules_are_not_recognised() {
        let not_ours = [
            "",
            r#"rule family="ipv4" source address="10.0.0.0/24" port port="22" protocol="tcp" accept"#,
            r#"rule family="ipv6" source address="10.0.0.1" port port="22" protocol="tcp" accept"#,
            r#"rule family="ipv4" source address="fd00::1" port port="22" protocol="tcp" accept"#,
            r#"rule family="ipv6" source address="fd00::1/64" port port="22" protocol="tcp" accept"#,
            r#"rule family="ipv4" source address="10.0.0.1/128" port port="22" protocol="tcp" accept"#,
            r#"rule family="ipv4" source address="10.0.0.1" port port="22" protocol="tcp" drop"#,
            r#"rule family="ipv4" source address="10.0.0.1" port port="22" protocol="tcp" log prefix="x" accept"#,
            r#"rule family="ipv4" source address="10.0.0.1" port port="22" protocol="tcp" accept limit value="1/m""#,
            r#"rule family="ipv4" source address="10.0.0.1" port port="22-23" protocol="tcp" accept"#,
            r#"rule family="ipv4" source address="10.0.0.1" port port="+22" protocol="tcp" accept"#,
            r#"rule family="ipv4" source address="10.0.0.1" port port="0" protocol="tcp" accept"#,
            r#"rule family="ipv4" source address="10.0.0.1" port port="70000" protocol="tcp" accept"#,
            r#"rule family="ipv4" source address="10.0.0.1" port port="22" protocol="sctp" accept"#,
            r#"rule family="ipv4" source NOT address="10.0.0.1" port port="22" protocol="tcp" accept"#,
            r#"rule priority="-1" family="ipv4" source address="10.0.0.1" port port="22" protocol="tcp" accept"#,
            r#"rule family="ipv4" source address="10.0.0.1" destination address="fd00::2" port port="22" protocol="tcp" accept"#,
            r#"rule family="ipv4" source address="10.0.0.1" destination address="10.0.0.0/24" port port="22" protocol="tcp" accept"#,
            r#"rule family="ipv4" source address="10.0.0.1" destination address="10.0.0.2" masquerade accept"#,
            r#"rule family="ipv6" source address="::ffff:10.0.0.1" port port="22" protocol="tcp" accept"#,
            r#"rule family="ipv4" source ipset="x" port port="22" protocol="tcp" accept"#,
            r#"rule service name="ssh" accept"#,
        ];
        for text in not_ours {
            assert_eq!(parse(text), None, "{text}");
        }
    }

    #[test]
    fn nat_parts_round_trip_with_their_tag_and_not_without() {
        let nat = |local: bool, snat: Option<Snat>| NatRule {
            to_addr: if local { "192.0.2.1" } else { "10.0.0.5" }
                .parse()
                .unwrap(),
            to_port: 22,
            local,
            snat,
            dnat: true,
            forward_all: false,
        };
        for n in [
            nat(false, None),
            nat(false, Some(Snat::Masquerade)),
            nat(true, None),
        ] {
            let mut r = rule("192.0.2.7", Proto::Udp, 2222);
            r.nat = Some(n.clone());
            for part in Part::of(&r) {
                for form in [SourceForm::Plain, SourceForm::HostPrefix] {
                    let text = render_part(&part, form);
                    let recorded = Recorded {
                        port: 2222,
                        nat: n.clone(),
                        proto: None,
                    };
                    let tag = part.rule().map(|_| &recorded);
                    assert_eq!(parse_part(&text, tag), Some((part.clone(), form)), "{text}");
                    if tag.is_some() {
                        assert_eq!(parse_part(&text, None), None, "{text}");
                    }
                }
            }
        }
        // The tag must agree with the text.
        let rec = |n: NatRule| Recorded {
            port: 2222,
            nat: n,
            proto: None,
        };
        let text = r#"rule family="ipv4" source address="192.0.2.7" forward-port port="2222" protocol="tcp" to-port="23" to-addr="10.0.0.5""#;
        assert_eq!(parse_part(text, Some(&rec(nat(false, None)))), None);
        let text = r#"rule family="ipv4" source address="192.0.2.7" forward-port port="2222" protocol="tcp" to-port="22" to-addr="10.0.0.6""#;
        assert_eq!(parse_part(text, Some(&rec(nat(false, None)))), None);
        let text = r#"rule family="ipv4" source address="192.0.2.7" forward-port port="2222" protocol="tcp" to-port="22""#;
        assert_eq!(parse_part(text, Some(&rec(nat(false, None)))), None);
        let text = r#"rule family="ipv4" source address="192.0.2.7" destination address="fd00::1" masquerade"#;
        assert_eq!(parse_part(text, None), None);
    }

    #[test]
    fn destination_bound_grants_name_the_destination() {
        let mut r = rule("192.0.2.7", Proto::Tcp, 22);
        r.destination = Some("::ffff:198.51.100.1".parse().unwrap());
        let text = render(&r, SourceForm::Plain);
        assert_eq!(
            text,
            r#"rule family="ipv4" source address="192.0.2.7" destination address="198.51.100.1" port port="22" protocol="tcp" accept"#
        );
        assert_eq!(parse(&text), Some((canonical_rule(&r), SourceForm::Plain)));
        r.nat = Some(NatRule {
            to_addr: "10.0.0.5".parse().unwrap(),
            to_port: 22,
            local: false,
            snat: Some(Snat::Masquerade),
            dnat: true,
            forward_all: false,
        });
        let parts = Part::of(&r);
        let texts: Vec<String> = parts
            .iter()
            .map(|p| render_part(p, SourceForm::Plain))
            .collect();
        assert_eq!(
            texts,
            [
                r#"rule family="ipv4" source address="192.0.2.7" destination address="198.51.100.1" forward-port port="22" protocol="tcp" to-port="22" to-addr="10.0.0.5""#,
                r#"rule family="ipv4" source address="192.0.2.7" destination address="10.0.0.5" masquerade"#,
            ]
        );
        let recorded = Recorded {
            port: 22,
            nat: r.nat.clone().unwrap(),
            proto: None,
        };
        assert_eq!(
            parse_part(&texts[0], Some(&recorded)),
            Some((parts[0].clone(), SourceForm::Plain))
        );
    }

    #[test]
    fn forward_all_is_every_tcp_and_udp_port_and_reads_back_with_its_record() {
        let mut r = rule("192.0.2.7", Proto::Tcp, 22);
        let nat = NatRule {
            to_addr: "10.0.0.5".parse().unwrap(),
            to_port: 22,
            local: false,
            snat: None,
            dnat: true,
            forward_all: true,
        };
        r.nat = Some(nat.clone());
        let parts = Part::of(&r);
        let texts: Vec<String> = parts
            .iter()
            .map(|p| render_part(p, SourceForm::Plain))
            .collect();
        assert_eq!(
            texts,
            [
                r#"rule family="ipv4" source address="192.0.2.7" forward-port port="1-65535" protocol="tcp" to-addr="10.0.0.5""#,
                r#"rule family="ipv4" source address="192.0.2.7" forward-port port="1-65535" protocol="udp" to-addr="10.0.0.5""#,
            ]
        );
        let recorded = Recorded {
            port: 22,
            nat,
            proto: Some(Proto::Tcp),
        };
        for (part, text) in parts.iter().zip(&texts) {
            assert_eq!(
                parse_part(text, Some(&recorded)),
                Some((part.clone(), SourceForm::Plain))
            );
            assert_eq!(part.rule(), Some(&r));
        }
        let without_proto = Recorded {
            proto: None,
            ..recorded
        };
        assert_eq!(parse_part(&texts[0], Some(&without_proto)), None);
    }

    #[test]
    fn forms_alternate() {
        assert_eq!(SourceForm::Plain.other(), SourceForm::HostPrefix);
        assert_eq!(SourceForm::HostPrefix.other(), SourceForm::Plain);
    }
}
