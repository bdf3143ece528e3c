//! The shared-state replicator (sans-IO): carries config entries and node health records between nodes, in
//! the style of the counter [`crate::replication::Replicator`] (`handle_*` in, `poll_*` out, time as an
//! argument).
//!
//! Guarantees:
//! - A local put or delete goes to every peer at once (one [`ConfigEntries`] frame on a stream).
//! - **Anti-entropy by bucketed digest.** Every `digest_interval_ms` a [`ConfigDigest`] goes to one random
//!   peer, and one goes to every new peer. It carries, per bucket of keys
//!   ([`crate::state::config_map::DIGEST_BUCKETS`]), the count and fingerprint of the live entries, so its size
//!   is bounded (about 14 KiB) whatever the map holds. A peer whose buckets differ sends the entries (values and
//!   tombstones) of those buckets only, and its own digest back, so both end with the union. A joining node
//!   therefore receives the current map, lost writes and deletes are repaired, and one differing entry costs
//!   one bucket, not the whole map.
//! - **No frame exceeds the frame limit.** Entries go in chunks of at most `chunk_bytes` (estimated, capped at
//!   half of [`wire::MAX_FRAME_BYTES`], and at [`wire::MAX_ENTRIES_PER_FRAME`] entries); a health record whose
//!   link list would not fit one frame is cut to what fits (counted). A chunk that still fails to encode is
//!   split, and whatever cannot be encoded is counted in [`StateStats::encode_errors`], never sent.
//! - **Resumed over rounds, paced.** Repairs to one peer send at most `repair_bytes_per_round` per pacing
//!   window (a tenth of `digest_interval_ms`); the rest is sent later, from where the previous answer to that
//!   peer stopped (a cursor per peer), so a transfer of any size finishes. The last chunk of a cut-short answer
//!   says so (`more`), and a receiver that made progress asks again at once; a digest that arrives when the
//!   window's budget is spent is answered when the window ends (one pending answer per peer). A peer sending
//!   digests in a loop therefore gets at most `repair_bytes_per_round` per window, whatever it sends.
//! - **What cannot be stored is repaired later, not lost.** A replicated value refused because the map is full
//!   is counted ([`crate::state::ConfigMapStats::refused_full`]) and logged once until the map accepts
//!   replicated values again; as digests compare live entries, the next rounds notice the missing entry and
//!   offer it again until room frees up.
//! - **Sender binding.** Every frame is taken only from a peer whose identity (replica id, node id, from its
//!   authenticated hello) is bound with [`StateReplicator::bind_peer`], and only when its `sender` field names
//!   that replica. A health record is taken only from its own node over its own link: a record for any other
//!   owner or node id is refused, counted ([`StateStats::records_refused`]) and logged once per peer. Config
//!   entries are relayed on purpose (they are cluster-wide, written through any node, and anti-entropy must
//!   carry the writes of nodes that are gone), so their writer's node id is not bound to the sender; their
//!   bounds, the HLC drift limit and last-writer-wins hold whoever relays them.
//! - Errors caused by network input never panic: a frame that fails to decode is refused whole and counted.

use std::collections::VecDeque;

use crate::fixed_hash::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;

use super::config_map::{
    ConfigChange, ConfigEntry, ConfigMap, ConfigMapOptions, ConfigMapStats, ConfigMapUsage,
    DIGEST_BUCKETS,
};
use super::error::StateError;
use super::hlc::Timestamp;
use super::node_record::{LinkHealth, NodeRecord, NodeRecords};
use crate::replication::plane_core::{AntiEntropy, Outbox, PeerSet};
use crate::replication::{Channel, PeerId, Transmit};
use crate::rng::SplitMix64;
use crate::timers::TimerTable;
use crate::wire::{
    self, ConfigBucketDigest, ConfigDigest, ConfigEntries, Frame, NodeHealth, WireConfigEntry,
    WireError, WireLinkHealth,
};
use crate::{ReplicaId, UnixMs};

