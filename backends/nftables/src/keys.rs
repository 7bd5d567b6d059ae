//! Grants as set and map elements: which sets, and the bytes the kernel stores.
//!
//! A plain grant is one element of `grants4`/`grants6`, or with a destination
//! (ENABLE_DESTINATION_RULE) of `grantsdst4`/`grantsdst6`. A NAT grant is one
//! element in each set or map its kind needs (see [`elements`]), every one
//! carrying the whole grant in its comment (`nat_<port>_<to_addr>_<to_port>`
//! plus `_local`, `_nodnat`, `_masq`, `_snat_<addr>`), so `list()` returns the
//! grant as it was made and a revoke finds all of its elements.

use nftables::expr::{Expression, NamedExpression};
use nftables::schema::SetType;
use spa_core::firewall::{Rule, Snat};
use spa_core::request::Proto;
use std::net::IpAddr;

/// Address family of a set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fam {
    V4,
    V6,
}

impl Fam {
    pub const ALL: [Fam; 2] = [Fam::V4, Fam::V6];

    pub fn of(addr: IpAddr) -> Fam {
        match addr {
            IpAddr::V4(_) => Fam::V4,
            IpAddr::V6(_) => Fam::V6,
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Fam::V4 => "4",
            Fam::V6 => "6",
        }
    }

    /// `ip` or `ip6`: payload protocol and NAT family.
    pub fn proto(self) -> &'static str {
        match self {
            Fam::V4 => "ip",
            Fam::V6 => "ip6",
        }
    }

    pub fn addr_type(self) -> SetType {
        match self {
            Fam::V4 => SetType::Ipv4Addr,
            Fam::V6 => SetType::Ipv6Addr,
        }
    }
}

/// What a set (or map) is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `saddr . proto . dport`: plain grants (input; prerouting with `docker`).
    Grants,
    /// `saddr . daddr . proto . dport`: plain grants bound to the address the
    /// knock was sent to (ENABLE_DESTINATION_RULE).
    GrantsDst,
    /// `saddr . proto . sport . dport`: plain grants pinned to the client's
    /// source port (a native knock's `source_port`).
    GrantsPin,
    /// `saddr . proto . to_port`: the input accept of local NAT.
    Local,
    /// `saddr . proto . port : to_addr`: DNAT address.
    DnatAddr,
    /// `saddr . proto . port : to_port`: DNAT port.
    DnatPort,
    /// `saddr . to_addr . proto . to_port`: forward accept.
    Fwd,
    /// `saddr . to_addr . proto . to_port`: masquerade.
    Masq,
    /// `saddr . to_addr . proto . to_port : snat_addr`: SNAT.
    Snat,
    /// FORWARD_ALL, no protocol or port: `saddr . to_addr`, forward accept.
    FwdAll,
    /// FORWARD_ALL: `saddr : to_addr`, DNAT of all the client's traffic.
    DnatAll,
    /// FORWARD_ALL: `saddr . to_addr`, masquerade.
    MasqAll,
    /// FORWARD_ALL: `saddr . to_addr : snat_addr`, SNAT.
    SnatAll,
}

impl Kind {
    /// The plain grant kinds (sets that always exist).
    pub const PLAIN: [Kind; 3] = [Kind::Grants, Kind::GrantsDst, Kind::GrantsPin];

    /// The NAT kinds (sets that exist with `nat = true`).
    pub const NAT: [Kind; 10] = [
        Kind::Local,
        Kind::DnatAddr,
        Kind::DnatPort,
        Kind::Fwd,
        Kind::Masq,
        Kind::Snat,
        Kind::FwdAll,
        Kind::DnatAll,
        Kind::MasqAll,
        Kind::SnatAll,
    ];

    fn stem(self) -> &'static str {
        match self {
            Kind::Grants => "grants",
            Kind::GrantsDst => "grantsdst",
            Kind::GrantsPin => "grantspin",
            Kind::Local => "local",
            Kind::DnatAddr => "dnat",
            Kind::DnatPort => "dnatport",
            Kind::Fwd => "fwd",
            Kind::Masq => "masq",
            Kind::Snat => "snat",
            Kind::FwdAll => "fwdall",
            Kind::DnatAll => "dnatall",
            Kind::MasqAll => "masqall",
            Kind::SnatAll => "snatall",
        }
    }

    /// Keys that hold both addresses (`saddr . daddr . proto . port`).
    pub fn two_addrs(self) -> bool {
        matches!(
            self,
            Kind::GrantsDst
                | Kind::Fwd
                | Kind::Masq
                | Kind::Snat
                | Kind::FwdAll
                | Kind::MasqAll
                | Kind::SnatAll
        )
    }

    /// Keys that end in `proto . port` (all but FORWARD_ALL's).
    pub fn has_ports(self) -> bool {
        !matches!(
            self,
            Kind::FwdAll | Kind::DnatAll | Kind::MasqAll | Kind::SnatAll
        )
    }
}

