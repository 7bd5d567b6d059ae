//! The backend's logic against a fake firewalld (same semantics for the calls
//! postern makes: ALREADY_ENABLED, NOT_ENABLED, INVALID_ZONE, timeouts).

use crate::api::{ApiError, ApiResult, FirewalldApi};
use crate::config::{FamilyFilter, FirewalldConfig};
use crate::rich::{render, SourceForm};
use crate::FirewalldBackend;
use spa_core::firewall::{Firewall, FirewallError, NatRule, Opening, Rule, RuleFeature, Snat};
use spa_core::request::Proto;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

thread_local! {
    static NOW: Cell<u64> = const { Cell::new(1_000_000) };
}

fn clock() -> u64 {
    NOW.with(|n| n.get())
}

fn advance(secs: u64) {
    NOW.with(|n| n.set(n.get() + secs));
}

#[derive(Debug)]
struct Fake {
    state: String,
    default_zone: String,
    zones: Vec<String>,
    /// (zone, text) → timeout (0 = permanent, i.e. someone else's runtime rule).
    rules: BTreeMap<(String, String), i32>,
    calls: Vec<String>,
    /// Next add of a text containing this fails with that error; `applied` says
    /// whether the rule got in anyway (a lost reply).
    fail_add: Vec<(String, ApiError, bool)>,
    fail_remove: Vec<(String, ApiError)>,
    down: Option<ApiError>,
}

impl Default for Fake {
    fn default() -> Self {
        Fake {
            state: "RUNNING".into(),
            default_zone: "public".into(),
            zones: vec!["block".into(), "public".into(), "work".into()],
            rules: BTreeMap::new(),
            calls: Vec::new(),
            fail_add: Vec::new(),
            fail_remove: Vec::new(),
            down: None,
        }
    }
}

#[derive(Clone, Default)]
struct FakeApi(Arc<Mutex<Fake>>);

fn fw_err(code: &str, detail: &str) -> ApiError {
    ApiError::Firewalld {
        code: code.into(),
        message: format!("{code}: {detail}"),
    }
}

impl FakeApi {
    fn with<T>(&self, f: impl FnOnce(&mut Fake) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }
    fn check(&self) -> ApiResult<()> {
        self.with(|f| f.down.clone().map_or(Ok(()), Err))
    }
    fn rules(&self, zone: &str) -> Vec<(String, i32)> {
        self.with(|f| {
            f.rules
                .iter()
                .filter(|((z, _), _)| z == zone)
                .map(|((_, t), s)| (t.clone(), *s))
                .collect()
        })
    }
    fn calls(&self) -> Vec<String> {
        self.with(|f| std::mem::take(&mut f.calls))
    }
    fn put(&self, zone: &str, text: &str, timeout: i32) {
        self.with(|f| f.rules.insert((zone.into(), text.into()), timeout));
    }
}

impl FirewalldApi for FakeApi {
    fn state(&mut self) -> ApiResult<String> {
        self.check()?;
        Ok(self.with(|f| f.state.clone()))
    }
    fn version(&mut self) -> ApiResult<String> {
        self.check()?;
        Ok("1.3.3".into())
    }
    fn default_zone(&mut self) -> ApiResult<String> {
        self.check()?;
        Ok(self.with(|f| f.default_zone.clone()))
    }
    fn zones(&mut self) -> ApiResult<Vec<String>> {
        self.check()?;
        Ok(self.with(|f| f.zones.clone()))
    }
    fn rich_rules(&mut self, zone: &str) -> ApiResult<Vec<String>> {
        self.check()?;
        self.with(|f| {
            if !f.zones.iter().any(|z| z == zone) {
                return Err(fw_err("INVALID_ZONE", zone));
            }
            Ok(f.rules
                .keys()
                .filter(|(z, _)| z == zone)
                .map(|(_, t)| t.clone())
                .collect())
        })
    }
    fn add_rich_rule(&mut self, zone: &str, rule: &str, timeout_secs: i32) -> ApiResult<()> {
        self.check()?;
        assert!(
            timeout_secs > 0,
            "postern must never add a rule without timeout"
        );
        self.with(|f| {
            f.calls.push(format!("add {zone} {rule} {timeout_secs}"));
            if let Some(i) = f
                .fail_add
                .iter()
                .position(|(s, _, _)| rule.contains(s.as_str()))
            {
                let (_, e, applied) = f.fail_add.remove(i);
                if applied {
                    f.rules.insert((zone.into(), rule.into()), timeout_secs);
                }
                return Err(e);
            }
            if !f.zones.iter().any(|z| z == zone) {
                return Err(fw_err("INVALID_ZONE", zone));
            }
            if f.rules.contains_key(&(zone.to_string(), rule.to_string())) {
                return Err(fw_err(
                    "ALREADY_ENABLED",
                    &format!("'{rule}' already in '{zone}'"),
                ));
            }
            f.rules.insert((zone.into(), rule.into()), timeout_secs);
            Ok(())
        })
    }
    fn remove_rich_rule(&mut self, zone: &str, rule: &str) -> ApiResult<()> {
        self.check()?;
        self.with(|f| {
            f.calls.push(format!("remove {zone} {rule}"));
            if let Some(i) = f
                .fail_remove
                .iter()
                .position(|(s, _)| rule.contains(s.as_str()))
            {
                return Err(f.fail_remove.remove(i).1);
            }
            if !f.zones.iter().any(|z| z == zone) {
                return Err(fw_err("INVALID_ZONE", zone));
            }
            match f.rules.remove(&(zone.to_string(), rule.to_string())) {
                Some(_) => Ok(()),
                None => Err(fw_err("NOT_ENABLED", &format!("'{rule}' not in '{zone}'"))),
            }
        })
    }
}

