//! UDP socket capture (fwknopd's UDP server mode, postern's default).

use super::{submit, unix_now};
use crate::pipeline::{Pipeline, RawPacket};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// Large enough to ride out a burst of knocks while the loop is busy.
const RECV_BUFFER: usize = 8 << 20;
/// Anything longer than a packet can be is cut and then refused by the precheck.
const MAX_DATAGRAM: usize = spa_core::packet::MAX_WIRE_LEN + 1;

pub fn bind(listen: SocketAddr) -> anyhow::Result<UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(listen),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    // Best effort: the kernel caps it at net.core.rmem_max.
    let _ = socket.set_recv_buffer_size(RECV_BUFFER);
    if listen.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket
        .bind(&listen.into())
        .map_err(|e| anyhow::anyhow!("UDP capture cannot bind {listen}: {e}"))?;
    Ok(UdpSocket::from_std(socket.into())?)
}

pub async fn run(socket: UdpSocket, mut pipeline: Pipeline, shutdown: CancellationToken) {
    let local = socket
        .local_addr()
        .ok()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified());
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            received = socket.recv_from(&mut buf) => match received {
                Ok((n, peer)) => submit(&mut pipeline, RawPacket {
                    bytes: buf[..n].to_vec(),
                    peer,
                    destination: local,
                    received_at: unix_now(),
                    capture: "udp",
                }),
                Err(e) => tracing::warn!("UDP receive failed: {e}"),
            },
        }
    }
}
