//! The conformance battery every postern firewall backend should pass.
//!
//! One copy lives here; other crates include it from their integration tests:
//!
//! ```ignore
//! #[path = "../../ipfw/tests/common/battery.rs"]
//! mod battery;
//! battery::run(&mut make, &mut probe, 1_700_000_000);
//! ```
//!
//! It depends on `spa_core` only. The caller supplies
//! - `make`: a NEW backend instance over the SAME firewall (and the same state
//!   file, if the backend has one) each call; the battery drops an instance
//!   without `shutdown` to simulate a killed daemon, then makes another;
//! - `probe`: whether the firewall would let a new connection for this rule in
//!   right now (ask a fake tool, or try a real connection in a namespace);
//! - `now`: the logical time of the first grants (unix seconds). All openings
//!   are made relative to it, and `expire`/`init` are called with later times.
//!
//! The firewall must start empty (no grants of this backend). Steps:
//!
//! 1. `init`; nothing is listed.
//! 2. A batch of three grants (two sources on one port, one UDP) is listed with
//!    its expiries and lets traffic in.
//! 3. Repeated grants (the same rule twice in a batch, the same expiry again, a
//!    refresh, a shorter one) leave one entry, never shortened.
//! 4. `expire` before and at expiry removes exactly what is due (skipped for
//!    kernel-expiring backends, whose clock is real).
//! 5. Restart with leftovers: a new instance's `init` at a later time removes
//!    expired leftovers and keeps live ones, twice (idempotent).
//! 6. Bad input: a batch mixing a good opening with NAT, or with IPv6, either
//!    succeeds entirely or fails with an error naming the problem and changes
//!    nothing; an empty batch is fine.
//! 7. `revoke`, also of rules that are not there.
//! 8. `flush` removes everything, the backend stays usable; `shutdown` is Ok.

#![allow(dead_code)]

use spa_core::firewall::{Firewall, NatRule, Opening, Rule};
use spa_core::request::Proto;
use std::net::IpAddr;

pub fn rule(source: &str, proto: Proto, port: u16) -> Rule {
    Rule {
        source: source.parse::<IpAddr>().expect("address"),
        proto,
        port,
        nat: None,
    }
}

pub fn opening(rule: &Rule, granted_at: u64, timeout_secs: u32) -> Opening {
    Opening {
        rule: rule.clone(),
        timeout_secs,
        expires_at: granted_at + u64::from(timeout_secs),
    }
}

fn sorted(mut rules: Vec<(Rule, u64)>) -> Vec<(Rule, u64)> {
    rules.sort_by_key(|(r, exp)| (r.source, r.proto, r.port, *exp));
    rules
}

fn listed(fw: &mut dyn Firewall) -> Vec<(Rule, u64)> {
    let openings = fw.list().unwrap_or_else(|e| panic!("list failed: {e}"));
    sorted(
        openings
            .into_iter()
            .map(|o| (o.rule, o.expires_at))
            .collect(),
    )
}

fn rules_of(fw: &mut dyn Firewall) -> Vec<Rule> {
    listed(fw).into_iter().map(|(r, _)| r).collect()
}

/// The listing is exactly `want` (expiries within `slack` seconds).
fn assert_listing(fw: &mut dyn Firewall, want: &[(&Rule, u64)], slack: u64, step: &str) {
    let got = listed(fw);
    let want = sorted(want.iter().map(|(r, e)| ((*r).clone(), *e)).collect());
    let same = got.len() == want.len()
        && got
            .iter()
            .zip(&want)
            .all(|((gr, ge), (wr, we))| gr == wr && ge.abs_diff(*we) <= slack);
    assert!(same, "{step}: listed {got:?}, expected {want:?}");
}

fn assert_probe(probe: &mut dyn FnMut(&Rule) -> bool, rule: &Rule, open: bool, step: &str) {
    assert_eq!(
        probe(rule),
        open,
        "{step}: {rule} should be {}",
        if open { "open" } else { "closed" }
    );
}

