//! The shared-state replicator (sans-IO): carries config entries and node health records between nodes, in
//! the style of the counter [`crate::replication::Replicator`] (`handle_*` in, `poll_*` out, time as an
//! argument).
//!
//! Guarantees:
//! - A local put or delete goes to every peer at once (one [`ConfigEntries`] frame on a stream).
//! - Anti-entropy: every `digest_interval_ms`, a [`ConfigDigest`] goes to one random peer, and one goes to every
//!   new peer; a peer whose map differs answers with its whole map (in chunks of at most `chunk_bytes`), and the
//!   digest's sender answers that with its own, so both end with the union. A node that joins therefore
//!   receives the current map, and lost writes are repaired.
//! - Health records go to every peer as they are published; each node keeps the latest per owner.
//! - Errors caused by network input never panic: a frame that fails to decode is refused whole and counted.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use super::config_map::{ConfigChange, ConfigEntry, ConfigMap, ConfigMapOptions};
use super::error::StateError;
use super::hlc::Timestamp;
use super::node_record::{LinkHealth, NodeRecord, NodeRecords};
use crate::replication::{Channel, PeerId, Transmit};
use crate::rng::SplitMix64;
use crate::wire::{
    self, ConfigDigest, ConfigEntries, Frame, NodeHealth, WireConfigEntry, WireError,
    WireLinkHealth,
};

/// Options of the shared-state replicator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateOptions {
    /// Bounds of the config map.
    pub config: ConfigMapOptions,
    /// How often a config digest goes to one random peer, in ms. Default: 10 000. Must be ≥ 1.
    pub digest_interval_ms: u64,
    /// Largest full-map chunk, in bytes (estimated from key, value and node id lengths). Default: 256 KiB.
    pub chunk_bytes: usize,
    /// How often tombstones are collected and stale health records forgotten, in ms. Default: 60 000.
    pub housekeeping_interval_ms: u64,
    /// Health records not refreshed for this long are forgotten, in ms. Default: 600 000.
    pub forget_records_after_ms: u64,
}

impl Default for StateOptions {
    fn default() -> Self {
        StateOptions {
            config: ConfigMapOptions::default(),
            digest_interval_ms: 10_000,
            chunk_bytes: 256 * 1024,
            housekeeping_interval_ms: 60_000,
            forget_records_after_ms: 600_000,
        }
    }
}

/// Counters of the shared-state replicator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateStats {
    /// Config frames sent (writes, digests, map chunks).
    pub config_frames_sent: u64,
    /// Config frames received.
    pub config_frames_received: u64,
    /// Digests that differed and triggered a map exchange.
    pub config_repairs: u64,
    /// Health records received that were newer than what we held.
    pub records_merged: u64,
    /// Frames refused because they failed to decode.
    pub decode_errors: u64,
}

/// The shared-state replicator of one node.
#[derive(Debug)]
pub struct StateReplicator {
    replica_id: u64,
    map: ConfigMap,
    records: NodeRecords,
    peers: BTreeSet<PeerId>,
    options: StateOptions,
    outbox: VecDeque<Transmit>,
    changes: VecDeque<ConfigChange>,
    next_digest_ms: u64,
    next_housekeeping_ms: u64,
    rng: SplitMix64,
    stats: StateStats,
}

