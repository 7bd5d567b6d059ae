//! The server pipeline: one typed pass from capture to grant. Each step takes
//! what the one before made, and only that step can make what it hands on:
//!
//! ```text
//! capture ─► screen ─► Decrypt ─► FreshStage ─► PolicyStage ─► ReplayGuard ─► ActionStage
//!   bytes   Authenticated  Decrypted       Fresh          Approved       (recorded)   Granted
//! ```
//!
//! Cheap rejection first: the screen ([`Pipeline::screen`]: length, charset,
//! constant-time HMAC, then the replay store's hint) runs once, in the capture,
//! on the bytes still in its buffer, so garbage and replays are never copied,
//! never queue and never cost more than a few hash blocks and a lookup. What
//! passes takes one of the bounded work slots (waiting for one: backpressure,
//! see [`head`]) and runs the other stages on one task of its own. GPG packets
//! are decrypted by the bounded worker pool of [`crate::gpg`].
//!
//! The replay digest is recorded only once policy has said yes, right before the
//! action: a copy raced in by someone on the path that fails policy (another
//! DESTINATION, a spoofed source under REQUIRE_SOURCE_ADDRESS) cannot burn the
//! real knock.

mod action;
mod decision;
mod decrypt;
mod fresh;
pub mod head;
mod policy;
mod recent_replays;
mod replay;
mod screen;

pub use action::{ActionRequest, ActionResult, ActionStage};
pub use decision::{Asked, Decision, Endpoint, GrantFacts, NatFacts, StanzaId};
pub use decrypt::{Decrypt, DecryptLayer};
pub use fresh::{FreshLayer, FreshStage};
pub use head::{InFlight, Pipeline};
pub use policy::{PolicyLayer, PolicyStage};
pub use replay::{ReplayGuard, ReplayLayer};
pub use screen::{Keyring, Screened};

use crate::policy::Grant;
use crate::replay::PacketDigest;
use futures_util::future::BoxFuture;
use spa_core::DecodedMessage;
use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// One packet as a capture saw it, still in the capture's buffer.
#[derive(Clone, Copy, Debug)]
pub struct Received<'a> {
    pub bytes: &'a [u8],
    pub peer: SocketAddr,
    /// The client an HTTP proxy forwarded it for (X-Forwarded-For, when enabled).
    pub forwarded_for: Option<IpAddr>,
    /// The address it was sent to, when the capture knows it.
    pub destination: Option<IpAddr>,
    /// Unix seconds at reception.
    pub received_at: u64,
    pub capture: &'static str,
}

/// A packet that passed the screen, copied out of the capture's buffer.
#[derive(Clone, Debug)]
pub struct RawPacket {
    pub bytes: Vec<u8>,
    pub peer: SocketAddr,
    pub forwarded_for: Option<IpAddr>,
    pub destination: Option<IpAddr>,
    pub received_at: u64,
    pub capture: &'static str,
}

impl From<Received<'_>> for RawPacket {
    fn from(r: Received<'_>) -> RawPacket {
        RawPacket {
            bytes: r.bytes.to_vec(),
            peer: r.peer,
            forwarded_for: r.forwarded_for,
            destination: r.destination,
            received_at: r.received_at,
            capture: r.capture,
        }
    }
}

/// A packet that passed the screen: its HMAC verified for these stanzas (or
/// its stanzas have no HMAC), and it is not a copy of one already granted.
/// Made only by [`Pipeline::screen`].
#[derive(Debug)]
pub struct Authenticated {
    packet: RawPacket,
    /// The stanzas as they were when the packet was screened (reloads swap them).
    stanzas: Stanzas,
    screened: Screened,
    /// Over the wire bytes: what the replay store records.
    digest: PacketDigest,
}

impl Authenticated {
    pub fn packet(&self) -> &RawPacket {
        &self.packet
    }
    /// Whether a stanza's HMAC verified (else it may be shed when full).
    pub fn mac_verified(&self) -> bool {
        self.screened.mac_verified()
    }
    /// A native packet past mac1, not opened yet.
    pub fn is_native(&self) -> bool {
        self.screened.native.is_some()
    }
}

/// A packet that decrypted and decoded under one stanza's key. Made only by
/// [`Decrypt`].
#[derive(Debug)]
pub struct Decrypted {
    packet: RawPacket,
    stanzas: Stanzas,
    stanza: usize,
    decoded: DecodedMessage,
    /// The fingerprint of a GPG packet's verified signer.
    signer: Option<String>,
    digest: PacketDigest,
    /// The source port a native knock pins its grant to.
    source_port: Option<u16>,
}

