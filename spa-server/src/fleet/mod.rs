//! Fleets (`[fleet]`): one knock opens every gateway of a group. A member
//! that grants a knock publishes the openings, signed with the group key, to a
//! shared store; every other member verifies the signature and applies them
//! with the same expiry. A member that starts, or reconnects after the store
//! was gone, first applies the grants still live.
//!
//! Trust: only holders of the group key can sign, so the shared store (or
//! anyone who can write to it) cannot inject a grant; each member checks the
//! HMAC-SHA256 in constant time before reading the grant, refuses another
//! group's messages, expired ones and ones longer than a client may ask for.
//! Replaying a signed message is harmless: openings carry their absolute
//! expiry and a refresh never extends it.
//!
//! What is shared: plain access openings (address, protocol, port, optional
//! destination). NAT grants, CMD_CYCLE and client commands stay on the member
//! that decided them (a NAT target and a command are that member's business).
//!
//! The store is behind [`FleetBus`]; Redis streams ([`redis`]) is the first.

#[cfg(feature = "redis")]
pub mod redis;

use crate::config::trust::{self, Trust};
use crate::config::ConfError;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use spa_core::firewall::{Opening, Rule};
use spa_core::request::Proto;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// `[fleet]` in postern.toml.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// The group's name: members of one group apply each other's grants.
    pub group: String,
    /// This member's name in logs and messages (default: the host name).
    #[serde(default = "default_member")]
    pub member: String,
    /// The shared store, e.g. `redis://10.0.0.5:6379/0`, `unix:///run/redis.sock`.
    #[serde(serialize_with = "crate::config::redacted_url")]
    pub url: String,
    /// A file holding the group key: at least 32 random bytes in base64
    /// (`head -c 32 /dev/urandom | base64 > fleet.key`), mode 0600.
    pub key_file: PathBuf,
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
}

impl FleetConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.group.is_empty() || self.member.is_empty() {
            return Err("group and member must not be empty".into());
        }
        if !cfg!(feature = "redis") {
            return Err("this posternd was built without Redis (feature `redis`)".into());
        }
        Ok(())
    }
}

fn default_member() -> String {
    nix_hostname().unwrap_or_else(|| "posternd".into())
}

fn nix_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

fn default_key_prefix() -> String {
    "postern:fleet:".into()
}

/// The shortest group key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 32;
/// The longest a client may ask for (fwknop's client timeout is 16 bits); a
/// message asking more is not a grant any member's policy made.
const MAX_TIMEOUT_SECS: u64 = 65_535;
/// Clock difference between members tolerated on expiries.
const CLOCK_SLACK_SECS: u64 = 60;
/// Domain separation for the MAC.
const MAC_CONTEXT: &[u8] = b"postern-fleet-v1\0";

/// The group key, read from its file.
#[derive(Clone)]
pub struct GroupKey(zeroize::Zeroizing<Vec<u8>>);

impl GroupKey {
    pub fn load(path: &Path) -> Result<GroupKey, ConfError> {
        trust::check(path, "the fleet key file", Trust::Secret)?;
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| ConfError::file(path, format!("cannot read the fleet key: {e}")))?,
        );
        let key = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| ConfError::file(path, format!("the fleet key is not base64: {e}")))?;
        if key.len() < MIN_KEY_LEN {
            return Err(ConfError::file(
                path,
                format!(
                    "the fleet key has {} bytes; at least {MIN_KEY_LEN} random bytes are needed \
                     (head -c 32 /dev/urandom | base64)",
                    key.len()
                ),
            ));
        }
        Ok(GroupKey(zeroize::Zeroizing::new(key)))
    }

    #[cfg(test)]
    pub fn from_bytes(bytes: &[u8]) -> GroupKey {
        GroupKey(zeroize::Zeroizing::new(bytes.to_vec()))
    }

    fn mac(&self) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(MAC_CONTEXT);
        mac
    }
}

/// One opening as members exchange it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct SharedOpening {
    source: IpAddr,
    /// `tcp` or `udp`.
    proto: String,
    port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    destination: Option<IpAddr>,
    /// A grant pinned to the client's source port stays pinned on every member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source_port: Option<u16>,
    timeout_secs: u32,
    expires_at: u64,
}

