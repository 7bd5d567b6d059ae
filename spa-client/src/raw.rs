//! Raw IPv4 knocks: fwknop's `-P icmp`, `-P tcpraw`, `-P udpraw`, and `-Q` to put
//! another source address in the IP header. The whole datagram is built here
//! with the header fields fwknop 2.6.10's client uses, and sent on a raw socket
//! (root or CAP_NET_RAW). A server sees only the payload after the ICMP, TCP or
//! UDP header, which is the SPA packet (fwknopd's pcap capture takes exactly that).
//!
//! Unlike fwknop, every checksum is right (fwknop leaves the TCP checksum 0 and
//! sends UDP without one): receivers that check them keep the packet.

use crate::error::{ClientError, Result};
use pnet_packet::icmp::{self, IcmpCode, IcmpPacket, IcmpType, MutableIcmpPacket};
use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_packet::ipv4::{self, Ipv4Packet, MutableIpv4Packet};
use pnet_packet::tcp::{self, MutableTcpPacket, TcpFlags, TcpPacket};
use pnet_packet::udp::{self, MutableUdpPacket, UdpPacket};
use pnet_packet::MutablePacket;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, UdpSocket};

/// fwknop's RAW_SPA_TTL.
pub const TTL: u8 = 255;
/// ICMP echo reply: fwknop's default `--icmp-type`.
pub const DEFAULT_ICMP_TYPE: u8 = 0;
/// fwknop's MAX_ICMP_TYPE / MAX_ICMP_CODE.
pub const MAX_ICMP_TYPE: u8 = 40;
pub const MAX_ICMP_CODE: u8 = 15;
const ICMP_ECHO_REQUEST: u8 = 8;
/// fwknop's raw TCP segment: a SYN with sequence 1 and this window.
const TCP_SEQUENCE: u32 = 1;
const TCP_WINDOW: u16 = 32767;
/// The echo sequence number fwknop puts in an echo request.
const ECHO_SEQUENCE: u16 = 1;

const IPV4_HEADER: usize = 20;
const TCP_HEADER: usize = 20;
/// UDP and ICMP headers are both 8 bytes.
const SHORT_HEADER: usize = 8;

/// What carries the SPA packet inside the IP datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carrier {
    Tcp,
    Udp,
    Icmp { icmp_type: u8, code: u8 },
}

impl Carrier {
    fn header_len(self) -> usize {
        match self {
            Carrier::Tcp => TCP_HEADER,
            Carrier::Udp | Carrier::Icmp { .. } => SHORT_HEADER,
        }
    }
}

/// One raw knock: addresses and the values fwknop draws at random.
#[derive(Clone, Copy, Debug)]
pub struct RawKnock {
    pub carrier: Carrier,
    /// The IP source (spoofed with `-Q`, else the address the route uses) and the
    /// TCP/UDP source port.
    pub source: SocketAddrV4,
    pub destination: SocketAddrV4,
    /// IP identification (fwknop: random).
    pub ip_id: u16,
    /// ICMP echo identifier (fwknop: random; only in an echo request).
    pub echo_id: u16,
}

