//! What both replication planes share (sans-IO): the counter [`Replicator`](super::Replicator) and the
//! shared-state [`StateReplicator`](crate::state::StateReplicator) each hold a [`PeerSet`] of the peers they
//! replicate with, an [`Outbox`] of the frames they queue for the runtime, and an [`AntiEntropy`] schedule
//! that says when the next round is due and which peer it goes to. What a plane keeps per peer, what its rounds
//! send and which peers are eligible stay in the plane.
//!
//! Guarantees:
//! - A [`PeerSet`] holds at most one entry per [`PeerId`] and iterates in ascending id order, so the order a
//!   plane sends in depends only on its peers, never on the process (a simulated run replays from its seed).
//! - An [`Outbox`] hands out frames in the order they were queued, each exactly once. It is not bounded (neither
//!   plane bounded its queue): a plane queues only while it handles an input, and the node machine drains both
//!   outboxes after every input.
//! - [`AntiEntropy`] rounds are `interval_ms` apart (at least 1 ms), the first within one interval of the start,
//!   so nodes started together do not all send at once. Each round's peer is one of the eligible peers, chosen
//!   at random with exactly one draw of the seeded generator, and no draw when none is eligible: the sequence
//!   of picks depends only on the seed and the peer sets.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::rng::SplitMix64;

/// Identifies a peer, as the runtime numbers it (the node passes the number of the peer's link:
/// [`crate::node::link_layer::LinkId::get`]).
pub type PeerId = u64;

/// How a frame must travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// An unreliable datagram (deltas).
    Datagram,
    /// A reliable stream (digests, state transfer, frames too large for a datagram).
    Stream,
}

/// A frame to send.
#[derive(Debug, Clone)]
pub struct Transmit {
    /// To whom.
    pub peer: PeerId,
    /// How.
    pub channel: Channel,
    /// The encoded frame.
    pub frame: Bytes,
}

/// The peers a plane replicates with, each with the plane's own data `P`, in ascending [`PeerId`] order.
///
/// Two vectors sorted by id (ids apart from the data, so a lookup's binary search reads only the ids, a few
/// cache lines): a lookup per received frame is O(log n) over contiguous memory, iteration is a slice walk, and
/// an insert or removal (a link that comes or goes) shifts O(n) entries, which is rare next to the frames.
#[derive(Debug)]
pub(crate) struct PeerSet<P> {
    ids: Vec<PeerId>,
    data: Vec<P>,
}

impl<P> Default for PeerSet<P> {
    fn default() -> Self {
        PeerSet {
            ids: Vec::new(),
            data: Vec::new(),
        }
    }
}

impl<P> PeerSet<P> {
    fn find(&self, peer: PeerId) -> Result<usize, usize> {
        self.ids.binary_search(&peer)
    }

    /// Adds `peer` with `data`, replacing (and returning) the data it had if it was already in the set.
    pub(crate) fn insert(&mut self, peer: PeerId, data: P) -> Option<P> {
        match self.find(peer) {
            Ok(i) => Some(std::mem::replace(&mut self.data[i], data)),
            Err(i) => {
                self.ids.insert(i, peer);
                self.data.insert(i, data);
                None
            }
        }
    }

    /// Removes `peer`, returning its data if it was in the set.
    pub(crate) fn remove(&mut self, peer: PeerId) -> Option<P> {
        let i = self.find(peer).ok()?;
        self.ids.remove(i);
        Some(self.data.remove(i))
    }

    /// The data of `peer`, if it is in the set.
    pub(crate) fn get(&self, peer: PeerId) -> Option<&P> {
        self.find(peer).ok().map(|i| &self.data[i])
    }

    /// The data of `peer`, if it is in the set, to change.
    pub(crate) fn get_mut(&mut self, peer: PeerId) -> Option<&mut P> {
        self.find(peer).ok().map(|i| &mut self.data[i])
    }

    /// Whether the set has no peer.
    pub(crate) fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The peers' ids, ascending.
    pub(crate) fn ids(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.ids.iter().copied()
    }

    /// The peers with their data, ascending by id.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (PeerId, &P)> {
        self.ids.iter().copied().zip(self.data.iter())
    }

    /// The peers with their data, ascending by id, to change.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (PeerId, &mut P)> {
        self.ids.iter().copied().zip(self.data.iter_mut())
    }

    /// The peers' data, ascending by id.
    pub(crate) fn values(&self) -> impl Iterator<Item = &P> {
        self.data.iter()
    }

    /// The peers' data, ascending by id, to change.
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut P> {
        self.data.iter_mut()
    }
}

/// The frames a plane queued, in order, until the runtime takes them.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    frames: VecDeque<Transmit>,
}

impl Outbox {
    /// Queues `frame` for `peer` on `channel`, after every frame queued before it.
    pub(crate) fn push(&mut self, peer: PeerId, channel: Channel, frame: Bytes) {
        self.frames.push_back(Transmit {
            peer,
            channel,
            frame,
        });
    }

    /// The oldest frame not yet taken, if any.
    pub(crate) fn poll_transmit(&mut self) -> Option<Transmit> {
        self.frames.pop_front()
    }
}

/// When a plane's anti-entropy rounds are due and which peer each one goes to. The plane keeps the deadline in
/// its timer table ([`crate::timers::TimerTable`]) and asks this schedule for it.
#[derive(Debug, Clone)]
pub(crate) struct AntiEntropy {
    /// At least 1.
    interval_ms: u64,
    /// Draws the peers, one draw per round that has an eligible peer.
    rng: SplitMix64,
}

