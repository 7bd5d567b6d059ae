//! Snapshot tests of the exact argv the script backend runs, with a recording fake.

use postern_backend_common::fake::RecordingRunner;
use postern_backend_script::{PacketAddresses, ScriptBackend, ScriptConfig};
use spa_core::firewall::{Firewall, FirewallError, NatRule, Opening, Rule};
use spa_core::request::Proto;

const OPEN: &str =
    "/usr/local/sbin/fw-open --src $SRC --proto $PROTO --port $PORT --until $TIMEOUT";
const CLOSE: &str = "/usr/local/sbin/fw-close --src $SRC --proto $PROTO --port $PORT";

fn opening(source: &str, proto: Proto, port: u16, expires_at: u64) -> Opening {
    Opening {
        rule: Rule::new(source.parse().unwrap(), proto, port),
        timeout_secs: 30,
        expires_at,
    }
}

fn backend(config: &ScriptConfig) -> (ScriptBackend, RecordingRunner) {
    let fake = RecordingRunner::succeeding();
    (
        ScriptBackend::new(config, Box::new(fake.clone())).unwrap(),
        fake,
    )
}

fn fail_on(
    word: &'static str,
) -> impl FnMut(&[String], Option<&str>) -> spa_core::firewall::FwResult<String> + Send {
    move |argv: &[String], _: Option<&str>| {
        if argv.iter().any(|a| a == word) {
            Err(FirewallError::Command {
                command: argv.join(" "),
                status: "exit status: 1".into(),
                stderr: "boom".into(),
            })
        } else {
            Ok(String::new())
        }
    }
}

#[test]
fn grant_runs_open_and_expire_runs_close() {
    let (mut fw, fake) = backend(&ScriptConfig::new(OPEN, Some(CLOSE)));
    fw.init(1000).unwrap();
    fw.grant(&[
        opening("192.0.2.7", Proto::Tcp, 22, 1030),
        opening("192.0.2.7", Proto::Udp, 53, 1060),
    ])
    .unwrap();
    assert_eq!(
        fake.take_transcript(),
        "$ /usr/local/sbin/fw-open --src 192.0.2.7 --proto 6 --port 22 --until 1030\n\
         $ /usr/local/sbin/fw-open --src 192.0.2.7 --proto 17 --port 53 --until 1060\n"
    );
    assert_eq!(fw.list().unwrap().len(), 2);
    assert!(!fw.expires_in_kernel());

    assert_eq!(fw.expire(1029).unwrap(), vec![]);
    assert_eq!(fake.take_transcript(), "");
    let closed = fw.expire(1030).unwrap();
    assert_eq!(closed, vec![opening("192.0.2.7", Proto::Tcp, 22, 0).rule]);
    assert_eq!(
        fake.take_transcript(),
        "$ /usr/local/sbin/fw-close --src 192.0.2.7 --proto 6 --port 22\n"
    );
    assert_eq!(
        fw.list().unwrap(),
        vec![opening("192.0.2.7", Proto::Udp, 53, 1060)]
    );
}

#[test]
fn repeated_grant_refreshes_without_rerunning_open() {
    let (mut fw, fake) = backend(&ScriptConfig::new(OPEN, Some(CLOSE)));
    fw.grant(&[opening("192.0.2.7", Proto::Tcp, 22, 1030)])
        .unwrap();
    fake.take_transcript();
    fw.grant(&[
        opening("192.0.2.7", Proto::Tcp, 22, 1090),
        opening("192.0.2.7", Proto::Tcp, 22, 1095),
    ])
    .unwrap();
    // An earlier expiry never shortens access.
    fw.grant(&[opening("192.0.2.7", Proto::Tcp, 22, 1040)])
        .unwrap();
    assert_eq!(fake.take_transcript(), "");
    assert_eq!(
        fw.list().unwrap(),
        vec![opening("192.0.2.7", Proto::Tcp, 22, 1095)]
    );
    assert_eq!(fw.expire(1090).unwrap(), vec![]);
    assert_eq!(fw.expire(1095).unwrap().len(), 1);
    // The close undoes exactly what was opened (rendered at open time).
    assert_eq!(
        fake.take_transcript(),
        "$ /usr/local/sbin/fw-close --src 192.0.2.7 --proto 6 --port 22\n"
    );
}

