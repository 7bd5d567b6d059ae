//! Putting the packet on the network: one UDP datagram (fwknop's default), a TCP
//! connection that carries it, an HTTP GET request over TCP (`-P http`, also
//! through a proxy), or one raw IPv4 datagram (`-P udpraw|tcpraw|icmp`, see
//! [`crate::raw`]). Like fwknop, only IPv4 addresses are used.

use crate::error::{ClientError, Result};
use crate::raw::{self, Carrier, RawKnock};
use crate::settings::ServerProto;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::Duration;

/// How long a TCP connection attempt may take.
pub const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct Target {
    pub proto: ServerProto,
    pub host: String,
    pub port: u16,
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
    /// The server's IPv4 addresses.
    pub fn addresses(&self) -> Result<Vec<SocketAddrV4>> {
        ipv4_addresses("SPA server", &self.host, self.port)
    }
}

/// The IPv4 addresses of `host` (a name or a literal), with `port`; `what` names
/// the host in errors ("SPA server").
pub fn ipv4_addresses(what: &str, host: &str, port: u16) -> Result<Vec<SocketAddrV4>> {
    let addrs: Vec<SocketAddrV4> = (host, port)
        .to_socket_addrs()
        .map_err(|e| ClientError::Send(format!("cannot resolve {what} {host}: {e}")))?
        .filter_map(|a| match a {
            SocketAddr::V4(v4) => Some(v4),
            SocketAddr::V6(_) => None,
        })
        .collect();
    if addrs.is_empty() {
        return Err(ClientError::Send(format!(
            "{what} {host} has no IPv4 address (postern sends over IPv4 only, as fwknop)"
        )));
    }
    Ok(addrs)
}

fn send_udp(wire: &[u8], t: &Target, addrs: &[SocketAddrV4]) -> Result<usize> {
    let local = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, t.source_port.unwrap_or(0));
    let sock = UdpSocket::bind(local).map_err(|e| {
        ClientError::Send(format!(
            "cannot open a UDP socket on port {}: {e}",
            local.port()
        ))
    })?;
    let mut last = None;
    for addr in addrs {
        match sock.send_to(wire, addr) {
            Ok(n) => return Ok(n),
            Err(e) => last = Some(format!("{addr}: {e}")),
        }
    }
    Err(ClientError::Send(format!(
        "could not send the SPA packet over udp: {}",
        last.unwrap_or_default()
    )))
}

fn tcp_connect(addr: &SocketAddrV4, source_port: Option<u16>) -> std::io::Result<TcpStream> {
    let Some(port) = source_port else {
        return TcpStream::connect_timeout(&SocketAddr::V4(*addr), TCP_CONNECT_TIMEOUT);
    };
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    sock.set_reuse_address(true)?;
    sock.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).into())?;
    sock.connect_timeout(&SocketAddr::V4(*addr).into(), TCP_CONNECT_TIMEOUT)?;
    Ok(sock.into())
}

fn send_tcp(wire: &[u8], t: &Target, addrs: &[SocketAddrV4]) -> Result<usize> {
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
                let _ = stream.shutdown(std::net::Shutdown::Both);
                return Ok(wire.len());
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
    let Some(proxy) = &t.http.proxy else {
        let request = spa_core::http::request(wire, &t.host, &t.http.user_agent);
        return Ok((request, t.clone()));
    };
    let proxy = match proxy.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("http://") => &proxy[7..],
        _ => proxy.as_str(),
    };
    let (host, port) = match proxy.split_once(':') {
        None => (proxy, t.port),
        Some((host, port)) => match port.parse::<u16>() {
            Ok(p) if p > 0 => (host, p),
            _ => {
                return Err(ClientError::Usage(format!(
                    "-H/--http-proxy: the port in `{proxy}` must be 1-65535"
                )))
            }
        },
    };
    let request = spa_core::http::proxy_request(wire, &t.host, host, &t.http.user_agent);
    let via = Target {
        host: host.to_string(),
        port,
        ..t.clone()
    };
    Ok((request, via))
}

/// One raw datagram to the server's first IPv4 address. Without `-S` the TCP/UDP
/// source port is a random high port (fwknop writes 0).
fn send_raw(wire: &[u8], t: &Target, carrier: Carrier) -> Result<usize> {
    let destination = t.addresses()?[0];
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
    raw::send(&knock.datagram(wire)?, destination, t.proto.name())
}

/// Send `wire` to the target; returns the bytes sent.
pub fn send(wire: &str, t: &Target) -> Result<usize> {
    match t.proto {
        ServerProto::Udp => send_udp(wire.as_bytes(), t, &t.addresses()?),
        ServerProto::Tcp => send_tcp(wire.as_bytes(), t, &t.addresses()?),
        ServerProto::Http => {
            let (request, via) = http_request(wire, t)?;
            if request.len() >= spa_core::http::MAX_REQUEST_LEN {
                return Err(ClientError::Send(format!(
                    "the HTTP request would be {} bytes; fwknop servers take fewer than {}",
                    request.len(),
                    spa_core::http::MAX_REQUEST_LEN
                )));
            }
            send_tcp(request.as_bytes(), &via, &via.addresses()?)
        }
        ServerProto::TcpRaw => send_raw(wire.as_bytes(), t, Carrier::Tcp),
        ServerProto::UdpRaw => send_raw(wire.as_bytes(), t, Carrier::Udp),
        ServerProto::Icmp => {
            let carrier = Carrier::Icmp {
                icmp_type: t.raw.icmp_type,
                code: t.raw.icmp_code,
            };
            send_raw(wire.as_bytes(), t, carrier)
        }
    }
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
            source_port: None,
            http: HttpVia::default(),
            raw: RawOptions::default(),
        };
        assert_eq!(send("hello-spa", &t).unwrap(), 9);
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
            source_port: None,
            http: HttpVia::default(),
            raw: RawOptions::default(),
        };
        send("tcp-spa", &t).unwrap();
        assert_eq!(h.join().unwrap(), b"tcp-spa");
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
            source_port: None,
            http: HttpVia::default(),
            raw: RawOptions::default(),
        };
        assert!(send("x", &t).is_err());
    }
}
