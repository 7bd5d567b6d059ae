//! UDP socket capture (fwknopd's UDP server mode, postern's default).
//!
//! The receive loop has a thread of its own: `recvmmsg` blocks until a
//! datagram is there (MSG_WAITFORONE) and takes up to [`BATCH`] that are, so
//! a storm costs one system call per batch and no reactor wakeup or task
//! switch per datagram. The screen runs right there; the loop waits on the
//! runtime only when the pipeline is full (backpressure); under a flood it
//! naps between receives ([`super::coalesce`]). Measured against a loop on
//! the runtime's reactor: README, "One typed pass, backpressure, replays
//! refused where they are received".
//!
//! A task beside the loop ([`tend`]) refits the kernel length filter when a
//! reload swaps the stanzas and wakes the blocked receive at a stop, so an
//! idle loop wakes only once a second, to report the kernel's drops.
//!
//! That is Linux (`linux.rs`). On the BSDs (`bsd.rs`) the same loop runs
//! with IP_RECVDSTADDR for IPv4 destinations, without a kernel length filter
//! or drop count, and a stop is seen at the next one-second timeout.

// What differs by system: destinations, drop counts, macOS's recvmsg, the kernel
// length filter, the wake at a stop.
#[cfg(not(target_os = "linux"))]
mod bsd;
#[cfg(target_os = "linux")]
mod linux;
#[cfg(not(target_os = "linux"))]
use bsd as sys;
#[cfg(target_os = "linux")]
use linux as sys;

use super::coalesce::Coalesce;
use super::kernel_drops::{self, Attribution, DropCount};
use super::offer_blocking;
use crate::pipeline::{Keyring, Pipeline, Received};
use socket2::{Socket, Type};
use spa_core::Clock;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// This capture's name in packets, logs and metrics.
const CAPTURE: &str = super::names::UDP;
/// What its kernel drops are told as.
const UDP_DROPS: kernel_drops::Buffer = kernel_drops::Buffer {
    capture: CAPTURE,
    said_as: "UDP capture",
    what: "socket buffer",
};

/// Large enough to ride out a burst of knocks while the loop is busy.
pub(super) const RECV_BUFFER: usize = 8 << 20;
/// Anything longer than a packet can be is cut and then refused by the precheck.
const MAX_DATAGRAM: usize = spa_core::packet::MAX_WIRE_LEN + 1;
/// A blocked receive returns after this long without datagrams, to report
/// what the kernel dropped meanwhile (garbage its length filter refused).
const QUIET_REPORT: Duration = Duration::from_secs(1);
/// The receive loop's thread, as `top -H` and /proc name it.
pub const RECEIVE_THREAD: &str = "postern-udp";
/// At a stop, datagrams already received are taken for at most this long.
const DRAIN_AT_STOP: Duration = Duration::from_secs(1);

pub fn bind(listen: SocketAddr) -> anyhow::Result<UdpSocket> {
    let socket = super::bind_socket(listen, Type::DGRAM, "UDP capture")?;
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(QUIET_REPORT))?;
    super::force_recv_buffer(std::os::fd::AsRawFd::as_raw_fd(&socket), RECV_BUFFER);
    if let Err(e) = sys::socket_drops(std::os::fd::AsRawFd::as_raw_fd(&socket)) {
        tracing::info!("UDP capture: the kernel does not count its drops here (SO_MEMINFO: {e})");
    }
    let bound = socket.local_addr()?.as_socket().unwrap_or(listen);
    if bound.ip().is_unspecified() {
        request_destinations(&socket, bound.is_ipv6()).map_err(|e| {
            anyhow::anyhow!("UDP capture on {bound}: no {}: {e}", sys::DESTINATIONS)
        })?;
    }
    Ok(socket.into())
}