/// What one member granted, as published.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GrantMessage {
    /// Format version.
    v: u8,
    group: String,
    member: String,
    issued_at: u64,
    openings: Vec<SharedOpening>,
}

/// A message as stored: the JSON text and its MAC (hex).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    pub grant: String,
    pub mac: String,
}

/// Openings another member granted, to apply here.
#[derive(Debug)]
pub struct RemoteGrant {
    pub member: String,
    pub openings: Vec<Opening>,
}

/// Why a message from the store was not applied.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("bad signature (not signed with this group's key)")]
    BadMac,
    #[error("not a grant message: {0}")]
    Malformed(String),
    #[error("for group `{0}`")]
    OtherGroup(String),
    #[error("asks for {0} s, more than a client can")]
    TooLong(u64),
}

/// The openings of `openings` a fleet shares (plain access).
pub fn shareable(openings: &[Opening]) -> Vec<Opening> {
    openings
        .iter()
        .filter(|o| o.rule.nat.is_none())
        .cloned()
        .collect()
}

/// Sign what this member granted.
pub fn sign(key: &GroupKey, group: &str, member: &str, now: u64, openings: &[Opening]) -> Signed {
    let message = GrantMessage {
        v: 1,
        group: group.into(),
        member: member.into(),
        issued_at: now,
        openings: openings
            .iter()
            .map(|o| SharedOpening {
                source: o.rule.source,
                proto: o.rule.proto.name().into(),
                port: o.rule.port,
                destination: o.rule.destination,
                source_port: o.rule.source_port,
                timeout_secs: o.timeout_secs,
                expires_at: o.expires_at,
            })
            .collect(),
    };
    let grant = serde_json::to_string(&message).expect("serializable");
    let mut mac = key.mac();
    mac.update(grant.as_bytes());
    Signed {
        grant,
        mac: hex(&mac.finalize().into_bytes()),
    }
}

/// Verify a stored message (the MAC first, in constant time) and return the
/// openings still live at `now`; `Ok(None)` for this member's own messages.
pub fn verify(
    key: &GroupKey,
    group: &str,
    member: &str,
    now: u64,
    signed: &Signed,
) -> Result<Option<RemoteGrant>, Refused> {
    let tag = unhex(&signed.mac).ok_or(Refused::BadMac)?;
    let mut mac = key.mac();
    mac.update(signed.grant.as_bytes());
    mac.verify_slice(&tag).map_err(|_| Refused::BadMac)?;
    let message: GrantMessage =
        serde_json::from_str(&signed.grant).map_err(|e| Refused::Malformed(e.to_string()))?;
    if message.v != 1 {
        return Err(Refused::Malformed(format!("version {}", message.v)));
    }
    if message.group != group {
        return Err(Refused::OtherGroup(message.group));
    }
    if message.member == member {
        return Ok(None);
    }
    let limit = now + MAX_TIMEOUT_SECS + CLOCK_SLACK_SECS;
    if let Some(o) = message.openings.iter().find(|o| o.expires_at > limit) {
        return Err(Refused::TooLong(o.expires_at.saturating_sub(now)));
    }
    let mut openings = Vec::with_capacity(message.openings.len());
    for o in message.openings.into_iter().filter(|o| o.expires_at > now) {
        let proto: Proto = o
            .proto
            .parse()
            .map_err(|e: spa_core::SpaError| Refused::Malformed(e.to_string()))?;
        openings.push(Opening {
            rule: Rule {
                source: o.source,
                proto,
                port: o.port,
                nat: None,
                destination: o.destination,
                source_port: o.source_port,
            },
            timeout_secs: o.timeout_secs,
            expires_at: o.expires_at,
        });
    }
    Ok(Some(RemoteGrant {
        member: message.member,
        openings,
    }))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// A shared store members publish grants to and hear them from.
#[async_trait::async_trait]
pub trait FleetBus: Send + Sync + 'static {
    /// Append one signed message.
    async fn publish(&self, signed: &Signed) -> Result<(), String>;
    /// Messages after `cursor` (`None`: all still kept), waiting up to
    /// `wait` for one; returns them with the cursor to read on from.
    async fn read(
        &self,
        cursor: Option<&str>,
        wait: std::time::Duration,
    ) -> Result<(Vec<Signed>, Option<String>), String>;
}

