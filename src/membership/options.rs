//! Timing and health options, their defaults, their constraints, and how they scale with the cluster size.
//!
//! Guarantees: every default is a `const` of [`MembershipOptions`] and written once here; every constraint is
//! checked once, by [`MembershipOptions::validate`] (called by [`super::Membership::new`]), and a violation is an
//! [`OptionsError`] naming the field. Code downstream of validation relies on the constraints (the non-zero
//! values reach foca as [`ValidOptions`]' `NonZero*` fields) instead of guarding against them again.

use std::num::{NonZeroU8, NonZeroUsize};
use std::ops::Deref;
use std::time::Duration;

use crate::config::GossipHealthConfig;

/// The health thresholds of `cluster_config.gossip.config` (see [`super`] for what a check is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthOptions {
    /// Bound on one check, in ms: a member whose data plane gives no answer for this long gets one failed
    /// check (and another after each further period of silence). From `timeout_seconds` × 1000.
    /// Default: 10 000. Must be ≥ 1.
    pub timeout_ms: u64,
    /// Consecutive successful checks that mark a member healthy. Default: 3. Must be ≥ 1.
    pub success_threshold: u32,
    /// Consecutive failed checks that mark a member unhealthy. Default: 3. Must be ≥ 1.
    pub failure_threshold: u32,
    /// When true (the node's mode), only data-plane answers ([`super::Membership::record_data_plane`]) count
    /// as successful checks, a member starts unhealthy until `success_threshold` of them arrived, and data-plane
    /// silence longer than `timeout_ms` is a failure. When false (membership alone: tests, tools), a member
    /// starts healthy and this node's own SWIM probes count as checks too. Default: true.
    pub require_data_plane: bool,
}

impl Default for HealthOptions {
    fn default() -> Self {
        HealthOptions::from(&GossipHealthConfig::default())
    }
}

impl From<&GossipHealthConfig> for HealthOptions {
    fn from(c: &GossipHealthConfig) -> Self {
        HealthOptions {
            timeout_ms: u64::from(c.timeout_seconds).saturating_mul(1000),
            success_threshold: c.success_threshold,
            failure_threshold: c.failure_threshold,
            require_data_plane: true,
        }
    }
}

impl From<GossipHealthConfig> for HealthOptions {
    fn from(c: GossipHealthConfig) -> Self {
        HealthOptions::from(&c)
    }
}

/// Options of the membership state machine. Durations are in milliseconds of the caller's clock.
///
/// The defaults follow hashicorp memberlist's LAN profile (probe every 1 s, 500 ms probe timeout, 3
/// indirect probes, suspicion multiplier 4, retransmit multiplier 4, gossip to 3 members every 200 ms) with
/// Lifeguard's additions (suspicion max multiplier 6, 3 confirmations, local health up to 8).
#[derive(Debug, Clone, PartialEq)]
pub struct MembershipOptions {
    /// How often one member is probed. Default: 1 000. Must be > `probe_timeout_ms`; stretched by the local
    /// health multiplier.
    pub probe_interval_ms: u64,
    /// How long to wait for a direct ack before asking others to probe indirectly. Default: 500. Must be ≥ 1
    /// and < `probe_interval_ms`; stretched by the local health multiplier. Set it to a high percentile of
    /// the transport's round-trip time.
    pub probe_timeout_ms: u64,
    /// Members asked to probe indirectly after a missed ack (also the fan-out of a leave). Default: 3.
    /// Must be ≥ 1.
    pub indirect_probes: usize,
    /// How often pending updates are gossiped. Default: 200. Must be ≥ 1.
    pub gossip_interval_ms: u64,
    /// Members each gossip round goes to. Default: 3. Must be ≥ 1.
    pub gossip_fanout: usize,
    /// Each update is sent `retransmit_mult × ⌈log10(N + 1)⌉` times (N: live members). Default: 4.
    /// Must be ≥ 1.
    pub retransmit_mult: u32,
    /// Minimum suspicion timeout: `suspicion_mult × max(1, log10(N)) × probe_interval_ms`. Default: 4.
    /// Must be ≥ 1.
    pub suspicion_mult: u32,
    /// Maximum suspicion timeout, as a multiple of the minimum (Lifeguard's dynamic suspicion starts here).
    /// Default: 6. Must be ≥ 1.
    pub suspicion_max_mult: u32,
    /// Independent confirmations (K) that bring the suspicion timeout down to its minimum. Default: 3.
    /// Lowered to 0 when fewer than K + 2 members are live (then the minimum applies at once).
    pub suspicion_confirmations: u32,
    /// Ceiling of the local health multiplier (Lifeguard LHM): probe interval and timeout are multiplied
    /// by `1 + lhm`, `lhm` in `0..=max_local_health`. Default: 8. 0 disables local health awareness.
    pub max_local_health: u32,
    /// How often this node announces itself to one random live member, to learn members it missed.
    /// Default: 30 000. Must be ≥ 1.
    pub announce_interval_ms: u64,
    /// How often this node announces itself to two members it believes down, so a healed partition merges
    /// back without the caller's help. Default: 10 000. Must be ≥ 1.
    pub reconnect_interval_ms: u64,
    /// Push-pull roster sync (the wrapper's full-state exchange, like memberlist's push-pull): every this
    /// many ms, scaled by `⌈log2(N) − log2(32)⌉ + 1` above 32 live members, this node sends its whole member
    /// list to one random live member, which answers with its own. Also done once right after joining, so a
    /// newcomer learns the full roster in one round trip (foca's join feed holds one packet of members).
    /// Default: 30 000. 0: only after joining.
    pub roster_sync_interval_ms: u64,
    /// How long a down or left member stays in the table before it is forgotten. Default: 3 600 000 (1 h).
    /// Must be ≥ 1.
    pub remove_down_after_ms: u64,
    /// Largest membership payload produced or accepted, in bytes. Must fit one transport datagram after the
    /// node's framing. Default: 1 100. Range 256..=65 535.
    pub max_packet_size: usize,
    /// Minimum spacing of snapshot republications caused only by `last_seen_ms` / `rtt_ms` changes. State
    /// and health changes are published before the call returns. Default: 1 000.
    pub publish_interval_ms: u64,
    /// Health thresholds (from `gossip.config`).
    pub health: HealthOptions,
}

