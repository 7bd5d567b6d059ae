//! The screen, run by each capture on the bytes still in its buffer: senders on
//! the BLACKLIST first, then the packet's shape and length, its charset, then the
//! constant-time HMAC against each stanza whose SOURCE matches the sender.
//! Nothing is decrypted here and garbage is never copied. GPG-shaped packets
//! (fwknopd's length rule) are also screened for the stanzas that take GPG, with
//! the HMAC over the `hQ`-prefixed data.

use super::{Outcome, Stage, Stanzas};
use crate::config::access::StanzaProtocol;
use crate::config::AccessStanza;
use crate::native::{NativeKeys, OpenBudget};
use arc_swap::ArcSwap;
use ipnet::IpNet;
use spa_core::gpg;
use spa_core::packet::{self, GPG_PREFIX, RIJNDAEL_PREFIX};
use std::net::IpAddr;
use std::sync::Arc;

/// The access stanzas with their keys, and the BLACKLIST; SIGHUP swaps in new
/// ones atomically.
pub struct Keyring {
    stanzas: ArcSwap<Vec<AccessStanza>>,
    blacklist: ArcSwap<Vec<IpNet>>,
    /// The native protocol's server key and clients (with a native stanza).
    native: arc_swap::ArcSwapOption<NativeKeys>,
    native_budget: OpenBudget,
    /// Told at each [`Keyring::replace`]: a capture refits its kernel filter
    /// then, instead of looking on a timer.
    swapped: tokio::sync::watch::Sender<()>,
}

impl Keyring {
    pub fn new(stanzas: Vec<AccessStanza>) -> Self {
        Keyring {
            stanzas: ArcSwap::from_pointee(stanzas),
            blacklist: ArcSwap::from_pointee(Vec::new()),
            native: Default::default(),
            native_budget: OpenBudget::default(),
            swapped: tokio::sync::watch::Sender::new(()),
        }
    }

    /// Changes each time a reload swaps in new stanzas.
    pub fn swaps(&self) -> tokio::sync::watch::Receiver<()> {
        self.swapped.subscribe()
    }

    /// The native server key and clients (a reload swaps them whole).
    pub fn set_native(&self, keys: Option<NativeKeys>) {
        self.native.store(keys.map(Arc::new));
    }

    /// Senders whose packets are refused before anything else is looked at.
    pub fn set_blacklist(&self, blacklist: Vec<IpNet>) {
        self.blacklist.store(Arc::new(blacklist));
    }

    pub fn snapshot(&self) -> Stanzas {
        self.stanzas.load_full()
    }

    /// Install reloaded stanzas; packets already past the filter finish with the old ones.
    pub fn replace(&self, stanzas: Vec<AccessStanza>) {
        self.stanzas.store(Arc::new(stanzas));
        self.swapped.send_replace(());
    }

    /// A sender on the BLACKLIST is refused before anything else is looked at.
    pub fn refuse_blacklisted(&self, peer: IpAddr) -> Result<(), Outcome> {
        let sender = crate::config::access::canonical(peer);
        match self.blacklist.load().iter().find(|n| n.contains(&sender)) {
            Some(net) => Err(Outcome::denied(
                Stage::Blacklist,
                format!("source {sender} is in BLACKLIST ({net})"),
            )),
            None => Ok(()),
        }
    }

