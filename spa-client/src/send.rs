//! Putting the packet on the network: one UDP datagram (fwknop's default), a TCP
//! connection that carries it, an HTTP GET request over TCP (`-P http`, also
//! through a proxy), or one raw IPv4 datagram (`-P udpraw|tcpraw|icmp`, see
//! [`crate::raw`]). Over IPv4 or IPv6: a name's IPv4 addresses come first (the
//! servers fwknop knocks listen there), `-4`/`-6` keep one family; the raw
//! modes are IPv4 only, except `-P icmp`, which sends ICMPv6 to an IPv6 server.

use crate::error::{ClientError, Result};
use crate::raw::{self, Carrier, RawKnock};
use crate::settings::ServerProto;
use std::io::Write;
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpStream, ToSocketAddrs, UdpSocket,
};
use std::time::Duration;

/// How long a TCP connection attempt may take.
pub const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Which addresses of a name to use (`-4`/`--server-resolve-ipv4`, `-6`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Family {
    /// Both, IPv4 first.
    #[default]
    Any,
    V4,
    V6,
}

impl Family {
    /// From `-4`/`--server-resolve-ipv4` and `-6`/`--server-resolve-ipv6`.
    pub fn from_flags(ipv4_only: bool, ipv6_only: bool) -> Family {
        match (ipv4_only, ipv6_only) {
            (true, _) => Family::V4,
            (false, true) => Family::V6,
            (false, false) => Family::Any,
        }
    }

    /// The family of `addr`.
    pub fn of(addr: &SocketAddr) -> Family {
        if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

#[derive(Clone, Debug)]
pub struct Target {
    pub proto: ServerProto,
    pub host: String,
    pub port: u16,
    pub family: Family,
    pub source_port: Option<u16>,
    pub http: HttpVia,
    pub raw: RawOptions,
}

/// What the raw modes take besides the target.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawOptions {
    /// `-Q`: the IP source address to write (else the one the route uses).
    pub spoof_source: Option<Ipv4Addr>,
    pub icmp_type: u8,
    pub icmp_code: u8,
}

/// How an `-P http` request goes out.
#[derive(Clone, Debug, Default)]
pub struct HttpVia {
    /// The User-Agent; servers want it to start with `Fwknop`.
    pub user_agent: String,
    /// `HOST[:PORT]` (optionally `http://HOST[:PORT]`) of an HTTP proxy.
    pub proxy: Option<String>,
}

impl Target {
    /// The server's addresses, in the order they are tried.
    pub fn addresses(&self) -> Result<Vec<SocketAddr>> {
        addresses("SPA server", &self.host, self.port, self.family)
    }
}

/// The addresses of `host` (a name or a literal) in `family`, IPv4 first, with
/// `port`; `what` names the host in errors ("SPA server").
pub fn addresses(what: &str, host: &str, port: u16, family: Family) -> Result<Vec<SocketAddr>> {
    // `[2001:db8::1]` is taken as the literal it brackets.
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let mut addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| ClientError::Send(format!("cannot resolve {what} {host}: {e}")))?
        .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()))
        .filter(|a| match family {
            Family::Any => true,
            Family::V4 => a.is_ipv4(),
            Family::V6 => a.is_ipv6(),
        })
        .collect();
    addrs.sort_by_key(|a| a.is_ipv6());
    if addrs.is_empty() {
        let which = match family {
            Family::Any => "",
            Family::V4 => " IPv4",
            Family::V6 => " IPv6",
        };
        return Err(ClientError::Send(format!(
            "{what} {host} has no{which} address"
        )));
    }
    Ok(addrs)
}

/// The unspecified address of `to`'s family with `port`, to bind a socket to.
pub(crate) fn any_of_family(to: &SocketAddr, port: u16) -> SocketAddr {
    let ip = match to {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, port)
}

/// One datagram from a socket connected to the first address that takes it:
/// connecting lets the kernel pick (and tell) the source address.
fn send_udp(wire: &[u8], t: &Target, addrs: &[SocketAddr]) -> Result<Route> {
    let mut last = None;
    for addr in addrs {
        let local = any_of_family(addr, t.source_port.unwrap_or(0));
        let sock = UdpSocket::bind(local).map_err(|e| {
            ClientError::Send(format!(
                "cannot open a UDP socket on port {}: {e}",
                local.port()
            ))
        })?;
        match sock.connect(addr).and_then(|()| sock.send(wire)) {
            Ok(n) => {
                return Ok(Route {
                    bytes: n,
                    to: *addr,
                    from: sock.local_addr().ok().map(Source::Socket),
                })
            }
            Err(e) => last = Some(format!("{addr}: {e}")),
        }
    }
    Err(ClientError::Send(format!(
        "could not send the SPA packet over udp: {}",
        last.unwrap_or_default()
    )))
}

