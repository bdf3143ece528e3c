//! The whole-node simulator's cost: wall time per virtual second of N simulated nodes (idle membership plus one
//! increment per node per 100 ms), after the nodes joined.
//!
//! Target (issue 12): at most 10 s of wall time per virtual second at 1,000 nodes on the 2-core CI machine.
//! `cargo bench --bench sim` measures 10, 100, 300 and 1,000 nodes (the sizes come from
//! `BIFROST_SIM_BENCH_NODES`, comma-separated); the CI smoke (`-- --test`) runs one virtual second of 10 nodes.
//! One criterion iteration is one virtual second; the reported time is the wall time it took.
//!
//! The target is for a cluster at rest, not for the tail of its join: right after `converged`, SWIM is still
//! disseminating the join's updates and the links it opened close as they go idle (measured at 1,000 nodes: 10–13 s
//! of wall per virtual second in the first 10 s, 7–8 s after 30 s). So the bench first runs the same load for
//! `BIFROST_SIM_BENCH_SETTLE_S` virtual seconds (default 30; 0 in the smoke), untimed, and prints each settle
//! second's wall time and event count, which shows the work per second levelling off before sampling starts.

use std::time::{Duration, Instant};

use bifrost_cluster::counter::Window;
use bifrost_cluster::sim::{SimOptions, Simulation};
use criterion::{Criterion, criterion_group, criterion_main};

/// A joined cluster of `nodes`.
fn joined(nodes: usize) -> Simulation {
    let mut sim = Simulation::new(SimOptions {
        nodes,
        seed: 7,
        ..SimOptions::default()
    })
    .expect("simulation");
    let joined = sim.run_until_true(100, 600_000, Simulation::converged);
    assert!(
        joined.is_some(),
        "{nodes} nodes did not join in 600 virtual s"
    );
    sim
}

/// One virtual second: every node increments one of 16 keys once per 100 ms, at its own offset.
fn one_second(sim: &mut Simulation, window: Window) {
    let start = sim.now_ms();
    let n = sim.len() as u64;
    for round in 0..10u64 {
        for i in 0..n {
            let at = start + round * 100 + i * 100 / n;
            sim.run_until(at);
            let key = [
                "k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9", "ka", "kb", "kc", "kd",
                "ke", "kf",
            ][(i % 16) as usize];
            sim.add(i as usize, key, window, 1).expect("add");
        }
    }
    sim.run_until(start + 1_000);
}

fn sizes() -> Vec<usize> {
    if std::env::args().any(|a| a == "--test") {
        return vec![10];
    }
    std::env::var("BIFROST_SIM_BENCH_NODES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10, 100, 300, 1_000])
}

/// Virtual seconds of load before sampling (see the module docs).
fn settle_seconds() -> u64 {
    if std::env::args().any(|a| a == "--test") {
        return 0;
    }
    std::env::var("BIFROST_SIM_BENCH_SETTLE_S")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(30)
}

/// Runs the load for `seconds` virtual seconds, untimed by criterion, printing each second's cost.
fn settle(sim: &mut Simulation, nodes: usize, seconds: u64, window: Window) {
    for second in 0..seconds {
        let events = sim.events_run();
        let started = Instant::now();
        one_second(sim, window);
        eprintln!(
            "{nodes} nodes, settle second {second}: {:.2} s of wall, {} events",
            started.elapsed().as_secs_f64(),
            sim.events_run() - events
        );
    }
}

fn bench(c: &mut Criterion) {
    let window = Window::parse("1h").expect("window");
    let mut group = c.benchmark_group("sim/virtual_second");
    group.sample_size(10);
    for nodes in sizes() {
        let setup = Instant::now();
        let mut sim = joined(nodes);
        eprintln!(
            "{nodes} nodes joined in {:.1} s of wall time",
            setup.elapsed().as_secs_f64()
        );
        settle(&mut sim, nodes, settle_seconds(), window);
        // Large clusters take seconds per virtual second: give criterion room for its 10 samples.
        group.measurement_time(Duration::from_secs((nodes as u64 / 10).clamp(5, 600)));
        group.bench_function(format!("{nodes}_nodes"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    one_second(&mut sim, window);
                }
                start.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
