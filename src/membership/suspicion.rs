//! Lifeguard dynamic suspicion: this node's suspect-to-down timers and the confirmations it heard.
//!
//! Guarantees: a timer exists only for a member this node itself failed to probe, at the incarnation it
//! suspected, and only while that member is still suspect at that incarnation ([`Suspicions::retain_current`]
//! runs after every reconciliation with foca). It starts at `max`; each distinct other member heard
//! suspecting the same (member, incarnation) is a confirmation, and the deadline becomes
//! `start + suspicion_timeout_ms(min, max, K, C)`: never later than `max`, never earlier than `min`. Starting
//! a timer broadcasts this node's own suspicion (a confirmation for the others).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use foca::{Incarnation, Timer, TimerToken};

use super::Membership;
use super::codec::BroadcastItem;
use super::identity::MemberId;
use super::members::Members;
use super::options::suspicion_timeout_ms;
use super::table::MemberState;

/// A suspicion timer of this node.
#[derive(Debug)]
struct PendingSuspicion {
    target: MemberId,
    incarnation: Incarnation,
    token: TimerToken,
    started_ms: u64,
    min_ms: u64,
    max_ms: u64,
    k: u32,
    due_ms: u64,
}

/// This node's suspicion timers and the confirmations heard per (member, incarnation).
#[derive(Debug, Default)]
pub(crate) struct Suspicions {
    pending: Vec<PendingSuspicion>,
    confirmations: BTreeMap<(MemberId, Incarnation), BTreeSet<SocketAddr>>,
}

impl Suspicions {
    /// The earliest deadline of a timer.
    pub(crate) fn next_due_ms(&self) -> Option<u64> {
        self.pending.iter().map(|s| s.due_ms).min()
    }

    /// Takes the timer with the earliest deadline (the first one started among equals) if it is due at
    /// `now_ms`, as the foca timer that declares its member down.
    pub(crate) fn pop_due(&mut self, now_ms: u64) -> Option<Timer<MemberId>> {
        let (i, due) = self
            .pending
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| s.due_ms)
            .map(|(i, s)| (i, s.due_ms))?;
        if due > now_ms {
            return None;
        }
        let s = self.pending.swap_remove(i);
        Some(Timer::ChangeSuspectToDown {
            member_id: s.target,
            incarnation: s.incarnation,
            token: s.token,
        })
    }

    /// `from` suspects `target` at `incarnation` too: if that is news, a timer of ours for it moves closer.
    pub(crate) fn confirm(&mut self, target: MemberId, incarnation: Incarnation, from: SocketAddr) {
        let key = (target, incarnation);
        let set = self.confirmations.entry(key.clone()).or_default();
        if set.insert(from) {
            let c = u32::try_from(set.len()).unwrap_or(u32::MAX);
            for s in &mut self.pending {
                if s.target == key.0 && s.incarnation == key.1 {
                    s.due_ms = s
                        .started_ms
                        .saturating_add(suspicion_timeout_ms(s.min_ms, s.max_ms, s.k, c));
                }
            }
        }
    }

    /// Keeps only the timers whose member is still suspect at the suspected incarnation.
    pub(crate) fn retain_current(&mut self, members: &Members) {
        self.pending.retain(|s| {
            members.get(&s.target.addr).is_some_and(|e| {
                e.id == s.target
                    && e.state == MemberState::Suspect
                    && e.incarnation == s.incarnation
            })
        });
    }

    /// Forgets confirmations about members no longer active at (or below) that incarnation.
    pub(crate) fn prune_confirmations(&mut self, members: &Members) {
        self.confirmations.retain(|(target, inc), _| {
            members
                .get(&target.addr)
                .is_some_and(|e| e.id == *target && e.state.is_active() && e.incarnation <= *inc)
        });
    }

    /// Drops every timer (this node left).
    pub(crate) fn stop_all(&mut self) {
        self.pending.clear();
    }
}

impl Membership {
    /// Starts a timer for each suspicion foca asked for during the call.
    pub(super) fn start_requested_suspicions(&mut self, now_ms: u64) {
        for (target, incarnation, token) in std::mem::take(&mut self.swim.requests.suspected) {
            self.start_suspicion(target, incarnation, token, now_ms);
        }
    }

    /// A probe of `target` by this node failed: start (or refresh the token of) its suspicion timer and
    /// tell the others (a confirmation for theirs).
    fn start_suspicion(
        &mut self,
        target: MemberId,
        incarnation: Incarnation,
        token: TimerToken,
        now_ms: u64,
    ) {
        let still_suspect = self.members.get(&target.addr).is_some_and(|e| {
            e.id == target && e.state == MemberState::Suspect && e.incarnation == incarnation
        });
        if !still_suspect {
            return;
        }
        let pending = &mut self.suspicions.pending;
        if let Some(s) = pending
            .iter_mut()
            .find(|s| s.target == target && s.incarnation == incarnation)
        {
            s.token = token;
            return;
        }
        let live = self.live;
        let min_ms = self.opts.suspicion_min_ms(live);
        let max_ms = self.opts.suspicion_max_ms(live);
        let k = self.opts.suspicion_k(live);
        let c = self
            .suspicions
            .confirmations
            .get(&(target.clone(), incarnation))
            .map_or(0, |s| u32::try_from(s.len()).unwrap_or(u32::MAX));
        let due_ms = now_ms.saturating_add(suspicion_timeout_ms(min_ms, max_ms, k, c));
        self.stats.suspicions_started += 1;
        let notice = BroadcastItem::Suspicion {
            target: target.clone(),
            incarnation,
            from: self.local.clone(),
        };
        self.swim.broadcast(&notice, now_ms);
        self.suspicions.pending.push(PendingSuspicion {
            target,
            incarnation,
            token,
            started_ms: now_ms,
            min_ms,
            max_ms,
            k,
            due_ms,
        });
    }
}
