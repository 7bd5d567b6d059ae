//! Attack detection (`[attack]`, opt-in): refused packets are counted per source;
//! a source with `threshold` counted refusals within `window_secs` is an
//! attacker. Then: a warning, metrics, optionally a block in the firewall
//! (`block_secs`, applied by the action thread; the kernel expires it) and
//! optionally a hook program.
//!
//! Every packet's outcome passes through [`observe`], from the capture that
//! judged it, so this must stay cheap and must never wait: a refusal of a stage
//! that does not count costs one load and a compare; a counted one a short
//! lock on fixed-size tables; blocks and hooks are handed off without waiting.
//!
//! What counts (default `hmac`, `decrypt`, `replay`): packets that had to be
//! forged or copied: a wrong HMAC (garbage in the base64 alphabet of a real
//! packet's length ends here too), a packet that does not decrypt (stanzas
//! without HMAC), a replay. Not by default: `precheck` (wrong length or
//! characters: the random probes any open UDP port receives, and on the UDP
//! capture mostly dropped by the kernel filter before posternd sees them) and
//! `policy` (valid keys; a client with a wrong clock). Never: BLACKLIST, a
//! failing firewall, a full queue, nor a replay store that does not answer,
//! none of which the sender did.
//!
//! Memory is fixed: counts and recent grants live in LRU tables of
//! `max_sources` entries (the least recently seen source is forgotten first),
//! and at most `max_blocked` sources are blocked or quiet at once.
//!
//! A source whose knock was granted is not counted for `grace_secs`, and its
//! count is cleared: someone forging packets from a client's address right after
//! it knocked cannot get it blocked. (A block never cuts a grant anyway: the
//! firewall accepts granted traffic before the block's drop.)

mod config;
mod hook;

pub use config::{AttackConfig, MAX_BLOCKED, MAX_BLOCK_SECS, MAX_SOURCES};
pub use hook::Hook;

use crate::pipeline::{Outcome, Stage};
use arc_swap::ArcSwapOption;
use lru::LruCache;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Blocks waiting for the action thread at most; more are dropped (logged).
pub const BLOCK_QUEUE: usize = 1024;

/// A source found attacking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detection {
    pub source: IpAddr,
    /// Counted refusals within the window (the threshold).
    pub failures: u32,
    pub window_secs: u64,
    /// The last counted refusal.
    pub stage: Stage,
    pub reason: String,
    /// How long it is to be blocked; 0: not blocked (detection only, or
    /// `max_blocked` sources are blocked already: see `table_full`).
    pub block_secs: u32,
    /// Blocking is on but `max_blocked` sources are blocked already.
    pub table_full: bool,
}

/// A block for the action thread to apply.
#[derive(Clone, Debug)]
pub struct BlockRequest {
    pub detection: Detection,
}

#[derive(Clone, Copy, Debug)]
struct Failures {
    /// When the first counted refusal of this window came (detector seconds).
    first: u64,
    count: u32,
}

struct Tables {
    failures: LruCache<IpAddr, Failures>,
    /// When each source's last knock was granted.
    granted: LruCache<IpAddr, u64>,
    /// Sources detected already, and until when they are not counted again:
    /// the end of their block, or of the window when not blocking.
    quiet: HashMap<IpAddr, u64>,
    /// No entry of `quiet` ends before this: a full table is swept only once
    /// one has ended, so a flood against a full table costs no sweep per packet.
    quiet_until_first: u64,
}

/// The counting part: no IO, time passed in (seconds on any monotonic clock).
pub struct Detector {
    threshold: u32,
    window_secs: u64,
    block_secs: u32,
    counted: Vec<Stage>,
    grace_secs: u64,
    exempt: Vec<ipnet::IpNet>,
    max_quiet: usize,
    tables: Mutex<Tables>,
}