/// Largest `chunk_bytes` in force: half a frame, so a chunk plus one largest entry still fits one frame.
const MAX_CHUNK_BYTES: usize = wire::MAX_FRAME_BYTES / 2;
/// Most entries of a config-entries frame that is relayed (a write broadcasts one entry; repairs carry more and
/// are not relayed: anti-entropy spreads them).
pub const RELAY_MAX_ENTRIES: usize = 16;
/// Estimated archive bytes of one config entry besides its key, value and node id (the real figure is ~40).
const ENTRY_OVERHEAD: usize = 64;
/// Estimated archive bytes of one health-record link besides its node id (the real figure is ~20).
const LINK_OVERHEAD: usize = 32;
/// Room kept free in a health-record frame for its fixed fields and header.
const RECORD_RESERVE: usize = 4_096;

/// Options of the shared-state replicator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateOptions {
    /// Bounds of the config map.
    pub config: ConfigMapOptions,
    /// How often a config digest goes to one random peer, in ms. Default: 10 000. Must be ≥ 1.
    pub digest_interval_ms: u64,
    /// Largest config-entries frame, in bytes (estimated from key, value and node id lengths). Default:
    /// 256 KiB. Capped at half of [`wire::MAX_FRAME_BYTES`].
    pub chunk_bytes: usize,
    /// Most bytes (estimated) of repair entries sent to one peer per pacing window (a tenth of
    /// `digest_interval_ms`, at least 1 ms); the rest follows in later windows. Default: 4 MiB (4 MiB/s per peer
    /// with the default interval). At least one entry is sent per window.
    pub repair_bytes_per_round: usize,
    /// How often tombstones are collected and stale health records forgotten, in ms. Default: 60 000.
    pub housekeeping_interval_ms: u64,
    /// Health records not refreshed for this long are forgotten, in ms. Default: 600 000.
    pub forget_records_after_ms: u64,
}

impl StateOptions {
    /// Default `repair_bytes_per_round`: 4 MiB.
    pub const DEFAULT_REPAIR_BYTES_PER_ROUND: usize = 4 << 20;

    /// The options with the intervals and the repair budget at least 1: what [`StateReplicator::new`] runs
    /// with, so no later step needs a guard against zero.
    fn normalized(mut self) -> StateOptions {
        self.digest_interval_ms = self.digest_interval_ms.max(1);
        self.housekeeping_interval_ms = self.housekeeping_interval_ms.max(1);
        self.repair_bytes_per_round = self.repair_bytes_per_round.max(1);
        self
    }
}

impl Default for StateOptions {
    fn default() -> Self {
        StateOptions {
            config: ConfigMapOptions::default(),
            digest_interval_ms: 10_000,
            chunk_bytes: 256 * 1024,
            repair_bytes_per_round: Self::DEFAULT_REPAIR_BYTES_PER_ROUND,
            housekeeping_interval_ms: 60_000,
            forget_records_after_ms: 600_000,
        }
    }
}

/// Counters of the shared-state replicator, and of its config map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateStats {
    /// Config frames sent (writes, digests, entry chunks).
    pub config_frames_sent: u64,
    /// Config frames received.
    pub config_frames_received: u64,
    /// Digests that differed and triggered a repair.
    pub config_repairs: u64,
    /// Repairs cut short by `repair_bytes_per_round` (the rest follows in later windows).
    pub repairs_resumed: u64,
    /// Digests answered late because the peer's pacing window was spent.
    pub repairs_deferred: u64,
    /// Health records received that were newer than what we held.
    pub records_merged: u64,
    /// Frames refused because they failed to decode.
    pub decode_errors: u64,
    /// Frames (or entries, or records) that could not be encoded within the frame limit, and were not sent.
    pub encode_errors: u64,
    /// Health records refused because they name another owner or node than the link they came on.
    pub records_refused: u64,
    /// Frames refused because their peer's identity is not bound, or their `sender` names another replica.
    pub frames_refused: u64,
    /// Own health records whose link list was cut to fit one frame.
    pub records_truncated: u64,
    /// Config entries relayed to other peers (fresh writes, see [`StateReplicator::set_relay`]).
    pub config_relayed: u64,
    /// Local puts refused because the map was full (answered 507 over HTTP).
    pub local_refused_full: u64,
    /// The config map's counters.
    pub map: ConfigMapStats,
    /// What the config map holds against its bounds.
    pub usage: ConfigMapUsage,
}

/// Who is at the other end of a link, from its authenticated hello.
#[derive(Debug, Clone)]
struct PeerIdentity {
    replica_id: u64,
    node_id: Arc<str>,
}

