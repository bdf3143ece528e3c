//! Health thresholds (`gossip.config`) and cluster health in the deterministic simulation, with the data
//! plane reported the way replication reports it: one check per exchange.
//!
//! Every test prints its seed; `BIFROST_SIM_SEED=<seed> cargo test --test membership_health` replays it.

use bifrost_cluster::config::GossipHealthConfig;
use bifrost_cluster::membership::sim::{MembershipSim, MembershipSimOptions};
use bifrost_cluster::membership::{ClusterHealth, MemberState, MembershipEvent, MembershipOptions};

fn seed(default: u64) -> u64 {
    std::env::var("BIFROST_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

const N: usize = 5;

fn cluster(seed: u64, gossip: &GossipHealthConfig) -> MembershipSim {
    let mut sim = MembershipSim::new(MembershipSimOptions {
        nodes: N,
        seed,
        membership: MembershipOptions::from(gossip),
        ..MembershipSimOptions::default()
    });
    sim.join_all(|i| if i == 0 { 1 } else { 0 });
    let deadline = sim.now_ms() + 30_000;
    assert!(
        sim.run_until_true(deadline, 100, MembershipSim::converged),
        "seed {seed}"
    );
    sim
}

/// One data-plane round: every node checks every other; `broken(i, j)` says the exchange i→j fails.
fn round(sim: &mut MembershipSim, broken: impl Fn(usize, usize) -> bool) {
    for i in 0..N {
        for j in 0..N {
            if i != j {
                let fail = broken(i, j);
                let reason = if fail {
                    "replication exchange timed out"
                } else {
                    ""
                };
                sim.record_data_plane(i, j, !fail, reason);
            }
        }
    }
    sim.run_for(1_000);
}

/// Half a second of data-plane checks: every node's check of every other is answered, except where
/// `silent(i, j)` (node i hears nothing from node j's data plane).
fn answered_checks(sim: &mut MembershipSim, silent: impl Fn(usize, usize) -> bool) {
    for i in 0..N {
        for j in 0..N {
            if i != j && !silent(i, j) {
                sim.record_data_plane(i, j, true, "");
            }
        }
    }
    sim.run_for(500);
}

fn healthy(sim: &MembershipSim, i: usize, j: usize) -> bool {
    let addr = sim.node(j).addr;
    sim.node(i)
        .membership
        .health_of(addr)
        .expect("known member")
        .0
}

fn health_events(sim: &MembershipSim, i: usize, j: usize, from: usize) -> Vec<(bool, String)> {
    let addr = sim.node(j).addr;
    sim.node(i).events[from..]
        .iter()
        .filter_map(|(_, e)| match e {
            MembershipEvent::HealthChanged {
                member,
                healthy,
                reason,
            } if member.addr() == addr => Some((*healthy, reason.clone())),
            _ => None,
        })
        .collect()
}

fn cluster_events(sim: &MembershipSim, i: usize, from: usize) -> Vec<ClusterHealth> {
    sim.node(i).events[from..]
        .iter()
        .filter_map(|(_, e)| match e {
            MembershipEvent::ClusterHealthChanged(h) => Some(*h),
            _ => None,
        })
        .collect()
}

#[test]
fn thresholds_flip_member_and_cluster_health_exactly() {
    let seed = seed(21);
    let gossip = GossipHealthConfig {
        timeout_seconds: 10,
        success_threshold: 3,
        failure_threshold: 3,
    };
    let mut sim = cluster(seed, &gossip);
    // Members start unhealthy until the data plane answered success_threshold times.
    for i in 0..N {
        assert_eq!(
            sim.node(i).membership.cluster_health(),
            ClusterHealth::NotHealthy
        );
    }
    let mark0 = sim.node(0).events.len();
    for r in 1..=gossip.success_threshold {
        round(&mut sim, |_, _| false);
        let expect = r == gossip.success_threshold;
        assert_eq!(
            healthy(&sim, 0, 4),
            expect,
            "after {r} successes (seed {seed})"
        );
    }
    for i in 0..N {
        assert_eq!(
            sim.node(i).membership.cluster_health(),
            ClusterHealth::Healthy,
            "node {i}"
        );
    }
    assert_eq!(cluster_events(&sim, 0, mark0), vec![ClusterHealth::Healthy]);

    // Node 4 still answers SWIM probes, but its replication link is broken both ways.
    let mark0 = sim.node(0).events.len();
    let mark4 = sim.node(4).events.len();
    let broken4 = |i: usize, j: usize| i == 4 || j == 4;
    for r in 1..=gossip.failure_threshold {
        round(&mut sim, broken4);
        let expect_healthy = r < gossip.failure_threshold;
        assert_eq!(
            healthy(&sim, 0, 4),
            expect_healthy,
            "after {r} failures (seed {seed})"
        );
    }
    assert_eq!(
        sim.view(0, 4).map(|v| v.1),
        Some(MemberState::Alive),
        "SWIM still sees it alive"
    );
    let events = health_events(&sim, 0, 4, mark0);
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(!events[0].0);
    assert!(
        events[0].1.contains("replication exchange timed out"),
        "{}",
        events[0].1
    );
    let table = sim.node(0).membership.members();
    let m4 = table.by_addr(sim.node(4).addr).expect("in the table");
    assert!(!m4.healthy && m4.health_reason.contains("replication exchange timed out"));
    // Node 0 still sees 4 of 5 healthy; node 4 sees only itself.
    assert_eq!(
        sim.node(0).membership.cluster_health(),
        ClusterHealth::Healthy
    );
    assert_eq!(
        sim.node(4).membership.cluster_health(),
        ClusterHealth::NotHealthy
    );
    assert_eq!(
        cluster_events(&sim, 4, mark4),
        vec![ClusterHealth::NotHealthy]
    );

    // Break 3 and 2 as well: node 0 sees 2 of 5 healthy, not a majority.
    let broken = |i: usize, j: usize| i >= 2 || j >= 2;
    for _ in 0..gossip.failure_threshold {
        round(&mut sim, broken);
    }
    assert_eq!(
        sim.node(0).membership.cluster_health(),
        ClusterHealth::NotHealthy
    );
    assert_eq!(
        cluster_events(&sim, 0, mark0),
        vec![ClusterHealth::NotHealthy],
        "seed {seed}"
    );

    // Repair: healthy again after exactly success_threshold successes.
    let mark0 = sim.node(0).events.len();
    for r in 1..=gossip.success_threshold {
        round(&mut sim, |_, _| false);
        assert_eq!(
            healthy(&sim, 0, 4),
            r == gossip.success_threshold,
            "after {r} successes"
        );
    }
    assert_eq!(
        sim.node(0).membership.cluster_health(),
        ClusterHealth::Healthy
    );
    assert_eq!(cluster_events(&sim, 0, mark0), vec![ClusterHealth::Healthy]);
    println!("health thresholds (seed {seed}): flips after exactly 3 failures / 3 successes");
}

#[test]
fn data_plane_silence_counts_as_failed_checks_after_the_timeout() {
    let seed = seed(22);
    let gossip = GossipHealthConfig {
        timeout_seconds: 2,
        success_threshold: 1,
        failure_threshold: 3,
    };
    let mut sim = cluster(seed, &gossip);
    round(&mut sim, |_, _| false);
    assert!(healthy(&sim, 0, 4));
    // Everyone keeps checking everyone, except that node 0 never gets an answer from node 4 any more.
    let mark = sim.node(0).events.len();
    // `round` reported, then ran for 1 s: node 0's last answer from node 4 was 1 s ago.
    let start = sim.now_ms() - 1_000;
    let mut became_unhealthy = None;
    for _ in 0..20 {
        answered_checks(&mut sim, |i, j| i == 0 && j == 4);
        if became_unhealthy.is_none() && !healthy(&sim, 0, 4) {
            became_unhealthy = Some(sim.now_ms() - start);
        }
    }
    let after = became_unhealthy.expect("node 4 never turned unhealthy on silence");
    // Three timeouts of 2 s each after the last answer (checked every 500 ms).
    assert!(
        (6_000..=6_500).contains(&after),
        "unhealthy after {after} ms (seed {seed})"
    );
    let events = health_events(&sim, 0, 4, mark);
    assert!(
        events[0].1.contains("no data-plane answer within 2000 ms"),
        "{events:?}"
    );
    assert!(healthy(&sim, 1, 4), "other nodes still hear node 4");
}

#[test]
fn members_outside_the_data_plane_scope_follow_swim_and_members_inside_owe_answers() {
    // A grouped replication layout: node 0 replicates with nodes 1 and 2 only, so only they owe it data-plane
    // answers; nodes 3 and 4 never answer node 0's data plane and stay healthy while SWIM has them alive.
    let seed = seed(23);
    let gossip = GossipHealthConfig {
        timeout_seconds: 2,
        success_threshold: 1,
        failure_threshold: 3,
    };
    let mut sim = cluster(seed, &gossip);
    let scope: std::collections::BTreeSet<u64> = [1, 2]
        .iter()
        .map(|&j| sim.node(j).membership.local_id().replica_id())
        .collect();
    let now = sim.now_ms();
    sim.node_mut(0)
        .membership
        .set_data_plane_scope(Some(scope.clone()), now);
    // Nodes 1 and 2 answer; 3 and 4 are never checked by node 0 (others check each other as usual).
    for _ in 0..20 {
        answered_checks(&mut sim, |i, j| i == 0 && j >= 3);
    }
    for j in 1..N {
        assert!(
            healthy(&sim, 0, j),
            "node {j} unhealthy at node 0 (seed {seed})"
        );
    }
    assert_eq!(
        sim.node(0).membership.cluster_health(),
        ClusterHealth::Healthy
    );
    // Node 3 enters the scope: it owes answers now, and its silence counts (three timeouts of 2 s).
    let mut wider = scope;
    wider.insert(sim.node(3).membership.local_id().replica_id());
    let now = sim.now_ms();
    sim.node_mut(0)
        .membership
        .set_data_plane_scope(Some(wider), now);
    let mut became_unhealthy = None;
    for _ in 0..20 {
        answered_checks(&mut sim, |i, j| i == 0 && j >= 3);
        if became_unhealthy.is_none() && !healthy(&sim, 0, 3) {
            became_unhealthy = Some(sim.now_ms() - now);
        }
    }
    let after = became_unhealthy.expect("node 3 never turned unhealthy once in the scope");
    assert!(
        (6_000..=6_500).contains(&after),
        "unhealthy after {after} ms (seed {seed})"
    );
    assert!(
        healthy(&sim, 0, 4),
        "node 4, outside the scope, stays healthy"
    );
}
