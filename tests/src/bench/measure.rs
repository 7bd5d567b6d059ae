//! The measurements. Each takes a fresh [`Env`] and returns plain numbers.

use super::env::{count_grants, spa_dst, svc_dst, Env, Keys, Kind, NFT_TABLE};
use super::net::{connect_until, poll_out, try_connect, Attempt, Udp};
use super::nlcount::SetCounter;
use super::sys::{cpu_time, rss_kib, run_in, spawn_in, NetCounters, Rng};
use postern_e2e::Pair;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- 1. latency

#[derive(Debug, Default)]
pub struct Latency {
    /// Send → first successful connect, for knocks that opened.
    pub samples: Vec<Duration>,
    /// Knocks that did not open within the deadline.
    pub failed: usize,
    /// Sources that were already open before their knock (should be 0).
    pub open_before: usize,
    /// Median time of one successful connect to the already open port: the
    /// probe's own share of every sample.
    pub probe_floor: Option<Duration>,
}

/// `n` knocks, one at a time, each from a source that never knocked before, each
/// followed by fresh non-blocking connects (`attempt` long each) until one succeeds.
pub fn latency(env: &Env, n: usize, attempt: Duration, give_up: Duration) -> Latency {
    let keys = env.keys.clone();
    let srcs: Vec<Ipv4Addr> = env.srcs[1..=n].to_vec();
    let granted = env.srcs[0];
    run_in(env.client_ns(), move || {
        let mut rng = Rng::new();
        let mut out = Latency::default();
        let mut floor: Vec<Duration> = (0..21)
            .filter_map(|_| {
                let t = Instant::now();
                try_connect(granted, svc_dst(), Duration::from_millis(50)).map(|d| d - t)
            })
            .collect();
        floor.sort();
        out.probe_floor = percentile(&floor, 0.5);
        for src in srcs {
            if try_connect(src, svc_dst(), Duration::from_micros(300)).is_some() {
                out.open_before += 1;
                continue;
            }
            let sock = Udp::bind(src).expect("bind knock socket");
            let pkt = keys.knock(&mut rng, src);
            let t0 = Instant::now();
            sock.send_to(&pkt, spa_dst()).expect("send knock");
            match connect_until(src, svc_dst(), attempt, t0 + give_up) {
                Some(t) => out.samples.push(t - t0),
                None => out.failed += 1,
            }
            // A random pause, so knocks do not phase-lock with a server's poll loop.
            std::thread::sleep(Duration::from_millis(rng.range(10, 60)));
        }
        out.samples.sort();
        out
    })
}

pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)])
}

// ---------------------------------------------------------------- 2. burst

#[derive(Debug, Default)]
pub struct Burst {
    pub sent: usize,
    /// Time to hand all packets to the kernel.
    pub send_time: Duration,
    /// Grants that appeared (beyond the warm-up one).
    pub granted: usize,
    /// First send → the poll that saw the first grant.
    pub first_grant: Option<Duration>,
    /// First send → the poll that saw the last new grant.
    pub last_grant: Option<Duration>,
    /// First send → the poll that saw all `sent` grants.
    pub all_granted: Option<Duration>,
    pub polls: usize,
    /// Mean time one poll (netlink dump of the nft set / `iptables -S`) took.
    pub poll_cost: Duration,
    /// Grants counted with `nft list set` / `iptables -S` once polling stopped
    /// (a cross-check of the netlink count).
    pub listed_at_end: Option<usize>,
    /// The server namespace's counters over the burst (knocks lost to a full
    /// receive buffer show as rcvbuf drops).
    pub counters: NetCounters,
}

