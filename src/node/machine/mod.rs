//! The node's decisions, sans-IO: which links to dial and keep, dial backoff, the duplicate-link rule, routing
//! frames to planes, health-record publishing and the shutdown order. The tokio driver
//! ([`super::driver`]) and the whole-node simulator ([`crate::sim`]) run this same machine; they only move
//! bytes and timers between it and their links.
//!
//! Like quinn-proto's `Endpoint`, it takes inputs as `handle_*` calls with the current time and hands out what
//! to do as [`Action`]s from [`NodeMachine::poll_action`]; [`NodeMachine::poll_timeout`] says when to call
//! [`NodeMachine::handle_timeout`]. It reads no clock, socket or file (the process probe is passed in).
//!
//! Guarantees:
//! - All inter-node traffic uses links: a membership payload for an address without a link asks for a dial
//!   (one dial per address at a time, with backoff after failures; payloads wait for the dial, a bounded few).
//! - One link per peer replica ([`links`]): when two nodes dial each other at once, both keep the link dialed
//!   by the node with the lower replica id and close the other.
//! - Replication follows the layout ([`Topology`], recomputed when a member comes up, goes down, leaves or is
//!   replaced): below `replication.full_mesh_below` members every member is dialed and gets every value; from
//!   there only the links of the node's group and its aggregate partners are dialed for replication.
//! - Replication sends to linked peers except those membership holds down or left; a member reported
//!   down, left or replaced has its link closed. Its counter contributions stay until their windows expire.
//! - A refused duplicate (a second live process with a member's node id) keeps its link, for SWIM only:
//!   nothing is replicated to it, and of what it sends only membership payloads and data-plane checks are
//!   read. Its refusal is logged at `ERROR` with both addresses, once per duplicate identity.
//! - Each answered data-plane check counts as a successful health check of its member; a refused stream as a
//!   failed one; silence is counted by the membership plane itself.
//! - A frame that fails to decode is dropped, counted by its plane and logged with the peer's node id and
//!   address; the link stays up.
//! - The reference's log lines: "successfully joined X peers on startup", "failed to join cluster", "node
//!   marked as suspect", "cluster health: HEALTHY" / "cluster health: NOT HEALTHY".

mod dials;
mod health;
pub mod link_layer;
mod links;
mod plane;
pub(crate) mod startup;

use std::collections::VecDeque;

use crate::fixed_hash::HashSet;
use std::net::SocketAddr;

use bytes::Bytes;

pub(crate) use health::{NoProbe, ProcessProbe};
pub(crate) use link_layer::LinkId;
pub(crate) use link_layer::LinkUp;
pub(crate) use plane::Plane;

use self::dials::{DialDecision, DialTable};
use self::health::HealthPublisher;
use self::links::{Insert, LinkEntry, LinkTable};
use super::hello::PeerHello;
use super::join::JoinSchedule;
use crate::ReplicaId;
use crate::membership::{ClusterHealth, Membership, MembershipError, MembershipEvent};
use crate::replication::{
    Channel, Layout, PeerStats, ReplicationStats, Replicator, Topology, TopologyOptions, Transmit,
};
use crate::state::{ConfigChange, StateError, StateReplicator, StateStats, Timestamp};
use crate::timers::TimerTable;
use crate::wire::{self, Frame, MembershipPacket};

/// How often join targets and dial states are pruned.
const PRUNE_EVERY_MS: u64 = 60_000;
/// How often start-up admission looks at what the node has heard, in ms.
const STARTUP_STEP_EVERY_MS: u64 = 20;
/// A join target discovery has not reported for this long is forgotten (the discovery interval is at most
/// 1 h, so a live target is reported well within it); so is the dial state of an address idle for as long.
const FORGET_TARGETS_AFTER_MS: u64 = 2 * 3_600_000;
/// Grouped layouts: a link the layout does not need closes after this long without a frame either way (ms). SWIM
/// opened it for a probe, and probes go round-robin, so the same member is probed again only N − 1 probe periods
/// later: a longer close keeps links (about one a second per node at rest, at both ends), not reuse.
pub(crate) const IDLE_LINK_CLOSE_MS: u64 = 5_000;
/// How often idle links are looked for, in ms.
const IDLE_LINK_SWEEP_MS: u64 = 1_000;

/// What the machine asks its runtime to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Open a link to `addr` and report it as [`link_layer::LinkEvent::Up`] or
    /// [`link_layer::LinkEvent::DialFailed`] through [`NodeMachine::handle_link_event`].
    Dial(SocketAddr),
    /// Send `frame` on `link`: as a datagram (on a stream instead when it does not fit one), or on a stream.
    Send {
        link: LinkId,
        channel: Channel,
        frame: Bytes,
    },
    /// Close `link` (the machine has already forgotten it).
    Close { link: LinkId, reason: &'static str },
}

/// The machine's own timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// Forget stale join targets and dial states.
    Prune,
    /// Publish this node's health record.
    Health,
    /// Update start-up admission (while it is active).
    Startup,
    /// Close idle membership-only links (grouped layouts).
    IdleLinks,
}

