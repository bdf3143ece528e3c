//! [`SimEndpoint`]: a bare endpoint of the simulator's in-memory network, the in-memory implementation of the
//! [`LinkLayer`] contract (as chitchat keeps an in-memory transport beside its real one).
//!
//! Guarantees: those of [`crate::node::link_layer`], in virtual time, with the same code the simulated nodes'
//! links use (their dials, deliveries, closes and idle checks): an endpoint is a simulated node without a
//! machine, whose link events wait in an inbox for [`LinkLayer::poll_event`]. Trust is a trust domain (a
//! number standing for a cluster CA): a dial between two domains is refused after one round trip, counted at
//! both ends, and no link exists at either end. Time passes only when the simulation runs
//! ([`Simulation::run_for`]); a peer goes silent with [`Simulation::crash`] or [`Simulation::pause`] of its
//! [`SimEndpoint::index`]. The endpoint shares its simulation through an `Rc<RefCell<…>>`: one thread, and no
//! borrow of the simulation held while calling the endpoint.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;

use super::{NodeTraffic, RunState, SimNode, Simulation, sim_addr};
use crate::node::link_layer::{LinkEvent, LinkId, LinkLayer};
use crate::replication::Channel;

/// One endpoint of a simulation's network, without a node behind it. See the module docs.
pub struct SimEndpoint {
    sim: Rc<RefCell<Simulation>>,
    node: usize,
}

impl std::fmt::Debug for SimEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimEndpoint")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl SimEndpoint {
    /// Adds an endpoint in trust domain `trust_domain` to `sim` (simulated nodes are in domain 0), at the
    /// address of the next node index.
    pub fn new(sim: &Rc<RefCell<Simulation>>, trust_domain: u64) -> SimEndpoint {
        let node = sim.borrow_mut().add_endpoint(trust_domain);
        SimEndpoint {
            sim: Rc::clone(sim),
            node,
        }
    }

    /// Its index among the simulation's nodes (for [`Simulation::crash`] and [`Simulation::pause`]).
    pub fn index(&self) -> usize {
        self.node
    }

    /// Whether `link` is an open link end of this endpoint's current life.
    fn owns(sim: &Simulation, node: usize, link: LinkId) -> bool {
        sim.ends.get(&link).is_some_and(|e| {
            e.open && e.node == node && e.incarnation == sim.nodes[node].incarnation
        })
    }
}

impl Simulation {
    /// A node without a machine in trust domain `trust_domain`: its link events go to an inbox.
    fn add_endpoint(&mut self, trust_domain: u64) -> usize {
        let i = self.nodes.len();
        let addr = sim_addr(i);
        let (replica_id, clock, store) = self.new_store();
        self.nodes.push(SimNode {
            node_id: format!("endpoint-{i}"),
            addr,
            incarnation: 0,
            run: RunState::Running,
            machine: None,
            store,
            clock,
            replica_id,
            timer_at: u64::MAX,
            traffic: NodeTraffic::default(),
            deferred: Vec::new(),
            deferred_downs: Vec::new(),
            inbox: Some(VecDeque::new()),
            refusals: 0,
            events: Vec::new(),
        });
        self.by_addr.insert(addr, i);
        self.groups.push(0);
        self.trust.push(trust_domain);
        i
    }
}

impl LinkLayer for SimEndpoint {
    fn local_addr(&self) -> SocketAddr {
        self.sim.borrow().nodes[self.node].addr
    }

    fn dial(&mut self, addr: SocketAddr) {
        self.sim.borrow_mut().dial(self.node, addr);
    }

    fn send(&mut self, link: LinkId, channel: Channel, frame: Bytes) {
        let mut sim = self.sim.borrow_mut();
        if SimEndpoint::owns(&sim, self.node, link) {
            sim.send_on(self.node, link, channel, frame);
        }
    }

    fn close(&mut self, link: LinkId, reason: &str) {
        let mut sim = self.sim.borrow_mut();
        if SimEndpoint::owns(&sim, self.node, link) {
            sim.close_link(link, reason);
        }
    }

    fn max_datagram(&self, link: LinkId) -> Option<usize> {
        let sim = self.sim.borrow();
        SimEndpoint::owns(&sim, self.node, link).then_some(sim.options.net.max_datagram)
    }

    fn refusals(&self) -> u64 {
        self.sim.borrow().nodes[self.node].refusals
    }

    fn poll_event(&mut self) -> Option<LinkEvent> {
        self.sim.borrow_mut().nodes[self.node]
            .inbox
            .as_mut()?
            .pop_front()
    }
}
