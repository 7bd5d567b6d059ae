//! The decision audit log (`[audit] path`, `--audit-log`): JSON lines in the
//! schema of docs/audit-log.schema.json, described in docs/audit-log.md.
//!
//! - Every packet that passed the HMAC gets a `decision` line of its own,
//!   granted or refused: capture, sender, destination, stanza, user, what was
//!   asked, what was granted until when, and by which backends. Refusals beyond
//!   [`REFUSAL_LINES_PER_SECOND`] (burst [`REFUSAL_LINE_BURST`]), e.g. a flood
//!   of copies of one captured knock, are counted instead; grants never are.
//! - Packets refused before or at the HMAC (BLACKLIST, length and charset,
//!   HMAC) are counted by stage with a sample of senders, and written as one
//!   `summary` line every [`SUMMARY_EVERY`]: garbage costs a few atomic
//!   additions, never a line each, so a flood cannot fill the disk.
//! - The packet path never waits: lines go through a bounded channel to a
//!   writer thread; when it is full a line is dropped and counted (in the next
//!   summary, a warning and `postern_audit_lines_dropped_total`).
//! - SIGHUP and SIGUSR1 reopen the file (logrotate renames it first).
//!
//! Nothing here sees a key or the raw packet: lines are built from
//! [`Decision`], which holds none.

use crate::config::access::canonical;
use crate::config::AuditConfig;
use crate::pipeline::{Decision, Outcome, Stage};
use arc_swap::ArcSwapOption;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The `v` of every line; raised when a field changes meaning or goes away.
pub const SCHEMA_VERSION: u32 = 1;
/// How often counted packets are written as a summary line.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);
/// Refusals of authenticated packets written a second; more are counted.
pub const REFUSAL_LINES_PER_SECOND: u32 = 20;
pub const REFUSAL_LINE_BURST: u32 = 200;
/// Lines waiting for the writer; more are dropped.
const QUEUED_LINES: usize = 4096;
/// Senders a summary names (the first seen in its period).
const SAMPLED_SOURCES: usize = 8;
/// Lines written between two checks of the reopen/stop requests.
const BATCH: usize = 256;

static ENABLED: AtomicBool = AtomicBool::new(false);
static INSTALLED: ArcSwapOption<AuditLog> = ArcSwapOption::const_empty();

/// Record one packet's outcome in the installed audit log, if any (called
/// for every packet, so it does nothing more than a load when there is none).
pub fn record(peer: SocketAddr, outcome: &Outcome) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    if let Some(log) = INSTALLED.load().as_ref() {
        log.record(peer, outcome);
    }
}

/// Make `log` the one [`record`] writes to (one per process, as the daemon).
pub fn install(log: Arc<AuditLog>) {
    INSTALLED.store(Some(log));
    ENABLED.store(true, Ordering::Relaxed);
}

/// Stop recording into `log` (if it is the installed one).
pub fn uninstall(log: &Arc<AuditLog>) {
    let current = INSTALLED.load_full();
    if current.is_some_and(|c| Arc::ptr_eq(&c, log)) {
        ENABLED.store(false, Ordering::Relaxed);
        INSTALLED.store(None);
    }
}

/// Where lines go, opened but not written to yet.
pub struct Destination(Target);

enum Target {
    Stdout,
    File { path: PathBuf, file: File },
}

impl Destination {
    /// Open `config`'s file now (created 0640, appended to), so that a
    /// destination posternd cannot write is a start error naming it.
    pub fn open(config: &AuditConfig) -> anyhow::Result<Destination> {
        if config.is_stdout() {
            return Ok(Destination(Target::Stdout));
        }
        let file = open_file(&config.path).map_err(anyhow::Error::msg)?;
        Ok(Destination(Target::File {
            path: config.path.clone(),
            file,
        }))
    }
}

