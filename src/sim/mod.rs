//! Deterministic simulation of whole nodes: per node, the [`NodeMachine`] the tokio driver runs (links,
//! membership, both replicators, health publishing) over an in-memory network, in virtual time.
//!
//! Guarantees:
//! - Deterministic: the run is a function of the seed, the options and the calls made on the simulation. The
//!   seed is printed when the simulation starts (`BIFROST_SIM_SEED=… replays it` in the tests). Also across
//!   processes and threads: every map a plane or the simulator iterates has a fixed hasher (`fixed_hash`);
//!   `tests/sim_scenarios.rs` runs one seed on two threads and compares the runs.
//! - Virtual time jumps to the next event (a delivery, a link event, a node's timer); nothing sleeps.
//! - One event costs O(1) when due within seconds (a calendar queue, [`queue`]) and O(log E) for E pending
//!   events otherwise, with one entry per node wake-up (stale entries are skipped when popped), never a scan of
//!   every node or peer. Each node's clock is advanced only
//!   when that node runs.
//! - The network ([`network`]) gives every message its own latency (jitter, so messages reorder), loses and
//!   duplicates datagrams, delays stream frames under loss (retransmission), limits bandwidth per link
//!   direction, and drops everything between partition groups. A link whose peer is unreachable (partition,
//!   crash, pause) closes at both ends after the idle timeout, as QUIC's does.
//! - Nodes crash (no goodbye), stop gracefully (final flush and leave, as the driver's shutdown), pause (no
//!   processing; datagrams to them are lost, stream frames wait) and restart with a new replica id at the same
//!   address, with an empty store. [`Simulation::add_node`] starts one more process with any node id (a
//!   member's id makes it a duplicate, or a restart at a new address) at the next free address.
//! - [`Simulation::stall_streams`] stalls the streams between two nodes while their datagrams (membership)
//!   still pass: the data plane of a link breaks while SWIM still sees both ends alive.
//! - With [`SimOptions::record_events`], every node's membership events are kept with the virtual time the
//!   machine handled them ([`Simulation::events`]), over all the lives of the node.
//!
//! - Links follow the link-layer contract ([`crate::node::link_layer`]); [`SimEndpoint`] exposes one bare
//!   endpoint of this network through it, for the conformance suite that also runs against quinn.
//!
//! What is not simulated: TLS and the hello exchange (a link is up at both ends 1.5 round trips after the
//! dial; the hello's identity is the node's own; a dial between two trust domains, which only
//! [`SimEndpoint`]s can be in, is refused after one round trip), path MTU changes, and the process probe (CPU
//! and memory read 0).

mod endpoint;
mod network;
mod queue;
mod report;

use std::collections::VecDeque;

use crate::UnixMs;
use crate::fixed_hash::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;

pub use self::endpoint::SimEndpoint;
pub use self::network::{NetOptions, NetStats};
pub use self::report::{NodeTraffic, Percentiles, SimReport, TrafficSummary};

use crate::ReplicaId;
use crate::config::{ClusterConfig, PeerAddr};
use crate::counter::{Algorithm, CoarseClock, CounterError, CounterStore, Decision, Window};
use crate::membership::{
    MemberState, Membership, MembershipError, MembershipEvent, MembershipOptions,
};
use crate::node::PeerHello;
use crate::node::link_layer::{CloseReason, DialError, LinkEvent, travels_on_stream};
use crate::node::machine::{Action, LinkId, LinkUp, NoProbe, NodeMachine};
use crate::node::options::{self, MachineIdentity, MachineSeeds, MachineSetup};
use crate::replication::{Channel, PeerStats, ReplicationStats};
use crate::state::TrafficRecorder;
use crate::wire::{self, capabilities};

/// The simulation's generator: the crate's seeded splitmix64.
pub use crate::rng::SplitMix64 as SimRng;

/// The gossip port every simulated node listens on.
pub const SIM_PORT: u16 = 10101;

/// The address of simulated node `i` (virtual: nothing is sent to it).
pub fn sim_addr(i: usize) -> SocketAddr {
    let ip = Ipv4Addr::new(127, 1, (i >> 8) as u8, (i & 0xff) as u8);
    SocketAddr::new(IpAddr::V4(ip), SIM_PORT)
}

/// Options of a simulation.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Number of nodes.
    pub nodes: usize,
    /// The seed of everything random in the run.
    pub seed: u64,
    /// Virtual start time (Unix ms).
    pub start_ms: u64,
    /// The network.
    pub net: NetOptions,
    /// The config every node runs (`peers` is replaced by the seed nodes' addresses).
    pub config: ClusterConfig,
    /// Membership options instead of `config.gossip.config`'s mapping (as `NodeOptions::membership`).
    pub membership: Option<MembershipOptions>,
    /// How many of the first nodes are the others' join targets (static peers). Default 3.
    pub seeds: usize,
    /// How often every node is told its join targets again, ms (the discovery loop's rounds). Default 10 s.
    pub discovery_interval_ms: u64,
    /// Keep every node's membership events ([`Simulation::events`]). Default false (memory grows with the
    /// events: at 1,000 nodes a few per member change on every node).
    pub record_events: bool,
}

impl Default for SimOptions {
    fn default() -> SimOptions {
        SimOptions {
            nodes: 3,
            seed: 1,
            start_ms: 1_795_514_400_000,
            net: NetOptions::default(),
            config: ClusterConfig::default(),
            membership: None,
            seeds: 3,
            discovery_interval_ms: 10_000,
            record_events: false,
        }
    }
}

/// Why a simulation could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The membership options were refused.
    #[error("membership options: {0}")]
    Membership(#[from] MembershipError),
    /// A node index out of range.
    #[error("no node {0}")]
    NoNode(usize),
    /// The call needs a running node.
    #[error("node {0} is not running")]
    NotRunning(usize),
    /// A config write was refused.
    #[error("config write refused: {0}")]
    Config(String),
}

