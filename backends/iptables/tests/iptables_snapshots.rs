//! Snapshot tests: the exact commands and iptables-restore input the backend
//! produces, against a fake that answers `-S` listings from canned text.

use postern_backend_common::fake::RecordingRunner;
use postern_backend_iptables::{IptablesBackend, IptablesConfig};
use spa_core::firewall::{Firewall, FirewallError, FwResult, NatRule, Opening, Rule, Snat};
use spa_core::request::Proto;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Canned `-S` output per (program, chain); `None` chain = whole table. A chain
/// absent from the map does not exist (listing it fails, as iptables does).
#[derive(Clone, Default)]
struct Tables(Arc<Mutex<HashMap<(String, String), String>>>);

impl Tables {
    fn set(&self, program: &str, chain: &str, listing: &str) {
        self.0
            .lock()
            .unwrap()
            .insert((program.into(), chain.into()), listing.into());
    }

    /// Both families have an (empty) POSTERN_INPUT and INPUT jumping to it.
    fn ready() -> Tables {
        let t = Tables::default();
        for p in ["iptables", "ip6tables"] {
            t.set(p, "POSTERN_INPUT", "-N POSTERN_INPUT\n");
            t.set(p, "INPUT", "-P INPUT ACCEPT\n-A INPUT -j POSTERN_INPUT\n");
        }
        t
    }

    fn respond(&self, argv: &[String], fail_restore: Option<&str>) -> FwResult<String> {
        let program = argv[0].as_str();
        if program.ends_with("-restore") {
            return match fail_restore {
                Some(p) if p == program => Err(FirewallError::Command {
                    command: argv.join(" "),
                    status: "exit status: 1".into(),
                    stderr: "line 3 failed".into(),
                }),
                _ => Ok(String::new()),
            };
        }
        let chain = match argv.iter().position(|a| a == "-S") {
            Some(i) => argv.get(i + 1).cloned().unwrap_or_default(),
            None => String::new(),
        };
        let map = self.0.lock().unwrap();
        if chain.is_empty() {
            let chains: String = map
                .keys()
                .filter(|(p, _)| p == program)
                .map(|(_, c)| format!("-N {c}\n"))
                .collect();
            return Ok(format!("-P INPUT ACCEPT\n{chains}"));
        }
        map.get(&(program.to_string(), chain.clone()))
            .cloned()
            .ok_or_else(|| FirewallError::Command {
                command: argv.join(" "),
                status: "exit status: 1".into(),
                stderr: format!(
                    "chain `{chain}' in table `filter' is incompatible, use 'nft' tool."
                ),
            })
    }
}

fn backend_with(
    config: &IptablesConfig,
    tables: &Tables,
    fail_restore: Option<&'static str>,
) -> (IptablesBackend, RecordingRunner) {
    let t = tables.clone();
    let fake = RecordingRunner::new(move |argv, _| t.respond(argv, fail_restore));
    let fw = IptablesBackend::new(config, Box::new(fake.clone()))
        .unwrap()
        .with_clock(std::sync::Arc::new(|| 1000));
    (fw, fake)
}

fn backend(tables: &Tables) -> (IptablesBackend, RecordingRunner) {
    backend_with(&IptablesConfig::default(), tables, None)
}

fn rule(source: &str, proto: Proto, port: u16) -> Rule {
    Rule::new(source.parse().unwrap(), proto, port)
}

fn opening(source: &str, proto: Proto, port: u16, expires_at: u64) -> Opening {
    Opening {
        rule: rule(source, proto, port),
        timeout_secs: (expires_at - 1000) as u32,
        expires_at,
    }
}

const LEFTOVERS: &str = "\
-N POSTERN_INPUT
-A POSTERN_INPUT -s 192.0.2.1/32 -p tcp -m tcp --dport 22 -m comment --comment postern_exp_900 -j ACCEPT
-A POSTERN_INPUT -s 192.0.2.2/32 -p tcp -m tcp --dport 22 -m comment --comment postern_exp_2000 -j ACCEPT
-A POSTERN_INPUT -s 192.0.2.3/32 -p udp -m udp --dport 53 -m comment --comment _exp_1000 -j ACCEPT
-A POSTERN_INPUT -s 198.51.100.0/24 -p tcp -m tcp --dport 443 -j ACCEPT
";

#[test]
fn init_on_a_fresh_system_creates_chain_and_jump_in_one_transaction() {
    let tables = Tables::default();
    tables.set(
        "iptables",
        "INPUT",
        "-P INPUT ACCEPT\n-A INPUT -i lo -j ACCEPT\n",
    );
    tables.set("ip6tables", "INPUT", "-P INPUT ACCEPT\n");
    let (mut fw, fake) = backend(&tables);
    fw.init(1000).unwrap();
    assert_eq!(
        fake.take_transcript(),
        "\
$ iptables -w 5 -t filter -S POSTERN_INPUT
$ iptables -w 5 -t filter -S
$ iptables -w 5 -t filter -S INPUT
$ iptables-restore -w 5 --noflush
| *filter
| :POSTERN_INPUT - [0:0]
| -I INPUT 1 -j POSTERN_INPUT
| COMMIT
$ ip6tables -w 5 -t filter -S POSTERN_INPUT
$ ip6tables -w 5 -t filter -S
$ ip6tables -w 5 -t filter -S INPUT
$ ip6tables-restore -w 5 --noflush
| *filter
| :POSTERN_INPUT - [0:0]
| -I INPUT 1 -j POSTERN_INPUT
| COMMIT
"
    );
}

#[test]
fn init_is_idempotent_and_removes_only_expired_leftovers() {
    let tables = Tables::ready();
    tables.set("iptables", "POSTERN_INPUT", LEFTOVERS);
    let (mut fw, fake) = backend(&tables);
    fw.init(1000).unwrap();
    assert_eq!(
        fake.take_transcript(),
        "\
$ iptables -w 5 -t filter -S POSTERN_INPUT
$ iptables -w 5 -t filter -S INPUT
$ iptables-restore -w 5 --noflush
| *filter
| -D POSTERN_INPUT -s 192.0.2.1/32 -p tcp -m tcp --dport 22 -m comment --comment postern_exp_900 -j ACCEPT
| -D POSTERN_INPUT -s 192.0.2.3/32 -p udp -m udp --dport 53 -m comment --comment _exp_1000 -j ACCEPT
| COMMIT
$ ip6tables -w 5 -t filter -S POSTERN_INPUT
$ ip6tables -w 5 -t filter -S INPUT
",
        "the live grant and the foreign rule stay; an up-to-date family needs no transaction"
    );
}

