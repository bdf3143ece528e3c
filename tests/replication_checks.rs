//! Data-plane checks between two replicators wired by hand: a ping on a stream, the peer's replicator
//! answers, the answer comes out of `poll_check` with its round trip; an unanswered check is counted and
//! replaced, and a late answer to a replaced check proves nothing.

use std::sync::Arc;

use bifrost_cluster::ReplicaId;
use bifrost_cluster::UnixMs;
use bifrost_cluster::counter::{CoarseClock, CounterStore, StoreOptions};
use bifrost_cluster::replication::{
    Channel, CheckAnswered, Replicator, ReplicatorOptions, Transmit,
};
use bifrost_cluster::wire::{self, Frame};

const NOW: u64 = 1_795_514_400_000;

fn node(replica: u64, peer: u64) -> Replicator {
    let store = CounterStore::new(StoreOptions {
        replica_id: replica,
        clock: Arc::new(CoarseClock::new(UnixMs::new(NOW))),
        ..StoreOptions::default()
    });
    let options = ReplicatorOptions {
        check_interval_ms: 1_000,
        check_timeout_ms: 5_000,
        anti_entropy_interval_ms: 3_600_000,
        ..ReplicatorOptions::default()
    };
    let mut r = Replicator::new(store, ReplicaId::new(replica), options, replica, NOW);
    r.add_peer(peer, ReplicaId::new(peer), Some(1_200));
    r
}

/// The data-plane frames `r` queued (other frames, like the first state request, are dropped).
fn checks_out(r: &mut Replicator) -> Vec<Transmit> {
    let mut out = Vec::new();
    while let Some(t) = r.poll_transmit() {
        if matches!(
            wire::decode(&t.frame),
            Ok(Frame::DataPing(_) | Frame::DataPong(_))
        ) {
            out.push(t);
        }
    }
    out
}

#[test]
fn a_check_is_answered_by_the_peers_replicator_and_reports_its_round_trip() {
    let (mut a, mut b) = (node(1, 2), node(2, 1));
    assert_eq!(a.poll_timeout(), 0, "a new peer is checked at once");
    a.handle_timeout(NOW);
    let pings = checks_out(&mut a);
    assert_eq!(pings.len(), 1);
    assert_eq!(pings[0].peer, 2);
    assert_eq!(
        pings[0].channel,
        Channel::Stream,
        "checks ride streams, like anti-entropy"
    );
    assert!(matches!(
        wire::decode(&pings[0].frame),
        Ok(Frame::DataPing(_))
    ));
    assert_eq!(a.poll_check(), None);

    b.handle_frame(1, &pings[0].frame, NOW + 3)
        .expect("ping decodes");
    let pongs = checks_out(&mut b);
    assert_eq!(pongs.len(), 1);
    assert_eq!(pongs[0].peer, 1);
    assert!(matches!(
        wire::decode(&pongs[0].frame),
        Ok(Frame::DataPong(_))
    ));

    a.handle_frame(2, &pongs[0].frame, NOW + 7)
        .expect("pong decodes");
    assert_eq!(a.poll_check(), Some(CheckAnswered { peer: 2, rtt_ms: 7 }));
    assert_eq!(a.poll_check(), None);
    assert_eq!(a.stats().checks_sent, 1);
    assert_eq!(a.stats().checks_answered, 1);
    assert_eq!(a.peer_stats(2).map(|s| s.check_rtt_ms), Some(7));
    // The next check follows one interval after the previous one was sent.
    a.handle_timeout(NOW + 999);
    assert!(checks_out(&mut a).is_empty());
    a.handle_timeout(NOW + 1_000);
    assert_eq!(checks_out(&mut a).len(), 1);
}

#[test]
fn check_now_sends_a_fresh_check_at_once_and_ignores_the_answer_to_the_one_it_replaced() {
    let (mut a, mut b) = (node(1, 2), node(2, 1));
    a.handle_timeout(NOW);
    let first = checks_out(&mut a).remove(0);
    a.check_now(2);
    assert!(a.poll_timeout() <= NOW + 1, "due at once");
    a.handle_timeout(NOW + 1);
    let second = checks_out(&mut a).remove(0);
    assert_ne!(first.frame, second.frame, "a new nonce");
    assert_eq!(
        a.stats().checks_timed_out,
        0,
        "the replaced check is not a timeout"
    );
    // The answer to the first is ignored, the answer to the second counts.
    for ping in [&first, &second] {
        b.handle_frame(1, &ping.frame, NOW + 2)
            .expect("ping decodes");
    }
    let pongs = checks_out(&mut b);
    assert_eq!(pongs.len(), 2);
    a.handle_frame(2, &pongs[0].frame, NOW + 3)
        .expect("pong decodes");
    assert_eq!(a.poll_check(), None, "the answer to the replaced check");
    a.handle_frame(2, &pongs[1].frame, NOW + 4)
        .expect("pong decodes");
    assert_eq!(a.poll_check(), Some(CheckAnswered { peer: 2, rtt_ms: 3 }));
    // The next check follows one interval after the fresh one.
    a.handle_timeout(NOW + 1_000);
    assert!(checks_out(&mut a).is_empty());
    a.handle_timeout(NOW + 1_001);
    assert_eq!(checks_out(&mut a).len(), 1);
}

#[test]
fn an_unanswered_check_times_out_is_replaced_and_a_late_answer_is_ignored() {
    let (mut a, mut b) = (node(1, 2), node(2, 1));
    a.handle_timeout(NOW);
    let first = checks_out(&mut a).remove(0);
    // While one is outstanding, no second check goes out at the next interval.
    a.handle_timeout(NOW + 1_000);
    assert!(checks_out(&mut a).is_empty());
    // At the timeout it is counted and replaced.
    a.handle_timeout(NOW + 5_000);
    assert_eq!(a.stats().checks_timed_out, 1);
    let second = checks_out(&mut a).remove(0);
    // The answer to the first arrives late: no success is reported.
    b.handle_frame(1, &first.frame, NOW + 5_001).expect("ping");
    let late = checks_out(&mut b).remove(0);
    a.handle_frame(2, &late.frame, NOW + 5_002).expect("pong");
    assert_eq!(a.poll_check(), None, "a late answer to a replaced check");
    // The answer to the current one counts.
    b.handle_frame(1, &second.frame, NOW + 5_003).expect("ping");
    let current = checks_out(&mut b).remove(0);
    a.handle_frame(2, &current.frame, NOW + 5_010)
        .expect("pong");
    assert_eq!(
        a.poll_check(),
        Some(CheckAnswered {
            peer: 2,
            rtt_ms: 10
        })
    );
}

#[test]
fn checks_can_be_switched_off() {
    let store = CounterStore::new(StoreOptions {
        replica_id: 1,
        clock: Arc::new(CoarseClock::new(UnixMs::new(NOW))),
        ..StoreOptions::default()
    });
    let options = ReplicatorOptions {
        check_interval_ms: 0,
        ..ReplicatorOptions::default()
    };
    let mut a = Replicator::new(store, ReplicaId::new(1), options, 1, NOW);
    a.add_peer(2, ReplicaId::new(2), Some(1_200));
    assert!(a.poll_timeout() > NOW, "no check is due");
    a.handle_timeout(NOW + 60_000);
    assert!(checks_out(&mut a).is_empty());
    assert_eq!(a.stats().checks_sent, 0);
}
