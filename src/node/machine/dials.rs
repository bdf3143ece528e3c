//! Dials to addresses without a link: one dial per address at a time, exponential backoff after failures,
//! and the membership frames waiting for a dial (a bounded few; the oldest goes first).

use std::collections::VecDeque;

use crate::fixed_hash::HashMap;
use std::net::SocketAddr;

use bytes::Bytes;

/// Membership frames kept per address while a dial is in flight (oldest dropped).
pub(crate) const MAX_PENDING_PER_DIAL: usize = 32;
/// Backoff after the first failed dial to an address, doubling per failure up to [`MAX_DIAL_BACKOFF_MS`].
pub(crate) const FIRST_DIAL_BACKOFF_MS: u64 = 250;
/// Longest wait between dials to an address that keeps failing.
pub(crate) const MAX_DIAL_BACKOFF_MS: u64 = 5_000;

/// Dials to one address.
#[derive(Debug, Default)]
struct DialState {
    in_flight: bool,
    /// Membership frames waiting for the dial.
    pending: VecDeque<Bytes>,
    failures: u32,
    retry_at_ms: u64,
    last_error: Option<String>,
}

/// What [`DialTable::request`] decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DialDecision {
    /// Start a dial now.
    Dial,
    /// A dial is in flight (the frame, if any, waits for it).
    InFlight,
    /// Backing off after failures: the frame is dropped, as a datagram to a dead host would be.
    BackingOff,
}

/// Every address being dialed or backed off from.
#[derive(Debug, Default)]
pub(crate) struct DialTable {
    dials: HashMap<SocketAddr, DialState>,
}

impl DialTable {
    /// Asks for a link to `addr` at `now_ms`, with `frame` to send once it is up.
    pub(crate) fn request(
        &mut self,
        addr: SocketAddr,
        frame: Option<Bytes>,
        now_ms: u64,
    ) -> DialDecision {
        let dial = self.dials.entry(addr).or_default();
        let decision = if dial.in_flight {
            DialDecision::InFlight
        } else if now_ms < dial.retry_at_ms {
            return DialDecision::BackingOff;
        } else {
            dial.in_flight = true;
            DialDecision::Dial
        };
        if let Some(frame) = frame {
            if dial.pending.len() == MAX_PENDING_PER_DIAL {
                dial.pending.pop_front();
            }
            dial.pending.push_back(frame);
        }
        decision
    }

    /// The dial to `addr` succeeded: its failures are forgotten; returns the frames that waited for it.
    pub(crate) fn succeeded(&mut self, addr: SocketAddr) -> VecDeque<Bytes> {
        self.dials
            .get_mut(&addr)
            .map(|d| {
                d.in_flight = false;
                d.failures = 0;
                d.last_error = None;
                std::mem::take(&mut d.pending)
            })
            .unwrap_or_default()
    }

    /// The dial to `addr` failed at `now_ms`: backs off and returns the frames that waited for it and the number
    /// of failures in a row.
    pub(crate) fn failed(
        &mut self,
        addr: SocketAddr,
        error: String,
        now_ms: u64,
    ) -> (VecDeque<Bytes>, u32) {
        let dial = self.dials.entry(addr).or_default();
        dial.in_flight = false;
        let pending = std::mem::take(&mut dial.pending);
        dial.failures = dial.failures.saturating_add(1);
        let backoff = FIRST_DIAL_BACKOFF_MS
            .saturating_mul(1 << dial.failures.saturating_sub(1).min(16))
            .min(MAX_DIAL_BACKOFF_MS);
        dial.retry_at_ms = now_ms.saturating_add(backoff);
        dial.last_error = Some(error);
        (pending, dial.failures)
    }

    /// Forgets `addr` (it is this node itself).
    pub(crate) fn forget(&mut self, addr: SocketAddr) {
        self.dials.remove(&addr);
    }

    /// Why `addr` has no link, for the "failed to join cluster" line.
    pub(crate) fn describe(&self, addr: SocketAddr) -> String {
        match self.dials.get(&addr) {
            Some(d) if d.in_flight => format!("{addr}: dialing, no answer yet"),
            Some(DialState {
                last_error: Some(error),
                ..
            }) => format!("{addr}: {error}"),
            _ => format!("{addr}: no answer"),
        }
    }

    /// Forgets dial state nobody uses any more: not in flight, nothing pending, not a join target, and idle
    /// since `idle_before_ms`.
    pub(crate) fn prune(&mut self, targets: &[SocketAddr], idle_after_ms: u64, now_ms: u64) {
        self.dials.retain(|addr, d| {
            d.in_flight
                || !d.pending.is_empty()
                || targets.contains(addr)
                || d.retry_at_ms.saturating_add(idle_after_ms) > now_ms
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:10101".parse().unwrap()
    }

    #[test]
    fn one_dial_at_a_time_then_backoff_doubles_to_its_cap() {
        let mut t = DialTable::default();
        assert_eq!(
            t.request(addr(), Some(Bytes::from_static(b"a")), 0),
            DialDecision::Dial
        );
        assert_eq!(
            t.request(addr(), Some(Bytes::from_static(b"b")), 1),
            DialDecision::InFlight
        );
        let (pending, failures) = t.failed(addr(), "refused".into(), 10);
        assert_eq!((pending.len(), failures), (2, 1));
        assert_eq!(t.request(addr(), None, 10 + 249), DialDecision::BackingOff);
        assert_eq!(t.request(addr(), None, 10 + 250), DialDecision::Dial);
        let mut at = 260;
        for n in 2..10 {
            let (_, failures) = t.failed(addr(), "refused".into(), at);
            assert_eq!(failures, n);
            let backoff = (250u64 << (n - 1)).min(MAX_DIAL_BACKOFF_MS);
            assert_eq!(
                t.request(addr(), None, at + backoff - 1),
                DialDecision::BackingOff
            );
            assert_eq!(t.request(addr(), None, at + backoff), DialDecision::Dial);
            at += backoff;
        }
        assert!(t.succeeded(addr()).is_empty());
        assert_eq!(t.request(addr(), None, at), DialDecision::Dial);
    }

    #[test]
    fn pending_frames_are_bounded_oldest_first() {
        let mut t = DialTable::default();
        for i in 0..(MAX_PENDING_PER_DIAL + 5) {
            t.request(addr(), Some(Bytes::from(vec![i as u8])), 0);
        }
        let pending = t.succeeded(addr());
        assert_eq!(pending.len(), MAX_PENDING_PER_DIAL);
        assert_eq!(pending[0][0], 5);
    }
}