#[test]
fn failing_open_records_nothing_and_rolls_back_the_batch() {
    let (mut fw, fake) = backend(&ScriptConfig::new(OPEN, Some(CLOSE)));
    fake.respond_with(fail_on("53"));
    let err = fw
        .grant(&[
            opening("192.0.2.7", Proto::Tcp, 22, 1030),
            opening("192.0.2.7", Proto::Udp, 53, 1030),
        ])
        .unwrap_err();
    assert!(err.to_string().contains("boom"), "{err}");
    assert_eq!(
        fake.take_transcript(),
        "$ /usr/local/sbin/fw-open --src 192.0.2.7 --proto 6 --port 22 --until 1030\n\
         $ /usr/local/sbin/fw-open --src 192.0.2.7 --proto 17 --port 53 --until 1030\n\
         $ /usr/local/sbin/fw-close --src 192.0.2.7 --proto 6 --port 22\n"
    );
    assert_eq!(fw.list().unwrap(), vec![]);
}

#[test]
fn failing_close_is_kept_and_retried_with_backoff() {
    let (mut fw, fake) = backend(&ScriptConfig::new(OPEN, Some(CLOSE)));
    fw.grant(&[opening("192.0.2.7", Proto::Tcp, 22, 1030)])
        .unwrap();
    fake.take_transcript();
    fake.respond_with(fail_on("/usr/local/sbin/fw-close"));
    assert_eq!(fw.expire(1030).unwrap(), vec![]);
    assert_eq!(fw.failing_closes().len(), 1);
    assert_eq!(
        fw.list().unwrap().len(),
        1,
        "a failed close is never forgotten"
    );
    fw.expire(1030).unwrap(); // backing off: not retried within the same second
    assert_eq!(fake.take_transcript().lines().count(), 1);
    fake.respond_with(|_, _| Ok(String::new()));
    assert_eq!(fw.expire(1031).unwrap().len(), 1);
    assert_eq!(
        fake.take_transcript(),
        "$ /usr/local/sbin/fw-close --src 192.0.2.7 --proto 6 --port 22\n"
    );
    assert_eq!(fw.list().unwrap(), vec![]);
}

#[test]
fn revoke_flush_and_shutdown_run_closes() {
    let (mut fw, fake) = backend(&ScriptConfig::new(OPEN, Some(CLOSE)));
    fw.grant(&[
        opening("192.0.2.7", Proto::Tcp, 22, 1030),
        opening("192.0.2.8", Proto::Tcp, 22, 1030),
    ])
    .unwrap();
    fake.take_transcript();
    fw.revoke(&[
        opening("192.0.2.8", Proto::Tcp, 22, 0).rule,
        opening("192.0.2.9", Proto::Tcp, 1, 0).rule,
    ])
    .unwrap();
    assert_eq!(
        fake.take_transcript(),
        "$ /usr/local/sbin/fw-close --src 192.0.2.8 --proto 6 --port 22\n"
    );
    fw.flush().unwrap();
    assert_eq!(
        fake.take_transcript(),
        "$ /usr/local/sbin/fw-close --src 192.0.2.7 --proto 6 --port 22\n"
    );
    fw.grant(&[opening("192.0.2.7", Proto::Udp, 5000, 1030)])
        .unwrap();
    fake.take_transcript();
    fw.shutdown().unwrap();
    assert_eq!(
        fake.take_transcript(),
        "$ /usr/local/sbin/fw-close --src 192.0.2.7 --proto 17 --port 5000\n"
    );
}

#[test]
fn close_none_runs_open_only_and_tracks_nothing() {
    let (mut fw, fake) = backend(&ScriptConfig::new("logger open $SRC", Some("NONE")));
    fw.grant(&[opening("192.0.2.7", Proto::Tcp, 22, 1030)])
        .unwrap();
    assert_eq!(fw.list().unwrap(), vec![]);
    fw.expire(5000).unwrap();
    assert_eq!(fake.take_transcript(), "$ logger open 192.0.2.7\n");
}

