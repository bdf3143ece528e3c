//! Helpers of the whole-node simulation tests (`tests/sim_*.rs`).

use bifrost_cluster::ReplicaId;
use bifrost_cluster::sim::Simulation;

/// The seed of a run: `BIFROST_SIM_SEED` when set (to replay a printed seed), else `default`.
pub fn seed(default: u64) -> u64 {
    std::env::var("BIFROST_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Runs until every running node holds the exact totals (and membership converged), at most `limit_ms`;
/// returns how long it took.
pub fn settle(sim: &mut Simulation, limit_ms: u64, what: &str) -> u64 {
    let start = sim.now_ms();
    let done = sim.run_until_true(250, limit_ms, |s| s.diverged().is_empty() && s.converged());
    let left = sim.diverged();
    assert!(
        done.is_some(),
        "{what}: not settled {limit_ms} ms later: converged {}, {} (node, key, seen, exact) e.g. {:?}",
        sim.converged(),
        left.len(),
        &left[..left.len().min(5)]
    );
    sim.now_ms() - start
}

/// Restarts node `i` (stopped or crashed; its previous replica id was `old`) and runs until membership
/// converged again, at most 30 s; a restart must be a new replica.
pub fn restart_and_rejoin(sim: &mut Simulation, i: usize, old: ReplicaId) {
    sim.restart(i).unwrap();
    assert_ne!(sim.replica_id(i), old, "a restart is a new replica");
    let t = sim.run_until_true(100, 30_000, Simulation::converged);
    assert!(t.is_some(), "node {i} did not rejoin within 30 s");
}
