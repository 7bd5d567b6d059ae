//! The TCP capture under attack (the hardening issue's case): posternd with a TCP
//! capture of 64 slots (`max_connections = 64`, so 8 per source) in a server
//! namespace; an attacker namespace with 8 addresses holds 8 connections from
//! each, idle or trickling a byte a second (slowloris), and reconnects the moment
//! one is closed. A knock from a third address (`postern -P tcp` from the client
//! namespace) must still open the port, every time, while the attack goes on; no
//! byte goes back to the attacker; posternd's memory stays flat.
//!
//! With the old capture (a global semaphore, a per-source cap of max/8, one read
//! timeout) the 64 slots stay full and the knock is closed unread.

use postern_e2e::attacker::{cpu_time_ms, vm_rss_kib, Attacker};
use postern_e2e::posternd::{
    knock_with, nftables_action, run_scenarios, runnable, tcp_capture, Service, Setup, SPA_PORT,
};
use postern_e2e::scenario::{describe, SpaClient};
use postern_e2e::wait_until;
use std::time::Duration;

const PORT: u16 = 22031;
/// Long enough that every knock of a run finds the port still open.
const TIMEOUT: u64 = 60;
const KNOCKS: usize = 5;
const ADDRESSES: u8 = 8;
const PER_ADDRESS: usize = 8;
/// posternd's resident memory may grow this much over the attack (KiB).
const RSS_SLACK_KIB: u64 = 16 * 1024;

#[derive(Clone, Copy, Debug)]
enum Attack {
    /// Connect and send nothing.
    Idle,
    /// Connect and send one byte every second.
    Slowloris,
}

fn under_attack(attack: Attack, tag: &str) {
    let capture = format!("{}max_connections = 64\n", tcp_capture(SPA_PORT));
    let s = Setup::new(
        Service::open(tag, PORT),
        TIMEOUT,
        "memory",
        &format!("{capture}\n{}", nftables_action(PORT)),
    );
    let svc = &s.svc;
    let attacker = Attacker::new(tag, svc.server(), ADDRESSES);
    let d = s.start();
    let client = SpaClient::postern();
    let ctx = |what: &str| format!("{attack:?}: {what}\n--- posternd log ---\n{}", d.log_text());
    assert!(
        !svc.reachable(Duration::from_millis(700)),
        "{}",
        ctx("port reachable before the knock")
    );

    let rss_before = vm_rss_kib(d.pid());
    let (cpu_before, attack_start) = (cpu_time_ms(d.pid()), std::time::Instant::now());
    let trickle = match attack {
        Attack::Idle => None,
        Attack::Slowloris => Some(Duration::from_secs(1)),
    };
    let holder = attacker.hold(SPA_PORT, PER_ADDRESS, trickle);
    let full = ADDRESSES as usize * PER_ADDRESS;
    assert!(
        wait_until(Duration::from_secs(5), Duration::from_millis(10), || {
            holder.stats().alive >= full
        }),
        "{}",
        ctx(&format!(
            "the attacker could not open its {full} connections: {:?}",
            holder.stats()
        ))
    );
    // Let every slot fill (and the first round of idle ones time out and come back).
    std::thread::sleep(Duration::from_millis(2500));

    let mut rss_max = rss_before;
    let mut held_at_knocks = Vec::new();
    for n in 1..=KNOCKS {
        held_at_knocks.push(holder.stats().alive);
        let out = knock_with(&client, svc, &s.keys, &["-P", "tcp"]);
        assert!(
            out.status.success(),
            "{}",
            ctx(&format!("postern -P tcp: {}", describe(&out)))
        );
        assert!(
            d.wait_log("granted:", n, Duration::from_secs(4)),
            "{}",
            ctx(&format!(
                "knock {n} of {KNOCKS} did not get through (attacker: {:?})",
                holder.stats()
            ))
        );
        rss_max = rss_max.max(vm_rss_kib(d.pid()));
        std::thread::sleep(Duration::from_millis(700));
    }
    assert!(
        svc.wait_reachable(true, Duration::from_secs(3)),
        "{}",
        ctx("the port is not open after the knocks")
    );
    let during = holder.stats();
    let rss_after = vm_rss_kib(d.pid());
    let cpu_ms = cpu_time_ms(d.pid()) - cpu_before;
    let attack_ms = attack_start.elapsed().as_millis();
    let stats = holder.stop();
    let log = d.log_text();
    println!(
        "  {attack:?}: {KNOCKS}/{KNOCKS} knocks got through; attacker held {held_at_knocks:?} \
         connections at the knocks, opened {} and saw {} closed in all; \
         posternd VmRSS {rss_before} KiB before, {rss_max} KiB max, {rss_after} KiB after, \
         CPU {cpu_ms} ms in {attack_ms} ms of attack",
        stats.opened, stats.closed
    );
    println!(
        "  {attack:?}: {}",
        log.lines()
            .filter(|l| l.contains("under pressure"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(during.alive > 0, "{}", ctx("the attack had stopped"));
    assert_eq!(
        stats.received,
        0,
        "{}",
        ctx("posternd sent bytes to the attacker")
    );
    assert!(
        rss_max.max(rss_after) <= rss_before + RSS_SLACK_KIB,
        "{}",
        ctx(&format!(
            "posternd grew from {rss_before} KiB to {} KiB",
            rss_max.max(rss_after)
        ))
    );
    // The slots were full: knocks got in by closing an attacker's oldest connection.
    let evictions = log
        .matches("closed the oldest connection of 192.0.2.")
        .count();
    assert!(
        evictions >= 1,
        "{}",
        ctx("no knock had to evict: the slots were never full")
    );
    // The operator sees the attack, in bounded form (one line per 10 s at most).
    let warnings = log.matches("TCP capture under pressure").count();
    assert!(
        (1..=2).contains(&warnings),
        "{}",
        ctx(&format!("{warnings} pressure warnings"))
    );
}

#[test]
fn a_knock_gets_through_eight_addresses_holding_eight_connections_each() {
    if !runnable(&["nft"]) {
        return;
    }
    run_scenarios(
        "TCP capture under attack",
        vec![
            (
                "idle connections".into(),
                Box::new(|| under_attack(Attack::Idle, "ati")),
            ),
            (
                "slowloris".into(),
                Box::new(|| under_attack(Attack::Slowloris, "ats")),
            ),
        ],
    );
}
