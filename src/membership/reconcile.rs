//! Reconciliation: foca's member list against this node's member map, and the events for the difference.
//!
//! Guarantees: after [`Membership::reconcile`] the map holds exactly the identities foca knows, each in the
//! state foca gives it (down read as left when a leave notice or a newer identity explains it); every
//! difference is reported once and in order (up, suspect, alive, down, left, replaced), a member that
//! goes down or leaves is unhealthy at once and loses its data-plane deadline, a refused duplicate is tracked
//! but never reported, and which identity holds each node id is settled (see `duplicates`).

use std::net::SocketAddr;

use foca::{Incarnation, State};

use super::Membership;
use super::duplicates::node_id_holders;
use super::event::MembershipEvent;
use super::health::HealthTracker;
use super::identity::MemberId;
use super::members::Entry;
use super::publication::Change;
use super::table::MemberState;

impl Membership {
    /// Compares foca's member list with the map and emits the differences, then settles which identity
    /// holds each node id.
    pub(super) fn reconcile(&mut self, now_ms: u64) {
        self.scan_gen += 1;
        let scan = self.scan_gen;
        let snapshot = self.swim_snapshot();
        let holders = node_id_holders(&self.local, &snapshot);
        for (id, incarnation, state) in snapshot {
            let addr = id.addr;
            // A live identity that does not hold its node id is a refused duplicate; one that was refused and
            // now holds it (the holder left or went down) takes over.
            let holder = holders.get(&id.node_id).filter(|h| **h != id);
            let mut promoted = false;
            match holder {
                Some(holder) if state.is_active() => self.refuse(&id, holder, now_ms),
                _ if state.is_active() => {
                    promoted = self.duplicates.refused.remove(&id).is_some();
                }
                _ => {}
            }
            let known = self.members.get(&addr).map(|e| (e.id.clone(), e.state));
            match known {
                Some((old_id, old_state)) if old_id == id => {
                    if let Some(e) = self.members.get_mut(&addr) {
                        e.scan = scan;
                        if e.incarnation != incarnation {
                            e.incarnation = incarnation;
                            self.publication.mark(Change::Table);
                        }
                    }
                    if promoted {
                        if let Some(e) = self.members.get_mut(&addr) {
                            e.state = state;
                        }
                        self.member_up(&id, state, now_ms);
                    } else if old_state != state {
                        self.transition(addr, old_state, state);
                    }
                }
                other => {
                    if let Some((old_id, _)) = other {
                        let was_member = !self.duplicates.is_refused(&old_id);
                        self.forget(addr);
                        if was_member {
                            self.publication.report(MembershipEvent::MemberReplaced {
                                old: old_id,
                                new: id.clone(),
                            });
                        }
                    }
                    self.track(id, incarnation, state, scan, now_ms);
                }
            }
        }
        for addr in self.members.unseen_by(scan) {
            self.forget(addr);
            self.publication.mark(Change::Table);
        }
        self.suspicions.retain_current(&self.members);
        self.retire_superseded(&holders, now_ms);
        self.settle_local_refusal(&holders);
    }

    /// foca's member list as (identity, incarnation, state), down read as left when this node heard a leave
    /// notice from it or knows a newer identity replaced it.
    fn swim_snapshot(&self) -> Vec<(MemberId, Incarnation, MemberState)> {
        self.swim
            .foca
            .iter_membership_state()
            .map(|m| {
                let id = m.id();
                let state = match m.state() {
                    State::Alive => MemberState::Alive,
                    State::Suspect => MemberState::Suspect,
                    State::Down
                        if self.left_ids.contains_key(id)
                            || self.duplicates.superseded.contains_key(id) =>
                    {
                        MemberState::Left
                    }
                    State::Down => MemberState::Down,
                };
                (id.clone(), m.incarnation(), state)
            })
            .collect()
    }