/// One of postern's sets or maps. Names are fixed so a restarted daemon finds
/// its grants: `grants4`, `local6`, `dnat4`, `dnatport4`, `fwd4`, `masq4`, `snat4`, ….
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SetId {
    pub kind: Kind,
    pub fam: Fam,
}

impl SetId {
    pub fn new(kind: Kind, fam: Fam) -> SetId {
        SetId { kind, fam }
    }

    pub fn name(self) -> String {
        format!("{}{}", self.kind.stem(), self.fam.suffix())
    }

    /// The set named `name`, if it is one of postern's.
    pub fn parse(name: &str) -> Option<SetId> {
        let all = Kind::PLAIN.into_iter().chain(Kind::NAT);
        all.flat_map(|k| Fam::ALL.map(|f| SetId::new(k, f)))
            .find(|s| s.name() == name)
    }

    /// The key's types, e.g. `ipv4_addr . inet_proto . inet_service`.
    pub fn key_types(self) -> Vec<SetType> {
        let mut types = vec![self.fam.addr_type()];
        if self.kind.two_addrs() {
            types.push(self.fam.addr_type());
        }
        if self.kind.has_ports() {
            types.push(SetType::InetProto);
            if self.kind == Kind::GrantsPin {
                types.push(SetType::InetService);
            }
            types.push(SetType::InetService);
        }
        types
    }

    /// The data type of a map, `None` for a set.
    pub fn data_type(self) -> Option<SetType> {
        match self.kind {
            Kind::DnatAddr | Kind::Snat | Kind::DnatAll | Kind::SnatAll => {
                Some(self.fam.addr_type())
            }
            Kind::DnatPort => Some(SetType::InetService),
            Kind::Grants
            | Kind::GrantsDst
            | Kind::GrantsPin
            | Kind::Local
            | Kind::Fwd
            | Kind::Masq
            | Kind::FwdAll
            | Kind::MasqAll => None,
        }
    }
}

/// One element to add or delete: key, map data, comment, in both encodings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element {
    pub set: SetId,
    /// Netlink key: each part in network order, padded to 4 bytes.
    pub key: Vec<u8>,
    /// Netlink map data (unpadded), for maps.
    pub data: Option<Vec<u8>>,
    pub comment: Option<String>,
    /// The key as nft JSON (`{"concat": [...]}`).
    pub key_json: Expression<'static>,
    /// The data as nft JSON.
    pub data_json: Option<Expression<'static>>,
}

pub fn proto_number(proto: Proto) -> u8 {
    match proto {
        Proto::Tcp => libc::IPPROTO_TCP as u8,
        Proto::Udp => libc::IPPROTO_UDP as u8,
    }
}