/// Whether a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// It processes events.
    Running,
    /// It processes nothing until `until_ms`.
    Paused {
        /// When it resumes.
        until_ms: u64,
    },
    /// Crashed or stopped; [`Simulation::restart`] brings it back.
    Down,
}

struct SimNode {
    node_id: String,
    addr: SocketAddr,
    /// Bumped at each restart: events of an older life are dropped.
    incarnation: u32,
    run: RunState,
    machine: Option<NodeMachine>,
    store: CounterStore,
    clock: Arc<CoarseClock>,
    replica_id: ReplicaId,
    /// The deadline of this node's live timer entry in the heap (`u64::MAX`: none).
    timer_at: u64,
    traffic: NodeTraffic,
    /// Stream frames that arrived while paused (delivered at resume).
    deferred: Vec<(LinkId, Bytes)>,
    /// Links that closed while paused (reported at resume).
    deferred_downs: Vec<(LinkId, CloseReason)>,
    /// A bare endpoint ([`SimEndpoint`]) has no machine: what its links report waits here for
    /// [`SimEndpoint::poll_event`].
    inbox: Option<VecDeque<LinkEvent>>,
    /// Handshakes refused for identity (another trust domain), both directions, all lives.
    refusals: u64,
    /// Membership events with their time, all lives (only with [`SimOptions::record_events`]).
    events: Vec<(u64, MembershipEvent)>,
}

/// One end of a simulated link.
#[derive(Debug)]
struct End {
    node: usize,
    incarnation: u32,
    peer: LinkId,
    open: bool,
    /// When this direction's queue is free again (bandwidth model).
    busy_until_ms: u64,
}

/// Every link end ever opened, by id: ids are handed out in sequence from 1 and never reused, so a link end is
/// found by indexing (one memory access, where a hash map took two) and an event for a closed end still finds
/// it, closed. Ends are never removed (40 bytes each).
#[derive(Debug, Default)]
struct Ends {
    ends: Vec<End>,
}

impl Ends {
    fn get(&self, id: &LinkId) -> Option<&End> {
        let i = usize::try_from(id.get().checked_sub(1)?).ok()?;
        self.ends.get(i)
    }

    fn get_mut(&mut self, id: &LinkId) -> Option<&mut End> {
        let i = usize::try_from(id.get().checked_sub(1)?).ok()?;
        self.ends.get_mut(i)
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut End> {
        self.ends.iter_mut()
    }

    /// Every end with its id, in id order.
    fn ids(&self) -> impl Iterator<Item = (LinkId, &End)> {
        (1u64..).map(LinkId::new).zip(self.ends.iter())
    }

    /// Opens a link between `(node, incarnation)` `a` and `b`: returns the ids of `a`'s end and `b`'s.
    fn open_pair(&mut self, a: (usize, u32), b: (usize, u32)) -> (LinkId, LinkId) {
        let next = self.ends.len() as u64 + 1;
        let (ours, theirs) = (LinkId::new(next), LinkId::new(next + 1));
        for ((node, incarnation), peer) in [(a, theirs), (b, ours)] {
            self.ends.push(End {
                node,
                incarnation,
                peer,
                open: true,
                busy_until_ms: 0,
            });
        }
        (ours, theirs)
    }
}

#[derive(Debug)]
enum Ev {
    Timer {
        node: usize,
        incarnation: u32,
    },
    Deliver {
        end: LinkId,
        frame: Bytes,
        reliable: bool,
    },
    LinkUp {
        end: LinkId,
        up: Box<LinkUp>,
    },
    DialFailed {
        node: usize,
        incarnation: u32,
        addr: SocketAddr,
        error: DialError,
    },
    LinkDown {
        end: LinkId,
        reason: CloseReason,
    },
    IdleCheck {
        end: LinkId,
    },
    Resume {
        node: usize,
        incarnation: u32,
    },
    Discover {
        node: usize,
        incarnation: u32,
    },
}

/// A visibility probe: one increment of a fresh key, timed until every running node sees it.
struct Probe {
    key: String,
    window: Window,
    started_ms: u64,
    seen: Vec<bool>,
    missing: usize,
}

/// A whole-node simulation run.
pub struct Simulation {
    options: SimOptions,
    now_ms: u64,
    rng: SimRng,
    nodes: Vec<SimNode>,
    by_addr: HashMap<SocketAddr, usize>,
    ends: Ends,
    queue: queue::EventQueue<Ev>,
    groups: Vec<usize>,
    /// Each node's trust domain (its cluster CA): a dial across domains is refused.
    trust: Vec<u64>,
    /// Node pairs `(lower, higher)` whose stream frames are dropped ([`Simulation::stall_streams`]).
    stalled: HashSet<(usize, usize)>,
    stats: NetStats,
    totals: HashMap<(String, Window), u64>,
    probes: Vec<Probe>,
    visibility_ms: Vec<u64>,
    probe_window: Window,
    events_run: u64,
}

impl Simulation {
    /// Builds `options.nodes` nodes, tells each its join targets (the first `options.seeds` nodes), and
    /// prints the seed.
    pub fn new(options: SimOptions) -> Result<Simulation, SimError> {
        eprintln!(
            "simulation seed: {} (set BIFROST_SIM_SEED={} to replay)",
            options.seed, options.seed
        );
        let mut sim = Simulation {
            now_ms: options.start_ms,
            rng: SimRng::new(options.seed),
            nodes: Vec::with_capacity(options.nodes),
            by_addr: HashMap::default(),
            ends: Ends::default(),
            queue: queue::EventQueue::new(options.start_ms),
            groups: vec![0; options.nodes],
            trust: vec![0; options.nodes],
            stalled: HashSet::default(),
            stats: NetStats::default(),
            totals: HashMap::default(),
            probes: Vec::new(),
            visibility_ms: Vec::new(),
            // An hour: a probe never straddles a window boundary in a run of minutes.
            probe_window: Window::parse("1h").unwrap_or(Window::MINUTE),
            events_run: 0,
            options,
        };
        let seeds: Vec<PeerAddr> = (0..sim.options.seeds.min(sim.options.nodes))
            .filter_map(|i| PeerAddr::parse(&sim_addr(i).to_string()).ok())
            .collect();
        sim.options.config.peers = seeds;
        for i in 0..sim.options.nodes {
            let addr = sim_addr(i);
            sim.by_addr.insert(addr, i);
            let node = sim.boot(format!("node-{i}"), addr, 0)?;
            sim.nodes.push(node);
            sim.push(
                sim.now_ms,
                Ev::Discover {
                    node: i,
                    incarnation: 0,
                },
            );
            sim.touch(i);
        }
        Ok(sim)
    }

