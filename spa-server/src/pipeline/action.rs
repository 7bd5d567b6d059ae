//! Stage 6: hand the grant to the task that owns the firewall backends and wait
//! until it is applied (so "granted" means the port is open).

use super::{Approved, Outcome, Stage, StageFuture};
use crate::config::access::canonical;
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
    /// The packet's own addresses (script `$PKT_SRC`, `$DST`).
    pub packet: Option<spa_core::firewall::PacketAddresses>,
    pub done: oneshot::Sender<ActionResult>,
}

/// What applied a grant (firewall backends by name, or `command` / `cmd_cycle`),
/// or why it failed.
pub type ActionResult = Result<Vec<&'static str>, String>;

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
            let Approved {
                grant,
                packet,
                mut decision,
                ..
            } = a;
            let (done, result) = oneshot::channel();
            if tx
                .send(ActionRequest {
                    grant,
                    now: packet.received_at,
                    packet: Some(spa_core::firewall::PacketAddresses {
                        source: canonical(packet.peer.ip()),
                        source_port: packet.peer.port(),
                        destination: packet.destination.map(canonical),
                    }),
                    done,
                })
                .await
                .is_err()
            {
                return Ok(Outcome::refused(
                    Stage::Action,
                    "action task stopped",
                    decision,
                ));
            }
            Ok(match result.await {
                Ok(Ok(backends)) => {
                    decision.backends = backends;
                    Outcome::Granted(decision)
                }
                Ok(Err(e)) => Outcome::refused(Stage::Action, e, decision),
                Err(_) => {
                    Outcome::refused(Stage::Action, "action task dropped the grant", decision)
                }
            })
        })
    }
}
