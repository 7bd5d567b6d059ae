//! Prometheus metrics, opt-in (`[metrics] listen = "127.0.0.1:9650"`): the
//! `metrics` facade records, metrics-exporter-prometheus serves the text
//! format over HTTP, metrics-process adds the standard `process_*` facts.
//! Without a listener no recorder is installed and every record is a no-op.
//!
//! What is counted (names are stable; see the README):
//! - `postern_packets_total{capture}`: every packet a capture took, garbage too;
//! - `postern_capture_kernel_drops_total{capture,reason}`: datagrams the
//!   kernel dropped for the UDP capture before posternd read them, because
//!   its buffer was full (`buffer_full`) or their length fits no stanza
//!   (`length_filter`);
//! - `postern_refused_total{stage}`: refusals by the stage that refused
//!   (blacklist, precheck = length/charset, hmac, decrypt, replay, policy,
//!   action, overload = a full queue);
//! - `postern_granted_total` and `postern_knock_to_grant_seconds`;
//! - `postern_firewall_grants_total{backend}`, `…_revokes_total{backend}`,
//!   `…_errors_total{backend}`;
//! - `postern_replay_store_errors_total`: replay-store calls that failed (the
//!   packet is refused);
//! - gauges sampled each second: `postern_pipeline_in_flight` and
//!   `…_capacity` (authenticated packets being worked on; at capacity, more
//!   are refused at `overload`), `postern_action_queue_depth` and `…_capacity`
//!   (grants waiting for the firewall), `postern_gpg_queue_depth`,
//!   `postern_gpg_workers_busy` and `postern_gpg_workers`; and the GPG pool's
//!   `postern_gpg_decrypted_total`, `…_failed_total`, `…_dropped_total`;
//! - `[attack]`: `postern_attacks_total` (sources found attacking),
//!   `postern_blocks_total` (blocks put in the firewall) and the gauge
//!   `postern_blocked_sources` (blocks this posternd made that are in force).
//! - `postern_audit_lines_dropped_total`: audit log lines lost (the writer
//!   could not keep up, or the file could not be written).

use crate::capture::names::ALL as CAPTURES;
use crate::pipeline::Stage;
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Set once a recorder is installed. Every record below checks it first: the
/// `metrics` macros build their key (a label vector) even with no recorder,
/// and `packet`/`outcome` run for every garbage packet.
static ENABLED: AtomicBool = AtomicBool::new(false);

fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

pub const PACKETS: &str = "postern_packets_total";
pub const CAPTURE_KERNEL_DROPS: &str = "postern_capture_kernel_drops_total";
pub const REFUSED: &str = "postern_refused_total";
pub const GRANTED: &str = "postern_granted_total";
pub const KNOCK_TO_GRANT: &str = "postern_knock_to_grant_seconds";
pub const FIREWALL_GRANTS: &str = "postern_firewall_grants_total";
pub const FIREWALL_REVOKES: &str = "postern_firewall_revokes_total";
pub const FIREWALL_ERRORS: &str = "postern_firewall_errors_total";
pub const REPLAY_STORE_ERRORS: &str = "postern_replay_store_errors_total";
const PIPELINE_IN_FLIGHT: &str = "postern_pipeline_in_flight";
const PIPELINE_CAPACITY: &str = "postern_pipeline_capacity";
const ACTION_QUEUE_DEPTH: &str = "postern_action_queue_depth";
const ACTION_QUEUE_CAPACITY: &str = "postern_action_queue_capacity";
const GPG_QUEUE_DEPTH: &str = "postern_gpg_queue_depth";
const GPG_WORKERS_BUSY: &str = "postern_gpg_workers_busy";
const GPG_WORKERS: &str = "postern_gpg_workers";
const GPG_DECRYPTED: &str = "postern_gpg_decrypted_total";
const GPG_FAILED: &str = "postern_gpg_failed_total";
const GPG_DROPPED: &str = "postern_gpg_dropped_total";
pub const ATTACKS: &str = "postern_attacks_total";
pub const BLOCKS: &str = "postern_blocks_total";
pub const BLOCKED_SOURCES: &str = "postern_blocked_sources";
pub const AUDIT_DROPPED: &str = "postern_audit_lines_dropped_total";

/// Knock→grant takes about a millisecond; iptables or firewalld tens.
const LATENCY_BUCKETS: [f64; 12] = [
    0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Serve metrics on `listen` (call inside the runtime). Fails when the address
/// cannot be bound, so a typo is a start error rather than silence.
pub fn install(listen: SocketAddr) -> anyhow::Result<()> {
    let (recorder, exporter) = PrometheusBuilder::new()
        .with_http_listener(listen)
        .set_buckets_for_metric(Matcher::Full(KNOCK_TO_GRANT.into()), &LATENCY_BUCKETS)?
        .build()
        .map_err(|e| anyhow::anyhow!("metrics listener {listen}: {e}"))?;
    metrics::set_global_recorder(recorder).map_err(|e| anyhow::anyhow!("metrics recorder: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = exporter.await {
            tracing::warn!("metrics listener {listen} stopped: {e:?}");
        }
    });
    describe();
    ENABLED.store(true, Ordering::Relaxed);
    let process = metrics_process::Collector::default();
    process.describe();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            process.collect();
        }
    });
    tracing::info!("metrics served on http://{listen}/metrics");
    Ok(())
}

