//! The node's links, by link id, by the peer's replica id and by address, and the rule that keeps one link
//! per peer replica when two nodes dial each other at once.
//!
//! Guarantees:
//! - At most one link per peer replica: of two, both ends keep the one with the lower
//!   `(replica id of the dialer, dialer's link nonce)`, a pair both ends know, so they agree without talking.
//! - An address routes to at most one link (the newest that claimed it); removing a link removes its routes.

use crate::fixed_hash::HashMap;
use std::net::SocketAddr;

use crate::node::hello::PeerHello;

use super::link_layer::LinkId;
use crate::ReplicaId;

/// A link that passed the hello exchange, as the machine keeps it.
#[derive(Debug, Clone)]
pub(crate) struct LinkEntry {
    /// What the peer said about itself (authenticated by the link's TLS).
    pub(crate) hello: PeerHello,
    /// The address of the other end, as the link sees it.
    pub(crate) remote: SocketAddr,
    /// This node dialed it.
    pub(crate) dialed_by_us: bool,
    /// The dialer's nonce of this link.
    pub(crate) link_nonce: u64,
    /// Addresses routed to this link: the peer's advertised gossip address and the address we dialed.
    pub(crate) addrs: Vec<SocketAddr>,
    /// Whether the replication planes send to it.
    pub(crate) replicating: bool,
    /// The largest datagram the link takes now (`None`: no datagrams).
    pub(crate) max_datagram: Option<usize>,
    /// When a frame last went either way on it (Unix ms; see `NodeMachine::close_idle_links`).
    pub(crate) last_used_ms: u64,
}

/// What [`LinkTable::insert`] did with a new link.
#[derive(Debug)]
pub(crate) enum Insert {
    /// The new link is the peer's only one.
    Kept,
    /// The new link replaced `old`, which the caller must close (and tell the planes it is gone).
    Replaced {
        old: LinkId,
        old_entry: Box<LinkEntry>,
    },
    /// The peer already has a link that wins: the new one must be closed; frames go on `existing`.
    Refused { existing: LinkId },
}

/// Every link of the node.
#[derive(Debug, Default)]
pub(crate) struct LinkTable {
    links: HashMap<LinkId, LinkEntry>,
    by_replica: HashMap<ReplicaId, LinkId>,
    by_addr: HashMap<SocketAddr, LinkId>,
}

impl LinkTable {
    /// `(replica id of the node that dialed `entry`, the dialer's link nonce)`: the same at both ends, so the
    /// lower one is the link both keep.
    fn rank(entry: &LinkEntry, own_replica: ReplicaId) -> (ReplicaId, u64) {
        let dialer = if entry.dialed_by_us {
            own_replica
        } else {
            entry.hello.replica_id
        };
        (dialer, entry.link_nonce)
    }

    /// Adds `entry` as link `id`, applying the one-link-per-replica rule.
    pub(crate) fn insert(
        &mut self,
        id: LinkId,
        entry: LinkEntry,
        own_replica: ReplicaId,
    ) -> Insert {
        let replica = entry.hello.replica_id;
        if let Some(&existing) = self.by_replica.get(&replica)
            && let Some(old) = self.links.get(&existing)
        {
            if Self::rank(&entry, own_replica) > Self::rank(old, own_replica) {
                return Insert::Refused { existing };
            }
            let old_entry = self.remove(existing);
            self.by_replica.insert(replica, id);
            self.links.insert(id, entry);
            // The same replica on a new link: every address that reached it still does. (An address this node
            // dialed the peer at may differ from the one the peer advertises, e.g. 127.0.0.1 against a LAN
            // address; losing its route sent membership's next packet to it on a new dial, which the rule above
            // refused again, and the join never finished.)
            if let Some(old) = &old_entry {
                for &addr in &old.addrs {
                    self.route(addr, id);
                }
            }
            return match old_entry {
                Some(old_entry) => Insert::Replaced {
                    old: existing,
                    old_entry: Box::new(old_entry),
                },
                None => Insert::Kept,
            };
        }
        self.by_replica.insert(replica, id);
        self.links.insert(id, entry);
        Insert::Kept
    }

    /// Routes `addr` to link `id` (a newer link to an address replaces an older one).
    pub(crate) fn route(&mut self, addr: SocketAddr, id: LinkId) {
        if let Some(entry) = self.links.get_mut(&id) {
            if !entry.addrs.contains(&addr) {
                entry.addrs.push(addr);
            }
            self.by_addr.insert(addr, id);
        }
    }

    /// Removes link `id` and its routes.
    pub(crate) fn remove(&mut self, id: LinkId) -> Option<LinkEntry> {
        let entry = self.links.remove(&id)?;
        if self.by_replica.get(&entry.hello.replica_id) == Some(&id) {
            self.by_replica.remove(&entry.hello.replica_id);
        }
        for addr in &entry.addrs {
            if self.by_addr.get(addr) == Some(&id) {
                self.by_addr.remove(addr);
            }
        }
        Some(entry)
    }

