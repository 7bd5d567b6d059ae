//! Rendering grants as `ipfw add` arguments and reading rules back from
//! `ipfw -S list` / `ipfw -d set N list` output.
//!
//! A grant carries its expiry in the rule comment, `// postern_exp_<unix secs>`.
//! The `_exp_<n>` part is what fwknopd writes (`// _exp_<n>`), so either daemon
//! can reconcile the other's leftovers.

use spa_core::firewall::{Opening, Rule};
use spa_core::request::Proto;
use std::collections::BTreeSet;
use std::net::IpAddr;

pub fn expiry_comment(expires_at: u64) -> String {
    format!("postern_exp_{expires_at}")
}

/// The expiry in a comment written by postern or fwknopd (`…_exp_<digits>…`).
pub fn parse_expiry(comment: &str) -> Option<u64> {
    let (_, after) = comment.split_once("_exp_")?;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// `add NUM set SET pass PROTO from SRC [SPORT] to me|me6|DST dst-port PORT [setup] keep-state // postern_exp_TS`
/// (`DST`: the grant's destination, ENABLE_DESTINATION_RULE, as fwknopd;
/// `SPORT`: the source port a native knock pinned its grant to, in ipfw(8)'s
/// `from ADDR PORTS` form).
///
/// fwknopd's shape, with two differences: the protocol by name (ipfw lists it
/// by name anyway), and `setup` (match TCP SYN only) left out for UDP, where
/// fwknopd's rule could never match.
pub fn add_args(num: u32, set: u8, rule: &Rule, expires_at: u64) -> Vec<String> {
    let me = match rule.destination {
        Some(dst) => dst.to_string(),
        None if rule.source.is_ipv4() => "me".into(),
        None => "me6".into(),
    };
    let mut args: Vec<String> = [
        "add",
        &num.to_string(),
        "set",
        &set.to_string(),
        "pass",
        rule.proto.name(),
        "from",
        &rule.source.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(rule.source_port.map(|p| p.to_string()));
    args.extend(["to".into(), me, "dst-port".into(), rule.port.to_string()]);
    if rule.proto == Proto::Tcp {
        args.push("setup".into());
    }
    args.extend(["keep-state".into(), "//".into(), expiry_comment(expires_at)]);
    args
}

/// What a listed rule is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A pass rule with an expiry comment.
    Grant(Rule, u64),
    CheckState,
    /// Anything else (its text after number and set).
    Other(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub num: u32,
    /// Known when listed with `-S`.
    pub set: Option<u8>,
    /// Listed as `# DISABLED` (its set is disabled).
    pub disabled: bool,
    pub kind: Kind,
}

impl Listed {
    pub fn grant(&self) -> Option<(&Rule, u64)> {
        match &self.kind {
            Kind::Grant(rule, exp) => Some((rule, *exp)),
            _ => None,
        }
    }

    pub fn opening(&self, now: u64) -> Option<Opening> {
        self.grant().map(|(rule, expires_at)| Opening {
            rule: rule.clone(),
            timeout_secs: u32::try_from(expires_at.saturating_sub(now)).unwrap_or(u32::MAX),
            expires_at,
        })
    }
}

fn host(addr: &str) -> Option<IpAddr> {
    let (a, len) = match addr.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (addr, None),
    };
    let a: IpAddr = a.parse().ok()?;
    let full = if a.is_ipv4() { "32" } else { "128" };
    (len.is_none() || len == Some(full)).then_some(a)
}

/// `allow tcp from 192.0.2.1 to me 22 setup keep-state :default // postern_exp_1030`
/// (older ipfw: `dst-port 22`, no `:default`; fwknopd: `// _exp_1030`); a
/// pinned grant: `from 192.0.2.1 40022 to me 22` (ipfw prints the source port
/// after the address, or as `src-port 40022` among the options).
fn parse_body(body: &str) -> Kind {
    let (rule_text, comment) = match body.split_once("//") {
        Some((r, c)) => (r, Some(c.trim())),
        None => (body, None),
    };
    let words: Vec<&str> = rule_text.split_whitespace().collect();
    if words.first() == Some(&"check-state") {
        return Kind::CheckState;
    }
    let grant = || -> Option<Kind> {
        let expires_at = parse_expiry(comment?)?;
        let (action, proto, src, sport, dst, rest) = match words.as_slice() {
            [action, proto, "from", src, "to", dst, rest @ ..] => {
                (action, proto, src, None, dst, rest)
            }
            [action, proto, "from", src, sport, "to", dst, rest @ ..] => {
                (action, proto, src, Some(port_number(sport)?), dst, rest)
            }
            _ => return None,
        };
        if !["allow", "pass", "accept", "permit"].contains(action) {
            return None;
        }
        let proto = match *proto {
            "tcp" | "6" => Proto::Tcp,
            "udp" | "17" => Proto::Udp,
            _ => return None,
        };
        let rest = rest.strip_prefix(&["dst-port"]).unwrap_or(rest);
        let (port, options) = rest.split_first()?;
        let port = port_number(port)?;
        let sport = match options.iter().position(|w| *w == "src-port") {
            Some(i) if sport.is_none() => Some(port_number(options.get(i + 1)?)?),
            Some(_) => return None,
            None => sport,
        };
        // `me`/`me6`/`any`: any destination; a host: a destination-bound grant.
        let rule = Rule {
            destination: host(dst),
            source_port: sport,
            ..Rule::new(host(src)?, proto, port)
        };
        Some(Kind::Grant(rule, expires_at))
    };
    grant().unwrap_or_else(|| Kind::Other(body.trim().to_string()))
}

/// One port (a list or range, `40000-40100`, is not a grant postern writes).
fn port_number(word: &str) -> Option<u16> {
    word.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| word.parse().ok())
        .flatten()
}