fn rule(src: &str, port: u16) -> Rule {
    Rule::new(src.parse().unwrap(), Proto::Tcp, port)
}

fn opening(src: &str, port: u16, secs: u32) -> Opening {
    Opening {
        rule: rule(src, port),
        timeout_secs: secs,
        expires_at: clock() + secs as u64,
    }
}

fn plain(src: &str, port: u16) -> String {
    render(&rule(src, port), SourceForm::Plain)
}

fn prefixed(src: &str, port: u16) -> String {
    render(&rule(src, port), SourceForm::HostPrefix)
}

fn backend_with(config: FirewalldConfig) -> (FirewalldBackend, FakeApi) {
    let fake = FakeApi::default();
    let b = FirewalldBackend::with_api(config, Box::new(fake.clone()))
        .unwrap()
        .with_clock(std::sync::Arc::new(clock));
    (b, fake)
}

fn backend() -> (FirewalldBackend, FakeApi) {
    let (mut b, fake) = backend_with(FirewalldConfig::default());
    b.init(clock()).unwrap();
    fake.calls();
    (b, fake)
}

#[test]
fn grant_adds_one_timed_rule_to_the_default_zone() {
    let (mut b, fake) = backend();
    assert_eq!(b.zone(), Some("public"));
    assert!(b.expires_in_kernel());
    b.grant(&[opening("192.0.2.7", 22, 30)]).unwrap();
    assert_eq!(fake.rules("public"), vec![(plain("192.0.2.7", 22), 30)]);
    let listed = b.list().unwrap();
    assert_eq!(
        listed,
        vec![Opening {
            rule: rule("192.0.2.7", 22),
            timeout_secs: 30,
            expires_at: clock() + 30
        }]
    );
    advance(10);
    assert_eq!(b.list().unwrap()[0].timeout_secs, 20);
}

/// A rich rule cannot match a source port and a destination port at once:
/// a pinned grant is refused naming the backend, and nothing of its batch is made.
#[test]
fn pinned_grants_are_refused_and_nothing_of_the_batch_is_made() {
    let (mut b, fake) = backend();
    assert!(!b.supports(RuleFeature::SourcePort));
    let mut pinned = opening("192.0.2.8", 22, 30);
    pinned.rule.source_port = Some(40022);
    let e = b
        .grant(&[opening("192.0.2.7", 22, 30), pinned])
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "backend `firewalld` does not support grants pinned to a source port \
         (--pin-source-port) (192.0.2.8 port 40022 -> tcp/22)"
    );
    assert!(fake.calls().is_empty());
    assert!(fake.rules("public").is_empty());
}