impl RawKnock {
    /// The whole IPv4 datagram carrying `payload`.
    pub fn datagram(&self, payload: &[u8]) -> Result<Vec<u8>> {
        let l4_len = self.carrier.header_len() + payload.len();
        let total = IPV4_HEADER + l4_len;
        let total_u16 = u16::try_from(total).map_err(|_| {
            ClientError::Send(format!(
                "the SPA packet ({} bytes) does not fit in one IPv4 datagram",
                payload.len()
            ))
        })?;
        let mut buf = vec![0u8; total];
        let (src, dst) = (*self.source.ip(), *self.destination.ip());
        let l4 = &mut buf[IPV4_HEADER..];
        match self.carrier {
            Carrier::Tcp => {
                let mut seg = MutableTcpPacket::new(l4).ok_or_else(too_short)?;
                seg.set_source(self.source.port());
                seg.set_destination(self.destination.port());
                seg.set_sequence(TCP_SEQUENCE);
                seg.set_data_offset((TCP_HEADER / 4) as u8);
                seg.set_flags(TcpFlags::SYN);
                seg.set_window(TCP_WINDOW);
                seg.set_payload(payload);
                let sum = tcp::ipv4_checksum(&seg.to_immutable(), &src, &dst);
                seg.set_checksum(sum);
            }
            Carrier::Udp => {
                let mut dgram = MutableUdpPacket::new(l4).ok_or_else(too_short)?;
                dgram.set_source(self.source.port());
                dgram.set_destination(self.destination.port());
                dgram.set_length(l4_len as u16);
                dgram.set_payload(payload);
                let sum = udp::ipv4_checksum(&dgram.to_immutable(), &src, &dst);
                dgram.set_checksum(sum);
            }
            Carrier::Icmp { icmp_type, code } => {
                // pnet's ICMP payload starts after the checksum: the 4 bytes of
                // "rest of header" (echo identifier and sequence), then the data.
                let mut rest = [0u8; 4];
                if icmp_type == ICMP_ECHO_REQUEST && code == 0 {
                    rest[..2].copy_from_slice(&self.echo_id.to_be_bytes());
                    rest[2..].copy_from_slice(&ECHO_SEQUENCE.to_be_bytes());
                }
                let mut msg = MutableIcmpPacket::new(l4).ok_or_else(too_short)?;
                msg.set_icmp_type(IcmpType(icmp_type));
                msg.set_icmp_code(IcmpCode(code));
                let body = msg.payload_mut();
                body[..4].copy_from_slice(&rest);
                body[4..].copy_from_slice(payload);
                let sum = icmp::checksum(&msg.to_immutable());
                msg.set_checksum(sum);
            }
        }
        let mut ip = MutableIpv4Packet::new(&mut buf).ok_or_else(too_short)?;
        ip.set_version(4);
        ip.set_header_length((IPV4_HEADER / 4) as u8);
        ip.set_total_length(total_u16);
        ip.set_identification(self.ip_id);
        ip.set_ttl(TTL);
        ip.set_next_level_protocol(match self.carrier {
            Carrier::Tcp => IpNextHeaderProtocols::Tcp,
            Carrier::Udp => IpNextHeaderProtocols::Udp,
            Carrier::Icmp { .. } => IpNextHeaderProtocols::Icmp,
        });
        ip.set_source(src);
        ip.set_destination(dst);
        let sum = ipv4::checksum(&ip.to_immutable());
        ip.set_checksum(sum);
        Ok(buf)
    }
}

fn too_short() -> ClientError {
    ClientError::Send("internal error: raw packet buffer too short".into())
}

/// The address this host sends from towards `to` (no packet is sent: a UDP
/// socket is only connected, which picks the route).
pub fn route_source(to: Ipv4Addr) -> Result<Ipv4Addr> {
    let found = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| s.connect((to, 9)).map(|_| s))
        .and_then(|s| s.local_addr());
    match found {
        Ok(std::net::SocketAddr::V4(a)) => Ok(*a.ip()),
        Ok(_) => Err(ClientError::Send(format!("no IPv4 route to {to}"))),
        Err(e) => Err(ClientError::Send(format!("no route to {to}: {e}"))),
    }
}

/// A raw socket, with the error a user can act on when it is not allowed.
fn raw_socket(domain: socket2::Domain, protocol: i32, mode: &str) -> Result<socket2::Socket> {
    socket2::Socket::new(domain, socket2::Type::RAW, Some(protocol.into())).map_err(|e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            ClientError::Send(format!(
                "-P {mode} sends through a raw socket: run postern as root or give it CAP_NET_RAW ({e})"
            ))
        } else {
            ClientError::Send(format!("cannot open a raw socket for -P {mode}: {e}"))
        }
    })
}

/// Send a datagram built by [`RawKnock::datagram`]; returns the bytes sent
/// (IP header included, as fwknop counts them). `mode` names the `-P` mode in errors.
pub fn send(datagram: &[u8], to: SocketAddrV4, mode: &str) -> Result<usize> {
    // IPPROTO_RAW: the datagram carries its own IP header (IP_HDRINCL is implied).
    let sock = raw_socket(socket2::Domain::IPV4, libc::IPPROTO_RAW, mode)?;
    sock.send_to(datagram, &std::net::SocketAddr::V4(to).into())
        .map_err(|e| {
            ClientError::Send(format!(
                "could not send the SPA packet to {to} over {mode}: {e}"
            ))
        })
}

