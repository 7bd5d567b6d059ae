//! Turning settings into an SPA message and sealing it into a packet.

use crate::error::{ClientError, Result};
use crate::keys::KeyMaterial;
use spa_core::gpg::{self, OpenPgp, SignatureInfo};
use spa_core::message::{rand_val_from, PROTOCOL_VERSION};
use spa_core::packet::{self, HmacKey, PacketKeys};
use spa_core::request::{format_proto_ports, parse_proto_ports, ProtoPort};
use spa_core::{DecodedMessage, DigestType, EncryptionMode, MessageType, Secret, SpaMessage};
use std::net::{IpAddr, Ipv4Addr};

/// Legacy mode uses at most this many key bytes (fwknop cuts longer keys).
pub const LEGACY_KEY_LEN: usize = 16;

fn bad_access(access: &str, why: impl std::fmt::Display) -> ClientError {
    ClientError::usage(format!("invalid access request '{access}' (-A/ACCESS): {why}; expected proto/port[,proto/port...], e.g. tcp/22"))
}

/// Parse -A / ACCESS (`tcp/22,udp/53`).
pub fn parse_access(access: &str) -> Result<Vec<ProtoPort>> {
    if access.trim().is_empty() {
        return Err(bad_access(access, "empty"));
    }
    parse_proto_ports(access).map_err(|e| bad_access(access, e))
}

/// `ALLOW_IP,proto/port[,...]`; with a NAT port the single port is replaced by it.
pub fn access_message(allow_ip: IpAddr, access: &str, nat_port: Option<u16>) -> Result<String> {
    let mut ports = parse_access(access)?;
    if let Some(port) = nat_port {
        if ports.len() != 1 {
            return Err(ClientError::usage("NAT for multiple ports/protocols is not supported (give a single proto/port with -A)"));
        }
        ports[0].port = port;
    }
    Ok(format!("{allow_ip},{}", format_proto_ports(&ports)))
}

/// `ALLOW_IP,command` for -C.
pub fn command_message(allow_ip: IpAddr, command: &str) -> Result<String> {
    if command.is_empty() {
        return Err(ClientError::usage("the server command (-C) is empty"));
    }
    Ok(format!("{allow_ip},{command}"))
}

fn is_hostname(h: &str) -> bool {
    h.len() <= 254
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && label.as_bytes()[0].is_ascii_alphanumeric()
                && label.as_bytes()[label.len() - 1].is_ascii_alphanumeric()
        })
}

/// The NAT field: `-N host[:,]port` (the port defaults to the -A port), or for
/// --nat-local without -N, `<SPA server>,<-A port>`.
pub fn nat_access_field(
    nat_access: Option<&str>,
    nat_local: bool,
    server: &str,
    access_port: u16,
) -> Result<Option<String>> {
    if let Some(spec) = nat_access {
        let spec = spec.replacen(':', ",", 1);
        let (host, port) = match spec.split_once(',') {
            Some((host, port)) => {
                let port = (port.len() <= 5
                    && !port.is_empty()
                    && port.bytes().all(|b| b.is_ascii_digit()))
                .then(|| port.parse::<u16>().ok())
                .flatten()
                .filter(|&p| p != 0)
                .ok_or_else(|| {
                    ClientError::usage(format!(
                        "invalid port in NAT access '{spec}' (-N/NAT_ACCESS): must be 1..65535"
                    ))
                })?;
                (host, port)
            }
            None => (spec.as_str(), access_port),
        };
        if host.parse::<Ipv4Addr>().is_err() && !is_hostname(host) {
            return Err(ClientError::usage(format!("invalid NAT destination '{host}' (-N/NAT_ACCESS): not an IPv4 address or host name")));
        }
        return Ok(Some(format!("{host},{port}")));
    }
    if nat_local {
        return Ok(Some(format!("{server},{access_port}")));
    }
    Ok(None)
}

