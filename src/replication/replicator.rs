//! The replication state machine (sans-IO): inputs are `handle_*` calls with the time, outputs are frames to
//! send, polled with [`Replicator::poll_transmit`]. The node runtime moves the bytes; the simulation harness
//! moves them through an in-memory network.
//!
//! Guarantees:
//! - Every local change is shipped: each flush drains the store's dirty cells and sends their absolute values
//!   to every peer (datagrams, each within the peer's current `max_datagram_size`; a frame that does not fit a
//!   datagram goes on a stream).
//! - Merging is a per-origin max, so loss, duplication and reordering are harmless; anti-entropy repairs loss:
//!   each interval, a digest goes to one random peer, which answers with the values of every origin whose
//!   fingerprint differs and asks for ours.
//! - Origins are bound to their sender: a peer is known by the replica id of its authenticated link (the
//!   `Hello` after mutual TLS, passed to [`Replicator::add_peer`]). A delta batch may carry only that replica's
//!   own values; any other group, and any frame whose `sender` field is not the link's replica id, is refused,
//!   counted per peer (`forged_entries`) and logged once per peer. State chunks may relay other origins only
//!   when those are not linked peers here (a linked member speaks for itself; its relayed values are skipped),
//!   and each peer may introduce at most `max_relayed_origins_per_peer` such origins (counted, logged once).
//!   Aggregate groups stay refused. Values from a link never given to [`Replicator::add_peer`] are refused.
//! - Anti-entropy never fails on size: a digest covers at most `max_digest_origins` origins (an origin range);
//!   the next round continues after it, so every origin is compared within `ceil(origins /
//!   max_digest_origins)` rounds. State transfers are packed into frames within the frame and entry limits, and
//!   state requests name at most [`MAX_REQUEST_ORIGINS`] origins each. Any encode error is counted
//!   (`encode_errors`).
//! - Floors (resets, see `CounterStore::reset`) travel in state chunks: the floors a local reset set go to every
//!   peer at the next flush; every digest carries a fingerprint of all recent floors, and a receiver whose
//!   floors differ sends all of its own, so a node that was down gets them at its first anti-entropy rounds.
//!   Floors are accepted from any peer (a reset is issued on one node for all) but never exceed the value a
//!   node holds for their origin: a floor can take back what was counted, never what is counted later.
//! - A node that gains its first peer asks it for its full state (current and previous epochs of every key);
//!   every later peer is asked for its own values.
//! - Data-plane checks: every `check_interval_ms` each peer gets a [`DataPing`] on a stream, which its
//!   replicator answers with a [`DataPong`]; answers come out of [`Replicator::poll_check`] with their round
//!   trip, so the membership plane can count a member healthy only while its replication path works. One
//!   check per peer is outstanding at a time; one unanswered for `check_timeout_ms` is counted and replaced.
//! - Large clusters ([`Replicator::set_topology`] with a grouped [`Topology`]): own values go to group peers
//!   only, a publisher sends its group's totals to the publishers of every other group and its group peers one
//!   rest aggregate per key (everything outside the group), digests go to group peers; a group aggregate is
//!   accepted only from a member of the group it sums, a rest only from a member of this node's own group (see
//!   `aggregation` and `counter::aggregate`). Without one, the full mesh. Aggregates go with their floor sums. A
//!   reset issued here also goes to every peer as a command, which every node applies once and passes on
//!   (`resets`). A publisher's answer to a group peer's state request carries its rests, and a node whose
//!   group changes asks its new group's linked publishers for their state.
//! - Errors caused by network input never panic: a bad frame is dropped whole and counted.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use crate::fixed_hash::HashSet;

use crate::timers::TimerTable;

use bytes::Bytes;

use crate::counter::{
    AggregateId, CounterError, CounterStore, DirtyEntry, FloorOutcome, MergeOutcome, ResetScope,
    SumOf,
};
use crate::wire::{
    self, ArchivedOriginGroup, ArchivedOriginKind, BatchPacker, DataPing, DataPong, DeltaBatch,
    Digest, Entry, Frame, OriginGroup, OriginKind, StateChunk, StateRequest, WireError, WireWindow,
};

use super::aggregation::Aggregation;
use super::digest;
use super::plane_core::{AntiEntropy, Channel, Outbox, PeerId, PeerSet, Transmit};
use super::resets::{FRESH_MS, Heard, MAX_RESETS_HELD, ResetLog};
use super::stats::{PeerStats, ReplicationStats};
use super::topology::Topology;
use crate::ReplicaId;
use crate::rng::SplitMix64;

/// Most origins one [`StateRequest`] names (a pull of more goes out as several requests).
pub const MAX_REQUEST_ORIGINS: usize = 8_192;

/// Default of [`ReplicatorOptions::max_digest_origins`]: 16,384 origins of 20 bytes, about 330 KB per digest.
pub const DEFAULT_MAX_DIGEST_ORIGINS: usize = 16_384;

/// Most origins one digest may cover: 40,000 of 20 bytes is 800 KB, within the 1 MiB frame limit (and below
/// the decoder's [`crate::wire::MAX_ORIGINS_PER_FRAME`]).
pub const MAX_DIGEST_ORIGINS: usize = 40_000;

/// Default of [`ReplicatorOptions::max_relayed_origins_per_peer`] (`limits.max_relayed_origins_per_peer`).
pub const DEFAULT_MAX_RELAYED_ORIGINS_PER_PEER: usize = 4_096;

/// Options of the replicator. Defaults match `cluster_config.replication`.
#[derive(Debug, Clone)]
pub struct ReplicatorOptions {
    /// How often dirty values are flushed, in ms. Default 5: fast enough that a burst on several nodes is seen
    /// everywhere within a few ms, slow enough that a hot key costs one datagram per peer per 5 ms (200/s), not
    /// one per increment.
    pub flush_interval_ms: u64,
    /// How often a digest goes to one random peer, in ms. Default 10,000.
    pub anti_entropy_interval_ms: u64,
    /// Datagram budget in bytes until a peer's link reports its `max_datagram_size`. Default 1,200 (fits the
    /// minimum QUIC path MTU with room for headers).
    pub max_batch_bytes: usize,
    /// Budget of one stream frame (state chunks), in bytes. Default 256 KiB.
    pub stream_chunk_bytes: usize,
    /// Most dirty cells drained per flush (the rest wait for the next). Default 65,536.
    pub max_cells_per_flush: usize,
    /// How often each peer gets a data-plane check ([`DataPing`]), in ms. Default 1,000; 0 disables checks.
    /// A check costs one small stream each way.
    pub check_interval_ms: u64,
    /// How long a check may stay unanswered before it is counted as timed out and replaced, in ms. Default
    /// 10,000 (`gossip.config.timeout_seconds`). Must be ≥ 1.
    pub check_timeout_ms: u64,
    /// Most origins one digest covers; a node holding more covers them over consecutive rounds. Default
    /// [`DEFAULT_MAX_DIGEST_ORIGINS`]; clamped to 1..=[`MAX_DIGEST_ORIGINS`] (a digest of that many origins
    /// still fits the frame limit).
    pub max_digest_origins: usize,
    /// Most distinct origins other than its own one peer may relay to us (state chunks) while it stays linked;
    /// origins that no longer hold values here stop counting at the next anti-entropy round. Default
    /// [`DEFAULT_MAX_RELAYED_ORIGINS_PER_PEER`] (`limits.max_relayed_origins_per_peer`). 0 refuses every relay.
    pub max_relayed_origins_per_peer: usize,
    /// Large clusters: how often a publisher sends its group's changed totals to its partners and the rests of
    /// the keys other groups changed to its group peers, in ms. Default 10 (two flushes): changes are coalesced
    /// per key over the interval. Must be ≥ 1.
    pub aggregate_interval_ms: u64,
}

/// A peer answered a data-plane check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckAnswered {
    /// The peer.
    pub peer: PeerId,
    /// Round trip from sending the ping to handling the pong, in ms.
    pub rtt_ms: u64,
}

