//! The interface the node machine drives its replication planes through. The counter replicator and the
//! shared-state replicator implement it; the machine routes a frame to the plane its kind names
//! ([`crate::wire::Kind::plane`]) and drains every plane's transmits the same way.
//!
//! Membership is addressed by gossip address rather than by link (SWIM talks to identities, which outlive
//! links), so the machine adapts it itself: its packets go to the link routed to their address, or start a
//! dial.

use crate::ReplicaId;
use crate::replication::{PeerId, Replicator, Transmit};
use crate::state::StateReplicator;
use crate::wire::WireError;

/// A replication plane, sans-IO: it learns peers, takes frames and timeouts, and queues transmits.
pub(crate) trait Plane {
    /// Starts replicating to `peer`, whose authenticated replica id is `replica`.
    fn add_peer(&mut self, peer: PeerId, replica: ReplicaId, max_datagram: Option<usize>);
    /// Stops replicating to `peer`.
    fn remove_peer(&mut self, peer: PeerId);
    /// A frame `peer` sent.
    fn handle_frame(&mut self, peer: PeerId, bytes: &[u8], now_ms: u64) -> Result<(), WireError>;
    /// Runs what is due at `now_ms`.
    fn handle_timeout(&mut self, now_ms: u64);
    /// When the plane next needs [`Plane::handle_timeout`] (Unix ms).
    fn poll_timeout(&self) -> u64;
    /// The next frame to send.
    fn poll_transmit(&mut self) -> Option<Transmit>;
}

impl Plane for Replicator {
    fn add_peer(&mut self, peer: PeerId, replica: ReplicaId, max_datagram: Option<usize>) {
        Replicator::add_peer(self, peer, replica, max_datagram);
    }
    fn remove_peer(&mut self, peer: PeerId) {
        Replicator::remove_peer(self, peer);
    }
    fn handle_frame(&mut self, peer: PeerId, bytes: &[u8], now_ms: u64) -> Result<(), WireError> {
        Replicator::handle_frame(self, peer, bytes, now_ms)
    }
    fn handle_timeout(&mut self, now_ms: u64) {
        Replicator::handle_timeout(self, now_ms);
    }
    fn poll_timeout(&self) -> u64 {
        Replicator::poll_timeout(self)
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        Replicator::poll_transmit(self)
    }
}

impl Plane for StateReplicator {
    fn add_peer(&mut self, peer: PeerId, _replica: ReplicaId, _max_datagram: Option<usize>) {
        // The link's identity was bound at link-up (`bind_peer`), replicating or not.
        StateReplicator::add_peer(self, peer);
    }
    fn remove_peer(&mut self, peer: PeerId) {
        StateReplicator::remove_peer(self, peer);
    }
    fn handle_frame(&mut self, peer: PeerId, bytes: &[u8], now_ms: u64) -> Result<(), WireError> {
        StateReplicator::handle_frame(self, peer, bytes, now_ms)
    }
    fn handle_timeout(&mut self, now_ms: u64) {
        StateReplicator::handle_timeout(self, now_ms);
    }
    fn poll_timeout(&self) -> u64 {
        StateReplicator::poll_timeout(self)
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        StateReplicator::poll_transmit(self)
    }
}
