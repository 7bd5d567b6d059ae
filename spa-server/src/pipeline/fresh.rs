//! Stage 3: only fresh packets go on to policy: the packet's own timestamp is
//! within MAX_SPA_PACKET_AGE of its arrival (with packet aging on), and its
//! digest is not yet recorded (looked at again: a GPG decryption takes long
//! enough for a copy to be granted meanwhile). Recording happens after
//! policy said yes ([`super::ReplayGuard`]), so a copy that fails policy cannot
//! burn the real knock.

use super::{ready, Decision, Decrypted, Fresh, Outcome, Stage, StageFuture};
use crate::policy::{check_age, PolicySettings};
use crate::replay::ReplayStore;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

#[derive(Clone)]
pub struct FreshLayer {
    settings: Arc<PolicySettings>,
    replays: Arc<dyn ReplayStore>,
}

impl FreshLayer {
    pub fn new(settings: Arc<PolicySettings>, replays: Arc<dyn ReplayStore>) -> Self {
        FreshLayer { settings, replays }
    }
}

impl<S> Layer<S> for FreshLayer {
    type Service = FreshStage<S>;
    fn layer(&self, inner: S) -> FreshStage<S> {
        FreshStage {
            settings: self.settings.clone(),
            replays: self.replays.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct FreshStage<S> {
    settings: Arc<PolicySettings>,
    replays: Arc<dyn ReplayStore>,
    inner: S,
}

impl<S> Service<Decrypted> for FreshStage<S>
where
    S: Service<Fresh, Response = Outcome, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = Infallible;
    type Future = StageFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, d: Decrypted) -> StageFuture {
        let timestamp = d.decoded.message.timestamp;
        if let Err(denial) = check_age(&self.settings, d.packet.received_at, timestamp) {
            let source = crate::config::access::canonical(d.packet.peer.ip());
            super::alert(denial.fwknopd_log(source, d.stanza + 1));
            // MAX_SPA_PACKET_AGE is an access setting: refused at `policy`, as before.
            return ready(Outcome::refused(
                Stage::Policy,
                denial.to_string(),
                Decision::decrypted(&d),
            ));
        }
        if self.replays.seen(&d.digest) {
            super::alert_replay(d.packet.peer.ip());
            return ready(Outcome::refused(
                Stage::Replay,
                "packet seen before (replay)",
                Decision::decrypted(&d),
            ));
        }
        Box::pin(self.inner.call(Fresh { decrypted: d }))
    }
}
