//! Replication between whole simulated nodes (membership, links, both replicators): loss, duplication,
//! reordering and a partition that heals. Every run prints its seed; `BIFROST_SIM_SEED=<seed> cargo test --test
//! replication_sim` replays it.

use bifrost_cluster::config::{ClusterConfig, ConfigDuration};
use bifrost_cluster::counter::Window;
use bifrost_cluster::sim::{NetOptions, SimOptions, Simulation};

/// The seed from `BIFROST_SIM_SEED`, or a fresh one printed by the simulation.
fn seed() -> u64 {
    std::env::var("BIFROST_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(7, |d| d.as_nanos() as u64)
        })
}

const KEYS: [&str; 8] = [
    "vk/a", "vk/b", "vk/c", "budget/x", "budget/y", "rl/1", "rl/2", "rl/3",
];

fn hour() -> Window {
    Window::parse("1h").unwrap()
}

/// Increments `count` random keys on random running nodes; the simulation records the exact totals.
fn increment_randomly(sim: &mut Simulation, count: usize) {
    let nodes = sim.len() as u64;
    for _ in 0..count {
        let node = sim.rng().range(0, nodes - 1) as usize;
        let key = KEYS[sim.rng().range(0, KEYS.len() as u64 - 1) as usize];
        let n = sim.rng().range(1, 5);
        sim.add(node, key, hour(), n).unwrap();
    }
}

fn config(anti_entropy_ms: u64) -> ClusterConfig {
    let mut config = ClusterConfig::default();
    config.replication.anti_entropy_interval = ConfigDuration::from_millis(anti_entropy_ms);
    config.limits.max_keys = 1_000;
    config
}

/// Runs until every node joined and sees every other alive.
fn converge(sim: &mut Simulation) {
    let joined = sim.run_until_true(100, 60_000, Simulation::converged);
    assert!(joined.is_some(), "membership did not converge in 60 s");
}

#[test]
fn hundred_nodes_with_loss_and_a_partition_converge_to_the_exact_sums() {
    let mut sim = Simulation::new(SimOptions {
        nodes: 100,
        seed: seed(),
        net: NetOptions {
            latency_ms: (1, 30),
            duplicate: 0.05,
            ..NetOptions::default()
        },
        config: config(2_000),
        ..SimOptions::default()
    })
    .unwrap();
    converge(&mut sim);
    sim.set_loss(0.2);
    let start = sim.now_ms();
    // Increments everywhere, in small bursts, for two seconds, with 20 % of datagrams lost and 5 % doubled.
    for step in 0..20 {
        increment_randomly(&mut sim, 25);
        sim.run_until(start + 100 * (step + 1));
    }
    // Split 40/60 and keep incrementing on both sides.
    sim.partition(|i| usize::from(i < 40));
    for step in 0..20 {
        increment_randomly(&mut sim, 25);
        sim.run_until(start + 2_000 + 100 * (step + 1));
    }
    assert!(
        !sim.diverged().is_empty(),
        "a partition with increments on both sides must show divergence"
    );
    sim.heal();
    let healed = sim.now_ms();
    // Converge through deltas and anti-entropy; 20% of datagrams are still lost.
    let converged_at = sim.run_until_true(500, 60_000, |s| s.diverged().is_empty());
    let net = sim.net_stats();
    eprintln!(
        "network: {net:?}; converged {:?} ms after the heal",
        converged_at.map(|t| t - healed)
    );
    let left = sim.diverged();
    assert!(
        left.is_empty(),
        "not converged 60 s after the heal: {} (node, key, seen, total) e.g. {:?}",
        left.len(),
        &left[..left.len().min(5)]
    );
    assert!(
        net.lost > 0 && net.duplicated > 0 && net.partitioned > 0,
        "the faults were exercised: {net:?}"
    );
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let run = |seed| {
        let mut sim = Simulation::new(SimOptions {
            nodes: 10,
            seed,
            net: NetOptions {
                loss: 0.3,
                duplicate: 0.1,
                ..NetOptions::default()
            },
            ..SimOptions::default()
        })
        .unwrap();
        for step in 0..10 {
            increment_randomly(&mut sim, 10);
            let t = sim.now_ms() + 50 * step;
            sim.run_until(t);
        }
        sim.run_until(sim.now_ms() + 30_000);
        let stats: Vec<_> = (0..sim.len())
            .map(|i| (sim.replication_stats(i), sim.traffic(i)))
            .collect();
        (sim.net_stats(), stats, sim.events_run())
    };
    let a = run(42);
    let b = run(42);
    assert_eq!(a.0, b.0);
    assert_eq!(a.1, b.1);
    assert_eq!(a.2, b.2);
    assert_ne!(run(43).0, a.0, "another seed gives another run");
}

#[test]
fn with_every_datagram_lost_streams_alone_carry_the_values() {
    // Membership packets and deltas are datagrams and all are lost: only the streams (the join state transfer,
    // anti-entropy) carry values between the links the join attempts opened.
    let mut sim = Simulation::new(SimOptions {
        nodes: 5,
        seed: seed(),
        net: NetOptions {
            loss: 1.0,
            ..NetOptions::default()
        },
        seeds: 5,
        ..SimOptions::default()
    })
    .unwrap();
    sim.run_for(2_000);
    increment_randomly(&mut sim, 50);
    let start = sim.now_ms();
    let done = sim.run_until_true(1_000, 120_000, |s| s.diverged().is_empty());
    assert!(
        done.is_some(),
        "anti-entropy alone did not converge in 120 s: {:?}",
        sim.diverged()
    );
    eprintln!(
        "anti-entropy alone converged in {} ms",
        sim.now_ms() - start
    );
}
