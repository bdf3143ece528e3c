//! This node's health record, built every [`HEALTH_INTERVAL`] from the link table, the replicator's
//! data-plane round trips, the traffic plane's request count and a process probe (CPU and memory; the only
//! input read from the operating system, passed in as a [`ProcessProbe`] so the machine stays sans-IO).

use crate::UnixMs;
use crate::node::health_probe::HEALTH_INTERVAL;
use crate::replication::Replicator;
use crate::state::traffic::RequestMark;
use crate::state::{LinkHealth, MAX_RECORD_LINKS, NodeRecord, TrafficRecorder};

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
        let link_health = listed_links(links.iter().map(|(peer, entry)| {
            (
                entry.hello.node_id.as_str(),
                entry.replicating,
                replicator
                    .peer_stats(peer.get())
                    .map_or(0, |s| s.check_rtt_ms.saturating_mul(1000)),
            )
        }));
        NodeRecord {
            owner: replicator.replica_id().get(),
            node_id: node_id.to_string(),
            version: self.version,
            published_ms: UnixMs::new(now_ms),
            cpu_millicores: self.probe.cpu_millicores(now_ms),
            memory_bytes: self.probe.memory_bytes(),
            memory_total_bytes: self.probe.memory_total_bytes(),
            open_connections: links.len() as u32,
            request_rate_milli: requests.saturating_mul(1_000_000) / elapsed,
            links: link_health,
        }
    }
}

/// The links a record lists, of `(node id, up, rtt µs)`: at most [`MAX_RECORD_LINKS`], the down ones first,
/// then the slowest, then by node id (a stable choice). O(L) to pick, O(K log K) to order the K kept.
fn listed_links<'a>(links: impl Iterator<Item = (&'a str, bool, u64)>) -> Vec<LinkHealth> {
    // Down first, then the highest round trip, then the node id.
    let rank = |&(id, up, rtt): &(&'a str, bool, u64)| (up, std::cmp::Reverse(rtt), id);
    let mut all: Vec<(&str, bool, u64)> = links.collect();
    if all.len() > MAX_RECORD_LINKS {
        all.select_nth_unstable_by_key(MAX_RECORD_LINKS - 1, rank);
        all.truncate(MAX_RECORD_LINKS);
    }
    all.sort_unstable_by_key(rank);
    all.into_iter()
        .map(|(id, up, rtt_us)| LinkHealth {
            node_id: id.to_owned(),
            up,
            rtt_us,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_lists_the_down_links_then_the_slowest_and_no_more_than_the_bound() {
        let names: Vec<String> = (0..100).map(|i| format!("node-{i:03}")).collect();
        // Every tenth link is down; round trips grow with the index.
        let links = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i % 10 != 0, i as u64 * 100));
        let listed = listed_links(links);
        assert_eq!(listed.len(), MAX_RECORD_LINKS);
        let down: Vec<&str> = listed
            .iter()
            .filter(|l| !l.up)
            .map(|l| l.node_id.as_str())
            .collect();
        assert_eq!(down.len(), 10, "all ten down links are listed");
        assert!(listed[..10].iter().all(|l| !l.up), "down links come first");
        // The six others are the slowest up links: 99, 98, 97, 96, 95, 94 (90 is down).
        let up: Vec<&str> = listed[10..].iter().map(|l| l.node_id.as_str()).collect();
        assert_eq!(
            up,
            [
                "node-099", "node-098", "node-097", "node-096", "node-095", "node-094"
            ]
        );
        // Under the bound, every link is listed.
        let few = listed_links(names[..5].iter().map(|n| (n.as_str(), true, 0)));
        assert_eq!(few.len(), 5);
    }
}
