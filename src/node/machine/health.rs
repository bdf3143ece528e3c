//! This node's health record, built every [`HEALTH_INTERVAL`] from the link table, the replicator's
//! data-plane round trips, the traffic plane's request count and a process probe (CPU and memory; the only
//! input read from the operating system, passed in as a [`ProcessProbe`] so the machine stays sans-IO).

use crate::node::health_probe::HEALTH_INTERVAL;
use crate::replication::Replicator;
use crate::state::traffic::RequestMark;
use crate::state::{LinkHealth, NodeRecord, TrafficRecorder};

use super::links::LinkTable;

/// Reads what the process uses. The node passes one that reads `/proc`; the simulator one that reads nothing.
pub(crate) trait ProcessProbe: Send {
    /// CPU used since the previous call, in thousandths of a core (0 when unknown).
    fn cpu_millicores(&mut self, now_ms: u64) -> u32;
    /// Resident memory of the process, bytes (0 when unknown).
    fn memory_bytes(&self) -> u64;
    /// Memory of the machine, bytes (0 when unknown).
    fn memory_total_bytes(&self) -> u64;
}

/// A probe that knows nothing: every field 0 (unknown).
#[derive(Debug, Default)]
pub(crate) struct NoProbe;

impl ProcessProbe for NoProbe {
    fn cpu_millicores(&mut self, _now_ms: u64) -> u32 {
        0
    }
    fn memory_bytes(&self) -> u64 {
        0
    }
    fn memory_total_bytes(&self) -> u64 {
        0
    }
}

/// Builds this node's successive health records.
pub(crate) struct HealthPublisher {
    probe: Box<dyn ProcessProbe>,
    traffic: TrafficRecorder,
    rate_mark: RequestMark,
    version: u64,
    last_ms: u64,
}

impl HealthPublisher {
    /// How often a record is published, in ms.
    pub(crate) const INTERVAL_MS: u64 = HEALTH_INTERVAL.as_millis() as u64;

    pub(crate) fn new(probe: Box<dyn ProcessProbe>, traffic: TrafficRecorder) -> Self {
        HealthPublisher {
            probe,
            traffic,
            rate_mark: RequestMark::default(),
            version: 0,
            last_ms: 0,
        }
    }

    /// The next record of `node_id`, as of `now_ms`: a higher version than the previous one.
    pub(crate) fn record(
        &mut self,
        node_id: &str,
        links: &LinkTable,
        replicator: &Replicator,
        now_ms: u64,
    ) -> NodeRecord {
        let elapsed = now_ms.saturating_sub(self.last_ms).max(1);
        self.last_ms = now_ms;
        self.version += 1;
        let requests = self
            .traffic
            .local_requests_since(&mut self.rate_mark, now_ms);
        let link_health = links
            .iter()
            .map(|(peer, entry)| LinkHealth {
                node_id: entry.hello.node_id.clone(),
                up: entry.replicating,
                rtt_us: replicator
                    .peer_stats(peer)
                    .map_or(0, |s| s.check_rtt_ms.saturating_mul(1000)),
            })
            .collect();
        NodeRecord {
            owner: replicator.replica_id(),
            node_id: node_id.to_string(),
            version: self.version,
            published_ms: now_ms,
            cpu_millicores: self.probe.cpu_millicores(now_ms),
            memory_bytes: self.probe.memory_bytes(),
            memory_total_bytes: self.probe.memory_total_bytes(),
            open_connections: links.len() as u32,
            request_rate_milli: requests.saturating_mul(1_000_000) / elapsed,
            links: link_health,
        }
    }
}