/// The ICMPv6 type for an ICMP one: echo request and reply have their own
/// numbers in ICMPv6 (RFC 4443); any other type is sent as given.
pub fn icmpv6_type(icmp_type: u8) -> u8 {
    match icmp_type {
        8 => 128,
        0 => 129,
        other => other,
    }
}

/// `-P icmp` to an IPv6 server: one ICMPv6 message carrying `payload` after
/// the 8-byte header (as the IPv4 form), through an ICMPv6 raw socket, whose
/// checksum the kernel always computes (RFC 3542). Returns the bytes sent.
pub fn send_icmpv6(payload: &[u8], to: Ipv6Addr, icmp_type: u8, code: u8) -> Result<usize> {
    let mut message = Vec::with_capacity(8 + payload.len());
    message.extend([icmpv6_type(icmp_type), code, 0, 0]);
    message.extend(crate::random::bytes::<2>());
    message.extend([0, 1]);
    message.extend_from_slice(payload);
    let sock = raw_socket(socket2::Domain::IPV6, libc::IPPROTO_ICMPV6, "icmp")?;
    sock.send_to(&message, &std::net::SocketAddr::from((to, 0)).into())
        .map_err(|e| {
            ClientError::Send(format!(
                "could not send the SPA packet to {to} over icmp (ICMPv6): {e}"
            ))
        })
}

/// Fields of a datagram as a receiver reads them, for tests and `-v`.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub source: Ipv4Addr,
    pub destination: Ipv4Addr,
    pub ttl: u8,
    pub checksums_ok: bool,
    /// TCP flags, or the ICMP type and code, or nothing for UDP.
    pub detail: (u8, u8),
    /// TCP/UDP source and destination ports, or the ICMP echo identifier and sequence.
    pub ports: (u16, u16),
    pub payload: Vec<u8>,
}

