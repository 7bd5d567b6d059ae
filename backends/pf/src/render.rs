//! What the pf backend writes (table names, the anchor's rules) and reads back
//! (`pfctl -s Tables`, `pfctl -T show`, `pfctl -s rules` output).

use spa_core::firewall::Rule;
use spa_core::request::Proto;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

/// One table per protocol and port, `postern_tcp_22`, and per destination for
/// grants bound to one (ENABLE_DESTINATION_RULE): `postern_tcp_22_cb007105`,
/// the IPv4 address in hex (pf table names hold 31 characters, too few for an
/// IPv6 address; fwknopd's destination rules are IPv4 only too), and per
/// source port for grants pinned to one: `postern_tcp_22_s40022`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableKey {
    pub proto: Proto,
    pub port: u16,
    pub dst: Option<Ipv4Addr>,
    /// The client's pinned source port (postern's native protocol).
    pub sport: Option<u16>,
}

const TABLE_PREFIX: &str = "postern_";

impl TableKey {
    /// The table of a rule; `None` for a destination pf tables cannot name (IPv6).
    pub fn of(rule: &Rule) -> Option<TableKey> {
        let dst = match rule.destination {
            None => None,
            Some(IpAddr::V4(d)) => Some(d),
            Some(IpAddr::V6(_)) => return None,
        };
        Some(TableKey {
            proto: rule.proto,
            port: rule.port,
            dst,
            sport: rule.source_port,
        })
    }

    /// The rule `addr` has in this table.
    pub fn rule(&self, addr: IpAddr) -> Rule {
        Rule {
            destination: self.dst.map(IpAddr::V4),
            ..Rule::new(addr, self.proto, self.port)
        }
        .pinned(self.sport)
    }

    pub fn name(&self) -> String {
        let base = format!("{TABLE_PREFIX}{}_{}", self.proto.name(), self.port);
        match (self.dst, self.sport) {
            (Some(d), _) => format!("{base}_{:08x}", u32::from(d)),
            (None, Some(s)) => format!("{base}_s{s}"),
            (None, None) => base,
        }
    }

    /// The key of a table postern made; other tables in the anchor are not ours.
    pub fn parse(name: &str) -> Option<TableKey> {
        let rest = name.strip_prefix(TABLE_PREFIX)?;
        let (proto, rest) = rest.split_once('_')?;
        let mut sport = None;
        let (port, dst) = match rest.split_once('_') {
            Some((port, pin)) if pin.starts_with('s') => {
                let digits = &pin[1..];
                if digits.is_empty()
                    || !digits.bytes().all(|b| b.is_ascii_digit())
                    || digits.starts_with('0')
                {
                    return None;
                }
                sport = Some(digits.parse().ok()?);
                (port, None)
            }
            Some((port, hex))
                if hex.len() == 8
                    && hex
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) =>
            {
                (
                    port,
                    Some(Ipv4Addr::from(u32::from_str_radix(hex, 16).ok()?)),
                )
            }
            Some(_) => return None,
            None => (rest, None),
        };
        let proto = match proto {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => return None,
        };
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.starts_with('0') {
            return None;
        }
        Some(TableKey {
            proto,
            port: port.parse().ok()?,
            dst,
            sport,
        })
    }

    /// The anchor rule that lets the table's addresses in. No address family is
    /// named, so one table holds IPv4 and IPv6 clients alike.
    pub fn pass_rule(&self) -> String {
        format!(
            "pass in quick proto {} from <{}>{} to {} port {} keep state",
            self.proto.name(),
            self.name(),
            self.sport.map_or(String::new(), |s| format!(" port {s}")),
            self.dst.map_or("any".to_string(), |d| d.to_string()),
            self.port
        )
    }
}

/// The whole rule set of the anchor for these tables (loaded with `pfctl -a A -f -`).
pub fn anchor_rules(tables: &BTreeSet<TableKey>) -> String {
    tables.iter().map(|t| t.pass_rule() + "\n").collect()
}

/// `pfctl -s Tables`: one name per line (with `-v`, flags come first).
pub fn parse_tables(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(str::to_string)
        .collect()
}

/// `pfctl -T show`: one address per line, indented; hosts print without a
/// prefix length. Negated entries (`!addr`) and networks are not grants.
pub fn parse_show(output: &str) -> Vec<IpAddr> {
    output
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('!'))
        .filter_map(|l| {
            let (addr, len) = match l.split_once('/') {
                Some((a, len)) => (a, Some(len)),
                None => (l, None),
            };
            let addr: IpAddr = addr.parse().ok()?;
            let host = if addr.is_ipv4() { "32" } else { "128" };
            (len.is_none() || len == Some(host)).then_some(addr)
        })
        .collect()
}

