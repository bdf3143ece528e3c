//! Membership plane (sans-IO): SWIM failure detection with Lifeguard, incarnations, graceful leave, the
//! health thresholds of `gossip.config`, cluster health and the member table.
//!
//! [`Membership`] is a state machine in the style of `quinn-proto`: inputs are `handle_*` calls that carry the
//! time (`now_ms`, Unix ms of the caller's clock, virtual in tests), outputs are drained with `poll_*`. It never
//! reads the clock, never draws OS randomness (its RNG is seeded by the caller) and never touches the network:
//! the node wraps each payload from [`Membership::poll_transmit`] in its own frame and feeds received ones to
//! [`Membership::handle_packet`].
//!
//! ## Guarantees
//!
//! - **Deterministic**: the same seed, options and sequence of calls give the same outputs.
//! - **No panic on input**: every received byte is bounds-checked; a bad payload is refused with a
//!   [`MembershipError`] that says what happened to the state.
//! - **Bounded packets**: nothing larger than [`MembershipOptions::max_packet_size`] is produced or accepted.
//! - **Graceful leave is not a failure**: a node that calls [`Membership::leave`] is reported
//!   [`MembershipEvent::MemberLeft`] by the others, never suspect.
//! - **A restart supersedes**: a node that restarts (same node id, new replica id) replaces its old identity
//!   everywhere ([`MembershipEvent::MemberReplaced`]): at once at the same address; at a new address once the
//!   old identity left or was declared down.
//! - **One live process per node id**: of two live identities of a node id at different addresses, every node
//!   picks the one that started first; the other is a refused duplicate ([`MembershipEvent::DuplicateRefused`],
//!   [`MemberTable::refused`]; in itself [`MembershipEvent::RefusedAsDuplicate`], cluster health `NOT HEALTHY`):
//!   no member, not counted, no health checks, until the holder leaves or is declared down. The rule reads only
//!   SWIM states, so nodes agree once SWIM has converged.
//! - **Lock-free reads**: [`Membership::members`] and [`MembershipReader::load`] return an
//!   `Arc<`[`MemberTable`]`>` published through `arc-swap`. States, health and cluster health are published
//!   before the call that changed them returns; `last_seen_ms` and `rtt_ms` alone are republished at most
//!   every [`MembershipOptions::publish_interval_ms`].
//!
//! ## What comes from foca, what from this wrapper
//!
//! [foca] 2 runs SWIM proper: random round-robin probing, direct and indirect probes (`PingReq`), suspicion
//! with incarnation numbers and refutation, piggybacked dissemination with a retransmit limit, periodic
//! gossip, announce/feed joins, periodic announces to live members (to learn the full roster) and to down
//! members (so a healed partition merges back), identity renewal after a false "down" (`Identity::renew`),
//! and address conflicts resolved by `win_addr_conflict`. foca's wire format is our own (`codec`).
//!
//! This wrapper adds:
//! - **Lifeguard local health awareness**: a local health multiplier `lhm` in `0..=max_local_health`
//!   (default 8), raised by a probe that got no ack, by having to refute a suspicion about ourselves, and by a
//!   timer handled more than half a probe interval late; lowered by each answered probe. foca's probe
//!   interval and probe timeout are stretched by `1 + lhm` (by rescheduling foca's timers).
//! - **Lifeguard dynamic suspicion**: foca's fixed suspect-to-down timer is replaced. A node whose probe
//!   failed starts its timer at `max = suspicion_max_mult × min` and broadcasts its suspicion; each distinct
//!   other suspecter it hears of is a confirmation C, and the timeout becomes
//!   `max − (max − min) × ln(C + 1) / ln(K + 1)` (never below `min`), as in the Lifeguard paper.
//! - **Size scaling**: `min = suspicion_mult × max(1, log10 N) × probe_interval` and the retransmit limit
//!   `retransmit_mult × ⌈log10(N + 1)⌉` follow the live member count N (memberlist's formulas).
//! - **Left vs down**: foca only knows "down"; a leaving node also broadcasts a leave notice, so receivers
//!   report it left (and declare it down in SWIM at once if the notice outran the update).
//! - **Roster push-pull**: foca's join feed holds one packet of members and SWIM gossip carries only
//!   changes, so a newcomer could miss old members for minutes. The wrapper exchanges full member lists with
//!   one random member right after joining, 5, 10, 20, … probe intervals later, then every
//!   `roster_sync_interval_ms` (scaled like memberlist's push-pull), and applies them with foca's
//!   `apply_many`.
//! - **One live process per node id** across addresses (refused duplicates), **health thresholds**, **cluster health**, the **member
//!   table** with last-seen and round-trip times, and the events.
//!
//! ## Health
//!
//! A *check* of a member is one of: a data-plane report ([`Membership::record_data_plane`]: a replication
//! exchange answered or not), one of this node's own SWIM probes of it that got no ack (a failure), and — when
//! [`HealthOptions::require_data_plane`] is true, the node's mode — a data-plane silence longer than
//! `timeout_ms` (`gossip.config.timeout_seconds`), which counts as one failure per period of silence. A member
//! becomes healthy after `success_threshold` consecutive successes and unhealthy after `failure_threshold`
//! consecutive failures. With the data plane required, SWIM acks never count as successes, so a member that
//! answers probes but whose replication link is broken turns unhealthy with the data plane's reason. A member
//! that goes down or leaves is unhealthy at once.
//!
//! ## Cluster health
//!
//! [`ClusterHealth::Healthy`] when this node is in good standing — not left, not defunct, and joined if it
//! was ever given a join target (a node never given one is a one-node cluster) — and a strict majority of the
//! known non-left members, itself included, are active (alive or suspect) and healthy. So a partition into
//! halves is not healthy on either side, and a lone survivor of a crashed cluster is not healthy.
//!
//! ## Timing defaults (memberlist LAN, in ms)
//!
//! | option | default | scaled |
//! |---|---|---|
//! | probe interval / timeout | 1 000 / 500 | × (1 + lhm) |
//! | gossip | every 200 to 3 members | |
//! | retransmit limit | 4 × ⌈log10(N+1)⌉ | 4 (N=3), 8 (10), 12 (100), 16 (1 000) |
//! | suspicion min | 4 × max(1, log10 N) × 1 000 | 4 s (≤10), 8 s (100), 12 s (1 000) |
//! | suspicion max | 6 × min | 24 s, 48 s, 72 s |
//! | confirmations K | 3 (0 below 5 live members) | |
//!
//! A killed node is suspected after its first failed probe (about one probe interval after the failure, plus
//! the time until some member probes it) and declared down `min..=max` later, close to `min` in a cluster big
//! enough to produce K confirmations; the news then spreads in a few gossip rounds. See `docs/membership.md`
//! for the measured distributions.
//!
//! ## Layout
//!
//! [`Membership`] holds one part per concern; each module says what its part guarantees.
//!
//! | module | concern |
//! |---|---|
//! | `swim` | the foca instance and the runtime that queues what foca asks for |
//! | `timers` | the timer table: one deadline per kind; `poll_timeout` is their minimum |
//! | `members` | the member map and its replica-id and node-id indexes |
//! | `reconcile` | foca's member list against the map, and the member events |
//! | `duplicates` | one live process per node id: refused duplicates, superseded identities |
//! | `suspicion` | Lifeguard dynamic suspicion timers and confirmations |
//! | `local_health` | Lifeguard local health multiplier and the probe in flight |
//! | `checks` | health checks against the thresholds, data-plane deadlines |
//! | `roster_sync` | push-pull roster exchange |
//! | `publication` | the `arc-swap` snapshot, cluster health, the event queue |
//! | `options`, `health`, `codec`, `identity`, `table`, `event`, `error` | options, per-member thresholds, the wire format, identities, the snapshot's types, events, errors |
//!
//! Every input (`join`, `handle_packet`, `handle_timeout`, `leave`, `record_data_plane`) ends with the same
//! short list of named steps (`Membership::after_call`): drain what foca and its codec saw, apply it to the
//! parts above, reconcile, publish, and re-align the timer table.

