//! What the membership reports to its caller through [`super::Membership::poll_event`].

use std::net::SocketAddr;

use super::identity::MemberId;
use super::table::ClusterHealth;
use crate::ReplicaId;

/// One change, in the order it happened. Every identity that was reported up is later reported down, left,
/// replaced or refused as a duplicate (unless this node leaves first); one reported down may later be
/// re-reported left or replaced when that news arrives after the "down" (the table then shows it left). A
/// refused duplicate is reported up only if it takes over its node id (the holder left or went down).
#[derive(Debug, Clone, PartialEq)]
pub enum MembershipEvent {
    /// This node joined a cluster for the first time (the reference's "successfully joined X peers on
    /// startup"); `peers` counts the live members known at that moment.
    Joined {
        /// Live members known when the join completed.
        peers: usize,
    },
    /// This node was declared down and came back under a renewed identity (same replica id).
    Rejoined(MemberId),
    /// This node was declared down and cannot renew its identity: it must be restarted.
    Defunct,
    /// A member became active (alive or suspect) in this node's view.
    MemberUp(MemberId),
    /// A member was suspected by some prober (the reference's "node marked as suspect").
    MemberSuspect(MemberId),
    /// A suspect member refuted the suspicion and is alive again.
    MemberAlive(MemberId),
    /// A member was declared down (suspicion expired without refutation).
    MemberDown(MemberId),
    /// A member left on purpose.
    MemberLeft(MemberId),
    /// A newer identity took over an older one's address or node id (a restart, or a rejoin after being
    /// declared down). `old` is gone without being down or left; `new` is reported up separately when active.
    MemberReplaced {
        /// The identity that was superseded.
        old: MemberId,
        /// The identity that superseded it.
        new: MemberId,
    },
    /// A live process uses a node id already held by an older live member at another address: it is refused
    /// (not a member here: not counted, no health, nothing replicated to or from it) until the holder leaves
    /// or is declared down. Reported once per duplicate identity. If the duplicate was a member before (the
    /// holder came back under a renewed identity), treat this like its "down".
    DuplicateRefused {
        /// The refused process.
        duplicate: MemberId,
        /// The live member holding the node id (this node's own identity when this node is the holder).
        holder: MemberId,
    },
    /// This process is the duplicate: an older live member at another address holds its node id, so no node
    /// counts it as a member (cluster health `NOT HEALTHY` here) until that member leaves or is declared down.
    RefusedAsDuplicate {
        /// The live member holding this node id.
        holder: MemberId,
    },
    /// This process is no longer a refused duplicate: the holder of its node id left or was declared down,
    /// and this process is now the member.
    DuplicateCleared {
        /// The identity that held the node id.
        holder: MemberId,
    },
    /// A member's health flipped (thresholds reached, or it went down or left).
    HealthChanged {
        /// The member.
        member: MemberId,
        /// New health.
        healthy: bool,
        /// Why, in words (the last check's outcome).
        reason: String,
    },
    /// The cluster health flipped (the reference's "cluster health: HEALTHY" / "NOT HEALTHY").
    ClusterHealthChanged(ClusterHealth),
}

/// Names a member in [`super::Membership::record_data_plane`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberRef {
    /// By replica id (what replication keys peers by).
    Replica(ReplicaId),
    /// By gossip address.
    Addr(SocketAddr),
}

impl From<ReplicaId> for MemberRef {
    fn from(replica_id: ReplicaId) -> Self {
        MemberRef::Replica(replica_id)
    }
}

impl From<SocketAddr> for MemberRef {
    fn from(addr: SocketAddr) -> Self {
        MemberRef::Addr(addr)
    }
}

impl From<&MemberId> for MemberRef {
    fn from(id: &MemberId) -> Self {
        MemberRef::Addr(id.addr())
    }
}

impl std::fmt::Display for MemberRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemberRef::Replica(r) => write!(f, "replica {r}"),
            MemberRef::Addr(a) => write!(f, "address {a}"),
        }
    }
}
