//! Anti-entropy never fails on size (issue 14): with 100,000 origins held, a digest of all of them is about
//! 2 MB, twice the frame limit; it used to fail to encode every round, which stopped anti-entropy for every key.
//! Digests now cover consecutive origin ranges and state transfers stay within the frame and entry limits.
//! Two replicators wired by hand, every frame delivered; bounded by the number of rounds, not by time.

use std::sync::Arc;

use bifrost_cluster::ReplicaId;
use bifrost_cluster::UnixMs;
use bifrost_cluster::counter::{CoarseClock, CounterStore, StoreOptions, Window};
use bifrost_cluster::replication::{PeerId, Replicator, ReplicatorOptions};
use bifrost_cluster::wire::{self, Frame};

const NOW: u64 = 1_795_514_400_000;
const A: u64 = 1 << 63; // replica ids in the middle of the origin space: covered by a later digest range
const B: u64 = (1 << 63) + 1;

fn hour() -> Window {
    Window::parse("1h").unwrap()
}

fn node(replica: u64, options: ReplicatorOptions) -> (CounterStore, Replicator) {
    let store = CounterStore::new(StoreOptions {
        replica_id: replica,
        max_keys: 200_000,
        max_remote_keys: 200_000,
        clock: Arc::new(CoarseClock::new(UnixMs::new(NOW))),
        ..StoreOptions::default()
    });
    (
        store.clone(),
        Replicator::new(store, ReplicaId::new(replica), options, replica, NOW),
    )
}

/// Moves every queued frame of `from` (link id = the receiver's replica id) into `to`, whose link to `from`
/// has id `from_link`. Returns the frames moved and their largest size.
fn deliver(
    from: &mut Replicator,
    to: &mut Replicator,
    from_link: PeerId,
    now: u64,
) -> (usize, usize) {
    let (mut frames, mut largest) = (0, 0);
    while let Some(t) = from.poll_transmit() {
        assert!(t.frame.len() <= wire::MAX_FRAME_BYTES);
        if let Ok(Frame::Digest(d)) = wire::decode(&t.frame) {
            assert!(
                d.origins.len() <= 16_384,
                "digest of {} origins",
                d.origins.len()
            );
        }
        to.handle_frame(from_link, &t.frame, now)
            .unwrap_or_else(|e| panic!("frame of {} bytes refused: {e}", t.frame.len()));
        frames += 1;
        largest = largest.max(t.frame.len());
    }
    (frames, largest)
}

/// Both nodes hold the same 100,000 relayed origins (the made-up ones, spread over 1,000 keys);
/// A's own value of another key never reached B (a lost datagram). Anti-entropy still repairs it.
#[test]
fn with_100000_origins_digests_go_out_in_ranges_and_anti_entropy_still_repairs_another_key() {
    let options = ReplicatorOptions {
        anti_entropy_interval_ms: 1_000,
        check_interval_ms: 0,
        ..ReplicatorOptions::default()
    };
    let (store_a, mut a) = node(A, options.clone());
    let (store_b, mut b) = node(B, options);
    let epoch = hour().epoch_at(UnixMs::new(NOW));
    let mut seed = 0x1234_5678_9abc_def0_u64;
    for i in 0..100_000u64 {
        // splitmix64: origins spread over the whole id space, as random replica ids are.
        seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        let origin = z ^ (z >> 31);
        let key = format!("forged/{}", i % 1_000);
        for store in [&store_a, &store_b] {
            store.merge_remote(origin, &key, hour(), epoch, 1).unwrap();
        }
    }
    a.add_peer(B, ReplicaId::new(B), Some(1_200));
    b.add_peer(A, ReplicaId::new(A), Some(1_200));
    // The links' first state requests (and their answers) are not the point here: drop them.
    while a.poll_transmit().is_some() {}
    while b.poll_transmit().is_some() {}
    store_a.add("repair/me", hour(), 42).unwrap();
    store_a.drain_dirty(usize::MAX, &mut Vec::new()); // the delta is lost

    let mut now = NOW;
    let mut repaired_after = None;
    for round in 1..=12 {
        now += 1_000;
        store_a.clock().set_unix_ms(UnixMs::new(now));
        store_b.clock().set_unix_ms(UnixMs::new(now));
        a.handle_timeout(now);
        b.handle_timeout(now);
        for _ in 0..3 {
            deliver(&mut a, &mut b, A, now);
            deliver(&mut b, &mut a, B, now);
        }
        if store_b.global("repair/me", hour()) == 42 {
            repaired_after = Some(round);
            break;
        }
    }
    for (name, r) in [("a", &a), ("b", &b)] {
        assert_eq!(r.stats().encode_errors, 0, "{name}: {:?}", r.stats());
        assert_eq!(r.stats().decode_errors, 0, "{name}");
        assert!(r.stats().digests_sent > 0, "{name}");
    }
    let rounds = repaired_after.expect("anti-entropy repaired the lost value within 12 rounds");
    // 100,002 origins in ranges of 16,384: a full pass takes 7 digests, and A's own origin is in one of them.
    assert!(rounds <= 7, "repaired after {rounds} rounds");
    eprintln!(
        "repaired after {rounds} rounds; a sent {} digests, {} passes",
        a.stats().digests_sent,
        a.stats().digest_passes
    );
}