    /// Starts tracking a new identity (its address is free), reporting it up if it is an active member.
    fn track(
        &mut self,
        id: MemberId,
        incarnation: Incarnation,
        state: MemberState,
        scan: u64,
        now_ms: u64,
    ) {
        let mut health = HealthTracker::new(&self.opts.health);
        if !state.is_active() {
            health.force_unhealthy(if state == MemberState::Left {
                "member left"
            } else {
                "member is down"
            });
        }
        self.members.insert(Entry {
            id: id.clone(),
            state,
            incarnation,
            health,
            last_seen_ms: None,
            rtt_ms: None,
            health_deadline: None,
            scan,
        });
        self.publication.mark(Change::Table);
        if state.is_active() && !self.duplicates.is_refused(&id) {
            self.member_up(&id, state, now_ms);
        }
    }

    /// Reports `id` (at its address, already in the map) up as a member in `state`, and arms its data-plane
    /// deadline.
    pub(super) fn member_up(&mut self, id: &MemberId, state: MemberState, now_ms: u64) {
        self.publication.mark(Change::Table);
        self.publication
            .report(MembershipEvent::MemberUp(id.clone()));
        if state == MemberState::Suspect {
            self.publication
                .report(MembershipEvent::MemberSuspect(id.clone()));
        }
        self.expect_data_plane(id.addr, now_ms);
    }

    /// Moves the member at `addr` from `from` to `to` and reports it (refused duplicates silently).
    pub(super) fn transition(&mut self, addr: SocketAddr, from: MemberState, to: MemberState) {
        let Some(e) = self.members.get_mut(&addr) else {
            return;
        };
        let id = e.id.clone();
        let events = &mut self.publication;
        events.mark(Change::Table);
        if self.duplicates.is_refused(&id) {
            // Not a member: its SWIM state is tracked, nothing is reported.
            e.state = to;
            if !to.is_active() {
                self.set_health_deadline(addr, None);
            }
            return;
        }
        match (from, to) {
            (MemberState::Left, MemberState::Down) => return, // we know better: it left
            (MemberState::Alive, MemberState::Suspect) => {
                events.report(MembershipEvent::MemberSuspect(id));
            }
            (MemberState::Suspect, MemberState::Alive) => {
                events.report(MembershipEvent::MemberAlive(id));
            }
            (_, MemberState::Down) => {
                events.report(MembershipEvent::MemberDown(id.clone()));
                events.urgent_gossip = true;
                if e.health.force_unhealthy("member is down") {
                    events.report(MembershipEvent::HealthChanged {
                        member: id,
                        healthy: false,
                        reason: "member is down".into(),
                    });
                }
            }
            (_, MemberState::Left) => {
                let why = match self.duplicates.superseded.get(&id) {
                    Some((new, _)) => {
                        events.report(MembershipEvent::MemberReplaced {
                            old: id.clone(),
                            new: new.clone(),
                        });
                        "replaced by a newer identity of the same node"
                    }
                    None => {
                        events.report(MembershipEvent::MemberLeft(id.clone()));
                        "member left"
                    }
                };
                if e.health.force_unhealthy(why) {
                    events.report(MembershipEvent::HealthChanged {
                        member: id,
                        healthy: false,
                        reason: why.into(),
                    });
                }
            }
            (_, MemberState::Alive | MemberState::Suspect) => {
                events.report(MembershipEvent::MemberUp(id.clone()));
                if to == MemberState::Suspect {
                    events.report(MembershipEvent::MemberSuspect(id));
                }
            }
        }
        e.state = to;
        if !to.is_active() {
            self.set_health_deadline(addr, None);
        }
    }

    /// Stops tracking the identity at `addr` (and any refusal of it).
    pub(super) fn forget(&mut self, addr: SocketAddr) {
        self.set_health_deadline(addr, None);
        if let Some(e) = self.members.remove(addr) {
            self.duplicates.refused.remove(&e.id);
        }
    }

    /// Active members, refused duplicates excluded.
    pub(super) fn active_count(&self) -> usize {
        self.members
            .values()
            .filter(|e| e.state.is_active() && !self.duplicates.is_refused(&e.id))
            .count()
    }
}
