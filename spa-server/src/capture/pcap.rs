//! libpcap capture (fwknopd's default mode): PCAP_INTF (several, or `any`),
//! PCAP_FILTER, promiscuous mode. Each interface has its own thread; when an
//! interface goes away the thread reopens it until it is back.

use super::kernel_drops::{self, DropCount, Why};
use super::length_filter::Lengths;
use super::{offer_blocking, Intake};
use crate::pipeline::{Pipeline, RawPacket, Received, Stanzas};
use pnet_packet::ethernet::{EtherTypes, EthernetPacket};
use pnet_packet::ip::{IpNextHeaderProtocol, IpNextHeaderProtocols};
use pnet_packet::ipv4::Ipv4Packet;
use pnet_packet::ipv6::Ipv6Packet;
use pnet_packet::tcp::TcpPacket;
use pnet_packet::udp::UdpPacket;
use spa_core::Clock;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// This capture's name in packets, logs and metrics.
const CAPTURE: &str = super::names::PCAP;

#[derive(Clone, Debug)]
pub struct Settings {
    pub interfaces: Vec<String>,
    pub filter: String,
    pub promisc: bool,
    pub snaplen: i32,
    /// Also see packets the host sends (fwknopd: ENABLE_PCAP_ANY_DIRECTION).
    pub any_direction: bool,
    pub file: Option<PathBuf>,
    pub intake: Intake,
}

/// Knocks the kernel's capture ring holds while the pipeline is full and the
/// capture waits (backpressure). libpcap's default ring (2 MiB, about 1,000
/// frames) lost some of 10,000 knocks at once.
const RING_FRAMES: i32 = 8192;
/// The ring is mapped (and counted in posternd's RSS) whole from the start.
const RING_MAX_BYTES: i32 = 64 << 20;

/// The ring for [`RING_FRAMES`] frames of `snaplen` bytes: libpcap gives a
/// frame the snap length and its headers, within blocks of a power of two.
/// 16 MiB for the default 1,500; at most [`RING_MAX_BYTES`].
fn ring_bytes(snaplen: i32) -> i32 {
    let frame = (snaplen.max(1) as u32 + 128).next_power_of_two() as i64;
    (frame * RING_FRAMES as i64).min(RING_MAX_BYTES as i64) as i32
}

/// How its kernel drops are told.
const RING_DROPS: kernel_drops::Buffer = kernel_drops::Buffer {
    capture: CAPTURE,
    said_as: "pcap capture",
    what: "capture ring",
};

/// How often libpcap's count of the ring's drops is read.
const DROPS_EVERY: Duration = Duration::from_secs(1);

/// Packets the kernel dropped because an interface's ring was full (libpcap's
/// count since the interface was opened), counted and warned about.
struct RingDrops {
    counted: DropCount,
    read_at: Instant,
}

impl RingDrops {
    fn new() -> RingDrops {
        RingDrops {
            counted: DropCount::default(),
            read_at: Instant::now(),
        }
    }

    fn check(&mut self, cap: &mut pcap::Capture<pcap::Active>) {
        if self.read_at.elapsed() < DROPS_EVERY {
            return;
        }
        self.read_at = Instant::now();
        let Ok(stats) = cap.stats() else {
            return;
        };
        let dropped = self.counted.saw(Some(stats.dropped));
        if dropped > 0 {
            kernel_drops::report(RING_DROPS, vec![(Why::BufferFull, dropped)]);
        }
    }
}

/// Reopen delay while an interface is missing or down.
const REOPEN_DELAY: Duration = Duration::from_millis(500);

/// The pcap capture, its file or interfaces open with the user's filter.
pub struct PcapCapture {
    settings: Settings,
    source: Source,
    clock: Arc<dyn Clock>,
}

enum Source {
    File(pcap::Capture<pcap::Offline>),
    /// Each interface by name, open.
    Interfaces(Vec<(String, pcap::Capture<pcap::Active>)>),
}

impl PcapCapture {
    /// Open the file, or every interface now: a bad filter or interface name
    /// fails the start with its name, and the capture is live before posternd
    /// says it is ready.
    pub fn open(settings: Settings, clock: Arc<dyn Clock>) -> anyhow::Result<PcapCapture> {
        let source = if let Some(file) = &settings.file {
            let mut cap = pcap::Capture::from_file(file)
                .map_err(|e| anyhow::anyhow!("pcap file {}: {e}", file.display()))?;
            cap.filter(&settings.filter, true)
                .map_err(|e| anyhow::anyhow!("PCAP_FILTER `{}`: {e}", settings.filter))?;
            Source::File(cap)
        } else {
            let mut opened = Vec::new();
            for iface in &settings.interfaces {
                let cap = open(iface, &settings)
                    .map_err(|e| anyhow::anyhow!("pcap on `{iface}`: {e}"))?;
                opened.push((iface.clone(), cap));
            }
            Source::Interfaces(opened)
        };
        Ok(PcapCapture {
            settings,
            source,
            clock,
        })
    }
}

