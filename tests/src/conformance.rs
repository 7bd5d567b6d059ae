//! The conformance battery every postern firewall backend should pass, and a
//! real network to run it on.
//!
//! Each backend runs it from its own `tests/` directory (`postern-e2e` is a
//! dev-dependency of every backend crate):
//!
//! ```ignore
//! use postern_e2e::conformance;
//! conformance::run(&mut make, &mut probe, 1_700_000_000);
//! ```
//!
//! The caller supplies
//! - `make`: a NEW backend instance over the SAME firewall (and the same state
//!   file, if the backend has one) each call; the battery drops an instance
//!   without `shutdown` to simulate a killed daemon, then makes another;
//! - `probe`: whether the firewall would let a new connection for this rule in
//!   right now (ask a fake tool, or try a real connection: [`BatteryNet`]);
//! - `now`: the logical time of the first grants (unix seconds). All openings
//!   are made relative to it, and `expire`/`init` are called with later times.
//!   For kernel-expiring backends ([`Firewall::expires_in_kernel`]) it must be
//!   the current time: their clock is real.
//!
//! The firewall must start empty (no grants of this backend). Steps (each is
//! printed as it passes, `conformance[<backend>] step N ok: …`):
//!
//! 1. `init`; nothing is listed, nothing is let in.
//! 2. A batch of three grants (two sources on one port, one UDP) is listed with
//!    its expiries and lets traffic in.
//! 3. Repeated grants (the same rule twice in a batch, the same expiry again, a
//!    refresh, a shorter one) leave one entry, never shortened.
//! 4. `expire` before and at expiry removes exactly what is due. Kernel-expiring
//!    backends return nothing from `expire`; instead a grant of 2 s (real time)
//!    must close by itself, leaving the others.
//! 5. Restart with leftovers: a new instance's `init` at a later time removes
//!    expired leftovers and keeps live ones, twice (idempotent). (Kernel-expiring
//!    backends restart at the current time, when nothing has expired yet:
//!    everything is kept.)
//! 6. Bad input: a batch mixing a good opening with NAT either succeeds
//!    entirely or fails with an error naming the problem and changes nothing;
//!    a batch mixing IPv4 and IPv6 openings succeeds (every backend grants
//!    IPv6) and lets both in; an empty batch is fine.
//! 7. `revoke`, also of rules that are not there.
//! 8. `flush` removes everything, the backend stays usable; `shutdown` is Ok.
//!
//! [`pinned`] is a further case for backends that get grants pinned to a
//! source port (postern's native protocol).
//!
//! For kernel-expiring backends listed expiries may be off by the real time the
//! battery has taken so far (a kernel timeout starts when the grant is made),
//! plus 2 s of rounding.

