//! NFQUEUE capture (fwknopd's ENABLE_NFQ_CAPTURE): the kernel queues the UDP
//! packets for the SPA port to posternd, which screens each like every capture
//! does and gives it its verdict. posternd adds the queue rule itself once it
//! listens on the queue, and removes it before it stops listening ([`rule`]).
//!
//! Crate: `nfq` (MIT OR Apache-2.0) speaks the queue protocol over netlink in
//! plain Rust. The others bind the GPL C library libnetfilter_queue (`nfqueue`,
//! GPL itself; `netfilter_queue`, unmaintained since 2016) or lack the queue
//! messages (`netlink-packet-netfilter`: nflog and conntrack only).
//!
//! Verdict, as fwknopd's: a packet queued from the input hook is dropped (it was
//! sent to the SPA port), one from another hook accepted. Every packet gets it
//! right after screening, garbage included; at shutdown the rule goes first, then
//! what is still queued is read and given its verdict.
//!
//! Fail closed: no `--queue-bypass`, and a full queue drops (fail-open off). So
//! while no posternd listens (killed, restarting) the kernel drops packets for
//! the SPA port: they never reach whatever else might listen there, and no ICMP
//! port-unreachable tells a scanner the port is there; the queue only delays
//! knocks, it never lets anything through.

mod rule;
mod socket;

use super::kernel_drops::{self, DropCount, Why};
use super::{count_packet, offer};
use crate::config::ActionConfig;
use crate::pipeline::{Pipeline, Received};
use serde::{Deserialize, Serialize};
use spa_core::Clock;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

/// This capture's name in logs and metrics.
const CAPTURE: &str = super::names::NFQUEUE;

pub use rule::nft_table;

/// `[[capture]] type = "nfqueue"`; the defaults are fwknopd's NFQ_* defaults.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// NFQ_QUEUE_NUMBER.
    #[serde(default = "default_queue")]
    pub queue: u16,
    /// NFQ_PORT: the UDP port whose packets are queued.
    #[serde(default = "default_port")]
    pub port: u16,
    /// NFQ_INTERFACE: only packets coming in on it (`eth+` for a prefix); all if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// NFQ_TABLE: the iptables table of the chain (`mangle` or `filter`).
    #[serde(default = "default_table")]
    pub table: String,
    /// NFQ_CHAIN: posternd's own iptables chain for the rule.
    #[serde(default = "default_chain")]
    pub chain: String,
    /// Who adds the queue rule; unset: nftables with an nftables action, else iptables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<RuleTool>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            queue: default_queue(),
            port: default_port(),
            interface: None,
            table: default_table(),
            chain: default_chain(),
            rules: None,
        }
    }
}

fn default_queue() -> u16 {
    1
}
fn default_port() -> u16 {
    62201
}
fn default_table() -> String {
    "mangle".into()
}
fn default_chain() -> String {
    "FWKNOP_NFQ".into()
}

/// How the queue rule is made.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RuleTool {
    Iptables,
    Nftables,
    /// The operator queues the packets; posternd only listens.
    #[serde(rename = "none")]
    Unmanaged,
}

impl RuleTool {
    /// The tool `settings` asks for, or the one matching the actions.
    pub fn for_capture(settings: &Settings, actions: &[ActionConfig]) -> RuleTool {
        settings.rules.unwrap_or_else(|| {
            if actions.iter().any(|a| a.kind() == "nftables") {
                RuleTool::Nftables
            } else {
                RuleTool::Iptables
            }
        })
    }
}

/// The iptables program for the rule: the iptables action's (fwknopd's
/// FIREWALL_EXE), else `iptables` from PATH.
pub fn iptables_program(actions: &[ActionConfig]) -> String {
    actions
        .iter()
        .find_map(ActionConfig::iptables_program)
        .unwrap_or("iptables")
        .to_string()
}

/// A setting that cannot be used: which one, and why.
#[derive(Debug, PartialEq, Eq)]
pub struct BadSetting {
    /// `port`, `table`, `chain` or `interface`.
    pub field: &'static str,
    pub message: String,
}

/// Chains an iptables table has built in: NFQ_CHAIN is flushed and deleted at
/// exit, so it must be posternd's own.
const BUILTIN_CHAINS: [&str; 5] = ["INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"];

