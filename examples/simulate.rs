//! The scale harness: a whole-node simulation of N nodes, measured.
//!
//! ```text
//! cargo run --release --example simulate -- --nodes 1000 --seconds 30 --json
//! ```
//!
//! Phases, all in virtual time: the nodes start and join (until every node sees every other alive); then
//! `--seconds` of load (one increment of one hot key per node every `--increment-ms`, with `--own-keys` also one
//! of a key of the node's own, and a visibility probe every 500 ms); then the load stops and the run checks that every node holds the exact totals; then one node
//! is killed and the run measures until every other node marks it down. It prints per-node frames and bytes sent
//! and received per virtual second of the load phase, increment-to-visible-everywhere p50/p99/max, the
//! detection time, the exactness check, the false downs under load (once per virtual second, every running node
//! that some running node holds as down: with `--loss P`, the share of frames dropped during the load), and the
//! wall time per virtual second. The seed is printed and
//! `--seed` replays the run. `--full-mesh-below N` sets `replication.full_mesh_below` (default 16: larger
//! clusters replicate in groups; a value above `--nodes` runs the full mesh, for comparison). `--latency-ms
//! LO,HI` sets the one-way latency range of every frame (default 1,5).

use std::time::Instant;

use bifrost_cluster::counter::Window;
use bifrost_cluster::membership::MemberState;
use bifrost_cluster::sim::{NetOptions, NetStats, NodeTraffic, SimOptions, Simulation};