    /// Blacklist, length checks, charset, HMAC: the stanzas worth decrypting for. Works on
    /// a borrowed payload, so a capture refuses garbage before it copies anything.
    pub fn screen(
        &self,
        bytes: &[u8],
        peer: IpAddr,
        stanzas: &[AccessStanza],
    ) -> Result<Screened, Outcome> {
        self.refuse_blacklisted(peer)?;
        if spa_native::looks_native(bytes) {
            return self.screen_native(bytes, peer, stanzas);
        }
        packet::precheck_shape(bytes).map_err(|e| Outcome::denied(Stage::Precheck, e))?;
        if !stanzas.iter().any(|s| length_fits(s, peer, bytes.len())) {
            // Decided on the length alone, before reading the bytes or hashing.
            return Err(Outcome::denied(
                Stage::Precheck,
                format!(
                    "no access stanza for source {} takes a {}-byte packet",
                    peer,
                    bytes.len()
                ),
            ));
        }
        packet::check_charset(bytes).map_err(|e| Outcome::denied(Stage::Precheck, e))?;
        let wire = bytes;
        if gpg::carries_prefix(wire) {
            return Err(Outcome::denied(
                Stage::Precheck,
                "packet still carries the constant GPG prefix `hQ`",
            ));
        }
        let gpg_shaped = gpg::is_gpg_wire(wire);
        let mut candidates = Screened::default();
        let mut last_error = None;
        // The last stanza listing this sender whose HMAC failed (from 1), for the alert.
        let mut failed_stanza = None;
        for (i, s) in stanzas.iter().enumerate() {
            if !s.source.contains(peer) {
                continue;
            }
            let hmac = s.hmac_keyed();
            // Ciphertext length for this stanza, or why its HMAC failed.
            let body = |prefix: &str| match &hmac {
                None => Ok(wire.len()),
                Some(Ok(keyed)) => packet::verify_keyed_hmac(wire, keyed, prefix).map(<[u8]>::len),
                Some(Err(e)) => Err(e.clone()),
            };
            if s.rijndael_key().is_some() {
                if !s.takes_rijndael_len(wire.len()) {
                    // Not even the length of a Rijndael packet: no HMAC to compute.
                    last_error = Some(spa_core::SpaError::CipherLayout);
                } else {
                    match body(RIJNDAEL_PREFIX) {
                        Ok(len) => {
                            candidates.mac_verified |= hmac.is_some();
                            candidates.rijndael.push((i, len));
                        }
                        Err(e) => {
                            failed_stanza = Some(i + 1);
                            last_error = Some(e);
                        }
                    }
                }
            }
            if gpg_shaped && s.uses_gpg() {
                match body(GPG_PREFIX) {
                    Ok(len) => {
                        candidates.mac_verified |= hmac.is_some();
                        candidates.gpg.push((i, len));
                    }
                    Err(e) => {
                        failed_stanza = Some(i + 1);
                        last_error = Some(e);
                    }
                }
            }
        }
        if candidates.rijndael.is_empty() && candidates.gpg.is_empty() {
            if let Some(n) = failed_stanza {
                let sender = crate::config::access::canonical(peer);
                // libfko's text for a failed HMAC, as fwknopd logs it.
                super::alert(format_args!(
                    "[{sender}] (stanza #{n}) Error creating fko context: Args contain invalid data: FKO_ERROR_INVALID_DATA_HMAC_COMPAREFAIL"
                ));
            }
            return Err(match last_error {
                Some(e) => Outcome::denied(Stage::Hmac, e),
                None => Outcome::denied(
                    Stage::Hmac,
                    format_args!("no access stanza for source {peer}"),
                ),
            });
        }
        Ok(candidates)
    }
}

impl Keyring {
    /// A native packet (docs/protocol.md): a native stanza for the sender,
    /// mac1 under this server's key (no public-key work yet), and the
    /// sender's budget for public-key work.
    fn screen_native(
        &self,
        bytes: &[u8],
        peer: IpAddr,
        stanzas: &[AccessStanza],
    ) -> Result<Screened, Outcome> {
        let native_stanza =
            |s: &AccessStanza| s.protocol == StanzaProtocol::Native && s.source.contains(peer);
        let Some(keys) = self.native.load_full() else {
            return Err(Outcome::denied(
                Stage::Precheck,
                "native packet, but no PROTOCOL native stanza",
            ));
        };
        if !stanzas.iter().any(native_stanza) {
            return Err(Outcome::denied(
                Stage::Precheck,
                format!("no native stanza for source {peer}"),
            ));
        }
        if !spa_native::mac1_matches(bytes, keys.server.public()) {
            return Err(Outcome::denied(
                Stage::Hmac,
                "native packet: mac1 does not match",
            ));
        }
        if !self
            .native_budget
            .take(crate::config::access::canonical(peer))
        {
            return Err(Outcome::denied(
                Stage::Hmac,
                "native packets from this source beyond its budget for public-key work",
            ));
        }
        Ok(Screened {
            native: Some(keys),
            ..Screened::default()
        })
    }
}

