//! The driver task: owns the node's [`Replicator`] and [`Membership`] and connects them to the links.
//!
//! Guarantees:
//! - One task owns both state machines, so they need no lock; links, timers and shutdown reach them as events
//!   on a channel. Readers elsewhere see the member table through its `arc-swap` snapshot.
//! - All inter-node traffic uses the QUIC links of the one gossip port: a membership payload for an address
//!   without a link makes the driver dial it (one dial per address at a time, with backoff after failures;
//!   payloads wait for the dial, a bounded few).
//! - One link per peer replica. When two nodes dial each other at once, both keep the link dialed by the node
//!   with the lower replica id and close the other, so they agree without talking.
//! - Replication sends to every linked peer except those membership holds down or left; a member reported
//!   down, left or replaced has its link closed. Its counter contributions stay until their windows expire.
//! - A refused duplicate (a second live process with a member's node id) keeps its link, for SWIM only:
//!   nothing is replicated to it, and of what it sends only membership payloads and data-plane checks are
//!   read. Its refusal is logged at `ERROR` with both addresses, once per duplicate identity, here and in the
//!   duplicate itself.
//! - Each answered data-plane check counts as a successful health check of its member; a refused stream as a
//!   failed one; silence is counted by the membership plane itself.
//! - A frame a peer sends that fails to decode is dropped, counted and logged with the peer's node id and
//!   address; the link stays up.
//! - On shutdown: the last dirty values are flushed on streams (the peers confirm reading them, bounded), then
//!   the leave is announced on streams (bounded), then the links close.
//! - The reference's log lines: "successfully joined X peers on startup", "failed to join cluster", "node
//!   marked as suspect", "cluster health: HEALTHY" / "cluster health: NOT HEALTHY".

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

mod shared_state;

pub(crate) use shared_state::ConfigCommand;

use super::health_probe::HealthProbe;
use super::hello::PeerHello;
use super::join::JoinSchedule;
use super::link_tasks::{self, HelloSetup};
use super::shared_view::SharedView;
use crate::counter::CoarseClock;
use crate::membership::{ClusterHealth, Membership, MembershipError, MembershipEvent};
use crate::replication::{Channel, PeerId, PeerStats, ReplicationStats, Replicator};
use crate::state::traffic::RequestMark;
use crate::state::{StateReplicator, TrafficRecorder};
use crate::transport::{Link, LinkError, Transport};
use crate::wire::{self, Frame, Kind, MembershipPacket};

/// Inputs of the driver.
pub(crate) enum Event {
    /// A link passed the hello exchange. `dialed_addr` is the address we dialed (`None`: the peer dialed us);
    /// `link_nonce` is the dialer's nonce, known to both ends.
    PeerUp {
        link: Link,
        hello: PeerHello,
        dialed_addr: Option<SocketAddr>,
        link_nonce: u64,
    },
    /// A dial ended without a link. `self_link`: the address is this node itself.
    DialFailed {
        addr: SocketAddr,
        error: String,
        self_link: bool,
    },
    /// A link closed.
    PeerDown { link_id: usize },
    /// A frame arrived on a link.
    Frame { link_id: usize, bytes: Bytes },
    /// Sending a frame on a stream of a link failed.
    StreamFailed { link_id: usize, error: String },
    /// The discovery loop found these join targets (filtered; this node excluded).
    Discovered { addrs: Vec<SocketAddr> },
    /// A config write from the handle.
    Config(ConfigCommand),
    /// Flush, leave, close the links and stop.
    Shutdown { done: oneshot::Sender<()> },
}

/// A linked peer, as the node reports it.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The peer's node id.
    pub node_id: String,
    /// The peer's replica id (this process start).
    pub replica_id: u64,
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

struct Linked {
    link: Link,
    hello: PeerHello,
    dialed_by_us: bool,
    /// The dialer's nonce of this link.
    link_nonce: u64,
    readers: Vec<JoinHandle<()>>,
    /// Addresses routed to this link: the peer's advertised gossip address and the address we dialed.
    addrs: Vec<SocketAddr>,
    /// Whether the replicator sends to it.
    replicating: bool,
    /// Bounds the stream sends in flight on this link.
    stream_permits: Arc<tokio::sync::Semaphore>,
}