fn tcp_connect(addr: &SocketAddr, source_port: Option<u16>) -> std::io::Result<TcpStream> {
    let Some(port) = source_port else {
        return TcpStream::connect_timeout(addr, TCP_CONNECT_TIMEOUT);
    };
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(*addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    sock.set_reuse_address(true)?;
    sock.bind(&any_of_family(addr, port).into())?;
    sock.connect_timeout(&(*addr).into(), TCP_CONNECT_TIMEOUT)?;
    Ok(sock.into())
}

fn send_tcp(wire: &[u8], t: &Target, addrs: &[SocketAddr]) -> Result<Route> {
    let mut last = None;
    for addr in addrs {
        match tcp_connect(addr, t.source_port) {
            Ok(mut stream) => {
                stream
                    .write_all(wire)
                    .and_then(|_| stream.flush())
                    .map_err(|e| {
                        ClientError::Send(format!(
                            "could not send the SPA packet to {addr} over tcp: {e}"
                        ))
                    })?;
                let from = stream.local_addr().ok().map(Source::Socket);
                let _ = stream.shutdown(std::net::Shutdown::Both);
                return Ok(Route {
                    bytes: wire.len(),
                    to: *addr,
                    from,
                });
            }
            Err(e) => last = Some(format!("{addr}: {e}")),
        }
    }
    Err(ClientError::Send(format!(
        "could not connect to the SPA server over tcp: {}",
        last.unwrap_or_default()
    )))
}

/// The request carrying `wire` and where it goes: the server, or the proxy (on
/// its own port if it names one, else on the server port, as fwknop).
fn http_request(wire: &str, t: &Target) -> Result<(String, Target)> {
    // An IPv6 literal is bracketed in the Host header and in URLs (RFC 3986).
    let server = match t.host.parse::<Ipv6Addr>() {
        Ok(v6) => format!("[{v6}]"),
        Err(_) => t.host.clone(),
    };
    let Some(proxy) = &t.http.proxy else {
        let request = spa_core::http::request(wire, &server, &t.http.user_agent);
        return Ok((request, t.clone()));
    };
    let proxy = match proxy.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("http://") => &proxy[7..],
        _ => proxy.as_str(),
    };
    let bad_port = || {
        ClientError::Usage(format!(
            "-H/--http-proxy: the port in `{proxy}` must be 1-65535"
        ))
    };
    // HOST[:PORT], where HOST may be a bracketed IPv6 literal.
    let (host, port) = match proxy.strip_prefix('[').and_then(|p| p.split_once(']')) {
        Some((v6, rest)) => (v6, rest.strip_prefix(':')),
        None => match proxy.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (proxy, None),
        },
    };
    let port = match port {
        None => t.port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(bad_port)?,
    };
    let request = spa_core::http::proxy_request(wire, &server, host, &t.http.user_agent);
    let via = Target {
        host: host.to_string(),
        port,
        ..t.clone()
    };
    Ok((request, via))
}

