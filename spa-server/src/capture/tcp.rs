//! TCP capture for Tor-reachable knocking: reads the SPA packet from the stream
//! (fwknopd only completes the handshake and sniffs). Bounded in time, bytes and
//! connections; never writes a byte back.

use super::{submit, unix_now};
use crate::pipeline::{Pipeline, RawPacket};
use std::sync::Arc;
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
}

pub async fn run(
    listener: TcpListener,
    limits: Limits,
    pipeline: Pipeline,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let destination = stream.local_addr().ok().map(|a| a.ip());
        let mut pipeline = pipeline.clone();
        tokio::spawn(async move {
            if let Some(bytes) = read_packet(stream, limits).await {
                submit(
                    &mut pipeline,
                    RawPacket {
                        bytes,
                        peer,
                        destination,
                        received_at: unix_now(),
                        capture: "tcp",
                    },
                );
            }
            drop(slot);
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
