//! The UDP capture's Linux parts: IP_PKTINFO, SO_MEMINFO's drop count, the
//! kernel length filter, and the wake at a stop.

use crate::capture::length_filter::Lengths;
use crate::pipeline::Keyring;
use std::net::{Ipv4Addr, UdpSocket};

pub(super) use libc::mmsghdr;

/// What the error says when destinations cannot be asked for.
pub(super) const DESTINATIONS: &str = "IP_PKTINFO";

/// The socket option, and the control message, that tell an IPv4 datagram's
/// destination. On a dual-stack socket IPV6_RECVPKTINFO also tells the IPv4
/// datagrams (IPv4-mapped): one control message per datagram, not two.
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
