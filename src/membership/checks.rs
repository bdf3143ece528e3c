//! Health checks of members: recording them against the thresholds, and the data-plane silence deadlines.
//!
//! Guarantees: a check is recorded only for a tracked member that is not a refused duplicate; a flip of
//! `healthy` is reported as [`MembershipEvent::HealthChanged`] and published before the call returns. With
//! the data plane required, every active member has exactly one deadline `timeout_ms` after its last
//! data-plane report (or after it came up); when it passes, that is one failed check and the next deadline
//! is armed. Members that go down, leave, are refused or forgotten have none.
//!
//! In a grouped replication layout a node exchanges data-plane checks with the members it replicates with
//! only ([`Membership::set_data_plane_scope`]): the others owe it no answers, have no deadline, and their
//! health follows SWIM (healthy while alive, unhealthy after `failure_threshold` unanswered probes, healthy
//! again after `success_threshold` answered ones), as if the data plane were not required. Their data planes
//! are checked by the members that replicate with them.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use super::Membership;
use super::event::MembershipEvent;
use super::publication::Change;
use crate::ReplicaId;

/// Why a member outside the data-plane scope is healthy.
const OUT_OF_SCOPE: &str =
    "alive (SWIM); its data plane is checked by the members that replicate with it";

/// Data-plane deadlines of members, earliest first, and who owes them.
#[derive(Debug, Default)]
pub(crate) struct DataPlaneDeadlines {
    queue: BTreeSet<(u64, SocketAddr)>,
    /// The replicas that owe data-plane answers; `None`: every member.
    scope: Option<BTreeSet<ReplicaId>>,
}

impl DataPlaneDeadlines {
    /// The earliest deadline.
    pub(crate) fn next_ms(&self) -> Option<u64> {
        self.queue.first().map(|(d, _)| *d)
    }

    /// Removes and returns the member of the earliest deadline if it is due at `now_ms`.
    fn pop_due(&mut self, now_ms: u64) -> Option<SocketAddr> {
        let &(due, addr) = self.queue.first()?;
        if due > now_ms {
            return None;
        }
        self.queue.pop_first();
        Some(addr)
    }

    /// Drops every deadline (this node left).
    pub(crate) fn clear(&mut self) {
        self.queue.clear();
    }
}

impl Membership {
    /// Records one check of the member at `addr` (`ok`, described by `what`); refused duplicates get none.
    pub(super) fn health_check(&mut self, addr: SocketAddr, ok: bool, what: &str) {
        let Some(e) = self.members.get_mut(&addr) else {
            return;
        };
        if self.duplicates.is_refused(&e.id) {
            return; // not a member: no health checks
        }
        if e.health.record(&self.opts.health, ok, what) {
            self.publication.report(MembershipEvent::HealthChanged {
                member: e.id.clone(),
                healthy: e.health.healthy,
                reason: e.health.reason.to_string(),
            });
            self.publication.mark(Change::Table);
        } else {
            self.publication.mark(Change::Soft);
        }
    }

    /// Replaces the data-plane deadline of the member at `addr` (`None`: it has none).
    pub(super) fn set_health_deadline(&mut self, addr: SocketAddr, deadline: Option<u64>) {
        let Some(e) = self.members.get_mut(&addr) else {
            return;
        };
        if let Some(old) = e.health_deadline.take() {
            self.deadlines.queue.remove(&(old, addr));
        }
        if let Some(d) = deadline {
            e.health_deadline = Some(d);
            self.deadlines.queue.insert((d, addr));
        }
    }

    /// With the data plane required: the member at `addr` owes a data-plane answer within `timeout_ms` of
    /// `now_ms`, if it is in the scope; one outside it has no deadline and is taken as healthy while alive.
    pub(super) fn expect_data_plane(&mut self, addr: SocketAddr, now_ms: u64) {
        if !self.opts.health.require_data_plane {
            return;
        }
        if self.owes_data_plane(addr) {
            let due = now_ms.saturating_add(self.opts.health.timeout_ms);
            self.set_health_deadline(addr, Some(due));
        } else {
            self.set_health_deadline(addr, None);
            self.assume_healthy(addr);
        }
    }

    /// Whether the member at `addr` owes this node data-plane answers: the data plane is required, and the
    /// member is in the scope (every member without one).
    pub(super) fn owes_data_plane(&self, addr: SocketAddr) -> bool {
        self.opts.health.require_data_plane
            && self.deadlines.scope.as_ref().is_none_or(|scope| {
                self.members
                    .get(&addr)
                    .is_some_and(|e| scope.contains(&e.id.replica_id()))
            })
    }

    /// A member outside the scope that is active: healthy (reported if it flips), its health following SWIM.
    fn assume_healthy(&mut self, addr: SocketAddr) {
        let Some(e) = self.members.get_mut(&addr) else {
            return;
        };
        if !e.state.is_active() || self.duplicates.is_refused(&e.id) {
            return;
        }
        if e.health.assume_healthy(OUT_OF_SCOPE) {
            self.publication.report(MembershipEvent::HealthChanged {
                member: e.id.clone(),
                healthy: true,
                reason: e.health.reason.to_string(),
            });
            self.publication.mark(Change::Table);
        }
    }

    /// Which members owe this node data-plane answers: `Some(replicas)` in a grouped replication layout (the
    /// members it replicates with), `None` for every member (the full mesh). Members leaving the scope lose
    /// their deadline and are taken as healthy while SWIM has them alive; members entering it owe an answer
    /// within `timeout_ms`.
    pub fn set_data_plane_scope(&mut self, scope: Option<BTreeSet<ReplicaId>>, now_ms: u64) {
        if self.deadlines.scope == scope {
            return;
        }
        self.deadlines.scope = scope;
        if !self.opts.health.require_data_plane {
            return;
        }
        let members: Vec<(SocketAddr, bool)> = self
            .members
            .values()
            .filter(|e| e.state.is_active())
            .map(|e| (e.id.addr(), e.health_deadline.is_some()))
            .collect();
        for (addr, has_deadline) in members {
            if self.owes_data_plane(addr) {
                if !has_deadline {
                    self.expect_data_plane(addr, now_ms);
                }
            } else {
                self.set_health_deadline(addr, None);
                self.assume_healthy(addr);
            }
        }
        self.after_call(now_ms, super::Rescan::IfHinted);
    }

    /// Counts one failed check for each active member whose data-plane deadline passed, and re-arms it.
    pub(super) fn expire_data_plane_deadlines(&mut self, now_ms: u64) {
        while let Some(addr) = self.deadlines.pop_due(now_ms) {
            let timeout_ms = self.opts.health.timeout_ms;
            let Some(e) = self.members.get_mut(&addr) else {
                continue;
            };
            e.health_deadline = None;
            if !e.state.is_active() || self.duplicates.is_refused(&e.id) {
                continue;
            }
            if !self.owes_data_plane(addr) {
                continue; // left the scope since
            }
            let what = format!("no data-plane answer within {timeout_ms} ms");
            self.health_check(addr, false, &what);
            self.set_health_deadline(addr, Some(now_ms.saturating_add(timeout_ms)));
        }
    }
}
