//! The request inside the Noise message: a fixed, versioned, big-endian layout with
//! exactly one encoding per request (decode refuses anything else), see
//! `docs/protocol.md` "Payload".
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::Error;

/// The payload layout version this crate writes and reads.
pub const PAYLOAD_VERSION: u8 = 1;
/// At most this many proto/port pairs in one request (keeps the packet small).
pub const MAX_PORTS: usize = 16;

const FLAG_NAT: u8 = 1 << 0;
const FLAG_TIMEOUT: u8 = 1 << 1;
const FLAG_SOURCE_PORT: u8 = 1 << 2;
const FLAG_TOTP: u8 = 1 << 3;
const KNOWN_FLAGS: u8 = FLAG_NAT | FLAG_TIMEOUT | FLAG_SOURCE_PORT | FLAG_TOTP;
/// TOTP codes have at most 8 digits (RFC 4226 §5.3).
const TOTP_MAX: u32 = 99_999_999;

/// An address as carried in the payload.
pub type Address = IpAddr;

/// Transport protocol of an access request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn wire(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }

    fn from_wire(b: u8) -> Option<Self> {
        match b {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            _ => None,
        }
    }

    /// `tcp` or `udp`, as fwknop's access requests spell them.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One `proto/port` pair; port 0 is never valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortSpec {
    pub proto: Proto,
    pub port: u16,
}

impl std::str::FromStr for PortSpec {
    type Err = Error;
    /// `tcp/22` or `udp/53`.
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::Request(format!("`{s}` is not proto/port (tcp/22, udp/53)"));
        let (proto, port) = s.split_once('/').ok_or_else(bad)?;
        let proto = match proto.to_ascii_lowercase().as_str() {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => return Err(bad()),
        };
        let port: u16 = port.parse().map_err(|_| bad())?;
        if port == 0 {
            return Err(bad());
        }
        Ok(PortSpec { proto, port })
    }
}

impl std::fmt::Display for PortSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.proto.name(), self.port)
    }
}

/// What a native knock asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// Seconds since the Unix epoch when the client sealed the packet.
    pub timestamp: u64,
    /// Random bytes chosen per packet (also in the replay key's transcript).
    pub nonce: [u8; 16],
    /// The address to allow.
    pub allow: Address,
    /// One or more proto/port pairs (at most [`MAX_PORTS`]).
    pub ports: Vec<PortSpec>,
    /// Optional NAT target (address and port), as fwknop's `-N`.
    pub nat: Option<(Address, u16)>,
    /// Optional client timeout in seconds, as fwknop's `--fw-timeout`.
    pub timeout: Option<u32>,
    /// Optional source port the client will connect from (source-port pinning).
    pub source_port: Option<u16>,
    /// Optional RFC 6238 code from the user's authenticator.
    pub totp: Option<u32>,
}

fn put_addr(out: &mut Vec<u8>, a: &Address) {
    match a {
        IpAddr::V4(v4) => {
            out.push(4);
            out.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.push(6);
            out.extend_from_slice(&v6.octets());
        }
    }
}

/// A bounds-checked reader over the decrypted bytes.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.bytes.len() < n {
            return Err(Error::Payload("truncated"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, Error> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, Error> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn addr(&mut self) -> Result<Address, Error> {
        match self.u8()? {
            4 => {
                let mut a = [0u8; 4];
                a.copy_from_slice(self.take(4)?);
                Ok(IpAddr::V4(Ipv4Addr::from(a)))
            }
            6 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(self.take(16)?);
                Ok(IpAddr::V6(Ipv6Addr::from(a)))
            }
            _ => Err(Error::Payload("address family")),
        }
    }
    fn port(&mut self) -> Result<u16, Error> {
        match self.u16()? {
            0 => Err(Error::Payload("port 0")),
            p => Ok(p),
        }
    }
}

impl Payload {
    /// Check what the encoding cannot carry.
    pub fn validate(&self) -> Result<(), Error> {
        if self.ports.is_empty() || self.ports.len() > MAX_PORTS {
            return Err(Error::Request(format!(
                "a request names 1 to {MAX_PORTS} proto/port pairs, not {}",
                self.ports.len()
            )));
        }
        if self.ports.iter().any(|p| p.port == 0) || self.nat.is_some_and(|(_, p)| p == 0) {
            return Err(Error::Request("port 0".into()));
        }
        if self.source_port == Some(0) {
            return Err(Error::Request("source port 0".into()));
        }
        if self.timeout == Some(0) {
            return Err(Error::Request("timeout 0".into()));
        }
        if self.totp.is_some_and(|c| c > TOTP_MAX) {
            return Err(Error::Request("a TOTP code has at most 8 digits".into()));
        }
        Ok(())
    }

