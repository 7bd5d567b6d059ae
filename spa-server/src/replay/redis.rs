//! A replay cache shared by several posternd servers (`[replay] type = "redis"`):
//! a packet one of them accepted is refused by all, which fwknopd cannot do.
//! `SET key NX` is the atomic check-and-insert across servers, and each key
//! expires by itself (`EXAT`) once its packet is too old to pass the age check.
//!
//! Each server also remembers, in a bounded table of its own, the digests it
//! saw recorded in Redis: copies of those are refused at the screen
//! ([`ReplayStore::seen`]), so a replay flood costs an HMAC (or, for copies
//! of a packet just refused, a compare) and a lookup, not a decryption and a
//! round trip to Redis.

use super::{PacketDigest, ReplayError, ReplayStore};
use crate::config::redact_url;
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use spa_core::Clock;
use std::fmt::Write;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A knock waits at most this long for Redis; then it is refused, not granted.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Digests remembered locally (about 80 bytes each: ~1.3 MiB at most).
const LOCAL_HINTS: usize = 16_384;

pub struct RedisStore {
    connection: ConnectionManager,
    key_prefix: String,
    /// Seconds a digest is kept after its packet's timestamp (MAX_SPA_PACKET_AGE);
    /// `None` keeps it for ever (packet aging off).
    keep_for: Option<u64>,
    /// Digests this server recorded (Redis holds those of all servers).
    recorded: AtomicUsize,
    /// Digests known to be in Redis, with the Unix second Redis expires them.
    known: Mutex<lru::LruCache<PacketDigest, u64>>,
    /// Tells when a remembered digest has expired in Redis.
    clock: Arc<dyn Clock>,
}

impl RedisStore {
    /// Connect now, so a wrong URL or a Redis that is not there fails the start.
    pub async fn connect(
        url: &str,
        key_prefix: &str,
        keep_for: Option<u64>,
        clock: Arc<dyn Clock>,
    ) -> Result<RedisStore, ReplayError> {
        let shown = redact_url(url);
        let client = redis::Client::open(url)
            .map_err(|e| ReplayError(format!("redis URL `{shown}`: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(2);
        let connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| ReplayError(format!("redis at `{shown}`: {e}")))?;
        Ok(RedisStore {
            connection,
            key_prefix: key_prefix.to_string(),
            keep_for,
            recorded: AtomicUsize::new(0),
            known: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(LOCAL_HINTS).expect("non-zero"),
            )),
            clock,
        })
    }

    fn key(&self, digest: &PacketDigest) -> String {
        let mut key = String::with_capacity(self.key_prefix.len() + 64);
        key.push_str(&self.key_prefix);
        for b in digest {
            let _ = write!(key, "{b:02x}");
        }
        key
    }
}

#[async_trait]
impl ReplayStore for RedisStore {
    async fn check_and_insert(
        &self,
        digest: PacketDigest,
        stamp: u64,
    ) -> Result<bool, ReplayError> {
        let mut set = redis::cmd("SET");
        set.arg(self.key(&digest)).arg(stamp).arg("NX");
        if let Some(keep) = self.keep_for {
            set.arg("EXAT")
                .arg(stamp.saturating_add(keep).saturating_add(1));
        }
        // "OK" when the key was new, nil when it existed.
        let reply: Option<String> = set
            .query_async(&mut self.connection.clone())
            .await
            .map_err(|e| {
                // Every knock is refused until Redis answers again: say so loudly.
                tracing::warn!("replay cache: Redis failed ({e}); refusing the knock");
                ReplayError(format!("redis: {e}"))
            })?;
        let new = reply.is_some();
        if new {
            self.recorded.fetch_add(1, Ordering::Relaxed);
        }
        // Recorded now, by this server or another: later copies stop at the screen.
        let expires = self
            .keep_for
            .map_or(u64::MAX, |keep| stamp.saturating_add(keep));
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(digest, expires);
        Ok(new)
    }

    fn seen(&self, digest: &PacketDigest) -> bool {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known
            .peek(digest)
            .is_some_and(|&expires| self.clock.now() <= expires)
    }

    /// Redis expires the keys itself.
    async fn prune(&self, _cutoff: u64) -> Result<usize, ReplayError> {
        Ok(0)
    }

    fn len(&self) -> usize {
        self.recorded.load(Ordering::Relaxed)
    }
}
