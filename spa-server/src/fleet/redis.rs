//! The fleet over a Redis stream (`XADD`/`XREAD`), beside the replay keys a
//! group may already share: `<key_prefix><group>:grants`, capped at
//! [`MAX_ENTRIES`] (older entries have long expired by then), each entry the
//! fields `grant` (JSON) and `mac` (hex).

use super::{FleetBus, Signed};
use crate::config::redact_url;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{
    StreamId, StreamMaxlen, StreamRangeReply, StreamReadOptions, StreamReadReply,
};
use redis::AsyncCommands;
use std::time::Duration;

/// Entries kept in the stream (approximately: `MAXLEN ~`).
pub const MAX_ENTRIES: usize = 100_000;
/// Entries read per call.
const BATCH: usize = 1000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub struct RedisBus {
    /// Publishing (short commands).
    writer: ConnectionManager,
    /// Reading: `XREAD BLOCK` holds its connection, so it has its own.
    reader: ConnectionManager,
    stream: String,
}

impl RedisBus {
    /// Connect now, so a wrong URL fails the start (a store that goes away
    /// later is waited for).
    pub async fn connect(url: &str, key_prefix: &str, group: &str) -> Result<RedisBus, String> {
        let shown = redact_url(url);
        let client =
            redis::Client::open(url).map_err(|e| format!("fleet: redis URL `{shown}`: {e}"))?;
        let manager = |response: Duration| {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(response))
                .set_number_of_retries(1);
            ConnectionManager::new_with_config(client.clone(), config)
        };
        let writer = manager(Duration::from_secs(1))
            .await
            .map_err(|e| format!("fleet: redis at `{shown}`: {e}"))?;
        // A blocked read answers within its wait; allow that plus a margin.
        let reader = manager(super::READ_WAIT + Duration::from_secs(2))
            .await
            .map_err(|e| format!("fleet: redis at `{shown}`: {e}"))?;
        Ok(RedisBus {
            writer,
            reader,
            stream: format!("{key_prefix}{group}:grants"),
        })
    }
}

/// An entry's fields; one without them fails verification (and is counted).
fn signed(entry: &StreamId) -> Signed {
    Signed {
        grant: entry.get("grant").unwrap_or_default(),
        mac: entry.get("mac").unwrap_or_default(),
    }
}

#[async_trait::async_trait]
impl FleetBus for RedisBus {
    async fn publish(&self, signed: &Signed) -> Result<(), String> {
        let fields = [
            ("grant", signed.grant.as_str()),
            ("mac", signed.mac.as_str()),
        ];
        let _: Option<String> = self
            .writer
            .clone()
            .xadd_maxlen(
                &self.stream,
                StreamMaxlen::Approx(MAX_ENTRIES),
                "*",
                &fields,
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    async fn read(
        &self,
        cursor: Option<&str>,
        wait: Duration,
    ) -> Result<(Vec<Signed>, Option<String>), String> {
        let mut reader = self.reader.clone();
        let entries: Vec<StreamId> = match cursor {
            // From the start: everything still kept, in pages.
            None => {
                let reply: StreamRangeReply = reader
                    .xrange_count(&self.stream, "-", "+", BATCH)
                    .await
                    .map_err(|e| e.to_string())?;
                reply.ids
            }
            Some(after) => {
                let options = StreamReadOptions::default()
                    .count(BATCH)
                    .block(wait.as_millis() as usize);
                let reply: Option<StreamReadReply> = reader
                    .xread_options(&[&self.stream], &[after], &options)
                    .await
                    .map_err(|e| e.to_string())?;
                reply
                    .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
                    .unwrap_or_default()
            }
        };
        // An empty stream read from the start goes on from its beginning.
        let next = entries
            .last()
            .map(|e| e.id.clone())
            .or_else(|| cursor.map(str::to_string))
            .or_else(|| Some("0-0".into()));
        // The first page may not be all: reading on from its last id (with
        // XREAD) gets the rest.
        Ok((entries.iter().map(signed).collect(), next))
    }
}
