//! Two-level aggregation through the replicator (issue 13), sans-IO: N replicators linked only as their
//! `Topology` says, frames moved by a small in-memory router (with datagram loss, in shuffled order). Every node
//! increments one hot key and one key of its own; after the increments stop and a few anti-entropy intervals
//! pass, every node counts the exact total of every key, and no node ever counts more than the exact total.
//! Also measured: frames each node sends per flush, against the full mesh's N − 1.

use std::collections::BTreeMap;
use std::sync::Arc;

use bifrost_cluster::ReplicaId;
use bifrost_cluster::UnixMs;
use bifrost_cluster::counter::{CoarseClock, CounterStore, StoreOptions, Window};
use bifrost_cluster::replication::{
    Channel, Layout, PeerId, Replicator, ReplicatorOptions, Topology, TopologyOptions,
};
use bifrost_cluster::rng::SplitMix64;

const T0: u64 = 1_795_514_400_000;
const HOT: &str = "tenant/hot";

fn hour() -> Window {
    Window::parse("1h").unwrap()
}

struct Node {
    replica: u64,
    store: CounterStore,
    replicator: Replicator,
    /// Frames this node queued (link ids are the far end's replica id here).
    sent: u64,
    /// Frames queued during the increments.
    sent_under_load: u64,
}

struct Cluster {
    nodes: Vec<Node>,
    index: BTreeMap<u64, usize>,
    clock: Arc<CoarseClock>,
    now: u64,
    rng: SplitMix64,
    loss: f64,
    exact: BTreeMap<String, u64>,
    /// Milliseconds from the last increment until every node counted exactly.
    settled_ms: Option<u64>,
}

impl Cluster {
    fn new(n: usize, loss: f64, seed: u64, topology: TopologyOptions) -> Cluster {
        let clock = Arc::new(CoarseClock::new(UnixMs::new(T0)));
        let mut rng = SplitMix64::new(seed);
        let replicas: Vec<u64> = (0..n).map(|_| rng.next_u64() | 1).collect();
        let options = ReplicatorOptions {
            anti_entropy_interval_ms: 200,
            check_interval_ms: 0,
            ..ReplicatorOptions::default()
        };
        let mut nodes: Vec<Node> = replicas
            .iter()
            .map(|&replica| {
                let store = CounterStore::new(StoreOptions {
                    replica_id: replica,
                    clock: Arc::clone(&clock),
                    ..StoreOptions::default()
                });
                let replicator = Replicator::new(
                    store.clone(),
                    ReplicaId::new(replica),
                    options.clone(),
                    replica,
                    T0,
                );
                Node {
                    replica,
                    store,
                    replicator,
                    sent: 0,
                    sent_under_load: 0,
                }
            })
            .collect();
        let index = replicas.iter().enumerate().map(|(i, &r)| (r, i)).collect();
        for node in &mut nodes {
            let topology = Topology::new(
                ReplicaId::new(node.replica),
                replicas.iter().copied().map(ReplicaId::new),
                None,
                topology,
            );
            for link in topology.links() {
                node.replicator.add_peer(link.get(), link, Some(1_200));
            }
            node.replicator.set_topology(topology);
        }
        Cluster {
            nodes,
            index,
            clock,
            now: T0,
            rng,
            loss,
            exact: BTreeMap::new(),
            settled_ms: None,
        }
    }

    fn add(&mut self, i: usize, key: &str, n: u64) {
        self.nodes[i].store.add(key, hour(), n).unwrap();
        *self.exact.entry(key.to_string()).or_default() += n;
    }

    /// One millisecond: timers, then every queued frame delivered (datagrams lost at `loss`), in random order.
    fn step(&mut self) {
        self.now += 1;
        self.clock.set_unix_ms(UnixMs::new(self.now));
        let mut frames: Vec<(u64, PeerId, Channel, bytes::Bytes)> = Vec::new();
        for node in &mut self.nodes {
            node.replicator.handle_timeout(self.now);
            while let Some(t) = node.replicator.poll_transmit() {
                node.sent += 1;
                frames.push((node.replica, t.peer, t.channel, t.frame));
            }
        }
        // Shuffle (Fisher-Yates) so frames reorder.
        for i in (1..frames.len()).rev() {
            let j = (self.rng.next_u64() % (i as u64 + 1)) as usize;
            frames.swap(i, j);
        }
        for (from, to, channel, frame) in frames {
            if channel == Channel::Datagram && self.rng.chance(self.loss) {
                continue;
            }
            let Some(&target) = self.index.get(&to) else {
                continue;
            };
            // The far end knows this link by the sender's replica id.
            let _ = self.nodes[target]
                .replicator
                .handle_frame(from, &frame, self.now);
        }
    }

