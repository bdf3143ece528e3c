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

mod codec;
mod error;
mod event;
mod health;
mod identity;
mod options;
pub mod sim;
mod table;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use foca::{
    Foca, Incarnation, Member, Notification, OwnedNotification, Runtime, State, Timer, TimerToken,
};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

pub use codec::CodecError;
pub use error::MembershipError;
pub use event::{MemberRef, MembershipEvent};
pub use identity::{LocalIdentity, MAX_NODE_ID_BYTES, MemberId};
pub use options::{HealthOptions, MembershipOptions, OptionsError, suspicion_timeout_ms};
pub use table::{
    ClusterHealth, LocalInfo, LocalState, MemberInfo, MemberState, MemberTable, MembershipReader,
    RefusedInfo,
};

use codec::{
    BroadcastItem, Handler, Observed, ROSTER_MAGIC, ReceivedKind, Shared, WireCodec, decode_roster,
    encode_roster, lock,
};
use health::HealthTracker;
use options::ValidOptions;

type Swim = Foca<MemberId, WireCodec, SmallRng, Handler>;

/// How long a custom broadcast is remembered as seen (so it is not re-spread), at least.
const SEEN_TTL_MS: u64 = 600_000;
/// How often the seen-broadcast memory and left identities are pruned.
const PRUNE_EVERY_MS: u64 = 60_000;
/// Members this node announces itself to per reconnect attempt while alone.
const RECONNECT_FANOUT: usize = 3;
/// A node syncs its roster right after joining and again this many probe intervals later.
const JOIN_RESYNC_PROBES: u64 = 5;
/// Smoothing of the round-trip estimate (like TCP's SRTT: new = old + (sample − old) / 8).
const RTT_GAIN: f64 = 0.125;

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

/// One remote member, as this node tracks it.
#[derive(Debug)]
struct Entry {
    id: MemberId,
    state: MemberState,
    incarnation: Incarnation,
    health: HealthTracker,
    last_seen_ms: Option<u64>,
    rtt_ms: Option<f64>,
    health_deadline: Option<u64>,
    scan: u64,
}

/// This node's probe in flight (for local health, probe-based checks and round-trip times).
#[derive(Debug)]
struct ProbeTrack {
    target: MemberId,
    number: u8,
    sent_ms: u64,
    acked: bool,
}

/// A suspicion timer of this node (Lifeguard dynamic suspicion).
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

/// What foca asked of the runtime during calls.
#[derive(Debug, Default)]
struct RtBuffers {
    transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    timers: BTreeMap<(u64, u64), Timer<MemberId>>,
    seq: u64,
    notifications: Vec<OwnedNotification<MemberId>>,
    suspected: Vec<(MemberId, Incarnation, TimerToken)>,
}

/// foca's runtime for one call: queues sends, notifications and timers (probe timers stretched by the local
/// health multiplier; suspicion timers handed to the wrapper).
struct Rt<'a> {
    now_ms: u64,
    stretch: u64,
    buf: &'a mut RtBuffers,
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

/// The membership state machine of one node. See the [module docs](self).
pub struct Membership {
    opts: ValidOptions,
    swim: Swim,
    local: MemberId,
    shared: Shared,
    rt: RtBuffers,
    rng: SmallRng,
    members: BTreeMap<SocketAddr, Entry>,
    by_replica: BTreeMap<u64, SocketAddr>,
    by_node: BTreeSet<(Arc<str>, SocketAddr)>,
    left_ids: BTreeMap<MemberId, u64>,
    superseded: BTreeMap<MemberId, (MemberId, u64)>,
    /// Refused duplicates: identity → (the holder of its node id when refused, since when).
    refused: BTreeMap<MemberId, (MemberId, u64)>,
    /// The holder of this node's own node id while this node is a refused duplicate.
    local_refused: Option<MemberId>,
    confirmations: BTreeMap<(MemberId, Incarnation), BTreeSet<SocketAddr>>,
    suspicions: Vec<PendingSuspicion>,
    probe: Option<ProbeTrack>,
    lhm: u32,
    health_deadlines: BTreeSet<(u64, SocketAddr)>,
    events: VecDeque<MembershipEvent>,
    table: Arc<ArcSwap<MemberTable>>,
    changed: bool,
    soft_changed: bool,
    last_publish_ms: u64,
    cluster_health: ClusterHealth,
    state: LocalState,
    join_requested: bool,
    ever_joined: bool,
    joined_pending: bool,
    sync_pending: bool,
    resync_step_ms: u64,
    force_scan: bool,
    next_roster_ms: u64,
    roster_replies: BTreeMap<SocketAddr, u64>,
    scan_gen: u64,
    live: usize,
    sized_for: usize,
    next_reconnect_ms: u64,
    next_prune_ms: u64,
    stats: MembershipStats,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("local", &self.local)
            .field("state", &self.state)
            .field("members", &self.members.len())
            .field("live", &self.live)
            .field("lhm", &self.lhm)
            .field("cluster_health", &self.cluster_health)
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
        let shared: Shared = Arc::new(Mutex::new(Observed {
            local_addr: Some(identity.addr),
            now_ms,
            ..Observed::default()
        }));
        let swim = Foca::with_custom_broadcast(
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
        let table = Arc::new(ArcSwap::from_pointee(MemberTable {
            local: LocalInfo {
                id: local.clone(),
                state: LocalState::Alone,
                local_health: 0,
                refused_by: None,
            },
            members: Vec::new(),
            refused: Vec::new(),
            cluster_health: ClusterHealth::Healthy,
            published_ms: now_ms,
        }));
        let mut m = Membership {
            swim,
            local,
            shared,
            rt: RtBuffers::default(),
            rng: SmallRng::seed_from_u64(seed ^ 0x6d65_6d62_6572_7368),
            members: BTreeMap::new(),
            by_replica: BTreeMap::new(),
            by_node: BTreeSet::new(),
            left_ids: BTreeMap::new(),
            superseded: BTreeMap::new(),
            refused: BTreeMap::new(),
            local_refused: None,
            confirmations: BTreeMap::new(),
            suspicions: Vec::new(),
            probe: None,
            lhm: 0,
            health_deadlines: BTreeSet::new(),
            events: VecDeque::new(),
            table,
            changed: true,
            soft_changed: false,
            last_publish_ms: now_ms,
            cluster_health: ClusterHealth::Healthy,
            state: LocalState::Alone,
            join_requested: false,
            ever_joined: false,
            joined_pending: false,
            sync_pending: false,
            resync_step_ms: 0,
            force_scan: false,
            next_roster_ms: u64::MAX,
            roster_replies: BTreeMap::new(),
            scan_gen: 0,
            live: 1,
            sized_for: 1,
            next_reconnect_ms: now_ms.saturating_add(opts.reconnect_interval_ms),
            next_prune_ms: now_ms.saturating_add(PRUNE_EVERY_MS),
            stats: MembershipStats::default(),
            opts,
        };
        m.cluster_health = m.compute_cluster_health();
        m.publish(now_ms);
        Ok(m)
    }