use crate::{pair, tcp_listen, wait_until, ChildGuard, GuardInner, Netns, Pair};
use spa_core::firewall::{Firewall, NatRule, Opening, Rule, RuleFeature};
use spa_core::request::Proto;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Every source address the battery grants (the last one is IPv6, which every
/// backend must grant). A real network must let the client use them:
/// [`BatteryNet`] puts them all on its client.
pub const SOURCES: [&str; 9] = [
    "192.0.2.10",
    "192.0.2.11",
    "192.0.2.12",
    "198.51.100.7",
    "203.0.113.5",
    "203.0.113.6",
    "203.0.113.9",
    "203.0.113.10",
    "2001:db8::7",
];

/// Every port the battery grants, with its protocol.
pub const PORTS: [(Proto, u16); 5] = [
    (Proto::Tcp, 22),
    (Proto::Udp, 53),
    (Proto::Tcp, 443),
    (Proto::Tcp, 2222),
    (Proto::Tcp, 8080),
];

/// `protected`/DROP specs for [`PORTS`], e.g. `tcp/22`.
pub fn port_specs() -> Vec<String> {
    PORTS
        .iter()
        .map(|(p, port)| format!("{}/{port}", p.name()))
        .collect()
}

/// The current unix time in seconds.
pub fn wall_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn rule(source: &str, proto: Proto, port: u16) -> Rule {
    Rule::new(source.parse::<IpAddr>().expect("address"), proto, port)
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

/// Listed expiries may differ from the expected ones by this much.
struct Slack {
    kernel: bool,
    started: Instant,
}

impl Slack {
    fn secs(&self) -> u64 {
        if self.kernel {
            2 + self.started.elapsed().as_secs()
        } else {
            0
        }
    }
}

/// The listing is exactly `want` (expiries within the slack).
fn assert_listing(fw: &mut dyn Firewall, want: &[(&Rule, u64)], slack: &Slack, step: &str) {
    let got = listed(fw);
    let want = sorted(want.iter().map(|(r, e)| ((*r).clone(), *e)).collect());
    let slack = slack.secs();
    let same = got.len() == want.len()
        && got
            .iter()
            .zip(&want)
            .all(|((gr, ge), (wr, we))| gr == wr && ge.abs_diff(*we) <= slack);
    assert!(
        same,
        "{step}: listed {got:?}, expected {want:?} (expiries ±{slack} s)"
    );
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
    slack: &Slack,
) -> &'static str {
    let before = listed(fw);
    // Kernel-expiring backends list whole seconds left, so expiries may move by one.
    let before_ref: Vec<(&Rule, u64)> = before.iter().map(|(r, e)| (r, *e)).collect();
    match fw.grant(&[good.clone(), odd.clone()]) {
        Err(e) => {
            let msg = e.to_string();
            assert!(
                topics
                    .iter()
                    .any(|t| msg.to_lowercase().contains(&t.to_lowercase())),
                "bad input: error `{msg}` should mention one of {topics:?}"
            );
            assert_listing(
                fw,
                &before_ref,
                slack,
                &format!("bad input: a failed batch changed the listing ({msg})"),
            );
            assert_probe(probe, &good.rule, false, "bad input: failed batch");
            "refused"
        }
        Ok(()) => {
            assert_probe(probe, &good.rule, true, "mixed batch accepted");
            if odd.rule.nat.is_none() {
                assert_probe(probe, &odd.rule, true, "mixed batch accepted");
            }
            let mut want: Vec<Rule> = before.iter().map(|(r, _)| r.clone()).collect();
            want.extend([good.rule.clone(), odd.rule.clone()]);
            want.sort_by_key(|r| (r.source, r.proto, r.port));
            let mut got = rules_of(fw);
            got.sort_by_key(|r| (r.source, r.proto, r.port));
            assert_eq!(got, want, "mixed batch accepted: listing");
            fw.revoke(&[good.rule.clone(), odd.rule.clone()])
                .expect("revoke mixed batch");
            assert_listing(fw, &before_ref, slack, "revoking the mixed batch");
            assert_probe(probe, &good.rule, false, "mixed batch revoked");
            "accepted"
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
    let f = rule("192.0.2.12", Proto::Tcp, 22);

    // 1. init on a clean firewall
    let mut fw = make();
    let name = fw.name();
    let kernel = fw.expires_in_kernel();
    let slack = Slack {
        kernel,
        started: Instant::now(),
    };
    let step = |n: u32, what: &str| {
        println!(
            "conformance[{name}] step {n} ok: {what} ({:.1} s)",
            slack.started.elapsed().as_secs_f64()
        )
    };
    fw.init(now).expect("init");
    assert!(
        listed(&mut *fw).is_empty(),
        "the battery needs a firewall without grants of this backend"
    );
    for r in [&a, &a2, &b] {
        assert_probe(probe, r, false, "before any grant");
    }
    step(1, "init on a clean firewall");

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
    assert_probe(probe, &f, false, "a source that was not granted");
    assert_listing(
        &mut *fw,
        &[(&a, now + 30), (&a2, now + 30), (&b, now + 60)],
        &slack,
        "after grant",
    );
    step(2, "a batch of three grants is listed and lets traffic in");

    // 3. repeated grants: one entry each, refreshed to the latest expiry
    fw.grant(&[opening(&a2, now, 30), opening(&a2, now, 30)])
        .expect("same rule twice in a batch");
    fw.grant(&[opening(&a, now, 30)]).expect("repeated grant");
    fw.grant(&[opening(&a, now, 45)]).expect("refresh");
    fw.grant(&[opening(&a, now, 35)]).expect("shorter repeat");
    assert_listing(
        &mut *fw,
        &[(&a, now + 45), (&a2, now + 30), (&b, now + 60)],
        &slack,
        "after repeated grants",
    );
    assert_probe(probe, &a, true, "after refresh");
    step(3, "repeated grants: one entry each, never shortened");

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
            &slack,
            "after first expiry",
        );
        assert_eq!(
            fw.expire(now + 45).expect("expire"),
            vec![a.clone()],
            "expire at now+45"
        );
        assert_probe(probe, &a, false, "after refreshed expiry");
        assert_probe(probe, &b, true, "udp grant still live");
        assert_listing(&mut *fw, &[(&b, now + 60)], &slack, "after second expiry");
        step(4, "expire removes exactly what is due");
    } else {
        assert!(
            fw.expire(now + 45).expect("expire").is_empty(),
            "kernel-expiring backends return nothing"
        );
        fw.revoke(&[a.clone(), a2.clone()]).expect("revoke");
        assert_probe(probe, &a, false, "after revoke");
        // A short grant in real time: the firewall closes it by itself.
        let granted = Instant::now();
        let short = Opening {
            rule: f.clone(),
            timeout_secs: 2,
            expires_at: wall_now() + 2,
        };
        fw.grant(std::slice::from_ref(&short))
            .expect("grant for 2 s");
        assert_probe(probe, &f, true, "a grant of 2 s, at once");
        let closed = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            !probe(&f)
        });
        let took = granted.elapsed();
        assert!(closed, "a grant of 2 s is still open after {took:?}");
        assert!(
            took >= Duration::from_millis(1000),
            "a grant of 2 s closed after {took:?}"
        );
        assert_listing(
            &mut *fw,
            &[(&b, now + 60)],
            &slack,
            "after a grant of 2 s expired",
        );
        assert_probe(probe, &b, true, "udp grant still live");
        step(
            4,
            &format!("the firewall closed a grant of 2 s by itself after {took:.1?}"),
        );
    }

    // 5. restart with leftovers: drop without shutdown, a new instance reconciles
    fw.grant(&[opening(&c, now, 70), opening(&d, now, 200)])
        .expect("grant before crash");
    drop(fw);
    // A kernel-expiring backend's clock is real: it restarts now, when nothing
    // has expired yet; the others restart later in logical time.
    let restart_at = if kernel { wall_now() } else { now + 100 };
    let mut fw = make();
    fw.init(restart_at).expect("init after restart");
    let after_restart: Vec<(&Rule, u64)> = if kernel {
        vec![(&b, now + 60), (&c, now + 70), (&d, now + 200)]
    } else {
        vec![(&d, now + 200)]
    };
    assert_listing(&mut *fw, &after_restart, &slack, "after restart");
    assert_probe(probe, &d, true, "live leftover after restart");
    if !kernel {
        assert_probe(probe, &b, false, "expired leftover after restart");
        assert_probe(probe, &c, false, "expired leftover after restart");
    }
    fw.init(restart_at).expect("second init");
    assert_listing(&mut *fw, &after_restart, &slack, "after a second init");
    assert_probe(probe, &d, true, "live leftover after a second init");
    if kernel {
        fw.revoke(&[b.clone(), c.clone()]).expect("revoke");
    }
    step(
        5,
        "restart: expired leftovers removed, live ones kept, twice",
    );

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
                forward_all: false,
            }),
            ..rule("203.0.113.10", Proto::Tcp, 2222)
        },
        timeout_secs: 300,
        expires_at: t + 300,
    };
    let nat_outcome = all_or_nothing(&mut *fw, probe, &good, &nat, &["NAT"], &slack);
    let v6 = opening(&rule("2001:db8::7", Proto::Tcp, 22), t, 300);
    let v6_outcome = all_or_nothing(
        &mut *fw,
        probe,
        &good,
        &v6,
        &["IPv6", "inet6", "ip6"],
        &slack,
    );
    // Every backend grants IPv6 (and the probe lets IPv6 traffic in for it).
    assert_eq!(v6_outcome, "accepted", "an IPv6 grant was refused");
    fw.grant(&[]).expect("empty batch");
    assert_listing(&mut *fw, &[(&d, now + 200)], &slack, "after bad input");
    step(
        6,
        &format!("bad input all or nothing (NAT {nat_outcome}, IPv6 {v6_outcome})"),
    );

    // 7. revoke, also of what is not there
    fw.revoke(std::slice::from_ref(&d)).expect("revoke");
    assert_probe(probe, &d, false, "after revoke");
    assert!(rules_of(&mut *fw).is_empty(), "listing after revoke");
    fw.revoke(&[d.clone(), e.clone()])
        .expect("revoking missing rules is not an error");
    step(7, "revoke, also of missing rules");

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
    step(8, "flush, usable afterwards, shutdown");
}

