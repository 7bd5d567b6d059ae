//! The NFQUEUE capture itself (Linux): the queue bound over netlink, its rule,
//! and the loop that screens each queued packet and gives it its verdict.

use super::{iptables_program, rule, socket, RuleTool, Settings};
use crate::capture::kernel_drops::{self, DropCount, Why};
use crate::capture::{count_packet, offer};
use crate::config::ActionConfig;
use crate::pipeline::{Pipeline, Received};
use spa_core::Clock;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

/// This capture's name in logs and metrics.
const CAPTURE: &str = crate::capture::names::NFQUEUE;

/// The NFQUEUE capture: the queue bound and its rule in place.
pub struct NfqueueCapture {
    queue: Listener,
    rule: rule::QueueRule,
    clock: Arc<dyn Clock>,
}

impl NfqueueCapture {
    /// Listen on the queue, then add the rule. Packets queued before the
    /// capture starts wait in the kernel's queue; dropped unstarted, the rule
    /// is removed.
    pub async fn open(
        settings: Settings,
        actions: &[ActionConfig],
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<NfqueueCapture> {
        settings
            .check()
            .map_err(|b| anyhow::anyhow!("nfqueue capture: {}: {}", b.field, b.message))?;
        let tool = RuleTool::for_capture(&settings, actions);
        let maker = rule::Maker {
            tool,
            iptables: iptables_program(actions),
        };
        let queue = Listener::bind(settings.queue)?;
        let for_rule = settings.clone();
        let rule = tokio::task::spawn_blocking(move || rule::QueueRule::install(&for_rule, maker))
            .await??;
        tracing::info!(
            "nfqueue: listening on queue {} for udp/{}{} (rule: {tool:?})",
            settings.queue,
            settings.port,
            settings
                .interface
                .as_deref()
                .map(|i| format!(" on `{i}`"))
                .unwrap_or_default()
        );
        Ok(NfqueueCapture { queue, rule, clock })
    }
}

impl crate::capture::Capture for NfqueueCapture {
    fn name(&self) -> &'static str {
        CAPTURE
    }

    /// The task stops at `shutdown`, after removing the rule and giving every
    /// queued packet its verdict.
    fn start(
        self: Box<Self>,
        pipeline: Pipeline,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(run(*self, pipeline, shutdown))
    }
}

async fn run(capture: NfqueueCapture, mut pipeline: Pipeline, shutdown: CancellationToken) {
    let NfqueueCapture {
        mut queue,
        rule,
        clock,
    } = capture;
    let clock = &*clock;
    let mut drops = DropCount::default();
    let mut drops_tick = tokio::time::interval(DROPS_EVERY);
    drops_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = drops_tick.tick() => check_drops(queue.number, &mut drops),
            ready = queue.readiness.readable() => match ready {
                Ok(mut guard) => {
                    if drain(&mut queue.queue, &mut pipeline, clock, BATCH).await == Drained::Empty {
                        guard.clear_ready();
                    }
                }
                Err(e) => {
                    tracing::error!("nfqueue: cannot wait for packets: {e}");
                    break;
                }
            },
        }
    }
    // Nothing new is queued once the rule is gone; then what is queued is read.
    if let Err(e) = tokio::task::spawn_blocking(move || drop(rule)).await {
        tracing::warn!("nfqueue: removing the rule failed: {e}");
    }
    drain(
        &mut queue.queue,
        &mut pipeline,
        clock,
        2 * QUEUE_MAX_LEN as usize,
    )
    .await;
}

/// Messages handled per wake-up, so a flood cannot keep the task from shutdown.
const BATCH: usize = 256;
/// Bytes of each packet copied to posternd: the largest IPv4 header (60; an
/// IPv6 header is 40), the UDP header (8) and one byte more than a packet can
/// be, so a longer payload is still seen as too long.
const COPY_RANGE: u16 = (60 + 8 + spa_core::packet::MAX_WIRE_LEN + 1) as u16;
/// Packets the kernel holds for posternd before it drops more (default 1024).
const QUEUE_MAX_LEN: u32 = 8192;

/// How its kernel drops are told.
const QUEUE_DROPS: kernel_drops::Buffer = kernel_drops::Buffer {
    capture: CAPTURE,
    said_as: "nfqueue capture",
    what: "queue",
};

/// How often the kernel's drop count for the queue is read.
const DROPS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Packets the kernel dropped for queue `queue` (fail-closed): the queue was
/// full, or the socket's buffer (`queue_dropped` and `user_dropped` in
/// /proc/net/netfilter/nfnetlink_queue, this network namespace's).
fn queue_drops(table: &str, queue: u16) -> Option<u32> {
    table.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first()?.parse::<u16>().ok()? != queue {
            return None;
        }
        let full: u32 = f.get(5)?.parse().ok()?;
        let socket_full: u32 = f.get(6)?.parse().ok()?;
        Some(full.wrapping_add(socket_full))
    })
}

/// Read the kernel's drop count for `queue`; count and warn about growth.
fn check_drops(queue: u16, counted: &mut DropCount) {
    let table = std::fs::read_to_string("/proc/net/netfilter/nfnetlink_queue").unwrap_or_default();
    let dropped = counted.saw(queue_drops(&table, queue));
    if dropped > 0 {
        kernel_drops::report(QUEUE_DROPS, vec![(Why::BufferFull, dropped)]);
    }
}

