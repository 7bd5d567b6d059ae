//! The server pipeline, one tower stage per step:
//!
//! ```text
//! capture ─► HmacFilter ─► Decrypt ─► PolicyStage ─► ReplayGuard ─► ActionStage
//! ```
//!
//! Cheap rejection first: the filter runs synchronously in the capture task
//! (length, charset, then constant-time HMAC), so garbage never queues and never
//! costs more than a few hash blocks. Only packets that pass take a slot of the
//! bounded work queue and continue on their own task. GPG packets are decrypted
//! by the bounded worker pool of [`crate::gpg`], which drops work when full.
//!
//! The replay digest is recorded only once policy has said yes, right before the
//! action: a copy raced in by someone on the path that fails policy (another
//! DESTINATION, a spoofed source under REQUIRE_SOURCE_ADDRESS) cannot burn the
//! real knock. Copies already recorded are refused before decryption (the
//! store's `seen` hint), so a replay flood costs an HMAC and a lookup.

mod action;
mod decision;
mod decrypt;
mod filter;
mod policy;
mod replay;

pub use action::{ActionRequest, ActionResult, ActionStage};
pub use decision::{Asked, Decision, Endpoint, GrantFacts, NatFacts, StanzaId};
pub use decrypt::{Decrypt, DecryptLayer};
pub use filter::{Candidates, HmacFilter, HmacFilterLayer, InFlight, Keyring};
pub use policy::{PolicyLayer, PolicyStage};
pub use replay::{ReplayGuard, ReplayLayer};

use crate::policy::Grant;
use futures_util::future::BoxFuture;
use spa_core::DecodedMessage;
use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// One packet as a capture saw it.
#[derive(Clone, Debug)]
pub struct RawPacket {
    pub bytes: Vec<u8>,
    pub peer: SocketAddr,
    /// The client an HTTP proxy forwarded it for (X-Forwarded-For, when enabled).
    pub forwarded_for: Option<IpAddr>,
    /// The address it was sent to, when the capture knows it.
    pub destination: Option<IpAddr>,
    /// Unix seconds at reception.
    pub received_at: u64,
    pub capture: &'static str,
}

/// A packet whose HMAC verified for these stanzas (or whose stanzas have no HMAC).
#[derive(Debug)]
pub struct Authenticated {
    pub packet: RawPacket,
    /// The stanzas as they were when the packet was screened (reloads swap them).
    pub stanzas: Stanzas,
    /// (stanza index, length of the ciphertext part of the packet)
    pub candidates: Vec<(usize, usize)>,
    /// The same for stanzas that take GPG packets (tried after the Rijndael ones).
    pub gpg_candidates: Vec<(usize, usize)>,
}

/// A packet that decrypted and decoded under one stanza's key.
#[derive(Debug)]
pub struct Decrypted {
    pub packet: RawPacket,
    pub stanzas: Stanzas,
    pub stanza: usize,
    pub decoded: DecodedMessage,
    /// The fingerprint of a GPG packet's verified signer.
    pub signer: Option<String>,
}

/// A grant with the packet it came from.
#[derive(Debug)]
pub struct Approved {
    pub packet: RawPacket,
    /// The packet's own timestamp (the replay store prunes by it).
    pub timestamp: u64,
    pub grant: Grant,
    /// Who asked for what, and what was approved (for the audit log).
    pub decision: Box<Decision>,
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
        reason: String,
        decision: Option<Box<Decision>>,
    },
}

impl Outcome {
    /// A refusal of a packet nothing is known of (it did not pass the HMAC).
    pub fn denied(stage: Stage, reason: impl fmt::Display) -> Self {
        Outcome::Denied {
            stage,
            reason: reason.to_string(),
            decision: None,
        }
    }
    /// A refusal of an authenticated packet, with what is known of it.
    pub fn refused(
        stage: Stage,
        reason: impl fmt::Display,
        decision: impl Into<Box<Decision>>,
    ) -> Self {
        Outcome::Denied {
            stage,
            reason: reason.to_string(),
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

/// A full pipeline for tests and the daemon.
pub type Pipeline = HmacFilter<Decrypt<PolicyStage<ReplayGuard<ActionStage>>>>;

/// Build the whole stack with tower's ServiceBuilder, reading like the
/// diagram; `gpg` is the worker pool of the decrypt stage (`None`: GPG
/// packets are refused).
pub fn build_with_gpg(
    keyring: Arc<Keyring>,
    store: Arc<dyn crate::replay::ReplayStore>,
    settings: crate::policy::PolicySettings,
    actions: tokio::sync::mpsc::Sender<ActionRequest>,
    max_in_flight: usize,
    gpg: Option<Arc<crate::gpg::GpgPool>>,
) -> Pipeline {
    tower::ServiceBuilder::new()
        .layer(HmacFilterLayer::new(keyring.clone(), max_in_flight))
        .layer(DecryptLayer::with_gpg(gpg).skipping_replays(store.clone()))
        .layer(PolicyLayer::new(settings))
        .layer(ReplayLayer::new(store))
        .service(ActionStage::new(actions))
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
    limit: governor::DefaultDirectRateLimiter,
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
            limit: RateLimiter::direct(quota),
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