/// `n` knocks from `n` distinct sources sent back to back; grants counted by
/// polling the firewall from inside the server namespace.
pub fn burst(env: &Env, n: usize, stall: Duration, cap: Duration) -> Burst {
    let kind = env.server.kind;
    let before = NetCounters::read(env.server.pid, Pair::SERVER_IF);
    let keys = env.keys.clone();
    let srcs: Vec<Ipv4Addr> = env.srcs[1..=n].to_vec();
    // Sockets and packets first, so the send loop is only sendto.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let sender = spawn_in(env.client_ns(), "burst-send", move || {
        let mut rng = Rng::new();
        let prepared: Vec<(Udp, Vec<u8>)> = srcs
            .iter()
            .map(|&s| (Udp::bind(s).expect("bind"), keys.knock(&mut rng, s)))
            .collect();
        let _ = ready_tx.send(());
        let _ = go_rx.recv();
        let t0 = Instant::now();
        let mut sent = 0;
        for (sock, pkt) in &prepared {
            if sock.send_to(pkt, spa_dst()).is_ok() {
                sent += 1;
            }
        }
        (t0, t0.elapsed(), sent)
    });
    let _ = ready_rx.recv();
    let log_path = env.server.log.clone();
    let poller = spawn_in(env.server_ns(), "burst-poll", move || {
        // posternd with nftables: a netlink dump of the set. With iptables a
        // dump of 10,000 rules takes tens of milliseconds of the machine's
        // CPU, so its "granted:" log lines (written once the grant is in the
        // chain) are counted instead; the listing at the end cross-checks.
        let mut nl = if kind == Kind::PosterndIptables {
            None
        } else if kind.is_posternd() {
            SetCounter::new(NFT_TABLE, "grants4").ok()
        } else {
            None
        };
        let mut log = (kind == Kind::PosterndIptables).then(|| LogCounter::new(&log_path));
        let mut count_grants = |k: Kind| match (nl.as_mut(), log.as_mut()) {
            (Some(c), _) => c.count().ok(),
            (None, Some(l)) => l.count(),
            (None, None) => count_grants(k),
        };
        let base = count_grants(kind).unwrap_or(0);
        let _ = go_tx.send(());
        let start = Instant::now();
        let mut seen: Vec<(Instant, usize)> = Vec::new();
        let mut last = base;
        let mut last_change = start;
        let mut polls = 0usize;
        let mut poll_total = Duration::ZERO;
        loop {
            let t = Instant::now();
            let c = count_grants(kind).unwrap_or(last);
            let done = Instant::now();
            polls += 1;
            poll_total += done - t;
            if c != last {
                seen.push((done, c - base.min(c)));
                last = c;
                last_change = done;
            }
            if c - base.min(c) >= n || done - last_change > stall || done - start > cap {
                break;
            }
            // Wait as long as the poll took, so polling a long listing does
            // not take a CPU from the server on a small machine.
            std::thread::sleep(Duration::from_micros(200).max(done - t));
        }
        let listed = super::env::count_grants(kind).map(|c| c - base.min(c));
        (seen, polls, poll_total, listed)
    });
    let (t0, send_time, sent) = sender.join().expect("burst sender");
    let (seen, polls, poll_total, listed_at_end) = poller.join().expect("burst poller");
    let granted = seen.last().map(|s| s.1).unwrap_or(0);
    Burst {
        sent,
        send_time,
        granted,
        first_grant: seen.first().map(|s| s.0.saturating_duration_since(t0)),
        last_grant: seen.last().map(|s| s.0.saturating_duration_since(t0)),
        all_granted: seen
            .iter()
            .find(|s| s.1 >= n)
            .map(|s| s.0.saturating_duration_since(t0)),
        polls,
        poll_cost: poll_total / polls.max(1) as u32,
        listed_at_end,
        counters: NetCounters::read(env.server.pid, Pair::SERVER_IF).delta(&before),
    }
}

/// Counts the grants a posternd has logged (`granted: ` lines), reading only
/// what was appended since the last call.
struct LogCounter {
    file: Option<std::fs::File>,
    partial: Vec<u8>,
    grants: usize,
}

impl LogCounter {
    fn new(path: &std::path::Path) -> LogCounter {
        LogCounter {
            file: std::fs::File::open(path).ok(),
            partial: Vec::new(),
            grants: 0,
        }
    }

