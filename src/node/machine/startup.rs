//! Start-up admission: a node that has not yet heard the state of every member it expects admits only the
//! share of each limit that belongs to the members it has heard, so N nodes that start together do not each
//! admit the whole limit before they see each other.
//!
//! Guarantees:
//! - From the node's start, while active, the store decides every acquire against
//!   `limit × heard / members` (rounded up): `members` the members this node expects (itself plus the larger
//!   of the join targets it knows and the peers membership reports alive, the most it has seen since either
//!   was first known; before that, the config's static peers, and at least one other member when discovery
//!   is on), `heard` itself plus the linked peers whose full state transfer it holds. What it has not heard,
//!   each other member may still admit as its own share, so the members in start-up together stay within the
//!   limit plus rounding (one per member).
//! - `members` never falls once a view is known, so a view that shrinks for a moment (a discovery answer that
//!   lists fewer pods, a peer that flaps) cannot end it early.
//! - It ends, for good, when it has heard every expected member, or `quorum_cap` peers (half of
//!   `replication.full_mesh_below`: in the grouped layout a node links to its group and partners, never to
//!   every member of a large cluster); or when the start-up join is settled without a join (the node runs
//!   alone: nobody else decides); or after `max_ms` (an expected member that never came back). The end and its
//!   reason are logged once by the machine.
//! - A node that expects nobody (no peers, no discovery) never enters it.
//! - Pure logic: time comes in as `now_ms`.

use crate::counter::CounterStore;

/// Longest start-up admission, in ms, when the expected members never answer.
pub(crate) const MAX_STARTUP_ADMISSION_MS: u64 = 10_000;

/// Why start-up admission ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartupEnd {
    /// Every expected member, or `quorum_cap` peers, sent their state.
    Quorum,
    /// The start-up join gave up: the node runs alone.
    Alone,
    /// `max_ms` passed.
    TimedOut,
}

/// The start-up admission of one node.
#[derive(Debug)]
pub(crate) struct StartupAdmission {
    store: CounterStore,
    started_ms: u64,
    max_ms: u64,
    /// Members expected, this node included.
    members: u64,
    /// `members` is still the config's count (no target or member known yet): the first view replaces it,
    /// later views only raise it.
    provisional: bool,
    /// Peers' state that ends it whatever `members` is.
    quorum_cap: u64,
    /// `None` while active.
    ended: Option<StartupEnd>,
}

/// What the node knows at one step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StartupView {
    /// Join targets known (static peers and discovered addresses).
    pub(crate) targets: usize,
    /// Peers membership reports alive.
    pub(crate) alive_peers: usize,
    /// Linked peers whose state arrived in full.
    pub(crate) peers_with_state: usize,
    /// The start-up join gave up (settled without a join).
    pub(crate) alone: bool,
}

impl StartupAdmission {
    /// Starts at `now_ms`, expecting `expected_peers` peers (the config's static peers); `expect_any`: the
    /// config names peers or enables discovery. Without, it is over at once; with, it expects at least one
    /// other member until the first view says how many.
    pub(crate) fn new(
        store: CounterStore,
        expected_peers: usize,
        expect_any: bool,
        quorum_cap: usize,
        max_ms: u64,
        now_ms: u64,
    ) -> StartupAdmission {
        let admission = StartupAdmission {
            store,
            started_ms: now_ms,
            max_ms,
            members: (expected_peers as u64).saturating_add(1).max(2),
            provisional: true,
            quorum_cap: (quorum_cap as u64).max(1),
            ended: (!expect_any).then_some(StartupEnd::Alone),
        };
        if admission.active() {
            admission.store.set_startup_share(1, admission.members);
        }
        admission
    }

    /// Whether start-up admission still applies.
    pub(crate) fn active(&self) -> bool {
        self.ended.is_none()
    }

    /// The members expected (this node included).
    pub(crate) fn members(&self) -> u64 {
        self.members
    }

