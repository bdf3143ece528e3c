//! The foca instance and the runtime it is called with.
//!
//! Guarantees: foca's requests during a call are queued, never acted on inside foca: packets to send in
//! order, notifications in order, timers in a queue ordered by (deadline, submission), and its
//! suspect-to-down timers handed to the wrapper's dynamic suspicion instead of being armed. Probe timers are
//! stretched by the local health multiplier given to [`SwimCore::call`]. The codec's observations of the call
//! (the [`Observed`] record) are drained with [`SwimCore::take_observed`].

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use foca::{Foca, Incarnation, Notification, OwnedNotification, Runtime, Timer, TimerToken};
use rand::rngs::SmallRng;

use super::codec::{BroadcastItem, Handler, Observed, ReceivedHeader, Shared, WireCodec, lock};
use super::identity::MemberId;

/// foca, as this wrapper instantiates it.
pub(crate) type Swim = Foca<MemberId, WireCodec, SmallRng, Handler>;

/// What foca asked of the runtime during calls, waiting to be acted on.
#[derive(Debug, Default)]
pub(crate) struct SwimRequests {
    /// Payloads to send, in order.
    pub(crate) transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    /// foca's timers by (deadline, submission sequence).
    pub(crate) timers: BTreeMap<(u64, u64), Timer<MemberId>>,
    seq: u64,
    /// Notifications, in order.
    pub(crate) notifications: Vec<OwnedNotification<MemberId>>,
    /// Suspect-to-down timers foca asked for: (member, incarnation, token), for the dynamic suspicion.
    pub(crate) suspected: Vec<(MemberId, Incarnation, TimerToken)>,
}

impl SwimRequests {
    /// foca's earliest timer deadline.
    pub(crate) fn next_timer_ms(&self) -> Option<u64> {
        self.timers.first_key_value().map(|(k, _)| k.0)
    }
}

/// foca's runtime for one call: queues sends, notifications and timers (probe timers stretched by the local
/// health multiplier; suspicion timers handed to the wrapper).
pub(crate) struct Rt<'a> {
    now_ms: u64,
    stretch: u64,
    buf: &'a mut SwimRequests,
}

impl Runtime<MemberId> for Rt<'_> {
    fn notify(&mut self, notification: Notification<'_, MemberId>) {
        self.buf.notifications.push(notification.to_owned());
    }

    fn send_to(&mut self, to: MemberId, data: &[u8]) {
        self.buf.transmits.push_back((to.addr, data.to_vec()));
    }

    fn submit_after(&mut self, event: Timer<MemberId>, after: Duration) {
        let mut ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        match &event {
            Timer::ChangeSuspectToDown {
                member_id,
                incarnation,
                token,
            } => {
                self.buf
                    .suspected
                    .push((member_id.clone(), *incarnation, *token));
                return;
            }
            Timer::ProbeRandomMember(_) | Timer::SendIndirectProbe { .. } => {
                ms = ms.saturating_mul(self.stretch);
            }
            _ => {}
        }
        self.buf.seq += 1;
        self.buf
            .timers
            .insert((self.now_ms.saturating_add(ms), self.buf.seq), event);
    }
}

/// What the codec and the broadcast handler saw since the last drain.
#[derive(Debug, Default)]
pub(crate) struct Observations {
    /// Headers of received packets.
    pub(crate) received: Vec<ReceivedHeader>,
    /// Probes sent: (target, probe number).
    pub(crate) pings: Vec<(MemberId, u8)>,
    /// Member updates decoded: identity, incarnation, state.
    pub(crate) decoded: Vec<(MemberId, Incarnation, foca::State)>,
    /// An update called this node suspect.
    pub(crate) self_suspected: bool,
    /// Custom broadcasts heard for the first time.
    pub(crate) broadcasts: Vec<BroadcastItem>,
}

/// foca, the record its codec shares with the wrapper, and what it asked for.
pub(crate) struct SwimCore {
    pub(crate) foca: Swim,
    pub(crate) shared: Shared,
    pub(crate) requests: SwimRequests,
}

impl SwimCore {
    /// Calls foca with a runtime at `now_ms` whose probe timers are stretched `stretch` times.
    pub(crate) fn call<T>(
        &mut self,
        now_ms: u64,
        stretch: u64,
        f: impl FnOnce(&mut Swim, Rt<'_>) -> Result<T, foca::Error>,
    ) -> Result<T, foca::Error> {
        self.set_now(now_ms);
        let rt = Rt {
            now_ms,
            stretch,
            buf: &mut self.requests,
        };
        f(&mut self.foca, rt)
    }

    /// Tells the codec the time of the coming foca call (it stamps first-seen broadcasts with it).
    pub(crate) fn set_now(&self, now_ms: u64) {
        lock(&self.shared).now_ms = now_ms;
    }

    /// Queues one custom broadcast for dissemination.
    pub(crate) fn broadcast(&mut self, item: &BroadcastItem, now_ms: u64) {
        self.set_now(now_ms);
        // Best effort: foca refuses only an item its handler cannot decode, and ours always decode.
        let _ = self.foca.add_broadcast(&item.encode());
    }

    /// Drains what the codec and the broadcast handler observed.
    pub(crate) fn take_observed(&self) -> Observations {
        let mut obs = lock(&self.shared);
        Observations {
            received: std::mem::take(&mut obs.received),
            pings: std::mem::take(&mut obs.pings_sent),
            decoded: std::mem::take(&mut obs.members_decoded),
            self_suspected: obs.self_suspected.take().is_some(),
            broadcasts: std::mem::take(&mut obs.broadcasts),
        }
    }

    /// This node's incarnation, as last written in a header it sent.
    pub(crate) fn local_incarnation(&self) -> Incarnation {
        lock(&self.shared).local_incarnation
    }

    /// Forgets custom broadcasts first seen `ttl_ms` or longer ago.
    pub(crate) fn prune_seen(&self, now_ms: u64, ttl_ms: u64) {
        lock(&self.shared)
            .seen
            .retain(|_, first| now_ms.saturating_sub(*first) < ttl_ms);
    }

    /// The record shared with the codec and handler (a new one for a fresh instance).
    pub(crate) fn new_shared(local_addr: SocketAddr, now_ms: u64) -> Shared {
        Arc::new(std::sync::Mutex::new(Observed {
            local_addr: Some(local_addr),
            now_ms,
            ..Observed::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_health_stretches_probe_timers_only() {
        let mut buf = SwimRequests::default();
        let mut rt = Rt {
            now_ms: 1_000,
            stretch: 3,
            buf: &mut buf,
        };
        let id = MemberId::new(
            "x",
            crate::ReplicaId::new(1),
            0,
            0,
            SocketAddr::from(([127, 0, 0, 1], 5)),
        );
        rt.submit_after(Timer::ProbeRandomMember(0), Duration::from_millis(1_000));
        rt.submit_after(
            Timer::SendIndirectProbe {
                probed_id: id.clone(),
                token: 0,
            },
            Duration::from_millis(500),
        );
        rt.submit_after(Timer::PeriodicGossip(0), Duration::from_millis(200));
        rt.submit_after(
            Timer::ChangeSuspectToDown {
                member_id: id,
                incarnation: 0,
                token: 0,
            },
            Duration::from_millis(4_000),
        );
        let dues: Vec<u64> = buf.timers.keys().map(|k| k.0).collect();
        assert_eq!(dues, vec![1_200, 2_500, 4_000]);
        assert_eq!(buf.suspected.len(), 1, "suspicion timers go to the wrapper");
    }
}
