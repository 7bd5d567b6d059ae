//! The queue's netlink socket, for waiting on it without a thread.
//!
//! nfq 0.2.5, its latest release, keeps the socket to itself (`AsRawFd` is in its
//! unreleased master). So it is found among this process's descriptors: the
//! NETLINK_NETFILTER socket whose port id the kernel lists as the listener of the
//! queue in /proc/self/net/netfilter/nfnetlink_queue. Replace this with
//! `Queue::as_raw_fd` once a release has it.

use std::io;
use std::os::fd::RawFd;

/// The netlink port id bound to `queue`, from the kernel's queue list (lines of
/// `queue_num peer_portid queue_total copy_mode copy_range …`).
pub fn listener_port_id(queue_list: &str, queue: u16) -> Option<u32> {
    queue_list.lines().find_map(|l| {
        let mut fields = l.split_whitespace();
        let number: u16 = fields.next()?.parse().ok()?;
        (number == queue).then(|| fields.next()?.parse().ok())?
    })
}

/// The descriptor of this process's socket bound to `queue` (already bound).
pub fn find(queue: u16) -> io::Result<RawFd> {
    let list = std::fs::read_to_string("/proc/self/net/netfilter/nfnetlink_queue")?;
    let port_id = listener_port_id(&list, queue).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("queue {queue} has no listener"),
        )
    })?;
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Some(fd) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if is_netfilter_socket_with_port(fd, port_id) {
            return Ok(fd);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no socket of this process listens on queue {queue}"),
    ))
}

fn is_netfilter_socket_with_port(fd: RawFd, port_id: u32) -> bool {
    // SAFETY: getsockname/getsockopt write at most the lengths passed, into
    // locals of those sizes; on a descriptor that is not a socket they fail.
    unsafe {
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        if libc::getsockname(fd, (&mut addr as *mut libc::sockaddr_nl).cast(), &mut len) != 0
            || addr.nl_family != libc::AF_NETLINK as libc::sa_family_t
            || addr.nl_pid != port_id
        {
            return false;
        }
        let mut protocol: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PROTOCOL,
            (&mut protocol as *mut libc::c_int).cast(),
            &mut len,
        ) == 0
            && protocol == libc::NETLINK_NETFILTER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listener_of_a_queue_is_read_from_the_kernels_list() {
        let list = "    0  31337     0 2 65535     0     0        0  1\n\
                    \x20   1 -4123     0 2 65535     0     0        0  1\n\
                    \x20  12   4242     3 2 65535     0     0       17  1\n";
        assert_eq!(listener_port_id(list, 0), Some(31337));
        assert_eq!(listener_port_id(list, 12), Some(4242));
        assert_eq!(listener_port_id(list, 1), None, "not a port id");
        assert_eq!(listener_port_id(list, 2), None);
        assert_eq!(listener_port_id("", 0), None);
    }
}
