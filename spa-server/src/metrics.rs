//! Prometheus metrics, opt-in (`[metrics] listen = "127.0.0.1:9650"`): the
//! `metrics` facade records, metrics-exporter-prometheus serves the text
//! format over HTTP, metrics-process adds the standard `process_*` facts.
//! Without a listener no recorder is installed and every record is a no-op.
//!
//! What is counted (names are stable; see the README):
//! - `postern_packets_total{capture}`: every packet a capture took, garbage too;
//! - `postern_refused_total{stage}`: refusals by the stage that refused
//!   (blacklist, precheck = length/charset, hmac, decrypt, replay, policy,
//!   action, overload = a full queue);
//! - `postern_granted_total` and `postern_knock_to_grant_seconds`;
//! - `postern_firewall_grants_total{backend}`, `…_revokes_total{backend}`,
//!   `…_errors_total{backend}`;
//! - `postern_audit_lines_dropped_total`: audit log lines lost (the writer
//!   could not keep up, or the file could not be written).

use metrics::{counter, describe_counter, describe_histogram, histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Set once a recorder is installed. Every record below checks it first: the
/// `metrics` macros build their key (a label vector) even with no recorder,
/// and `packet`/`outcome` run for every garbage packet.
static ENABLED: AtomicBool = AtomicBool::new(false);

fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

pub const PACKETS: &str = "postern_packets_total";
pub const REFUSED: &str = "postern_refused_total";
pub const GRANTED: &str = "postern_granted_total";
pub const KNOCK_TO_GRANT: &str = "postern_knock_to_grant_seconds";
pub const FIREWALL_GRANTS: &str = "postern_firewall_grants_total";
pub const FIREWALL_REVOKES: &str = "postern_firewall_revokes_total";
pub const FIREWALL_ERRORS: &str = "postern_firewall_errors_total";
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
        AUDIT_DROPPED,
        "Audit log lines lost: the writer could not keep up, or the file could not be written"
    );
}

pub fn packet(capture: &'static str) {
    if !enabled() {
        return;
    }
    counter!(PACKETS, "capture" => capture).increment(1);
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
            counter!(REFUSED, "stage" => stage.name()).increment(1);
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

/// `lines` audit log lines were lost.
pub fn audit_dropped(lines: u64) {
    if !enabled() {
        return;
    }
    counter!(AUDIT_DROPPED).increment(lines);
}
