//! Who a member is: the identity SWIM gossips about, and how a newer identity of the same address wins.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::ReplicaId;

/// Longest node id the membership wire accepts, in bytes (the config's own rule, 128, is stricter).
pub const MAX_NODE_ID_BYTES: usize = 255;

/// What a node says about itself when it builds its [`super::Membership`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalIdentity {
    /// The stable node name (`cluster_config.node_id`, or the hostname). 1..=255 bytes.
    pub node_id: String,
    /// Fresh at every process start (a restarted node is a new replica). Counter contributions are keyed by it.
    pub replica_id: ReplicaId,
    /// The gossip address peers reach this node at (`gossip.port` on the node's address).
    pub addr: SocketAddr,
}

impl LocalIdentity {
    /// A local identity.
    pub fn new(
        node_id: impl Into<String>,
        replica_id: ReplicaId,
        addr: SocketAddr,
    ) -> LocalIdentity {
        LocalIdentity {
            node_id: node_id.into(),
            replica_id,
            addr,
        }
    }
}

/// One incarnation of a cluster member, as SWIM knows it.
///
/// Two identities with the same address never coexist: when SWIM meets both, the one that
/// [wins](MemberId::supersedes) replaces the other (a restart: same address, later `started_ms`; a rejoin
/// after being declared down: same process, higher `renewal`). The replica id stays the same across renewals
/// of one process, so its counter contributions continue.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberId {
    pub(crate) node_id: Arc<str>,
    pub(crate) replica_id: ReplicaId,
    pub(crate) started_ms: u64,
    pub(crate) renewal: u32,
    pub(crate) addr: SocketAddr,
}

impl MemberId {
    /// An identity. `started_ms` is the process start (Unix ms); `renewal` counts the times this process
    /// rejoined after being declared down.
    pub fn new(
        node_id: &str,
        replica_id: ReplicaId,
        started_ms: u64,
        renewal: u32,
        addr: SocketAddr,
    ) -> MemberId {
        MemberId {
            node_id: Arc::from(node_id),
            replica_id,
            started_ms,
            renewal,
            addr,
        }
    }

    /// The placeholder a join targets: only its address is known. Never stored as a member.
    pub(crate) fn placeholder(addr: SocketAddr) -> MemberId {
        MemberId {
            node_id: Arc::from(""),
            replica_id: ReplicaId::new(0),
            started_ms: 0,
            renewal: 0,
            addr,
        }
    }

    /// The node id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The node id, shared.
    pub fn node_id_arc(&self) -> &Arc<str> {
        &self.node_id
    }

    /// The replica id (fresh per process start).
    pub fn replica_id(&self) -> ReplicaId {
        self.replica_id
    }

    /// The process start time (Unix ms) this identity was created with.
    pub fn started_ms(&self) -> u64 {
        self.started_ms
    }

    /// How many times this process rejoined after being declared down.
    pub fn renewal(&self) -> u32 {
        self.renewal
    }

    /// The gossip address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// True when `self` replaces `other` if both claim the same address or node id: the later process start
    /// wins, then the higher renewal, then the higher replica id, then the node id (a total order, so every
    /// node picks the same winner).
    pub fn supersedes(&self, other: &MemberId) -> bool {
        (
            self.started_ms,
            self.renewal,
            self.replica_id,
            &*self.node_id,
        ) > (
            other.started_ms,
            other.renewal,
            other.replica_id,
            &*other.node_id,
        )
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.node_id, self.replica_id)?;
        if self.renewal > 0 {
            write!(f, ".{}", self.renewal)?;
        }
        write!(f, "@{}", self.addr)
    }
}

impl foca::Identity for MemberId {
    type Addr = SocketAddr;

    /// Rejoin after being declared down: same process (node id, replica id, start), next renewal.
    fn renew(&self) -> Option<MemberId> {
        Some(MemberId {
            renewal: self.renewal.checked_add(1)?,
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &MemberId) -> bool {
        self.supersedes(adversary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    fn addr() -> SocketAddr {
        "127.0.0.1:10101".parse().expect("literal address")
    }

    #[test]
    fn later_start_wins_then_renewal() {
        let old = MemberId::new("a", ReplicaId::new(7), 1_000, 0, addr());
        let restarted = MemberId::new("a", ReplicaId::new(3), 2_000, 0, addr());
        assert!(restarted.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&restarted));
        let renewed = old.renew().expect("renewal below u32::MAX");
        assert_eq!(renewed.replica_id(), ReplicaId::new(7));
        assert!(renewed.win_addr_conflict(&old));
        assert!(restarted.win_addr_conflict(&renewed));
    }

    #[test]
    fn display_names_node_replica_and_address() {
        let id = MemberId::new("node-1", ReplicaId::new(0xab), 1, 2, addr());
        assert_eq!(id.to_string(), "node-1#00000000000000ab.2@127.0.0.1:10101");
    }
}