    /// A new replica id and an empty store for it on a clock of its own, set to now (the seed's draws, in order).
    fn new_store(&mut self) -> (ReplicaId, Arc<CoarseClock>, CounterStore) {
        let replica_id = ReplicaId::new(self.rng.next_u64());
        let clock = Arc::new(CoarseClock::new(UnixMs::new(self.now_ms)));
        let store = CounterStore::new(options::store_options(
            &self.options.config,
            replica_id,
            self.rng.next_u64(),
            Arc::clone(&clock),
        ));
        (replica_id, clock, store)
    }

    /// A fresh process for node `i`: new replica id, empty store, its machine started now.
    fn boot(
        &mut self,
        node_id: String,
        addr: SocketAddr,
        incarnation: u32,
    ) -> Result<SimNode, SimError> {
        let (replica_id, clock, store) = self.new_store();
        let traffic = TrafficRecorder::new(store.clone(), crate::node::TRAFFIC_WINDOW);
        let membership =
            options::membership_options(&self.options.config, self.options.membership.as_ref());
        let seeds = MachineSeeds {
            replicator: self.rng.next_u64(),
            membership: self.rng.next_u64(),
            state: self.rng.next_u64(),
        };
        let setup = MachineSetup {
            identity: MachineIdentity {
                node_id: node_id.clone(),
                replica_id,
                advertised: addr,
            },
            membership,
            seeds,
        };
        let mut machine = options::build_machine(
            &self.options.config,
            setup,
            &store,
            traffic,
            Box::new(NoProbe),
            self.now_ms,
        )?;
        if self.options.record_events {
            machine.record_events();
        }
        Ok(SimNode {
            node_id,
            addr,
            incarnation,
            run: RunState::Running,
            machine: Some(machine),
            store,
            clock,
            replica_id,
            timer_at: u64::MAX,
            traffic: NodeTraffic::default(),
            deferred: Vec::new(),
            deferred_downs: Vec::new(),
            inbox: None,
            refusals: 0,
            events: Vec::new(),
        })
    }

    // ---- Reads.

    /// Virtual now (Unix ms).
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Number of nodes (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True without nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The generator of the run, for scenario drivers that need randomness replayed by the same seed.
    pub fn rng(&mut self) -> &mut SimRng {
        &mut self.rng
    }

    /// Node `i`'s counter store (of its current life).
    pub fn store(&self, i: usize) -> &CounterStore {
        &self.nodes[i].store
    }

    /// Node `i`'s node id.
    pub fn node_id(&self, i: usize) -> &str {
        &self.nodes[i].node_id
    }

    /// Node `i`'s current replica id.
    pub fn replica_id(&self, i: usize) -> ReplicaId {
        self.nodes[i].replica_id
    }

    /// Node `i`'s address.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].addr
    }

    /// Node `i`'s membership plane (of its current life; `None` when down), for what [`Simulation::view`]
    /// does not say: identities, refusals, health, cluster health, local health, counters.
    pub fn membership(&self, i: usize) -> Option<&Membership> {
        self.nodes[i].machine.as_ref().map(NodeMachine::membership)
    }

    /// Node `i`'s membership events with the virtual time each was handled, over all its lives, oldest
    /// first (empty unless [`SimOptions::record_events`]).
    pub fn events(&self, i: usize) -> &[(u64, MembershipEvent)] {
        &self.nodes[i].events
    }

    /// Whether node `i` runs, is paused or is down.
    pub fn run_state(&self, i: usize) -> RunState {
        self.nodes[i].run
    }

    /// Node `i`'s replication counters (default when down).
    pub fn replication_stats(&self, i: usize) -> ReplicationStats {
        self.nodes[i]
            .machine
            .as_ref()
            .map(|m| m.replication_stats().clone())
            .unwrap_or_default()
    }

    /// Node `i`'s link to node `j`'s current life: whether the replication planes use it (in a grouped layout,
    /// the members node `i` replicates with and so checks the data plane of) and its replication counters
    /// (`None`: no link, or node `i` down). A scan of node `i`'s links.
    pub fn peer_stats(&self, i: usize, j: usize) -> Option<(bool, PeerStats)> {
        let replica = self.nodes[j].replica_id;
        self.nodes[i]
            .machine
            .as_ref()?
            .peers()
            .find(|(_, hello, _, _)| hello.replica_id == replica)
            .map(|(_, _, replicating, stats)| (replicating, stats))
    }

    /// Number of links node `i` holds.
    pub fn links(&self, i: usize) -> usize {
        self.nodes[i]
            .machine
            .as_ref()
            .map_or(0, |m| m.peers().count())
    }

    /// How node `i` sees node `j`'s current life: `None` when it does not know it.
    pub fn view(&self, i: usize, j: usize) -> Option<MemberState> {
        let machine = self.nodes[i].machine.as_ref()?;
        // A map lookup by address (never a scan of the member table: `converged` asks for every pair).
        let (id, state) = machine.membership().state_of(self.nodes[j].addr)?;
        (id.replica_id() == self.nodes[j].replica_id).then_some(state)
    }

    /// Node `i`'s health-record table: `(records held, link entries over them)` (zeros when down).
    pub fn health_records(&self, i: usize) -> (usize, usize) {
        self.nodes[i].machine.as_ref().map_or((0, 0), |m| {
            let records = m.state().records();
            (records.len(), records.link_entries())
        })
    }

