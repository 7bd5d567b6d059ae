//! Rendering granted rules as iptables rule specs, and reading them back from
//! `iptables -S` output.
//!
//! A rule carries its expiry in a comment, `postern_exp_<unix seconds>`. The
//! `_exp_<n>` part is what fwknopd writes and parses, so each daemon can
//! reconcile the other's leftovers in a shared chain (e.g. `FWKNOP_INPUT`).
//!
//! A NAT grant is several rules (DNAT, FORWARD accept, SNAT, …); each carries
//! the whole grant after the expiry, `postern_exp_<ts>_nat_<port>_<to_addr>_<to_port>`
//! plus `_local`, `_nodnat`, `_all`, `_masq` or `_snat_<addr>` as they apply, so
//! `list()` returns the grant as it was made and `revoke()` finds all its rules.
//! A grant bound to the packet's destination (ENABLE_DESTINATION_RULE) has
//! `_dst_<addr>` right after the expiry, and a FORWARD_ALL grant, whose rules
//! name no protocol, `_p_<proto>`: every rule of a grant then reads back as the
//! same grant. A grant pinned to the client's source port (postern's native
//! protocol) has `_sport_<port>` after that, and its rules match the port
//! (`--sport`, the reply's `--dport`, DOCKER-USER's `--ctorigsrcport`).
//! fwknopd reads such a comment as a plain expiry.

use crate::chains::Role;
use spa_core::firewall::{NatRule, Opening, Rule, Snat};
use spa_core::request::Proto;
use std::net::IpAddr;

/// Comment on a plain grant.
pub fn expiry_comment(expires_at: u64) -> String {
    format!("postern_exp_{expires_at}")
}

/// Comment on every rule of a grant: the expiry, the destination, and for NAT
/// the whole grant.
pub fn comment(rule: &Rule, expires_at: u64) -> String {
    let mut text = expiry_comment(expires_at);
    if let Some(dst) = rule.destination {
        text.push_str(&format!("_dst_{dst}"));
    }
    if let Some(sport) = rule.source_port {
        text.push_str(&format!("_sport_{sport}"));
    }
    if let Some(nat) = &rule.nat {
        if nat.forward_all {
            text.push_str(&format!("_p_{}", rule.proto.name()));
        }
        text.push('_');
        text.push_str(&nat.tag(rule.port));
    }
    text
}

/// The expiry in a comment written by postern or fwknopd (`…_exp_<digits>…`).
pub fn parse_expiry(comment: &str) -> Option<u64> {
    parse_comment(comment).map(|c| c.expires_at)
}

/// What a comment says about its grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comment {
    pub expires_at: u64,
    pub destination: Option<IpAddr>,
    /// The protocol of a FORWARD_ALL grant (its rules name none).
    pub proto: Option<Proto>,
    /// A grant pinned to the client's source port.
    pub source_port: Option<u16>,
    /// For a postern NAT rule: the grant's port and NAT.
    pub nat: Option<(u16, NatRule)>,
}