    fn count(&mut self) -> Option<usize> {
        use std::io::Read;
        let file = self.file.as_mut()?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf).ok()?;
        self.partial.extend_from_slice(&buf);
        let complete = self
            .partial
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        let text = String::from_utf8_lossy(&self.partial[..complete]);
        self.grants += text.lines().filter(|l| l.contains(" granted: ")).count();
        self.partial.drain(..complete);
        Some(self.grants)
    }
}

// ---------------------------------------------------------------- 3. garbage

const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_garbage(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| B64[(rng.next_u64() % 64) as usize])
        .collect()
}

/// Random payloads, 140..=1500 bytes: half from the base64 alphabet (they pass
/// a charset precheck and cost an HMAC), half random bytes.
pub fn garbage_pool(rng: &mut Rng, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let len = rng.range(140, 1500) as usize;
            if i % 2 == 0 {
                base64_garbage(rng, len)
            } else {
                (0..len).map(|_| rng.next_u64() as u8).collect()
            }
        })
        .collect()
}

/// What a flood sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GarbageKind {
    /// [`garbage_pool`]: random lengths and bytes; most never pass the
    /// server's length filter.
    Random,
    /// Base64 of exactly a real knock's length (same keys, same source): passes
    /// the length filter and the charset check, and costs an HMAC each.
    SameLength,
    /// One valid knock, sent again and again: passes the HMAC (native: mac1,
    /// then the Diffie-Hellman within the source's budget), and every copy after
    /// the first is a replay.
    Replay,
    /// Native only: knocks sealed by an unregistered client key to the right
    /// server key. They pass mac1 and each costs a Diffie-Hellman, as far as the
    /// source's budget for public-key work allows; then refused (unknown client).
    Forged,
}

impl GarbageKind {
    pub const ALL: [GarbageKind; 4] = [
        GarbageKind::Random,
        GarbageKind::SameLength,
        GarbageKind::Replay,
        GarbageKind::Forged,
    ];

    /// The goal for server CPU per packet of this kind: random
    /// garbage mostly dies in the kernel's length filter; the other kinds pass
    /// it and cost an HMAC (or mac1) each.
    pub fn cpu_goal(self) -> &'static str {
        match self {
            GarbageKind::Random => "≤ 0.5 µs",
            GarbageKind::SameLength | GarbageKind::Replay => "≤ 1.5 µs",
            GarbageKind::Forged => "",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GarbageKind::Random => "random",
            GarbageKind::SameLength => "same-length",
            GarbageKind::Replay => "replay",
            GarbageKind::Forged => "forged",
        }
    }

    /// How the table names it.
    pub fn label(self) -> &'static str {
        match self {
            GarbageKind::Random => "random garbage",
            GarbageKind::SameLength => "garbage of a knock's length",
            GarbageKind::Replay => "replays of one knock",
            GarbageKind::Forged => "native knocks of an unregistered client (past mac1)",
        }
    }

    pub fn parse(s: &str) -> Option<GarbageKind> {
        GarbageKind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Whether a server taking knocks in postern's own protocol (`native`) or
    /// fwknop's format has the stage this kind attacks.
    pub fn applies_to(self, native: bool) -> bool {
        self != GarbageKind::Forged || native
    }

    /// The packets a flood of this kind cycles through, from `src` (whose knock
    /// gives the real length, or is the one replayed).
    pub fn pool(self, rng: &mut Rng, keys: &Keys, src: Ipv4Addr) -> Vec<Vec<u8>> {
        match self {
            GarbageKind::Random => garbage_pool(rng, 4096),
            GarbageKind::SameLength => {
                let len = keys.knock(rng, src).len();
                match keys.native_magic() {
                    None => (0..4096).map(|_| base64_garbage(rng, len)).collect(),
                    // A native packet's first byte, then random bytes: refused at mac1.
                    Some(magic) => (0..4096)
                        .map(|_| {
                            let mut p: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
                            p[0] = magic;
                            p
                        })
                        .collect(),
                }
            }
            // Copies, so the sender still hands the kernel 256 at a time.
            GarbageKind::Replay => vec![keys.knock(rng, src); 256],
            // Distinct packets (each seal is fresh), so no cache could help the server.
            GarbageKind::Forged => (0..256)
                .map(|_| keys.forged(src).expect("forged knocks need native keys"))
                .collect(),
        }
    }
}

