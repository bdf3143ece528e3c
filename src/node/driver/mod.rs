//! The driver task: a thin loop that moves bytes and timers between the node's links and its
//! [`NodeMachine`] (every decision lives there, sans-IO), and publishes what readers see.
//!
//! Guarantees:
//! - One task owns the machine, so it needs no lock; links, timers and shutdown reach it as [`Event`]s on a
//!   channel. Readers elsewhere see the member table through its `arc-swap` snapshot, the config map and the
//!   health records through [`SharedView`], the links and counters through [`NodeStatus`].
//! - Timers run first whatever the backlog of events, so flushes, checks and SWIM timers never starve.
//! - A frame goes as a datagram when the machine asks for one and it fits; otherwise on a stream, reliably.
//! - On shutdown: the last dirty values are flushed on streams (the peers confirm reading them, bounded), then
//!   the leave is announced on streams (bounded), then the links close.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::events::{ConfigCommand, Event};
use super::link_tasks::{self, HelloSetup};
use super::live_links::LiveLinks;
use super::machine::{Action, LinkId, NodeMachine};
use super::shared_view::SharedView;
use crate::ReplicaId;
use crate::counter::CoarseClock;
use crate::replication::{PeerStats, ReplicationStats};
use crate::sync::LockClean;
use crate::transport::{Link, Transport};

/// A linked peer, as the node reports it.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The peer's node id.
    pub node_id: String,
    /// The peer's replica id (this process start).
    pub replica_id: ReplicaId,
    /// The peer's address as the link sees it.
    pub address: SocketAddr,
    /// The gossip address the peer advertises.
    pub gossip_addr: Option<SocketAddr>,
    /// Round-trip time measured by QUIC.
    pub rtt: Duration,
    /// Whether deltas go to it (false while membership holds it down or left).
    pub replicating: bool,
    /// Replication counters of the link.
    pub stats: PeerStats,
}

/// What the node exposes about its links and replication, refreshed by the driver.
#[derive(Debug, Clone, Default)]
pub struct NodeStatus {
    /// Linked peers.
    pub peers: Vec<PeerInfo>,
    /// Replication counters.
    pub replication: ReplicationStats,
    /// The start-up join is over (joined once, gave up once, or nobody to join): readiness follows it.
    pub join_settled: bool,
    /// Membership packet counters.
    pub membership: crate::membership::MembershipStats,
    /// Shared-state counters.
    pub state: crate::state::StateStats,
}

/// How long the final flush waits for peers to read the last values.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the leave announcement waits for peers to read it.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the shared status is refreshed.
const STATUS_EVERY_MS: u64 = 50;

/// Everything the driver is built from.
pub(crate) struct DriverParts {
    pub(crate) machine: NodeMachine,
    pub(crate) clock: Arc<CoarseClock>,
    pub(crate) events: mpsc::Sender<Event>,
    pub(crate) status: Arc<Mutex<NodeStatus>>,
    pub(crate) transport: Arc<Transport>,
    pub(crate) hello: HelloSetup,
    pub(crate) shared: Arc<SharedView>,
}

pub(crate) struct Driver {
    machine: NodeMachine,
    clock: Arc<CoarseClock>,
    events: mpsc::Sender<Event>,
    status: Arc<Mutex<NodeStatus>>,
    transport: Arc<Transport>,
    hello: HelloSetup,
    shared: Arc<SharedView>,
    links: LiveLinks,
    status_at_ms: u64,
}

impl Driver {
    pub(crate) fn new(parts: DriverParts) -> Driver {
        Driver {
            machine: parts.machine,
            clock: parts.clock,
            events: parts.events.clone(),
            status: parts.status,
            transport: parts.transport,
            hello: parts.hello,
            links: LiveLinks::new(parts.events.clone()),
            shared: parts.shared,
            status_at_ms: 0,
        }
    }

    fn now(&self) -> u64 {
        self.clock.now_unix_ms().get()
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Event>) {
        // The first join attempt and health record go out now.
        self.handle_timeout();
        loop {
            // Timers first, whatever the backlog of events: under a steady stream of frames the sleep below would
            // never be the ready branch, and flushes, checks and SWIM timers would starve.
            if self.machine.poll_timeout() <= self.now() {
                self.handle_timeout();
            }
            let wait = self.machine.poll_timeout().saturating_sub(self.now());
            tokio::select! {
                event = rx.recv() => match event {
                    // The driver holds a sender itself, so the channel never closes while it runs.
                    None => break,
                    Some(Event::Shutdown { done }) => {
                        self.shutdown().await;
                        let _ = done.send(());
                        break;
                    }
                    Some(event) => self.handle(event),
                },
                () = tokio::time::sleep(Duration::from_millis(wait)) => self.handle_timeout(),
            }
            self.after_machine();
            self.publish_status(false);
        }
        // The links' readers stop when `self.links` drops.
    }