/// On a wildcard socket, have the kernel tell each datagram's destination
/// address: IPV6_RECVPKTINFO on IPv6, the system's own option on IPv4
/// (`sys::IPV4_DESTINATION`).
fn request_destinations(socket: &Socket, ipv6: bool) -> std::io::Result<()> {
    if ipv6 {
        turn_on(socket, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        turn_on(socket, libc::IPPROTO_IP, sys::IPV4_DESTINATION)
    }
}

/// Set the int socket option `level`/`name` to 1.
fn turn_on(socket: &Socket, level: libc::c_int, name: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a pointer to a c_int of the stated size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Read the socket's drop count after a receive (or a quiet wait) and
/// report what it grew by, told apart by why.
fn report_drops(fd: std::os::fd::RawFd, counted: &mut DropCount, by_why: &mut Attribution) {
    let dropped = counted.saw(sys::socket_drops(fd).ok());
    kernel_drops::report(UDP_DROPS, by_why.add(dropped, std::time::Instant::now()));
}

/// Control-message space per datagram: an in_pktinfo or an in6_pktinfo,
/// with room to spare; u64 words keep the cmsghdr alignment.
const CONTROL_WORDS: usize = 12;

/// What a datagram's control messages tell.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Control {
    /// Where it was sent (IPv4-mapped as IPv4); `None` when not told or the
    /// kernel had to cut the messages (MSG_CTRUNC).
    destination: Option<IpAddr>,
}

fn control_of(hdr: &libc::msghdr) -> Control {
    let mut found = Control::default();
    // SAFETY: the header points at our control buffer, filled by the kernel
    // up to msg_controllen; CMSG_* walk it within those bounds, and each data
    // part is read unaligned at its stated type after checking its length.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            let len = ((*c).cmsg_len as usize).saturating_sub(data as usize - c as usize);
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::IPPROTO_IP, sys::IPV4_DESTINATION) => {
                    if let Some(ip) = sys::ipv4_destination(data, len) {
                        found.destination = Some(IpAddr::V4(ip));
                    }
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO)
                    if len >= std::mem::size_of::<libc::in6_pktinfo>() =>
                {
                    let info = std::ptr::read_unaligned(data.cast::<libc::in6_pktinfo>());
                    let ip = Ipv6Addr::from(info.ipi6_addr.s6_addr);
                    found.destination = Some(crate::config::access::canonical(IpAddr::V6(ip)));
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    if hdr.msg_flags & libc::MSG_CTRUNC != 0 {
        found.destination = None;
    }
    found.destination = found.destination.filter(|ip| !ip.is_unspecified());
    found
}

/// Datagrams taken from the kernel per system call (recvmmsg): under a flood the
/// syscall, not the screening, is the larger cost per packet.
const BATCH: usize = super::coalesce::PER_RECEIVE;

/// Buffers for one `recvmmsg` call, allocated once and reused.
struct RecvBatch {
    bufs: Vec<u8>,
    iovecs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    controls: Vec<[u64; CONTROL_WORDS]>,
    msgs: Vec<sys::mmsghdr>,
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
            controls: vec![[0u64; CONTROL_WORDS]; BATCH],
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
            hdr.msg_control = b.controls[i].as_mut_ptr().cast();
        }
        b
    }

    /// Receive up to [`BATCH`] datagrams: wait (up to the socket's timeout)
    /// for the first, then take what is there; with `wait` false, only what
    /// is there.
    fn receive(&mut self, fd: std::os::fd::RawFd, wait: bool) -> std::io::Result<usize> {
        for m in self.msgs.iter_mut() {
            m.msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            m.msg_hdr.msg_controllen = std::mem::size_of::<[u64; CONTROL_WORDS]>() as _;
            m.msg_hdr.msg_flags = 0;
            m.msg_len = 0;
        }
        receive_many(fd, &mut self.msgs, wait)
    }

    /// What the control messages of datagram `i` of the last call tell.
    fn control(&self, i: usize) -> Control {
        control_of(&self.msgs[i].msg_hdr)
    }

    /// Datagram `i` of the last call: its bytes and sender; `None` for the
    /// empty return that wakes the loop at a stop (no sender told).
    fn datagram(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        if self.msgs[i].msg_hdr.msg_namelen == 0 {
            return None;
        }
        let len = (self.msgs[i].msg_len as usize).min(MAX_DATAGRAM);
        // SAFETY: the kernel wrote a sockaddr of `msg_namelen` bytes into addrs[i].
        let addr =
            unsafe { socket2::SockAddr::new(self.addrs[i], self.msgs[i].msg_hdr.msg_namelen) };
        Some((
            &self.bufs[i * MAX_DATAGRAM..i * MAX_DATAGRAM + len],
            super::canonical_peer(addr.as_socket()?),
        ))
    }
}