/// Send garbage from `sock` until `n` packets are out, `stop` is set or
/// `max_time` has passed; `pps` = 0 sends as fast as possible, otherwise paced.
/// Returns (packets sent, time taken).
pub fn flood(
    sock: &Udp,
    pool: &[Vec<u8>],
    n: u64,
    pps: u64,
    max_time: Duration,
    stop: &AtomicBool,
) -> (u64, Duration) {
    let refs: Vec<&[u8]> = pool.iter().map(Vec::as_slice).collect();
    let t0 = Instant::now();
    let (mut sent, mut at) = (0u64, 0usize);
    while sent < n && !stop.load(Ordering::Relaxed) && t0.elapsed() < max_time {
        let due = if pps == 0 {
            n
        } else {
            ((t0.elapsed().as_secs_f64() * pps as f64) as u64).min(n)
        };
        if due > sent {
            let k = ((due - sent) as usize).min(256).min(refs.len() - at);
            sent += sock.send_many(&refs[at..at + k], spa_dst()) as u64;
            at = (at + k) % refs.len();
        } else {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    (sent, t0.elapsed())
}

#[derive(Debug, Default)]
pub struct Garbage {
    pub sent: u64,
    pub send_time: Duration,
    /// Deltas of the server namespace's counters over the whole run.
    pub counters: NetCounters,
    /// Packets the server process could have seen: UDP datagrams delivered to
    /// sockets (UDP modes) or packets received by the interface (pcap modes).
    pub received: u64,
    /// Knock sent right after the flood → port open.
    pub open_after: Option<Duration>,
    /// If that knock never opened: a second knock, sent once the first gave up.
    pub retry_open_after: Option<Option<Duration>>,
    pub cpu: Duration,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    /// Server still alive at the end.
    pub alive: bool,
}

impl Garbage {
    /// The server's CPU time per garbage packet sent: what the flood costs it,
    /// wherever the packets end (kernel filter, full buffer, or the process).
    pub fn cpu_per_sent(&self) -> Option<Duration> {
        (self.sent > 0).then(|| self.cpu / self.sent as u32)
    }

    /// The server's CPU time per packet it could have seen (`received`).
    pub fn cpu_per_received(&self) -> Option<Duration> {
        (self.received > 0).then(|| self.cpu / self.received as u32)
    }
}

pub fn garbage(env: &mut Env, what: GarbageKind, n: u64, pps: u64, give_up: Duration) -> Garbage {
    let kind = env.server.kind;
    let pid = env.server.pid;
    let keys = env.keys.clone();
    let (gsrc, ksrc, rsrc) = (env.srcs[1], env.srcs[2], env.srcs[3]);
    let before = NetCounters::read(pid, Pair::SERVER_IF);
    let cpu0 = cpu_time(pid).unwrap_or_default();
    let rss0 = rss_kib(pid).unwrap_or(0);
    let (sent, send_time, open_after, retry_open_after) = run_in(env.client_ns(), move || {
        let mut rng = Rng::new();
        let pool = what.pool(&mut rng, &keys, gsrc);
        let sock = Udp::bind(gsrc).expect("bind garbage socket");
        let ksock = Udp::bind(ksrc).expect("bind knock socket");
        let pkt = keys.knock(&mut rng, ksrc);
        let stop = AtomicBool::new(false);
        let (sent, send_time) = flood(&sock, &pool, n, pps, Duration::from_secs(60), &stop);
        let tk = Instant::now();
        ksock.send_to(&pkt, spa_dst()).expect("send knock");
        let open =
            connect_until(ksrc, svc_dst(), Duration::from_millis(1), tk + give_up).map(|t| t - tk);
        // The client gives up and knocks again (fresh packet, other source).
        let retry = open.is_none().then(|| {
            let rsock = Udp::bind(rsrc).expect("bind knock socket");
            let tr = Instant::now();
            rsock
                .send_to(&keys.knock(&mut rng, rsrc), spa_dst())
                .expect("send knock");
            connect_until(rsrc, svc_dst(), Duration::from_millis(1), tr + give_up).map(|t| t - tr)
        });
        (sent, send_time, open, retry)
    });
    settle(pid);
    let cpu1 = cpu_time(pid).unwrap_or_default();
    let rss1 = rss_kib(pid).unwrap_or(0);
    let counters = NetCounters::read(pid, Pair::SERVER_IF).delta(&before);
    let received = if kind.udp_socket() {
        counters.udp_in
    } else {
        counters.if_rx
    };
    Garbage {
        sent,
        send_time,
        counters,
        received,
        open_after,
        retry_open_after,
        cpu: cpu1.saturating_sub(cpu0),
        rss_before_kib: rss0,
        rss_after_kib: rss1,
        alive: env.server.is_running(),
    }
}

/// Let the server drain what it still has queued before reading its CPU time.
fn settle(pid: u32) {
    let mut last = cpu_time(pid).unwrap_or_default();
    let settle_until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < settle_until {
        std::thread::sleep(Duration::from_millis(250));
        let c = cpu_time(pid).unwrap_or_default();
        if c.saturating_sub(last) <= Duration::from_millis(10) {
            break;
        }
        last = c;
    }
}

// ---------------------------------------------------------------- 4. storm

#[derive(Debug, Default)]
pub struct Storm {
    pub target_pps: u64,
    pub achieved_pps: f64,
    pub garbage_sent: u64,
    pub knocks: usize,
    pub within_1s: usize,
    pub opened: usize,
    /// Latencies of the knocks that opened (sorted).
    pub samples: Vec<Duration>,
    pub counters: NetCounters,
    /// The server's CPU time over the storm (garbage and knocks).
    pub cpu: Duration,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
}

impl Storm {
    /// The server's CPU time per garbage packet sent (the knocks' share is
    /// counted in: a hundred knocks against hundreds of thousands of packets).
    pub fn cpu_per_sent(&self) -> Option<Duration> {
        (self.garbage_sent > 0).then(|| self.cpu / self.garbage_sent as u32)
    }
}

/// Garbage at `pps` (paced) for the whole run, while `knocks` valid knocks go out
/// every `interval`, each from a distinct source. One prober thread keeps a
/// connect attempt in flight for every knock not yet open (each attempt lives
/// `attempt`, then a fresh one replaces it) for up to `give_up`.
pub fn storm(
    env: &Env,
    what: GarbageKind,
    pps: u64,
    knocks: usize,
    interval: Duration,
    attempt: Duration,
    give_up: Duration,
) -> Storm {
    let lead = Duration::from_millis(500);
    let duration = lead + interval * knocks as u32 + give_up;
    let stop = Arc::new(AtomicBool::new(false));
    let gsrc = env.srcs[knocks + 1];
    let pid = env.server.pid;
    let before = NetCounters::read(pid, Pair::SERVER_IF);
    let cpu0 = cpu_time(pid).unwrap_or_default();
    let rss0 = rss_kib(pid).unwrap_or(0);
    let flooder = {
        let stop = stop.clone();
        let keys = env.keys.clone();
        spawn_in(env.client_ns(), "storm-flood", move || {
            let mut rng = Rng::new();
            let pool = what.pool(&mut rng, &keys, gsrc);
            let sock = Udp::bind(gsrc).expect("bind garbage socket");
            flood(&sock, &pool, u64::MAX, pps, duration, &stop)
        })
    };
    let keys = env.keys.clone();
    let srcs: Vec<Ipv4Addr> = env.srcs[1..=knocks].to_vec();
    let result = run_in(env.client_ns(), move || {
        struct Pending {
            src: Ipv4Addr,
            sent: Instant,
            attempt: Option<Attempt>,
        }
        let mut rng = Rng::new();
        std::thread::sleep(lead);
        let start = Instant::now();
        let mut next = 0usize;
        let mut pending: Vec<Pending> = Vec::new();
        let mut samples = Vec::new();
        loop {
            let now = Instant::now();
            if next < srcs.len() && now >= start + interval * next as u32 {
                let src = srcs[next];
                // Timestamps must be fresh: seal just before sending.
                let pkt = keys.knock(&mut rng, src);
                let sock = Udp::bind(src).expect("bind knock socket");
                let t = Instant::now();
                let _ = sock.send_to(&pkt, spa_dst());
                pending.push(Pending {
                    src,
                    sent: t,
                    attempt: None,
                });
                next += 1;
            }
            if next == srcs.len() && pending.is_empty() {
                break;
            }
            for p in pending.iter_mut().filter(|p| p.attempt.is_none()) {
                p.attempt = Attempt::start(p.src, svc_dst()).ok();
            }
            let mut fds: Vec<libc::pollfd> = pending
                .iter()
                .map(|p| libc::pollfd {
                    fd: p.attempt.as_ref().map(|a| a.fd).unwrap_or(-1),
                    events: libc::POLLOUT,
                    revents: 0,
                })
                .collect();
            poll_out(&mut fds, Duration::from_micros(500));
            let now = Instant::now();
            let mut keep = Vec::with_capacity(pending.len());
            for (mut p, fd) in pending.drain(..).zip(fds) {
                if fd.revents != 0 {
                    let a = p.attempt.take().expect("polled an attempt");
                    if a.connected() {
                        samples.push(now - p.sent);
                        a.reset();
                        continue;
                    }
                } else if p
                    .attempt
                    .as_ref()
                    .is_some_and(|a| now - a.started > attempt)
                {
                    p.attempt = None;
                }
                if now - p.sent > give_up {
                    continue; // never opened
                }
                keep.push(p);
            }
            pending = keep;
        }
        samples.sort();
        samples
    });
    stop.store(true, Ordering::Relaxed);
    let (gsent, elapsed) = flooder.join().expect("flood thread");
    settle(pid);
    let cpu = cpu_time(pid).unwrap_or_default().saturating_sub(cpu0);
    let rss1 = rss_kib(pid).unwrap_or(0);
    let counters = NetCounters::read(pid, Pair::SERVER_IF).delta(&before);
    Storm {
        target_pps: pps,
        achieved_pps: gsent as f64 / elapsed.as_secs_f64().max(1e-9),
        garbage_sent: gsent,
        knocks,
        within_1s: result
            .iter()
            .filter(|d| **d <= Duration::from_secs(1))
            .count(),
        opened: result.len(),
        samples: result,
        counters,
        cpu,
        rss_before_kib: rss0,
        rss_after_kib: rss1,
    }
}

// ---------------------------------------------------------------- per-packet CPU, in-process

/// What the first pipeline stages cost per garbage packet in this process (no
/// networking): the charset precheck alone, and precheck + HMAC-SHA256 verify,
/// for base64-alphabet garbage of several lengths, plus random bytes. The
/// criterion bench of spa-core covers short packets only.
pub fn micro() -> Vec<(String, Duration)> {
    use spa_core::packet::{precheck, verify_hmac, HmacKey, RIJNDAEL_PREFIX};
    use spa_core::DigestType;
    use std::hint::black_box;
    let mut rng = Rng::new();
    let key = postern_e2e::scenario::random_bytes(64);
    let hk = HmacKey {
        digest: DigestType::Sha256,
        key: &key,
    };
    let time = |f: &mut dyn FnMut()| {
        for _ in 0..2_000 {
            f();
        }
        let n = 50_000u32;
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        t.elapsed() / n
    };
    let mut out = Vec::new();
    for len in [200usize, 800, 1500] {
        let pkt = base64_garbage(&mut rng, len);
        out.push((
            format!("precheck, {len} B base64 garbage"),
            time(&mut || {
                let _ = black_box(precheck(black_box(&pkt)));
            }),
        ));
        out.push((
            format!("precheck + HMAC-SHA256 verify, {len} B base64 garbage"),
            time(&mut || {
                if let Ok(w) = precheck(black_box(&pkt)) {
                    let _ = black_box(verify_hmac(w, &hk, RIJNDAEL_PREFIX));
                }
            }),
        ));
    }
    let pool = garbage_pool(&mut rng, 4096);
    let mut i = 0;
    out.push((
        "precheck + HMAC, the garbage mix of the tests (avg)".into(),
        time(&mut || {
            i = (i + 1) % pool.len();
            if let Ok(w) = precheck(black_box(&pool[i])) {
                let _ = black_box(verify_hmac(w, &hk, RIJNDAEL_PREFIX));
            }
        }),
    ));
    out.extend(native_micro(&mut rng));
    out
}

/// What a native packet costs posternd's first stages in this process: the
/// mac1 check that refuses garbage, and opening a forgery that passed mac1
/// (sealed by an unregistered client: the Diffie-Hellman, and for the hybrid
/// suite the ML-KEM decapsulation, then refused). Fewer rounds: these are slow.
fn native_micro(rng: &mut Rng) -> Vec<(String, Duration)> {
    use std::hint::black_box;
    let src = Ipv4Addr::new(172, 16, 1, 1);
    let time = |f: &mut dyn FnMut()| {
        for _ in 0..200 {
            f();
        }
        let n = 2_000u32;
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        t.elapsed() / n
    };
    let mut out = Vec::new();
    for hybrid in [false, true] {
        let suite = if hybrid { "hybrid" } else { "classic" };
        let keys = Keys::generate(Kind::PosterndNative, hybrid);
        let Keys::Native(n) = &keys else {
            unreachable!("native keys")
        };
        let registry = spa_native::Registry::default();
        let garbage = GarbageKind::SameLength.pool(rng, &keys, src);
        let forged = keys.forged(src).expect("native keys forge");
        let mut i = 0;
        out.push((
            format!("native {suite}: mac1 check, garbage of a knock's length"),
            time(&mut || {
                i = (i + 1) % garbage.len();
                let _ = black_box(spa_native::mac1_matches(
                    black_box(&garbage[i]),
                    n.server.public(),
                ));
            }),
        ));
        out.push((
            format!("native {suite}: mac1 + open, a forgery past mac1 (unregistered client)"),
            time(&mut || {
                if spa_native::mac1_matches(black_box(&forged), n.server.public()) {
                    let _ = black_box(spa_native::open(&forged, &n.server, &registry));
                }
            }),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the help and README say of the native attackers: garbage of a
    /// knock's length has its first byte and is refused at mac1; a forgery
    /// passes mac1 and is refused only when opened; a knock opens.
    #[test]
    fn native_garbage_fails_mac1_and_forgeries_pass_it_but_do_not_open() {
        let src = Ipv4Addr::new(172, 16, 1, 1);
        let mut rng = Rng::new();
        for hybrid in [false, true] {
            let keys = Keys::generate(Kind::PosterndNative, hybrid);
            let Keys::Native(n) = &keys else {
                panic!("native keys")
            };
            let mut registry = spa_native::Registry::default();
            registry
                .insert(spa_native::ClientEntry {
                    name: "bench".into(),
                    key: n.client.public(),
                    totp: None,
                    path: "bench.pub".into(),
                })
                .unwrap();
            let knock = keys.knock(&mut rng, src);
            assert!(spa_native::open(&knock, &n.server, &registry).is_ok());
            let magic = keys.native_magic().unwrap();
            for g in GarbageKind::SameLength
                .pool(&mut rng, &keys, src)
                .iter()
                .take(64)
            {
                assert_eq!((g[0], g.len()), (magic, knock.len()));
                assert!(!spa_native::mac1_matches(g, n.server.public()));
            }
            for f in GarbageKind::Forged
                .pool(&mut rng, &keys, src)
                .iter()
                .take(4)
            {
                assert!(spa_native::mac1_matches(f, n.server.public()));
                assert!(spa_native::open(f, &n.server, &registry).is_err());
            }
        }
        assert!(!GarbageKind::Forged.applies_to(false));
    }
}