/// Read back a datagram this module built (`None` if it is not one).
pub fn parse(datagram: &[u8]) -> Option<Parsed> {
    let ip = Ipv4Packet::new(datagram)?;
    let l4 = datagram.get(usize::from(ip.get_header_length()) * 4..)?;
    let (src, dst) = (ip.get_source(), ip.get_destination());
    let ip_ok = ipv4::checksum(&ip) == ip.get_checksum();
    let proto = ip.get_next_level_protocol();
    let (ok, detail, ports, payload) = if proto == IpNextHeaderProtocols::Tcp {
        let t = TcpPacket::new(l4)?;
        let ok = tcp::ipv4_checksum(&t, &src, &dst) == t.get_checksum();
        let start = usize::from(t.get_data_offset()) * 4;
        let ports = (t.get_source(), t.get_destination());
        (ok, (t.get_flags(), 0), ports, l4.get(start..)?.to_vec())
    } else if proto == IpNextHeaderProtocols::Udp {
        let u = UdpPacket::new(l4)?;
        let ok = udp::ipv4_checksum(&u, &src, &dst) == u.get_checksum();
        let ports = (u.get_source(), u.get_destination());
        (ok, (0, 0), ports, l4.get(SHORT_HEADER..)?.to_vec())
    } else if proto == IpNextHeaderProtocols::Icmp {
        let m = IcmpPacket::new(l4)?;
        let ok = icmp::checksum(&m) == m.get_checksum();
        let detail = (m.get_icmp_type().0, m.get_icmp_code().0);
        let rest = l4.get(4..SHORT_HEADER)?;
        let id_seq = (
            u16::from_be_bytes([rest[0], rest[1]]),
            u16::from_be_bytes([rest[2], rest[3]]),
        );
        (ok, detail, id_seq, l4.get(SHORT_HEADER..)?.to_vec())
    } else {
        return None;
    };
    Some(Parsed {
        source: src,
        destination: dst,
        ttl: ip.get_ttl(),
        checksums_ok: ip_ok && ok,
        detail,
        ports,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPA: &[u8] = b"8Xx9Ak+3/spa-packet-of-some-length-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    fn knock(carrier: Carrier) -> RawKnock {
        RawKnock {
            carrier,
            source: "192.0.2.7:40000".parse().unwrap(),
            destination: "198.51.100.1:62201".parse().unwrap(),
            ip_id: 0x1234,
            echo_id: 0xbeef,
        }
    }

    #[test]
    fn tcp_segment_is_fwknops_syn() {
        let d = knock(Carrier::Tcp).datagram(SPA).unwrap();
        assert_eq!(d.len(), 20 + 20 + SPA.len());
        let ip = Ipv4Packet::new(&d).unwrap();
        assert_eq!((ip.get_version(), ip.get_header_length()), (4, 5));
        assert_eq!(usize::from(ip.get_total_length()), d.len());
        assert_eq!(ip.get_identification(), 0x1234);
        assert_eq!((ip.get_flags(), ip.get_fragment_offset()), (0, 0));
        let t = TcpPacket::new(&d[20..]).unwrap();
        assert_eq!((t.get_sequence(), t.get_acknowledgement()), (1, 0));
        assert_eq!((t.get_window(), t.get_urgent_ptr()), (32767, 0));
        let p = parse(&d).unwrap();
        assert_eq!(p.detail.0, TcpFlags::SYN);
        assert_eq!(p.ports, (40000, 62201));
        assert_eq!(p.ttl, 255);
        assert_eq!(p.source, "192.0.2.7".parse::<Ipv4Addr>().unwrap());
        assert_eq!(p.destination, "198.51.100.1".parse::<Ipv4Addr>().unwrap());
        assert!(p.checksums_ok);
        assert_eq!(p.payload, SPA);
    }

    #[test]
    fn udp_datagram_has_length_and_checksum() {
        let d = knock(Carrier::Udp).datagram(SPA).unwrap();
        let u = UdpPacket::new(&d[20..]).unwrap();
        assert_eq!(usize::from(u.get_length()), 8 + SPA.len());
        assert_ne!(u.get_checksum(), 0);
        let p = parse(&d).unwrap();
        assert!(p.checksums_ok);
        assert_eq!((p.ports, p.payload.as_slice()), ((40000, 62201), SPA));
    }

    #[test]
    fn icmp_echo_request_carries_id_and_sequence() {
        let d = knock(Carrier::Icmp {
            icmp_type: 8,
            code: 0,
        })
        .datagram(SPA)
        .unwrap();
        let p = parse(&d).unwrap();
        assert_eq!(p.detail, (8, 0));
        assert_eq!(p.ports, (0xbeef, 1), "identifier and sequence");
        assert!(p.checksums_ok);
        assert_eq!(p.payload, SPA);
    }

    #[test]
    fn other_icmp_types_leave_the_rest_of_header_zero() {
        for (icmp_type, code) in [(0, 0), (8, 3), (13, 0), (40, 15)] {
            let d = knock(Carrier::Icmp { icmp_type, code })
                .datagram(SPA)
                .unwrap();
            let p = parse(&d).unwrap();
            assert_eq!(p.detail, (icmp_type, code));
            assert_eq!(p.ports, (0, 0), "type {icmp_type} code {code}");
            assert!(p.checksums_ok);
            assert_eq!(p.payload, SPA);
        }
    }

    #[test]
    fn odd_payload_lengths_checksum_right() {
        for carrier in [
            Carrier::Tcp,
            Carrier::Udp,
            Carrier::Icmp {
                icmp_type: 0,
                code: 0,
            },
        ] {
            let d = knock(carrier).datagram(&SPA[..SPA.len() - 1]).unwrap();
            assert!(parse(&d).unwrap().checksums_ok, "{carrier:?}");
        }
    }

    #[test]
    fn oversized_payload_is_an_error() {
        assert!(knock(Carrier::Udp).datagram(&vec![b'A'; 70_000]).is_err());
    }

    #[test]
    fn route_source_of_loopback() {
        assert_eq!(
            route_source(Ipv4Addr::LOCALHOST).unwrap(),
            Ipv4Addr::LOCALHOST
        );
    }
}