mod broadcasts;
mod checks;
mod codec;
mod duplicates;
mod error;
mod event;
mod health;
mod identity;
mod local_health;
mod members;
mod options;
mod publication;
mod reconcile;
mod roster_sync;
mod standing;
mod suspicion;
mod swim;
mod table;
mod timers;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use foca::{Foca, Timer as SwimTimer};
use rand::SeedableRng;
use rand::rngs::SmallRng;

pub use codec::CodecError;
pub use error::MembershipError;
pub use event::{MemberRef, MembershipEvent};
pub use identity::{LocalIdentity, MAX_NODE_ID_BYTES, MemberId};
pub use options::{HealthOptions, MembershipOptions, OptionsError, suspicion_timeout_ms};
pub use table::{
    ClusterHealth, LocalInfo, LocalState, MemberInfo, MemberState, MemberTable, MembershipReader,
    RefusedInfo,
};

use crate::ReplicaId;
use checks::DataPlaneDeadlines;
use codec::{BroadcastItem, Handler, ROSTER_MAGIC, ReceivedHeader, WireCodec};
use duplicates::Duplicates;
use local_health::LocalHealth;
use members::Members;
use options::ValidOptions;
use publication::{Change, Publication};
use roster_sync::RosterSync;
use standing::{JoinIntent, Standing};
use suspicion::Suspicions;
use swim::{Rt, Swim, SwimCore, SwimRequests};
use timers::{Timer, Timers};