impl Detector {
    /// From a validated config ([`AttackConfig::validate`]).
    pub fn new(config: &AttackConfig) -> Result<Detector, String> {
        let capacity = NonZeroUsize::new(config.max_sources).ok_or("max_sources is 0")?;
        Ok(Detector {
            threshold: config.threshold,
            window_secs: config.window_secs,
            block_secs: config.block_secs,
            counted: config.counted_stages()?,
            grace_secs: config.grace_secs,
            exempt: config.exempt.clone(),
            max_quiet: config.max_blocked,
            tables: Mutex::new(Tables {
                failures: LruCache::new(capacity),
                granted: LruCache::new(capacity),
                quiet: HashMap::new(),
                quiet_until_first: u64::MAX,
            }),
        })
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        // A panic while holding it leaves plain counters: keep using them.
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a refusal at `stage` counts. A replay store that did not answer
    /// (`replay store: …`) is the server's trouble, not the sender's.
    fn counts(&self, stage: Stage, reason: &str) -> bool {
        self.counted.contains(&stage)
            && !(stage == Stage::Replay && reason.starts_with(crate::replay::STORE_ERROR_PREFIX))
    }

    /// A packet from `source` was refused at `stage` at time `now`: the
    /// detection, when this refusal makes it an attacker.
    pub fn refused(
        &self,
        source: IpAddr,
        stage: Stage,
        reason: &str,
        now: u64,
    ) -> Option<Detection> {
        if !self.counts(stage, reason) {
            return None;
        }
        let source = crate::config::access::canonical(source);
        if self.exempt.iter().any(|n| n.contains(&source)) {
            return None;
        }
        let mut t = self.tables();
        if let Some(&at) = t.granted.peek(&source) {
            if now < at.saturating_add(self.grace_secs) {
                return None;
            }
            t.granted.pop(&source);
        }
        if let Some(&until) = t.quiet.get(&source) {
            if now < until {
                return None;
            }
            t.quiet.remove(&source);
        }
        let window = self.window_secs;
        let f = t.failures.get_or_insert_mut(source, || Failures {
            first: now,
            count: 0,
        });
        if now >= f.first.saturating_add(window) {
            *f = Failures {
                first: now,
                count: 0,
            };
        }
        f.count += 1;
        if f.count < self.threshold {
            return None;
        }
        t.failures.pop(&source);
        let quiet_for = match self.block_secs {
            0 => window,
            secs => u64::from(secs),
        };
        if t.quiet.len() >= self.max_quiet && now >= t.quiet_until_first {
            t.quiet.retain(|_, until| now < *until);
            t.quiet_until_first = t.quiet.values().min().copied().unwrap_or(u64::MAX);
        }
        let table_full = t.quiet.len() >= self.max_quiet;
        if !table_full {
            let until = now.saturating_add(quiet_for);
            t.quiet.insert(source, until);
            t.quiet_until_first = t.quiet_until_first.min(until);
        }
        let blocks = self.block_secs > 0 && !table_full;
        Some(Detection {
            source,
            failures: self.threshold,
            window_secs: window,
            stage,
            reason: reason.to_string(),
            block_secs: if blocks { self.block_secs } else { 0 },
            table_full: self.block_secs > 0 && table_full,
        })
    }

    /// A knock from `source` was granted at `now`: its count goes, and it is
    /// not counted for the grace period.
    pub fn granted(&self, source: IpAddr, now: u64) {
        let source = crate::config::access::canonical(source);
        let mut t = self.tables();
        t.failures.pop(&source);
        t.granted.put(source, now);
    }

    /// Sources with a count now, sources granted recently, sources quiet.
    pub fn sizes(&self) -> (usize, usize, usize) {
        let t = self.tables();
        (t.failures.len(), t.granted.len(), t.quiet.len())
    }
}

/// What is done with a detection: blocks to the action thread, the hook.
pub struct Responder {
    /// `None` when not blocking.
    pub blocks: Option<mpsc::Sender<BlockRequest>>,
    pub hook: Option<Hook>,
}

impl Responder {
    fn respond(&self, d: Detection) {
        crate::metrics::attack_detected();
        if d.table_full {
            warn(format_args!(
                "attack from {}: {} refused packets within {} s (last at {}: {}); not blocked: \
                 [attack] max_blocked sources are blocked already",
                d.source, d.failures, d.window_secs, d.stage, d.reason
            ));
        } else if d.block_secs == 0 {
            warn(format_args!(
                "attack from {}: {} refused packets within {} s (last at {}: {}); not blocked \
                 ([attack] block_secs is 0)",
                d.source, d.failures, d.window_secs, d.stage, d.reason
            ));
        }
        if let Some(hook) = &self.hook {
            hook.run(&d);
        }
        if d.block_secs > 0 {
            let Some(tx) = &self.blocks else { return };
            // The action thread logs the block once it is in the firewall.
            if let Err(e) = tx.try_send(BlockRequest { detection: d }) {
                let d = match e {
                    mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r) => {
                        r.detection
                    }
                };
                warn(format_args!(
                    "attack from {}: not blocked, {BLOCK_QUEUE} blocks are waiting for the firewall already",
                    d.source
                ));
            }
        }
    }
}

