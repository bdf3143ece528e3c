//! Node health records: each node publishes its own on an interval (CPU, memory, open connections, request
//! rate, the state of its links); every node keeps the latest of each.
//!
//! Guarantees:
//! - Last writer wins per owner: a record replaces the held one of the same owner (replica id) only with a
//!   higher version, so duplicates and reordering are harmless. An owner is one process life, so a restarted
//!   node's records never compete with its previous life's.
//! - [`NodeRecords::view`] returns, per node id, the freshest record of its newest life with its age, and drops
//!   records not refreshed for `expire_after_ms`: a node that dies ages out of the view.
//! - A record lists at most [`MAX_RECORD_LINKS`] of its publisher's links (the down ones first, then the
//!   slowest; `open_connections` counts them all), so a record's size and the memory of every node's table do
//!   not grow with the cluster: N records of a bounded size each, not N × N link entries.
//! - Sans-IO: times come in as arguments.

use crate::UnixMs;
use crate::fixed_hash::HashMap;

/// Most links one record lists (see the module docs).
pub const MAX_RECORD_LINKS: usize = 16;

/// The state of one of the publisher's links, as it sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkHealth {
    /// The peer's node id.
    pub node_id: String,
    /// Whether the link is up and replicating.
    pub up: bool,
    /// Round trip of the last answered data-plane check, in µs (0 before the first).
    pub rtt_us: u64,
}

/// One node's health, as it published it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// The publisher's replica id (one process life).
    pub owner: u64,
    /// The publisher's node id.
    pub node_id: String,
    /// Incremented by the publisher on every publication.
    pub version: u64,
    /// The publisher's wall clock when it published.
    pub published_ms: UnixMs,
    /// CPU used by the process since the previous record, in thousandths of one core (1500 = 1.5 cores).
    pub cpu_millicores: u32,
    /// Resident memory of the process, bytes.
    pub memory_bytes: u64,
    /// Memory of the machine, bytes (0 when unknown).
    pub memory_total_bytes: u64,
    /// Open inter-node links.
    pub open_connections: u32,
    /// Requests per second recorded through the traffic plane since the previous record, in thousandths.
    pub request_rate_milli: u64,
    /// The publisher's links: at most [`MAX_RECORD_LINKS`], the down ones first, then the slowest.
    pub links: Vec<LinkHealth>,
}

/// A record as the view returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeHealthView {
    /// The record.
    pub record: NodeRecord,
    /// Time since this node received it, in ms.
    pub age_ms: u64,
}

/// The latest record of every owner, with when it arrived.
#[derive(Debug, Clone, Default)]
pub struct NodeRecords {
    by_owner: HashMap<u64, (NodeRecord, u64)>,
}

impl NodeRecords {
    /// An empty table.
    pub fn new() -> NodeRecords {
        NodeRecords::default()
    }

    /// Keeps `record` if it is newer than the one held for its owner. Returns whether it was kept.
    pub fn merge(&mut self, record: NodeRecord, now_ms: u64) -> bool {
        match self.by_owner.get(&record.owner) {
            Some((held, _)) if held.version >= record.version => false,
            _ => {
                self.by_owner.insert(record.owner, (record, now_ms));
                true
            }
        }
    }

    /// Per node id, the freshest record received within `expire_after_ms` of `now_ms`, sorted by node id.
    pub fn view(&self, now_ms: u64, expire_after_ms: u64) -> Vec<NodeHealthView> {
        let mut best: HashMap<&str, (&NodeRecord, u64)> = HashMap::default();
        for (record, received) in self.by_owner.values() {
            if now_ms.saturating_sub(*received) > expire_after_ms {
                continue;
            }
            let newer = best
                .get(record.node_id.as_str())
                .is_none_or(|(held, at)| (received, record.published_ms) > (at, held.published_ms));
            if newer {
                best.insert(record.node_id.as_str(), (record, *received));
            }
        }
        let mut out: Vec<NodeHealthView> = best
            .into_values()
            .map(|(record, received)| NodeHealthView {
                record: record.clone(),
                age_ms: now_ms.saturating_sub(received),
            })
            .collect();
        out.sort_by(|a, b| a.record.node_id.cmp(&b.record.node_id));
        out
    }

    /// Records held (one per owner).
    pub fn len(&self) -> usize {
        self.by_owner.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.by_owner.is_empty()
    }

    /// Link entries held over every record (each record lists its publisher's links): what the records cost.
    pub fn link_entries(&self) -> usize {
        self.by_owner.values().map(|(r, _)| r.links.len()).sum()
    }

    /// Forgets records not refreshed for `forget_after_ms`. Returns how many.
    pub fn prune(&mut self, now_ms: u64, forget_after_ms: u64) -> usize {
        let before = self.by_owner.len();
        self.by_owner
            .retain(|_, (_, received)| now_ms.saturating_sub(*received) <= forget_after_ms);
        before - self.by_owner.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(owner: u64, node: &str, version: u64, published_ms: u64) -> NodeRecord {
        NodeRecord {
            owner,
            node_id: node.into(),
            version,
            published_ms: UnixMs::new(published_ms),
            cpu_millicores: 0,
            memory_bytes: 0,
            memory_total_bytes: 0,
            open_connections: 0,
            request_rate_milli: 0,
            links: Vec::new(),
        }
    }

    #[test]
    fn higher_versions_win_per_owner_and_old_records_age_out() {
        let mut t = NodeRecords::new();
        assert!(t.merge(record(1, "a", 2, 100), 1_000));
        assert!(
            !t.merge(record(1, "a", 1, 50), 1_001),
            "an older version is ignored"
        );
        assert!(
            !t.merge(record(1, "a", 2, 100), 1_002),
            "a duplicate is ignored"
        );
        assert!(t.merge(record(2, "b", 1, 100), 1_000));
        let view = t.view(1_500, 3_000);
        assert_eq!(view.len(), 2);
        assert_eq!(
            (
                view[0].record.node_id.as_str(),
                view[0].record.version,
                view[0].age_ms
            ),
            ("a", 2, 500)
        );
        // b keeps publishing, a stops: a ages out.
        assert!(t.merge(record(2, "b", 2, 4_000), 4_500));
        let view = t.view(4_600, 3_000);
        assert_eq!(
            view.iter()
                .map(|v| v.record.node_id.as_str())
                .collect::<Vec<_>>(),
            vec!["b"]
        );
        assert_eq!(t.prune(4_600, 3_000), 1);
    }

    #[test]
    fn a_restarted_node_shows_its_new_life() {
        let mut t = NodeRecords::new();
        t.merge(record(1, "a", 50, 1_000), 1_000);
        t.merge(record(7, "a", 1, 2_000), 2_000);
        let view = t.view(2_100, 10_000);
        assert_eq!(view.len(), 1);
        assert_eq!(view[0].record.owner, 7);
    }
}
