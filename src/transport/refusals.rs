//! Refused handshakes: why ([`RefusalReason`]), how many, and a log that stays quiet under a flood.
//!
//! # Guarantees
//!
//! - Every handshake that was refused or failed is counted, by [`Direction`] and [`RefusalReason`]
//!   ([`super::Transport::refusals`], `bifrost_transport_handshakes_refused_total` in `/metrics`). Counters
//!   only grow.
//! - The log is rate-limited per direction and reason: the first refusal is logged at `WARN` with the peer and
//!   the cause (at `INFO` when it is [routine](LogLevel::of): an outgoing handshake the peer closed without a
//!   TLS alert, which is what a peer that is stopping does); after it, at most one summary line per [`REFUSAL_LOG_INTERVAL_MS`] (one minute) says how many
//!   were refused since the last line, with the latest peer and cause. A summary is due at the first refusal
//!   after the interval, or, when refusals stopped, at the transport's next flush (every
//!   [`REFUSAL_FLUSH_EVERY_MS`]). So 500 handshakes without a certificate give one line, not 500, and the
//!   counter says 500.
//! - [`RefusalLog`] is sans-IO: time comes in as `now_ms` (any monotonic millisecond clock); it logs nothing
//!   itself, it returns what to log. Its memory is fixed: one slot per direction and reason.

use std::fmt;
use std::net::SocketAddr;

use crate::tls::diagnosis::{AlertCause, alert_cause, quic_crypto_alert};

/// How long after a refusal line the next line for the same direction and reason may come, in ms.
pub const REFUSAL_LOG_INTERVAL_MS: u64 = 60_000;

/// How often the transport checks for due summaries when no refusal arrives, in ms.
pub const REFUSAL_FLUSH_EVERY_MS: u64 = 10_000;

/// Which side refused or failed a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Somebody dialed this node and the handshake did not complete (the attacker's path).
    Incoming,
    /// This node dialed a peer and the handshake did not complete.
    Outgoing,
}

impl Direction {
    /// Both directions, in label order.
    pub const ALL: [Direction; 2] = [Direction::Incoming, Direction::Outgoing];

