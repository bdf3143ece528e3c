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
//! - A node that gains its first peer asks it for its full state (current and previous epochs of every key).
//! - Data-plane checks: every `check_interval_ms` each peer gets a [`DataPing`] on a stream, which its
//!   replicator answers with a [`DataPong`]; answers come out of [`Replicator::poll_check`] with their round
//!   trip, so the membership plane can count a member healthy only while its replication path works. One
//!   check per peer is outstanding at a time; one unanswered for `check_timeout_ms` is counted and replaced.
//! - Errors caused by network input never panic: a bad frame is dropped whole and counted.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use crate::counter::{CounterError, CounterStore, DirtyEntry, MergeOutcome};
use crate::wire::{
    self, ArchivedOriginGroup, ArchivedOriginKind, BatchPacker, DataPing, DataPong, DeltaBatch,
    Digest, Entry, Frame, OriginGroup, StateChunk, StateRequest, WireError, WireWindow,
};

use super::digest;
use super::stats::{PeerStats, ReplicationStats};
use crate::rng::SplitMix64;

/// Identifies a peer link, as chosen by the runtime.
pub type PeerId = u64;

/// How a frame must travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// An unreliable datagram (deltas).
    Datagram,
    /// A reliable stream (digests, state transfer, frames too large for a datagram).
    Stream,
}

/// A frame to send.
#[derive(Debug, Clone)]
pub struct Transmit {
    /// To whom.
    pub peer: PeerId,
    /// How.
    pub channel: Channel,
    /// The encoded frame.
    pub frame: Bytes,
}

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
}

/// A peer answered a data-plane check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckAnswered {
    /// The peer.
    pub peer: PeerId,
    /// Round trip from sending the ping to handling the pong, in ms.
    pub rtt_ms: u64,
}

impl Default for ReplicatorOptions {
    fn default() -> ReplicatorOptions {
        ReplicatorOptions {
            flush_interval_ms: 5,
            anti_entropy_interval_ms: 10_000,
            max_batch_bytes: 1_200,
            stream_chunk_bytes: 256 * 1024,
            max_cells_per_flush: 65_536,
            check_interval_ms: 1_000,
            check_timeout_ms: 10_000,
        }
    }
}

#[derive(Debug)]
struct Peer {
    max_datagram: usize,
    stats: PeerStats,
    /// When the next data-plane check is due (Unix ms; 0 = at the next timeout).
    next_check_ms: u64,
    /// The outstanding check: nonce and when it was sent.
    outstanding: Option<(u64, u64)>,
}

/// The replication state machine of one node.
#[derive(Debug)]
pub struct Replicator {
    store: CounterStore,
    replica_id: u64,
    options: ReplicatorOptions,
    peers: BTreeMap<PeerId, Peer>,
    sequence: u64,
    next_request_id: u64,
    next_flush_ms: u64,
    next_anti_entropy_ms: u64,
    asked_full_state: bool,
    rng: SplitMix64,
    outbox: VecDeque<Transmit>,
    checks: VecDeque<CheckAnswered>,
    next_nonce: u64,
    stats: ReplicationStats,
    drained: Vec<DirtyEntry>,
}

impl Replicator {
    /// A replicator for `store`, whose own values it ships as origin `replica_id`. `seed` drives the choice of
    /// anti-entropy peers (DESIGN.md: randomness comes in from outside).
    pub fn new(
        store: CounterStore,
        replica_id: u64,
        options: ReplicatorOptions,
        seed: u64,
        now_ms: u64,
    ) -> Replicator {
        let flush = options.flush_interval_ms.max(1);
        let anti_entropy = options.anti_entropy_interval_ms.max(1);
        Replicator {
            store,
            replica_id,
            peers: BTreeMap::new(),
            sequence: 0,
            next_request_id: 1,
            next_flush_ms: now_ms + flush,
            // Spread the first round over one interval so nodes started together do not all fire at once.
            next_anti_entropy_ms: now_ms + 1 + SplitMix64::new(seed).next_u64() % anti_entropy,
            asked_full_state: false,
            rng: SplitMix64::new(seed),
            outbox: VecDeque::new(),
            checks: VecDeque::new(),
            next_nonce: SplitMix64::new(seed ^ 0x5eed).next_u64(),
            stats: ReplicationStats::default(),
            drained: Vec::new(),
            options,
        }
    }

