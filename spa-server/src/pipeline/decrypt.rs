//! Stage 2: decrypt with each candidate stanza's key; the first that yields a
//! valid message (digest verified, fields valid) wins. Rijndael candidates are
//! tried right here; GPG candidates, if any and if no Rijndael key fitted, go to
//! the GPG worker pool, and the stanza's signature policy picks the winner.
//! (Copies of packets already granted never get here: the screen refuses them.)

use super::{ready, Authenticated, Decision, Decrypted, Outcome, Stage, StageFuture};
use crate::gpg::{self, GpgPool, Rejected};
use crate::native::NativeKeys;
use spa_core::packet;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service, ServiceExt};

#[derive(Clone, Default)]
pub struct DecryptLayer {
    gpg: Option<Arc<GpgPool>>,
}

impl DecryptLayer {
    /// Decrypt GPG packets on `pool` (None: GPG packets are refused).
    pub fn with_gpg(pool: Option<Arc<GpgPool>>) -> Self {
        DecryptLayer { gpg: pool }
    }
}

impl<S> Layer<S> for DecryptLayer {
    type Service = Decrypt<S>;
    fn layer(&self, inner: S) -> Decrypt<S> {
        Decrypt {
            inner,
            gpg: self.gpg.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Decrypt<S> {
    inner: S,
    gpg: Option<Arc<GpgPool>>,
}

impl<S> Service<Authenticated> for Decrypt<S>
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

    fn call(&mut self, auth: Authenticated) -> StageFuture {
        if let Some(keys) = auth.screened.native.clone() {
            return match open_native(auth, &keys) {
                Ok(decrypted) => Box::pin(self.inner.call(decrypted)),
                Err(refused) => ready(refused),
            };
        }
        let Ok(wire) = std::str::from_utf8(&auth.packet.bytes) else {
            return ready(Outcome::refused(
                Stage::Decrypt,
                "not text",
                Decision::authenticated(&auth),
            ));
        };
        let mut last_error = String::from("no candidate stanza");
        let source = crate::config::access::canonical(auth.packet.peer.ip());
        for &(index, body_len) in &auth.screened.rijndael {
            let stanza = &auth.stanzas[index];
            let Some(key) = stanza.rijndael_key() else {
                continue;
            };
            match packet::decrypt(&wire[..body_len], key.bytes(), stanza.encryption_mode) {
                Ok(decoded) => {
                    return Box::pin(self.inner.call(Decrypted {
                        stanzas: auth.stanzas.clone(),
                        stanza: index,
                        decoded,
                        signer: None,
                        digest: auth.digest,
                        source_port: None,
                        packet: auth.packet,
                    }));
                }
                Err(e) => {
                    // fwknopd's line for a packet that does not decrypt (libfko's text).
                    super::alert(format_args!(
                        "[{source}] (stanza #{}) Error creating fko context: Decryption failed or decrypted data is invalid",
                        index + 1
                    ));
                    last_error = format!("{}: {e}", stanza.describe());
                }
            }
        }
        if auth.screened.gpg.is_empty() {
            return ready(Outcome::refused(
                Stage::Decrypt,
                last_error,
                Decision::authenticated(&auth),
            ));
        }
        let Some(pool) = self.gpg.clone() else {
            return ready(Outcome::refused(
                Stage::Decrypt,
                "GPG packet, but GPG is not enabled",
                Decision::authenticated(&auth),
            ));
        };
        let inner = self.inner.clone();
        Box::pin(async move {
            let wire = std::str::from_utf8(&auth.packet.bytes).unwrap_or_default();
            let peer = auth.packet.peer.ip();
            match gpg::decrypt_for_stanzas(
                &pool,
                &auth.stanzas,
                &auth.screened.gpg,
                wire,
                auth.mac_verified(),
            )
            .await
            {
                Ok(accepted) => {
                    match &accepted.signer {
                        Some(fpr) => tracing::info!(
                            "GPG packet from {peer} signed by {fpr}, accepted by {}",
                            auth.stanzas[accepted.stanza].describe()
                        ),
                        None => tracing::info!(
                            "GPG packet from {peer} accepted by {} (signatures not checked)",
                            auth.stanzas[accepted.stanza].describe()
                        ),
                    }
                    inner
                        .oneshot(Decrypted {
                            stanzas: auth.stanzas.clone(),
                            stanza: accepted.stanza,
                            decoded: accepted.decoded,
                            signer: accepted.signer,
                            digest: auth.digest,
                            source_port: None,
                            packet: auth.packet,
                        })
                        .await
                }
                Err(Rejected::Busy) => {
                    tracing::debug!("GPG packet from {peer} dropped: queue full");
                    Ok(Outcome::refused(
                        Stage::Overload,
                        "GPG queue full",
                        Decision::authenticated(&auth),
                    ))
                }
                Err(Rejected::Denied(why)) => {
                    super::alert(format_args!(
                        "[{}] (stanza #{}) Error creating fko context: {why}",
                        crate::config::access::canonical(peer),
                        auth.screened.gpg.first().map_or(0, |c| c.0 + 1)
                    ));
                    Ok(Outcome::refused(
                        Stage::Decrypt,
                        why,
                        Decision::authenticated(&auth),
                    ))
                }
            }
        })
    }
}

/// A native packet: open it (one Diffie-Hellman, and a decapsulation for the
/// hybrid), then the first native stanza that takes its client from this
/// source, and that stanza's own demands (suite, TOTP).
fn open_native(auth: Authenticated, keys: &NativeKeys) -> Result<Decrypted, Outcome> {
    let source = crate::config::access::canonical(auth.packet.peer.ip());
    let opened =
        spa_native::open(&auth.packet.bytes, &keys.server, &keys.registry).map_err(|e| {
            super::alert(format_args!("[{source}] native packet refused: {e}"));
            Outcome::refused(
                Stage::Decrypt,
                e.to_string(),
                Decision::authenticated(&auth),
            )
        })?;
    if opened.replay_key != auth.digest {
        // Cannot happen for a packet that opened (it is the same bytes); fail closed.
        return Err(Outcome::refused(
            Stage::Decrypt,
            "native packet: replay key differs from the screened one",
            Decision::authenticated(&auth),
        ));
    }
    let Some(stanza) = crate::native::stanza_for(&auth.stanzas, &opened.client, source) else {
        let why = format!(
            "no native stanza takes client `{}` from {source}",
            opened.client
        );
        super::alert(format_args!("[{source}] {why}"));
        return Err(Outcome::refused(
            Stage::Policy,
            why,
            Decision::authenticated(&auth),
        ));
    };
    let decrypted = Decrypted {
        stanzas: auth.stanzas.clone(),
        stanza,
        decoded: crate::native::as_message(&opened),
        signer: None,
        digest: auth.digest,
        source_port: opened.payload.source_port,
        packet: auth.packet,
    };
    let now = decrypted.packet.received_at;
    if let Some(why) = crate::native::stanza_refuses(&decrypted.stanzas[stanza], &opened, keys, now)
    {
        super::alert(format_args!("[{source}] (stanza #{}) {why}", stanza + 1));
        return Err(Outcome::refused(
            Stage::Policy,
            why,
            Decision::decrypted(&decrypted),
        ));
    }
    tracing::info!(
        "native packet from {source}: client `{}` ({:?}), {}",
        opened.client,
        opened.suite,
        decrypted.stanzas[stanza].describe()
    );
    Ok(decrypted)
}
