//! Stage 5: hand the grant to the task that owns the firewall backends and wait
//! until it is applied (so "granted" means the port is open).

use super::{Approved, Outcome, Stage, StageFuture};
use crate::policy::Grant;
use std::convert::Infallible;
use std::task::{Context, Poll};
use tokio::sync::{mpsc, oneshot};
use tower::Service;

/// A grant on its way to the action task, with where to report the result.
#[derive(Debug)]
pub struct ActionRequest {
    pub grant: Grant,
    /// Unix seconds when the packet arrived.
    pub now: u64,
    pub done: oneshot::Sender<Result<(), String>>,
}

#[derive(Clone)]
pub struct ActionStage {
    tx: mpsc::Sender<ActionRequest>,
}

impl ActionStage {
    pub fn new(tx: mpsc::Sender<ActionRequest>) -> Self {
        ActionStage { tx }
    }
}

impl Service<Approved> for ActionStage {
    type Response = Outcome;
    type Error = Infallible;
    type Future = StageFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, a: Approved) -> StageFuture {
        let tx = self.tx.clone();
        Box::pin(async move {
            let summary = a.grant.to_string();
            let (done, result) = oneshot::channel();
            if tx
                .send(ActionRequest {
                    grant: a.grant,
                    now: a.packet.received_at,
                    done,
                })
                .await
                .is_err()
            {
                return Ok(Outcome::denied(Stage::Action, "action task stopped"));
            }
            Ok(match result.await {
                Ok(Ok(())) => Outcome::Granted(summary),
                Ok(Err(e)) => Outcome::denied(Stage::Action, e),
                Err(_) => Outcome::denied(Stage::Action, "action task dropped the grant"),
            })
        })
    }
}