/// How long a custom broadcast is remembered as seen (so it is not re-spread), at least.
const SEEN_TTL_MS: u64 = 600_000;
/// How often the seen-broadcast memory and left identities are pruned.
const PRUNE_EVERY_MS: u64 = 60_000;
/// Members this node announces itself to per reconnect attempt while alone.
const RECONNECT_FANOUT: usize = 3;
/// Most rounds of [`Membership::after_call`] per input (a round repeats only while leave notices make this
/// node declare members down, which foca answers with more notifications).
const SETTLE_ROUNDS: usize = 8;
/// Mixed into the caller's seed for the wrapper's own RNG (foca's gets the seed itself).
const WRAPPER_SEED_MIX: u64 = 0x6d65_6d62_6572_7368;

/// Counters of one membership instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MembershipStats {
    /// Payloads handed to [`Membership::handle_packet`].
    pub packets_received: u64,
    /// Their bytes.
    pub bytes_received: u64,
    /// Payloads returned by [`Membership::poll_transmit`].
    pub packets_sent: u64,
    /// Their bytes.
    pub bytes_sent: u64,
    /// Payloads refused with an error.
    pub packets_rejected: u64,
    /// Suspicion timers this node started (its own failed probes of a member).
    pub suspicions_started: u64,
    /// foca internal errors seen while handling timers (should stay 0).
    pub internal_errors: u64,
}

/// Whether [`Membership::after_call`] compares foca's member list with the map even without a hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rescan {
    /// Only if what foca reported hints at a change.
    IfHinted,
    /// In the first round regardless (foca applied a roster, whose effect it does not report).
    Always,
}

