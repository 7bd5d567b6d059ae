//! The message field, typed: which address wants which ports, NAT targets, commands.

use crate::error::{Result, SpaError};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Longest command fwknop sends.
pub const MAX_CMD_LEN: usize = 1400;
const MAX_HOSTNAME_LEN: usize = 70;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Proto {
    type Err = SpaError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(SpaError::UnknownName {
                kind: "protocol",
                value: s.to_string(),
                expected: "tcp, udp",
            }),
        }
    }
}

/// One `proto/port` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProtoPort {
    pub proto: Proto,
    pub port: u16,
}

impl fmt::Display for ProtoPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.proto, self.port)
    }
}

fn parse_port(s: &str) -> Result<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SpaError::field(
            "port",
            format!("`{s}` is not a port number 1..65535"),
        ));
    }
    s.parse::<u16>()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| SpaError::field("port", format!("`{s}` is not a port number 1..65535")))
}

impl FromStr for ProtoPort {
    type Err = SpaError;
    fn from_str(s: &str) -> Result<Self> {
        let (proto, port) = s.split_once('/').ok_or_else(|| {
            SpaError::field("access", format!("`{s}` is not proto/port, e.g. tcp/22"))
        })?;
        Ok(ProtoPort {
            proto: proto.parse()?,
            port: parse_port(port)?,
        })
    }
}

/// Parse a list like `tcp/22,udp/53` (the client's -A).
pub fn parse_proto_ports(list: &str) -> Result<Vec<ProtoPort>> {
    list.split(',').map(|s| s.trim().parse()).collect()
}

pub fn format_proto_ports(ports: &[ProtoPort]) -> String {
    ports
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The address a knock asks access for: an IPv4 address as fwknop writes it,
/// or (postern's extension, the form of fwknop's IPv6 work) an IPv6 address
/// without brackets. An IPv4-mapped IPv6 address is its IPv4 address; `0.0.0.0`
/// and `::` mean "the packet's sender".
fn parse_allow_ip(s: &str) -> Result<IpAddr> {
    let not_an_address = || SpaError::field("allow_ip", format!("`{s}` is not an IP address"));
    if s.len() <= 15 && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return s
            .parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| not_an_address());
    }
    // The longest text form: 6 groups, then an IPv4 address (45 bytes).
    if s.len() > 45
        || !s
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
    {
        return Err(not_an_address());
    }
    let v6: Ipv6Addr = s.parse().map_err(|_| not_an_address())?;
    Ok(IpAddr::V6(v6).to_canonical())
}

/// `ALLOW_IP,proto/port[,proto/port…]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessRequest {
    pub allow_ip: IpAddr,
    pub ports: Vec<ProtoPort>,
}

impl AccessRequest {
    pub fn parse(msg: &str) -> Result<Self> {
        if msg.len() >= crate::message::MAX_MESSAGE_FIELD {
            return Err(SpaError::field("message", "too long"));
        }
        let (ip, ports) = msg
            .split_once(',')
            .ok_or_else(|| SpaError::field("message", "expected ALLOW_IP,proto/port"))?;
        let allow_ip = parse_allow_ip(ip)?;
        let ports = parse_proto_ports(ports)?;
        Ok(AccessRequest { allow_ip, ports })
    }
}

impl fmt::Display for AccessRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.allow_ip, format_proto_ports(&self.ports))
    }
}

/// `ALLOW_IP,command string`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandRequest {
    pub allow_ip: IpAddr,
    pub command: String,
}

impl CommandRequest {
    pub fn parse(msg: &str) -> Result<Self> {
        if msg.len() >= MAX_CMD_LEN {
            return Err(SpaError::field("command", "too long"));
        }
        let (ip, cmd) = msg
            .split_once(',')
            .ok_or_else(|| SpaError::field("message", "expected ALLOW_IP,command"))?;
        let allow_ip = parse_allow_ip(ip)?;
        if cmd.is_empty() {
            return Err(SpaError::field("command", "empty"));
        }
        Ok(CommandRequest {
            allow_ip,
            command: cmd.to_string(),
        })
    }
}

/// `internal_host,port` of a NAT request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatTarget {
    pub host: String,
    pub port: u16,
}

impl NatTarget {
    pub fn parse(msg: &str) -> Result<Self> {
        let (host, port) = msg
            .split_once(',')
            .ok_or_else(|| SpaError::field("nat_access", "expected host,port"))?;
        if port.contains(',') {
            return Err(SpaError::field("nat_access", "exactly one comma expected"));
        }
        if host.is_empty()
            || host.len() > MAX_HOSTNAME_LEN
            || host.contains([' ', '/', '?', '"', '\'', '\\'])
        {
            return Err(SpaError::field(
                "nat_access",
                format!("`{host}` is not a host name or address"),
            ));
        }
        Ok(NatTarget {
            host: host.to_string(),
            port: parse_port(port)?,
        })
    }
}

impl fmt::Display for NatTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.host, self.port)
    }
}

pub(crate) fn validate_access_msg(msg: &str) -> Result<()> {
    AccessRequest::parse(msg).map(|_| ())
}

pub(crate) fn validate_cmd_msg(msg: &str) -> Result<()> {
    CommandRequest::parse(msg).map(|_| ())
}

pub(crate) fn validate_nat_access(msg: &str) -> Result<()> {
    NatTarget::parse(msg).map(|_| ())
}

/// What a decoded message asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Access(AccessRequest),
    Command(CommandRequest),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_addresses_are_ipv4_as_fwknop_or_ipv6() {
        let ip = |m: &str| AccessRequest::parse(m).map(|r| r.allow_ip);
        assert_eq!(
            ip("10.0.0.5,tcp/22").unwrap(),
            "10.0.0.5".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            ip("2001:db8::1,tcp/22").unwrap(),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(ip("::,tcp/22").unwrap(), "::".parse::<IpAddr>().unwrap());
        // A mapped IPv4 address is that IPv4 address (one rule family, not two).
        assert_eq!(
            ip("::ffff:10.0.0.5,tcp/22").unwrap(),
            "10.0.0.5".parse::<IpAddr>().unwrap()
        );
        let cmd = CommandRequest::parse("fd00::9,touch /x").unwrap();
        assert_eq!(cmd.allow_ip, "fd00::9".parse::<IpAddr>().unwrap());
        // Written back as read: fwknop's form for IPv4, no brackets for IPv6.
        let req = AccessRequest::parse("2001:db8::1,tcp/22,udp/53").unwrap();
        assert_eq!(req.to_string(), "2001:db8::1,tcp/22,udp/53");
    }

    #[test]
    fn what_is_not_an_address_is_refused() {
        for bad in [
            "10.0.0,tcp/22",
            "10.0.0.256,tcp/22",
            "[2001:db8::1],tcp/22",
            "2001:db8::1%eth0,tcp/22",
            "2001:db8:::1,tcp/22",
            "fe80::1/64,tcp/22",
            "host.example,tcp/22",
            ":::::::::::::::::::::::::::::::::::::::::::::::,tcp/22",
            ",tcp/22",
        ] {
            assert!(AccessRequest::parse(bad).is_err(), "{bad}");
        }
    }
}