    /// Updates from `view` at `now_ms`; returns how it ended when it ends in this step.
    pub(crate) fn step(&mut self, view: StartupView, now_ms: u64) -> Option<StartupEnd> {
        if !self.active() {
            return None;
        }
        // Until targets or members are known, the config's count stands (a static list that names this node
        // itself counts it once more: a smaller share until the targets are known, never a larger one). The
        // first view replaces it; later ones only raise it.
        let seen = view.targets.max(view.alive_peers) as u64;
        if seen > 0 {
            let members = seen.saturating_add(1);
            self.members = if self.provisional {
                members
            } else {
                self.members.max(members)
            };
            self.provisional = false;
        }
        let heard = (view.peers_with_state as u64)
            .saturating_add(1)
            .min(self.members);
        // Not on the config's count alone: a quorum needs a view of who the members are.
        let quorum = !self.provisional
            && (heard >= self.members || view.peers_with_state as u64 >= self.quorum_cap);
        let end = if quorum {
            Some(StartupEnd::Quorum)
        } else if view.alone {
            Some(StartupEnd::Alone)
        } else if now_ms.saturating_sub(self.started_ms) >= self.max_ms {
            Some(StartupEnd::TimedOut)
        } else {
            None
        };
        match end {
            Some(_) => {
                self.ended = end;
                self.store.set_startup_share(1, 1);
            }
            None => self.store.set_startup_share(heard, self.members),
        }
        end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counter::{Algorithm, StoreOptions, Window};

    fn view(targets: usize, peers_with_state: usize) -> StartupView {
        StartupView {
            targets,
            alive_peers: 0,
            peers_with_state,
            alone: false,
        }
    }

    fn admitted(handle: &crate::counter::CounterHandle, limit: u64) -> usize {
        (0..limit * 2)
            .filter(|_| handle.acquire(Algorithm::FixedWindow, limit, 1).allowed)
            .count()
    }

    #[test]
    fn a_starting_node_admits_the_share_of_the_members_it_heard() {
        let store = CounterStore::new(StoreOptions::default());
        let mut s = StartupAdmission::new(store.clone(), 2, true, 8, 10_000, 0);
        assert_eq!(store.startup_share(), (1, 3));
        let handle = store.handle("k", Window::MINUTE).expect("handle");
        assert_eq!(
            admitted(&handle, 30),
            10,
            "a third of the limit while alone in start-up"
        );
        // Discovery found two more: five members, one peer's state heard: two fifths of the limit.
        assert_eq!(s.step(view(4, 1), 100), None);
        assert_eq!(store.startup_share(), (2, 5));
        assert_eq!(
            admitted(&handle, 30),
            2,
            "12 of 30 now, 10 of them already taken"
        );
        assert_eq!(s.step(view(4, 4), 200), Some(StartupEnd::Quorum));
        assert_eq!(store.startup_share().1, 1);
        assert_eq!(admitted(&handle, 30), 18);
        assert_eq!(s.step(view(9, 0), 300), None, "it ends for good");
        assert_eq!(store.startup_share().1, 1);
    }

    #[test]
    fn a_static_list_that_names_the_node_itself_is_corrected_by_the_targets() {
        let store = CounterStore::new(StoreOptions::default());
        let mut s = StartupAdmission::new(store.clone(), 3, true, 8, 10_000, 0);
        assert_eq!(store.startup_share(), (1, 4));
        assert_eq!(
            s.step(view(0, 0), 10),
            None,
            "nothing known yet: the config's count stands"
        );
        assert_eq!(store.startup_share(), (1, 4));
        assert_eq!(s.step(view(2, 1), 20), None);
        assert_eq!(store.startup_share(), (2, 3));
        assert_eq!(s.step(view(2, 2), 30), Some(StartupEnd::Quorum));
    }

    #[test]
    fn in_a_large_cluster_the_quorum_is_capped() {
        let store = CounterStore::new(StoreOptions::default());
        let mut s = StartupAdmission::new(store.clone(), 999, true, 8, 10_000, 0);
        assert_eq!(store.startup_share(), (1, 1_000));
        assert_eq!(s.step(view(999, 7), 100), None);
        assert_eq!(s.step(view(999, 8), 200), Some(StartupEnd::Quorum));
    }

    #[test]
    fn it_ends_when_the_node_runs_alone_or_after_the_bound() {
        let store = CounterStore::new(StoreOptions::default());
        let mut s = StartupAdmission::new(store.clone(), 2, true, 8, 10_000, 0);
        let alone = StartupView {
            alone: true,
            ..view(2, 0)
        };
        assert_eq!(s.step(alone, 50), Some(StartupEnd::Alone));
        let mut s = StartupAdmission::new(store.clone(), 2, true, 8, 10_000, 0);
        assert_eq!(s.step(view(2, 0), 9_999), None);
        assert_eq!(s.step(view(2, 0), 10_000), Some(StartupEnd::TimedOut));
        assert_eq!(store.startup_share().1, 1);
    }

    #[test]
    fn a_view_that_shrinks_for_a_moment_does_not_end_it() {
        let store = CounterStore::new(StoreOptions::default());
        let mut s = StartupAdmission::new(store.clone(), 2, true, 8, 10_000, 0);
        assert_eq!(s.step(view(2, 1), 10), None);
        assert_eq!(store.startup_share(), (2, 3));
        // Discovery lists one target for a moment: still three members, one of them unheard.
        assert_eq!(s.step(view(1, 1), 30), None);
        assert_eq!(store.startup_share(), (2, 3));
        assert_eq!(s.step(view(2, 2), 50), Some(StartupEnd::Quorum));
    }

    #[test]
    fn a_node_with_discovery_only_expects_one_other_member_until_it_knows() {
        let store = CounterStore::new(StoreOptions::default());
        let mut s = StartupAdmission::new(store.clone(), 0, true, 8, 10_000, 0);
        assert!(s.active());
        assert_eq!(store.startup_share(), (1, 2), "half of each limit");
        assert_eq!(s.step(view(0, 0), 20), None);
        assert_eq!(store.startup_share(), (1, 2));
        // Discovery found four others.
        assert_eq!(s.step(view(4, 0), 40), None);
        assert_eq!(store.startup_share(), (1, 5));
        assert_eq!(s.step(view(4, 4), 60), Some(StartupEnd::Quorum));
        // Alone: discovery found nobody and the join settled.
        let mut s = StartupAdmission::new(store.clone(), 0, true, 8, 10_000, 0);
        let alone = StartupView {
            alone: true,
            ..view(0, 0)
        };
        assert_eq!(s.step(alone, 500), Some(StartupEnd::Alone));
        assert_eq!(store.startup_share().1, 1);
    }

    #[test]
    fn a_node_alone_by_config_never_enters_it() {
        let store = CounterStore::new(StoreOptions::default());
        let s = StartupAdmission::new(store.clone(), 0, false, 8, 10_000, 0);
        assert!(!s.active());
        assert_eq!(store.startup_share().1, 1);
    }
}