/// Open for appending; refuse what is not a plain file (a FIFO would block, a
/// symlink could point anywhere) or what others may write (or swap: the
/// directory, as for posternd's other files).
fn open_file(path: &Path) -> Result<File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let named = |why: String| format!("audit log {}: {why}", path.display());
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_file() => {
            return Err(named("not a regular file".into()));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(named(e.to_string())),
    }
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| named(e.to_string()))?;
    crate::config::trust::check(path, "the audit log", crate::config::trust::Trust::Trusted)
        .map_err(|e| e.to_string())?;
    Ok(file)
}

/// A running audit log: the packet path's side of it.
pub struct AuditLog {
    lines: SyncSender<Msg>,
    shared: Arc<Shared>,
    refusal_lines: governor::DefaultDirectRateLimiter,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// What goes to the writer: a line, or a wake-up to look at the requests.
enum Msg {
    Line(String),
    Wake,
}

/// What the packet path and the writer share besides the channel.
#[derive(Default)]
struct Shared {
    counts: Counts,
    reopen: AtomicBool,
    stop: AtomicBool,
}

/// Packets counted rather than written, and lines lost, since the last summary.
#[derive(Default)]
struct Counts {
    /// Refused before or at the HMAC, by stage.
    unauthenticated: [AtomicU64; Stage::ALL.len()],
    /// Authenticated refusals beyond the line budget, by stage.
    unlogged: [AtomicU64; Stage::ALL.len()],
    dropped: AtomicU64,
    /// Counted while the sample was busy (another capture thread held it).
    unsampled: AtomicU64,
    sample: Mutex<Sample>,
}

#[derive(Default)]
struct Sample {
    sources: [Option<(IpAddr, u64)>; SAMPLED_SOURCES],
    others: u64,
}

impl Sample {
    fn add(&mut self, ip: IpAddr) {
        for slot in self.sources.iter_mut() {
            match slot {
                Some((seen, n)) if *seen == ip => {
                    *n += 1;
                    return;
                }
                None => {
                    *slot = Some((ip, 1));
                    return;
                }
                Some(_) => {}
            }
        }
        self.others += 1;
    }
}

impl Counts {
    /// No allocation and no waiting: garbage floods come through here.
    fn add(&self, by_stage: &[AtomicU64], stage: Stage, source: IpAddr) {
        by_stage[stage as usize].fetch_add(1, Ordering::Relaxed);
        match self.sample.try_lock() {
            Ok(mut sample) => sample.add(source),
            Err(_) => {
                self.unsampled.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl AuditLog {
    /// Start writing to `to` on a thread of its own.
    pub fn start(to: Destination) -> anyhow::Result<Arc<AuditLog>> {
        AuditLog::start_every(to, SUMMARY_EVERY)
    }

    /// [`AuditLog::start`] with summaries every `period` (tests).
    pub fn start_every(to: Destination, period: Duration) -> anyhow::Result<Arc<AuditLog>> {
        let (log, writer, received) = AuditLog::unstarted(to, QUEUED_LINES);
        let handle = std::thread::Builder::new()
            .name("postern-audit".into())
            .spawn(move || writer.run(&received, period))
            .map_err(|e| anyhow::anyhow!("audit log writer thread: {e}"))?;
        *log.writer.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle);
        Ok(Arc::new(log))
    }

    /// The log and its writer, not running yet; `queued` lines may wait.
    fn unstarted(to: Destination, queued: usize) -> (AuditLog, Writer, Receiver<Msg>) {
        use governor::{Quota, RateLimiter};
        use std::num::NonZeroU32;
        let (lines, received) = mpsc::sync_channel(queued);
        let shared = Arc::new(Shared::default());
        let writer = Writer {
            target: to.0,
            shared: shared.clone(),
            since: chrono::Utc::now(),
            failing: false,
        };
        tracing::info!("audit log: {}", writer.describe());
        let quota = Quota::per_second(NonZeroU32::new(REFUSAL_LINES_PER_SECOND).expect("non-zero"))
            .allow_burst(NonZeroU32::new(REFUSAL_LINE_BURST).expect("non-zero"));
        let log = AuditLog {
            lines,
            shared,
            refusal_lines: RateLimiter::direct(quota),
            writer: Mutex::new(None),
        };
        (log, writer, received)
    }

    /// One packet's outcome: a line, or a count in the next summary.
    pub fn record(&self, peer: SocketAddr, outcome: &Outcome) {
        let counts = &self.shared.counts;
        match outcome {
            Outcome::Granted(d) => self.send(decision_line(None, d)),
            Outcome::Denied {
                stage,
                reason,
                decision: Some(d),
            } => {
                if self.refusal_lines.check().is_ok() {
                    self.send(decision_line(Some((*stage, reason)), d));
                } else {
                    counts.add(&counts.unlogged, *stage, d.source.address);
                }
            }
            Outcome::Denied {
                stage,
                decision: None,
                ..
            } => counts.add(&counts.unauthenticated, *stage, canonical(peer.ip())),
        }
    }

    fn send(&self, line: Option<String>) {
        match line.map(|l| self.lines.try_send(Msg::Line(l))) {
            Some(Ok(())) => {}
            // Full (or the writer is gone): never wait.
            Some(Err(_)) | None => self.lost(1),
        }
    }

    fn lost(&self, lines: u64) {
        self.shared
            .counts
            .dropped
            .fetch_add(lines, Ordering::Relaxed);
        crate::metrics::audit_dropped(lines);
    }

    /// Reopen the file (after logrotate renamed it); never waits for the writer.
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// Write what is queued and a last summary, then end the writer thread.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.wake();
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// A wake-up with no line; if the channel is full the writer is awake anyway.
    fn wake(&self) {
        let _ = self.lines.try_send(Msg::Wake);
    }
}

/// The `decision` line of one authenticated packet; `refused` is the stage
/// and reason of a refusal.
fn decision_line(refused: Option<(Stage, &str)>, decision: &Decision) -> Option<String> {
    #[derive(Serialize)]
    struct Line<'a> {
        v: u32,
        time: String,
        event: &'static str,
        outcome: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        stage: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
        #[serde(flatten)]
        decision: &'a Decision,
    }
    serde_json::to_string(&Line {
        v: SCHEMA_VERSION,
        time: now_rfc3339(),
        event: "decision",
        outcome: if refused.is_some() {
            "refused"
        } else {
            "granted"
        },
        stage: refused.map(|(s, _)| s.name()),
        reason: refused.map(|(_, r)| r),
        decision,
    })
    .ok()
}

fn now_rfc3339() -> String {
    rfc3339(chrono::Utc::now())
}

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The writer thread's side: owns the destination.
struct Writer {
    target: Target,
    shared: Arc<Shared>,
    /// Start of the summary period.
    since: chrono::DateTime<chrono::Utc>,
    /// Writing failed last time (warned once until it works again).
    failing: bool,
}

impl Writer {
    fn run(mut self, received: &Receiver<Msg>, period: Duration) {
        let mut next_summary = Instant::now() + period;
        loop {
            let wait = next_summary.saturating_duration_since(Instant::now());
            let mut next = match received.recv_timeout(wait) {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    self.summary();
                    return;
                }
            };
            // What is queued, in batches with the requests checked in between,
            // so a steady stream cannot hold off a reopen or a stop.
            let mut written = 0;
            while let Some(msg) = next.take() {
                if let Msg::Line(line) = msg {
                    self.write(line.as_bytes());
                    written += 1;
                }
                if written == BATCH {
                    break;
                }
                next = received.try_recv().ok();
            }
            self.flush();
            if self.shared.reopen.swap(false, Ordering::SeqCst) {
                self.reopen();
            }
            if Instant::now() >= next_summary {
                self.summary();
                next_summary = Instant::now() + period;
            }
            if self.shared.stop.load(Ordering::SeqCst) {
                // Lines queued before the stop are still written.
                while let Ok(msg) = received.try_recv() {
                    if let Msg::Line(line) = msg {
                        self.write(line.as_bytes());
                    }
                }
                self.summary();
                self.flush();
                return;
            }
        }
    }

    fn write(&mut self, line: &[u8]) {
        let result = match &mut self.target {
            Target::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(line).and_then(|()| out.write_all(b"\n"))
            }
            Target::File { file, .. } => {
                // One write(2) per line: with O_APPEND, a line is never split.
                let mut whole = Vec::with_capacity(line.len() + 1);
                whole.extend_from_slice(line);
                whole.push(b'\n');
                file.write_all(&whole)
            }
        };
        self.outcome_of_write(result);
    }

