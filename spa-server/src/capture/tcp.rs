//! TCP capture for Tor-reachable knocking: reads the SPA packet from the stream
//! (fwknopd only completes the handshake and sniffs). Bounded in time, bytes and
//! connections; never writes a byte back.
//!
//! Connections are admitted by a [`Gate`] that shares the slots fairly between
//! sources (an IPv4 address, or an IPv6 /64): each source has a share of the slots
//! and a connection rate (token bucket), and when every slot is taken a newcomer
//! evicts the oldest connection of the source holding the most, so a handful of
//! addresses holding idle connections cannot keep everyone else out. An idle
//! connection is dropped after a short first-byte timeout. A refused or evicted
//! connection is closed without a byte written, like every other.

use super::{offer, Intake};
use crate::pipeline::{Pipeline, Received};
use spa_core::Clock;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// This capture's name in packets, logs and metrics.
const CAPTURE: &str = super::names::TCP;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// From accept to the first byte: an idle connection is dropped after this.
    pub first_byte_timeout: Duration,
    /// From accept to the end of the read, whatever trickles in (slowloris bound).
    pub read_timeout: Duration,
    pub max_bytes: usize,
    pub slots: SlotLimits,
    pub intake: Intake,
}

/// How the connection slots are shared; see `CaptureConfig::Tcp` for the defaults
/// and why.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlotLimits {
    pub max_connections: usize,
    /// Slots one source may hold at once.
    pub max_per_source: usize,
    /// New connections per second one source may open, sustained…
    pub rate_per_source: u32,
    /// …and back to back.
    pub burst_per_source: u32,
}

/// Sources whose token bucket is remembered at once (a bucket is ~40 bytes):
/// beyond this, refilled buckets are forgotten, and while none is, connections
/// from sources not yet tracked are refused.
const MAX_TRACKED_SOURCES: usize = 65_536;
/// At most one warning line per this period while connections are refused.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Who a connection is counted against: an IPv4 address (IPv4-mapped IPv6
/// included) or an IPv6 /64, the smallest network one host is usually given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    V4(Ipv4Addr),
    /// The upper 64 bits of the address.
    V6Net(u64),
}

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match crate::config::access::canonical(ip) {
            IpAddr::V4(v4) => Source::V4(v4),
            IpAddr::V6(v6) => Source::V6Net((u128::from(v6) >> 64) as u64),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::V4(v4) => write!(f, "{v4}"),
            Source::V6Net(net) => {
                let prefix = std::net::Ipv6Addr::from(u128::from(*net) << 64);
                write!(f, "{prefix}/64")
            }
        }
    }
}

/// Why a connection was closed at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The source opened connections faster than its rate.
    Rate,
    /// The source already holds its share of the slots.
    Share,
    /// Every slot is taken and the source holds about as many as the biggest.
    Full,
    /// Too many sources are being rate-tracked to remember one more.
    Untracked,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Rate => "over its connection rate",
            Refusal::Share => "holds its share of the slots",
            Refusal::Full => "all slots taken",
            Refusal::Untracked => "too many sources tracked",
        })
    }
}

/// Refusals (and other drops) since the last warning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    rate: u64,
    share: u64,
    full: u64,
    untracked: u64,
    evicted: u64,
    idle: u64,
}

impl Counts {
    fn is_empty(&self) -> bool {
        *self == Counts::default()
    }
}

/// One open connection of a source.
struct Held {
    id: u64,
    evict: CancellationToken,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The admission state of one TCP capture. Pure bookkeeping: time is passed in.
pub struct Gate {
    limits: SlotLimits,
    max_tracked: usize,
    open: usize,
    /// Open connections per source, oldest first; no empty entries.
    held: HashMap<Source, VecDeque<Held>>,
    buckets: HashMap<Source, Bucket>,
    next_id: u64,
    counts: Counts,
    last_warning: Option<Instant>,
}

/// A slot given to a connection: the connection ends when `evicted` fires.
pub struct Ticket {
    pub id: u64,
    pub evicted: CancellationToken,
    /// The source whose oldest connection was closed to make room, if any.
    pub displaced: Option<Source>,
}

impl Gate {
    pub fn new(limits: SlotLimits) -> Gate {
        Gate::with_tracking(limits, MAX_TRACKED_SOURCES)
    }