/// A warning about an attacker or a block, at most [`WARNINGS_PER_SECOND`]
/// (burst [`WARNING_BURST`]); the lines left out are counted in the next one.
/// A budget of its own: a flood's refusal lines (`pipeline::alert`) cannot
/// crowd these out, nor these flood the log when many sources are blocked.
pub fn warn(line: impl std::fmt::Display) {
    static WARNINGS: LazyLock<crate::pipeline::WarnBudget> = LazyLock::new(|| {
        crate::pipeline::WarnBudget::new("attack", WARNINGS_PER_SECOND, WARNING_BURST)
    });
    WARNINGS.warn(line);
}

pub const WARNINGS_PER_SECOND: u32 = 20;
pub const WARNING_BURST: u32 = 100;

struct Active {
    detector: Detector,
    responder: Responder,
}

/// The running server's detector, if `[attack]` is configured.
static ACTIVE: ArcSwapOption<Active> = ArcSwapOption::const_empty();
/// Whether [`ACTIVE`] holds one: without `[attack]` a packet costs one load.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// The detector's clock: whole seconds since the first use (monotonic).
fn now() -> u64 {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    START.elapsed().as_secs()
}

/// Start detecting with `detector`, responding with `responder` (at start).
pub fn install(detector: Detector, responder: Responder) {
    ACTIVE.store(Some(Arc::new(Active {
        detector,
        responder,
    })));
    ENABLED.store(true, Ordering::Release);
}

/// Stop detecting (at shutdown).
pub fn uninstall() {
    ENABLED.store(false, Ordering::Release);
    ACTIVE.store(None);
}

/// Every packet's outcome, with the sender it came from.
pub fn observe(peer: SocketAddr, outcome: &Outcome) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let active = ACTIVE.load();
    let Some(active) = active.as_ref() else {
        return;
    };
    match outcome {
        Outcome::Granted(_) => active.detector.granted(peer.ip(), now()),
        Outcome::Denied { stage, reason, .. } => {
            if let Some(d) = active.detector.refused(peer.ip(), *stage, reason, now()) {
                active.responder.respond(d);
            }
        }
    }
}