impl ReplicatorOptions {
    /// Default `flush_interval_ms` (`replication.flush_interval`).
    pub const DEFAULT_FLUSH_INTERVAL_MS: u64 = 5;
    /// Default `anti_entropy_interval_ms` (`replication.anti_entropy_interval`).
    pub const DEFAULT_ANTI_ENTROPY_INTERVAL_MS: u64 = 10_000;
    /// Default `max_batch_bytes` (`replication.max_batch_bytes`).
    pub const DEFAULT_MAX_BATCH_BYTES: usize = 1_200;
    /// Default `check_timeout_ms` (`gossip.config.timeout_seconds` of 10).
    pub const DEFAULT_CHECK_TIMEOUT_MS: u64 = 10_000;

    /// The options with every interval and timeout at least 1 ms: what [`Replicator::new`] runs with, so no
    /// later step needs a guard against zero (`check_interval_ms` 0 keeps its meaning: no checks). The config
    /// refuses zero for the intervals it exposes; this covers hand-built options.
    fn normalized(mut self) -> ReplicatorOptions {
        self.flush_interval_ms = self.flush_interval_ms.max(1);
        self.anti_entropy_interval_ms = self.anti_entropy_interval_ms.max(1);
        self.check_timeout_ms = self.check_timeout_ms.max(1);
        self.aggregate_interval_ms = self.aggregate_interval_ms.max(1);
        self
    }
}

impl Default for ReplicatorOptions {
    fn default() -> ReplicatorOptions {
        ReplicatorOptions {
            flush_interval_ms: Self::DEFAULT_FLUSH_INTERVAL_MS,
            anti_entropy_interval_ms: Self::DEFAULT_ANTI_ENTROPY_INTERVAL_MS,
            max_batch_bytes: Self::DEFAULT_MAX_BATCH_BYTES,
            stream_chunk_bytes: 256 * 1024,
            max_cells_per_flush: 65_536,
            check_interval_ms: 1_000,
            check_timeout_ms: Self::DEFAULT_CHECK_TIMEOUT_MS,
            max_digest_origins: DEFAULT_MAX_DIGEST_ORIGINS,
            max_relayed_origins_per_peer: DEFAULT_MAX_RELAYED_ORIGINS_PER_PEER,
            aggregate_interval_ms: 10,
        }
    }
}

#[derive(Debug)]
struct Peer {
    /// The replica id of the peer's authenticated link: the only origin it may send values for directly.
    replica: u64,
    /// Origins other than its own the peer relayed and we accepted (bounded by `max_relayed_origins_per_peer`).
    relayed: HashSet<u64>,
    /// A forged value from this peer was logged (once per peer).
    forged_logged: bool,
    /// The peer reached its relay cap and that was logged (once per peer).
    relay_cap_logged: bool,
    max_datagram: usize,
    stats: PeerStats,
    /// When the next data-plane check is due (Unix ms; 0 = at the next timeout).
    next_check_ms: u64,
    /// The outstanding check: nonce and when it was sent.
    outstanding: Option<(u64, u64)>,
    /// The deadline this peer holds in `check_schedule`.
    scheduled_check_ms: u64,
    /// The state transfer asked for when the peer was added, until all its chunks arrived.
    awaited_state: Option<AwaitedState>,
}

/// A state transfer this node waits for: the request's id, the chunk count its first chunk announced and the
/// chunk indexes that arrived.
#[derive(Debug)]
struct AwaitedState {
    request_id: u64,
    total: Option<u32>,
    indexes: HashSet<u32>,
}

/// Most chunks an awaited state transfer may announce: each chunk carries at least one entry, and no store
/// holds this many keys, so a larger count is no honest answer and never completes the wait (start-up
/// admission then ends on its timeout). Bounds the awaited index set.
const MAX_AWAITED_CHUNKS: u32 = 1 << 22;

impl Peer {
    /// Notes a merged chunk of `request_id`: once every chunk of the awaited answer arrived (in any order;
    /// a duplicate counts once), the peer's state was received. Unsolicited chunks (anti-entropy pushes, id
    /// 0) and answers to other requests never complete it.
    fn note_state_chunk(&mut self, request_id: u64, index: u32, total: u32) {
        if self
            .awaited_state
            .as_mut()
            .is_some_and(|awaited| awaited.note(request_id, index, total))
        {
            self.stats.state_received = true;
            self.awaited_state = None;
        }
    }
}

impl AwaitedState {
    /// Notes chunk `index` of `total` of `request_id`; true once every chunk of the awaited answer arrived.
    fn note(&mut self, request_id: u64, index: u32, total: u32) -> bool {
        if request_id == 0 || self.request_id != request_id || total > MAX_AWAITED_CHUNKS {
            return false;
        }
        // Every chunk of one answer announces the same count: one that differs does not count.
        if *self.total.get_or_insert(total) != total {
            return false;
        }
        self.indexes.insert(index);
        self.indexes.len() as u64 >= u64::from(total)
    }
}

/// The replicator's timers (see [`TimerTable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// Drain the dirty cells and ship them.
    Flush,
    /// Send a digest to one random peer.
    AntiEntropy,
    /// Publish changed group totals and the rests they change (grouped layouts only).
    Aggregates,
}

/// The replication state machine of one node.
#[derive(Debug)]
pub struct Replicator {
    store: CounterStore,
    replica_id: u64,
    options: ReplicatorOptions,
    peers: PeerSet<Peer>,
    /// Every peer's next data-plane check deadline, ordered: the next one is the first (O(log P) to keep, so
    /// a timeout never scans the peers).
    check_schedule: BTreeSet<(u64, PeerId)>,
    sequence: u64,
    next_request_id: u64,
    /// The flush, the anti-entropy round and the aggregates (the checks have their own ordered schedule).
    timers: TimerTable<Timer>,
    /// When anti-entropy rounds are due and which peer each one goes to.
    anti_entropy: AntiEntropy,
    /// Lowest origin the next digest covers.
    digest_cursor: u64,
    /// When each linked origin was last asked for its own values because a relay hinted at a difference.
    pulled_at: BTreeMap<u64, u64>,
    /// The latest time passed in (Unix ms).
    now_ms: u64,
    asked_full_state: bool,
    outbox: Outbox,
    checks: VecDeque<CheckAnswered>,
    next_nonce: u64,
    stats: ReplicationStats,
    drained: Vec<DirtyEntry>,
    /// Two-level aggregation: the topology, what to publish and which rests to send.
    aggregation: Aggregation,
    /// The newest reset issued or heard per `(key, window, epoch)` (grouped layouts pass resets on as commands).
    resets: ResetLog,
    /// Commands issued while this node had no peer: sent at the first flush with one (at most
    /// [`MAX_RESETS_HELD`]).
    unsent_resets: Vec<(u64, DirtyEntry)>,
    /// A refused reset command was logged (once).
    reset_refusal_logged: bool,
    /// The active members (this node included) and whether each is suspect, for the bounded mode's owners
    /// (`counter::lease`): set by the node on membership changes, read by the lease tick before each flush.
    lease_members: Vec<(u64, bool)>,
}

/// Who a delta batch goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Targets {
    /// Peers that get this node's own values: every peer in the full mesh, the group peers when grouped.
    Deltas,
    /// This node's partners in other groups (it publishes its group's aggregate to them).
    Partners,
}

impl Replicator {
    /// A replicator for `store`, whose own values it ships as origin `replica_id` (the number inside,
    /// [`ReplicaId::get`]: inside the replicator replicas are counter origins). `seed` drives the choice of
    /// anti-entropy peers (randomness comes in from outside, so a simulation replays).
    pub fn new(
        store: CounterStore,
        replica_id: ReplicaId,
        options: ReplicatorOptions,
        seed: u64,
        now_ms: u64,
    ) -> Replicator {
        let replica_id = replica_id.get();
        let options = options.normalized();
        let flush = options.flush_interval_ms;
        // The picks draw from a generator of `seed`; the first round's offset is the first draw of a second
        // generator of `seed`, so it equals the first pick's draw (as before the schedule was shared: a seed
        // replays the same run).
        let anti_entropy =
            AntiEntropy::new(options.anti_entropy_interval_ms, SplitMix64::new(seed));
        Replicator {
            store,
            replica_id,
            peers: PeerSet::default(),
            check_schedule: BTreeSet::new(),
            sequence: 0,
            next_request_id: 1,
            timers: {
                let mut timers = TimerTable::default();
                timers.set(Timer::Flush, now_ms + flush);
                timers.set(Timer::Aggregates, now_ms + options.aggregate_interval_ms);
                timers.set(
                    Timer::AntiEntropy,
                    anti_entropy.first_round_ms(now_ms, SplitMix64::new(seed).next_u64()),
                );
                timers
            },
            anti_entropy,
            digest_cursor: 0,
            pulled_at: BTreeMap::new(),
            now_ms,
            asked_full_state: false,
            outbox: Outbox::default(),
            checks: VecDeque::new(),
            next_nonce: SplitMix64::new(seed ^ 0x5eed).next_u64(),
            stats: ReplicationStats::default(),
            drained: Vec::new(),
            aggregation: Aggregation::default(),
            resets: ResetLog::default(),
            unsent_resets: Vec::new(),
            reset_refusal_logged: false,
            lease_members: vec![(replica_id, false)],
            options,
        }
    }