    fn with_tracking(limits: SlotLimits, max_tracked: usize) -> Gate {
        Gate {
            limits,
            max_tracked,
            open: 0,
            held: HashMap::new(),
            buckets: HashMap::new(),
            next_id: 0,
            counts: Counts::default(),
            last_warning: None,
        }
    }

    /// Admit a new connection from `source`, or say why not.
    pub fn admit(&mut self, source: Source, now: Instant) -> Result<Ticket, Refusal> {
        let result = self.try_admit(source, now);
        match result {
            Err(Refusal::Rate) => self.counts.rate += 1,
            Err(Refusal::Share) => self.counts.share += 1,
            Err(Refusal::Full) => self.counts.full += 1,
            Err(Refusal::Untracked) => self.counts.untracked += 1,
            Ok(Ticket {
                displaced: Some(_), ..
            }) => self.counts.evicted += 1,
            Ok(_) => {}
        }
        result
    }

    fn try_admit(&mut self, source: Source, now: Instant) -> Result<Ticket, Refusal> {
        // Every attempt costs a token, refused ones too: the rate bounds the work
        // (and the evictions) one source can cause.
        self.take_token(source, now)?;
        let mine = self.held.get(&source).map_or(0, VecDeque::len);
        if mine >= self.limits.max_per_source {
            return Err(Refusal::Share);
        }
        let mut displaced = None;
        if self.open >= self.limits.max_connections {
            let victim = self.victim_for(mine).ok_or(Refusal::Full)?;
            self.evict_oldest(victim);
            displaced = Some(victim);
        }
        let id = self.next_id;
        self.next_id += 1;
        let evicted = CancellationToken::new();
        self.held.entry(source).or_default().push_back(Held {
            id,
            evict: evicted.clone(),
        });
        self.open += 1;
        Ok(Ticket {
            id,
            evicted,
            displaced,
        })
    }

    /// The source to take a slot from for a newcomer whose source holds `mine`:
    /// the one holding the most (ties: the one with the oldest connection). A
    /// source not yet holding any always gets one; otherwise only if the move
    /// leaves the victim at least as many, so equal sources do not churn.
    fn victim_for(&self, mine: usize) -> Option<Source> {
        let (source, conns) = self
            .held
            .iter()
            .max_by_key(|(_, c)| (c.len(), std::cmp::Reverse(c.front().map_or(0, |h| h.id))))?;
        let theirs = conns.len();
        (theirs >= 1 && (mine == 0 || theirs >= mine + 2)).then_some(*source)
    }

    fn evict_oldest(&mut self, source: Source) {
        if let Some(conns) = self.held.get_mut(&source) {
            if let Some(oldest) = conns.pop_front() {
                oldest.evict.cancel();
                self.open -= 1;
            }
            if conns.is_empty() {
                self.held.remove(&source);
            }
        }
    }

    /// A connection ended (a no-op if it was evicted).
    pub fn release(&mut self, source: Source, id: u64) {
        let Some(conns) = self.held.get_mut(&source) else {
            return;
        };
        if let Some(i) = conns.iter().position(|h| h.id == id) {
            conns.remove(i);
            self.open -= 1;
        }
        if conns.is_empty() {
            self.held.remove(&source);
        }
    }