/// The membership state machine of one node. See the [module docs](self).
pub struct Membership {
    opts: ValidOptions,
    /// This node's current identity.
    local: MemberId,
    standing: Standing,
    join_requested: JoinIntent,
    swim: SwimCore,
    /// The wrapper's own random choices (roster partner, reconnect targets).
    rng: SmallRng,
    timers: Timers,
    members: Members,
    /// Live members counted, this node included (the N of the scaling rules), and the N foca is sized for.
    live: usize,
    sized_for: usize,
    /// The reconciliation pass number (members not seen by the latest pass are forgotten).
    scan_gen: u64,
    /// Identities heard leaving on purpose, with when.
    left_ids: BTreeMap<MemberId, u64>,
    duplicates: Duplicates,
    suspicions: Suspicions,
    local_health: LocalHealth,
    deadlines: DataPlaneDeadlines,
    roster: RosterSync,
    publication: Publication,
    stats: MembershipStats,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("local", &self.local)
            .field("state", &self.standing.public())
            .field("members", &self.members.len())
            .field("live", &self.live)
            .field("lhm", &self.local_health.multiplier())
            .field("cluster_health", &self.publication.cluster_health)
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// A node that knows no one yet. `seed` drives every random choice (probe order, gossip targets);
    /// `now_ms` is the process start and orders this identity after any earlier one of the same node.
    pub fn new(
        identity: LocalIdentity,
        options: MembershipOptions,
        seed: u64,
        now_ms: u64,
    ) -> Result<Membership, MembershipError> {
        let opts = ValidOptions::new(options).map_err(MembershipError::InvalidOptions)?;
        let len = identity.node_id.len();
        if len == 0 || len > MAX_NODE_ID_BYTES {
            return Err(MembershipError::InvalidIdentity(format!(
                "node id must be 1..={MAX_NODE_ID_BYTES} bytes, got {len}"
            )));
        }
        let local = MemberId::new(
            &identity.node_id,
            identity.replica_id,
            now_ms,
            0,
            identity.addr,
        );
        let shared = SwimCore::new_shared(identity.addr, now_ms);
        let foca = Foca::with_custom_broadcast(
            local.clone(),
            opts.foca_config(1),
            SmallRng::seed_from_u64(seed),
            WireCodec {
                shared: Arc::clone(&shared),
            },
            Handler {
                shared: Arc::clone(&shared),
            },
        );
        let mut timers = Timers::default();
        timers.set(Timer::Prune, Some(now_ms.saturating_add(PRUNE_EVERY_MS)));
        let mut m = Membership {
            publication: Publication::new(&local, now_ms),
            local,
            standing: Standing::Fresh,
            join_requested: JoinIntent::None,
            swim: SwimCore {
                foca,
                shared,
                requests: SwimRequests::default(),
            },
            rng: SmallRng::seed_from_u64(seed ^ WRAPPER_SEED_MIX),
            timers,
            members: Members::default(),
            live: 1,
            sized_for: 1,
            scan_gen: 0,
            left_ids: BTreeMap::new(),
            duplicates: Duplicates::default(),
            suspicions: Suspicions::default(),
            local_health: LocalHealth::new(opts.max_local_health),
            deadlines: DataPlaneDeadlines::default(),
            roster: RosterSync::default(),
            stats: MembershipStats::default(),
            opts,
        };
        m.publication.cluster_health = m.compute_cluster_health();
        m.publish(now_ms);
        Ok(m)
    }

    /// Asks the node at `addr` (a static peer or a discovered address) to let this node in. The caller
    /// retries with backoff until [`Membership::is_joined`]; repeating it is harmless. After this call the
    /// node counts as "expected in a cluster" for cluster health.
    pub fn join(&mut self, addr: SocketAddr, now_ms: u64) -> Result<(), MembershipError> {
        if self.standing == Standing::Left {
            return Err(MembershipError::Left);
        }
        if addr == self.local.addr {
            return Err(MembershipError::JoinSelf(addr));
        }
        if self.join_requested == JoinIntent::None {
            self.join_requested = JoinIntent::Requested;
            self.publication.mark(Change::Table);
        }
        let result = self.with_swim(now_ms, |swim, rt| {
            swim.announce(MemberId::placeholder(addr), rt)
        });
        self.after_call(now_ms, Rescan::IfHinted);
        result.map_err(|e| MembershipError::Internal(e.to_string()))
    }

    /// Feeds one membership payload received from `from` (the transport's peer address, used in errors).
    pub fn handle_packet(
        &mut self,
        from: SocketAddr,
        bytes: &[u8],
        now_ms: u64,
    ) -> Result<(), MembershipError> {
        if self.standing == Standing::Left {
            return Err(MembershipError::Left);
        }
        self.stats.packets_received += 1;
        self.stats.bytes_received += bytes.len() as u64;
        if bytes.first() == Some(&ROSTER_MAGIC) {
            let result = self.handle_roster(from, bytes, now_ms);
            if result.is_err() {
                self.stats.packets_rejected += 1;
            }
            return result;
        }
        let result = self.with_swim(now_ms, |swim, rt| swim.handle_data(bytes, rt));
        self.after_call(now_ms, Rescan::IfHinted);
        result.map_err(|e| {
            self.stats.packets_rejected += 1;
            match e {
                foca::Error::DataTooBig => MembershipError::PacketTooLarge {
                    from,
                    len: bytes.len(),
                    max: self.opts.max_packet_size,
                },
                foca::Error::DataFromOurselves => MembershipError::FromOurselves { from },
                foca::Error::Decode(_)
                | foca::Error::MalformedPacket
                | foca::Error::IndirectForOurselves
                | foca::Error::CustomBroadcast(_) => MembershipError::Malformed {
                    from,
                    reason: e.to_string(),
                },
                other => MembershipError::Internal(other.to_string()),
            }
        })
    }

