//! Raw socket helpers over libc: UDP sockets bound to a chosen source address,
//! batched sends (sendmmsg), and non-blocking TCP connect attempts with a
//! microsecond timeout. Call them from a thread inside the client namespace.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = a.port().to_be();
    sa.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    sa
}

const SA_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;

/// A UDP socket bound to `src` (any port); closed on drop.
pub struct Udp {
    fd: i32,
}

impl Udp {
    pub fn bind(src: Ipv4Addr) -> io::Result<Udp> {
        // SAFETY: plain socket calls on a fresh fd we own (closed on error / drop).
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let sa = sockaddr(SocketAddrV4::new(src, 0));
            if libc::bind(fd, &sa as *const _ as *const libc::sockaddr, SA_LEN) != 0 {
                let e = io::Error::last_os_error();
                libc::close(fd);
                return Err(e);
            }
            let big: libc::c_int = 4 << 20;
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                &big as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            Ok(Udp { fd })
        }
    }

    pub fn send_to(&self, payload: &[u8], dst: SocketAddrV4) -> io::Result<()> {
        let sa = sockaddr(dst);
        // SAFETY: buffer and address are valid for the duration of the call.
        let n = unsafe {
            libc::sendto(
                self.fd,
                payload.as_ptr() as *const libc::c_void,
                payload.len(),
                0,
                &sa as *const _ as *const libc::sockaddr,
                SA_LEN,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Send `payloads` to `dst` with as few sendmmsg calls as possible; returns how
    /// many the kernel took.
    pub fn send_many(&self, payloads: &[&[u8]], dst: SocketAddrV4) -> usize {
        let mut sa = sockaddr(dst);
        let mut iov: Vec<libc::iovec> = payloads
            .iter()
            .map(|p| libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            })
            .collect();
        // SAFETY: mmsghdr is plain old data; zero is valid before we fill it in.
        let mut msgs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_name = &mut sa as *mut _ as *mut libc::c_void;
                m.msg_hdr.msg_namelen = SA_LEN;
                m.msg_hdr.msg_iov = v as *mut libc::iovec;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let (mut done, mut sent, mut errors) = (0, 0, 0);
        while done < msgs.len() && errors < 100 {
            // SAFETY: msgs[done..] point at live iovecs, payloads and `sa`.
            let n = unsafe {
                libc::sendmmsg(
                    self.fd,
                    msgs[done..].as_mut_ptr(),
                    (msgs.len() - done).min(1024) as libc::c_uint,
                    0,
                )
            };
            if n <= 0 {
                // ENOBUFS and friends: skip the packet that could not be sent.
                errors += 1;
                done += 1;
                continue;
            }
            done += n as usize;
            sent += n as usize;
        }
        sent
    }
}

impl Drop for Udp {
    fn drop(&mut self) {
        // SAFETY: closing the fd we own.
        unsafe {
            libc::close(self.fd);
        }
    }
}

/// A non-blocking TCP connect in flight from `src`.
pub struct Attempt {
    pub fd: i32,
    pub started: Instant,
}

impl Attempt {
    /// Create a socket bound to `src`, start connecting to `dst` (sends the SYN).
    pub fn start(src: Ipv4Addr, dst: SocketAddrV4) -> io::Result<Attempt> {
        // SAFETY: plain socket calls on a fresh fd we own (closed on error / drop).
        unsafe {
            let fd = libc::socket(
                libc::AF_INET,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            );
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let a = Attempt {
                fd,
                started: Instant::now(),
            };
            let one: libc::c_int = 1;
            // Pick the port at connect time: many sources share the port space otherwise.
            libc::setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            let s = sockaddr(SocketAddrV4::new(src, 0));
            if libc::bind(fd, &s as *const _ as *const libc::sockaddr, SA_LEN) != 0 {
                return Err(io::Error::last_os_error());
            }
            let d = sockaddr(dst);
            let r = libc::connect(fd, &d as *const _ as *const libc::sockaddr, SA_LEN);
            if r != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINPROGRESS) {
                    return Err(e);
                }
            }
            Ok(a)
        }
    }

    /// After poll reported the socket ready: did the handshake complete?
    pub fn connected(&self) -> bool {
        let mut err: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt into a stack int.
        let r = unsafe {
            libc::getsockopt(
                self.fd,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                &mut err as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        r == 0 && err == 0
    }

    /// Close with a RST (no FIN handshake, no TIME_WAIT left behind).
    pub fn reset(self) {
        let l = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on our fd; Drop closes it.
        unsafe {
            libc::setsockopt(
                self.fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &l as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        // SAFETY: closing the fd we own. A SYN_SENT socket closes silently.
        unsafe {
            libc::close(self.fd);
        }
    }
}

/// ppoll `fds` for POLLOUT with a microsecond timeout; fills in revents.
pub fn poll_out(fds: &mut [libc::pollfd], wait: Duration) -> usize {
    let ts = libc::timespec {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_nsec: wait.subsec_nanos() as libc::c_long,
    };
    // SAFETY: fds is a valid slice of pollfd; ts lives across the call.
    let n = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
    n.max(0) as usize
}

/// One connect attempt: true if the handshake completed within `wait`.
/// Returns the instant the success was seen.
pub fn try_connect(src: Ipv4Addr, dst: SocketAddrV4, wait: Duration) -> Option<Instant> {
    let a = Attempt::start(src, dst).ok()?;
    let deadline = a.started + wait;
    loop {
        let mut pfd = [libc::pollfd {
            fd: a.fd,
            events: libc::POLLOUT,
            revents: 0,
        }];
        let left = deadline.saturating_duration_since(Instant::now());
        if poll_out(&mut pfd, left) == 1 {
            let at = Instant::now();
            if a.connected() {
                a.reset();
                return Some(at);
            }
            return None; // refused or unreachable: a fresh attempt will tell
        }
        if Instant::now() >= deadline {
            return None;
        }
    }
}

/// Keep trying fresh connects (each `attempt` long) until one succeeds or
/// `deadline` passes. Returns when it first succeeded.
pub fn connect_until(
    src: Ipv4Addr,
    dst: SocketAddrV4,
    attempt: Duration,
    deadline: Instant,
) -> Option<Instant> {
    while Instant::now() < deadline {
        if let Some(t) = try_connect(src, dst, attempt) {
            return Some(t);
        }
    }
    None
}