/// Source-port pinning, run after [`run`] on a clean firewall: a grant pinned
/// to source port `pin` lets a connection from that port in, and one from
/// `other` (same address, same destination port) stays closed; the listing
/// returns the pinned rule; revoking it closes it. A backend that does not
/// [`support`](Firewall::supports) pinning must refuse the grant with an
/// error naming the source port, and change nothing. `probe` must connect
/// from `rule.source_port` when it is set.
pub fn pinned(
    make: &mut dyn FnMut() -> Box<dyn Firewall>,
    probe: &mut dyn FnMut(&Rule) -> bool,
    now: u64,
    (pin, other): (u16, u16),
) {
    let mut fw = make();
    let name = fw.name();
    fw.init(now).expect("init");
    let plain = rule("203.0.113.9", Proto::Tcp, 8080);
    let pinned = plain.clone().pinned(Some(pin));
    let elsewhere = plain.clone().pinned(Some(other));
    assert_probe(probe, &pinned, false, "pinned: before the grant");
    if !fw.supports(RuleFeature::SourcePort) {
        let e = fw
            .grant(&[opening(&pinned, now, 300)])
            .expect_err("a backend without pinning must refuse a pinned grant")
            .to_string();
        assert!(e.contains("source port"), "pinned refused: {e}");
        assert!(rules_of(&mut *fw).is_empty(), "pinned refused: listing");
        assert_probe(probe, &pinned, false, "pinned refused");
        println!("conformance[{name}] pinned ok: refused ({e})");
        return;
    }
    fw.grant(&[opening(&pinned, now, 300)])
        .expect("grant pinned");
    assert_eq!(rules_of(&mut *fw), vec![pinned.clone()], "pinned: listing");
    assert_probe(probe, &elsewhere, false, "pinned: another source port");
    assert_probe(probe, &plain, false, "pinned: an ephemeral source port");
    assert_probe(probe, &pinned, true, "pinned: the pinned source port");
    fw.revoke(std::slice::from_ref(&pinned))
        .expect("revoke pinned");
    assert!(
        rules_of(&mut *fw).is_empty(),
        "pinned: listing after revoke"
    );
    fw.flush().expect("flush");
    fw.shutdown().expect("shutdown");
    println!("conformance[{name}] pinned ok: only source port {pin} gets in");
}

