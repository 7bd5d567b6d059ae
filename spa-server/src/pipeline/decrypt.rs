//! Stage 2: decrypt with each candidate stanza's key; the first that yields a
//! valid message (digest verified, fields valid) wins.

use super::{ready, Authenticated, Decrypted, Outcome, Stage, StageFuture};
use spa_core::packet;
use std::convert::Infallible;
use std::task::{Context, Poll};
use tower::{Layer, Service};

#[derive(Clone, Copy, Default)]
pub struct DecryptLayer;

impl<S> Layer<S> for DecryptLayer {
    type Service = Decrypt<S>;
    fn layer(&self, inner: S) -> Decrypt<S> {
        Decrypt { inner }
    }
}

#[derive(Clone)]
pub struct Decrypt<S> {
    inner: S,
}

impl<S> Service<Authenticated> for Decrypt<S>
where
    S: Service<Decrypted, Response = Outcome, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = Infallible;
    type Future = StageFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, auth: Authenticated) -> StageFuture {
        let Ok(wire) = std::str::from_utf8(&auth.packet.bytes) else {
            return ready(Outcome::denied(Stage::Decrypt, "not text"));
        };
        let mut last_error = String::from("no candidate stanza");
        for &(index, body_len) in &auth.candidates {
            let stanza = &auth.stanzas[index];
            let Some(key) = stanza.rijndael_key() else {
                continue;
            };
            match packet::decrypt(&wire[..body_len], key.bytes(), stanza.encryption_mode) {
                Ok(decoded) => {
                    return Box::pin(self.inner.call(Decrypted {
                        packet: auth.packet,
                        stanzas: auth.stanzas.clone(),
                        stanza: index,
                        decoded,
                    }));
                }
                Err(e) => last_error = format!("{}: {e}", stanza.describe()),
            }
        }
        ready(Outcome::denied(Stage::Decrypt, last_error))
    }
}
