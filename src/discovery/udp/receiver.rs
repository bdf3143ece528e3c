//! The receiver's decisions, pure: what to make of one datagram, which addresses are current, whether a beacon
//! is due. No sockets, no clock, no randomness: the times come in as arguments (`now`, a monotonic instant, for
//! expiry, replay memory and log pacing; `now_ms`, Unix milliseconds, for the beacons' freshness), and the
//! socket side ([`super::UdpDiscovery`]) turns a [`Verdict`] into counters, log lines, a wake-up and an answer.
//!
//! Guarantees:
//! - A datagram from a source outside `allowed_address_space` is judged before any byte of it is parsed.
//! - Nothing refused (outside the space, malformed, unauthenticated, stale, replayed, another service's, our
//!   own) is recorded as a candidate.
//! - A nonce is accepted once while it is remembered (at least `2 * MAX_SKEW`, beyond which its timestamp is
//!   stale anyway). The memories are bounded: [`MAX_NONCES`] nonces, [`MAX_LOGGED`] paced sources.
//! - An address is current while it was heard from within `expire_after`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ipnet::IpNet;

use super::codec::{
    Beacon, BeaconError, BeaconKey, BeaconKind, MAX_SKEW, NONCE_LEN, check, decode,
};
use crate::discovery::filter::in_space;

/// The shortest gap between two beacons this node broadcasts, however often the loop runs.
pub const MIN_BEACON_GAP: Duration = Duration::from_secs(1);
/// Beacons remembered for replay detection (beyond it, the oldest half is forgotten).
const MAX_NONCES: usize = 16_384;
/// Sources and reasons remembered for log pacing (beyond it, all are forgotten).
const MAX_LOGGED: usize = 1_024;
/// Rate limit of the rejection warnings: one per source address and reason per minute.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Who this node is and whom it listens to: fixed when the backend is built.
pub(super) struct Local {
    /// The key beacons are authenticated with.
    pub(super) key: BeaconKey,
    /// Our `discovery.service_name`: beacons of another are ignored.
    pub(super) service_name: String,
    /// Our node id.
    pub(super) node_id: String,
    /// The gossip address we advertise.
    pub(super) gossip_addr: SocketAddr,
    /// `discovery.allowed_address_space`.
    pub(super) allowed: Vec<IpNet>,
    /// How long an address stays current after it was last heard from.
    pub(super) expire_after: Duration,
}

/// What to make of one datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// From a source outside the allowed space; not parsed. `log`: a warning is due (rate limit).
    OutsideSpace {
        /// Whether to log it.
        log: bool,
    },
    /// Malformed, of another version, unauthenticated or stale. `log`: a warning is due (rate limit).
    Rejected {
        /// Why.
        error: BeaconError,
        /// Whether to log it.
        log: bool,
    },
    /// Our own beacon, looped back: ignored, not counted.
    Own,
    /// A valid beacon of another `service_name`.
    ForeignService(String),
    /// A nonce already seen: a replay.
    Replayed {
        /// The node id the beacon claims.
        node_id: String,
    },
    /// Accepted and recorded. `new`: the address was not current before (wake the discovery loop).
    Accepted {
        /// The beacon.
        beacon: Beacon,
        /// Whether the address is new.
        new: bool,
    },
}

impl Verdict {
    /// Whether to answer: an accepted beacon is answered, an accepted answer never is.
    pub(super) fn answer(&self) -> bool {
        matches!(self, Verdict::Accepted { beacon, .. } if beacon.kind == BeaconKind::Beacon)
    }
}

#[derive(Debug, Clone)]
struct Candidate {
    node_id: String,
    heard: Instant,
}

/// What the receiver remembers: who was heard and when, the nonces seen, the rejections logged, and when this
/// node last beaconed.
#[derive(Debug, Default)]
pub(super) struct Receiver {
    candidates: HashMap<SocketAddr, Candidate>,
    nonces: HashMap<[u8; NONCE_LEN], Instant>,
    logged: HashMap<(IpAddr, &'static str), Instant>,
    last_beacon: Option<Instant>,
}

/// The log-pacing label of a rejection.
fn reason(error: &BeaconError) -> &'static str {
    match error {
        BeaconError::Malformed(_) => "malformed",
        BeaconError::UnsupportedVersion(_) => "version",
        BeaconError::Unauthenticated => "unauthenticated",
        BeaconError::Stale { .. } => "stale",
        BeaconError::ForeignService(_) => "foreign",
    }
}

