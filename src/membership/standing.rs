//! This node's standing in the cluster: the lifecycle foca's notifications drive, and what follows from it.
//!
//! Guarantees: the standing moves only as foca reports it — `Active` makes a fresh, joined or reconnecting
//! node joined, `Idle` makes a joined node reconnecting, `Defunct` is final short of leaving, and `Left`
//! (set by `leave`) is final. Entering a cluster is followed by a roster sync, the first time also by
//! [`MembershipEvent::Joined`]. A reconnecting node announces itself to a few members it believes down every
//! `reconnect_interval_ms`, starting at once; no other standing has that timer armed (nor, except joined,
//! the roster-sync timer).

use foca::OwnedNotification;
use rand::RngExt;

use super::event::MembershipEvent;
use super::identity::MemberId;
use super::publication::Change;
use super::table::{LocalState, MemberState};
use super::timers::Timer;
use super::{Membership, RECONNECT_FANOUT};

/// This node's standing: the public [`LocalState`], with an alone node split by whether it was ever in a
/// cluster (then it reconnects on its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    /// Never in a cluster yet.
    Fresh,
    /// Known by at least one live member.
    Joined,
    /// Was in a cluster, now alone: announces itself to members believed down every
    /// `reconnect_interval_ms`.
    Reconnecting,
    /// Declared down and unable to renew its identity.
    Defunct,
    /// Left on purpose; every input is refused.
    Left,
}

impl Standing {
    /// What readers see.
    pub(crate) fn public(self) -> LocalState {
        match self {
            Standing::Fresh | Standing::Reconnecting => LocalState::Alone,
            Standing::Joined => LocalState::Joined,
            Standing::Defunct => LocalState::Defunct,
            Standing::Left => LocalState::Left,
        }
    }
}

/// Whether the caller ever asked this node to join: then it is expected in a cluster, and alone it is not
/// healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JoinIntent {
    /// Never asked: alone is a one-node cluster.
    None,
    /// [`Membership::join`] was called.
    Requested,
}

impl JoinIntent {
    pub(crate) fn is_requested(self) -> bool {
        self == JoinIntent::Requested
    }
}

/// What the notifications of one round did to this node's place in a cluster, for the follow-up steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ClusterEntry {
    /// It did not enter a cluster.
    None,
    /// It entered one again (a roster sync follows).
    Reentered,
    /// It entered one for the first time (reported, and a roster sync follows).
    FirstJoin,
}

impl Membership {
    /// Applies foca's notifications about this node (standing, renewed identity). Returns how this node
    /// entered a cluster, and whether a notification was about other members (then the map is stale).
    pub(super) fn apply_notifications(&mut self, now_ms: u64) -> (ClusterEntry, bool) {
        let mut entry = ClusterEntry::None;
        let mut members_notified = false;
        for n in std::mem::take(&mut self.swim.requests.notifications) {
            match n {
                OwnedNotification::Active => {
                    let this = match self.standing {
                        Standing::Left | Standing::Defunct => continue,
                        Standing::Fresh => ClusterEntry::FirstJoin,
                        Standing::Joined | Standing::Reconnecting => ClusterEntry::Reentered,
                    };
                    self.standing = Standing::Joined;
                    self.publication.mark(Change::Table);
                    entry = entry.max(this);
                }
                OwnedNotification::Idle => {
                    if self.standing == Standing::Joined {
                        self.standing = Standing::Reconnecting;
                        self.timers.set(Timer::Reconnect, Some(now_ms));
                        self.publication.mark(Change::Table);
                    }
                }
                OwnedNotification::Defunct => {
                    if self.standing != Standing::Left {
                        self.standing = Standing::Defunct;
                        self.publication.report(MembershipEvent::Defunct);
                        self.publication.mark(Change::Table);
                    }
                }
                OwnedNotification::Rejoin(id) => {
                    self.local = id.clone();
                    self.publication.report(MembershipEvent::Rejoined(id));
                    self.publication.mark(Change::Table);
                }
                _ => members_notified = true,
            }
        }
        (entry, members_notified)
    }

    /// After entering a cluster: the first time, reports [`MembershipEvent::Joined`]; each time, starts the
    /// roster sync.
    pub(super) fn follow_cluster_entry(&mut self, entry: ClusterEntry, now_ms: u64) {
        if entry == ClusterEntry::FirstJoin {
            let peers = self.active_count();
            self.publication.report(MembershipEvent::Joined { peers });
        }
        if entry != ClusterEntry::None {
            self.start_roster_sync(now_ms);
        }
    }

    /// While alone after having been in a cluster, announce to a few members believed down.
    pub(super) fn reconnect(&mut self, now_ms: u64) {
        self.announce_to_random(MemberState::Down, RECONNECT_FANOUT, now_ms);
    }

    /// Announces this node to up to `count` distinct random members in `state`.
    fn announce_to_random(&mut self, state: MemberState, count: usize, now_ms: u64) {
        let mut candidates: Vec<MemberId> = self
            .members
            .values()
            .filter(|e| e.state == state)
            .map(|e| e.id.clone())
            .collect();
        for _ in 0..count.min(candidates.len()) {
            let pick = self.rng.random_range(0..candidates.len());
            let dst = candidates.swap_remove(pick);
            if self
                .with_swim(now_ms, |swim, rt| swim.announce(dst, rt))
                .is_err()
            {
                self.stats.internal_errors += 1;
            }
        }
    }
}
