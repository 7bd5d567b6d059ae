//! Access policy: a decrypted, fresh message plus its stanza become a [`Grant`] or
//! a typed [`Denial`]. Only this module can build a Grant, so the action stage can
//! never act on anything policy did not approve.

use crate::config::access::canonical;
use crate::config::AccessStanza;
use spa_core::firewall::{NatRule, Snat};
use spa_core::request::{AccessRequest, CommandRequest, NatTarget};
use spa_core::{MessageType, ProtoPort, SpaMessage};
use std::fmt;
use std::net::IpAddr;

/// Why policy said no. Logged at debug level only, never sent anywhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    TooOld {
        age: i64,
        max: u64,
    },
    StanzaExpired {
        at: i64,
    },
    Username {
        got: String,
    },
    DestinationNotAllowed(IpAddr),
    /// The stanza has DESTINATION but the capture could not tell where the
    /// packet was sent.
    DestinationUnknown,
    /// ENABLE_DESTINATION_RULE, but the capture could not tell where the
    /// packet was sent (or it was sent to an address of the other family than
    /// the one to open for): the grant would match any address.
    DestinationRuleUnknown,
    /// FORWARD_ALL to a target NAT_ALLOW does not open on every port
    /// (`NET:*`), or with RESTRICT_PORTS set.
    ForwardAllNotAllowed(IpAddr),
    SourceAddressRequired,
    PortNotOpen(ProtoPort),
    PortRestricted(ProtoPort),
    CommandsDisabled,
    NatDisabled,
    LocalNatDisabled,
    NatHostname(String),
    /// Local NAT leads to this port of the server, which OPEN_PORTS does not list.
    NatPortNotOpen(ProtoPort),
    /// A NAT grant would reach this port (of the server or a forwarded host),
    /// which RESTRICT_PORTS refuses.
    NatPortRestricted(ProtoPort),
    /// A forwarded target whose port OPEN_PORTS does not list (no NAT_ALLOW).
    NatTargetPortNotOpen {
        addr: IpAddr,
        port: ProtoPort,
    },
    /// A NAT target no NAT_ALLOW entry matches.
    NatTargetNotAllowed {
        addr: IpAddr,
        port: u16,
    },
    /// A loopback, link-local, multicast, broadcast or unspecified NAT target
    /// that no NAT_ALLOW entry names explicitly.
    NatTargetSpecial {
        addr: IpAddr,
        kind: &'static str,
    },
    BadMessage(String),
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::TooOld { age, max } => write!(
                f,
                "packet timestamp is {age} s off, MAX_SPA_PACKET_AGE is {max} s"
            ),
            Denial::StanzaExpired { at } => {
                write!(f, "access stanza expired at {at} (ACCESS_EXPIRE)")
            }
            Denial::Username { got } => {
                write!(f, "username `{got}` does not match REQUIRE_USERNAME")
            }
            Denial::DestinationNotAllowed(ip) => {
                write!(f, "destination address {ip} is not in DESTINATION")
            }
            Denial::DestinationUnknown => f.write_str(
                "the stanza has DESTINATION but the capture cannot tell where the packet was sent",
            ),
            Denial::DestinationRuleUnknown => f.write_str(
                "ENABLE_DESTINATION_RULE is set but the packet's destination address is unknown \
                 or of another family than the address to open for",
            ),
            Denial::ForwardAllNotAllowed(addr) => write!(
                f,
                "FORWARD_ALL to {addr} needs a NAT_ALLOW entry allowing every port of it \
                 (`{addr}:*`) and no RESTRICT_PORTS"
            ),
            Denial::SourceAddressRequired => {
                f.write_str("allow-IP 0.0.0.0 refused by REQUIRE_SOURCE_ADDRESS")
            }
            Denial::PortNotOpen(p) => write!(f, "{p} is not in OPEN_PORTS"),
            Denial::PortRestricted(p) => write!(f, "{p} is in RESTRICT_PORTS"),
            Denial::CommandsDisabled => {
                f.write_str("command message but ENABLE_CMD_EXEC is not set")
            }
            Denial::NatDisabled => f.write_str(
                "NAT access requested but forwarding is not enabled (ENABLE_IPT_FORWARDING / [server.nat] forwarding)",
            ),
            Denial::LocalNatDisabled => f.write_str(
                "local NAT requested but it is not enabled (ENABLE_IPT_LOCAL_NAT / [server.nat] local)",
            ),
            Denial::NatHostname(h) => write!(
                f,
                "NAT target `{h}` is a host name; only addresses are accepted \
                 ([server.nat] dns = true / ENABLE_NAT_DNS Y resolves them)"
            ),
            Denial::NatPortNotOpen(p) => {
                write!(f, "local NAT leads to {p} of this host, which is not in OPEN_PORTS")
            }
            Denial::NatPortRestricted(p) => {
                write!(f, "NAT leads to {p}, which is in RESTRICT_PORTS")
            }
            Denial::NatTargetPortNotOpen { addr, port } => write!(
                f,
                "NAT target {addr} {port}: {port} is not in OPEN_PORTS (NAT_ALLOW can list forwarding targets)"
            ),
            Denial::NatTargetNotAllowed { addr, port } => {
                write!(f, "NAT target {addr}:{port} is not in NAT_ALLOW")
            }
            Denial::NatTargetSpecial { addr, kind } => write!(
                f,
                "NAT target {addr} is a {kind} address; only a NAT_ALLOW entry inside that range allows it"
            ),
            Denial::BadMessage(m) => write!(f, "invalid request: {m}"),
        }
    }
}