/// Receive up to `msgs.len()` datagrams in one call: wait (up to the
/// socket's timeout) for the first, then take what is there; with `wait`
/// false, only what is there. (FreeBSD's libc does it with recvmsg calls.)
#[cfg(not(target_os = "macos"))]
fn receive_many(
    fd: std::os::fd::RawFd,
    msgs: &mut [sys::mmsghdr],
    wait: bool,
) -> std::io::Result<usize> {
    // SAFETY: every header points at live buffers of the sizes it states.
    let n = unsafe {
        libc::recvmmsg(
            fd,
            msgs.as_mut_ptr(),
            msgs.len() as _,
            if wait {
                libc::MSG_WAITFORONE
            } else {
                libc::MSG_DONTWAIT
            },
            std::ptr::null_mut::<libc::timespec>(),
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(target_os = "macos")]
use sys::receive_many;

/// The UDP capture, bound.
pub struct UdpCapture {
    socket: UdpSocket,
    clock: Arc<dyn Clock>,
}

impl UdpCapture {
    pub fn open(listen: SocketAddr, clock: Arc<dyn Clock>) -> anyhow::Result<UdpCapture> {
        Ok(UdpCapture {
            socket: bind(listen)?,
            clock,
        })
    }
}

impl super::Capture for UdpCapture {
    fn name(&self) -> &'static str {
        CAPTURE
    }

    /// The receive loop runs on a thread of its own (`postern-udp`), [`tend`]
    /// on the runtime.
    fn start(
        self: Box<Self>,
        pipeline: Pipeline,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let runtime = tokio::runtime::Handle::current();
        let capture: Arc<UdpCapture> = Arc::new(*self);
        let keyring = pipeline.keyring().clone();
        // Subscribed before the first fit, so no reload falls between.
        let swaps = keyring.swaps();
        sys::fit_length_filter(&capture.socket, &keyring);
        let tender = tokio::spawn(tend(capture.clone(), keyring, swaps, shutdown.clone()));
        let receiver = std::thread::Builder::new()
            .name(RECEIVE_THREAD.into())
            .spawn(move || receive_loop(&capture, pipeline, &shutdown, &runtime))
            .expect("spawn the UDP receive thread");
        tokio::task::spawn_blocking(move || {
            let received = receiver.join();
            tender.abort();
            if let Err(panic) = received {
                std::panic::resume_unwind(panic);
            }
        })
    }
}

/// Beside the receive loop, so that it can block without a timer: refit the
/// length filter at once when a reload swaps the stanzas, and at a stop wake
/// the blocked receive.
async fn tend(
    capture: Arc<UdpCapture>,
    keyring: Arc<Keyring>,
    mut swaps: tokio::sync::watch::Receiver<()>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            // (Never closed: this task holds the keyring, and with it the sender.)
            Ok(()) = swaps.changed() => sys::fit_length_filter(&capture.socket, &keyring),
        }
    }
    // Only at a stop: the loop sees the stop as it wakes, and drains.
    sys::wake_receiver(&capture.socket);
}