    /// The store this replicator ships and merges into.
    pub fn store(&self) -> &CounterStore {
        &self.store
    }

    /// This node's replica id.
    pub fn replica_id(&self) -> ReplicaId {
        ReplicaId::new(self.replica_id)
    }

    /// A peer link became trusted (after the `Hello` exchange); `replica` is the replica id its authenticated
    /// `Hello` announced, the only origin the peer may send values for directly. The first peer ever is asked
    /// for its full state, every later one for its own values. Its first data-plane check goes out at the next
    /// [`Replicator::handle_timeout`].
    pub fn add_peer(&mut self, peer: PeerId, replica: ReplicaId, max_datagram: Option<usize>) {
        let replica = replica.get();
        let max_datagram = max_datagram.unwrap_or(self.options.max_batch_bytes);
        let old = self.peers.insert(
            peer,
            Peer {
                replica,
                relayed: HashSet::default(),
                forged_logged: false,
                relay_cap_logged: false,
                max_datagram,
                stats: PeerStats::default(),
                next_check_ms: 0,
                outstanding: None,
                scheduled_check_ms: 0,
                awaited_state: None,
            },
        );
        if let Some(old) = old {
            // A re-added peer keeps one schedule entry.
            self.check_schedule.remove(&(old.scheduled_check_ms, peer));
        }
        self.check_schedule.insert((0, peer));
        let origins = if self.asked_full_state {
            vec![replica]
        } else {
            self.asked_full_state = true;
            Vec::new()
        };
        // Everything or one origin: a single request, whose answer start-up admission waits for.
        // The resets this node remembers: a peer that was unreachable while one passed applies it to its own
        // value (see `resets`); one that already has it drops it.
        if self.aggregation.grouped() {
            let remembered: Vec<(u64, DirtyEntry)> = self
                .resets
                .remembered()
                .map(|((key, window, epoch), (id, issuer))| {
                    let entry = DirtyEntry {
                        key: Arc::clone(key),
                        window: *window,
                        epoch: *epoch,
                        value: id,
                    };
                    (issuer, entry)
                })
                .collect();
            if !remembered.is_empty() {
                self.send_entries(peer, 0, Vec::new(), Vec::new(), remembered);
            }
        }
        // A group peer may publish for the group: its answer then carries its rests.
        let rests = self.aggregation.gets_deltas(replica) && self.aggregation.grouped();
        if let [request_id] = self.request_state_with(peer, origins, rests)[..]
            && let Some(p) = self.peers.get_mut(peer)
        {
            p.awaited_state = Some(AwaitedState {
                request_id,
                total: None,
                indexes: HashSet::default(),
            });
        }
    }

    /// The replica id bound to `peer`'s link, if the peer was added.
    pub fn peer_replica(&self, peer: PeerId) -> Option<u64> {
        self.peers.get(peer).map(|p| p.replica)
    }

    /// A peer link is gone.
    pub fn remove_peer(&mut self, peer: PeerId) {
        if let Some(p) = self.peers.remove(peer) {
            self.pulled_at.remove(&p.replica);
            self.check_schedule.remove(&(p.scheduled_check_ms, peer));
        }
    }