    fn take_token(&mut self, source: Source, now: Instant) -> Result<(), Refusal> {
        let (rate, burst) = (
            f64::from(self.limits.rate_per_source),
            f64::from(self.limits.burst_per_source),
        );
        if !self.buckets.contains_key(&source) && self.buckets.len() >= self.max_tracked {
            // Forget buckets that have refilled: they say nothing a new one would not.
            self.buckets
                .retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
            if self.buckets.len() >= self.max_tracked {
                return Err(Refusal::Untracked);
            }
        }
        let bucket = self.buckets.entry(source).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            return Err(Refusal::Rate);
        }
        bucket.tokens -= 1.0;
        Ok(())
    }

    /// A connection was dropped for sending nothing before the first-byte timeout.
    pub fn note_idle(&mut self) {
        self.counts.idle += 1;
    }

    /// The warning line to log now, if anything was refused or dropped and the
    /// last one is at least [`WARN_EVERY`] old; the counts start again after it.
    pub fn warning(&mut self, now: Instant) -> Option<String> {
        if self.counts.is_empty()
            || self
                .last_warning
                .is_some_and(|t| now.duration_since(t) < WARN_EVERY)
        {
            return None;
        }
        let c = std::mem::take(&mut self.counts);
        let since = match self.last_warning {
            Some(t) => format!("in the last {} s", now.duration_since(t).as_secs()),
            None => "so far".into(),
        };
        self.last_warning = Some(now);
        Some(format!(
            "TCP capture under pressure {since}: refused {} connections ({} over a source's \
             rate, {} over a source's share, {} with all slots taken, {} from untracked \
             sources), evicted {} for newcomers, dropped {} idle; {} of {} slots held by {} sources",
            c.rate + c.share + c.full + c.untracked,
            c.rate,
            c.share,
            c.full,
            c.untracked,
            c.evicted,
            c.idle,
            self.open,
            self.limits.max_connections,
            self.held.len(),
        ))
    }
}

/// The gate shared by the accept loop and the connection tasks.
#[derive(Clone)]
struct Slots(Arc<Mutex<Gate>>);

/// Gives the slot back when the connection task ends.
struct SlotGuard {
    slots: Slots,
    source: Source,
    id: u64,
}

impl Slots {
    fn with<T>(&self, f: impl FnOnce(&mut Gate) -> T) -> T {
        // The gate's state stays consistent even if a holder panicked.
        let mut gate = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut gate)
    }

    /// Log the warning line when one is due (outside the lock).
    fn warn_if_due(&self) {
        if let Some(line) = self.with(|g| g.warning(Instant::now())) {
            tracing::warn!("{line}");
        }
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.slots.with(|g| g.release(self.source, self.id));
    }
}

/// The TCP capture, listening.
pub struct TcpCapture {
    listener: TcpListener,
    limits: Limits,
    clock: Arc<dyn Clock>,
}

impl TcpCapture {
    /// Bind and listen on `listen` (call inside the runtime).
    pub fn open(
        listen: std::net::SocketAddr,
        limits: Limits,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<TcpCapture> {
        let socket = super::bind_socket(listen, socket2::Type::STREAM, "TCP capture")?;
        socket
            .listen(1024)
            .map_err(|e| anyhow::anyhow!("TCP capture cannot listen on {listen}: {e}"))?;
        Ok(TcpCapture {
            listener: TcpListener::from_std(socket.into())?,
            limits,
            clock,
        })
    }
}

impl super::Capture for TcpCapture {
    fn name(&self) -> &'static str {
        CAPTURE
    }

    fn start(
        self: Box<Self>,
        pipeline: Pipeline,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let TcpCapture {
            listener,
            limits,
            clock,
        } = *self;
        tokio::spawn(run(listener, limits, clock, pipeline, shutdown))
    }
}