fn describe() {
    describe_counter!(PACKETS, "Packets a capture took, before any check");
    describe_counter!(
        CAPTURE_KERNEL_DROPS,
        "Datagrams the kernel dropped before posternd read them, by reason: socket \
         buffer full (buffer_full), or a length no stanza takes (length_filter)"
    );
    describe_counter!(REFUSED, "Packets refused, by the stage that refused them");
    describe_counter!(GRANTED, "Knocks that opened access");
    describe_histogram!(
        KNOCK_TO_GRANT,
        Unit::Seconds,
        "From a packet entering the pipeline to its grant being in the firewall"
    );
    describe_counter!(FIREWALL_GRANTS, "Openings applied, by backend");
    describe_counter!(
        FIREWALL_REVOKES,
        "Openings removed (expiry, flush), by backend"
    );
    describe_counter!(FIREWALL_ERRORS, "Firewall calls that failed, by backend");
    describe_counter!(
        REPLAY_STORE_ERRORS,
        "Replay store calls that failed (the packet was refused)"
    );
    describe_counter!(
        AUDIT_DROPPED,
        "Audit log lines lost: the writer could not keep up, or the file could not be written"
    );
    describe_gauge!(PIPELINE_IN_FLIGHT, "Authenticated packets being processed");
    describe_gauge!(
        PIPELINE_CAPACITY,
        "Authenticated packets processed at once before refusing at overload"
    );
    describe_gauge!(ACTION_QUEUE_DEPTH, "Grants waiting for the firewall");
    describe_gauge!(
        ACTION_QUEUE_CAPACITY,
        "Room for grants waiting for the firewall"
    );
    describe_gauge!(
        GPG_QUEUE_DEPTH,
        "GPG packets waiting for a decryption worker"
    );
    describe_gauge!(GPG_WORKERS_BUSY, "GPG decryption workers running gpg");
    describe_gauge!(GPG_WORKERS, "GPG decryption workers");
    describe_counter!(GPG_DECRYPTED, "GPG packets decrypted");
    describe_counter!(GPG_FAILED, "GPG packets that failed to decrypt or verify");
    describe_counter!(GPG_DROPPED, "GPG packets dropped for a full queue");
    describe_counter!(
        FLEET_GRANTS,
        "Fleet grants published by this member, applied from others, refused"
    );
    describe_counter!(
        FLEET_DROPPED,
        "This member's grants dropped unpublished (fleet store down too long)"
    );
    describe_gauge!(FLEET_STORE_UP, "1 while the fleet store answers");
    describe_counter!(
        ATTACKS,
        "Sources found attacking ([attack] threshold reached)"
    );
    describe_counter!(
        BLOCKS,
        "Sources blocked in the firewall ([attack] block_secs)"
    );
    describe_gauge!(
        BLOCKED_SOURCES,
        "Blocks made by this posternd that are still in force"
    );
}

/// The queues the gauges watch.
pub struct Queues {
    pub pipeline: crate::pipeline::InFlight,
    pub actions: tokio::sync::mpsc::WeakSender<crate::pipeline::ActionRequest>,
    pub gpg: std::sync::Arc<crate::gpg::PoolStats>,
    pub gpg_workers: usize,
}

/// Sample `queues` into gauges each second until `stop` fires (no-op unless
/// a recorder is installed). Sampling keeps the packet path free of gauge
/// updates.
pub fn watch(queues: Queues, stop: tokio_util::sync::CancellationToken) {
    if !enabled() {
        return;
    }
    use std::sync::atomic::Ordering::Relaxed;
    gauge!(PIPELINE_CAPACITY).set(queues.pipeline.max() as f64);
    gauge!(GPG_WORKERS).set(queues.gpg_workers as f64);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        while stop.run_until_cancelled(tick.tick()).await.is_some() {
            gauge!(PIPELINE_IN_FLIGHT).set(queues.pipeline.now() as f64);
            if let Some(tx) = queues.actions.upgrade() {
                gauge!(ACTION_QUEUE_CAPACITY).set(tx.max_capacity() as f64);
                gauge!(ACTION_QUEUE_DEPTH).set((tx.max_capacity() - tx.capacity()) as f64);
            }
            let gpg = &queues.gpg;
            gauge!(GPG_QUEUE_DEPTH).set(gpg.queued.load(Relaxed) as f64);
            gauge!(GPG_WORKERS_BUSY).set(gpg.busy.load(Relaxed) as f64);
            counter!(GPG_DECRYPTED).absolute(gpg.decrypted.load(Relaxed));
            counter!(GPG_FAILED).absolute(gpg.failed.load(Relaxed));
            counter!(GPG_DROPPED).absolute(gpg.dropped.load(Relaxed));
        }
    });
}

