//! A NETLINK_NETFILTER socket that sends set-element batches (the fast grant path).
//!
//! Plain libc: the messages are few and fixed (NEWSETELEM, DELSETELEM, GETGEN), so
//! a netlink framework would add more code than it saves. A socket belongs to
//! the network namespace it was created in, so [`NfSocket::open_in_netns`] creates
//! it on a short-lived thread that joined the namespace; afterwards any thread may
//! use it.

pub mod batch;

use batch::{parse_replies, FinishedBatch, Reply};
use std::fs::File;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

/// How long to wait for the kernel's answer before giving up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a batch failed.
#[derive(Debug)]
pub enum BatchError {
    /// The socket could not send or receive.
    Io(io::Error),
    /// The kernel rejected the batch (nothing of it was applied).
    Rejected { errno: i32, what: String },
}

impl BatchError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            BatchError::Io(e) => e.raw_os_error(),
            BatchError::Rejected { errno, .. } => Some(*errno),
        }
    }
}

/// An open nfnetlink socket.
#[derive(Debug)]
pub struct NfSocket {
    fd: OwnedFd,
    next_seq: u32,
}

impl NfSocket {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<NfSocket> {
        // SAFETY: plain socket(2); the fd is owned by OwnedFd right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh, valid fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data; zero means "kernel picks the port id".
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: addr is a valid sockaddr_nl of the given size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const _ as *const libc::sockaddr,
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        // Errors then echo only the header, not our whole (possibly large) message.
        set_int_opt(&fd, libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, 1)?;
        let tv = libc::timeval {
            tv_sec: REPLY_TIMEOUT.as_secs() as _,
            tv_usec: 0,
        };
        set_opt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
        // Start sequence numbers somewhere unpredictable-ish so stale replies of a
        // previous socket can never look like ours.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(1);
        Ok(NfSocket {
            fd,
            next_seq: seed | 1,
        })
    }

    /// Opens a socket inside the network namespace at `path` (`/var/run/netns/NAME`).
    pub fn open_in_netns(path: &Path) -> io::Result<NfSocket> {
        let path = path.to_path_buf();
        std::thread::spawn(move || -> io::Result<NfSocket> {
            let ns = File::open(&path)?;
            // SAFETY: setns on a valid fd; it only changes this short-lived thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            NfSocket::open()
        })
        .join()
        .map_err(|_| io::Error::other("netns thread panicked"))?
    }

    /// Sequence number the next batch should start at.
    pub fn next_seq(&self) -> u32 {
        self.next_seq
    }

    /// Sends one batch and waits until the kernel answered every message. The kernel
    /// commits all or nothing; any error is returned with the message it concerns.
    pub fn execute(&mut self, batch: &FinishedBatch) -> Result<(), BatchError> {
        self.next_seq = batch.next_seq;
        if batch.acked.is_empty() {
            return Ok(());
        }
        self.ensure_sndbuf(batch.bytes.len())
            .map_err(BatchError::Io)?;
        self.send(&batch.bytes).map_err(BatchError::Io)?;
        let mut pending: Vec<u32> = batch.acked.iter().map(|(s, _)| *s).collect();
        let mut first_error: Option<(i32, u32)> = None;
        let mut buf = vec![0u8; 64 * 1024];
        while !pending.is_empty() {
            let n = self.recv(&mut buf).map_err(BatchError::Io)?;
            for reply in parse_replies(&buf[..n]) {
                let Reply::Ack { seq, errno } = reply else {
                    continue;
                };
                if seq == batch.begin_seq && errno != 0 {
                    // The batch itself was refused; no per-message answers follow.
                    return Err(BatchError::Rejected {
                        errno: -errno,
                        what: "starting the batch".into(),
                    });
                }
                if let Some(i) = pending.iter().position(|s| *s == seq) {
                    pending.swap_remove(i);
                    if errno != 0 && first_error.is_none() {
                        first_error = Some((-errno, seq));
                    }
                }
            }
        }
        match first_error {
            None => Ok(()),
            Some((errno, seq)) => {
                let what = batch
                    .acked
                    .iter()
                    .find(|(s, _)| *s == seq)
                    .map(|(_, w)| w.clone())
                    .unwrap_or_default();
                Err(BatchError::Rejected { errno, what })
            }
        }
    }

    /// The ruleset generation id; every committed transaction increments it.
    pub fn generation(&mut self) -> io::Result<u32> {
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        self.send(&batch::getgen_request(seq))?;
        let mut buf = vec![0u8; 8192];
        loop {
            let n = self.recv(&mut buf)?;
            for reply in parse_replies(&buf[..n]) {
                match reply {
                    Reply::Message {
                        kind,
                        seq: s,
                        payload,
                    } if s == seq && kind & 0xff == batch::NFT_MSG_NEWGEN => {
                        let id = batch::find_attr(payload, batch::NFTA_GEN_ID)
                            .and_then(|v| v.get(..4))
                            .ok_or_else(|| io::Error::other("NEWGEN without a generation id"))?;
                        return Ok(u32::from_be_bytes(id.try_into().unwrap()));
                    }
                    Reply::Ack { seq: s, errno } if s == seq && errno != 0 => {
                        return Err(io::Error::from_raw_os_error(-errno))
                    }
                    _ => {}
                }
            }
        }
    }

    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_nl zeroed with family set addresses the kernel (pid 0).
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: bytes and kernel are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                bytes.as_ptr() as *const libc::c_void,
                bytes.len(),
                0,
                &kernel as *const _ as *const libc::sockaddr,
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != bytes.len() {
            return Err(io::Error::other("short netlink send"));
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: buf is valid for writes of buf.len() bytes.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no answer from the kernel's nftables within 5 s",
                    ))
                }
                _ => return Err(e),
            }
        }
    }

    /// A batch must go in one sendmsg, and netlink refuses messages larger than
    /// the send buffer, so grow it for big bursts.
    fn ensure_sndbuf(&self, len: usize) -> io::Result<()> {
        let want = (len + 4096).min(i32::MAX as usize) as libc::c_int;
        let mut cur: libc::c_int = 0;
        let mut sz = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: cur/sz are valid out-pointers for an int option.
        unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                &mut cur as *mut _ as *mut _,
                &mut sz,
            )
        };
        if cur >= want {
            return Ok(());
        }
        // FORCE ignores wmem_max but needs CAP_NET_ADMIN, which we need anyway.
        set_int_opt(&self.fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, want)
            .or_else(|_| set_int_opt(&self.fd, libc::SOL_SOCKET, libc::SO_SNDBUF, want))
    }
}

fn set_int_opt(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    set_opt(fd, level, name, &value)
}

fn set_opt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: value points to a T of size_of::<T>() bytes for the duration of the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value as *const T as *const libc::c_void,
            size_of::<T>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
