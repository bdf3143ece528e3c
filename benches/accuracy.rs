//! How closely a cluster holds one global limit (issue 16): per-window admitted counts of N simulated nodes
//! sharing one key, against the limit.
//!
//! Five modes: the default rule with a fixed and with a sliding window, the same with the predicted remote
//! count (`replication.predict_remote`: each peer's last-known count plus its recent rate × the count's age),
//! and the bounded-overshoot mode (`CounterStore::acquire_bounded`, fixed windows: each node admits only within
//! quota leased by the key's owner; see `counter::lease`).
//!
//! Each run is the whole-node simulator (`bifrost_cluster::sim`: links, membership, replication over a network
//! with 1–10 ms of one-way latency and jitter, default config, so a 5 ms flush), joined first. Then for
//! `WINDOWS` one-second windows, 50,000 requests per second are offered to one key with a limit of 10,000 per
//! 1 s window: 50 per virtual millisecond, each on a node drawn at random, each an acquire of 1 (a gateway's
//! check, counted when allowed). Reported per node count and algorithm:
//! - the admitted count of every window (the windows of the fixed algorithm's own boundaries);
//! - overshoot: admitted above the limit, in % of the limit, mean and max over the windows, and the most
//!   admitted in any 1 s span (any start millisecond), above the limit;
//! - undershoot: requests refused while the exact admitted count of their window was still below the limit
//!   (they would have fit), in % of the limit, mean and max over the windows (fixed and bounded, whose
//!   windows are fixed: a sliding window refuses by its estimate over two windows);
//! - bounded: acquires decided by the default rule because the owner was unreachable (fallbacks).
//!
//! `cargo bench --bench accuracy` runs 3 and 10 nodes for 20 windows each (`BIFROST_ACCURACY_NODES` and
//! `BIFROST_ACCURACY_WINDOWS` change them, `BIFROST_ACCURACY_LATENCY_MS=0,1` the latency range); `cargo bench -- --test` (the CI smoke) runs 3 nodes for 2 windows.
//! `BIFROST_ACCURACY_MODES=FixedWindow,Bounded` runs only the modes named (as printed: `FixedWindow`,
//! `SlidingWindow`, `FixedPredicted`, `SlidingPredicted`, `Bounded`).
//! `BIFROST_ACCURACY_DETAIL=1` also prints where in the window the undershoot refusals fall (20 ms buckets).
//! Nothing is sent on a network: the simulator's network is in memory.

use std::sync::atomic::Ordering;

use bifrost_cluster::counter::{Algorithm, Window};
use bifrost_cluster::sim::{NetOptions, SimOptions, Simulation};

const LIMIT: u64 = 10_000;
const OFFERED_PER_MS: u64 = 50;
const KEY: &str = "budget";

/// How the nodes decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// The default rule with this algorithm.
    Default(Algorithm),
    /// The default rule with this algorithm, deciding against the predicted remote count
    /// (`replication.predict_remote`).
    Predicted(Algorithm),
    /// The bounded-overshoot mode (fixed windows).
    Bounded,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Default(Algorithm::FixedWindow) => "FixedWindow",
            Mode::Default(Algorithm::SlidingWindow) => "SlidingWindow",
            Mode::Default(_) => "other",
            Mode::Predicted(Algorithm::FixedWindow) => "FixedPredicted",
            Mode::Predicted(Algorithm::SlidingWindow) => "SlidingPredicted",
            Mode::Predicted(_) => "other-predicted",
            Mode::Bounded => "Bounded",
        }
    }
}

/// What one run measured.
struct Run {
    nodes: usize,
    mode: Mode,
    /// Bounded: acquires decided by the default rule (owner unreachable), over all nodes.
    fallbacks: u64,
    admitted: Vec<u64>,
    /// Refused while their window's admitted count was below the limit, per window.
    refused_under: Vec<u64>,
    /// The most admitted in any 1,000 ms span.
    max_span: u64,
}

fn percent(over: u64) -> f64 {
    over as f64 * 100.0 / LIMIT as f64
}