/// One raw datagram to the server's first address: an IPv4 datagram built
/// here, or for `-P icmp` to an IPv6 server an ICMPv6 message (the kernel
/// writes the IPv6 header and the checksum). Without `-S` the TCP/UDP source
/// port is a random high port (fwknop writes 0).
fn send_raw(wire: &[u8], t: &Target, addrs: &[SocketAddr], carrier: Carrier) -> Result<Route> {
    let destination = match addrs[0] {
        SocketAddr::V4(v4) => v4,
        SocketAddr::V6(v6) => {
            return match carrier {
                Carrier::Icmp { icmp_type, code } if t.raw.spoof_source.is_none() => {
                    Ok(Route {
                        bytes: raw::send_icmpv6(wire, *v6.ip(), icmp_type, code)?,
                        to: SocketAddr::V6(v6),
                        // The kernel writes the IPv6 header, source included.
                        from: None,
                    })
                }
                _ => Err(ClientError::Usage(format!(
                    "-P {} {}is IPv4 only (as fwknop), and {} is IPv6: use -P udp, tcp, \
                     http or icmp, or -4",
                    t.proto.name(),
                    if t.raw.spoof_source.is_some() {
                        "with -Q "
                    } else {
                        ""
                    },
                    v6.ip()
                ))),
            };
        }
    };
    let source_ip = match t.raw.spoof_source {
        Some(ip) => ip,
        None => raw::route_source(*destination.ip())?,
    };
    let knock = RawKnock {
        carrier,
        source: SocketAddrV4::new(
            source_ip,
            t.source_port.unwrap_or_else(crate::random::high_port),
        ),
        destination,
        ip_id: u16::from_be_bytes(crate::random::bytes()),
        echo_id: u16::from_be_bytes(crate::random::bytes()),
    };
    let from = match carrier {
        Carrier::Icmp { .. } => Source::Address(IpAddr::V4(source_ip)),
        Carrier::Tcp | Carrier::Udp => Source::Socket(SocketAddr::V4(knock.source)),
    };
    Ok(Route {
        bytes: raw::send(&knock.datagram(wire)?, destination, t.proto.name())?,
        to: SocketAddr::V4(destination),
        from: Some(from),
    })
}

/// Where a packet left from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The local end of the socket it was sent on (or the IP and port a raw
    /// TCP/UDP datagram was written with).
    Socket(SocketAddr),
    /// The IP source address of a raw ICMP datagram.
    Address(IpAddr),
}

/// One datagram or connection that carried the packet.
struct Route {
    bytes: usize,
    to: SocketAddr,
    from: Option<Source>,
}

/// What [`send`] did: shown by `-v`.
#[derive(Clone, Debug)]
pub struct Sent {
    /// Bytes written: the packet, the HTTP request carrying it, or (raw
    /// modes) the whole datagram.
    pub bytes: usize,
    /// The name contacted (the server, or the proxy with `-H`) and its
    /// addresses in the order they are tried.
    pub host: String,
    pub resolved: Vec<SocketAddr>,
    /// True when `host` is the HTTP proxy.
    pub via_proxy: bool,
    /// Where the packet went and where from (`None`: the kernel chose).
    pub to: SocketAddr,
    pub from: Option<Source>,
}

/// Send `wire` to the target.
pub fn send(wire: &str, t: &Target) -> Result<Sent> {
    let (payload, via) = match t.proto {
        ServerProto::Http => {
            let (request, via) = http_request(wire, t)?;
            if request.len() >= spa_core::http::MAX_REQUEST_LEN {
                return Err(ClientError::Send(format!(
                    "the HTTP request would be {} bytes; fwknop servers take fewer than {}",
                    request.len(),
                    spa_core::http::MAX_REQUEST_LEN
                )));
            }
            (request, via)
        }
        _ => (wire.to_string(), t.clone()),
    };
    let resolved = via.addresses()?;
    let payload = payload.as_bytes();
    let route = match t.proto {
        ServerProto::Udp => send_udp(payload, t, &resolved)?,
        ServerProto::Tcp | ServerProto::Http => send_tcp(payload, &via, &resolved)?,
        ServerProto::TcpRaw => send_raw(payload, t, &resolved, Carrier::Tcp)?,
        ServerProto::UdpRaw => send_raw(payload, t, &resolved, Carrier::Udp)?,
        ServerProto::Icmp => {
            let carrier = Carrier::Icmp {
                icmp_type: t.raw.icmp_type,
                code: t.raw.icmp_code,
            };
            send_raw(payload, t, &resolved, carrier)?
        }
    };
    Ok(Sent {
        bytes: route.bytes,
        via_proxy: t.proto == ServerProto::Http && t.http.proxy.is_some(),
        host: via.host,
        resolved,
        to: route.to,
        from: route.from,
    })
}

