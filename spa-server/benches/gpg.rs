//! What GPG knocks cost posternd. Prints, asserts nothing:
//!
//! 1. one decrypt + verify with gpgme (one context, one thread), by server key size;
//! 2. the worker pool's throughput with distinct packets;
//! 3. the whole server (UDP capture → pool → replay → policy → a recording
//!    firewall): knocks per second offered at a steady rate, and how many were
//!    granted.
//!
//! `cargo bench -p spa-server --bench gpg` (needs gpg; makes throwaway keyrings).

use spa_core::firewall::MemoryFirewall;
use spa_core::gpg::{self, OpenPgp};
use spa_core::{DigestType, MessageType, SpaMessage};
use spa_gpg::keyring::GpgHome;
use spa_gpg::{GpgOptions, Gpgme};
use spa_server::config::{AccessStanza, AddrList, CaptureConfig, ReplayConfig, ServerConfig};
use spa_server::gpg::{default_workers, EngineKey, GpgPool};
use std::net::UdpSocket;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn msg(i: u64) -> SpaMessage {
    SpaMessage {
        rand_val: format!("{:016}", 1_000_000_000_000_000 + i),
        username: "bench".into(),
        timestamp: now(),
        version: "3.0.0".into(),
        msg_type: MessageType::Access,
        message: format!("127.0.0.1,tcp/{}", 10_000 + (i % 50_000)),
        nat_access: None,
        server_auth: None,
        client_timeout: None,
    }
}

struct Setup {
    client: GpgHome,
    server: GpgHome,
    client_id: String,
}

fn setup(server_bits: u32) -> Setup {
    let client = GpgHome::new("bc").unwrap();
    let server = GpgHome::new("bs").unwrap();
    let c = client.gen_key("client", None, 2048).unwrap();
    server.gen_key("server", None, server_bits).unwrap();
    client.import_trusted(&server, "server").unwrap();
    server.import_trusted(&client, "client").unwrap();
    Setup {
        client,
        server,
        client_id: c.short_id,
    }
}

fn engine(home: &GpgHome) -> Gpgme {
    Gpgme::new(&GpgOptions {
        home_dir: Some(home.path.clone()),
        ..Default::default()
    })
    .unwrap()
}

/// `n` distinct signed packets (wire form, no HMAC).
fn packets(s: &Setup, n: u64) -> Vec<String> {
    let mut e = engine(&s.client);
    (0..n)
        .map(|i| {
            gpg::seal(
                &msg(i),
                DigestType::Sha256,
                &mut e,
                "server",
                Some(&s.client_id),
                None,
            )
            .unwrap()
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn single_decrypt(s: &Setup, bits: u32, n: u64) {
    let wires = packets(s, n);
    let mut server = engine(&s.server);
    let mut times = Vec::new();
    for w in &wires {
        let data = gpg::openpgp_data(w).unwrap();
        let t = Instant::now();
        let d = server.decrypt_and_verify(&data).unwrap();
        times.push(t.elapsed());
        assert!(d.signatures[0].valid);
    }
    times.sort();
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    println!(
        "decrypt+verify, server RSA-{bits}, client RSA-2048 signer, {} packets of ~{} chars: mean {:.1} ms, p50 {:.1} ms, p95 {:.1} ms",
        n,
        wires[0].len(),
        mean.as_secs_f64() * 1e3,
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.95).as_secs_f64() * 1e3
    );
}

async fn pool_throughput(s: &Setup, n: u64) {
    let wires = packets(s, n);
    let pool = GpgPool::start(default_workers(), wires.len()).unwrap();
    let key = EngineKey {
        home_dir: Some(s.server.path.clone()),
        exe: None,
    };
    // Warm the contexts (and gpg-agent) first.
    let warm = gpg::openpgp_data(&wires[0]).unwrap();
    for _ in 0..pool.workers() {
        pool.decrypt(warm.clone(), key.clone(), None, true)
            .await
            .unwrap();
    }
    let t = Instant::now();
    let jobs: Vec<_> = wires
        .iter()
        .map(|w| {
            let pool = pool.clone();
            let key = key.clone();
            let data = gpg::openpgp_data(w).unwrap();
            tokio::spawn(async move { pool.decrypt(data, key, None, true).await })
        })
        .collect();
    let mut ok = 0;
    for j in jobs {
        ok += usize::from(j.await.unwrap().is_ok());
    }
    let el = t.elapsed();
    println!(
        "pool of {} workers: {ok}/{n} packets in {:.2} s = {:.0} decryptions/s",
        pool.workers(),
        el.as_secs_f64(),
        ok as f64 / el.as_secs_f64()
    );
}

/// Offer `rate` knocks/s for `secs` seconds; return how many were granted.
async fn server_at_rate(s: &Setup, wires: &[String], rate: u32, secs: u32) -> (usize, usize) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp = sock.local_addr().unwrap();
    drop(sock);
    let mut stanza = AccessStanza::new(AddrList::Any);
    stanza.gpg_home_dir = Some(s.server.path.clone());
    stanza.gpg_allow_no_pw = true;
    stanza.gpg_remote_id = vec![s.client_id.clone()];
    let cfg = ServerConfig {
        capture: vec![CaptureConfig::Udp { listen: udp }],
        replay: ReplayConfig::Memory,
        access: vec![stanza],
        ..ServerConfig::default()
    };
    let granted = MemoryFirewall::new(true);
    let running = spa_server::daemon::start_with_backends(cfg, vec![Box::new(granted.clone())])
        .await
        .unwrap();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let total = (rate * secs) as usize;
    let start = Instant::now();
    for (i, w) in wires.iter().take(total).enumerate() {
        let due = start + Duration::from_secs_f64(i as f64 / f64::from(rate));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        sender.send_to(w.as_bytes(), udp).unwrap();
    }
    // Let the queue drain.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = usize::MAX;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let n = granted.granted().len();
        if n == last || n >= total {
            break;
        }
        last = n;
    }
    running.stop().await;
    (total.min(wires.len()), granted.granted().len())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let gpg = std::process::Command::new("gpg")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    println!(
        "GPG knock costs ({gpg}, {} CPUs)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for bits in [2048, 3072] {
        let s = setup(bits);
        single_decrypt(&s, bits, 40);
        if bits == 2048 {
            pool_throughput(&s, 120).await;
            let wires = packets(&s, 3 * 300);
            for rate in [50u32, 100, 150, 200, 250, 300] {
                let (sent, ok) = server_at_rate(&s, &wires, rate, 3).await;
                println!("posternd, {rate} GPG knocks/s offered for 3 s: {ok}/{sent} granted");
                if ok < sent {
                    break;
                }
            }
        }
    }
}