/// A batch of a good opening and a questionable one either applies entirely or
/// fails naming `topic` and leaves the listing as it was.
fn all_or_nothing(
    fw: &mut dyn Firewall,
    probe: &mut dyn FnMut(&Rule) -> bool,
    good: &Opening,
    odd: &Opening,
    topics: &[&str],
) {
    let before = listed(fw);
    match fw.grant(&[good.clone(), odd.clone()]) {
        Err(e) => {
            let msg = e.to_string();
            assert!(
                topics
                    .iter()
                    .any(|t| msg.to_lowercase().contains(&t.to_lowercase())),
                "bad input: error `{msg}` should mention one of {topics:?}"
            );
            assert_eq!(
                listed(fw),
                before,
                "bad input: a failed batch changed the listing ({msg})"
            );
            assert_probe(probe, &good.rule, false, "bad input: failed batch");
        }
        Ok(()) => {
            assert_probe(probe, &good.rule, true, "mixed batch accepted");
            if odd.rule.nat.is_none() {
                assert_probe(probe, &odd.rule, true, "mixed batch accepted");
            }
            fw.revoke(&[good.rule.clone(), odd.rule.clone()])
                .expect("revoke mixed batch");
            assert_eq!(listed(fw), before, "revoking the mixed batch");
        }
    }
}