    pub(crate) fn get(&self, id: LinkId) -> Option<&LinkEntry> {
        self.links.get(&id)
    }

    pub(crate) fn get_mut(&mut self, id: LinkId) -> Option<&mut LinkEntry> {
        self.links.get_mut(&id)
    }

    /// The link routed to `addr`.
    pub(crate) fn by_addr(&self, addr: SocketAddr) -> Option<LinkId> {
        self.by_addr.get(&addr).copied()
    }

    /// The link of replica `replica`.
    pub(crate) fn by_replica(&self, replica: ReplicaId) -> Option<LinkId> {
        self.by_replica.get(&replica).copied()
    }

    pub(crate) fn len(&self) -> usize {
        self.links.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (LinkId, &LinkEntry)> + '_ {
        self.links.iter().map(|(&id, e)| (id, e))
    }

    pub(crate) fn ids(&self) -> Vec<LinkId> {
        self.links.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(replica: u64, dialed_by_us: bool, nonce: u64) -> LinkEntry {
        LinkEntry {
            hello: PeerHello {
                node_id: format!("n{replica}"),
                replica_id: ReplicaId::new(replica),
                capabilities: 0,
                gossip_addr: Some(SocketAddr::from(([127, 0, 0, 1], replica as u16))),
                link_nonce: nonce,
            },
            remote: SocketAddr::from(([127, 0, 0, 1], 1)),
            dialed_by_us,
            link_nonce: nonce,
            addrs: Vec::new(),
            replicating: true,
            max_datagram: Some(1200),
            last_used_ms: 0,
        }
    }

    #[test]
    fn both_ends_keep_the_same_of_two_crossed_links() {
        // Node 5 and node 9 dial each other at once: link 1 is 5's dial (nonce 70), link 2 is 9's (nonce 3).
        let (a, b) = (5u64, 9u64);
        for order in [[1u64, 2], [2, 1]] {
            let order = order.map(LinkId::new);
            let mut at_a = LinkTable::default();
            let mut at_b = LinkTable::default();
            for id in order {
                let dialed_by_a = id == LinkId::new(1);
                let nonce = if dialed_by_a { 70 } else { 3 };
                at_a.insert(id, entry(b, dialed_by_a, nonce), ReplicaId::new(a));
                at_b.insert(id, entry(a, !dialed_by_a, nonce), ReplicaId::new(b));
            }
            // The dialer with the lower replica id (5) wins whatever its nonce.
            assert_eq!(
                at_a.by_replica(ReplicaId::new(b)),
                Some(LinkId::new(1)),
                "order {order:?}"
            );
            assert_eq!(
                at_b.by_replica(ReplicaId::new(a)),
                Some(LinkId::new(1)),
                "order {order:?}"
            );
            assert_eq!((at_a.len(), at_b.len()), (1, 1));
        }
    }

    #[test]
    fn a_replaced_link_hands_its_addresses_to_the_link_that_replaces_it() {
        // Node 9 dialed node 5 at a loopback address while 5 advertises another; 5's own dial wins the
        // duplicate-link rule (the lower dialer replica id) and replaces 9's link: the address 9 dialed must
        // still reach 5.
        let (five, nine) = (5u64, 9u64);
        let dialed = SocketAddr::from(([127, 0, 0, 1], 20_001));
        let advertised = SocketAddr::from(([10, 79, 0, 1], 20_001));
        let mut t = LinkTable::default();
        t.insert(LinkId::new(1), entry(five, true, 70), ReplicaId::new(nine));
        t.route(dialed, LinkId::new(1));
        t.route(advertised, LinkId::new(1));
        assert!(matches!(
            t.insert(LinkId::new(2), entry(five, false, 3), ReplicaId::new(nine)),
            Insert::Replaced { old, .. } if old == LinkId::new(1)
        ));
        t.route(advertised, LinkId::new(2));
        assert_eq!(
            t.by_addr(dialed),
            Some(LinkId::new(2)),
            "the dialed address moved"
        );
        assert_eq!(t.by_addr(advertised), Some(LinkId::new(2)));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn routes_follow_the_link_that_holds_them() {
        let mut t = LinkTable::default();
        let addr = SocketAddr::from(([127, 0, 0, 1], 7));
        t.insert(LinkId::new(1), entry(7, true, 1), ReplicaId::new(100));
        t.route(addr, LinkId::new(1));
        assert_eq!(t.by_addr(addr), Some(LinkId::new(1)));
        // A newer identity of another replica takes the address.
        t.insert(LinkId::new(2), entry(8, true, 1), ReplicaId::new(100));
        t.route(addr, LinkId::new(2));
        t.remove(LinkId::new(1));
        assert_eq!(t.by_addr(addr), Some(LinkId::new(2)));
        t.remove(LinkId::new(2));
        assert_eq!(t.by_addr(addr), None);
        assert_eq!(t.by_replica(ReplicaId::new(8)), None);
    }
}