/// The executor's ends of a running fleet link.
pub struct FleetLink {
    /// Openings this member granted, to publish (never waits: full = dropped,
    /// counted and logged).
    pub publish: mpsc::Sender<Vec<Opening>>,
    /// Openings other members granted, to apply.
    pub remote: mpsc::Receiver<RemoteGrant>,
}

/// Queue sizes between the executor and the fleet tasks.
const QUEUE: usize = 1024;
/// How long a read waits for news before it is asked again.
const READ_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// Pause before trying an unreachable store again.
const RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// Start publishing and listening on `bus` until `stop`.
pub fn start(
    bus: std::sync::Arc<dyn FleetBus>,
    key: GroupKey,
    config: &FleetConfig,
    stop: CancellationToken,
    clock: std::sync::Arc<dyn spa_core::Clock>,
) -> FleetLink {
    let (publish, mut to_publish) = mpsc::channel::<Vec<Opening>>(QUEUE);
    let (to_apply, remote) = mpsc::channel::<RemoteGrant>(QUEUE);
    let (group, member) = (config.group.clone(), config.member.clone());
    {
        let (bus, key, group, member, stop) = (
            bus.clone(),
            key.clone(),
            group.clone(),
            member.clone(),
            stop.clone(),
        );
        let clock = clock.clone();
        tokio::spawn(async move {
            // Grants that could not be published yet (store down), retried
            // while they are live.
            let mut pending: Vec<Vec<Opening>> = Vec::new();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    next = to_publish.recv() => match next {
                        Some(openings) => pending.push(openings),
                        None => return, // the executor is gone
                    },
                    _ = tokio::time::sleep(RETRY), if !pending.is_empty() => {}
                }
                let now = clock.now();
                pending.retain_mut(|o| {
                    o.retain(|o| o.expires_at > now);
                    !o.is_empty()
                });
                while let Some(openings) = pending.first() {
                    let signed = sign(&key, &group, &member, now, openings);
                    match bus.publish(&signed).await {
                        Ok(()) => {
                            crate::metrics::fleet("published");
                            pending.remove(0);
                        }
                        Err(e) => {
                            tracing::warn!(
                                "fleet: cannot publish a grant ({e}); this member serves its \
                                 own knocks, and will publish while the grant is live"
                            );
                            break;
                        }
                    }
                }
                if pending.len() > QUEUE {
                    let dropped = pending.len() - QUEUE;
                    pending.drain(..dropped);
                    crate::metrics::fleet_dropped(dropped);
                    tracing::warn!("fleet: {dropped} unpublished grants dropped (store down)");
                }
            }
        });
    }
    tokio::spawn(listen(bus, key, group, member, to_apply, stop, clock));
    FleetLink { publish, remote }
}