impl MembershipOptions {
    /// Default `probe_interval_ms`.
    pub const DEFAULT_PROBE_INTERVAL_MS: u64 = 1_000;
    /// Default `probe_timeout_ms`.
    pub const DEFAULT_PROBE_TIMEOUT_MS: u64 = 500;
    /// Default `indirect_probes`.
    pub const DEFAULT_INDIRECT_PROBES: usize = 3;
    /// Default `gossip_interval_ms`.
    pub const DEFAULT_GOSSIP_INTERVAL_MS: u64 = 200;
    /// Default `gossip_fanout`.
    pub const DEFAULT_GOSSIP_FANOUT: usize = 3;
    /// Default `retransmit_mult`.
    pub const DEFAULT_RETRANSMIT_MULT: u32 = 4;
    /// Default `suspicion_mult`.
    pub const DEFAULT_SUSPICION_MULT: u32 = 4;
    /// Default `suspicion_max_mult`.
    pub const DEFAULT_SUSPICION_MAX_MULT: u32 = 6;
    /// Default `suspicion_confirmations`.
    pub const DEFAULT_SUSPICION_CONFIRMATIONS: u32 = 3;
    /// Default `max_local_health`.
    pub const DEFAULT_MAX_LOCAL_HEALTH: u32 = 8;
    /// Default `announce_interval_ms`.
    pub const DEFAULT_ANNOUNCE_INTERVAL_MS: u64 = 30_000;
    /// Default `reconnect_interval_ms`.
    pub const DEFAULT_RECONNECT_INTERVAL_MS: u64 = 10_000;
    /// Default `roster_sync_interval_ms`.
    pub const DEFAULT_ROSTER_SYNC_INTERVAL_MS: u64 = 30_000;
    /// Default `remove_down_after_ms` (1 h).
    pub const DEFAULT_REMOVE_DOWN_AFTER_MS: u64 = 3_600_000;
    /// Default `max_packet_size`.
    pub const DEFAULT_MAX_PACKET_SIZE: usize = 1_100;
    /// Allowed `max_packet_size`.
    pub const MAX_PACKET_SIZE_RANGE: std::ops::RangeInclusive<usize> = 256..=65_535;
    /// Default `publish_interval_ms`.
    pub const DEFAULT_PUBLISH_INTERVAL_MS: u64 = 1_000;
}

