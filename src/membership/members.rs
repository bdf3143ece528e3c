//! The member map: every remote identity this node tracks, by address, with its replica-id and node-id
//! indexes.
//!
//! Guarantees: at most one identity per address; [`Members::insert`] and [`Members::remove`] keep both
//! indexes exact (a replica id maps to the address of its latest identity; `(node id, address)` pairs list
//! every address a node id is tracked at).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use foca::Incarnation;

use super::Membership;
use super::codec::ReceivedHeader;
use super::health::HealthTracker;
use super::identity::MemberId;
use super::publication::Change;
use super::table::MemberState;
use crate::ReplicaId;

/// Smoothing of the round-trip estimate (like TCP's SRTT: new = old + (sample − old) / 8).
const RTT_GAIN: f64 = 0.125;

/// One remote member, as this node tracks it.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) id: MemberId,
    pub(crate) state: MemberState,
    pub(crate) incarnation: Incarnation,
    pub(crate) health: HealthTracker,
    pub(crate) last_seen_ms: Option<u64>,
    pub(crate) rtt_ms: Option<f64>,
    /// When its data-plane silence next counts as a failed check (mirrored in the deadline queue).
    pub(crate) health_deadline: Option<u64>,
    /// The reconciliation pass that last saw it in foca's member list.
    pub(crate) scan: u64,
}

/// Remote members by address, indexed by replica id and node id.
#[derive(Debug, Default)]
pub(crate) struct Members {
    by_addr: BTreeMap<SocketAddr, Entry>,
    by_replica: BTreeMap<ReplicaId, SocketAddr>,
    by_node: BTreeSet<(Arc<str>, SocketAddr)>,
}

impl Members {
    pub(crate) fn get(&self, addr: &SocketAddr) -> Option<&Entry> {
        self.by_addr.get(addr)
    }

    pub(crate) fn get_mut(&mut self, addr: &SocketAddr) -> Option<&mut Entry> {
        self.by_addr.get_mut(addr)
    }

    /// The address of the member with this replica id.
    pub(crate) fn addr_of_replica(&self, replica_id: ReplicaId) -> Option<SocketAddr> {
        self.by_replica.get(&replica_id).copied()
    }

    /// Members in address order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &Entry> {
        self.by_addr.values()
    }

    pub(crate) fn len(&self) -> usize {
        self.by_addr.len()
    }

    /// Addresses of members the pass `scan` did not see.
    pub(crate) fn unseen_by(&self, scan: u64) -> Vec<SocketAddr> {
        self.by_addr
            .iter()
            .filter(|(_, e)| e.scan != scan)
            .map(|(a, _)| *a)
            .collect()
    }

    /// Addresses other than `except` at which `node_id` is tracked, in address order.
    pub(crate) fn addrs_of_node<'a>(
        &'a self,
        node_id: &'a Arc<str>,
        except: SocketAddr,
    ) -> impl Iterator<Item = SocketAddr> + 'a {
        let lo = (
            Arc::clone(node_id),
            SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
        );
        self.by_node
            .range(lo..)
            .take_while(move |(node, _)| node == node_id)
            .map(|(_, addr)| *addr)
            .filter(move |addr| *addr != except)
    }

    /// Tracks `entry` at its address (the caller removed any previous identity there).
    pub(crate) fn insert(&mut self, entry: Entry) {
        let addr = entry.id.addr;
        self.by_replica.insert(entry.id.replica_id, addr);
        self.by_node.insert((Arc::clone(&entry.id.node_id), addr));
        self.by_addr.insert(addr, entry);
    }

    /// Stops tracking the identity at `addr`.
    pub(crate) fn remove(&mut self, addr: SocketAddr) -> Option<Entry> {
        let e = self.by_addr.remove(&addr)?;
        if self.by_replica.get(&e.id.replica_id) == Some(&addr) {
            self.by_replica.remove(&e.id.replica_id);
        }
        self.by_node.remove(&(Arc::clone(&e.id.node_id), addr));
        Some(e)
    }
}

impl Membership {
    /// Records who was heard from (`last_seen_ms`) and the round-trip sample of an answered probe.
    pub(super) fn note_contact(
        &mut self,
        received: &[ReceivedHeader],
        rtt_sample: Option<(MemberId, f64)>,
        now_ms: u64,
    ) {
        for h in received {
            if let Some(e) = self.members.get_mut(&h.src.addr)
                && e.id == h.src
            {
                e.last_seen_ms = Some(now_ms);
                self.publication.mark(Change::Soft);
            }
        }
        if let Some((target, sample)) = rtt_sample
            && let Some(e) = self.members.get_mut(&target.addr)
            && e.id == target
        {
            e.rtt_ms = Some(match e.rtt_ms {
                Some(old) => old + (sample - old) * RTT_GAIN,
                None => sample,
            });
            self.publication.mark(Change::Soft);
        }
    }
}
