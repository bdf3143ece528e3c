//! A deterministic simulation of N [`Membership`] instances over an in-memory network, in virtual time.
//!
//! Guarantees:
//! - Deterministic: a run is a function of the seed, the options and the calls made on the simulation. The
//!   seed is printed when the simulation is built; tests read it from `BIFROST_SIM_SEED` to replay.
//! - Virtual time jumps to the next event (a delivery, a node's timer, a join retry); nothing sleeps.
//! - The network gives every payload an independent latency in `latency_ms` (so payloads reorder), drops it
//!   with probability `loss`, and drops everything to, from or between nodes that are killed or in different
//!   partition groups.
//! - Nodes that are not joined retry their join target every `join_retry_ms`, as the node runtime does.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use super::{
    LocalIdentity, LocalState, MemberId, MemberState, Membership, MembershipEvent,
    MembershipOptions,
};

/// Options of a membership simulation.
#[derive(Debug, Clone)]
pub struct MembershipSimOptions {
    /// Number of nodes.
    pub nodes: usize,
    /// Seed of everything random in the run.
    pub seed: u64,
    /// Virtual start time (Unix ms).
    pub start_ms: u64,
    /// One-way latency range, ms (inclusive).
    pub latency_ms: (u64, u64),
    /// Probability that a payload is lost.
    pub loss: f64,
    /// Options of every node.
    pub membership: MembershipOptions,
    /// Join retry period of nodes that are not joined, ms.
    pub join_retry_ms: u64,
    /// Record every node's events (costs memory at 1 000 nodes).
    pub record_events: bool,
}

impl Default for MembershipSimOptions {
    fn default() -> Self {
        MembershipSimOptions {
            nodes: 3,
            seed: 1,
            start_ms: 1_795_514_400_000,
            latency_ms: (1, 10),
            loss: 0.0,
            membership: MembershipOptions {
                health: super::HealthOptions {
                    require_data_plane: false,
                    ..super::HealthOptions::default()
                },
                ..MembershipOptions::default()
            },
            join_retry_ms: 1_000,
            record_events: true,
        }
    }
}

/// Network and protocol counters of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MembershipNetStats {
    /// Payloads sent by live nodes.
    pub sent: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Payloads delivered.
    pub delivered: u64,
    /// Payloads lost to `loss`.
    pub lost: u64,
    /// Payloads dropped by a partition or a killed node.
    pub dropped: u64,
    /// Payloads a receiver refused.
    pub refused: u64,
}

/// One simulated node.
#[derive(Debug)]
pub struct SimMember {
    /// The state machine.
    pub membership: Membership,
    /// Its address.
    pub addr: SocketAddr,
    /// Events with the virtual time they were polled at.
    pub events: Vec<(u64, MembershipEvent)>,
    /// Whether it runs (false: killed, or left).
    pub running: bool,
    join_target: Option<SocketAddr>,
    group: u32,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Deliver {
        to: usize,
        from: usize,
        payload: Vec<u8>,
    },
    Timer {
        node: usize,
    },
    JoinRetry,
}

/// A simulation run.
#[derive(Debug)]
pub struct MembershipSim {
    options: MembershipSimOptions,
    now_ms: u64,
    rng: SmallRng,
    nodes: Vec<SimMember>,
    queue: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
    stats: MembershipNetStats,
}

/// The address of simulated node `i` (loopback range; nothing is ever sent on a real network).
pub fn sim_addr(i: usize) -> SocketAddr {
    let i = i as u32;
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(127, 1, ((i / 250) % 256) as u8, (i % 250 + 1) as u8),
        10101,
    ))
}

/// The node id of simulated node `i`.
pub fn sim_node_id(i: usize) -> String {
    format!("node-{i}")
}

impl MembershipSim {
    /// Builds the nodes (not yet joined) and prints the seed.
    pub fn new(options: MembershipSimOptions) -> MembershipSim {
        eprintln!(
            "membership simulation seed: {} (set BIFROST_SIM_SEED={} to replay)",
            options.seed, options.seed
        );
        let mut rng = SmallRng::seed_from_u64(options.seed);
        let start = options.start_ms;
        let nodes = (0..options.nodes)
            .map(|i| {
                let identity = LocalIdentity::new(sim_node_id(i), rng.random(), sim_addr(i));
                let membership =
                    Membership::new(identity, options.membership.clone(), rng.random(), start)
                        .expect("simulation options are valid");
                SimMember {
                    membership,
                    addr: sim_addr(i),
                    events: Vec::new(),
                    running: true,
                    join_target: None,
                    group: 0,
                }
            })
            .collect();
        let mut sim = MembershipSim {
            now_ms: start,
            rng,
            nodes,
            queue: BinaryHeap::new(),
            seq: 0,
            stats: MembershipNetStats::default(),
            options,
        };
        let first_retry = start + sim.options.join_retry_ms;
        sim.push(first_retry, Ev::JoinRetry);
        for i in 0..sim.nodes.len() {
            sim.collect(i);
        }
        sim
    }

