//! [`ReplicaId`]: the id of one process start of a node (a replica).
//!
//! Guarantees: a replica id is drawn at random at every process start (a restarted node is a new replica) and
//! is announced in the authenticated `Hello` and in SWIM's identities. Across the membership plane, the node
//! runtime, the `Hello` exchange, the replication topology, the replicators' peer bindings and the simulator it
//! is a type of its own, so a link id, a nonce or a time (other `u64`s) cannot be passed where a replica is
//! meant.
//!
//! Two places keep the plain `u64`, and convert at their edge ([`ReplicaId::get`], [`ReplicaId::new`]):
//! - the counter plane ([`crate::counter`]) and the replicators' internals, where the number is an *origin*:
//!   the origins of the store include aggregate ids ([`crate::counter::AggregateId`]), which are not replicas;
//! - the wire ([`crate::wire`], the membership codec, the `Hello` frame): the encoded bytes are unchanged.
//!
//! [`ReplicaId`]'s `Display` is the form every log line, status page and CLI output used before the type
//! existed: 16 lower-case hex digits, zero-padded (`00000000000000ab`).

use std::fmt;

/// A replica id: one process start of a node, drawn at random at start. Ordered as the number inside (the
/// one-link-per-replica rule and SWIM's tie-break compare replica ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct ReplicaId(u64);

impl ReplicaId {
    /// The replica id `id` (as drawn at process start, or as read from the wire).
    #[inline]
    pub const fn new(id: u64) -> ReplicaId {
        ReplicaId(id)
    }

    /// The number inside: what the wire carries and what the counter plane names this replica's origin by.
    #[inline]
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ReplicaId {
    /// 16 lower-case hex digits, zero-padded: the form of the logs, the HTTP status and the CLI.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_sixteen_hex_digits() {
        assert_eq!(ReplicaId::new(0xab).to_string(), "00000000000000ab");
        assert_eq!(ReplicaId::new(u64::MAX).to_string(), "ffffffffffffffff");
        assert_eq!(
            format!("{:016x}", ReplicaId::new(42).get()),
            ReplicaId::new(42).to_string()
        );
    }

    #[test]
    fn orders_as_the_number() {
        assert!(ReplicaId::new(5) < ReplicaId::new(9));
        assert_eq!(ReplicaId::new(7).get(), 7);
    }
}
