//! One live process per node id: refused duplicates, and older identities superseded by a restart.
//!
//! Guarantees: the holder of a node id is, among its live identities (alive or suspect in SWIM, and this
//! node itself), the one that started first ([`node_id_holders`]); every node applies the rule to the same
//! SWIM states, so all agree once SWIM has converged. A later live identity at another address is a refused
//! duplicate: reported once ([`MembershipEvent::DuplicateRefused`]), no member, no health checks, not
//! counted, until it becomes the holder. This node itself may be the duplicate
//! ([`MembershipEvent::RefusedAsDuplicate`] on refusal or a new holder process, [`MembershipEvent::DuplicateCleared`]
//! when it takes over). An identity that is down while a newer one of its node id holds it was replaced: it
//! is shown left, not down.

use std::collections::BTreeMap;

use crate::fixed_hash::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use foca::Incarnation;

use super::Membership;
use super::event::MembershipEvent;
use super::identity::MemberId;
use super::publication::Change;
use super::table::MemberState;

/// Refusals and supersessions this node knows of.
#[derive(Debug, Default)]
pub(crate) struct Duplicates {
    /// Refused duplicates: identity → (the holder of its node id when refused, since when).
    pub(crate) refused: BTreeMap<MemberId, (MemberId, u64)>,
    /// The holder of this node's own node id while this node is a refused duplicate.
    pub(crate) local_refused: Option<MemberId>,
    /// Identities replaced by a newer one of the same node: old → (new, since when).
    pub(crate) superseded: BTreeMap<MemberId, (MemberId, u64)>,
}

impl Duplicates {
    /// True when `id` is a refused duplicate (no member).
    pub(crate) fn is_refused(&self, id: &MemberId) -> bool {
        self.refused.contains_key(id)
    }
}

/// Which identity holds each node id: among `local` and the active identities of `snapshot`, the one that
/// started first. (The same address is foca's address conflict: the later start wins it at once, a restart.)
///
/// Only node ids that more than one identity of `snapshot` (any state) or `local` carries are in the map: the
/// one identity of any other node id holds it, and every caller reads a missing entry that way. Usually no node
/// id is shared, so a reconciliation costs one pass with a hash set instead of a sorted map of every node id.
pub(crate) fn node_id_holders(
    local: &MemberId,
    snapshot: &[(MemberId, Incarnation, MemberState)],
) -> BTreeMap<Arc<str>, MemberId> {
    let mut holders: BTreeMap<Arc<str>, MemberId> = BTreeMap::new();
    let all = std::iter::once(local).chain(snapshot.iter().map(|(id, _, _)| id));
    let mut once: HashSet<&str> =
        HashSet::with_capacity_and_hasher(snapshot.len() + 1, Default::default());
    let shared: HashSet<&str> = all
        .filter(|id| !once.insert(id.node_id()))
        .map(MemberId::node_id)
        .collect();
    if shared.is_empty() {
        return holders;
    }
    let live = snapshot
        .iter()
        .filter(|(_, _, state)| state.is_active())
        .map(|(id, _, _)| id);
    for id in std::iter::once(local)
        .chain(live)
        .filter(|id| shared.contains(id.node_id()))
    {
        match holders.get_mut(&id.node_id) {
            Some(holder) if holder.supersedes(id) => *holder = id.clone(),
            Some(_) => {}
            None => {
                holders.insert(Arc::clone(&id.node_id), id.clone());
            }
        }
    }
    holders
}

impl Membership {
    /// Marks `id` a refused duplicate of `holder`'s node id (reported once per identity). If it was a member,
    /// it stops being one: no health checks, not counted.
    pub(super) fn refuse(&mut self, id: &MemberId, holder: &MemberId, now_ms: u64) {
        if let Some((known, _)) = self.duplicates.refused.get_mut(id) {
            if known != holder {
                // The holder renewed its identity (or another live one started earlier): no new report.
                *known = holder.clone();
                self.publication.mark(Change::Table);
            }
            return;
        }
        self.duplicates
            .refused
            .insert(id.clone(), (holder.clone(), now_ms));
        self.set_health_deadline(id.addr, None);
        self.publication.report(MembershipEvent::DuplicateRefused {
            duplicate: id.clone(),
            holder: holder.clone(),
        });
        self.publication.mark(Change::Table);
    }

    /// A node id whose holder took over from an older identity that is down (a restart at a new address after
    /// a crash): the older one was replaced, so it is shown left and does not count against cluster health.
    pub(super) fn retire_superseded(
        &mut self,
        holders: &BTreeMap<Arc<str>, MemberId>,
        now_ms: u64,
    ) {
        for holder in holders.values() {
            let replaced: Vec<(SocketAddr, MemberId)> = self
                .members
                .addrs_of_node(&holder.node_id, holder.addr)
                .filter_map(|addr| self.members.get(&addr).map(|e| (addr, e)))
                .filter(|(_, e)| {
                    e.state == MemberState::Down
                        && holder.supersedes(&e.id)
                        && !self.duplicates.is_refused(&e.id)
                })
                .map(|(addr, e)| (addr, e.id.clone()))
                .collect();
            for (addr, older) in replaced {
                self.duplicates
                    .superseded
                    .entry(older)
                    .or_insert((holder.clone(), now_ms));
                self.transition(addr, MemberState::Down, MemberState::Left);
            }
        }
    }

    /// This node itself may be the duplicate: records and reports who holds its node id, or that it holds
    /// it again.
    pub(super) fn settle_local_refusal(&mut self, holders: &BTreeMap<Arc<str>, MemberId>) {
        let local_holder = holders
            .get(&self.local.node_id)
            .filter(|h| **h != self.local)
            .cloned();
        match (&self.duplicates.local_refused, local_holder) {
            (None, Some(holder)) => {
                self.publication
                    .report(MembershipEvent::RefusedAsDuplicate {
                        holder: holder.clone(),
                    });
                self.duplicates.local_refused = Some(holder);
                self.publication.mark(Change::Table);
            }
            (Some(old), Some(holder)) if *old != holder => {
                // The holder renewed its identity (same process): no new report.
                if (old.replica_id, old.addr) != (holder.replica_id, holder.addr) {
                    self.publication
                        .report(MembershipEvent::RefusedAsDuplicate {
                            holder: holder.clone(),
                        });
                }
                self.duplicates.local_refused = Some(holder);
                self.publication.mark(Change::Table);
            }
            (Some(_), None) => {
                if let Some(holder) = self.duplicates.local_refused.take() {
                    self.publication
                        .report(MembershipEvent::DuplicateCleared { holder });
                }
                self.publication.mark(Change::Table);
            }
            _ => {}
        }
    }
}