/// What the message should ask for.
#[derive(Clone, Debug)]
pub struct MessageSpec {
    pub username: String,
    pub timestamp: u64,
    pub message: String,
    pub command: bool,
    pub nat_access: Option<String>,
    pub nat_local: bool,
    /// fwknop sends a client timeout only when it is above zero.
    pub fw_timeout: Option<u32>,
}

/// Assemble and check the message (fresh random value, protocol version 3.0.0).
pub fn build_message(spec: &MessageSpec) -> Result<SpaMessage> {
    let timeout = spec.fw_timeout.filter(|&t| t > 0 && !spec.command);
    let nat = if spec.command {
        None
    } else {
        spec.nat_access.clone()
    };
    let msg_type = MessageType::for_request(
        spec.command,
        nat.is_some() && !spec.nat_local,
        spec.nat_local && nat.is_some(),
        timeout.is_some(),
    );
    let msg = SpaMessage {
        rand_val: rand_val_from(crate::random::bytes::<8>()),
        username: spec.username.clone(),
        timestamp: spec.timestamp,
        version: PROTOCOL_VERSION.to_string(),
        msg_type,
        message: spec.message.clone(),
        nat_access: nat,
        server_auth: None,
        client_timeout: timeout,
    };
    msg.validate()
        .map_err(|e| ClientError::usage(format!("cannot build the SPA message: {e}")))?;
    Ok(msg)
}

/// A sealed packet plus the intermediate values fwknop's -v shows.
#[derive(Clone, Debug)]
pub struct SealedPacket {
    pub message: SpaMessage,
    pub digest_type: DigestType,
    pub mode: EncryptionMode,
    pub hmac_type: Option<DigestType>,
    /// The plaintext fields before `:digest`.
    pub encoded: String,
    /// Base64 SPA digest.
    pub digest: String,
    /// What goes on the wire.
    pub wire: String,
    /// Base64 HMAC (the tail of `wire`).
    pub hmac: Option<String>,
    /// Set for GPG packets (the mode above is then meaningless).
    pub gpg: Option<GpgDetails>,
}

/// What a GPG packet was sealed with, as -v / -T show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpgDetails {
    pub recipient: String,
    pub signer: Option<String>,
    pub home_dir: Option<String>,
    /// The gpg program the engine runs.
    pub exe: String,
}

impl SealedPacket {
    /// The packet without its HMAC.
    pub fn body(&self) -> &str {
        let n = self.hmac.as_ref().map_or(0, |h| h.len());
        &self.wire[..self.wire.len() - n]
    }
}

/// The key bytes sealing uses: legacy mode takes only the first 16 bytes.
pub fn effective_key(key: &Secret, mode: EncryptionMode) -> Secret {
    if mode == EncryptionMode::Legacy && key.bytes().len() > LEGACY_KEY_LEN {
        Secret::new(key.bytes()[..LEGACY_KEY_LEN].to_vec())
    } else {
        key.clone()
    }
}

fn packet_keys<'a>(key: &'a Secret, mode: EncryptionMode, keys: &'a KeyMaterial) -> PacketKeys<'a> {
    PacketKeys {
        key: key.bytes(),
        mode,
        hmac: keys.hmac.as_ref().map(|(digest, k)| HmacKey {
            digest: *digest,
            key: k.bytes(),
        }),
    }
}

