//! Stage 4: access policy turns a fresh message into a Grant or a Denial.
//! With NAT DNS on (ENABLE_NAT_DNS), a NAT target given as a host name is
//! resolved first, without blocking: the only await in this stage.

use super::{ready, Approved, Decision, Fresh, Outcome, Stage, StageFuture};
use crate::policy::{evaluate, PolicySettings, Request};
use spa_core::NatTarget;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

/// A NAT host name that does not resolve by then is refused.
const NAT_DNS_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct PolicyLayer {
    settings: Arc<PolicySettings>,
}

impl PolicyLayer {
    pub fn new(settings: Arc<PolicySettings>) -> Self {
        PolicyLayer { settings }
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

impl<S> PolicyStage<S> {
    /// The NAT target to resolve: a host name, in a client NAT request, with
    /// NAT DNS on (FORCE_NAT targets are addresses already).
    fn host_to_resolve(&self, f: &Fresh) -> Option<NatTarget> {
        let d = &f.decrypted;
        let msg = &d.decoded.message;
        if !self.settings.nat.dns
            || !msg.msg_type.has_nat()
            || d.stanzas[d.stanza].force_nat.is_some()
        {
            return None;
        }
        let target = NatTarget::parse(msg.nat_access.as_deref()?).ok()?;
        target.host.parse::<IpAddr>().is_err().then_some(target)
    }
}

/// Grant or refuse, with the packet's own facts. `decision` is what the
/// packet asked (taken before a NAT host name was resolved).
fn decide(settings: &PolicySettings, f: Fresh, decision: Decision) -> Result<Approved, Outcome> {
    let d = f.decrypted;
    let request = Request {
        stanza: &d.stanzas[d.stanza],
        stanza_index: d.stanza,
        message: &d.decoded.message,
        peer: d.packet.peer.ip(),
        forwarded_for: d.packet.forwarded_for,
        destination: d.packet.destination,
        now: d.packet.received_at,
    };
    match evaluate(settings, &request) {
        Ok(grant) => {
            let grant = grant.pinned_to(d.source_port);
            Ok(Approved {
                decision: Box::new(decision.with_grant(&grant, d.packet.received_at)),
                packet: d.packet,
                timestamp: d.decoded.message.timestamp,
                digest: d.digest,
                grant,
            })
        }
        Err(denial) => {
            let source = crate::config::access::canonical(d.packet.peer.ip());
            super::alert(denial.fwknopd_log(source, d.stanza + 1));
            Err(Outcome::refused(
                Stage::Policy,
                denial.to_string(),
                decision,
            ))
        }
    }
}

/// The first IPv4 address of `host` (fwknopd resolves NAT targets to IPv4).
async fn resolve_v4(target: &NatTarget) -> Option<Ipv4Addr> {
    let lookup = tokio::net::lookup_host((target.host.as_str(), target.port));
    let addrs = tokio::time::timeout(NAT_DNS_TIMEOUT, lookup)
        .await
        .ok()?
        .ok()?;
    addrs
        .filter_map(|a| match a.ip() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .next()
}

impl<S> Service<Fresh> for PolicyStage<S>
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

    fn call(&mut self, f: Fresh) -> StageFuture {
        let decision = Decision::decrypted(&f.decrypted);
        let Some(target) = self.host_to_resolve(&f) else {
            return match decide(&self.settings, f, decision) {
                Ok(approved) => Box::pin(self.inner.call(approved)),
                Err(refused) => ready(refused),
            };
        };
        let (settings, inner) = (self.settings.clone(), self.inner.clone());
        Box::pin(async move {
            let mut f = f;
            let Some(ip) = resolve_v4(&target).await else {
                return Ok(Outcome::refused(
                    Stage::Policy,
                    format!(
                        "NAT target `{}` does not resolve to an IPv4 address",
                        target.host
                    ),
                    decision,
                ));
            };
            tracing::info!("NAT target `{}` resolved to {ip}", target.host);
            f.decrypted.decoded.message.nat_access = Some(format!("{ip},{}", target.port));
            match decide(&settings, f, decision) {
                Ok(approved) => inner.oneshot(approved).await,
                Err(refused) => Ok(refused),
            }
        })
    }
}