pub fn run(
    make: &mut dyn FnMut() -> Box<dyn Firewall>,
    probe: &mut dyn FnMut(&Rule) -> bool,
    now: u64,
) {
    let a = rule("192.0.2.10", Proto::Tcp, 22);
    let a2 = rule("192.0.2.11", Proto::Tcp, 22);
    let b = rule("198.51.100.7", Proto::Udp, 53);
    let c = rule("203.0.113.5", Proto::Tcp, 443);
    let d = rule("203.0.113.6", Proto::Tcp, 443);
    let e = rule("203.0.113.9", Proto::Tcp, 8080);

    // 1. init on a clean firewall
    let mut fw = make();
    let kernel = fw.expires_in_kernel();
    let slack = if kernel { 2 } else { 0 };
    fw.init(now).expect("init");
    assert!(
        listed(&mut *fw).is_empty(),
        "the battery needs a firewall without grants of this backend"
    );
    for r in [&a, &a2, &b] {
        assert_probe(probe, r, false, "before any grant");
    }

    // 2. grant a batch
    fw.grant(&[
        opening(&a, now, 30),
        opening(&a2, now, 30),
        opening(&b, now, 60),
    ])
    .expect("grant batch");
    for r in [&a, &a2, &b] {
        assert_probe(probe, r, true, "after grant");
    }
    assert_listing(
        &mut *fw,
        &[(&a, now + 30), (&a2, now + 30), (&b, now + 60)],
        slack,
        "after grant",
    );

    // 3. repeated grants: one entry each, refreshed to the latest expiry
    fw.grant(&[opening(&a2, now, 30), opening(&a2, now, 30)])
        .expect("same rule twice in a batch");
    fw.grant(&[opening(&a, now, 30)]).expect("repeated grant");
    fw.grant(&[opening(&a, now, 45)]).expect("refresh");
    fw.grant(&[opening(&a, now, 40)]).expect("shorter repeat");
    assert_listing(
        &mut *fw,
        &[(&a, now + 45), (&a2, now + 30), (&b, now + 60)],
        slack,
        "after repeated grants",
    );
    assert_probe(probe, &a, true, "after refresh");

    // 4. expire at expiry
    if !kernel {
        assert!(
            fw.expire(now + 29).expect("expire").is_empty(),
            "nothing is due at now+29"
        );
        assert_eq!(
            fw.expire(now + 30).expect("expire"),
            vec![a2.clone()],
            "expire at now+30"
        );
        assert_probe(probe, &a2, false, "after its expiry");
        assert_probe(probe, &a, true, "refreshed grant outlives the first expiry");
        assert_listing(
            &mut *fw,
            &[(&a, now + 45), (&b, now + 60)],
            0,
            "after first expiry",
        );
        assert_eq!(
            fw.expire(now + 45).expect("expire"),
            vec![a.clone()],
            "expire at now+45"
        );
        assert_probe(probe, &a, false, "after refreshed expiry");
        assert_probe(probe, &b, true, "udp grant still live");
        assert_listing(&mut *fw, &[(&b, now + 60)], 0, "after second expiry");
    } else {
        assert!(
            fw.expire(now + 45).expect("expire").is_empty(),
            "kernel-expiring backends return nothing"
        );
        fw.revoke(&[a.clone(), a2.clone()]).expect("revoke");
    }

    // 5. restart with leftovers: drop without shutdown, a new instance reconciles
    fw.grant(&[opening(&c, now, 70), opening(&d, now, 200)])
        .expect("grant before crash");
    drop(fw);
    let mut fw = make();
    fw.init(now + 100).expect("init after restart");
    let after_restart: Vec<(&Rule, u64)> = if kernel {
        vec![(&b, now + 60), (&c, now + 70), (&d, now + 200)]
    } else {
        vec![(&d, now + 200)]
    };
    assert_listing(&mut *fw, &after_restart, slack, "after restart");
    assert_probe(probe, &d, true, "live leftover after restart");
    if !kernel {
        assert_probe(probe, &b, false, "expired leftover after restart");
        assert_probe(probe, &c, false, "expired leftover after restart");
    }
    fw.init(now + 100).expect("second init");
    assert_listing(&mut *fw, &after_restart, slack, "after a second init");
    assert_probe(probe, &d, true, "live leftover after a second init");
    if kernel {
        fw.revoke(&[b.clone(), c.clone()]).expect("revoke");
    }

    // 6. bad input: all or nothing
    let t = now + 100;
    let good = opening(&e, t, 300);
    let nat = Opening {
        rule: Rule {
            nat: Some(NatRule {
                to_addr: "10.0.0.5".parse().unwrap(),
                to_port: 22,
                local: false,
                snat: None,
                dnat: true,
            }),
            ..rule("203.0.113.10", Proto::Tcp, 2222)
        },
        timeout_secs: 300,
        expires_at: t + 300,
    };
    all_or_nothing(&mut *fw, probe, &good, &nat, &["NAT"]);
    let v6 = opening(&rule("2001:db8::7", Proto::Tcp, 22), t, 300);
    all_or_nothing(&mut *fw, probe, &good, &v6, &["IPv6", "inet6", "ip6"]);
    fw.grant(&[]).expect("empty batch");
    assert_listing(&mut *fw, &[(&d, now + 200)], slack, "after bad input");

    // 7. revoke, also of what is not there
    fw.revoke(std::slice::from_ref(&d)).expect("revoke");
    assert_probe(probe, &d, false, "after revoke");
    assert!(rules_of(&mut *fw).is_empty(), "listing after revoke");
    fw.revoke(&[d.clone(), e.clone()])
        .expect("revoking missing rules is not an error");

    // 8. flush, and the backend stays usable
    fw.grant(&[opening(&a, t, 300), opening(&b, t, 300)])
        .expect("grant before flush");
    assert_probe(probe, &a, true, "before flush");
    fw.flush().expect("flush");
    assert!(rules_of(&mut *fw).is_empty(), "listing after flush");
    assert_probe(probe, &a, false, "after flush");
    assert_probe(probe, &b, false, "after flush");
    fw.grant(&[opening(&a, t, 300)]).expect("grant after flush");
    assert_probe(probe, &a, true, "grant after flush");
    fw.flush().expect("second flush");
    assert!(rules_of(&mut *fw).is_empty(), "listing after second flush");
    fw.shutdown().expect("shutdown");
}