#[test]
fn flush_at_init_removes_live_grants_too() {
    let tables = Tables::ready();
    tables.set("iptables", "POSTERN_INPUT", LEFTOVERS);
    let config = IptablesConfig {
        flush_at_init: true,
        ipv6: false,
        ..IptablesConfig::default()
    };
    let (mut fw, fake) = backend_with(&config, &tables, None);
    fw.init(1000).unwrap();
    let text = fake.take_transcript();
    assert_eq!(text.matches("| -D POSTERN_INPUT").count(), 3, "{text}");
    assert!(
        !text.contains("198.51.100.0"),
        "foreign rules are never touched: {text}"
    );
}

#[test]
fn grant_inserts_one_rule_per_opening_per_family() {
    let tables = Tables::ready();
    let (mut fw, fake) = backend(&tables);
    fw.init(1000).unwrap();
    fake.take_transcript();
    fw.grant(&[
        opening("192.0.2.7", Proto::Tcp, 22, 1030),
        opening("2001:db8::7", Proto::Tcp, 22, 1030),
        opening("192.0.2.7", Proto::Udp, 53, 1030),
        opening("192.0.2.7", Proto::Tcp, 22, 1045), // same rule twice in a burst
    ])
    .unwrap();
    assert_eq!(
        fake.take_transcript(),
        "\
$ iptables -w 5 -t filter -S POSTERN_INPUT
$ iptables -w 5 -t filter -S INPUT
$ iptables-restore -w 5 --noflush
| *filter
| -I POSTERN_INPUT 1 -s 192.0.2.7/32 -p tcp -m tcp --dport 22 -m comment --comment postern_exp_1045 -j ACCEPT
| -I POSTERN_INPUT 1 -s 192.0.2.7/32 -p udp -m udp --dport 53 -m comment --comment postern_exp_1030 -j ACCEPT
| COMMIT
$ ip6tables -w 5 -t filter -S POSTERN_INPUT
$ ip6tables -w 5 -t filter -S INPUT
$ ip6tables-restore -w 5 --noflush
| *filter
| -I POSTERN_INPUT 1 -s 2001:db8::7/128 -p tcp -m tcp --dport 22 -m comment --comment postern_exp_1030 -j ACCEPT
| COMMIT
"
    );
}

#[test]
fn repeated_grant_replaces_the_rule_atomically_and_never_shortens() {
    let tables = Tables::ready();
    tables.set(
        "iptables",
        "POSTERN_INPUT",
        "-N POSTERN_INPUT\n-A POSTERN_INPUT -s 192.0.2.7/32 -p tcp -m tcp --dport 22 -m comment --comment postern_exp_1030 -j ACCEPT\n",
    );
    let (mut fw, fake) = backend(&tables);
    fw.init(1000).unwrap();
    fake.take_transcript();
    fw.grant(&[opening("192.0.2.7", Proto::Tcp, 22, 1090)])
        .unwrap();
    assert_eq!(
        fake.take_transcript(),
        "\
$ iptables -w 5 -t filter -S POSTERN_INPUT
$ iptables -w 5 -t filter -S INPUT
$ iptables-restore -w 5 --noflush
| *filter
| -D POSTERN_INPUT -s 192.0.2.7/32 -p tcp -m tcp --dport 22 -m comment --comment postern_exp_1030 -j ACCEPT
| -I POSTERN_INPUT 1 -s 192.0.2.7/32 -p tcp -m tcp --dport 22 -m comment --comment postern_exp_1090 -j ACCEPT
| COMMIT
"
    );
    fw.grant(&[opening("192.0.2.7", Proto::Tcp, 22, 1020)])
        .unwrap();
    assert_eq!(
        fake.take_transcript(),
        "$ iptables -w 5 -t filter -S POSTERN_INPUT\n$ iptables -w 5 -t filter -S INPUT\n",
        "covered already: no transaction"
    );
}

#[test]
fn duplicates_left_by_fwknopd_collapse_into_one_rule() {
    let tables = Tables::ready();
    tables.set(
        "iptables",
        "POSTERN_INPUT",
        "-N POSTERN_INPUT\n\
         -A POSTERN_INPUT -s 192.0.2.7/32 -p tcp -m tcp --dport 22 -m comment --comment _exp_1500 -j ACCEPT\n\
         -A POSTERN_INPUT -s 192.0.2.7/32 -p tcp -m tcp --dport 22 -m comment --comment _exp_1400 -j ACCEPT\n",
    );
    let (mut fw, fake) = backend(&tables);
    fw.init(1000).unwrap();
    fake.take_transcript();
    fw.grant(&[opening("192.0.2.7", Proto::Tcp, 22, 1030)])
        .unwrap();
    assert_eq!(
        fake.take_transcript(),
        "\
$ iptables -w 5 -t filter -S POSTERN_INPUT
$ iptables -w 5 -t filter -S INPUT
$ iptables-restore -w 5 --noflush
| *filter
| -D POSTERN_INPUT -s 192.0.2.7/32 -p tcp -m tcp --dport 22 -m comment --comment _exp_1500 -j ACCEPT
| -D POSTERN_INPUT -s 192.0.2.7/32 -p tcp -m tcp --dport 22 -m comment --comment _exp_1400 -j ACCEPT
| -I POSTERN_INPUT 1 -s 192.0.2.7/32 -p tcp -m tcp --dport 22 -m comment --comment postern_exp_1500 -j ACCEPT
| COMMIT
"
    );
}