#[test]
fn repeated_grant_adds_the_other_form_then_removes_the_old_one() {
    let (mut b, fake) = backend();
    b.grant(&[opening("192.0.2.7", 22, 30)]).unwrap();
    fake.calls();
    advance(20);
    b.grant(&[opening("192.0.2.7", 22, 30)]).unwrap();
    // Add first, remove second: the source is allowed at every moment.
    assert_eq!(
        fake.calls(),
        vec![
            format!("add public {} 30", prefixed("192.0.2.7", 22)),
            format!("remove public {}", plain("192.0.2.7", 22))
        ]
    );
    assert_eq!(fake.rules("public"), vec![(prefixed("192.0.2.7", 22), 30)]);
    let listed = b.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].expires_at, clock() + 30, "timeout refreshed");
    // A shorter repeat never cuts the live grant short.
    b.grant(&[opening("192.0.2.7", 22, 5)]).unwrap();
    assert_eq!(fake.rules("public"), vec![(prefixed("192.0.2.7", 22), 30)]);
    // A longer one goes back to the plain form.
    b.grant(&[opening("192.0.2.7", 22, 45)]).unwrap();
    assert_eq!(fake.rules("public"), vec![(plain("192.0.2.7", 22), 45)]);
}

#[test]
fn a_rule_firewalld_dropped_is_granted_afresh() {
    let (mut b, fake) = backend();
    b.grant(&[opening("192.0.2.7", 22, 3)]).unwrap();
    advance(5);
    fake.with(|f| f.rules.clear()); // firewalld's timer fired
    fake.calls();
    b.grant(&[opening("192.0.2.7", 22, 3)]).unwrap();
    assert_eq!(
        fake.calls(),
        vec![format!("add public {} 3", plain("192.0.2.7", 22))]
    );
    assert_eq!(b.list().unwrap().len(), 1);
}

#[test]
fn same_rule_twice_in_one_batch_leaves_one_rule() {
    let (mut b, fake) = backend();
    b.grant(&[opening("192.0.2.7", 22, 10), opening("192.0.2.7", 22, 20)])
        .unwrap();
    assert_eq!(fake.rules("public"), vec![(prefixed("192.0.2.7", 22), 20)]);
    assert_eq!(b.list().unwrap().len(), 1);
}

#[test]
fn an_identical_rule_of_the_admin_is_never_touched() {
    let (mut b, fake) = backend();
    fake.put("public", &plain("192.0.2.7", 22), 0);
    b.grant(&[opening("192.0.2.7", 22, 30)]).unwrap();
    // postern's own rule uses the other form, with its timeout.
    assert_eq!(
        fake.rules("public"),
        vec![(plain("192.0.2.7", 22), 0), (prefixed("192.0.2.7", 22), 30)]
    );
    b.grant(&[opening("192.0.2.7", 22, 40)]).unwrap();
    assert_eq!(
        fake.rules("public"),
        vec![(plain("192.0.2.7", 22), 0), (prefixed("192.0.2.7", 22), 40)]
    );
    b.flush().unwrap();
    assert_eq!(fake.rules("public"), vec![(plain("192.0.2.7", 22), 0)]);
    assert!(b.list().unwrap().is_empty());
}

#[test]
fn when_both_forms_are_the_admins_the_grant_is_a_no_op() {
    let (mut b, fake) = backend();
    fake.put("public", &plain("192.0.2.7", 22), 0);
    fake.put("public", &prefixed("192.0.2.7", 22), 0);
    b.grant(&[opening("192.0.2.7", 22, 30)]).unwrap();
    assert!(fake
        .calls()
        .iter()
        .all(|c| !c.starts_with("add") && !c.starts_with("remove")));
    assert!(b.list().unwrap().is_empty());
    b.flush().unwrap();
    assert_eq!(fake.rules("public").len(), 2);
}

#[test]
fn ours_with_the_other_form_taken_is_refreshed_in_place() {
    let (mut b, fake) = backend();
    b.grant(&[opening("192.0.2.7", 22, 30)]).unwrap();
    fake.put("public", &prefixed("192.0.2.7", 22), 0);
    fake.calls();
    b.grant(&[opening("192.0.2.7", 22, 50)]).unwrap();
    assert_eq!(
        fake.calls(),
        vec![
            format!("remove public {}", plain("192.0.2.7", 22)),
            format!("add public {} 50", plain("192.0.2.7", 22))
        ]
    );
    assert_eq!(
        fake.rules("public"),
        vec![(plain("192.0.2.7", 22), 50), (prefixed("192.0.2.7", 22), 0)]
    );
}