/// Send binary bytes (a native packet) over UDP or TCP; the other transports
/// carry fwknop's text only.
pub fn send_bytes(payload: &[u8], t: &Target) -> Result<Sent> {
    let resolved = t.addresses()?;
    let route = match t.proto {
        ServerProto::Udp => send_udp(payload, t, &resolved)?,
        ServerProto::Tcp => send_tcp(payload, t, &resolved)?,
        other => {
            return Err(ClientError::Usage(format!(
                "native packets go over udp or tcp, not -P {}",
                other.name()
            )))
        }
    };
    Ok(Sent {
        bytes: route.bytes,
        via_proxy: false,
        host: t.host.clone(),
        resolved,
        to: route.to,
        from: route.from,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    #[test]
    fn udp_datagram_arrives() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let t = Target {
            proto: ServerProto::Udp,
            host: "127.0.0.1".into(),
            port: rx.local_addr().unwrap().port(),
            family: Family::Any,
            source_port: None,
            http: HttpVia::default(),
            raw: RawOptions::default(),
        };
        assert_eq!(send("hello-spa", &t).unwrap().bytes, 9);
        let mut buf = [0u8; 64];
        let (n, _) = rx.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello-spa");
    }

    #[test]
    fn tcp_stream_carries_packet() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut v = Vec::new();
            s.read_to_end(&mut v).unwrap();
            v
        });
        let t = Target {
            proto: ServerProto::Tcp,
            host: "127.0.0.1".into(),
            port,
            family: Family::Any,
            source_port: None,
            http: HttpVia::default(),
            raw: RawOptions::default(),
        };
        send("tcp-spa", &t).unwrap();
        assert_eq!(h.join().unwrap(), b"tcp-spa");
    }

    #[test]
    fn ipv6_literals_are_bracketed_in_requests_and_proxies() {
        let t = Target {
            proto: ServerProto::Http,
            host: "2001:db8::1".into(),
            port: 62201,
            family: Family::Any,
            source_port: None,
            http: HttpVia {
                user_agent: "Fwknop/test".into(),
                proxy: None,
            },
            raw: RawOptions::default(),
        };
        let (direct, _) = http_request("abc", &t).unwrap();
        assert!(direct.contains("\r\nHost: [2001:db8::1]\r\n"), "{direct}");
        let proxied = Target {
            http: HttpVia {
                user_agent: "Fwknop/test".into(),
                proxy: Some("http://[2001:db8::3128]:8080".into()),
            },
            ..t
        };
        let (request, via) = http_request("abc", &proxied).unwrap();
        assert!(
            request.starts_with("GET http://[2001:db8::1]/abc "),
            "{request}"
        );
        assert_eq!((via.host.as_str(), via.port), ("2001:db8::3128", 8080));
    }

    #[test]
    fn http_request_goes_to_the_server_or_the_proxy() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let h = std::thread::spawn(move || {
            let mut got = Vec::new();
            for _ in 0..2 {
                let (mut s, _) = l.accept().unwrap();
                let mut v = String::new();
                s.read_to_string(&mut v).unwrap();
                got.push(v);
            }
            got
        });
        let wire = "a+b/c".repeat(30);
        let direct = Target {
            proto: ServerProto::Http,
            host: "127.0.0.1".into(),
            port,
            family: Family::Any,
            source_port: None,
            http: HttpVia {
                user_agent: "Fwknop/test".into(),
                proxy: None,
            },
            raw: RawOptions::default(),
        };
        send(&wire, &direct).unwrap();
        // Through a "proxy" (the same listener), the server named in the URL.
        let proxied = Target {
            host: "spa.example".into(),
            port: 1,
            http: HttpVia {
                user_agent: "Fwknop/test".into(),
                proxy: Some(format!("http://127.0.0.1:{port}")),
            },
            ..direct.clone()
        };
        send(&wire, &proxied).unwrap();
        let got = h.join().unwrap();
        let path = "a-b_c".repeat(30);
        assert!(
            got[0].starts_with(&format!("GET /{path} HTTP/1.1\r\n")),
            "{}",
            got[0]
        );
        assert!(got[0].contains("\r\nHost: 127.0.0.1\r\n"));
        assert!(got[0].contains("\r\nUser-Agent: Fwknop/test\r\n"));
        assert!(
            got[1].starts_with(&format!("GET http://spa.example/{path} HTTP/1.1")),
            "{}",
            got[1]
        );
        let bad = Target {
            http: HttpVia {
                user_agent: String::new(),
                proxy: Some("proxy:99999".into()),
            },
            ..direct
        };
        assert!(send(&wire, &bad)
            .unwrap_err()
            .to_string()
            .contains("1-65535"));
    }

    #[test]
    fn refused_tcp_is_an_error() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let t = Target {
            proto: ServerProto::Tcp,
            host: "127.0.0.1".into(),
            port,
            family: Family::Any,
            source_port: None,
            http: HttpVia::default(),
            raw: RawOptions::default(),
        };
        assert!(send("x", &t).is_err());
    }
}
