//! A socket filter (classic BPF) that passes only the UDP (and, on a pcap
//! capture, ICMP and TCP) payload lengths some access stanza can take. With HMAC and a block mode about one length in 21 is
//! possible, so the kernel drops most garbage before posternd is woken for it.
//! The screening in userspace stays complete; this only spares it work.
//!
//! Socket filters are Linux's (SO_ATTACH_FILTER): elsewhere only the pcap
//! clause is built, and the UDP capture screens every length itself.

use crate::config::AccessStanza;
use spa_core::packet::{MAX_WIRE_LEN, MIN_GPG_WIRE_LEN, MIN_WIRE_LEN};
use std::collections::BTreeSet;

/// UDP and ICMP headers are both 8 bytes: their length fields count them.
const UDP_HEADER: u32 = 8;
/// An IPv4 ICMP message's length (header included): IP total length less the IP header.
const ICMP_V4_LEN: &str = "(ip[2:2] - ((ip[0] & 0xf) << 2))";
/// An IPv4 TCP segment's payload length: that, less the TCP header (options included).
const TCP_V4_PAYLOAD_LEN: &str = "(ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2))";

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
            if s.protocol == crate::config::access::StanzaProtocol::Native {
                for suite in [spa_native::Suite::Classic, spa_native::Suite::Hybrid] {
                    let (min, max) = suite.length_range();
                    l.exact.extend((min..=max).map(|len| len as u32));
                }
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
    #[cfg(target_os = "linux")]
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

    /// The same test for a pcap capture, as filter-language text to AND with the
    /// user's PCAP_FILTER. It looks at the UDP length field (payload + 8) of IPv4
    /// and of IPv6 without extension headers, at the length of IPv4 ICMP messages
    /// (`fwknop -P icmp`) and, when TCP payloads are plain SPA packets
    /// (`plain_tcp`: no SPA over HTTP, whose requests have any length), at the
    /// payload length of IPv4 TCP segments (`-P tcpraw`, `-P tcp`; segments
    /// without data are dropped too). Everything else (ICMPv6, IPv6 TCP, IPv6 with
    /// extension headers, non-IP) passes, so the user's filter alone decides it.
    pub fn pcap_clause(&self, plain_tcp: bool) -> String {
        let v4 = self.pcap_test("udp[4:2]", UDP_HEADER);
        let v6 = self.pcap_test("ip6[44:2]", UDP_HEADER);
        let icmp = self.pcap_test(ICMP_V4_LEN, UDP_HEADER);
        let mut clause = format!(
            "(not icmp or ({icmp})) and \
             (not udp or (ip and ({v4})) or (ip6 and (ip6[6] != 17 or ({v6}))))"
        );
        if plain_tcp {
            let tcp = self.pcap_test(TCP_V4_PAYLOAD_LEN, 0);
            clause = format!("(not (ip and tcp) or ({tcp})) and {clause}");
        }
        clause
    }

    /// `field` (a payload length plus a `header` it counts) in the set; runs of
    /// consecutive lengths become ranges.
    fn pcap_test(&self, field: &str, header: u32) -> String {
        let mut terms = Vec::new();
        let mut lengths = self.exact.iter().map(|l| l + header).peekable();
        while let Some(first) = lengths.next() {
            let mut last = first;
            while lengths.next_if_eq(&(last + 1)).is_some() {
                last += 1;
            }
            terms.push(match last - first {
                0 => format!("{field} = {first}"),
                1 => format!("{field} = {first} or {field} = {last}"),
                _ => format!("({field} >= {first} and {field} <= {last})"),
            });
        }
        if let Some(min) = self.at_least {
            terms.push(format!("{field} >= {}", min + header));
        }
        if terms.is_empty() {
            // Nothing can pass: a test no well-formed packet meets (pcap has no
            // `false`; every length here comes from a 16-bit IP total length).
            return format!("{field} > 65535");
        }
        terms.join(" or ")
    }

    /// The user's filter narrowed to the lengths some stanza can take (see
    /// [`Lengths::pcap_clause`] for `plain_tcp`).
    pub fn narrow_pcap_filter(&self, user_filter: &str, plain_tcp: bool) -> String {
        let clause = self.pcap_clause(plain_tcp);
        if user_filter.trim().is_empty() {
            clause
        } else {
            format!("({user_filter}) and ({clause})")
        }
    }

    /// Attach (or replace) the filter on a UDP socket.
    #[cfg(target_os = "linux")]
    pub fn attach(&self, fd: std::os::fd::RawFd) -> std::io::Result<()> {
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

    /// An Ethernet frame carrying UDP (IPv4 or IPv6), TCP or ICMP (IPv4) with
    /// `payload_len` bytes.
    fn frame(v6: bool, proto: u8, payload_len: usize) -> Vec<u8> {
        let tcp = proto == 6;
        let l4_header = if tcp { 20 } else { 8 };
        let l4_len = l4_header + payload_len;
        let mut f = vec![0u8; 12];
        let mut ip = if v6 {
            f.extend([0x86, 0xdd]);
            let mut h = vec![0x60, 0, 0, 0, (l4_len >> 8) as u8, l4_len as u8, proto, 64];
            h.extend([0u8; 32]);
            h
        } else {
            f.extend([0x08, 0x00]);
            let total = 20 + l4_len;
            let mut h = vec![
                0x45,
                0,
                (total >> 8) as u8,
                total as u8,
                0,
                0,
                0,
                0,
                64,
                proto,
            ];
            h.extend([0u8; 10]);
            h
        };
        let mut l4 = vec![0u8; l4_header];
        l4[2..4].copy_from_slice(&62201u16.to_be_bytes());
        if tcp {
            l4[12] = 5 << 4;
        } else if proto == 1 {
            l4[..4].copy_from_slice(&[8, 0, 0, 0]);
        } else {
            l4[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        }
        ip.extend(l4);
        ip.extend(vec![b'A'; payload_len]);
        f.extend(ip);
        f
    }

    #[test]
    fn the_pcap_clause_passes_exactly_the_same_udp_and_icmp_lengths() {
        let dead = pcap::Capture::dead(pcap::Linktype::ETHERNET).unwrap();
        let mut gpg = stanza(true);
        gpg.gpg_allow_no_pw = true;
        for stanzas in [vec![stanza(true)], vec![stanza(false)], vec![gpg], vec![]] {
            let l = Lengths::for_stanzas(&stanzas);
            for plain_tcp in [false, true] {
                let expr = l.narrow_pcap_filter("udp port 62201 or tcp or icmp", plain_tcp);
                let program = dead
                    .compile(&expr, true)
                    .unwrap_or_else(|e| panic!("`{expr}`: {e}"));
                for len in 0..=MAX_WIRE_LEN + 100 {
                    let passes = len > 0 && l.passes(len);
                    for v6 in [false, true] {
                        assert_eq!(
                            program.filter(&frame(v6, 17, len)),
                            passes,
                            "UDP payload of {len} bytes, v6 {v6}"
                        );
                    }
                    assert_eq!(
                        program.filter(&frame(false, 1, len)),
                        passes,
                        "ICMP payload of {len} bytes"
                    );
                    // TCP: narrowed when it carries plain packets, else left to
                    // the user's filter (HTTP requests have any length).
                    assert_eq!(
                        program.filter(&frame(false, 6, len)),
                        if plain_tcp { passes } else { true },
                        "TCP payload of {len} bytes, plain_tcp {plain_tcp}"
                    );
                    assert!(program.filter(&frame(true, 6, len)), "IPv6 TCP");
                }
            }
        }
    }

    #[cfg(target_os = "linux")]
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
