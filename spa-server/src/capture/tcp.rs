//! TCP capture for Tor-reachable knocking: reads the SPA packet from the stream
//! (fwknopd only completes the handshake and sniffs). Bounded in time, bytes and
//! connections; never writes a byte back.

use super::{submit, unix_now, Intake};
use crate::pipeline::{Pipeline, RawPacket};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub read_timeout: Duration,
    pub max_bytes: usize,
    pub max_connections: usize,
    pub intake: Intake,
}

impl Limits {
    /// One source may hold at most this many of the connection slots, so a single
    /// host cannot keep the door shut for everyone else.
    pub fn per_source(&self) -> usize {
        (self.max_connections / 8).max(2)
    }
}

/// Open connections per source address.
#[derive(Default)]
struct PerSource(Mutex<HashMap<IpAddr, usize>>);

/// Releases the source's count when the connection ends.
struct SourceSlot {
    table: Arc<PerSource>,
    ip: IpAddr,
}

impl PerSource {
    fn try_take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<SourceSlot> {
        let mut map = self.0.lock().expect("per-source map poisoned");
        let n = map.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut map = self.table.0.lock().expect("per-source map poisoned");
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

pub async fn run(
    listener: TcpListener,
    limits: Limits,
    pipeline: Pipeline,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_source = Arc::new(PerSource::default());
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("TCP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Over the limit: close at once rather than queue (no answer either way).
        let Some(source_slot) = per_source.try_take(
            crate::config::access::canonical(peer.ip()),
            limits.per_source(),
        ) else {
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let destination = stream.local_addr().ok().map(|a| a.ip());
        let mut pipeline = pipeline.clone();
        tokio::spawn(async move {
            let read = read_packet(stream, limits).await;
            let carried = read
                .as_deref()
                .and_then(|b| limits.intake.spa_packet(b, peer));
            if let Some(carried) = carried {
                submit(
                    &mut pipeline,
                    RawPacket {
                        bytes: carried.packet.into_owned(),
                        peer,
                        forwarded_for: carried.forwarded_for,
                        destination,
                        received_at: unix_now(),
                        capture: "tcp",
                    },
                );
            }
            drop((slot, source_slot));
        });
    }
}

/// Read until EOF, `max_bytes`, or the timeout; what arrived by then is the packet.
async fn read_packet(mut stream: TcpStream, limits: Limits) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(1600);
    let _ = tokio::time::timeout(limits.read_timeout, async {
        let mut chunk = [0u8; 2048];
        while buf.len() < limits.max_bytes {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n.min(limits.max_bytes - buf.len())]),
            }
        }
    })
    .await;
    while buf.last().is_some_and(|b| b.is_ascii_whitespace()) {
        buf.pop();
    }
    (!buf.is_empty()).then_some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_cannot_take_every_slot() {
        let table = Arc::new(PerSource::default());
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let held: Vec<_> = (0..2).map(|_| table.try_take(a, 2).unwrap()).collect();
        assert!(table.try_take(a, 2).is_none());
        assert!(table.try_take(b, 2).is_some(), "others still get in");
        drop(held);
        assert!(
            table.try_take(a, 2).is_some(),
            "slots come back when connections end"
        );
        assert!(
            table.0.lock().unwrap().is_empty(),
            "no entry outlives its connections"
        );
    }
}