impl AntiEntropy {
    /// Rounds every `interval_ms` (0 counts as 1), their peers drawn from `rng`.
    pub(crate) fn new(interval_ms: u64, rng: SplitMix64) -> AntiEntropy {
        AntiEntropy {
            interval_ms: interval_ms.max(1),
            rng,
        }
    }

    /// When the first round is due, for a plane started at `now_ms`: 1 to `interval_ms` later, as the random
    /// `draw` says (each plane draws it from its seed in its own way, kept so a seed replays as it did).
    pub(crate) fn first_round_ms(&self, now_ms: u64, draw: u64) -> u64 {
        now_ms.saturating_add(1 + draw % self.interval_ms)
    }

    /// When the next round is due, after one ran at `now_ms`.
    pub(crate) fn next_round_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_add(self.interval_ms)
    }

    /// This round's peer: of the peers whose data `eligible` accepts, in id order, the one at one draw modulo
    /// their count (uniform but for the modulo's bias, below 2^-40 for fewer than 2^24 peers), or `None`,
    /// without a draw, when no peer is eligible.
    pub(crate) fn pick<P>(
        &mut self,
        peers: &PeerSet<P>,
        eligible: impl Fn(&P) -> bool,
    ) -> Option<PeerId> {
        let count = peers.values().filter(|&data| eligible(data)).count();
        if count == 0 {
            return None;
        }
        let index = (self.rng.next_u64() % count as u64) as usize;
        peers
            .iter()
            .filter(|&(_, data)| eligible(data))
            .nth(index)
            .map(|(peer, _)| peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(ids: &[PeerId]) -> PeerSet<bool> {
        let mut set = PeerSet::default();
        for &id in ids {
            // Even ids are eligible.
            set.insert(id, id % 2 == 0);
        }
        set
    }

    #[test]
    fn a_pick_draws_once_among_the_eligible_peers_in_id_order() {
        let set = peers(&[9, 4, 7, 2, 6]);
        let mut schedule = AntiEntropy::new(1_000, SplitMix64::new(7));
        let mut rng = SplitMix64::new(7);
        for _ in 0..20 {
            let eligible = [2, 4, 6];
            let expected = eligible[(rng.next_u64() % 3) as usize];
            assert_eq!(schedule.pick(&set, |&even| even), Some(expected));
        }
    }

    proptest::proptest! {
        /// Any sequence of inserts, removals and changes leaves the set equal to a `BTreeMap` given the same
        /// calls: the same answers, the same contents in the same (ascending) order.
        #[test]
        fn the_set_behaves_as_an_ordered_map(
            ops in proptest::collection::vec((0u8..3, 0u64..24, proptest::num::u32::ANY), 0..200)
        ) {
            let mut set = PeerSet::default();
            let mut model = std::collections::BTreeMap::new();
            for (op, peer, value) in ops {
                match op {
                    0 => proptest::prop_assert_eq!(set.insert(peer, value), model.insert(peer, value)),
                    1 => proptest::prop_assert_eq!(set.remove(peer), model.remove(&peer)),
                    _ => {
                        if let Some(v) = set.get_mut(peer) {
                            *v = v.wrapping_add(value);
                        }
                        if let Some(v) = model.get_mut(&peer) {
                            *v = v.wrapping_add(value);
                        }
                    }
                }
                proptest::prop_assert_eq!(set.get(peer), model.get(&peer));
                proptest::prop_assert_eq!(set.is_empty(), model.is_empty());
            }
            let listed: Vec<(PeerId, u32)> = set.iter().map(|(p, &v)| (p, v)).collect();
            let expected: Vec<(PeerId, u32)> = model.iter().map(|(&p, &v)| (p, v)).collect();
            proptest::prop_assert_eq!(listed, expected);
            proptest::prop_assert!(set.ids().eq(model.keys().copied()));
        }
    }

    #[test]
    fn no_eligible_peer_means_no_pick_and_no_draw() {
        let mut schedule = AntiEntropy::new(1_000, SplitMix64::new(7));
        assert_eq!(schedule.pick(&peers(&[]), |_| true), None);
        assert_eq!(schedule.pick(&peers(&[1, 3]), |&even| even), None);
        // The first draw is still unused: the same pick as a fresh schedule's.
        let mut fresh = AntiEntropy::new(1_000, SplitMix64::new(7));
        let set = peers(&[1, 2, 3, 4]);
        assert_eq!(schedule.pick(&set, |_| true), fresh.pick(&set, |_| true));
    }

    #[test]
    fn rounds_are_one_interval_apart_and_the_first_within_one_interval() {
        let schedule = AntiEntropy::new(100, SplitMix64::new(1));
        assert_eq!(schedule.first_round_ms(5_000, 0), 5_001);
        assert_eq!(schedule.first_round_ms(5_000, 99), 5_100);
        assert_eq!(schedule.first_round_ms(5_000, 100), 5_001);
        assert_eq!(schedule.next_round_ms(5_000), 5_100);
        assert_eq!(AntiEntropy::new(0, SplitMix64::new(1)).next_round_ms(5), 6);
    }

    #[test]
    fn the_outbox_hands_out_frames_in_queue_order() {
        let mut outbox = Outbox::default();
        outbox.push(2, Channel::Stream, Bytes::from_static(b"a"));
        outbox.push(1, Channel::Datagram, Bytes::from_static(b"b"));
        let first = outbox.poll_transmit().expect("a frame was queued");
        assert_eq!(
            (first.peer, first.channel, &first.frame[..]),
            (2, Channel::Stream, &b"a"[..])
        );
        let second = outbox.poll_transmit().expect("two frames were queued");
        assert_eq!((second.peer, &second.frame[..]), (1, &b"b"[..]));
        assert!(outbox.poll_transmit().is_none());
    }
}