#[test]
fn packet_addresses_and_configured_destination() {
    let mut config = ScriptConfig::new(
        "fw $PKT_SRC $DST $IP $CLIENT_TIMEOUT",
        Some("fw-close $DST"),
    );
    let (mut fw, fake) = backend(&config);
    let err = fw
        .grant(&[opening("192.0.2.7", Proto::Tcp, 22, 1030)])
        .unwrap_err();
    assert!(err.to_string().contains("destination"), "{err}");
    assert_eq!(
        fake.take_transcript(),
        "",
        "nothing runs when a template cannot be rendered"
    );

    let packet = PacketAddresses {
        source: "198.51.100.1".parse().unwrap(),
        source_port: 40000,
        destination: Some("203.0.113.1".parse().unwrap()),
    };
    fw.grant_from_packet(&[opening("192.0.2.7", Proto::Tcp, 22, 1030)], Some(packet))
        .unwrap();
    assert_eq!(
        fake.take_transcript(),
        "$ fw 198.51.100.1 203.0.113.1 192.0.2.7 30\n"
    );

    config.destination = Some("203.0.113.9".parse().unwrap());
    let (mut fw, fake) = backend(&config);
    fw.grant(&[opening("2001:db8::7", Proto::Tcp, 22, 1030)])
        .unwrap();
    assert_eq!(
        fake.take_transcript(),
        "$ fw 2001:db8::7 203.0.113.9 2001:db8::7 30\n"
    );
}

/// ENABLE_DESTINATION_RULE: a grant's destination is `$DST` (and is kept for
/// the close); a template without `$DST` cannot bind it, so the grant is refused.
#[test]
fn a_destination_bound_grant_needs_dst_in_the_open_command() {
    let mut bound = opening("192.0.2.7", Proto::Tcp, 22, 1030);
    bound.rule.destination = Some("203.0.113.5".parse().unwrap());
    let (mut fw, fake) = backend(&ScriptConfig::new(
        "fw-open $SRC $DST $PORT",
        Some("fw-close $SRC $DST"),
    ));
    assert!(fw.supports(spa_core::firewall::RuleFeature::Destination));
    fw.grant(std::slice::from_ref(&bound)).unwrap();
    assert_eq!(
        fake.take_transcript(),
        "$ fw-open 192.0.2.7 203.0.113.5 22
"
    );
    assert_eq!(fw.list().unwrap()[0].rule, bound.rule);
    fw.expire(1030).unwrap();
    assert_eq!(
        fake.take_transcript(),
        "$ fw-close 192.0.2.7 203.0.113.5
"
    );

    let (mut fw, fake) = backend(&ScriptConfig::new(OPEN, Some(CLOSE)));
    assert!(!fw.supports(spa_core::firewall::RuleFeature::Destination));
    let err = fw.grant(&[bound]).unwrap_err();
    assert!(matches!(err, FirewallError::Unsupported { .. }), "{err}");
    assert_eq!(fake.take_transcript(), "", "refused before anything ran");
}