fn receive_loop(
    capture: &UdpCapture,
    mut pipeline: Pipeline,
    shutdown: &CancellationToken,
    runtime: &tokio::runtime::Handle,
) {
    let socket = &capture.socket;
    use std::os::fd::AsRawFd;
    let _context = runtime.enter();
    // Bound to one address, that is every datagram's destination; on a
    // wildcard bind each datagram's own (IP_PKTINFO), or unknown.
    let bound = socket
        .local_addr()
        .ok()
        .map(|a| crate::config::access::canonical(a.ip()))
        .filter(|ip| !ip.is_unspecified());
    let mut batch = RecvBatch::new();
    let fd = socket.as_raw_fd();
    let mut kernel_drops = DropCount::default();
    let mut drops_by_why = Attribution::new(std::time::Instant::now());
    let mut coalesce = Coalesce::new();
    // At a stop, what the kernel already holds for posternd is still taken
    // (for a second at most), then the loop ends.
    let mut stop_by = None;
    loop {
        if stop_by.is_none() && shutdown.is_cancelled() {
            stop_by = Some(std::time::Instant::now() + DRAIN_AT_STOP);
        }
        if stop_by.is_some_and(|t| std::time::Instant::now() >= t) {
            break;
        }
        let n = match batch.receive(fd, stop_by.is_none()) {
            Ok(n) => n,
            Err(e) if stop_by.is_some() && e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                // Quiet: datagrams of no stanza's length are still dropped.
                report_drops(fd, &mut kernel_drops, &mut drops_by_why);
                continue;
            }
            Err(e) => {
                tracing::warn!("UDP receive failed: {e}");
                std::thread::sleep(QUIET_REPORT);
                continue;
            }
        };
        let received_at = capture.clock.now();
        report_drops(fd, &mut kernel_drops, &mut drops_by_why);
        for i in 0..n {
            let Some((bytes, peer)) = batch.datagram(i) else {
                continue;
            };
            super::count_packet(CAPTURE);
            let received = Received {
                bytes,
                peer,
                forwarded_for: None,
                destination: bound.or_else(|| batch.control(i).destination),
                received_at,
                capture: CAPTURE,
            };
            offer_blocking(&mut pipeline, received, runtime);
        }
        if let Some(nap) = coalesce.after_receive(n, n < BATCH, std::time::Instant::now()) {
            if stop_by.is_none() {
                std::thread::sleep(nap);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Receive from `socket` until `want` datagrams came (each blocked
    /// receive waits up to the socket's timeout; 10 tries at most):
    /// (payload, destination) pairs.
    fn receive(socket: &UdpSocket, want: usize) -> Vec<(Vec<u8>, Option<IpAddr>)> {
        use std::os::fd::AsRawFd;
        let mut batch = RecvBatch::new();
        let mut got = Vec::new();
        for _ in 0..10 {
            if got.len() >= want {
                break;
            }
            if let Ok(n) = batch.receive(socket.as_raw_fd(), true) {
                for i in 0..n {
                    let (bytes, _) = batch.datagram(i).unwrap();
                    got.push((bytes.to_vec(), batch.control(i).destination));
                }
            }
        }
        assert_eq!(got.len(), want, "datagrams within 2 s");
        got.sort();
        got
    }

    fn send(from: &str, to: SocketAddr, payload: &[u8]) {
        let s = std::net::UdpSocket::bind(from).unwrap();
        s.send_to(payload, to).unwrap();
    }

    /// At a stop a receive blocked on a quiet socket returns at once (its
    /// timeout here is a minute), telling no datagram; one sent after is
    /// still queued and read, so the drain at a stop loses nothing.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_wake_returns_the_blocked_receive_and_later_datagrams_are_still_read() {
        use std::os::fd::AsRawFd;
        let socket = Arc::new(bind("127.0.0.1:0".parse().unwrap()).unwrap());
        socket
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let to = socket.local_addr().unwrap();
        let (told_tx, told) = std::sync::mpsc::channel();
        let reader = {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut batch = RecvBatch::new();
                let n = batch.receive(socket.as_raw_fd(), true).unwrap();
                let datagrams = (0..n).filter(|&i| batch.datagram(i).is_some()).count();
                told_tx.send(datagrams).unwrap();
            })
        };
        // Blocked by now; were it not, the wake would still end its wait.
        std::thread::sleep(Duration::from_millis(200));
        sys::wake_receiver(&socket);
        let datagrams = told
            .recv_timeout(Duration::from_secs(20))
            .expect("the blocked receive was not woken");
        assert_eq!(datagrams, 0, "the wake is not a datagram");
        reader.join().unwrap();
        send("127.0.0.1:0", to, b"sent after the wake");
        let mut batch = RecvBatch::new();
        let n = batch.receive(socket.as_raw_fd(), false).unwrap();
        assert_eq!(n, 1);
        assert_eq!(batch.datagram(0).unwrap().0, b"sent after the wake");
    }

    /// A socket with a tiny buffer, flooded without being read: the kernel
    /// drops datagrams, and its count says exactly how many.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_sockets_drop_count_tells_what_the_kernel_dropped() {
        use std::os::fd::AsRawFd;
        let socket = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let fd = socket.as_raw_fd();
        let mut drops = DropCount::default();
        assert_eq!(drops.saw(Some(sys::socket_drops(fd).unwrap())), 0);
        let small: libc::c_int = 4096; // the kernel doubles it; its floor is ~4.6 KiB
                                       // SAFETY: setsockopt with a pointer to a c_int of the stated size.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&small as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        let to = socket.local_addr().unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..200 {
            sender.send_to(&[b'x'; 100], to).unwrap();
        }
        let mut batch = RecvBatch::new();
        let kept = batch.receive(fd, true).unwrap();
        assert!(kept > 0 && kept < 200, "{kept} of 200 datagrams kept");
        let dropped = drops.saw(sys::socket_drops(fd).ok());
        assert_eq!(dropped as usize, 200 - kept, "{kept} kept of 200");
        // Read again after a datagram that was kept: nothing more.
        sender.send_to(b"next", to).unwrap();
        assert_eq!(batch.receive(fd, true).unwrap(), 1);
        assert_eq!(drops.saw(sys::socket_drops(fd).ok()), 0);
    }

    #[test]
    fn a_wildcard_socket_tells_each_datagrams_destination() {
        let socket = bind("0.0.0.0:0".parse().unwrap()).unwrap();
        let port = socket.local_addr().unwrap().port();
        send("127.0.0.1:0", ([127, 0, 0, 1], port).into(), b"a");
        send("127.0.0.1:0", ([127, 0, 0, 2], port).into(), b"b");
        let got = receive(&socket, 2);
        assert_eq!(
            got,
            [
                (b"a".to_vec(), Some("127.0.0.1".parse().unwrap())),
                (b"b".to_vec(), Some("127.0.0.2".parse().unwrap())),
            ]
        );
    }

    #[test]
    fn a_dual_stack_socket_tells_ipv4_destinations_as_ipv4() {
        let Ok(socket) = bind("[::]:0".parse().unwrap()) else {
            return; // no IPv6 on this host
        };
        let port = socket.local_addr().unwrap().port();
        send("127.0.0.1:0", ([127, 0, 0, 3], port).into(), b"v4");
        let v6 = std::net::UdpSocket::bind("[::1]:0")
            .and_then(|s| s.send_to(b"v6", SocketAddr::from((Ipv6Addr::LOCALHOST, port))));
        let got = receive(&socket, if v6.is_ok() { 2 } else { 1 });
        assert_eq!(got[0], (b"v4".to_vec(), Some("127.0.0.3".parse().unwrap())));
        if v6.is_ok() {
            assert_eq!(got[1], (b"v6".to_vec(), Some("::1".parse().unwrap())));
        }
    }
}
