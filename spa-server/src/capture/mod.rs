//! Captures: where packets come from. Each runs until the shutdown token fires and
//! feeds every packet to the pipeline without waiting for it.

mod length_filter;
pub mod pcap;
pub mod tcp;
pub mod udp;

use crate::config::CaptureConfig;
use crate::pipeline::{Outcome, Pipeline, RawPacket};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use tower::Service;

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Hand a packet to the pipeline. Garbage is judged right here (its outcome is
/// ready at once); what passes runs on its own task and is logged when done.
pub fn submit(pipeline: &mut Pipeline, packet: RawPacket) {
    use futures_util::FutureExt;
    let peer = packet.peer;
    let mut outcome = pipeline.call(packet);
    match (&mut outcome).now_or_never() {
        Some(Ok(o)) => log_outcome(peer, &o),
        None => {
            tokio::spawn(async move {
                let Ok(o) = outcome.await;
                log_outcome(peer, &o);
            });
        }
    }
}

/// Screen a payload still in the capture's buffer: garbage is refused (and
/// logged) without being copied; `true` means it is worth a [`submit`].
pub fn worth_submitting(pipeline: &Pipeline, bytes: &[u8], peer: std::net::SocketAddr) -> bool {
    let keyring = pipeline.keyring();
    match keyring.screen(bytes, peer.ip(), &keyring.snapshot()) {
        Ok(_) => true,
        Err(outcome) => {
            log_outcome(peer, &outcome);
            false
        }
    }
}

/// Why a packet was refused, at debug level only (never to the network). Grants
/// are logged at info level by the action task.
fn log_outcome(peer: std::net::SocketAddr, outcome: &Outcome) {
    if let Outcome::Denied { stage, reason } = outcome {
        tracing::debug!("refused packet from {peer} at {stage}: {reason}");
    }
}

/// Start one capture; the returned handle ends when it stops.
pub async fn spawn(
    config: &CaptureConfig,
    pipeline: Pipeline,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    Ok(match config.clone() {
        CaptureConfig::Udp { listen } => {
            let socket = udp::bind(listen)?;
            tokio::spawn(udp::run(socket, pipeline, shutdown))
        }
        CaptureConfig::Tcp {
            listen,
            read_timeout_ms,
            max_bytes,
            max_connections,
        } => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| anyhow::anyhow!("TCP capture cannot listen on {listen}: {e}"))?;
            let limits = tcp::Limits {
                read_timeout: std::time::Duration::from_millis(read_timeout_ms),
                max_bytes,
                max_connections,
            };
            tokio::spawn(tcp::run(listener, limits, pipeline, shutdown))
        }
        CaptureConfig::Pcap {
            interfaces,
            filter,
            promisc,
            snaplen,
            any_direction,
            file,
        } => {
            let settings = pcap::Settings {
                interfaces,
                filter,
                promisc,
                snaplen,
                any_direction,
                file,
            };
            pcap::spawn(settings, pipeline, shutdown)?
        }
    })
}