    /// Moves `peer`'s entry in the check schedule to its current deadline.
    /// Checks `peer` at the next [`Replicator::handle_timeout`], forgetting a check still outstanding (it is not
    /// counted as timed out; its answer, if it comes, is ignored). For a peer whose link came up before its
    /// member was known: an answer that arrived meanwhile had no member to count for.
    pub fn check_now(&mut self, peer: PeerId) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.outstanding = None;
            p.next_check_ms = 0;
        }
        self.reschedule_check(peer);
    }

    fn reschedule_check(&mut self, peer: PeerId) {
        let timeout = self.options.check_timeout_ms;
        if let Some(p) = self.peers.get_mut(peer) {
            let due = match p.outstanding {
                Some((_, sent)) => sent.saturating_add(timeout),
                None => p.next_check_ms,
            };
            if due != p.scheduled_check_ms {
                self.check_schedule.remove(&(p.scheduled_check_ms, peer));
                self.check_schedule.insert((due, peer));
                p.scheduled_check_ms = due;
            }
        }
    }

    /// A relay or a digest showed that our copy of linked origin `origin`'s values may differ from its own: ask
    /// that origin itself (at most once per anti-entropy interval), since only its own values are merged.
    fn pull_from_origin(&mut self, origin: u64) {
        let Some((peer, _)) = self.peers.iter().find(|(_, p)| p.replica == origin) else {
            return;
        };
        let interval = self.options.anti_entropy_interval_ms;
        if self
            .pulled_at
            .get(&origin)
            .is_some_and(|&at| self.now_ms < at.saturating_add(interval))
        {
            return;
        }
        self.pulled_at.insert(origin, self.now_ms);
        self.request_state(peer, vec![origin]);
    }

    /// The peer's link reports a new `max_datagram_size` (it changes with the path MTU).
    pub fn set_max_datagram(&mut self, peer: PeerId, max_datagram: usize) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.max_datagram = max_datagram;
        }
    }

    /// Peers currently linked.
    pub fn peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.peers.ids()
    }

    /// The layout the node runtime computed from membership (see [`Topology`]). Until one is set, and while it
    /// is the full mesh, every peer gets every value and aggregates are refused. Grouped: own values go to the
    /// group peers only, a publisher publishes its group's totals to its partners (every other group's
    /// publishers) and the rest aggregates of the keys they change to its group peers, and anti-entropy runs among
    /// group peers. A node that starts publishing
    /// publishes every key its group holds at the next flush.
    pub fn set_topology(&mut self, topology: Topology) {
        let before = self.aggregation.topology().and_then(Topology::own_group);
        let after = topology.own_group();
        // A node that joins a group (at start, or when the group count changes) knows the other groups only
        // through its group's rests, which its publishers otherwise send when other groups' aggregates reach
        // them: up to an anti-entropy interval later for a quiet key. It asks the publishers it is linked to
        // for their state; their answer to a group peer carries every rest.
        let publishers: Vec<u64> = match after {
            Some(group) if after != before => topology
                .publishers(group.group())
                .iter()
                .map(|r| r.get())
                .filter(|&r| r != self.replica_id)
                .collect(),
            _ => Vec::new(),
        };
        if self.aggregation.set_topology(topology) {
            self.refresh_aggregates(self.now_ms);
        }
        let linked: Vec<(PeerId, u64)> = self
            .peers
            .iter()
            .filter(|(_, p)| publishers.contains(&p.replica))
            .map(|(peer, p)| (peer, p.replica))
            .collect();
        for (peer, replica) in linked {
            self.request_state_with(peer, vec![replica], true);
        }
    }

    /// The active members (this node's replica id included) and whether each is suspect: who may own a key of
    /// the bounded-overshoot mode (see [`CounterStore::lease_tick`]).
    pub fn set_lease_members(&mut self, members: Vec<(u64, bool)>) {
        self.lease_members = members;
    }

    /// The topology in force, if one was set.
    pub fn topology(&self) -> Option<&Topology> {
        self.aggregation.topology()
    }

    /// Queues every key of the own group's recent values for publishing (publishers only).
    fn refresh_aggregates(&mut self, now_ms: u64) {
        if self.aggregation.publishing().is_some() {
            let values = digest::values_by_origin(&self.store, self.replica_id, now_ms);
            self.refresh_aggregates_from(&values);
        }
    }

    /// [`Replicator::refresh_aggregates`] from values already collected by [`digest::values_by_origin`].
    fn refresh_aggregates_from(&mut self, values: &BTreeMap<u64, Vec<DirtyEntry>>) {
        let Some(group) = self.aggregation.publishing() else {
            return;
        };
        let keys: Vec<(std::sync::Arc<str>, crate::counter::Window, u64)> = values
            .iter()
            .filter(|&(&origin, _)| group.contains(origin))
            .flat_map(|(_, entries)| entries.iter().map(|e| (e.key.clone(), e.window, e.epoch)))
            .collect();
        self.aggregation.refresh(keys);
    }

    /// Counters of this replicator.
    pub fn stats(&self) -> &ReplicationStats {
        &self.stats
    }

    /// Linked peers whose state transfer has arrived in full at least once.
    pub fn peers_with_state(&self) -> usize {
        self.peers
            .values()
            .filter(|p| p.stats.state_received)
            .count()
    }

    /// Counters of one peer link.
    pub fn peer_stats(&self, peer: PeerId) -> Option<&PeerStats> {
        self.peers.get(peer).map(|p| &p.stats)
    }

    /// When [`Replicator::handle_timeout`] must next be called, in Unix ms.
    pub fn poll_timeout(&self) -> u64 {
        let mut due = self.timers.next_ms().unwrap_or(u64::MAX);
        if self.options.check_interval_ms > 0
            && let Some(&(check, _)) = self.check_schedule.first()
        {
            // A check is due at its schedule, or when the outstanding one times out.
            due = due.min(check);
        }
        due
    }

    /// Sending to `peer` failed (a stream refused or reset): its outstanding check, if any, cannot be answered;
    /// the next one goes out one interval from `now_ms` instead of waiting for the timeout. The caller counts
    /// the failure as a failed health check.
    pub fn check_failed(&mut self, peer: PeerId, now_ms: u64) {
        if let Some(p) = self.peers.get_mut(peer)
            && p.outstanding.take().is_some()
        {
            p.next_check_ms = now_ms.saturating_add(self.options.check_interval_ms);
            self.reschedule_check(peer);
        }
    }

    /// The next answered data-plane check, in the order they were answered.
    pub fn poll_check(&mut self) -> Option<CheckAnswered> {
        self.checks.pop_front()
    }

    /// Sends the data-plane checks due at `now_ms`; counts and replaces the ones that timed out.
    fn run_checks(&mut self, now_ms: u64) {
        if self.options.check_interval_ms == 0 {
            return;
        }
        let due: Vec<PeerId> = self
            .check_schedule
            .iter()
            .take_while(|&&(at, _)| at <= now_ms)
            .map(|&(_, peer)| peer)
            .collect();
        for peer in due {
            self.next_nonce = self.next_nonce.wrapping_add(1);
            let nonce = self.next_nonce;
            let Some(p) = self.peers.get_mut(peer) else {
                continue;
            };
            if p.outstanding.is_some() {
                self.stats.checks_timed_out += 1;
            }
            p.outstanding = Some((nonce, now_ms));
            p.next_check_ms = now_ms.saturating_add(self.options.check_interval_ms);
            self.reschedule_check(peer);
            let ping = DataPing {
                sender: self.replica_id,
                nonce,
            };
            match wire::encode(&ping) {
                Ok(frame) => {
                    self.stats.checks_sent += 1;
                    self.queue(peer, Channel::Stream, frame);
                }
                Err(error) => {
                    tracing::error!(%error, "failed to encode a data-plane check");
                    self.stats.encode_errors += 1;
                }
            }
        }
    }

    /// Runs what is due at `now_ms`: the flush, the anti-entropy round and the data-plane checks.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        self.run_checks(now_ms);
        let due = self.timers.take_due(now_ms);
        if due.contains(&Timer::Flush) {
            // The bounded mode's wants and top-ups first, so this flush ships them (see `counter::lease`).
            self.store.lease_tick(now_ms, &self.lease_members);
            self.flush(now_ms);
            self.timers
                .set(Timer::Flush, now_ms + self.options.flush_interval_ms);
        }
        if due.contains(&Timer::Aggregates) {
            self.send_aggregates(now_ms);
            self.timers.set(
                Timer::Aggregates,
                now_ms + self.options.aggregate_interval_ms,
            );
        }
        if due.contains(&Timer::AntiEntropy) {
            self.anti_entropy_round(now_ms);
            self.timers
                .set(Timer::AntiEntropy, self.anti_entropy.next_round_ms(now_ms));
        }
    }

    /// Drains the dirty cells now and queues their values for every peer (also the final flush on shutdown).
    pub fn flush(&mut self, now_ms: u64) {
        let floors = self.store.drain_floors();
        for (origin, e) in &floors {
            // A publisher's floor sum of its group changed.
            self.aggregation
                .value_changed(*origin, e.key.clone(), e.window, e.epoch);
        }
        let resets = self.reset_commands(now_ms);
        if (!floors.is_empty() || !resets.is_empty()) && !self.peers.is_empty() {
            let peers: Vec<PeerId> = self.peers.ids().collect();
            for peer in peers {
                self.send_entries(peer, 0, Vec::new(), floors.clone(), resets.clone());
            }
        }
        self.drained.clear();
        let max = self.options.max_cells_per_flush;
        let cells = self.store.drain_dirty(max, &mut self.drained);
        if self.peers.is_empty() {
            // Values are absolute: a peer that links later gets them through the state transfer.
            self.drained.clear();
            return;
        }
        let budget = self
            .peers
            .values()
            .map(|p| p.max_datagram)
            .min()
            .unwrap_or(self.options.max_batch_bytes);
        if cells > 0 {
            for e in &self.drained {
                self.aggregation
                    .value_changed(self.replica_id, e.key.clone(), e.window, e.epoch);
            }
        }
        let mut packer = BatchPacker::new(budget);
        let entries: Vec<Entry> = self.drained.drain(..).map(to_wire_entry).collect();
        for entry in entries {
            if let Some(groups) = packer.push(self.replica_id, entry) {
                self.send_batch(groups, now_ms, Targets::Deltas);
            }
        }
        if let Some(groups) = packer.finish() {
            self.send_batch(groups, now_ms, Targets::Deltas);
        }
    }

    /// The commands of the resets issued here since the last flush, when the layout is grouped (the full mesh
    /// needs none: every node holds the values the reset floored, and gets its floors).
    /// A command issued while this node has no peer waits for one.
    fn reset_commands(&mut self, now_ms: u64) -> Vec<(u64, DirtyEntry)> {
        let issued = self.store.drain_resets();
        if !self.aggregation.grouped() {
            return Vec::new();
        }
        let mut commands = std::mem::take(&mut self.unsent_resets);
        for (key, window, epoch) in issued {
            let id = self
                .resets
                .issue(key.clone(), window, epoch, self.replica_id, now_ms);
            let entry = DirtyEntry {
                key,
                window,
                epoch,
                value: id,
            };
            commands.push((self.replica_id, entry));
        }
        if self.peers.is_empty() {
            let excess = commands.len().saturating_sub(MAX_RESETS_HELD);
            commands.drain(..excess);
            self.stats.resets_dropped += excess as u64;
            self.unsent_resets = commands;
            return Vec::new();
        }
        commands
    }

    /// Grouped layouts: sends the changed totals of this node's group to its partners and the rests of the keys
    /// other groups changed to its group peers (if it publishes), each as few batches as fit.
    fn send_aggregates(&mut self, now_ms: u64) {
        if self.peers.is_empty() || !self.aggregation.grouped() {
            return;
        }
        let max = self.options.max_cells_per_flush;
        let budget = self
            .peers
            .values()
            .map(|p| p.max_datagram)
            .min()
            .unwrap_or(self.options.max_batch_bytes);
        let rests = self.aggregation.take_rests(&self.store, max);
        let published = self.aggregation.take_publish(&self.store, max);
        for (targets, batch) in [(Targets::Deltas, rests), (Targets::Partners, published)] {
            let Some(due) = batch else {
                continue;
            };
            let mut packer = BatchPacker::new(budget);
            // Floor sums first: a receiver that gets a batch takes the floor off before it counts the value.
            let entries = (due
                .floors
                .into_iter()
                .map(|e| (OriginKind::AggregateFloor, e)))
            .chain(due.values.into_iter().map(|e| (OriginKind::Aggregate, e)));
            for (kind, entry) in entries {
                if let Some(groups) = packer.push_kind(due.id, kind, entry) {
                    self.send_batch(groups, now_ms, targets);
                }
            }
            if let Some(groups) = packer.finish() {
                self.send_batch(groups, now_ms, targets);
            }
        }
    }

    fn send_batch(&mut self, groups: Vec<OriginGroup>, now_ms: u64, targets: Targets) {
        let aggregates: u64 = groups
            .iter()
            .filter(|g| g.kind == OriginKind::Aggregate)
            .map(|g| g.entries.len() as u64)
            .sum();
        self.sequence += 1;
        let batch = DeltaBatch {
            sender: self.replica_id,
            sequence: self.sequence,
            sent_at_ms: now_ms,
            groups,
        };
        let frame = match wire::encode(&batch) {
            Ok(frame) => Bytes::from(frame),
            Err(error) => {
                // Only possible for a frame over MAX_FRAME_BYTES, which the packer's budget rules out.
                tracing::error!(%error, "failed to encode a delta batch; its values go out with anti-entropy");
                self.stats.encode_errors += 1;
                return;
            }
        };
        let mut sent = 0u64;
        for (peer, p) in self.peers.iter_mut() {
            let wanted = match targets {
                Targets::Deltas => self.aggregation.gets_deltas(p.replica),
                Targets::Partners => self.aggregation.is_partner(p.replica),
            };
            if !wanted {
                continue;
            }
            let channel = if frame.len() <= p.max_datagram {
                Channel::Datagram
            } else {
                Channel::Stream
            };
            p.stats.batches_sent += 1;
            p.stats.bytes_sent += frame.len() as u64;
            self.outbox.push(peer, channel, frame.clone());
            sent += 1;
        }
        self.stats.batches_sent += 1;
        self.stats.bytes_sent += frame.len() as u64 * sent;
        self.stats.aggregates_sent += aggregates * sent;
    }

    fn anti_entropy_round(&mut self, now_ms: u64) {
        if self.peers.is_empty() {
            return;
        }
        // One pass over the store serves the publishers' refresh and the digest.
        let values = digest::values_by_origin(&self.store, self.replica_id, now_ms);
        self.refresh_aggregates_from(&values);
        // Grouped: values per origin are compared among group peers only (other groups arrive as aggregates).
        let aggregation = &self.aggregation;
        let Some(peer) = self
            .anti_entropy
            .pick(&self.peers, |p| aggregation.gets_deltas(p.replica))
        else {
            return;
        };
        // Origins that hold no value here any more stop counting against their relayer's cap.
        for p in self.peers.values_mut() {
            p.relayed.retain(|origin| values.contains_key(origin));
        }
        let max = self.options.max_digest_origins.clamp(1, MAX_DIGEST_ORIGINS);
        let first = self.digest_cursor;
        let mut in_range = values.range(first..);
        let chunk: BTreeMap<u64, Vec<DirtyEntry>> = in_range
            .by_ref()
            .take(max)
            .map(|(&origin, entries)| (origin, entries.clone()))
            .collect();
        let more = in_range.next().is_some();
        let (last, next) = match chunk.keys().next_back() {
            Some(&last) if more => (last, last.wrapping_add(1)),
            _ => (u64::MAX, 0),
        };
        if next == 0 {
            self.stats.digest_passes += 1;
        }
        self.digest_cursor = next;
        let (floors, floor_fingerprint) =
            digest::floor_digest(&digest::floors_by_origin(&self.store, now_ms));
        match wire::encode(&Digest {
            sender: self.replica_id,
            first,
            last,
            origins: digest::digest_of(&chunk),
            floors,
            floor_fingerprint,
        }) {
            Ok(frame) => {
                self.stats.digests_sent += 1;
                self.queue(peer, Channel::Stream, frame);
            }
            Err(error) => {
                tracing::error!(%error, "failed to encode a digest");
                self.stats.encode_errors += 1;
            }
        }
    }

    /// Asks `peer` for its values of `origins` (everything when empty), in requests of at most
    /// [`MAX_REQUEST_ORIGINS`] origins; returns the ids of the requests queued.
    fn request_state(&mut self, peer: PeerId, origins: Vec<u64>) -> Vec<u64> {
        self.request_state_with(peer, origins, false)
    }

    /// [`Replicator::request_state`], asking also for the peer's rests when `rests` (see
    /// [`StateRequest::rests`]).
    fn request_state_with(&mut self, peer: PeerId, origins: Vec<u64>, rests: bool) -> Vec<u64> {
        let parts: Vec<Vec<u64>> = if origins.is_empty() {
            vec![Vec::new()]
        } else {
            origins
                .chunks(MAX_REQUEST_ORIGINS)
                .map(<[u64]>::to_vec)
                .collect()
        };
        let mut queued = Vec::with_capacity(parts.len());
        for origins in parts {
            let request_id = self.next_request_id;
            self.next_request_id += 1;
            match wire::encode(&StateRequest {
                sender: self.replica_id,
                request_id,
                origins,
                rests,
            }) {
                Ok(frame) => {
                    self.stats.state_requests_sent += 1;
                    self.queue(peer, Channel::Stream, frame);
                    queued.push(request_id);
                }
                Err(error) => {
                    tracing::error!(%error, "failed to encode a state request");
                    self.stats.encode_errors += 1;
                }
            }
        }
        queued
    }

    fn queue(&mut self, peer: PeerId, channel: Channel, frame: Vec<u8>) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.stats.bytes_sent += frame.len() as u64;
        }
        self.stats.bytes_sent += frame.len() as u64;
        self.outbox.push(peer, channel, Bytes::from(frame));
    }

    /// The next frame to send, if any, in the order they were queued.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.poll_transmit()
    }

    /// Handles a frame received from `peer`. A frame that fails to decode is dropped whole and counted; the
    /// error is returned so the runtime can log it with the peer's address.
    pub fn handle_frame(
        &mut self,
        peer: PeerId,
        bytes: &[u8],
        now_ms: u64,
    ) -> Result<(), WireError> {
        self.now_ms = self.now_ms.max(now_ms);
        self.stats.bytes_received += bytes.len() as u64;
        let frame = match wire::decode(bytes) {
            Ok(frame) => frame,
            Err(error) => {
                self.stats.decode_errors += 1;
                if let Some(p) = self.peers.get_mut(peer) {
                    p.stats.decode_errors += 1;
                }
                return Err(error);
            }
        };
        // One lookup of the peer for the per-frame figures (a delta batch's own with them).
        if let Some(p) = self.peers.get_mut(peer) {
            p.stats.bytes_received += bytes.len() as u64;
            p.stats.last_received_ms = now_ms;
            if let Frame::DeltaBatch(batch) = &frame {
                p.stats.batches_received += 1;
                p.stats.lag_ms = now_ms.saturating_sub(batch.sent_at_ms.to_native());
                // The sequence comes from the network: any u64, so no arithmetic that can overflow.
                let sequence = batch.sequence.to_native();
                let expected = p.stats.last_sequence.saturating_add(1);
                if p.stats.last_sequence != 0 && sequence > expected {
                    p.stats.sequence_gaps =
                        p.stats.sequence_gaps.saturating_add(sequence - expected);
                }
                p.stats.last_sequence = p.stats.last_sequence.max(sequence);
            }
        }
        match frame {
            Frame::DeltaBatch(batch) => {
                self.stats.batches_received += 1;
                let sender = batch.sender.to_native();
                if self.sender_matches(peer, sender, &batch.groups) {
                    // The values were taken at the sender's flush; never later than now here (a clock ahead).
                    let as_of = batch.sent_at_ms.to_native().min(now_ms);
                    self.merge_groups(peer, sender, &batch.groups, false, Some(as_of));
                }
            }
            Frame::StateChunk(chunk) => {
                self.stats.state_chunks_received += 1;
                let sender = chunk.sender.to_native();
                if self.sender_matches(peer, sender, &chunk.groups) {
                    self.merge_groups(peer, sender, &chunk.groups, true, None);
                    if let Some(p) = self.peers.get_mut(peer) {
                        p.note_state_chunk(
                            chunk.request_id.to_native(),
                            chunk.index.to_native(),
                            chunk.total.to_native(),
                        );
                    }
                }
            }
            Frame::StateRequest(request) => {
                self.stats.state_requests_received += 1;
                let wanted: Vec<u64> = request.origins.iter().map(|o| o.to_native()).collect();
                if request.rests {
                    self.send_rests_to_group_peer(peer);
                }
                self.send_state(peer, request.request_id.to_native(), &wanted, now_ms);
            }
            Frame::Digest(theirs) => {
                self.stats.digests_received += 1;
                self.answer_digest(peer, theirs, now_ms);
            }
            Frame::DataPing(ping) => {
                let pong = DataPong {
                    sender: self.replica_id,
                    nonce: ping.nonce.to_native(),
                };
                match wire::encode(&pong) {
                    Ok(frame) => self.queue(peer, Channel::Stream, frame),
                    Err(error) => {
                        tracing::error!(%error, "failed to encode a data-plane answer");
                        self.stats.encode_errors += 1;
                    }
                }
            }
            Frame::DataPong(pong) => {
                let nonce = pong.nonce.to_native();
                if let Some(p) = self.peers.get_mut(peer)
                    && let Some((expected, sent)) = p.outstanding
                    && expected == nonce
                {
                    p.outstanding = None;
                    let rtt_ms = now_ms.saturating_sub(sent);
                    p.stats.check_rtt_ms = rtt_ms;
                    p.stats.last_check_answered_ms = now_ms;
                    self.stats.checks_answered += 1;
                    self.checks.push_back(CheckAnswered { peer, rtt_ms });
                    self.reschedule_check(peer);
                }
                // An answer to a replaced (timed-out) check proves nothing about now: ignored.
            }
            Frame::Hello(_)
            | Frame::Membership(_)
            | Frame::ConfigEntries(_)
            | Frame::ConfigDigest(_)
            | Frame::NodeHealth(_) => {
                // The link layer consumes Hello before a peer is handed to us, and the node routes membership
                // and shared-state frames to their planes; any of them here is harmless.
                self.stats.unexpected_frames += 1;
            }
        }
        Ok(())
    }

    /// Whether a frame carrying `groups` names the replica id bound to `peer`'s link as its sender. A frame
    /// from a link never added, or claiming another sender, is refused whole and its values counted.
    fn sender_matches(
        &mut self,
        peer: PeerId,
        sender: u64,
        groups: &[ArchivedOriginGroup],
    ) -> bool {
        // Counted only when the frame is refused.
        let entries = || -> u64 { groups.iter().map(|g| g.entries.len() as u64).sum() };
        let Some(p) = self.peers.get_mut(peer) else {
            self.stats.unbound_entries += entries();
            return false;
        };
        if p.replica == sender {
            return true;
        }
        let entries = entries();
        self.stats.forged_frames += 1;
        self.stats.forged_entries += entries;
        p.stats.forged_entries += entries;
        if !p.forged_logged {
            p.forged_logged = true;
            tracing::warn!(
                peer_replica = format_args!("{:016x}", p.replica),
                claimed_sender = format_args!("{sender:016x}"),
                "refused a frame whose sender is not the replica id of its link (logged once per peer; counted \
                 in bifrost_peer_forged_entries_total)"
            );
        }
        false
    }

    /// Counts `entries` values of `origin` from `peer` as forged and logs the first per peer.
    fn forged(&mut self, peer: PeerId, origin: u64, entries: u64) {
        self.stats.forged_entries += entries;
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        p.stats.forged_entries += entries;
        if !p.forged_logged {
            p.forged_logged = true;
            tracing::warn!(
                peer_replica = format_args!("{:016x}", p.replica),
                origin = format_args!("{origin:016x}"),
                "refused values a peer sent for another origin than its own replica id (logged once per peer; \
                 counted in bifrost_peer_forged_entries_total)"
            );
        }
    }

    /// Whether `peer` may relay values of `origin` (a state chunk), counting it against the peer's relay cap.
    fn admit_relay(&mut self, peer: PeerId, origin: u64, entries: u64) -> bool {
        let max = self.options.max_relayed_origins_per_peer;
        let Some(p) = self.peers.get_mut(peer) else {
            return false;
        };
        if p.relayed.contains(&origin) {
            return true;
        }
        if p.relayed.len() < max {
            p.relayed.insert(origin);
            return true;
        }
        self.stats.relayed_refused += entries;
        p.stats.relayed_refused += entries;
        if !p.relay_cap_logged {
            p.relay_cap_logged = true;
            tracing::warn!(
                peer_replica = format_args!("{:016x}", p.replica),
                max,
                "a peer relayed values of more than limits.max_relayed_origins_per_peer other origins; further \
                 ones are refused (logged once per peer; counted in bifrost_peer_relayed_refused_total)"
            );
        }
        false
    }

    /// Merges the groups of a frame from `peer`, whose replica id is `sender` (checked by
    /// [`Self::sender_matches`]). `relay`: a state chunk, which may relay origins that are not linked peers and
    /// carry floors; a delta batch carries only the peer's own. `as_of_ms`: when a delta batch's values were
    /// taken (its send time), for a store that predicts remote counts (`StoreOptions::predict_remote`).
    fn merge_groups(
        &mut self,
        peer: PeerId,
        sender: u64,
        groups: &[ArchivedOriginGroup],
        relay: bool,
        as_of_ms: Option<u64>,
    ) {
        let linked: HashSet<u64> = if relay {
            self.peers.values().map(|p| p.replica).collect()
        } else {
            HashSet::default()
        };
        for group in groups {
            let origin = group.origin.to_native();
            let entries = group.entries.len() as u64;
            match group.kind {
                ArchivedOriginKind::Replica => {}
                ArchivedOriginKind::Floor if relay => {
                    self.merge_floors(group);
                    continue;
                }
                ArchivedOriginKind::Aggregate => {
                    self.merge_aggregates(peer, sender, group, SumOf::Values);
                    continue;
                }
                ArchivedOriginKind::AggregateFloor => {
                    self.merge_aggregates(peer, sender, group, SumOf::Floors);
                    continue;
                }
                ArchivedOriginKind::Reset if relay => {
                    self.hear_resets(peer, group);
                    continue;
                }
                // Floors and reset commands travel only in state chunks.
                ArchivedOriginKind::Floor | ArchivedOriginKind::Reset => {
                    self.stats.entries_ignored += entries;
                    continue;
                }
            }
            if origin == self.replica_id {
                // Our own values echoed back: the store ignores them anyway.
                self.stats.entries_unchanged += entries;
                continue;
            }
            let direct = origin == sender;
            if !direct {
                if !relay {
                    self.forged(peer, origin, entries);
                    continue;
                }
                if linked.contains(&origin) {
                    // Never merged from a third party; but the relayer holds something else for that origin:
                    // ask the origin itself.
                    self.stats.relays_skipped += entries;
                    self.pull_from_origin(origin);
                    continue;
                }
                if !self.admit_relay(peer, origin, entries) {
                    continue;
                }
            }
            for entry in group.entries.iter() {
                // Windows were validated by `wire::decode`.
                let Ok(window) = entry.window.window() else {
                    continue;
                };
                let (key, epoch, value) = (
                    entry.key.as_str(),
                    entry.epoch.to_native(),
                    entry.value.to_native(),
                );
                let merged = if direct {
                    match as_of_ms {
                        Some(at) => self
                            .store
                            .merge_from_origin_at(origin, key, window, epoch, value, at),
                        None => self
                            .store
                            .merge_from_origin(origin, key, window, epoch, value),
                    }
                } else {
                    self.store.merge_remote(origin, key, window, epoch, value)
                };
                match merged {
                    Ok(MergeOutcome::Raised) => {
                        self.stats.entries_merged += 1;
                        if direct {
                            self.aggregation.value_changed(origin, key, window, epoch);
                        }
                    }
                    Ok(MergeOutcome::Unchanged) => self.stats.entries_unchanged += 1,
                    Ok(MergeOutcome::Expired) => self.stats.entries_expired += 1,
                    Ok(MergeOutcome::Future) => self.stats.entries_future += 1,
                    Ok(MergeOutcome::OriginLimit)
                    | Err(
                        CounterError::KeyLimit { .. }
                        | CounterError::RemoteKeyLimit { .. }
                        | CounterError::KeyTooLong { .. }
                        | CounterError::EmptyKey,
                    ) => self.stats.entries_refused += 1,
                }
            }
        }
    }

    /// Merges one group of aggregates from `peer` (replica `sender`): accepted only in a grouped topology, from a
    /// member of the group it sums or a group peer relaying it; what came from outside the group is queued for
    /// the group peers.
    fn merge_aggregates(
        &mut self,
        peer: PeerId,
        sender: u64,
        group: &ArchivedOriginGroup,
        sum: SumOf,
    ) {
        let entries = group.entries.len() as u64;
        if !self.aggregation.grouped() {
            // The full mesh merges no aggregates (protocols 2 and 3 ignore them the same way).
            self.stats.entries_ignored += entries;
            return;
        }
        let id = AggregateId::from_wire(group.origin.to_native());
        let Some(id) = id.filter(|&id| self.aggregation.accepts(sender, id)) else {
            self.stats.aggregates_refused += entries;
            if let Some(p) = self.peers.get_mut(peer) {
                p.stats.forged_entries += entries;
            }
            return;
        };
        let cap = self.options.max_cells_per_flush;
        // Windows were validated by `wire::decode`.
        let entries = group.entries.iter().filter_map(|entry| {
            let window = entry.window.window().ok()?;
            Some((
                entry.key.as_str(),
                window,
                entry.epoch.to_native(),
                entry.value.to_native(),
            ))
        });
        let (stats, aggregation) = (&mut self.stats, &mut self.aggregation);
        self.store
            .merge_aggregates(id, sum, entries, |key, window, epoch, merged| {
                match merged {
                    Ok(MergeOutcome::Raised) => stats.aggregates_merged += 1,
                    // An unchanged aggregate still queues the key's rest: a group's refresh is what repeats a
                    // rest that was lost on the way to the group peers.
                    Ok(MergeOutcome::Unchanged | MergeOutcome::OriginLimit) => {}
                    Ok(MergeOutcome::Expired) => {
                        stats.entries_expired += 1;
                        return;
                    }
                    Ok(MergeOutcome::Future) => {
                        stats.entries_future += 1;
                        return;
                    }
                    Err(_) => {
                        stats.entries_refused += 1;
                        return;
                    }
                }
                if !aggregation.arrived(id, key, window, epoch, cap) {
                    stats.aggregates_dropped += 1;
                }
            });
    }

    /// Reset commands from `peer` (grouped layouts): each new one floors what this node holds for its epoch, as
    /// the reset did where it was issued, and goes on to every other peer; copies and stale ones stop here.
    /// A node that is not (yet) grouped applies and passes them on too: the sender's layout is grouped, and a
    /// layout change must not cut the flood off.
    fn hear_resets(&mut self, peer: PeerId, group: &ArchivedOriginGroup) {
        let issuer = group.origin.to_native();
        let now_ms = self.now_ms;
        let mut pass_on = Vec::new();
        for entry in group.entries.iter() {
            // Windows were validated by `wire::decode`.
            let Ok(window) = entry.window.window() else {
                continue;
            };
            let (key, epoch, id) = (
                entry.key.as_str(),
                entry.epoch.to_native(),
                entry.value.to_native(),
            );
            match self.resets.hear(key, window, epoch, (id, issuer), now_ms) {
                Heard::New => {}
                Heard::Repeated => {
                    self.stats.resets_repeated += 1;
                    continue;
                }
                Heard::Refused => {
                    self.stats.resets_refused += 1;
                    if !self.reset_refusal_logged {
                        self.reset_refusal_logged = true;
                        tracing::warn!(
                            issuer = format_args!("{issuer:016x}"),
                            id,
                            now_ms,
                            "refused a reset command whose id is more than an hour ahead of this node's clock \
                             (the issuer's clock runs ahead, or the id is forged); the reset is not applied here \
                             (logged once; counted in bifrost_replication_resets_refused_total)"
                        );
                    }
                    continue;
                }
            }
            self.stats.resets_heard += 1;
            // The floors it sets go to every peer at the next flush; a key unknown here has nothing to floor.
            let scope = if now_ms <= id.saturating_add(FRESH_MS) {
                ResetScope::Everything
            } else {
                self.stats.resets_heard_late += 1;
                ResetScope::Own
            };
            let _ = self.store.apply_reset_of(key, window, epoch, scope);
            pass_on.push((
                issuer,
                DirtyEntry {
                    key: Arc::from(key),
                    window,
                    epoch,
                    value: id,
                },
            ));
        }
        if pass_on.is_empty() {
            return;
        }
        let others: Vec<PeerId> = self.peers.ids().filter(|&p| p != peer).collect();
        for other in others {
            self.send_entries(other, 0, Vec::new(), Vec::new(), pass_on.clone());
        }
    }

    /// Merges one group of floors (any peer may carry them: a reset is issued on one node for all).
    fn merge_floors(&mut self, group: &ArchivedOriginGroup) {
        let origin = group.origin.to_native();
        for entry in group.entries.iter() {
            let Ok(window) = entry.window.window() else {
                continue;
            };
            let (key, epoch) = (entry.key.as_str(), entry.epoch.to_native());
            match self
                .store
                .merge_floor(origin, key, window, epoch, entry.value.to_native())
            {
                FloorOutcome::Raised => {
                    self.stats.floors_merged += 1;
                    // A publisher's floor sum of its group changed (when `origin` is in it).
                    self.aggregation.value_changed(origin, key, window, epoch);
                }
                FloorOutcome::Unchanged => self.stats.floors_unchanged += 1,
                FloorOutcome::NoValue | FloorOutcome::Expired => self.stats.floors_dropped += 1,
            }
        }
    }

    /// Sends our recent values of `origins` (all when empty) to `peer` as stream chunks, each origin's floors
    /// after its values. The peer's own origin is left out (it holds its own values).
    fn send_state(&mut self, peer: PeerId, request_id: u64, origins: &[u64], now_ms: u64) {
        let requester = self.peer_replica(peer);
        let wanted = |origin: &u64| {
            Some(*origin) != requester && (origins.is_empty() || origins.contains(origin))
        };
        let values: Vec<(u64, DirtyEntry)> =
            digest::values_by_origin(&self.store, self.replica_id, now_ms)
                .into_iter()
                .filter(|(origin, _)| wanted(origin))
                .flat_map(|(origin, entries)| entries.into_iter().map(move |e| (origin, e)))
                .collect();
        let floors: Vec<(u64, DirtyEntry)> = digest::floors_by_origin(&self.store, now_ms)
            .into_iter()
            .filter(|(origin, _)| origins.is_empty() || origins.contains(origin))
            .flat_map(|(origin, entries)| entries.into_iter().map(move |e| (origin, e)))
            .collect();
        self.send_entries(peer, request_id, values, floors, Vec::new());
    }

    /// A group peer joins (its state request asks for rests): when this node sends its group's rests, all of
    /// them go to `peer` now, before the state it asked for. Without them a joiner would count the other groups
    /// only from the next aggregates that reach this node, up to an anti-entropy interval later for a quiet key.
    fn send_rests_to_group_peer(&mut self, peer: PeerId) {
        let Some(replica) = self.peer_replica(peer) else {
            return;
        };
        let Some(group) = self
            .aggregation
            .topology()
            .filter(|t| t.sends_rests())
            .and_then(Topology::own_group)
            .filter(|_| self.aggregation.gets_deltas(replica))
        else {
            return;
        };
        let id = group.rest_of_group();
        let rests = self.store.rest_snapshot(id);
        if !rests.is_empty() {
            self.send_rests(peer, id.to_wire(), rests);
        }
    }

    /// Sends rest aggregates `id` (value sums with their floor sums) to `peer` as state chunks of their own
    /// (request id 0, as anti-entropy pushes: they are not part of the transfer start-up admission waits for).
    fn send_rests(&mut self, peer: PeerId, id: u64, rests: Vec<(DirtyEntry, u64)>) {
        let mut packer = BatchPacker::new(self.options.stream_chunk_bytes);
        let mut chunks: Vec<Vec<OriginGroup>> = Vec::new();
        // Floor sums first (one group of them, then one of values), as in the aggregate batches.
        let mut values = Vec::with_capacity(rests.len());
        for (entry, floors) in rests {
            let entry = to_wire_entry(entry);
            if floors > 0 {
                let floor_entry = Entry {
                    value: floors,
                    ..entry.clone()
                };
                if let Some(groups) = packer.push_kind(id, OriginKind::AggregateFloor, floor_entry)
                {
                    chunks.push(groups);
                }
            }
            values.push(entry);
        }
        for entry in values {
            if let Some(groups) = packer.push_kind(id, OriginKind::Aggregate, entry) {
                chunks.push(groups);
            }
        }
        chunks.extend(packer.finish());
        self.stats.aggregates_sent += chunks
            .iter()
            .flatten()
            .filter(|g| g.kind == OriginKind::Aggregate)
            .map(|g| g.entries.len() as u64)
            .sum::<u64>();
        self.queue_state_chunks(peer, 0, chunks);
    }

    /// Sends `values`, then `floors`, then reset commands to `peer` as state chunks that fit the frame limits
    /// (at least one chunk, so a requester always learns the transfer is complete).
    fn send_entries(
        &mut self,
        peer: PeerId,
        request_id: u64,
        values: Vec<(u64, DirtyEntry)>,
        floors: Vec<(u64, DirtyEntry)>,
        resets: Vec<(u64, DirtyEntry)>,
    ) {
        let mut packer = BatchPacker::new(self.options.stream_chunk_bytes);
        let mut chunks: Vec<Vec<OriginGroup>> = Vec::new();
        for (origin, entry) in values {
            if let Some(groups) = packer.push(origin, to_wire_entry(entry)) {
                chunks.push(groups);
            }
        }
        let floor_count = floors.len() as u64;
        for (origin, entry) in floors {
            if let Some(groups) = packer.push_kind(origin, OriginKind::Floor, to_wire_entry(entry))
            {
                chunks.push(groups);
            }
        }
        let reset_count = resets.len() as u64;
        for (issuer, entry) in resets {
            if let Some(groups) = packer.push_kind(issuer, OriginKind::Reset, to_wire_entry(entry))
            {
                chunks.push(groups);
            }
        }
        chunks.extend(packer.finish());
        if chunks.is_empty() {
            // Answer even when empty so the requester knows the transfer is complete.
            chunks.push(Vec::new());
        }
        if self.queue_state_chunks(peer, request_id, chunks) {
            self.stats.floors_sent += floor_count;
            self.stats.resets_sent += reset_count;
        }
    }

    /// Queues `chunks` for `peer` as the state chunks of one answer to `request_id` (0: not an answer), each
    /// with its index and their count; returns whether every one was encoded.
    fn queue_state_chunks(
        &mut self,
        peer: PeerId,
        request_id: u64,
        chunks: Vec<Vec<OriginGroup>>,
    ) -> bool {
        // More chunks than u32 cannot be: each holds at least one entry of a store bounded far below that.
        let total = u32::try_from(chunks.len()).unwrap_or(u32::MAX);
        let mut sent_all = true;
        for (index, groups) in (0..total).zip(chunks) {
            let chunk = StateChunk {
                sender: self.replica_id,
                request_id,
                groups,
                index,
                total,
            };
            match wire::encode(&chunk) {
                Ok(frame) => {
                    self.stats.state_chunks_sent += 1;
                    self.queue(peer, Channel::Stream, frame);
                }
                Err(error) => {
                    // Not expected (the packer keeps chunks within the limits): counted and logged.
                    tracing::error!(%error, "failed to encode a state chunk");
                    self.stats.encode_errors += 1;
                    sent_all = false;
                }
            }
        }
        sent_all
    }

    /// Compares a peer's digest with ours over the digest's origin range. For our own origin we push what
    /// differs; for the peer's own we pull; for a third origin that is a linked peer we ask that origin itself
    /// and push ours to the peer as a hint (the peer then asks it too: relayed values of a linked origin are
    /// never merged); any other origin (departed, or not linked here) is pushed and pulled. If the floors
    /// differ, all of ours go to the peer.
    fn answer_digest(&mut self, peer: PeerId, theirs: &wire::ArchivedDigest, now_ms: u64) {
        let Some(sender) = self.peer_replica(peer) else {
            return; // a link never added: nothing is bound to it
        };
        let (first, last) = (theirs.first.to_native(), theirs.last.to_native());
        let values = digest::values_by_origin(&self.store, self.replica_id, now_ms);
        let in_range: BTreeMap<u64, Vec<DirtyEntry>> = if first <= last {
            values
                .range(first..=last)
                .map(|(&o, e)| (o, e.clone()))
                .collect()
        } else {
            BTreeMap::new()
        };
        let ours: BTreeMap<u64, (u32, u64)> = digest::digest_of(&in_range)
            .into_iter()
            .map(|d| (d.origin, (d.entries, d.fingerprint)))
            .collect();
        let mut theirs_map = BTreeMap::new();
        for d in theirs.origins.iter() {
            let origin = d.origin.to_native();
            if (first..=last).contains(&origin) {
                theirs_map.insert(origin, (d.entries.to_native(), d.fingerprint.to_native()));
            }
        }
        let linked: HashSet<u64> = self.peers.values().map(|p| p.replica).collect();
        let mut push = Vec::new();
        let mut pull = Vec::new();
        let all: std::collections::BTreeSet<u64> =
            ours.keys().chain(theirs_map.keys()).copied().collect();
        for origin in all {
            let (mine, other) = (ours.get(&origin), theirs_map.get(&origin));
            if mine == other {
                continue;
            }
            if origin == self.replica_id {
                push.push(origin);
            } else if origin == sender {
                if other.is_some() {
                    pull.push(origin);
                }
            } else if linked.contains(&origin) {
                // A linked member's values are merged only from itself: we ask it, and hand the peer ours as a
                // hint to do the same (it merges nothing of them).
                if mine.is_some() {
                    push.push(origin);
                }
                self.pull_from_origin(origin);
            } else {
                if mine.is_some() {
                    push.push(origin);
                }
                if other.is_some() {
                    pull.push(origin);
                }
            }
        }
        let floors = digest::floors_by_origin(&self.store, now_ms);
        let floor_digest = digest::floor_digest(&floors);
        let floors_differ = floor_digest
            != (
                theirs.floors.to_native(),
                theirs.floor_fingerprint.to_native(),
            );
        if !push.is_empty() || !pull.is_empty() || floors_differ {
            self.stats.anti_entropy_repairs += 1;
        }
        if !push.is_empty() {
            self.send_state(peer, 0, &push, now_ms);
        }
        if floors_differ && !floors.is_empty() {
            let floors = floors
                .into_iter()
                .flat_map(|(origin, entries)| entries.into_iter().map(move |e| (origin, e)))
                .collect();
            self.send_entries(peer, 0, Vec::new(), floors, Vec::new());
        }
        if !pull.is_empty() {
            self.request_state(peer, pull);
        }
    }
}

