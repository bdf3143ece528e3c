//! Publication: the member-table snapshot, cluster health and the event queue.
//!
//! Guarantees: a [`Change::Table`] (a state, health, identity, refusal or standing change) is published
//! before the call that made it returns; a [`Change::Soft`] one (only `last_seen_ms`, `rtt_ms` or the local
//! health multiplier) at most every `publish_interval_ms`. Each snapshot is built whole and swapped in with
//! one `arc-swap` store, so readers never see half of a change. Cluster health is recomputed whenever the
//! table changed, and a new value is reported as [`MembershipEvent::ClusterHealthChanged`] before the
//! snapshot that shows it.

use std::collections::VecDeque;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::event::MembershipEvent;
use super::identity::MemberId;
use super::table::{
    ClusterHealth, LocalInfo, LocalState, MemberInfo, MemberState, MemberTable, RefusedInfo,
};
use super::{Membership, Standing};

/// How much of the published snapshot is out of date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Change {
    /// Nothing changed since the last publication.
    None,
    /// Only last-seen times, round trips or the local health multiplier: republished at most every
    /// `publish_interval_ms`.
    Soft,
    /// Something readers must see before the call returns.
    Table,
}

/// The published snapshot, what is pending for it, and the events not yet polled.
#[derive(Debug)]
pub(crate) struct Publication {
    pub(crate) table: Arc<ArcSwap<MemberTable>>,
    change: Change,
    last_publish_ms: u64,
    pub(crate) cluster_health: ClusterHealth,
    pub(crate) events: VecDeque<MembershipEvent>,
    /// A member went down since the last urgent gossip round: spread it now, not at the next gossip tick.
    pub(crate) urgent_gossip: bool,
    /// When the last urgent gossip round ran (Unix ms).
    pub(crate) last_urgent_gossip_ms: Option<u64>,
}

impl Publication {
    /// An empty table for `local`, alone and healthy, to be republished at once.
    pub(crate) fn new(local: &MemberId, now_ms: u64) -> Publication {
        let table = Arc::new(ArcSwap::from_pointee(MemberTable {
            local: LocalInfo {
                id: local.clone(),
                state: LocalState::Alone,
                local_health: 0,
                refused_by: None,
            },
            members: Vec::new(),
            refused: Vec::new(),
            cluster_health: ClusterHealth::Healthy,
            published_ms: now_ms,
        }));
        Publication {
            table,
            change: Change::Table,
            last_publish_ms: now_ms,
            cluster_health: ClusterHealth::Healthy,
            events: VecDeque::new(),
            urgent_gossip: false,
            last_urgent_gossip_ms: None,
        }
    }

    /// Records a change of at least `change`'s weight.
    pub(crate) fn mark(&mut self, change: Change) {
        self.change = self.change.max(change);
    }

    /// True when something readers must see is not published yet.
    pub(crate) fn table_changed(&self) -> bool {
        self.change == Change::Table
    }

    /// Queues one event for [`Membership::poll_event`].
    pub(crate) fn report(&mut self, event: MembershipEvent) {
        self.events.push_back(event);
    }
}

impl Membership {
    /// Brings cluster health and the snapshot up to date with what the call changed: a table change is
    /// published now (after any cluster-health event), a soft change once `publish_interval_ms` passed.
    pub(super) fn publish_changes(&mut self, now_ms: u64) {
        match self.publication.change {
            Change::Table => {
                let health = self.compute_cluster_health();
                if health != self.publication.cluster_health {
                    self.publication.cluster_health = health;
                    self.publication
                        .report(MembershipEvent::ClusterHealthChanged(health));
                }
                self.publish(now_ms);
            }
            Change::Soft
                if now_ms
                    >= self
                        .publication
                        .last_publish_ms
                        .saturating_add(self.opts.publish_interval_ms) =>
            {
                self.publish(now_ms);
            }
            Change::Soft | Change::None => {}
        }
    }

    /// Cluster health by the rule of the [module docs](super): this node in good standing, and a strict
    /// majority of the non-left members (refused duplicates excluded), itself included, active and healthy.
    pub(super) fn compute_cluster_health(&self) -> ClusterHealth {
        let self_ok = self.duplicates.local_refused.is_none()
            && match self.standing {
                Standing::Left | Standing::Defunct => false,
                Standing::Joined => true,
                Standing::Fresh | Standing::Reconnecting => !self.join_requested.is_requested(),
            };
        if !self_ok {
            return ClusterHealth::NotHealthy;
        }
        let (mut total, mut good) = (1usize, 1usize);
        for e in self.members.values() {
            if e.state == MemberState::Left || self.duplicates.is_refused(&e.id) {
                continue;
            }
            total += 1;
            if e.state.is_active() && e.health.healthy {
                good += 1;
            }
        }
        if 2 * good > total {
            ClusterHealth::Healthy
        } else {
            ClusterHealth::NotHealthy
        }
    }

    /// Builds the snapshot from the current state and swaps it in.
    pub(super) fn publish(&mut self, now_ms: u64) {
        let mut refused: Vec<RefusedInfo> = Vec::new();
        let mut members: Vec<MemberInfo> = Vec::with_capacity(self.members.len());
        for e in self.members.values() {
            if let Some((holder, since_ms)) = self.duplicates.refused.get(&e.id) {
                if e.state.is_active() {
                    refused.push(RefusedInfo {
                        id: e.id.clone(),
                        holder: holder.clone(),
                        since_ms: *since_ms,
                    });
                }
                continue;
            }
            members.push(MemberInfo {
                id: e.id.clone(),
                state: e.state,
                healthy: e.health.healthy,
                health_reason: Arc::clone(&e.health.reason),
                incarnation: e.incarnation,
                last_seen_ms: e.last_seen_ms,
                rtt_ms: e.rtt_ms.map(|r| r.round() as u64),
            });
        }
        members.sort_by(|a, b| (a.id.node_id(), a.id.addr).cmp(&(b.id.node_id(), b.id.addr)));
        refused.sort_by(|a, b| (a.id.node_id(), a.id.addr).cmp(&(b.id.node_id(), b.id.addr)));
        self.publication.table.store(Arc::new(MemberTable {
            local: LocalInfo {
                id: self.local.clone(),
                state: self.standing.public(),
                local_health: self.local_health.multiplier(),
                refused_by: self.duplicates.local_refused.clone(),
            },
            members,
            refused,
            cluster_health: self.publication.cluster_health,
            published_ms: now_ms,
        }));
        self.publication.change = Change::None;
        self.publication.last_publish_ms = now_ms;
    }
}