impl Denial {
    /// The refusal as fwknopd 2.6.10 logs it (incoming_spa.c), the sender in
    /// the same place, so log alerts and fail2ban filters written for fwknopd
    /// match. Refusals fwknopd has no line for get postern's reason in the same
    /// `[IP] (stanza #N) ` shape. `stanza` counts from 1, as fwknopd's.
    pub fn fwknopd_log(&self, source: IpAddr, stanza: usize) -> String {
        let at = format!("[{source}] (stanza #{stanza})");
        match self {
            Denial::TooOld { age, .. } => {
                format!("{at} SPA data time difference is too great ({age} seconds).")
            }
            Denial::StanzaExpired { .. } => format!("{at} Access stanza has expired"),
            Denial::Username { got } => format!(
                "{at} Username in SPA data ({}) does not match required username",
                got.escape_debug()
            ),
            Denial::SourceAddressRequired => {
                format!("{at} Got 0.0.0.0 when valid source IP was required.")
            }
            Denial::PortNotOpen(_) | Denial::PortRestricted(_) => format!(
                "{at} One or more requested protocol/ports was denied per access.conf."
            ),
            Denial::CommandsDisabled => format!(
                "{at} SPA Command messages are not allowed in the current configuration."
            ),
            Denial::NatDisabled | Denial::LocalNatDisabled => format!(
                "(stanza #{stanza}) SPA packet from {source} requested NAT access, but is not enabled/supported"
            ),
            Denial::DestinationNotAllowed(_) | Denial::DestinationUnknown => format!(
                "{at} SPA packet filtered by SOURCE and/or DESTINATION criteria"
            ),
            other => format!("{at} SPA packet refused: {other}"),
        }
    }
}

/// What to do for an approved request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantKind {
    /// Open `ports` for the source; with `nat`, the first port is forwarded.
    Access {
        ports: Vec<ProtoPort>,
        nat: Option<NatRule>,
    },
    /// Run a command (message type 0) as `user`.
    Command {
        command: String,
        user: Option<String>,
        group: Option<String>,
        /// CMD_CAPABILITIES: what the command keeps.
        capabilities: postern_backend_common::CapSet,
        /// ENABLE_CMD_SUDO_EXEC.
        sudo: Option<postern_backend_common::SudoExec>,
    },
}

/// CMD_CYCLE_OPEN / CMD_CYCLE_CLOSE from the stanza.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CmdCycle {
    pub open: String,
    pub close: Option<String>,
    pub timer: u32,
    /// CMD_CAPABILITIES: what the scripts keep.
    pub capabilities: postern_backend_common::CapSet,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    source: IpAddr,
    /// ENABLE_DESTINATION_RULE: the address the knock was sent to.
    destination: Option<IpAddr>,
    kind: GrantKind,
    timeout_secs: u32,
    stanza: usize,
    username: String,
    cmd_cycle: Option<CmdCycle>,
    /// Only connections from this source port (a native knock's pin).
    source_port: Option<u16>,
}

impl Grant {
    /// Pin the grant's openings to the client's source port (native knocks).
    pub fn pinned_to(self, source_port: Option<u16>) -> Grant {
        Grant {
            source_port,
            ..self
        }
    }

    /// The address that gets access (the packet's allow-IP, or its sender for 0.0.0.0).
    pub fn source(&self) -> IpAddr {
        self.source
    }
    pub fn kind(&self) -> &GrantKind {
        &self.kind
    }
    pub fn timeout_secs(&self) -> u32 {
        self.timeout_secs
    }
    pub fn stanza(&self) -> usize {
        self.stanza
    }
    pub fn username(&self) -> &str {
        &self.username
    }
    pub fn cmd_cycle(&self) -> Option<&CmdCycle> {
        self.cmd_cycle.as_ref()
    }

    /// Firewall openings for an access grant (none for commands).
    pub fn openings(&self, now: u64) -> Vec<spa_core::firewall::Opening> {
        let GrantKind::Access { ports, nat } = &self.kind else {
            return Vec::new();
        };
        // Like fwknopd, a NAT grant forwards the first requested port only.
        let ports = if nat.is_some() {
            &ports[..1]
        } else {
            &ports[..]
        };
        ports
            .iter()
            .map(|p| spa_core::firewall::Opening {
                rule: spa_core::firewall::Rule {
                    source: self.source,
                    proto: p.proto,
                    port: p.port,
                    nat: nat.clone(),
                    destination: self.destination,
                    source_port: self.source_port,
                },
                timeout_secs: self.timeout_secs,
                expires_at: now + u64::from(self.timeout_secs),
            })
            .collect()
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            GrantKind::Access { ports, nat } => write!(
                f,
                "{} -> {}{}{} for {} s (user {}, stanza #{})",
                self.source,
                self.destination
                    .map(|d| format!("{d} "))
                    .unwrap_or_default(),
                spa_core::request::format_proto_ports(ports),
                nat.as_ref()
                    .map(|n| format!(
                        " (NAT to {}:{}{}{})",
                        n.to_addr,
                        n.to_port,
                        if n.local { ", local" } else { "" },
                        if n.forward_all { ", all ports" } else { "" }
                    ))
                    .unwrap_or_default(),
                self.timeout_secs,
                self.username,
                self.stanza + 1
            ),
            GrantKind::Command { user, .. } => write!(
                f,
                "command from {} as {} (user {}, stanza #{})",
                self.source,
                user.as_deref().unwrap_or("the server's user"),
                self.username,
                self.stanza + 1
            ),
        }
    }
}

