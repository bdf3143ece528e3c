//! Deterministic simulation: N nodes running the sans-IO replication plane over an in-memory network, in
//! virtual time.
//!
//! Guarantees:
//! - Deterministic: the run is a function of the seed, the options and the calls made on the simulation. The
//!   seed is printed when the simulation starts (`BIFROST_SIM_SEED=… replays it` in the tests).
//! - Virtual time jumps to the next event (a delivery or a node's timer); nothing sleeps.
//! - The network drops datagrams with probability `loss`, duplicates them with probability `duplicate`, gives
//!   every message an independent latency (so messages reorder), and drops everything between nodes in
//!   different partition groups. Streams are reliable except across a partition (a broken connection).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use bytes::Bytes;

use crate::counter::{CoarseClock, CounterStore, StoreOptions};
use crate::replication::{Channel, PeerId, Replicator, ReplicatorOptions};

/// The simulation's generator: the crate's seeded splitmix64.
pub use crate::rng::SplitMix64 as SimRng;

/// Options of a simulation.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Number of nodes.
    pub nodes: usize,
    /// The seed of everything random in the run.
    pub seed: u64,
    /// Virtual start time (Unix ms).
    pub start_ms: u64,
    /// One-way latency range in ms.
    pub latency_ms: (u64, u64),
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Replication options of every node. Default: the replicator's defaults without data-plane checks
    /// (`check_interval_ms: 0`): they feed the membership plane, which this harness does not run, and at
    /// 100 nodes they would be most of the simulated traffic.
    pub replicator: ReplicatorOptions,
    /// `max_keys` of every node's store.
    pub max_keys: usize,
}

impl Default for SimOptions {
    fn default() -> SimOptions {
        SimOptions {
            nodes: 3,
            seed: 1,
            start_ms: 1_795_514_400_000,
            latency_ms: (1, 10),
            loss: 0.0,
            duplicate: 0.0,
            replicator: ReplicatorOptions {
                check_interval_ms: 0,
                ..ReplicatorOptions::default()
            },
            max_keys: 10_000,
        }
    }
}

/// One simulated node.
#[derive(Debug)]
pub struct SimNode {
    /// The node's counter store (increment through it).
    pub store: CounterStore,
    /// The node's replicator.
    pub replicator: Replicator,
    clock: Arc<CoarseClock>,
}

#[derive(Debug)]
struct Delivery {
    from: usize,
    to: usize,
    frame: Bytes,
}

/// Network counters of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Messages delivered.
    pub delivered: u64,
    /// Datagrams lost to `loss`.
    pub lost: u64,
    /// Datagrams duplicated.
    pub duplicated: u64,
    /// Messages dropped by a partition.
    pub partitioned: u64,
    /// Frames a receiver refused (decode errors).
    pub refused: u64,
}

/// A simulation run.
#[derive(Debug)]
pub struct Simulation {
    options: SimOptions,
    now_ms: u64,
    rng: SimRng,
    nodes: Vec<SimNode>,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    in_flight: std::collections::HashMap<u64, Delivery>,
    next_message: u64,
    groups: Vec<usize>,
    stats: NetStats,
}

impl Simulation {
    /// Builds `options.nodes` nodes, all linked to each other, and prints the seed.
    pub fn new(options: SimOptions) -> Simulation {
        eprintln!(
            "simulation seed: {} (set BIFROST_SIM_SEED={} to replay)",
            options.seed, options.seed
        );
        let mut rng = SimRng::new(options.seed);
        let nodes: Vec<SimNode> = (0..options.nodes)
            .map(|_| {
                let clock = Arc::new(CoarseClock::new(options.start_ms));
                let replica_id = rng.next_u64();
                let store = CounterStore::new(StoreOptions {
                    max_keys: options.max_keys,
                    replica_id,
                    clock: Arc::clone(&clock),
                    ..StoreOptions::default()
                });
                let replicator = Replicator::new(
                    store.clone(),
                    replica_id,
                    options.replicator.clone(),
                    rng.next_u64(),
                    options.start_ms,
                );
                SimNode {
                    store,
                    replicator,
                    clock,
                }
            })
            .collect();
        let mut sim = Simulation {
            now_ms: options.start_ms,
            rng,
            groups: vec![0; nodes.len()],
            nodes,
            queue: BinaryHeap::new(),
            in_flight: std::collections::HashMap::new(),
            next_message: 0,
            stats: NetStats::default(),
            options,
        };
        for i in 0..sim.nodes.len() {
            for j in 0..sim.nodes.len() {
                if i != j {
                    let replica = sim.nodes[j].replicator.replica_id();
                    sim.nodes[i].replicator.add_peer(j as PeerId, replica, None);
                }
            }
            sim.collect(i);
        }
        sim
    }