    /// `incoming` or `outgoing` (the metric's label).
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Incoming => "incoming",
            Direction::Outgoing => "outgoing",
        }
    }

    const fn index(self) -> usize {
        match self {
            Direction::Incoming => 0,
            Direction::Outgoing => 1,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a handshake was refused, from the TLS alert that ended it (sent by us or by the peer) or how the
/// connection ended. Finer than [`super::FailureKind`]; the label of the refusal metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum RefusalReason {
    /// The client sent no certificate (alert `certificate_required`).
    NoCertificate,
    /// A certificate from a CA this side does not trust (alert `unknown_ca`).
    UnknownCa,
    /// A certificate whose signature does not verify against the CA (alert `decrypt_error`): with cluster
    /// secrets, a peer holding another secret (the derived CAs share their name).
    BadSignature,
    /// A certificate outside its validity period, expired or not yet valid (alert `certificate_expired`).
    Expired,
    /// Any other certificate problem (bad encoding, wrong key usage, revoked, unknown).
    BadCertificate,
    /// No common application protocol: the peer does not speak `bifrost-cluster/1` (alert
    /// `no_application_protocol`).
    WrongAlpn,
    /// The TLS handshake failed for another reason (protocol version, cipher suites, a protocol violation).
    Handshake,
    /// No handshake completed within the connect timeout.
    Timeout,
    /// The peer closed or reset the connection during the handshake, without a TLS alert.
    Closed,
    /// Anything else (QUIC version mismatch, a transport error without an alert).
    Other,
}

impl RefusalReason {
    /// Every reason, in label order.
    pub const ALL: [RefusalReason; 10] = [
        RefusalReason::NoCertificate,
        RefusalReason::UnknownCa,
        RefusalReason::BadSignature,
        RefusalReason::Expired,
        RefusalReason::BadCertificate,
        RefusalReason::WrongAlpn,
        RefusalReason::Handshake,
        RefusalReason::Timeout,
        RefusalReason::Closed,
        RefusalReason::Other,
    ];

    /// The metric label: `no_certificate`, `unknown_ca`, `bad_signature`, `expired`, `bad_certificate`,
    /// `wrong_alpn`, `handshake`, `timeout`, `closed`, `other`.
    pub const fn as_str(self) -> &'static str {
        match self {
            RefusalReason::NoCertificate => "no_certificate",
            RefusalReason::UnknownCa => "unknown_ca",
            RefusalReason::BadSignature => "bad_signature",
            RefusalReason::Expired => "expired",
            RefusalReason::BadCertificate => "bad_certificate",
            RefusalReason::WrongAlpn => "wrong_alpn",
            RefusalReason::Handshake => "handshake",
            RefusalReason::Timeout => "timeout",
            RefusalReason::Closed => "closed",
            RefusalReason::Other => "other",
        }
    }

    const fn index(self) -> usize {
        match self {
            RefusalReason::NoCertificate => 0,
            RefusalReason::UnknownCa => 1,
            RefusalReason::BadSignature => 2,
            RefusalReason::Expired => 3,
            RefusalReason::BadCertificate => 4,
            RefusalReason::WrongAlpn => 5,
            RefusalReason::Handshake => 6,
            RefusalReason::Timeout => 7,
            RefusalReason::Closed => 8,
            RefusalReason::Other => 9,
        }
    }

    /// The reason for a TLS alert (by its code), whichever side sent it.
    pub fn from_alert(alert: u8) -> RefusalReason {
        match alert_cause(alert) {
            AlertCause::NoCertificate => RefusalReason::NoCertificate,
            AlertCause::UnknownCa => RefusalReason::UnknownCa,
            AlertCause::BadSignature => RefusalReason::BadSignature,
            AlertCause::Expired => RefusalReason::Expired,
            AlertCause::BadCertificate | AlertCause::CertificateStatus => {
                RefusalReason::BadCertificate
            }
            AlertCause::WrongAlpn => RefusalReason::WrongAlpn,
            AlertCause::Other => RefusalReason::Handshake,
        }
    }

    /// The reason a handshake ended with `error`; `None` when this side was closing (not a refusal).
    pub fn classify(error: &quinn::ConnectionError) -> Option<RefusalReason> {
        use quinn::ConnectionError as E;
        Some(match error {
            E::TransportError(e) => match quic_crypto_alert(u64::from(e.code)) {
                Some(alert) => RefusalReason::from_alert(alert),
                None => RefusalReason::Other,
            },
            E::ConnectionClosed(close) => match quic_crypto_alert(u64::from(close.error_code)) {
                Some(alert) => RefusalReason::from_alert(alert),
                None => RefusalReason::Closed,
            },
            E::ApplicationClosed(_) | E::Reset => RefusalReason::Closed,
            E::TimedOut => RefusalReason::Timeout,
            E::LocallyClosed => return None,
            E::VersionMismatch | E::CidsExhausted => RefusalReason::Other,
        })
    }
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The level a refusal line is logged at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Routine: nothing for an operator to do (still counted).
    Info,
    /// Something an operator must look at: a certificate, a stranger, a network that drops handshakes.
    Warn,
}

impl LogLevel {
    /// `Info` for an outgoing handshake the peer closed without a TLS alert ([`RefusalReason::Closed`]): a
    /// peer that is stopping refuses new connections, so every graceful stop of a cluster produces it. `Warn`
    /// for everything else: every incoming refusal (a stranger, a wrong certificate, an attack) and every
    /// outgoing failure with a TLS alert or a timeout.
    pub fn of(direction: Direction, reason: RefusalReason) -> LogLevel {
        match (direction, reason) {
            (Direction::Outgoing, RefusalReason::Closed) => LogLevel::Info,
            _ => LogLevel::Warn,
        }
    }
}

/// What to log for one refusal (or a flush).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusalLine {
    /// The first refusal for this direction and reason: log it in full.
    First,
    /// A summary: `refused` handshakes (this one included, for a summary returned by
    /// [`RefusalLog::record`]) since the line at `since_ms`; the latest came from `peer` with `detail`.
    Summary {
        /// The direction.
        direction: Direction,
        /// The reason.
        reason: RefusalReason,
        /// Refusals not logged since the last line.
        refused: u64,
        /// When the last line was logged (the caller's clock, ms).
        since_ms: u64,
        /// The latest refused peer.
        peer: SocketAddr,
        /// The latest cause in words.
        detail: String,
    },
}

