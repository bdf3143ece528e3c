//! [`LinkId`]: the id of one link between this node and a peer.
//!
//! Guarantees: an id is chosen by the link layer (quinn's connection id, or the simulator's counter) and is
//! unique per endpoint while the link lives. Between the link layer and the node machine it is a type of its
//! own, so a replica id, a nonce or a time (other `u64`s) cannot be passed where a link is meant; the planes
//! below the machine number their peers with [`crate::replication::PeerId`], and the machine converts at that
//! one boundary ([`LinkId::get`], [`LinkId::new`]).

use std::fmt;

/// A link's id, chosen by the link layer, unique per endpoint while the link lives. The planes name the peer of
/// a link by [`LinkId::get`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkId(u64);

impl LinkId {
    /// The link id `id` (as the link layer numbers its links).
    pub const fn new(id: u64) -> LinkId {
        LinkId(id)
    }

    /// The number inside.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for LinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
