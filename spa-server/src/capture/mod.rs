//! Captures: where packets come from. Each runs until the shutdown token fires
//! and offers every packet to the pipeline ([`offer`]): the screen runs right
//! there, and the capture waits only when the pipeline is full.

mod coalesce;
mod kernel_drops;
mod length_filter;
pub mod nfqueue;
pub mod pcap;
pub mod tcp;
pub mod udp;

/// The captures' names in packets, logs and metrics: each capture's, and
/// all of them for the metrics that keep a counter per capture.
pub mod names {
    pub const UDP: &str = "udp";
    pub const TCP: &str = "tcp";
    pub const PCAP: &str = "pcap";
    pub const NFQUEUE: &str = "nfqueue";
    pub const ALL: [&str; 4] = [UDP, TCP, PCAP, NFQUEUE];
}

use crate::config::{CaptureConfig, ServerSection};
use crate::pipeline::{Authenticated, Decision, Outcome, Pipeline, Received, Stage};
use spa_core::http;
use spa_core::Clock;
use std::borrow::Cow;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// An opened capture: its sockets are bound, its interfaces and queue open,
/// so starting it cannot fail. Packets' `received_at` is read from the clock
/// it was opened with.
pub trait Capture: Send {
    /// Its name in packets, logs and metrics.
    fn name(&self) -> &'static str;
    /// Run until `shutdown` fires; the handle ends when the capture stopped.
    fn start(
        self: Box<Self>,
        pipeline: Pipeline,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()>;
}

/// A large receive buffer: SO_RCVBUFFORCE (CAP_NET_ADMIN, which posternd has)
/// passes net.core.rmem_max; without the privilege, SO_RCVBUF as far as allowed.
#[cfg(target_os = "linux")]
pub(crate) fn force_recv_buffer(fd: std::os::fd::RawFd, size: usize) {
    if !set_recv_buffer(fd, libc::SO_RCVBUFFORCE, size) {
        set_recv_buffer(fd, libc::SO_RCVBUF, size);
    }
}

/// A large receive buffer, BSD: no SO_RCVBUFFORCE, and SO_RCVBUF above
/// kern.ipc.maxsockbuf fails (ENOBUFS) instead of being cut down, so halve
/// the size until the kernel takes it.
#[cfg(not(target_os = "linux"))]
pub(crate) fn force_recv_buffer(fd: std::os::fd::RawFd, size: usize) {
    let mut size = size;
    while size >= 64 << 10 && !set_recv_buffer(fd, libc::SO_RCVBUF, size) {
        size /= 2;
    }
}

/// setsockopt(SOL_SOCKET, `option`, `size`); whether the kernel took it.
fn set_recv_buffer(fd: std::os::fd::RawFd, option: libc::c_int, size: usize) -> bool {
    let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt with a pointer to a c_int of the stated size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

/// A socket for a capture bound to `listen`. An IPv6 address takes IPv4 too
/// (IPV6_V6ONLY off; IPv4 senders show as mapped addresses, which the captures
/// canonicalize). The default wildcard `[::]` falls back to `0.0.0.0` on a host
/// without IPv6 (`ipv6.disable=1`), saying so.
pub(crate) fn bind_socket(
    listen: std::net::SocketAddr,
    kind: socket2::Type,
    what: &str,
) -> anyhow::Result<socket2::Socket> {
    use socket2::{Domain, Socket};
    let socket = match Socket::new(Domain::for_address(listen), kind, None) {
        Err(e)
            if listen.ip() == std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
                && e.raw_os_error() == Some(libc::EAFNOSUPPORT) =>
        {
            let v4 = std::net::SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, listen.port()));
            tracing::info!("{what}: no IPv6 on this host, listening on {v4}");
            return bind_socket(v4, kind, what);
        }
        socket => socket.map_err(|e| anyhow::anyhow!("{what} cannot open a socket: {e}"))?,
    };
    if listen.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    if kind == socket2::Type::STREAM {
        socket.set_reuse_address(true)?;
    }
    socket.set_nonblocking(true)?;
    socket
        .bind(&listen.into())
        .map_err(|e| anyhow::anyhow!("{what} cannot bind {listen}: {e}"))?;
    Ok(socket)
}

/// A sender as logs, policy and the audit want it: an IPv4 client of a
/// dual-stack socket arrives as `::ffff:a.b.c.d`, which is `a.b.c.d`.
pub(crate) fn canonical_peer(peer: std::net::SocketAddr) -> std::net::SocketAddr {
    std::net::SocketAddr::new(peer.ip().to_canonical(), peer.port())
}