/// Where the next repair for a peer starts: the first (bucket, key) not sent last time.
type Cursor = (u16, Arc<str>);

/// Repair bytes sent to one peer in the current pacing window.
#[derive(Debug, Clone, Copy)]
struct Pace {
    window_start_ms: u64,
    sent: usize,
}

/// A digest answer waiting for the peer's next pacing window: when, and the buckets that differed.
#[derive(Debug, Clone)]
struct Owed {
    due_ms: u64,
    differ: Vec<bool>,
}

/// The shared-state replicator's timers (see [`TimerTable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// Send a config digest to one random peer.
    Digest,
    /// Collect tombstones and forget stale health records.
    Housekeeping,
}

/// The shared-state replicator of one node.
#[derive(Debug)]
pub struct StateReplicator {
    replica_id: u64,
    map: ConfigMap,
    records: NodeRecords,
    /// The peers replicated to (a bound link may be outside it: see [`StateReplicator::remove_peer`]).
    peers: PeerSet<()>,
    identities: HashMap<PeerId, PeerIdentity>,
    cursors: HashMap<PeerId, Cursor>,
    pace: HashMap<PeerId, Pace>,
    owed: HashMap<PeerId, Owed>,
    /// Peers already named in a refusal warning (one line per peer and link).
    warned: HashSet<PeerId>,
    /// The map refused a value for space and said so; cleared when it accepts replicated values again.
    full_logged: bool,
    /// The tombstone bound was reached and said so; cleared when tombstones fall below half of it.
    evict_logged: bool,
    /// An own record was cut to fit a frame and said so.
    truncate_logged: bool,
    /// Fresh writes are relayed (see [`StateReplicator::set_relay`]).
    relay: bool,
    options: StateOptions,
    outbox: Outbox,
    changes: VecDeque<ConfigChange>,
    /// The digest round and housekeeping (repairs owed to peers keep their own deadlines in `owed`).
    timers: TimerTable<Timer>,
    /// When digest rounds are due and which peer each one goes to.
    anti_entropy: AntiEntropy,
    stats: StateStats,
}

impl StateReplicator {
    /// A replicator for the node `node_id` (its config writes carry it) of replica `replica_id`. `seed` drives
    /// the choice of anti-entropy peers.
    pub fn new(
        node_id: &str,
        replica_id: ReplicaId,
        options: StateOptions,
        seed: u64,
        now_ms: u64,
    ) -> StateReplicator {
        let replica_id = replica_id.get();
        let options = options.normalized();
        // The first round's offset is the seed generator's first draw; the picks draw from the rest.
        let mut rng = SplitMix64::new(seed);
        let offset = rng.next_u64();
        let anti_entropy = AntiEntropy::new(options.digest_interval_ms, rng);
        StateReplicator {
            replica_id,
            map: ConfigMap::new(node_id, options.config.clone()),
            records: NodeRecords::new(),
            peers: PeerSet::default(),
            identities: HashMap::default(),
            cursors: HashMap::default(),
            pace: HashMap::default(),
            owed: HashMap::default(),
            warned: HashSet::default(),
            full_logged: false,
            evict_logged: false,
            truncate_logged: false,
            relay: false,
            timers: {
                let mut timers = TimerTable::default();
                timers.set(Timer::Digest, anti_entropy.first_round_ms(now_ms, offset));
                timers.set(
                    Timer::Housekeeping,
                    now_ms + options.housekeeping_interval_ms,
                );
                timers
            },
            anti_entropy,
            options,
            outbox: Outbox::default(),
            changes: VecDeque::new(),
            stats: StateStats::default(),
        }
    }

    /// The config map.
    pub fn map(&self) -> &ConfigMap {
        &self.map
    }

    /// The health records.
    pub fn records(&self) -> &NodeRecords {
        &self.records
    }

    /// Counters (the map's included).
    pub fn stats(&self) -> StateStats {
        StateStats {
            map: self.map.stats(),
            usage: self.map.usage(),
            ..self.stats
        }
    }

    /// Binds `peer` (a link) to the identity its authenticated hello gave: frames from it are taken only once
    /// it is bound, and its health records only for that replica and node id.
    pub fn bind_peer(&mut self, peer: PeerId, replica_id: ReplicaId, node_id: &str) {
        let replica_id = replica_id.get();
        self.identities.insert(
            peer,
            PeerIdentity {
                replica_id,
                node_id: Arc::from(node_id),
            },
        );
    }