    /// Asks the node at `addr` (a static peer or a discovered address) to let this node in. The caller
    /// retries with backoff until [`Membership::is_joined`]; repeating it is harmless. After this call the
    /// node counts as "expected in a cluster" for cluster health.
    pub fn join(&mut self, addr: SocketAddr, now_ms: u64) -> Result<(), MembershipError> {
        if self.state == LocalState::Left {
            return Err(MembershipError::Left);
        }
        if addr == self.local.addr {
            return Err(MembershipError::JoinSelf(addr));
        }
        if !self.join_requested {
            self.join_requested = true;
            self.changed = true;
        }
        let result = self.with_swim(now_ms, |swim, rt| {
            swim.announce(MemberId::placeholder(addr), rt)
        });
        self.after_call(now_ms);
        result.map_err(|e| MembershipError::Internal(e.to_string()))
    }

    /// Feeds one membership payload received from `from` (the transport's peer address, used in errors).
    pub fn handle_packet(
        &mut self,
        from: SocketAddr,
        bytes: &[u8],
        now_ms: u64,
    ) -> Result<(), MembershipError> {
        if self.state == LocalState::Left {
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
        self.after_call(now_ms);
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
        if self.state == LocalState::Left {
            return;
        }
        let mut late = false;
        loop {
            let timer_due = self.rt.timers.first_key_value().map(|(k, _)| k.0);
            let susp = self
                .suspicions
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| s.due_ms)
                .map(|(i, s)| (i, s.due_ms));
            match (timer_due, susp) {
                (Some(t), s) if t <= now_ms && s.is_none_or(|(_, d)| t <= d) => {
                    let Some(((due, _), timer)) = self.rt.timers.pop_first() else {
                        break;
                    };
                    if now_ms.saturating_sub(due) > self.opts.probe_interval_ms / 2 {
                        late = true;
                    }
                    if matches!(timer, Timer::ProbeRandomMember(_)) {
                        self.evaluate_probe();
                    }
                    if self
                        .with_swim(now_ms, |swim, rt| swim.handle_timer(timer, rt))
                        .is_err()
                    {
                        self.stats.internal_errors += 1;
                    }
                    self.after_call(now_ms);
                }
                (_, Some((i, d))) if d <= now_ms => {
                    let s = self.suspicions.swap_remove(i);
                    let timer = Timer::ChangeSuspectToDown {
                        member_id: s.target,
                        incarnation: s.incarnation,
                        token: s.token,
                    };
                    if self
                        .with_swim(now_ms, |swim, rt| swim.handle_timer(timer, rt))
                        .is_err()
                    {
                        self.stats.internal_errors += 1;
                    }
                    self.after_call(now_ms);
                }
                _ => break,
            }
        }
        if late {
            self.raise_local_health();
        }
        while let Some(&(due, addr)) = self.health_deadlines.first() {
            if due > now_ms {
                break;
            }
            self.health_deadlines.pop_first();
            let timeout_ms = self.opts.health.timeout_ms;
            let Some(e) = self.members.get_mut(&addr) else {
                continue;
            };
            e.health_deadline = None;
            if !e.state.is_active() || self.refused.contains_key(&e.id) {
                continue;
            }
            let what = format!(
                "no data-plane answer within {} ms",
                self.opts.health.timeout_ms
            );
            self.health_check(addr, false, &what);
            self.set_health_deadline(addr, Some(now_ms.saturating_add(timeout_ms)));
        }
        if self.state == LocalState::Joined && now_ms >= self.next_roster_ms {
            self.push_pull(now_ms);
        }
        if self.reconnecting() && now_ms >= self.next_reconnect_ms {
            self.next_reconnect_ms = now_ms.saturating_add(self.opts.reconnect_interval_ms);
            self.reconnect(now_ms);
        }
        if now_ms >= self.next_prune_ms {
            self.next_prune_ms = now_ms.saturating_add(PRUNE_EVERY_MS);
            self.prune(now_ms);
        }
        self.after_call(now_ms);
    }

