//! Fuzzes frame decoding and merging: any bytes from a peer give a typed error or a frame that merges, never a
//! panic; merging the same frame twice changes nothing, for the counters and for the shared state (config map,
//! health records).
#![no_main]

use std::sync::Arc;

use bifrost_cluster::ReplicaId;
use bifrost_cluster::UnixMs;
use bifrost_cluster::counter::{CoarseClock, CounterStore, StoreOptions};
use bifrost_cluster::replication::{Replicator, ReplicatorOptions};
use bifrost_cluster::state::{StateOptions, StateReplicator};
use bifrost_cluster::wire::{self, Frame};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_795_514_400_000;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = wire::decode(data) {
        // Touch every field the receiver reads.
        match frame {
            Frame::DeltaBatch(b) => b
                .groups
                .iter()
                .flat_map(|g| g.entries.iter())
                .for_each(|e| {
                    let _ = (
                        e.key.as_str().len(),
                        e.window.window(),
                        e.epoch.to_native(),
                        e.value.to_native(),
                    );
                }),
            Frame::StateChunk(c) => c.groups.iter().for_each(|g| {
                let _ = g.entries.len();
            }),
            Frame::Hello(h) => {
                let _ = h.node_id.as_str();
            }
            Frame::Digest(d) => {
                let _ = d.origins.len();
            }
            Frame::StateRequest(r) => {
                let _ = r.origins.len();
            }
            Frame::Membership(m) => {
                let _ = m.payload.len();
            }
            Frame::DataPing(p) => {
                let _ = p.nonce.to_native();
            }
            Frame::DataPong(p) => {
                let _ = p.nonce.to_native();
            }
            Frame::ConfigEntries(c) => c.entries.iter().for_each(|e| {
                let _ = (
                    e.key.as_str(),
                    e.node.as_str(),
                    e.value.as_ref().map(|v| v.len()),
                );
            }),
            Frame::ConfigDigest(d) => {
                let _ = d.fingerprint.to_native();
                d.buckets.iter().for_each(|b| {
                    let _ = (b.index.to_native(), b.fingerprint.to_native());
                });
            }
            Frame::NodeHealth(h) => {
                let _ = (h.node_id.as_str(), h.links.len());
            }
        }
    }
    let store = CounterStore::new(StoreOptions {
        max_keys: 64,
        replica_id: 1,
        clock: Arc::new(CoarseClock::new(UnixMs::new(NOW))),
        ..StoreOptions::default()
    });
    let mut replicator = Replicator::new(
        store.clone(),
        ReplicaId::new(1),
        ReplicatorOptions::default(),
        7,
        NOW,
    );
    replicator.add_peer(2, ReplicaId::new(2), Some(1200));
    let _ = replicator.handle_frame(2, data, NOW);
    let before = store.remote_snapshot();
    let _ = replicator.handle_frame(2, data, NOW);
    assert_eq!(
        before,
        store.remote_snapshot(),
        "merging the same frame twice changes nothing"
    );
    while replicator.poll_transmit().is_some() {}

    let mut state =
        StateReplicator::new("node-1", ReplicaId::new(1), StateOptions::default(), 7, NOW);
    state.add_peer(2);
    if StateReplicator::is_state_frame(data) {
        let _ = state.handle_frame(2, data, NOW);
        let digest = state.map().digest();
        let _ = state.handle_frame(2, data, NOW);
        assert_eq!(
            digest,
            state.map().digest(),
            "merging the same config entries twice changes nothing"
        );
    }
    while state.poll_transmit().is_some() {}
});