#[test]
fn rule_position_is_clamped_to_the_chain_length() {
    let tables = Tables::ready();
    let mut config = IptablesConfig {
        ipv6: false,
        ..IptablesConfig::default()
    };
    config.input.rule_position = 5;
    config.input.jump_position = 3;
    tables.set(
        "iptables",
        "INPUT",
        "-P INPUT ACCEPT\n-A INPUT -i lo -j ACCEPT\n",
    );
    let (mut fw, fake) = backend_with(&config, &tables, None);
    fw.init(1000).unwrap();
    fw.grant(&[opening("192.0.2.7", Proto::Tcp, 22, 1030)])
        .unwrap();
    let text = fake.take_transcript();
    assert!(text.contains("| -I INPUT 2 -j POSTERN_INPUT\n"), "{text}");
    assert!(
        text.contains("| -I POSTERN_INPUT 1 -s 192.0.2.7/32"),
        "{text}"
    );
}

#[test]
fn list_revoke_flush_and_expire() {
    let tables = Tables::ready();
    tables.set("iptables", "POSTERN_INPUT", LEFTOVERS);
    tables.set(
        "ip6tables",
        "POSTERN_INPUT",
        "-N POSTERN_INPUT\n-A POSTERN_INPUT -s 2001:db8::7/128 -p tcp -m tcp --dport 22 -m comment --comment postern_exp_1200 -j ACCEPT\n",
    );
    let (mut fw, fake) = backend(&tables);
    let listed = fw.list().unwrap();
    assert_eq!(
        listed,
        vec![
            Opening {
                rule: rule("192.0.2.1", Proto::Tcp, 22),
                timeout_secs: 0,
                expires_at: 900
            },
            Opening {
                rule: rule("192.0.2.2", Proto::Tcp, 22),
                timeout_secs: 1000,
                expires_at: 2000
            },
            Opening {
                rule: rule("192.0.2.3", Proto::Udp, 53),
                timeout_secs: 0,
                expires_at: 1000
            },
            Opening {
                rule: rule("2001:db8::7", Proto::Tcp, 22),
                timeout_secs: 200,
                expires_at: 1200
            },
        ]
    );
    fake.take_transcript();

    fw.revoke(&[
        rule("192.0.2.2", Proto::Tcp, 22),
        rule("192.0.2.99", Proto::Tcp, 22),
    ])
    .unwrap();
    assert_eq!(
        fake.take_transcript(),
        "\
$ iptables -w 5 -t filter -S POSTERN_INPUT
$ iptables-restore -w 5 --noflush
| *filter
| -D POSTERN_INPUT -s 192.0.2.2/32 -p tcp -m tcp --dport 22 -m comment --comment postern_exp_2000 -j ACCEPT
| COMMIT
$ ip6tables -w 5 -t filter -S POSTERN_INPUT
"
    );

    let expired = fw.expire(1000).unwrap();
    assert_eq!(
        expired,
        vec![
            rule("192.0.2.1", Proto::Tcp, 22),
            rule("192.0.2.3", Proto::Udp, 53)
        ]
    );
    assert_eq!(
        fake.take_transcript(),
        "\
$ iptables -w 5 -t filter -S POSTERN_INPUT
$ iptables-restore -w 5 --noflush
| *filter
| -D POSTERN_INPUT -s 192.0.2.1/32 -p tcp -m tcp --dport 22 -m comment --comment postern_exp_900 -j ACCEPT
| -D POSTERN_INPUT -s 192.0.2.3/32 -p udp -m udp --dport 53 -m comment --comment _exp_1000 -j ACCEPT
| COMMIT
$ ip6tables -w 5 -t filter -S POSTERN_INPUT
"
    );

    fw.flush().unwrap();
    let text = fake.take_transcript();
    assert_eq!(text.matches("| -D POSTERN_INPUT").count(), 4, "{text}");
    assert!(
        text.contains("| -D POSTERN_INPUT -s 2001:db8::7/128 -p tcp"),
        "{text}"
    );
    assert!(
        !text.contains("198.51.100.0") && !text.contains("-F "),
        "flush keeps the chain and foreign rules: {text}"
    );
}

#[test]
fn list_and_expire_on_a_missing_chain_are_empty() {
    let tables = Tables::default();
    let (mut fw, fake) = backend(&tables);
    assert_eq!(fw.list().unwrap(), vec![]);
    assert_eq!(fw.expire(5000).unwrap(), vec![]);
    fw.revoke(&[rule("192.0.2.2", Proto::Tcp, 22)]).unwrap();
    assert!(!fake.take_transcript().contains("restore"));
}

#[test]
fn shutdown_removes_jump_rules_and_chain() {
    let tables = Tables::ready();
    let (mut fw, fake) = backend(&tables);
    fw.shutdown().unwrap();
    assert_eq!(
        fake.take_transcript(),
        "\
$ iptables -w 5 -t filter -S POSTERN_INPUT
$ iptables -w 5 -t filter -S INPUT
$ iptables-restore -w 5 --noflush
| *filter
| -D INPUT -j POSTERN_INPUT
| -F POSTERN_INPUT
| -X POSTERN_INPUT
| COMMIT
$ ip6tables -w 5 -t filter -S POSTERN_INPUT
$ ip6tables -w 5 -t filter -S INPUT
$ ip6tables-restore -w 5 --noflush
| *filter
| -D INPUT -j POSTERN_INPUT
| -F POSTERN_INPUT
| -X POSTERN_INPUT
| COMMIT
"
    );
    let config = IptablesConfig {
        flush_at_exit: false,
        ..IptablesConfig::default()
    };
    let (mut fw, fake) = backend_with(&config, &tables, None);
    fw.shutdown().unwrap();
    assert_eq!(fake.take_transcript(), "");
}