impl Receiver {
    /// Judges `datagram` from `src` at `now` (monotonic) and `now_ms` (Unix ms), and records what it accepts.
    pub(super) fn judge(
        &mut self,
        local: &Local,
        datagram: &[u8],
        src: SocketAddr,
        now: Instant,
        now_ms: u64,
    ) -> Verdict {
        if !in_space(src.ip(), &local.allowed) {
            let log = self.should_log(src.ip(), "outside", now);
            return Verdict::OutsideSpace { log };
        }
        let beacon = match decode(datagram, &local.key) {
            Ok(beacon) => beacon,
            Err(error) => return self.rejected(src, error, now),
        };
        if beacon.node_id == local.node_id && beacon.gossip_addr == local.gossip_addr {
            return Verdict::Own;
        }
        match check(&beacon, now_ms, &local.service_name) {
            Ok(()) => {}
            Err(BeaconError::ForeignService(other)) => return Verdict::ForeignService(other),
            Err(error) => return self.rejected(src, error, now),
        }
        if self.nonces.contains_key(&beacon.nonce) {
            return Verdict::Replayed {
                node_id: beacon.node_id,
            };
        }
        if self.nonces.len() >= MAX_NONCES {
            let horizon = 2 * MAX_SKEW;
            self.nonces
                .retain(|_, at| now.duration_since(*at) < horizon);
            if self.nonces.len() >= MAX_NONCES {
                self.nonces.clear();
            }
        }
        self.nonces.insert(beacon.nonce, now);
        let new = self
            .candidates
            .insert(
                beacon.gossip_addr,
                Candidate {
                    node_id: beacon.node_id.clone(),
                    heard: now,
                },
            )
            .is_none_or(|old| now.duration_since(old.heard) > local.expire_after);
        Verdict::Accepted { beacon, new }
    }

    fn rejected(&mut self, src: SocketAddr, error: BeaconError, now: Instant) -> Verdict {
        let log = self.should_log(src.ip(), reason(&error), now);
        Verdict::Rejected { error, log }
    }

    /// Whether to log a rejection of `reason` from `src` now (one per source and reason per [`LOG_EVERY`]).
    fn should_log(&mut self, src: IpAddr, reason: &'static str, now: Instant) -> bool {
        if self.logged.len() > MAX_LOGGED {
            self.logged.clear();
        }
        match self.logged.get(&(src, reason)) {
            Some(at) if now.duration_since(*at) < LOG_EVERY => false,
            _ => {
                self.logged.insert((src, reason), now);
                true
            }
        }
    }

    /// The addresses heard from within `expire_after` of `now`, sorted by node id then address; forgets the
    /// others.
    pub(super) fn current(&mut self, now: Instant, expire_after: Duration) -> Vec<SocketAddr> {
        self.candidates
            .retain(|_, c| now.duration_since(c.heard) <= expire_after);
        let mut out: Vec<(SocketAddr, String)> = self
            .candidates
            .iter()
            .map(|(addr, c)| (*addr, c.node_id.clone()))
            .collect();
        out.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
        out.into_iter().map(|(addr, _)| addr).collect()
    }

    /// Whether a beacon is due at `now` (none sent yet, or the last one [`MIN_BEACON_GAP`] ago); if so, records
    /// that one is sent now.
    pub(super) fn beacon_due(&mut self, now: Instant) -> bool {
        let due = self
            .last_beacon
            .is_none_or(|at| now.duration_since(at) >= MIN_BEACON_GAP);
        if due {
            self.last_beacon = Some(now);
        }
        due
    }

