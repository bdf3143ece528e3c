//! Idle traffic of real `bifrost-cluster run` processes (issue 13): UDP datagrams per node per second of N
//! nodes on loopback with static peers, doing nothing, and then exact totals under a burst of load.
//!
//! All N processes run inside one network namespace this bench creates (through `tests/support/netns.rs`), so
//! the namespace's own UDP counters (`/proc/net/snmp`, `Udp: OutDatagrams InDatagrams`) count exactly their
//! packets and nothing else of the machine's. Every node lists every other as a static peer (`127.0.0.1:port`
//! inside the namespace) and advertises 127.0.0.1; default gossip, replication and transport settings otherwise. Phases per N: start all, wait
//! until every node reports N healthy members (bounded), let the join's traffic settle (`SETTLE` seconds:
//! membership's dissemination and the idle close of the links SWIM opened for probes, 5 s without a frame),
//! count for `MEASURE` seconds; then every node adds `i + 1` to one key and the bench waits (bounded) until
//! every node reads the exact sum.
//!
//! `cargo bench --bench idle_packets` runs 10 and 30 nodes (`BIFROST_IDLE_NODES=5,10,20,30` changes them,
//! `BIFROST_IDLE_SETTLE_S` and `BIFROST_IDLE_MEASURE_S` the phases, default 20 s each) and prints the ratio of
//! the largest to the smallest count. `cargo bench -- --test` (the CI smoke) runs 3 nodes for 2 s. Needs root
//! for the namespace: without it the bench prints SKIPPED, and fails instead when `REQUIRE_NETNS=1`.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[path = "../tests/support/netns.rs"]
#[allow(dead_code, reason = "the bench uses a part of the test support")]
mod netns;

use netns::{Lab, NsNode, wait_until};

const SECRET: &str = "LdogM7+eww0KBwaOpO4pCAeGGGlevGy6RnrQ8T7idMM=";
const GOSSIP_BASE: u16 = 20_000;
const HTTP_BASE: u16 = 21_000;

/// The namespace's UDP datagram counters: (sent, received).
fn udp_counters(lab: &Lab) -> (u64, u64) {
    let out = lab
        .command(0, "cat")
        .arg("/proc/net/snmp")
        .output()
        .expect("read /proc/net/snmp in the namespace");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        panic!("no Udp lines in /proc/net/snmp: {text}");
    };
    let field = |name: &str| -> u64 {
        let at = names
            .split_whitespace()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("no {name} in {names}"));
        values
            .split_whitespace()
            .nth(at)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no value for {name} in {values}"))
    };
    (field("OutDatagrams"), field("InDatagrams"))
}

fn config(i: usize, n: usize) -> Value {
    let peers: Vec<String> = (0..n)
        .filter(|&j| j != i)
        .map(|j| format!("127.0.0.1:{}", GOSSIP_BASE + j as u16))
        .collect();
    json!({
        "enabled": true,
        "node_id": format!("node-{i}"),
        "peers": peers,
        "gossip": { "port": GOSSIP_BASE + i as u16, "advertise_address": "127.0.0.1" },
        "http": { "listen": format!("127.0.0.1:{}", HTTP_BASE + i as u16) },
        "security": { "cluster_secret": SECRET }
    })
}

fn healthy(node: &NsNode, lab: &Lab, n: usize) -> bool {
    node.status(lab).is_some_and(|s| {
        s["members"] == n && s["healthy_members"] == n && s["cluster_health"] == "HEALTHY"
    })
}

/// One run of `n` nodes: (datagrams sent per node per s, received per node per s, seconds to exact totals).
fn run(n: usize, dir: &Path, settle: Duration, measure: Duration) -> (f64, f64, f64) {
    let lab = Lab::new(&["10.78.0.1/24"]);
    let nodes: Vec<NsNode> = (0..n)
        .map(|i| {
            NsNode::start(
                &lab,
                0,
                dir,
                &format!("node-{i}"),
                HTTP_BASE + i as u16,
                &config(i, n),
                "warn",
            )
        })
        .collect();
    let joined = wait_until(Duration::from_secs(180), "every node healthy", || {
        nodes.iter().all(|node| healthy(node, &lab, n))
    });
    println!(
        "idle_packets/{n:>2}_nodes: all healthy after {:.1} s; settling {} s",
        joined.as_secs_f64(),
        settle.as_secs()
    );
    std::thread::sleep(settle);
    let (sent_before, received_before) = udp_counters(&lab);
    let started = Instant::now();
    std::thread::sleep(measure);
    let (sent_after, received_after) = udp_counters(&lab);
    let seconds = started.elapsed().as_secs_f64();
    let per_node = |d: u64| d as f64 / seconds / n as f64;
    let sent = per_node(sent_after - sent_before);
    let received = per_node(received_after - received_before);
    assert!(
        nodes.iter().all(|node| healthy(node, &lab, n)),
        "{n} nodes: a node was not healthy at the end of the idle phase"
    );
    // Load: every node adds i + 1 to one key; every node must read the exact sum.
    let key = "budget";
    let mut epoch = None;
    for (i, node) in nodes.iter().enumerate() {
        epoch = Some(node.add(&lab, key, i as u64 + 1));
    }
    let epoch = epoch.expect("at least one node");
    let exact = (n * (n + 1) / 2) as u64;
    let settled = wait_until(
        Duration::from_secs(60),
        "exact totals on every node",
        || {
            nodes
                .iter()
                .all(|node| node.global(&lab, key, epoch) == Some(exact))
        },
    );
    (sent, received, settled.as_secs_f64())
}

fn main() {
    if !netns::available("idle_packets") {
        return;
    }
    let smoke = std::env::args().any(|a| a == "--test");
    let seconds = |name: &str, default: u64| {
        Duration::from_secs(
            std::env::var(name)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(if smoke { 2 } else { default }),
        )
    };
    let settle = seconds("BIFROST_IDLE_SETTLE_S", 20);
    let measure = seconds("BIFROST_IDLE_MEASURE_S", 20);
    let sizes: Vec<usize> = match std::env::var("BIFROST_IDLE_NODES") {
        Ok(list) => list
            .split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .expect("BIFROST_IDLE_NODES: comma-separated counts")
            })
            .collect(),
        Err(_) if smoke => vec![3],
        Err(_) => vec![10, 30],
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut results = Vec::new();
    for &n in &sizes {
        let (sent, received, exact_s) = run(n, dir.path(), settle, measure);
        println!(
            "idle_packets/{n:>2}_nodes: {sent:.1} UDP datagrams sent and {received:.1} received per node per s \
             idle ({} s measured); exact totals on every node {exact_s:.2} s after {n} adds",
            measure.as_secs()
        );
        assert!(
            sent > 0.0,
            "{n} idle nodes sent nothing: the counter is not theirs"
        );
        results.push((n, sent));
    }
    if let (Some(&(small, low)), Some(&(large, high))) = (
        results.iter().min_by_key(|r| r.0),
        results.iter().max_by_key(|r| r.0),
    ) && large > small
    {
        println!(
            "idle_packets: {large} against {small} nodes: {:.2}x the datagrams per node",
            high / low
        );
    }
}