/// A full state transfer of 40,000 keys with a stream chunk budget above the frame limit: every chunk still
/// encodes, and every chunk is accepted by the receiver (at most 16,384 entries, at most 1 MiB).
#[test]
fn a_full_state_transfer_stays_within_the_frame_and_entry_limits_whatever_the_chunk_budget() {
    let options = ReplicatorOptions {
        stream_chunk_bytes: 4 << 20,
        check_interval_ms: 0,
        anti_entropy_interval_ms: 3_600_000,
        ..ReplicatorOptions::default()
    };
    let (store_a, mut a) = node(A, options.clone());
    let (store_b, mut b) = node(B, options);
    for i in 0..40_000 {
        store_a.add(&format!("k{i}"), hour(), 1).unwrap();
    }
    a.add_peer(B, ReplicaId::new(B), Some(1_200));
    while a.poll_transmit().is_some() {}
    b.add_peer(A, ReplicaId::new(A), Some(1_200)); // B's first peer: it asks A for everything
    deliver(&mut b, &mut a, B, NOW);
    let (frames, largest) = deliver(&mut a, &mut b, A, NOW);
    assert_eq!(a.stats().encode_errors, 0);
    assert_eq!(b.stats().decode_errors, 0);
    assert!(frames >= 3, "{frames} chunks");
    assert!(largest <= wire::MAX_FRAME_BYTES);
    assert_eq!(store_b.stats().keys, 40_000);
    assert_eq!(store_b.global("k39999", hour()), 1);
}

/// Start-up admission waits for a peer's whole state: chunks travel on separate streams and arrive in any
/// order, so the state counts as received once every chunk of the answer to the link's own request arrived,
/// whichever came last. An unsolicited chunk (an anti-entropy push, request id 0) never completes it.
#[test]
fn a_state_transfer_is_received_only_once_every_chunk_arrived_in_any_order() {
    let options = ReplicatorOptions {
        stream_chunk_bytes: 8 * 1024,
        check_interval_ms: 0,
        anti_entropy_interval_ms: 3_600_000,
        ..ReplicatorOptions::default()
    };
    let (store_a, mut a) = node(A, options.clone());
    let (store_b, mut b) = node(B, options);
    for i in 0..2_000 {
        store_a.add(&format!("k{i}"), hour(), 1).unwrap();
    }
    a.add_peer(B, ReplicaId::new(B), Some(1_200));
    while a.poll_transmit().is_some() {}
    b.add_peer(A, ReplicaId::new(A), Some(1_200)); // B's first peer: it asks A for everything
    assert_eq!(b.peers_with_state(), 0);

    // An unsolicited single-chunk push first: it merges, but is not the awaited answer.
    let push = wire::encode(&wire::StateChunk {
        sender: A,
        request_id: 0,
        groups: Vec::new(),
        index: 0,
        total: 1,
    })
    .unwrap();
    b.handle_frame(A, &push, NOW).unwrap();
    assert_eq!(
        b.peers_with_state(),
        0,
        "an anti-entropy push completes nothing"
    );

    deliver(&mut b, &mut a, B, NOW); // the request reaches A
    let mut chunks = Vec::new();
    while let Some(t) = a.poll_transmit() {
        chunks.push(t.frame);
    }
    assert!(chunks.len() >= 4, "{} chunks", chunks.len());
    // The last chunk first, then the others in reverse: the answer is complete only after the first one.
    let first = chunks.remove(0);
    for frame in chunks.iter().rev() {
        b.handle_frame(A, frame, NOW).unwrap();
        assert_eq!(b.peers_with_state(), 0, "a chunk is still missing");
    }
    b.handle_frame(A, &chunks[0], NOW).unwrap(); // a duplicate counts once
    assert_eq!(b.peers_with_state(), 0);
    b.handle_frame(A, &first, NOW).unwrap();
    assert_eq!(b.peers_with_state(), 1, "every chunk arrived");
    assert_eq!(store_b.stats().keys, 2_000);
}