/// Dials to one address.
#[derive(Default)]
struct DialState {
    in_flight: bool,
    /// Membership frames waiting for the dial.
    pending: VecDeque<Bytes>,
    failures: u32,
    retry_at_ms: u64,
    last_error: Option<String>,
}

/// How long the final flush waits for peers to read the last values.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the leave announcement waits for peers to read it.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the shared status is refreshed.
const STATUS_EVERY_MS: u64 = 50;
/// Membership frames kept per address while a dial is in flight (oldest dropped).
const MAX_PENDING_PER_DIAL: usize = 32;
/// Backoff after the first failed dial to an address, doubling per failure up to [`MAX_DIAL_BACKOFF_MS`].
const FIRST_DIAL_BACKOFF_MS: u64 = 250;
/// Longest wait between dials to an address that keeps failing.
const MAX_DIAL_BACKOFF_MS: u64 = 5_000;
/// How often join targets and dial states are pruned.
const PRUNE_EVERY_MS: u64 = 60_000;
/// A join target discovery has not reported for this long is forgotten (the discovery interval is at most
/// 1 h, so a live target is reported well within it); so is the dial state of an address idle for as long.
const FORGET_TARGETS_AFTER_MS: u64 = 2 * 3_600_000;

/// Everything the driver is built from.
pub(crate) struct DriverParts {
    pub(crate) replicator: Replicator,
    pub(crate) membership: Membership,
    pub(crate) clock: Arc<CoarseClock>,
    pub(crate) events: mpsc::Sender<Event>,
    pub(crate) status: Arc<Mutex<NodeStatus>>,
    pub(crate) transport: Arc<Transport>,
    pub(crate) hello: HelloSetup,
    pub(crate) join: JoinSchedule,
    pub(crate) state: StateReplicator,
    pub(crate) shared: Arc<SharedView>,
    pub(crate) traffic: TrafficRecorder,
}

pub(crate) struct Driver {
    replicator: Replicator,
    membership: Membership,
    clock: Arc<CoarseClock>,
    events: mpsc::Sender<Event>,
    status: Arc<Mutex<NodeStatus>>,
    transport: Arc<Transport>,
    hello: HelloSetup,
    join: JoinSchedule,
    links: HashMap<PeerId, Linked>,
    by_replica: HashMap<u64, PeerId>,
    by_addr: HashMap<SocketAddr, PeerId>,
    dials: HashMap<SocketAddr, DialState>,
    self_addrs: HashSet<SocketAddr>,
    status_at_ms: u64,
    next_prune_ms: u64,
    health_logged: bool,
    state: StateReplicator,
    shared: Arc<SharedView>,
    traffic: TrafficRecorder,
    probe: HealthProbe,
    rate_mark: RequestMark,
    next_health_ms: u64,
    last_health_ms: u64,
    health_version: u64,
    records_seen: u64,
    records_dirty: bool,
}

impl Driver {
    pub(crate) fn new(parts: DriverParts) -> Driver {
        Driver {
            replicator: parts.replicator,
            membership: parts.membership,
            clock: parts.clock,
            events: parts.events,
            status: parts.status,
            transport: parts.transport,
            hello: parts.hello,
            join: parts.join,
            links: HashMap::new(),
            by_replica: HashMap::new(),
            by_addr: HashMap::new(),
            dials: HashMap::new(),
            self_addrs: HashSet::new(),
            status_at_ms: 0,
            next_prune_ms: 0,
            health_logged: false,
            state: parts.state,
            shared: parts.shared,
            traffic: parts.traffic,
            probe: HealthProbe::default(),
            rate_mark: RequestMark::default(),
            next_health_ms: 0,
            last_health_ms: 0,
            health_version: 0,
            records_seen: 0,
            records_dirty: false,
        }
    }

    fn now(&self) -> u64 {
        self.clock.now_unix_ms()
    }