    fn flush(&mut self) {
        if let Target::Stdout = self.target {
            let result = std::io::stdout().flush();
            if result.is_err() {
                self.outcome_of_write(result);
            }
        }
    }

    fn outcome_of_write(&mut self, result: std::io::Result<()>) {
        match result {
            Ok(()) if self.failing => {
                self.failing = false;
                tracing::warn!("audit log {}: writing again", self.describe());
            }
            Ok(()) => {}
            Err(e) => {
                self.shared.counts.dropped.fetch_add(1, Ordering::Relaxed);
                crate::metrics::audit_dropped(1);
                if !self.failing {
                    self.failing = true;
                    tracing::error!(
                        "audit log {}: cannot write ({e}); lines are lost until it can",
                        self.describe()
                    );
                }
            }
        }
    }

    fn describe(&self) -> String {
        match &self.target {
            Target::Stdout => "stdout".into(),
            Target::File { path, .. } => path.display().to_string(),
        }
    }

    fn reopen(&mut self) {
        let Target::File { path, file } = &mut self.target else {
            return;
        };
        match open_file(path) {
            Ok(fresh) => {
                *file = fresh;
                tracing::info!("audit log reopened: {}", path.display());
            }
            Err(e) => {
                tracing::error!("{e}; cannot reopen, the lines go on to the file opened before")
            }
        }
    }

