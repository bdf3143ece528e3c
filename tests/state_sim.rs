//! The shared-state replicator in a deterministic simulation: 50 nodes, random config puts and deletes under
//! 10 % loss and a partition, one node's wall clock 10 minutes ahead. After the heal every node holds the same
//! map, and it is the map the HLC order of all writes implies; a write made after seeing the skewed node's
//! write wins over it. Every run prints its seed; `BIFROST_SIM_SEED=<seed> cargo test --test state_sim`
//! replays it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use bifrost_cluster::ReplicaId;
use bifrost_cluster::rng::SplitMix64;
use bifrost_cluster::state::{ConfigEntry, StateOptions, StateReplicator};
use bytes::Bytes;

const NODES: usize = 50;
const START: u64 = 1_795_514_400_000;
const SKEWED: usize = 7;
const SKEW_MS: u64 = 600_000;

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

/// A frame in flight: (deliver at, sequence, to, from, frame), earliest first.
type InFlight = Reverse<(u64, u64, usize, usize, Bytes)>;

struct Sim {
    now: u64,
    nodes: Vec<StateReplicator>,
    /// (deliver at, sequence, to, from, frame)
    queue: BinaryHeap<InFlight>,
    sequence: u64,
    rng: SplitMix64,
    loss: f64,
    group: Vec<u8>,
    /// Every write issued, as the writer's map held it right after.
    issued: Vec<ConfigEntry>,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let options = StateOptions {
            digest_interval_ms: 1_000,
            ..StateOptions::default()
        };
        let mut nodes: Vec<StateReplicator> = (0..NODES)
            .map(|i| {
                StateReplicator::new(
                    &format!("node-{i:02}"),
                    ReplicaId::new(i as u64 + 1),
                    options.clone(),
                    seed ^ i as u64,
                    START,
                )
            })
            .collect();
        for (i, node) in nodes.iter_mut().enumerate() {
            for j in 0..NODES {
                if i != j {
                    node.bind_peer(
                        j as u64,
                        ReplicaId::new(j as u64 + 1),
                        &format!("node-{j:02}"),
                    );
                    node.add_peer(j as u64);
                }
            }
        }
        Sim {
            now: START,
            nodes,
            queue: BinaryHeap::new(),
            sequence: 0,
            rng: SplitMix64::new(seed),
            loss: 0.0,
            group: vec![0; NODES],
            issued: Vec::new(),
        }
    }

    /// Node `i`'s wall clock.
    fn clock(&self, i: usize) -> u64 {
        if i == SKEWED {
            self.now + SKEW_MS
        } else {
            self.now
        }
    }

    fn collect(&mut self, i: usize) {
        while let Some(t) = self.nodes[i].poll_transmit() {
            let to = t.peer as usize;
            if self.group[i] != self.group[to] || self.rng.chance(self.loss) {
                continue;
            }
            let at = self.now + self.rng.range(1, 20);
            self.sequence += 1;
            self.queue
                .push(Reverse((at, self.sequence, to, i, t.frame)));
        }
        while self.nodes[i].poll_change().is_some() {}
    }

    fn step_to(&mut self, until: u64) {
        while self.now < until {
            self.now += 1;
            while let Some(Reverse((at, ..))) = self.queue.peek() {
                if *at > self.now {
                    break;
                }
                let Some(Reverse((_, _, to, from, frame))) = self.queue.pop() else {
                    break;
                };
                let now = self.clock(to);
                self.nodes[to]
                    .handle_frame(from as u64, &frame, now)
                    .expect("valid frame");
                self.collect(to);
            }
            for i in 0..NODES {
                let now = self.clock(i);
                if self.nodes[i].poll_timeout() <= now {
                    self.nodes[i].handle_timeout(now);
                    self.collect(i);
                }
            }
        }
    }

    fn put(&mut self, i: usize, key: &str, value: &[u8]) {
        let now = self.clock(i);
        self.nodes[i]
            .put(key, Bytes::copy_from_slice(value), now)
            .expect("put");
        self.issued
            .push(self.nodes[i].map().entry(key).expect("written").clone());
        self.collect(i);
    }

    fn delete(&mut self, i: usize, key: &str) {
        let now = self.clock(i);
        self.nodes[i].delete(key, now).expect("delete");
        self.issued
            .push(self.nodes[i].map().entry(key).expect("tombstone").clone());
        self.collect(i);
    }

    fn converged(&self) -> bool {
        let first = self.nodes[0].map().digest();
        self.nodes.iter().all(|n| n.map().digest() == first)
    }

    fn live(&self, i: usize) -> Vec<(String, Vec<u8>)> {
        self.nodes[i]
            .map()
            .live()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect()
    }

    /// What the HLC order of every issued write implies.
    fn implied(&self) -> Vec<(String, Vec<u8>)> {
        let mut best: BTreeMap<String, &ConfigEntry> = BTreeMap::new();
        for e in &self.issued {
            let k = e.key.to_string();
            if best.get(&k).is_none_or(|b| e.ts > b.ts) {
                best.insert(k, e);
            }
        }
        best.into_iter()
            .filter_map(|(k, e)| e.value.as_ref().map(|v| (k, v.to_vec())))
            .collect()
    }
}

