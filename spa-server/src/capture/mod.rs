//! Captures: where packets come from. Each runs until the shutdown token fires and
//! feeds every packet to the pipeline without waiting for it.

pub mod pcap;
pub mod tcp;
pub mod udp;

use crate::config::CaptureConfig;
use crate::pipeline::{Pipeline, RawPacket};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use tower::Service;

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Hand a packet to the pipeline. Garbage is judged right here; what passes runs
/// on its own task, so dropping the returned future is fine.
pub fn submit(pipeline: &mut Pipeline, packet: RawPacket) {
    drop(pipeline.call(packet));
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
            file,
        } => {
            let settings = pcap::Settings {
                interfaces,
                filter,
                promisc,
                snaplen,
                file,
            };
            pcap::spawn(settings, pipeline, shutdown)?
        }
    })
}