    fn handle_timeout(&mut self) {
        // Path MTU discovery changes what a datagram can hold: the machine packs batches for the current size.
        for (id, link) in self.links.iter() {
            self.machine.set_max_datagram(id, link.max_datagram_size());
        }
        let now = self.now();
        self.machine.handle_timeout(now);
        self.after_machine();
    }

    fn handle(&mut self, event: Event) {
        let now = self.now();
        match event {
            Event::Discovered { addrs } => self.machine.handle_discovered(addrs, now),
            Event::Config(command) => {
                let (result, reply) = match command {
                    ConfigCommand::Put { key, value, reply } => {
                        (self.machine.put_config(&key, value, now), reply)
                    }
                    ConfigCommand::Delete { key, reply } => {
                        (self.machine.delete_config(&key, now), reply)
                    }
                };
                // Publish the snapshot and the status before answering, so the writer reads its own write and
                // a refusal is already counted in `/metrics`.
                self.after_machine();
                self.publish_status(true);
                let _ = reply.send(result);
            }
            // Handled by the run loop before it gets here.
            Event::Shutdown { done } => drop(done),
            link_event => {
                // A link that comes or goes changes the peer list at once.
                let changes_peers =
                    matches!(link_event, Event::PeerUp { .. } | Event::PeerDown { .. });
                if let Some(event) = self.links.absorb(link_event) {
                    self.machine.handle_link_event(event, now);
                    if changes_peers {
                        self.after_machine();
                        self.publish_status(true);
                    }
                }
            }
        }
    }

    /// Carries out what the machine asked for, and publishes changes of the config map.
    fn after_machine(&mut self) {
        while let Some(action) = self.machine.poll_action() {
            match action {
                Action::Dial(addr) => link_tasks::spawn_dial(
                    Arc::clone(&self.transport),
                    addr,
                    self.hello.clone(),
                    self.events.clone(),
                ),
                Action::Send {
                    link,
                    channel,
                    frame,
                } => self.links.send(link, channel, frame),
                Action::Close { link, reason } => self.links.close(link, reason),
            }
        }
        let mut changed = false;
        while let Some(change) = self.machine.poll_config_change() {
            changed = true;
            // No subscriber is fine.
            let _ = self.shared.changes.send(change);
        }
        if changed {
            let live = self
                .machine
                .state()
                .map()
                .live()
                .map(|(k, v)| (Arc::from(k), v.clone()))
                .collect();
            self.shared.config.store(Arc::new(live));
        }
    }

    fn publish_status(&mut self, force: bool) {
        let now = self.now();
        if !force && now < self.status_at_ms + STATUS_EVERY_MS {
            return;
        }
        self.status_at_ms = now;
        if self.machine.records_changed() {
            self.shared
                .records
                .store(Arc::new(self.machine.state().records().clone()));
        }
        let peers = self
            .machine
            .peers()
            .filter_map(|(id, hello, replicating, stats)| {
                let link = self.links.link(id)?;
                Some(PeerInfo {
                    node_id: hello.node_id.clone(),
                    replica_id: hello.replica_id,
                    address: link.remote_address(),
                    gossip_addr: hello.gossip_addr,
                    rtt: link.rtt(),
                    replicating,
                    stats,
                })
            })
            .collect();
        let status = NodeStatus {
            peers,
            replication: self.machine.replication_stats().clone(),
            join_settled: self.machine.join_settled(),
            membership: self.machine.membership().stats(),
            state: self.machine.state_stats(),
        };
        *self.status.lock_clean() = status;
    }

    /// Flushes the last values, announces the leave, closes the links.
    async fn shutdown(&mut self) {
        // 1. The last deltas, on streams, confirmed by the peers.
        let now = self.now();
        let flushed = self.machine.final_flush(now);
        let frames = self.on_links(flushed);
        let (confirmed, total) = link_tasks::send_and_confirm(frames, FINAL_FLUSH_TIMEOUT).await;
        if confirmed == total {
            tracing::info!(frames = total, "final flush delivered");
        } else {
            tracing::warn!(
                frames = total,
                confirmed,
                "final flush: some peers did not confirm in time"
            );
        }
        // 2. The leave, so the others mark this node left at once (not suspect).
        let now = self.now();
        let notices = self.machine.leave(now);
        let frames = self.on_links(notices);
        let (confirmed, total) = link_tasks::send_and_confirm(frames, LEAVE_TIMEOUT).await;
        tracing::info!(notices = total, confirmed, "left the cluster");
        self.publish_status(true);
        self.links.close_all("shutdown");
    }

    /// Pairs frames with the live links they go on.
    fn on_links(&self, frames: Vec<(LinkId, Bytes)>) -> Vec<(Link, Bytes)> {
        frames
            .into_iter()
            .filter_map(|(id, frame)| Some((self.links.link(id)?.clone(), frame)))
            .collect()
    }
}
