//! Membership scenarios in the deterministic whole-node simulation (`bifrost_cluster::sim`): join, partition
//! and heal, graceful leave, restart, duplicate node ids, local health, suspicion confirmations, and replay
//! from a seed. Every node runs the machine the tokio driver runs (links, membership, both replicators), so
//! membership payloads travel on links and health follows the data plane (`gossip.config`).
//!
//! Every test prints its seed; `BIFROST_SIM_SEED=<seed> cargo test --test membership_scenarios` replays it.

use bifrost_cluster::membership::{
    ClusterHealth, MemberId, MemberState, Membership, MembershipEvent, MembershipOptions,
};
use bifrost_cluster::sim::{SimOptions, Simulation};

fn seed(default: u64) -> u64 {
    std::env::var("BIFROST_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn simulation(nodes: usize, seed: u64) -> Simulation {
    Simulation::new(SimOptions {
        nodes,
        seed,
        record_events: true,
        ..SimOptions::default()
    })
    .expect("valid simulation options")
}

/// Every running node counts the cluster healthy.
fn all_healthy(sim: &Simulation) -> bool {
    (0..sim.len()).all(|i| {
        sim.membership(i)
            .is_none_or(|m| m.cluster_health() == ClusterHealth::Healthy)
    })
}

/// `nodes` nodes that see each other alive and count the cluster healthy (at most 60 s). A whole node counts
/// a member healthy only once its data plane answered (`gossip.config.success_threshold` checks), a second
/// or so after SWIM saw it alive: the scenarios start from there, as the membership-only ones started from
/// SWIM convergence.
fn converged_cluster(nodes: usize, seed: u64) -> Simulation {
    let mut sim = simulation(nodes, seed);
    assert!(
        sim.run_until_true(250, 60_000, |s| s.converged() && all_healthy(s))
            .is_some(),
        "{nodes} nodes did not converge within 60 s (seed {seed})"
    );
    sim
}

fn membership(sim: &Simulation, i: usize) -> &Membership {
    sim.membership(i).expect("the node runs")
}

fn options(sim: &Simulation) -> MembershipOptions {
    membership(sim, 0).options().clone()
}

fn local_id(sim: &Simulation, i: usize) -> MemberId {
    membership(sim, i).local_id().clone()
}

/// Node `i`'s view of whatever identity holds node `j`'s address (`None`: unknown, or node `i` down).
fn view_id(sim: &Simulation, i: usize, j: usize) -> Option<(MemberId, MemberState)> {
    let (id, st) = sim.membership(i)?.state_of(sim.addr(j))?;
    Some((id.clone(), st))
}

/// One dissemination round: an update is gossiped retransmit-limit times, one gossip interval apart. A
/// whole node announces its leave after its final flush is confirmed (`Simulation::stop`, as the driver's
/// shutdown): two one-way latencies more at most.
fn leave_round(sim: &Simulation, n: usize) -> u64 {
    let opts = options(sim);
    let hi = SimOptions::default().net.latency_ms.1;
    u64::from(opts.max_transmissions(n)) * opts.gossip_interval_ms + 2 * hi
}

#[test]
fn small_cluster_converges() {
    let sim = converged_cluster(5, seed(1));
    for i in 0..5 {
        for j in 0..5 {
            if i != j {
                assert_eq!(sim.view(i, j), Some(MemberState::Alive));
            }
        }
        assert!(
            sim.events(i)
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
    sim.partition(|i| usize::from(i >= n / 2));
    // Long enough for each side to declare the other down.
    let t0 = sim.now_ms();
    let split = sim.run_until_true(500, 120_000, |sim| {
        (0..n).all(|i| {
            (0..n)
                .filter(|&j| (i < n / 2) != (j < n / 2))
                .all(|j| sim.view(i, j) == Some(MemberState::Down))
        })
    });
    assert!(
        split.is_some(),
        "the halves did not declare each other down (seed {seed})"
    );
    let split_ms = sim.now_ms() - t0;
    for i in 0..n {
        assert_eq!(
            membership(&sim, i).cluster_health(),
            ClusterHealth::NotHealthy,
            "a half of 5/10 must not be healthy (node {i}, seed {seed})"
        );
    }
    sim.heal();
    let t1 = sim.now_ms();
    let healed = sim.run_until_true(500, 180_000, Simulation::converged);
    assert!(
        healed.is_some(),
        "the cluster did not merge back within 180 s (seed {seed})"
    );
    let heal_ms = sim.now_ms() - t1;
    // Health follows the data plane: the links across closed during the split, so each member is healthy
    // again once its new link answered success_threshold checks (3, one per second), shortly after SWIM
    // merged (the membership-only simulation had no data plane and was healthy at the merge itself).
    let threshold = sim.now_ms();
    let healthy = sim.run_until_true(100, 5_000, all_healthy);
    assert!(
        healthy.is_some(),
        "not every node healthy within 5 s of the merge (seed {seed})"
    );
    println!(
        "partition 5/5 of {n} (seed {seed}): split seen as down after {split_ms} ms, merged {heal_ms} ms after the heal, healthy {} ms after that",
        sim.now_ms() - threshold
    );
}

#[test]
fn graceful_leave_is_seen_as_left_within_one_dissemination_round() {
    let n = 50;
    let seed = seed(3);
    let mut sim = converged_cluster(n, seed);
    let leaver = 7;
    // The whole-node cluster converges within about a second of the join storm, while the join updates are
    // still being gossiped (the membership-only simulation converged seconds later). A leave in that backlog
    // can have foca's down update outrun the leave notice where packets are full of join updates: a node
    // then reports the leaver down and, ~10 ms later, left (seen on 9 of 11 seeds with no wait). Leaving
    // 5 s after convergence, as this scenario means to, it is left everywhere and never down.
    sim.run_for(5_000);
    let id = local_id(&sim, leaver);
    let marks: Vec<usize> = (0..n).map(|i| sim.events(i).len()).collect();
    let round = leave_round(&sim, n);
    let t0 = sim.now_ms();
    sim.stop(leaver);
    let all = sim.run_until_true(10, round, |sim| {
        (0..n)
            .filter(|&i| i != leaver)
            .all(|i| view_id(sim, i, leaver).map(|v| v.1) == Some(MemberState::Left))
    });
    let took = sim.now_ms() - t0;
    let mut left_events = 0;
    for i in (0..n).filter(|&i| i != leaver) {
        for (_, e) in &sim.events(i)[marks[i]..] {
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
        all.is_some(),
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
    let old = local_id(&sim, k);
    // Quick restart: the old identity is still alive in everyone's view.
    sim.crash(k);
    sim.run_for(300);
    sim.restart(k).expect("restart");
    let new_replica = sim.replica_id(k);
    assert_ne!(new_replica, old.replica_id());
    let t0 = sim.now_ms();
    assert!(
        sim.run_until_true(100, 30_000, Simulation::converged)
            .is_some(),
        "cluster did not converge on the restarted node (seed {seed})"
    );
    for i in (0..n).filter(|&i| i != k) {
        let (id, st) = view_id(&sim, i, k).expect("known");
        assert_eq!(st, MemberState::Alive);
        assert_eq!(id.replica_id(), new_replica);
        assert!(
            sim.events(i).iter().any(|(_, e)| matches!(e,
                MembershipEvent::MemberReplaced { old: o, new } if *o == old && new.replica_id() == new_replica)),
            "node {i} never reported the replacement (seed {seed})"
        );
        assert!(
            !sim.events(i)
                .iter()
                .any(|(_, e)| matches!(e, MembershipEvent::MemberDown(x) if *x == old)),
            "node {i} marked the old identity down instead of replacing it (seed {seed})"
        );
        let table = membership(&sim, i).members();
        assert!(table.by_replica(old.replica_id()).is_none());
        assert!(table.by_replica(new_replica).is_some());
    }
    println!(
        "restart (seed {seed}): every node replaced the old identity after {} ms",
        sim.now_ms() - t0
    );

    // Slow restart: the old identity was declared down first, then the new one takes its address.
    let old = local_id(&sim, k);
    sim.crash(k);
    assert!(
        sim.run_until_true(200, 60_000, |sim| {
            (0..n)
                .filter(|&i| i != k)
                .all(|i| sim.view(i, k) == Some(MemberState::Down))
        })
        .is_some()
    );
    sim.restart(k).expect("restart");
    let newer = sim.replica_id(k);
    assert!(
        sim.run_until_true(100, 30_000, Simulation::converged)
            .is_some(),
        "seed {seed}"
    );
    for i in (0..n).filter(|&i| i != k) {
        assert_eq!(view_id(&sim, i, k).map(|v| v.0.replica_id()), Some(newer));
        assert!(
            membership(&sim, i)
                .members()
                .by_replica(old.replica_id())
                .is_none()
        );
    }
}

/// True when node `i` sees node `j` as a member: alive under its current identity, not refused.
fn member_in_view(sim: &Simulation, i: usize, j: usize) -> bool {
    let (Some(mi), Some(mj)) = (sim.membership(i), sim.membership(j)) else {
        return false;
    };
    view_id(sim, i, j).is_some_and(|(id, st)| st == MemberState::Alive && id == *mj.local_id())
        && mi.refused_by(sim.addr(j)).is_none()
}

#[test]
fn a_second_live_process_with_a_members_node_id_is_refused_everywhere_and_the_member_stays() {
    let n = 5;
    let seed = seed(5);
    let mut sim = converged_cluster(n, seed);
    let real = 1;
    let real_id = local_id(&sim, real);
    let marks: Vec<usize> = (0..n).map(|i| sim.events(i).len()).collect();
    // A second process with node 1's id, started later at another address (it joins through the seeds).
    let dup = sim.add_node(real_id.node_id()).expect("add a node");
    let dup_addr = sim.addr(dup);
    // Far longer than the suspicion timeouts (4 s min, 24 s max at this size).
    let t0 = sim.now_ms();
    let refused_everywhere = sim.run_until_true(50, 10_000, |sim| {
        (0..n).all(|i| membership(sim, i).refused_by(dup_addr) == Some(&real_id))
            && membership(sim, dup).local_refused_by() == Some(&real_id)
    });
    assert!(
        refused_everywhere.is_some(),
        "not every node refused the duplicate (seed {seed})"
    );
    println!(
        "duplicate of node 1 in {n} nodes (seed {seed}): refused everywhere after {} ms",
        sim.now_ms() - t0
    );
    sim.run_for(60_000);
    let dup_id = local_id(&sim, dup);
    for (i, &mark) in marks.iter().enumerate() {
        let m = membership(&sim, i);
        assert_eq!(
            m.refused_by(dup_addr),
            Some(&real_id),
            "node {i} (seed {seed})"
        );
        assert_eq!(
            m.cluster_health(),
            ClusterHealth::Healthy,
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
        for (_, e) in &sim.events(i)[mark..] {
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
        let refusals = sim.events(i)[mark..]
            .iter()
            .filter(|(_, e)| matches!(e, MembershipEvent::DuplicateRefused { duplicate, holder } if *duplicate == dup_id && *holder == real_id))
            .count();
        assert_eq!(
            refusals, 1,
            "node {i} reports the duplicate once (seed {seed})"
        );
    }
    assert_eq!(membership(&sim, real).local_refused_by(), None);
    let m = membership(&sim, dup);
    assert_eq!(m.local_refused_by(), Some(&real_id));
    assert_eq!(m.cluster_health(), ClusterHealth::NotHealthy);

    // The real member leaves gracefully: the waiting process holds the node id within one dissemination round.
    let round = leave_round(&sim, n);
    sim.stop(real);
    let t1 = sim.now_ms();
    let took_over = sim.run_until_true(10, round, |sim| {
        (0..n)
            .filter(|&i| i != real)
            .all(|i| member_in_view(sim, i, dup))
            && membership(sim, dup).local_refused_by().is_none()
    });
    assert!(
        took_over.is_some(),
        "the duplicate did not take over within {round} ms of the leave (seed {seed})"
    );
    println!(
        "after node 1 left (seed {seed}): the waiting process is the member everywhere after {} ms",
        sim.now_ms() - t1
    );
    sim.run_for(5_000);
    for i in (0..n).filter(|&i| i != real) {
        assert_eq!(
            membership(&sim, i).cluster_health(),
            ClusterHealth::Healthy,
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
        let old = local_id(&sim, k);
        // kill -9, and the replacement starts at once at a new address (a new pod IP).
        sim.crash(k);
        let t0 = sim.now_ms();
        let new = sim.add_node(old.node_id()).expect("add a node");
        let new_addr = sim.addr(new);
        let others: Vec<usize> = (0..n).filter(|&i| i != k).collect();
        let mut held_back = true;
        let took_over = sim.run_until_true(50, 60_000, |sim| {
            // Wherever the old identity still counts as live, the new one is refused.
            for &i in &others {
                let m = membership(sim, i);
                let old_live = m
                    .state_of(sim.addr(k))
                    .is_some_and(|(_, st)| st.is_active());
                let new_known = m.state_of(new_addr).is_some();
                if old_live && new_known && m.refused_by(new_addr).is_none() {
                    held_back = false;
                }
            }
            others.iter().all(|&i| member_in_view(sim, i, new))
                && membership(sim, new).local_refused_by().is_none()
        });
        assert!(
            took_over.is_some(),
            "the restarted node did not take over within 60 s (seed {seed})"
        );
        assert!(
            held_back,
            "a node accepted the new process while the old was live (seed {seed})"
        );
        let took = sim.now_ms() - t0;
        let opts = options(&sim);
        // Detection (first probe of the dead node, one probe interval, the suspicion timeout) plus spread.
        let bound = opts.suspicion_max_ms(n) + 10 * opts.probe_interval_ms;
        println!(
            "crash + restart at a new address in {n} nodes (seed {seed}): new identity is the member everywhere \
             {took} ms after the kill (bound {bound} ms)"
        );
        assert!(took <= bound, "took {took} ms (seed {seed})");
        for &i in &others {
            let (_, st) = view_id(&sim, i, k).expect("old identity remembered");
            assert_eq!(
                st,
                MemberState::Left,
                "node {i}: old shown replaced (seed {seed})"
            );
            assert!(
                sim.events(i).iter().any(|(_, e)| matches!(e,
                    MembershipEvent::MemberReplaced { old: o, new: nw } if *o == old && nw.addr() == new_addr)),
                "node {i} (seed {seed})"
            );
        }
        sim.run_for(10_000);
        for &i in &others {
            assert_eq!(
                membership(&sim, i).cluster_health(),
                ClusterHealth::Healthy,
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
    let real_id = local_id(&sim, real);
    // Node 4 is cut off; the others declare it down, then a second process with its id starts on their side
    // and is accepted there (to them it is a restart at a new address).
    sim.partition(|i| usize::from(i == real));
    assert!(
        sim.run_until_true(200, 60_000, |sim| {
            (0..n)
                .filter(|&i| i != real)
                .all(|i| sim.view(i, real) == Some(MemberState::Down))
        })
        .is_some(),
        "seed {seed}"
    );
    let dup = sim.add_node(real_id.node_id()).expect("add a node");
    assert!(
        sim.run_until_true(100, 30_000, |sim| {
            (0..n)
                .filter(|&i| i != real)
                .all(|i| member_in_view(sim, i, dup))
        })
        .is_some(),
        "the new process was not accepted while node 4 was down (seed {seed})"
    );
    // The partition heals: two live processes claim the node id. The one that started first (node 4, under a
    // renewed identity) holds it everywhere, the later one is refused everywhere, itself included.
    sim.heal();
    let t2 = sim.now_ms();
    let agreed = sim.run_until_true(200, 120_000, |sim| {
        let dup_addr = sim.addr(dup);
        (0..n).filter(|&i| i != real).all(|i| {
            member_in_view(sim, i, real)
                && membership(sim, i)
                    .refused_by(dup_addr)
                    .is_some_and(|h| h.replica_id() == real_id.replica_id())
        }) && membership(sim, real).refused_by(dup_addr).is_some()
            && membership(sim, dup)
                .local_refused_by()
                .is_some_and(|h| h.replica_id() == real_id.replica_id())
            && membership(sim, real).local_refused_by().is_none()
    });
    assert!(
        agreed.is_some(),
        "the nodes did not agree on the holder within 120 s of the heal (seed {seed})"
    );
    println!(
        "duplicate across a healed partition (seed {seed}): every node agrees on the holder {} ms after the heal",
        sim.now_ms() - t2
    );
    sim.run_for(30_000);
    for i in (0..n).filter(|&i| i != dup) {
        assert_eq!(
            membership(&sim, i).cluster_health(),
            ClusterHealth::Healthy,
            "node {i} (seed {seed})"
        );
    }
}

// ---- Moved from the membership unit tests (they needed a multi-node simulation).

#[test]
fn same_seed_same_calls_same_bytes() {
    let run = || {
        let mut sim = simulation(6, 77);
        sim.run_for(20_000);
        sim.crash(2);
        sim.run_for(20_000);
        let traffic: Vec<_> = (0..6).map(|i| sim.traffic(i)).collect();
        let events: Vec<_> = (0..6).map(|i| sim.events(i).to_vec()).collect();
        (sim.net_stats(), sim.events_run(), traffic, events)
    };
    let (a, b) = (run(), run());
    assert!(!a.3[0].is_empty(), "events were recorded");
    assert_eq!(a, b);
}

#[test]
fn isolated_node_stretches_its_probes_and_recovers() {
    let mut sim = simulation(6, 5);
    assert!(
        sim.run_until_true(100, 30_000, Simulation::converged)
            .is_some()
    );
    assert_eq!(membership(&sim, 0).local_health(), 0);
    // Node 0 loses the network for a few probe intervals: its own probes go unanswered.
    sim.partition(|i| usize::from(i == 0));
    let sent_before = membership(&sim, 0).stats().packets_sent;
    sim.run_for(8_000);
    let lhm = membership(&sim, 0).local_health();
    assert!(lhm >= 2, "local health multiplier {lhm}");
    sim.heal();
    assert!(
        sim.run_until_true(500, 120_000, Simulation::converged)
            .is_some()
    );
    sim.run_for(30_000);
    assert_eq!(membership(&sim, 0).local_health(), 0);
    assert!(membership(&sim, 0).stats().packets_sent > sent_before);
}

#[test]
fn suspicion_confirmations_shorten_the_timer() {
    // 10 nodes: suspicion min 4 s, max 24 s, K = 3. A killed node is probed by several members, whose
    // suspicions confirm each other, so it is declared down well before the 24 s maximum.
    let mut sim = simulation(10, 9);
    assert!(
        sim.run_until_true(100, 30_000, Simulation::converged)
            .is_some()
    );
    let t0 = sim.now_ms();
    sim.crash(4);
    let done = sim.run_until_true(50, 30_000, |sim| {
        (0..10)
            .filter(|&i| i != 4)
            .all(|i| sim.view(i, 4) == Some(MemberState::Down))
    });
    assert!(done.is_some());
    let took = sim.now_ms() - t0;
    let o = options(&sim);
    assert!(took >= o.suspicion_min_ms(10), "{took}");
    assert!(took < o.suspicion_max_ms(10), "{took}");
    let started: u64 = (0..10)
        .filter(|&i| i != 4)
        .map(|i| membership(&sim, i).stats().suspicions_started)
        .sum();
    assert!(started >= 2, "independent suspecters: {started}");
}
