//! Stage 3: the replay cache. A digest of the raw packet is checked and recorded
//! atomically; a store error denies (never grant what could not be recorded).

use super::{Decrypted, Outcome, Stage, StageFuture};
use crate::replay::{packet_digest, ReplayStore};
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

impl<S> Service<Decrypted> for ReplayGuard<S>
where
    S: Service<Decrypted, Response = Outcome, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = Infallible;
    type Future = StageFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, d: Decrypted) -> StageFuture {
        let store = self.store.clone();
        let inner = self.inner.clone();
        Box::pin(async move {
            let digest = packet_digest(&d.packet.bytes);
            match store
                .check_and_insert(digest, d.decoded.message.timestamp)
                .await
            {
                Ok(true) => inner.oneshot(d).await,
                Ok(false) => Ok(Outcome::denied(
                    Stage::Replay,
                    "packet seen before (replay)",
                )),
                Err(e) => Ok(Outcome::denied(Stage::Replay, e)),
            }
        })
    }
}
