//! Health thresholds (`gossip.config`) and cluster health in the deterministic whole-node simulation
//! (`bifrost_cluster::sim`), with the real data plane: each node's replicator sends every peer a data-plane
//! check each second on a stream, and each answer counts as one successful check of that member; silence
//! counts as one failed check per `timeout_seconds`. A broken data plane is a stalled stream
//! ([`Simulation::stall_streams`]): the checks vanish while SWIM's datagrams still pass.
//!
//! The thresholds are checked exactly: the scenarios run in 20 ms steps and count each answered check of a
//! member (its link's `last_check_answered_ms` moves; answers of one peer are a second apart), so a flip is
//! asserted at the very answer (or silence timeout) that must cause it.
//!
//! Every test prints its seed; `BIFROST_SIM_SEED=<seed> cargo test --test membership_health` replays it.

use bifrost_cluster::config::{ClusterConfig, GossipHealthConfig};
use bifrost_cluster::membership::{ClusterHealth, MemberState, Membership, MembershipEvent};
use bifrost_cluster::sim::{SimOptions, Simulation};

fn seed(default: u64) -> u64 {
    std::env::var("BIFROST_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

const N: usize = 5;
/// The observation step, ms.
const STEP: u64 = 20;

fn simulation(
    nodes: usize,
    seed: u64,
    gossip: &GossipHealthConfig,
    config: ClusterConfig,
) -> Simulation {
    let mut config = config;
    config.gossip.config = gossip.clone();
    Simulation::new(SimOptions {
        nodes,
        seed,
        config,
        record_events: true,
        ..SimOptions::default()
    })
    .expect("valid simulation options")
}

fn membership(sim: &Simulation, i: usize) -> &Membership {
    sim.membership(i).expect("the node runs")
}

fn healthy(sim: &Simulation, i: usize, j: usize) -> bool {
    membership(sim, i)
        .health_of(sim.addr(j))
        .expect("known member")
        .0
}

fn cluster_health(sim: &Simulation, i: usize) -> ClusterHealth {
    membership(sim, i).cluster_health()
}

fn health_events(sim: &Simulation, i: usize, j: usize, from: usize) -> Vec<(bool, String)> {
    let addr = sim.addr(j);
    sim.events(i)[from..]
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

fn cluster_events(sim: &Simulation, i: usize, from: usize) -> Vec<ClusterHealth> {
    sim.events(i)[from..]
        .iter()
        .filter_map(|(_, e)| match e {
            MembershipEvent::ClusterHealthChanged(h) => Some(*h),
            _ => None,
        })
        .collect()
}

/// Counts the data-plane checks node `i` got answered by node `j` since node `j` came up at node `i` (an
/// answer can come in on a new link before SWIM let the member in; membership does not count that one),
/// observed between steps.
struct Answers {
    i: usize,
    j: usize,
    last_seen_ms: u64,
    /// Answers counted after the member came up; `inclusive` also counts one in the same millisecond (the
    /// order within a millisecond is not observable from here).
    strict: u64,
    inclusive: u64,
    /// When the last one was observed (virtual ms).
    last_at: Option<u64>,
}

impl Answers {
    fn new(sim: &Simulation, i: usize, j: usize) -> Answers {
        let mut a = Answers {
            i,
            j,
            last_seen_ms: 0,
            strict: 0,
            inclusive: 0,
            last_at: None,
        };
        a.observe(sim);
        a.reset();
        a
    }

    /// Takes in what changed since the previous call (at most one answer per step: they are 1 s apart).
    fn observe(&mut self, sim: &Simulation) {
        let at = sim
            .peer_stats(self.i, self.j)
            .map_or(0, |(_, s)| s.last_check_answered_ms);
        if at != 0 && at != self.last_seen_ms {
            let addr = sim.addr(self.j);
            let up_at = sim.events(self.i).iter().rev().find_map(|(t, e)| match e {
                MembershipEvent::MemberUp(id) if id.addr() == addr => Some(*t),
                _ => None,
            });
            if let Some(up_at) = up_at {
                self.strict += u64::from(at > up_at);
                self.inclusive += u64::from(at >= up_at);
            }
            self.last_at = Some(at);
        }
        if at != 0 {
            self.last_seen_ms = at;
        }
    }

    fn reset(&mut self) {
        self.strict = 0;
        self.inclusive = 0;
    }

    /// Whether `healthy` agrees with `threshold` consecutive answers counted.
    fn agrees(&self, healthy: bool, threshold: u32) -> bool {
        let t = u64::from(threshold);
        (!healthy || self.inclusive >= t) && (healthy || self.strict < t)
    }
}

/// Runs in [`STEP`]s until `done` holds (at most `limit_ms`), calling `each` after every step.
fn step_until(
    sim: &mut Simulation,
    limit_ms: u64,
    mut each: impl FnMut(&Simulation),
    mut done: impl FnMut(&Simulation) -> bool,
) -> bool {
    let end = sim.now_ms() + limit_ms;
    while sim.now_ms() < end {
        sim.run_for(STEP);
        each(sim);
        if done(sim) {
            return true;
        }
    }
    false
}

/// Stalls (or frees) the streams of every pair `broken(i, j)` says.
fn stall(sim: &mut Simulation, n: usize, stalled: bool, broken: impl Fn(usize, usize) -> bool) {
    for i in 0..n {
        for j in i + 1..n {
            if broken(i, j) {
                sim.stall_streams(i, j, stalled);
            }
        }
    }
}

#[test]
fn thresholds_flip_member_and_cluster_health_exactly() {
    let seed = seed(21);
    let gossip = GossipHealthConfig {
        timeout_seconds: 10,
        success_threshold: 3,
        failure_threshold: 3,
    };
    let timeout_ms = u64::from(gossip.timeout_seconds) * 1000;
    let mut sim = simulation(N, seed, &gossip, ClusterConfig::default());
    // Members start unhealthy until the data plane answered success_threshold times: node 0's view of node 4
    // flips at the third answer, not before.
    let mut a04 = Answers::new(&sim, 0, 4);
    let mut early = None;
    let up = step_until(
        &mut sim,
        30_000,
        |s| {
            a04.observe(s);
            let h = membership(s, 0).health_of(s.addr(4)).is_some_and(|h| h.0);
            if !a04.agrees(h, gossip.success_threshold) {
                early.get_or_insert((s.now_ms(), a04.strict));
            }
        },
        |s| s.converged() && (0..N).all(|i| cluster_health(s, i) == ClusterHealth::Healthy),
    );
    assert!(up, "the cluster never became healthy (seed {seed})");
    assert_eq!(
        early, None,
        "node 4's health at node 0 disagreed with its answered checks (time, answers) (seed {seed})"
    );
    assert_eq!(
        cluster_events(&sim, 0, 0).last(),
        Some(&ClusterHealth::Healthy)
    );
    // Let every member settle on its steady checks.
    sim.run_for(2_000);

    // Node 4 still answers SWIM probes, but its streams are stalled both ways, with every node.
    let mark0 = sim.events(0).len();
    let mark4 = sim.events(4).len();
    let broken4 = |i: usize, j: usize| i == 4 || j == 4;
    stall(&mut sim, N, true, broken4);
    let mut a04 = Answers::new(&sim, 0, 4);
    let last_answer = sim
        .peer_stats(0, 4)
        .map(|(_, s)| s.last_check_answered_ms)
        .expect("linked");
    let mut flipped_at = None;
    step_until(
        &mut sim,
        5 * timeout_ms,
        |s| a04.observe(s),
        |s| {
            let down = !healthy(s, 0, 4);
            if down {
                flipped_at = Some(s.now_ms());
            }
            down
        },
    );
    // An answer already in flight when the stall began may still land.
    let last_answer = a04.last_at.unwrap_or(last_answer).max(last_answer);
    let flipped_at = flipped_at.expect("node 4 never turned unhealthy at node 0");
    let after = flipped_at - last_answer;
    let expect = u64::from(gossip.failure_threshold) * timeout_ms;
    assert!(
        (expect..expect + STEP).contains(&after),
        "unhealthy {after} ms after the last answer, not after exactly {} silent timeouts of {timeout_ms} ms (seed {seed})",
        gossip.failure_threshold
    );
    assert_eq!(
        sim.view(0, 4),
        Some(MemberState::Alive),
        "SWIM still sees it alive"
    );
    let events = health_events(&sim, 0, 4, mark0);
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(!events[0].0);
    let reason = format!("no data-plane answer within {timeout_ms} ms");
    assert!(events[0].1.contains(&reason), "{}", events[0].1);
    let table = membership(&sim, 0).members();
    let m4 = table.by_addr(sim.addr(4)).expect("in the table");
    assert!(!m4.healthy && m4.health_reason.contains(&reason));
    // Node 0 still sees 4 of 5 healthy; node 4 (every check of its own unanswered too) sees only itself once
    // its own last answers are three timeouts old: within one check interval (1 s) of node 0's flip.
    assert!(
        step_until(
            &mut sim,
            1_000 + STEP,
            |_| {},
            |s| cluster_health(s, 4) == ClusterHealth::NotHealthy
        ),
        "node 4 still counts the cluster healthy (seed {seed})"
    );
    assert_eq!(cluster_health(&sim, 0), ClusterHealth::Healthy);
    assert_eq!(
        cluster_events(&sim, 4, mark4),
        vec![ClusterHealth::NotHealthy]
    );

    // Break 3 and 2 as well: node 0 sees 2 of 5 healthy, not a majority.
    let broken = |i: usize, j: usize| i >= 2 || j >= 2;
    stall(&mut sim, N, true, broken);
    assert!(
        step_until(
            &mut sim,
            5 * timeout_ms,
            |_| {},
            |s| !healthy(s, 0, 2) && !healthy(s, 0, 3)
        ),
        "seed {seed}"
    );
    assert_eq!(cluster_health(&sim, 0), ClusterHealth::NotHealthy);
    assert_eq!(
        cluster_events(&sim, 0, mark0),
        vec![ClusterHealth::NotHealthy],
        "seed {seed}"
    );

    // Repair: healthy again after exactly success_threshold answers.
    let mark0 = sim.events(0).len();
    stall(&mut sim, N, false, broken);
    let mut a04 = Answers::new(&sim, 0, 4);
    let mut wrong = None;
    let repaired = step_until(
        &mut sim,
        3 * timeout_ms,
        |s| {
            a04.observe(s);
            if !a04.agrees(healthy(s, 0, 4), gossip.success_threshold) {
                wrong.get_or_insert((s.now_ms(), a04.strict));
            }
        },
        |s| healthy(s, 0, 4),
    );
    assert!(repaired, "node 4 never healthy again (seed {seed})");
    assert_eq!(wrong, None, "(time, answers) (seed {seed})");
    assert_eq!(cluster_health(&sim, 0), ClusterHealth::Healthy);
    assert_eq!(cluster_events(&sim, 0, mark0), vec![ClusterHealth::Healthy]);
    println!(
        "health thresholds (seed {seed}): flips after exactly 3 silent timeouts ({after} ms after the last answer) / 3 answers"
    );
}

#[test]
fn data_plane_silence_counts_as_failed_checks_after_the_timeout() {
    let seed = seed(22);
    let gossip = GossipHealthConfig {
        timeout_seconds: 2,
        success_threshold: 1,
        failure_threshold: 3,
    };
    let mut sim = simulation(N, seed, &gossip, ClusterConfig::default());
    assert!(
        sim.run_until_true(100, 30_000, |s| s.converged()
            && (0..N).all(|i| (0..N).all(|j| i == j || healthy(s, i, j))))
            .is_some(),
        "seed {seed}"
    );
    sim.run_for(2_000);
    // Node 0 never gets an answer from node 4 any more; everyone else keeps checking everyone.
    let mark = sim.events(0).len();
    sim.stall_streams(0, 4, true);
    let mut a04 = Answers::new(&sim, 0, 4);
    let last_answer = sim
        .peer_stats(0, 4)
        .map(|(_, s)| s.last_check_answered_ms)
        .expect("linked");
    let mut flipped_at = None;
    step_until(
        &mut sim,
        20_000,
        |s| a04.observe(s),
        |s| {
            let down = !healthy(s, 0, 4);
            if down {
                flipped_at = Some(s.now_ms());
            }
            down
        },
    );
    let last_answer = a04.last_at.unwrap_or(last_answer).max(last_answer);
    let after = flipped_at.expect("node 4 never turned unhealthy on silence") - last_answer;
    // Three timeouts of 2 s each after the last answer (observed every 20 ms).
    assert!(
        (6_000..6_000 + STEP).contains(&after),
        "unhealthy after {after} ms (seed {seed})"
    );
    let events = health_events(&sim, 0, 4, mark);
    assert!(
        events[0].1.contains("no data-plane answer within 2000 ms"),
        "{events:?}"
    );
    assert!(healthy(&sim, 1, 4), "other nodes still hear node 4");
    assert_eq!(sim.view(0, 4), Some(MemberState::Alive), "SWIM still does");
}

#[test]
fn members_outside_the_data_plane_scope_follow_swim_and_members_inside_owe_answers() {
    // A grouped replication layout (replication.full_mesh_below 4, 9 nodes: groups of about 3): a node
    // replicates with its group and its aggregate partners only, so only they owe it data-plane answers; the
    // others never answer its data plane (no stream between them carries a check) and stay healthy while SWIM
    // has them alive. The observer is the first node that has members of both kinds.
    let n = 9;
    let seed = seed(23);
    let gossip = GossipHealthConfig {
        timeout_seconds: 2,
        success_threshold: 1,
        failure_threshold: 3,
    };
    let mut config = ClusterConfig::default();
    config.replication.full_mesh_below = 4;
    let mut sim = simulation(n, seed, &gossip, config);
    let all_healthy = |s: &Simulation| {
        (0..n).all(|i| s.group(i).is_some() && (0..n).all(|j| i == j || healthy(s, i, j)))
    };
    assert!(
        sim.run_until_true(100, 60_000, |s| s.converged() && all_healthy(s))
            .is_some(),
        "seed {seed}"
    );
    // Links open for SWIM probes too; give the layout's links time to settle and the idle ones to close.
    sim.run_for(30_000);
    let scope_of = |sim: &Simulation, o: usize| -> (Vec<usize>, Vec<usize>) {
        (0..n).filter(|&j| j != o).partition(|&j| {
            sim.peer_stats(o, j)
                .is_some_and(|(replicating, _)| replicating)
        })
    };
    let o = (0..n)
        .find(|&o| {
            let (inside, outside) = scope_of(&sim, o);
            !inside.is_empty() && !outside.is_empty()
        })
        .expect("some node replicates with only part of the cluster");
    let (in_scope, outside) = scope_of(&sim, o);
    // The members outside: stalled streams change nothing, they are healthy while alive.
    for &j in &outside {
        sim.stall_streams(o, j, true);
    }
    sim.run_for(10_000);
    for j in (0..n).filter(|&j| j != o) {
        assert!(
            healthy(&sim, o, j),
            "node {j} unhealthy at node {o} (seed {seed}; in scope {in_scope:?})"
        );
    }
    assert_eq!(cluster_health(&sim, o), ClusterHealth::Healthy);
    // A member inside owes answers: its silence counts (three timeouts of 2 s after its last answer).
    let k = in_scope[0];
    sim.stall_streams(o, k, true);
    let mut a = Answers::new(&sim, o, k);
    let last_answer = sim
        .peer_stats(o, k)
        .map(|(_, s)| s.last_check_answered_ms)
        .expect("linked");
    let mut flipped_at = None;
    step_until(
        &mut sim,
        20_000,
        |s| a.observe(s),
        |s| {
            let down = !healthy(s, o, k);
            if down {
                flipped_at = Some(s.now_ms());
            }
            down
        },
    );
    let last_answer = a.last_at.unwrap_or(last_answer).max(last_answer);
    let after = flipped_at.expect("the member in scope never turned unhealthy") - last_answer;
    assert!(
        (6_000..6_000 + STEP).contains(&after),
        "unhealthy after {after} ms (seed {seed})"
    );
    for &j in &outside {
        assert!(
            healthy(&sim, o, j),
            "node {j}, outside the scope, stays healthy (seed {seed})"
        );
    }
    println!(
        "data-plane scope (seed {seed}): node {o} checks {in_scope:?}; {outside:?} follow SWIM; node {k} unhealthy {after} ms after its last answer"
    );
}
