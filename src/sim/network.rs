//! The in-memory network of the whole-node simulator: per-message latency with jitter (so messages reorder),
//! datagram loss and duplication, stream retransmission delay under loss, a per-link-direction bandwidth limit,
//! and the counters of what it did.

use crate::rng::SplitMix64;

/// How the network behaves. Every value is a probability in `0.0..=1.0` or a duration in ms.
#[derive(Debug, Clone)]
pub struct NetOptions {
    /// One-way latency range in ms: each message draws its own latency uniformly from it (jitter), so
    /// messages sent in order can arrive out of order.
    pub latency_ms: (u64, u64),
    /// Probability that a datagram is lost. A stream frame is never lost, but each loss it suffers delays it
    /// by one round trip (QUIC retransmits).
    pub loss: f64,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Bytes per second each direction of a link carries (`None`: unlimited). Frames queue behind each other.
    pub bandwidth_bytes_per_s: Option<u64>,
    /// Largest datagram a link takes, bytes (QUIC's initial path MTU leaves about 1,200).
    pub max_datagram: usize,
    /// A dial to an address nobody answers fails after this long, ms (the transport's connect timeout).
    pub connect_timeout_ms: u64,
    /// A link that hears nothing for this long closes at both ends, ms (the transport's idle timeout: a
    /// crashed or paused peer, or a partition).
    pub idle_timeout_ms: u64,
}

impl Default for NetOptions {
    fn default() -> NetOptions {
        NetOptions {
            latency_ms: (1, 10),
            loss: 0.0,
            duplicate: 0.0,
            bandwidth_bytes_per_s: None,
            max_datagram: 1_200,
            connect_timeout_ms: 5_000,
            idle_timeout_ms: 10_000,
        }
    }
}

/// What the network did in a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct NetStats {
    /// Frames delivered to a node.
    pub delivered: u64,
    /// Datagrams lost to `loss`.
    pub lost: u64,
    /// Datagrams delivered twice.
    pub duplicated: u64,
    /// Frames dropped by a partition.
    pub partitioned: u64,
    /// Frames sent to a crashed or paused node, or on a closed link.
    pub undeliverable: u64,
    /// Links opened.
    pub links_opened: u64,
    /// Links closed (either end).
    pub links_closed: u64,
    /// Dials that failed (refused ones included).
    pub dials_failed: u64,
    /// Dials refused because the two nodes are of different trust domains (cluster CAs).
    pub dials_refused: u64,
    /// Stream frames dropped between two nodes whose streams are stalled ([`super::Simulation::stall_streams`]).
    pub stalled: u64,
    /// Frames sent, by the kind byte of their header (`wire::Kind`; 0 for anything unknown).
    #[serde(skip)]
    pub sent_by_kind: [u64; 17],
    /// Bytes sent, by the kind byte of their header, as `sent_by_kind`.
    #[serde(skip)]
    pub bytes_sent_by_kind: [u64; 17],
}

impl NetStats {
    /// Counts one frame sent.
    pub(crate) fn count_sent(&mut self, frame: &[u8]) {
        let kind = frame.get(3).map_or(0, |&b| usize::from(b));
        let slot = if kind < self.sent_by_kind.len() {
            kind
        } else {
            0
        };
        self.sent_by_kind[slot] += 1;
        self.bytes_sent_by_kind[slot] += frame.len() as u64;
    }

    /// Frames sent per kind, named (kinds with none left out).
    pub fn sent_by_kind_named(&self) -> Vec<(&'static str, u64)> {
        named(&self.sent_by_kind)
    }

    /// Bytes sent per kind, named (kinds with none left out).
    pub fn bytes_sent_by_kind_named(&self) -> Vec<(&'static str, u64)> {
        named(&self.bytes_sent_by_kind)
    }
}

/// The non-zero slots of a per-kind table, by kind name.
fn named(by_kind: &[u64; 17]) -> Vec<(&'static str, u64)> {
    const NAMES: [&str; 17] = [
        "unknown",
        "hello",
        "delta_batch",
        "digest",
        "state_request",
        "state_chunk",
        "data_ping",
        "data_pong",
        "config_entries",
        "config_digest",
        "node_health",
        "",
        "",
        "",
        "",
        "",
        "membership",
    ];
    NAMES
        .iter()
        .zip(*by_kind)
        .filter(|&(_, n)| n > 0)
        .map(|(&name, n)| (name, n))
        .collect()
}

/// When a frame of `bytes` sent at `now_ms` arrives, and how many copies (none: lost; two: duplicated), given
/// the link direction's `busy_until_ms` (updated). An array, not a vector: one frame costs no allocation.
pub(crate) fn schedule(
    options: &NetOptions,
    rng: &mut SplitMix64,
    stats: &mut NetStats,
    now_ms: u64,
    busy_until_ms: &mut u64,
    bytes: usize,
    reliable: bool,
) -> [Option<u64>; 2] {
    let start = (*busy_until_ms).max(now_ms);
    let transmit_ms = options
        .bandwidth_bytes_per_s
        .map_or(0, |bw| (bytes as u64).saturating_mul(1_000) / bw.max(1));
    *busy_until_ms = start + transmit_ms;
    let (lo, hi) = options.latency_ms;
    let latency = |rng: &mut SplitMix64| rng.range(lo, hi.max(lo));
    if reliable {
        let mut at = start + transmit_ms + latency(rng);
        // Each loss costs a retransmission one round trip later; bounded so a 100 % loss cannot loop.
        for _ in 0..8 {
            if !rng.chance(options.loss) {
                break;
            }
            at += 2 * hi.max(1);
        }
        return [Some(at), None];
    }
    if rng.chance(options.loss) {
        stats.lost += 1;
        return [None, None];
    }
    let first = start + transmit_ms + latency(rng);
    if rng.chance(options.duplicate) {
        stats.duplicated += 1;
        let second = start + transmit_ms + latency(rng);
        return [Some(first), Some(second)];
    }
    [Some(first), None]
}