impl Default for MembershipOptions {
    fn default() -> Self {
        MembershipOptions {
            probe_interval_ms: Self::DEFAULT_PROBE_INTERVAL_MS,
            probe_timeout_ms: Self::DEFAULT_PROBE_TIMEOUT_MS,
            indirect_probes: Self::DEFAULT_INDIRECT_PROBES,
            gossip_interval_ms: Self::DEFAULT_GOSSIP_INTERVAL_MS,
            gossip_fanout: Self::DEFAULT_GOSSIP_FANOUT,
            retransmit_mult: Self::DEFAULT_RETRANSMIT_MULT,
            suspicion_mult: Self::DEFAULT_SUSPICION_MULT,
            suspicion_max_mult: Self::DEFAULT_SUSPICION_MAX_MULT,
            suspicion_confirmations: Self::DEFAULT_SUSPICION_CONFIRMATIONS,
            max_local_health: Self::DEFAULT_MAX_LOCAL_HEALTH,
            announce_interval_ms: Self::DEFAULT_ANNOUNCE_INTERVAL_MS,
            reconnect_interval_ms: Self::DEFAULT_RECONNECT_INTERVAL_MS,
            roster_sync_interval_ms: Self::DEFAULT_ROSTER_SYNC_INTERVAL_MS,
            remove_down_after_ms: Self::DEFAULT_REMOVE_DOWN_AFTER_MS,
            max_packet_size: Self::DEFAULT_MAX_PACKET_SIZE,
            publish_interval_ms: Self::DEFAULT_PUBLISH_INTERVAL_MS,
            health: HealthOptions::default(),
        }
    }
}

impl From<&GossipHealthConfig> for MembershipOptions {
    /// The defaults, with the health thresholds of `gossip.config`.
    fn from(c: &GossipHealthConfig) -> Self {
        MembershipOptions {
            health: HealthOptions::from(c),
            ..MembershipOptions::default()
        }
    }
}

impl From<GossipHealthConfig> for MembershipOptions {
    fn from(c: GossipHealthConfig) -> Self {
        MembershipOptions::from(&c)
    }
}

impl MembershipOptions {
    /// Checks the constraints documented on each field; the error names the field.
    pub fn validate(&self) -> Result<(), OptionsError> {
        ValidOptions::new(self.clone()).map(|_| ())
    }

    /// Times each update is retransmitted with `live` members (self included): memberlist's
    /// `retransmit_mult × ⌈log10(N + 1)⌉`, clamped to 1..=255.
    pub fn max_transmissions(&self, live: usize) -> u8 {
        self.max_transmissions_nonzero(live).get()
    }

    /// [`MembershipOptions::max_transmissions`] as the non-zero count foca takes: 1 + the excess over 1,
    /// clamped to 0..=254 (the same value, with no fallback needed).
    fn max_transmissions_nonzero(&self, live: usize) -> NonZeroU8 {
        let scale = (live as f64 + 1.0).log10().ceil().max(1.0);
        let excess = (f64::from(self.retransmit_mult) * scale - 1.0).clamp(0.0, 254.0) as u8;
        NonZeroU8::MIN.saturating_add(excess)
    }

    /// Minimum suspicion timeout with `live` members (self included), in ms:
    /// `suspicion_mult × max(1, log10(N)) × probe_interval_ms` (memberlist's formula).
    pub fn suspicion_min_ms(&self, live: usize) -> u64 {
        // log10(0) is -inf: the `max` covers an empty count as well.
        let scale = (live as f64).log10().max(1.0);
        (f64::from(self.suspicion_mult) * scale * self.probe_interval_ms as f64).round() as u64
    }

    /// Roster sync period with `live` members, in ms (memberlist's push-pull scaling); `None` when disabled.
    pub fn roster_sync_ms(&self, live: usize) -> Option<u64> {
        if self.roster_sync_interval_ms == 0 {
            return None;
        }
        let mult = if live <= 32 {
            1
        } else {
            ((live as f64).log2() - 5.0).ceil() as u64 + 1
        };
        Some(self.roster_sync_interval_ms.saturating_mul(mult))
    }

    /// Maximum suspicion timeout with `live` members, in ms: `suspicion_max_mult × min`.
    pub fn suspicion_max_ms(&self, live: usize) -> u64 {
        self.suspicion_min_ms(live)
            .saturating_mul(u64::from(self.suspicion_max_mult))
    }

    /// The confirmations K used with `live` members: `suspicion_confirmations`, or 0 when fewer than K + 2
    /// members are live (memberlist's rule).
    pub fn suspicion_k(&self, live: usize) -> u32 {
        let k = self.suspicion_confirmations;
        if (live as u64) < u64::from(k) + 2 {
            0
        } else {
            k
        }
    }
}

