//! The driver task: owns the node's [`Replicator`] and connects it to the links.
//!
//! Guarantees:
//! - One task owns the replication state machine, so it needs no lock; links, timers and shutdown reach it as
//!   events on a channel.
//! - One link per peer replica. When two nodes dial each other at once, both keep the link dialed by the node
//!   with the lower replica id and close the other, so they agree without talking.
//! - A frame a peer sends that fails to decode is dropped, counted and logged with the peer's node id and
//!   address; the link stays up.
//! - On shutdown the last dirty values are flushed on streams and the driver waits (bounded) for the peers to
//!   read them before the links close.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::hello::PeerHello;
use crate::counter::CoarseClock;
use crate::replication::{Channel, PeerId, PeerStats, ReplicationStats, Replicator};
use crate::transport::{Link, LinkError};
use crate::wire::MAX_FRAME_BYTES;

/// Inputs of the driver.
pub(crate) enum Event {
    /// A link passed the hello exchange.
    PeerUp {
        link: Link,
        hello: PeerHello,
        dialed_by_us: bool,
    },
    /// A link closed.
    PeerDown { link_id: usize },
    /// A frame arrived on a link.
    Frame { link_id: usize, bytes: Bytes },
    /// Flush, close the links and stop.
    Shutdown { done: oneshot::Sender<()> },
}

/// A linked peer, as the node reports it.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The peer's node id.
    pub node_id: String,
    /// The peer's replica id (this process start).
    pub replica_id: u64,
    /// The peer's gossip address.
    pub address: SocketAddr,
    /// Round-trip time measured by QUIC.
    pub rtt: Duration,
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
}

struct Linked {
    link: Link,
    hello: PeerHello,
    dialed_by_us: bool,
    readers: Vec<JoinHandle<()>>,
}

/// How long the final flush waits for peers to read the last values.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the shared status is refreshed.
const STATUS_EVERY_MS: u64 = 50;

pub(crate) struct Driver {
    pub(crate) replicator: Replicator,
    pub(crate) clock: Arc<CoarseClock>,
    pub(crate) events: mpsc::Sender<Event>,
    pub(crate) status: Arc<Mutex<NodeStatus>>,
    pub(crate) linked_addresses: Arc<Mutex<HashSet<SocketAddr>>>,
    links: HashMap<PeerId, Linked>,
    by_replica: HashMap<u64, PeerId>,
    status_at_ms: u64,
}

impl Driver {
    pub(crate) fn new(
        replicator: Replicator,
        clock: Arc<CoarseClock>,
        events: mpsc::Sender<Event>,
        status: Arc<Mutex<NodeStatus>>,
        linked_addresses: Arc<Mutex<HashSet<SocketAddr>>>,
    ) -> Driver {
        Driver {
            replicator,
            clock,
            events,
            status,
            linked_addresses,
            links: HashMap::new(),
            by_replica: HashMap::new(),
            status_at_ms: 0,
        }
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Event>) {
        loop {
            let now = self.clock.now_unix_ms();
            let wait = self.replicator.poll_timeout().saturating_sub(now);
            tokio::select! {
                event = rx.recv() => match event {
                    None => break,
                    Some(Event::Shutdown { done }) => {
                        self.final_flush().await;
                        let _ = done.send(());
                        break;
                    }
                    Some(event) => self.handle(event),
                },
                () = tokio::time::sleep(Duration::from_millis(wait)) => {
                    self.refresh_datagram_sizes();
                    self.replicator.handle_timeout(self.clock.now_unix_ms());
                }
            }
            self.send_transmits();
            self.publish_status(false);
        }
        for (_, linked) in self.links.drain() {
            linked.readers.iter().for_each(JoinHandle::abort);
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::PeerUp {
                link,
                hello,
                dialed_by_us,
            } => self.peer_up(link, hello, dialed_by_us),
            Event::PeerDown { link_id } => self.peer_down(link_id as PeerId),
            Event::Frame { link_id, bytes } => {
                let peer = link_id as PeerId;
                let Some(linked) = self.links.get(&peer) else {
                    return;
                };
                let now = self.clock.now_unix_ms();
                if let Err(error) = self.replicator.handle_frame(peer, &bytes, now) {
                    tracing::warn!(
                        peer = %linked.hello.node_id,
                        address = %linked.link.remote_address(),
                        %error,
                        bytes = bytes.len(),
                        "dropped an invalid frame from a peer"
                    );
                }
            }
            Event::Shutdown { .. } => {}
        }
    }