/// Everything a machine is built from.
pub(crate) struct MachineParts {
    pub(crate) replicator: Replicator,
    pub(crate) state: StateReplicator,
    pub(crate) membership: Membership,
    pub(crate) join: JoinSchedule,
    pub(crate) traffic: crate::state::TrafficRecorder,
    pub(crate) probe: Box<dyn ProcessProbe>,
    /// When to replicate in groups (`replication.full_mesh_below`, `publishers_per_group`).
    pub(crate) topology: TopologyOptions,
    /// What each limit admits while the node has not heard its peers' state.
    pub(crate) startup: startup::StartupAdmission,
}

/// One node's planes and the decisions that glue them together.
pub(crate) struct NodeMachine {
    replicator: Replicator,
    state: StateReplicator,
    membership: Membership,
    join: JoinSchedule,
    health: HealthPublisher,
    links: LinkTable,
    dials: DialTable,
    self_addrs: HashSet<SocketAddr>,
    timers: TimerTable<Timer>,
    actions: VecDeque<Action>,
    /// The starting cluster health was logged (later changes are logged as they happen).
    health_logged: bool,
    /// Health records merged when the records snapshot was last taken (see [`NodeMachine::records_changed`]).
    records_seen: u64,
    records_dirty: bool,
    topology_options: TopologyOptions,
    startup: startup::StartupAdmission,
    /// The latest time an input brought (new links are "used" as of it).
    clock_ms: u64,
    /// Membership-only links closed for idleness.
    idle_closed: u64,
    /// Every membership event with the time it was handled, while recording (the simulator's event log;
    /// `None`: not recording, nothing kept).
    recorded: Option<Vec<(u64, MembershipEvent)>>,
}

impl NodeMachine {
    /// A machine that starts at `now_ms`: its first timers (join attempt, health record) are due at once.
    pub(crate) fn new(parts: MachineParts, now_ms: u64) -> NodeMachine {
        let mut timers = TimerTable::default();
        timers.set(Timer::Prune, now_ms.saturating_add(PRUNE_EVERY_MS));
        timers.set(Timer::Health, now_ms);
        timers.set(Timer::IdleLinks, now_ms.saturating_add(IDLE_LINK_SWEEP_MS));
        if parts.startup.active() {
            timers.set(Timer::Startup, now_ms);
        }
        NodeMachine {
            replicator: parts.replicator,
            state: parts.state,
            membership: parts.membership,
            join: parts.join,
            health: HealthPublisher::new(parts.probe, parts.traffic),
            links: LinkTable::default(),
            dials: DialTable::default(),
            self_addrs: HashSet::default(),
            timers,
            actions: VecDeque::new(),
            health_logged: false,
            records_seen: 0,
            records_dirty: false,
            topology_options: parts.topology,
            startup: parts.startup,
            clock_ms: now_ms,
            idle_closed: 0,
            recorded: None,
        }
    }

    /// From now on, keeps every membership event with its time for [`NodeMachine::drain_recorded`].
    pub(crate) fn record_events(&mut self) {
        self.recorded.get_or_insert_with(Vec::new);
    }

    /// Moves the events recorded since the previous call to the end of `into` (nothing unless recording).
    pub(crate) fn drain_recorded(&mut self, into: &mut Vec<(u64, MembershipEvent)>) {
        if let Some(recorded) = self.recorded.as_mut() {
            into.append(recorded);
        }
    }

    // ---- Reads.

    /// The shared-state replicator.
    pub(crate) fn state(&self) -> &StateReplicator {
        &self.state
    }

    /// The replication layout in force (`None` before membership gave one).
    pub(crate) fn topology(&self) -> Option<&Topology> {
        self.replicator.topology()
    }

    /// The membership plane.
    pub(crate) fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The start-up join is over (joined once, gave up once, or nobody to join): readiness follows it.
    pub(crate) fn join_settled(&self) -> bool {
        self.join.settled() || self.membership.is_joined()
    }