fn run(nodes: usize, mode: Mode, windows: u64, seed: u64, latency_ms: (u64, u64)) -> Run {
    let mut config = bifrost_cluster::config::ClusterConfig::default();
    config.replication.predict_remote = matches!(mode, Mode::Predicted(_));
    let mut sim = Simulation::new(SimOptions {
        nodes,
        seed,
        net: NetOptions {
            latency_ms,
            ..NetOptions::default()
        },
        config,
        ..SimOptions::default()
    })
    .expect("simulation");
    assert!(
        sim.run_until_true(100, 120_000, Simulation::converged)
            .is_some(),
        "{nodes} nodes did not join in 120 virtual s"
    );
    let window = Window::parse("1s").expect("window");
    // Two whole windows of traffic before the measured ones, so every node has seen the others' counts.
    let first = sim.now_ms() / 1_000 + 3;
    let start = (first - 2) * 1_000;
    let end = (first + windows) * 1_000;
    sim.run_until(start);
    let mut admitted = vec![0u64; windows as usize];
    let mut refused_under = vec![0u64; windows as usize];
    let mut per_ms = Vec::with_capacity((end - first * 1_000) as usize);
    // The exact admitted count of the current fixed window, as the cluster cannot see it.
    let (mut epoch, mut exact) = (0u64, 0u64);
    // `BIFROST_ACCURACY_DETAIL=1`: where in the window the undershoot refusals fall (20 ms buckets).
    let detail = std::env::var_os("BIFROST_ACCURACY_DETAIL").is_some();
    let mut under_by_time = [0u64; 50];
    for t in start..end {
        sim.run_until(t);
        if t / 1_000 != epoch {
            (epoch, exact) = (t / 1_000, 0);
        }
        let mut this_ms = 0;
        for _ in 0..OFFERED_PER_MS {
            let node = (sim.rng().next_u64() % nodes as u64) as usize;
            let decision = match mode {
                Mode::Default(algorithm) | Mode::Predicted(algorithm) => {
                    sim.acquire(node, KEY, window, algorithm, LIMIT, 1)
                }
                Mode::Bounded => sim.acquire_bounded(node, KEY, window, LIMIT, 1),
            }
            .expect("acquire")
            .expect("every node runs");
            if decision.allowed {
                exact += 1;
                this_ms += 1;
            }
            if t >= first * 1_000 {
                let w = (epoch - first) as usize;
                if decision.allowed {
                    admitted[w] += 1;
                } else if exact < LIMIT {
                    refused_under[w] += 1;
                    if detail {
                        let b = ((t % 1_000) / 20) as usize;
                        under_by_time[b.min(49)] += 1;
                    }
                }
            }
        }
        if t >= first * 1_000 {
            per_ms.push(this_ms);
        }
    }
    let mut span: u64 = per_ms.iter().take(1_000).sum();
    let mut max_span = span;
    for i in 1_000..per_ms.len() {
        span = span + per_ms[i] - per_ms[i - 1_000];
        max_span = max_span.max(span);
    }
    if detail {
        let used: Vec<String> = under_by_time
            .iter()
            .enumerate()
            .filter(|&(_, &n)| n > 0)
            .map(|(b, n)| format!("{}ms:{n}", b * 20))
            .collect();
        println!(
            "  undershoot refusals by time in window ({mode:?}): {}",
            used.join(" ")
        );
    }
    let fallbacks = (0..nodes)
        .map(|i| sim.store(i).lease_stats().fallbacks.load(Ordering::Relaxed)) // Relaxed: statistics
        .sum();
    Run {
        nodes,
        mode,
        fallbacks,
        admitted,
        refused_under,
        max_span,
    }
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    let windows: u64 = if smoke {
        2
    } else {
        std::env::var("BIFROST_ACCURACY_WINDOWS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20)
    };
    let sizes: Vec<usize> = match std::env::var("BIFROST_ACCURACY_NODES") {
        Ok(list) => list
            .split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .expect("BIFROST_ACCURACY_NODES: comma-separated counts")
            })
            .collect(),
        Err(_) if smoke => vec![3],
        Err(_) => vec![3, 10],
    };
    // `BIFROST_ACCURACY_LATENCY_MS=0,1`: the one-way latency range (a LAN or loopback instead of 1-10 ms).
    let latency_ms = std::env::var("BIFROST_ACCURACY_LATENCY_MS")
        .ok()
        .and_then(|s| {
            let (lo, hi) = s.split_once(',')?;
            Some((lo.trim().parse().ok()?, hi.trim().parse().ok()?))
        })
        .unwrap_or(NetOptions::default().latency_ms);
    // `BIFROST_ACCURACY_MODES=FixedWindow,Bounded`: only these modes (names as printed).
    let modes: Option<Vec<String>> = std::env::var("BIFROST_ACCURACY_MODES")
        .ok()
        .map(|list| list.split(',').map(|n| n.trim().to_owned()).collect());
    println!(
        "accuracy: one-way latency {}-{} ms, {} req/s offered to one key, limit {LIMIT} per 1 s window, {windows} windows per run",
        latency_ms.0,
        latency_ms.1,
        OFFERED_PER_MS * 1_000
    );
    for &nodes in &sizes {
        for mode in [
            Mode::Default(Algorithm::FixedWindow),
            Mode::Default(Algorithm::SlidingWindow),
            Mode::Predicted(Algorithm::FixedWindow),
            Mode::Predicted(Algorithm::SlidingWindow),
            Mode::Bounded,
        ]
        .into_iter()
        .filter(|m| {
            modes
                .as_ref()
                .is_none_or(|list| list.iter().any(|n| n == m.name()))
        }) {
            let started = std::time::Instant::now();
            let r = run(nodes, mode, windows, 11, latency_ms);
            let over: Vec<f64> = r
                .admitted
                .iter()
                .map(|&a| percent(a.saturating_sub(LIMIT)))
                .collect();
            let under: Vec<f64> = r.refused_under.iter().map(|&u| percent(u)).collect();
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
            let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
            // Undershoot is defined on the fixed window's own count; a sliding window refuses by its estimate.
            let undershoot = match r.mode {
                Mode::Default(Algorithm::FixedWindow)
                | Mode::Predicted(Algorithm::FixedWindow)
                | Mode::Bounded => {
                    format!("{:.2} % max {:.2} %", mean(&under), max(&under))
                }
                _ => "n/a".to_owned(),
            };
            let fallbacks = match r.mode {
                Mode::Bounded => format!(", fallbacks {}", r.fallbacks),
                _ => String::new(),
            };
            println!(
                "accuracy/{:>2}_nodes/{:<14} overshoot mean {:.2} % max {:.2} %, any 1 s span max {:.2} %, \
                 undershoot mean {undershoot}{fallbacks} ({:.1} s of wall time)",
                r.nodes,
                r.mode.name(),
                mean(&over),
                max(&over),
                percent(r.max_span.saturating_sub(LIMIT)),
                started.elapsed().as_secs_f64()
            );
            println!(
                "accuracy/{:>2}_nodes/{:<14} admitted per window: {:?}",
                r.nodes,
                r.mode.name(),
                r.admitted
            );
        }
    }
}