#[test]
fn fifty_nodes_with_loss_a_partition_and_a_skewed_clock_converge_to_the_hlc_order() {
    let seed = seed();
    eprintln!("state_sim seed {seed} (BIFROST_SIM_SEED={seed} replays it)");
    let mut sim = Sim::new(seed);
    sim.loss = 0.1;
    let keys: Vec<String> = (0..20).map(|k| format!("route/{k}")).collect();
    // 20 s of random writes; a 25/25 partition from 5 s to 15 s.
    for tick in 0..200u64 {
        if tick == 50 {
            for i in NODES / 2..NODES {
                sim.group[i] = 1;
            }
        }
        if tick == 150 {
            sim.group = vec![0; NODES];
        }
        for _ in 0..3 {
            let i = sim.rng.range(0, NODES as u64 - 1) as usize;
            let key = keys[sim.rng.range(0, keys.len() as u64 - 1) as usize].clone();
            if sim.rng.chance(0.25) {
                sim.delete(i, &key);
            } else {
                let value = format!("v{tick}-{i}");
                sim.put(i, &key, value.as_bytes());
            }
        }
        let until = sim.now + 100;
        sim.step_to(until);
    }
    // Healed; loss goes on. Anti-entropy must bring every node to the same map.
    let healed = sim.now;
    while !sim.converged() {
        assert!(
            sim.now - healed < 120_000,
            "not converged 120 s after the heal (seed {seed})"
        );
        let until = sim.now + 100;
        sim.step_to(until);
    }
    eprintln!("converged {} ms after the heal", sim.now - healed);
    let implied = sim.implied();
    assert!(!implied.is_empty());
    for i in 0..NODES {
        assert_eq!(sim.live(i), implied, "node {i} (seed {seed})");
    }

    // The skewed node writes; node 0 writes the same key after seeing it: node 0's write must win although
    // its wall clock is 10 minutes behind.
    sim.loss = 0.0;
    sim.put(SKEWED, "contested", b"from the skewed node");
    let until = sim.now + 100;
    sim.step_to(until);
    assert_eq!(
        sim.nodes[0].map().get("contested").map(|v| v.to_vec()),
        Some(b"from the skewed node".to_vec())
    );
    sim.put(0, "contested", b"from node 0, later");
    let until = sim.now + 100;
    sim.step_to(until);
    for i in 0..NODES {
        assert_eq!(
            sim.nodes[i].map().get("contested").map(|v| v.to_vec()),
            Some(b"from node 0, later".to_vec()),
            "node {i}"
        );
    }
}

#[test]
fn a_node_that_joins_later_receives_the_whole_map() {
    let mut sim = Sim::new(seed());
    // The last node is not linked to anybody yet (and nothing already queued reaches it).
    let newcomer = NODES - 1;
    sim.group[newcomer] = 1;
    for j in 0..NODES - 1 {
        sim.nodes[newcomer].remove_peer(j as u64);
        sim.nodes[j].remove_peer(newcomer as u64);
    }
    for k in 0..300 {
        let i = k % (NODES - 1);
        sim.put(i, &format!("key/{k}"), &[k as u8; 100]);
    }
    sim.delete(3, "key/3");
    let until = sim.now + 5_000;
    sim.step_to(until);
    assert_eq!(sim.nodes[newcomer].map().len(), 0);
    sim.group[newcomer] = 0;
    sim.nodes[newcomer].bind_peer(0, ReplicaId::new(1), "node-00");
    sim.nodes[newcomer].add_peer(0);
    sim.nodes[0].bind_peer(
        newcomer as u64,
        ReplicaId::new(newcomer as u64 + 1),
        &format!("node-{newcomer:02}"),
    );
    sim.nodes[0].add_peer(newcomer as u64);
    sim.collect(newcomer);
    sim.collect(0);
    let until = sim.now + 200;
    sim.step_to(until);
    assert_eq!(
        sim.nodes[newcomer].map().digest(),
        sim.nodes[0].map().digest()
    );
    assert_eq!(sim.live(newcomer).len(), 299);
}
