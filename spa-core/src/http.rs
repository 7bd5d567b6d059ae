//! SPA over HTTP (fwknop's `-P http`): the packet travels as the path of a GET
//! request, with the base64 characters `+` and `/` written as `-` and `_` so the
//! path needs no escaping. The server (ENABLE_SPA_OVER_HTTP) takes the path back
//! out and undoes the substitution before the usual checks.

use crate::packet::MIN_WIRE_LEN;
use std::net::Ipv4Addr;

/// fwknop's limit on the whole request.
pub const MAX_REQUEST_LEN: usize = 2000;

/// The User-Agent fwknop sends, and that fwknopd requires unless told otherwise.
pub const USER_AGENT_PREFIX: &str = "Fwknop";

/// The path form of `wire`.
fn to_path(wire: &str) -> String {
    wire.chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect()
}

/// A request straight to the server (`host` is its name or address).
pub fn request(wire: &str, host: &str, user_agent: &str) -> String {
    format!(
        "GET /{} HTTP/1.1\r\nUser-Agent: {user_agent}\r\nAccept: */*\r\nHost: {host}\r\n\
         Connection: close\r\n\r\n",
        to_path(wire)
    )
}

/// A request to an HTTP proxy, which passes it on to `server`.
pub fn proxy_request(wire: &str, server: &str, proxy: &str, user_agent: &str) -> String {
    format!(
        "GET http://{server}/{} HTTP/1.1\r\nUser-Agent: {user_agent}\r\nAccept: */*\r\n\
         Host: {proxy}\r\nConnection: close\r\n\r\n",
        to_path(wire)
    )
}

/// What a received payload is, seen as a possible SPA-over-HTTP request.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// Not a GET request: the payload is judged as it is.
    NotHttp,
    /// The SPA packet the request carried, in its wire form.
    Spa(Vec<u8>),
    /// A GET request that cannot carry a knock.
    Refused(&'static str),
}

/// The address an `X-Forwarded-For:` header (any case) names, as fwknopd reads it:
/// the value up to the first whitespace, an IPv4 address or nothing.
pub fn forwarded_for(request: &[u8]) -> Option<Ipv4Addr> {
    const HEADER: &[u8] = b"x-forwarded-for: ";
    let at = request
        .windows(HEADER.len())
        .position(|w| w.eq_ignore_ascii_case(HEADER))?;
    let value = &request[at + HEADER.len()..];
    let end = value
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .unwrap_or(value.len());
    std::str::from_utf8(&value[..end]).ok()?.parse().ok()
}

/// Take the SPA packet out of a GET request, as fwknopd does: the request must
/// start with `GET /` (any case) and, unless `any_user_agent`, name a
/// `User-Agent: Fwknop…`; the path runs up to the first whitespace.
pub fn receive(payload: &[u8], any_user_agent: bool) -> Received {
    let Some(head) = payload.get(..5) else {
        return Received::NotHttp;
    };
    if !head.eq_ignore_ascii_case(b"GET /") {
        return Received::NotHttp;
    }
    let user_agent = format!("User-Agent: {USER_AGENT_PREFIX}");
    if !any_user_agent
        && !payload
            .windows(user_agent.len())
            .any(|w| w == user_agent.as_bytes())
    {
        return Received::Refused("HTTP request without a Fwknop User-Agent");
    }
    let path = &payload[5..];
    let end = path
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .unwrap_or(path.len());
    if end < MIN_WIRE_LEN {
        return Received::Refused("HTTP request path too short for an SPA packet");
    }
    Received::Spa(
        path[..end]
            .iter()
            .map(|&b| match b {
                b'-' => b'+',
                b'_' => b'/',
                b => b,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const WIRE: &str = "8R/kXb+0Vp2Q1d5y6pO3yQ7x/Uq3l+Hn5K9kV4k2m0Q8u3k1dH5yZ7c9f2a4e6g8i0k2m4o6q8s0u2w4y6A8C0E2G4I6K8M0O2Q4S6U8W0Y2a4c6e8g0i2k4m6o8q0s2u4w6y8A0C2E4G6I8K0M2O4Q6S8U0W2Y4";

    #[test]
    fn requests_look_like_fwknops() {
        let r = request(WIRE, "192.0.2.7", "Fwknop/2.6.10");
        assert!(r.starts_with("GET /8R_kXb-0Vp2Q"), "{r}");
        assert!(!r[5..r.find(" HTTP/1.1").unwrap()].contains(['+', '/']));
        assert!(r.ends_with(
            " HTTP/1.1\r\nUser-Agent: Fwknop/2.6.10\r\nAccept: */*\r\nHost: 192.0.2.7\r\nConnection: close\r\n\r\n"
        ));
        let p = proxy_request(WIRE, "192.0.2.7", "proxy:3128", "Fwknop/2.6.10");
        assert!(p.starts_with("GET http://192.0.2.7/8R_kXb-"), "{p}");
        assert!(p.contains("\r\nHost: proxy:3128\r\n"));
    }

    #[test]
    fn the_packet_comes_back_out() {
        let r = request(WIRE, "h", "Fwknop/2.6.10");
        assert_eq!(receive(r.as_bytes(), false), Received::Spa(WIRE.into()));
        let lower = r.replacen("GET", "get", 1);
        assert_eq!(receive(lower.as_bytes(), false), Received::Spa(WIRE.into()));
    }

    #[test]
    fn forwarded_for_headers() {
        let r = |h: &str| format!("GET /x HTTP/1.1\r\n{h}\r\nHost: h\r\n\r\n");
        let ip = Some(Ipv4Addr::new(192, 0, 2, 55));
        assert_eq!(
            forwarded_for(r("X-Forwarded-For: 192.0.2.55").as_bytes()),
            ip
        );
        assert_eq!(
            forwarded_for(r("x-forwarded-for: 192.0.2.55").as_bytes()),
            ip
        );
        assert_eq!(
            forwarded_for(r("X-Forwarded-For: proxy.example").as_bytes()),
            None
        );
        assert_eq!(
            forwarded_for(r("X-Forwarded-For: 2001:db8::1").as_bytes()),
            None
        );
        assert_eq!(forwarded_for(r("Via: 1.1 proxy").as_bytes()), None);
    }

    #[test]
    fn other_payloads_and_bad_requests() {
        assert_eq!(receive(WIRE.as_bytes(), false), Received::NotHttp);
        assert_eq!(receive(b"GET", false), Received::NotHttp);
        assert_eq!(receive(b"POST /x HTTP/1.1\r\n", false), Received::NotHttp);
        let curl = request(WIRE, "h", "curl/8.0");
        assert!(matches!(
            receive(curl.as_bytes(), false),
            Received::Refused(_)
        ));
        assert_eq!(receive(curl.as_bytes(), true), Received::Spa(WIRE.into()));
        let short = request(&WIRE[..MIN_WIRE_LEN - 1], "h", "Fwknop/2.6.10");
        assert!(matches!(
            receive(short.as_bytes(), false),
            Received::Refused(_)
        ));
        assert!(matches!(
            receive(b"GET / HTTP/1.1\r\nUser-Agent: Fwknop\r\n", false),
            Received::Refused(_)
        ));
    }
}