#[test]
fn a_race_with_someone_adding_the_same_text_moves_to_the_other_form() {
    let (mut b, fake) = backend();
    fake.with(|f| {
        f.fail_add
            .push((plain("192.0.2.7", 22), fw_err("ALREADY_ENABLED", "x"), true))
    });
    b.grant(&[opening("192.0.2.7", 22, 30)]).unwrap();
    assert_eq!(
        fake.rules("public"),
        vec![
            (plain("192.0.2.7", 22), 30),
            (prefixed("192.0.2.7", 22), 30)
        ]
    );
    b.flush().unwrap();
    assert_eq!(
        fake.rules("public"),
        vec![(plain("192.0.2.7", 22), 30)],
        "the other one is not ours"
    );
}

#[test]
fn a_failing_batch_leaves_nothing_of_itself() {
    let (mut b, fake) = backend();
    b.grant(&[opening("192.0.2.1", 22, 100)]).unwrap();
    advance(40);
    let before = fake.rules("public");
    fake.with(|f| {
        f.fail_add
            .push(("192.0.2.3".into(), fw_err("INVALID_RULE", "bad"), false))
    });
    let err = b
        .grant(&[
            opening("192.0.2.2", 22, 30),
            opening("192.0.2.1", 22, 90),
            opening("192.0.2.3", 22, 30),
        ])
        .unwrap_err();
    assert!(err.to_string().contains("INVALID_RULE"), "{err}");
    assert!(err.to_string().contains("192.0.2.3"), "{err}");
    // 192.0.2.2 removed again; 192.0.2.1's refresh undone (its old form back, for its remaining 60 s).
    assert_eq!(fake.rules("public"), vec![(before[0].0.clone(), 60)]);
    let listed = b.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].rule.clone(), listed[0].timeout_secs),
        (rule("192.0.2.1", 22), 60)
    );
}

#[test]
fn a_lost_reply_is_rolled_back_too() {
    let (mut b, fake) = backend();
    let timeout = ApiError::Timeout {
        method: "addRichRule".into(),
        after: Duration::from_secs(1),
    };
    fake.with(|f| f.fail_add.push(("192.0.2.9".into(), timeout, true)));
    let err = b
        .grant(&[opening("192.0.2.8", 22, 30), opening("192.0.2.9", 22, 30)])
        .unwrap_err();
    assert!(err.to_string().contains("did not answer"), "{err}");
    assert!(
        fake.rules("public").is_empty(),
        "{:?}",
        fake.rules("public")
    );
    assert!(b.list().unwrap().is_empty());
}

#[test]
fn an_unremovable_rule_after_a_failure_stays_tracked() {
    let (mut b, fake) = backend();
    fake.with(|f| {
        f.fail_add
            .push(("192.0.2.9".into(), fw_err("INVALID_RULE", "bad"), false));
        f.fail_remove.push((
            "192.0.2.8".into(),
            ApiError::Other {
                method: "removeRichRule".into(),
                detail: "lost".into(),
            },
        ));
    });
    let err = b
        .grant(&[opening("192.0.2.8", 22, 30), opening("192.0.2.9", 22, 30)])
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("rolling back the batch also failed"),
        "{err}"
    );
    assert_eq!(
        b.list().unwrap().len(),
        1,
        "the leftover is ours and listed until it expires"
    );
    b.flush().unwrap();
    assert!(fake.rules("public").is_empty());
}

