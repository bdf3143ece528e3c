//! The member table snapshot (published through `arc-swap`), member states and cluster health.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::identity::MemberId;
use crate::ReplicaId;

/// A member's SWIM state, as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberState {
    /// Answers probes (directly, indirectly, or has refuted suspicion).
    Alive,
    /// Some member failed to probe it; it is still treated as a member until declared down or it refutes.
    Suspect,
    /// Declared down by the cluster (suspicion expired). Its counter contributions keep counting until their
    /// windows expire.
    Down,
    /// Left the cluster on purpose (graceful leave).
    Left,
}

impl MemberState {
    /// Alive or suspect: still a member for SWIM (probed, gossiped to, replicated to).
    pub fn is_active(self) -> bool {
        matches!(self, MemberState::Alive | MemberState::Suspect)
    }

    /// Lower-case name ("alive", "suspect", "down", "left").
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
            MemberState::Left => "left",
        }
    }
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Cluster health as the reference reports it (`/cluster/status`, the "cluster health: …" log line).
///
/// Rule (see [`super`]): healthy when this node is itself in good standing (not left, not declared down,
/// and — if it was given join targets — joined) and a strict majority of the known non-left members, itself
/// included, are active (alive or suspect) and healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClusterHealth {
    /// `HEALTHY`.
    Healthy,
    /// `NOT HEALTHY`.
    NotHealthy,
}

impl fmt::Display for ClusterHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClusterHealth::Healthy => "HEALTHY",
            ClusterHealth::NotHealthy => "NOT HEALTHY",
        })
    }
}

/// This node's own standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LocalState {
    /// Not in a cluster: never joined, or every other member is down or left.
    Alone,
    /// Known by at least one live member.
    Joined,
    /// Declared down and unable to renew its identity (renewals exhausted); needs a restart.
    Defunct,
    /// Left on purpose.
    Left,
}

impl fmt::Display for LocalState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LocalState::Alone => "alone",
            LocalState::Joined => "joined",
            LocalState::Defunct => "defunct",
            LocalState::Left => "left",
        })
    }
}

/// One remote member in the snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberInfo {
    /// Its current identity (node id, replica id, address, start, renewal).
    pub id: MemberId,
    /// SWIM state.
    pub state: MemberState,
    /// Result of the health thresholds.
    pub healthy: bool,
    /// Why it is (un)healthy, in words.
    pub health_reason: Arc<str>,
    /// Its SWIM incarnation (bumped each time it refutes a suspicion).
    pub incarnation: u16,
    /// Last time (Unix ms, caller's clock) a membership packet from it arrived; `None` if only heard of.
    pub last_seen_ms: Option<u64>,
    /// Smoothed probe round trip (ms), from this node's direct ping/ack pairs; `None` before the first.
    pub rtt_ms: Option<u64>,
}

impl MemberInfo {
    /// The node id.
    pub fn node_id(&self) -> &str {
        self.id.node_id()
    }

    /// The replica id.
    pub fn replica_id(&self) -> ReplicaId {
        self.id.replica_id()
    }

    /// The gossip address.
    pub fn addr(&self) -> SocketAddr {
        self.id.addr()
    }
}

/// This node in the snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalInfo {
    /// Current identity (changes when the node renews it after being declared down).
    pub id: MemberId,
    /// Standing.
    pub state: LocalState,
    /// Lifeguard local health multiplier (0 = healthy; probe timing is stretched by `1 + lhm`).
    pub local_health: u32,
    /// `Some(holder)` while this process is a refused duplicate: a live member at another address (`holder`)
    /// already holds this node id and started earlier. A refused node is not a member anywhere (cluster
    /// health `NOT HEALTHY` here) until the holder leaves or is declared down; then it takes over.
    pub refused_by: Option<MemberId>,
}

/// A refused duplicate: a live process whose node id is already held by an older live member at another
/// address. It takes part in SWIM (it is probed and answers), but it is no member: not in
/// [`MemberTable::members`], not in the counts or cluster health, no health checks, no replication.
#[derive(Debug, Clone, PartialEq)]
pub struct RefusedInfo {
    /// The duplicate's identity (its address is where the second process runs).
    pub id: MemberId,
    /// The live member that holds the node id (this node itself when it is the holder).
    pub holder: MemberId,
    /// When this node refused it (Unix ms, caller's clock).
    pub since_ms: u64,
}

/// A consistent snapshot of the membership, cheap to read from any thread.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberTable {
    /// This node.
    pub local: LocalInfo,
    /// Every other known member (down and left ones until forgotten), sorted by node id then address.
    /// Refused duplicates are not in it (see [`MemberTable::refused`]).
    pub members: Vec<MemberInfo>,
    /// Live processes refused as duplicates of a member's node id, sorted by node id then address.
    pub refused: Vec<RefusedInfo>,
    /// Cluster health at publication.
    pub cluster_health: ClusterHealth,
    /// When it was published (Unix ms, caller's clock).
    pub published_ms: u64,
}

impl MemberTable {
    /// The member with this replica id.
    pub fn by_replica(&self, replica_id: ReplicaId) -> Option<&MemberInfo> {
        self.members.iter().find(|m| m.id.replica_id == replica_id)
    }

    /// True when `replica_id` is a refused duplicate (not a member: nothing is replicated to or from it).
    pub fn is_refused(&self, replica_id: ReplicaId) -> bool {
        self.refused.iter().any(|r| r.id.replica_id == replica_id)
    }

    /// The member at this address.
    pub fn by_addr(&self, addr: SocketAddr) -> Option<&MemberInfo> {
        self.members.iter().find(|m| m.id.addr == addr)
    }

    /// Members alive or suspect (replication targets).
    pub fn active(&self) -> impl Iterator<Item = &MemberInfo> {
        self.members.iter().filter(|m| m.state.is_active())
    }

    /// Number of members, this node included, that have not left (the reference's `members`).
    pub fn member_count(&self) -> usize {
        1 + self
            .members
            .iter()
            .filter(|m| m.state != MemberState::Left)
            .count()
    }

    /// Number of members, this node included, that are active and healthy (the reference's
    /// `healthy_members`). This node does not count while it is a refused duplicate.
    pub fn healthy_count(&self) -> usize {
        let local = usize::from(
            self.local.refused_by.is_none()
                && matches!(self.local.state, LocalState::Alone | LocalState::Joined),
        );
        local
            + self
                .members
                .iter()
                .filter(|m| m.state.is_active() && m.healthy)
                .count()
    }
}

/// A lock-free reader of the member table, for other threads (HTTP handlers, the node).
#[derive(Debug, Clone)]
pub struct MembershipReader {
    pub(crate) table: Arc<ArcSwap<MemberTable>>,
}

impl MembershipReader {
    /// The latest snapshot (one atomic load and a reference-count increment).
    pub fn load(&self) -> Arc<MemberTable> {
        self.table.load_full()
    }
}