#[derive(PartialEq, Eq)]
enum Drained {
    Empty,
    More,
}

/// The kernel's queue, bound by this process.
struct Listener {
    // Field order = drop order: deregister the descriptor before nfq closes it.
    readiness: AsyncFd<QueueFd>,
    queue: nfq::Queue,
    number: u16,
}

/// The queue socket's descriptor, owned by `nfq::Queue` (only polled here).
struct QueueFd(RawFd);

impl AsRawFd for QueueFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl Listener {
    fn bind(number: u16) -> anyhow::Result<Listener> {
        let context = |what: &str, e: std::io::Error| {
            anyhow::anyhow!("nfqueue capture: {what} queue {number}: {e}")
        };
        let mut queue = nfq::Queue::open().map_err(|e| context("cannot open", e))?;
        queue.bind(number).map_err(|e| {
            let taken = e.raw_os_error() == Some(libc::EBUSY);
            context(
                if taken {
                    "another program listens on"
                } else {
                    "cannot listen on"
                },
                e,
            )
        })?;
        queue
            .set_fail_open(number, false)
            .map_err(|e| context("cannot make fail-closed", e))?;
        // Only what a knock can fill is copied, and the socket holds a flood's
        // worth of those (as the UDP capture's), so knocks are not lost in one.
        queue
            .set_copy_range(number, COPY_RANGE)
            .map_err(|e| context("cannot set the copy range of", e))?;
        queue
            .set_queue_max_len(number, QUEUE_MAX_LEN)
            .map_err(|e| context("cannot set the length of", e))?;
        queue.set_nonblocking(true);
        let fd = socket::find(number).map_err(|e| context("cannot find the socket of", e))?;
        crate::capture::force_recv_buffer(fd, crate::capture::udp::RECV_BUFFER);
        // SAFETY: `fd` is the open socket `queue` owns; `Listener` drops the
        // registration before the queue, so the descriptor outlives it.
        let readiness =
            unsafe { AsyncFd::register_with_interest(QueueFd(fd), tokio::io::Interest::READABLE) }
                .map_err(|e| context("cannot poll", e.into()))?;
        Ok(Listener {
            readiness,
            queue,
            number,
        })
    }
}

/// Read up to `limit` queued packets, hand each on, give each its verdict.
async fn drain(
    queue: &mut nfq::Queue,
    pipeline: &mut Pipeline,
    clock: &dyn Clock,
    limit: usize,
) -> Drained {
    for _ in 0..limit {
        let mut msg = match queue.recv() {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Drained::Empty,
            // One message lost (cut, interrupted, or the kernel's error reply to
            // a verdict): the others are still there. Bounded by `limit`.
            Err(e) => {
                tracing::warn!("nfqueue: receive failed: {e}");
                continue;
            }
        };
        hand_on(pipeline, msg.get_payload(), clock.now()).await;
        msg.set_verdict(verdict_for_hook(msg.get_hook()));
        if let Err(e) = queue.verdict(msg) {
            tracing::warn!("nfqueue: verdict not delivered: {e}");
        }
    }
    Drained::More
}

/// fwknopd's verdict: drop what came in for the host, let anything else pass.
fn verdict_for_hook(hook: u8) -> nfq::Verdict {
    if i32::from(hook) == libc::NF_INET_LOCAL_IN {
        nfq::Verdict::Drop
    } else {
        nfq::Verdict::Accept
    }
}

/// One queued IP packet into the pipeline, screened like every capture's.
async fn hand_on(pipeline: &mut Pipeline, ip_packet: &[u8], received_at: u64) {
    count_packet(CAPTURE);
    // The payload is the IP packet: the pcap capture's parser for raw IP frames.
    let Some((bytes, peer, destination)) =
        crate::capture::pcap::frame_parts(pcap::Linktype::RAW, ip_packet)
    else {
        return;
    };
    let received = Received {
        bytes,
        peer,
        forwarded_for: None,
        destination: Some(destination),
        received_at,
        capture: CAPTURE,
    };
    offer(pipeline, received).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drop_count_is_the_queues_full_and_socket_full_drops() {
        // queue, port id, waiting, copy mode, copy range, queue_dropped,
        // user_dropped, id sequence, 1 (as the kernel prints them)
        let table = "    1  12345     0 2  1569    7     3   100  1\n\
                     2      0     0 2 65531 4294967295 2 9 1\n";
        assert_eq!(queue_drops(table, 1), Some(10));
        assert_eq!(queue_drops(table, 2), Some(1), "the count wraps");
        assert_eq!(queue_drops(table, 3), None);
        assert_eq!(queue_drops("", 1), None);
        assert_eq!(queue_drops("1 2 3\n", 1), None);
    }

    #[test]
    fn packets_for_the_host_are_dropped_others_pass() {
        assert_eq!(verdict_for_hook(1), nfq::Verdict::Drop);
        for other in [0, 2, 3, 4] {
            assert_eq!(verdict_for_hook(other), nfq::Verdict::Accept);
        }
    }
}