#[test]
fn nat_rich_rules_cannot_do_and_family_and_port_zero_are_refused_before_anything_is_applied() {
    let (mut b, fake) = backend_with(FirewalldConfig {
        family: FamilyFilter::Ipv4,
        ..Default::default()
    });
    b.init(clock()).unwrap();
    fake.calls();
    let no_dnat = nat_opening("192.0.2.7", 22, "10.0.0.5", 2222, |n| n.dnat = false);
    let e = b
        .grant(&[opening("192.0.2.8", 22, 30), no_dnat])
        .unwrap_err();
    assert!(
        matches!(
            e,
            FirewallError::Unsupported {
                backend: "firewalld",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("DISABLE_DNAT"), "{e}");
    let snat_to = nat_opening("192.0.2.7", 22, "10.0.0.5", 2222, |n| {
        n.snat = Some(Snat::To("192.0.2.1".parse().unwrap()))
    });
    let e = b.grant(&[snat_to]).unwrap_err();
    assert!(e.to_string().contains("SNAT to 192.0.2.1"), "{e}");
    let all_local = nat_opening("192.0.2.7", 22, "10.0.0.5", 22, |n| {
        n.forward_all = true;
        n.local = true;
    });
    let e = b.grant(&[all_local]).unwrap_err();
    assert!(e.to_string().contains("FORWARD_ALL"), "{e}");
    let mixed = nat_opening("192.0.2.7", 22, "fd00::5", 2222, |_| {});
    let e = b.grant(&[mixed]).unwrap_err();
    assert!(e.to_string().contains("IPv4 source to an IPv6"), "{e}");
    let e = b.grant(&[opening("2001:db8::1", 22, 30)]).unwrap_err();
    assert!(matches!(e, FirewallError::Unsupported { .. }), "{e:?}");
    assert!(e.to_string().contains("family = \"ipv4\""), "{e}");
    let e = b.grant(&[opening("192.0.2.8", 0, 30)]).unwrap_err();
    assert!(e.to_string().contains("port 0"), "{e}");
    assert!(fake.calls().is_empty());
    assert!(fake.rules("public").is_empty());
}

fn nat_opening(
    src: &str,
    port: u16,
    to: &str,
    to_port: u16,
    tweak: impl FnOnce(&mut NatRule),
) -> Opening {
    let mut o = opening(src, port, 30);
    let mut nat = NatRule {
        to_addr: to.parse().unwrap(),
        to_port,
        local: false,
        snat: None,
        dnat: true,
        forward_all: false,
    };
    tweak(&mut nat);
    o.rule.nat = Some(nat);
    o
}

const FWD: &str = r#"rule family="ipv4" source address="192.0.2.7" forward-port port="2222" protocol="tcp" to-port="22" to-addr="10.0.0.5""#;
const MASQ: &str =
    r#"rule family="ipv4" source address="192.0.2.7" destination address="10.0.0.5" masquerade"#;

#[test]
fn a_nat_grant_is_a_timed_forward_port_and_masquerade_listed_back_as_granted() {
    let dir = tempfile::tempdir().unwrap();
    let config = FirewalldConfig {
        state_file: Some(dir.path().join("fw.json")),
        ..Default::default()
    };
    let (mut b, fake) = backend_with(config.clone());
    let o = nat_opening("192.0.2.7", 2222, "10.0.0.5", 22, |n| {
        n.snat = Some(Snat::Masquerade)
    });
    b.grant(std::slice::from_ref(&o)).unwrap();
    assert_eq!(
        fake.rules("public"),
        vec![(MASQ.to_string(), 30), (FWD.to_string(), 30)]
    );
    assert_eq!(b.list().unwrap(), vec![o.clone()]);
    // A restarted backend knows it (and its masquerade) from the state file.
    let mut again = FirewalldBackend::with_api(config, Box::new(fake.clone()))
        .unwrap()
        .with_clock(std::sync::Arc::new(clock));
    again.init(clock()).unwrap();
    assert_eq!(again.list().unwrap(), vec![o.clone()]);
    again.revoke(&[o.rule]).unwrap();
    assert!(fake.rules("public").is_empty());
}

#[test]
fn forward_all_is_two_timed_forward_ports_listed_back_and_revoked_as_one_grant() {
    let dir = tempfile::tempdir().unwrap();
    let config = FirewalldConfig {
        state_file: Some(dir.path().join("fw.json")),
        ..Default::default()
    };
    let (mut b, fake) = backend_with(config.clone());
    let all = nat_opening("192.0.2.7", 22, "10.0.0.5", 22, |n| {
        n.forward_all = true;
        n.snat = Some(Snat::Masquerade);
    });
    b.grant(std::slice::from_ref(&all)).unwrap();
    let texts: Vec<String> = fake.rules("public").into_iter().map(|r| r.0).collect();
    assert_eq!(texts.len(), 3, "{texts:?}");
    assert!(texts
        .iter()
        .any(|t| t.ends_with(r#"port="1-65535" protocol="udp" to-addr="10.0.0.5""#)));
    assert_eq!(b.list().unwrap(), vec![all.clone()]);
    let mut again = FirewalldBackend::with_api(config, Box::new(fake.clone()))
        .unwrap()
        .with_clock(std::sync::Arc::new(clock));
    again.init(clock()).unwrap();
    assert_eq!(
        again.list().unwrap(),
        vec![all.clone()],
        "from the state file"
    );
    again.revoke(&[all.rule]).unwrap();
    assert!(fake.rules("public").is_empty());
}

#[test]
fn local_nat_is_a_redirect_without_to_addr() {
    let (mut b, fake) = backend();
    let o = nat_opening("192.0.2.7", 2222, "192.0.2.1", 22, |n| n.local = true);
    b.grant(std::slice::from_ref(&o)).unwrap();
    assert_eq!(
        fake.rules("public"),
        vec![(
            r#"rule family="ipv4" source address="192.0.2.7" forward-port port="2222" protocol="tcp" to-port="22""#.to_string(),
            30
        )]
    );
    assert_eq!(b.list().unwrap(), vec![o]);
}

#[test]
fn a_masquerade_shared_by_two_grants_lives_as_long_as_the_longer_and_goes_with_the_last() {
    let (mut b, fake) = backend();
    let masq = |n: &mut NatRule| n.snat = Some(Snat::Masquerade);
    let ssh = nat_opening("192.0.2.7", 2222, "10.0.0.5", 22, masq);
    let mut web = nat_opening("192.0.2.7", 8080, "10.0.0.5", 80, masq);
    web.timeout_secs = 90;
    b.grant(&[ssh.clone(), web.clone()]).unwrap();
    let masq_rules: Vec<(String, i32)> = fake
        .rules("public")
        .into_iter()
        .filter(|(t, _)| t.ends_with("masquerade"))
        .collect();
    // Refreshed for the longer grant: the other spelling with its timeout.
    assert_eq!(
        masq_rules,
        vec![(MASQ.replace("192.0.2.7\"", "192.0.2.7/32\""), 90)]
    );
    assert_eq!(b.list().unwrap().len(), 2);
    b.revoke(&[ssh.rule]).unwrap();
    assert_eq!(fake.rules("public").len(), 2, "web and the masquerade stay");
    b.revoke(&[web.rule]).unwrap();
    assert!(fake.rules("public").is_empty());
}

#[test]
fn flush_at_init_and_at_exit_remove_recorded_grants() {
    let dir = tempfile::tempdir().unwrap();
    let config = FirewalldConfig {
        state_file: Some(dir.path().join("fw.json")),
        flush_at_exit: true,
        ..Default::default()
    };
    let (mut b, fake) = backend_with(config.clone());
    b.grant(&[opening("192.0.2.7", 22, 30)]).unwrap();
    b.shutdown().unwrap();
    assert!(fake.rules("public").is_empty());

    let keep = FirewalldConfig {
        flush_at_exit: false,
        ..config.clone()
    };
    let (mut b, fake) = backend_with(keep.clone());
    b.grant(&[opening("192.0.2.7", 22, 30)]).unwrap();
    b.shutdown().unwrap();
    assert_eq!(fake.rules("public").len(), 1, "left to expire in firewalld");
    fake.put("public", &plain("192.0.2.99", 22), 0); // the admin's
    let mut b = FirewalldBackend::with_api(
        FirewalldConfig {
            flush_at_init: true,
            ..keep
        },
        Box::new(fake.clone()),
    )
    .unwrap()
    .with_clock(std::sync::Arc::new(clock));
    b.init(clock()).unwrap();
    assert_eq!(fake.rules("public"), vec![(plain("192.0.2.99", 22), 0)]);
    assert!(b.list().unwrap().is_empty());
}

#[test]
fn ipv6_and_ipv4_mapped_sources() {
    let (mut b, fake) = backend();
    b.grant(&[
        opening("2001:db8::7", 443, 30),
        opening("::ffff:198.51.100.9", 22, 30),
    ])
    .unwrap();
    let rules: Vec<String> = fake.rules("public").into_iter().map(|r| r.0).collect();
    assert!(rules.contains(&plain("2001:db8::7", 443)));
    assert!(rules.contains(&plain("198.51.100.9", 22)), "{rules:?}");
    b.revoke(&[rule("::ffff:198.51.100.9", 22)]).unwrap();
    assert_eq!(fake.rules("public").len(), 1);
}

#[test]
fn timeouts_are_never_zero_and_never_overflow() {
    let (mut b, fake) = backend();
    b.grant(&[
        opening("192.0.2.1", 22, 0),
        opening("192.0.2.2", 22, u32::MAX),
    ])
    .unwrap();
    assert_eq!(
        fake.rules("public"),
        vec![
            (plain("192.0.2.1", 22), 1),
            (plain("192.0.2.2", 22), i32::MAX)
        ]
    );
}

#[test]
fn revoke_removes_only_postern_rules_and_ignores_missing_ones() {
    let (mut b, fake) = backend();
    fake.put("public", &plain("192.0.2.50", 22), 0);
    b.grant(&[opening("192.0.2.1", 22, 30), opening("192.0.2.2", 22, 30)])
        .unwrap();
    b.revoke(&[
        rule("192.0.2.1", 22),
        rule("192.0.2.50", 22),
        rule("203.0.113.1", 80),
    ])
    .unwrap();
    let rules: Vec<String> = fake.rules("public").into_iter().map(|r| r.0).collect();
    assert_eq!(rules, vec![plain("192.0.2.2", 22), plain("192.0.2.50", 22)]);
    // Already gone from firewalld: not an error.
    fake.with(|f| {
        f.rules
            .remove(&("public".to_string(), plain("192.0.2.2", 22)))
    });
    b.revoke(&[rule("192.0.2.2", 22)]).unwrap();
    assert!(b.list().unwrap().is_empty());
}

#[test]
fn list_forgets_rules_firewalld_no_longer_has() {
    let (mut b, fake) = backend();
    b.grant(&[opening("192.0.2.1", 22, 30), opening("192.0.2.2", 22, 30)])
        .unwrap();
    fake.with(|f| {
        f.rules
            .remove(&("public".to_string(), plain("192.0.2.1", 22)))
    }); // e.g. a reload
    let listed = b.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].rule, rule("192.0.2.2", 22));
}

#[test]
fn flush_keeps_what_it_could_not_remove_and_reports_it() {
    let (mut b, fake) = backend();
    b.grant(&[opening("192.0.2.1", 22, 30), opening("192.0.2.2", 22, 30)])
        .unwrap();
    fake.with(|f| {
        f.fail_remove.push((
            "192.0.2.1".into(),
            ApiError::Denied {
                detail: "polkit".into(),
            },
        ))
    });
    let e = b.flush().unwrap_err();
    assert!(matches!(e, FirewallError::Missing { .. }), "{e:?}");
    assert_eq!(fake.rules("public").len(), 1);
    b.flush().unwrap();
    assert!(fake.rules("public").is_empty());
}

#[test]
fn configured_zone_is_used_and_checked() {
    let (mut b, fake) = backend_with(FirewalldConfig {
        zone: Some("work".into()),
        ..Default::default()
    });
    b.init(clock()).unwrap();
    b.grant(&[opening("192.0.2.1", 22, 30)]).unwrap();
    assert_eq!(fake.rules("work").len(), 1);
    assert!(fake.rules("public").is_empty());

    let (mut b, _) = backend_with(FirewalldConfig {
        zone: Some("nosuch".into()),
        ..Default::default()
    });
    let e = b.init(clock()).unwrap_err().to_string();
    assert!(
        e.contains("zone `nosuch` does not exist") && e.contains("block, public, work"),
        "{e}"
    );
    // A grant without init does the init and fails the same way.
    let e = b
        .grant(&[opening("192.0.2.1", 22, 30)])
        .unwrap_err()
        .to_string();
    assert!(e.contains("zone `nosuch` does not exist"), "{e}");
}

#[test]
fn firewalld_down_or_failed_is_reported() {
    let (mut b, fake) = backend_with(FirewalldConfig::default());
    fake.with(|f| {
        f.down = Some(ApiError::NotRunning {
            detail: "ServiceUnknown".into(),
        })
    });
    let e = b.init(clock()).unwrap_err();
    assert!(
        matches!(&e, FirewallError::Missing { what, .. } if what.contains("firewalld")),
        "{e:?}"
    );
    assert!(e.to_string().contains("start firewalld"), "{e}");
    fake.with(|f| {
        f.down = Some(ApiError::NoBus {
            address: "unix:path=/x".into(),
            detail: "No such file".into(),
        })
    });
    let e = b.init(clock()).unwrap_err();
    assert!(
        matches!(&e, FirewallError::Missing { what, .. } if what.contains("D-Bus")),
        "{e:?}"
    );
    fake.with(|f| {
        f.down = None;
        f.state = "FAILED".into();
    });
    let e = b.init(clock()).unwrap_err().to_string();
    assert!(e.contains("not running") && e.contains("FAILED"), "{e}");
}

#[test]
fn init_reconciles_the_state_file_of_a_previous_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/firewalld.json");
    let config = FirewalldConfig {
        state_file: Some(path.clone()),
        ..Default::default()
    };
    let fake = FakeApi::default();
    {
        let mut b = FirewalldBackend::with_api(config.clone(), Box::new(fake.clone()))
            .unwrap()
            .with_clock(std::sync::Arc::new(clock));
        b.init(clock()).unwrap();
        assert!(path.exists(), "init creates the state file");
        b.grant(&[
            opening("192.0.2.1", 22, 10),
            opening("192.0.2.2", 22, 100),
            opening("192.0.2.3", 22, 100),
        ])
        .unwrap();
        b.shutdown().unwrap();
    }
    advance(20);
    // firewalld dropped .1 by itself long ago? Not this time (clock jump): it is still there, overdue.
    // .3 vanished (firewalld reload); .2 is live.
    fake.with(|f| {
        f.rules
            .remove(&("public".to_string(), plain("192.0.2.3", 22)))
    });
    fake.put("public", &plain("192.0.2.99", 22), 0); // the admin's
    let mut b = FirewalldBackend::with_api(config.clone(), Box::new(fake.clone()))
        .unwrap()
        .with_clock(std::sync::Arc::new(clock));
    b.init(clock()).unwrap();
    let listed = b.list().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0].rule.clone(), listed[0].timeout_secs),
        (rule("192.0.2.2", 22), 80)
    );
    let rules: Vec<String> = fake.rules("public").into_iter().map(|r| r.0).collect();
    assert_eq!(
        rules,
        vec![plain("192.0.2.2", 22), plain("192.0.2.99", 22)],
        "overdue rule removed"
    );
    // A third run: flush finds the grant of the first through the file.
    let mut b = FirewalldBackend::with_api(config, Box::new(fake.clone()))
        .unwrap()
        .with_clock(std::sync::Arc::new(clock));
    b.flush().unwrap();
    assert_eq!(fake.rules("public"), vec![(plain("192.0.2.99", 22), 0)]);
    let saved = std::fs::read_to_string(&path).unwrap();
    assert!(saved.contains("\"grants\": []"), "{saved}");
}

