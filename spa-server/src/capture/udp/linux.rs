//! The UDP capture's Linux parts: IP_PKTINFO, SO_MEMINFO's drop count,
//! recvmmsg, the kernel length filter, and the wake at a stop.

use super::turn_on;
use crate::capture::length_filter::Lengths;
use crate::pipeline::Keyring;
use socket2::Socket;
use std::net::{Ipv4Addr, UdpSocket};

pub(super) use libc::mmsghdr;

/// What the error says when destinations cannot be asked for.
pub(super) const DESTINATIONS: &str = "IP_PKTINFO";

/// On a wildcard socket, have the kernel tell each datagram's destination
/// address: IP_PKTINFO on IPv4; IPV6_RECVPKTINFO on IPv6, which also tells
/// the IPv4 datagrams a dual-stack socket receives (IPv4-mapped). One control
/// message per datagram, not two.
pub(super) fn request_destinations(socket: &Socket, ipv6: bool) -> std::io::Result<()> {
    if ipv6 {
        turn_on(socket, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        turn_on(socket, libc::IPPROTO_IP, libc::IP_PKTINFO)
    }
}

/// The control message that tells an IPv4 datagram's destination.
pub(super) const IPV4_DESTINATION: libc::c_int = libc::IP_PKTINFO;

/// The destination in such a message's data (`len` bytes at `data`).
///
/// # Safety
/// `data` points at `len` readable bytes.
pub(super) unsafe fn ipv4_destination(data: *const u8, len: usize) -> Option<Ipv4Addr> {
    if len < std::mem::size_of::<libc::in_pktinfo>() {
        return None;
    }
    // SAFETY: `len` bytes are there, as many as an in_pktinfo, read unaligned.
    let info = unsafe { std::ptr::read_unaligned(data.cast::<libc::in_pktinfo>()) };
    Some(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)))
}

/// The socket's count of datagrams the kernel dropped (SO_MEMINFO), read
/// once per receive. Not SO_RXQ_OVFL: a control message on every datagram
/// costs more under a flood than one system call per receive.
pub(super) fn socket_drops(fd: std::os::fd::RawFd) -> std::io::Result<u32> {
    let mut info = [0u32; libc::SK_MEMINFO_DROPS as usize + 1];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: getsockopt into a u32 array of the stated size; the kernel
    // writes at most `len` bytes and says how many.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if (len as usize) < std::mem::size_of_val(&info) {
        return Err(std::io::Error::other("SO_MEMINFO without the drop count"));
    }
    Ok(info[libc::SK_MEMINFO_DROPS as usize])
}

/// Receive up to `msgs.len()` datagrams in one call: wait (up to the socket's
/// timeout) for the first, then take what is there; with `wait` false, only
/// what is there.
pub(super) fn receive_many(
    fd: std::os::fd::RawFd,
    msgs: &mut [mmsghdr],
    wait: bool,
) -> std::io::Result<usize> {
    // SAFETY: every header points at live buffers of the sizes it states.
    let n = unsafe {
        libc::recvmmsg(
            fd,
            msgs.as_mut_ptr(),
            msgs.len() as libc::c_uint,
            if wait {
                libc::MSG_WAITFORONE
            } else {
                libc::MSG_DONTWAIT
            },
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Fit the socket's kernel filter to the stanzas: datagrams of a length no
/// stanza takes are dropped before they are queued.
pub(super) fn fit_length_filter(socket: &UdpSocket, keyring: &Keyring) {
    use std::os::fd::AsRawFd;
    if let Err(e) = Lengths::for_stanzas(&keyring.snapshot()).attach(socket.as_raw_fd()) {
        tracing::warn!("UDP capture: no kernel length filter ({e}); screening all in posternd");
    }
}

/// Make a receive blocked on `socket` return: shut its reading side down.
/// Linux does so on an unconnected UDP socket too (it answers ENOTCONN, and
/// wakes the reader all the same); datagrams already queued stay readable,
/// and new ones are still queued, so the loop's drain at a stop loses none.
pub(super) fn wake_receiver(socket: &UdpSocket) {
    let _ = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Read);
}