impl super::Capture for PcapCapture {
    fn name(&self) -> &'static str {
        CAPTURE
    }

    /// A thread per interface (or for the file), each with the length filter
    /// fitted to the stanzas.
    fn start(
        self: Box<Self>,
        pipeline: Pipeline,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let PcapCapture {
            settings,
            source,
            clock,
        } = *self;
        let runtime = tokio::runtime::Handle::current();
        let mut threads = Vec::new();
        match source {
            Source::File(mut cap) => {
                let (mut p, rt, intake) = (pipeline, runtime, settings.intake);
                LengthFilter::new(&settings).fit(&mut cap, &p);
                threads.push(std::thread::spawn(move || {
                    let _guard = rt.enter();
                    let link = cap.get_datalink();
                    while let Ok(frame) = cap.next_packet() {
                        submit_frame(&mut p, intake, link, frame.data, clock.now(), &rt);
                    }
                }));
            }
            Source::Interfaces(opened) => {
                for (iface, mut cap) in opened {
                    let mut length_filter = LengthFilter::new(&settings);
                    length_filter.fit(&mut cap, &pipeline);
                    tracing::info!(
                        "pcap: capturing on `{iface}` with filter `{}` (and only knock lengths)",
                        settings.filter
                    );
                    let (settings, mut p, rt, stop, clock) = (
                        settings.clone(),
                        pipeline.clone(),
                        runtime.clone(),
                        shutdown.clone(),
                        clock.clone(),
                    );
                    let name = format!("pcap-{iface}");
                    let body = move || {
                        let _guard = rt.enter();
                        let opened = (cap, length_filter);
                        capture_loop(&iface, &settings, opened, &mut p, &stop, &*clock, &rt);
                    };
                    // Without a thread of its own the interface is not read:
                    // say so (the others go on).
                    match std::thread::Builder::new().name(name.clone()).spawn(body) {
                        Ok(t) => threads.push(t),
                        Err(e) => tracing::error!("pcap: cannot start thread {name}: {e}"),
                    }
                }
            }
        }
        tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
    }
}

/// A non-blocking capture: the loop waits in its own `poll`, so it sees shutdown
/// within [`POLL_MS`] (libpcap's own read timeout does not return on Linux while
/// no packet arrives).
fn open(iface: &str, s: &Settings) -> Result<pcap::Capture<pcap::Active>, pcap::Error> {
    let mut cap = pcap::Capture::from_device(iface)?
        .promisc(s.promisc)
        .snaplen(s.snaplen)
        .immediate_mode(true) // deliver each packet at once: knock latency matters
        .buffer_size(ring_bytes(s.snaplen))
        .open()?
        .setnonblock()?;
    if !s.any_direction {
        // As fwknopd: only packets coming in; some link types cannot tell.
        if let Err(e) = cap.direction(pcap::Direction::In) {
            tracing::debug!("pcap: `{iface}` cannot limit the direction ({e})");
        }
    }
    cap.filter(&s.filter, true)?;
    Ok(cap)
}

/// Narrows the kernel filter (PCAP_FILTER) to the payload lengths some stanza
/// can take, so garbage of other lengths never leaves the kernel; refitted when a
/// reload changes the stanzas. Screening in posternd stays complete.
struct LengthFilter {
    user_filter: String,
    /// TCP payloads are plain packets (no SPA over HTTP): narrow TCP too.
    plain_tcp: bool,
    fitted_for: Option<Stanzas>,
    checked_at: Instant,
}

/// How often a capture looks for reloaded stanzas.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

impl LengthFilter {
    fn new(settings: &Settings) -> LengthFilter {
        LengthFilter {
            user_filter: settings.filter.clone(),
            plain_tcp: !settings.intake.spa_over_http,
            fitted_for: None,
            checked_at: Instant::now(),
        }
    }