/// Server-wide settings policy needs.
#[derive(Clone, Debug)]
pub struct PolicySettings {
    pub max_packet_age: u64,
    pub packet_aging: bool,
    pub nat: crate::config::NatSection,
    /// ENABLE_DESTINATION_RULE.
    pub destination_rule: bool,
}

impl PolicySettings {
    /// The settings of `server` (fwknopd.conf / `[server]`) that policy reads.
    pub fn of(server: &crate::config::ServerSection) -> PolicySettings {
        PolicySettings {
            max_packet_age: server.max_packet_age,
            packet_aging: server.packet_aging,
            nat: server.nat.clone(),
            destination_rule: server.destination_rule,
        }
    }
}

/// Everything policy looks at for one packet.
pub struct Request<'a> {
    pub stanza: &'a AccessStanza,
    pub stanza_index: usize,
    pub message: &'a SpaMessage,
    /// Where the packet came from.
    pub peer: IpAddr,
    /// The client an HTTP proxy said it forwarded the packet for.
    pub forwarded_for: Option<IpAddr>,
    /// Where it was sent to, when the capture knows.
    pub destination: Option<IpAddr>,
    /// Unix seconds.
    pub now: u64,
}

/// With packet aging on, a packet stamped more than MAX_SPA_PACKET_AGE before
/// or after its arrival (`now`) is refused.
pub fn check_age(settings: &PolicySettings, now: u64, timestamp: u64) -> Result<(), Denial> {
    let age = now as i64 - timestamp as i64;
    if settings.packet_aging && age.unsigned_abs() > settings.max_packet_age {
        return Err(Denial::TooOld {
            age,
            max: settings.max_packet_age,
        });
    }
    Ok(())
}

/// The stanza's answer to a fresh packet (its age was checked before, see
/// [`check_age`]).
pub fn evaluate(settings: &PolicySettings, req: &Request) -> Result<Grant, Denial> {
    let (stanza, msg) = (req.stanza, req.message);
    if let Some(at) = stanza.access_expire_epoch {
        if req.now as i64 >= at {
            return Err(Denial::StanzaExpired { at });
        }
    }
    if let Some(allowed) = &stanza.destination {
        // Fail closed: a stanza limited to some destinations grants nothing
        // when the capture cannot say where the packet went.
        let dest = req.destination.ok_or(Denial::DestinationUnknown)?;
        if !allowed.contains(dest) {
            return Err(Denial::DestinationNotAllowed(canonical(dest)));
        }
    }
    if let Some(required) = &stanza.require_username {
        if &msg.username != required {
            return Err(Denial::Username {
                got: msg.username.clone(),
            });
        }
    }
    let (allow_ip, kind) = if msg.msg_type == MessageType::Command {
        if !stanza.enable_cmd_exec {
            return Err(Denial::CommandsDisabled);
        }
        let cmd =
            CommandRequest::parse(&msg.message).map_err(|e| Denial::BadMessage(e.to_string()))?;
        let kind = GrantKind::Command {
            command: cmd.command,
            user: stanza.cmd_exec_user.clone(),
            group: stanza.cmd_exec_group.clone(),
            capabilities: stanza.cmd_capabilities,
            sudo: stanza.sudo_exec(),
        };
        (cmd.allow_ip, kind)
    } else {
        let access =
            AccessRequest::parse(&msg.message).map_err(|e| Denial::BadMessage(e.to_string()))?;
        for p in &access.ports {
            if stanza.restrict_ports.contains(p) {
                return Err(Denial::PortRestricted(*p));
            }
            if !stanza.open_ports.is_empty() && !stanza.open_ports.contains(p) {
                return Err(Denial::PortNotOpen(*p));
            }
        }
        let nat = nat_rule(settings, stanza, msg)?;
        if let (Some(nat), Some(first)) = (&nat, access.ports.first()) {
            check_nat_target(stanza, nat, first.proto)?;
            if nat.forward_all {
                check_forward_all(stanza, nat)?;
            }
        }
        (
            access.allow_ip,
            GrantKind::Access {
                ports: access.ports,
                nat,
            },
        )
    };
    let source = if allow_ip.is_unspecified() {
        if stanza.require_source_address {
            return Err(Denial::SourceAddressRequired);
        }
        // Behind an HTTP proxy, the client it names (fwknopd's ENABLE_X_FORWARDED_FOR).
        canonical(req.forwarded_for.unwrap_or(req.peer))
    } else {
        allow_ip
    };
    // Fail closed: never widen a destination-bound grant to any address.
    let destination = match (settings.destination_rule, req.destination.map(canonical)) {
        (false, _) => None,
        (true, Some(d)) if d.is_ipv4() == source.is_ipv4() => Some(d),
        (true, _) => return Err(Denial::DestinationRuleUnknown),
    };
    let timeout_secs = match msg.client_timeout {
        Some(t) if t > 0 => t.min(stanza.max_fw_timeout),
        // As fwknopd says it does: MAX_FW_TIMEOUT caps FW_ACCESS_TIMEOUT too.
        _ => stanza.fw_access_timeout.min(stanza.max_fw_timeout),
    };
    let cmd_cycle = stanza.cmd_cycle_open.as_ref().map(|open| CmdCycle {
        open: open.clone(),
        close: stanza.cmd_cycle_close.clone(),
        timer: stanza.cmd_cycle_timer.unwrap_or(timeout_secs),
        capabilities: stanza.cmd_capabilities,
    });
    Ok(Grant {
        source,
        destination,
        kind,
        timeout_secs,
        stanza: req.stanza_index,
        username: msg.username.clone(),
        cmd_cycle,
        source_port: None,
    })
}