/// Why [`MembershipOptions`] were refused: the field and the constraint it breaks. The `Display` text names
/// the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// A field documented "must be ≥ 1" is 0.
    #[error("{field} must be at least 1")]
    Zero {
        /// The field (`health.` prefixed for the health thresholds).
        field: &'static str,
    },
    /// `probe_timeout_ms` is not below `probe_interval_ms`.
    #[error(
        "probe_timeout_ms ({timeout_ms}) must be smaller than probe_interval_ms ({interval_ms})"
    )]
    ProbeTimeoutNotBelowInterval {
        /// `probe_timeout_ms`.
        timeout_ms: u64,
        /// `probe_interval_ms`.
        interval_ms: u64,
    },
    /// `max_packet_size` outside [`MembershipOptions::MAX_PACKET_SIZE_RANGE`].
    #[error("max_packet_size must be in 256..=65535, got {0}")]
    PacketSizeOutOfRange(usize),
}

impl OptionsError {
    /// The field that breaks its constraint.
    pub fn field(&self) -> &'static str {
        match self {
            OptionsError::Zero { field } => field,
            OptionsError::ProbeTimeoutNotBelowInterval { .. } => "probe_timeout_ms",
            OptionsError::PacketSizeOutOfRange(_) => "max_packet_size",
        }
    }
}

/// Options that passed [`MembershipOptions::validate`], with the values foca needs non-zero already typed so.
/// Reads as the [`MembershipOptions`] it holds.
#[derive(Debug, Clone)]
pub(crate) struct ValidOptions {
    options: MembershipOptions,
    indirect_probes: NonZeroUsize,
    gossip_fanout: NonZeroUsize,
    max_packet_size: NonZeroUsize,
}

/// Members foca announces itself to per periodic announce to members it holds down.
const DOWN_ANNOUNCE_FANOUT: NonZeroUsize = NonZeroUsize::MIN.saturating_add(1);

impl ValidOptions {
    /// Checks every documented constraint, in field order; the first violation is the error.
    pub(crate) fn new(options: MembershipOptions) -> Result<ValidOptions, OptionsError> {
        let o = &options;
        let positive = [
            ("probe_timeout_ms", o.probe_timeout_ms),
            ("gossip_interval_ms", o.gossip_interval_ms),
            ("gossip_fanout", o.gossip_fanout as u64),
            ("indirect_probes", o.indirect_probes as u64),
            ("retransmit_mult", u64::from(o.retransmit_mult)),
            ("suspicion_mult", u64::from(o.suspicion_mult)),
            ("suspicion_max_mult", u64::from(o.suspicion_max_mult)),
            ("announce_interval_ms", o.announce_interval_ms),
            ("reconnect_interval_ms", o.reconnect_interval_ms),
            ("remove_down_after_ms", o.remove_down_after_ms),
            ("health.timeout_ms", o.health.timeout_ms),
            (
                "health.success_threshold",
                u64::from(o.health.success_threshold),
            ),
            (
                "health.failure_threshold",
                u64::from(o.health.failure_threshold),
            ),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(OptionsError::Zero { field });
        }
        if o.probe_timeout_ms >= o.probe_interval_ms {
            return Err(OptionsError::ProbeTimeoutNotBelowInterval {
                timeout_ms: o.probe_timeout_ms,
                interval_ms: o.probe_interval_ms,
            });
        }
        if !MembershipOptions::MAX_PACKET_SIZE_RANGE.contains(&o.max_packet_size) {
            return Err(OptionsError::PacketSizeOutOfRange(o.max_packet_size));
        }
        let nonzero = |field: &'static str, v: usize| {
            NonZeroUsize::new(v).ok_or(OptionsError::Zero { field })
        };
        Ok(ValidOptions {
            indirect_probes: nonzero("indirect_probes", o.indirect_probes)?,
            gossip_fanout: nonzero("gossip_fanout", o.gossip_fanout)?,
            max_packet_size: nonzero("max_packet_size", o.max_packet_size)?,
            options,
        })
    }

    /// The options as given.
    pub(crate) fn options(&self) -> &MembershipOptions {
        &self.options
    }

    /// The foca configuration for `live` members. The suspicion timer foca asks for is replaced by the
    /// wrapper's dynamic one; the probe timers are stretched by the local health multiplier.
    pub(crate) fn foca_config(&self, live: usize) -> foca::Config {
        let o = &self.options;
        let mut c = foca::Config::simple();
        c.probe_period = Duration::from_millis(o.probe_interval_ms);
        c.probe_rtt = Duration::from_millis(o.probe_timeout_ms);
        c.num_indirect_probes = self.indirect_probes;
        c.max_transmissions = o.max_transmissions_nonzero(live);
        // Never 0: probe_interval_ms > probe_timeout_ms ≥ 1 and both multipliers are ≥ 1.
        c.suspect_to_down_after = Duration::from_millis(o.suspicion_min_ms(live));
        c.remove_down_after = Some(Duration::from_millis(o.remove_down_after_ms));
        c.max_packet_size = self.max_packet_size;
        c.notify_down_members = true;
        c.periodic_announce = Some(foca::PeriodicParams {
            frequency: Duration::from_millis(o.announce_interval_ms),
            num_members: NonZeroUsize::MIN,
        });
        c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: Duration::from_millis(o.reconnect_interval_ms),
            num_members: DOWN_ANNOUNCE_FANOUT,
        });
        c.periodic_gossip = Some(foca::PeriodicParams {
            frequency: Duration::from_millis(o.gossip_interval_ms),
            num_members: self.gossip_fanout,
        });
        c
    }
}