    /// When the next timer of either state machine or of the join schedule is due (Unix ms).
    fn next_due_ms(&self) -> u64 {
        let mut due = self
            .replicator
            .poll_timeout()
            .min(self.state.poll_timeout())
            .min(self.next_health_ms);
        if let Some(t) = self.membership.poll_timeout() {
            due = due.min(t);
        }
        if let Some(t) = self.join.due_ms(self.membership.is_joined()) {
            due = due.min(t);
        }
        due
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Event>) {
        // The first join attempt goes out now; then the starting cluster health is logged once (later changes
        // are logged as they happen).
        self.handle_timers();
        if !self.health_logged {
            self.log_cluster_health(self.membership.cluster_health());
        }
        loop {
            // Timers first, whatever the backlog of events: under a steady stream of frames the sleep below would
            // never be the ready branch, and flushes, checks and SWIM timers would starve.
            if self.next_due_ms() <= self.now() {
                self.handle_timers();
                self.send_transmits();
            }
            let wait = self.next_due_ms().saturating_sub(self.now());
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
                () = tokio::time::sleep(Duration::from_millis(wait)) => self.handle_timers(),
            }
            self.send_transmits();
            self.publish_status(false);
        }
        for (_, linked) in self.links.drain() {
            linked.readers.iter().for_each(JoinHandle::abort);
        }
    }

    fn handle_timers(&mut self) {
        self.refresh_datagram_sizes();
        let now = self.now();
        self.replicator.handle_timeout(now);
        self.state.handle_timeout(now);
        self.publish_health_if_due(now);
        self.after_state();
        if self.membership.poll_timeout().is_some_and(|t| t <= now) {
            self.membership.handle_timeout(now);
        }
        if now >= self.next_prune_ms {
            self.next_prune_ms = now + PRUNE_EVERY_MS;
            self.prune(now);
        }
        let step = self.join.step(self.membership.is_joined(), now);
        if step.attempt {
            for target in self.join.targets().to_vec() {
                self.ask_to_join(target, now);
            }
            tracing::debug!(
                attempt = self.join.attempts(),
                targets = ?self.join.targets(),
                "asked the static peers to let this node in"
            );
        }
        if step.report_failure {
            let causes: Vec<String> = self
                .join
                .targets()
                .iter()
                .map(|t| match self.dials.get(t) {
                    _ if self.by_addr.contains_key(t) => format!("{t}: linked, not let in yet"),
                    Some(d) if d.in_flight => format!("{t}: dialing, no answer yet"),
                    Some(DialState {
                        last_error: Some(error),
                        ..
                    }) => format!("{t}: {error}"),
                    _ => format!("{t}: no answer"),
                })
                .collect();
            tracing::warn!(
                attempts = self.join.attempts(),
                peers = %causes.join("; "),
                "failed to join cluster; still retrying"
            );
        }
        self.after_membership();
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::PeerUp {
                link,
                hello,
                dialed_addr,
                link_nonce,
            } => self.peer_up(link, hello, dialed_addr, link_nonce),
            Event::PeerDown { link_id } => self.peer_down(link_id as PeerId),
            Event::DialFailed {
                addr,
                error,
                self_link,
            } => self.dial_failed(addr, error, self_link),
            Event::Frame { link_id, bytes } => self.frame(link_id as PeerId, bytes),
            Event::Discovered { addrs } => self.discovered(addrs),
            Event::Config(command) => self.config_command(command),
            Event::StreamFailed { link_id, error } => {
                if let Some(linked) = self.links.get(&(link_id as PeerId)) {
                    let replica = linked.hello.replica_id;
                    self.replicator.check_failed(link_id as PeerId, self.now());
                    let reason = format!("replication stream failed: {error}");
                    let _ = self
                        .membership
                        .record_data_plane(replica, false, &reason, self.now());
                    self.after_membership();
                }
            }
            // Handled by the run loop before it gets here.
            Event::Shutdown { done } => drop(done),
        }
    }

    /// Join targets from discovery: each address that is not an active member is asked to let this node in
    /// now (a node already in the cluster merges with one it did not know), and kept for the join schedule.
    fn discovered(&mut self, addrs: Vec<SocketAddr>) {
        let now = self.now();
        let addrs: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|a| !self.self_addrs.contains(a))
            .collect();
        self.join.add_targets(addrs.iter().copied(), now);
        for addr in addrs {
            let active = self
                .membership
                .state_of(addr)
                .is_some_and(|(_, state)| state.is_active());
            if !active {
                self.ask_to_join(addr, now);
            }
        }
        self.after_membership();
    }

    /// Forgets join targets discovery stopped reporting and dial state nobody uses any more.
    fn prune(&mut self, now: u64) {
        self.join
            .forget_unseen(now.saturating_sub(FORGET_TARGETS_AFTER_MS));
        let targets = self.join.targets();
        self.dials.retain(|addr, d| {
            d.in_flight
                || !d.pending.is_empty()
                || targets.contains(addr)
                || d.retry_at_ms.saturating_add(FORGET_TARGETS_AFTER_MS) > now
        });
    }

    /// Asks the node at `addr` to let this node in (a join target that turns out to be us is forgotten).
    fn ask_to_join(&mut self, addr: SocketAddr, now: u64) {
        if self.self_addrs.contains(&addr) {
            return;
        }
        match self.membership.join(addr, now) {
            Ok(()) => {}
            Err(MembershipError::JoinSelf(addr)) => self.join.remove_target(addr),
            Err(error) => tracing::debug!(%addr, %error, "join request not sent"),
        }
    }

    fn frame(&mut self, peer: PeerId, bytes: Bytes) {
        let Some(linked) = self.links.get(&peer) else {
            return;
        };
        let now = self.now();
        // Route by the header's kind (one read of 8 bytes; each plane validates the whole frame itself).
        let kind = wire::split_header(&bytes).map(|(kind, _)| kind).ok();
        if kind == Some(Kind::Membership) {
            let from = linked
                .hello
                .gossip_addr
                .unwrap_or_else(|| linked.link.remote_address());
            match wire::decode(&bytes) {
                Ok(Frame::Membership(packet)) => {
                    if let Err(error) =
                        self.membership
                            .handle_packet(from, packet.payload.as_slice(), now)
                    {
                        match error {
                            MembershipError::Left => {}
                            MembershipError::Malformed { .. }
                            | MembershipError::PacketTooLarge { .. }
                            | MembershipError::FromOurselves { .. } => tracing::warn!(
                                peer = %linked.hello.node_id,
                                %error,
                                "dropped a membership packet"
                            ),
                            other => {
                                tracing::debug!(peer = %linked.hello.node_id, error = %other, "membership packet")
                            }
                        }
                    }
                    self.after_membership();
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(
                    peer = %linked.hello.node_id,
                    address = %linked.link.remote_address(),
                    %error,
                    bytes = bytes.len(),
                    "dropped an invalid membership frame from a peer"
                ),
            }
            return;
        }
        if !matches!(kind, Some(Kind::DataPing | Kind::DataPong))
            && self.membership.is_refused(linked.hello.replica_id)
        {
            tracing::debug!(
                peer = %linked.hello.node_id,
                address = %linked.link.remote_address(),
                "dropped a data frame from a refused duplicate"
            );
            return;
        }
        if matches!(
            kind,
            Some(Kind::ConfigEntries | Kind::ConfigDigest | Kind::NodeHealth)
        ) {
            self.state_frame(peer, &bytes);
            return;
        }
        if let Err(error) = self.replicator.handle_frame(peer, &bytes, now) {
            tracing::warn!(
                peer = %linked.hello.node_id,
                address = %linked.link.remote_address(),
                %error,
                bytes = bytes.len(),
                "dropped an invalid frame from a peer"
            );
        }
        let mut answered = false;
        while let Some(check) = self.replicator.poll_check() {
            let Some(linked) = self.links.get(&check.peer) else {
                continue;
            };
            let reason = format!("data-plane check answered in {} ms", check.rtt_ms);
            let _ = self
                .membership
                .record_data_plane(linked.hello.replica_id, true, &reason, now);
            answered = true;
        }
        if answered {
            self.after_membership();
        }
    }

    /// `(replica id of the node that dialed `linked`, the dialer's link nonce)`: the same at both ends, so the
    /// lower one is the link both keep.
    fn link_rank(&self, linked: &Linked) -> (u64, u64) {
        let dialer = if linked.dialed_by_us {
            self.replicator.replica_id()
        } else {
            linked.hello.replica_id
        };
        (dialer, linked.link_nonce)
    }

    /// True when membership holds this replica down or left, or refuses it as a duplicate (then nothing is
    /// replicated to it).
    fn member_gone(&self, replica_id: u64) -> bool {
        self.membership.is_refused(replica_id)
            || self
                .membership
                .members()
                .by_replica(replica_id)
                .is_some_and(|m| !m.state.is_active())
    }

    fn peer_up(
        &mut self,
        link: Link,
        hello: PeerHello,
        dialed_addr: Option<SocketAddr>,
        link_nonce: u64,
    ) {
        let pending = dialed_addr
            .and_then(|addr| self.dials.get_mut(&addr))
            .map(|d| {
                d.in_flight = false;
                d.failures = 0;
                d.last_error = None;
                std::mem::take(&mut d.pending)
            })
            .unwrap_or_default();
        let mut addrs: Vec<SocketAddr> = dialed_addr.into_iter().collect();
        if let Some(gossip) = hello.gossip_addr
            && !addrs.contains(&gossip)
        {
            addrs.push(gossip);
        }
        let peer = link.id() as PeerId;
        let candidate = Linked {
            link,
            hello,
            dialed_by_us: dialed_addr.is_some(),
            link_nonce,
            readers: Vec::new(),
            addrs: Vec::new(),
            replicating: false,
            stream_permits: Arc::new(tokio::sync::Semaphore::new(
                link_tasks::MAX_STREAM_SENDS_PER_LINK,
            )),
        };
        let mut surviving = peer;
        if let Some(&existing) = self.by_replica.get(&candidate.hello.replica_id)
            && let Some(old) = self.links.get(&existing)
        {
            // Keep the link with the lower (dialer replica id, link nonce): both ends know both and apply the same
            // rule, whatever order the links came up in at each end.
            if self.link_rank(&candidate) > self.link_rank(old) {
                candidate.link.close("duplicate link");
                surviving = existing;
            } else {
                old.link.close("duplicate link");
                self.peer_down(existing);
            }
        }
        if surviving == peer {
            let mut linked = candidate;
            linked.readers = link_tasks::spawn_readers(&linked.link, self.events.clone());
            // Shared-state frames from this link are taken for its authenticated identity only.
            self.state
                .bind_peer(peer, linked.hello.replica_id, &linked.hello.node_id);
            linked.replicating = !self.member_gone(linked.hello.replica_id);
            tracing::info!(
                peer = %linked.hello.node_id,
                replica = format_args!("{:016x}", linked.hello.replica_id),
                address = %linked.link.remote_address(),
                gossip_addr = ?linked.hello.gossip_addr,
                "linked to peer"
            );
            if linked.replicating {
                // The replica id of the authenticated hello binds the origins the peer may send.
                self.replicator.add_peer(
                    peer,
                    linked.hello.replica_id,
                    linked.link.max_datagram_size(),
                );
                self.state.add_peer(peer);
            }
            self.by_replica.insert(linked.hello.replica_id, peer);
            self.links.insert(peer, linked);
        }
        for addr in addrs {
            self.route(addr, surviving);
        }
        if let Some(linked) = self.links.get(&surviving) {
            for frame in pending {
                send_frame(linked, frame, &self.events);
            }
        }
        self.publish_status(true);
    }

    /// Routes `addr` to the link `peer` (a newer link to an address replaces an older one).
    fn route(&mut self, addr: SocketAddr, peer: PeerId) {
        if let Some(linked) = self.links.get_mut(&peer) {
            if !linked.addrs.contains(&addr) {
                linked.addrs.push(addr);
            }
            self.by_addr.insert(addr, peer);
        }
    }

    fn peer_down(&mut self, peer: PeerId) {
        let Some(linked) = self.links.remove(&peer) else {
            return;
        };
        linked.readers.iter().for_each(JoinHandle::abort);
        if self.by_replica.get(&linked.hello.replica_id) == Some(&peer) {
            self.by_replica.remove(&linked.hello.replica_id);
        }
        for addr in &linked.addrs {
            if self.by_addr.get(addr) == Some(&peer) {
                self.by_addr.remove(addr);
            }
        }
        if linked.replicating {
            self.replicator.remove_peer(peer);
        }
        // Also unbinds the link's identity, replicating or not.
        self.state.remove_peer(peer);
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

    fn dial_failed(&mut self, addr: SocketAddr, error: String, self_link: bool) {
        let now = self.now();
        if self_link {
            tracing::info!(%addr, "peer address is this node itself; not dialing it");
            self.self_addrs.insert(addr);
            self.join.remove_target(addr);
            self.dials.remove(&addr);
            return;
        }
        let dial = self.dials.entry(addr).or_default();
        dial.in_flight = false;
        let pending = std::mem::take(&mut dial.pending);
        dial.failures = dial.failures.saturating_add(1);
        let backoff = FIRST_DIAL_BACKOFF_MS
            .saturating_mul(1 << dial.failures.saturating_sub(1).min(16))
            .min(MAX_DIAL_BACKOFF_MS);
        dial.retry_at_ms = now.saturating_add(backoff);
        // Log the 1st, 2nd, 4th, 8th… failure in a row at debug with its cause; a join target's failures are
        // summarized by "failed to join cluster", a member's by membership ("node marked as suspect").
        if dial.failures.is_power_of_two() {
            tracing::debug!(%addr, %error, failures = dial.failures, "failed to link to peer");
        }
        dial.last_error = Some(error);
        // The peer may have dialed us meanwhile: what waited for this dial goes on that link.
        if let Some(linked) = self.by_addr.get(&addr).and_then(|p| self.links.get(p)) {
            for frame in pending {
                send_frame(linked, frame, &self.events);
            }
        }
    }

    /// Makes sure a link to `addr` exists or is being dialed (unless backing off), and sends `frame` on it or
    /// queues it for the dial.
    fn ensure_link(&mut self, addr: SocketAddr, frame: Option<Bytes>) {
        if self.self_addrs.contains(&addr) || addr == self.membership.local_id().addr() {
            return;
        }
        if let Some(linked) = self.by_addr.get(&addr).and_then(|p| self.links.get(p)) {
            if let Some(frame) = frame {
                send_frame(linked, frame, &self.events);
            }
            return;
        }
        let now = self.now();
        let dial = self.dials.entry(addr).or_default();
        if !dial.in_flight {
            if now < dial.retry_at_ms {
                return; // backing off: the payload is lost, as a datagram to a dead host would be
            }
            dial.in_flight = true;
            link_tasks::spawn_dial(
                Arc::clone(&self.transport),
                addr,
                self.hello.clone(),
                self.events.clone(),
            );
        }
        if let Some(frame) = frame {
            if dial.pending.len() == MAX_PENDING_PER_DIAL {
                dial.pending.pop_front();
            }
            dial.pending.push_back(frame);
        }
    }

    /// Sends what membership queued and reacts to its events.
    fn after_membership(&mut self) {
        while let Some((addr, payload)) = self.membership.poll_transmit() {
            if let Some(frame) = membership_frame(payload) {
                self.ensure_link(addr, Some(frame));
            }
        }
        while let Some(event) = self.membership.poll_event() {
            self.member_event(event);
        }
    }

    fn member_event(&mut self, event: MembershipEvent) {
        match event {
            MembershipEvent::Joined { peers } => {
                tracing::info!(peers, "successfully joined {peers} peers on startup");
            }
            MembershipEvent::Rejoined(id) => tracing::info!(
                renewal = id.renewal(),
                "rejoined the cluster after being declared down"
            ),
            MembershipEvent::Defunct => tracing::error!(
                "this node was declared down and cannot renew its identity any more: restart it"
            ),
            MembershipEvent::MemberUp(id) => {
                tracing::info!(
                    node = %id.node_id(),
                    replica = format_args!("{:016x}", id.replica_id()),
                    address = %id.addr(),
                    "member up"
                );
                if let Some(&peer) = self.by_replica.get(&id.replica_id())
                    && let Some(linked) = self.links.get_mut(&peer)
                    && !linked.replicating
                {
                    linked.replicating = true;
                    self.replicator.add_peer(
                        peer,
                        linked.hello.replica_id,
                        linked.link.max_datagram_size(),
                    );
                    self.state.add_peer(peer);
                }
                self.ensure_link(id.addr(), None);
            }
            MembershipEvent::MemberSuspect(id) => tracing::warn!(
                node = %id.node_id(),
                address = %id.addr(),
                "node marked as suspect"
            ),
            MembershipEvent::MemberAlive(id) => tracing::info!(
                node = %id.node_id(),
                address = %id.addr(),
                "suspect node refuted the suspicion: alive"
            ),
            MembershipEvent::MemberDown(id) => {
                tracing::warn!(
                    node = %id.node_id(),
                    address = %id.addr(),
                    "node marked as down; its counts stay until their windows expire"
                );
                self.drop_replica(id.replica_id(), "member down");
            }
            MembershipEvent::MemberLeft(id) => {
                tracing::info!(node = %id.node_id(), address = %id.addr(), "node left the cluster");
                self.drop_replica(id.replica_id(), "member left");
            }
            MembershipEvent::MemberReplaced { old, new } => {
                tracing::info!(
                    node = %new.node_id(),
                    old_replica = format_args!("{:016x}", old.replica_id()),
                    new_replica = format_args!("{:016x}", new.replica_id()),
                    address = %new.addr(),
                    "node restarted: a newer identity replaced the old one"
                );
                if old.replica_id() != new.replica_id() {
                    self.drop_replica(old.replica_id(), "member replaced");
                }
            }
            MembershipEvent::DuplicateRefused { duplicate, holder } => {
                let holder_is_us = holder == *self.membership.local_id();
                tracing::error!(
                    node = %duplicate.node_id(),
                    member_address = %holder.addr(),
                    duplicate_address = %duplicate.addr(),
                    duplicate_replica = format_args!("{:016x}", duplicate.replica_id()),
                    holder = if holder_is_us { "this node" } else { "another member" },
                    "refused a second process with node id {:?} at {}: the live member at {} already holds that \
                     node id (the second process is not a member until that one leaves or is declared down)",
                    duplicate.node_id(),
                    duplicate.addr(),
                    holder.addr()
                );
                self.stop_replicating(duplicate.replica_id());
            }
            MembershipEvent::RefusedAsDuplicate { holder } => {
                let local = self.membership.local_id();
                tracing::error!(
                    node = %holder.node_id(),
                    member_address = %holder.addr(),
                    own_address = %local.addr(),
                    "node id {:?} is already held by the live member at {}: this process at {} is refused as a \
                     duplicate and is no cluster member (NOT HEALTHY, not ready) until that member leaves or is \
                     declared down; give each process its own node_id",
                    holder.node_id(),
                    holder.addr(),
                    local.addr()
                );
            }
            MembershipEvent::DuplicateCleared { holder } => tracing::warn!(
                node = %holder.node_id(),
                previous_address = %holder.addr(),
                "the member that held this node id left or was declared down: this process is the member now"
            ),
            MembershipEvent::HealthChanged {
                member,
                healthy,
                reason,
            } => {
                let active = self
                    .membership
                    .state_of(member.addr())
                    .is_some_and(|(id, state)| id == &member && state.is_active());
                if healthy {
                    tracing::info!(node = %member.node_id(), %reason, "member healthy");
                } else if active {
                    tracing::warn!(node = %member.node_id(), %reason, "member unhealthy");
                } else {
                    // Down or left: already logged as such.
                    tracing::debug!(node = %member.node_id(), %reason, "member unhealthy");
                }
            }
            MembershipEvent::ClusterHealthChanged(health) => self.log_cluster_health(health),
        }
    }

    /// "cluster health: HEALTHY" (info) or "cluster health: NOT HEALTHY" (warn), with the counts behind it.
    fn log_cluster_health(&mut self, health: ClusterHealth) {
        self.health_logged = true;
        let table = self.membership.members();
        if table.local.state == crate::membership::LocalState::Left {
            return; // this node is leaving: "left the cluster" says it
        }
        let members = table.member_count();
        let healthy = table.healthy_count();
        let local = table.local.state;
        match health {
            ClusterHealth::Healthy => {
                tracing::info!(members, healthy, %local, "cluster health: HEALTHY")
            }
            ClusterHealth::NotHealthy => {
                tracing::warn!(members, healthy, %local, "cluster health: NOT HEALTHY")
            }
        }
    }

    /// Stops replicating to `replica_id`, keeping its link (membership payloads still use it).
    fn stop_replicating(&mut self, replica_id: u64) {
        if let Some(&peer) = self.by_replica.get(&replica_id)
            && let Some(linked) = self.links.get_mut(&peer)
            && linked.replicating
        {
            linked.replicating = false;
            self.replicator.remove_peer(peer);
            self.state.remove_peer(peer);
        }
    }

    /// Stops replicating to `replica_id` and closes its link.
    fn drop_replica(&mut self, replica_id: u64, reason: &str) {
        if let Some(&peer) = self.by_replica.get(&replica_id) {
            if let Some(linked) = self.links.get(&peer) {
                linked.link.close(reason);
            }
            self.peer_down(peer);
        }
    }

    fn refresh_datagram_sizes(&mut self) {
        for (&peer, linked) in &self.links {
            if linked.replicating
                && let Some(size) = linked.link.max_datagram_size()
            {
                self.replicator.set_max_datagram(peer, size);
            }
        }
    }

    /// The next frame either replication plane (counters, shared state) wants sent.
    fn next_transmit(&mut self) -> Option<crate::replication::Transmit> {
        self.replicator
            .poll_transmit()
            .or_else(|| self.state.poll_transmit())
    }

    fn send_transmits(&mut self) {
        while let Some(transmit) = self.next_transmit() {
            let Some(linked) = self.links.get(&transmit.peer) else {
                continue;
            };
            match transmit.channel {
                Channel::Datagram => send_frame(linked, transmit.frame, &self.events),
                Channel::Stream => link_tasks::spawn_stream_send(
                    linked.link.clone(),
                    transmit.frame,
                    self.events.clone(),
                    &linked.stream_permits,
                ),
            }
        }
    }

    fn publish_status(&mut self, force: bool) {
        let now = self.now();
        if !force && now < self.status_at_ms + STATUS_EVERY_MS {
            return;
        }
        self.status_at_ms = now;
        self.publish_records();
        let peers = self
            .links
            .iter()
            .map(|(&peer, linked)| PeerInfo {
                node_id: linked.hello.node_id.clone(),
                replica_id: linked.hello.replica_id,
                address: linked.link.remote_address(),
                gossip_addr: linked.hello.gossip_addr,
                rtt: linked.link.rtt(),
                replicating: linked.replicating,
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
                join_settled: self.join.settled() || self.membership.is_joined(),
                membership: self.membership.stats(),
                state: self.state.stats(),
            };
        }
    }

    /// Flushes the last values, announces the leave, closes the links.
    async fn shutdown(&mut self) {
        // 1. The last deltas, on streams, confirmed by the peers.
        self.replicator.flush(self.now());
        let mut frames = Vec::new();
        while let Some(transmit) = self.next_transmit() {
            if let Some(linked) = self.links.get(&transmit.peer) {
                frames.push((linked.link.clone(), transmit.frame));
            }
        }
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
        if let Err(error) = self.membership.leave(now) {
            tracing::warn!(%error, "leave not announced");
        }
        let mut frames = Vec::new();
        while let Some((addr, payload)) = self.membership.poll_transmit() {
            let Some(linked) = self.by_addr.get(&addr).and_then(|p| self.links.get(p)) else {
                continue;
            };
            if let Some(frame) = membership_frame(payload) {
                frames.push((linked.link.clone(), frame));
            }
        }
        let (confirmed, total) = link_tasks::send_and_confirm(frames, LEAVE_TIMEOUT).await;
        tracing::info!(notices = total, confirmed, "left the cluster");
        while let Some(event) = self.membership.poll_event() {
            self.member_event(event);
        }
        self.publish_status(true);
        for linked in self.links.values() {
            linked.link.close("shutdown");
        }
    }
}

/// A membership payload wrapped in its frame.
fn membership_frame(payload: Vec<u8>) -> Option<Bytes> {
    match wire::encode(&MembershipPacket { payload }) {
        Ok(frame) => Some(Bytes::from(frame)),
        Err(error) => {
            tracing::error!(%error, "failed to encode a membership packet");
            None
        }
    }
}

/// Sends one frame on `linked` as a datagram, or on a stream when it does not fit one (the path MTU shrank) or
/// the link takes no datagrams: the frame still goes, reliably.
fn send_frame(linked: &Linked, frame: Bytes, events: &mpsc::Sender<Event>) {
    match linked.link.send_datagram(frame.clone()) {
        Ok(()) => {}
        Err(LinkError::DatagramTooLarge { .. } | LinkError::DatagramsUnsupported { .. }) => {
            link_tasks::spawn_stream_send(
                linked.link.clone(),
                frame,
                events.clone(),
                &linked.stream_permits,
            )
        }
        Err(error) => tracing::debug!(%error, "datagram not sent (link closing)"),
    }
}