/// Encrypt (and MAC) the message.
pub fn seal(
    message: SpaMessage,
    digest: DigestType,
    mode: EncryptionMode,
    keys: &KeyMaterial,
) -> Result<SealedPacket> {
    if mode == EncryptionMode::Legacy && keys.hmac.is_some() {
        return Err(ClientError::usage("legacy encryption mode is incompatible with HMAC (drop --use-hmac or use another -M mode)"));
    }
    let key = effective_key(&keys.key, mode);
    let encoded = message.encode_fields()?;
    let digest_b64 = digest.digest_b64(encoded.as_bytes());
    let salt = crate::random::bytes::<8>();
    let wire = packet::seal(&message, digest, &packet_keys(&key, mode, keys), &salt).map_err(
        |e| match e {
            spa_core::SpaError::Key(reason) => ClientError::Key(reason),
            other => ClientError::Spa(other),
        },
    )?;
    let hmac_type = keys.hmac.as_ref().map(|(d, _)| *d);
    let hmac = hmac_type.map(|d| wire[wire.len() - d.b64_len()..].to_string());
    Ok(SealedPacket {
        message,
        digest_type: digest,
        mode,
        hmac_type,
        encoded,
        digest: digest_b64,
        wire,
        hmac,
        gpg: None,
    })
}

/// Encrypt (and sign, when the details name a signer) the message with GPG.
pub fn seal_gpg(
    message: SpaMessage,
    digest: DigestType,
    pgp: &mut dyn OpenPgp,
    details: GpgDetails,
    hmac: Option<&(DigestType, Secret)>,
) -> Result<SealedPacket> {
    let encoded = message.encode_fields()?;
    let digest_b64 = digest.digest_b64(encoded.as_bytes());
    let hk = hmac.map(|(d, k)| HmacKey {
        digest: *d,
        key: k.bytes(),
    });
    let wire = gpg::seal(
        &message,
        digest,
        pgp,
        &details.recipient,
        details.signer.as_deref(),
        hk.as_ref(),
    )
    .map_err(|e| match e {
        gpg::GpgError::Packet(spa_core::SpaError::Key(reason)) => ClientError::Key(reason),
        other => other.into(),
    })?;
    let hmac_type = hmac.map(|(d, _)| *d);
    let hmac = hmac_type.map(|d| wire[wire.len() - d.b64_len()..].to_string());
    Ok(SealedPacket {
        message,
        digest_type: digest,
        mode: EncryptionMode::default(),
        hmac_type,
        encoded,
        digest: digest_b64,
        wire,
        hmac,
        gpg: Some(details),
    })
}

/// Open our own GPG packet again (-T); needs the recipient's secret key, which a
/// client normally does not have: the error says so.
pub fn verify_gpg(
    packet: &SealedPacket,
    pgp: &mut dyn OpenPgp,
    hmac: Option<&(DigestType, Secret)>,
) -> Result<(DecodedMessage, Option<SignatureInfo>)> {
    let hk = hmac.map(|(d, k)| HmacKey {
        digest: *d,
        key: k.bytes(),
    });
    let opened = gpg::open(packet.wire.as_bytes(), hk.as_ref(), pgp).map_err(|e| match e {
        gpg::GpgError::Engine(m) => {
            ClientError::Gpg(format!("cannot decrypt the packet again for -T: {m} (no access to the recipient's private key?)"))
        }
        other => other.into(),
    })?;
    if opened.decoded.message != packet.message {
        return Err(ClientError::Spa(spa_core::SpaError::DigestMismatch));
    }
    Ok((opened.decoded, opened.signatures.into_iter().next()))
}

