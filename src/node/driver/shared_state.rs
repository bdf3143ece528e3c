//! The driver's side of the shared-state plane: config writes from the handle, the health record it publishes
//! every [`HEALTH_INTERVAL`], frames and transmits of the [`crate::state::StateReplicator`], and the snapshots
//! readers see.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::Driver;
use crate::node::health_probe::HEALTH_INTERVAL;
use crate::replication::PeerId;
use crate::state::{LinkHealth, NodeRecord, StateError, Timestamp};

/// A config write asked for by the handle.
pub(crate) enum ConfigCommand {
    Put {
        key: String,
        value: Bytes,
        reply: oneshot::Sender<Result<Timestamp, StateError>>,
    },
    Delete {
        key: String,
        reply: oneshot::Sender<Result<Timestamp, StateError>>,
    },
}

impl Driver {
    pub(super) fn config_command(&mut self, command: ConfigCommand) {
        let now = self.now();
        let (result, reply) = match command {
            ConfigCommand::Put { key, value, reply } => (self.state.put(&key, value, now), reply),
            ConfigCommand::Delete { key, reply } => (self.state.delete(&key, now), reply),
        };
        // Publish the snapshot before answering, so the writer reads its own write.
        self.after_state();
        let _ = reply.send(result);
    }

    /// A frame of the shared-state plane from `peer`.
    pub(super) fn state_frame(&mut self, peer: PeerId, bytes: &[u8]) {
        let now = self.now();
        if let Err(error) = self.state.handle_frame(peer, bytes, now)
            && let Some(linked) = self.links.get(&peer)
        {
            tracing::warn!(
                peer = %linked.hello.node_id,
                address = %linked.link.remote_address(),
                %error,
                bytes = bytes.len(),
                "dropped an invalid shared-state frame from a peer"
            );
        }
        self.after_state();
    }

    /// Publishes changes of the config map to subscribers and to the snapshot.
    pub(super) fn after_state(&mut self) {
        let mut changed = false;
        while let Some(change) = self.state.poll_change() {
            changed = true;
            // No subscriber is fine.
            let _ = self.shared.changes.send(change);
        }
        if changed {
            let live = self
                .state
                .map()
                .live()
                .map(|(k, v)| (Arc::from(k), v.clone()))
                .collect();
            self.shared.config.store(Arc::new(live));
        }
        let merged = self.state.stats().records_merged;
        if merged != self.records_seen {
            self.records_seen = merged;
            self.records_dirty = true;
        }
    }

    /// Publishes this node's health record when it is due.
    pub(super) fn publish_health_if_due(&mut self, now: u64) {
        if now < self.next_health_ms {
            return;
        }
        let interval = HEALTH_INTERVAL.as_millis() as u64;
        let elapsed = now.saturating_sub(self.last_health_ms).max(1);
        self.next_health_ms = now + interval;
        self.last_health_ms = now;
        self.health_version += 1;
        let requests = self.traffic.local_requests_since(&mut self.rate_mark, now);
        let links = self
            .links
            .iter()
            .map(|(&peer, linked)| LinkHealth {
                node_id: linked.hello.node_id.clone(),
                up: linked.replicating,
                rtt_us: self
                    .replicator
                    .peer_stats(peer)
                    .map_or(0, |s| s.check_rtt_ms.saturating_mul(1000)),
            })
            .collect();
        let record = NodeRecord {
            owner: self.replicator.replica_id(),
            node_id: self.membership.local_id().node_id().to_string(),
            version: self.health_version,
            published_ms: now,
            cpu_millicores: self.probe.cpu_millicores(now),
            memory_bytes: self.probe.memory_bytes(),
            memory_total_bytes: self.probe.memory_total_bytes(),
            open_connections: self.links.len() as u32,
            request_rate_milli: requests.saturating_mul(1_000_000) / elapsed,
            links,
        };
        self.state.publish(record, now);
        self.records_dirty = true;
    }

    /// Refreshes the records snapshot when it changed.
    pub(super) fn publish_records(&mut self) {
        if self.records_dirty {
            self.records_dirty = false;
            self.shared
                .records
                .store(Arc::new(self.state.records().clone()));
        }
    }
}
