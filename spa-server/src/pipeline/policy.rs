//! Stage 4: access policy turns a decrypted message into a Grant or a Denial.

use super::{ready, Approved, Decrypted, Outcome, Stage, StageFuture};
use crate::policy::{evaluate, PolicySettings, Request};
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

#[derive(Clone)]
pub struct PolicyLayer {
    settings: Arc<PolicySettings>,
}

impl PolicyLayer {
    pub fn new(settings: PolicySettings) -> Self {
        PolicyLayer {
            settings: Arc::new(settings),
        }
    }
}

impl<S> Layer<S> for PolicyLayer {
    type Service = PolicyStage<S>;
    fn layer(&self, inner: S) -> PolicyStage<S> {
        PolicyStage {
            settings: self.settings.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct PolicyStage<S> {
    settings: Arc<PolicySettings>,
    inner: S,
}

impl<S> Service<Decrypted> for PolicyStage<S>
where
    S: Service<Approved, Response = Outcome, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = Infallible;
    type Future = StageFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, d: Decrypted) -> StageFuture {
        let request = Request {
            stanza: &d.stanzas[d.stanza],
            stanza_index: d.stanza,
            message: &d.decoded.message,
            peer: d.packet.peer.ip(),
            forwarded_for: d.packet.forwarded_for,
            destination: d.packet.destination,
            now: d.packet.received_at,
        };
        match evaluate(&self.settings, &request) {
            Ok(grant) => Box::pin(self.inner.call(Approved {
                packet: d.packet,
                grant,
            })),
            Err(denial) => ready(Outcome::denied(Stage::Policy, denial)),
        }
    }
}