/// Open our own packet again (what fwknop's -T does after building).
pub fn verify(packet: &SealedPacket, keys: &KeyMaterial) -> Result<DecodedMessage> {
    let key = effective_key(&keys.key, packet.mode);
    let decoded = packet::open(
        packet.wire.as_bytes(),
        &packet_keys(&key, packet.mode, keys),
    )?;
    if decoded.message != packet.message {
        return Err(ClientError::Spa(spa_core::SpaError::DigestMismatch));
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(hmac: bool) -> KeyMaterial {
        KeyMaterial {
            key: Secret::from_passphrase("testtest"),
            hmac: hmac.then(|| (DigestType::Sha256, Secret::from_passphrase("hmackey"))),
        }
    }

    #[test]
    fn access_and_nat_strings() {
        let ip = Ipv4Addr::new(10, 0, 0, 5).into();
        assert_eq!(
            access_message(ip, "tcp/22", None).unwrap(),
            "10.0.0.5,tcp/22"
        );
        assert_eq!(
            access_message(ip, "tcp/22,udp/53", None).unwrap(),
            "10.0.0.5,tcp/22,udp/53"
        );
        assert_eq!(
            access_message(ip, "tcp/22", Some(55000)).unwrap(),
            "10.0.0.5,tcp/55000"
        );
        assert!(access_message(ip, "tcp/22,udp/53", Some(1)).is_err());
        assert!(access_message(ip, "icmp/22", None).is_err());
        assert!(access_message(ip, "tcp", None).is_err());
        assert_eq!(
            nat_access_field(Some("192.168.1.2:80"), false, "srv", 22)
                .unwrap()
                .unwrap(),
            "192.168.1.2,80"
        );
        assert_eq!(
            nat_access_field(Some("inner.example"), false, "srv", 22)
                .unwrap()
                .unwrap(),
            "inner.example,22"
        );
        assert_eq!(
            nat_access_field(None, true, "srv.example", 22)
                .unwrap()
                .unwrap(),
            "srv.example,22"
        );
        assert!(nat_access_field(Some("bad host:1"), false, "srv", 22).is_err());
        assert!(nat_access_field(Some("1.2.3.4:99999"), false, "srv", 22).is_err());
    }

    fn spec(nat: Option<&str>, local: bool, timeout: Option<u32>, command: bool) -> MessageSpec {
        MessageSpec {
            username: "alice".into(),
            timestamp: 1_700_000_000,
            message: if command {
                "10.0.0.5,echo hi".into()
            } else {
                "10.0.0.5,tcp/22".into()
            },
            command,
            nat_access: nat.map(str::to_string),
            nat_local: local,
            fw_timeout: timeout,
        }
    }

    #[test]
    fn message_types_follow_fwknop() {
        let t = |s: MessageSpec| build_message(&s).unwrap().msg_type.number();
        assert_eq!(t(spec(None, false, None, false)), 1);
        assert_eq!(t(spec(None, false, Some(0), false)), 1);
        assert_eq!(t(spec(None, false, Some(30), false)), 3);
        assert_eq!(t(spec(Some("1.2.3.4,22"), false, None, false)), 2);
        assert_eq!(t(spec(Some("1.2.3.4,22"), false, Some(30), false)), 4);
        assert_eq!(t(spec(Some("srv,22"), true, None, false)), 5);
        assert_eq!(t(spec(Some("srv,22"), true, Some(30), false)), 6);
        assert_eq!(t(spec(None, false, Some(30), true)), 0);
    }

    #[test]
    fn sealed_packets_open_again() {
        for (mode, hmac) in [
            (EncryptionMode::Cbc, true),
            (EncryptionMode::Ctr, false),
            (EncryptionMode::Legacy, false),
        ] {
            let k = keys(hmac);
            let msg = build_message(&spec(None, false, Some(30), false)).unwrap();
            let p = seal(msg.clone(), DigestType::Sha512, mode, &k).unwrap();
            assert_eq!(verify(&p, &k).unwrap().message, msg);
            assert_eq!(p.hmac.is_some(), hmac);
            assert!(p.wire.starts_with(p.body()));
        }
        assert!(seal(
            build_message(&spec(None, false, None, false)).unwrap(),
            DigestType::Sha256,
            EncryptionMode::Legacy,
            &keys(true)
        )
        .is_err());
    }

    #[test]
    fn legacy_mode_cuts_long_keys() {
        let k = KeyMaterial {
            key: Secret::from_passphrase(&"x".repeat(40)),
            hmac: None,
        };
        let p = seal(
            build_message(&spec(None, false, None, false)).unwrap(),
            DigestType::Sha256,
            EncryptionMode::Legacy,
            &k,
        )
        .unwrap();
        assert!(verify(&p, &k).is_ok());
    }
}