    /// The replica id of the node that dialed `linked`.
    fn dialer_replica(&self, linked: &Linked) -> u64 {
        if linked.dialed_by_us {
            self.replicator.replica_id()
        } else {
            linked.hello.replica_id
        }
    }

    fn peer_up(&mut self, link: Link, hello: PeerHello, dialed_by_us: bool) {
        let peer = link.id() as PeerId;
        let candidate = Linked {
            link,
            hello,
            dialed_by_us,
            readers: Vec::new(),
        };
        if let Some(&existing) = self.by_replica.get(&candidate.hello.replica_id)
            && let Some(old) = self.links.get(&existing)
        {
            let (old_dialer, new_dialer) =
                (self.dialer_replica(old), self.dialer_replica(&candidate));
            // Keep the link dialed by the lower replica id; both ends apply the same rule. Same dialer: the
            // newer link replaces the older (which is probably dead).
            if new_dialer > old_dialer {
                candidate.link.close("duplicate link");
                return;
            }
            old.link.close("duplicate link");
            self.peer_down(existing);
        }
        let mut linked = candidate;
        linked.readers = spawn_readers(&linked.link, self.events.clone());
        tracing::info!(
            peer = %linked.hello.node_id,
            replica = format_args!("{:016x}", linked.hello.replica_id),
            address = %linked.link.remote_address(),
            "linked to peer"
        );
        self.replicator
            .add_peer(peer, linked.link.max_datagram_size());
        self.by_replica.insert(linked.hello.replica_id, peer);
        if let Ok(mut addresses) = self.linked_addresses.lock() {
            addresses.insert(linked.link.remote_address());
        }
        self.links.insert(peer, linked);
        self.publish_status(true);
    }

    fn peer_down(&mut self, peer: PeerId) {
        let Some(linked) = self.links.remove(&peer) else {
            return;
        };
        linked.readers.iter().for_each(JoinHandle::abort);
        if self.by_replica.get(&linked.hello.replica_id) == Some(&peer) {
            self.by_replica.remove(&linked.hello.replica_id);
        }
        if let Ok(mut addresses) = self.linked_addresses.lock() {
            addresses.remove(&linked.link.remote_address());
        }
        self.replicator.remove_peer(peer);
        let reason = linked
            .link
            .close_reason()
            .map_or_else(|| "closed".to_string(), |e| e.to_string());
        tracing::info!(
            peer = %linked.hello.node_id,
            address = %linked.link.remote_address(),
            %reason,
            "link to peer closed"
        );
        self.publish_status(true);
    }

    fn refresh_datagram_sizes(&mut self) {
        for (&peer, linked) in &self.links {
            if let Some(size) = linked.link.max_datagram_size() {
                self.replicator.set_max_datagram(peer, size);
            }
        }
    }

    fn send_transmits(&mut self) {
        while let Some(transmit) = self.replicator.poll_transmit() {
            let Some(linked) = self.links.get(&transmit.peer) else {
                continue;
            };
            match transmit.channel {
                Channel::Datagram => match linked.link.send_datagram(transmit.frame.clone()) {
                    Ok(()) => {}
                    // The path MTU shrank since the last refresh: the values still go, reliably.
                    Err(LinkError::DatagramTooLarge { .. }) => {
                        spawn_stream_send(linked.link.clone(), transmit.frame);
                    }
                    Err(error) => tracing::debug!(%error, "datagram not sent (link closing)"),
                },
                Channel::Stream => spawn_stream_send(linked.link.clone(), transmit.frame),
            }
        }
    }