/// Whether the main ruleset (`pfctl -s rules`) evaluates `anchor`: a rule
/// `anchor "NAME"` (pfctl prints `anchor "NAME" all`), or a wildcard
/// `anchor "PARENT/*"` for a nested name.
pub fn anchor_linked(main_rules: &str, anchor: &str) -> bool {
    main_rules.lines().any(|line| {
        let Some(rest) = line.trim().strip_prefix("anchor ") else {
            return false;
        };
        let rest = rest.trim_start();
        let name = match rest.strip_prefix('"') {
            Some(quoted) => quoted.split('"').next().unwrap_or(""),
            None => rest.split_whitespace().next().unwrap_or(""),
        };
        name == anchor
            || name.strip_suffix("/*").is_some_and(|parent| {
                anchor
                    .strip_prefix(parent)
                    .is_some_and(|r| r.starts_with('/') && !r[1..].contains('/'))
            })
            || (name == "*" && !anchor.contains('/'))
    })
}

/// The part of a pfctl error that says a table or anchor is simply not there.
pub fn is_absent(stderr: &str) -> bool {
    stderr.contains("Table does not exist") || stderr.contains("Anchor or Ruleset does not exist")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_round_trip() {
        let k = TableKey {
            proto: Proto::Udp,
            port: 53,
            dst: None,
            sport: None,
        };
        assert_eq!(k.name(), "postern_udp_53");
        assert_eq!(TableKey::parse("postern_udp_53"), Some(k));
        for other in [
            "postern_icmp_1",
            "postern_tcp_",
            "postern_tcp_022",
            "mine",
            "postern_tcp_99999",
            "postern_tcp_2x",
            "postern_tcp_22_cb00710",
            "postern_tcp_22_CB007105",
            "postern_tcp_22_cb007105_x",
            "postern_tcp_22_s",
            "postern_tcp_22_s022",
            "postern_tcp_22_s70000",
        ] {
            assert_eq!(TableKey::parse(other), None, "{other}");
        }
        assert_eq!(
            k.pass_rule(),
            "pass in quick proto udp from <postern_udp_53> to any port 53 keep state"
        );
        let d = TableKey {
            proto: Proto::Tcp,
            port: 65535,
            dst: Some(Ipv4Addr::new(203, 0, 113, 5)),
            sport: None,
        };
        assert_eq!(d.name(), "postern_tcp_65535_cb007105");
        assert!(d.name().len() < 32, "pf's table name limit");
        assert_eq!(TableKey::parse(&d.name()), Some(d));
        assert_eq!(
            d.pass_rule(),
            "pass in quick proto tcp from <postern_tcp_65535_cb007105> to 203.0.113.5 port 65535 keep state"
        );
        let r = Rule::new("192.0.2.7".parse().unwrap(), Proto::Tcp, 22).pinned(Some(40022));
        let p = TableKey::of(&r).unwrap();
        assert_eq!(p.name(), "postern_tcp_22_s40022");
        assert_eq!(TableKey::parse(&p.name()), Some(p));
        assert_eq!(p.rule(r.source), r);
        assert_eq!(
            p.pass_rule(),
            "pass in quick proto tcp from <postern_tcp_22_s40022> port 40022 to any port 22 keep state"
        );
    }

    #[test]
    fn parses_listings() {
        assert_eq!(
            parse_tables("postern_tcp_22\npostern_udp_53\n"),
            ["postern_tcp_22", "postern_udp_53"]
        );
        assert_eq!(
            parse_tables("-pa-r--\tpostern_tcp_22\n"),
            ["postern_tcp_22"]
        );
        let show =
            "   192.0.2.1\n   2001:db8::1\n  !192.0.2.9\n   198.51.100.0/24\n   192.0.2.4/32\n";
        let addrs: Vec<String> = parse_show(show).iter().map(|a| a.to_string()).collect();
        assert_eq!(addrs, ["192.0.2.1", "2001:db8::1", "192.0.2.4"]);
    }

    #[test]
    fn anchor_link_check() {
        let main = "scrub in all fragment reassemble\nanchor \"postern\" all\npass in all flags S/SA keep state\n";
        assert!(anchor_linked(main, "postern"));
        assert!(!anchor_linked(main, "fwknop"));
        assert!(!anchor_linked("anchor \"posternx\" all\n", "postern"));
        let mac = "anchor \"com.apple/*\" all\n";
        assert!(anchor_linked(mac, "com.apple/postern"));
        assert!(!anchor_linked(mac, "postern"));
        assert!(!anchor_linked(mac, "com.apple/a/b"));
        assert!(anchor_linked("anchor postern\n", "postern"));
        assert!(anchor_linked("anchor \"*\" all\n", "postern"));
        assert!(!anchor_linked("# anchor \"postern\"\n", "postern"));
    }
}
