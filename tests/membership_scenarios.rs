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

/// True when node `i` sees node `j` as a member: alive under its current identity, not refused.
fn member_in_view(sim: &MembershipSim, i: usize, j: usize) -> bool {
    let addr = sim.node(j).addr;
    sim.view(i, j)
        .is_some_and(|(id, st)| st == MemberState::Alive && id == sim.node(j).membership.local_id())
        && sim.node(i).membership.refused_by(addr).is_none()
}

#[test]
fn a_second_live_process_with_a_members_node_id_is_refused_everywhere_and_the_member_stays() {
    let n = 5;
    let seed = seed(5);
    let mut sim = converged_cluster(n, seed);
    let real = 1;
    let real_id = sim.node(real).membership.local_id().clone();
    let marks: Vec<usize> = (0..n).map(|i| sim.node(i).events.len()).collect();
    // A second process with node 1's id, started later at another address, joining through node 3.
    let dup = sim.add_node(real_id.node_id(), 3);
    let dup_addr = sim.node(dup).addr;
    // Far longer than the suspicion timeouts (4 s min, 24 s max at this size).
    let t0 = sim.now_ms();
    let refused_everywhere = sim.run_until_true(t0 + 10_000, 50, |sim| {
        (0..n).all(|i| sim.node(i).membership.refused_by(dup_addr) == Some(&real_id))
            && sim.node(dup).membership.local_refused_by() == Some(&real_id)
    });
    assert!(
        refused_everywhere,
        "not every node refused the duplicate (seed {seed})"
    );
    println!(
        "duplicate of node 1 in {n} nodes (seed {seed}): refused everywhere after {} ms",
        sim.now_ms() - t0
    );
    sim.run_for(60_000);
    let dup_id = sim.node(dup).membership.local_id().clone();
    for (i, &mark) in marks.iter().enumerate() {
        let m = &sim.node(i).membership;
        assert_eq!(
            m.refused_by(dup_addr),
            Some(&real_id),
            "node {i} (seed {seed})"
        );
        assert_eq!(
            m.cluster_health(),
            bifrost_cluster::membership::ClusterHealth::Healthy,
            "node {i} (seed {seed})"
        );
        let table = m.members();
        assert_eq!(table.member_count(), n, "node {i} (seed {seed})");
        assert_eq!(table.healthy_count(), n, "node {i} (seed {seed})");
        assert!(table.by_replica(dup_id.replica_id()).is_none());
        assert!(table.is_refused(dup_id.replica_id()));
        if i != real {
            assert!(member_in_view(&sim, i, real), "node {i} (seed {seed})");
        }
        for (_, e) in &sim.node(i).events[mark..] {
            match e {
                MembershipEvent::MemberSuspect(x)
                | MembershipEvent::MemberDown(x)
                | MembershipEvent::MemberLeft(x)
                | MembershipEvent::MemberUp(x)
                    if x.node_id() == real_id.node_id() =>
                {
                    panic!("node {i} saw {e:?} (seed {seed})")
                }
                MembershipEvent::MemberReplaced { .. }
                | MembershipEvent::ClusterHealthChanged(_) => {
                    panic!("node {i} saw {e:?} (seed {seed})")
                }
                _ => {}
            }
        }
        let refusals = sim.node(i).events[mark..]
            .iter()
            .filter(|(_, e)| matches!(e, MembershipEvent::DuplicateRefused { duplicate, holder } if *duplicate == dup_id && *holder == real_id))
            .count();
        assert_eq!(
            refusals, 1,
            "node {i} reports the duplicate once (seed {seed})"
        );
    }
    assert_eq!(sim.node(real).membership.local_refused_by(), None);
    let m = &sim.node(dup).membership;
    assert_eq!(m.local_refused_by(), Some(&real_id));
    assert_eq!(
        m.cluster_health(),
        bifrost_cluster::membership::ClusterHealth::NotHealthy
    );

    // The real member leaves gracefully: the waiting process holds the node id within one dissemination round.
    let opts = sim.options().membership.clone();
    let round = u64::from(opts.max_transmissions(n)) * opts.gossip_interval_ms;
    sim.leave(real);
    let t1 = sim.now_ms();
    let took_over = sim.run_until_true(t1 + round, 10, |sim| {
        (0..n)
            .filter(|&i| i != real)
            .all(|i| member_in_view(sim, i, dup))
            && sim.node(dup).membership.local_refused_by().is_none()
    });
    assert!(
        took_over,
        "the duplicate did not take over within {round} ms of the leave (seed {seed})"
    );
    println!(
        "after node 1 left (seed {seed}): the waiting process is the member everywhere after {} ms",
        sim.now_ms() - t1
    );
    sim.run_for(5_000);
    for i in (0..n).filter(|&i| i != real) {
        assert_eq!(
            sim.node(i).membership.cluster_health(),
            bifrost_cluster::membership::ClusterHealth::Healthy,
            "node {i} (seed {seed})"
        );
    }
}