fn to_wire_entry(e: DirtyEntry) -> Entry {
    Entry {
        key: e.key.to_string(),
        window: WireWindow::from(e.window),
        epoch: e.epoch,
        value: e.value,
    }
}

#[cfg(test)]
mod awaited_state_tests {
    use super::*;

    fn awaiting(request_id: u64) -> AwaitedState {
        AwaitedState {
            request_id,
            total: None,
            indexes: HashSet::default(),
        }
    }

    #[test]
    fn an_answer_completes_only_with_every_chunk_of_the_count_its_first_chunk_announced() {
        let mut a = awaiting(7);
        assert!(!a.note(7, 2, 3));
        assert!(
            !a.note(7, 0, 1),
            "a chunk announcing another count does not count"
        );
        assert!(!a.note(0, 0, 3), "an anti-entropy push does not count");
        assert!(!a.note(8, 0, 3), "nor an answer to another request");
        assert!(!a.note(7, 2, 3), "a duplicate counts once");
        assert!(!a.note(7, 0, 3));
        assert!(a.note(7, 1, 3));
        let mut huge = awaiting(7);
        assert!(!huge.note(7, 0, MAX_AWAITED_CHUNKS + 1));
        assert!(
            huge.indexes.is_empty(),
            "nothing kept of a count beyond the bound"
        );
    }
}
