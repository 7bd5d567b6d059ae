//! The UDP capture's BSD parts: IP_RECVDSTADDR for IPv4 destinations, no
//! drop count, no kernel length filter, and on macOS (no recvmmsg) a batch
//! taken one recvmsg at a time.

use crate::pipeline::Keyring;
use std::net::{Ipv4Addr, UdpSocket};

#[cfg(not(target_os = "macos"))]
pub(super) use libc::mmsghdr;

/// What the error says when destinations cannot be asked for.
pub(super) const DESTINATIONS: &str = "IP_RECVDSTADDR / IPV6_RECVPKTINFO";

/// The socket option, and the control message, that tell an IPv4 datagram's
/// destination (the BSDs have no IP_PKTINFO to receive). Should the kernel
/// not tell it for the IPv4 datagrams of a dual-stack socket, their
/// destination is unknown, and stanzas bound to a destination refuse them
/// (policy.rs): nothing widens.
pub(super) const IPV4_DESTINATION: libc::c_int = libc::IP_RECVDSTADDR;

/// The destination in such a message's data (`len` bytes at `data`): an in_addr.
///
/// # Safety
/// `data` points at `len` readable bytes.
pub(super) unsafe fn ipv4_destination(data: *const u8, len: usize) -> Option<Ipv4Addr> {
    if len < std::mem::size_of::<libc::in_addr>() {
        return None;
    }
    // SAFETY: `len` bytes are there, as many as an in_addr, read unaligned.
    let addr = unsafe { std::ptr::read_unaligned(data.cast::<libc::in_addr>()) };
    Some(Ipv4Addr::from(u32::from_be(addr.s_addr)))
}

/// No per-socket drop count (Linux's SO_MEMINFO) here.
pub(super) fn socket_drops(_fd: std::os::fd::RawFd) -> std::io::Result<u32> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "Linux only",
    ))
}

/// macOS has no recvmmsg: the same header, filled one recvmsg at a time.
#[cfg(target_os = "macos")]
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct mmsghdr {
    pub msg_hdr: libc::msghdr,
    pub msg_len: libc::c_uint,
}

#[cfg(target_os = "macos")]
pub(super) fn receive_many(
    fd: std::os::fd::RawFd,
    msgs: &mut [mmsghdr],
    wait: bool,
) -> std::io::Result<usize> {
    let mut taken = 0;
    for m in msgs.iter_mut() {
        let flags = if wait && taken == 0 {
            0
        } else {
            libc::MSG_DONTWAIT
        };
        // SAFETY: the header points at live buffers of the sizes it states.
        let n = unsafe { libc::recvmsg(fd, &mut m.msg_hdr, flags) };
        if n < 0 {
            if taken == 0 {
                return Err(std::io::Error::last_os_error());
            }
            break;
        }
        m.msg_len = n as libc::c_uint;
        taken += 1;
    }
    Ok(taken)
}

/// No socket filter for UDP sockets here (Linux's SO_ATTACH_FILTER): every
/// datagram reaches posternd and is screened there, whatever its length.
pub(super) fn fit_length_filter(_socket: &UdpSocket, _keyring: &Keyring) {
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        tracing::info!(
            "UDP capture: no kernel length filter on {} (Linux only); posternd screens \
             datagrams of every length itself",
            postern_backend_common::Platform::CURRENT
        )
    });
}

/// Nothing to wake: shutting the reading side down would also discard what
/// is queued (FreeBSD flushes the buffer), so the blocked receive ends at
/// its timeout instead (`QUIET_REPORT`), and the stop waits that long at most.
pub(super) fn wake_receiver(_socket: &UdpSocket) {}