#[test]
fn a_failed_family_rolls_back_the_other() {
    let tables = Tables::ready();
    let (mut fw, fake) = backend_with(
        &IptablesConfig::default(),
        &tables,
        Some("ip6tables-restore"),
    );
    fw.init(1000).unwrap();
    fake.take_transcript();
    let err = fw
        .grant(&[
            opening("192.0.2.7", Proto::Tcp, 22, 1030),
            opening("2001:db8::7", Proto::Tcp, 22, 1030),
        ])
        .unwrap_err();
    assert!(err.to_string().contains("line 3 failed"), "{err}");
    assert_eq!(
        fake.take_transcript(),
        "\
$ iptables -w 5 -t filter -S POSTERN_INPUT
$ iptables -w 5 -t filter -S INPUT
$ iptables-restore -w 5 --noflush
| *filter
| -I POSTERN_INPUT 1 -s 192.0.2.7/32 -p tcp -m tcp --dport 22 -m comment --comment postern_exp_1030 -j ACCEPT
| COMMIT
$ ip6tables -w 5 -t filter -S POSTERN_INPUT
$ ip6tables -w 5 -t filter -S INPUT
$ ip6tables-restore -w 5 --noflush
| *filter
| -I POSTERN_INPUT 1 -s 2001:db8::7/128 -p tcp -m tcp --dport 22 -m comment --comment postern_exp_1030 -j ACCEPT
| COMMIT
$ iptables-restore -w 5 --noflush
| *filter
| -D POSTERN_INPUT -s 192.0.2.7/32 -p tcp -m tcp --dport 22 -m comment --comment postern_exp_1030 -j ACCEPT
| COMMIT
"
    );
}

#[test]
fn grant_before_init_initialises_first() {
    let tables = Tables::ready();
    let config = IptablesConfig {
        ipv6: false,
        wait_secs: 0,
        ..IptablesConfig::default()
    };
    let (mut fw, fake) = backend_with(&config, &tables, None);
    fw.grant(&[opening("192.0.2.7", Proto::Tcp, 22, 1030)])
        .unwrap();
    assert_eq!(
        fake.take_transcript(),
        "\
$ iptables -t filter -S POSTERN_INPUT
$ iptables -t filter -S INPUT
$ iptables -t filter -S POSTERN_INPUT
$ iptables -t filter -S INPUT
$ iptables-restore --noflush
| *filter
| -I POSTERN_INPUT 1 -s 192.0.2.7/32 -p tcp -m tcp --dport 22 -m comment --comment postern_exp_1030 -j ACCEPT
| COMMIT
"
    );
}

#[test]
fn nat_ipv6_off_and_unsupported_chains_are_refused_up_front() {
    let tables = Tables::ready();
    let config = IptablesConfig {
        ipv6: false,
        ..IptablesConfig::default()
    };
    let (mut fw, fake) = backend_with(&config, &tables, None);
    let mut nat = opening("192.0.2.7", Proto::Tcp, 22, 1030);
    nat.rule.nat = Some(NatRule {
        to_addr: "10.0.0.2".parse().unwrap(),
        to_port: 22,
        local: false,
        snat: None,
        dnat: true,
        forward_all: false,
    });
    let err = fw.grant(&[nat]).unwrap_err();
    assert!(
        matches!(err, FirewallError::Unsupported { .. })
            && err.to_string().contains("IPT_FORWARD_ACCESS")
            && err.to_string().contains("nat = true"),
        "NAT without its chains configured: {err}"
    );
    let err = fw
        .grant(&[
            opening("192.0.2.7", Proto::Tcp, 22, 1030),
            opening("2001:db8::1", Proto::Tcp, 22, 1030),
        ])
        .unwrap_err();
    assert!(matches!(err, FirewallError::Unsupported { .. }), "{err}");
    assert_eq!(
        fake.take_transcript(),
        "",
        "refused before running anything"
    );
}

/// ENABLE_IPT_OUTPUT: each plain grant also gets its reply accept in the
/// output chain; with ENABLE_DESTINATION_RULE both name the knocked address.
#[test]
fn output_and_destination_rules_are_rendered_as_fwknopd_does() {
    let tables = Tables::ready();
    tables.set("iptables", "FWKNOP_OUTPUT", "-N FWKNOP_OUTPUT\n");
    tables.set(
        "iptables",
        "OUTPUT",
        "-P OUTPUT DROP\n-A OUTPUT -j FWKNOP_OUTPUT\n",
    );
    let config: IptablesConfig = serde_json::from_str(
        r#"{"output": "ACCEPT, filter, OUTPUT, 1, FWKNOP_OUTPUT, 1", "ipv6": false}"#,
    )
    .unwrap();
    let (mut fw, fake) = backend_with(&config, &tables, None);
    fw.init(1000).unwrap();
    fake.take_transcript();
    let mut o = opening("192.0.2.7", Proto::Tcp, 22, 1030);
    o.rule.destination = Some("203.0.113.1".parse().unwrap());
    fw.grant(&[o, opening("192.0.2.8", Proto::Udp, 53, 1030)])
        .unwrap();
    assert_eq!(
        fake.take_transcript(),
        "\
$ iptables -w 5 -t filter -S POSTERN_INPUT
$ iptables -w 5 -t filter -S INPUT
$ iptables -w 5 -t filter -S FWKNOP_OUTPUT
$ iptables -w 5 -t filter -S OUTPUT
$ iptables-restore -w 5 --noflush
| *filter
| -I POSTERN_INPUT 1 -s 192.0.2.7/32 -d 203.0.113.1/32 -p tcp -m tcp --dport 22 -m comment --comment postern_exp_1030_dst_203.0.113.1 -j ACCEPT
| -I POSTERN_INPUT 1 -s 192.0.2.8/32 -p udp -m udp --dport 53 -m comment --comment postern_exp_1030 -j ACCEPT
| -I FWKNOP_OUTPUT 1 -s 203.0.113.1/32 -d 192.0.2.7/32 -p tcp -m tcp --sport 22 -m comment --comment postern_exp_1030_dst_203.0.113.1 -j ACCEPT
| -I FWKNOP_OUTPUT 1 -d 192.0.2.8/32 -p udp -m udp --sport 53 -m comment --comment postern_exp_1030 -j ACCEPT
| COMMIT
"
    );
}

/// ENABLE_RULE_PREPEND N appends (fwknopd's `-A`), Y inserts at the top.
#[test]
fn prepend_chooses_top_or_end_of_the_chain() {
    for (prepend, placement) in [(false, "-A POSTERN_INPUT"), (true, "-I POSTERN_INPUT 1")] {
        let tables = Tables::ready();
        tables.set("iptables", "POSTERN_INPUT", LEFTOVERS);
        let config = IptablesConfig {
            prepend: Some(prepend),
            ipv6: false,
            ..IptablesConfig::default()
        };
        let (mut fw, fake) = backend_with(&config, &tables, None);
        fw.grant(&[opening("192.0.2.9", Proto::Tcp, 22, 1030)])
            .unwrap();
        let transcript = fake.take_transcript();
        assert!(
            transcript.contains(&format!("| {placement} -s 192.0.2.9/32 -p tcp")),
            "{transcript}"
        );
    }
}