    /// Linked peers: `(link, hello, replicating, replication counters)`.
    pub(crate) fn peers(&self) -> impl Iterator<Item = (LinkId, &PeerHello, bool, PeerStats)> + '_ {
        self.links.iter().map(|(id, e)| {
            (
                id,
                &e.hello,
                e.replicating,
                self.replicator
                    .peer_stats(id.get())
                    .cloned()
                    .unwrap_or_default(),
            )
        })
    }

    /// Membership-only links closed for idleness (grouped layouts).
    pub(crate) fn idle_links_closed(&self) -> u64 {
        self.idle_closed
    }

    /// Replication counters.
    pub(crate) fn replication_stats(&self) -> &ReplicationStats {
        self.replicator.stats()
    }

    /// Shared-state counters.
    pub(crate) fn state_stats(&self) -> StateStats {
        self.state.stats()
    }

    /// The next change of the config map, for subscribers.
    pub(crate) fn poll_config_change(&mut self) -> Option<ConfigChange> {
        self.state.poll_change()
    }

    /// Whether the health records changed since the previous call (a record was merged or published).
    pub(crate) fn records_changed(&mut self) -> bool {
        let merged = self.state.stats().records_merged;
        if merged != self.records_seen {
            self.records_seen = merged;
            self.records_dirty = true;
        }
        std::mem::take(&mut self.records_dirty)
    }

    // ---- Time.

    /// When [`NodeMachine::handle_timeout`] is next due (Unix ms): the minimum over the planes, the join
    /// schedule and the machine's own timers.
    pub(crate) fn poll_timeout(&self) -> u64 {
        let mut due = Plane::poll_timeout(&self.replicator)
            .min(Plane::poll_timeout(&self.state))
            .min(self.timers.next_ms().unwrap_or(u64::MAX));
        if let Some(t) = self.membership.poll_timeout() {
            due = due.min(t);
        }
        if let Some(t) = self.join.due_ms(self.membership.is_joined()) {
            due = due.min(t);
        }
        due
    }

    /// Runs every timer due at `now_ms`.
    pub(crate) fn handle_timeout(&mut self, now_ms: u64) {
        self.clock_ms = self.clock_ms.max(now_ms);
        Plane::handle_timeout(&mut self.replicator, now_ms);
        Plane::handle_timeout(&mut self.state, now_ms);
        for timer in self.timers.take_due(now_ms) {
            match timer {
                Timer::Health => {
                    self.timers.set(
                        Timer::Health,
                        now_ms.saturating_add(HealthPublisher::INTERVAL_MS),
                    );
                    self.publish_health(now_ms);
                }
                Timer::Startup => self.startup_step(now_ms),
                Timer::IdleLinks => {
                    self.timers
                        .set(Timer::IdleLinks, now_ms.saturating_add(IDLE_LINK_SWEEP_MS));
                    self.close_idle_links(now_ms);
                }
                Timer::Prune => {
                    self.timers
                        .set(Timer::Prune, now_ms.saturating_add(PRUNE_EVERY_MS));
                    self.prune(now_ms);
                }
            }
        }
        if self.membership.poll_timeout().is_some_and(|t| t <= now_ms) {
            self.membership.handle_timeout(now_ms);
        }
        self.join_step(now_ms);
        self.after_membership(now_ms);
        if !self.health_logged {
            self.log_cluster_health(self.membership.cluster_health());
        }
        self.collect_transmits();
    }

    // ---- Inputs from the links.

    /// A link passed the hello exchange.
    fn handle_link_up(&mut self, up: LinkUp) {
        let LinkUp {
            link,
            hello,
            dialed_addr,
            link_nonce,
            remote,
            max_datagram,
        } = up;
        let pending = dialed_addr
            .map(|addr| self.dials.succeeded(addr))
            .unwrap_or_default();
        let mut addrs: Vec<SocketAddr> = dialed_addr.into_iter().collect();
        if let Some(gossip) = hello.gossip_addr
            && !addrs.contains(&gossip)
        {
            addrs.push(gossip);
        }
        let replicating = self.wants_planes(hello.replica_id, hello.gossip_addr);
        let entry = LinkEntry {
            hello,
            remote,
            dialed_by_us: dialed_addr.is_some(),
            link_nonce,
            addrs: Vec::new(),
            replicating,
            max_datagram,
            last_used_ms: self.clock_ms,
        };
        let surviving = match self.links.insert(link, entry, self.replicator.replica_id()) {
            Insert::Refused { existing } => {
                self.actions.push_back(Action::Close {
                    link,
                    reason: "duplicate link",
                });
                existing
            }
            Insert::Replaced { old, old_entry } => {
                self.actions.push_back(Action::Close {
                    link: old,
                    reason: "duplicate link",
                });
                self.link_removed(old, &old_entry, "duplicate link");
                self.link_added(link);
                link
            }
            Insert::Kept => {
                self.link_added(link);
                link
            }
        };
        for addr in addrs {
            self.links.route(addr, surviving);
        }
        for frame in pending {
            self.send(surviving, Channel::Datagram, frame);
        }
        self.collect_transmits();
    }

    /// Tells the planes about a link that became the peer's one link.
    fn link_added(&mut self, link: LinkId) {
        let Some(entry) = self.links.get(link) else {
            return;
        };
        // Shared-state frames from this link are taken for its authenticated identity only.
        self.state
            .bind_peer(link.get(), entry.hello.replica_id, &entry.hello.node_id);
        // A membership-only link (a grouped layout's probe or gossip target) comes and goes every few seconds
        // in a large cluster: debug, not info.
        if entry.replicating {
            tracing::info!(
                peer = %entry.hello.node_id,
                replica = %entry.hello.replica_id,
                address = %entry.remote,
                gossip_addr = ?entry.hello.gossip_addr,
                "linked to peer"
            );
        } else {
            tracing::debug!(
                peer = %entry.hello.node_id,
                address = %entry.remote,
                "linked to peer (membership only)"
            );
        }
        if entry.replicating {
            // The replica id of the authenticated hello binds the origins the peer may send.
            let (replica, max) = (entry.hello.replica_id, entry.max_datagram);
            self.planes_add_peer(link, replica, max);
        }
    }

    /// One event of the link layer ([`link_layer::LinkEvent`]), as the driver and the simulator hand it over.
    pub(crate) fn handle_link_event(&mut self, event: link_layer::LinkEvent, now_ms: u64) {
        use link_layer::{DialError, LinkEvent};
        match event {
            LinkEvent::Up(up) => self.handle_link_up(*up),
            LinkEvent::Frame { link, frame, .. } => self.handle_frame(link, &frame, now_ms),
            LinkEvent::StreamFailed { link, error } => {
                self.handle_stream_failed(link, &error, now_ms)
            }
            LinkEvent::Down { link, reason } => self.handle_link_down(link, &reason.to_string()),
            LinkEvent::DialFailed { addr, error } => {
                let self_link = error == DialError::SelfLink;
                self.handle_dial_failed(addr, error.to_string(), self_link, now_ms)
            }
        }
    }

    /// Link `link` closed (`reason`: why, for the log).
    fn handle_link_down(&mut self, link: LinkId, reason: &str) {
        let Some(entry) = self.links.remove(link) else {
            return;
        };
        self.link_removed(link, &entry, reason);
    }

    fn link_removed(&mut self, link: LinkId, entry: &LinkEntry, reason: &str) {
        if entry.replicating {
            self.replicator.remove_peer(link.get());
        }
        // Unbinds the link's identity, replicating or not.
        self.state.unbind_peer(link.get());
        if entry.replicating {
            tracing::info!(
                peer = %entry.hello.node_id,
                address = %entry.remote,
                %reason,
                "link to peer closed"
            );
        } else {
            tracing::debug!(
                peer = %entry.hello.node_id,
                address = %entry.remote,
                %reason,
                "link to peer closed (membership only)"
            );
        }
    }

    /// A dial to `addr` ended without a link. `self_link`: the address is this node itself.
    fn handle_dial_failed(
        &mut self,
        addr: SocketAddr,
        error: String,
        self_link: bool,
        now_ms: u64,
    ) {
        if self_link {
            tracing::info!(%addr, "peer address is this node itself; not dialing it");
            self.self_addrs.insert(addr);
            self.join.remove_target(addr);
            self.dials.forget(addr);
            return;
        }
        let (pending, failures) = self.dials.failed(addr, error.clone(), now_ms);
        // Log the 1st, 2nd, 4th, 8th… failure in a row at debug with its cause; a join target's failures are
        // summarized by "failed to join cluster", a member's by membership ("node marked as suspect").
        if failures.is_power_of_two() {
            tracing::debug!(%addr, %error, failures, "failed to link to peer");
        }
        // The peer may have dialed us meanwhile: what waited for this dial goes on that link.
        if let Some(link) = self.links.by_addr(addr) {
            for frame in pending {
                self.send_membership(link, frame, now_ms);
            }
        }
    }

    /// The largest datagram `link` takes now changed (path MTU discovery).
    pub(crate) fn set_max_datagram(&mut self, link: LinkId, max_datagram: Option<usize>) {
        if let Some(entry) = self.links.get_mut(link) {
            entry.max_datagram = max_datagram;
            if entry.replicating
                && let Some(size) = max_datagram
            {
                self.replicator.set_max_datagram(link.get(), size);
            }
        }
    }

    /// Sending a frame on a stream of `link` failed.
    fn handle_stream_failed(&mut self, link: LinkId, error: &str, now_ms: u64) {
        if let Some(entry) = self.links.get(link) {
            let replica = entry.hello.replica_id;
            self.replicator.check_failed(link.get(), now_ms);
            let reason = format!("replication stream failed: {error}");
            let _ = self
                .membership
                .record_data_plane(replica, false, &reason, now_ms);
            self.after_membership(now_ms);
            self.collect_transmits();
        }
    }

    /// A frame arrived on `link`. Routed by the header's kind (one read of 8 bytes; each plane validates the
    /// whole frame itself).
    pub(crate) fn handle_frame(&mut self, link: LinkId, bytes: &[u8], now_ms: u64) {
        self.clock_ms = self.clock_ms.max(now_ms);
        let Some(entry) = self.links.get_mut(link) else {
            return;
        };
        entry.last_used_ms = now_ms;
        let entry = &*entry;
        let kind = wire::split_header(bytes).map(|(kind, _)| kind).ok();
        let plane = kind.map(wire::Kind::plane);
        if plane == Some(wire::Plane::Membership) {
            let from = entry.hello.gossip_addr.unwrap_or(entry.remote);
            self.membership_frame(link, from, bytes, now_ms);
            self.collect_transmits();
            return;
        }
        if !kind.is_some_and(wire::Kind::is_data_plane_check)
            && self.membership.is_refused(entry.hello.replica_id)
        {
            tracing::debug!(
                peer = %entry.hello.node_id,
                address = %entry.remote,
                "dropped a data frame from a refused duplicate"
            );
            return;
        }
        let result = match plane {
            Some(wire::Plane::State) => {
                Plane::handle_frame(&mut self.state, link.get(), bytes, now_ms)
            }
            // Counter frames, and anything the header does not name: the replicator counts what it refuses.
            _ => Plane::handle_frame(&mut self.replicator, link.get(), bytes, now_ms),
        };
        // The planes never touch the link table: the entry is still there to name the peer (looked up again
        // only on an error, so a frame costs no copy of the node id).
        if let Err(error) = result
            && let Some(entry) = self.links.get(link)
        {
            let what = if plane == Some(wire::Plane::State) {
                "dropped an invalid shared-state frame from a peer"
            } else {
                "dropped an invalid frame from a peer"
            };
            tracing::warn!(peer = %entry.hello.node_id, address = %entry.remote, %error, bytes = bytes.len(), "{what}");
        }
        let mut answered = false;
        while let Some(check) = self.replicator.poll_check() {
            let Some(entry) = self.links.get(LinkId::new(check.peer)) else {
                continue;
            };
            let reason = format!("data-plane check answered in {} ms", check.rtt_ms);
            let _ =
                self.membership
                    .record_data_plane(entry.hello.replica_id, true, &reason, now_ms);
            answered = true;
        }
        if answered {
            self.after_membership(now_ms);
        }
        self.collect_transmits();
    }

    fn membership_frame(&mut self, link: LinkId, from: SocketAddr, bytes: &[u8], now_ms: u64) {
        let Some(entry) = self.links.get(link) else {
            return;
        };
        match wire::decode(bytes) {
            Ok(Frame::Membership(packet)) => {
                if let Err(error) =
                    self.membership
                        .handle_packet(from, packet.payload.as_slice(), now_ms)
                {
                    match error {
                        MembershipError::Left => {}
                        MembershipError::Malformed { .. }
                        | MembershipError::PacketTooLarge { .. }
                        | MembershipError::FromOurselves { .. } => tracing::warn!(
                            peer = %entry.hello.node_id,
                            %error,
                            "dropped a membership packet"
                        ),
                        other => {
                            tracing::debug!(peer = %entry.hello.node_id, error = %other, "membership packet")
                        }
                    }
                }
                self.after_membership(now_ms);
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(
                peer = %entry.hello.node_id,
                address = %entry.remote,
                %error,
                bytes = bytes.len(),
                "dropped an invalid membership frame from a peer"
            ),
        }
    }

    // ---- Inputs from the node.

    /// Join targets from discovery: each address that is not an active member is asked to let this node in
    /// now (a node already in the cluster merges with one it did not know), and kept for the join schedule.
    pub(crate) fn handle_discovered(&mut self, addrs: Vec<SocketAddr>, now_ms: u64) {
        let addrs: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|a| !self.self_addrs.contains(a))
            .collect();
        self.join.add_targets(addrs.iter().copied(), now_ms);
        for addr in addrs {
            let active = self
                .membership
                .state_of(addr)
                .is_some_and(|(_, state)| state.is_active());
            if !active {
                self.ask_to_join(addr, now_ms);
            }
        }
        self.after_membership(now_ms);
    }

    /// Writes a config entry cluster-wide.
    pub(crate) fn put_config(
        &mut self,
        key: &str,
        value: Bytes,
        now_ms: u64,
    ) -> Result<Timestamp, StateError> {
        let result = self.state.put(key, value, now_ms);
        self.collect_transmits();
        result
    }

    /// Deletes a config entry cluster-wide.
    pub(crate) fn delete_config(
        &mut self,
        key: &str,
        now_ms: u64,
    ) -> Result<Timestamp, StateError> {
        let result = self.state.delete(key, now_ms);
        self.collect_transmits();
        result
    }

    // ---- Outputs.

    /// The next thing to do.
    pub(crate) fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    // ---- Shutdown (graceful stop; a crash is simply dropping the machine).

    /// Step 1: the last dirty values, as stream frames to every replicating link.
    pub(crate) fn final_flush(&mut self, now_ms: u64) -> Vec<(LinkId, Bytes)> {
        self.replicator.flush(now_ms);
        let mut frames = Vec::new();
        while let Some(transmit) = self.next_transmit() {
            let link = LinkId::new(transmit.peer);
            if self.links.get(link).is_some() {
                frames.push((link, transmit.frame));
            }
        }
        frames
    }

    /// Step 2: the leave notice, as frames to the linked members (so the others mark this node left at once,
    /// not suspect). Then the caller closes every link.
    pub(crate) fn leave(&mut self, now_ms: u64) -> Vec<(LinkId, Bytes)> {
        if let Err(error) = self.membership.leave(now_ms) {
            tracing::warn!(%error, "leave not announced");
        }
        let mut frames = Vec::new();
        while let Some((addr, payload)) = self.membership.poll_transmit() {
            let Some(link) = self.links.by_addr(addr) else {
                continue;
            };
            if let Some(frame) = membership_frame(payload) {
                frames.push((link, frame));
            }
        }
        while let Some(event) = self.membership.poll_event() {
            self.member_event(event, now_ms);
        }
        frames
    }

    /// Every link, for the runtime to close after [`NodeMachine::leave`].
    pub(crate) fn link_ids(&self) -> Vec<LinkId> {
        self.links.ids()
    }

    // ---- Internals.

    /// True when membership holds this replica (whose gossip address is `addr`) down or left, or refuses it as
    /// a duplicate (then nothing is replicated to it). Two map lookups, never a scan of the members.
    fn member_gone(&self, replica_id: ReplicaId, addr: Option<SocketAddr>) -> bool {
        self.membership.is_refused(replica_id)
            || addr
                .and_then(|a| self.membership.state_of(a))
                .is_some_and(|(id, state)| id.replica_id() == replica_id && !state.is_active())
    }

    /// Whether the replication planes use a link to `replica`: the member is not gone or refused, and the layout
    /// needs the link (every link in a full mesh and before the layout is known; in a grouped layout the group
    /// peers and aggregate partners only, see [`Topology::links`]). Any other link carries membership only, and
    /// closes once idle ([`NodeMachine::close_idle_links`]).
    fn wants_planes(&self, replica: ReplicaId, gossip_addr: Option<SocketAddr>) -> bool {
        !self.member_gone(replica, gossip_addr)
            && self
                .replicator
                .topology()
                .is_none_or(|t| t.needs_link(replica))
    }

    /// After a layout change: the planes start using the links the layout now needs and stop using the others
    /// (their links stay, bound, for membership, until idle).
    fn reconcile_planes(&mut self) {
        let changes: Vec<(LinkId, bool)> = self
            .links
            .iter()
            .filter_map(|(id, e)| {
                let wanted = self.wants_planes(e.hello.replica_id, e.hello.gossip_addr);
                (wanted != e.replicating).then_some((id, wanted))
            })
            .collect();
        for (link, wanted) in changes {
            let Some(entry) = self.links.get_mut(link) else {
                continue;
            };
            entry.replicating = wanted;
            tracing::debug!(
                peer = %entry.hello.node_id,
                replicating = wanted,
                "the replication layout changed what this link carries"
            );
            let (replica, max) = (entry.hello.replica_id, entry.max_datagram);
            if wanted {
                self.planes_add_peer(link, replica, max);
            } else {
                Plane::remove_peer(&mut self.replicator, link.get());
                Plane::remove_peer(&mut self.state, link.get());
            }
        }
    }

    /// Grouped layouts: closes the links the layout does not need that carried nothing for
    /// [`IDLE_LINK_CLOSE_MS`] (SWIM opened them for a probe); SWIM dials again when it next needs one. In a full
    /// mesh every link is needed.
    fn close_idle_links(&mut self, now_ms: u64) {
        let grouped = self
            .replicator
            .topology()
            .is_some_and(|t| t.layout() != Layout::FullMesh);
        if !grouped {
            return;
        }
        let idle: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, e)| {
                !e.replicating && now_ms.saturating_sub(e.last_used_ms) >= IDLE_LINK_CLOSE_MS
            })
            .map(|(id, _)| id)
            .collect();
        for link in idle {
            if let Some(entry) = self.links.remove(link) {
                self.actions.push_back(Action::Close {
                    link,
                    reason: "idle membership-only link",
                });
                self.idle_closed += 1;
                self.link_removed(link, &entry, "idle membership-only link");
            }
        }
    }

    /// Both replication planes start replicating to `link`.
    fn planes_add_peer(&mut self, link: LinkId, replica: ReplicaId, max_datagram: Option<usize>) {
        Plane::add_peer(&mut self.replicator, link.get(), replica, max_datagram);
        Plane::add_peer(&mut self.state, link.get(), replica, max_datagram);
    }

    fn send(&mut self, link: LinkId, channel: Channel, frame: Bytes) {
        self.actions.push_back(Action::Send {
            link,
            channel,
            frame,
        });
    }

    /// The next frame either replication plane (counters, shared state) wants sent.
    fn next_transmit(&mut self) -> Option<Transmit> {
        Plane::poll_transmit(&mut self.replicator).or_else(|| Plane::poll_transmit(&mut self.state))
    }

    /// Turns the planes' transmits into send actions (to links that still exist).
    fn collect_transmits(&mut self) {
        while let Some(transmit) = self.next_transmit() {
            let link = LinkId::new(transmit.peer);
            if self.links.get(link).is_some() {
                self.send(link, transmit.channel, transmit.frame);
            }
        }
    }

    /// Updates start-up admission (its timer, every [`STARTUP_STEP_EVERY_MS`] while active) and logs its
    /// end once.
    fn startup_step(&mut self, now_ms: u64) {
        if !self.startup.active() {
            return;
        }
        let members = self.membership.members();
        let view = startup::StartupView {
            targets: self.join.targets().len(),
            alive_peers: members.active().count(),
            peers_with_state: self.replicator.peers_with_state(),
            alone: self.join.settled() && !self.membership.is_joined(),
        };
        let Some(end) = self.startup.step(view, now_ms) else {
            self.timers
                .set(Timer::Startup, now_ms.saturating_add(STARTUP_STEP_EVERY_MS));
            return;
        };
        let (expected, heard) = (self.startup.members(), view.peers_with_state);
        match end {
            startup::StartupEnd::Quorum => tracing::info!(
                expected_members = expected,
                peers_with_state = heard,
                "start-up admission over: state received from enough peers; limits apply in full"
            ),
            startup::StartupEnd::Alone => tracing::info!(
                expected_members = expected,
                "start-up admission over: no peer joined, running alone; limits apply in full"
            ),
            startup::StartupEnd::TimedOut => tracing::warn!(
                expected_members = expected,
                peers_with_state = heard,
                "start-up admission over after its time bound without the state of every expected member; \
                 limits apply in full"
            ),
        }
    }

    fn join_step(&mut self, now_ms: u64) {
        let step = self.join.step(self.membership.is_joined(), now_ms);
        if step.attempt {
            for target in self.join.targets().to_vec() {
                self.ask_to_join(target, now_ms);
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
                .map(|&t| {
                    if self.links.by_addr(t).is_some() {
                        format!("{t}: linked, not let in yet")
                    } else {
                        self.dials.describe(t)
                    }
                })
                .collect();
            tracing::warn!(
                attempts = self.join.attempts(),
                peers = %causes.join("; "),
                "failed to join cluster; still retrying"
            );
        }
    }

    /// Forgets join targets discovery stopped reporting and dial state nobody uses any more.
    fn prune(&mut self, now_ms: u64) {
        self.join
            .forget_unseen(now_ms.saturating_sub(FORGET_TARGETS_AFTER_MS));
        self.dials
            .prune(self.join.targets(), FORGET_TARGETS_AFTER_MS, now_ms);
    }

    /// Asks the node at `addr` to let this node in (a join target that turns out to be us is forgotten).
    fn ask_to_join(&mut self, addr: SocketAddr, now_ms: u64) {
        if self.self_addrs.contains(&addr) {
            return;
        }
        match self.membership.join(addr, now_ms) {
            Ok(()) => {}
            Err(MembershipError::JoinSelf(addr)) => self.join.remove_target(addr),
            Err(error) => tracing::debug!(%addr, %error, "join request not sent"),
        }
    }

    /// Makes sure a link to `addr` exists or is being dialed (unless backing off), and sends `frame` on it or
    /// queues it for the dial.
    fn ensure_link(&mut self, addr: SocketAddr, frame: Option<Bytes>, now_ms: u64) {
        if self.self_addrs.contains(&addr) || addr == self.membership.local_id().addr() {
            return;
        }
        if let Some(link) = self.links.by_addr(addr) {
            if let Some(frame) = frame {
                self.send_membership(link, frame, now_ms);
            }
            return;
        }
        if self.dials.request(addr, frame, now_ms) == DialDecision::Dial {
            self.actions.push_back(Action::Dial(addr));
        }
    }

    /// Sends a membership frame on `link`, which counts as use of it (see [`NodeMachine::close_idle_links`]).
    /// Only membership marks its sends: the planes send on links the layout needs, which never close idle.
    fn send_membership(&mut self, link: LinkId, frame: Bytes, now_ms: u64) {
        if let Some(entry) = self.links.get_mut(link) {
            entry.last_used_ms = now_ms;
        }
        self.send(link, Channel::Datagram, frame);
    }

    /// Sends what membership queued and reacts to its events.
    fn after_membership(&mut self, now_ms: u64) {
        while let Some((addr, payload)) = self.membership.poll_transmit() {
            if let Some(frame) = membership_frame(payload) {
                self.ensure_link(addr, Some(frame), now_ms);
            }
        }
        let mut members_changed = false;
        let mut suspicion_changed = false;
        while let Some(event) = self.membership.poll_event() {
            members_changed |= matches!(
                event,
                MembershipEvent::MemberUp(_)
                    | MembershipEvent::MemberDown(_)
                    | MembershipEvent::MemberLeft(_)
                    | MembershipEvent::MemberReplaced { .. }
            );
            suspicion_changed |= matches!(
                event,
                MembershipEvent::MemberSuspect(_) | MembershipEvent::MemberAlive(_)
            );
            self.member_event(event, now_ms);
        }
        if members_changed {
            self.update_topology(now_ms);
        }
        // The key owners depend on who is active and who is suspect, nothing else (a health change, a refused
        // duplicate or a cluster-health flip leaves them as they are): an O(N) list only then.
        if members_changed || suspicion_changed {
            self.update_lease_members();
        }
    }

    /// Hands the replicator the active members and their suspicion, for the bounded mode's key owners (named
    /// as the counter plane names origins, by the number inside their [`ReplicaId`]).
    fn update_lease_members(&mut self) {
        use crate::membership::MemberState;
        let table = self.membership.members();
        let me = self.replicator.replica_id().get();
        let members = std::iter::once((me, false))
            .chain(
                table
                    .active()
                    .map(|m| (m.replica_id().get(), m.state == MemberState::Suspect)),
            )
            .collect();
        self.replicator.set_lease_members(members);
    }

    /// Recomputes the replication layout from the active members and hands it to the replicator (see
    /// [`Topology`]); in a grouped layout, dials the links it needs (the full mesh dials every member as it
    /// comes up). A layout change is logged.
    fn update_topology(&mut self, now_ms: u64) {
        let table = self.membership.members();
        let previous = self.replicator.topology().map(Topology::layout);
        let topology = Topology::new(
            self.replicator.replica_id(),
            table.active().map(|m| m.replica_id()),
            previous,
            self.topology_options,
        );
        if self.replicator.topology() == Some(&topology) {
            return;
        }
        let layout = topology.layout();
        let members = table.active().count() + 1;
        match layout {
            Layout::Grouped { groups } if previous != Some(layout) => tracing::info!(
                members,
                groups,
                publisher = topology.is_publisher(),
                links = topology.links().len(),
                "replicating in {groups} groups (replication.full_mesh_below = {}): values per origin inside \
                 the group, group totals across",
                self.topology_options.full_mesh_below
            ),
            Layout::FullMesh if previous.is_some_and(|p| p != Layout::FullMesh) => tracing::info!(
                members,
                "replicating as a full mesh again (fewer members than replication.full_mesh_below = {})",
                self.topology_options.full_mesh_below
            ),
            _ => {}
        }
        let to_dial: Vec<SocketAddr> = match layout {
            Layout::Grouped { .. } => topology
                .links()
                .into_iter()
                .filter_map(|replica| table.by_replica(replica).map(|m| m.addr()))
                .collect(),
            Layout::FullMesh if previous.is_some_and(|p| p != Layout::FullMesh) => {
                table.active().map(|m| m.addr()).collect()
            }
            Layout::FullMesh => Vec::new(),
        };
        self.state.set_relay(layout != Layout::FullMesh);
        // Data-plane checks go to the links the planes use: in a grouped layout only those members owe this
        // node answers (the others' data planes are checked by their own group).
        let scope = (layout != Layout::FullMesh).then(|| topology.links());
        self.membership.set_data_plane_scope(scope, now_ms);
        self.replicator.set_topology(topology);
        self.reconcile_planes();
        for addr in to_dial {
            self.ensure_link(addr, None, now_ms);
        }
    }

    fn member_event(&mut self, event: MembershipEvent, now_ms: u64) {
        if let Some(recorded) = self.recorded.as_mut() {
            recorded.push((now_ms, event.clone()));
        }
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
                    replica = %id.replica_id(),
                    address = %id.addr(),
                    "member up"
                );
                let wanted = self.wants_planes(id.replica_id(), Some(id.addr()));
                if let Some(link) = self.links.by_replica(id.replica_id())
                    && let Some(entry) = self.links.get_mut(link)
                {
                    if !entry.replicating && wanted {
                        entry.replicating = true;
                        let (replica, max) = (entry.hello.replica_id, entry.max_datagram);
                        self.planes_add_peer(link, replica, max);
                    } else if entry.replicating {
                        // The link came up before the member: the checks answered meanwhile had no member to
                        // count for, so its health starts with a fresh check now rather than at the next
                        // interval (healthy one interval sooner).
                        self.replicator.check_now(link.get());
                    }
                }
                // Grouped: the layout recomputed after these events says which members to link with.
                let grouped = self
                    .replicator
                    .topology()
                    .is_some_and(|t| t.layout() != Layout::FullMesh);
                if !grouped {
                    self.ensure_link(id.addr(), None, now_ms);
                }
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
                    old_replica = %old.replica_id(),
                    new_replica = %new.replica_id(),
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
                    duplicate_replica = %duplicate.replica_id(),
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

    /// "cluster health: HEALTHY" (info) or "cluster health: NOT HEALTHY" (warn; info while this node is the only
    /// member it knows of), with the counts behind it.
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
            // Alone with nobody else known (not met yet, or every other member left on purpose): info.
            ClusterHealth::NotHealthy if members == 1 => {
                tracing::info!(members, healthy, %local, "cluster health: NOT HEALTHY")
            }
            ClusterHealth::NotHealthy => {
                tracing::warn!(members, healthy, %local, "cluster health: NOT HEALTHY")
            }
        }
    }

    /// Stops replicating to `replica_id`, keeping its link (membership payloads still use it).
    fn stop_replicating(&mut self, replica_id: ReplicaId) {
        if let Some(link) = self.links.by_replica(replica_id)
            && let Some(entry) = self.links.get_mut(link)
            && entry.replicating
        {
            entry.replicating = false;
            Plane::remove_peer(&mut self.replicator, link.get());
            Plane::remove_peer(&mut self.state, link.get());
        }
    }

    /// Stops replicating to `replica_id` and closes its link.
    fn drop_replica(&mut self, replica_id: ReplicaId, reason: &'static str) {
        // Its in-flight slots are released by every node (max-merged under one synthetic origin: once).
        let released = self.replicator.store().release_departed(replica_id.get());
        if released > 0 {
            tracing::info!(
                replica = %replica_id,
                values = released,
                reason,
                "released the in-flight slots a departed member held"
            );
        }
        if let Some(link) = self.links.by_replica(replica_id)
            && let Some(entry) = self.links.remove(link)
        {
            self.actions.push_back(Action::Close { link, reason });
            self.link_removed(link, &entry, reason);
        }
    }

    /// Publishes this node's health record.
    fn publish_health(&mut self, now_ms: u64) {
        let node_id = self.membership.local_id().node_id().to_string();
        let record = self
            .health
            .record(&node_id, &self.links, &self.replicator, now_ms);
        self.state.publish(record, now_ms);
        self.records_dirty = true;
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