    /// The counts since the last summary, as a line (none if all are zero).
    fn summary(&mut self) {
        let now = chrono::Utc::now();
        let counts = &self.shared.counts;
        let by_stage = |counters: &[AtomicU64]| -> BTreeMap<&'static str, u64> {
            Stage::ALL
                .iter()
                .map(|s| (s.name(), counters[*s as usize].swap(0, Ordering::Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect()
        };
        let unauthenticated = by_stage(&counts.unauthenticated);
        let unlogged = by_stage(&counts.unlogged);
        let sample =
            std::mem::take(&mut *counts.sample.lock().unwrap_or_else(PoisonError::into_inner));
        let other_sources_packets = sample.others + counts.unsampled.swap(0, Ordering::Relaxed);
        let lines_dropped = counts.dropped.swap(0, Ordering::Relaxed);
        let since = std::mem::replace(&mut self.since, now);
        if unauthenticated.is_empty() && unlogged.is_empty() && lines_dropped == 0 {
            return;
        }
        if lines_dropped > 0 {
            tracing::warn!(
                "audit log {}: {lines_dropped} lines lost since {} (the writer could not keep \
                 up, or could not write)",
                self.describe(),
                rfc3339(since)
            );
        }
        #[derive(Serialize)]
        struct SourceCount {
            address: IpAddr,
            packets: u64,
        }
        #[derive(Serialize)]
        struct Line {
            v: u32,
            time: String,
            event: &'static str,
            since: String,
            #[serde(skip_serializing_if = "BTreeMap::is_empty")]
            unauthenticated: BTreeMap<&'static str, u64>,
            #[serde(skip_serializing_if = "BTreeMap::is_empty")]
            unlogged: BTreeMap<&'static str, u64>,
            #[serde(skip_serializing_if = "Vec::is_empty")]
            sources: Vec<SourceCount>,
            #[serde(skip_serializing_if = "is_zero")]
            other_sources_packets: u64,
            #[serde(skip_serializing_if = "is_zero")]
            lines_dropped: u64,
        }
        let line = Line {
            v: SCHEMA_VERSION,
            time: rfc3339(now),
            event: "summary",
            since: rfc3339(since),
            unauthenticated,
            unlogged,
            sources: sample
                .sources
                .iter()
                .flatten()
                .map(|&(address, packets)| SourceCount { address, packets })
                .collect(),
            other_sources_packets,
            lines_dropped,
        };
        if let Ok(text) = serde_json::to_string(&line) {
            self.write(text.as_bytes());
            self.flush();
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::RawPacket;
    use std::os::unix::fs::PermissionsExt;

    fn wait_for(within: Duration, mut done: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if done() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        done()
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 40000)
    }

    fn decision(ip: &str) -> Decision {
        Decision::of(&RawPacket {
            bytes: Vec::new(),
            peer: peer(ip),
            forwarded_for: None,
            destination: None,
            received_at: 0,
            capture: "udp",
        })
    }

    fn file_log(path: &Path, period: Duration) -> Arc<AuditLog> {
        let config = AuditConfig {
            path: path.to_path_buf(),
        };
        AuditLog::start_every(Destination::open(&config).unwrap(), period).unwrap()
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect()
    }

    #[test]
    fn garbage_is_counted_into_one_summary_line_and_grants_get_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = file_log(&path, Duration::from_secs(3600));
        for i in 0..10_000u32 {
            let from = format!("192.0.2.{}", i % 20);
            log.record(peer(&from), &Outcome::denied(Stage::Precheck, "short"));
        }
        log.record(peer("198.51.100.1"), &Outcome::denied(Stage::Hmac, "bad"));
        log.record(
            peer("198.51.100.2"),
            &Outcome::Granted(Box::new(decision("198.51.100.2"))),
        );
        log.stop();
        let got = lines(&path);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0]["event"], "decision");
        assert_eq!(got[0]["outcome"], "granted");
        assert_eq!(got[0]["source"]["address"], "198.51.100.2");
        let summary = &got[1];
        assert_eq!(summary["event"], "summary");
        assert_eq!(summary["unauthenticated"]["precheck"], 10_000);
        assert_eq!(summary["unauthenticated"]["hmac"], 1);
        let sampled = summary["sources"].as_array().unwrap();
        assert_eq!(sampled.len(), SAMPLED_SOURCES);
        let in_sample: u64 = sampled.iter().map(|s| s["packets"].as_u64().unwrap()).sum();
        assert_eq!(
            in_sample + summary["other_sources_packets"].as_u64().unwrap(),
            10_001,
            "every packet is in the sample or in the rest"
        );
        assert_eq!(summary["v"], SCHEMA_VERSION);
    }