struct Args {
    nodes: usize,
    seconds: u64,
    seed: u64,
    increment_ms: u64,
    loss: f64,
    full_mesh_below: Option<usize>,
    own_keys: bool,
    latency_ms: (u64, u64),
    json: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        nodes: 100,
        seconds: 10,
        seed: 1,
        increment_ms: 100,
        loss: 0.0,
        full_mesh_below: None,
        own_keys: false,
        latency_ms: (1, 5),
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "--nodes" => {
                args.nodes = value("--nodes")?
                    .parse()
                    .map_err(|e| format!("--nodes: {e}"))?
            }
            "--seconds" => {
                args.seconds = value("--seconds")?
                    .parse()
                    .map_err(|e| format!("--seconds: {e}"))?
            }
            "--seed" => {
                args.seed = value("--seed")?
                    .parse()
                    .map_err(|e| format!("--seed: {e}"))?
            }
            "--increment-ms" => {
                args.increment_ms = value("--increment-ms")?
                    .parse()
                    .map_err(|e| format!("--increment-ms: {e}"))?
            }
            "--loss" => {
                args.loss = value("--loss")?
                    .parse()
                    .map_err(|e| format!("--loss: {e}"))?
            }
            "--full-mesh-below" => {
                args.full_mesh_below = Some(
                    value("--full-mesh-below")?
                        .parse()
                        .map_err(|e| format!("--full-mesh-below: {e}"))?,
                )
            }
            "--json" => args.json = true,
            "--own-keys" => args.own_keys = true,
            "--latency-ms" => {
                let text = value("--latency-ms")?;
                let (lo, hi) = text
                    .split_once(',')
                    .ok_or_else(|| format!("--latency-ms: expected LO,HI, got {text:?}"))?;
                args.latency_ms = (
                    lo.trim()
                        .parse()
                        .map_err(|e| format!("--latency-ms LO: {e}"))?,
                    hi.trim()
                        .parse()
                        .map_err(|e| format!("--latency-ms HI: {e}"))?,
                );
                if args.latency_ms.0 > args.latency_ms.1 {
                    return Err(format!("--latency-ms: {lo} is above {hi}"));
                }
            }
            "--help" | "-h" => {
                return Err(
                    "usage: simulate [--nodes N] [--seconds S] [--seed SEED] [--increment-ms MS] \
                            [--loss P] [--full-mesh-below N] [--own-keys] [--latency-ms LO,HI] [--json]"
                        .to_string(),
                );
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if args.nodes < 2 || args.seconds == 0 || args.increment_ms == 0 {
        return Err(
            "--nodes must be at least 2, --seconds and --increment-ms at least 1".to_string(),
        );
    }
    Ok(args)
}

/// The `replication.full_mesh_below` the run used.
fn config_full_mesh_below(args: &Args) -> usize {
    args.full_mesh_below
        .unwrap_or(bifrost_cluster::config::ReplicationConfig::DEFAULT_FULL_MESH_BELOW)
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let wall = Instant::now();
    let mut config = bifrost_cluster::config::ClusterConfig::default();
    if let Some(n) = args.full_mesh_below {
        config.replication.full_mesh_below = n;
    }
    let mut sim = match Simulation::new(SimOptions {
        nodes: args.nodes,
        config,
        seed: args.seed,
        net: NetOptions {
            latency_ms: args.latency_ms,
            ..NetOptions::default()
        },
        ..SimOptions::default()
    }) {
        Ok(sim) => sim,
        Err(error) => {
            eprintln!("cannot build the simulation: {error}");
            std::process::exit(1);
        }
    };
    // 1. Join.
    let t0 = sim.now_ms();
    let joined = sim.run_until_true(100, 600_000, Simulation::converged);
    let join_ms = joined.map(|t| t - t0);
    let join_wall = wall.elapsed().as_secs_f64();
    eprintln!("joined: {join_ms:?} ms virtual, {join_wall:.1} s wall");

    // 2. Load.
    sim.set_loss(args.loss);
    let hot = Window::parse("1h").unwrap_or(Window::MINUTE);
    let before: Vec<NodeTraffic> = (0..sim.len()).map(|i| sim.traffic(i)).collect();
    let kinds_before = sim.net_stats();
    let load_start = sim.now_ms();
    let load_wall = Instant::now();
    let end = load_start + args.seconds * 1_000;
    let mut next_probe = load_start;
    // False downs: once per virtual second, every pair (i, j) of running nodes where i holds j as down.
    let mut next_down_check = load_start + 1_000;
    let mut false_down_members = std::collections::BTreeSet::new();
    let mut false_down_pairs_max = 0usize;
    let mut check_downs = |sim: &Simulation| {
        let mut pairs = 0;
        for i in 0..sim.len() {
            for j in 0..sim.len() {
                if i != j && sim.view(i, j) == Some(MemberState::Down) {
                    pairs += 1;
                    false_down_members.insert(j);
                }
            }
        }
        false_down_pairs_max = false_down_pairs_max.max(pairs);
    };
    // Each node increments once per interval at its own offset within it, so flushes are spread as in a real
    // cluster.
    let n = sim.len() as u64;
    let mut round = 0;
    while load_start + round * args.increment_ms < end {
        for i in 0..n {
            let at = load_start + round * args.increment_ms + i * args.increment_ms / n;
            if at >= end {
                break;
            }
            sim.run_until(at);
            if at >= next_down_check {
                check_downs(&sim);
                next_down_check += 1_000;
            }
            if let Err(error) = sim.add(i as usize, "hot", hot, 1) {
                eprintln!("add failed: {error}");
                std::process::exit(1);
            }
            if args.own_keys
                && let Err(error) = sim.add(i as usize, &format!("own-{i}"), hot, 1)
            {
                eprintln!("add failed: {error}");
                std::process::exit(1);
            }
            if at >= next_probe {
                let last = n - 1;
                let node = sim.rng().range(0, last) as usize;
                let _ = sim.probe(node);
                next_probe += 500;
            }
        }
        round += 1;
    }
    sim.run_until(end);
    check_downs(&sim);
    let load_wall_s = load_wall.elapsed().as_secs_f64();
    let seconds = args.seconds as f64;
    let per_node = |f: fn(&NodeTraffic) -> u64| -> (f64, f64) {
        let rates: Vec<f64> = (0..sim.len())
            .map(|i| (f(&sim.traffic(i)) - f(&before[i])) as f64 / seconds)
            .collect();
        let mean = rates.iter().sum::<f64>() / rates.len() as f64;
        let max = rates.iter().copied().fold(0.0, f64::max);
        (mean, max)
    };
    let kinds_after = sim.net_stats();
    // Per node per virtual second, by frame kind, of what the load phase sent.
    let rate_by_kind = |named: fn(&NetStats) -> Vec<(&'static str, u64)>| {
        let earlier = named(&kinds_before);
        named(&kinds_after)
            .into_iter()
            .map(|(name, total)| {
                let before = earlier
                    .iter()
                    .find(|&&(n, _)| n == name)
                    .map_or(0, |&(_, v)| v);
                let rate = (total - before) as f64 / seconds / sim.len() as f64;
                (
                    name.to_string(),
                    serde_json::json!((rate * 10.0).round() / 10.0),
                )
            })
            .collect::<serde_json::Map<String, serde_json::Value>>()
    };
    let by_kind = rate_by_kind(NetStats::sent_by_kind_named);
    let bytes_by_kind = rate_by_kind(NetStats::bytes_sent_by_kind_named);
    let frames_sent = per_node(|t| t.frames_sent);
    let bytes_sent = per_node(|t| t.bytes_sent);
    let frames_received = per_node(|t| t.frames_received);
    let bytes_received = per_node(|t| t.bytes_received);

    // 3. Exactness, once the load stopped.
    sim.set_loss(0.0);
    let settled = sim.run_until_true(100, 60_000, |s| s.diverged().is_empty());
    let exact = settled.is_some();
    let settle_ms = settled.map(|t| t - end);
    let report = sim.report(seconds);

    // 4. Detection of a killed node.
    let victim = sim.len() / 3;
    sim.crash(victim);
    let killed = sim.now_ms();
    // The timeline, in 100 ms steps: when the first observer suspected it, when the first marked it down.
    let (mut first_suspect_ms, mut first_down_ms) = (None, None);
    let detected = sim.run_until_true(100, 120_000, |s| {
        let views: Vec<Option<MemberState>> = (0..s.len())
            .filter(|&i| i != victim)
            .map(|i| s.view(i, victim))
            .collect();
        let since = s.now_ms() - killed;
        if first_suspect_ms.is_none() && views.contains(&Some(MemberState::Suspect)) {
            first_suspect_ms = Some(since);
        }
        if first_down_ms.is_none() && views.contains(&Some(MemberState::Down)) {
            first_down_ms = Some(since);
        }
        views.iter().all(|&v| v == Some(MemberState::Down))
    });
    let detection_ms = detected.map(|t| t - killed);
    let total_wall = wall.elapsed().as_secs_f64();

    if args.json {
        let out = serde_json::json!({
            "nodes": args.nodes,
            "seed": args.seed,
            "seconds": args.seconds,
            "increment_ms": args.increment_ms,
            "own_keys": args.own_keys,
            "latency_ms": [args.latency_ms.0, args.latency_ms.1],
            "loss": args.loss,
            "full_mesh_below": config_full_mesh_below(&args),
            "join_ms": join_ms,
            "per_node_per_s": {
                "frames_sent": { "mean": frames_sent.0, "max": frames_sent.1 },
                "bytes_sent": { "mean": bytes_sent.0, "max": bytes_sent.1 },
                "frames_received": { "mean": frames_received.0, "max": frames_received.1 },
                "bytes_received": { "mean": bytes_received.0, "max": bytes_received.1 },
            },
            "frames_sent_per_node_per_s_by_kind": by_kind,
            "bytes_sent_per_node_per_s_by_kind": bytes_by_kind,
            "links_per_node": report.links_per_node,
            "visibility_ms": report.visibility_ms,
            "probes_pending": report.probes_pending,
            "false_downs_under_load": {
                "members": false_down_members.len(),
                "max_pairs": false_down_pairs_max,
            },
            "exact": exact,
            "settle_ms": settle_ms,
            "detection_ms": detection_ms,
            "detection_first_suspect_ms": first_suspect_ms,
            "detection_first_down_ms": first_down_ms,
            "health_link_entries": report.health_link_entries,
            "net": report.net,
            "events": report.events,
            "wall_s": { "join": join_wall, "load": load_wall_s, "total": total_wall },
            "wall_s_per_virtual_s_under_load": load_wall_s / seconds,
        });
        println!("{out:#}");
    } else {
        println!(
            "nodes {} seed {} ({} s of load, one increment per node every {} ms{})",
            args.nodes,
            args.seed,
            args.seconds,
            args.increment_ms,
            if args.own_keys {
                " of the hot key and of its own key"
            } else {
                ""
            }
        );
        println!("joined after {join_ms:?} ms");
        println!(
            "per node per virtual second: frames sent {:.0} (max {:.0}), bytes sent {:.0} (max {:.0}), frames received {:.0}, bytes received {:.0}",
            frames_sent.0,
            frames_sent.1,
            bytes_sent.0,
            bytes_sent.1,
            frames_received.0,
            bytes_received.0
        );
        println!(
            "frames sent per node per virtual second, by kind: {}",
            serde_json::Value::Object(by_kind)
        );
        println!(
            "bytes sent per node per virtual second, by kind: {}",
            serde_json::Value::Object(bytes_by_kind)
        );
        println!("links per node {:.1}", report.links_per_node.mean);
        println!(
            "health-record link entries held in all: {}",
            report.health_link_entries
        );
        println!(
            "increment to visible everywhere: p50 {} ms, p99 {} ms, max {} ms ({} probes, {} pending)",
            report.visibility_ms.p50,
            report.visibility_ms.p99,
            report.visibility_ms.max,
            report.visibility_ms.count,
            report.probes_pending
        );
        println!(
            "false downs under load (checked every virtual second): {} members marked down by someone, at most {} (observer, member) pairs at once",
            false_down_members.len(),
            false_down_pairs_max
        );
        println!("exact totals: {exact} (settled {settle_ms:?} ms after the load)");
        println!(
            "killed node marked down everywhere after {detection_ms:?} ms (first suspected after \
             {first_suspect_ms:?} ms, first marked down after {first_down_ms:?} ms)"
        );
        println!(
            "wall: join {join_wall:.1} s, load {load_wall_s:.1} s ({:.2} s per virtual s), total {total_wall:.1} s",
            load_wall_s / seconds
        );
    }
    if !exact || detection_ms.is_none() || join_ms.is_none() {
        std::process::exit(1);
    }
}