/// A decrypted packet within its age and not recorded yet. Made only by
/// [`FreshStage`].
#[derive(Debug)]
pub struct Fresh {
    decrypted: Decrypted,
}

/// A grant with the packet it came from. Made only by [`PolicyStage`].
#[derive(Debug)]
pub struct Approved {
    packet: RawPacket,
    /// The packet's own timestamp (the replay store prunes by it).
    timestamp: u64,
    digest: PacketDigest,
    grant: Grant,
    /// Who asked for what, and what was approved (for the audit log).
    decision: Box<Decision>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Blacklist,
    Precheck,
    Hmac,
    Decrypt,
    Replay,
    Policy,
    Action,
    Overload,
}

impl Stage {
    /// Every stage, in pipeline order (`stage as usize` indexes it).
    pub const ALL: [Stage; 8] = [
        Stage::Blacklist,
        Stage::Precheck,
        Stage::Hmac,
        Stage::Decrypt,
        Stage::Replay,
        Stage::Policy,
        Stage::Action,
        Stage::Overload,
    ];

    /// The stage's name in logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Blacklist => "blacklist",
            Stage::Precheck => "precheck",
            Stage::Hmac => "hmac",
            Stage::Decrypt => "decrypt",
            Stage::Replay => "replay",
            Stage::Policy => "policy",
            Stage::Action => "action",
            Stage::Overload => "overload",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What became of a packet. Never sent to the network.
///
/// A packet that passed the HMAC carries its [`Decision`] (the facts the audit
/// log records); garbage, refused before or at the HMAC, carries none, so
/// refusing it allocates nothing more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The access is in the firewall (or the command ran).
    Granted(Box<Decision>),
    Denied {
        stage: Stage,
        reason: Reason,
        decision: Option<Box<Decision>>,
    },
}

/// Why a packet was refused. A fixed text is borrowed, so refusing a flood of
/// garbage or replays formats no string per packet.
pub type Reason = std::borrow::Cow<'static, str>;

/// What a refusal's reason can be made from.
pub trait IntoReason {
    fn into_reason(self) -> Reason;
}

impl IntoReason for &'static str {
    fn into_reason(self) -> Reason {
        Reason::Borrowed(self)
    }
}

impl IntoReason for String {
    fn into_reason(self) -> Reason {
        Reason::Owned(self)
    }
}

impl IntoReason for fmt::Arguments<'_> {
    fn into_reason(self) -> Reason {
        match self.as_str() {
            Some(fixed) => Reason::Borrowed(fixed),
            None => Reason::Owned(self.to_string()),
        }
    }
}

impl IntoReason for spa_core::SpaError {
    fn into_reason(self) -> Reason {
        match self.fixed_text() {
            Some(fixed) => Reason::Borrowed(fixed),
            None => Reason::Owned(self.to_string()),
        }
    }
}

impl Outcome {
    /// A refusal of a packet nothing is known of (it did not pass the HMAC).
    pub fn denied(stage: Stage, reason: impl IntoReason) -> Self {
        Outcome::Denied {
            stage,
            reason: reason.into_reason(),
            decision: None,
        }
    }
    /// A refusal of an authenticated packet, with what is known of it.
    pub fn refused(
        stage: Stage,
        reason: impl IntoReason,
        decision: impl Into<Box<Decision>>,
    ) -> Self {
        Outcome::Denied {
            stage,
            reason: reason.into_reason(),
            decision: Some(decision.into()),
        }
    }
    pub fn is_granted(&self) -> bool {
        matches!(self, Outcome::Granted(_))
    }
    /// The stage that refused the packet (None: granted).
    pub fn stage(&self) -> Option<Stage> {
        match self {
            Outcome::Granted(_) => None,
            Outcome::Denied { stage, .. } => Some(*stage),
        }
    }
    /// Why it was refused (None: granted).
    pub fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Granted(_) => None,
            Outcome::Denied { reason, .. } => Some(reason),
        }
    }
    /// The facts of an authenticated packet.
    pub fn decision(&self) -> Option<&Decision> {
        match self {
            Outcome::Granted(d) => Some(d),
            Outcome::Denied { decision, .. } => decision.as_deref(),
        }
    }
}

pub type StageFuture = BoxFuture<'static, Result<Outcome, Infallible>>;

/// One snapshot of the access stanzas.
pub type Stanzas = Arc<Vec<crate::config::AccessStanza>>;

/// The stages after the screen, one task per packet.
pub(crate) type Stages = Decrypt<FreshStage<PolicyStage<ReplayGuard<ActionStage>>>>;