    /// The value of config entry `key` on node `i` (`None`: absent, or the node is down).
    pub fn config(&self, i: usize, key: &str) -> Option<Bytes> {
        self.nodes[i]
            .machine
            .as_ref()?
            .state()
            .map()
            .get(key)
            .cloned()
    }

    /// Writes config entry `key` through node `i` (running) at the current virtual time.
    pub fn put_config(&mut self, i: usize, key: &str, value: &[u8]) -> Result<(), SimError> {
        let now = self.now_ms;
        let node = self.nodes.get_mut(i).ok_or(SimError::NoNode(i))?;
        let running = node.run == RunState::Running;
        let machine = node
            .machine
            .as_mut()
            .filter(|_| running)
            .ok_or(SimError::NotRunning(i))?;
        machine
            .put_config(key, Bytes::copy_from_slice(value), now)
            .map_err(|e| SimError::Config(e.to_string()))?;
        self.touch(i);
        Ok(())
    }

    /// Membership-only links node `i`'s machine closed for idleness (this life).
    pub fn idle_links_closed(&self, i: usize) -> u64 {
        self.nodes[i]
            .machine
            .as_ref()
            .map_or(0, NodeMachine::idle_links_closed)
    }

    /// Node `i`'s replication group and whether it publishes the group's aggregate, in a grouped layout
    /// (`None`: full mesh, no layout yet, or down).
    pub fn group(&self, i: usize) -> Option<(u32, bool)> {
        let topology = self.nodes[i].machine.as_ref()?.topology()?;
        let group = topology.own_group()?.group();
        Some((group, topology.is_publisher()))
    }

    /// Members node `i` counts healthy, itself included (0 when down).
    pub fn healthy_members(&self, i: usize) -> usize {
        self.nodes[i]
            .machine
            .as_ref()
            .map_or(0, |m| m.membership().members().healthy_count())
    }

    /// Whether node `i` counts itself joined to a cluster.
    pub fn is_joined(&self, i: usize) -> bool {
        self.nodes[i]
            .machine
            .as_ref()
            .is_some_and(|m| m.membership().is_joined())
    }