/// A pinned grant (native knock) is `$SPORT` (empty when not pinned); an open
/// command without `$SPORT` would open every source port, so the grant is
/// refused before anything runs. The pin survives a restart in the state file.
#[test]
fn a_pinned_grant_needs_sport_in_the_open_command() {
    use spa_core::firewall::RuleFeature;
    let plain = opening("192.0.2.7", Proto::Tcp, 22, 1030);
    let mut pinned = plain.clone();
    pinned.rule.source_port = Some(40022);
    let dir = tempfile::tempdir().unwrap();
    let mut config = ScriptConfig::new(
        "fw-open $SRC $PORT sport=$SPORT",
        Some("fw-close $SRC $PORT sport=$SPORT"),
    );
    config.state_file = Some(dir.path().join("state.json"));
    let (mut fw, fake) = backend(&config);
    assert!(fw.supports(RuleFeature::SourcePort));
    fw.grant(&[pinned.clone(), plain.clone()]).unwrap();
    assert_eq!(
        fake.take_transcript(),
        "$ fw-open 192.0.2.7 22 'sport=40022'\n$ fw-open 192.0.2.7 22 'sport='\n"
    );
    drop(fw);
    let (mut fw, fake) = backend(&config);
    assert_eq!(
        fw.list()
            .unwrap()
            .into_iter()
            .map(|o| o.rule)
            .collect::<Vec<_>>(),
        vec![pinned.rule.clone(), plain.rule.clone()],
        "the pin is kept across a restart"
    );
    fw.revoke(std::slice::from_ref(&pinned.rule)).unwrap();
    assert_eq!(
        fake.take_transcript(),
        "$ fw-close 192.0.2.7 22 'sport=40022'\n"
    );
    // Pinned grants are plain ones: with a destination, refused, nothing run.
    let mut bound = pinned.clone();
    bound.rule.destination = Some("203.0.113.5".parse().unwrap());
    let err = fw.grant(&[bound]).unwrap_err();
    assert!(err.to_string().contains("destination"), "{err}");
    assert_eq!(fake.take_transcript(), "");

    let (mut fw, fake) = backend(&ScriptConfig::new(OPEN, Some(CLOSE)));
    assert!(!fw.supports(RuleFeature::SourcePort));
    // `$SPORT` only in the close does not pin what the open opens.
    let (fw2, _) = backend(&ScriptConfig::new(OPEN, Some("fw-close $SPORT")));
    assert!(!fw2.supports(RuleFeature::SourcePort));
    let err = fw.grant(&[plain.clone(), pinned]).unwrap_err();
    assert!(matches!(err, FirewallError::Unsupported { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("source port") && text.contains("$SPORT"),
        "{text}"
    );
    assert_eq!(fake.take_transcript(), "", "refused before anything ran");
    assert!(fw.list().unwrap().is_empty());
}

#[test]
fn nat_is_unsupported_and_bad_templates_are_config_errors() {
    let (mut fw, fake) = backend(&ScriptConfig::new(OPEN, Some(CLOSE)));
    let mut o = opening("192.0.2.7", Proto::Tcp, 22, 1030);
    o.rule.nat = Some(NatRule {
        to_addr: "10.0.0.2".parse().unwrap(),
        to_port: 22,
        local: false,
        snat: None,
        dnat: true,
        forward_all: false,
    });
    assert!(matches!(
        fw.grant(&[o]),
        Err(FirewallError::Unsupported { .. })
    ));
    assert_eq!(fake.take_transcript(), "");

    let err = ScriptBackend::new(
        &ScriptConfig::new("x $USER", None),
        Box::new(RecordingRunner::succeeding()),
    )
    .err()
    .unwrap();
    assert!(
        err.to_string().contains("`open`") && err.to_string().contains("$USER"),
        "{err}"
    );
    let err = ScriptBackend::system(&ScriptConfig::new("/nonexistent/fw-open $SRC", None))
        .err()
        .unwrap();
    assert!(matches!(err, FirewallError::Missing { .. }), "{err}");
}

#[test]
fn config_deserializes_with_defaults() {
    let config: ScriptConfig =
        serde_json::from_str(r#"{"open": "a $SRC", "close": "b $SRC"}"#).unwrap();
    assert_eq!(config, ScriptConfig::new("a $SRC", Some("b $SRC")));
    let err = serde_json::from_str::<ScriptConfig>(r#"{"open": "a", "clsoe": "b"}"#).unwrap_err();
    assert!(err.to_string().contains("clsoe"));
}

#[test]
fn state_file_carries_owed_closes_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ScriptConfig::new(OPEN, Some(CLOSE));
    config.state_file = Some(dir.path().join("script-state.json"));
    {
        let (mut fw, _fake) = backend(&config);
        fw.grant(&[
            opening("192.0.2.7", Proto::Tcp, 22, 1030),
            opening("192.0.2.7", Proto::Tcp, 80, 2000),
        ])
        .unwrap();
        // Dropped without shutdown: the daemon was killed.
    }
    let (mut fw, fake) = backend(&config);
    assert_eq!(fw.list().unwrap().len(), 2);
    fw.init(1500).unwrap();
    assert_eq!(
        fake.take_transcript(),
        "$ /usr/local/sbin/fw-close --src 192.0.2.7 --proto 6 --port 22\n"
    );
    assert_eq!(
        fw.list().unwrap(),
        vec![opening("192.0.2.7", Proto::Tcp, 80, 2000)]
    );

    // close_at_exit = false keeps the rest for the next start.
    config.close_at_exit = false;
    let (mut fw, fake) = backend(&config);
    fw.shutdown().unwrap();
    assert_eq!(fake.take_transcript(), "");
    let (mut fw, _) = backend(&config);
    assert_eq!(fw.list().unwrap().len(), 1);
}