/// Read the store from the start (the grants still live), then follow it.
async fn listen(
    bus: std::sync::Arc<dyn FleetBus>,
    key: GroupKey,
    group: String,
    member: String,
    to_apply: mpsc::Sender<RemoteGrant>,
    stop: CancellationToken,
    clock: std::sync::Arc<dyn spa_core::Clock>,
) {
    let mut cursor: Option<String> = None;
    let mut down = false;
    loop {
        let read = tokio::select! {
            _ = stop.cancelled() => return,
            read = bus.read(cursor.as_deref(), READ_WAIT) => read,
        };
        let (messages, next) = match read {
            Ok(r) => r,
            Err(e) => {
                if !down {
                    tracing::warn!(
                        "fleet: the store is unreachable ({e}); this member serves its own \
                         knocks and catches up when it is back"
                    );
                    crate::metrics::fleet_store_up(false);
                    down = true;
                }
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        if down {
            tracing::info!("fleet: the store is back");
            crate::metrics::fleet_store_up(true);
            down = false;
        }
        if next.is_some() {
            cursor = next;
        }
        let now = clock.now();
        for signed in &messages {
            match verify(&key, &group, &member, now, signed) {
                Ok(Some(grant)) if !grant.openings.is_empty() => {
                    if to_apply.send(grant).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(why) => {
                    crate::metrics::fleet("refused");
                    crate::pipeline::alert(format_args!("fleet: refused a stored grant: {why}"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opening(source: &str, port: u16, expires_at: u64) -> Opening {
        Opening {
            rule: Rule {
                source: source.parse().unwrap(),
                proto: Proto::Tcp,
                port,
                nat: None,
                destination: None,
                source_port: None,
            },
            timeout_secs: 30,
            expires_at,
        }
    }

    #[test]
    fn signed_grants_verify_for_other_members_of_the_group() {
        let key = GroupKey::from_bytes(&[7; 32]);
        let o = [
            opening("192.0.2.7", 22, 1030),
            opening("2001:db8::7", 22, 1030),
        ];
        let signed = sign(&key, "gw", "a", 1000, &o);
        let got = verify(&key, "gw", "b", 1001, &signed).unwrap().unwrap();
        assert_eq!(got.member, "a");
        assert_eq!(got.openings, o);
        // Its own message: nothing to do. Expired: nothing left.
        assert!(verify(&key, "gw", "a", 1001, &signed).unwrap().is_none());
        let late = verify(&key, "gw", "b", 1030, &signed).unwrap().unwrap();
        assert!(late.openings.is_empty());
    }

    #[test]
    fn forged_altered_foreign_and_overlong_grants_are_refused() {
        let key = GroupKey::from_bytes(&[7; 32]);
        let o = [opening("192.0.2.7", 22, 1030)];
        let signed = sign(&key, "gw", "a", 1000, &o);
        let other_key = GroupKey::from_bytes(&[8; 32]);
        assert_eq!(
            verify(&other_key, "gw", "b", 1000, &signed).unwrap_err(),
            Refused::BadMac
        );
        let altered = Signed {
            grant: signed.grant.replace("192.0.2.7", "192.0.2.8"),
            ..signed.clone()
        };
        assert_eq!(
            verify(&key, "gw", "b", 1000, &altered).unwrap_err(),
            Refused::BadMac
        );
        for mac in ["", "zz", &"0".repeat(64), &signed.mac[..62]] {
            let bad = Signed {
                mac: mac.to_string(),
                ..signed.clone()
            };
            assert_eq!(
                verify(&key, "gw", "b", 1000, &bad).unwrap_err(),
                Refused::BadMac
            );
        }
        let foreign = sign(&key, "db", "a", 1000, &o);
        assert!(matches!(
            verify(&key, "gw", "b", 1000, &foreign),
            Err(Refused::OtherGroup(_))
        ));
        let long = sign(
            &key,
            "gw",
            "a",
            1000,
            &[opening("192.0.2.7", 22, 1000 + 100_000)],
        );
        assert!(matches!(
            verify(&key, "gw", "b", 1000, &long),
            Err(Refused::TooLong(_))
        ));
    }

    #[test]
    fn nat_openings_are_not_shared() {
        let mut nat = opening("192.0.2.7", 22, 1030);
        nat.rule.nat = Some(spa_core::firewall::NatRule {
            to_addr: "10.0.0.5".parse().unwrap(),
            to_port: 22,
            local: false,
            snat: None,
            dnat: true,
            forward_all: false,
        });
        let plain = opening("192.0.2.8", 22, 1030);
        assert_eq!(shareable(&[nat, plain.clone()]), [plain]);
    }

    #[test]
    fn key_files_must_be_private_base64_and_long_enough() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str, mode: u32| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        let good = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        assert!(GroupKey::load(&write("ok", &format!("{good}\n"), 0o600)).is_ok());
        let e = GroupKey::load(&write("open", &good, 0o644)).err().unwrap();
        assert!(e.to_string().contains("readable"), "{e}");
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 16]);
        let e = GroupKey::load(&write("short", &short, 0o600))
            .err()
            .unwrap();
        assert!(e.to_string().contains("at least 32"), "{e}");
        let e = GroupKey::load(&write("text", "not base64!", 0o600))
            .err()
            .unwrap();
        assert!(e.to_string().contains("not base64"), "{e}");
    }
}
