//! Packets the kernel dropped before a capture read them: counted, warned
//! about when a full buffer may have cost knocks, and for the UDP capture
//! told apart by why.
//!
//! The UDP socket's drop count (SO_MEMINFO) counts every datagram it refused:
//! those of a length no stanza takes (the kernel length filter, working as
//! meant) and those that found the receive buffer full (which may have been
//! knocks). Only the namespace's UDP `RcvbufErrors` (/proc/net/snmp and
//! snmp6) count the second kind, so that counter tells the two apart: read at
//! most once a second, and only when the socket's count grew.

use std::time::{Duration, Instant};

/// Why the kernel dropped datagrams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// The receive buffer was full: knocks may have been among them.
    BufferFull,
    /// Their length fits no stanza: the kernel length filter refused them.
    LengthFilter,
}

impl Why {
    pub fn label(self) -> &'static str {
        match self {
            Why::BufferFull => "buffer_full",
            Why::LengthFilter => "length_filter",
        }
    }
}

/// A capture's kernel buffer, as its drops are told.
pub struct Buffer {
    /// The capture's name in metrics.
    pub capture: &'static str,
    /// In log lines.
    pub said_as: &'static str,
    pub what: &'static str,
}

/// Count what the kernel dropped for `buffer`, by why; say it (rate-limited)
/// at WARN when the buffer was full (knocks may have been lost), at debug for
/// the length filter (garbage refused as meant).
pub fn report(buffer: Buffer, attributed: Vec<(Why, u64)>) {
    static WARNINGS: std::sync::LazyLock<crate::pipeline::WarnBudget> =
        std::sync::LazyLock::new(|| crate::pipeline::WarnBudget::new("kernel drop", 1, 5));
    let Buffer {
        capture,
        said_as,
        what,
    } = buffer;
    for (why, dropped) in attributed {
        crate::metrics::capture_kernel_drops(capture, why.label(), dropped);
        match why {
            Why::BufferFull => WARNINGS.warn(format_args!(
                "{said_as}: the kernel dropped {dropped} packets before posternd read them: \
                 its {what} was full (counted in postern_capture_kernel_drops_total\
                 {{capture=\"{capture}\",reason=\"buffer_full\"}})"
            )),
            Why::LengthFilter => tracing::debug!(
                "{said_as}: the kernel length filter refused {dropped} packets of a length \
                 no stanza takes"
            ),
        }
    }
}

/// A kernel count of drops (a socket's, SO_MEMINFO; a capture ring's, as
/// libpcap keeps it), read now and then: growth between two reads is what
/// was dropped in between.
#[derive(Debug, Default)]
pub struct DropCount {
    last: u32,
}

impl DropCount {
    /// Datagrams dropped since the last count seen (the count wraps at 2^32).
    pub fn saw(&mut self, count: Option<u32>) -> u64 {
        let Some(count) = count else {
            return 0;
        };
        let grown = count.wrapping_sub(self.last);
        self.last = count;
        u64::from(grown)
    }
}

/// How often the namespace's counter is read while drops are pending.
const ATTRIBUTE_EVERY: Duration = Duration::from_secs(1);

/// Socket drops waiting to be told apart, and the namespace's buffer-full
/// count they are told apart by.
#[derive(Debug)]
pub struct Attribution {
    pending: u64,
    /// Buffer-full drops the namespace counted that no socket drop has been
    /// put down to yet (other sockets' count too: they err towards warning).
    buffer_full_credit: u64,
    rcvbuf_errors: Option<u64>,
    read_at: Instant,
    read_errors: fn() -> Option<u64>,
}

impl Attribution {
    pub fn new(now: Instant) -> Attribution {
        Attribution::reading(namespace_rcvbuf_errors, now)
    }

    fn reading(read_errors: fn() -> Option<u64>, now: Instant) -> Attribution {
        Attribution {
            pending: 0,
            buffer_full_credit: 0,
            rcvbuf_errors: read_errors(),
            read_at: now,
            read_errors,
        }
    }

    /// Take `dropped` more socket drops; once a second, what they were.
    pub fn add(&mut self, dropped: u64, now: Instant) -> Vec<(Why, u64)> {
        self.pending += dropped;
        if self.pending == 0 || now.saturating_duration_since(self.read_at) < ATTRIBUTE_EVERY {
            return Vec::new();
        }
        self.read_at = now;
        let errors = (self.read_errors)();
        let counted_before = self.rcvbuf_errors;
        if errors.is_some() {
            self.rcvbuf_errors = errors;
        }
        let full = match (counted_before, errors) {
            (Some(before), Some(after)) => {
                self.buffer_full_credit += after.saturating_sub(before);
                let full = self.pending.min(self.buffer_full_credit);
                self.buffer_full_credit -= full;
                full
            }
            // Without the namespace's count, now or before, every drop may
            // have been a knock.
            _ => self.pending,
        };
        let filtered = self.pending - full;
        self.pending = 0;
        [(Why::BufferFull, full), (Why::LengthFilter, filtered)]
            .into_iter()
            .filter(|&(_, n)| n > 0)
            .collect()
    }
}