/// Static rules of an `ipfw [-S] list` listing (dynamic rules are skipped).
pub fn parse_list(output: &str) -> Vec<Listed> {
    let mut out = Vec::new();
    for line in output.lines() {
        if line.starts_with("## Dynamic rules") {
            break;
        }
        let (disabled, line) = match line.strip_prefix("# DISABLED ") {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let line = line.trim();
        let Some((num, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(num) = num.parse::<u32>() else {
            continue;
        };
        let (set, body) = match rest.strip_prefix("set ").and_then(|r| r.split_once(' ')) {
            Some((set, body)) if set.parse::<u8>().is_ok() => (set.parse().ok(), body),
            _ => (None, rest),
        };
        out.push(Listed {
            num,
            set,
            disabled,
            kind: parse_body(body),
        });
    }
    out
}

/// Rule numbers that have dynamic rules (`## Dynamic rules` section of `-d`):
/// `10001 5 420 (291s) STATE tcp 192.0.2.1 50000 <-> 198.51.100.1 22 :default`.
pub fn parse_dynamic(output: &str) -> BTreeSet<u32> {
    output
        .lines()
        .skip_while(|l| !l.starts_with("## Dynamic rules"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(src: &str, proto: Proto, port: u16) -> Rule {
        Rule::new(src.parse().unwrap(), proto, port)
    }

    #[test]
    fn renders_fwknop_shaped_rules() {
        assert_eq!(
            add_args(10001, 1, &rule("192.0.2.1", Proto::Tcp, 22), 1030).join(" "),
            "add 10001 set 1 pass tcp from 192.0.2.1 to me dst-port 22 setup keep-state // postern_exp_1030"
        );
        assert_eq!(
            add_args(10002, 1, &rule("2001:db8::1", Proto::Udp, 53), 1030).join(" "),
            "add 10002 set 1 pass udp from 2001:db8::1 to me6 dst-port 53 keep-state // postern_exp_1030"
        );
        let pinned = rule("192.0.2.1", Proto::Tcp, 22).pinned(Some(40022));
        assert_eq!(
            add_args(10003, 1, &pinned, 1030).join(" "),
            "add 10003 set 1 pass tcp from 192.0.2.1 40022 to me dst-port 22 setup keep-state // postern_exp_1030"
        );
    }

    #[test]
    fn pinned_grants_are_read_back_with_their_source_port() {
        let pinned = rule("192.0.2.1", Proto::Tcp, 22).pinned(Some(40022));
        for line in [
            "10001 set 1 allow tcp from 192.0.2.1 40022 to me 22 setup keep-state :default // postern_exp_1030",
            "10001 set 1 allow tcp from 192.0.2.1 40022 to me dst-port 22 setup keep-state // postern_exp_1030",
            "10001 set 1 allow tcp from 192.0.2.1 to me 22 src-port 40022 setup keep-state // postern_exp_1030",
        ] {
            assert_eq!(parse_list(line)[0].kind, Kind::Grant(pinned.clone(), 1030), "{line}");
        }
        // Port lists and ranges are not postern's grants: never read as one port.
        for line in [
            "10001 set 1 allow tcp from 192.0.2.1 40000-40100 to me 22 // postern_exp_1030",
            "10001 set 1 allow tcp from 192.0.2.1 40022,40023 to me 22 // postern_exp_1030",
            "10001 set 1 allow tcp from 192.0.2.1 40022 to me 22 src-port 40023 // postern_exp_1030",
        ] {
            assert!(matches!(parse_list(line)[0].kind, Kind::Other(_)), "{line}");
        }
    }

    #[test]
    fn parses_listings_of_every_vintage() {
        let listing = "\
00100 set 0 allow ip from any to any via lo0
10000 set 1 check-state :default
10001 set 1 allow tcp from 192.0.2.1 to me 22 setup keep-state :default // postern_exp_1030
10002 set 1 allow udp from 2001:db8::1 to me6 dst-port 53 keep-state // _exp_1060
# DISABLED 10003 set 2 allow tcp from 192.0.2.3 to me 443 setup keep-state :default // postern_exp_900
10004 set 1 allow tcp from 198.51.100.0/24 to me 22 // postern_exp_1
10005 set 1 allow tcp from 192.0.2.5 to me 22 setup keep-state
65535 set 31 deny ip from any to any
## Dynamic rules (1 160):
10001 5 420 (291s) STATE tcp 192.0.2.1 50000 <-> 198.51.100.1 22 :default
";
        let l = parse_list(listing);
        assert_eq!(l.len(), 8);
        assert_eq!(
            l[0].kind,
            Kind::Other("allow ip from any to any via lo0".into())
        );
        assert_eq!(
            (l[1].num, l[1].set, &l[1].kind),
            (10000, Some(1), &Kind::CheckState)
        );
        assert_eq!(
            l[2].kind,
            Kind::Grant(rule("192.0.2.1", Proto::Tcp, 22), 1030)
        );
        assert_eq!(
            l[3].kind,
            Kind::Grant(rule("2001:db8::1", Proto::Udp, 53), 1060)
        );
        assert!(l[4].disabled && l[4].set == Some(2));
        assert_eq!(
            l[4].grant(),
            Some((&rule("192.0.2.3", Proto::Tcp, 443), 900))
        );
        assert!(
            matches!(l[5].kind, Kind::Other(_)),
            "networks are not grants"
        );
        assert!(
            matches!(l[6].kind, Kind::Other(_)),
            "no expiry, not a grant"
        );
        assert_eq!(parse_dynamic(listing), BTreeSet::from([10001]));
        assert!(parse_dynamic("10001 set 2 allow tcp from any to any\n").is_empty());
        // without -S
        let l = parse_list("10001 allow tcp from 192.0.2.1 to me 22 // postern_exp_5\n");
        assert_eq!((l[0].set, l[0].grant().map(|g| g.1)), (None, Some(5)));
        assert_eq!(l[0].opening(2).unwrap().timeout_secs, 3);
    }
}