impl Deref for ValidOptions {
    type Target = MembershipOptions;

    fn deref(&self) -> &MembershipOptions {
        &self.options
    }
}

/// Lifeguard's dynamic suspicion timeout, in ms: `max − (max − min) × log(C + 1) / log(K + 1)`, never
/// below `min`; `min` at once when `k` is 0.
pub fn suspicion_timeout_ms(min_ms: u64, max_ms: u64, k: u32, confirmations: u32) -> u64 {
    if k == 0 || max_ms <= min_ms {
        return min_ms;
    }
    let c = confirmations.min(k);
    let frac = (f64::from(c) + 1.0).ln() / (f64::from(k) + 1.0).ln();
    let raw = max_ms as f64 - frac * (max_ms - min_ms) as f64;
    (raw.floor() as u64).max(min_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gossip_config_maps_into_health() {
        let c = GossipHealthConfig {
            timeout_seconds: 7,
            success_threshold: 2,
            failure_threshold: 5,
        };
        let o = MembershipOptions::from(&c);
        assert_eq!(o.health.timeout_ms, 7_000);
        assert_eq!(o.health.success_threshold, 2);
        assert_eq!(o.health.failure_threshold, 5);
        assert!(o.health.require_data_plane);
        assert_eq!(o.probe_interval_ms, 1_000);
        o.validate().expect("defaults are valid");
    }

    #[test]
    fn timings_scale_with_cluster_size_like_memberlist() {
        let o = MembershipOptions::default();
        assert_eq!(o.suspicion_min_ms(1), 4_000);
        assert_eq!(o.suspicion_min_ms(10), 4_000);
        assert_eq!(o.suspicion_min_ms(100), 8_000);
        assert_eq!(o.suspicion_min_ms(1000), 12_000);
        assert_eq!(o.suspicion_max_ms(100), 48_000);
        assert_eq!(o.max_transmissions(3), 4);
        assert_eq!(o.max_transmissions(10), 8);
        assert_eq!(o.max_transmissions(100), 12);
        assert_eq!(o.max_transmissions(1000), 16);
        assert_eq!(o.suspicion_k(3), 0);
        assert_eq!(o.suspicion_k(5), 3);
        assert_eq!(o.roster_sync_ms(10), Some(30_000));
        assert_eq!(o.roster_sync_ms(100), Some(90_000));
        assert_eq!(o.roster_sync_ms(1000), Some(180_000));
    }

    #[test]
    fn dynamic_suspicion_shrinks_from_max_to_min() {
        assert_eq!(suspicion_timeout_ms(8_000, 48_000, 3, 0), 48_000);
        assert_eq!(suspicion_timeout_ms(8_000, 48_000, 3, 1), 28_000);
        assert_eq!(suspicion_timeout_ms(8_000, 48_000, 3, 2), 16_300);
        assert_eq!(suspicion_timeout_ms(8_000, 48_000, 3, 3), 8_000);
        assert_eq!(suspicion_timeout_ms(8_000, 48_000, 3, 30), 8_000);
        assert_eq!(suspicion_timeout_ms(8_000, 48_000, 0, 0), 8_000);
    }

    #[test]
    fn validation_names_the_field() {
        let o = MembershipOptions {
            probe_timeout_ms: 1_000,
            ..MembershipOptions::default()
        };
        assert!(
            o.validate()
                .expect_err("rtt == period")
                .to_string()
                .contains("probe_timeout_ms")
        );
        let o = MembershipOptions {
            health: HealthOptions {
                failure_threshold: 0,
                ..HealthOptions::default()
            },
            ..MembershipOptions::default()
        };
        assert!(
            o.validate()
                .expect_err("zero")
                .to_string()
                .contains("failure_threshold")
        );
    }
}
