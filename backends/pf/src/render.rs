//! What the pf backend writes (table names, the anchor's rules) and reads back
//! (`pfctl -s Tables`, `pfctl -T show`, `pfctl -s rules` output).

use spa_core::request::Proto;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// One table per protocol and port: `postern_tcp_22`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableKey {
    pub proto: Proto,
    pub port: u16,
}

const TABLE_PREFIX: &str = "postern_";

impl TableKey {
    pub fn name(&self) -> String {
        format!("{TABLE_PREFIX}{}_{}", self.proto.name(), self.port)
    }

    /// The key of a table postern made; other tables in the anchor are not ours.
    pub fn parse(name: &str) -> Option<TableKey> {
        let rest = name.strip_prefix(TABLE_PREFIX)?;
        let (proto, port) = rest.split_once('_')?;
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
        })
    }

    /// The anchor rule that lets the table's addresses in. No address family is
    /// named, so one table holds IPv4 and IPv6 clients alike.
    pub fn pass_rule(&self) -> String {
        format!(
            "pass in quick proto {} from <{}> to any port {} keep state",
            self.proto.name(),
            self.name(),
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
        ] {
            assert_eq!(TableKey::parse(other), None, "{other}");
        }
        assert_eq!(
            k.pass_rule(),
            "pass in quick proto udp from <postern_udp_53> to any port 53 keep state"
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