/// `None` for a comment without expiry or with a part postern cannot read.
pub fn parse_comment(comment: &str) -> Option<Comment> {
    let (_, after) = comment.split_once("_exp_")?;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    let mut parsed = Comment {
        expires_at: digits.parse().ok()?,
        destination: None,
        proto: None,
        source_port: None,
        nat: None,
    };
    let mut rest = &after[digits.len()..];
    // `_<word>_<value>` segments, in the order [`comment`] writes them.
    let segment = |name: &str, rest: &mut &str| -> Option<String> {
        let tail = rest
            .strip_prefix('_')?
            .strip_prefix(name)?
            .strip_prefix('_')?;
        let value = tail.split('_').next().unwrap_or("");
        *rest = &tail[value.len()..];
        Some(value.to_string())
    };
    if let Some(dst) = segment("dst", &mut rest) {
        parsed.destination = Some(dst.parse().ok()?);
    }
    if let Some(sport) = segment("sport", &mut rest) {
        parsed.source_port = Some(sport.parse().ok()?);
    }
    if let Some(proto) = segment("p", &mut rest) {
        parsed.proto = Some(proto.parse().ok()?);
    }
    if let Some(tag) = rest.strip_prefix('_').filter(|t| t.starts_with("nat_")) {
        parsed.nat = Some(NatRule::parse_tag(tag)?);
    }
    Some(parsed)
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
    // FORWARD_ALL: what reaches the inner host is not limited to a protocol or
    // port (the input accept of local NAT never is FORWARD_ALL).
    let all_ports = nat.is_some_and(|n| n.forward_all) && role != Role::Input;
    // The addresses matched: after DNAT where DNAT comes first; the output
    // rule is the reply, so its addresses are swapped.
    let (saddr, daddr) = match (role, nat) {
        (Role::Output, _) => (rule.destination, Some(rule.source)),
        (Role::Forward | Role::Snat | Role::Masquerade, Some(n)) => {
            (Some(rule.source), Some(n.to_addr))
        }
        (Role::Docker, _) => (Some(rule.source), None),
        _ => (Some(rule.source), rule.destination),
    };
    let port = match (role, nat) {
        (Role::Input | Role::Forward | Role::Snat | Role::Masquerade, Some(n)) => n.to_port,
        _ => rule.port,
    };
    let mut words: Vec<String> = Vec::new();
    for (flag, addr) in [("-s", saddr), ("-d", daddr)] {
        if let Some(a) = addr {
            words.extend([flag.into(), host(a)]);
        }
    }
    if !all_ports {
        words.extend(["-p".into(), proto.into()]);
        let port = port.to_string();
        // A pinned grant (plain only) also matches the client's port.
        let pinned = |flag: &str| -> Vec<String> {
            match rule.source_port {
                Some(p) => vec![flag.to_string(), p.to_string()],
                None => Vec::new(),
            }
        };
        match role {
            // DOCKER-USER runs after Docker's DNAT: match the port the client asked for.
            Role::Docker => {
                words.extend(["-m", "conntrack"].map(String::from));
                words.extend(pinned("--ctorigsrcport"));
                words.extend(["--ctorigdstport", &port, "--ctdir", "ORIGINAL"].map(String::from));
            }
            Role::Output => {
                words.extend(["-m", proto, "--sport", &port].map(String::from));
                words.extend(pinned("--dport"));
            }
            _ => {
                words.extend(["-m", proto].map(String::from));
                words.extend(pinned("--sport"));
                words.extend(["--dport", &port].map(String::from));
            }
        }
    }
    words.extend([
        "-m".into(),
        "comment".into(),
        "--comment".into(),
        comment(rule, expires_at),
    ]);
    words.extend(["-j".into(), target.into()]);
    match (role, nat) {
        (Role::Dnat, Some(n)) if all_ports => {
            words.extend(["--to-destination".into(), n.to_addr.to_string()]);
        }
        (Role::Dnat, Some(n)) => {
            words.extend(["--to-destination".into(), socket_text(n.to_addr, n.to_port)]);
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

/// Read source, protocol, port and expiry from a rule spec, and from its
/// comment the destination and NAT of a postern grant. An output rule (a
/// `--sport` and no `--dport`) is the reply of a grant: its `-d` is the grant's
/// source. Anything negated or an address that is not a single host is not a grant.
fn parse_grant(spec: &str) -> Option<(Rule, u64)> {
    let words = shell_words::split(spec).ok()?;
    let (mut saddr, mut daddr, mut proto, mut dport, mut sport, mut parsed) =
        (None, None, None, None, None, None);
    let mut words = words.iter();
    while let Some(word) = words.next() {
        match word.as_str() {
            "!" => return None,
            "-s" | "--source" => saddr = Some(parse_host(words.next()?)?),
            "-d" | "--destination" => daddr = Some(parse_host(words.next()?)?),
            "-p" | "--protocol" => proto = words.next()?.parse::<Proto>().ok(),
            "--dport" | "--destination-port" | "--ctorigdstport" => {
                dport = words.next()?.parse::<u16>().ok()
            }
            "--sport" | "--source-port" => sport = words.next()?.parse::<u16>().ok(),
            "--comment" => parsed = parse_comment(words.next()?),
            _ => {}
        }
    }
    let c = parsed?;
    // An output rule is a grant's reply: from its port, to the pinned port if any.
    let reply = match (dport, sport) {
        (None, Some(_)) => true,
        (Some(d), Some(_)) => saddr.is_none() && c.source_port == Some(d),
        _ => false,
    };
    let (source, port) = if reply {
        (daddr?, sport)
    } else {
        (saddr?, dport)
    };
    let (port, nat) = match c.nat {
        Some((port, nat)) => (port, Some(nat)),
        None => (port?, None),
    };
    Some((
        Rule {
            source,
            proto: c.proto.or(proto)?,
            port,
            nat,
            destination: c.destination,
            source_port: c.source_port,
        },
        c.expires_at,
    ))
}

/// `ADDR` or `ADDR/32` (`/128`): a single host.
fn parse_host(text: &str) -> Option<IpAddr> {
    let (addr, prefix) = text.split_once('/').unwrap_or((text, ""));
    let addr: IpAddr = addr.parse().ok()?;
    if !prefix.is_empty() && prefix.parse::<u8>().ok()? != host_prefix(addr) {
        return None;
    }
    Some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_grants_match_the_source_port_and_read_back() {
        let r = Rule::new("192.0.2.7".parse().unwrap(), Proto::Tcp, 22).pinned(Some(40022));
        let spec = join(&rule_spec(&r, 1_700_000_030, "ACCEPT"));
        assert_eq!(
            spec,
            "-s 192.0.2.7/32 -p tcp -m tcp --sport 40022 --dport 22 -m comment \
             --comment postern_exp_1700000030_sport_40022 -j ACCEPT"
        );
        let reply = join(&role_spec(Role::Output, &r, 1_700_000_030, "ACCEPT"));
        assert_eq!(
            reply,
            "-d 192.0.2.7/32 -p tcp -m tcp --sport 22 --dport 40022 -m comment \
             --comment postern_exp_1700000030_sport_40022 -j ACCEPT"
        );
        let docker = join(&role_spec(Role::Docker, &r, 1_700_000_030, "ACCEPT"));
        assert!(
            docker.contains("-m conntrack --ctorigsrcport 40022 --ctorigdstport 22"),
            "{docker}"
        );
        for spec in [spec, reply, docker] {
            assert_eq!(
                parse_grant(&spec),
                Some((r.clone(), 1_700_000_030)),
                "{spec}"
            );
        }
        // An unpinned grant's comment is as before.
        assert_eq!(comment(&r.clone().pinned(None), 5), expiry_comment(5));
    }

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
        for (local, dnat, snat, forward_all, destination) in [
            (false, true, None, false, None),
            (true, false, None, false, None),
            (false, true, Some(Snat::Masquerade), false, None),
            (
                false,
                false,
                Some(Snat::To("2001:db8::9".parse().unwrap())),
                false,
                None,
            ),
            (false, true, Some(Snat::Masquerade), true, None),
            (
                false,
                true,
                None,
                true,
                Some("2001:db8::1".parse().unwrap()),
            ),
            (
                true,
                true,
                None,
                false,
                Some("2001:db8::1".parse().unwrap()),
            ),
        ] {
            let r = Rule {
                nat: Some(NatRule {
                    to_addr: to,
                    to_port: 22,
                    local,
                    snat,
                    dnat,
                    forward_all,
                }),
                destination,
                ..rule("2001:db8::7", Proto::Udp, 55000)
            };
            let c = comment(&r, 77);
            let parsed = parse_comment(&c).unwrap();
            assert_eq!(
                (parsed.expires_at, parsed.destination, parsed.nat),
                (77, destination, Some((55000, r.nat.clone().unwrap()))),
                "{c}"
            );
            // fwknopd takes the digits after `_exp_`.
            assert!(c.starts_with("postern_exp_77_"), "{c}");
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
        assert_eq!(parse_expiry("_exp_5 by fwknopd"), Some(5));
        assert_eq!(parse_comment("postern_exp_5_dst_x"), None);
    }

    #[test]
    fn destination_and_output_rules_read_back_as_their_grant() {
        let r = Rule {
            destination: Some("203.0.113.1".parse().unwrap()),
            ..rule("192.0.2.7", Proto::Tcp, 22)
        };
        for (role, form) in [
            (Role::Input, "-s 192.0.2.7/32 -d 203.0.113.1/32 -p tcp -m tcp --dport 22 -m comment --comment postern_exp_9_dst_203.0.113.1 -j ACCEPT"),
            (Role::Output, "-s 203.0.113.1/32 -d 192.0.2.7/32 -p tcp -m tcp --sport 22 -m comment --comment postern_exp_9_dst_203.0.113.1 -j ACCEPT"),
        ] {
            let spec = join(&role_spec(role, &r, 9, "ACCEPT"));
            assert_eq!(spec, form);
            let line = format!("-A C {spec}");
            assert_eq!(parse_listing(&line, "C")[0].grant, Some((r.clone(), 9)));
        }
        // Without a destination the output rule matches any local address.
        let plain = rule("192.0.2.7", Proto::Udp, 53);
        assert_eq!(
            join(&role_spec(Role::Output, &plain, 9, "ACCEPT")),
            "-d 192.0.2.7/32 -p udp -m udp --sport 53 -m comment --comment postern_exp_9 -j ACCEPT"
        );
        // fwknopd's own output rule reads back too.
        let fwknopd = "-A C -s 0.0.0.0/0 -d 192.0.2.7/32 -p udp -m udp --sport 53 -m comment --comment _exp_9 -j ACCEPT";
        assert_eq!(
            parse_listing(fwknopd, "C")[0]
                .grant
                .as_ref()
                .map(|g| g.0.source),
            None,
            "0.0.0.0/0 is not a host"
        );
    }

    #[test]
    fn forward_all_rules_name_no_port() {
        let r = Rule {
            nat: Some(NatRule {
                to_addr: "10.0.0.5".parse().unwrap(),
                to_port: 22,
                local: false,
                snat: Some(Snat::Masquerade),
                dnat: true,
                forward_all: true,
            }),
            ..rule("192.0.2.7", Proto::Tcp, 22)
        };
        let c = "postern_exp_9_p_tcp_nat_22_10.0.0.5_22_all_masq";
        for (role, form) in [
            (
                Role::Forward,
                format!("-s 192.0.2.7/32 -d 10.0.0.5/32 -m comment --comment {c} -j ACCEPT"),
            ),
            (
                Role::Dnat,
                format!(
                    "-s 192.0.2.7/32 -m comment --comment {c} -j DNAT --to-destination 10.0.0.5"
                ),
            ),
            (
                Role::Masquerade,
                format!("-s 192.0.2.7/32 -d 10.0.0.5/32 -m comment --comment {c} -j MASQUERADE"),
            ),
        ] {
            let target = if role == Role::Forward {
                "ACCEPT"
            } else {
                &form[form.find("-j ").unwrap() + 3..]
                    .split(' ')
                    .next()
                    .unwrap()
                    .to_string()
            };
            let spec = join(&role_spec(role, &r, 9, target));
            assert_eq!(spec, form);
            assert_eq!(
                parse_listing(&format!("-A C {spec}"), "C")[0].grant,
                Some((r.clone(), 9))
            );
        }
    }
}