#[test]
fn an_unwritable_state_file_fails_init_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "").unwrap();
    let config = FirewalldConfig {
        state_file: Some(blocker.join("x.json")),
        ..Default::default()
    };
    let (mut b, _) = backend_with(config);
    let e = b.init(clock()).unwrap_err().to_string();
    assert!(
        e.contains("cannot write state file") && e.contains("x.json"),
        "{e}"
    );
}

#[test]
fn a_corrupt_state_file_does_not_stop_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("firewalld.json");
    std::fs::write(&path, "{ not json").unwrap();
    let (mut b, _) = backend_with(FirewalldConfig {
        state_file: Some(path.clone()),
        ..Default::default()
    });
    b.init(clock()).unwrap();
    b.grant(&[opening("192.0.2.1", 22, 30)]).unwrap();
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .contains("192.0.2.1"));
}

#[test]
fn a_zone_that_disappeared_is_forgotten() {
    let (mut b, fake) = backend_with(FirewalldConfig {
        zone: Some("work".into()),
        ..Default::default()
    });
    b.init(clock()).unwrap();
    b.grant(&[opening("192.0.2.1", 22, 30)]).unwrap();
    fake.with(|f| f.zones.retain(|z| z != "work"));
    assert!(b.list().unwrap().is_empty());
    let e = b
        .grant(&[opening("192.0.2.1", 22, 30)])
        .unwrap_err()
        .to_string();
    assert!(e.contains("zone `work` no longer exists"), "{e}");
}

#[test]
fn empty_batches_do_nothing() {
    let (mut b, fake) = backend_with(FirewalldConfig::default());
    b.grant(&[]).unwrap();
    b.revoke(&[]).unwrap();
    assert!(fake.calls().is_empty());
    let _: IpAddr = "192.0.2.1".parse().unwrap();
}