#[derive(Debug, Clone, Default)]
struct Slot {
    total: u64,
    suppressed: u64,
    last_line_ms: Option<u64>,
    latest: Option<(SocketAddr, String)>,
}

/// Counts refusals and decides which to log (see the [module docs](self)). Sans-IO.
#[derive(Debug, Clone)]
pub struct RefusalLog {
    interval_ms: u64,
    slots: [[Slot; RefusalReason::ALL.len()]; Direction::ALL.len()],
}

impl Default for RefusalLog {
    fn default() -> Self {
        RefusalLog::new(REFUSAL_LOG_INTERVAL_MS)
    }
}

impl RefusalLog {
    /// A log that allows one line per direction and reason per `interval_ms` after the first.
    pub fn new(interval_ms: u64) -> RefusalLog {
        RefusalLog {
            interval_ms,
            slots: Default::default(),
        }
    }

    /// Counts one refusal at `now_ms` and says what to log: the first of its kind in full, a summary once the
    /// interval since the last line has passed, otherwise nothing (it is counted and summarized later).
    pub fn record(
        &mut self,
        direction: Direction,
        reason: RefusalReason,
        peer: SocketAddr,
        detail: &str,
        now_ms: u64,
    ) -> Option<RefusalLine> {
        let interval_ms = self.interval_ms;
        let slot = &mut self.slots[direction.index()][reason.index()];
        slot.total = slot.total.saturating_add(1);
        match slot.last_line_ms {
            None => {
                slot.last_line_ms = Some(now_ms);
                Some(RefusalLine::First)
            }
            Some(last) if now_ms.saturating_sub(last) >= interval_ms => {
                let refused = slot.suppressed.saturating_add(1);
                slot.suppressed = 0;
                slot.latest = None;
                slot.last_line_ms = Some(now_ms);
                Some(RefusalLine::Summary {
                    direction,
                    reason,
                    refused,
                    since_ms: last,
                    peer,
                    detail: detail.to_string(),
                })
            }
            Some(_) => {
                slot.suppressed = slot.suppressed.saturating_add(1);
                match &mut slot.latest {
                    Some((p, d)) => {
                        *p = peer;
                        d.clear();
                        d.push_str(detail);
                    }
                    None => slot.latest = Some((peer, detail.to_string())),
                }
                None
            }
        }
    }

    /// Summaries that are due at `now_ms`: refusals suppressed since a line at least one interval old.
    pub fn flush(&mut self, now_ms: u64) -> Vec<RefusalLine> {
        let mut lines = Vec::new();
        for direction in Direction::ALL {
            for reason in RefusalReason::ALL {
                let slot = &mut self.slots[direction.index()][reason.index()];
                let Some(last) = slot.last_line_ms else {
                    continue;
                };
                if slot.suppressed == 0 || now_ms.saturating_sub(last) < self.interval_ms {
                    continue;
                }
                let Some((peer, detail)) = slot.latest.take() else {
                    continue;
                };
                lines.push(RefusalLine::Summary {
                    direction,
                    reason,
                    refused: slot.suppressed,
                    since_ms: last,
                    peer,
                    detail,
                });
                slot.suppressed = 0;
                slot.last_line_ms = Some(now_ms);
            }
        }
        lines
    }

    /// Refusals counted for `direction` and `reason` since the log was built.
    pub fn count(&self, direction: Direction, reason: RefusalReason) -> u64 {
        self.slots[direction.index()][reason.index()].total
    }