    fn fit<T: pcap::Activated + ?Sized>(&mut self, cap: &mut pcap::Capture<T>, p: &Pipeline) {
        let stanzas = p.keyring().snapshot();
        let narrowed =
            Lengths::for_stanzas(&stanzas).narrow_pcap_filter(&self.user_filter, self.plain_tcp);
        if let Err(e) = cap.filter(&narrowed, true) {
            // The user's filter alone was accepted at open: keep it and screen all here.
            tracing::warn!("pcap: no length filter ({e}); screening all in posternd");
        }
        self.fitted_for = Some(stanzas);
        self.checked_at = Instant::now();
    }

    fn refit_if_reloaded(&mut self, cap: &mut pcap::Capture<pcap::Active>, p: &Pipeline) {
        if self.checked_at.elapsed() < RELOAD_CHECK {
            return;
        }
        self.checked_at = Instant::now();
        let current = p.keyring().snapshot();
        if !self
            .fitted_for
            .as_ref()
            .is_some_and(|f| std::sync::Arc::ptr_eq(f, &current))
        {
            self.fit(cap, p);
        }
    }
}

/// How long one wait for packets lasts before shutdown is checked again.
const POLL_MS: i32 = 200;

enum Readiness {
    Packets,
    Idle,
    /// The interface went away or failed.
    Broken,
}

fn wait_for_packets(cap: &pcap::Capture<pcap::Active>) -> Readiness {
    use std::os::fd::AsRawFd;
    let mut fds = [libc::pollfd {
        fd: cap.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: one valid pollfd for the duration of the call.
    match unsafe { libc::poll(fds.as_mut_ptr(), 1, POLL_MS) } {
        0 => Readiness::Idle,
        n if n < 0 => {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                Readiness::Idle
            } else {
                Readiness::Broken
            }
        }
        _ if fds[0].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 => {
            Readiness::Broken
        }
        _ => Readiness::Packets,
    }
}

fn capture_loop(
    iface: &str,
    s: &Settings,
    opened: (pcap::Capture<pcap::Active>, LengthFilter),
    pipeline: &mut Pipeline,
    stop: &CancellationToken,
    clock: &dyn Clock,
    runtime: &tokio::runtime::Handle,
) {
    let (first, mut length_filter) = opened;
    let mut first = Some(first);
    while !stop.is_cancelled() {
        let mut cap = match first.take() {
            Some(c) => c,
            None => match open(iface, s) {
                Ok(mut c) => {
                    length_filter.fit(&mut c, pipeline);
                    tracing::info!("pcap: capturing on `{iface}` again");
                    c
                }
                Err(e) => {
                    tracing::debug!("pcap: `{iface}` not ready ({e}); retrying");
                    std::thread::sleep(REOPEN_DELAY);
                    continue;
                }
            },
        };
        let link = cap.get_datalink();
        let mut coalesce = super::coalesce::Coalesce::new();
        let mut ring_drops = RingDrops::new();
        'capturing: while !stop.is_cancelled() {
            length_filter.refit_if_reloaded(&mut cap, pipeline);
            ring_drops.check(&mut cap);
            match wait_for_packets(&cap) {
                Readiness::Idle => continue,
                Readiness::Broken => {
                    tracing::warn!("pcap: `{iface}` went away; reopening");
                    break 'capturing;
                }
                Readiness::Packets => {}
            }
            // Drain what is buffered; non-blocking reads end with TimeoutExpired.
            let mut drained = 0;
            loop {
                match cap.next_packet() {
                    Ok(frame) => {
                        drained += 1;
                        submit_frame(pipeline, s.intake, link, frame.data, clock.now(), runtime);
                    }
                    Err(pcap::Error::TimeoutExpired) => break,
                    Err(e) => {
                        tracing::warn!("pcap: `{iface}` failed ({e}); reopening");
                        break 'capturing;
                    }
                }
            }
            // Under a flood, let the ring fill a while before the next wakeup
            // (unless this drain was long: then the loop is behind).
            let took_all = drained < super::coalesce::PER_RECEIVE;
            if let Some(nap) = coalesce.after_receive(drained, took_all, Instant::now()) {
                if !stop.is_cancelled() {
                    std::thread::sleep(nap);
                }
            }
        }
        // Give a vanished interface a moment before trying to reopen it.
        if !stop.is_cancelled() {
            std::thread::sleep(REOPEN_DELAY);
        }
    }
}

/// Pull the transport payload and addresses out of one captured frame
/// received at `received_at`.
pub fn parse_frame(link: pcap::Linktype, data: &[u8], received_at: u64) -> Option<RawPacket> {
    let (payload, peer, dst) = frame_parts(link, data)?;
    Some(RawPacket {
        bytes: payload.to_vec(),
        peer,
        forwarded_for: None,
        destination: Some(dst),
        received_at,
        capture: CAPTURE,
    })
}