/// The forwarding a request asks for (or its stanza forces), if allowed.
fn nat_rule(
    settings: &PolicySettings,
    stanza: &AccessStanza,
    msg: &SpaMessage,
) -> Result<Option<NatRule>, Denial> {
    let local = msg.msg_type.is_local_nat();
    let (to_addr, to_port) = if let Some(forced) = &stanza.force_nat {
        (forced.addr, forced.port)
    } else if msg.msg_type.has_nat() {
        let text = msg.nat_access.as_deref().unwrap_or("");
        let target = NatTarget::parse(text).map_err(|e| Denial::BadMessage(e.to_string()))?;
        let addr = target
            .host
            .parse()
            .map_err(|_| Denial::NatHostname(target.host.clone()))?;
        (addr, target.port)
    } else {
        return Ok(None);
    };
    if local && !settings.nat.local {
        return Err(Denial::LocalNatDisabled);
    }
    if !local && !settings.nat.forwarding {
        return Err(Denial::NatDisabled);
    }
    let snat = match (stanza.force_snat, stanza.force_masquerade) {
        (Some(ip), _) => Some(Snat::To(ip)),
        (None, true) => Some(Snat::Masquerade),
        (None, false) => settings.nat.snat.clone().map(|s| s.0),
    };
    Ok(Some(NatRule {
        to_addr,
        to_port,
        local,
        snat: if local { None } else { snat },
        dnat: !stanza.disable_dnat,
        // Local NAT leads to one port of this host: FORWARD_ALL is for forwarding.
        forward_all: stanza.forward_all && !local,
    }))
}

/// What a NAT grant really reaches, checked against the stanza: the requested
/// (outer) ports were checked like any access request, but the traffic ends
/// at `to_addr:to_port` (fwknopd forwards the first requested port only, with
/// its protocol).
///
/// fwknopd checks only the outer port against OPEN_PORTS/RESTRICT_PORTS, so
/// `--nat-local --nat-port 22 -A tcp/3306` reaches a restricted 3306 and
/// `-N anyhost:anyport` reaches whatever the gateway can route to. postern is
/// stricter:
/// - FORCE_NAT is the admin's own target: not second-guessed;
/// - RESTRICT_PORTS always refuses the reached port;
/// - local NAT reaches a port of this host: OPEN_PORTS must allow it;
/// - forwarding: with NAT_ALLOW, the target must match an entry; without it,
///   OPEN_PORTS must allow the target's port (empty OPEN_PORTS allows any, as
///   for plain access, so fwknopd stanzas without OPEN_PORTS keep working);
/// - loopback, link-local, multicast, broadcast and unspecified targets need a
///   NAT_ALLOW entry inside that range (`0.0.0.0/0:*` does not name them).
fn check_nat_target(
    stanza: &AccessStanza,
    nat: &NatRule,
    proto: spa_core::request::Proto,
) -> Result<(), Denial> {
    if stanza.force_nat.is_some() {
        return Ok(());
    }
    let addr = canonical(nat.to_addr);
    let reached = ProtoPort {
        proto,
        port: nat.to_port,
    };
    if stanza.restrict_ports.contains(&reached) {
        return Err(Denial::NatPortRestricted(reached));
    }
    let open = |p: &ProtoPort| stanza.open_ports.is_empty() || stanza.open_ports.contains(p);
    let listed = stanza
        .nat_allow
        .iter()
        .filter(|a| a.matches(addr, nat.to_port))
        .collect::<Vec<_>>();
    if let Some((kind, range)) = special_range(addr) {
        if !listed.iter().any(|a| range.contains(&a.net)) {
            return Err(Denial::NatTargetSpecial { addr, kind });
        }
    }
    if nat.local {
        if !open(&reached) {
            return Err(Denial::NatPortNotOpen(reached));
        }
    } else if !stanza.nat_allow.is_empty() {
        if listed.is_empty() {
            return Err(Denial::NatTargetNotAllowed {
                addr,
                port: nat.to_port,
            });
        }
    } else if !open(&reached) {
        return Err(Denial::NatTargetPortNotOpen {
            addr,
            port: reached,
        });
    }
    Ok(())
}

/// FORWARD_ALL reaches every port of the target: stricter than fwknopd, a
/// client's target must be one NAT_ALLOW opens on every port (`NET:*`), and
/// RESTRICT_PORTS (which could not be honoured) must be empty. FORCE_NAT is the
/// admin's own target.
fn check_forward_all(stanza: &AccessStanza, nat: &NatRule) -> Result<(), Denial> {
    if stanza.force_nat.is_some() {
        return Ok(());
    }
    let addr = canonical(nat.to_addr);
    let every_port = stanza
        .nat_allow
        .iter()
        .any(|a| a.port.is_none() && a.net.contains(&addr));
    if !every_port || !stanza.restrict_ports.is_empty() {
        return Err(Denial::ForwardAllNotAllowed(addr));
    }
    Ok(())
}