    /// A peer link became trusted and replicating: it gets our config digest (so a joining node receives the
    /// map).
    pub fn add_peer(&mut self, peer: PeerId) {
        if self.peers.insert(peer, ()).is_none() {
            self.send_digest(peer, true);
        }
    }

    /// Stops sending to `peer` (writes, records, digests, repairs); its link stays bound, so what it still sends
    /// is taken (a grouped layout keeps links for membership only, see `node::machine`).
    pub fn remove_peer(&mut self, peer: PeerId) {
        self.peers.remove(peer);
        self.cursors.remove(&peer);
        self.pace.remove(&peer);
        self.owed.remove(&peer);
    }

    /// A peer link is gone: no more anti-entropy with it, and its binding is forgotten.
    pub fn unbind_peer(&mut self, peer: PeerId) {
        self.remove_peer(peer);
        self.identities.remove(&peer);
        self.warned.remove(&peer);
    }

    /// Relays fresh writes: a config-entries frame of at most [`RELAY_MAX_ENTRIES`] entries (a write's broadcast,
    /// not a repair) whose entries change the map is sent on to every other peer. On in a grouped layout,
    /// where the writer is linked with a few members only; off in the full mesh, where it sends to everyone.
    pub fn set_relay(&mut self, relay: bool) {
        self.relay = relay;
    }

    /// Writes a config entry and sends it to every peer.
    pub fn put(&mut self, key: &str, value: Bytes, now_ms: u64) -> Result<Timestamp, StateError> {
        let entry = match self.map.put(key, value.clone(), now_ms) {
            Ok(entry) => entry,
            Err(error) => {
                if let StateError::Full { .. } = error {
                    self.stats.local_refused_full += 1;
                    self.log_full(&error.to_string());
                }
                return Err(error);
            }
        };
        let ts = entry.ts.clone();
        self.changes.push_back(ConfigChange::Put {
            key: Arc::clone(&entry.key),
            value,
            ts: ts.clone(),
        });
        self.broadcast_entries(vec![entry]);
        Ok(ts)
    }

    /// Deletes a config entry (a tombstone) and sends it to every peer. Never refused for space.
    pub fn delete(&mut self, key: &str, now_ms: u64) -> Result<Timestamp, StateError> {
        let had_value = self.map.get(key).is_some();
        let evicted = self.map.stats().tombstones_evicted;
        let entry = self.map.delete(key, now_ms)?;
        self.after_evictions(evicted);
        let ts = entry.ts.clone();
        if had_value {
            self.changes.push_back(ConfigChange::Deleted {
                key: Arc::clone(&entry.key),
                ts: ts.clone(),
            });
        }
        self.broadcast_entries(vec![entry]);
        Ok(ts)
    }

    /// Keeps this node's own health record and sends it to every peer. A record whose links would not fit one
    /// frame keeps the links that fit (down links first, then by node id), counted.
    pub fn publish(&mut self, mut record: NodeRecord, now_ms: u64) {
        self.fit_links(&mut record);
        let wire = to_wire_record(&record);
        self.records.merge(record, now_ms);
        match wire::encode(&wire) {
            Ok(frame) => {
                let frame = Bytes::from(frame);
                for peer in self.peers.ids() {
                    self.outbox.push(peer, Channel::Stream, frame.clone());
                }
            }
            Err(error) => {
                self.stats.encode_errors += 1;
                tracing::error!(%error, "failed to encode a health record");
            }
        }
    }

    /// Cuts the record's links to what one frame holds.
    fn fit_links(&mut self, record: &mut NodeRecord) {
        let link_size = |l: &LinkHealth| l.node_id.len() + LINK_OVERHEAD;
        let budget = wire::MAX_FRAME_BYTES - RECORD_RESERVE - record.node_id.len();
        if record.links.iter().map(link_size).sum::<usize>() <= budget {
            return;
        }
        let total = record.links.len();
        record
            .links
            .sort_by(|a, b| (a.up, &a.node_id).cmp(&(b.up, &b.node_id)));
        let mut used = 0;
        let keep = record
            .links
            .iter()
            .take_while(|l| {
                used += link_size(l);
                used <= budget
            })
            .count();
        record.links.truncate(keep);
        self.stats.records_truncated += 1;
        if !self.truncate_logged {
            self.truncate_logged = true;
            tracing::warn!(
                links = total,
                kept = keep,
                "this node's health record lists more links than one frame holds; publishing the ones that fit (down links first)"
            );
        }
    }