/// FORWARD_ALL: forward accept and MASQUERADE for every port to the target,
/// DNAT of everything from the source, as fwknopd's *_ALL_RULE_ARGS (postern
/// also limits the accept to the target).
#[test]
fn forward_all_rules_name_no_protocol_or_port() {
    let tables = Tables::ready();
    for chain in [
        "POSTERN_FORWARD",
        "POSTERN_PREROUTING",
        "POSTERN_MASQUERADE",
    ] {
        tables.set("iptables", chain, &format!("-N {chain}\n"));
    }
    for chain in ["FORWARD", "PREROUTING", "POSTROUTING"] {
        tables.set("iptables", chain, &format!("-P {chain} ACCEPT\n"));
    }
    let config = IptablesConfig {
        nat: true,
        ipv6: false,
        ..IptablesConfig::default()
    };
    let (mut fw, fake) = backend_with(&config, &tables, None);
    let mut o = opening("192.0.2.7", Proto::Tcp, 22, 1030);
    o.rule.nat = Some(NatRule {
        to_addr: "10.0.0.5".parse().unwrap(),
        to_port: 22,
        local: false,
        snat: Some(Snat::Masquerade),
        dnat: true,
        forward_all: true,
    });
    fw.grant(&[o]).unwrap();
    let rules: Vec<String> = fake
        .take_transcript()
        .lines()
        .filter(|l| l.starts_with("| -I POSTERN_"))
        .map(String::from)
        .collect();
    let c = "postern_exp_1030_p_tcp_nat_22_10.0.0.5_22_all_masq";
    assert_eq!(
        rules,
        [
            format!("| -I POSTERN_FORWARD 1 -s 192.0.2.7/32 -d 10.0.0.5/32 -m comment --comment {c} -j ACCEPT"),
            format!("| -I POSTERN_PREROUTING 1 -s 192.0.2.7/32 -m comment --comment {c} -j DNAT --to-destination 10.0.0.5"),
            format!("| -I POSTERN_MASQUERADE 1 -s 192.0.2.7/32 -d 10.0.0.5/32 -m comment --comment {c} -j MASQUERADE"),
        ]
    );
}