/// Offer a frame's payload, screened in place (copied only when it may be a knock).
fn submit_frame(
    pipeline: &mut Pipeline,
    intake: Intake,
    link: pcap::Linktype,
    data: &[u8],
    received_at: u64,
    runtime: &tokio::runtime::Handle,
) {
    super::count_packet(CAPTURE);
    let Some((payload, peer, dst)) = frame_parts(link, data) else {
        return;
    };
    let Some(carried) = intake.spa_packet(payload, peer) else {
        return;
    };
    let received = Received {
        bytes: &carried.packet,
        forwarded_for: carried.forwarded_for,
        peer,
        destination: Some(dst),
        received_at,
        capture: CAPTURE,
    };
    offer_blocking(pipeline, received, runtime);
}

/// The transport payload (borrowed from the frame), its sender and destination.
pub(super) fn frame_parts(
    link: pcap::Linktype,
    data: &[u8],
) -> Option<(&[u8], SocketAddr, IpAddr)> {
    let (ethertype, l3) = match link {
        pcap::Linktype::ETHERNET => {
            let eth = EthernetPacket::new(data)?;
            (eth.get_ethertype().0, &data[14..])
        }
        // Linux cooked capture (the `any` device): 16-byte header, protocol at 14.
        pcap::Linktype::LINUX_SLL => (
            u16::from_be_bytes([*data.get(14)?, *data.get(15)?]),
            data.get(16..)?,
        ),
        pcap::Linktype(276) => (
            u16::from_be_bytes([*data.first()?, *data.get(1)?]),
            data.get(20..)?,
        ),
        pcap::Linktype::RAW | pcap::Linktype(12) => match data.first()? >> 4 {
            4 => (EtherTypes::Ipv4.0, data),
            6 => (EtherTypes::Ipv6.0, data),
            _ => return None,
        },
        pcap::Linktype::NULL | pcap::Linktype::LOOP => {
            let family = data.get(..4)?;
            let v4 = family == [2, 0, 0, 0] || family == [0, 0, 0, 2];
            (
                if v4 {
                    EtherTypes::Ipv4.0
                } else {
                    EtherTypes::Ipv6.0
                },
                data.get(4..)?,
            )
        }
        _ => return None,
    };
    let (src, dst, proto, l4) = match ethertype {
        t if t == EtherTypes::Ipv4.0 => {
            let ip = Ipv4Packet::new(l3)?;
            let header = usize::from(ip.get_header_length()) * 4;
            let total = usize::from(ip.get_total_length()).min(l3.len());
            (
                IpAddr::V4(ip.get_source()),
                IpAddr::V4(ip.get_destination()),
                ip.get_next_level_protocol(),
                l3.get(header..total)?,
            )
        }
        t if t == EtherTypes::Ipv6.0 => {
            let ip = Ipv6Packet::new(l3)?;
            let end = (40 + usize::from(ip.get_payload_length())).min(l3.len());
            let (proto, l4) = skip_ipv6_extensions(ip.get_next_header(), l3.get(40..end)?)?;
            (
                IpAddr::V6(ip.get_source()),
                IpAddr::V6(ip.get_destination()),
                proto,
                l4,
            )
        }
        _ => return None,
    };
    let (sport, payload) = transport_payload(proto, l4)?;
    if payload.is_empty() {
        return None;
    }
    Some((payload, SocketAddr::new(src, sport), dst))
}

/// The transport protocol and its bytes after IPv6 extension headers
/// (hop-by-hop, routing, destination options, fragment): a knock sent with
/// any of them still reaches the transport parser. Only whole datagrams are
/// taken: a fragment other than an atomic one (offset 0, no more fragments)
/// carries part of a packet, which fwknopd does not reassemble either.
fn skip_ipv6_extensions(
    mut next: IpNextHeaderProtocol,
    mut data: &[u8],
) -> Option<(IpNextHeaderProtocol, &[u8])> {
    use pnet_packet::ipv6::{ExtensionPacket, FragmentPacket};
    use IpNextHeaderProtocols as P;
    // The RFC 8200 order has at most 6 of them; more is not a real packet.
    const MAX_EXTENSIONS: usize = 8;
    for _ in 0..MAX_EXTENSIONS {
        let header_len = if next == P::Hopopt || next == P::Ipv6Route || next == P::Ipv6Opts {
            let ext = ExtensionPacket::new(data)?;
            next = ext.get_next_header();
            (usize::from(ext.get_hdr_ext_len()) + 1) * 8
        } else if next == P::Ipv6Frag {
            let frag = FragmentPacket::new(data)?;
            if frag.get_fragment_offset() != 0 || !frag.is_last_fragment() {
                return None;
            }
            next = frag.get_next_header();
            8
        } else {
            return Some((next, data));
        };
        data = data.get(header_len..)?;
    }
    None
}

