//! The rich rules postern writes, and recognising them again.
//!
//! A grant is one rule of exactly this shape:
//!
//! ```text
//! rule family="ipv4" source address="192.0.2.7" port port="22" protocol="tcp" accept
//! ```
//!
//! The source is written in one of two equivalent forms, plain (`192.0.2.7`) or as a
//! host prefix (`192.0.2.7/32`, `2001:db8::7/128`). firewalld keys rules by their
//! text, so the two forms are two rules that match the same packets. A repeated
//! grant adds the other form with the new timeout and then removes the old one, so
//! the port never closes in between (see the crate README).

use spa_core::firewall::Rule;
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

/// The rule as postern identifies it: canonical source, no NAT.
pub fn canonical_rule(rule: &Rule) -> Rule {
    Rule::new(canonical_source(rule.source), rule.proto, rule.port)
}

fn family(addr: &IpAddr) -> &'static str {
    if addr.is_ipv4() {
        "ipv4"
    } else {
        "ipv6"
    }
}

/// Rich-rule text for `rule` (its NAT part is not representable and must be
/// rejected by the caller).
pub fn render(rule: &Rule, form: SourceForm) -> String {
    let source = canonical_source(rule.source);
    let address = match (form, source) {
        (SourceForm::Plain, a) => a.to_string(),
        (SourceForm::HostPrefix, IpAddr::V4(a)) => format!("{a}/32"),
        (SourceForm::HostPrefix, IpAddr::V6(a)) => format!("{a}/128"),
    };
    format!(
        r#"rule family="{}" source address="{}" port port="{}" protocol="{}" accept"#,
        family(&source),
        address,
        rule.port,
        rule.proto.name()
    )
}

/// Reads back a rule of exactly the shape [`render`] writes, as firewalld returns
/// it from `getRichRules`. Anything else (other elements, other order, a network
/// instead of a host, a family that does not match the address) is not postern's.
pub fn parse(text: &str) -> Option<(Rule, SourceForm)> {
    let rest = text.trim().strip_prefix("rule family=\"")?;
    let (fam, rest) = rest.split_once('"')?;
    let rest = rest.strip_prefix(" source address=\"")?;
    let (address, rest) = rest.split_once('"')?;
    let rest = rest.strip_prefix(" port port=\"")?;
    let (port, rest) = rest.split_once('"')?;
    let rest = rest.strip_prefix(" protocol=\"")?;
    let (proto, rest) = rest.split_once('"')?;
    if rest != " accept" {
        return None;
    }
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
    // Digits only: u16's parser would also take `+22`.
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let port: u16 = port.parse().ok()?;
    if port == 0 {
        return None;
    }
    let proto = match proto {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        _ => return None,
    };
    Some((Rule::new(source, proto, port), form))
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
            r#"rule family="ipv4" source address="10.0.0.1" destination address="10.0.0.2" port port="22" protocol="tcp" accept"#,
            r#"rule family="ipv6" source address="::ffff:10.0.0.1" port port="22" protocol="tcp" accept"#,
            r#"rule family="ipv4" source ipset="x" port port="22" protocol="tcp" accept"#,
            r#"rule service name="ssh" accept"#,
        ];
        for text in not_ours {
            assert_eq!(parse(text), None, "{text}");
        }
    }

    #[test]
    fn forms_alternate() {
        assert_eq!(SourceForm::Plain.other(), SourceForm::HostPrefix);
        assert_eq!(SourceForm::HostPrefix.other(), SourceForm::Plain);
    }
}
