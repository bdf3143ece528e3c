//! Lifeguard local health awareness and this node's probe in flight.
//!
//! Guarantees: the local health multiplier `lhm` stays in `0..=max_local_health`; it goes up by one for a
//! probe of ours that got no ack, a suspicion about ourselves we had to refute, or a timer handled more than
//! half a probe interval late, and down by one for each answered probe. foca's probe timers are stretched
//! `1 + lhm` times ([`LocalHealth::stretch`]). Only the latest probe is tracked; it counts as answered by the
//! first direct ack with its number, or an indirect ack forwarded about its target, and only a direct ack
//! gives a round-trip sample.

use std::net::SocketAddr;

use super::Membership;
use super::codec::{ReceivedHeader, ReceivedKind};
use super::identity::MemberId;
use super::publication::Change;

/// This node's probe in flight (for local health, probe-based checks and round-trip times).
#[derive(Debug)]
struct ProbeTrack {
    target: MemberId,
    number: u8,
    sent_ms: u64,
    acked: bool,
}

/// The outcome of the probe foca is about to replace with the next one.
#[derive(Debug)]
pub(crate) enum ProbeOutcome {
    /// Its target answered (directly or indirectly).
    Answered(MemberId),
    /// Its target did not answer within the probe interval.
    Unanswered(MemberId),
}

/// The local health multiplier and the probe in flight.
#[derive(Debug)]
pub(crate) struct LocalHealth {
    lhm: u32,
    max: u32,
    probe: Option<ProbeTrack>,
}

impl LocalHealth {
    /// Healthy (`lhm` 0), with `max` as the ceiling.
    pub(crate) fn new(max: u32) -> LocalHealth {
        LocalHealth {
            lhm: 0,
            max,
            probe: None,
        }
    }

    /// The multiplier (0 = healthy).
    pub(crate) fn multiplier(&self) -> u32 {
        self.lhm
    }

    /// How many times foca's probe timers are stretched: `1 + lhm`.
    pub(crate) fn stretch(&self) -> u64 {
        1 + u64::from(self.lhm)
    }

    /// One step worse (up to the ceiling). True when the multiplier changed.
    pub(crate) fn raise(&mut self) -> bool {
        let next = (self.lhm + 1).min(self.max);
        let changed = next != self.lhm;
        self.lhm = next;
        changed
    }

    /// One step better (down to 0). True when the multiplier changed.
    pub(crate) fn lower(&mut self) -> bool {
        let changed = self.lhm > 0;
        self.lhm = self.lhm.saturating_sub(1);
        changed
    }

    /// Marks the probe in flight answered if one of `received` acks it; returns the round-trip sample (ms)
    /// of the first direct ack.
    pub(crate) fn note_acks(
        &mut self,
        received: &[ReceivedHeader],
        now_ms: u64,
    ) -> Option<(MemberId, f64)> {
        let p = self.probe.as_mut()?;
        let mut sample = None;
        for h in received {
            let acked = match h.kind {
                ReceivedKind::Ack(n) => p.target == h.src && p.number == n,
                ReceivedKind::ForwardedAck(origin, n) => p.target.addr == origin && p.number == n,
                ReceivedKind::Other => false,
            };
            if acked && !p.acked {
                p.acked = true;
                if let ReceivedKind::Ack(_) = h.kind {
                    sample = Some((p.target.clone(), now_ms.saturating_sub(p.sent_ms) as f64));
                }
            }
        }
        sample
    }

    /// Tracks the last of the probes foca just sent as the one in flight.
    pub(crate) fn note_sent(&mut self, pings: Vec<(MemberId, u8)>, now_ms: u64) {
        if let Some((target, number)) = pings.into_iter().last() {
            self.probe = Some(ProbeTrack {
                target,
                number,
                sent_ms: now_ms,
                acked: false,
            });
        }
    }

    /// Ends the probe in flight (foca is about to start the next one) and says how it went.
    pub(crate) fn finish_probe(&mut self) -> Option<ProbeOutcome> {
        let p = self.probe.take()?;
        Some(if p.acked {
            ProbeOutcome::Answered(p.target)
        } else {
            ProbeOutcome::Unanswered(p.target)
        })
    }
}

impl Membership {
    /// Lifeguard: one step worse; a changed multiplier is republished with the next soft change.
    pub(super) fn raise_local_health(&mut self) {
        if self.local_health.raise() {
            self.publication.mark(Change::Soft);
        }
    }

    /// Lifeguard: one step better.
    pub(super) fn lower_local_health(&mut self) {
        if self.local_health.lower() {
            self.publication.mark(Change::Soft);
        }
    }

    /// Called before foca starts the next probe: the previous one, if its target is still an active member,
    /// moves local health and counts as a check of the target (a failure when unanswered; a success when
    /// answered and SWIM alone decides health).
    pub(super) fn evaluate_probe(&mut self) {
        let Some(outcome) = self.local_health.finish_probe() else {
            return;
        };
        let target = match &outcome {
            ProbeOutcome::Answered(t) | ProbeOutcome::Unanswered(t) => t,
        };
        let addr: SocketAddr = target.addr;
        let active = self
            .members
            .get(&addr)
            .is_some_and(|e| e.id == *target && e.state.is_active());
        if !active {
            return;
        }
        match outcome {
            ProbeOutcome::Answered(_) => {
                self.lower_local_health();
                // Members whose data plane this node checks count only data-plane answers.
                if !self.owes_data_plane(addr) {
                    self.health_check(addr, true, "SWIM probe answered");
                }
            }
            ProbeOutcome::Unanswered(_) => {
                self.raise_local_health();
                self.health_check(
                    addr,
                    false,
                    "no SWIM ack (direct or indirect) within the probe interval",
                );
            }
        }
    }
}
