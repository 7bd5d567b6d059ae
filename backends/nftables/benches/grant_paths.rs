//! Measures both grant paths inside a throw-away network namespace:
//! `cargo bench -p postern-backend-nftables --bench grant_paths` (as root).
//!
//! - single grant: one `grant()` of one opening, the latency a knock sees;
//! - burst: one `grant()` of 500 openings (one transaction), as grants/s;
//! - naive: 500 separate `grant()` calls, what a spawn-per-grant design costs.

use postern_backend_nftables::{ApplyWith, NftablesBackend, NftablesConfig};
use postern_e2e::{require_root, Netns};
use spa_core::firewall::{Firewall, Opening, Rule};
use spa_core::request::Proto;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

const SINGLE_ROUNDS: u32 = 300;
const BURST: u32 = 500;
const BURST_ROUNDS: u32 = 20;

fn opening(i: u32, secs: u32) -> Opening {
    let source = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
    Opening {
        rule: Rule::new(source, Proto::Tcp, 22),
        timeout_secs: secs,
        expires_at: 0,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// How the backend reaches the namespace: `nsenter` per `nft` run (what
/// `in_netns` does), or this thread joined it so `nft` runs directly.
#[derive(Clone, Copy, Debug)]
enum Via {
    Setns,
    Nsenter,
}

fn measure(ns: &Netns, apply_with: ApplyWith, via: Via) {
    let path = ns.path();
    std::thread::spawn(move || {
        let table = format!("pt_bench_{apply_with:?}_{via:?}").to_lowercase();
        let config = NftablesConfig {
            table,
            apply_with,
            protected: vec!["tcp/22".parse().unwrap()],
            ..Default::default()
        };
        let fw = NftablesBackend::new(config).unwrap();
        let fw = match via {
            Via::Nsenter => fw.in_netns(path),
            Via::Setns => {
                let f = std::fs::File::open(&path).unwrap();
                // SAFETY: setns on a valid fd; affects only this bench thread.
                assert_eq!(
                    unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) },
                    0
                );
                fw
            }
        };
        run(fw, apply_with, via);
    })
    .join()
    .unwrap();
}

fn run(mut fw: NftablesBackend, apply_with: ApplyWith, via: Via) {
    fw.init(0).unwrap();
    let mut next = 0u32;
    let mut fresh = |n: u32| {
        let v: Vec<Opening> = (next..next + n).map(|i| opening(i, 600)).collect();
        next += n;
        v
    };

    // Warm-up, so the first socket/page-cache costs are not counted.
    for _ in 0..10 {
        fw.grant(&fresh(1)).unwrap();
    }
    let mut single: Vec<Duration> = (0..SINGLE_ROUNDS)
        .map(|_| {
            let o = fresh(1);
            let t = Instant::now();
            fw.grant(&o).unwrap();
            t.elapsed()
        })
        .collect();
    single.sort();

    // Re-granting existing elements (refresh) costs the same transaction shape.
    let existing = fresh(1);
    fw.grant(&existing).unwrap();
    let mut refresh: Vec<Duration> = (0..50)
        .map(|_| {
            let t = Instant::now();
            fw.grant(&existing).unwrap();
            t.elapsed()
        })
        .collect();
    refresh.sort();

    let mut bursts: Vec<Duration> = (0..BURST_ROUNDS)
        .map(|_| {
            let o = fresh(BURST);
            let t = Instant::now();
            fw.grant(&o).unwrap();
            t.elapsed()
        })
        .collect();
    bursts.sort();
    let burst_p50 = percentile(&bursts, 0.5);

    let naive = fresh(BURST);
    let t = Instant::now();
    for o in &naive {
        fw.grant(std::slice::from_ref(o)).unwrap();
    }
    let naive_total = t.elapsed();

    let t = Instant::now();
    let listed = fw.list().unwrap().len();
    let list_took = t.elapsed();
    assert_eq!(listed as u32, next, "every grant is listed");

    println!(
        "| {:?} ({:?}) | {} | {} | {} | {} | {} ({:.0}/s) | {:.0}/s | {} |",
        apply_with,
        via,
        us(percentile(&single, 0.5)),
        us(percentile(&single, 0.9)),
        us(percentile(&single, 0.99)),
        us(percentile(&refresh, 0.5)),
        us(burst_p50),
        f64::from(BURST) / burst_p50.as_secs_f64(),
        f64::from(BURST) / naive_total.as_secs_f64(),
        us(list_took),
    );
    fw.flush().unwrap();
}

fn main() {
    // `cargo test --benches` runs this with --bench absent; keep that cheap.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if !require_root() {
        return;
    }
    let ns = Netns::new("nfbench");
    println!("grant() latency and throughput, {SINGLE_ROUNDS} single grants, burst of {BURST} x {BURST_ROUNDS} rounds");
    println!("| path | single p50 | single p90 | single p99 | refresh p50 | burst of {BURST}, p50 (grants/s) | {BURST} single calls | list() of all |");
    println!("|---|---|---|---|---|---|---|---|");
    measure(&ns, ApplyWith::Netlink, Via::Nsenter);
    measure(&ns, ApplyWith::Netlink, Via::Setns);
    measure(&ns, ApplyWith::Nft, Via::Nsenter);
    measure(&ns, ApplyWith::Nft, Via::Setns);
}
