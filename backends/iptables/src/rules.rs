//! Rendering granted rules as iptables rule specs, and reading them back from
//! `iptables -S` output.
//!
//! A rule carries its expiry in a comment, `postern_exp_<unix seconds>`. The
//! `_exp_<n>` part is what fwknopd writes and parses, so each daemon can
//! reconcile the other's leftovers in a shared chain (e.g. `FWKNOP_INPUT`).
//!
//! A NAT grant is several rules (DNAT, FORWARD accept, SNAT, …); each carries
//! the whole grant after the expiry, `postern_exp_<ts>_nat_<port>_<to_addr>_<to_port>`
//! plus `_local`, `_nodnat`, `_masq` or `_snat_<addr>` as they apply, so
//! `list()` returns the grant as it was made and `revoke()` finds all its rules.
//! fwknopd reads such a comment as a plain expiry.

use crate::chains::Role;
use spa_core::firewall::{NatRule, Opening, Rule, Snat};
use spa_core::request::Proto;
use std::net::IpAddr;

/// Comment on a plain grant.
pub fn expiry_comment(expires_at: u64) -> String {
    format!("postern_exp_{expires_at}")
}

/// Comment on every rule of a grant: the expiry, and for NAT the whole grant.
pub fn comment(rule: &Rule, expires_at: u64) -> String {
    let expiry = expiry_comment(expires_at);
    match &rule.nat {
        Some(nat) => format!("{expiry}_{}", nat.tag(rule.port)),
        None => expiry,
    }
}

/// The expiry in a comment written by postern or fwknopd (`…_exp_<digits>…`).
pub fn parse_expiry(comment: &str) -> Option<u64> {
    parse_comment(comment).map(|(exp, _)| exp)
}

/// The expiry, and for a postern NAT rule the grant's port and NAT.
/// `None` for a comment without expiry or with a NAT part postern cannot read.
#[allow(clippy::type_complexity)]
pub fn parse_comment(comment: &str) -> Option<(u64, Option<(u16, NatRule)>)> {
    let (_, after) = comment.split_once("_exp_")?;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    let expires_at = digits.parse().ok()?;
    match after[digits.len()..].strip_prefix('_') {
        Some(tag) if tag.starts_with("nat_") => {
            NatRule::parse_tag(tag).map(|nat| (expires_at, Some(nat)))
        }
        _ => Some((expires_at, None)),
    }
}

fn host_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

fn host(addr: IpAddr) -> String {
    format!("{addr}/{}", host_prefix(addr))
}