/// A client/server [`Pair`] made for the battery with real connections: every
/// address of [`SOURCES`] on the client's interface (routed back from the
/// server), a TCP listener on each TCP port of [`PORTS`] and a UDP echo on each
/// UDP port in the server namespace. Put the firewall under test in
/// [`BatteryNet::server`]; [`BatteryNet::probe`] is the battery's `probe`.
pub struct BatteryNet {
    // Field order = drop order: stop the listeners before the namespaces go.
    _listeners: Vec<ChildGuard>,
    pub pair: Pair,
    /// How long a connection attempt may take before the port counts as closed.
    pub timeout: Duration,
}

impl BatteryNet {
    pub fn new(tag: &str) -> BatteryNet {
        let pair = pair(tag);
        for s in SOURCES {
            let v6 = s.contains(':');
            let (fam, len) = if v6 { ("-6", 128) } else { ("-4", 32) };
            let mut add = vec!["ip", fam, "addr", "add"];
            let cidr = format!("{s}/{len}");
            add.extend([cidr.as_str(), "dev", Pair::CLIENT_IF]);
            if v6 {
                add.push("nodad");
            }
            pair.client.run_ok(&add);
            pair.server
                .run_ok(&["ip", fam, "route", "add", &cidr, "dev", Pair::SERVER_IF]);
        }
        let mut listeners = Vec::new();
        for (proto, port) in PORTS {
            listeners.push(match proto {
                Proto::Tcp => tcp_listen(&pair.server, port),
                Proto::Udp => udp_echo(&pair.server, port),
            });
        }
        let net = BatteryNet {
            _listeners: listeners,
            pair,
            timeout: Duration::from_millis(400),
        };
        // IPv6 on a fresh link works only once the kernel has seen the carrier
        // (up to a second later): wait until both families get through.
        for s in ["192.0.2.10", "2001:db8::7"] {
            let r = rule(s, Proto::Tcp, 22);
            let up = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
                net.probe(&r)
            });
            assert!(
                up,
                "{s} cannot reach the server's port 22 without a firewall"
            );
        }
        net
    }

    pub fn server(&self) -> &Netns {
        &self.pair.server
    }

    pub fn client(&self) -> &Netns {
        &self.pair.client
    }

    /// Would a new connection for `rule` get in now? One real attempt from
    /// `rule.source` in the client namespace to the server's address of that
    /// family: a TCP connect, or a UDP datagram answered by the echo.
    pub fn probe(&self, rule: &Rule) -> bool {
        let dest: IpAddr = match rule.source {
            IpAddr::V4(_) => self.pair.server_ip.into(),
            IpAddr::V6(_) => self.pair.server_ip6.into(),
        };
        let (source, proto, port, timeout) = (rule.source, rule.proto, rule.port, self.timeout);
        let from = SocketAddr::new(source, rule.source_port.unwrap_or(0));
        let to = SocketAddr::new(dest, port);
        self.pair.client.in_ns(move || match proto {
            Proto::Tcp => tcp_connect_bound(from, to, timeout),
            Proto::Udp => udp_answered_from(source, to, timeout),
        })
    }

    /// The ruleset of the server namespace, for failure messages.
    pub fn ruleset(&self) -> String {
        let mut s = String::new();
        for argv in [
            &["nft", "list", "ruleset"][..],
            &["iptables-save"],
            &["ip6tables-save"],
        ] {
            // Only for failure messages: a missing tool is no reason to panic.
            let out = self.pair.server.cmd(argv[0]).args(&argv[1..]).output();
            let text = match out {
                Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
                Err(e) => format!("({e})\n"),
            };
            s += &format!("--- {argv:?}\n{text}");
        }
        s
    }
}