    /// Forgets every candidate (the receiver stopped).
    pub(super) fn forget_candidates(&mut self) {
        self.candidates.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::super::codec::encode;
    use super::super::codec::fixtures::*;
    use super::*;

    fn local(allowed: &[&str]) -> Local {
        Local {
            key: key(SECRET),
            service_name: "bifrost-cluster".into(),
            node_id: "node-a".into(),
            gossip_addr: "10.77.0.1:10101".parse().expect("addr"),
            allowed: allowed.iter().map(|n| n.parse().expect("net")).collect(),
            expire_after: Duration::from_secs(30),
        }
    }

    fn src(text: &str) -> SocketAddr {
        text.parse().expect("addr")
    }

    fn datagram(local: &Local, beacon: &Beacon) -> Vec<u8> {
        encode(beacon, &local.key).expect("encode")
    }

    #[test]
    fn a_valid_beacon_is_accepted_recorded_and_answered_once() {
        let l = local(&["10.77.0.0/24"]);
        let mut r = Receiver::default();
        let t0 = Instant::now();
        let b = beacon(BeaconKind::Beacon, "node-b", "10.77.0.2:10101", NOW, 1);
        let bytes = datagram(&l, &b);
        let verdict = r.judge(&l, &bytes, src("10.77.0.2:9999"), t0, NOW);
        assert_eq!(
            verdict,
            Verdict::Accepted {
                beacon: b.clone(),
                new: true
            }
        );
        assert!(verdict.answer());
        assert_eq!(r.current(t0, l.expire_after), vec![src("10.77.0.2:10101")]);
        // The same datagram again is a replay, not recorded again.
        assert_eq!(
            r.judge(&l, &bytes, src("10.77.0.2:9999"), t0, NOW),
            Verdict::Replayed {
                node_id: "node-b".into()
            }
        );
        // A fresh beacon of a known, current address is accepted but not new.
        let again = datagram(
            &l,
            &beacon(BeaconKind::Beacon, "node-b", "10.77.0.2:10101", NOW, 2),
        );
        assert!(matches!(
            r.judge(&l, &again, src("10.77.0.2:9999"), t0, NOW),
            Verdict::Accepted { new: false, .. }
        ));
    }

    #[test]
    fn an_answer_is_recorded_and_never_answered() {
        let l = local(&["10.77.0.0/24"]);
        let mut r = Receiver::default();
        let t0 = Instant::now();
        let bytes = datagram(
            &l,
            &beacon(BeaconKind::Answer, "node-c", "10.77.0.3:10101", NOW, 2),
        );
        let verdict = r.judge(&l, &bytes, src("10.77.0.3:9999"), t0, NOW);
        assert!(matches!(verdict, Verdict::Accepted { new: true, .. }));
        assert!(!verdict.answer());
        assert_eq!(r.current(t0, l.expire_after), vec![src("10.77.0.3:10101")]);
    }

    #[test]
    fn refused_datagrams_are_never_recorded_and_their_logs_are_paced() {
        let l = local(&["10.77.0.0/24"]);
        let mut r = Receiver::default();
        let t0 = Instant::now();
        let valid = datagram(
            &l,
            &beacon(BeaconKind::Beacon, "node-b", "10.77.0.2:10101", NOW, 1),
        );
        // Outside the space: judged before parsing (even garbage), logged once a minute per source.
        assert_eq!(
            r.judge(&l, b"garbage", src("10.78.0.2:9999"), t0, NOW),
            Verdict::OutsideSpace { log: true }
        );
        assert_eq!(
            r.judge(&l, &valid, src("10.78.0.2:9999"), t0, NOW),
            Verdict::OutsideSpace { log: false }
        );
        assert_eq!(
            r.judge(&l, &valid, src("10.78.0.2:9999"), t0 + LOG_EVERY, NOW),
            Verdict::OutsideSpace { log: true }
        );
        // Forged, stale, malformed: rejected, each reason paced on its own.
        let forged = encode(
            &beacon(BeaconKind::Beacon, "evil", "10.77.0.9:10101", NOW, 3),
            &key("another-cluster-secret-0123456789"),
        )
        .expect("encode");
        assert_eq!(
            r.judge(&l, &forged, src("10.77.0.9:9999"), t0, NOW),
            Verdict::Rejected {
                error: BeaconError::Unauthenticated,
                log: true
            }
        );
        assert_eq!(
            r.judge(&l, &forged, src("10.77.0.9:9999"), t0, NOW),
            Verdict::Rejected {
                error: BeaconError::Unauthenticated,
                log: false
            }
        );
        let stale = datagram(
            &l,
            &beacon(
                BeaconKind::Beacon,
                "node-d",
                "10.77.0.9:10101",
                NOW - 61_000,
                4,
            ),
        );
        assert!(matches!(
            r.judge(&l, &stale, src("10.77.0.9:9999"), t0, NOW),
            Verdict::Rejected {
                error: BeaconError::Stale { skew_ms: 61_000 },
                log: true
            }
        ));
        assert!(matches!(
            r.judge(&l, b"BFCD\x01short", src("10.77.0.9:9999"), t0, NOW),
            Verdict::Rejected {
                error: BeaconError::Malformed(_),
                log: true
            }
        ));
        // Another service's, and our own looped back.
        let mut foreign = beacon(BeaconKind::Beacon, "node-e", "10.77.0.5:10101", NOW, 5);
        foreign.service_name = "other".into();
        assert_eq!(
            r.judge(&l, &datagram(&l, &foreign), src("10.77.0.5:9999"), t0, NOW),
            Verdict::ForeignService("other".into())
        );
        let own = datagram(
            &l,
            &beacon(BeaconKind::Beacon, "node-a", "10.77.0.1:10101", NOW, 6),
        );
        assert_eq!(
            r.judge(&l, &own, src("10.77.0.1:9999"), t0, NOW),
            Verdict::Own
        );
        assert!(
            r.current(t0, l.expire_after).is_empty(),
            "nothing refused was recorded"
        );
    }

    #[test]
    fn silent_addresses_expire_and_are_sorted_by_node_id() {
        let l = local(&["10.77.0.0/24"]);
        let mut r = Receiver::default();
        let t0 = Instant::now();
        for (node, addr, nonce) in [
            ("node-z", "10.77.0.2:10101", 1),
            ("node-b", "10.77.0.3:10101", 2),
        ] {
            let bytes = datagram(&l, &beacon(BeaconKind::Answer, node, addr, NOW, nonce));
            assert!(matches!(
                r.judge(&l, &bytes, src("10.77.0.9:9999"), t0, NOW),
                Verdict::Accepted { .. }
            ));
        }
        assert_eq!(
            r.current(t0 + l.expire_after, l.expire_after),
            vec![src("10.77.0.3:10101"), src("10.77.0.2:10101")]
        );
        let later = t0 + l.expire_after + Duration::from_millis(1);
        assert!(r.current(later, l.expire_after).is_empty());
        // Heard again after it expired: new again.
        let bytes = datagram(
            &l,
            &beacon(BeaconKind::Answer, "node-z", "10.77.0.2:10101", NOW, 3),
        );
        assert!(matches!(
            r.judge(&l, &bytes, src("10.77.0.9:9999"), later, NOW),
            Verdict::Accepted { new: true, .. }
        ));
    }

    #[test]
    fn beacons_are_paced_by_the_minimum_gap() {
        let mut r = Receiver::default();
        let t0 = Instant::now();
        assert!(r.beacon_due(t0));
        assert!(!r.beacon_due(t0 + MIN_BEACON_GAP - Duration::from_millis(1)));
        assert!(r.beacon_due(t0 + MIN_BEACON_GAP));
        assert!(!r.beacon_due(t0 + MIN_BEACON_GAP));
    }

    #[test]
    fn the_nonce_memory_is_bounded() {
        let l = local(&["10.77.0.0/24"]);
        let mut r = Receiver::default();
        let t0 = Instant::now();
        for n in 0..MAX_NONCES {
            r.nonces.insert((n as u128).to_be_bytes(), t0);
        }
        let bytes = datagram(
            &l,
            &beacon(BeaconKind::Answer, "node-b", "10.77.0.2:10101", NOW, 0xee),
        );
        // Every remembered nonce is younger than the horizon: the memory is cleared rather than grown.
        assert!(matches!(
            r.judge(&l, &bytes, src("10.77.0.2:9999"), t0, NOW),
            Verdict::Accepted { .. }
        ));
        assert_eq!(r.nonces.len(), 1);
    }
}
