//! Membership scenarios in the deterministic simulation (`bifrost_cluster::membership::sim`): join,
//! partition and heal, graceful leave, restart, health thresholds and cluster health.
//!
//! Every test prints its seed; `BIFROST_SIM_SEED=<seed> cargo test --test membership_scenarios` replays it.

use bifrost_cluster::membership::sim::{MembershipSim, MembershipSimOptions};
use bifrost_cluster::membership::{MemberState, MembershipEvent};

fn seed(default: u64) -> u64 {
    std::env::var("BIFROST_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn converged_cluster(nodes: usize, seed: u64) -> MembershipSim {
    let mut sim = MembershipSim::new(MembershipSimOptions {
        nodes,
        seed,
        ..MembershipSimOptions::default()
    });
    sim.join_all(|i| if i == 0 { 1 } else { 0 });
    let deadline = sim.now_ms() + 60_000;
    assert!(
        sim.run_until_true(deadline, 250, MembershipSim::converged),
        "{nodes} nodes did not converge within 60 s (seed {seed})"
    );
    sim
}

#[test]
fn small_cluster_converges() {
    let sim = converged_cluster(5, seed(1));
    for i in 0..5 {
        for j in 0..5 {
            if i != j {
                assert_eq!(sim.view(i, j).map(|v| v.1), Some(MemberState::Alive));
            }
        }
        assert!(
            sim.node(i)
                .events
                .iter()
                .any(|(_, e)| matches!(e, MembershipEvent::Joined { .. }))
        );
    }
}

#[test]
fn partition_and_heal_converge() {
    let n = 10;
    let seed = seed(2);
    let mut sim = converged_cluster(n, seed);
    for i in n / 2..n {
        sim.set_group(i, 1);
    }
    // Long enough for each side to declare the other down.
    let t0 = sim.now_ms();
    let split = sim.run_until_true(t0 + 120_000, 500, |sim| {
        (0..n).all(|i| {
            (0..n)
                .filter(|&j| (i < n / 2) != (j < n / 2))
                .all(|j| sim.view(i, j).map(|v| v.1) == Some(MemberState::Down))
        })
    });
    assert!(
        split,
        "the halves did not declare each other down (seed {seed})"
    );
    let split_ms = sim.now_ms() - t0;
    for i in 0..n {
        assert_eq!(
            sim.node(i).membership.cluster_health(),
            bifrost_cluster::membership::ClusterHealth::NotHealthy,
            "a half of 5/10 must not be healthy (node {i}, seed {seed})"
        );
    }
    sim.heal();
    let t1 = sim.now_ms();
    let healed = sim.run_until_true(t1 + 180_000, 500, MembershipSim::converged);
    assert!(
        healed,
        "the cluster did not merge back within 180 s (seed {seed})"
    );
    let heal_ms = sim.now_ms() - t1;
    for i in 0..n {
        assert_eq!(
            sim.node(i).membership.cluster_health(),
            bifrost_cluster::membership::ClusterHealth::Healthy,
            "node {i} not healthy after the heal (seed {seed})"
        );
    }
    println!(
        "partition 5/5 of {n} (seed {seed}): split seen as down after {split_ms} ms, merged {heal_ms} ms after the heal"
    );
}

#[test]
fn graceful_leave_is_seen_as_left_within_one_dissemination_round() {
    let n = 50;
    let seed = seed(3);
    let mut sim = converged_cluster(n, seed);
    let leaver = 7;
    let id = sim.node(leaver).membership.local_id().clone();
    let marks: Vec<usize> = (0..n).map(|i| sim.node(i).events.len()).collect();
    let opts = sim.options().membership.clone();
    // One dissemination round: an update is gossiped retransmit-limit times, one gossip interval apart.
    let round = u64::from(opts.max_transmissions(n)) * opts.gossip_interval_ms;
    let t0 = sim.now_ms();
    sim.leave(leaver);
    let all = sim.run_until_true(t0 + round, 10, |sim| {
        (0..n)
            .filter(|&i| i != leaver)
            .all(|i| sim.view(i, leaver).map(|v| v.1) == Some(MemberState::Left))
    });
    let took = sim.now_ms() - t0;
    let mut left_events = 0;
    for i in (0..n).filter(|&i| i != leaver) {
        for (_, e) in &sim.node(i).events[marks[i]..] {
            match e {
                MembershipEvent::MemberLeft(x) if *x == id => left_events += 1,
                MembershipEvent::MemberSuspect(x) | MembershipEvent::MemberDown(x) if *x == id => {
                    panic!("node {i} saw the leaver as {e:?}, not left (seed {seed})")
                }
                _ => {}
            }
        }
    }
    println!(
        "leave in {n} nodes (seed {seed}): every node saw it left after {took} ms (round {round} ms)"
    );
    assert!(
        all,
        "not every node saw the leave within {round} ms (seed {seed})"
    );
    assert_eq!(left_events, n - 1);
}

#[test]
fn restarted_node_replaces_its_old_identity() {
    let n = 8;
    let seed = seed(4);
    let mut sim = converged_cluster(n, seed);
    let k = 3;
    let old = sim.node(k).membership.local_id().clone();
    // Quick restart: the old identity is still alive in everyone's view.
    sim.kill(k);
    sim.run_for(300);
    let new_replica = sim.restart(k, 0);
    assert_ne!(new_replica, old.replica_id());
    let t0 = sim.now_ms();
    assert!(
        sim.run_until_true(t0 + 30_000, 100, MembershipSim::converged),
        "cluster did not converge on the restarted node (seed {seed})"
    );
    for i in (0..n).filter(|&i| i != k) {
        let (id, st) = sim.view(i, k).expect("known");
        assert_eq!(st, MemberState::Alive);
        assert_eq!(id.replica_id(), new_replica);
        assert!(
            sim.node(i).events.iter().any(|(_, e)| matches!(e,
                MembershipEvent::MemberReplaced { old: o, new } if *o == old && new.replica_id() == new_replica)),
            "node {i} never reported the replacement (seed {seed})"
        );
        assert!(
            !sim.node(i)
                .events
                .iter()
                .any(|(_, e)| matches!(e, MembershipEvent::MemberDown(x) if *x == old)),
            "node {i} marked the old identity down instead of replacing it (seed {seed})"
        );
        let table = sim.node(i).membership.members();
        assert!(table.by_replica(old.replica_id()).is_none());
        assert!(table.by_replica(new_replica).is_some());
    }
    println!(
        "restart (seed {seed}): every node replaced the old identity after {} ms",
        sim.now_ms() - t0
    );

    // Slow restart: the old identity was declared down first, then the new one takes its address.
    let old = sim.node(k).membership.local_id().clone();
    sim.kill(k);
    let t1 = sim.now_ms();
    assert!(sim.run_until_true(t1 + 60_000, 200, |sim| {
        (0..n)
            .filter(|&i| i != k)
            .all(|i| sim.view(i, k).map(|v| v.1) == Some(MemberState::Down))
    }));
    let newer = sim.restart(k, 1);
    let t2 = sim.now_ms();
    assert!(
        sim.run_until_true(t2 + 30_000, 100, MembershipSim::converged),
        "seed {seed}"
    );
    for i in (0..n).filter(|&i| i != k) {
        assert_eq!(sim.view(i, k).map(|v| v.0.replica_id()), Some(newer));
        assert!(
            sim.node(i)
                .membership
                .members()
                .by_replica(old.replica_id())
                .is_none()
        );
    }
}