    /// Every node joins `target(i)` (and keeps retrying until joined).
    pub fn join_all(&mut self, target: impl Fn(usize) -> usize) {
        for i in 0..self.nodes.len() {
            let t = target(i);
            if t != i {
                self.join(i, t);
            }
        }
    }

    /// Node `i` joins node `target` (retried until joined).
    pub fn join(&mut self, i: usize, target: usize) {
        let addr = self.nodes[target].addr;
        self.nodes[i].join_target = Some(addr);
        let now = self.now_ms;
        let _ = self.nodes[i].membership.join(addr, now);
        self.collect(i);
    }

    /// Virtual now (Unix ms).
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The options of the run.
    pub fn options(&self) -> &MembershipSimOptions {
        &self.options
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True with no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &SimMember {
        &self.nodes[i]
    }

    /// Node `i`, mutably (call [`MembershipSim::collect`] after driving it by hand).
    pub fn node_mut(&mut self, i: usize) -> &mut SimMember {
        &mut self.nodes[i]
    }

    /// Network counters.
    pub fn stats(&self) -> MembershipNetStats {
        self.stats
    }

    /// Sets the loss probability from now on.
    pub fn set_loss(&mut self, loss: f64) {
        self.options.loss = loss;
    }

    /// Puts node `i` in partition group `group` (nodes only talk within their group).
    pub fn set_group(&mut self, i: usize, group: u32) {
        self.nodes[i].group = group;
    }

    /// Ends every partition.
    pub fn heal(&mut self) {
        for n in &mut self.nodes {
            n.group = 0;
        }
    }

    /// Stops node `i` abruptly (`kill -9`): it neither sends, receives nor runs timers any more.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].running = false;
    }

    /// Node `i` leaves gracefully: its leave payloads go out, then it stops.
    pub fn leave(&mut self, i: usize) {
        let now = self.now_ms;
        let _ = self.nodes[i].membership.leave(now);
        self.collect(i);
        self.nodes[i].running = false;
    }

    /// Restarts node `i` as a new process: same node id and address, new replica id, started now; it joins
    /// `join` (retried until joined).
    pub fn restart(&mut self, i: usize, join: usize) -> u64 {
        let replica_id: u64 = self.rng.random();
        let identity = LocalIdentity::new(sim_node_id(i), replica_id, self.nodes[i].addr);
        let seed = self.rng.random();
        self.nodes[i].membership =
            Membership::new(identity, self.options.membership.clone(), seed, self.now_ms)
                .expect("simulation options are valid");
        self.nodes[i].running = true;
        self.nodes[i].events.clear();
        self.join(i, join);
        replica_id
    }

    /// Starts a new process with node id `node_id` at the next free address (index [`MembershipSim::len`]),
    /// started now with a fresh replica id; it joins `join` (retried until joined). Returns its index. With a
    /// node id already in the cluster it is a second process of that node (a duplicate, or a restart at a new
    /// address).
    pub fn add_node(&mut self, node_id: &str, join: usize) -> usize {
        let i = self.nodes.len();
        let identity = LocalIdentity::new(node_id, self.rng.random(), sim_addr(i));
        let seed = self.rng.random();
        let membership =
            Membership::new(identity, self.options.membership.clone(), seed, self.now_ms)
                .expect("simulation options are valid");
        self.nodes.push(SimMember {
            membership,
            addr: sim_addr(i),
            events: Vec::new(),
            running: true,
            join_target: None,
            group: 0,
        });
        self.collect(i);
        self.join(i, join);
        i
    }

    /// Reports a data-plane check from node `i` about node `j`.
    pub fn record_data_plane(&mut self, i: usize, j: usize, ok: bool, reason: &str) {
        if !self.nodes[i].running {
            return;
        }
        let addr = self.nodes[j].addr;
        let now = self.now_ms;
        let _ = self.nodes[i]
            .membership
            .record_data_plane(addr, ok, reason, now);
        self.collect(i);
    }

    /// Node `i`'s view of node `j`: the identity and state it holds for `j`'s address.
    pub fn view(&self, i: usize, j: usize) -> Option<(&MemberId, MemberState)> {
        self.nodes[i].membership.state_of(self.nodes[j].addr)
    }

