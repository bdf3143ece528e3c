//! Origins are bound to their sender (issue 14): a peer holding the cluster secret may send values for its own
//! replica id only. Driven sans-IO: one replicator, frames crafted as a hostile member would send them.
//! Peer link ids (20, 30) differ from the replica ids their hellos announced (2, 3) on purpose.

use std::sync::Arc;

use bifrost_cluster::ReplicaId;
use bifrost_cluster::UnixMs;
use bifrost_cluster::counter::{CoarseClock, CounterStore, StoreOptions, Window};
use bifrost_cluster::replication::{Replicator, ReplicatorOptions};
use bifrost_cluster::wire::{
    self, DeltaBatch, Entry, Frame, OriginGroup, OriginKind, StateChunk, WireWindow,
};

const NOW: u64 = 1_795_514_400_000;
const HONEST: u64 = 20; // link of replica 2
const VICTIM: u64 = 30; // link of replica 3

fn minute() -> Window {
    Window::parse("1m").unwrap()
}

fn replicator(options: ReplicatorOptions) -> (CounterStore, Replicator) {
    let store = CounterStore::new(StoreOptions {
        replica_id: 1,
        clock: Arc::new(CoarseClock::new(UnixMs::new(NOW))),
        ..StoreOptions::default()
    });
    let mut r = Replicator::new(store.clone(), ReplicaId::new(1), options, 7, NOW);
    r.add_peer(HONEST, ReplicaId::new(2), Some(1_200));
    r.add_peer(VICTIM, ReplicaId::new(3), Some(1_200));
    while r.poll_transmit().is_some() {}
    (store, r)
}

fn group(origin: u64, kind: OriginKind, key: &str, value: u64) -> OriginGroup {
    OriginGroup {
        origin,
        kind,
        entries: vec![Entry {
            key: key.into(),
            window: WireWindow::from(minute()),
            epoch: minute().epoch_at(UnixMs::new(NOW)),
            value,
        }],
    }
}

fn batch(sender: u64, groups: Vec<OriginGroup>) -> Vec<u8> {
    wire::encode(&DeltaBatch {
        sender,
        sequence: 1,
        sent_at_ms: NOW,
        groups,
    })
    .unwrap()
}

fn chunk(sender: u64, groups: Vec<OriginGroup>) -> Vec<u8> {
    wire::encode(&StateChunk {
        sender,
        request_id: 0,
        groups,
        index: 0,
        total: 1,
    })
    .unwrap()
}

/// The origins named by the state requests `r` queued, per link.
fn requests(r: &mut Replicator) -> Vec<(u64, Vec<u64>)> {
    let mut out = Vec::new();
    while let Some(t) = r.poll_transmit() {
        if let Ok(Frame::StateRequest(q)) = wire::decode(&t.frame) {
            out.push((t.peer, q.origins.iter().map(|o| o.to_native()).collect()));
        }
    }
    out
}

#[test]
fn a_delta_batch_carrying_another_replicas_origin_is_refused_and_counted_per_peer() {
    let (store, mut r) = replicator(ReplicatorOptions::default());
    // Replica 2 claims to speak for replica 3 (raising 3's value would hide 3's next increments), next to
    // an honest group of its own.
    let forged = batch(
        2,
        vec![
            group(2, OriginKind::Replica, "k", 5),
            group(3, OriginKind::Replica, "k", 1_000_000),
        ],
    );
    r.handle_frame(HONEST, &forged, NOW).unwrap();
    assert_eq!(store.global("k", minute()), 5, "only 2's own value counts");
    assert_eq!(
        store.origin_counts_at("k", minute(), minute().epoch_at(UnixMs::new(NOW))),
        vec![(2, 5)]
    );
    assert_eq!(r.stats().forged_entries, 1);
    assert_eq!(r.peer_stats(HONEST).unwrap().forged_entries, 1);
    assert_eq!(r.peer_stats(VICTIM).unwrap().forged_entries, 0);
    // The real replica 3 still counts from its own link.
    r.handle_frame(
        VICTIM,
        &batch(3, vec![group(3, OriginKind::Replica, "k", 7)]),
        NOW,
    )
    .unwrap();
    assert_eq!(store.global("k", minute()), 12);
}

