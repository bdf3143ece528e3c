//! Push-pull roster sync: full member lists exchanged with one random member, so a newcomer (or a node that
//! missed gossip) learns the whole roster in one round trip instead of minutes of piggybacked updates.
//!
//! Guarantees: while joined, a sync is sent right after joining, then 5, 10, 20, … probe intervals later
//! until the regular period (`roster_sync_interval_ms`, scaled like memberlist's push-pull), then every
//! period; the [`Timer::RosterSync`] deadline always says when. A received roster is applied through foca's
//! `apply_many` without re-broadcasting, and only for entries that are news here; nothing from a member this
//! node holds down is trusted; a request is answered at most once per probe interval per sender. Every chunk
//! fits `max_packet_size`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use foca::{Member, State};
use rand::RngExt;

use super::codec::{decode_roster, encode_roster};
use super::error::MembershipError;
use super::table::MemberState;
use super::timers::Timer;
use super::{Membership, Rescan};

/// A node syncs its roster right after joining and again this many probe intervals later.
const JOIN_RESYNC_PROBES: u64 = 5;

/// The early follow-up schedule and who was answered when.
#[derive(Debug, Default)]
pub(crate) struct RosterSync {
    /// The next early follow-up's spacing (doubles each time); 0 once the regular period applies.
    resync_step_ms: u64,
    /// When each requester was last answered.
    pub(crate) replies: BTreeMap<SocketAddr, u64>,
}

impl Membership {
    /// This node just entered a cluster: sync now, and schedule the early follow-ups (in a join storm the
    /// first peers' rosters are themselves incomplete).
    pub(super) fn start_roster_sync(&mut self, now_ms: u64) {
        self.push_pull(now_ms);
        self.roster.resync_step_ms = JOIN_RESYNC_PROBES * self.opts.probe_interval_ms;
        let early = now_ms.saturating_add(self.roster.resync_step_ms);
        self.timers.set_earlier(Timer::RosterSync, early);
    }

    /// Sends this node's whole member list to one random live member, asking for its own in return, and
    /// schedules the next sync.
    pub(super) fn push_pull(&mut self, now_ms: u64) {
        let regular = self.opts.roster_sync_ms(self.live);
        let period = match regular {
            Some(p) if self.roster.resync_step_ms > 0 && self.roster.resync_step_ms < p => {
                let step = self.roster.resync_step_ms;
                self.roster.resync_step_ms = step.saturating_mul(2);
                Some(step)
            }
            other => {
                self.roster.resync_step_ms = 0;
                other
            }
        };
        self.timers
            .set(Timer::RosterSync, period.map(|p| now_ms.saturating_add(p)));
        let alive: Vec<SocketAddr> = self
            .members
            .values()
            .filter(|e| e.state == MemberState::Alive && !self.duplicates.is_refused(&e.id))
            .map(|e| e.id.addr)
            .collect();
        if alive.is_empty() {
            return;
        }
        let to = alive[self.rng.random_range(0..alive.len())];
        self.send_roster(to, true);
    }

    /// Queues this node's roster (itself first) to `to`, in as many chunks as it takes.
    fn send_roster(&mut self, to: SocketAddr, reply: bool) {
        let incarnation = self.swim.local_incarnation();
        let mut roster = vec![Member::new(self.local.clone(), incarnation, State::Alive)];
        roster.extend(self.swim.foca.iter_membership_state().cloned());
        for chunk in encode_roster(&self.local, reply, &roster, self.opts.max_packet_size) {
            self.swim.requests.transmits.push_back((to, chunk));
        }
    }

    /// A roster chunk: apply it as foca's `apply_many` (without re-broadcasting what the sender already
    /// knows) and, if asked and not too often for this sender, answer with ours.
    pub(super) fn handle_roster(
        &mut self,
        from: SocketAddr,
        bytes: &[u8],
        now_ms: u64,
    ) -> Result<(), MembershipError> {
        if bytes.len() > self.opts.max_packet_size {
            return Err(MembershipError::PacketTooLarge {
                from,
                len: bytes.len(),
                max: self.opts.max_packet_size,
            });
        }
        let chunk = decode_roster(bytes).map_err(|e| MembershipError::Malformed {
            from,
            reason: format!("roster: {e}"),
        })?;
        if chunk.sender.addr == self.local.addr {
            return Err(MembershipError::FromOurselves { from });
        }
        // Like foca, trust nothing from a member this node holds down.
        let sender_down = self
            .members
            .get(&chunk.sender.addr)
            .is_some_and(|e| e.id == chunk.sender && !e.state.is_active());
        if sender_down {
            return Ok(());
        }
        let reply_to = chunk.reply.then_some(chunk.sender.addr);
        // Only what is news here goes to foca (its apply is a linear search per member).
        let members: Vec<Member<_>> = chunk
            .members
            .into_iter()
            .filter(|m| {
                let known = self.members.get(&m.id().addr).is_some_and(|e| {
                    e.id == *m.id()
                        && e.incarnation >= m.incarnation()
                        && match m.state() {
                            State::Alive => true,
                            State::Suspect => {
                                e.state != MemberState::Alive || e.incarnation > m.incarnation()
                            }
                            State::Down => !e.state.is_active(),
                        }
                });
                !known
            })
            .collect();
        // Without news foca's list is unchanged, so it still equals the map: no full comparison (O(N)) is due.
        // A cluster's roster syncs follow the join storm in waves, and one full comparison per received chunk
        // made one virtual second after a 1,000-node join cost two to three times the others.
        let rescan = if members.is_empty() {
            Rescan::IfHinted
        } else {
            Rescan::Always
        };
        let result = self.with_swim(now_ms, |swim, rt| {
            swim.apply_many(members.into_iter(), false, rt)
        });
        if let Some(to) = reply_to {
            let last = self.roster.replies.get(&to).copied();
            if last.is_none_or(|t| now_ms.saturating_sub(t) >= self.opts.probe_interval_ms) {
                self.roster.replies.insert(to, now_ms);
                self.send_roster(to, false);
            }
        }
        self.after_call(now_ms, rescan);
        result.map_err(|e| MembershipError::Malformed {
            from,
            reason: format!("roster: {e}"),
        })
    }
}