    /// True when every running node sees every other running node alive under its current identity.
    pub fn converged(&self) -> bool {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].running)
            .collect();
        running.iter().all(|&i| {
            self.nodes[i].membership.local_state() == LocalState::Joined
                && running.iter().all(|&j| {
                    i == j
                        || self.view(i, j).is_some_and(|(id, st)| {
                            st == MemberState::Alive && id == self.nodes[j].membership.local_id()
                        })
                })
        })
    }

    /// Runs until virtual time `t`.
    pub fn run_until(&mut self, t: u64) {
        while let Some(Reverse((at, _, _))) = self.queue.peek() {
            if *at > t {
                break;
            }
            self.step();
        }
        self.now_ms = self.now_ms.max(t);
    }

    /// Runs for `ms` of virtual time.
    pub fn run_for(&mut self, ms: u64) {
        let t = self.now_ms + ms;
        self.run_until(t);
    }

    /// Runs until `done` holds (checked every `check_every_ms`) or `deadline_ms` passes; returns whether
    /// it held.
    pub fn run_until_true(
        &mut self,
        deadline_ms: u64,
        check_every_ms: u64,
        mut done: impl FnMut(&MembershipSim) -> bool,
    ) -> bool {
        loop {
            if done(self) {
                return true;
            }
            if self.now_ms >= deadline_ms {
                return false;
            }
            let next = (self.now_ms + check_every_ms).min(deadline_ms);
            self.run_until(next);
        }
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, ev)));
    }

    fn step(&mut self) {
        let Some(Reverse((at, _, ev))) = self.queue.pop() else {
            return;
        };
        self.now_ms = self.now_ms.max(at);
        let now = self.now_ms;
        match ev {
            Ev::Deliver { to, from, payload } => {
                // Payloads already sent are delivered even if their sender stopped since (a crash does not
                // recall packets in flight); the receiver must run and share the sender's partition group.
                let (a, b) = (&self.nodes[from], &self.nodes[to]);
                if !b.running || a.group != b.group {
                    self.stats.dropped += 1;
                    return;
                }
                self.stats.delivered += 1;
                let from_addr = a.addr;
                if self.nodes[to]
                    .membership
                    .handle_packet(from_addr, &payload, now)
                    .is_err()
                {
                    self.stats.refused += 1;
                }
                self.collect(to);
            }
            Ev::Timer { node } => {
                if !self.nodes[node].running {
                    return;
                }
                match self.nodes[node].membership.poll_timeout() {
                    Some(due) if due <= now => {
                        self.nodes[node].membership.handle_timeout(now);
                        self.collect(node);
                    }
                    _ => {} // stale entry: the current one is queued too
                }
            }
            Ev::JoinRetry => {
                for i in 0..self.nodes.len() {
                    let n = &mut self.nodes[i];
                    if n.running
                        && let Some(t) = n.join_target
                        && n.membership.local_state() == LocalState::Alone
                    {
                        let _ = n.membership.join(t, now);
                        self.collect(i);
                    }
                }
                let next = now + self.options.join_retry_ms;
                self.push(next, Ev::JoinRetry);
            }
        }
    }

    /// Drains node `i`'s transmits and events and queues its next timer.
    pub fn collect(&mut self, i: usize) {
        let now = self.now_ms;
        while let Some((to_addr, payload)) = self.nodes[i].membership.poll_transmit() {
            self.stats.sent += 1;
            self.stats.bytes += payload.len() as u64;
            let Some(to) = self.index_of(to_addr) else {
                self.stats.dropped += 1;
                continue;
            };
            if self.options.loss > 0.0 && self.rng.random_bool(self.options.loss.min(1.0)) {
                self.stats.lost += 1;
                continue;
            }
            let (lo, hi) = self.options.latency_ms;
            let latency = self.rng.random_range(lo..=hi.max(lo));
            self.push(
                now + latency,
                Ev::Deliver {
                    to,
                    from: i,
                    payload,
                },
            );
        }
        let record = self.options.record_events;
        while let Some(e) = self.nodes[i].membership.poll_event() {
            if record {
                self.nodes[i].events.push((now, e));
            }
        }
        if let Some(due) = self.nodes[i].membership.poll_timeout() {
            self.push(due.max(now), Ev::Timer { node: i });
        }
    }

    fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        let SocketAddr::V4(v4) = addr else {
            return None;
        };
        let [a, b, c, d] = v4.ip().octets();
        if a != 127 || b != 1 || d == 0 {
            return None;
        }
        let i = usize::from(c) * 250 + usize::from(d) - 1;
        (i < self.nodes.len() && self.nodes[i].addr == addr).then_some(i)
    }
}