/// `-C/--packet-limit`: fwknopd counts every packet its capture hands it
/// (pcap_dispatch's count after the BPF filter, each UDP datagram), valid or
/// not, and stops once the count reaches the limit. Process-wide, as fwknopd's.
static PACKET_LIMIT: std::sync::OnceLock<PacketLimit> = std::sync::OnceLock::new();

struct PacketLimit {
    limit: u64,
    seen: std::sync::atomic::AtomicU64,
    reached: CancellationToken,
}

/// Stop after `limit` captured packets: the returned token fires when the
/// count is reached. Set once, before the captures start.
pub fn set_packet_limit(limit: u64) -> CancellationToken {
    let reached = CancellationToken::new();
    let _ = PACKET_LIMIT.set(PacketLimit {
        limit,
        seen: Default::default(),
        reached: reached.clone(),
    });
    PACKET_LIMIT.get().map_or(reached, |l| l.reached.clone())
}

/// One more packet came off `capture` (called by each capture, before any check).
pub fn count_packet(capture: &'static str) {
    crate::metrics::packet(capture);
    let Some(l) = PACKET_LIMIT.get() else {
        return;
    };
    let seen = l.seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    if seen == l.limit {
        tracing::warn!("* Incoming packet count limit of {} reached", l.limit);
        l.reached.cancel();
    }
}

/// Screen a packet still in the capture's buffer and hand what passes on.
/// Garbage and replays are refused (and logged) right here, never copied.
/// Backpressure: a packet whose HMAC verified waits for a free work slot, and
/// the capture reads nothing meanwhile (the kernel's buffer holds the rest); a
/// packet only plausible (for a stanza without HMAC) is shed when none is free,
/// counted and logged. The stages then run on the packet's own task.
pub async fn offer(pipeline: &mut Pipeline, received: Received<'_>) {
    if let Some(packet) = screen(pipeline, received) {
        hand_on(pipeline, packet).await;
    }
}

/// The screen of [`offer`]: the packet that passed, or `None` (the refusal
/// logged). Synchronous, so garbage builds no future.
fn screen(pipeline: &mut Pipeline, received: Received<'_>) -> Option<Authenticated> {
    let peer = received.peer;
    pipeline
        .screen(received)
        .map_err(|outcome| log_outcome(peer, &outcome, None))
        .ok()
}

/// The rest of [`offer`] for a packet that passed the screen.
async fn hand_on(pipeline: &mut Pipeline, packet: Authenticated) {
    use futures_util::FutureExt;
    use tower::ServiceExt;
    let peer = packet.packet().peer;
    // Read only for what passed the screen (a clock read per garbage packet shows under a flood).
    let started = std::time::Instant::now();
    if packet.mac_verified() {
        let Ok(_) = pipeline.ready().await;
    } else if pipeline.ready().now_or_never().is_none() {
        let why = if packet.is_native() {
            "work queue full (a native packet is shed before it is opened)"
        } else {
            "work queue full (a packet for a stanza without HMAC is shed)"
        };
        let shed = Outcome::refused(Stage::Overload, why, Decision::authenticated(&packet));
        return log_outcome(peer, &shed, Some(started));
    }
    pipeline.spawn(packet, move |outcome| {
        log_outcome(peer, &outcome, Some(started))
    });
}

/// [`offer`] from a capture's own thread (pcap blocks in libpcap): waits on
/// `runtime` only when the pipeline is full.
pub fn offer_blocking(
    pipeline: &mut Pipeline,
    received: Received<'_>,
    runtime: &tokio::runtime::Handle,
) {
    use futures_util::FutureExt;
    let Some(packet) = screen(pipeline, received) else {
        return;
    };
    let offered = hand_on(pipeline, packet);
    let mut offered = std::pin::pin!(offered);
    if (&mut offered).now_or_never().is_none() {
        runtime.block_on(offered);
    }
}

/// What the pcap and TCP captures take besides plain SPA packets.
#[derive(Clone, Copy, Debug, Default)]
pub struct Intake {
    /// SPA packets inside HTTP GET requests (fwknop `-P http`).
    pub spa_over_http: bool,
    /// …whatever the request's User-Agent.
    pub any_user_agent: bool,
    /// Grant an HTTP knock whose allow-IP is 0.0.0.0 to the address its
    /// X-Forwarded-For header names (a client behind a proxy), as fwknopd.
    pub x_forwarded_for: bool,
}

/// The SPA packet a payload carries, and the address an HTTP proxy said it
/// forwarded it for.
pub struct Carried<'a> {
    pub packet: Cow<'a, [u8]>,
    pub forwarded_for: Option<std::net::IpAddr>,
}

impl Intake {
    pub fn of(server: &ServerSection) -> Intake {
        Intake {
            spa_over_http: server.spa_over_http,
            any_user_agent: server.allow_any_user_agent,
            x_forwarded_for: server.x_forwarded_for,
        }
    }