impl StateReplicator {
    /// A replicator for the node `node_id` (its config writes carry it) of replica `replica_id`. `seed` drives
    /// the choice of anti-entropy peers.
    pub fn new(
        node_id: &str,
        replica_id: u64,
        options: StateOptions,
        seed: u64,
        now_ms: u64,
    ) -> StateReplicator {
        let mut rng = SplitMix64::new(seed);
        let digest = options.digest_interval_ms.max(1);
        StateReplicator {
            replica_id,
            map: ConfigMap::new(node_id, options.config.clone()),
            records: NodeRecords::new(),
            peers: BTreeSet::new(),
            next_digest_ms: now_ms + 1 + rng.next_u64() % digest,
            next_housekeeping_ms: now_ms + options.housekeeping_interval_ms.max(1),
            options,
            outbox: VecDeque::new(),
            changes: VecDeque::new(),
            rng,
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

    /// Counters.
    pub fn stats(&self) -> StateStats {
        self.stats
    }

    /// A peer link became trusted: it gets our config digest (so a joining node receives the map).
    pub fn add_peer(&mut self, peer: PeerId) {
        if self.peers.insert(peer) {
            self.send_digest(peer);
        }
    }

    /// Collects expired tombstones first, so digests compare what both sides will keep.
    fn digest_at(&mut self, now_ms: u64) -> (u32, u64) {
        self.map.collect_tombstones(now_ms);
        self.map.digest()
    }

    /// A peer link is gone.
    pub fn remove_peer(&mut self, peer: PeerId) {
        self.peers.remove(&peer);
    }

    /// Writes a config entry and sends it to every peer.
    pub fn put(&mut self, key: &str, value: Bytes, now_ms: u64) -> Result<Timestamp, StateError> {
        let entry = self.map.put(key, value.clone(), now_ms)?;
        let ts = entry.ts.clone();
        self.changes.push_back(ConfigChange::Put {
            key: Arc::clone(&entry.key),
            value,
            ts: ts.clone(),
        });
        self.broadcast_entries(vec![entry]);
        Ok(ts)
    }

    /// Deletes a config entry (a tombstone) and sends it to every peer.
    pub fn delete(&mut self, key: &str, now_ms: u64) -> Result<Timestamp, StateError> {
        let had_value = self.map.get(key).is_some();
        let entry = self.map.delete(key, now_ms)?;
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

    /// Keeps this node's own health record and sends it to every peer.
    pub fn publish(&mut self, record: NodeRecord, now_ms: u64) {
        let wire = to_wire_record(&record);
        self.records.merge(record, now_ms);
        match wire::encode(&wire) {
            Ok(frame) => {
                let frame = Bytes::from(frame);
                for &peer in &self.peers {
                    self.outbox.push_back(Transmit {
                        peer,
                        channel: Channel::Stream,
                        frame: frame.clone(),
                    });
                }
            }
            Err(error) => tracing::error!(%error, "failed to encode a health record"),
        }
    }

    /// When [`StateReplicator::handle_timeout`] must next be called (Unix ms).
    pub fn poll_timeout(&self) -> u64 {
        self.next_digest_ms.min(self.next_housekeeping_ms)
    }

    /// Runs what is due: the anti-entropy digest, tombstone collection, forgetting old records.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        if now_ms >= self.next_digest_ms {
            self.next_digest_ms = now_ms + self.options.digest_interval_ms.max(1);
            self.map.collect_tombstones(now_ms);
            if !self.peers.is_empty() {
                let index = (self.rng.next_u64() % self.peers.len() as u64) as usize;
                if let Some(&peer) = self.peers.iter().nth(index) {
                    self.send_digest(peer);
                }
            }
        }
        if now_ms >= self.next_housekeeping_ms {
            self.next_housekeeping_ms = now_ms + self.options.housekeeping_interval_ms.max(1);
            self.map.collect_tombstones(now_ms);
            self.records
                .prune(now_ms, self.options.forget_records_after_ms);
        }
    }

    /// The next frame to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.pop_front()
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

    /// Handles a frame of this plane from `peer`.
    pub fn handle_frame(
        &mut self,
        peer: PeerId,
        bytes: &[u8],
        now_ms: u64,
    ) -> Result<(), WireError> {
        let frame = wire::decode(bytes).inspect_err(|_| self.stats.decode_errors += 1)?;
        match frame {
            Frame::ConfigEntries(batch) => {
                self.stats.config_frames_received += 1;
                for e in batch.entries.iter() {
                    let entry = ConfigEntry {
                        key: Arc::from(e.key.as_str()),
                        value: e
                            .value
                            .as_ref()
                            .map(|v| Bytes::copy_from_slice(v.as_slice())),
                        ts: Timestamp {
                            wall_ms: e.wall_ms.to_native(),
                            logical: e.logical.to_native(),
                            node: Arc::from(e.node.as_str()),
                        },
                    };
                    if let Some(change) = self.map.merge(entry, now_ms) {
                        self.changes.push_back(change);
                    }
                }
                if batch.reply {
                    self.send_map(peer, false);
                }
            }
            Frame::ConfigDigest(digest) => {
                self.stats.config_frames_received += 1;
                let theirs = (digest.entries.to_native(), digest.fingerprint.to_native());
                if theirs != self.digest_at(now_ms) {
                    self.stats.config_repairs += 1;
                    self.send_map(peer, true);
                }
            }
            Frame::NodeHealth(h) => {
                let record = NodeRecord {
                    owner: h.owner.to_native(),
                    node_id: h.node_id.as_str().to_string(),
                    version: h.version.to_native(),
                    published_ms: h.published_ms.to_native(),
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

    fn send_digest(&mut self, peer: PeerId) {
        let (entries, fingerprint) = self.map.digest();
        let digest = ConfigDigest {
            sender: self.replica_id,
            entries,
            fingerprint,
        };
        if let Ok(frame) = wire::encode(&digest) {
            self.queue(peer, frame);
        }
    }

    /// Sends the whole map to `peer`, in chunks; `reply` on the last one asks for the peer's map back. An
    /// empty map is sent as one empty chunk so the reply still happens.
    fn send_map(&mut self, peer: PeerId, reply: bool) {
        let mut chunks: Vec<Vec<WireConfigEntry>> = vec![Vec::new()];
        let mut size = 0;
        for e in self.map.entries() {
            let wire = to_wire_entry(e);
            let entry_size =
                wire.key.len() + wire.node.len() + wire.value.as_ref().map_or(0, Vec::len) + 48;
            if size + entry_size > self.options.chunk_bytes && !chunks[chunks.len() - 1].is_empty()
            {
                chunks.push(Vec::new());
                size = 0;
            }
            size += entry_size;
            let last = chunks.len() - 1;
            chunks[last].push(wire);
        }
        let count = chunks.len();
        for (i, entries) in chunks.into_iter().enumerate() {
            let frame = ConfigEntries {
                sender: self.replica_id,
                reply: reply && i + 1 == count,
                entries,
            };
            match wire::encode(&frame) {
                Ok(frame) => self.queue(peer, frame),
                Err(error) => tracing::error!(%error, "failed to encode a config map chunk"),
            }
        }
    }

    fn broadcast_entries(&mut self, entries: Vec<ConfigEntry>) {
        let frame = ConfigEntries {
            sender: self.replica_id,
            reply: false,
            entries: entries.iter().map(to_wire_entry).collect(),
        };
        match wire::encode(&frame) {
            Ok(frame) => {
                let frame = Bytes::from(frame);
                let peers: Vec<PeerId> = self.peers.iter().copied().collect();
                for peer in peers {
                    self.stats.config_frames_sent += 1;
                    self.outbox.push_back(Transmit {
                        peer,
                        channel: Channel::Stream,
                        frame: frame.clone(),
                    });
                }
            }
            Err(error) => tracing::error!(%error, "failed to encode a config write"),
        }
    }

    fn queue(&mut self, peer: PeerId, frame: Vec<u8>) {
        self.stats.config_frames_sent += 1;
        self.outbox.push_back(Transmit {
            peer,
            channel: Channel::Stream,
            frame: Bytes::from(frame),
        });
    }
}

fn to_wire_entry(e: &ConfigEntry) -> WireConfigEntry {
    WireConfigEntry {
        key: e.key.to_string(),
        value: e.value.as_ref().map(|v| v.to_vec()),
        wall_ms: e.ts.wall_ms,
        logical: e.ts.logical,
        node: e.ts.node.to_string(),
    }
}

fn to_wire_record(r: &NodeRecord) -> NodeHealth {
    NodeHealth {
        owner: r.owner,
        node_id: r.node_id.clone(),
        version: r.version,
        published_ms: r.published_ms,
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
