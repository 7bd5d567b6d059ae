//! The head of the pipeline, what every capture holds: the screen and the
//! replay hint run right in the capture, on the bytes still in its buffer; what
//! passes takes one of the bounded work slots and runs the stages on one task.
//!
//! Backpressure: [`Service::poll_ready`] waits for a free slot. A capture
//! that holds a packet whose HMAC verified waits there, reading nothing more,
//! so the kernel's socket buffer holds the rest of a burst; such a packet is
//! never refused for a full queue. Packets only plausible (stanzas without
//! HMAC) are shed when no slot is free, counted and logged.

use super::recent_replays::RecentReplays;
use super::screen::{Keyring, Screened};
use super::{
    Authenticated, Decision, Outcome, RawPacket, Received, Stage, StageFuture, Stages, Stanzas,
};
use crate::replay::ReplayStore;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;
use tokio_util::task::TaskTracker;
use tower::{Service, ServiceExt};

pub struct Pipeline {
    keyring: Arc<Keyring>,
    replays: Arc<dyn ReplayStore>,
    slots: PollSemaphore,
    max_in_flight: usize,
    /// The slot this handle's `poll_ready` took, used by its next `call`.
    slot: Option<OwnedSemaphorePermit>,
    /// Every packet's task, so a graceful stop can wait for them.
    tasks: TaskTracker,
    stages: Stages,
    /// This handle's (each capture's) last replays.
    recent_replays: RecentReplays,
}

impl Clone for Pipeline {
    /// A new handle: it shares the slots, but holds none yet.
    fn clone(&self) -> Self {
        Pipeline {
            keyring: self.keyring.clone(),
            replays: self.replays.clone(),
            slots: self.slots.clone(),
            max_in_flight: self.max_in_flight,
            slot: None,
            tasks: self.tasks.clone(),
            stages: self.stages.clone(),
            recent_replays: RecentReplays::default(),
        }
    }
}

impl Pipeline {
    pub(super) fn new(
        keyring: Arc<Keyring>,
        replays: Arc<dyn ReplayStore>,
        max_in_flight: usize,
        stages: Stages,
    ) -> Pipeline {
        Pipeline {
            keyring,
            replays,
            slots: PollSemaphore::new(Arc::new(Semaphore::new(max_in_flight))),
            max_in_flight,
            slot: None,
            tasks: TaskTracker::new(),
            stages,
            recent_replays: RecentReplays::default(),
        }
    }

    /// The stanzas this pipeline screens against (captures fit their kernel
    /// length filters to them).
    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    /// The screen: blacklist, shape, charset and HMAC, then the replay hint (a
    /// copy of a packet already granted costs an HMAC and a lookup, never a
    /// decryption nor a slot; copies of one refused as a replay just now cost
    /// a compare and a lookup). Only what passes is copied out of the
    /// capture's buffer.
    pub fn screen(&mut self, received: Received<'_>) -> Result<Authenticated, Outcome> {
        let stanzas: Stanzas = self.keyring.snapshot();
        let sender = received.peer.ip();
        if let Some(known) = self
            .recent_replays
            .screened(received.bytes, sender, &stanzas)
        {
            self.keyring.refuse_blacklisted(sender)?;
            if self.replays.seen(&known.digest) {
                return Err(refuse_replay(&received, &known.screened));
            }
        }
        let screened = self.keyring.screen(received.bytes, sender, &stanzas)?;
        // A native packet's replay key is its ephemeral key (docs/protocol.md).
        let digest = match &screened.native {
            Some(_) => spa_native::replay_key_of(received.bytes).unwrap_or_default(),
            None => self.recent_replays.digest_of(received.bytes),
        };
        if self.replays.seen(&digest) {
            if screened.native.is_none() {
                self.recent_replays
                    .remember(received.bytes, sender, &stanzas, &screened, digest);
            }
            return Err(refuse_replay(&received, &screened));
        }
        Ok(Authenticated {
            packet: RawPacket::from(received),
            stanzas,
            screened,
            digest,
        })
    }

    /// Authenticated packets being processed now, for the queue-depth gauge.
    pub fn in_flight(&self) -> InFlight {
        InFlight {
            slots: self.slots.clone_inner(),
            max: self.max_in_flight,
        }
    }

    /// Run a packet's stages on a task of their own (the capture goes back
    /// to reading at once); `done` gets the outcome. Call after `ready`.
    pub fn spawn(&mut self, packet: Authenticated, done: impl FnOnce(Outcome) + Send + 'static) {
        let outcome = self.call(packet);
        self.tasks.spawn(async move {
            let Ok(outcome) = outcome.await;
            done(outcome);
        });
    }

    /// After the captures stopped: wait until every packet they handed on
    /// has its outcome (its grant applied), at most `limit`. Returns how many
    /// were still running.
    pub async fn drain(&self, limit: Duration) -> usize {
        self.tasks.close();
        if tokio::time::timeout(limit, self.tasks.wait()).await.is_ok() {
            0
        } else {
            self.tasks.len()
        }
    }
}

impl Service<Authenticated> for Pipeline {
    type Response = Outcome;
    type Error = Infallible;
    type Future = StageFuture;

    /// Ready once this handle holds a work slot.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.slot.is_none() {
            let Some(slot) = ready!(self.slots.poll_acquire(cx)) else {
                unreachable!("the work slots are never closed");
            };
            self.slot = Some(slot);
        }
        Poll::Ready(Ok(()))
    }

    /// The stages run when the returned future is polled (on the packet's
    /// task, not the capture's); the slot is freed with the outcome.
    fn call(&mut self, packet: Authenticated) -> StageFuture {
        let slot = self.slot.take().expect("Pipeline::call without poll_ready");
        let stages = self.stages.clone();
        Box::pin(async move {
            let outcome = stages.oneshot(packet).await;
            drop(slot);
            outcome
        })
    }
}

/// The refusal of a packet the replay store has seen.
fn refuse_replay(received: &Received<'_>, screened: &Screened) -> Outcome {
    super::alert_replay(received.peer.ip());
    let reason = if screened.rijndael().is_empty() && !screened.gpg().is_empty() {
        "GPG packet seen before (replay), not decrypted"
    } else {
        "packet seen before (replay)"
    };
    Outcome::refused(
        Stage::Replay,
        reason,
        Decision::screened(received, screened),
    )
}

/// A view of the work slots' use that outlives the pipeline's handles.
#[derive(Clone)]
pub struct InFlight {
    slots: Arc<Semaphore>,
    max: usize,
}

impl InFlight {
    pub fn now(&self) -> usize {
        self.max.saturating_sub(self.slots.available_permits())
    }
    pub fn max(&self) -> usize {
        self.max
    }
}
