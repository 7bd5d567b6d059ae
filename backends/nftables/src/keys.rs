//! Grants as set elements: which set, and the key bytes the kernel stores.

use spa_core::firewall::Rule;
use spa_core::request::Proto;
use std::net::IpAddr;

/// The two grant sets. Names are fixed so a restarted daemon finds its grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GrantSet {
    /// `ipv4_addr . inet_proto . inet_service`
    V4,
    /// `ipv6_addr . inet_proto . inet_service`
    V6,
}

impl GrantSet {
    pub const ALL: [GrantSet; 2] = [GrantSet::V4, GrantSet::V6];

    pub fn name(self) -> &'static str {
        match self {
            GrantSet::V4 => "grants4",
            GrantSet::V6 => "grants6",
        }
    }

    pub fn of(addr: IpAddr) -> GrantSet {
        match addr {
            IpAddr::V4(_) => GrantSet::V4,
            IpAddr::V6(_) => GrantSet::V6,
        }
    }

    /// The nft type name of the address part.
    pub fn addr_type(self) -> &'static str {
        match self {
            GrantSet::V4 => "ipv4_addr",
            GrantSet::V6 => "ipv6_addr",
        }
    }
}

pub fn proto_number(proto: Proto) -> u8 {
    match proto {
        Proto::Tcp => libc::IPPROTO_TCP as u8,
        Proto::Udp => libc::IPPROTO_UDP as u8,
    }
}

/// Key of `source . proto . port` as nft lays out a concatenation: each part in
/// network order, zero-padded to a 4-byte register (12 bytes for IPv4, 24 for IPv6).
pub fn key_bytes(rule: &Rule) -> Vec<u8> {
    let mut key = Vec::with_capacity(24);
    match rule.source {
        IpAddr::V4(a) => key.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => key.extend_from_slice(&a.octets()),
    }
    key.extend_from_slice(&[proto_number(rule.proto), 0, 0, 0]);
    key.extend_from_slice(&rule.port.to_be_bytes());
    key.extend_from_slice(&[0, 0]);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(src: &str, proto: Proto, port: u16) -> Rule {
        Rule { source: src.parse().unwrap(), proto, port, nat: None }
    }

    #[test]
    fn ipv4_key_is_three_padded_registers() {
        let k = key_bytes(&rule("10.1.2.3", Proto::Tcp, 22));
        assert_eq!(k, [10, 1, 2, 3, 6, 0, 0, 0, 0, 22, 0, 0]);
    }

    #[test]
    fn ipv6_key_is_24_bytes() {
        let k = key_bytes(&rule("fd00::1", Proto::Udp, 0x1234));
        assert_eq!(k.len(), 24);
        assert_eq!(&k[..2], &[0xfd, 0]);
        assert_eq!(&k[16..], &[17, 0, 0, 0, 0x12, 0x34, 0, 0]);
        assert_eq!(GrantSet::of("fd00::1".parse().unwrap()), GrantSet::V6);
    }
}