/// A UDP echo on `[::]:port` (dual stack) inside `ns`, until the guard is dropped.
pub fn udp_echo(ns: &Netns, port: u16) -> ChildGuard {
    let path = ns.path();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let (tx, rx) = mpsc::channel::<Result<(), String>>();
    let handle = std::thread::spawn(move || {
        let setup = || -> Result<UdpSocket, String> {
            crate::enter_netns(&path).map_err(|e| format!("setns {}: {e}", path.display()))?;
            let s = UdpSocket::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
                .map_err(|e| format!("bind [::]:{port}/udp: {e}"))?;
            s.set_read_timeout(Some(Duration::from_millis(50)))
                .map_err(|e| e.to_string())?;
            Ok(s)
        };
        let sock = match setup() {
            Ok(s) => {
                let _ = tx.send(Ok(()));
                s
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let mut buf = [0u8; 2048];
        while !stop2.load(Ordering::SeqCst) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("udp_echo in {}: {e}", ns.name),
        Err(_) => panic!("udp_echo in {}: thread did not start", ns.name),
    }
    ChildGuard {
        inner: GuardInner::Thread {
            stop,
            handle: Some(handle),
        },
    }
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// One TCP connection attempt from `source` (any port) to `to`, in the calling
/// thread's namespace; true if it was established within `timeout`.
pub fn tcp_connect_from(source: IpAddr, to: SocketAddr, timeout: Duration) -> bool {
    tcp_connect_bound(SocketAddr::new(source, 0), to, timeout)
}

/// [`tcp_connect_from`] from the address and port `from` (port 0: any), with
/// SO_REUSEADDR so a port used before can be bound again.
pub fn tcp_connect_bound(from: SocketAddr, to: SocketAddr, timeout: Duration) -> bool {
    let source = from.ip();
    use std::os::fd::FromRawFd;
    let domain = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket calls on a fresh fd, owned by a TcpStream (closed on
    // drop) right after creation.
    unsafe {
        let fd = libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        );
        if fd < 0 {
            return false;
        }
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let (local, len) = sockaddr(from);
        if libc::bind(fd, &local as *const _ as *const libc::sockaddr, len) != 0 {
            panic!(
                "bind to {source}: {} (is the address on the client?)",
                std::io::Error::last_os_error()
            );
        }
        let (remote, len) = sockaddr(to);
        if libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len) == 0 {
            return true;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS) {
            return false;
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        if libc::poll(&mut pfd, 1, ms) != 1 {
            return false;
        }
        matches!(stream.take_error(), Ok(None))
    }
}

/// One UDP datagram from `source` to `to`; true if it is echoed back within
/// `timeout` (a dropped datagram gets no answer, a rejected one an ICMP error).
pub fn udp_answered_from(source: IpAddr, to: SocketAddr, timeout: Duration) -> bool {
    let sock = UdpSocket::bind(SocketAddr::new(source, 0))
        .unwrap_or_else(|e| panic!("bind to {source}: {e} (is the address on the client?)"));
    if sock.connect(to).is_err() || sock.set_read_timeout(Some(timeout)).is_err() {
        return false;
    }
    if sock.send(b"postern conformance probe").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(sock.recv(&mut buf), Ok(n) if &buf[..n] == b"postern conformance probe")
}