/// Build the whole pipeline with tower's ServiceBuilder, reading like the
/// diagram; `gpg` is the worker pool of the decrypt stage (`None`: GPG
/// packets are refused), `max_in_flight` the work slots.
pub fn build_with_gpg(
    keyring: Arc<Keyring>,
    store: Arc<dyn crate::replay::ReplayStore>,
    settings: crate::policy::PolicySettings,
    actions: tokio::sync::mpsc::Sender<ActionRequest>,
    max_in_flight: usize,
    gpg: Option<Arc<crate::gpg::GpgPool>>,
) -> Pipeline {
    let settings = Arc::new(settings);
    let stages = tower::ServiceBuilder::new()
        .layer(DecryptLayer::with_gpg(gpg))
        .layer(FreshLayer::new(settings.clone(), store.clone()))
        .layer(PolicyLayer::new(settings))
        .layer(ReplayLayer::new(store.clone()))
        .service(ActionStage::new(actions));
    Pipeline::new(keyring, store, max_in_flight, stages)
}

/// A refusal of a packet that passed the HMAC, or came from a sender an access
/// stanza lists: logged at WARN, worded as fwknopd's (log alerts and fail2ban
/// key on these; see examples/fail2ban). Other refusals stay at debug.
///
/// With `SOURCE ANY` every sender is listed, so a flood of forged packets would be a
/// flood of WARN lines (and of syslog disk). Lines beyond [`ALERTS_PER_SECOND`]
/// (burst [`ALERT_BURST`]) are counted instead, and the count is logged before the
/// next line let through: a flooding sender still shows up far more often than a
/// fail2ban `maxretry`.
pub(crate) fn alert(line: impl fmt::Display) {
    static ALERTS: std::sync::LazyLock<WarnBudget> =
        std::sync::LazyLock::new(|| WarnBudget::new("refusal", ALERTS_PER_SECOND, ALERT_BURST));
    ALERTS.warn(line);
}

pub(crate) const ALERTS_PER_SECOND: u32 = 50;
pub(crate) const ALERT_BURST: u32 = 200;

/// WARN lines at most `per_second` (burst `burst`); the lines left out are
/// counted, and the count is logged before the next line let through.
pub(crate) struct WarnBudget {
    what: &'static str,
    per_second: u32,
    limit: governor::RateLimiter<
        governor::state::NotKeyed,
        governor::state::InMemoryState,
        CoarseClock,
        governor::middleware::NoOpMiddleware<std::time::Duration>,
    >,
    suppressed: std::sync::atomic::AtomicU64,
}

impl WarnBudget {
    pub(crate) fn new(what: &'static str, per_second: u32, burst: u32) -> WarnBudget {
        use governor::{Quota, RateLimiter};
        use std::num::NonZeroU32;
        let quota = Quota::per_second(NonZeroU32::new(per_second).expect("non-zero"))
            .allow_burst(NonZeroU32::new(burst).expect("non-zero"));
        WarnBudget {
            what,
            per_second,
            limit: RateLimiter::direct_with_clock(quota, CoarseClock),
            suppressed: Default::default(),
        }
    }

    pub(crate) fn warn(&self, line: impl fmt::Display) {
        use std::sync::atomic::Ordering;
        if self.limit.check().is_err() {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        if suppressed > 0 {
            tracing::warn!(
                "{suppressed} {} lines were not logged (more than {} a second)",
                self.what,
                self.per_second
            );
        }
        tracing::warn!("{line}");
    }
}

/// The time since boot to the last timer tick (CLOCK_MONOTONIC_COARSE, a few
/// milliseconds fine): all a budget of lines a second needs, and read for each
/// refused packet of a flood, where the precise clock showed in the profile.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CoarseClock;

impl governor::clock::Clock for CoarseClock {
    type Instant = std::time::Duration;
    fn now(&self) -> std::time::Duration {
        use nix::time::{clock_gettime, ClockId};
        #[cfg(any(target_os = "linux", target_os = "android"))]
        const COARSE: ClockId = ClockId::CLOCK_MONOTONIC_COARSE;
        // No coarse clock by that name on the BSDs and macOS: the precise one.
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        const COARSE: ClockId = ClockId::CLOCK_MONOTONIC;
        clock_gettime(COARSE)
            .map(std::time::Duration::from)
            .unwrap_or_default()
    }
}

/// fwknopd's replay line; the sender comes first, as in fwknopd's.
pub(crate) fn alert_replay(peer: IpAddr) {
    alert(format_args!(
        "Replay detected from source IP: {}",
        crate::config::access::canonical(peer)
    ));
}

pub(crate) fn ready(outcome: Outcome) -> StageFuture {
    Box::pin(std::future::ready(Ok(outcome)))
}