    /// Whether every running node sees every other running node as alive.
    pub fn converged(&self) -> bool {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].run == RunState::Running)
            .collect();
        running.iter().all(|&i| {
            running
                .iter()
                .all(|&j| i == j || self.view(i, j) == Some(MemberState::Alive))
        })
    }

    /// The network's counters.
    pub fn net_stats(&self) -> NetStats {
        self.stats
    }

    /// Node `i`'s traffic since the start (all its lives).
    pub fn traffic(&self, i: usize) -> NodeTraffic {
        self.nodes[i].traffic
    }

    /// Events processed so far.
    pub fn events_run(&self) -> u64 {
        self.events_run
    }

    /// The completed visibility probes' latencies (increment to visible on every running node), ms.
    pub fn visibility_ms(&self) -> &[u64] {
        &self.visibility_ms
    }

    // ---- Counting.

    /// Adds `n` to `key` in `window` on node `i` (running), recording the exact total the cluster must reach.
    pub fn add(&mut self, i: usize, key: &str, window: Window, n: u64) -> Result<(), CounterError> {
        if self.nodes[i].run == RunState::Down {
            return Ok(());
        }
        self.nodes[i].clock.advance_to(UnixMs::new(self.now_ms));
        self.nodes[i].store.add(key, window, n)?;
        *self.totals.entry((key.to_string(), window)).or_default() += n;
        Ok(())
    }

    /// An acquire of `cost` against `limit` on `key` in `window` on node `i` at the current virtual time, as a
    /// gateway's check: counted when allowed, and then recorded in the exact total as an add is. `None` when
    /// the node is down.
    pub fn acquire(
        &mut self,
        i: usize,
        key: &str,
        window: Window,
        algorithm: Algorithm,
        limit: u64,
        cost: u64,
    ) -> Result<Option<Decision>, CounterError> {
        self.decide_on(i, key, window, cost, |store| {
            store.acquire_by_key(key, window, algorithm, limit, cost)
        })
    }

    /// [`Simulation::acquire`] in the bounded-overshoot mode ([`CounterStore::acquire_bounded`]: fixed window,
    /// admitted only within the node's lease). `None` when the node is down.
    pub fn acquire_bounded(
        &mut self,
        i: usize,
        key: &str,
        window: Window,
        limit: u64,
        cost: u64,
    ) -> Result<Option<Decision>, CounterError> {
        self.decide_on(i, key, window, cost, |store| {
            store.acquire_bounded(key, window, limit, cost)
        })
    }

    /// Runs `acquire` on node `i`'s store at the current virtual time and records `cost` in the exact total of
    /// `(key, window)` when it was allowed. `None` when the node is down.
    fn decide_on(
        &mut self,
        i: usize,
        key: &str,
        window: Window,
        cost: u64,
        acquire: impl FnOnce(&CounterStore) -> Result<Decision, CounterError>,
    ) -> Result<Option<Decision>, CounterError> {
        if self.nodes[i].run == RunState::Down {
            return Ok(None);
        }
        self.nodes[i].clock.advance_to(UnixMs::new(self.now_ms));
        let decision = acquire(&self.nodes[i].store)?;
        if decision.allowed {
            *self.totals.entry((key.to_string(), window)).or_default() += cost;
        }
        Ok(Some(decision))
    }

    /// The exact total of every [`Simulation::add`] of `key`.
    pub fn total(&self, key: &str, window: Window) -> u64 {
        self.totals
            .get(&(key.to_string(), window))
            .copied()
            .unwrap_or(0)
    }

    /// The `(node, key, seen, exact)` of every running node whose global count of a key added through
    /// [`Simulation::add`] differs from the exact total.
    pub fn diverged(&self) -> Vec<(usize, String, u64, u64)> {
        let mut out = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if node.run != RunState::Running {
                continue;
            }
            for ((key, window), &total) in &self.totals {
                let seen = node.store.global(key, *window);
                if seen != total {
                    out.push((i, key.clone(), seen, total));
                }
            }
        }
        out.sort();
        out
    }

    /// Starts a visibility probe: one increment of a fresh key on node `i`, timed until every node running now
    /// sees it (see [`Simulation::visibility_ms`]).
    pub fn probe(&mut self, i: usize) -> Result<(), CounterError> {
        let key = format!("probe/{}", self.visibility_ms.len() + self.probes.len());
        let window = self.probe_window;
        self.add(i, &key, window, 1)?;
        let seen: Vec<bool> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(j, n)| j == i || n.run != RunState::Running)
            .collect();
        let missing = seen.iter().filter(|s| !**s).count();
        if missing == 0 {
            self.visibility_ms.push(0);
            return Ok(());
        }
        self.probes.push(Probe {
            key,
            window,
            started_ms: self.now_ms,
            seen,
            missing,
        });
        Ok(())
    }

    // ---- Faults.

    /// Sets the datagram loss probability.
    pub fn set_loss(&mut self, loss: f64) {
        self.options.net.loss = loss;
    }

    /// Splits the nodes: `group_of(i)` names node i's side; only nodes of the same group can talk. Links
    /// across close after the idle timeout unless the partition heals first.
    pub fn partition(&mut self, group_of: impl Fn(usize) -> usize) {
        for (i, g) in self.groups.iter_mut().enumerate() {
            *g = group_of(i);
        }
        self.check_links_of(None);
    }

    /// Heals every partition.
    pub fn heal(&mut self) {
        self.groups.iter_mut().for_each(|g| *g = 0);
    }

    /// Stalls (`true`) or frees (`false`) the streams between nodes `i` and `j`, both directions: while
    /// stalled, every stream frame between them (data-plane checks, anti-entropy, state transfer, deltas too
    /// large for a datagram) is dropped and counted in [`NetStats::stalled`]; datagrams (membership, deltas)
    /// still pass. Frames dropped meanwhile are not delivered later (the peers' own retries and timeouts
    /// recover, as after a stream reset). Links stay up.
    pub fn stall_streams(&mut self, i: usize, j: usize, stalled: bool) {
        let pair = (i.min(j), i.max(j));
        if stalled {
            self.stalled.insert(pair);
        } else {
            self.stalled.remove(&pair);
        }
    }

    /// Starts one more process with node id `node_id` at the next free address (index [`Simulation::len`]),
    /// started now with a fresh replica id and an empty store; it is told the seed nodes as join targets like
    /// every node. Returns its index. With the node id of a member it is a second process of that node: a
    /// duplicate while the member is live, or a restart at a new address once it is down.
    pub fn add_node(&mut self, node_id: &str) -> Result<usize, SimError> {
        let i = self.nodes.len();
        let addr = sim_addr(i);
        let node = self.boot(node_id.to_string(), addr, 0)?;
        self.nodes.push(node);
        self.by_addr.insert(addr, i);
        self.groups.push(0);
        self.trust.push(0);
        self.push(
            self.now_ms,
            Ev::Discover {
                node: i,
                incarnation: 0,
            },
        );
        self.touch(i);
        Ok(i)
    }

    /// Kills node `i`: no flush, no goodbye; its peers' links close after the idle timeout.
    pub fn crash(&mut self, i: usize) {
        self.nodes[i].run = RunState::Down;
        self.nodes[i].machine = None;
        self.nodes[i].timer_at = u64::MAX;
        self.nodes[i].deferred.clear();
        self.nodes[i].deferred_downs.clear();
        for end in self.ends.iter_mut() {
            if end.node == i {
                end.open = false;
            }
        }
        self.check_links_of(Some(i));
    }

    /// Stops node `i` as `shutdown` does: the last values flushed and the leave announced on streams, then
    /// its links closed.
    pub fn stop(&mut self, i: usize) {
        if self.nodes[i].run != RunState::Running {
            self.crash(i);
            return;
        }
        self.nodes[i].clock.advance_to(UnixMs::new(self.now_ms));
        let now = self.now_ms;
        let Some(machine) = self.nodes[i].machine.as_mut() else {
            return;
        };
        // As the driver's shutdown: the final flush first, confirmed by the peers; only then the leave (a leave
        // that overtook the flush would make the peers drop the link before the last values arrive).
        let flush = machine.final_flush(now);
        let leave = machine.leave(now);
        let links = machine.link_ids();
        let mut flushed = now;
        for (link, frame) in flush {
            if let Some(at) = self.transmit(i, link, frame, true, now) {
                flushed = flushed.max(at);
            }
        }
        // The confirmations travel back before the leave goes out.
        let (_, hi) = self.options.net.latency_ms;
        let leave_at = if flushed > now { flushed + hi } else { now };
        let mut last = leave_at;
        for (link, frame) in leave {
            if let Some(at) = self.transmit(i, link, frame, true, leave_at) {
                last = last.max(at);
            }
        }
        self.drain_events(i);
        self.crash(i);
        // The close reaches each peer after the last frame it was sent.
        for link in links {
            if let Some(peer) = self.ends.get(&link).map(|e| e.peer) {
                let reason = CloseReason::ClosedByPeer("shutdown".to_string());
                self.push(last + 1, Ev::LinkDown { end: peer, reason });
            }
        }
    }

    /// Restarts node `i` (down) as a new process: same node id and address, new replica id, empty store.
    pub fn restart(&mut self, i: usize) -> Result<(), SimError> {
        if self.nodes[i].run != RunState::Down {
            self.crash(i);
        }
        let (node_id, addr) = (self.nodes[i].node_id.clone(), self.nodes[i].addr);
        let incarnation = self.nodes[i].incarnation + 1;
        let traffic = self.nodes[i].traffic;
        let mut node = self.boot(node_id, addr, incarnation)?;
        node.traffic = traffic;
        node.refusals = self.nodes[i].refusals;
        node.events = std::mem::take(&mut self.nodes[i].events);
        self.nodes[i] = node;
        self.push(
            self.now_ms,
            Ev::Discover {
                node: i,
                incarnation,
            },
        );
        self.touch(i);
        Ok(())
    }

    /// Pauses node `i` for `ms` (a stopped VM, a long GC): it processes nothing meanwhile, then catches up.
    pub fn pause(&mut self, i: usize, ms: u64) {
        if self.nodes[i].run != RunState::Running {
            return;
        }
        let until_ms = self.now_ms + ms;
        self.nodes[i].run = RunState::Paused { until_ms };
        let incarnation = self.nodes[i].incarnation;
        self.push(
            until_ms,
            Ev::Resume {
                node: i,
                incarnation,
            },
        );
        self.check_links_of(Some(i));
    }

    // ---- Running.

    /// Runs until virtual time `until_ms`, processing every event due before it, in time order.
    pub fn run_until(&mut self, until_ms: u64) {
        while let Some((at, ev)) = self.queue.pop_due(until_ms) {
            self.now_ms = self.now_ms.max(at);
            self.events_run += 1;
            self.run_event(at, ev);
        }
        self.now_ms = self.now_ms.max(until_ms);
        self.queue.advance_to(self.now_ms);
    }

    /// Runs for `ms` of virtual time.
    pub fn run_for(&mut self, ms: u64) {
        self.run_until(self.now_ms + ms);
    }

    /// Runs in steps of `step_ms` until `done` holds or `limit_ms` passed; returns when it held.
    pub fn run_until_true(
        &mut self,
        step_ms: u64,
        limit_ms: u64,
        mut done: impl FnMut(&Simulation) -> bool,
    ) -> Option<u64> {
        let start = self.now_ms;
        while self.now_ms < start + limit_ms {
            if done(self) {
                return Some(self.now_ms);
            }
            self.run_for(step_ms);
        }
        done(self).then_some(self.now_ms)
    }

    fn run_event(&mut self, at: u64, ev: Ev) {
        match ev {
            Ev::Timer { node, incarnation } => {
                let n = &mut self.nodes[node];
                if n.incarnation != incarnation || n.timer_at != at || n.run != RunState::Running {
                    return; // a stale wake-up
                }
                n.timer_at = u64::MAX;
                n.clock.advance_to(UnixMs::new(self.now_ms));
                if let Some(machine) = n.machine.as_mut() {
                    machine.handle_timeout(self.now_ms);
                }
                self.touch(node);
            }
            Ev::Deliver {
                end,
                frame,
                reliable,
            } => self.deliver(end, frame, reliable),
            Ev::LinkUp { end, up } => {
                let Some(e) = self.ends.get(&end) else {
                    return;
                };
                let (node, incarnation) = (e.node, e.incarnation);
                if !e.open || !self.alive(node, incarnation) {
                    return;
                }
                let n = &mut self.nodes[node];
                n.clock.advance_to(UnixMs::new(self.now_ms));
                let event = LinkEvent::Up(up);
                self.inform(node, event);
            }
            Ev::DialFailed {
                node,
                incarnation,
                addr,
                error,
            } => {
                if !self.alive(node, incarnation) {
                    return;
                }
                self.stats.dials_failed += 1;
                self.inform(node, LinkEvent::DialFailed { addr, error });
            }
            Ev::LinkDown { end, reason } => self.close_end(end, reason),
            Ev::IdleCheck { end } => {
                if self.ends.get(&end).is_some_and(|e| e.open) && !self.link_alive(end) {
                    self.close_end(end, CloseReason::TimedOut);
                }
            }
            Ev::Resume { node, incarnation } => {
                if self.nodes[node].incarnation != incarnation
                    || !matches!(self.nodes[node].run, RunState::Paused { .. })
                {
                    return;
                }
                self.nodes[node].run = RunState::Running;
                let now = self.now_ms;
                self.nodes[node].clock.advance_to(UnixMs::new(now));
                let downs = std::mem::take(&mut self.nodes[node].deferred_downs);
                let frames = std::mem::take(&mut self.nodes[node].deferred);
                let downs = downs
                    .into_iter()
                    .map(|(link, reason)| LinkEvent::Down { link, reason });
                let frames = frames.into_iter().map(|(link, frame)| LinkEvent::Frame {
                    link,
                    frame,
                    channel: Channel::Stream,
                });
                let n = &mut self.nodes[node];
                for event in downs.chain(frames) {
                    if let Some(machine) = n.machine.as_mut() {
                        machine.handle_link_event(event, now);
                    } else if let Some(inbox) = n.inbox.as_mut() {
                        inbox.push_back(event);
                    }
                }
                self.touch(node);
            }
            Ev::Discover { node, incarnation } => {
                if self.nodes[node].incarnation != incarnation
                    || self.nodes[node].run == RunState::Down
                {
                    return;
                }
                let next = self.now_ms + self.options.discovery_interval_ms.max(1);
                self.push(next, Ev::Discover { node, incarnation });
                if self.nodes[node].run != RunState::Running {
                    return;
                }
                let addrs: Vec<SocketAddr> = (0..self.options.seeds.min(self.nodes.len()))
                    .map(sim_addr)
                    .filter(|a| *a != self.nodes[node].addr)
                    .collect();
                let now = self.now_ms;
                let n = &mut self.nodes[node];
                n.clock.advance_to(UnixMs::new(now));
                if let Some(machine) = n.machine.as_mut() {
                    machine.handle_discovered(addrs, now);
                }
                self.touch(node);
            }
        }
    }

    fn deliver(&mut self, end: LinkId, frame: Bytes, reliable: bool) {
        let Some(e) = self.ends.get(&end) else {
            return;
        };
        let (node, incarnation) = (e.node, e.incarnation);
        if !e.open || self.nodes[node].incarnation != incarnation {
            self.stats.undeliverable += 1;
            return;
        }
        match self.nodes[node].run {
            RunState::Down => {
                self.stats.undeliverable += 1;
                return;
            }
            RunState::Paused { .. } => {
                if reliable {
                    self.nodes[node].deferred.push((end, frame));
                } else {
                    self.stats.undeliverable += 1;
                }
                return;
            }
            RunState::Running => {}
        }
        self.stats.delivered += 1;
        let now = self.now_ms;
        let n = &mut self.nodes[node];
        n.traffic.frames_received += 1;
        n.traffic.bytes_received += frame.len() as u64;
        n.clock.advance_to(UnixMs::new(now));
        if let Some(machine) = n.machine.as_mut() {
            machine.handle_frame(end, &frame, now);
        } else if let Some(inbox) = n.inbox.as_mut() {
            let channel = if reliable {
                Channel::Stream
            } else {
                Channel::Datagram
            };
            inbox.push_back(LinkEvent::Frame {
                link: end,
                frame: frame.clone(),
                channel,
            });
        }
        // Only counter frames can make a probe visible; the header is read only while probes wait.
        if !self.probes.is_empty()
            && wire::split_header(&frame)
                .is_ok_and(|(kind, _)| kind.plane() == wire::Plane::Counters)
        {
            self.check_probes(node);
        }
        self.touch(node);
    }

    fn check_probes(&mut self, node: usize) {
        let now = self.now_ms;
        let store = &self.nodes[node].store;
        let mut done = Vec::new();
        for (p, probe) in self.probes.iter_mut().enumerate() {
            if !probe.seen[node] && store.global(&probe.key, probe.window) >= 1 {
                probe.seen[node] = true;
                probe.missing -= 1;
                if probe.missing == 0 {
                    done.push(p);
                }
            }
        }
        for p in done.into_iter().rev() {
            let probe = self.probes.swap_remove(p);
            self.visibility_ms.push(now - probe.started_ms);
        }
    }

    /// Node `i` is running in life `incarnation`.
    fn alive(&self, i: usize, incarnation: u32) -> bool {
        self.nodes[i].incarnation == incarnation && self.nodes[i].run == RunState::Running
    }

    /// Both ends of the link of `end` are open, their nodes running in the same life and on the same side.
    fn link_alive(&self, end: LinkId) -> bool {
        let Some(e) = self.ends.get(&end) else {
            return false;
        };
        let Some(p) = self.ends.get(&e.peer) else {
            return false;
        };
        e.open
            && p.open
            && self.alive(e.node, e.incarnation)
            && self.alive(p.node, p.incarnation)
            && self.groups[e.node] == self.groups[p.node]
    }

    /// Schedules an idle check, one idle timeout from now, of every open link end of node `i` or of its peers
    /// (`None`: of every node).
    fn check_links_of(&mut self, node: Option<usize>) {
        let at = self.now_ms + self.options.net.idle_timeout_ms;
        let touches = |e: &End| {
            node.is_none_or(|i| e.node == i || self.ends.get(&e.peer).is_some_and(|p| p.node == i))
        };
        let ends: Vec<LinkId> = self
            .ends
            .ids()
            .filter(|(_, e)| e.open && touches(e))
            .map(|(id, _)| id)
            .collect();
        for end in ends {
            self.push(at, Ev::IdleCheck { end });
        }
    }

    /// Closes `end` and tells its node (now, or at resume when paused).
    fn close_end(&mut self, end: LinkId, reason: CloseReason) {
        let Some(e) = self.ends.get_mut(&end) else {
            return;
        };
        if !e.open {
            return;
        }
        e.open = false;
        let (node, incarnation) = (e.node, e.incarnation);
        self.stats.links_closed += 1;
        if self.nodes[node].incarnation != incarnation {
            return;
        }
        match self.nodes[node].run {
            RunState::Running => {
                self.inform(node, LinkEvent::Down { link: end, reason });
            }
            RunState::Paused { .. } => self.nodes[node].deferred_downs.push((end, reason)),
            RunState::Down => {}
        }
    }

    /// Hands a link event to node `i` (running): to its machine, or to a bare endpoint's inbox.
    fn inform(&mut self, i: usize, event: LinkEvent) {
        let now = self.now_ms;
        let n = &mut self.nodes[i];
        n.clock.advance_to(UnixMs::new(now));
        if let Some(machine) = n.machine.as_mut() {
            machine.handle_link_event(event, now);
        } else if let Some(inbox) = n.inbox.as_mut() {
            inbox.push_back(event);
        }
        self.touch(i);
    }

    /// Sends `frame` from node `i` on `link` as the contract says: on a stream when asked or when it does not
    /// fit a datagram.
    fn send_on(&mut self, i: usize, link: LinkId, channel: Channel, frame: Bytes) {
        let reliable = travels_on_stream(channel, frame.len(), Some(self.options.net.max_datagram));
        self.transmit(i, link, frame, reliable, self.now_ms);
    }

    /// Closes link end `link` here; its peer learns it, with `reason`, one latency later.
    fn close_link(&mut self, link: LinkId, reason: &str) {
        if let Some(e) = self.ends.get_mut(&link)
            && e.open
        {
            e.open = false;
            self.stats.links_closed += 1;
            let peer = e.peer;
            let (lo, hi) = self.options.net.latency_ms;
            let at = self.now_ms + self.rng.range(lo, hi.max(lo));
            let reason = CloseReason::ClosedByPeer(reason.to_string());
            self.push(at, Ev::LinkDown { end: peer, reason });
        }
    }

    /// Moves node `i`'s recorded membership events to its log (nothing unless recording).
    fn drain_events(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if let Some(machine) = n.machine.as_mut() {
            machine.drain_recorded(&mut n.events);
        }
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.queue.push(at, ev);
    }

    /// Carries out what node `i`'s machine asked for and re-arms its wake-up.
    fn touch(&mut self, i: usize) {
        loop {
            let Some(action) = self.nodes[i]
                .machine
                .as_mut()
                .and_then(NodeMachine::poll_action)
            else {
                break;
            };
            match action {
                Action::Dial(addr) => self.dial(i, addr),
                Action::Send {
                    link,
                    channel,
                    frame,
                } => {
                    self.send_on(i, link, channel, frame);
                }
                Action::Close { link, reason } => self.close_link(link, reason),
            }
        }
        self.drain_events(i);
        let n = &mut self.nodes[i];
        let Some(machine) = n.machine.as_ref() else {
            return;
        };
        let due = machine.poll_timeout().max(self.now_ms);
        if due != n.timer_at {
            n.timer_at = due;
            let incarnation = n.incarnation;
            self.push(
                due,
                Ev::Timer {
                    node: i,
                    incarnation,
                },
            );
        }
    }

    /// Sends `frame` from node `i` on its link end `link`, not before `not_before_ms`; returns when it arrives
    /// (the last copy), if it does.
    fn transmit(
        &mut self,
        i: usize,
        link: LinkId,
        frame: Bytes,
        reliable: bool,
        not_before_ms: u64,
    ) -> Option<u64> {
        let n = &mut self.nodes[i];
        n.traffic.frames_sent += 1;
        n.traffic.bytes_sent += frame.len() as u64;
        self.stats.count_sent(&frame);
        let (peer, peer_node) = {
            let e = self.ends.get(&link)?;
            if !e.open {
                self.stats.undeliverable += 1;
                return None;
            }
            let p = self.ends.get(&e.peer)?;
            (e.peer, p.node)
        };
        if self.groups[i] != self.groups[peer_node] {
            self.stats.partitioned += 1;
            return None;
        }
        if reliable
            && !self.stalled.is_empty()
            && self.stalled.contains(&(i.min(peer_node), i.max(peer_node)))
        {
            self.stats.stalled += 1;
            return None;
        }
        let now = self.now_ms.max(not_before_ms);
        let e = self.ends.get_mut(&link)?;
        let arrivals = network::schedule(
            &self.options.net,
            &mut self.rng,
            &mut self.stats,
            now,
            &mut e.busy_until_ms,
            frame.len(),
            reliable,
        );
        let last = arrivals.iter().flatten().copied().max();
        for at in arrivals.into_iter().flatten() {
            self.push(
                at,
                Ev::Deliver {
                    end: peer,
                    frame: frame.clone(),
                    reliable,
                },
            );
        }
        last
    }

    /// Node `i` dials `addr`: a link at both ends 1.5 round trips later, or a failure after the connect
    /// timeout (nobody there, down, paused or across a partition).
    fn dial(&mut self, i: usize, addr: SocketAddr) {
        let incarnation = self.nodes[i].incarnation;
        if addr == self.nodes[i].addr {
            self.push(
                self.now_ms,
                Ev::DialFailed {
                    node: i,
                    incarnation,
                    addr,
                    error: DialError::SelfLink,
                },
            );
            return;
        }
        let target = self.by_addr.get(&addr).copied();
        let reachable = target.filter(|&j| {
            self.nodes[j].run == RunState::Running && self.groups[i] == self.groups[j]
        });
        let Some(j) = reachable else {
            self.push(
                self.now_ms + self.options.net.connect_timeout_ms,
                Ev::DialFailed {
                    node: i,
                    incarnation,
                    addr,
                    error: DialError::Timeout(format!(
                        "no handshake within {} ms",
                        self.options.net.connect_timeout_ms
                    )),
                },
            );
            return;
        };
        if self.trust[i] != self.trust[j] {
            // As a TLS handshake with a certificate of another cluster CA: one round trip, then both ends
            // refuse (and count it); no link at either end.
            let (lo, hi) = self.options.net.latency_ms;
            let at = self.now_ms + 2 * self.rng.range(lo, hi.max(lo));
            self.nodes[i].refusals += 1;
            self.nodes[j].refusals += 1;
            self.stats.dials_refused += 1;
            let error = DialError::Refused(format!(
                "{addr}: the peer's certificate is not signed by this cluster's CA (trust domain {} here, {} \
                 there)",
                self.trust[i], self.trust[j]
            ));
            self.push(
                at,
                Ev::DialFailed {
                    node: i,
                    incarnation,
                    addr,
                    error,
                },
            );
            return;
        }
        let theirs_incarnation = self.nodes[j].incarnation;
        let (ours, theirs) = self
            .ends
            .open_pair((i, incarnation), (j, theirs_incarnation));
        self.stats.links_opened += 1;
        let nonce = self.rng.next_u64();
        let (lo, hi) = self.options.net.latency_ms;
        let at = self.now_ms + 3 * self.rng.range(lo, hi.max(lo));
        let hello = |n: &SimNode, link_nonce: u64| PeerHello {
            node_id: n.node_id.clone(),
            replica_id: n.replica_id,
            capabilities: capabilities::REPLICATION_V1,
            gossip_addr: Some(n.addr),
            link_nonce,
        };
        let max_datagram = Some(self.options.net.max_datagram);
        let at_dialer = LinkUp {
            link: ours,
            hello: hello(&self.nodes[j], 0),
            dialed_addr: Some(addr),
            link_nonce: nonce,
            remote: self.nodes[j].addr,
            max_datagram,
        };
        let at_acceptor = LinkUp {
            link: theirs,
            hello: hello(&self.nodes[i], nonce),
            dialed_addr: None,
            link_nonce: nonce,
            remote: self.nodes[i].addr,
            max_datagram,
        };
        self.push(
            at,
            Ev::LinkUp {
                end: theirs,
                up: Box::new(at_acceptor),
            },
        );
        self.push(
            at,
            Ev::LinkUp {
                end: ours,
                up: Box::new(at_dialer),
            },
        );
    }

    /// The traffic, visibility and network figures of the run so far, over `seconds` of virtual time.
    pub fn report(&self, seconds: f64) -> SimReport {
        report::build(self, seconds)
    }
}
