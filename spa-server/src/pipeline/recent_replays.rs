//! The last few packets refused as replays: their wire bytes, what the
//! screen made of them and their replay digests. A flood of copies of one
//! captured knock then costs a compare and a lookup, not an HMAC and a
//! SHA-256 each.
//!
//! A copy is taken for one remembered only when the screen could not answer
//! otherwise: the same bytes, the same stanzas (the very snapshot, so a
//! reload forgets), and a sender the same stanzas list. The blacklist is
//! still checked first, and the replay store is still asked every time, so
//! what it says (pruned, shared in Redis) holds; an answer from here can only
//! refuse, never let a packet on. The bytes compared are the sender's own:
//! nothing secret is timed.

use super::screen::Screened;
use super::Stanzas;
use crate::config::AccessStanza;
use crate::replay::{packet_digest, PacketDigest};
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Weak};

/// Copies of this many distinct knocks in turn still hit.
const REMEMBERED: usize = 4;

/// A packet that passed the screen and then was refused as a replay.
#[derive(Debug)]
pub(super) struct Remembered {
    wire: Box<[u8]>,
    /// The snapshot it was screened against. Weak: a reload drops the old
    /// stanzas (and their keys) at once, and while this is held their
    /// address is not reused, so the identity test stays exact.
    stanzas: Weak<Vec<AccessStanza>>,
    /// Who sent it then.
    sender: IpAddr,
    pub screened: Screened,
    pub digest: PacketDigest,
}

#[derive(Debug, Default)]
pub(super) struct RecentReplays {
    newest_first: VecDeque<Remembered>,
}

impl RecentReplays {
    /// What the screen made of `wire` from `sender` under `stanzas`, if this
    /// very packet was refused as a replay before and the screen would say
    /// the same again.
    pub fn screened(&self, wire: &[u8], sender: IpAddr, stanzas: &Stanzas) -> Option<&Remembered> {
        let known = self.find(wire)?;
        let same_stanzas = std::ptr::eq(known.stanzas.as_ptr(), Arc::as_ptr(stanzas));
        // The screen looks at the sender only through the stanzas' SOURCE.
        let listed_alike = || {
            known.sender == sender
                || stanzas
                    .iter()
                    .all(|s| s.source.contains(known.sender) == s.source.contains(sender))
        };
        (same_stanzas && listed_alike()).then_some(known)
    }

    /// The replay digest of `wire`: remembered, or computed.
    pub fn digest_of(&self, wire: &[u8]) -> PacketDigest {
        self.find(wire)
            .map_or_else(|| packet_digest(wire), |known| known.digest)
    }

    /// `wire` from `sender` passed the screen under `stanzas` as `screened`
    /// and was refused as a replay (of this `digest`).
    pub fn remember(
        &mut self,
        wire: &[u8],
        sender: IpAddr,
        stanzas: &Stanzas,
        screened: &Screened,
        digest: PacketDigest,
    ) {
        if let Some(at) = self.newest_first.iter().position(|k| *k.wire == *wire) {
            self.newest_first.remove(at);
        } else if self.newest_first.len() == REMEMBERED {
            self.newest_first.pop_back();
        }
        self.newest_first.push_front(Remembered {
            wire: wire.into(),
            stanzas: Arc::downgrade(stanzas),
            sender,
            screened: screened.clone(),
            digest,
        });
    }

    fn find(&self, wire: &[u8]) -> Option<&Remembered> {
        self.newest_first.iter().find(|k| *k.wire == *wire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AddrList;

    fn stanzas(sources: &[&str]) -> Stanzas {
        Arc::new(
            sources
                .iter()
                .map(|s| AccessStanza::new(AddrList::parse(s).unwrap()))
                .collect(),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_remembered_replay_has_its_digest_and_anything_else_is_hashed() {
        let mut recent = RecentReplays::default();
        let all = stanzas(&["ANY"]);
        let knocks: Vec<Vec<u8>> = (0..=REMEMBERED)
            .map(|i| vec![b'A' + i as u8; 180])
            .collect();
        for k in &knocks {
            assert_eq!(recent.digest_of(k), packet_digest(k));
        }
        // A remembered digest is what it says, never recomputed: a wrong one
        // shows. (Only the pipeline remembers, with the digest it computed.)
        let screened = Screened::default();
        let from = ip("192.0.2.1");
        recent.remember(&knocks[0], from, &all, &screened, [7; 32]);
        assert_eq!(recent.digest_of(&knocks[0]), [7; 32]);
        // A packet one byte off, or a prefix, is not taken for it.
        let mut off = knocks[0].clone();
        off[179] = b'B';
        assert_eq!(recent.digest_of(&off), packet_digest(&off));
        assert!(recent.screened(&off, from, &all).is_none());
        assert_eq!(
            recent.digest_of(&knocks[0][..179]),
            packet_digest(&knocks[0][..179])
        );
        // Remembered again: once, the newest.
        recent.remember(&knocks[0], from, &all, &screened, [7; 32]);
        assert_eq!(recent.newest_first.len(), 1);
        // The oldest is forgotten once more are remembered.
        for k in &knocks[1..] {
            recent.remember(k, from, &all, &screened, packet_digest(k));
        }
        assert_eq!(recent.digest_of(&knocks[0]), packet_digest(&knocks[0]));
        assert!(recent.screened(&knocks[0], from, &all).is_none());
        assert_eq!(recent.newest_first.len(), REMEMBERED);
    }

    #[test]
    fn the_screen_is_taken_as_remembered_only_for_the_same_stanzas_and_a_sender_listed_alike() {
        let mut recent = RecentReplays::default();
        let split = stanzas(&["192.0.2.0/24", "198.51.100.0/24", "ANY"]);
        let knock = vec![b'K'; 180];
        let from = ip("192.0.2.1");
        recent.remember(&knock, from, &split, &Screened::default(), [1; 32]);
        let hit = |sender: &str, stanzas: &Stanzas| {
            recent.screened(&knock, ip(sender), stanzas).is_some()
        };
        assert!(hit("192.0.2.1", &split));
        // Another sender in the same stanzas, and only those.
        assert!(hit("192.0.2.200", &split));
        assert!(!hit("198.51.100.1", &split));
        assert!(!hit("203.0.113.9", &split));
        // A reload: equal stanzas, but not the snapshot it was screened under;
        // the old one (keys and all) is gone once the keyring drops it.
        let reloaded = stanzas(&["192.0.2.0/24", "198.51.100.0/24", "ANY"]);
        assert!(!hit("192.0.2.1", &reloaded));
        let old = Arc::downgrade(&split);
        drop(split);
        assert!(old.upgrade().is_none());
        // The digest is still the packet's own.
        assert_eq!(recent.digest_of(&knock), [1; 32]);
    }
}
