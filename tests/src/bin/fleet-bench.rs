//! fleet-bench: how fast one knock reaches every member of a `[fleet]`.
//!
//! Three posternd (as built: use `--release`) on one LAN share a real
//! redis-server on a unix socket (the harness of `tests/fleet.rs`). From the
//! client namespace, with probes outside the daemons:
//! - fan-out latency: a knock sent to member 1 for a fresh source address,
//!   then fresh TCP connects from that address until the port answers, on
//!   member 1 (local grant) or on member 3 (the last member, via Redis);
//! - grants/s across the group: N knocks for N addresses sent at once to
//!   member 1, until member 3's nftables set holds all N.
//!
//! `cargo run --release -p postern-e2e --bin fleet-bench [-- ROUNDS BURST]`
//! (default 40 rounds, burst of 1000). Needs root, nft, redis-server.

#[path = "../bench/net.rs"]
#[allow(dead_code)]
mod net;

use postern_e2e::fleet::{Fleet, PORT};
use postern_e2e::posternd::{nft_grants4, runnable, SPA_PORT};
use postern_e2e::scenario::{describe, SpaClient};
use postern_e2e::Netns;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

fn main() {
    if !runnable(&["nft", "redis-server", "redis-cli"]) {
        eprintln!("fleet-bench: needs root, nft and redis-server");
        std::process::exit(2);
    }
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map_or(40, |a| a.parse().expect("ROUNDS"));
    let burst: usize = args.next().map_or(1000, |a| a.parse().expect("BURST"));
    let fleet = Fleet::new("fb");
    let (client_ns, client_ip) = (&fleet.lan.hosts[0].0, fleet.lan.hosts[0].1);
    let o = client_ip.octets();
    // Fresh source addresses on the client, one per round.
    let sources: Vec<Ipv4Addr> = (0..2 * rounds)
        .map(|i| Ipv4Addr::new(o[0], o[1], o[2], 20 + i as u8))
        .collect();
    for s in &sources {
        client_ns.run_ok(&["ip", "addr", "add", &format!("{s}/32"), "dev", "eth0"]);
    }
    println!("building {} knocks…", sources.len());
    let packets: Vec<Vec<u8>> = sources.iter().map(|s| packet(&fleet, *s)).collect();
    let member = |i: usize| SocketAddrV4::new(fleet.member_ip(i), SPA_PORT);
    let service = |i: usize| SocketAddrV4::new(fleet.member_ip(i), PORT);

    let mut local = Vec::new();
    let mut last = Vec::new();
    for (round, (src, pkt)) in sources.iter().zip(&packets).enumerate() {
        // Even rounds probe the knocked member, odd ones the last member.
        let probed = if round % 2 == 0 { 0 } else { 2 };
        let (src, pkt, to, svc) = (*src, pkt.clone(), member(0), service(probed));
        let took = in_ns(client_ns, move || {
            let udp = net::Udp::bind(src).expect("bind");
            let t0 = Instant::now();
            udp.send_to(&pkt, to).expect("send");
            net::connect_until(
                src,
                svc,
                Duration::from_millis(1),
                t0 + Duration::from_secs(5),
            )
            .map(|t| t - t0)
        });
        match (took, probed) {
            (Some(d), 0) => local.push(d),
            (Some(d), _) => last.push(d),
            (None, _) => eprintln!("round {round}: member {} never opened", probed + 1),
        }
    }
    local.sort();
    last.sort();

    println!("building {burst} knocks for the burst…");
    let burst_packets: Vec<Vec<u8>> = (0..burst)
        .map(|i| {
            let a = Ipv4Addr::new(198, 18, (i / 250) as u8, (i % 250 + 1) as u8);
            packet(&fleet, a)
        })
        .collect();
    let last_member = &fleet.lan.hosts[3].0;
    let before = nft_grants4(last_member).map(|g| g.len()).unwrap_or(0);
    let to = member(0);
    let t0 = Instant::now();
    in_ns(client_ns, move || {
        let udp = net::Udp::bind(client_ip).expect("bind");
        let refs: Vec<&[u8]> = burst_packets.iter().map(Vec::as_slice).collect();
        udp.send_many(&refs, to)
    });
    let mut applied = before;
    while t0.elapsed() < Duration::from_secs(30) && applied < before + burst {
        applied = nft_grants4(last_member).map(|g| g.len()).unwrap_or(0);
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = t0.elapsed();
    let got = applied.saturating_sub(before);

    let pct = |v: &[Duration], p: f64| {
        if v.is_empty() {
            return "n/a".to_string();
        }
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        format!("{:.2} ms", v[i].as_secs_f64() * 1000.0)
    };
    println!("\nfleet of 3 posternd, Redis on a unix socket, probes from the client namespace");
    println!(
        "knock→open on the knocked member:  p50 {}  p95 {}  ({} rounds)",
        pct(&local, 0.5),
        pct(&local, 0.95),
        local.len()
    );
    println!(
        "knock→open on the last member:     p50 {}  p95 {}  ({} rounds)",
        pct(&last, 0.5),
        pct(&last, 0.95),
        last.len()
    );
    println!(
        "{burst} knocks at once to member 1: {got}/{burst} in member 3's firewall after {:.0} ms \
         = {:.0} grants/s across the group",
        took.as_secs_f64() * 1000.0,
        got as f64 / took.as_secs_f64()
    );
}

/// Run `f` on a thread inside `ns`.
fn in_ns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    ns.in_ns(f)
}

/// A knock (built by postern, not sent) asking the fleet's port for `allow`.
fn packet(fleet: &Fleet, allow: Ipv4Addr) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("k");
    let mut args: Vec<String> = vec![
        "-A".into(),
        format!("tcp/{PORT}"),
        "-a".into(),
        allow.to_string(),
        "-D".into(),
        fleet.member_ip(0).to_string(),
        "--no-rc-file".into(),
        "-T".into(),
        "-B".into(),
        file.display().to_string(),
    ];
    args.extend(fleet.keys.client_key_args().unwrap());
    let out = SpaClient::postern().run(&fleet.lan.hosts[0].0, dir.path(), &args);
    assert!(out.status.success(), "{}", describe(&out));
    std::fs::read_to_string(&file)
        .unwrap()
        .trim_end()
        .as_bytes()
        .to_vec()
}