/// `addr:port`, with the address bracketed for IPv6 (DNAT's `--to-destination`).
fn socket_text(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// The rule spec of a plain grant in the input chain.
pub fn rule_spec(rule: &Rule, expires_at: u64, target: &str) -> Vec<String> {
    role_spec(Role::Input, rule, expires_at, target)
}

/// The rule spec (everything after `-A CHAIN`) a grant puts in the chain of
/// `role`, in the form `iptables -S` prints it, so a listing matches what was
/// written. For a role the rule does not use (see [`crate::chains::roles_for`])
/// the result is meaningless.
pub fn role_spec(role: Role, rule: &Rule, expires_at: u64, target: &str) -> Vec<String> {
    let proto = rule.proto.name();
    let nat = rule.nat.as_ref();
    let to = |n: &NatRule| (n.to_addr, n.to_port);
    let mut words: Vec<String> = vec!["-s".into(), host(rule.source)];
    // The destination the rule matches, after DNAT where DNAT comes first.
    let (daddr, dport) = match (role, nat) {
        (Role::Input, Some(n)) => (None, n.to_port),
        (Role::Forward | Role::Snat | Role::Masquerade, Some(n)) => (Some(n.to_addr), n.to_port),
        _ => (None, rule.port),
    };
    if let Some(d) = daddr {
        words.extend(["-d".into(), host(d)]);
    }
    words.extend(["-p".into(), proto.into()]);
    if role == Role::Docker {
        // DOCKER-USER runs after Docker's DNAT: match the port the client asked for.
        words.extend(
            [
                "-m",
                "conntrack",
                "--ctorigdstport",
                &dport.to_string(),
                "--ctdir",
                "ORIGINAL",
            ]
            .map(String::from),
        );
    } else {
        words.extend(["-m", proto, "--dport", &dport.to_string()].map(String::from));
    }
    words.extend([
        "-m".into(),
        "comment".into(),
        "--comment".into(),
        comment(rule, expires_at),
    ]);
    words.extend(["-j".into(), target.into()]);
    match (role, nat) {
        (Role::Dnat, Some(n)) => {
            let (a, p) = to(n);
            words.extend(["--to-destination".into(), socket_text(a, p)]);
        }
        (
            Role::Snat,
            Some(NatRule {
                snat: Some(Snat::To(a)),
                ..
            }),
        ) => {
            words.extend(["--to-source".into(), a.to_string()]);
        }
        _ => {}
    }
    words
}

/// Join rule words for iptables-restore, which splits on whitespace (our words
/// never contain any) and knows only double quotes (so no shell quoting).
pub fn join(words: &[String]) -> String {
    words.join(" ")
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

/// Read source, protocol, port and expiry from a rule spec, and for a postern
/// NAT rule the NAT from its comment. Anything negated or a source that is not
/// a single host is not a grant.
fn parse_grant(spec: &str) -> Option<(Rule, u64)> {
    let words = shell_words::split(spec).ok()?;
    let (mut source, mut proto, mut port, mut parsed) = (None, None, None, None);
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
            "--dport" | "--destination-port" | "--ctorigdstport" => {
                port = words.next()?.parse::<u16>().ok()
            }
            "--comment" => parsed = parse_comment(words.next()?),
            _ => {}
        }
    }
    let (expires_at, nat) = parsed?;
    let (port, nat) = match nat {
        Some((port, nat)) => (port, Some(nat)),
        None => (port?, None),
    };
    Some((
        Rule {
            source: source?,
            proto: proto?,
            port,
            nat,
            destination: None,
        },
        expires_at,
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
        Rule::new(source.parse().unwrap(), proto, port)
    }

    #[test]
    fn renders_the_listing_form() {
        let spec = rule_spec(
            &rule("2001:db8::7", Proto::Udp, 53),
            1_700_000_000,
            "ACCEPT",
        );
        assert_eq!(
            join(&spec),
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
        let line = format!("-A C {}", join(&rule_spec(&r, 42, "ACCEPT")));
        assert_eq!(parse_listing(&line, "C")[0].grant, Some((r, 42)));
        assert_eq!(parse_expiry("x_exp_12y"), Some(12));
        assert_eq!(parse_expiry("exp_12"), None);
    }

    #[test]
    fn nat_comments_round_trip_and_fwknopd_reads_the_expiry() {
        let to = "fd00::2".parse().unwrap();
        for (local, dnat, snat) in [
            (false, true, None),
            (true, false, None),
            (false, true, Some(Snat::Masquerade)),
            (false, false, Some(Snat::To("2001:db8::9".parse().unwrap()))),
        ] {
            let r = Rule {
                nat: Some(NatRule {
                    to_addr: to,
                    to_port: 22,
                    local,
                    snat,
                    dnat,
                    forward_all: false,
                }),
                ..rule("2001:db8::7", Proto::Tcp, 55000)
            };
            let c = comment(&r, 77);
            assert_eq!(
                parse_comment(&c),
                Some((77, Some((55000, r.nat.clone().unwrap())))),
                "{c}"
            );
            // fwknopd takes the digits after `_exp_`.
            assert!(c.starts_with("postern_exp_77_nat_55000_fd00::2_22"), "{c}");
            for role in [
                Role::Input,
                Role::Forward,
                Role::Dnat,
                Role::Snat,
                Role::Masquerade,
            ] {
                let line = format!("-A C {}", join(&role_spec(role, &r, 77, "X")));
                assert_eq!(
                    parse_listing(&line, "C")[0].grant,
                    Some((r.clone(), 77)),
                    "{line}"
                );
            }
        }
        assert_eq!(
            parse_comment("postern_exp_5_nat_x"),
            None,
            "unreadable NAT part: not a grant"
        );
        assert_eq!(parse_comment("postern_exp_5_nat_1_10.0.0.1_2_bogus"), None);
        assert_eq!(parse_comment("_exp_5 by fwknopd"), Some((5, None)));
    }
}