#[test]
fn a_missing_iptables_binary_is_reported_as_missing() {
    let config = IptablesConfig {
        iptables: "/nonexistent/iptables".into(),
        ..IptablesConfig::default()
    };
    let err = IptablesBackend::system(&config).err().unwrap();
    assert!(
        matches!(
            &err,
            FirewallError::Missing {
                backend: "iptables",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("/nonexistent/iptables"), "{err}");

    // Also when the binary vanishes after start-up: the runner's report is renamed.
    let fake = RecordingRunner::new(|argv, _| {
        Err(FirewallError::Missing {
            backend: "runner",
            what: format!("the program `{}`", argv[0]),
            hint: String::new(),
        })
    });
    let mut fw = IptablesBackend::new(&IptablesConfig::default(), Box::new(fake)).unwrap();
    let err = fw.init(1000).unwrap_err();
    assert!(
        matches!(
            &err,
            FirewallError::Missing {
                backend: "iptables",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("apt install iptables"), "{err}");
}

#[test]
fn fwknopd_chain_names_are_honoured() {
    let tables = Tables::default();
    tables.set("iptables", "INPUT", "-P INPUT ACCEPT\n");
    let config: IptablesConfig = serde_json::from_str(
        r#"{"input": "ACCEPT, filter, INPUT, 1, FWKNOP_INPUT, 1", "ipv6": false}"#,
    )
    .unwrap();
    let (mut fw, fake) = backend_with(&config, &tables, None);
    fw.init(1000).unwrap();
    let text = fake.take_transcript();
    assert!(
        text.contains("| :FWKNOP_INPUT - [0:0]\n| -I INPUT 1 -j FWKNOP_INPUT\n"),
        "{text}"
    );
}

#[test]
fn a_lost_jump_or_chain_is_restored_in_the_grant_transaction() {
    let tables = Tables::ready();
    let config = IptablesConfig {
        ipv6: false,
        ..IptablesConfig::default()
    };
    let (mut fw, fake) = backend_with(&config, &tables, None);
    fw.init(1000).unwrap();
    fake.take_transcript();
    // A firewall reload flushed INPUT and deleted our chain.
    tables
        .0
        .lock()
        .unwrap()
        .remove(&("iptables".to_string(), "POSTERN_INPUT".to_string()));
    tables.set("iptables", "INPUT", "-P INPUT ACCEPT\n");
    fw.grant(&[opening("192.0.2.7", Proto::Tcp, 22, 1030)])
        .unwrap();
    assert_eq!(
        fake.take_transcript(),
        "\
$ iptables -w 5 -t filter -S POSTERN_INPUT
$ iptables -w 5 -t filter -S
$ iptables -w 5 -t filter -S INPUT
$ iptables-restore -w 5 --noflush
| *filter
| :POSTERN_INPUT - [0:0]
| -I INPUT 1 -j POSTERN_INPUT
| -I POSTERN_INPUT 1 -s 192.0.2.7/32 -p tcp -m tcp --dport 22 -m comment --comment postern_exp_1030 -j ACCEPT
| COMMIT
"
    );
}

// ---- NAT and Docker ----

fn nat_opening(
    source: &str,
    to: &str,
    local: bool,
    snat: Option<Snat>,
    expires_at: u64,
) -> Opening {
    let mut o = opening(source, Proto::Tcp, 55000, expires_at);
    o.rule.nat = Some(NatRule {
        to_addr: to.parse().unwrap(),
        to_port: 22,
        local,
        snat,
        dnat: true,
        forward_all: false,
    });
    o
}

/// Both families with every chain `nat = true` manages, empty and jumped to.
fn nat_ready() -> Tables {
    let t = Tables::ready();
    for p in ["iptables", "ip6tables"] {
        for (from, chain) in [
            ("FORWARD", "POSTERN_FORWARD"),
            ("PREROUTING", "POSTERN_PREROUTING"),
            ("POSTROUTING", "POSTERN_POSTROUTING"),
        ] {
            t.set(p, chain, &format!("-N {chain}\n"));
            t.set(
                p,
                from,
                &format!("-P {from} ACCEPT\n-A {from} -j {chain}\n"),
            );
        }
        t.set(p, "POSTERN_MASQUERADE", "-N POSTERN_MASQUERADE\n");
        t.set(
            p,
            "POSTROUTING",
            "-P POSTROUTING ACCEPT\n-A POSTROUTING -j POSTERN_POSTROUTING\n-A POSTROUTING -j POSTERN_MASQUERADE\n",
        );
    }
    t
}

fn nat_config() -> IptablesConfig {
    IptablesConfig {
        nat: true,
        ..IptablesConfig::default()
    }
}

#[test]
fn init_with_nat_creates_every_chain_one_transaction_per_table() {
    let tables = Tables::default();
    for (from, policy) in [
        ("INPUT", "-P INPUT ACCEPT\n"),
        ("FORWARD", "-P FORWARD DROP\n"),
        ("PREROUTING", "-P PREROUTING ACCEPT\n"),
        ("POSTROUTING", "-P POSTROUTING ACCEPT\n"),
    ] {
        tables.set("iptables", from, policy);
    }
    let config = IptablesConfig {
        ipv6: false,
        ..nat_config()
    };
    let (mut fw, fake) = backend_with(&config, &tables, None);
    fw.init(1000).unwrap();
    assert_eq!(
        fake.take_transcript(),
        "\
$ iptables -w 5 -t filter -S POSTERN_INPUT
$ iptables -w 5 -t filter -S
$ iptables -w 5 -t filter -S INPUT
$ iptables -w 5 -t filter -S POSTERN_FORWARD
$ iptables -w 5 -t filter -S
$ iptables -w 5 -t filter -S FORWARD
$ iptables-restore -w 5 --noflush
| *filter
| :POSTERN_INPUT - [0:0]
| -I INPUT 1 -j POSTERN_INPUT
| :POSTERN_FORWARD - [0:0]
| -I FORWARD 1 -j POSTERN_FORWARD
| COMMIT
$ iptables -w 5 -t nat -S POSTERN_PREROUTING
$ iptables -w 5 -t nat -S
$ iptables -w 5 -t nat -S PREROUTING
$ iptables -w 5 -t nat -S POSTERN_POSTROUTING
$ iptables -w 5 -t nat -S
$ iptables -w 5 -t nat -S POSTROUTING
$ iptables -w 5 -t nat -S POSTERN_MASQUERADE
$ iptables -w 5 -t nat -S
$ iptables -w 5 -t nat -S POSTROUTING
$ iptables-restore -w 5 --noflush
| *nat
| :POSTERN_PREROUTING - [0:0]
| -I PREROUTING 1 -j POSTERN_PREROUTING
| :POSTERN_POSTROUTING - [0:0]
| -I POSTROUTING 1 -j POSTERN_POSTROUTING
| :POSTERN_MASQUERADE - [0:0]
| -I POSTROUTING 1 -j POSTERN_MASQUERADE
| COMMIT
"
    );
}

#[test]
fn forward_nat_grant_is_a_filter_then_a_nat_transaction() {
    let tables = nat_ready();
    let (mut fw, fake) = backend_with(&nat_config(), &tables, None);
    fw.init(1000).unwrap();
    fake.take_transcript();
    fw.grant(&[nat_opening(
        "192.0.2.7",
        "10.0.0.2",
        false,
        Some(Snat::Masquerade),
        1030,
    )])
    .unwrap();
    assert_eq!(
        fake.take_transcript(),
        "\
$ iptables -w 5 -t filter -S POSTERN_FORWARD
$ iptables -w 5 -t filter -S FORWARD
$ iptables -w 5 -t nat -S POSTERN_PREROUTING
$ iptables -w 5 -t nat -S PREROUTING
$ iptables -w 5 -t nat -S POSTERN_MASQUERADE
$ iptables -w 5 -t nat -S POSTROUTING
$ iptables-restore -w 5 --noflush
| *filter
| -I POSTERN_FORWARD 1 -s 192.0.2.7/32 -d 10.0.0.2/32 -p tcp -m tcp --dport 22 -m comment --comment postern_exp_1030_nat_55000_10.0.0.2_22_masq -j ACCEPT
| COMMIT
$ iptables-restore -w 5 --noflush
| *nat
| -I POSTERN_PREROUTING 1 -s 192.0.2.7/32 -p tcp -m tcp --dport 55000 -m comment --comment postern_exp_1030_nat_55000_10.0.0.2_22_masq -j DNAT --to-destination 10.0.0.2:22
| -I POSTERN_MASQUERADE 1 -s 192.0.2.7/32 -d 10.0.0.2/32 -p tcp -m tcp --dport 22 -m comment --comment postern_exp_1030_nat_55000_10.0.0.2_22_masq -j MASQUERADE
| COMMIT
"
    );
}

#[test]
fn local_nat_snat_and_ipv6_dnat_rules() {
    let tables = nat_ready();
    let (mut fw, fake) = backend_with(&nat_config(), &tables, None);
    fw.init(1000).unwrap();
    fake.take_transcript();
    fw.grant(&[nat_opening("192.0.2.7", "198.51.100.1", true, None, 1030)])
        .unwrap();
    assert_eq!(
        fake.take_transcript(),
        "\
$ iptables -w 5 -t filter -S POSTERN_INPUT
$ iptables -w 5 -t filter -S INPUT
$ iptables -w 5 -t nat -S POSTERN_PREROUTING
$ iptables -w 5 -t nat -S PREROUTING
$ iptables-restore -w 5 --noflush
| *filter
| -I POSTERN_INPUT 1 -s 192.0.2.7/32 -p tcp -m tcp --dport 22 -m comment --comment postern_exp_1030_nat_55000_198.51.100.1_22_local -j ACCEPT
| COMMIT
$ iptables-restore -w 5 --noflush
| *nat
| -I POSTERN_PREROUTING 1 -s 192.0.2.7/32 -p tcp -m tcp --dport 55000 -m comment --comment postern_exp_1030_nat_55000_198.51.100.1_22_local -j DNAT --to-destination 198.51.100.1:22
| COMMIT
"
    );
    fw.grant(&[
        nat_opening(
            "192.0.2.8",
            "10.0.0.3",
            false,
            Some(Snat::To("203.0.113.9".parse().unwrap())),
            1030,
        ),
        nat_opening("2001:db8::7", "fd00::2", false, None, 1030),
    ])
    .unwrap();
    let text = fake.take_transcript();
    for line in [
        "| -I POSTERN_POSTROUTING 1 -s 192.0.2.8/32 -d 10.0.0.3/32 -p tcp -m tcp --dport 22 -m comment --comment postern_exp_1030_nat_55000_10.0.0.3_22_snat_203.0.113.9 -j SNAT --to-source 203.0.113.9\n",
        "| -I POSTERN_PREROUTING 1 -s 2001:db8::7/128 -p tcp -m tcp --dport 55000 -m comment --comment postern_exp_1030_nat_55000_fd00::2_22 -j DNAT --to-destination [fd00::2]:22\n",
        "| -I POSTERN_FORWARD 1 -s 2001:db8::7/128 -d fd00::2/128 -p tcp -m tcp --dport 22 -m comment --comment postern_exp_1030_nat_55000_fd00::2_22 -j ACCEPT\n",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    assert!(text.contains("$ ip6tables-restore"), "{text}");
}

/// What `iptables -S` prints for a forward NAT grant with MASQUERADE.
fn listed_forward_nat(tables: &Tables, exp: u64) {
    let c = format!("postern_exp_{exp}_nat_55000_10.0.0.2_22_masq");
    tables.set(
        "iptables",
        "POSTERN_FORWARD",
        &format!("-N POSTERN_FORWARD\n-A POSTERN_FORWARD -s 192.0.2.7/32 -d 10.0.0.2/32 -p tcp -m tcp --dport 22 -m comment --comment \"{c}\" -j ACCEPT\n"),
    );
    tables.set(
        "iptables",
        "POSTERN_PREROUTING",
        &format!("-N POSTERN_PREROUTING\n-A POSTERN_PREROUTING -s 192.0.2.7/32 -p tcp -m tcp --dport 55000 -m comment --comment \"{c}\" -j DNAT --to-destination 10.0.0.2:22\n"),
    );
    tables.set(
        "iptables",
        "POSTERN_MASQUERADE",
        &format!("-N POSTERN_MASQUERADE\n-A POSTERN_MASQUERADE -s 192.0.2.7/32 -d 10.0.0.2/32 -p tcp -m tcp --dport 22 -m comment --comment \"{c}\" -j MASQUERADE\n"),
    );
}

#[test]
fn a_nat_grant_lists_once_and_revoke_expire_remove_all_its_rules() {
    let tables = nat_ready();
    listed_forward_nat(&tables, 1200);
    let config = IptablesConfig {
        ipv6: false,
        ..nat_config()
    };
    let (mut fw, fake) = backend_with(&config, &tables, None);
    let want = nat_opening("192.0.2.7", "10.0.0.2", false, Some(Snat::Masquerade), 1200);
    assert_eq!(
        fw.list().unwrap(),
        vec![Opening {
            timeout_secs: 200,
            ..want.clone()
        }]
    );
    fake.take_transcript();

    // Refresh: a repeated grant replaces each rule once, with the same expiry.
    fw.init(1000).unwrap();
    fake.take_transcript();
    fw.grant(&[Opening {
        expires_at: 1300,
        ..want.clone()
    }])
    .unwrap();
    let text = fake.take_transcript();
    assert_eq!(text.matches("| -D POSTERN_").count(), 3, "{text}");
    assert_eq!(text.matches("| -I POSTERN_").count(), 3, "{text}");
    assert_eq!(text.matches("postern_exp_1300_nat").count(), 3, "{text}");
    // Not longer than what is there: nothing to do.
    fw.grant(&[Opening {
        expires_at: 1100,
        ..want.clone()
    }])
    .unwrap();
    assert!(!fake.take_transcript().contains("restore"));

    fw.revoke(std::slice::from_ref(&want.rule)).unwrap();
    assert_eq!(
        fake.take_transcript(),
        "\
$ iptables -w 5 -t filter -S POSTERN_INPUT
$ iptables -w 5 -t filter -S POSTERN_FORWARD
$ iptables-restore -w 5 --noflush
| *filter
| -D POSTERN_FORWARD -s 192.0.2.7/32 -d 10.0.0.2/32 -p tcp -m tcp --dport 22 -m comment --comment \"postern_exp_1200_nat_55000_10.0.0.2_22_masq\" -j ACCEPT
| COMMIT
$ iptables -w 5 -t nat -S POSTERN_PREROUTING
$ iptables -w 5 -t nat -S POSTERN_POSTROUTING
$ iptables -w 5 -t nat -S POSTERN_MASQUERADE
$ iptables-restore -w 5 --noflush
| *nat
| -D POSTERN_PREROUTING -s 192.0.2.7/32 -p tcp -m tcp --dport 55000 -m comment --comment \"postern_exp_1200_nat_55000_10.0.0.2_22_masq\" -j DNAT --to-destination 10.0.0.2:22
| -D POSTERN_MASQUERADE -s 192.0.2.7/32 -d 10.0.0.2/32 -p tcp -m tcp --dport 22 -m comment --comment \"postern_exp_1200_nat_55000_10.0.0.2_22_masq\" -j MASQUERADE
| COMMIT
"
    );
    assert_eq!(fw.expire(1100).unwrap(), vec![], "not due yet");
    assert_eq!(
        fw.expire(1200).unwrap(),
        vec![want.rule.clone()],
        "one rule reported for three deleted"
    );
    let text = fake.take_transcript();
    assert_eq!(text.matches("| -D POSTERN_").count(), 3, "{text}");

    // A restart removes the expired NAT rules with the rest.
    fw.init(1500).unwrap();
    assert_eq!(fake.take_transcript().matches("| -D POSTERN_").count(), 3);
}

#[test]
fn a_failed_nat_transaction_rolls_back_the_filter_one() {
    let tables = nat_ready();
    let config = IptablesConfig {
        ipv6: false,
        ..nat_config()
    };
    let (mut fw, fake) = backend_with(&config, &tables, None);
    fw.init(1000).unwrap();
    fake.take_transcript();
    fake.respond_with({
        let t = tables.clone();
        move |argv, stdin| {
            if stdin.is_some_and(|s| s.starts_with("*nat")) {
                return Err(FirewallError::Command {
                    command: argv.join(" "),
                    status: "exit status: 1".into(),
                    stderr: "line 2 failed".into(),
                });
            }
            t.respond(argv, None)
        }
    });
    let err = fw
        .grant(&[nat_opening("192.0.2.7", "10.0.0.2", false, None, 1030)])
        .unwrap_err();
    assert!(err.to_string().contains("line 2 failed"), "{err}");
    let text = fake.take_transcript();
    let undo = text.rsplit("$ iptables-restore").next().unwrap();
    assert_eq!(
        undo,
        " -w 5 --noflush
| *filter
| -D POSTERN_FORWARD -s 192.0.2.7/32 -d 10.0.0.2/32 -p tcp -m tcp --dport 22 -m comment --comment postern_exp_1030_nat_55000_10.0.0.2_22 -j ACCEPT
| COMMIT
",
        "{text}"
    );
}

#[test]
fn nat_needs_its_chains_and_one_family() {
    let tables = Tables::ready();
    let config: IptablesConfig = serde_json::from_str(
        r#"{"forward": "ACCEPT, filter, FORWARD, 1, FWKNOP_FORWARD, 1", "dnat": "DNAT, nat, PREROUTING, 1, FWKNOP_PREROUTING, 1"}"#,
    )
    .unwrap();
    let (mut fw, fake) = backend_with(&config, &tables, None);
    let names: Vec<&str> = fw.chains().map(|(_, s)| s.chain.as_str()).collect();
    assert_eq!(
        names,
        ["POSTERN_INPUT", "FWKNOP_FORWARD", "FWKNOP_PREROUTING"]
    );
    let err = fw
        .grant(&[nat_opening(
            "192.0.2.7",
            "10.0.0.2",
            false,
            Some(Snat::Masquerade),
            1030,
        )])
        .unwrap_err();
    assert!(
        err.to_string().contains("IPT_MASQUERADE_ACCESS")
            && err.to_string().contains(
                "masquerade = \"MASQUERADE, nat, POSTROUTING, 1, POSTERN_MASQUERADE, 1\""
            ),
        "{err}"
    );
    let err = fw
        .grant(&[nat_opening("192.0.2.7", "fd00::2", false, None, 1030)])
        .unwrap_err();
    assert!(err.to_string().contains("IPv4 and IPv6"), "{err}");
    assert_eq!(
        fake.take_transcript(),
        "",
        "refused before running anything"
    );
}

#[test]
fn docker_grants_match_the_original_port_in_a_chain_under_docker_user() {
    let tables = Tables::ready();
    tables.set("iptables", "FORWARD", "-P FORWARD DROP\n");
    let config: IptablesConfig =
        serde_json::from_str(r#"{"docker": true, "ipv6": false}"#).unwrap();
    let (mut fw, fake) = backend_with(&config, &tables, None);
    fw.init(1000).unwrap();
    assert_eq!(
        fake.take_transcript(),
        "\
$ iptables -w 5 -t filter -S POSTERN_INPUT
$ iptables -w 5 -t filter -S INPUT
$ iptables -w 5 -t filter -S POSTERN_DOCKER
$ iptables -w 5 -t filter -S
$ iptables -w 5 -t filter -S DOCKER-USER
$ iptables -w 5 -t filter -S
$ iptables-restore -w 5 --noflush
| *filter
| :POSTERN_DOCKER - [0:0]
| :DOCKER-USER - [0:0]
| -I DOCKER-USER 1 -j POSTERN_DOCKER
| COMMIT
",
        "DOCKER-USER is created when Docker has not run yet (Docker keeps it)"
    );
    tables.set("iptables", "POSTERN_DOCKER", "-N POSTERN_DOCKER\n");
    tables.set(
        "iptables",
        "DOCKER-USER",
        "-N DOCKER-USER\n-A DOCKER-USER -j POSTERN_DOCKER\n-A DOCKER-USER -j RETURN\n",
    );
    fw.grant(&[opening("192.0.2.7", Proto::Tcp, 8080, 1030)])
        .unwrap();
    assert_eq!(
        fake.take_transcript(),
        "\
$ iptables -w 5 -t filter -S POSTERN_INPUT
$ iptables -w 5 -t filter -S INPUT
$ iptables -w 5 -t filter -S POSTERN_DOCKER
$ iptables -w 5 -t filter -S DOCKER-USER
$ iptables-restore -w 5 --noflush
| *filter
| -I POSTERN_INPUT 1 -s 192.0.2.7/32 -p tcp -m tcp --dport 8080 -m comment --comment postern_exp_1030 -j ACCEPT
| -I POSTERN_DOCKER 1 -s 192.0.2.7/32 -p tcp -m conntrack --ctorigdstport 8080 --ctdir ORIGINAL -m comment --comment postern_exp_1030 -j ACCEPT
| COMMIT
"
    );
    tables.set(
        "iptables",
        "POSTERN_DOCKER",
        "-N POSTERN_DOCKER\n-A POSTERN_DOCKER -s 192.0.2.7/32 -p tcp -m conntrack --ctorigdstport 8080 --ctdir ORIGINAL -m comment --comment postern_exp_1030 -j ACCEPT\n",
    );
    tables.set(
        "iptables",
        "POSTERN_INPUT",
        "-N POSTERN_INPUT\n-A POSTERN_INPUT -s 192.0.2.7/32 -p tcp -m tcp --dport 8080 -m comment --comment postern_exp_1030 -j ACCEPT\n",
    );
    assert_eq!(fw.list().unwrap().len(), 1, "one grant in two chains");
    assert_eq!(fw.expire(1030).unwrap().len(), 1);
    assert_eq!(fake.take_transcript().matches("| -D POSTERN_").count(), 2);
}