    /// Every non-zero count, by direction then reason.
    pub fn counts(&self) -> Vec<(Direction, RefusalReason, u64)> {
        let mut out = Vec::new();
        for direction in Direction::ALL {
            for reason in RefusalReason::ALL {
                let n = self.count(direction, reason);
                if n > 0 {
                    out.push((direction, reason, n));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn only_an_outgoing_handshake_closed_without_alert_is_routine() {
        for direction in Direction::ALL {
            for reason in RefusalReason::ALL {
                let routine = direction == Direction::Outgoing && reason == RefusalReason::Closed;
                let expected = if routine {
                    LogLevel::Info
                } else {
                    LogLevel::Warn
                };
                assert_eq!(
                    LogLevel::of(direction, reason),
                    expected,
                    "{direction} {reason}"
                );
            }
        }
    }

    #[test]
    fn a_flood_gives_one_line_then_one_summary_per_interval_and_counts_everything() {
        let mut log = RefusalLog::new(60_000);
        let (inc, no_cert) = (Direction::Incoming, RefusalReason::NoCertificate);
        let mut lines = Vec::new();
        // 500 refusals over 2.5 minutes, one every 300 ms.
        for i in 0..500u64 {
            let now = 1_000 + i * 300;
            if let Some(line) = log.record(inc, no_cert, peer(40_000 + i as u16), "no cert", now) {
                lines.push((now, line));
            }
            lines.extend(log.flush(now).into_iter().map(|l| (now, l)));
        }
        assert_eq!(log.count(inc, no_cert), 500);
        assert_eq!(lines[0], (1_000, RefusalLine::First));
        let summaries: Vec<u64> = lines[1..]
            .iter()
            .map(|(_, l)| match l {
                RefusalLine::Summary { refused, .. } => *refused,
                RefusalLine::First => panic!("a second first line"),
            })
            .collect();
        // Lines at 0 s, 60 s and 120 s; the summaries cover everything in between.
        assert_eq!(summaries, vec![200, 200]);
        // The rest is flushed once the interval has passed, even with no new refusal.
        let end = 1_000 + 499 * 300;
        assert!(log.flush(end + 1_000).is_empty());
        let tail = log.flush(1_000 + 120_000 + 60_000);
        assert_eq!(tail.len(), 1);
        let RefusalLine::Summary {
            refused,
            peer: p,
            detail,
            since_ms,
            ..
        } = &tail[0]
        else {
            panic!("{tail:?}");
        };
        assert_eq!(*refused, 99);
        assert_eq!(*p, peer(40_000 + 499));
        assert_eq!(detail, "no cert");
        assert_eq!(*since_ms, 1_000 + 120_000);
        assert_eq!(1 + summaries.iter().sum::<u64>() + refused, 500);
        assert!(log.flush(u64::MAX).is_empty(), "nothing left to report");
    }

    #[test]
    fn reasons_and_directions_are_limited_and_counted_separately() {
        let mut log = RefusalLog::new(60_000);
        let first = |log: &mut RefusalLog, d, r| log.record(d, r, peer(1), "x", 5);
        assert_eq!(
            first(&mut log, Direction::Incoming, RefusalReason::NoCertificate),
            Some(RefusalLine::First)
        );
        assert_eq!(
            first(&mut log, Direction::Incoming, RefusalReason::BadSignature),
            Some(RefusalLine::First)
        );
        assert_eq!(
            first(&mut log, Direction::Outgoing, RefusalReason::NoCertificate),
            Some(RefusalLine::First)
        );
        assert_eq!(
            first(&mut log, Direction::Incoming, RefusalReason::NoCertificate),
            None
        );
        assert_eq!(
            log.counts(),
            vec![
                (Direction::Incoming, RefusalReason::NoCertificate, 2),
                (Direction::Incoming, RefusalReason::BadSignature, 1),
                (Direction::Outgoing, RefusalReason::NoCertificate, 1),
            ]
        );
    }

    #[test]
    fn alerts_map_to_reasons() {
        use rustls::AlertDescription as A;
        let cases = [
            (A::CertificateRequired, RefusalReason::NoCertificate),
            (A::UnknownCA, RefusalReason::UnknownCa),
            (A::DecryptError, RefusalReason::BadSignature),
            (A::CertificateExpired, RefusalReason::Expired),
            (A::BadCertificate, RefusalReason::BadCertificate),
            (A::NoApplicationProtocol, RefusalReason::WrongAlpn),
            (A::ProtocolVersion, RefusalReason::Handshake),
        ];
        for (alert, reason) in cases {
            assert_eq!(
                RefusalReason::from_alert(u8::from(alert)),
                reason,
                "{alert:?}"
            );
        }
        let labels: std::collections::BTreeSet<&str> =
            RefusalReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), RefusalReason::ALL.len());
        for (i, r) in RefusalReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