    /// Runs every timer due at `now_ms` (probes, gossip, suspicion expiries, health-check deadlines,
    /// reconnects). Call it at [`Membership::poll_timeout`]; calling it early or twice is harmless.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        if self.standing == Standing::Left {
            return;
        }
        if self.run_swim_timers(now_ms) {
            self.raise_local_health();
        }
        self.expire_data_plane_deadlines(now_ms);
        if self.timers.is_due(Timer::RosterSync, now_ms) {
            self.push_pull(now_ms);
        }
        if self.timers.is_due(Timer::Reconnect, now_ms) {
            let next = now_ms.saturating_add(self.opts.reconnect_interval_ms);
            self.timers.set(Timer::Reconnect, Some(next));
            self.reconnect(now_ms);
        }
        if self.timers.is_due(Timer::Prune, now_ms) {
            self.timers
                .set(Timer::Prune, Some(now_ms.saturating_add(PRUNE_EVERY_MS)));
            self.prune(now_ms);
        }
        self.after_call(now_ms, Rescan::IfHinted);
    }

    /// When [`Membership::handle_timeout`] should next be called (Unix ms); `None` once left. The minimum of
    /// the timer table: a few comparisons, whatever the number of members.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.standing == Standing::Left {
            return None;
        }
        self.timers.next_wake()
    }

    /// The next payload to send, and to which gossip address.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        let t = self.swim.requests.transmits.pop_front()?;
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += t.1.len() as u64;
        Some(t)
    }

    /// The next event, in the order they happened.
    pub fn poll_event(&mut self) -> Option<MembershipEvent> {
        self.publication.events.pop_front()
    }

    /// Leaves the cluster on purpose: declares this identity down, spreads a leave notice to up to the
    /// retransmit limit of members at once (queued on [`Membership::poll_transmit`]), and stops. The others
    /// report [`MembershipEvent::MemberLeft`], not suspect. Later calls are refused with
    /// [`MembershipError::Left`]; calling `leave` again is a no-op.
    pub fn leave(&mut self, now_ms: u64) -> Result<(), MembershipError> {
        if self.standing == Standing::Left {
            return Ok(());
        }
        self.swim
            .broadcast(&BroadcastItem::Leave(self.local.clone()), now_ms);
        let max_tx = usize::from(self.opts.max_transmissions(self.live));
        let extra_rounds = max_tx.div_ceil(self.opts.indirect_probes).saturating_sub(1);
        let result = self.with_swim(now_ms, |swim, mut rt| {
            swim.leave_cluster(&mut rt)?;
            for _ in 0..extra_rounds {
                swim.gossip(&mut rt)?;
            }
            Ok(())
        });
        self.standing = Standing::Left;
        self.swim.requests.timers.clear();
        self.suspicions.stop_all();
        self.deadlines.clear();
        self.timers.stop_all();
        self.publication.mark(Change::Table);
        self.after_call(now_ms, Rescan::IfHinted);
        result.map_err(|e| MembershipError::Internal(e.to_string()))
    }

    /// Reports one data-plane check of `member` (a replication exchange answered, `ok`, or not, with
    /// `reason`). Bound each exchange by [`HealthOptions::timeout_ms`]; silence longer than that is counted
    /// as a failure here anyway.
    pub fn record_data_plane(
        &mut self,
        member: impl Into<MemberRef>,
        ok: bool,
        reason: &str,
        now_ms: u64,
    ) -> Result<(), MembershipError> {
        if self.standing == Standing::Left {
            return Err(MembershipError::Left);
        }
        let member = member.into();
        let addr = match member {
            MemberRef::Addr(a) => a,
            MemberRef::Replica(r) => self
                .members
                .addr_of_replica(r)
                .ok_or(MembershipError::UnknownMember(member))?,
        };
        let (state, refused) = self
            .members
            .get(&addr)
            .map(|e| (e.state, self.duplicates.is_refused(&e.id)))
            .ok_or(MembershipError::UnknownMember(member))?;
        if refused {
            return Err(MembershipError::RefusedDuplicate(member));
        }
        if !state.is_active() {
            return Err(MembershipError::NotActive { member, state });
        }
        let what = match (ok, reason.is_empty()) {
            (true, true) => "data-plane exchange answered",
            (false, true) => "data-plane exchange failed",
            (_, false) => reason,
        };
        self.health_check(addr, ok, what);
        self.expect_data_plane(addr, now_ms);
        self.after_call(now_ms, Rescan::IfHinted);
        Ok(())
    }

    /// The latest member table snapshot (lock-free).
    pub fn members(&self) -> Arc<MemberTable> {
        self.publication.table.load_full()
    }

    /// A handle other threads can read the member table from, lock-free, without owning the state machine.
    pub fn reader(&self) -> MembershipReader {
        MembershipReader {
            table: Arc::clone(&self.publication.table),
        }
    }

    /// Cluster health now (rule in the [module docs](self)).
    pub fn cluster_health(&self) -> ClusterHealth {
        self.publication.cluster_health
    }

    /// This node's current identity (it changes when the node renews it after being declared down).
    pub fn local_id(&self) -> &MemberId {
        &self.local
    }

    /// This node's standing.
    pub fn local_state(&self) -> LocalState {
        self.standing.public()
    }

    /// True while at least one live member knows this node.
    pub fn is_joined(&self) -> bool {
        self.standing == Standing::Joined
    }

    /// Lifeguard local health multiplier (0 = healthy).
    pub fn local_health(&self) -> u32 {
        self.local_health.multiplier()
    }

    /// Live members this node counts, itself included (the N of the scaling rules).
    pub fn live_members(&self) -> usize {
        self.live
    }

    /// The identity and state of the member at `addr`, read directly (no snapshot).
    pub fn state_of(&self, addr: SocketAddr) -> Option<(&MemberId, MemberState)> {
        self.members.get(&addr).map(|e| (&e.id, e.state))
    }

    /// The holder of the node id of the identity at `addr` when that identity is a refused duplicate (a
    /// second live process with a member's node id), read directly.
    pub fn refused_by(&self, addr: SocketAddr) -> Option<&MemberId> {
        let e = self.members.get(&addr)?;
        self.duplicates.refused.get(&e.id).map(|(holder, _)| holder)
    }

    /// True when the member with `replica_id` is a refused duplicate: nothing is replicated to or from it.
    pub fn is_refused(&self, replica_id: ReplicaId) -> bool {
        if self.duplicates.refused.is_empty() {
            return false; // the usual case, asked for every frame: no lookups
        }
        self.members
            .addr_of_replica(replica_id)
            .and_then(|addr| self.members.get(&addr))
            .is_some_and(|e| self.duplicates.is_refused(&e.id))
    }

    /// The holder of this node's own node id while this node is a refused duplicate (an older live member at
    /// another address has it); `None` when this node is the member.
    pub fn local_refused_by(&self) -> Option<&MemberId> {
        self.duplicates.local_refused.as_ref()
    }

    /// Health of the member at `addr`, read directly: `(healthy, reason)`.
    pub fn health_of(&self, addr: SocketAddr) -> Option<(bool, &str)> {
        self.members
            .get(&addr)
            .map(|e| (e.health.healthy, &*e.health.reason))
    }

    /// Counters.
    pub fn stats(&self) -> MembershipStats {
        self.stats
    }

    /// The options in force.
    pub fn options(&self) -> &MembershipOptions {
        self.opts.options()
    }

    // ----- the steps every input ends with -----

    /// Drains what foca and its codec reported during the call and brings the parts up to date, as a short
    /// list of steps. A round repeats (at most [`SETTLE_ROUNDS`] times) only while leave notices made this node
    /// declare members down in foca. Guarantees on return: the map matches foca, every change is reported
    /// and (unless soft) published, and the timer table is current.
    fn after_call(&mut self, now_ms: u64, rescan: Rescan) {
        let mut rescan = rescan;
        for _round in 0..SETTLE_ROUNDS {
            let seen = self.swim.take_observed();
            let mut stale = rescan == Rescan::Always
                || self.updates_disagree(&seen.decoded)
                || !self.swim.requests.suspected.is_empty()
                || self.senders_disagree(&seen.received);
            rescan = Rescan::IfHinted;
            let rtt_sample = self.local_health.note_acks(&seen.received, now_ms);
            self.local_health.note_sent(seen.pings, now_ms);
            if seen.self_suspected {
                self.raise_local_health();
            }
            let (entry, members_notified) = self.apply_notifications(now_ms);
            let (leaving, left_while_down) = self.apply_broadcasts(seen.broadcasts, now_ms);
            stale |= members_notified || left_while_down;
            if stale {
                self.reconcile(now_ms);
            }
            self.note_contact(&seen.received, rtt_sample, now_ms);
            self.start_requested_suspicions(now_ms);
            self.follow_cluster_entry(entry, now_ms);
            if leaving.is_empty() {
                break;
            }
            self.declare_down(leaving, now_ms);
        }
        self.rescale_for_live_members();
        self.urgent_gossip(now_ms);
        self.publish_changes(now_ms);
        self.align_timers();
    }

    /// News of a member down goes out at once, in one gossip round (to `gossip_fanout` members), instead of
    /// at the next gossip tick: every node that learns it passes it on within a link's latency, so the whole
    /// cluster knows within a few hops' latency rather than a few gossip intervals (about 1 s at 1,000
    /// members). At most one such round per quarter gossip interval; the regular ticks go on as before.
    fn urgent_gossip(&mut self, now_ms: u64) {
        let gap = (self.opts.gossip_interval_ms / 4).max(1);
        let due = self
            .publication
            .last_urgent_gossip_ms
            .is_none_or(|last| now_ms >= last.saturating_add(gap));
        if !self.publication.urgent_gossip || !due || self.standing == Standing::Left {
            return;
        }
        self.publication.urgent_gossip = false;
        self.publication.last_urgent_gossip_ms = Some(now_ms);
        if let Err(error) = self.with_swim(now_ms, |swim, mut rt| swim.gossip(&mut rt)) {
            tracing::debug!(%error, "urgent gossip round not sent");
        }
    }

    /// True when a decoded member update may have changed foca's list, which must then be compared with the
    /// map: it names an identity the map does not hold at that address, or carries news by SWIM's precedence
    /// (a higher incarnation, or at the same incarnation a later state: alive, then suspect, then down). The
    /// map equals foca's list after every call, so an update that is not news to the map is not news to foca
    /// either: after a join most updates are retransmissions of what both hold, and comparing the whole list
    /// (O(N)) for each of them made membership the largest cost of a 1,000-node simulation.
    fn updates_disagree(&self, updates: &[(MemberId, foca::Incarnation, foca::State)]) -> bool {
        let rank = |state: MemberState| match state {
            MemberState::Alive => 0,
            MemberState::Suspect => 1,
            MemberState::Down | MemberState::Left => 2,
        };
        updates.iter().any(|(id, incarnation, state)| {
            if *id == self.local {
                return false; // about this node: refutation is foca's, self-suspicion is tracked apart
            }
            let news = match state {
                foca::State::Alive => 0,
                foca::State::Suspect => 1,
                foca::State::Down => 2,
            };
            match self.members.get(&id.addr()) {
                Some(e) if e.id == *id => {
                    *incarnation > e.incarnation
                        || (*incarnation == e.incarnation && news > rank(e.state))
                }
                _ => true,
            }
        })
    }

    /// True when a received header names a sender the map does not have as alive at that identity and
    /// incarnation (so foca's list must be compared with the map).
    fn senders_disagree(&self, received: &[ReceivedHeader]) -> bool {
        received
            .iter()
            .any(|h| match self.members.get(&h.src.addr) {
                Some(e) if e.id == h.src => {
                    e.incarnation != h.src_incarnation || e.state != MemberState::Alive
                }
                _ => true,
            })
    }

    /// When the table changed, recounts the live members and, if their number changed the size-scaled
    /// parameters (retransmit limit, suspicion minimum), hands foca the new ones.
    fn rescale_for_live_members(&mut self) {
        if !self.publication.table_changed() {
            return;
        }
        self.live = 1 + self.active_count();
        if self.live == self.sized_for {
            return;
        }
        let old = self.opts.foca_config(self.sized_for);
        let new = self.opts.foca_config(self.live);
        if old.max_transmissions != new.max_transmissions
            || old.suspect_to_down_after != new.suspect_to_down_after
        {
            // Only non-probe parameters differ, which foca accepts at runtime.
            if self.swim.foca.set_config(new).is_err() {
                self.stats.internal_errors += 1;
            }
        }
        self.sized_for = self.live;
    }

    /// Brings the timer table in line with the standing (roster syncs only while joined, reconnects only
    /// while alone after a cluster) and with the earliest entries of the queues it stands for.
    fn align_timers(&mut self) {
        if self.standing != Standing::Joined {
            self.timers.stop(Timer::RosterSync);
        }
        if self.standing != Standing::Reconnecting {
            self.timers.stop(Timer::Reconnect);
        }
        if self.standing == Standing::Left {
            return;
        }
        self.timers
            .set(Timer::Swim, self.swim.requests.next_timer_ms());
        self.timers
            .set(Timer::Suspicion, self.suspicions.next_due_ms());
        self.timers.set(Timer::DataPlane, self.deadlines.next_ms());
    }

    // ----- timers -----

    /// Fires foca's timers and this node's suspicion timers due at `now_ms`, in deadline order (foca's first
    /// on a tie), each followed by [`Membership::after_call`]. Returns true when one was handled more than
    /// half a probe interval late (a sign this node is slow: local health).
    fn run_swim_timers(&mut self, now_ms: u64) -> bool {
        let mut late = false;
        loop {
            let swim_due = self.swim.requests.next_timer_ms();
            let suspicion_due = self.suspicions.next_due_ms();
            let timer = match (swim_due, suspicion_due) {
                (Some(t), s) if t <= now_ms && s.is_none_or(|d| t <= d) => {
                    let Some(((due, _), timer)) = self.swim.requests.timers.pop_first() else {
                        break;
                    };
                    if now_ms.saturating_sub(due) > self.opts.probe_interval_ms / 2 {
                        late = true;
                    }
                    if matches!(timer, SwimTimer::ProbeRandomMember(_)) {
                        self.evaluate_probe();
                    }
                    timer
                }
                (_, Some(d)) if d <= now_ms => match self.suspicions.pop_due(now_ms) {
                    Some(timer) => timer,
                    None => break,
                },
                _ => break,
            };
            if self
                .with_swim(now_ms, |swim, rt| swim.handle_timer(timer, rt))
                .is_err()
            {
                self.stats.internal_errors += 1;
            }
            self.after_call(now_ms, Rescan::IfHinted);
        }
        late
    }

    /// Forgets what is only remembered for a while: refusals of forgotten identities, seen broadcasts, leave
    /// notices and supersessions of forgotten identities past their TTL, answered roster requests, and
    /// confirmations about members no longer suspect-able at that incarnation.
    fn prune(&mut self, now_ms: u64) {
        let members = &self.members;
        let tracked = |id: &MemberId| members.get(&id.addr).is_some_and(|e| e.id == *id);
        self.duplicates.refused.retain(|id, _| tracked(id));
        let ttl = SEEN_TTL_MS.max(self.opts.suspicion_max_ms(self.live).saturating_mul(2));
        self.swim.prune_seen(now_ms, ttl);
        self.left_ids
            .retain(|id, first| tracked(id) || now_ms.saturating_sub(*first) < ttl);
        self.roster
            .replies
            .retain(|_, t| now_ms.saturating_sub(*t) < PRUNE_EVERY_MS);
        self.duplicates
            .superseded
            .retain(|id, (_, first)| tracked(id) || now_ms.saturating_sub(*first) < ttl);
        self.suspicions.prune_confirmations(&self.members);
    }

    /// Calls foca with this node's runtime (probe timers stretched by local health).
    fn with_swim<T>(
        &mut self,
        now_ms: u64,
        f: impl FnOnce(&mut Swim, Rt<'_>) -> Result<T, foca::Error>,
    ) -> Result<T, foca::Error> {
        let stretch = self.local_health.stretch();
        self.swim.call(now_ms, stretch, f)
    }
}

#[cfg(test)]
mod tests;