#[test]
fn a_frame_claiming_another_sender_is_refused_whole() {
    let (store, mut r) = replicator(ReplicatorOptions::default());
    // Sent on replica 2's link, claiming to be replica 3 with 3's own group: consistent in itself, forged.
    let frame = batch(3, vec![group(3, OriginKind::Replica, "k", 9)]);
    r.handle_frame(HONEST, &frame, NOW).unwrap();
    let frame = chunk(3, vec![group(3, OriginKind::Replica, "j", 9)]);
    r.handle_frame(HONEST, &frame, NOW).unwrap();
    assert_eq!(store.global("k", minute()), 0);
    assert_eq!(store.global("j", minute()), 0);
    assert_eq!(r.stats().forged_frames, 2);
    assert_eq!(r.peer_stats(HONEST).unwrap().forged_entries, 2);
}

#[test]
fn a_relayed_value_of_a_linked_member_is_never_merged_and_that_member_is_asked_itself() {
    let (store, mut r) = replicator(ReplicatorOptions::default());
    let frame = chunk(2, vec![group(3, OriginKind::Replica, "k", 1_000_000)]);
    r.handle_frame(HONEST, &frame, NOW).unwrap();
    assert_eq!(store.global("k", minute()), 0);
    assert_eq!(r.stats().relays_skipped, 1);
    assert_eq!(
        requests(&mut r),
        vec![(VICTIM, vec![3])],
        "the origin itself is asked for its values"
    );
    // A second hint within the anti-entropy interval asks nobody again.
    r.handle_frame(HONEST, &frame, NOW + 1).unwrap();
    assert!(requests(&mut r).is_empty());
}

#[test]
fn relays_of_departed_origins_are_merged_up_to_the_per_peer_cap() {
    let (store, mut r) = replicator(ReplicatorOptions {
        max_relayed_origins_per_peer: 10,
        ..ReplicatorOptions::default()
    });
    // A restarted node's previous life (no longer linked) reaches a newcomer only through relays.
    let groups: Vec<OriginGroup> = (100..130u64)
        .map(|origin| group(origin, OriginKind::Replica, "k", 1))
        .collect();
    r.handle_frame(HONEST, &chunk(2, groups), NOW).unwrap();
    assert_eq!(store.global("k", minute()), 10, "ten relayed origins fit");
    assert_eq!(r.stats().relayed_refused, 20);
    assert_eq!(r.peer_stats(HONEST).unwrap().relayed_refused, 20);
    // An origin the peer already relayed keeps merging; the cap is per peer.
    r.handle_frame(
        HONEST,
        &chunk(2, vec![group(100, OriginKind::Replica, "k", 5)]),
        NOW,
    )
    .unwrap();
    r.handle_frame(
        VICTIM,
        &chunk(3, vec![group(200, OriginKind::Replica, "k", 1)]),
        NOW,
    )
    .unwrap();
    assert_eq!(store.global("k", minute()), 10 + 4 + 1);
}

#[test]
fn aggregate_groups_stay_refused_and_floors_travel_only_in_state_chunks() {
    let (store, mut r) = replicator(ReplicatorOptions::default());
    r.handle_frame(
        HONEST,
        &batch(2, vec![group(2, OriginKind::Replica, "k", 50)]),
        NOW,
    )
    .unwrap();
    r.handle_frame(
        HONEST,
        &batch(2, vec![group(2, OriginKind::Aggregate, "k", 1_000)]),
        NOW,
    )
    .unwrap();
    r.handle_frame(
        HONEST,
        &chunk(2, vec![group(99, OriginKind::Aggregate, "k", 1_000)]),
        NOW,
    )
    .unwrap();
    r.handle_frame(
        HONEST,
        &batch(2, vec![group(2, OriginKind::Floor, "k", 50)]),
        NOW,
    )
    .unwrap();
    assert_eq!(store.global("k", minute()), 50);
    assert_eq!(r.stats().entries_ignored, 3);
}

#[test]
fn values_from_a_link_never_added_are_refused() {
    let (store, mut r) = replicator(ReplicatorOptions::default());
    r.handle_frame(
        99,
        &batch(9, vec![group(9, OriginKind::Replica, "k", 5)]),
        NOW,
    )
    .unwrap();
    assert_eq!(store.global("k", minute()), 0);
    assert_eq!(r.stats().unbound_entries, 1);
}