    /// The v1 bytes (see `docs/protocol.md`).
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        self.validate()?;
        let mut flags = 0;
        for (set, bit) in [
            (self.nat.is_some(), FLAG_NAT),
            (self.timeout.is_some(), FLAG_TIMEOUT),
            (self.source_port.is_some(), FLAG_SOURCE_PORT),
            (self.totp.is_some(), FLAG_TOTP),
        ] {
            if set {
                flags |= bit;
            }
        }
        let mut out = Vec::with_capacity(128);
        out.push(PAYLOAD_VERSION);
        out.push(flags);
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.nonce);
        put_addr(&mut out, &self.allow);
        out.push(self.ports.len() as u8);
        for p in &self.ports {
            out.push(p.proto.wire());
            out.extend_from_slice(&p.port.to_be_bytes());
        }
        if let Some((addr, port)) = &self.nat {
            put_addr(&mut out, addr);
            out.extend_from_slice(&port.to_be_bytes());
        }
        if let Some(t) = self.timeout {
            out.extend_from_slice(&t.to_be_bytes());
        }
        if let Some(p) = self.source_port {
            out.extend_from_slice(&p.to_be_bytes());
        }
        if let Some(c) = self.totp {
            out.extend_from_slice(&c.to_be_bytes());
        }
        Ok(out)
    }

    /// Read v1 bytes; refuses unknown versions and flags, zero ports and trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader { bytes };
        if r.u8()? != PAYLOAD_VERSION {
            return Err(Error::Payload("version"));
        }
        let flags = r.u8()?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(Error::Payload("unknown flags"));
        }
        let timestamp = r.u64()?;
        let mut nonce = [0u8; 16];
        nonce.copy_from_slice(r.take(16)?);
        let allow = r.addr()?;
        let count = r.u8()? as usize;
        if count == 0 || count > MAX_PORTS {
            return Err(Error::Payload("port count"));
        }
        let mut ports = Vec::with_capacity(count);
        for _ in 0..count {
            let proto = Proto::from_wire(r.u8()?).ok_or(Error::Payload("protocol"))?;
            ports.push(PortSpec {
                proto,
                port: r.port()?,
            });
        }
        let nat = if flags & FLAG_NAT != 0 {
            Some((r.addr()?, r.port()?))
        } else {
            None
        };
        let timeout = if flags & FLAG_TIMEOUT != 0 {
            match r.u32()? {
                0 => return Err(Error::Payload("timeout 0")),
                t => Some(t),
            }
        } else {
            None
        };
        let source_port = if flags & FLAG_SOURCE_PORT != 0 {
            Some(r.port()?)
        } else {
            None
        };
        let totp = if flags & FLAG_TOTP != 0 {
            match r.u32()? {
                c if c > TOTP_MAX => return Err(Error::Payload("TOTP code")),
                c => Some(c),
            }
        } else {
            None
        };
        if !r.bytes.is_empty() {
            return Err(Error::Payload("trailing bytes"));
        }
        Ok(Payload {
            timestamp,
            nonce,
            allow,
            ports,
            nat,
            timeout,
            source_port,
            totp,
        })
    }

    /// Whether the packet's time is within `max_age` seconds of `now`, either way
    /// (fwknopd's MAX_SPA_PACKET_AGE rule, applied to clocks ahead too).
    pub fn fresh(&self, now: u64, max_age: u64) -> bool {
        now.abs_diff(self.timestamp) <= max_age
    }
}

impl Payload {
    /// A request with a fresh random nonce and no options.
    pub fn new(allow: Address, ports: Vec<PortSpec>, timestamp: u64) -> Result<Self, Error> {
        let mut nonce = [0u8; 16];
        crate::error::random(&mut nonce)?;
        let p = Payload {
            timestamp,
            nonce,
            allow,
            ports,
            nat: None,
            timeout: None,
            source_port: None,
            totp: None,
        };
        p.validate()?;
        Ok(p)
    }
}