    /// When [`Membership::handle_timeout`] should next be called (Unix ms); `None` once left.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.state == LocalState::Left {
            return None;
        }
        let timers = self.rt.timers.first_key_value().map(|(k, _)| k.0);
        let susp = self.suspicions.iter().map(|s| s.due_ms).min();
        let health = self.health_deadlines.first().map(|(d, _)| *d);
        let reconnect = self.reconnecting().then_some(self.next_reconnect_ms);
        let roster = (self.state == LocalState::Joined).then_some(self.next_roster_ms);
        [timers, susp, health, reconnect, roster]
            .into_iter()
            .flatten()
            .min()
            .map(|t| t.min(self.next_prune_ms))
    }

    /// The next payload to send, and to which gossip address.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        let t = self.rt.transmits.pop_front()?;
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += t.1.len() as u64;
        Some(t)
    }

    /// The next event, in the order they happened.
    pub fn poll_event(&mut self) -> Option<MembershipEvent> {
        self.events.pop_front()
    }

    /// Leaves the cluster on purpose: declares this identity down, spreads a leave notice to up to the
    /// retransmit limit of members at once (queued on [`Membership::poll_transmit`]), and stops. The others
    /// report [`MembershipEvent::MemberLeft`], not suspect. Later calls are refused with
    /// [`MembershipError::Left`]; calling `leave` again is a no-op.
    pub fn leave(&mut self, now_ms: u64) -> Result<(), MembershipError> {
        if self.state == LocalState::Left {
            return Ok(());
        }
        lock(&self.shared).now_ms = now_ms;
        let notice = BroadcastItem::Leave(self.local.clone()).encode();
        let _ = self.swim.add_broadcast(&notice);
        let max_tx = usize::from(self.opts.max_transmissions(self.live));
        let extra_rounds = max_tx.div_ceil(self.opts.indirect_probes).saturating_sub(1);
        let result = self.with_swim(now_ms, |swim, mut rt| {
            swim.leave_cluster(&mut rt)?;
            for _ in 0..extra_rounds {
                swim.gossip(&mut rt)?;
            }
            Ok(())
        });
        self.state = LocalState::Left;
        self.rt.timers.clear();
        self.suspicions.clear();
        self.health_deadlines.clear();
        self.changed = true;
        self.after_call(now_ms);
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
        if self.state == LocalState::Left {
            return Err(MembershipError::Left);
        }
        let member = member.into();
        let addr = match member {
            MemberRef::Addr(a) => a,
            MemberRef::Replica(r) => *self
                .by_replica
                .get(&r)
                .ok_or(MembershipError::UnknownMember(member))?,
        };
        let (state, refused) = self
            .members
            .get(&addr)
            .map(|e| (e.state, self.refused.contains_key(&e.id)))
            .ok_or(MembershipError::UnknownMember(member))?;
        if refused {
            return Err(MembershipError::RefusedDuplicate(member));
        }
        if !state.is_active() {
            return Err(MembershipError::NotActive { member, state });
        }
        let what = if ok {
            if reason.is_empty() {
                "data-plane exchange answered"
            } else {
                reason
            }
        } else if reason.is_empty() {
            "data-plane exchange failed"
        } else {
            reason
        };
        self.health_check(addr, ok, what);
        if self.opts.health.require_data_plane {
            self.set_health_deadline(
                addr,
                Some(now_ms.saturating_add(self.opts.health.timeout_ms)),
            );
        }
        self.after_call(now_ms);
        Ok(())
    }

    /// The latest member table snapshot (lock-free).
    pub fn members(&self) -> Arc<MemberTable> {
        self.table.load_full()
    }

    /// A handle other threads can read the member table from, lock-free, without owning the state machine.
    pub fn reader(&self) -> MembershipReader {
        MembershipReader {
            table: Arc::clone(&self.table),
        }
    }

    /// Cluster health now (rule in the [module docs](self)).
    pub fn cluster_health(&self) -> ClusterHealth {
        self.cluster_health
    }

    /// This node's current identity (it changes when the node renews it after being declared down).
    pub fn local_id(&self) -> &MemberId {
        &self.local
    }

    /// This node's standing.
    pub fn local_state(&self) -> LocalState {
        self.state
    }

    /// True while at least one live member knows this node.
    pub fn is_joined(&self) -> bool {
        self.state == LocalState::Joined
    }

    /// Lifeguard local health multiplier (0 = healthy).
    pub fn local_health(&self) -> u32 {
        self.lhm
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
        self.refused.get(&e.id).map(|(holder, _)| holder)
    }

    /// True when the member with `replica_id` is a refused duplicate: nothing is replicated to or from it.
    pub fn is_refused(&self, replica_id: u64) -> bool {
        self.by_replica
            .get(&replica_id)
            .and_then(|addr| self.members.get(addr))
            .is_some_and(|e| self.refused.contains_key(&e.id))
    }

    /// The holder of this node's own node id while this node is a refused duplicate (an older live member at
    /// another address has it); `None` when this node is the member.
    pub fn local_refused_by(&self) -> Option<&MemberId> {
        self.local_refused.as_ref()
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

    // ----- internals -----

    fn with_swim<T>(
        &mut self,
        now_ms: u64,
        f: impl FnOnce(&mut Swim, Rt<'_>) -> Result<T, foca::Error>,
    ) -> Result<T, foca::Error> {
        lock(&self.shared).now_ms = now_ms;
        let rt = Rt {
            now_ms,
            stretch: 1 + u64::from(self.lhm),
            buf: &mut self.rt,
        };
        f(&mut self.swim, rt)
    }

    fn reconnecting(&self) -> bool {
        self.ever_joined && self.state == LocalState::Alone
    }

    fn raise_local_health(&mut self) {
        let next = (self.lhm + 1).min(self.opts.max_local_health);
        if next != self.lhm {
            self.lhm = next;
            self.soft_changed = true;
        }
    }

    fn lower_local_health(&mut self) {
        if self.lhm > 0 {
            self.lhm -= 1;
            self.soft_changed = true;
        }
    }

    /// Called before foca starts the next probe: was the previous one answered?
    fn evaluate_probe(&mut self) {
        let Some(p) = self.probe.take() else {
            return;
        };
        let addr = p.target.addr;
        let active = self
            .members
            .get(&addr)
            .is_some_and(|e| e.id == p.target && e.state.is_active());
        if !active {
            return;
        }
        if p.acked {
            self.lower_local_health();
            if !self.opts.health.require_data_plane {
                self.health_check(addr, true, "SWIM probe answered");
            }
        } else {
            self.raise_local_health();
            self.health_check(
                addr,
                false,
                "no SWIM ack (direct or indirect) within the probe interval",
            );
        }
    }

    fn health_check(&mut self, addr: SocketAddr, ok: bool, what: &str) {
        let Some(e) = self.members.get_mut(&addr) else {
            return;
        };
        if self.refused.contains_key(&e.id) {
            return; // not a member: no health checks
        }
        if e.health.record(&self.opts.health, ok, what) {
            self.events.push_back(MembershipEvent::HealthChanged {
                member: e.id.clone(),
                healthy: e.health.healthy,
                reason: e.health.reason.to_string(),
            });
            self.changed = true;
        } else {
            self.soft_changed = true;
        }
    }

    fn set_health_deadline(&mut self, addr: SocketAddr, deadline: Option<u64>) {
        let Some(e) = self.members.get_mut(&addr) else {
            return;
        };
        if let Some(old) = e.health_deadline.take() {
            self.health_deadlines.remove(&(old, addr));
        }
        if let Some(d) = deadline {
            e.health_deadline = Some(d);
            self.health_deadlines.insert((d, addr));
        }
    }

    /// Drains what foca and its codec reported during the last call(s) and brings the table, events,
    /// timers and cluster health up to date.
    fn after_call(&mut self, now_ms: u64) {
        for _round in 0..8 {
            let (received, pings, decoded, self_suspected, broadcasts) = {
                let mut obs = lock(&self.shared);
                (
                    std::mem::take(&mut obs.received),
                    std::mem::take(&mut obs.pings_sent),
                    std::mem::take(&mut obs.members_decoded),
                    obs.self_suspected.take(),
                    std::mem::take(&mut obs.broadcasts),
                )
            };
            let mut scan = decoded > 0
                || !self.rt.suspected.is_empty()
                || std::mem::take(&mut self.force_scan);
            let mut rtt_sample: Option<(MemberId, f64)> = None;
            for h in &received {
                match self.members.get(&h.src.addr) {
                    Some(e) if e.id == h.src => {
                        if e.incarnation != h.src_incarnation || e.state != MemberState::Alive {
                            scan = true;
                        }
                    }
                    _ => scan = true,
                }
                let Some(p) = self.probe.as_mut() else {
                    continue;
                };
                let acked = match h.kind {
                    ReceivedKind::Ack(n) => p.target == h.src && p.number == n,
                    ReceivedKind::ForwardedAck(origin, n) => {
                        p.target.addr == origin && p.number == n
                    }
                    ReceivedKind::Other => false,
                };
                if acked && !p.acked {
                    p.acked = true;
                    if let ReceivedKind::Ack(_) = h.kind {
                        let sample = now_ms.saturating_sub(p.sent_ms) as f64;
                        rtt_sample = Some((p.target.clone(), sample));
                    }
                }
            }
            if let Some((target, number)) = pings.into_iter().last() {
                self.probe = Some(ProbeTrack {
                    target,
                    number,
                    sent_ms: now_ms,
                    acked: false,
                });
            }
            if self_suspected.is_some() {
                self.raise_local_health();
            }
            for n in std::mem::take(&mut self.rt.notifications) {
                match n {
                    OwnedNotification::Active => {
                        if !matches!(self.state, LocalState::Left | LocalState::Defunct) {
                            self.state = LocalState::Joined;
                            self.changed = true;
                            self.sync_pending = true;
                            if !self.ever_joined {
                                self.ever_joined = true;
                                self.joined_pending = true;
                            }
                        }
                    }
                    OwnedNotification::Idle => {
                        if self.state == LocalState::Joined {
                            self.state = LocalState::Alone;
                            self.next_reconnect_ms = now_ms;
                            self.changed = true;
                        }
                    }
                    OwnedNotification::Defunct => {
                        if self.state != LocalState::Left {
                            self.state = LocalState::Defunct;
                            self.events.push_back(MembershipEvent::Defunct);
                            self.changed = true;
                        }
                    }
                    OwnedNotification::Rejoin(id) => {
                        self.local = id.clone();
                        self.events.push_back(MembershipEvent::Rejoined(id));
                        self.changed = true;
                    }
                    _ => scan = true,
                }
            }
            let mut pending_down: Vec<MemberId> = Vec::new();
            for item in broadcasts {
                match item {
                    BroadcastItem::Leave(id) => {
                        if id.addr == self.local.addr {
                            continue;
                        }
                        self.left_ids.entry(id.clone()).or_insert(now_ms);
                        if let Some(e) = self.members.get(&id.addr)
                            && e.id == id
                            && e.state != MemberState::Left
                        {
                            if e.state.is_active() {
                                pending_down.push(id);
                            } else {
                                scan = true;
                            }
                        }
                    }
                    BroadcastItem::Suspicion {
                        target,
                        incarnation,
                        from,
                    } => {
                        if from.addr == self.local.addr {
                            continue;
                        }
                        let key = (target, incarnation);
                        let set = self.confirmations.entry(key.clone()).or_default();
                        if set.insert(from.addr) {
                            let c = u32::try_from(set.len()).unwrap_or(u32::MAX);
                            for s in &mut self.suspicions {
                                if s.target == key.0 && s.incarnation == key.1 {
                                    s.due_ms = s.started_ms.saturating_add(suspicion_timeout_ms(
                                        s.min_ms, s.max_ms, s.k, c,
                                    ));
                                }
                            }
                        }
                    }
                }
            }
            if scan {
                self.sync_members(now_ms);
            }
            for h in received {
                if let Some(e) = self.members.get_mut(&h.src.addr)
                    && e.id == h.src
                {
                    e.last_seen_ms = Some(now_ms);
                    self.soft_changed = true;
                }
            }
            if let Some((target, sample)) = rtt_sample
                && let Some(e) = self.members.get_mut(&target.addr)
                && e.id == target
            {
                e.rtt_ms = Some(match e.rtt_ms {
                    Some(old) => old + (sample - old) * RTT_GAIN,
                    None => sample,
                });
                self.soft_changed = true;
            }
            for (target, incarnation, token) in std::mem::take(&mut self.rt.suspected) {
                self.start_suspicion(target, incarnation, token, now_ms);
            }
            if self.joined_pending {
                self.joined_pending = false;
                let peers = self.active_count();
                self.events.push_back(MembershipEvent::Joined { peers });
            }
            if self.sync_pending {
                self.sync_pending = false;
                self.push_pull(now_ms);
                // Early follow-ups (5, 10, 20, … probe intervals later, until the regular period): in a join
                // storm the first peers' rosters are themselves incomplete.
                self.resync_step_ms = JOIN_RESYNC_PROBES * self.opts.probe_interval_ms;
                let early = now_ms.saturating_add(self.resync_step_ms);
                self.next_roster_ms = self.next_roster_ms.min(early);
            }
            if pending_down.is_empty() {
                break;
            }
            let updates = pending_down.into_iter().map(Member::down);
            if self
                .with_swim(now_ms, |swim, rt| swim.apply_many(updates, true, rt))
                .is_err()
            {
                self.stats.internal_errors += 1;
            }
        }
        if self.changed {
            self.live = 1 + self.active_count();
            if self.live != self.sized_for {
                let old = self.opts.foca_config(self.sized_for);
                let new = self.opts.foca_config(self.live);
                if old.max_transmissions != new.max_transmissions
                    || old.suspect_to_down_after != new.suspect_to_down_after
                {
                    // Only non-probe parameters differ, which foca accepts at runtime.
                    if self.swim.set_config(new).is_err() {
                        self.stats.internal_errors += 1;
                    }
                }
                self.sized_for = self.live;
            }
            let health = self.compute_cluster_health();
            if health != self.cluster_health {
                self.cluster_health = health;
                self.events
                    .push_back(MembershipEvent::ClusterHealthChanged(health));
            }
            self.publish(now_ms);
        } else if self.soft_changed
            && now_ms
                >= self
                    .last_publish_ms
                    .saturating_add(self.opts.publish_interval_ms)
        {
            self.publish(now_ms);
        }
    }

    /// Active members, refused duplicates excluded.
    fn active_count(&self) -> usize {
        self.members
            .values()
            .filter(|e| e.state.is_active() && !self.refused.contains_key(&e.id))
            .count()
    }

    /// Lifeguard: a probe of `target` by this node failed; start (or refresh) its suspicion timer and tell
    /// the others (a confirmation for theirs).
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
        if let Some(s) = self
            .suspicions
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
            .confirmations
            .get(&(target.clone(), incarnation))
            .map_or(0, |s| u32::try_from(s.len()).unwrap_or(u32::MAX));
        let due_ms = now_ms.saturating_add(suspicion_timeout_ms(min_ms, max_ms, k, c));
        self.stats.suspicions_started += 1;
        let notice = BroadcastItem::Suspicion {
            target: target.clone(),
            incarnation,
            from: self.local.clone(),
        }
        .encode();
        lock(&self.shared).now_ms = now_ms;
        let _ = self.swim.add_broadcast(&notice);
        self.suspicions.push(PendingSuspicion {
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

    /// Compares foca's member list with the table and emits the differences, then settles which identity
    /// holds each node id (see [`Membership::node_id_holders`]).
    fn sync_members(&mut self, now_ms: u64) {
        self.scan_gen += 1;
        let scan = self.scan_gen;
        let snapshot: Vec<(MemberId, Incarnation, MemberState)> = self
            .swim
            .iter_membership_state()
            .map(|m| {
                let id = m.id();
                let state = match m.state() {
                    State::Alive => MemberState::Alive,
                    State::Suspect => MemberState::Suspect,
                    State::Down
                        if self.left_ids.contains_key(id) || self.superseded.contains_key(id) =>
                    {
                        MemberState::Left
                    }
                    State::Down => MemberState::Down,
                };
                (id.clone(), m.incarnation(), state)
            })
            .collect();
        let holders = self.node_id_holders(&snapshot);
        for (id, incarnation, state) in snapshot {
            let addr = id.addr;
            // A live identity that does not hold its node id is a refused duplicate; one that was refused and
            // now holds it (the holder left or went down) takes over.
            let holder = holders.get(&id.node_id).filter(|h| **h != id);
            let mut promoted = false;
            match holder {
                Some(holder) if state.is_active() => self.refuse(&id, holder, now_ms),
                _ if state.is_active() => promoted = self.refused.remove(&id).is_some(),
                _ => {}
            }
            let known = self.members.get(&addr).map(|e| (e.id.clone(), e.state));
            match known {
                Some((old_id, old_state)) if old_id == id => {
                    if let Some(e) = self.members.get_mut(&addr) {
                        e.scan = scan;
                        if e.incarnation != incarnation {
                            e.incarnation = incarnation;
                            self.changed = true;
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
                        let was_member = !self.refused.contains_key(&old_id);
                        self.forget(addr);
                        if was_member {
                            self.events.push_back(MembershipEvent::MemberReplaced {
                                old: old_id,
                                new: id.clone(),
                            });
                        }
                    }
                    let mut health = HealthTracker::new(&self.opts.health);
                    if !state.is_active() {
                        health.force_unhealthy(if state == MemberState::Left {
                            "member left"
                        } else {
                            "member is down"
                        });
                    }
                    self.by_replica.insert(id.replica_id, addr);
                    self.by_node.insert((Arc::clone(&id.node_id), addr));
                    self.members.insert(
                        addr,
                        Entry {
                            id: id.clone(),
                            state,
                            incarnation,
                            health,
                            last_seen_ms: None,
                            rtt_ms: None,
                            health_deadline: None,
                            scan,
                        },
                    );
                    self.changed = true;
                    if state.is_active() && !self.refused.contains_key(&id) {
                        self.member_up(&id, state, now_ms);
                    }
                }
            }
        }
        let forgotten: Vec<SocketAddr> = self
            .members
            .iter()
            .filter(|(_, e)| e.scan != scan)
            .map(|(a, _)| *a)
            .collect();
        for addr in forgotten {
            self.forget(addr);
            self.changed = true;
        }
        let members = &self.members;
        self.suspicions.retain(|s| {
            members.get(&s.target.addr).is_some_and(|e| {
                e.id == s.target
                    && e.state == MemberState::Suspect
                    && e.incarnation == s.incarnation
            })
        });
        // A node id whose holder took over from an older identity that is down (a restart at a new address
        // after a crash): the older one was replaced, so it is shown left and does not count against cluster
        // health.
        for holder in holders.values() {
            let lo = (
                Arc::clone(&holder.node_id),
                SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
            );
            let replaced: Vec<(SocketAddr, MemberId)> = self
                .by_node
                .range(lo..)
                .take_while(|(node, _)| **node == *holder.node_id)
                .filter(|(_, addr)| *addr != holder.addr)
                .filter_map(|(_, addr)| self.members.get(addr).map(|e| (*addr, e)))
                .filter(|(_, e)| {
                    e.state == MemberState::Down
                        && holder.supersedes(&e.id)
                        && !self.refused.contains_key(&e.id)
                })
                .map(|(addr, e)| (addr, e.id.clone()))
                .collect();
            for (addr, older) in replaced {
                self.superseded
                    .entry(older)
                    .or_insert((holder.clone(), now_ms));
                self.transition(addr, MemberState::Down, MemberState::Left);
            }
        }
        // This node itself may be the duplicate.
        let local_holder = holders
            .get(&self.local.node_id)
            .filter(|h| **h != self.local)
            .cloned();
        match (&self.local_refused, local_holder) {
            (None, Some(holder)) => {
                self.events.push_back(MembershipEvent::RefusedAsDuplicate {
                    holder: holder.clone(),
                });
                self.local_refused = Some(holder);
                self.changed = true;
            }
            (Some(old), Some(holder)) if *old != holder => {
                // The holder renewed its identity (same process): no new report.
                if (old.replica_id, old.addr) != (holder.replica_id, holder.addr) {
                    self.events.push_back(MembershipEvent::RefusedAsDuplicate {
                        holder: holder.clone(),
                    });
                }
                self.local_refused = Some(holder);
                self.changed = true;
            }
            (Some(_), None) => {
                if let Some(holder) = self.local_refused.take() {
                    self.events
                        .push_back(MembershipEvent::DuplicateCleared { holder });
                }
                self.changed = true;
            }
            _ => {}
        }
    }

    /// Which identity holds each node id that foca knows (this node's own included): the one that started
    /// first among the live ones (alive or suspect, and this node itself). Every node applies the same rule to
    /// the same SWIM states, so they agree once SWIM has converged. A later live identity of the same node id
    /// at another address is a refused duplicate; it takes over once the holder leaves or is declared down.
    /// (The same address is foca's address conflict: the later start wins it at once, a restart.)
    fn node_id_holders(
        &self,
        snapshot: &[(MemberId, Incarnation, MemberState)],
    ) -> BTreeMap<Arc<str>, MemberId> {
        let mut holders: BTreeMap<Arc<str>, MemberId> = BTreeMap::new();
        let live = snapshot
            .iter()
            .filter(|(_, _, state)| state.is_active())
            .map(|(id, _, _)| id);
        for id in std::iter::once(&self.local).chain(live) {
            match holders.get_mut(&id.node_id) {
                Some(holder) if holder.supersedes(id) => *holder = id.clone(),
                Some(_) => {}
                None => {
                    holders.insert(Arc::clone(&id.node_id), id.clone());
                }
            }
        }
        holders
    }

    /// Marks `id` a refused duplicate of `holder`'s node id (reported once per identity). If it was a member,
    /// it stops being one: no health checks, not counted.
    fn refuse(&mut self, id: &MemberId, holder: &MemberId, now_ms: u64) {
        if let Some((known, _)) = self.refused.get_mut(id) {
            if known != holder {
                // The holder renewed its identity (or another live one started earlier): no new report.
                *known = holder.clone();
                self.changed = true;
            }
            return;
        }
        self.refused.insert(id.clone(), (holder.clone(), now_ms));
        self.set_health_deadline(id.addr, None);
        self.events.push_back(MembershipEvent::DuplicateRefused {
            duplicate: id.clone(),
            holder: holder.clone(),
        });
        self.changed = true;
    }

    /// Reports `id` (at its address, already in the table) up as a member in `state`, and arms its data-plane
    /// deadline.
    fn member_up(&mut self, id: &MemberId, state: MemberState, now_ms: u64) {
        self.changed = true;
        self.events.push_back(MembershipEvent::MemberUp(id.clone()));
        if state == MemberState::Suspect {
            self.events
                .push_back(MembershipEvent::MemberSuspect(id.clone()));
        }
        if self.opts.health.require_data_plane {
            self.set_health_deadline(
                id.addr,
                Some(now_ms.saturating_add(self.opts.health.timeout_ms)),
            );
        }
    }

    fn transition(&mut self, addr: SocketAddr, from: MemberState, to: MemberState) {
        let Some(e) = self.members.get_mut(&addr) else {
            return;
        };
        let id = e.id.clone();
        self.changed = true;
        if self.refused.contains_key(&id) {
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
                self.events.push_back(MembershipEvent::MemberSuspect(id));
            }
            (MemberState::Suspect, MemberState::Alive) => {
                self.events.push_back(MembershipEvent::MemberAlive(id));
            }
            (_, MemberState::Down) => {
                self.events
                    .push_back(MembershipEvent::MemberDown(id.clone()));
                if e.health.force_unhealthy("member is down") {
                    self.events.push_back(MembershipEvent::HealthChanged {
                        member: id,
                        healthy: false,
                        reason: "member is down".into(),
                    });
                }
            }
            (_, MemberState::Left) => {
                let why = match self.superseded.get(&id) {
                    Some((new, _)) => {
                        self.events.push_back(MembershipEvent::MemberReplaced {
                            old: id.clone(),
                            new: new.clone(),
                        });
                        "replaced by a newer identity of the same node"
                    }
                    None => {
                        self.events
                            .push_back(MembershipEvent::MemberLeft(id.clone()));
                        "member left"
                    }
                };
                if e.health.force_unhealthy(why) {
                    self.events.push_back(MembershipEvent::HealthChanged {
                        member: id,
                        healthy: false,
                        reason: why.into(),
                    });
                }
            }
            (_, MemberState::Alive | MemberState::Suspect) => {
                self.events.push_back(MembershipEvent::MemberUp(id.clone()));
                if to == MemberState::Suspect {
                    self.events.push_back(MembershipEvent::MemberSuspect(id));
                }
            }
        }
        e.state = to;
        if !to.is_active() {
            self.set_health_deadline(addr, None);
        }
    }

    fn forget(&mut self, addr: SocketAddr) {
        self.set_health_deadline(addr, None);
        if let Some(e) = self.members.remove(&addr) {
            if self.by_replica.get(&e.id.replica_id) == Some(&addr) {
                self.by_replica.remove(&e.id.replica_id);
            }
            self.by_node.remove(&(Arc::clone(&e.id.node_id), addr));
            self.refused.remove(&e.id);
        }
    }

    /// Push-pull roster sync: sends this node's whole member list to one random live member, asking for its
    /// own in return, and schedules the next one.
    fn push_pull(&mut self, now_ms: u64) {
        let regular = self.opts.roster_sync_ms(self.live);
        let period = match regular {
            Some(p) if self.resync_step_ms > 0 && self.resync_step_ms < p => {
                let step = self.resync_step_ms;
                self.resync_step_ms = step.saturating_mul(2);
                Some(step)
            }
            other => {
                self.resync_step_ms = 0;
                other
            }
        };
        self.next_roster_ms = period.map_or(u64::MAX, |p| now_ms.saturating_add(p));
        let alive: Vec<SocketAddr> = self
            .members
            .values()
            .filter(|e| e.state == MemberState::Alive && !self.refused.contains_key(&e.id))
            .map(|e| e.id.addr)
            .collect();
        if alive.is_empty() {
            return;
        }
        let to = alive[self.rng.random_range(0..alive.len())];
        self.send_roster(to, true);
    }

    fn send_roster(&mut self, to: SocketAddr, reply: bool) {
        let incarnation = lock(&self.shared).local_incarnation;
        let mut roster = vec![Member::new(self.local.clone(), incarnation, State::Alive)];
        roster.extend(self.swim.iter_membership_state().cloned());
        for chunk in encode_roster(&self.local, reply, &roster, self.opts.max_packet_size) {
            self.rt.transmits.push_back((to, chunk));
        }
    }

    /// A roster chunk: apply it as foca's `apply_many` (without re-broadcasting what the sender already
    /// knows) and, if asked and not too often for this sender, answer with ours.
    fn handle_roster(
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
        let members: Vec<Member<MemberId>> = chunk
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
        let result = self.with_swim(now_ms, |swim, rt| {
            swim.apply_many(members.into_iter(), false, rt)
        });
        self.force_scan = true;
        if let Some(to) = reply_to {
            let last = self.roster_replies.get(&to).copied();
            if last.is_none_or(|t| now_ms.saturating_sub(t) >= self.opts.probe_interval_ms) {
                self.roster_replies.insert(to, now_ms);
                self.send_roster(to, false);
            }
        }
        self.after_call(now_ms);
        result.map_err(|e| MembershipError::Malformed {
            from,
            reason: format!("roster: {e}"),
        })
    }

    /// While alone after having been in a cluster, announce to a few members believed down.
    fn reconnect(&mut self, now_ms: u64) {
        self.announce_to_random(MemberState::Down, RECONNECT_FANOUT, now_ms);
    }

    /// Announces this node to up to `count` distinct random members in `state`.
    fn announce_to_random(&mut self, state: MemberState, count: usize, now_ms: u64) {
        let mut candidates: Vec<MemberId> = self
            .members
            .values()
            .filter(|e| e.state == state)
            .map(|e| e.id.clone())
            .collect();
        for _ in 0..count.min(candidates.len()) {
            let pick = self.rng.random_range(0..candidates.len());
            let dst = candidates.swap_remove(pick);
            if self
                .with_swim(now_ms, |swim, rt| swim.announce(dst, rt))
                .is_err()
            {
                self.stats.internal_errors += 1;
            }
        }
    }

    fn prune(&mut self, now_ms: u64) {
        let members = &self.members;
        self.refused
            .retain(|id, _| members.get(&id.addr).is_some_and(|e| e.id == *id));
        let ttl = SEEN_TTL_MS.max(self.opts.suspicion_max_ms(self.live).saturating_mul(2));
        lock(&self.shared)
            .seen
            .retain(|_, first| now_ms.saturating_sub(*first) < ttl);
        let members = &self.members;
        self.left_ids.retain(|id, first| {
            members.get(&id.addr).is_some_and(|e| e.id == *id)
                || now_ms.saturating_sub(*first) < ttl
        });
        self.roster_replies
            .retain(|_, t| now_ms.saturating_sub(*t) < PRUNE_EVERY_MS);
        self.superseded.retain(|id, (_, first)| {
            members.get(&id.addr).is_some_and(|e| e.id == *id)
                || now_ms.saturating_sub(*first) < ttl
        });
        self.confirmations.retain(|(target, inc), _| {
            members
                .get(&target.addr)
                .is_some_and(|e| e.id == *target && e.state.is_active() && e.incarnation <= *inc)
        });
    }

    fn compute_cluster_health(&self) -> ClusterHealth {
        let self_ok = self.local_refused.is_none()
            && match self.state {
                LocalState::Left | LocalState::Defunct => false,
                LocalState::Joined => true,
                LocalState::Alone => !self.join_requested,
            };
        if !self_ok {
            return ClusterHealth::NotHealthy;
        }
        let (mut total, mut good) = (1usize, 1usize);
        for e in self.members.values() {
            if e.state == MemberState::Left || self.refused.contains_key(&e.id) {
                continue;
            }
            total += 1;
            if e.state.is_active() && e.health.healthy {
                good += 1;
            }
        }
        if 2 * good > total {
            ClusterHealth::Healthy
        } else {
            ClusterHealth::NotHealthy
        }
    }

    fn publish(&mut self, now_ms: u64) {
        let mut refused: Vec<RefusedInfo> = Vec::new();
        let mut members: Vec<MemberInfo> = Vec::with_capacity(self.members.len());
        for e in self.members.values() {
            if let Some((holder, since_ms)) = self.refused.get(&e.id) {
                if e.state.is_active() {
                    refused.push(RefusedInfo {
                        id: e.id.clone(),
                        holder: holder.clone(),
                        since_ms: *since_ms,
                    });
                }
                continue;
            }
            members.push(MemberInfo {
                id: e.id.clone(),
                state: e.state,
                healthy: e.health.healthy,
                health_reason: Arc::clone(&e.health.reason),
                incarnation: e.incarnation,
                last_seen_ms: e.last_seen_ms,
                rtt_ms: e.rtt_ms.map(|r| r.round() as u64),
            });
        }
        members.sort_by(|a, b| (a.id.node_id(), a.id.addr).cmp(&(b.id.node_id(), b.id.addr)));
        refused.sort_by(|a, b| (a.id.node_id(), a.id.addr).cmp(&(b.id.node_id(), b.id.addr)));
        self.table.store(Arc::new(MemberTable {
            local: LocalInfo {
                id: self.local.clone(),
                state: self.state,
                local_health: self.lhm,
                refused_by: self.local_refused.clone(),
            },
            members,
            refused,
            cluster_health: self.cluster_health,
            published_ms: now_ms,
        }));
        self.changed = false;
        self.soft_changed = false;
        self.last_publish_ms = now_ms;
    }
}

#[cfg(test)]
mod tests;