impl Settings {
    /// Refuse names that would make the rule act on something not posternd's.
    pub fn check(&self) -> Result<(), BadSetting> {
        let bad = |field, message: String| Err(BadSetting { field, message });
        if self.port == 0 {
            return bad("port", "0 is not a port".into());
        }
        if !["mangle", "filter"].contains(&self.table.as_str()) {
            return bad(
                "table",
                format!(
                    "`{}` is not a table whose INPUT chain can queue packets (mangle or filter)",
                    self.table
                ),
            );
        }
        let chain_ok = (1..=28).contains(&self.chain.len())
            && !self.chain.starts_with('-')
            && self
                .chain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !chain_ok || BUILTIN_CHAINS.contains(&self.chain.as_str()) {
            return bad(
                "chain",
                format!(
                    "`{}` cannot be posternd's own chain (1-28 letters, digits, _ or -, \
                     not a built-in chain: it is flushed and deleted at exit)",
                    self.chain
                ),
            );
        }
        if let Some(i) = &self.interface {
            let name = i.strip_suffix('+').unwrap_or(i);
            let ok = (1..=15).contains(&name.len())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-@:".contains(c));
            if !ok {
                return bad("interface", format!("`{i}` is not an interface name"));
            }
        }
        Ok(())
    }
}

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

impl super::Capture for NfqueueCapture {
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
        super::force_recv_buffer(fd, super::udp::RECV_BUFFER);
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
    let Some((bytes, peer, destination)) = super::pcap::frame_parts(pcap::Linktype::RAW, ip_packet)
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

    #[test]
    fn names_that_are_not_posternds_own_are_refused() {
        let ok = Settings::default();
        assert_eq!(ok.check(), Ok(()));
        let with = |f: fn(&mut Settings)| {
            let mut s = Settings::default();
            f(&mut s);
            s.check().err().map(|b| b.field)
        };
        assert_eq!(with(|s| s.chain = "INPUT".into()), Some("chain"));
        assert_eq!(with(|s| s.chain = "-F".into()), Some("chain"));
        assert_eq!(with(|s| s.chain = "A B".into()), Some("chain"));
        assert_eq!(with(|s| s.chain = "X".repeat(29)), Some("chain"));
        assert_eq!(with(|s| s.table = "nat".into()), Some("table"));
        assert_eq!(with(|s| s.port = 0), Some("port"));
        assert_eq!(
            with(|s| s.interface = Some("eth0 -j".into())),
            Some("interface")
        );
        assert_eq!(
            with(|s| s.interface = Some("\"x".into())),
            Some("interface")
        );
        assert_eq!(with(|s| s.interface = Some("veth+".into())), None);
        assert_eq!(with(|s| s.table = "filter".into()), None);
    }

    #[test]
    fn toml_capture_table_with_defaults_and_unknown_keys_refused() {
        use crate::config::CaptureConfig;
        let parse = |text: &str| toml::from_str::<CaptureConfig>(text);
        assert_eq!(
            parse("type = \"nfqueue\"").unwrap(),
            CaptureConfig::Nfqueue(Settings::default())
        );
        assert_eq!(
            parse("type = \"nfqueue\"\nqueue = 3\nport = 5000\ninterface = \"eth1\"\nrules = \"nftables\"")
                .unwrap(),
            CaptureConfig::Nfqueue(Settings {
                queue: 3,
                port: 5000,
                interface: Some("eth1".into()),
                rules: Some(RuleTool::Nftables),
                ..Settings::default()
            })
        );
        assert_eq!(
            parse("type = \"nfqueue\"\nrules = \"none\"").unwrap(),
            CaptureConfig::Nfqueue(Settings {
                rules: Some(RuleTool::Unmanaged),
                ..Settings::default()
            })
        );
        let err = parse("type = \"nfqueue\"\nqueue_num = 3").unwrap_err();
        assert!(err.to_string().contains("queue_num"), "{err}");
    }

    #[test]
    fn iptables_is_the_iptables_actions_program() {
        let iptables = ActionConfig::default_of("iptables").unwrap();
        assert_eq!(iptables_program(&[iptables]), "iptables");
        let legacy: ActionConfig = serde_json::from_value(serde_json::json!(
            {"type": "iptables", "iptables": "/usr/sbin/iptables-legacy"}
        ))
        .unwrap();
        assert_eq!(iptables_program(&[legacy]), "/usr/sbin/iptables-legacy");
        assert_eq!(iptables_program(&[]), "iptables");
    }

    #[test]
    fn the_rule_tool_follows_the_action_unless_set() {
        let action = |kind: &str| ActionConfig::default_of(kind).unwrap();
        let unset = Settings::default();
        assert_eq!(
            RuleTool::for_capture(&unset, &[action("nftables")]),
            RuleTool::Nftables
        );
        assert_eq!(
            RuleTool::for_capture(&unset, &[action("iptables")]),
            RuleTool::Iptables
        );
        let set = Settings {
            rules: Some(RuleTool::Unmanaged),
            ..Settings::default()
        };
        assert_eq!(
            RuleTool::for_capture(&set, &[action("nftables")]),
            RuleTool::Unmanaged
        );
    }
}