const FLEET_GRANTS: &str = "postern_fleet_grants_total";
const FLEET_DROPPED: &str = "postern_fleet_unpublished_dropped_total";
const FLEET_STORE_UP: &str = "postern_fleet_store_up";

/// A fleet grant `event`: `published` (this member's), `applied` (another
/// member's, in the firewall here), `refused` (a stored message that failed
/// verification).
pub fn fleet(event: &'static str) {
    if !enabled() {
        return;
    }
    counter!(FLEET_GRANTS, "event" => event).increment(1);
}

pub fn fleet_dropped(grants: usize) {
    if !enabled() {
        return;
    }
    counter!(FLEET_DROPPED).increment(grants as u64);
}

pub fn fleet_store_up(up: bool) {
    if !enabled() {
        return;
    }
    gauge!(FLEET_STORE_UP).set(if up { 1.0 } else { 0.0 });
}

pub fn replay_store_failed() {
    if !enabled() {
        return;
    }
    counter!(REPLAY_STORE_ERRORS).increment(1);
}

/// Handles of the counters every packet touches, looked up once: a labelled
/// lookup (a hash of name and labels, a shared lock) per packet shows under a
/// flood. The recorder is installed once per process, before any packet.
/// (One per name in [`crate::capture::names`]; another name is counted by a
/// plain lookup.)
static PACKETS_BY_CAPTURE: [OnceLock<Counter>; CAPTURES.len()] =
    [const { OnceLock::new() }; CAPTURES.len()];
static REFUSED_BY_STAGE: [OnceLock<Counter>; Stage::ALL.len()] =
    [const { OnceLock::new() }; Stage::ALL.len()];

pub fn packet(capture: &'static str) {
    if !enabled() {
        return;
    }
    match CAPTURES.iter().position(|c| *c == capture) {
        Some(i) => PACKETS_BY_CAPTURE[i]
            .get_or_init(|| counter!(PACKETS, "capture" => capture))
            .increment(1),
        None => counter!(PACKETS, "capture" => capture).increment(1),
    }
}

/// The kernel dropped `datagrams` for `capture` before posternd read them,
/// for `reason` (`buffer_full`, `length_filter`).
pub fn capture_kernel_drops(capture: &'static str, reason: &'static str, datagrams: u64) {
    if !enabled() {
        return;
    }
    counter!(CAPTURE_KERNEL_DROPS, "capture" => capture, "reason" => reason).increment(datagrams);
}

pub fn outcome(outcome: &crate::pipeline::Outcome, took: Option<Duration>) {
    if !enabled() {
        return;
    }
    match outcome {
        crate::pipeline::Outcome::Granted(_) => {
            counter!(GRANTED).increment(1);
            if let Some(took) = took {
                histogram!(KNOCK_TO_GRANT).record(took.as_secs_f64());
            }
        }
        crate::pipeline::Outcome::Denied { stage, .. } => {
            REFUSED_BY_STAGE[*stage as usize]
                .get_or_init(|| counter!(REFUSED, "stage" => stage.name()))
                .increment(1);
        }
    }
}

/// A grant call to `backend` of `openings`: applied, or one error.
pub fn granted(backend: &'static str, ok: bool, openings: usize) {
    if !enabled() {
        return;
    }
    match ok {
        true => counter!(FIREWALL_GRANTS, "backend" => backend).increment(openings as u64),
        false => firewall_failed(backend),
    }
}

pub fn revoked(backend: &'static str, rules: usize) {
    if !enabled() {
        return;
    }
    counter!(FIREWALL_REVOKES, "backend" => backend).increment(rules as u64);
}

pub fn firewall_failed(backend: &'static str) {
    if !enabled() {
        return;
    }
    counter!(FIREWALL_ERRORS, "backend" => backend).increment(1);
}

/// A source was found attacking.
pub fn attack_detected() {
    if !enabled() {
        return;
    }
    counter!(ATTACKS).increment(1);
}

/// `sources` blocks went into the firewall; `in_force` are in force now.
pub fn blocked(sources: usize, in_force: usize) {
    if !enabled() {
        return;
    }
    counter!(BLOCKS).increment(sources as u64);
    blocked_sources(in_force);
}

/// Blocks made by this posternd that are still in force.
pub fn blocked_sources(in_force: usize) {
    if !enabled() {
        return;
    }
    gauge!(BLOCKED_SOURCES).set(in_force as f64);
}

/// `lines` audit log lines were lost.
pub fn audit_dropped(lines: u64) {
    if !enabled() {
        return;
    }
    counter!(AUDIT_DROPPED).increment(lines);
}
