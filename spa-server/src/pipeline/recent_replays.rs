//! The wire bytes of the last few packets refused as replays, with their
//! replay digests. A flood of copies of one captured knock then costs a
//! compare instead of a second SHA-256 after the HMAC; the replay store is
//! still asked every time, so what it says (pruned, shared in Redis) holds.
//! The bytes compared are the sender's own: nothing secret is timed.

use crate::replay::{packet_digest, PacketDigest};
use std::collections::VecDeque;

/// Copies of this many distinct knocks in turn still hit.
const REMEMBERED: usize = 4;

#[derive(Debug, Default)]
pub(super) struct RecentReplays {
    newest_first: VecDeque<(Box<[u8]>, PacketDigest)>,
}

impl RecentReplays {
    /// The replay digest of `wire`: remembered, or computed.
    pub fn digest_of(&self, wire: &[u8]) -> PacketDigest {
        self.newest_first
            .iter()
            .find(|(seen, _)| **seen == *wire)
            .map_or_else(|| packet_digest(wire), |&(_, digest)| digest)
    }

    /// `wire` (of this `digest`) was refused as a replay.
    pub fn remember(&mut self, wire: &[u8], digest: PacketDigest) {
        if self.newest_first.iter().any(|(seen, _)| **seen == *wire) {
            return;
        }
        if self.newest_first.len() == REMEMBERED {
            self.newest_first.pop_back();
        }
        self.newest_first.push_front((wire.into(), digest));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_replay_has_its_digest_and_anything_else_is_hashed() {
        let mut recent = RecentReplays::default();
        let knocks: Vec<Vec<u8>> = (0..=REMEMBERED)
            .map(|i| vec![b'A' + i as u8; 180])
            .collect();
        for k in &knocks {
            assert_eq!(recent.digest_of(k), packet_digest(k));
        }
        // A remembered digest is what it says, never recomputed: a wrong one
        // shows. (Only the pipeline remembers, with the digest it computed.)
        recent.remember(&knocks[0], [7; 32]);
        assert_eq!(recent.digest_of(&knocks[0]), [7; 32]);
        // A packet one byte off, or a prefix, is not taken for it.
        let mut off = knocks[0].clone();
        off[179] = b'B';
        assert_eq!(recent.digest_of(&off), packet_digest(&off));
        assert_eq!(
            recent.digest_of(&knocks[0][..179]),
            packet_digest(&knocks[0][..179])
        );
        // The oldest is forgotten once more are remembered.
        for k in &knocks[1..] {
            recent.remember(k, packet_digest(k));
        }
        assert_eq!(recent.digest_of(&knocks[0]), packet_digest(&knocks[0]));
        assert_eq!(recent.newest_first.len(), REMEMBERED);
    }
}
