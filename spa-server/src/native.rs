//! postern's native protocol in posternd (docs/protocol.md): the server key and
//! the registered clients, the per-source bound on public-key work, and the
//! request a native packet makes, in the form the rest of the pipeline (age,
//! policy, replay, action) already takes.

use crate::config::access::StanzaProtocol;
use crate::config::{AccessStanza, ServerSection};
use spa_core::{DecodedMessage, DigestType, MessageType, SpaMessage};
use spa_native::{Opened, Registry, ServerKey, Suite};
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::Mutex;

/// The server's key and the clients it knows; swapped whole at a reload, so
/// a removed client is refused from then on.
pub struct NativeKeys {
    pub server: ServerKey,
    pub registry: Registry,
}

impl NativeKeys {
    /// Read the key and the clients when a PROTOCOL native stanza exists
    /// (`None` otherwise: nothing to read). Errors name the file.
    pub fn load(
        server: &ServerSection,
        stanzas: &[AccessStanza],
    ) -> anyhow::Result<Option<NativeKeys>> {
        if !stanzas.iter().any(|s| s.protocol == StanzaProtocol::Native) {
            return Ok(None);
        }
        let key = ServerKey::load(&server.native_key).map_err(|e| {
            anyhow::anyhow!(
                "native server key {}: {e} (make one with `posternd key generate`)",
                server.native_key.display()
            )
        })?;
        let registry = Registry::load(&server.native_clients).map_err(|e| {
            anyhow::anyhow!("native clients {}: {e}", server.native_clients.display())
        })?;
        tracing::info!(
            "native protocol: {} registered clients in {}",
            registry.len(),
            server.native_clients.display()
        );
        Ok(Some(NativeKeys {
            server: key,
            registry,
        }))
    }
}

/// Native packets past mac1 from one source, opened at most this often; a
/// forgery past mac1 costs a Diffie-Hellman (and a hybrid one a decapsulation).
const OPENS_PER_SECOND: f64 = 10.0;
const OPEN_BURST: f64 = 20.0;
/// Sources remembered; the oldest are forgotten (memory stays bounded).
const SOURCES: usize = 8192;

/// A token bucket per source address for public-key work.
pub struct OpenBudget {
    buckets: Mutex<lru::LruCache<IpAddr, (f64, std::time::Instant)>>,
}

impl Default for OpenBudget {
    fn default() -> Self {
        OpenBudget {
            buckets: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(SOURCES).expect("non-zero"),
            )),
        }
    }
}

impl OpenBudget {
    /// Take one opening for `source`; `false` when its budget is spent.
    pub fn take(&self, source: IpAddr) -> bool {
        let now = std::time::Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, at) = buckets.get_or_insert_mut(source, || (OPEN_BURST, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * OPENS_PER_SECOND).min(OPEN_BURST);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The first native stanza that takes this client from this source.
pub fn stanza_for(stanzas: &[AccessStanza], client: &str, source: IpAddr) -> Option<usize> {
    stanzas.iter().position(|s| {
        s.protocol == StanzaProtocol::Native
            && s.source.contains(source)
            && s.native_clients.iter().any(|n| n == "*" || n == client)
    })
}

/// Why a stanza refuses a packet its client sealed, if it does: the suite
/// it requires, the TOTP code.
pub fn stanza_refuses(
    stanza: &AccessStanza,
    opened: &Opened,
    keys: &NativeKeys,
    now: u64,
) -> Option<String> {
    if stanza.require_hybrid && opened.suite != Suite::Hybrid {
        return Some("REQUIRE_HYBRID: the packet is not X25519 + ML-KEM-768".into());
    }
    if stanza.require_totp {
        let secret = keys
            .registry
            .lookup(&opened.client_key)
            .and_then(|c| c.totp.as_ref());
        match (secret, opened.payload.totp) {
            (None, _) => {
                return Some(format!(
                    "REQUIRE_TOTP: client `{}` has no TOTP secret registered",
                    opened.client
                ))
            }
            (Some(_), None) => return Some("REQUIRE_TOTP: the packet carries no TOTP code".into()),
            (Some(s), Some(code)) if !s.verify(code, now) => {
                return Some("REQUIRE_TOTP: wrong TOTP code".into())
            }
            _ => {}
        }
    }
    None
}

/// The request as the fwknop path's decoded message: access to the ports for
/// the allow address (`0.0.0.0`/`::`: the sender), NAT and client timeout as
/// fwknop's message types carry them; the user is the client's name.
pub fn as_message(opened: &Opened) -> DecodedMessage {
    let p = &opened.payload;
    let ports: Vec<String> = p.ports.iter().map(|s| s.to_string()).collect();
    let msg_type = match (p.nat.is_some(), p.timeout.is_some()) {
        (false, false) => MessageType::Access,
        (false, true) => MessageType::ClientTimeoutAccess,
        (true, false) => MessageType::NatAccess,
        (true, true) => MessageType::ClientTimeoutNatAccess,
    };
    DecodedMessage {
        message: SpaMessage {
            rand_val: String::new(),
            username: opened.client.clone(),
            timestamp: p.timestamp,
            version: format!("native-{}", spa_native::PAYLOAD_VERSION),
            msg_type,
            message: format!("{},{}", p.allow, ports.join(",")),
            nat_access: p.nat.map(|(addr, port)| format!("{addr},{port}")),
            server_auth: None,
            client_timeout: p.timeout,
        },
        digest_type: DigestType::Sha256,
        digest: String::new(),
        encoded_data: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_bounds_each_source_and_refills() {
        let budget = OpenBudget::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let taken = (0..100).filter(|_| budget.take(a)).count();
        assert!((20..=21).contains(&taken), "{taken}");
        // Another source has its own budget.
        assert!(budget.take(b));
        std::thread::sleep(std::time::Duration::from_millis(250));
        assert!(budget.take(a), "no refill");
    }
}