/// Could a packet of `len` bytes from this sender be for stanza `s`: a Rijndael
/// ciphertext (plus the stanza's HMAC) of a possible length, or a GPG packet?
fn length_fits(s: &AccessStanza, peer: IpAddr, len: usize) -> bool {
    if !s.source.contains(peer) {
        return false;
    }
    s.takes_rijndael_len(len) || (s.uses_gpg() && len >= packet::MIN_GPG_WIRE_LEN)
}

/// (stanza index, ciphertext length) pairs, inline for the usual one or two
/// stanzas: screening a packet (a replay, say) allocates nothing for them.
pub(super) type Candidates = smallvec::SmallVec<[(usize, usize); 2]>;

/// What passed the screen: the stanzas the packet may decrypt under, as
/// (stanza index, length of the ciphertext part of the packet). Only
/// [`Keyring::screen`] makes one.
#[derive(Clone, Default)]
pub struct Screened {
    pub(super) rijndael: Candidates,
    pub(super) gpg: Candidates,
    /// A stanza's HMAC verified: the sender holds a key. Packets for stanzas
    /// without HMAC are only plausible, and may be shed when posternd is full;
    /// so are native packets past mac1 (its key is the server's public key).
    pub(super) mac_verified: bool,
    /// A native packet past mac1, with the keys to open it.
    pub(super) native: Option<Arc<NativeKeys>>,
}

impl PartialEq for Screened {
    fn eq(&self, other: &Screened) -> bool {
        (
            &self.rijndael,
            &self.gpg,
            self.mac_verified,
            self.native.is_some(),
        ) == (
            &other.rijndael,
            &other.gpg,
            other.mac_verified,
            other.native.is_some(),
        )
    }
}

impl std::fmt::Debug for Screened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Screened")
            .field("rijndael", &self.rijndael)
            .field("gpg", &self.gpg)
            .field("mac_verified", &self.mac_verified)
            .field("native", &self.native.is_some())
            .finish()
    }
}

impl Screened {
    /// The candidate stanzas' numbers (from 1), for the audit log.
    pub fn stanza_numbers(&self) -> super::decision::StanzaNumbers {
        let mut numbers: super::decision::StanzaNumbers = self
            .rijndael
            .iter()
            .chain(&self.gpg)
            .map(|&(i, _)| i + 1)
            .collect();
        numbers.sort_unstable();
        numbers.dedup();
        numbers
    }

    pub fn mac_verified(&self) -> bool {
        self.mac_verified
    }

    /// (stanza index, ciphertext length) of the stanzas to try AES with.
    pub fn rijndael(&self) -> &[(usize, usize)] {
        &self.rijndael
    }

    /// The same for the stanzas that take GPG packets.
    pub fn gpg(&self) -> &[(usize, usize)] {
        &self.gpg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AddrList;

    #[test]
    fn blacklisted_senders_are_refused_before_anything_else() {
        let mut s = AccessStanza::new(AddrList::Any);
        s.key = Some(spa_core::Secret::from_passphrase("k"));
        let keyring = Keyring::new(vec![s]);
        keyring.set_blacklist(vec!["192.0.2.0/24".parse().unwrap()]);
        let stanzas = keyring.snapshot();
        let stage = |peer: &str| match keyring.screen(b"x", peer.parse().unwrap(), &stanzas) {
            Err(Outcome::Denied { stage, .. }) => stage,
            other => panic!("{other:?}"),
        };
        assert_eq!(stage("192.0.2.7"), Stage::Blacklist);
        // As seen on a dual-stack socket.
        assert_eq!(stage("::ffff:192.0.2.7"), Stage::Blacklist);
        assert_eq!(stage("198.51.100.7"), Stage::Precheck);
        keyring.set_blacklist(Vec::new());
        assert_eq!(stage("192.0.2.7"), Stage::Precheck);
    }
}