fn addr_bytes(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// A concatenated key `addrs… . proto . port`, as bytes and as JSON.
fn key(addrs: &[IpAddr], proto: Proto, port: u16) -> (Vec<u8>, Expression<'static>) {
    let mut bytes = Vec::with_capacity(40);
    let mut json = Vec::new();
    for a in addrs {
        bytes.extend(addr_bytes(*a));
        json.push(Expression::String(a.to_string().into()));
    }
    bytes.extend_from_slice(&[proto_number(proto), 0, 0, 0]);
    bytes.extend_from_slice(&port.to_be_bytes());
    bytes.extend_from_slice(&[0, 0]);
    json.push(Expression::String(proto.name().into()));
    json.push(Expression::Number(u32::from(port)));
    (bytes, Expression::Named(NamedExpression::Concat(json)))
}

/// A pinned grant's key `addr . proto . sport . dport`, as bytes and as JSON.
fn pinned_key(addr: IpAddr, proto: Proto, sport: u16, port: u16) -> (Vec<u8>, Expression<'static>) {
    let (mut bytes, json) = key(&[addr], proto, sport);
    bytes.extend_from_slice(&port.to_be_bytes());
    bytes.extend_from_slice(&[0, 0]);
    let Expression::Named(NamedExpression::Concat(mut parts)) = json else {
        unreachable!("key() builds a concatenation")
    };
    parts.push(Expression::Number(u32::from(port)));
    (bytes, Expression::Named(NamedExpression::Concat(parts)))
}

/// A key of addresses only (FORWARD_ALL): one address is a plain value, more
/// a concatenation.
fn addr_key(addrs: &[IpAddr]) -> (Vec<u8>, Expression<'static>) {
    let bytes = addrs.iter().flat_map(|a| addr_bytes(*a)).collect();
    let mut json: Vec<Expression<'static>> = addrs
        .iter()
        .map(|a| Expression::String(a.to_string().into()))
        .collect();
    let json = if json.len() == 1 {
        json.remove(0)
    } else {
        Expression::Named(NamedExpression::Concat(json))
    };
    (bytes, json)
}

#[cfg(test)]
/// Key of `source . proto . port` as nft lays out a concatenation: each part in
/// network order, zero-padded to a 4-byte register (12 bytes for IPv4, 24 for IPv6).
pub fn key_bytes(rule: &Rule) -> Vec<u8> {
    key(&[rule.source], rule.proto, rule.port).0
}

/// The elements a rule is made of, in set order:
/// - plain: `grants` (`source . proto . port`), or with a destination
///   `grantsdst` (`source . destination . proto . port`), or pinned to a source
///   port `grantspin` (`source . proto . source_port . port`);
/// - local NAT: `local` (`source . proto . to_port`), and unless DISABLE_DNAT
///   `dnat`/`dnatport` (`source . proto . port` → `to_addr`, `to_port`); SNAT does
///   not apply to locally delivered traffic and is ignored;
/// - forward NAT: `fwd` (`source . to_addr . proto . to_port`), `dnat`/`dnatport`
///   unless DISABLE_DNAT, and `masq` or `snat` (→ the SNAT address).
///
/// The caller checks first that `to_addr` (and an SNAT address) has the family of `source`.
pub fn elements(rule: &Rule) -> Vec<Element> {
    let fam = Fam::of(rule.source);
    let element = |kind: Kind,
                   (key, key_json): (Vec<u8>, Expression<'static>),
                   data: Option<(Vec<u8>, Expression<'static>)>,
                   comment: &Option<String>| Element {
        set: SetId::new(kind, fam),
        key,
        key_json,
        data: data.as_ref().map(|(b, _)| b.clone()),
        data_json: data.map(|(_, j)| j),
        comment: comment.clone(),
    };
    let Some(nat) = &rule.nat else {
        if let Some(sport) = rule.source_port {
            // The caller refuses a pinned rule with a destination.
            return vec![element(
                Kind::GrantsPin,
                pinned_key(rule.source, rule.proto, sport, rule.port),
                None,
                &None,
            )];
        }
        if let Some(dst) = rule.destination {
            return vec![element(
                Kind::GrantsDst,
                key(&[rule.source, dst], rule.proto, rule.port),
                None,
                &None,
            )];
        }
        return vec![element(
            Kind::Grants,
            key(&[rule.source], rule.proto, rule.port),
            None,
            &None,
        )];
    };
    let addr = |a: IpAddr| (addr_bytes(a), Expression::String(a.to_string().into()));
    if nat.forward_all && !nat.local {
        // No protocol in the keys: the comment carries it.
        let comment = Some(format!("{}_{}", rule.proto.name(), nat.tag(rule.port)));
        let flow = || addr_key(&[rule.source, nat.to_addr]);
        let mut out = vec![element(Kind::FwdAll, flow(), None, &comment)];
        if nat.dnat {
            out.push(element(
                Kind::DnatAll,
                addr_key(&[rule.source]),
                Some(addr(nat.to_addr)),
                &comment,
            ));
        }
        match &nat.snat {
            Some(Snat::Masquerade) => out.push(element(Kind::MasqAll, flow(), None, &comment)),
            Some(Snat::To(to)) => {
                out.push(element(Kind::SnatAll, flow(), Some(addr(*to)), &comment))
            }
            None => {}
        }
        return out;
    }
    let comment = Some(nat.tag(rule.port));
    let outer = || key(&[rule.source], rule.proto, rule.port);
    let flow = || key(&[rule.source, nat.to_addr], rule.proto, nat.to_port);
    let mut out = Vec::new();
    if nat.local {
        out.push(element(
            Kind::Local,
            key(&[rule.source], rule.proto, nat.to_port),
            None,
            &comment,
        ));
    }
    if nat.dnat {
        out.push(element(
            Kind::DnatAddr,
            outer(),
            Some(addr(nat.to_addr)),
            &comment,
        ));
        let port = (
            nat.to_port.to_be_bytes().to_vec(),
            Expression::Number(u32::from(nat.to_port)),
        );
        out.push(element(Kind::DnatPort, outer(), Some(port), &comment));
    }
    if !nat.local {
        out.push(element(Kind::Fwd, flow(), None, &comment));
        match &nat.snat {
            Some(Snat::Masquerade) => out.push(element(Kind::Masq, flow(), None, &comment)),
            Some(Snat::To(to)) => out.push(element(Kind::Snat, flow(), Some(addr(*to)), &comment)),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use spa_core::firewall::NatRule;

    fn rule(src: &str, proto: Proto, port: u16) -> Rule {
        Rule::new(src.parse().unwrap(), proto, port)
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
        assert_eq!(Fam::of("fd00::1".parse().unwrap()), Fam::V6);
    }

    #[test]
    fn pinned_key_is_four_padded_registers() {
        let r = rule("10.1.2.3", Proto::Tcp, 22).pinned(Some(0xabcd));
        let e = elements(&r);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].set.name(), "grantspin4");
        assert_eq!(
            e[0].key,
            [10, 1, 2, 3, 6, 0, 0, 0, 0xab, 0xcd, 0, 0, 0, 22, 0, 0]
        );
        assert_eq!(
            SetId::new(Kind::GrantsPin, Fam::V6).key_types(),
            [
                SetType::Ipv6Addr,
                SetType::InetProto,
                SetType::InetService,
                SetType::InetService
            ]
        );
    }

    #[test]
    fn set_names_round_trip() {
        for kind in Kind::PLAIN.into_iter().chain(Kind::NAT) {
            for fam in Fam::ALL {
                let s = SetId::new(kind, fam);
                assert_eq!(SetId::parse(&s.name()), Some(s));
            }
        }
        assert_eq!(SetId::new(Kind::DnatPort, Fam::V6).name(), "dnatport6");
        assert_eq!(SetId::parse("protected"), None);
    }

    #[test]
    fn nat_elements_and_their_bytes() {
        let mut r = rule("192.0.2.7", Proto::Tcp, 55000);
        r.nat = Some(NatRule {
            to_addr: "10.0.0.2".parse().unwrap(),
            to_port: 22,
            local: false,
            snat: Some(Snat::To("10.0.0.1".parse().unwrap())),
            dnat: true,
            forward_all: false,
        });
        let e = elements(&r);
        let names: Vec<String> = e.iter().map(|e| e.set.name()).collect();
        assert_eq!(names, ["dnat4", "dnatport4", "fwd4", "snat4"]);
        assert_eq!(e[0].key, [192, 0, 2, 7, 6, 0, 0, 0, 0xd6, 0xd8, 0, 0]);
        assert_eq!(e[0].data.as_deref(), Some(&[10, 0, 0, 2][..]));
        assert_eq!(e[1].data.as_deref(), Some(&[0, 22][..]));
        assert_eq!(
            e[2].key,
            [192, 0, 2, 7, 10, 0, 0, 2, 6, 0, 0, 0, 0, 22, 0, 0]
        );
        assert_eq!(e[3].data.as_deref(), Some(&[10, 0, 0, 1][..]));
        let tag = "nat_55000_10.0.0.2_22_snat_10.0.0.1";
        assert!(e.iter().all(|e| e.comment.as_deref() == Some(tag)));
        assert_eq!(
            NatRule::parse_tag(tag),
            Some((55000, r.nat.clone().unwrap()))
        );

        let local = NatRule {
            local: true,
            dnat: false,
            forward_all: false,
            snat: None,
            ..r.nat.clone().unwrap()
        };
        r.nat = Some(local.clone());
        let e = elements(&r);
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].set.name(), e[0].key[8..10].to_vec()),
            ("local4".to_string(), vec![0, 22])
        );
        assert_eq!(
            NatRule::parse_tag(e[0].comment.as_deref().unwrap()),
            Some((55000, local))
        );
        assert_eq!(NatRule::parse_tag("nat_1_x_2"), None);
        assert_eq!(NatRule::parse_tag("hand made"), None);
    }
}
