//! What the pipeline learnt about one authenticated packet, carried with its
//! [`Outcome`](super::Outcome) for the audit log ([`crate::audit`]).
//!
//! Built only once a packet has passed the HMAC (garbage is refused without
//! one, so it costs nothing here), and filled in as the packet goes on: the
//! stanzas whose HMAC took it, then the stanza whose key decrypted it, who
//! asked for what, what policy granted, and the backends that applied it.
//!
//! Its serialisation is the audit log's record (docs/audit-log.md): it holds
//! no key, no HMAC, no raw packet and none of the message's other fields
//! (rand_val, digest, server_auth).

use super::screen::Screened;
use super::{Authenticated, Decrypted, RawPacket, Received};
use crate::config::access::canonical;
use crate::policy::{Grant, GrantKind};
use serde::Serialize;
use spa_core::{MessageType, SpaMessage};
use std::net::{IpAddr, SocketAddr};

/// Stanza numbers, inline for the usual one or two.
pub type StanzaNumbers = smallvec::SmallVec<[usize; 2]>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The capture that took the packet (`udp`, `pcap`, `tcp`, `nfqueue`).
    pub capture: &'static str,
    pub source: Endpoint,
    /// The client an HTTP proxy said it forwarded the packet for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forwarded_for: Option<IpAddr>,
    /// Where the packet was sent, when the capture knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<IpAddr>,
    /// Stanzas (numbered from 1) whose HMAC took the packet, while no key has
    /// decrypted it yet.
    #[serde(skip_serializing_if = "smallvec::SmallVec::is_empty")]
    pub candidates: StanzaNumbers,
    /// The stanza whose key decrypted the packet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stanza: Option<StanzaId>,
    /// The username in the message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The fingerprint of a GPG packet's verified signer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpg_signer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<Asked>,
    /// What policy approved (present on refusals after policy, too: the
    /// replay cache or the firewall refused it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant: Option<GrantFacts>,
    /// What applied a granted request: firewall backends by name, or
    /// `command` / `cmd_cycle`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<&'static str>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub address: IpAddr,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StanzaId {
    /// From 1, in the order posternd read the stanzas (fwknopd's `stanza #N`).
    pub number: usize,
    /// `file:line` of an access.conf stanza; none for `[[access]]` tables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// What the message asked for, as the client sent it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Asked {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `ALLOW_IP,proto/port[,…]`, or `ALLOW_IP,command` for a command.
    pub message: String,
    /// `host,port` of a NAT request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nat: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_timeout: Option<u32>,
    /// The message's own timestamp (Unix seconds).
    pub timestamp: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GrantFacts {
    /// The address that gets access.
    pub allow: IpAddr,
    /// ENABLE_DESTINATION_RULE: the grant matches only this destination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<IpAddr>,
    /// What the firewall opens (`tcp/22`); a NAT grant forwards the first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nat: Option<NatFacts>,
    /// A command message's command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// CMD_EXEC_USER the command runs as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_as: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
    /// When the access closes (Unix seconds; RFC 3339 in the log).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "rfc3339_seconds"
    )]
    pub expires: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NatFacts {
    pub to: IpAddr,
    pub port: u16,
    pub local: bool,
    pub forward_all: bool,
}

fn rfc3339_seconds<S: serde::Serializer>(at: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    let text = at
        .and_then(|t| i64::try_from(t).ok())
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    match text {
        Some(t) => s.serialize_str(&t),
        None => s.serialize_none(),
    }
}

/// The audit log's name of a message type.
pub fn message_type_name(t: MessageType) -> &'static str {
    match t {
        MessageType::Command => "command",
        MessageType::Access => "access",
        MessageType::NatAccess => "nat_access",
        MessageType::ClientTimeoutAccess => "client_timeout_access",
        MessageType::ClientTimeoutNatAccess => "client_timeout_nat_access",
        MessageType::LocalNatAccess => "local_nat_access",
        MessageType::ClientTimeoutLocalNatAccess => "client_timeout_local_nat_access",
    }
}

impl Decision {
    /// The facts a capture knows about a packet.
    pub fn of(packet: &RawPacket) -> Decision {
        Decision::received(
            packet.capture,
            packet.peer,
            packet.forwarded_for,
            packet.destination,
        )
    }

    fn received(
        capture: &'static str,
        peer: SocketAddr,
        forwarded_for: Option<IpAddr>,
        destination: Option<IpAddr>,
    ) -> Decision {
        Decision {
            capture,
            source: Endpoint {
                address: canonical(peer.ip()),
                port: peer.port(),
            },
            forwarded_for,
            destination: destination.map(canonical),
            candidates: StanzaNumbers::new(),
            stanza: None,
            user: None,
            gpg_signer: None,
            request: None,
            grant: None,
            backends: Vec::new(),
        }
    }

    /// A packet the HMAC took, not decrypted yet.
    pub fn authenticated(a: &Authenticated) -> Decision {
        Decision {
            candidates: a.screened.stanza_numbers(),
            ..Decision::of(&a.packet)
        }
    }

    /// A packet the HMAC took, still in the capture's buffer.
    pub fn screened(r: &Received<'_>, screened: &Screened) -> Decision {
        Decision {
            candidates: screened.stanza_numbers(),
            ..Decision::received(r.capture, r.peer, r.forwarded_for, r.destination)
        }
    }

    /// A packet one stanza's key decrypted: who asked for what.
    pub fn decrypted(d: &Decrypted) -> Decision {
        let msg: &SpaMessage = &d.decoded.message;
        Decision {
            stanza: Some(StanzaId {
                number: d.stanza + 1,
                origin: d.stanzas[d.stanza].origin.as_ref().map(|o| o.to_string()),
            }),
            user: Some(msg.username.clone()),
            gpg_signer: d.signer.clone(),
            request: Some(Asked {
                kind: message_type_name(msg.msg_type),
                message: msg.message.clone(),
                nat: msg.nat_access.clone(),
                client_timeout: msg.client_timeout,
                timestamp: msg.timestamp,
            }),
            ..Decision::of(&d.packet)
        }
    }

    /// What policy approved, for a packet received at `now` (Unix seconds).
    pub fn with_grant(mut self, grant: &Grant, now: u64) -> Decision {
        let openings = grant.openings(now);
        let (command, run_as) = match grant.kind() {
            GrantKind::Command { command, user, .. } => (Some(command.clone()), user.clone()),
            GrantKind::Access { .. } => (None, None),
        };
        let nat = match grant.kind() {
            GrantKind::Access { nat: Some(n), .. } => Some(NatFacts {
                to: n.to_addr,
                port: n.to_port,
                local: n.local,
                forward_all: n.forward_all,
            }),
            _ => None,
        };
        // A CMD_CYCLE grant closes when its timer runs out; a command has no expiry.
        let expires = match (grant.kind(), grant.cmd_cycle()) {
            (GrantKind::Command { .. }, _) => None,
            (GrantKind::Access { .. }, Some(cycle)) => Some(now + u64::from(cycle.timer)),
            (GrantKind::Access { .. }, None) => openings.iter().map(|o| o.expires_at).max(),
        };
        self.grant = Some(GrantFacts {
            allow: grant.source(),
            destination: openings.first().and_then(|o| o.rule.destination),
            ports: openings
                .iter()
                .map(|o| format!("{}/{}", o.rule.proto, o.rule.port))
                .collect(),
            nat,
            command,
            run_as,
            timeout_seconds: matches!(grant.kind(), GrantKind::Access { .. })
                .then(|| grant.timeout_secs()),
            expires,
        });
        self
    }
}