/// The hook of `config`, if it names one.
pub fn hook_of(config: &AttackConfig, test_mode: bool) -> Option<Hook> {
    (!config.hook.is_empty()).then(|| {
        Hook::new(
            config.hook.clone(),
            Duration::from_secs(config.hook_timeout_secs),
            config.max_hooks,
            test_mode,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector(extra: &str) -> Detector {
        let c: AttackConfig =
            toml::from_str(&format!("threshold = 3\nwindow_secs = 10\n{extra}")).unwrap();
        Detector::new(&c).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_threshold_within_the_window_detects_once_then_quiet() {
        let d = detector("block_secs = 100");
        let a = ip("192.0.2.1");
        assert_eq!(d.refused(a, Stage::Hmac, "bad", 0), None);
        assert_eq!(d.refused(a, Stage::Replay, "replay", 1), None);
        let got = d.refused(a, Stage::Hmac, "bad hmac", 2).unwrap();
        assert_eq!(
            got,
            Detection {
                source: a,
                failures: 3,
                window_secs: 10,
                stage: Stage::Hmac,
                reason: "bad hmac".into(),
                block_secs: 100,
                table_full: false,
            }
        );
        // Blocked: not counted again until the block ends.
        for t in 3..102 {
            assert_eq!(d.refused(a, Stage::Hmac, "bad", t), None, "at {t}");
        }
        assert_eq!(d.refused(a, Stage::Hmac, "bad", 102), None);
        assert_eq!(d.refused(a, Stage::Hmac, "bad", 103), None);
        assert!(d.refused(a, Stage::Hmac, "bad", 104).is_some());
    }

    #[test]
    fn failures_spread_wider_than_the_window_never_detect() {
        let d = detector("");
        let a = ip("192.0.2.1");
        // Two per window, windows back to back: the count restarts each time.
        for t in (0..200).step_by(5) {
            assert_eq!(d.refused(a, Stage::Hmac, "bad", t), None, "at {t}");
        }
    }

    #[test]
    fn only_the_configured_stages_count_and_store_errors_never() {
        let d = detector("");
        let a = ip("192.0.2.1");
        let store_error = crate::replay::ReplayError("redis: timed out".into()).to_string();
        for _ in 0..10 {
            for stage in [
                Stage::Precheck,
                Stage::Policy,
                Stage::Blacklist,
                Stage::Action,
                Stage::Overload,
            ] {
                assert_eq!(d.refused(a, stage, "x", 0), None, "{stage}");
            }
            assert_eq!(d.refused(a, Stage::Replay, &store_error, 0), None);
        }
        let d = detector("count = [\"precheck\"]");
        assert_eq!(d.refused(a, Stage::Precheck, "x", 0), None);
        assert_eq!(d.refused(a, Stage::Precheck, "x", 0), None);
        assert!(d.refused(a, Stage::Precheck, "x", 0).is_some());
    }

    #[test]
    fn a_granted_source_is_cleared_and_not_counted_during_its_grace() {
        let d = detector("grace_secs = 50\nblock_secs = 100");
        let a = ip("192.0.2.1");
        d.refused(a, Stage::Hmac, "bad", 0);
        d.refused(a, Stage::Hmac, "bad", 0);
        d.granted(a, 1);
        for t in 1..51 {
            assert_eq!(d.refused(a, Stage::Hmac, "bad", t), None, "at {t}");
        }
        // After the grace, counting starts from zero.
        assert_eq!(d.refused(a, Stage::Hmac, "bad", 51), None);
        assert_eq!(d.refused(a, Stage::Hmac, "bad", 51), None);
        assert!(d.refused(a, Stage::Hmac, "bad", 51).is_some());
        // The same address seen through a dual-stack socket is the same source.
        let b = ip("192.0.2.2");
        d.granted(ip("::ffff:192.0.2.2"), 60);
        for _ in 0..5 {
            assert_eq!(d.refused(b, Stage::Hmac, "bad", 61), None);
        }
    }

    #[test]
    fn exempt_sources_are_never_counted() {
        let d = detector("exempt = [\"198.51.100.0/24\", \"2001:db8::1\"]");
        for _ in 0..10 {
            assert_eq!(d.refused(ip("198.51.100.7"), Stage::Hmac, "x", 0), None);
            assert_eq!(d.refused(ip("2001:db8::1"), Stage::Hmac, "x", 0), None);
        }
        assert_eq!(d.refused(ip("2001:db8::2"), Stage::Hmac, "x", 0), None);
        assert_eq!(d.refused(ip("2001:db8::2"), Stage::Hmac, "x", 0), None);
        assert!(d.refused(ip("2001:db8::2"), Stage::Hmac, "x", 0).is_some());
    }

    #[test]
    fn without_blocking_a_source_is_detected_at_most_once_a_window() {
        let d = detector("");
        let a = ip("192.0.2.1");
        let mut detections = Vec::new();
        for t in 0..30 {
            for _ in 0..5 {
                if let Some(x) = d.refused(a, Stage::Hmac, "bad", t) {
                    assert_eq!((x.block_secs, x.table_full), (0, false));
                    detections.push(t);
                }
            }
        }
        assert_eq!(detections, [0, 10, 20]);
    }

    /// Memory stays flat under a flood of spoofed sources: the tables never
    /// hold more than `max_sources` counts and grants and `max_blocked` blocks.
    #[test]
    fn tables_stay_bounded_under_a_flood_of_sources() {
        let d = detector("max_sources = 100\nmax_blocked = 10\nblock_secs = 1000");
        let mut blocked = 0;
        let mut full = 0;
        for i in 0..200_000u32 {
            let source = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            // Every fifth source knocks once, every source fails 3 times.
            if i % 5 == 0 {
                d.granted(IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i)), 0);
            }
            for _ in 0..3 {
                if let Some(x) = d.refused(source, Stage::Hmac, "bad", 0) {
                    if x.table_full {
                        full += 1;
                    } else {
                        blocked += 1;
                    }
                }
            }
            let (counts, grants, quiet) = d.sizes();
            assert!(counts <= 100 && grants <= 100 && quiet <= 10, "{i}");
        }
        assert_eq!((blocked, full), (10, 200_000 - 10));
        // Once those blocks end, new sources are blocked again.
        let late = ip("192.0.2.99");
        for _ in 0..2 {
            assert_eq!(d.refused(late, Stage::Hmac, "bad", 1000), None);
        }
        let again = d.refused(late, Stage::Hmac, "bad", 1000).unwrap();
        assert_eq!((again.block_secs, again.table_full), (1000, false));
        assert_eq!(d.sizes().2, 1);
        // Interleaved: a source's count is forgotten once 100 others were seen since.
        let d = detector("max_sources = 100");
        let victim = ip("192.0.2.1");
        d.refused(victim, Stage::Hmac, "x", 0);
        d.refused(victim, Stage::Hmac, "x", 0);
        for i in 0..100u32 {
            d.refused(
                IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)),
                Stage::Hmac,
                "x",
                0,
            );
        }
        assert_eq!(d.refused(victim, Stage::Hmac, "x", 0), None, "forgotten");
    }
}