/// The payload after the transport header and the sender's port, as fwknopd's
/// pcap capture takes it: UDP; TCP (any flags: `fwknop -P tcpraw` sends a SYN);
/// ICMP and ICMPv6 of any type (`fwknop -P icmp`), after the 8-byte header, port 0.
fn transport_payload(proto: IpNextHeaderProtocol, l4: &[u8]) -> Option<(u16, &[u8])> {
    const ICMP_HEADER: usize = 8;
    if proto == IpNextHeaderProtocols::Icmp || proto == IpNextHeaderProtocols::Icmpv6 {
        Some((0, l4.get(ICMP_HEADER..)?))
    } else if proto == IpNextHeaderProtocols::Udp {
        let udp = UdpPacket::new(l4)?;
        let end = usize::from(udp.get_length()).clamp(8, l4.len());
        Some((udp.get_source(), &l4[8..end]))
    } else if proto == IpNextHeaderProtocols::Tcp {
        let tcp = TcpPacket::new(l4)?;
        let start = usize::from(tcp.get_data_offset()) * 4;
        Some((tcp.get_source(), l4.get(start.max(20)..)?))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_holds_its_frames_up_to_its_cap() {
        assert_eq!(ring_bytes(1500), 16 << 20);
        assert_eq!(ring_bytes(100), 2 << 20);
        assert_eq!(ring_bytes(32_768), RING_MAX_BYTES);
        assert_eq!(ring_bytes(0), ring_bytes(1));
    }

    fn udp_frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12] = 0x08; // IPv4
        let total = 20 + 8 + payload.len();
        let mut ip = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0,
            0,
            64,
            17,
            0,
            0,
            10,
            0,
            0,
            1,
            10,
            0,
            0,
            2,
        ];
        ip.extend_from_slice(&[0x30, 0x39, 0xf2, 0xf9, 0, (8 + payload.len()) as u8, 0, 0]);
        ip.extend_from_slice(payload);
        f.extend(ip);
        f
    }

    /// A raw IPv6 datagram from fd00::7 to fd00::2: `extensions` (each a
    /// complete header whose first byte is patched to chain them) then UDP.
    fn ipv6_udp_with(extensions: &[(u8, Vec<u8>)], payload: &[u8]) -> Vec<u8> {
        let mut udp = vec![0x30, 0x39, 0xf2, 0xf9, 0, (8 + payload.len()) as u8, 0, 0];
        udp.extend_from_slice(payload);
        let mut body = Vec::new();
        let mut first = 17u8;
        for (i, (kind, header)) in extensions.iter().enumerate() {
            if i == 0 {
                first = *kind;
            }
            let mut h = header.clone();
            h[0] = extensions.get(i + 1).map_or(17, |(k, _)| *k);
            body.extend(h);
        }
        body.extend(udp);
        let mut d = vec![0x60, 0, 0, 0, 0, 0, first, 64];
        d[4..6].copy_from_slice(&(body.len() as u16).to_be_bytes());
        d.extend("fd00::7".parse::<std::net::Ipv6Addr>().unwrap().octets());
        d.extend("fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        d.extend(body);
        d
    }

    #[test]
    fn takes_ipv6_udp_after_extension_headers() {
        let hop_by_hop = (0u8, vec![0, 0, 1, 4, 0, 0, 0, 0]);
        let destination = (60u8, vec![0, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let routing = (43u8, vec![0, 0, 0, 0, 0, 0, 0, 0]);
        let atomic_fragment = (44u8, vec![0, 0, 0, 0, 0, 0, 0, 9]);
        let chains = [
            vec![],
            vec![hop_by_hop.clone()],
            vec![hop_by_hop, destination.clone(), routing, atomic_fragment],
            vec![destination],
        ];
        for chain in chains {
            let d = ipv6_udp_with(&chain, b"knock");
            let p = parse_frame(pcap::Linktype::RAW, &d, 0).expect("parsed");
            assert_eq!(p.bytes, b"knock", "{chain:?}");
            assert_eq!(p.peer, "[fd00::7]:12345".parse().unwrap());
        }
    }

    #[test]
    fn ipv6_fragments_and_endless_chains_are_not_taken() {
        let first_of_two = (44u8, vec![0, 0, 0, 1, 0, 0, 0, 9]);
        let later = (44u8, vec![0, 0, 0, 0x10, 0, 0, 0, 9]);
        for chain in [vec![first_of_two], vec![later]] {
            assert!(parse_frame(pcap::Linktype::RAW, &ipv6_udp_with(&chain, b"x"), 0).is_none());
        }
        let endless = vec![(60u8, vec![0u8; 8]); 20];
        assert!(parse_frame(pcap::Linktype::RAW, &ipv6_udp_with(&endless, b"x"), 0).is_none());
        // A header claiming more than the datagram holds.
        let mut d = ipv6_udp_with(&[(0u8, vec![0, 0, 0, 0, 0, 0, 0, 0])], b"x");
        d[41] = 200;
        assert!(parse_frame(pcap::Linktype::RAW, &d, 0).is_none());
    }

    #[test]
    fn parses_ethernet_ipv4_udp() {
        let p = parse_frame(pcap::Linktype::ETHERNET, &udp_frame(b"hello"), 0).unwrap();
        assert_eq!(p.bytes, b"hello");
        assert_eq!(p.peer, "10.0.0.1:12345".parse().unwrap());
        assert_eq!(p.destination, Some("10.0.0.2".parse().unwrap()));
    }

    /// Datagrams built by the client's raw modes (`postern -P tcpraw|udpraw|icmp`,
    /// the same fields as fwknop's) give back the SPA packet and the sender.
    #[test]
    fn takes_the_payload_of_every_raw_knock() {
        use spa_client::raw::{Carrier, RawKnock};
        let carriers = [
            (Carrier::Tcp, 40000),
            (Carrier::Udp, 40000),
            (
                Carrier::Icmp {
                    icmp_type: 8,
                    code: 0,
                },
                0,
            ),
            (
                Carrier::Icmp {
                    icmp_type: 0,
                    code: 0,
                },
                0,
            ),
            (
                Carrier::Icmp {
                    icmp_type: 13,
                    code: 5,
                },
                0,
            ),
        ];
        for (carrier, port) in carriers {
            let knock = RawKnock {
                carrier,
                source: "10.0.0.7:40000".parse().unwrap(),
                destination: "10.0.0.2:62201".parse().unwrap(),
                ip_id: 7,
                echo_id: 9,
            };
            let datagram = knock.datagram(b"spa-payload").unwrap();
            let p = parse_frame(pcap::Linktype::RAW, &datagram, 0).unwrap();
            assert_eq!(p.bytes, b"spa-payload", "{carrier:?}");
            assert_eq!(p.peer, SocketAddr::new("10.0.0.7".parse().unwrap(), port));
            assert_eq!(p.destination, Some("10.0.0.2".parse().unwrap()));
            // An ICMP message with no room for its header carries nothing.
            if let Carrier::Icmp { .. } = carrier {
                let mut short = datagram[..20 + 6].to_vec();
                short[2..4].copy_from_slice(&26u16.to_be_bytes());
                assert!(parse_frame(pcap::Linktype::RAW, &short, 0).is_none());
            }
        }
    }

    #[test]
    fn takes_the_payload_of_icmpv6() {
        let payload = b"spa-over-icmpv6";
        let mut d = vec![0x60, 0, 0, 0, 0, (8 + payload.len()) as u8, 58, 64];
        d.extend("fd00::7".parse::<std::net::Ipv6Addr>().unwrap().octets());
        d.extend("fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        d.extend([128, 0, 0, 0, 0, 1, 0, 1]); // echo request, checksum not checked
        d.extend(payload);
        let p = parse_frame(pcap::Linktype::RAW, &d, 0).unwrap();
        assert_eq!(p.bytes, payload);
        assert_eq!(p.peer, "[fd00::7]:0".parse().unwrap());
    }

    #[test]
    fn truncated_or_foreign_frames_are_ignored() {
        let f = udp_frame(b"hello");
        for n in 0..f.len() - 5 {
            assert!(
                parse_frame(pcap::Linktype::ETHERNET, &f[..n], 0).is_none(),
                "{n}"
            );
        }
        let mut arp = f.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(parse_frame(pcap::Linktype::ETHERNET, &arp, 0).is_none());
    }
}
