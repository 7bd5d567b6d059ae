//! Rendering granted rules as iptables rule specs, and reading them back from
//! `iptables -S` output.
//!
//! A rule carries its expiry in a comment, `postern_exp_<unix seconds>`. The
//! `_exp_<n>` part is what fwknopd writes and parses, so each daemon can
//! reconcile the other's leftovers in a shared chain (e.g. `FWKNOP_INPUT`).

use spa_core::firewall::{Opening, Rule};
use spa_core::request::Proto;
use std::net::IpAddr;

/// Comment on every rule postern adds.
pub fn expiry_comment(expires_at: u64) -> String {
    format!("postern_exp_{expires_at}")
}

/// The expiry in a comment written by postern or fwknopd (`…_exp_<digits>…`).
pub fn parse_expiry(comment: &str) -> Option<u64> {
    let (_, after) = comment.split_once("_exp_")?;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn host_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

/// The rule spec (everything after `-A CHAIN`) for a grant, in the form
/// `iptables -S` prints it, so a listing matches what was written.
pub fn rule_spec(rule: &Rule, expires_at: u64, target: &str) -> Vec<String> {
    let proto = rule.proto.name();
    [
        "-s",
        &format!("{}/{}", rule.source, host_prefix(rule.source)),
        "-p",
        proto,
        "-m",
        proto,
        "--dport",
        &rule.port.to_string(),
        "-m",
        "comment",
        "--comment",
        &expiry_comment(expires_at),
        "-j",
        target,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// One `-A CHAIN …` line of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedRule {
    /// The spec exactly as listed (already quoted for iptables-restore), used to
    /// delete precisely this rule.
    pub spec: String,
    /// What the rule grants, if it is a grant with an expiry comment; other rules
    /// in the chain are counted but never touched individually.
    pub grant: Option<(Rule, u64)>,
}

impl ListedRule {
    pub fn opening(&self, now: u64) -> Option<Opening> {
        self.grant.as_ref().map(|(rule, expires_at)| Opening {
            rule: rule.clone(),
            timeout_secs: u32::try_from(expires_at.saturating_sub(now)).unwrap_or(u32::MAX),
            expires_at: *expires_at,
        })
    }
}

/// Parse `-S CHAIN` output: the `-A CHAIN` lines, in order.
pub fn parse_listing(output: &str, chain: &str) -> Vec<ListedRule> {
    let prefix = format!("-A {chain} ");
    output
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .map(|spec| ListedRule {
            spec: spec.trim_end().to_string(),
            grant: parse_grant(spec),
        })
        .collect()
}

/// Read source, protocol, port and expiry from a rule spec. Anything negated or
/// a source that is not a single host is not a grant.
fn parse_grant(spec: &str) -> Option<(Rule, u64)> {
    let words = shell_words::split(spec).ok()?;
    let (mut source, mut proto, mut port, mut expiry) = (None, None, None, None);
    let mut words = words.iter();
    while let Some(word) = words.next() {
        match word.as_str() {
            "!" => return None,
            "-s" | "--source" => {
                let text = words.next()?;
                let (addr, prefix) = text.split_once('/').unwrap_or((text, ""));
                let addr: IpAddr = addr.parse().ok()?;
                if !prefix.is_empty() && prefix.parse::<u8>().ok()? != host_prefix(addr) {
                    return None;
                }
                source = Some(addr);
            }
            "-p" | "--protocol" => proto = words.next()?.parse::<Proto>().ok(),
            "--dport" | "--destination-port" => port = words.next()?.parse::<u16>().ok(),
            "--comment" => expiry = parse_expiry(words.next()?),
            _ => {}
        }
    }
    Some((
        Rule {
            source: source?,
            proto: proto?,
            port: port?,
            nat: None,
        },
        expiry?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "\
-N POSTERN_INPUT
-A POSTERN_INPUT -s 192.0.2.7/32 -p tcp -m tcp --dport 22 -m comment --comment postern_exp_1700000030 -j ACCEPT
-A POSTERN_INPUT -s 192.0.2.8/32 -d 203.0.113.1/32 -p udp -m udp --dport 53 -m comment --comment _exp_1700000060 -j ACCEPT
-A POSTERN_INPUT -s 10.0.0.0/8 -p tcp -m tcp --dport 22 -m comment --comment postern_exp_1 -j ACCEPT
-A POSTERN_INPUT -s 192.0.2.9/32 -p tcp -m tcp --dport 80 -m comment --comment \"hand made\" -j ACCEPT
-A POSTERN_INPUTX -s 192.0.2.10/32 -p tcp -m tcp --dport 80 -m comment --comment postern_exp_5 -j ACCEPT
";

    fn rule(source: &str, proto: Proto, port: u16) -> Rule {
        Rule {
            source: source.parse().unwrap(),
            proto,
            port,
            nat: None,
        }
    }

    #[test]
    fn renders_the_listing_form() {
        let spec = rule_spec(
            &rule("2001:db8::7", Proto::Udp, 53),
            1_700_000_000,
            "ACCEPT",
        );
        assert_eq!(
            shell_words::join(&spec),
            "-s 2001:db8::7/128 -p udp -m udp --dport 53 -m comment --comment postern_exp_1700000000 -j ACCEPT"
        );
    }

    #[test]
    fn parses_grants_from_postern_and_fwknopd_and_counts_the_rest() {
        let listed = parse_listing(LISTING, "POSTERN_INPUT");
        assert_eq!(listed.len(), 4);
        assert_eq!(
            listed[0].grant,
            Some((rule("192.0.2.7", Proto::Tcp, 22), 1_700_000_030))
        );
        assert_eq!(
            listed[1].grant,
            Some((rule("192.0.2.8", Proto::Udp, 53), 1_700_000_060))
        );
        assert_eq!(listed[2].grant, None, "a network is not a granted host");
        assert_eq!(listed[3].grant, None, "no expiry comment");
        assert_eq!(
            listed[3].spec,
            "-s 192.0.2.9/32 -p tcp -m tcp --dport 80 -m comment --comment \"hand made\" -j ACCEPT"
        );
        let opening = listed[0].opening(1_700_000_000).unwrap();
        assert_eq!(
            (opening.timeout_secs, opening.expires_at),
            (30, 1_700_000_030)
        );
        assert_eq!(listed[0].opening(1_800_000_000).unwrap().timeout_secs, 0);
    }

    #[test]
    fn a_rendered_rule_reads_back() {
        let r = rule("192.0.2.7", Proto::Tcp, 22);
        let line = format!("-A C {}", shell_words::join(rule_spec(&r, 42, "ACCEPT")));
        assert_eq!(parse_listing(&line, "C")[0].grant, Some((r, 42)));
        assert_eq!(parse_expiry("x_exp_12y"), Some(12));
        assert_eq!(parse_expiry("exp_12"), None);
    }
}