async fn run(
    listener: TcpListener,
    limits: Limits,
    clock: Arc<dyn Clock>,
    pipeline: Pipeline,
    shutdown: CancellationToken,
) {
    let slots = Slots(Arc::new(Mutex::new(Gate::new(limits.slots))));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (mut stream, peer) = match accepted {
            Ok((stream, peer)) => (stream, super::canonical_peer(peer)),
            Err(e) => {
                tracing::warn!("TCP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let source = Source::of(peer.ip());
        let ticket = match slots.with(|g| g.admit(source, Instant::now())) {
            Ok(t) => t,
            Err(why) => {
                // Dropping the stream closes it: no byte is ever written.
                tracing::debug!("TCP capture: refused connection from {peer}: {why}");
                slots.warn_if_due();
                continue;
            }
        };
        if let Some(victim) = ticket.displaced {
            tracing::debug!(
                "TCP capture: all slots taken; closed the oldest connection of {victim} for {peer}"
            );
            slots.warn_if_due();
        }
        let guard = SlotGuard {
            slots: slots.clone(),
            source,
            id: ticket.id,
        };
        let destination = stream.local_addr().ok().map(|a| a.ip());
        let mut pipeline = pipeline.clone();
        let clock = clock.clone();
        tokio::spawn(async move {
            let read = tokio::select! {
                r = read_packet(&mut stream, &limits) => r,
                _ = ticket.evicted.cancelled() => Read::Nothing,
            };
            drop(stream);
            let bytes = match read {
                Read::Data(bytes) => bytes,
                Read::Idle => {
                    tracing::debug!("TCP capture: {peer} sent nothing in time; closed");
                    guard.slots.with(Gate::note_idle);
                    guard.slots.warn_if_due();
                    return;
                }
                Read::Nothing => return,
            };
            drop(guard);
            super::count_packet(CAPTURE);
            if let Some(carried) = limits.intake.spa_packet(&bytes, peer) {
                let received = Received {
                    bytes: &carried.packet,
                    peer,
                    forwarded_for: carried.forwarded_for,
                    destination,
                    received_at: clock.now(),
                    capture: CAPTURE,
                };
                offer(&mut pipeline, received).await;
            }
        });
    }
}

/// What one connection delivered.
#[derive(Debug, PartialEq, Eq)]
enum Read {
    /// The bytes read (trailing whitespace trimmed), not empty.
    Data(Vec<u8>),
    /// Not one byte before the first-byte timeout.
    Idle,
    /// EOF or an error before any non-blank byte, or the connection was evicted.
    Nothing,
}

/// Read until EOF, `max_bytes`, or a timeout: the first byte must come within
/// `first_byte_timeout` of accept, the rest within `read_timeout`; what arrived by
/// then is the packet.
async fn read_packet<S: AsyncRead + Unpin>(stream: &mut S, limits: &Limits) -> Read {
    let start = Instant::now();
    let first_byte_by = start + limits.first_byte_timeout.min(limits.read_timeout);
    let all_by = start + limits.read_timeout;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    while buf.len() < limits.max_bytes {
        let deadline = if buf.is_empty() {
            first_byte_by
        } else {
            all_by
        };
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) if buf.is_empty() => return Read::Idle,
            Err(_) | Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n.min(limits.max_bytes - buf.len())]),
        }
    }
    // fwknop's packets are text (a newline may follow); a native one is
    // binary, and its last byte may be anything.
    if !spa_native::looks_native(&buf) {
        while buf.last().is_some_and(|b| b.is_ascii_whitespace()) {
            buf.pop();
        }
    }
    if buf.is_empty() {
        Read::Nothing
    } else {
        Read::Data(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const LIMITS: SlotLimits = SlotLimits {
        max_connections: 64,
        max_per_source: 8,
        rate_per_source: 4,
        burst_per_source: 16,
    };

    fn v4(last: u8) -> Source {
        Source::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_slash_64s() {
        let s = |a: &str| Source::of(a.parse().unwrap());
        assert_eq!(s("2001:db8:1:2::1"), s("2001:db8:1:2:ffff::9"), "one /64");
        assert_ne!(s("2001:db8:1:2::1"), s("2001:db8:1:3::1"), "another /64");
        assert_eq!(s("::ffff:192.0.2.7"), s("192.0.2.7"), "IPv4-mapped is IPv4");
        assert_ne!(s("192.0.2.7"), s("192.0.2.8"));
        assert_eq!(s("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        assert_eq!(s("::ffff:192.0.2.7").to_string(), "192.0.2.7");
    }

    #[test]
    fn one_source_cannot_take_more_than_its_share() {
        let mut gate = Gate::new(LIMITS);
        let now = Instant::now();
        let held: Vec<_> = (0..8).map(|_| gate.admit(v4(1), now).unwrap()).collect();
        assert_eq!(gate.admit(v4(1), now).err(), Some(Refusal::Share));
        assert!(gate.admit(v4(2), now).is_ok(), "others still get in");
        for t in &held {
            gate.release(v4(1), t.id);
        }
        assert!(
            gate.admit(v4(1), now).is_ok(),
            "slots come back when connections end"
        );
        assert_eq!(gate.held.len(), 2, "no entry outlives its connections");
    }

    /// The attack: 8 addresses × 8 idle connections fill all 64 slots.
    #[test]
    fn eight_sources_times_eight_cannot_starve_a_ninth() {
        let mut gate = Gate::new(LIMITS);
        let now = Instant::now();
        let mut tickets = HashMap::new();
        for a in 1..=8 {
            for _ in 0..8 {
                let t = gate.admit(v4(a), now).unwrap();
                assert!(t.displaced.is_none());
                tickets.entry(a).or_insert_with(Vec::new).push(t);
            }
        }
        assert_eq!(gate.open, 64);
        // The first connection of all was 192.0.2.1's: it is the one to go.
        let knock = gate.admit(v4(9), now).expect("the newcomer gets a slot");
        assert_eq!(knock.displaced, Some(v4(1)));
        assert!(
            tickets[&1][0].evicted.is_cancelled(),
            "the oldest is closed"
        );
        assert!(tickets[&1][1..].iter().all(|t| !t.evicted.is_cancelled()));
        assert_eq!(gate.open, 64);
        // The evicted source coming back does not take the newcomer's slot, nor
        // another attacker's: it holds about as many as anyone.
        assert_eq!(gate.admit(v4(1), now).err(), Some(Refusal::Full));
        assert!(!knock.evicted.is_cancelled());
        // A second newcomer takes from the biggest holders, never from the knock.
        let other = gate.admit(v4(10), now).unwrap();
        assert_ne!(other.displaced, Some(v4(9)));
        assert!(!knock.evicted.is_cancelled());
        // Releasing an evicted connection later is harmless.
        gate.release(v4(1), tickets[&1][0].id);
        assert_eq!(gate.open, 64);
    }

    #[test]
    fn full_of_single_connections_a_newcomer_takes_the_oldest() {
        let limits = SlotLimits {
            max_connections: 4,
            ..LIMITS
        };
        let mut gate = Gate::new(limits);
        let now = Instant::now();
        let first = gate.admit(v4(1), now).unwrap();
        for a in 2..=4 {
            gate.admit(v4(a), now).unwrap();
        }
        let t = gate.admit(v4(5), now).unwrap();
        assert_eq!(t.displaced, Some(v4(1)));
        assert!(first.evicted.is_cancelled());
    }

    #[test]
    fn a_source_is_rate_limited_and_refills() {
        let mut gate = Gate::new(LIMITS);
        let t0 = Instant::now();
        for _ in 0..16 {
            let t = gate.admit(v4(1), t0).unwrap();
            gate.release(v4(1), t.id);
        }
        assert_eq!(gate.admit(v4(1), t0).err(), Some(Refusal::Rate));
        assert!(gate.admit(v4(2), t0).is_ok(), "another source has its own");
        // 4 per second: one more after 250 ms, not two.
        let t1 = t0 + Duration::from_millis(250);
        let t = gate.admit(v4(1), t1).unwrap();
        gate.release(v4(1), t.id);
        assert_eq!(gate.admit(v4(1), t1).err(), Some(Refusal::Rate));
        // A full bucket again after 4 s, and never more than the burst.
        let t2 = t1 + Duration::from_secs(60);
        let ok = (0..20).filter(|_| gate.admit(v4(1), t2).is_ok()).count();
        assert_eq!(ok, 8, "16 tokens, but the share (8) caps open connections");
    }

    #[test]
    fn the_rate_table_is_bounded() {
        let mut gate = Gate::with_tracking(LIMITS, 4);
        let t0 = Instant::now();
        for a in 1..=4 {
            let t = gate.admit(v4(a), t0).unwrap();
            gate.release(v4(a), t.id);
        }
        assert_eq!(gate.admit(v4(5), t0).err(), Some(Refusal::Untracked));
        // Once their buckets have refilled, the old sources are forgotten.
        let t1 = t0 + Duration::from_secs(1);
        assert!(gate.admit(v4(5), t1).is_ok());
        assert_eq!(gate.buckets.len(), 1);
    }

    #[test]
    fn warnings_are_rate_limited_and_carry_counts() {
        let mut gate = Gate::new(SlotLimits {
            max_per_source: 1,
            ..LIMITS
        });
        let t0 = Instant::now();
        assert_eq!(gate.warning(t0), None, "nothing to say");
        let _held = gate.admit(v4(1), t0).unwrap();
        for _ in 0..3 {
            assert_eq!(gate.admit(v4(1), t0).err(), Some(Refusal::Share));
        }
        let line = gate.warning(t0).expect("a first warning at once");
        assert!(line.contains("refused 3 connections"), "{line}");
        assert!(line.contains("3 over a source's share"), "{line}");
        assert_eq!(gate.admit(v4(1), t0).err(), Some(Refusal::Share));
        assert_eq!(gate.warning(t0 + Duration::from_secs(9)), None, "too soon");
        let line = gate.warning(t0 + Duration::from_secs(10)).unwrap();
        assert!(line.contains("refused 1 connections"), "{line}");
        assert!(line.contains("in the last 10 s"), "{line}");
    }

    fn read_limits() -> Limits {
        Limits {
            first_byte_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(3),
            max_bytes: 1600,
            slots: LIMITS,
            intake: Intake::default(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_dropped_at_the_first_byte_timeout() {
        let (_client, mut server) = tokio::io::duplex(4096);
        let t0 = Instant::now();
        assert_eq!(read_packet(&mut server, &read_limits()).await, Read::Idle);
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slowloris_is_cut_at_the_read_timeout() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            // One byte at 0.5 s, 1.5 s, 2.5 s, …
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if client.write_all(b"A").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        let t0 = Instant::now();
        let read = read_packet(&mut server, &read_limits()).await;
        assert_eq!(t0.elapsed(), Duration::from_secs(3));
        assert_eq!(read, Read::Data(b"AAA".to_vec()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_knock_is_read_to_eof() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(b"knock\n").await.unwrap();
        drop(client);
        let read = read_packet(&mut server, &read_limits()).await;
        assert_eq!(read, Read::Data(b"knock".to_vec()));
        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        assert_eq!(
            read_packet(&mut server, &read_limits()).await,
            Read::Nothing
        );
    }

    /// A native packet is binary: a last byte that looks like whitespace is
    /// part of it (its mac1), not a line end.
    #[tokio::test(start_paused = true)]
    async fn a_native_packet_keeps_its_last_bytes() {
        let (min, _) = spa_native::Suite::Classic.length_range();
        let mut packet = vec![spa_native::CLASSIC_MAGIC; min];
        packet[min - 2..].copy_from_slice(b" \n");
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(&packet).await.unwrap();
        drop(client);
        let read = read_packet(&mut server, &read_limits()).await;
        assert_eq!(read, Read::Data(packet));
    }
}
