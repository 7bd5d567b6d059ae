//! UDP socket capture (fwknopd's UDP server mode, postern's default).

use super::length_filter::Lengths;
use super::{submit, unix_now, worth_submitting};
use crate::pipeline::{Pipeline, RawPacket};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// Large enough to ride out a burst of knocks while the loop is busy.
const RECV_BUFFER: usize = 8 << 20;
/// Anything longer than a packet can be is cut and then refused by the precheck.
const MAX_DATAGRAM: usize = spa_core::packet::MAX_WIRE_LEN + 1;

/// A large receive buffer: SO_RCVBUFFORCE (CAP_NET_ADMIN, which posternd has)
/// passes net.core.rmem_max; without the privilege, SO_RCVBUF as far as allowed.
fn force_recv_buffer(socket: &Socket) {
    use std::os::fd::AsRawFd;
    let size = RECV_BUFFER as libc::c_int;
    // SAFETY: setsockopt with a pointer to a c_int of the stated size.
    let forced = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    } == 0;
    if !forced {
        let _ = socket.set_recv_buffer_size(RECV_BUFFER);
    }
}

pub fn bind(listen: SocketAddr) -> anyhow::Result<UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(listen),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    force_recv_buffer(&socket);
    if listen.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket
        .bind(&listen.into())
        .map_err(|e| anyhow::anyhow!("UDP capture cannot bind {listen}: {e}"))?;
    Ok(UdpSocket::from_std(socket.into())?)
}

/// Datagrams taken from the kernel per system call (recvmmsg): under a flood the
/// syscall, not the screening, is the larger cost per packet.
const BATCH: usize = 32;

/// Buffers for one `recvmmsg` call, allocated once and reused.
struct RecvBatch {
    bufs: Vec<u8>,
    iovecs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    msgs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers in `iovecs` and `msgs` point into this struct's own
// heap buffers, which never move or resize; the batch is used by one task.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    fn new() -> Self {
        let mut b = RecvBatch {
            bufs: vec![0u8; BATCH * MAX_DATAGRAM],
            // SAFETY (zeroed): plain C structs for which all-zero is a valid value.
            iovecs: vec![unsafe { std::mem::zeroed() }; BATCH],
            addrs: vec![unsafe { std::mem::zeroed() }; BATCH],
            msgs: vec![unsafe { std::mem::zeroed() }; BATCH],
        };
        for i in 0..BATCH {
            b.iovecs[i] = libc::iovec {
                iov_base: b.bufs[i * MAX_DATAGRAM..].as_mut_ptr().cast(),
                iov_len: MAX_DATAGRAM,
            };
            let hdr = &mut b.msgs[i].msg_hdr;
            hdr.msg_iov = &mut b.iovecs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_name = (&mut b.addrs[i] as *mut libc::sockaddr_storage).cast();
        }
        b
    }

    /// Receive up to [`BATCH`] datagrams without blocking.
    fn receive(&mut self, fd: std::os::fd::RawFd) -> std::io::Result<usize> {
        for m in self.msgs.iter_mut() {
            m.msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            m.msg_len = 0;
        }
        // SAFETY: every header points at live buffers of the sizes it states.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Datagram `i` of the last call: its bytes and sender.
    fn datagram(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        let len = (self.msgs[i].msg_len as usize).min(MAX_DATAGRAM);
        // SAFETY: the kernel wrote a sockaddr of `msg_namelen` bytes into addrs[i].
        let addr =
            unsafe { socket2::SockAddr::new(self.addrs[i], self.msgs[i].msg_hdr.msg_namelen) };
        Some((
            &self.bufs[i * MAX_DATAGRAM..i * MAX_DATAGRAM + len],
            addr.as_socket()?,
        ))
    }
}

pub async fn run(socket: UdpSocket, mut pipeline: Pipeline, shutdown: CancellationToken) {
    use std::os::fd::AsRawFd;
    let local = socket
        .local_addr()
        .ok()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified());
    let mut batch = RecvBatch::new();
    let fd = socket.as_raw_fd();
    let mut filtered_for: Option<crate::pipeline::Stanzas> = None;
    // A reload may allow lengths the old filter drops: look for one every second.
    let mut reload_check = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        // The kernel drops impossible lengths; refit the filter after a reload.
        let stanzas = pipeline.keyring().snapshot();
        if !filtered_for
            .as_ref()
            .is_some_and(|f| std::sync::Arc::ptr_eq(f, &stanzas))
        {
            if let Err(e) = Lengths::for_stanzas(&stanzas).attach(fd) {
                tracing::warn!(
                    "UDP capture: no kernel length filter ({e}); screening all in posternd"
                );
            }
            filtered_for = Some(stanzas);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = reload_check.tick() => continue,
            ready = socket.readable() => if let Err(e) = ready {
                tracing::warn!("UDP capture: {e}");
                continue;
            },
        }
        match socket.try_io(tokio::io::Interest::READABLE, || batch.receive(fd)) {
            Ok(n) => {
                let received_at = unix_now();
                for i in 0..n {
                    let Some((bytes, peer)) = batch.datagram(i) else {
                        continue;
                    };
                    if !worth_submitting(&pipeline, bytes, peer) {
                        continue;
                    }
                    let packet = RawPacket {
                        bytes: bytes.to_vec(),
                        peer,
                        forwarded_for: None,
                        destination: local,
                        received_at,
                        capture: "udp",
                    };
                    submit(&mut pipeline, packet);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => tracing::warn!("UDP receive failed: {e}"),
        }
    }
}
