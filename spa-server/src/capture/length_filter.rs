//! A socket filter (classic BPF) that passes only the UDP payload lengths some
//! access stanza can take. With HMAC and a block mode about one length in 21 is
//! possible, so the kernel drops most garbage before posternd is woken for it.
//! The screening in userspace stays complete; this only spares it work.

use crate::config::AccessStanza;
use spa_core::packet::{MAX_WIRE_LEN, MIN_GPG_WIRE_LEN, MIN_WIRE_LEN};
use std::collections::BTreeSet;
use std::os::fd::RawFd;

const UDP_HEADER: u32 = 8;

/// Payload lengths worth waking up for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lengths {
    exact: BTreeSet<u32>,
    /// GPG packets have no fixed shape: everything from this length on.
    at_least: Option<u32>,
}

impl Lengths {
    pub fn for_stanzas(stanzas: &[AccessStanza]) -> Lengths {
        let mut l = Lengths::default();
        for s in stanzas {
            let possible = (MIN_WIRE_LEN..=MAX_WIRE_LEN).filter(|&len| s.takes_rijndael_len(len));
            l.exact.extend(possible.map(|len| len as u32));
            if s.uses_gpg() {
                l.at_least = Some(MIN_GPG_WIRE_LEN as u32);
            }
        }
        l
    }

    #[cfg(test)]
    fn passes(&self, payload_len: usize) -> bool {
        let len = payload_len as u32;
        self.exact.contains(&len) || self.at_least.is_some_and(|min| len >= min)
    }

    /// `len` (UDP header included) checked against each length: a `jeq` that falls
    /// through to "accept" when equal and skips it otherwise, so no jump is far.
    fn program(&self) -> Vec<libc::sock_filter> {
        const ACCEPT: u32 = u32::MAX;
        let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
            code: code as u16,
            jt,
            jf,
            k,
        };
        let mut p = vec![op(libc::BPF_LD | libc::BPF_W | libc::BPF_LEN, 0, 0, 0)];
        if let Some(min) = self.at_least {
            p.push(op(
                libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K,
                0,
                1,
                min + UDP_HEADER,
            ));
            p.push(op(libc::BPF_RET | libc::BPF_K, 0, 0, ACCEPT));
        }
        for &len in &self.exact {
            p.push(op(
                libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
                0,
                1,
                len + UDP_HEADER,
            ));
            p.push(op(libc::BPF_RET | libc::BPF_K, 0, 0, ACCEPT));
        }
        p.push(op(libc::BPF_RET | libc::BPF_K, 0, 0, 0));
        p
    }

    /// Attach (or replace) the filter on a UDP socket.
    pub fn attach(&self, fd: RawFd) -> std::io::Result<()> {
        let program = self.program();
        let fprog = libc::sock_fprog {
            len: program.len() as u16,
            filter: program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `fprog` points at `program`, alive for the call; the kernel copies it.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&fprog as *const libc::sock_fprog).cast(),
                std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AddrList;
    use spa_core::packet::plausible_rijndael_body;
    use spa_core::Secret;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    fn stanza(hmac: bool) -> AccessStanza {
        let mut s = AccessStanza::new(AddrList::Any);
        s.key = Some(Secret::from_passphrase("k"));
        if hmac {
            s.hmac_key = Some(Secret::from_passphrase("h"));
        }
        s
    }

    #[test]
    fn only_possible_lengths_pass() {
        let l = Lengths::for_stanzas(&[stanza(true)]);
        // Every length a real packet has passes…
        for len in MIN_WIRE_LEN..=MAX_WIRE_LEN {
            assert_eq!(
                l.passes(len),
                len > 43 && plausible_rijndael_body(len - 43),
                "{len}"
            );
        }
        // …and most others do not.
        let passing = (MIN_WIRE_LEN..=MAX_WIRE_LEN)
            .filter(|&n| l.passes(n))
            .count();
        assert!(passing * 15 < MAX_WIRE_LEN - MIN_WIRE_LEN, "{passing}");
        assert!(!Lengths::for_stanzas(&[]).passes(200));
    }

    #[test]
    fn the_kernel_applies_it_to_a_udp_socket() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let l = Lengths::for_stanzas(&[stanza(true)]);
        l.attach(rx.as_raw_fd()).unwrap();
        let good = (MIN_WIRE_LEN..=MAX_WIRE_LEN)
            .find(|&n| l.passes(n))
            .unwrap();
        let bad = good + 1;
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(&vec![b'A'; bad], rx.local_addr().unwrap())
            .unwrap();
        tx.send_to(&vec![b'A'; good], rx.local_addr().unwrap())
            .unwrap();
        let mut buf = [0u8; 2048];
        let (n, _) = rx.recv_from(&mut buf).unwrap();
        assert_eq!(n, good, "the impossible length should have been dropped");
        assert!(rx.recv_from(&mut buf).is_err(), "nothing else arrives");
    }
}
