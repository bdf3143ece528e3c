//! Health checks of members: recording them against the thresholds, and the data-plane silence deadlines.
//!
//! Guarantees: a check is recorded only for a tracked member that is not a refused duplicate; a flip of
//! `healthy` is reported as [`MembershipEvent::HealthChanged`] and published before the call returns. With
//! the data plane required, every active member has exactly one deadline `timeout_ms` after its last
//! data-plane report (or after it came up); when it passes, that is one failed check and the next deadline
//! is armed. Members that go down, leave, are refused or forgotten have none.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use super::Membership;
use super::event::MembershipEvent;
use super::publication::Change;

/// Data-plane deadlines of members, earliest first.
#[derive(Debug, Default)]
pub(crate) struct DataPlaneDeadlines {
    queue: BTreeSet<(u64, SocketAddr)>,
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
    /// `now_ms`.
    pub(super) fn expect_data_plane(&mut self, addr: SocketAddr, now_ms: u64) {
        if self.opts.health.require_data_plane {
            let due = now_ms.saturating_add(self.opts.health.timeout_ms);
            self.set_health_deadline(addr, Some(due));
        }
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
            let what = format!("no data-plane answer within {timeout_ms} ms");
            self.health_check(addr, false, &what);
            self.set_health_deadline(addr, Some(now_ms.saturating_add(timeout_ms)));
        }
    }
}
