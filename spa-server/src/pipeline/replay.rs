//! Stage 5: the replay cache, between the policy's yes and the action. A digest of
//! the packet is checked and recorded atomically (of two racing copies one passes);
//! a store error denies (never grant what could not be recorded). Recording only
//! approved packets means a copy that fails policy cannot burn the real knock.

use super::{Approved, Outcome, Stage, StageFuture};
use crate::replay::ReplayStore;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service, ServiceExt};

#[derive(Clone)]
pub struct ReplayLayer {
    store: Arc<dyn ReplayStore>,
}

impl ReplayLayer {
    pub fn new(store: Arc<dyn ReplayStore>) -> Self {
        ReplayLayer { store }
    }
}

impl<S> Layer<S> for ReplayLayer {
    type Service = ReplayGuard<S>;
    fn layer(&self, inner: S) -> ReplayGuard<S> {
        ReplayGuard {
            store: self.store.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct ReplayGuard<S> {
    store: Arc<dyn ReplayStore>,
    inner: S,
}

impl<S> Service<Approved> for ReplayGuard<S>
where
    S: Service<Approved, Response = Outcome, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = Infallible;
    type Future = StageFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, a: Approved) -> StageFuture {
        let store = self.store.clone();
        let inner = self.inner.clone();
        Box::pin(async move {
            match store.check_and_insert(a.digest, a.timestamp).await {
                Ok(true) => inner.oneshot(a).await,
                Ok(false) => {
                    super::alert_replay(a.packet.peer.ip());
                    Ok(Outcome::refused(
                        Stage::Replay,
                        "packet seen before (replay)",
                        a.decision,
                    ))
                }
                Err(e) => {
                    crate::metrics::replay_store_failed();
                    Ok(Outcome::refused(Stage::Replay, e.to_string(), a.decision))
                }
            }
        })
    }
}