/// UDP receive-buffer errors of this network namespace, IPv4 and IPv6.
fn namespace_rcvbuf_errors() -> Option<u64> {
    let v4 = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let v6 = std::fs::read_to_string("/proc/net/snmp6").unwrap_or_default();
    Some(snmp_udp_rcvbuf_errors(&v4)? + snmp6_udp_rcvbuf_errors(&v6).unwrap_or(0))
}

/// `RcvbufErrors` of the `Udp:` header and value lines of /proc/net/snmp.
fn snmp_udp_rcvbuf_errors(text: &str) -> Option<u64> {
    let mut udp = text.lines().filter(|l| l.starts_with("Udp: "));
    let names = udp.next()?;
    let values = udp.next()?;
    let at = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// `Udp6RcvbufErrors` of /proc/net/snmp6.
fn snmp6_udp_rcvbuf_errors(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next()? == "Udp6RcvbufErrors").then(|| words.next()?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn drop_counts_grow_by_their_difference_and_wrap() {
        let mut d = DropCount::default();
        assert_eq!(d.saw(None), 0);
        assert_eq!(d.saw(Some(5)), 5);
        assert_eq!(d.saw(Some(5)), 0);
        assert_eq!(d.saw(Some(8)), 3);
        d.last = u32::MAX - 1;
        assert_eq!(d.saw(Some(2)), 4);
    }

    #[test]
    fn the_snmp_files_are_read_by_name() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    Udp: 10 0 7 3 5 0\n\
                    UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    UdpLite: 0 0 0 0 99 0\n";
        assert_eq!(snmp_udp_rcvbuf_errors(snmp), Some(5));
        let snmp6 = "Udp6InDatagrams                 \t4\nUdp6RcvbufErrors                \t2\nUdpLite6RcvbufErrors 9\n";
        assert_eq!(snmp6_udp_rcvbuf_errors(snmp6), Some(2));
        assert_eq!(snmp_udp_rcvbuf_errors("Ip: a\nIp: 1\n"), None);
        // This machine's own files parse.
        assert!(namespace_rcvbuf_errors().is_some());
    }

    static ERRORS: AtomicU64 = AtomicU64::new(100);
    fn errors() -> Option<u64> {
        Some(ERRORS.load(Ordering::SeqCst))
    }

    #[test]
    fn drops_are_put_down_to_a_full_buffer_only_as_far_as_the_namespace_counted_one() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut a = Attribution::reading(errors, t0);
        // Within the second: pending.
        assert!(a.add(30, at(100)).is_empty());
        // No buffer errors: all 30 were the length filter.
        assert_eq!(a.add(0, at(1_100)), vec![(Why::LengthFilter, 30)]);
        // 12 buffer errors, 20 drops: 12 full, 8 filtered.
        ERRORS.store(112, Ordering::SeqCst);
        assert_eq!(
            a.add(20, at(2_200)),
            vec![(Why::BufferFull, 12), (Why::LengthFilter, 8)]
        );
        // Errors counted before the datagrams carrying the drops arrived: the
        // credit waits for them.
        ERRORS.store(115, Ordering::SeqCst);
        assert_eq!(a.add(1, at(3_300)), vec![(Why::BufferFull, 1)]);
        assert_eq!(
            a.add(4, at(4_400)),
            vec![(Why::BufferFull, 2), (Why::LengthFilter, 2)]
        );
        // Nothing pending: nothing to say.
        assert!(a.add(0, at(9_000)).is_empty());
    }

    #[test]
    fn without_the_namespace_count_every_drop_is_taken_for_a_full_buffer() {
        let t0 = Instant::now();
        let mut a = Attribution::reading(|| None, t0);
        assert_eq!(
            a.add(7, t0 + Duration::from_secs(2)),
            vec![(Why::BufferFull, 7)]
        );
    }

    static LATE: AtomicU64 = AtomicU64::new(0);
    fn late_errors() -> Option<u64> {
        match LATE.load(Ordering::SeqCst) {
            0 => None,
            n => Some(n),
        }
    }

    /// A count unreadable at first and readable later: the first drops are
    /// taken for a full buffer, later ones are told apart from the new base.
    #[test]
    fn a_count_that_becomes_readable_is_the_base_from_then_on() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut a = Attribution::reading(late_errors, t0);
        LATE.store(40, Ordering::SeqCst);
        assert_eq!(a.add(5, at(2)), vec![(Why::BufferFull, 5)]);
        assert_eq!(a.add(6, at(4)), vec![(Why::LengthFilter, 6)]);
        LATE.store(43, Ordering::SeqCst);
        assert_eq!(
            a.add(6, at(6)),
            vec![(Why::BufferFull, 3), (Why::LengthFilter, 3)]
        );
    }
}
