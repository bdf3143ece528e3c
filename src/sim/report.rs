//! What a simulation run measured: per-node traffic per virtual second, increment-to-visible latencies, and
//! the network's counters, printable as JSON for the scale harness.

use serde::Serialize;

use super::{NetStats, RunState, Simulation};

/// Frames and bytes one node sent and received (all its lives).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct NodeTraffic {
    /// Frames this node sent (datagrams and stream frames).
    pub frames_sent: u64,
    /// Bytes of those frames.
    pub bytes_sent: u64,
    /// Frames delivered to this node.
    pub frames_received: u64,
    /// Bytes of those frames.
    pub bytes_received: u64,
}

/// Mean and maximum over the nodes of a per-node rate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct TrafficSummary {
    /// Mean over the nodes.
    pub mean: f64,
    /// The busiest node.
    pub max: f64,
}

/// Percentiles of a set of durations, ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    /// How many samples.
    pub count: usize,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest.
    pub max: u64,
}

impl Percentiles {
    /// The percentiles of `samples`.
    pub fn of(samples: &[u64]) -> Percentiles {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let at = |p: f64| {
            if sorted.is_empty() {
                0
            } else {
                sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
            }
        };
        Percentiles {
            count: sorted.len(),
            p50: at(0.5),
            p99: at(0.99),
            max: sorted.last().copied().unwrap_or(0),
        }
    }
}

/// The figures of a run.
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    /// Nodes in the simulation.
    pub nodes: usize,
    /// Nodes running at the end.
    pub running: usize,
    /// Virtual seconds the rates are computed over.
    pub seconds: f64,
    /// Frames sent per node per virtual second.
    pub frames_sent_per_s: TrafficSummary,
    /// Bytes sent per node per virtual second.
    pub bytes_sent_per_s: TrafficSummary,
    /// Frames received per node per virtual second.
    pub frames_received_per_s: TrafficSummary,
    /// Bytes received per node per virtual second.
    pub bytes_received_per_s: TrafficSummary,
    /// Links per running node at the end.
    pub links_per_node: TrafficSummary,
    /// Increment to visible on every running node, ms.
    pub visibility_ms: Percentiles,
    /// Probes still waiting for some node.
    pub probes_pending: usize,
    /// Running nodes whose global count of some key differs from the exact total.
    pub diverged_nodes: usize,
    /// Health-record link entries held over every running node (each node keeps every member's latest
    /// record, and each record lists its publisher's links).
    pub health_link_entries: usize,
    /// The network's counters.
    pub net: NetStats,
    /// Events the simulation processed.
    pub events: u64,
}

fn summary(values: impl Iterator<Item = f64>) -> TrafficSummary {
    let (mut sum, mut max, mut n) = (0.0, 0.0f64, 0usize);
    for v in values {
        sum += v;
        max = max.max(v);
        n += 1;
    }
    TrafficSummary {
        mean: if n == 0 { 0.0 } else { sum / n as f64 },
        max,
    }
}

pub(super) fn build(sim: &Simulation, seconds: f64) -> SimReport {
    let secs = seconds.max(f64::MIN_POSITIVE);
    let traffic: Vec<NodeTraffic> = sim.nodes.iter().map(|n| n.traffic).collect();
    let rate = |f: fn(&NodeTraffic) -> u64| summary(traffic.iter().map(|t| f(t) as f64 / secs));
    let running: Vec<usize> = (0..sim.nodes.len())
        .filter(|&i| sim.nodes[i].run == RunState::Running)
        .collect();
    let mut diverged: Vec<usize> = sim.diverged().into_iter().map(|d| d.0).collect();
    diverged.dedup();
    SimReport {
        nodes: sim.nodes.len(),
        running: running.len(),
        seconds,
        frames_sent_per_s: rate(|t| t.frames_sent),
        bytes_sent_per_s: rate(|t| t.bytes_sent),
        frames_received_per_s: rate(|t| t.frames_received),
        bytes_received_per_s: rate(|t| t.bytes_received),
        links_per_node: summary(running.iter().map(|&i| sim.links(i) as f64)),
        visibility_ms: Percentiles::of(&sim.visibility_ms),
        probes_pending: sim.probes.len(),
        diverged_nodes: diverged.len(),
        health_link_entries: running
            .iter()
            .filter_map(|&i| sim.nodes[i].machine.as_ref())
            .map(|m| m.state().records().link_entries())
            .sum(),
        net: sim.stats,
        events: sim.events_run,
    }
}