    /// The store this replicator ships and merges into.
    pub fn store(&self) -> &CounterStore {
        &self.store
    }

    /// This node's replica id.
    pub fn replica_id(&self) -> u64 {
        self.replica_id
    }

    /// A peer link became trusted (after the `Hello` exchange). The first peer ever is asked for its full state.
    /// Its first data-plane check goes out at the next [`Replicator::handle_timeout`].
    pub fn add_peer(&mut self, peer: PeerId, max_datagram: Option<usize>) {
        let max_datagram = max_datagram.unwrap_or(self.options.max_batch_bytes);
        self.peers.insert(
            peer,
            Peer {
                max_datagram,
                stats: PeerStats::default(),
                next_check_ms: 0,
                outstanding: None,
            },
        );
        if !self.asked_full_state {
            self.asked_full_state = true;
            self.request_state(peer, Vec::new());
        }
    }

    /// A peer link is gone.
    pub fn remove_peer(&mut self, peer: PeerId) {
        self.peers.remove(&peer);
    }

    /// The peer's link reports a new `max_datagram_size` (it changes with the path MTU).
    pub fn set_max_datagram(&mut self, peer: PeerId, max_datagram: usize) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.max_datagram = max_datagram;
        }
    }

    /// Peers currently linked.
    pub fn peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.peers.keys().copied()
    }

    /// Counters of this replicator.
    pub fn stats(&self) -> &ReplicationStats {
        &self.stats
    }

    /// Counters of one peer link.
    pub fn peer_stats(&self, peer: PeerId) -> Option<&PeerStats> {
        self.peers.get(&peer).map(|p| &p.stats)
    }

    /// When [`Replicator::handle_timeout`] must next be called, in Unix ms.
    pub fn poll_timeout(&self) -> u64 {
        let mut due = self.next_flush_ms.min(self.next_anti_entropy_ms);
        if self.options.check_interval_ms > 0 {
            for p in self.peers.values() {
                due = due.min(self.check_due_ms(p));
            }
        }
        due
    }

    /// When `p`'s next check is due: at its schedule, or when the outstanding one times out.
    fn check_due_ms(&self, p: &Peer) -> u64 {
        match p.outstanding {
            Some((_, sent)) => sent.saturating_add(self.options.check_timeout_ms.max(1)),
            None => p.next_check_ms,
        }
    }

    /// Sending to `peer` failed (a stream refused or reset): its outstanding check, if any, cannot be answered;
    /// the next one goes out one interval from `now_ms` instead of waiting for the timeout. The caller counts
    /// the failure as a failed health check.
    pub fn check_failed(&mut self, peer: PeerId, now_ms: u64) {
        if let Some(p) = self.peers.get_mut(&peer)
            && p.outstanding.take().is_some()
        {
            p.next_check_ms = now_ms.saturating_add(self.options.check_interval_ms);
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
            .peers
            .iter()
            .filter(|(_, p)| self.check_due_ms(p) <= now_ms)
            .map(|(&id, _)| id)
            .collect();
        for peer in due {
            self.next_nonce = self.next_nonce.wrapping_add(1);
            let nonce = self.next_nonce;
            let Some(p) = self.peers.get_mut(&peer) else {
                continue;
            };
            if p.outstanding.is_some() {
                self.stats.checks_timed_out += 1;
            }
            p.outstanding = Some((nonce, now_ms));
            p.next_check_ms = now_ms.saturating_add(self.options.check_interval_ms);
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
        self.run_checks(now_ms);
        if now_ms >= self.next_flush_ms {
            self.flush(now_ms);
            self.next_flush_ms = now_ms + self.options.flush_interval_ms.max(1);
        }
        if now_ms >= self.next_anti_entropy_ms {
            self.anti_entropy_round(now_ms);
            self.next_anti_entropy_ms = now_ms + self.options.anti_entropy_interval_ms.max(1);
        }
    }

    /// Drains the dirty cells now and queues their values for every peer (also the final flush on shutdown).
    pub fn flush(&mut self, now_ms: u64) {
        self.drained.clear();
        let cells = self
            .store
            .drain_dirty(self.options.max_cells_per_flush, &mut self.drained);
        if cells == 0 || self.peers.is_empty() {
            // Values are absolute: a peer that links later gets them through the state transfer.
            return;
        }
        let budget = self
            .peers
            .values()
            .map(|p| p.max_datagram)
            .min()
            .unwrap_or(self.options.max_batch_bytes);
        let mut packer = BatchPacker::new(budget);
        let entries: Vec<Entry> = self.drained.drain(..).map(to_wire_entry).collect();
        for entry in entries {
            if let Some(groups) = packer.push(self.replica_id, entry) {
                self.send_batch(groups, now_ms);
            }
        }
        if let Some(groups) = packer.finish() {
            self.send_batch(groups, now_ms);
        }
    }

    fn send_batch(&mut self, groups: Vec<OriginGroup>, now_ms: u64) {
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
        for (&peer, p) in self.peers.iter_mut() {
            let channel = if frame.len() <= p.max_datagram {
                Channel::Datagram
            } else {
                Channel::Stream
            };
            p.stats.batches_sent += 1;
            p.stats.bytes_sent += frame.len() as u64;
            self.outbox.push_back(Transmit {
                peer,
                channel,
                frame: frame.clone(),
            });
        }
        self.stats.batches_sent += 1;
        self.stats.bytes_sent += (frame.len() * self.peers.len()) as u64;
    }

    fn anti_entropy_round(&mut self, now_ms: u64) {
        if self.peers.is_empty() {
            return;
        }
        let index = (self.rng.next_u64() % self.peers.len() as u64) as usize;
        let Some(&peer) = self.peers.keys().nth(index) else {
            return;
        };
        let values = digest::values_by_origin(&self.store, self.replica_id, now_ms);
        let origins = digest::digest_of(&values);
        match wire::encode(&Digest {
            sender: self.replica_id,
            origins,
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

    fn request_state(&mut self, peer: PeerId, origins: Vec<u64>) {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        if let Ok(frame) = wire::encode(&StateRequest {
            sender: self.replica_id,
            request_id,
            origins,
        }) {
            self.stats.state_requests_sent += 1;
            self.queue(peer, Channel::Stream, frame);
        }
    }

    fn queue(&mut self, peer: PeerId, channel: Channel, frame: Vec<u8>) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.stats.bytes_sent += frame.len() as u64;
        }
        self.stats.bytes_sent += frame.len() as u64;
        self.outbox.push_back(Transmit {
            peer,
            channel,
            frame: Bytes::from(frame),
        });
    }

    /// The next frame to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.pop_front()
    }

    /// Handles a frame received from `peer`. A frame that fails to decode is dropped whole and counted; the
    /// error is returned so the runtime can log it with the peer's address.
    pub fn handle_frame(
        &mut self,
        peer: PeerId,
        bytes: &[u8],
        now_ms: u64,
    ) -> Result<(), WireError> {
        self.stats.bytes_received += bytes.len() as u64;
        let frame = match wire::decode(bytes) {
            Ok(frame) => frame,
            Err(error) => {
                self.stats.decode_errors += 1;
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.stats.decode_errors += 1;
                }
                return Err(error);
            }
        };
        if let Some(p) = self.peers.get_mut(&peer) {
            p.stats.bytes_received += bytes.len() as u64;
            p.stats.last_received_ms = now_ms;
        }
        match frame {
            Frame::DeltaBatch(batch) => {
                self.stats.batches_received += 1;
                if let Some(p) = self.peers.get_mut(&peer) {
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
                self.merge_groups(&batch.groups);
            }
            Frame::StateChunk(chunk) => {
                self.stats.state_chunks_received += 1;
                self.merge_groups(&chunk.groups);
            }
            Frame::StateRequest(request) => {
                self.stats.state_requests_received += 1;
                let wanted: Vec<u64> = request.origins.iter().map(|o| o.to_native()).collect();
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
                if let Some(p) = self.peers.get_mut(&peer)
                    && let Some((expected, sent)) = p.outstanding
                    && expected == nonce
                {
                    p.outstanding = None;
                    let rtt_ms = now_ms.saturating_sub(sent);
                    p.stats.check_rtt_ms = rtt_ms;
                    p.stats.last_check_answered_ms = now_ms;
                    self.stats.checks_answered += 1;
                    self.checks.push_back(CheckAnswered { peer, rtt_ms });
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

    fn merge_groups(&mut self, groups: &[ArchivedOriginGroup]) {
        for group in groups {
            if !matches!(group.kind, ArchivedOriginKind::Replica) {
                self.stats.entries_ignored += group.entries.len() as u64; // aggregates: a later protocol step
                continue;
            }
            let origin = group.origin.to_native();
            for entry in group.entries.iter() {
                // Windows were validated by `wire::decode`.
                let Ok(window) = entry.window.window() else {
                    continue;
                };
                match self.store.merge_remote(
                    origin,
                    entry.key.as_str(),
                    window,
                    entry.epoch.to_native(),
                    entry.value.to_native(),
                ) {
                    Ok(MergeOutcome::Raised) => self.stats.entries_merged += 1,
                    Ok(MergeOutcome::Unchanged) => self.stats.entries_unchanged += 1,
                    Ok(MergeOutcome::Expired) => self.stats.entries_expired += 1,
                    Ok(MergeOutcome::Future) => self.stats.entries_future += 1,
                    Err(
                        CounterError::KeyLimit { .. }
                        | CounterError::KeyTooLong { .. }
                        | CounterError::EmptyKey,
                    ) => self.stats.entries_refused += 1,
                }
            }
        }
    }

    /// Sends our recent values of `origins` (all when empty) to `peer` as stream chunks.
    fn send_state(&mut self, peer: PeerId, request_id: u64, origins: &[u64], now_ms: u64) {
        let values = digest::values_by_origin(&self.store, self.replica_id, now_ms);
        let mut packer = BatchPacker::new(self.options.stream_chunk_bytes);
        let mut chunks: Vec<Vec<OriginGroup>> = Vec::new();
        for (origin, entries) in values {
            if !origins.is_empty() && !origins.contains(&origin) {
                continue;
            }
            for entry in entries {
                if let Some(groups) = packer.push(origin, to_wire_entry(entry)) {
                    chunks.push(groups);
                }
            }
        }
        chunks.extend(packer.finish());
        let count = chunks.len();
        if count == 0 {
            // Answer even when empty so the requester knows the transfer is complete.
            chunks.push(Vec::new());
        }
        let total = chunks.len();
        for (i, groups) in chunks.into_iter().enumerate() {
            let chunk = StateChunk {
                sender: self.replica_id,
                request_id,
                groups,
                last: i + 1 == total,
            };
            match wire::encode(&chunk) {
                Ok(frame) => {
                    self.stats.state_chunks_sent += 1;
                    self.queue(peer, Channel::Stream, frame);
                }
                Err(error) => {
                    tracing::error!(%error, "failed to encode a state chunk");
                    self.stats.encode_errors += 1;
                }
            }
        }
    }

    /// Compares a peer's digest with ours: pushes our values of every origin that differs or that the peer
    /// lacks, and asks for the peer's values of every origin that differs or that we lack.
    fn answer_digest(&mut self, peer: PeerId, theirs: &wire::ArchivedDigest, now_ms: u64) {
        let values = digest::values_by_origin(&self.store, self.replica_id, now_ms);
        let ours: BTreeMap<u64, (u32, u64)> = digest::digest_of(&values)
            .into_iter()
            .map(|d| (d.origin, (d.entries, d.fingerprint)))
            .collect();
        let mut theirs_map = BTreeMap::new();
        for d in theirs.origins.iter() {
            theirs_map.insert(
                d.origin.to_native(),
                (d.entries.to_native(), d.fingerprint.to_native()),
            );
        }
        let sender = theirs.sender.to_native();
        let mut push = Vec::new();
        let mut pull = Vec::new();
        for (origin, mine) in &ours {
            match theirs_map.get(origin) {
                Some(other) if other == mine => {}
                // Nobody needs its own values back: the peer holds its own, we hold ours.
                Some(_) if *origin == sender => {}
                Some(_) if *origin == self.replica_id => push.push(*origin),
                Some(_) => {
                    push.push(*origin);
                    pull.push(*origin);
                }
                None if *origin == sender => {}
                None => push.push(*origin),
            }
        }
        for origin in theirs_map.keys() {
            if !ours.contains_key(origin) && *origin != self.replica_id {
                pull.push(*origin);
            }
        }
        if !push.is_empty() || !pull.is_empty() {
            self.stats.anti_entropy_repairs += 1;
        }
        if !push.is_empty() {
            self.send_state(peer, 0, &push, now_ms);
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