    /// Virtual now (Unix ms).
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The nodes.
    pub fn nodes(&self) -> &[SimNode] {
        &self.nodes
    }

    /// One node.
    pub fn node(&self, i: usize) -> &SimNode {
        &self.nodes[i]
    }

    /// The generator of the run, for scenario drivers that need randomness replayed by the same seed.
    pub fn rng(&mut self) -> &mut SimRng {
        &mut self.rng
    }

    /// Network counters.
    pub fn net_stats(&self) -> NetStats {
        self.stats
    }

    /// Sets the datagram loss probability.
    pub fn set_loss(&mut self, loss: f64) {
        self.options.loss = loss;
    }

    /// Splits the nodes: `group_of(i)` names node i's side; only nodes of the same group can talk.
    pub fn partition(&mut self, group_of: impl Fn(usize) -> usize) {
        for (i, g) in self.groups.iter_mut().enumerate() {
            *g = group_of(i);
        }
    }

    /// Heals every partition.
    pub fn heal(&mut self) {
        self.groups.iter_mut().for_each(|g| *g = 0);
    }

    /// Runs until virtual time `until_ms`, processing every delivery and timer due before it, in time order.
    pub fn run_until(&mut self, until_ms: u64) {
        loop {
            let next_delivery = self.queue.peek().map_or(u64::MAX, |Reverse((at, _))| *at);
            let (timer_node, next_timer) = self
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (i, n.replicator.poll_timeout()))
                .min_by_key(|&(_, t)| t)
                .unwrap_or((0, u64::MAX));
            let next = next_delivery.min(next_timer);
            if next > until_ms {
                self.set_time(until_ms);
                return;
            }
            self.set_time(next);
            if next_delivery <= next_timer {
                let Some(Reverse((_, id))) = self.queue.pop() else {
                    continue;
                };
                let Some(delivery) = self.in_flight.remove(&id) else {
                    continue;
                };
                self.stats.delivered += 1;
                let now = self.now_ms;
                let node = &mut self.nodes[delivery.to];
                if node
                    .replicator
                    .handle_frame(delivery.from as PeerId, &delivery.frame, now)
                    .is_err()
                {
                    self.stats.refused += 1;
                }
                self.collect(delivery.to);
            } else {
                let now = self.now_ms;
                self.nodes[timer_node].replicator.handle_timeout(now);
                self.collect(timer_node);
            }
        }
    }

    fn set_time(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        for node in &self.nodes {
            node.clock.advance_to(self.now_ms);
        }
    }

    /// Routes what node `from` wants to send.
    fn collect(&mut self, from: usize) {
        while let Some(transmit) = self.nodes[from].replicator.poll_transmit() {
            let to = transmit.peer as usize;
            if to >= self.nodes.len() {
                continue;
            }
            if self.groups[from] != self.groups[to] {
                self.stats.partitioned += 1;
                continue;
            }
            let copies = match transmit.channel {
                Channel::Datagram if self.rng.chance(self.options.loss) => {
                    self.stats.lost += 1;
                    0
                }
                Channel::Datagram if self.rng.chance(self.options.duplicate) => {
                    self.stats.duplicated += 1;
                    2
                }
                _ => 1,
            };
            for _ in 0..copies {
                let (lo, hi) = self.options.latency_ms;
                let at = self.now_ms + self.rng.range(lo, hi.max(lo));
                let id = self.next_message;
                self.next_message += 1;
                self.queue.push(Reverse((at, id)));
                self.in_flight.insert(
                    id,
                    Delivery {
                        from,
                        to,
                        frame: transmit.frame.clone(),
                    },
                );
            }
        }
    }
}