    fn global(&self, i: usize, key: &str) -> u64 {
        self.nodes[i].store.global(key, hour())
    }

    fn check_never_above(&self) {
        for (key, &exact) in &self.exact {
            for i in 0..self.nodes.len() {
                let counted = self.global(i, key);
                assert!(
                    counted <= exact,
                    "node {i} counts {counted} of {key}, exact {exact}"
                );
            }
        }
    }

    fn exact_everywhere(&self) -> bool {
        self.exact
            .iter()
            .all(|(key, &exact)| (0..self.nodes.len()).all(|i| self.global(i, key) == exact))
    }
}

fn run(n: usize, loss: f64, seed: u64) -> Cluster {
    run_with(n, loss, seed, TopologyOptions::default())
}

fn run_with(n: usize, loss: f64, seed: u64, topology: TopologyOptions) -> Cluster {
    let mut cluster = Cluster::new(n, loss, seed, topology);
    let layout = cluster.nodes[0].replicator.topology().map(|t| t.layout());
    let full_mesh = topology.full_mesh_below == usize::MAX;
    assert_eq!(
        layout == Some(Layout::FullMesh),
        full_mesh,
        "{n} nodes: {layout:?}"
    );
    // 200 ms of increments: every node adds to the hot key and its own key every 10 ms.
    for ms in 0..200 {
        if ms % 10 == 0 {
            for i in 0..n {
                cluster.add(i, HOT, 1 + (i as u64 % 3));
                cluster.add(i, &format!("own/{i}"), 1);
            }
        }
        cluster.step();
        cluster.check_never_above();
    }
    for node in &mut cluster.nodes {
        node.sent_under_load = node.sent;
    }
    // Quiescence: no more increments; anti-entropy (200 ms) and the publishers' refresh repair what was lost.
    for ms in 1..=2_000 {
        cluster.step();
        if cluster.exact_everywhere() {
            cluster.settled_ms = Some(ms);
            break;
        }
    }
    cluster.check_never_above();
    cluster
}

#[test]
fn sixty_four_grouped_nodes_count_exactly_without_loss() {
    let cluster = run(64, 0.0, 11);
    assert!(
        cluster.exact_everywhere(),
        "not exact everywhere after quiescence"
    );
}

#[test]
fn grouped_nodes_count_exactly_after_twenty_percent_datagram_loss() {
    let cluster = run(64, 0.2, 12);
    assert!(
        cluster.exact_everywhere(),
        "not exact everywhere after 20 % loss and quiescence"
    );
    for node in &cluster.nodes {
        let stats = node.replicator.stats();
        assert_eq!(stats.aggregates_refused, 0, "honest nodes refuse nothing");
    }
}

#[test]
fn each_node_links_and_sends_to_far_fewer_peers_than_the_full_mesh() {
    let cluster = run(64, 0.0, 13);
    let links: usize = cluster
        .nodes
        .iter()
        .map(|n| n.replicator.peers().count())
        .sum();
    let mean = links as f64 / 64.0;
    assert!(mean < 20.0, "{mean:.1} links per node (full mesh: 63)");
    let mesh = run_with(
        64,
        0.0,
        13,
        TopologyOptions {
            full_mesh_below: usize::MAX,
            ..TopologyOptions::default()
        },
    );
    assert!(mesh.exact_everywhere());
    let grouped: u64 = cluster.nodes.iter().map(|n| n.sent_under_load).sum();
    let full: u64 = mesh.nodes.iter().map(|n| n.sent_under_load).sum();
    eprintln!(
        "64 nodes, {mean:.1} links per node, 200 ms of increments: {:.0} frames sent per node grouped, {:.0} in \
         the full mesh; exact \
         everywhere {:?} ms after the last increment grouped, {:?} ms in the full mesh",
        grouped as f64 / 64.0,
        full as f64 / 64.0,
        cluster.settled_ms,
        mesh.settled_ms
    );
    assert!(
        grouped * 2 < full,
        "grouped nodes sent {grouped} frames, the full mesh {full}"
    );
}
