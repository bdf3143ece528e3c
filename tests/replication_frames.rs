//! The replicator against hostile or odd frames from a trusted peer: typed errors, counters, no panics, and
//! frames that the fuzzer once crashed on (kept under tests/fixtures/fuzz_regressions/).

use std::sync::Arc;

use bifrost_cluster::ReplicaId;
use bifrost_cluster::UnixMs;
use bifrost_cluster::counter::{CoarseClock, CounterStore, StoreOptions, Window};
use bifrost_cluster::replication::{Replicator, ReplicatorOptions};
use bifrost_cluster::wire::{
    self, DeltaBatch, Entry, OriginGroup, OriginKind, WireError, WireWindow,
};

const NOW: u64 = 1_795_514_400_000;

fn replicator() -> (CounterStore, Replicator) {
    let store = CounterStore::new(StoreOptions {
        max_keys: 16,
        max_remote_keys: 16,
        replica_id: 1,
        clock: Arc::new(CoarseClock::new(UnixMs::new(NOW))),
        ..StoreOptions::default()
    });
    let mut r = Replicator::new(
        store.clone(),
        ReplicaId::new(1),
        ReplicatorOptions::default(),
        7,
        NOW,
    );
    r.add_peer(2, ReplicaId::new(2), Some(1200));
    while r.poll_transmit().is_some() {}
    (store, r)
}

fn batch(sequence: u64, origin: u64, key: &str, value: u64) -> Vec<u8> {
    let window = Window::parse("1m").unwrap();
    wire::encode(&DeltaBatch {
        sender: origin,
        sequence,
        sent_at_ms: NOW,
        groups: vec![OriginGroup {
            origin,
            kind: OriginKind::Replica,
            entries: vec![Entry {
                key: key.into(),
                window: WireWindow::from(window),
                epoch: window.epoch_at(UnixMs::new(NOW)),
                value,
            }],
        }],
    })
    .unwrap()
}

#[test]
fn fuzz_regressions_do_not_panic() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz_regressions");
    for file in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(file.unwrap().path()).unwrap();
        let (_, mut r) = replicator();
        let _ = r.handle_frame(2, &bytes, NOW);
        let _ = r.handle_frame(2, &bytes, NOW);
    }
}

#[test]
fn extreme_sequence_numbers_are_counted_without_overflow() {
    let (store, mut r) = replicator();
    r.handle_frame(2, &batch(5, 2, "k", 1), NOW).unwrap();
    r.handle_frame(2, &batch(u64::MAX, 2, "k", 2), NOW).unwrap();
    r.handle_frame(2, &batch(u64::MAX, 2, "k", 3), NOW).unwrap();
    let peer = r.peer_stats(2).unwrap();
    assert_eq!(peer.last_sequence, u64::MAX);
    assert_eq!(peer.sequence_gaps, u64::MAX - 6);
    assert_eq!(store.global("k", Window::parse("1m").unwrap()), 3);
}

#[test]
fn malformed_frames_are_refused_whole_and_counted() {
    let (store, mut r) = replicator();
    let mut frame = batch(1, 2, "k", 5);
    let last = frame.len() - 1;
    frame[last] ^= 0xff; // corrupt the archive's root
    let truncated = &frame[..frame.len() - 3];
    assert!(matches!(
        r.handle_frame(2, truncated, NOW),
        Err(WireError::LengthMismatch { .. })
    ));
    assert!(r.handle_frame(2, b"garbage", NOW).is_err());
    let oversized = vec![0u8; wire::MAX_FRAME_BYTES + 1];
    assert!(matches!(
        r.handle_frame(2, &oversized, NOW),
        Err(WireError::TooLarge { .. })
    ));
    assert_eq!(r.stats().decode_errors, 3);
    assert_eq!(r.peer_stats(2).unwrap().decode_errors, 3);
    assert_eq!(
        store.global("k", Window::parse("1m").unwrap()),
        0,
        "nothing from a refused frame is merged"
    );
    // The link keeps working: a good frame after bad ones merges.
    r.handle_frame(2, &batch(2, 2, "k", 5), NOW).unwrap();
    assert_eq!(store.global("k", Window::parse("1m").unwrap()), 5);
}

#[test]
fn our_own_values_echoed_back_are_ignored_and_keys_beyond_the_cap_are_counted() {
    let (store, mut r) = replicator();
    r.handle_frame(2, &batch(1, 1, "mine", 100), NOW).unwrap();
    assert_eq!(store.global("mine", Window::parse("1m").unwrap()), 0);
    for i in 0..20 {
        r.handle_frame(2, &batch(2 + i, 2, &format!("key-{i}"), 1), NOW)
            .unwrap();
    }
    assert_eq!(r.stats().entries_refused, 4, "16 keys fit, 4 are refused");
}
