//! Exact totals of a cluster that replicates in groups (`replication.full_mesh_below` 16, so 64 nodes form 8
//! groups with two publishers each) through the faults of issue 13: a publisher of every group killed at once,
//! 20 % datagram loss with a partition of a third of the groups that heals, and a rolling restart of 10 % of
//! the nodes. Whole nodes in the deterministic simulation (`bifrost_cluster::sim`); every run prints its seed,
//! `BIFROST_SIM_SEED=<seed> cargo test --test sim_grouped_faults` replays it.

mod support;

use std::collections::BTreeMap;

use bifrost_cluster::counter::Window;
use bifrost_cluster::sim::{NetOptions, RunState, SimOptions, Simulation};

use support::sim::{restart_and_rejoin, seed, settle};

const NODES: usize = 64;

fn hour() -> Window {
    Window::parse("1h").unwrap()
}

/// A joined, grouped cluster of [`NODES`].
fn grouped(seed: u64) -> Simulation {
    let mut sim = Simulation::new(SimOptions {
        nodes: NODES,
        seed,
        net: NetOptions::default(),
        ..SimOptions::default()
    })
    .unwrap();
    let t = sim.run_until_true(100, 60_000, Simulation::converged);
    assert!(t.is_some(), "{NODES} nodes did not converge (seed {seed})");
    let groups: BTreeMap<u32, usize> = (0..NODES).fold(BTreeMap::new(), |mut m, i| {
        let (g, _) = sim.group(i).expect("grouped layout");
        *m.entry(g).or_default() += 1;
        m
    });
    assert!(groups.len() >= 4, "64 nodes in {} groups", groups.len());
    sim
}

/// One increment on every running node of a key of its own and of one hot key, every 100 ms for `ms`.
fn run_loaded(sim: &mut Simulation, ms: u64) {
    for _ in 0..ms / 100 {
        for i in 0..sim.len() {
            if sim.run_state(i) == RunState::Running {
                sim.add(i, "hot", hour(), 1).unwrap();
                sim.add(i, &format!("own/{i}"), hour(), 1).unwrap();
            }
        }
        sim.run_for(100);
    }
}

/// One publisher of each group.
fn one_publisher_per_group(sim: &Simulation) -> Vec<usize> {
    let mut chosen: BTreeMap<u32, usize> = BTreeMap::new();
    for i in 0..sim.len() {
        if let Some((g, true)) = sim.group(i) {
            chosen.entry(g).or_insert(i);
        }
    }
    chosen.into_values().collect()
}

#[test]
fn killing_a_publisher_of_every_group_at_once_keeps_exact_totals() {
    let mut sim = grouped(seed(31));
    run_loaded(&mut sim, 3_000);
    // What they counted reaches their groups first (a crash loses what was not flushed yet).
    sim.run_for(1_000);
    assert!(sim.diverged().is_empty(), "replicated before the crash");
    let victims = one_publisher_per_group(&sim);
    assert!(victims.len() >= 4, "publishers: {victims:?}");
    for &v in &victims {
        sim.crash(v);
    }
    run_loaded(&mut sim, 5_000);
    let took = settle(&mut sim, 60_000, "after the publishers died");
    eprintln!(
        "{} publishers killed at once: exact totals {took} ms after the load stopped",
        victims.len()
    );
}

#[test]
fn loss_and_a_partition_of_a_third_of_the_groups_that_heals_keep_exact_totals() {
    let mut sim = grouped(seed(32));
    run_loaded(&mut sim, 2_000);
    sim.set_loss(0.20);
    run_loaded(&mut sim, 5_000);
    let groups: Vec<u32> = (0..NODES)
        .map(|i| sim.group(i).expect("grouped").0)
        .collect();
    let mut distinct: Vec<u32> = groups.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let cut: Vec<u32> = distinct.iter().copied().step_by(3).collect();
    let side = move |i: usize| usize::from(cut.contains(&groups[i]));
    let minority = (0..NODES).filter(|&i| side(i) == 1).count();
    sim.partition(side);
    run_loaded(&mut sim, 20_000);
    assert!(!sim.diverged().is_empty(), "both sides counted apart");
    sim.heal();
    run_loaded(&mut sim, 2_000);
    sim.set_loss(0.0);
    let took = settle(&mut sim, 90_000, "after the heal");
    eprintln!(
        "20 % loss, {minority} of {NODES} nodes partitioned for 20 s: exact totals {took} ms after the load stopped"
    );
}

#[test]
fn a_rolling_restart_of_a_tenth_of_the_nodes_keeps_exact_totals() {
    let mut sim = grouped(seed(33));
    run_loaded(&mut sim, 1_000);
    let restarted: Vec<usize> = (0..NODES).step_by(10).collect();
    for &i in &restarted {
        let old = sim.replica_id(i);
        sim.stop(i);
        run_loaded(&mut sim, 1_000);
        restart_and_rejoin(&mut sim, i, old);
        run_loaded(&mut sim, 1_000);
    }
    let took = settle(&mut sim, 60_000, "after the rolling restart");
    eprintln!(
        "rolling restart of {} of {NODES} nodes: exact totals {took} ms after the load stopped",
        restarted.len()
    );
}