    /// The SPA packet in `payload`: the payload itself, or the one an HTTP request
    /// carries; `None` (logged at debug) for a request that cannot carry one.
    pub fn spa_packet<'a>(
        &self,
        payload: &'a [u8],
        peer: std::net::SocketAddr,
    ) -> Option<Carried<'a>> {
        let plain = Carried {
            packet: Cow::Borrowed(payload),
            forwarded_for: None,
        };
        if !self.spa_over_http {
            return Some(plain);
        }
        match http::receive(payload, self.any_user_agent) {
            http::Received::NotHttp => Some(plain),
            http::Received::Spa(packet) => Some(Carried {
                packet: Cow::Owned(packet),
                forwarded_for: self
                    .x_forwarded_for
                    .then(|| http::forwarded_for(payload))
                    .flatten()
                    .map(std::net::IpAddr::V4),
            }),
            http::Received::Refused(why) => {
                tracing::debug!("refused packet from {peer}: {why}");
                None
            }
        }
    }

    /// Bytes a TCP capture reads: a whole HTTP request when those are taken.
    pub fn read_limit(&self, max_bytes: usize) -> usize {
        if self.spa_over_http {
            max_bytes.max(http::MAX_REQUEST_LEN)
        } else {
            max_bytes
        }
    }
}

/// Why a packet was refused, at debug level only (never to the network; a shed
/// packet at WARN), counted in the metrics and recorded in the audit log.
/// Grants are logged at info level by the action task.
fn log_outcome(peer: std::net::SocketAddr, outcome: &Outcome, started: Option<std::time::Instant>) {
    crate::metrics::outcome(outcome, started.map(|t| t.elapsed()));
    crate::attack::observe(peer, outcome);
    crate::audit::record(peer, outcome);
    match outcome {
        // A packet shed for a full queue (or GPG pool): never silent.
        Outcome::Denied {
            stage: crate::pipeline::Stage::Overload,
            reason,
            ..
        } => {
            static DROPS: std::sync::LazyLock<crate::pipeline::WarnBudget> =
                std::sync::LazyLock::new(|| crate::pipeline::WarnBudget::new("overload", 5, 20));
            DROPS.warn(format_args!(
                "refused a packet from {peer} at overload: {reason} (counted in \
                 postern_refused_total{{stage=\"overload\"}}; [server] queue_depth sets the room)"
            ));
        }
        Outcome::Denied { stage, reason, .. } => {
            tracing::debug!("refused packet from {peer} at {stage}: {reason}");
        }
        Outcome::Granted(_) => {}
    }
}

/// Open the capture `config` describes: bind, listen, open the interfaces and
/// their filters, bind the queue and add its rule. `actions` are the
/// configured ones (the NFQUEUE capture makes its rule with the same
/// firewall); `clock` stamps each packet's arrival.
pub async fn open(
    config: &CaptureConfig,
    intake: Intake,
    actions: &[crate::config::ActionConfig],
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Box<dyn Capture>> {
    Ok(match config.clone() {
        #[cfg(target_os = "linux")]
        CaptureConfig::Nfqueue(settings) => {
            Box::new(nfqueue::NfqueueCapture::open(settings, actions, clock).await?)
        }
        // Refused when the configuration is read (config/platform.rs).
        #[cfg(not(target_os = "linux"))]
        CaptureConfig::Nfqueue(_) => {
            let _ = actions;
            anyhow::bail!("the nfqueue capture is Linux-only")
        }
        CaptureConfig::Udp { listen } => Box::new(udp::UdpCapture::open(listen, clock)?),
        CaptureConfig::Tcp {
            listen,
            first_byte_timeout_ms,
            read_timeout_ms,
            max_bytes,
            max_connections,
            max_per_source,
            rate_per_source,
            burst_per_source,
        } => {
            let limits = tcp::Limits {
                first_byte_timeout: std::time::Duration::from_millis(first_byte_timeout_ms),
                read_timeout: std::time::Duration::from_millis(read_timeout_ms),
                max_bytes: intake.read_limit(max_bytes),
                slots: tcp::SlotLimits {
                    max_connections,
                    max_per_source,
                    rate_per_source,
                    burst_per_source,
                },
                intake,
            };
            Box::new(tcp::TcpCapture::open(listen, limits, clock)?)
        }
        CaptureConfig::Pcap {
            interfaces,
            filter,
            promisc,
            snaplen,
            any_direction,
            file,
        } => {
            let settings = pcap::Settings {
                interfaces,
                filter,
                promisc,
                snaplen,
                any_direction,
                file,
                intake,
            };
            Box::new(pcap::PcapCapture::open(settings, clock)?)
        }
    })
}