    /// When [`StateReplicator::handle_timeout`] must next be called (Unix ms).
    pub fn poll_timeout(&self) -> u64 {
        self.owed
            .values()
            .map(|o| o.due_ms)
            .fold(self.timers.next_ms().unwrap_or(u64::MAX), u64::min)
    }

    /// The pacing window of repairs to one peer, in ms.
    fn pace_window_ms(&self) -> u64 {
        (self.options.digest_interval_ms / 10).max(1)
    }

    /// Runs what is due: the anti-entropy digest, tombstone collection, forgetting old records.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        let due: Vec<PeerId> = self
            .owed
            .iter()
            .filter(|(_, o)| o.due_ms <= now_ms)
            .map(|(&p, _)| p)
            .collect();
        for peer in due {
            if let Some(owed) = self.owed.remove(&peer) {
                self.send_repair(peer, &owed.differ, now_ms);
            }
        }
        let timers = self.timers.take_due(now_ms);
        if timers.contains(&Timer::Digest) {
            self.timers
                .set(Timer::Digest, self.anti_entropy.next_round_ms(now_ms));
            self.map.collect_tombstones(now_ms);
            if let Some(peer) = self.anti_entropy.pick(&self.peers, |_| true) {
                self.send_digest(peer, true);
            }
        }
        if timers.contains(&Timer::Housekeeping) {
            self.timers.set(
                Timer::Housekeeping,
                now_ms + self.options.housekeeping_interval_ms,
            );
            self.map.collect_tombstones(now_ms);
            self.records
                .prune(now_ms, self.options.forget_records_after_ms);
            if self.evict_logged
                && self.map.usage().tombstones < self.options.config.max_tombstones / 2
            {
                self.evict_logged = false;
            }
        }
    }

    /// The next frame to send, in the order they were queued.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.poll_transmit()
    }

    /// The next visible change of the config map (local or remote), in order.
    pub fn poll_change(&mut self) -> Option<ConfigChange> {
        self.changes.pop_front()
    }

    /// Whether `bytes` is a frame of this plane (by its header's kind).
    pub fn is_state_frame(bytes: &[u8]) -> bool {
        matches!(
            wire::split_header(bytes),
            Ok((
                wire::Kind::ConfigEntries | wire::Kind::ConfigDigest | wire::Kind::NodeHealth,
                _
            ))
        )
    }

    /// Handles a frame of this plane from `peer`. A frame from a peer that is not bound, or whose sender is
    /// not that peer, is refused (counted, logged once per peer) and `Ok` is returned: it decoded.
    pub fn handle_frame(
        &mut self,
        peer: PeerId,
        bytes: &[u8],
        now_ms: u64,
    ) -> Result<(), WireError> {
        let frame = wire::decode(bytes).inspect_err(|_| self.stats.decode_errors += 1)?;
        let Some(identity) = self.identities.get(&peer).cloned() else {
            self.stats.frames_refused += 1;
            self.warn_peer(
                peer,
                None,
                "shared-state frame from a link with no bound identity",
            );
            return Ok(());
        };
        let sender = match &frame {
            Frame::ConfigEntries(batch) => Some(batch.sender.to_native()),
            Frame::ConfigDigest(digest) => Some(digest.sender.to_native()),
            _ => None,
        };
        if sender.is_some_and(|s| s != identity.replica_id) {
            self.stats.frames_refused += 1;
            self.warn_peer(
                peer,
                Some(&identity),
                "shared-state frame claiming another sender than its link; refused",
            );
            return Ok(());
        }
        match frame {
            Frame::ConfigEntries(batch) => {
                self.stats.config_frames_received += 1;
                let before = self.map.stats();
                let relay = self.relay && batch.entries.len() <= RELAY_MAX_ENTRIES;
                let mut fresh = Vec::new();
                for e in batch.entries.iter() {
                    let entry = ConfigEntry {
                        key: Arc::from(e.key.as_str()),
                        value: e
                            .value
                            .as_ref()
                            .map(|v| Bytes::copy_from_slice(v.as_slice())),
                        ts: Timestamp {
                            wall_ms: UnixMs::new(e.wall_ms.to_native()),
                            logical: e.logical.to_native(),
                            node: Arc::from(e.node.as_str()),
                        },
                    };
                    let copy = relay.then(|| entry.clone());
                    if let Some(change) = self.map.merge(entry, now_ms) {
                        self.changes.push_back(change);
                        fresh.extend(copy);
                    }
                }
                if !fresh.is_empty() {
                    self.stats.config_relayed += fresh.len() as u64;
                    self.broadcast_entries_except(fresh, Some(peer));
                }
                let after = self.map.stats();
                let merged = after.merged - before.merged;
                let refused = after.refused_full - before.refused_full;
                self.after_evictions(before.tombstones_evicted);
                if refused > 0 {
                    let usage = self.map.usage();
                    self.log_full(&format!(
                        "{refused} replicated config entries refused: the map holds {} live entries of {} \
                         (limits.config_max_entries) and {} bytes of {} (limits.config_max_bytes); \
                         anti-entropy offers them again once room frees up",
                        usage.live_entries,
                        self.options.config.max_entries,
                        usage.live_bytes,
                        self.options.config.max_bytes
                    ));
                } else if merged > 0 && self.full_logged {
                    self.full_logged = false;
                    tracing::info!("the config map accepts replicated entries again");
                }
                if batch.more && merged > 0 && refused == 0 {
                    // The peer cut its answer short and we made progress: ask for the rest now.
                    self.send_digest(peer, false);
                }
            }
            Frame::ConfigDigest(digest) => {
                self.stats.config_frames_received += 1;
                self.map.collect_tombstones(now_ms);
                let mut theirs = vec![(0u32, 0u64); DIGEST_BUCKETS];
                for b in digest.buckets.iter() {
                    // Indexes are below DIGEST_BUCKETS: checked by decode.
                    if let Some(slot) = theirs.get_mut(usize::from(b.index.to_native())) {
                        *slot = (b.entries.to_native(), b.fingerprint.to_native());
                    }
                }
                let mut differ = vec![false; DIGEST_BUCKETS];
                let mut any = false;
                for (i, t) in theirs.iter().enumerate() {
                    // i < DIGEST_BUCKETS = 1 024 fits in u16.
                    if self.map.bucket(i as u16) != *t {
                        differ[i] = true;
                        any = true;
                    }
                }
                if any {
                    self.stats.config_repairs += 1;
                    self.send_repair(peer, &differ, now_ms);
                    if digest.reply {
                        self.send_digest(peer, false);
                    }
                }
            }
            Frame::NodeHealth(h) => {
                if h.owner.to_native() != identity.replica_id
                    || h.node_id.as_str() != &*identity.node_id
                {
                    self.stats.records_refused += 1;
                    self.warn_peer(
                        peer,
                        Some(&identity),
                        "health record for another node than the link it came on; refused (a node publishes only its own)",
                    );
                    return Ok(());
                }
                let record = NodeRecord {
                    owner: h.owner.to_native(),
                    node_id: h.node_id.as_str().to_string(),
                    version: h.version.to_native(),
                    published_ms: UnixMs::new(h.published_ms.to_native()),
                    cpu_millicores: h.cpu_millicores.to_native(),
                    memory_bytes: h.memory_bytes.to_native(),
                    memory_total_bytes: h.memory_total_bytes.to_native(),
                    open_connections: h.open_connections.to_native(),
                    request_rate_milli: h.request_rate_milli.to_native(),
                    links: h
                        .links
                        .iter()
                        .map(|l| LinkHealth {
                            node_id: l.node_id.as_str().to_string(),
                            up: l.up,
                            rtt_us: l.rtt_us.to_native(),
                        })
                        .collect(),
                };
                if self.records.merge(record, now_ms) {
                    self.stats.records_merged += 1;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// One warning per peer (and link) for refused input.
    fn warn_peer(&mut self, peer: PeerId, identity: Option<&PeerIdentity>, what: &str) {
        if self.warned.insert(peer) {
            match identity {
                Some(id) => tracing::warn!(
                    peer = %id.node_id,
                    replica = format_args!("{:016x}", id.replica_id),
                    "{what} (further refusals from this peer are only counted)"
                ),
                None => tracing::warn!(
                    link = peer,
                    "{what} (further refusals from this link are only counted)"
                ),
            }
        }
    }

    /// One warning until the map accepts replicated values again.
    fn log_full(&mut self, what: &str) {
        if !self.full_logged {
            self.full_logged = true;
            tracing::warn!("config map full: {what} (logged once until it has room again)");
        }
    }

    /// Logs the first early tombstone collection of an episode.
    fn after_evictions(&mut self, evicted_before: u64) {
        let evicted = self.map.stats().tombstones_evicted;
        if evicted > evicted_before && !self.evict_logged {
            self.evict_logged = true;
            tracing::warn!(
                max_tombstones = self.options.config.max_tombstones,
                "config map: limits.config_max_tombstones reached, the oldest tombstones are collected before their TTL \
                 (a node that missed those deletes may bring the keys back); logged once until below half"
            );
        }
    }

    fn send_digest(&mut self, peer: PeerId, reply: bool) {
        let (entries, fingerprint) = self.map.digest();
        let buckets = (0..DIGEST_BUCKETS as u16)
            .filter_map(|index| {
                let (entries, fingerprint) = self.map.bucket(index);
                (entries > 0).then_some(ConfigBucketDigest {
                    index,
                    entries,
                    fingerprint,
                })
            })
            .collect();
        let digest = ConfigDigest {
            sender: self.replica_id,
            entries,
            fingerprint,
            reply,
            buckets,
        };
        match wire::encode(&digest) {
            Ok(frame) => self.queue(peer, frame),
            Err(error) => {
                self.stats.encode_errors += 1;
                tracing::error!(%error, "failed to encode a config digest");
            }
        }
    }

    /// Sends `peer` the entries (values and tombstones) of the buckets marked in `differ`, from its cursor on,
    /// within what is left of its pacing window's `repair_bytes_per_round`, in chunks of at most `chunk_bytes`.
    /// When nothing is left, the answer waits for the next window (replacing an older pending one).
    fn send_repair(&mut self, peer: PeerId, differ: &[bool], now_ms: u64) {
        let window = self.pace_window_ms();
        let budget_per_window = self.options.repair_bytes_per_round;
        let pace = self.pace.entry(peer).or_insert(Pace {
            window_start_ms: now_ms,
            sent: 0,
        });
        if now_ms >= pace.window_start_ms.saturating_add(window) || now_ms < pace.window_start_ms {
            *pace = Pace {
                window_start_ms: now_ms,
                sent: 0,
            };
        }
        let window_sent = pace.sent;
        let due_ms = pace.window_start_ms.saturating_add(window);
        let budget = budget_per_window.saturating_sub(window_sent);
        let cursor = self.cursors.get(&peer).cloned();
        let mut picked: Vec<(bool, u16, &ConfigEntry)> = self
            .map
            .entries_with_bucket()
            .filter(|(b, _)| differ.get(usize::from(*b)).copied().unwrap_or(false))
            .map(|(b, e)| {
                // Entries at or after the cursor first, then the ones before it (wrapping around).
                let before = cursor
                    .as_ref()
                    .is_some_and(|(cb, ck)| (b, &*e.key) < (*cb, &**ck));
                (before, b, e)
            })
            .collect();
        picked.sort_by(|a, b| (a.0, a.1, &a.2.key).cmp(&(b.0, b.1, &b.2.key)));
        let chunk_limit = self.options.chunk_bytes.clamp(1, MAX_CHUNK_BYTES);
        let mut chunks: Vec<Vec<WireConfigEntry>> = Vec::new();
        let mut chunk: Vec<WireConfigEntry> = Vec::new();
        let (mut chunk_size, mut sent) = (0usize, 0usize);
        let mut next: Option<Cursor> = None;
        for (_, bucket, e) in picked {
            let size = entry_size(e);
            // The first entry of a window always goes, so every window makes progress.
            if (sent > 0 || window_sent > 0) && sent + size > budget {
                next = Some((bucket, Arc::clone(&e.key)));
                break;
            }
            if !chunk.is_empty()
                && (chunk_size + size > chunk_limit || chunk.len() >= wire::MAX_ENTRIES_PER_FRAME)
            {
                chunks.push(std::mem::take(&mut chunk));
                chunk_size = 0;
            }
            chunk.push(to_wire_entry(e));
            chunk_size += size;
            sent += size;
        }
        if !chunk.is_empty() {
            chunks.push(chunk);
        }
        if chunks.is_empty() && next.is_some() {
            // This window's budget is spent: answer when it ends.
            self.stats.repairs_deferred += 1;
            self.owed.insert(
                peer,
                Owed {
                    due_ms,
                    differ: differ.to_vec(),
                },
            );
            return;
        }
        let more = next.is_some();
        if let Some(pace) = self.pace.get_mut(&peer) {
            pace.sent += sent;
        }
        match next {
            Some(cursor) => {
                self.stats.repairs_resumed += 1;
                self.cursors.insert(peer, cursor);
            }
            None => {
                self.cursors.remove(&peer);
            }
        }
        let count = chunks.len();
        for (i, entries) in chunks.into_iter().enumerate() {
            self.send_entries(peer, entries, more && i + 1 == count);
        }
    }

    /// Encodes and queues one chunk; a chunk that does not encode (over the frame limit) is split in halves,
    /// and an entry that cannot be encoded alone is counted and dropped.
    fn send_entries(&mut self, peer: PeerId, mut entries: Vec<WireConfigEntry>, more: bool) {
        let frame = ConfigEntries {
            sender: self.replica_id,
            more,
            entries,
        };
        match wire::encode(&frame) {
            Ok(bytes) => self.queue(peer, bytes),
            Err(error) => {
                entries = frame.entries;
                if entries.len() > 1 {
                    let tail = entries.split_off(entries.len() / 2);
                    self.send_entries(peer, entries, false);
                    self.send_entries(peer, tail, more);
                } else {
                    self.stats.encode_errors += 1;
                    tracing::error!(%error, "failed to encode a config entry; not sent");
                }
            }
        }
    }

    fn broadcast_entries(&mut self, entries: Vec<ConfigEntry>) {
        self.broadcast_entries_except(entries, None);
    }

    /// Sends `entries` to every peer but `except`.
    fn broadcast_entries_except(&mut self, entries: Vec<ConfigEntry>, except: Option<PeerId>) {
        let frame = ConfigEntries {
            sender: self.replica_id,
            more: false,
            entries: entries.iter().map(to_wire_entry).collect(),
        };
        match wire::encode(&frame) {
            Ok(frame) => {
                let frame = Bytes::from(frame);
                for peer in self.peers.ids().filter(|&p| Some(p) != except) {
                    self.stats.config_frames_sent += 1;
                    self.outbox.push(peer, Channel::Stream, frame.clone());
                }
            }
            Err(error) => {
                self.stats.encode_errors += 1;
                tracing::error!(%error, "failed to encode a config write");
            }
        }
    }

    fn queue(&mut self, peer: PeerId, frame: Vec<u8>) {
        self.stats.config_frames_sent += 1;
        self.outbox.push(peer, Channel::Stream, Bytes::from(frame));
    }
}

/// Estimated archive bytes of one entry (an upper bound: see [`ENTRY_OVERHEAD`]).
fn entry_size(e: &ConfigEntry) -> usize {
    e.key.len() + e.ts.node.len() + e.value.as_ref().map_or(0, |v| v.len()) + ENTRY_OVERHEAD
}

fn to_wire_entry(e: &ConfigEntry) -> WireConfigEntry {
    WireConfigEntry {
        key: e.key.to_string(),
        value: e.value.as_ref().map(|v| v.to_vec()),
        wall_ms: e.ts.wall_ms.get(),
        logical: e.ts.logical,
        node: e.ts.node.to_string(),
    }
}

fn to_wire_record(r: &NodeRecord) -> NodeHealth {
    NodeHealth {
        owner: r.owner,
        node_id: r.node_id.clone(),
        version: r.version,
        published_ms: r.published_ms.get(),
        cpu_millicores: r.cpu_millicores,
        memory_bytes: r.memory_bytes,
        memory_total_bytes: r.memory_total_bytes,
        open_connections: r.open_connections,
        request_rate_milli: r.request_rate_milli,
        links: r
            .links
            .iter()
            .map(|l| WireLinkHealth {
                node_id: l.node_id.clone(),
                up: l.up,
                rtt_us: l.rtt_us,
            })
            .collect(),
    }
}
