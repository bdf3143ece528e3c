//! Shared state beyond counters (sans-IO): traffic patterns, node health records and cluster-wide config
//! entries, carried by the same replication links as the counters. The reference's gossip keeps four things
//! consistent on every node; the counters cover rate limits, this plane the other three.
//!
//! - [`traffic`]: `record(key, latency, outcome)` on the hot path, request/error counts and log-scale latency
//!   histograms as G-counters in the counter store, so they merge exactly; cluster-wide percentiles come from
//!   the merged buckets ([`histogram`], relative error ≤ 12.5 %).
//! - [`node_record`]: each node's health record (CPU, memory, open connections, request rate, links), last
//!   writer wins per owner, aging out when its publisher stops.
//! - [`config_map`]: a replicated key → bytes map, last writer wins by hybrid logical clock ([`hlc`]) with the
//!   node id breaking ties, tombstones for deletes; live entries bounded in count and bytes, tombstones under
//!   their own bound, so deleting always frees room.
//! - [`replicator`]: the sans-IO state machine that moves config entries and health records between nodes
//!   (writes at once, anti-entropy by bucketed digest, chunked and resumed transfers so no frame exceeds the
//!   limit, health records bound to the link they come on).
//!
//! Nothing here reads the clock, draws OS randomness or touches the network (`.ci/check-sans-io.sh`).

pub mod config_map;
mod error;
pub mod histogram;
pub mod hlc;
pub mod node_record;
pub mod replicator;
pub mod traffic;

pub use config_map::{
    ConfigChange, ConfigEntry, ConfigMap, ConfigMapOptions, ConfigMapStats, ConfigMapUsage,
};
pub use error::{Limit, StateError};
pub use histogram::Histogram;
pub use hlc::{Hlc, Timestamp};
pub use node_record::{LinkHealth, MAX_RECORD_LINKS, NodeHealthView, NodeRecord, NodeRecords};
pub use replicator::{StateOptions, StateReplicator, StateStats};
pub use traffic::{OriginTraffic, Outcome, TrafficHandle, TrafficRecorder, TrafficView};