    fn publish_status(&mut self, force: bool) {
        let now = self.clock.now_unix_ms();
        if !force && now < self.status_at_ms + STATUS_EVERY_MS {
            return;
        }
        self.status_at_ms = now;
        let peers = self
            .links
            .iter()
            .map(|(&peer, linked)| PeerInfo {
                node_id: linked.hello.node_id.clone(),
                replica_id: linked.hello.replica_id,
                address: linked.link.remote_address(),
                rtt: linked.link.rtt(),
                stats: self
                    .replicator
                    .peer_stats(peer)
                    .cloned()
                    .unwrap_or_default(),
            })
            .collect();
        if let Ok(mut status) = self.status.lock() {
            *status = NodeStatus {
                peers,
                replication: self.replicator.stats().clone(),
            };
        }
    }

    /// Flushes the last values on streams and waits (bounded) until every peer has read them.
    async fn final_flush(&mut self) {
        self.replicator.flush(self.clock.now_unix_ms());
        let mut sends = Vec::new();
        while let Some(transmit) = self.replicator.poll_transmit() {
            if let Some(linked) = self.links.get(&transmit.peer) {
                let link = linked.link.clone();
                sends.push(tokio::spawn(async move {
                    let (mut send, _recv) = link.open_stream().await.ok()?;
                    send.write_all(&transmit.frame).await.ok()?;
                    send.finish().ok()?;
                    // Resolves once the peer has read the stream to its end.
                    send.stopped().await.ok()
                }));
            }
        }
        let count = sends.len();
        // The sends run concurrently (spawned); wait for all of them, bounded.
        let all = async {
            for send in sends {
                let _ = send.await;
            }
        };
        let outcome = tokio::time::timeout(FINAL_FLUSH_TIMEOUT, all).await;
        match outcome {
            Ok(_) => tracing::info!(frames = count, "final flush delivered"),
            Err(_) => tracing::warn!(
                frames = count,
                "final flush: some peers did not confirm in time"
            ),
        }
        self.publish_status(true);
        for (_, linked) in self.links.iter() {
            linked.link.close("shutdown");
        }
    }
}

/// Sends `frame` on a new stream of `link`, in the background.
fn spawn_stream_send(link: Link, frame: Bytes) {
    tokio::spawn(async move {
        let result = async {
            let (mut send, _recv) = link.open_stream().await.map_err(|e| e.to_string())?;
            send.write_all(&frame).await.map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())
        }
        .await;
        if let Err(error) = result {
            tracing::debug!(%error, address = %link.remote_address(), "stream frame not sent");
        }
    });
}

/// Reads datagrams and streams of `link` into `events`, and reports its closing.
fn spawn_readers(link: &Link, events: mpsc::Sender<Event>) -> Vec<JoinHandle<()>> {
    let link_id = link.id();
    let datagrams = {
        let (link, events) = (link.clone(), events.clone());
        tokio::spawn(async move {
            while let Ok(bytes) = link.read_datagram().await {
                if events.send(Event::Frame { link_id, bytes }).await.is_err() {
                    return;
                }
            }
        })
    };
    let streams = {
        let (link, events) = (link.clone(), events.clone());
        tokio::spawn(async move {
            while let Ok((_send, mut recv)) = link.accept_stream().await {
                let events = events.clone();
                let address = link.remote_address();
                tokio::spawn(async move {
                    match recv.read_to_end(MAX_FRAME_BYTES).await {
                        Ok(bytes) => {
                            let _ = events
                                .send(Event::Frame {
                                    link_id,
                                    bytes: Bytes::from(bytes),
                                })
                                .await;
                        }
                        Err(error) => {
                            tracing::warn!(%address, %error, "dropped a stream frame from a peer (too large or reset)");
                        }
                    }
                });
            }
        })
    };
    let closed = {
        let link = link.clone();
        tokio::spawn(async move {
            link.closed().await;
            let _ = events.send(Event::PeerDown { link_id }).await;
        })
    };
    vec![datagrams, streams, closed]
}