#[test]
fn a_node_restarted_at_a_new_address_after_a_crash_takes_over_once_the_old_one_is_down() {
    let n = 8;
    for seed in [seed(6), seed(6) + 1, seed(6) + 2] {
        let mut sim = converged_cluster(n, seed);
        let k = 2;
        let old = sim.node(k).membership.local_id().clone();
        // kill -9, and the replacement starts at once at a new address (a new pod IP).
        sim.kill(k);
        let t0 = sim.now_ms();
        let new = sim.add_node(old.node_id(), 0);
        let new_addr = sim.node(new).addr;
        let others: Vec<usize> = (0..n).filter(|&i| i != k).collect();
        let mut held_back = true;
        let took_over = sim.run_until_true(t0 + 60_000, 50, |sim| {
            // Wherever the old identity still counts as live, the new one is refused.
            for &i in &others {
                let old_live = sim.view(i, k).is_some_and(|(_, st)| st.is_active());
                let new_known = sim.view(i, new).is_some();
                if old_live && new_known && sim.node(i).membership.refused_by(new_addr).is_none() {
                    held_back = false;
                }
            }
            others.iter().all(|&i| member_in_view(sim, i, new))
                && sim.node(new).membership.local_refused_by().is_none()
        });
        assert!(
            took_over,
            "the restarted node did not take over within 60 s (seed {seed})"
        );
        assert!(
            held_back,
            "a node accepted the new process while the old was live (seed {seed})"
        );
        let took = sim.now_ms() - t0;
        let opts = sim.options().membership.clone();
        // Detection (first probe of the dead node, one probe interval, the suspicion timeout) plus spread.
        let bound = opts.suspicion_max_ms(n) + 10 * opts.probe_interval_ms;
        println!(
            "crash + restart at a new address in {n} nodes (seed {seed}): new identity is the member everywhere \
             {took} ms after the kill (bound {bound} ms)"
        );
        assert!(took <= bound, "took {took} ms (seed {seed})");
        for &i in &others {
            let (_, st) = sim.view(i, k).expect("old identity remembered");
            assert_eq!(
                st,
                MemberState::Left,
                "node {i}: old shown replaced (seed {seed})"
            );
            assert!(
                sim.node(i).events.iter().any(|(_, e)| matches!(e,
                    MembershipEvent::MemberReplaced { old: o, new: nw } if *o == old && nw.addr() == new_addr)),
                "node {i} (seed {seed})"
            );
        }
        sim.run_for(10_000);
        for &i in &others {
            assert_eq!(
                sim.node(i).membership.cluster_health(),
                bifrost_cluster::membership::ClusterHealth::Healthy,
                "node {i} (seed {seed})"
            );
        }
    }
}

#[test]
fn after_a_partition_every_node_agrees_which_process_holds_a_duplicated_node_id() {
    let n = 6;
    let seed = seed(9);
    let mut sim = converged_cluster(n, seed);
    let real = 4;
    let real_id = sim.node(real).membership.local_id().clone();
    // Node 4 is cut off; the others declare it down, then a second process with its id starts on their side
    // and is accepted there (to them it is a restart at a new address).
    sim.set_group(real, 1);
    let t0 = sim.now_ms();
    assert!(
        sim.run_until_true(t0 + 60_000, 200, |sim| {
            (0..n)
                .filter(|&i| i != real)
                .all(|i| sim.view(i, real).map(|v| v.1) == Some(MemberState::Down))
        }),
        "seed {seed}"
    );
    let dup = sim.add_node(real_id.node_id(), 0);
    let t1 = sim.now_ms();
    assert!(
        sim.run_until_true(t1 + 30_000, 100, |sim| {
            (0..n)
                .filter(|&i| i != real)
                .all(|i| member_in_view(sim, i, dup))
        }),
        "the new process was not accepted while node 4 was down (seed {seed})"
    );
    // The partition heals: two live processes claim the node id. The one that started first (node 4, under a
    // renewed identity) holds it everywhere, the later one is refused everywhere, itself included.
    sim.heal();
    let t2 = sim.now_ms();
    let agreed = sim.run_until_true(t2 + 120_000, 200, |sim| {
        let dup_addr = sim.node(dup).addr;
        (0..n).filter(|&i| i != real).all(|i| {
            member_in_view(sim, i, real)
                && sim
                    .node(i)
                    .membership
                    .refused_by(dup_addr)
                    .is_some_and(|h| h.replica_id() == real_id.replica_id())
        }) && sim.node(real).membership.refused_by(dup_addr).is_some()
            && sim
                .node(dup)
                .membership
                .local_refused_by()
                .is_some_and(|h| h.replica_id() == real_id.replica_id())
            && sim.node(real).membership.local_refused_by().is_none()
    });
    assert!(
        agreed,
        "the nodes did not agree on the holder within 120 s of the heal (seed {seed})"
    );
    println!(
        "duplicate across a healed partition (seed {seed}): every node agrees on the holder {} ms after the heal",
        sim.now_ms() - t2
    );
    sim.run_for(30_000);
    for i in (0..n).filter(|&i| i != dup) {
        assert_eq!(
            sim.node(i).membership.cluster_health(),
            bifrost_cluster::membership::ClusterHealth::Healthy,
            "node {i} (seed {seed})"
        );
    }
}