/// The kind and range of an address no NAT should lead to by accident.
fn special_range(addr: IpAddr) -> Option<(&'static str, ipnet::IpNet)> {
    const RANGES: [(&str, &str); 9] = [
        ("unspecified", "0.0.0.0/8"),
        ("loopback", "127.0.0.0/8"),
        ("link-local", "169.254.0.0/16"),
        ("multicast", "224.0.0.0/4"),
        ("broadcast", "255.255.255.255/32"),
        ("unspecified", "::/128"),
        ("loopback", "::1/128"),
        ("link-local", "fe80::/10"),
        ("multicast", "ff00::/8"),
    ];
    RANGES.iter().find_map(|(kind, net)| {
        let net: ipnet::IpNet = net.parse().expect("valid range");
        net.contains(&addr).then_some((*kind, net))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AddrList;

    fn stanza() -> AccessStanza {
        let mut s = AccessStanza::new(AddrList::Any);
        s.key = Some(spa_core::Secret::from_passphrase("k"));
        s
    }

    fn msg(t: MessageType, message: &str, ts: u64) -> SpaMessage {
        SpaMessage {
            rand_val: "1234567890123456".into(),
            username: "alice".into(),
            timestamp: ts,
            version: "3.0.0".into(),
            msg_type: t,
            message: message.into(),
            nat_access: None,
            server_auth: None,
            client_timeout: None,
        }
    }

    fn settings() -> PolicySettings {
        PolicySettings {
            max_packet_age: 120,
            packet_aging: true,
            nat: Default::default(),
            destination_rule: false,
        }
    }

    fn eval(s: &AccessStanza, m: &SpaMessage) -> Result<Grant, Denial> {
        eval_with(&settings(), s, m)
    }

    fn eval_with(
        settings: &PolicySettings,
        s: &AccessStanza,
        m: &SpaMessage,
    ) -> Result<Grant, Denial> {
        eval_to(settings, s, m, None)
    }

    /// With the destination the capture saw.
    fn eval_to(
        settings: &PolicySettings,
        s: &AccessStanza,
        m: &SpaMessage,
        destination: Option<&str>,
    ) -> Result<Grant, Denial> {
        // As the pipeline does: the age first (stage `fresh`), then the stanza.
        check_age(settings, 1000, m.timestamp)?;
        evaluate(
            settings,
            &Request {
                stanza: s,
                stanza_index: 0,
                message: m,
                peer: "192.0.2.9".parse().unwrap(),
                forwarded_for: None,
                destination: destination.map(|d| d.parse().unwrap()),
                now: 1000,
            },
        )
    }

    #[test]
    fn access_grant_uses_allow_ip_or_sender() {
        let g = eval(
            &stanza(),
            &msg(MessageType::Access, "10.0.0.5,tcp/22,udp/53", 1000),
        )
        .unwrap();
        assert_eq!(g.source(), "10.0.0.5".parse::<IpAddr>().unwrap());
        assert_eq!(g.openings(1000).len(), 2);
        assert_eq!(g.timeout_secs(), 30);
        let g = eval(&stanza(), &msg(MessageType::Access, "0.0.0.0,tcp/22", 1000)).unwrap();
        assert_eq!(g.source(), "192.0.2.9".parse::<IpAddr>().unwrap());
        let mut s = stanza();
        s.require_source_address = true;
        assert_eq!(
            eval(&s, &msg(MessageType::Access, "0.0.0.0,tcp/22", 1000)),
            Err(Denial::SourceAddressRequired)
        );
    }

    /// postern's IPv6 extension: an IPv6 allow address is granted as such, and
    /// `::` means the sender as `0.0.0.0` does (whatever family it knocked over).
    #[test]
    fn ipv6_allow_addresses_are_granted() {
        let g = eval(
            &stanza(),
            &msg(MessageType::Access, "2001:db8::5,tcp/22", 1000),
        )
        .unwrap();
        assert_eq!(g.source(), "2001:db8::5".parse::<IpAddr>().unwrap());
        assert_eq!(g.openings(1000).len(), 1);
        let g = eval(&stanza(), &msg(MessageType::Access, "::,tcp/22", 1000)).unwrap();
        assert_eq!(g.source(), "192.0.2.9".parse::<IpAddr>().unwrap());
        let mut s = stanza();
        s.require_source_address = true;
        assert_eq!(
            eval(&s, &msg(MessageType::Access, "::,tcp/22", 1000)),
            Err(Denial::SourceAddressRequired)
        );
    }

    #[test]
    fn age_expiry_username_ports_and_commands() {
        let s = stanza();
        assert!(matches!(
            eval(&s, &msg(MessageType::Access, "10.0.0.5,tcp/22", 800)),
            Err(Denial::TooOld { .. })
        ));
        assert!(matches!(
            eval(&s, &msg(MessageType::Access, "10.0.0.5,tcp/22", 1200)),
            Err(Denial::TooOld { .. })
        ));
        let mut e = stanza();
        e.access_expire_epoch = Some(999);
        assert!(matches!(
            eval(&e, &msg(MessageType::Access, "10.0.0.5,tcp/22", 1000)),
            Err(Denial::StanzaExpired { .. })
        ));
        let mut u = stanza();
        u.require_username = Some("bob".into());
        assert!(matches!(
            eval(&u, &msg(MessageType::Access, "10.0.0.5,tcp/22", 1000)),
            Err(Denial::Username { .. })
        ));
        let mut p = stanza();
        p.open_ports = spa_core::request::parse_proto_ports("tcp/22").unwrap();
        assert!(matches!(
            eval(
                &p,
                &msg(MessageType::Access, "10.0.0.5,tcp/22,tcp/23", 1000)
            ),
            Err(Denial::PortNotOpen(_))
        ));
        let mut r = stanza();
        r.restrict_ports = spa_core::request::parse_proto_ports("tcp/23").unwrap();
        assert!(matches!(
            eval(&r, &msg(MessageType::Access, "10.0.0.5,tcp/23", 1000)),
            Err(Denial::PortRestricted(_))
        ));
        assert_eq!(
            eval(&s, &msg(MessageType::Command, "10.0.0.5,echo hi", 1000)),
            Err(Denial::CommandsDisabled)
        );
        let mut c = stanza();
        c.enable_cmd_exec = true;
        c.cmd_exec_user = Some("nobody".into());
        let g = eval(&c, &msg(MessageType::Command, "10.0.0.5,echo hi", 1000)).unwrap();
        assert!(
            matches!(g.kind(), GrantKind::Command { command, user: Some(u), .. } if command == "echo hi" && u == "nobody")
        );
        assert!(g.openings(1000).is_empty());
    }

    #[test]
    fn nat_requests_need_the_server_to_allow_them() {
        use spa_core::firewall::Snat;
        let mut m = msg(MessageType::NatAccess, "10.0.0.5,tcp/2222,tcp/80", 1000);
        m.nat_access = Some("192.168.1.2,22".into());
        assert_eq!(eval(&stanza(), &m), Err(Denial::NatDisabled));
        let mut on = settings();
        on.nat.forwarding = true;
        let g = eval_with(&on, &stanza(), &m).unwrap();
        let o = g.openings(1000);
        assert_eq!(o.len(), 1, "NAT forwards the first port only");
        assert_eq!(o[0].rule.port, 2222);
        let nat = o[0].rule.nat.clone().unwrap();
        assert_eq!(
            (
                nat.to_addr.to_string(),
                nat.to_port,
                nat.local,
                nat.snat,
                nat.dnat
            ),
            ("192.168.1.2".into(), 22, false, None, true)
        );

        let mut masq = stanza();
        masq.force_masquerade = true;
        masq.disable_dnat = true;
        let nat = eval_with(&on, &masq, &m).unwrap().openings(1000)[0]
            .rule
            .nat
            .clone()
            .unwrap();
        assert_eq!((nat.snat, nat.dnat), (Some(Snat::Masquerade), false));

        let mut local = msg(MessageType::LocalNatAccess, "10.0.0.5,tcp/55000", 1000);
        local.nat_access = Some("10.0.0.1,22".into());
        assert_eq!(
            eval_with(&on, &stanza(), &local),
            Err(Denial::LocalNatDisabled)
        );
        on.nat.local = true;
        let nat = eval_with(&on, &stanza(), &local).unwrap().openings(1000)[0]
            .rule
            .nat
            .clone()
            .unwrap();
        assert!(nat.local);

        m.nat_access = Some("inner.example,22".into());
        assert!(matches!(
            eval_with(&on, &stanza(), &m),
            Err(Denial::NatHostname(_))
        ));
    }

    #[test]
    fn destination_is_enforced_and_an_unknown_one_is_refused() {
        let m = msg(MessageType::Access, "10.0.0.5,tcp/22", 1000);
        let mut s = stanza();
        s.destination = Some(AddrList::parse("10.9.9.9").unwrap());
        let at = |d| eval_to(&settings(), &s, &m, d);
        assert_eq!(at(None), Err(Denial::DestinationUnknown));
        assert_eq!(
            at(Some("10.9.9.8")),
            Err(Denial::DestinationNotAllowed("10.9.9.8".parse().unwrap()))
        );
        assert!(at(Some("10.9.9.9")).is_ok());
        // A dual-stack socket's IPv4-mapped form is the same destination.
        assert!(at(Some("::ffff:10.9.9.9")).is_ok());
        assert_eq!(
            at(Some("::ffff:10.9.9.8")),
            Err(Denial::DestinationNotAllowed("10.9.9.8".parse().unwrap()))
        );
        // Without DESTINATION, where the packet went does not matter.
        assert!(eval_to(&settings(), &stanza(), &m, None).is_ok());
    }

    #[test]
    fn destination_rule_binds_the_grant_and_fails_closed() {
        let m = msg(MessageType::Access, "10.0.0.5,tcp/22", 1000);
        let on = PolicySettings {
            destination_rule: true,
            ..settings()
        };
        let dst = |g: Grant| g.openings(1000)[0].rule.destination;
        let g = eval_to(&on, &stanza(), &m, Some("::ffff:10.9.9.9")).unwrap();
        assert_eq!(dst(g), Some("10.9.9.9".parse().unwrap()));
        // Unknown, or of the other family: refused, never opened to any address.
        for d in [None, Some("2001:db8::1")] {
            assert_eq!(
                eval_to(&on, &stanza(), &m, d),
                Err(Denial::DestinationRuleUnknown)
            );
        }
        let off = eval_to(&settings(), &stanza(), &m, Some("10.9.9.9")).unwrap();
        assert_eq!(dst(off), None);
    }

    #[test]
    fn forward_all_needs_every_port_of_the_target_allowed() {
        let m = nat_msg(MessageType::NatAccess, "10.0.0.5,tcp/22", "192.168.1.5,22");
        let mut s = stanza();
        s.forward_all = true;
        let refused = Err(Denial::ForwardAllNotAllowed("192.168.1.5".parse().unwrap()));
        assert_eq!(eval_with(&nat_on(), &s, &m), refused, "no NAT_ALLOW");
        s.nat_allow = crate::config::access::parse_nat_allow("192.168.1.0/24:22").unwrap();
        assert_eq!(eval_with(&nat_on(), &s, &m), refused, "one port only");
        s.nat_allow = crate::config::access::parse_nat_allow("192.168.1.0/24:*").unwrap();
        let g = eval_with(&nat_on(), &s, &m).unwrap();
        assert!(g.openings(1000)[0].rule.nat.as_ref().unwrap().forward_all);
        s.restrict_ports = ports("tcp/25");
        assert_eq!(eval_with(&nat_on(), &s, &m), refused, "RESTRICT_PORTS");
        // Local NAT is one port of this host whatever FORWARD_ALL says.
        s.restrict_ports.clear();
        let local = nat_msg(
            MessageType::LocalNatAccess,
            "10.0.0.5,tcp/22",
            "10.0.0.1,22",
        );
        let g = eval_with(&nat_on(), &s, &local).unwrap();
        assert!(!g.openings(1000)[0].rule.nat.as_ref().unwrap().forward_all);
    }

    fn nat_on() -> PolicySettings {
        let mut on = settings();
        on.nat.forwarding = true;
        on.nat.local = true;
        on
    }

    /// A `t` message for `access` with NAT field `nat`.
    fn nat_msg(t: MessageType, access: &str, nat: &str) -> SpaMessage {
        let mut m = msg(t, access, 1000);
        m.nat_access = Some(nat.into());
        m
    }

    fn ports(text: &str) -> Vec<ProtoPort> {
        spa_core::request::parse_proto_ports(text).unwrap()
    }

    fn pp(text: &str) -> ProtoPort {
        ports(text)[0]
    }

    #[test]
    fn local_nat_is_checked_at_the_port_it_leads_to() {
        // `--nat-local --nat-port 22 -A tcp/3306`: the client connects to 22
        // and reaches this host's 3306.
        let m = nat_msg(
            MessageType::LocalNatAccess,
            "10.0.0.5,tcp/22",
            "10.0.0.1,3306",
        );
        let mut s = stanza();
        s.open_ports = ports("tcp/22");
        s.restrict_ports = ports("tcp/3306");
        assert_eq!(
            eval_with(&nat_on(), &s, &m),
            Err(Denial::NatPortRestricted(pp("tcp/3306")))
        );
        s.restrict_ports.clear();
        assert_eq!(
            eval_with(&nat_on(), &s, &m),
            Err(Denial::NatPortNotOpen(pp("tcp/3306")))
        );
        s.open_ports = ports("tcp/22,tcp/3306");
        assert!(eval_with(&nat_on(), &s, &m).is_ok());
        // The reached port has the requested protocol.
        let udp = nat_msg(
            MessageType::LocalNatAccess,
            "10.0.0.5,udp/22",
            "10.0.0.1,3306",
        );
        s.open_ports = ports("udp/22,tcp/3306");
        assert_eq!(
            eval_with(&nat_on(), &s, &udp),
            Err(Denial::NatPortNotOpen(pp("udp/3306")))
        );
        // No OPEN_PORTS: any port, as for plain access.
        assert!(eval_with(&nat_on(), &stanza(), &m).is_ok());
    }

    #[test]
    fn a_forwarded_targets_port_must_pass_open_ports_without_nat_allow() {
        let mut s = stanza();
        s.open_ports = ports("tcp/22");
        let to = |target: &str| {
            eval_with(
                &nat_on(),
                &s,
                &nat_msg(MessageType::NatAccess, "10.0.0.5,tcp/22", target),
            )
        };
        assert_eq!(
            to("10.20.30.40,5432"),
            Err(Denial::NatTargetPortNotOpen {
                addr: "10.20.30.40".parse().unwrap(),
                port: pp("tcp/5432")
            })
        );
        assert!(to("10.20.30.40,22").is_ok());
        // No OPEN_PORTS (fwknopd's usual NAT stanza): any ordinary target…
        let mut any = stanza();
        let m = nat_msg(
            MessageType::NatAccess,
            "10.0.0.5,tcp/22",
            "10.20.30.40,5432",
        );
        assert!(eval_with(&nat_on(), &any, &m).is_ok());
        // …but never a RESTRICT_PORTS port.
        any.restrict_ports = ports("tcp/5432");
        assert_eq!(
            eval_with(&nat_on(), &any, &m),
            Err(Denial::NatPortRestricted(pp("tcp/5432")))
        );
    }

    #[test]
    fn nat_allow_lists_the_forwarding_targets() {
        let mut s = stanza();
        s.open_ports = ports("tcp/22");
        s.nat_allow =
            crate::config::access::parse_nat_allow("10.0.0.0/24:22, 10.0.0.5:5432").unwrap();
        let to = |s: &AccessStanza, target: &str| {
            eval_with(
                &nat_on(),
                s,
                &nat_msg(MessageType::NatAccess, "10.0.0.5,tcp/22", target),
            )
        };
        assert!(to(&s, "10.0.0.7,22").is_ok());
        // Listed: allowed though 5432 is not in OPEN_PORTS.
        assert!(to(&s, "10.0.0.5,5432").is_ok());
        for (addr, port) in [("10.0.0.7", 5432), ("10.20.30.40", 22)] {
            assert_eq!(
                to(&s, &format!("{addr},{port}")),
                Err(Denial::NatTargetNotAllowed {
                    addr: addr.parse().unwrap(),
                    port
                })
            );
        }
        let mut r = s.clone();
        r.restrict_ports = ports("tcp/5432");
        assert_eq!(
            to(&r, "10.0.0.5,5432"),
            Err(Denial::NatPortRestricted(pp("tcp/5432")))
        );
        // NAT_ALLOW is about forwarding: local NAT still goes by OPEN_PORTS.
        let local = nat_msg(
            MessageType::LocalNatAccess,
            "10.0.0.5,tcp/22",
            "10.0.0.5,5432",
        );
        assert_eq!(
            eval_with(&nat_on(), &s, &local),
            Err(Denial::NatPortNotOpen(pp("tcp/5432")))
        );
    }

    #[test]
    fn special_nat_targets_need_an_entry_inside_their_range() {
        let cases = [
            ("127.0.0.1", "loopback"),
            ("169.254.1.1", "link-local"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("0.0.0.0", "unspecified"),
        ];
        let mut wide = stanza();
        wide.nat_allow = crate::config::access::parse_nat_allow("0.0.0.0/0:*").unwrap();
        for (addr, kind) in cases {
            let m = nat_msg(
                MessageType::NatAccess,
                "10.0.0.5,tcp/22",
                &format!("{addr},22"),
            );
            let want = Err(Denial::NatTargetSpecial {
                addr: addr.parse().unwrap(),
                kind,
            });
            assert_eq!(eval_with(&nat_on(), &stanza(), &m), want, "{addr}");
            assert_eq!(
                eval_with(&nat_on(), &wide, &m),
                want,
                "{addr} via 0.0.0.0/0"
            );
        }
        let local = nat_msg(
            MessageType::LocalNatAccess,
            "10.0.0.5,tcp/2222",
            "127.0.0.1,22",
        );
        assert!(matches!(
            eval_with(&nat_on(), &stanza(), &local),
            Err(Denial::NatTargetSpecial {
                kind: "loopback",
                ..
            })
        ));
        let mut named = stanza();
        named.nat_allow = crate::config::access::parse_nat_allow("127.0.0.1:22").unwrap();
        assert!(eval_with(&nat_on(), &named, &local).is_ok());
        let m = nat_msg(MessageType::NatAccess, "10.0.0.5,tcp/22", "127.0.0.1,22");
        assert!(eval_with(&nat_on(), &named, &m).is_ok());
    }

    #[test]
    fn force_nat_is_the_admins_choice() {
        let mut s = stanza();
        s.open_ports = ports("tcp/22");
        s.restrict_ports = ports("tcp/8022");
        s.force_nat = Some("127.0.0.1 8022".parse().unwrap());
        let g = eval_with(
            &nat_on(),
            &s,
            &msg(MessageType::Access, "10.0.0.5,tcp/22", 1000),
        );
        assert!(g.is_ok(), "{g:?}");
    }

    #[test]
    fn force_nat_forwards_plain_access_requests() {
        let mut s = stanza();
        s.force_nat = Some("192.168.9.9 8022".parse().unwrap());
        let mut on = settings();
        on.nat.forwarding = true;
        let g = eval_with(&on, &s, &msg(MessageType::Access, "10.0.0.5,tcp/22", 1000)).unwrap();
        let nat = g.openings(1000)[0].rule.nat.clone().unwrap();
        assert_eq!(
            (nat.to_addr.to_string(), nat.to_port),
            ("192.168.9.9".into(), 8022)
        );
    }

    #[test]
    fn client_timeout_is_capped_by_max_fw_timeout() {
        let mut s = stanza();
        s.max_fw_timeout = 60;
        let mut m = msg(MessageType::ClientTimeoutAccess, "10.0.0.5,tcp/22", 1000);
        m.client_timeout = Some(600);
        assert_eq!(eval(&s, &m).unwrap().timeout_secs(), 60);
        m.client_timeout = Some(45);
        assert_eq!(eval(&s, &m).unwrap().timeout_secs(), 45);
        // FW_ACCESS_TIMEOUT above MAX_FW_TIMEOUT: the maximum holds, as fwknopd says.
        s.fw_access_timeout = 90;
        let plain = msg(MessageType::Access, "10.0.0.5,tcp/22", 1000);
        assert_eq!(eval(&s, &plain).unwrap().timeout_secs(), 60);
    }

    #[test]
    fn refusals_in_fwknopds_words_with_the_sender_first() {
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        assert_eq!(
            Denial::TooOld { age: 300, max: 120 }.fwknopd_log(ip, 2),
            "[192.0.2.9] (stanza #2) SPA data time difference is too great (300 seconds)."
        );
        assert_eq!(
            Denial::Username { got: "bob\n".into() }.fwknopd_log(ip, 1),
            "[192.0.2.9] (stanza #1) Username in SPA data (bob\\n) does not match required username"
        );
        assert_eq!(
            Denial::NatDisabled.fwknopd_log(ip, 1),
            "(stanza #1) SPA packet from 192.0.2.9 requested NAT access, but is not enabled/supported"
        );
    }
}