    #[test]
    fn refusals_beyond_the_budget_are_counted_and_grants_never_are() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = file_log(&path, Duration::from_secs(3600));
        let flood = 5_000u64;
        let replay = Outcome::refused(Stage::Replay, "seen", decision("203.0.113.9"));
        for _ in 0..flood {
            log.record(peer("203.0.113.9"), &replay);
        }
        log.record(
            peer("203.0.113.10"),
            &Outcome::Granted(Box::new(decision("203.0.113.10"))),
        );
        log.stop();
        let got = lines(&path);
        let refused = got.iter().filter(|l| l["outcome"] == "refused").count() as u64;
        assert!(
            (u64::from(REFUSAL_LINE_BURST)..flood / 2).contains(&refused),
            "{refused} refusal lines"
        );
        assert_eq!(got.iter().filter(|l| l["outcome"] == "granted").count(), 1);
        let summary = got.iter().find(|l| l["event"] == "summary").unwrap();
        assert_eq!(
            refused + summary["unlogged"]["replay"].as_u64().unwrap(),
            flood,
            "each refusal is a line or counted"
        );
        assert_eq!(summary["sources"][0]["address"], "203.0.113.9");
    }

    #[test]
    fn lines_that_find_the_queue_full_are_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let config = AuditConfig { path: path.clone() };
        // The writer is not running yet: the queue of 4 fills up.
        let (log, writer, received) = AuditLog::unstarted(Destination::open(&config).unwrap(), 4);
        for i in 0..10 {
            let ip = format!("192.0.2.{i}");
            log.record(peer(&ip), &Outcome::Granted(Box::new(decision(&ip))));
        }
        log.shared.stop.store(true, Ordering::SeqCst);
        writer.run(&received, Duration::from_secs(3600));
        let got = lines(&path);
        assert_eq!(decisions_in(&got), 4, "{got:?}");
        assert_eq!(got.last().unwrap()["lines_dropped"], 6, "{got:?}");
    }

    fn decisions_in(lines: &[serde_json::Value]) -> usize {
        lines.iter().filter(|l| l["event"] == "decision").count()
    }

    #[test]
    fn a_renamed_file_is_reopened_at_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let rotated = dir.path().join("audit.jsonl.1");
        let log = file_log(&path, Duration::from_secs(3600));
        let granted = |ip: &str| Outcome::Granted(Box::new(decision(ip)));
        log.record(peer("192.0.2.1"), &granted("192.0.2.1"));
        assert!(wait_for(Duration::from_secs(5), || {
            lines(&path).len() == 1
        }));
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen();
        assert!(wait_for(Duration::from_secs(5), || { path.exists() }));
        log.record(peer("192.0.2.2"), &granted("192.0.2.2"));
        log.stop();
        assert_eq!(lines(&rotated)[0]["source"]["address"], "192.0.2.1");
        let fresh = lines(&path);
        assert_eq!(fresh.len(), 1, "{fresh:?}");
        assert_eq!(fresh[0]["source"]["address"], "192.0.2.2");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode & 0o137,
            0,
            "created {mode:o}: not writable by group, nothing for others"
        );
    }

    #[test]
    fn a_path_that_cannot_be_reopened_keeps_the_file_it_had() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let rotated = dir.path().join("audit.jsonl.1");
        let log = file_log(&path, Duration::from_secs(3600));
        std::fs::rename(&path, &rotated).unwrap();
        // Something that is not a file now stands at the path.
        std::fs::create_dir(&path).unwrap();
        log.reopen();
        let granted = Outcome::Granted(Box::new(decision("192.0.2.3")));
        log.record(peer("192.0.2.3"), &granted);
        log.stop();
        assert_eq!(lines(&rotated).len(), 1, "the line went to the file it had");
    }

    #[test]
    fn a_destination_others_control_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let open = |p: &Path| {
            Destination::open(&AuditConfig {
                path: p.to_path_buf(),
            })
            .err()
            .map(|e| e.to_string())
        };
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "").unwrap();
        let link = dir.path().join("link.jsonl");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = open(&link).expect("symlink refused");
        assert!(
            err.contains("link.jsonl") && err.contains("not a regular file"),
            "{err}"
        );

        let shared = dir.path().join("shared.jsonl");
        std::fs::write(&shared, "").unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = open(&shared).expect("world-writable file refused");
        assert!(
            err.contains("shared.jsonl") && err.contains("writable"),
            "{err}"
        );

        // Owned by another user (only root can give a file away).
        let theirs = dir.path().join("theirs.jsonl");
        std::fs::write(&theirs, "").unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o600)).unwrap();
        if std::os::unix::fs::chown(&theirs, Some(65534), None).is_ok() {
            let err = open(&theirs).expect("a file of another user refused");
            assert!(
                err.contains("theirs.jsonl") && err.contains("uid 65534"),
                "{err}"
            );
        }

        let missing = dir.path().join("no/such/dir/audit.jsonl");
        let err = open(&missing).expect("missing directory refused");
        assert!(err.contains("no/such/dir/audit.jsonl"), "{err}");
        assert!(open(&dir.path().join("new.jsonl")).is_none());
    }
}
