//! Access policy: a decrypted, fresh message plus its stanza become a [`Grant`] or
//! a typed [`Denial`]. Only this module can build a Grant, so the action stage can
//! never act on anything policy did not approve.

use crate::config::AccessStanza;
use spa_core::request::{AccessRequest, CommandRequest};
use spa_core::{MessageType, ProtoPort, SpaMessage};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

/// Why policy said no. Logged at debug level only, never sent anywhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    TooOld { age: i64, max: u64 },
    StanzaExpired { at: i64 },
    Username { got: String },
    DestinationNotAllowed,
    SourceAddressRequired,
    PortNotOpen(ProtoPort),
    PortRestricted(ProtoPort),
    CommandsDisabled,
    NatDisabled,
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
            Denial::DestinationNotAllowed => f.write_str("destination address not in DESTINATION"),
            Denial::SourceAddressRequired => {
                f.write_str("allow-IP 0.0.0.0 refused by REQUIRE_SOURCE_ADDRESS")
            }
            Denial::PortNotOpen(p) => write!(f, "{p} is not in OPEN_PORTS"),
            Denial::PortRestricted(p) => write!(f, "{p} is in RESTRICT_PORTS"),
            Denial::CommandsDisabled => {
                f.write_str("command message but ENABLE_CMD_EXEC is not set")
            }
            Denial::NatDisabled => {
                f.write_str("NAT access requested but NAT is not enabled on this server")
            }
            Denial::BadMessage(m) => write!(f, "invalid request: {m}"),
        }
    }
}

/// What to do for an approved request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantKind {
    /// Open `ports` for the source.
    Access { ports: Vec<ProtoPort> },
    /// Run a command (message type 0) as `user`.
    Command {
        command: String,
        user: Option<String>,
        group: Option<String>,
    },
}

/// CMD_CYCLE_OPEN / CMD_CYCLE_CLOSE from the stanza.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CmdCycle {
    pub open: String,
    pub close: Option<String>,
    pub timer: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    source: IpAddr,
    kind: GrantKind,
    timeout_secs: u32,
    stanza: usize,
    username: String,
    cmd_cycle: Option<CmdCycle>,
}

impl Grant {
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
        let GrantKind::Access { ports } = &self.kind else {
            return Vec::new();
        };
        ports
            .iter()
            .map(|p| spa_core::firewall::Opening {
                rule: spa_core::firewall::Rule {
                    source: self.source,
                    proto: p.proto,
                    port: p.port,
                    nat: None,
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
            GrantKind::Access { ports } => write!(
                f,
                "{} -> {} for {} s (user {}, stanza #{})",
                self.source,
                spa_core::request::format_proto_ports(ports),
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
    pub nat_enabled: bool,
}

/// Everything policy looks at for one packet.
pub struct Request<'a> {
    pub stanza: &'a AccessStanza,
    pub stanza_index: usize,
    pub message: &'a SpaMessage,
    /// Where the packet came from.
    pub peer: IpAddr,
    /// Where it was sent to, when the capture knows.
    pub destination: Option<IpAddr>,
    /// Unix seconds.
    pub now: u64,
}

pub fn evaluate(settings: &PolicySettings, req: &Request) -> Result<Grant, Denial> {
    let (stanza, msg) = (req.stanza, req.message);
    if settings.packet_aging {
        let age = req.now as i64 - msg.timestamp as i64;
        if age.unsigned_abs() > settings.max_packet_age {
            return Err(Denial::TooOld {
                age,
                max: settings.max_packet_age,
            });
        }
    }
    if let Some(at) = stanza.access_expire_epoch {
        if req.now as i64 >= at {
            return Err(Denial::StanzaExpired { at });
        }
    }
    if let (Some(dest), Some(allowed)) = (req.destination, &stanza.destination) {
        if !allowed.contains(dest) {
            return Err(Denial::DestinationNotAllowed);
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
        };
        (cmd.allow_ip, kind)
    } else {
        if msg.msg_type.has_nat() && !settings.nat_enabled {
            return Err(Denial::NatDisabled);
        }
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
        (
            access.allow_ip,
            GrantKind::Access {
                ports: access.ports,
            },
        )
    };
    let source = if allow_ip == Ipv4Addr::UNSPECIFIED {
        if stanza.require_source_address {
            return Err(Denial::SourceAddressRequired);
        }
        crate::config::access::canonical(req.peer)
    } else {
        IpAddr::V4(allow_ip)
    };
    let timeout_secs = match msg.client_timeout {
        Some(t) if t > 0 => t.min(stanza.max_fw_timeout),
        _ => stanza.fw_access_timeout,
    };
    let cmd_cycle = stanza.cmd_cycle_open.as_ref().map(|open| CmdCycle {
        open: open.clone(),
        close: stanza.cmd_cycle_close.clone(),
        timer: stanza.cmd_cycle_timer.unwrap_or(timeout_secs),
    });
    Ok(Grant {
        source,
        kind,
        timeout_secs,
        stanza: req.stanza_index,
        username: msg.username.clone(),
        cmd_cycle,
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

    const SETTINGS: PolicySettings = PolicySettings {
        max_packet_age: 120,
        packet_aging: true,
        nat_enabled: false,
    };

    fn eval(s: &AccessStanza, m: &SpaMessage) -> Result<Grant, Denial> {
        evaluate(
            &SETTINGS,
            &Request {
                stanza: s,
                stanza_index: 0,
                message: m,
                peer: "192.0.2.9".parse().unwrap(),
                destination: None,
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
    fn client_timeout_is_capped_by_max_fw_timeout() {
        let mut s = stanza();
        s.max_fw_timeout = 60;
        let mut m = msg(MessageType::ClientTimeoutAccess, "10.0.0.5,tcp/22", 1000);
        m.client_timeout = Some(600);
        assert_eq!(eval(&s, &m).unwrap().timeout_secs(), 60);
        m.client_timeout = Some(45);
        assert_eq!(eval(&s, &m).unwrap().timeout_secs(), 45);
    }
}
