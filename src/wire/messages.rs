//! The message types carried in frames, as plain Rust types; rkyv derives their archived (wire) form.
//!
//! Design rules:
//! - Values are absolute per-origin counts, never differences, so any message may be lost, duplicated or
//!   reordered: the receiver merges with a per-origin max.
//! - A batch groups entries by origin replica. A direct batch has one group whose origin is the sender (a
//!   receiver refuses any other: origins are bound to their sender's authenticated replica id). State chunks may
//!   also relay other origins (departed replicas, members the receiver has no link to yet) and carry floors
//!   (`OriginKind::Floor`, set by resets). Aggregated entries (`OriginKind::Aggregate`, large clusters) name
//!   what they sum with `counter::AggregateId::to_wire` (a group, or everything outside one) and are accepted
//!   only from the members entitled to send them (`replication::Topology::accepts_aggregate`).

use rkyv::{Archive, Deserialize, Serialize};

use crate::counter::{Alignment, Unit, Window, WindowError};

/// Capabilities a node announces in [`Hello`]; unknown bits are ignored.
pub mod capabilities {
    /// Understands [`super::DeltaBatch`] and the anti-entropy messages.
    pub const REPLICATION_V1: u64 = 1 << 0;
    /// Understands relayed groups (origins other than the sender) in batches.
    pub const RELAYED_GROUPS: u64 = 1 << 1;
}

/// First message on every link, both ways. A link is trusted only after each side has received the other's.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Hello {
    /// The sender's stable node id.
    pub node_id: String,
    /// The sender's replica id, fresh for each process start.
    pub replica_id: u64,
    /// The protocol version the sender speaks (major in the frame header; this is `major << 16 | minor`).
    pub protocol_version: u32,
    /// Bit set of [`capabilities`].
    pub capabilities: u64,
    /// The gossip address the sender advertises (`"ip:port"`): where the membership plane and every other
    /// node reach it. It can differ from the address a link arrives from (NAT, several interfaces). Empty
    /// for a client that is not a member (a tool). At most [`crate::wire::MAX_NODE_ID_BYTES`] bytes.
    pub gossip_addr: String,
    /// Chosen at random by the dialer for each link and sent by it; the acceptor sends 0. When two links join
    /// the same pair of nodes, both ends keep the one with the lower `(dialer replica id, link nonce)`, so
    /// they agree without talking even when one node dialed both.
    pub link_nonce: u64,
}

/// A window on the wire: count, unit and alignment as small integers, and an anchored window's phase.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug))]
pub struct WireWindow {
    /// Number of units, 1..=[`crate::counter::MAX_WINDOW_COUNT`].
    pub count: u32,
    /// 0 = s, 1 = m, 2 = h, 3 = d, 4 = w, 5 = M, 6 = Y.
    pub unit: u8,
    /// 0 = fixed, 1 = calendar, 2 = anchored (protocol 5).
    pub alignment: u8,
    /// An anchored window's phase in ms, below its length (protocol 5): its boundaries lie at `phase_ms + k ×
    /// length`. 0 for the other alignments. A receiver refuses a phase that is not canonical.
    pub phase_ms: u64,
}

impl From<Window> for WireWindow {
    fn from(w: Window) -> WireWindow {
        let unit = w.unit().code();
        let (alignment, phase_ms) = match w.alignment() {
            Alignment::Fixed => (0, 0),
            Alignment::Calendar => (1, 0),
            Alignment::Anchored { phase_ms } => (2, phase_ms),
        };
        WireWindow {
            count: w.count(),
            unit,
            alignment,
            phase_ms,
        }
    }
}

/// Why a wire window does not name a valid window.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireWindowError {
    /// The unit code is not 0..=6.
    #[error("unknown window unit code {0}")]
    Unit(u8),
    /// The alignment code is not 0, 1 or 2.
    #[error("unknown window alignment code {0}")]
    Alignment(u8),
    /// A phase that is not canonical: non-zero for a fixed or calendar window, or not below an anchored
    /// window's length.
    #[error("window phase {phase_ms} ms is not canonical for alignment code {alignment}")]
    Phase {
        /// The alignment code.
        alignment: u8,
        /// The phase given.
        phase_ms: u64,
    },
    /// The combination is invalid (count out of range, fixed months, …).
    #[error(transparent)]
    Window(#[from] WindowError),
}

impl WireWindow {
    /// Decodes from the four archived fields (what a receiver reads in place).
    pub fn to_window(
        count: u32,
        unit: u8,
        alignment: u8,
        phase_ms: u64,
    ) -> Result<Window, WireWindowError> {
        let unit = Unit::from_code(unit).ok_or(WireWindowError::Unit(unit))?;
        let not_canonical = WireWindowError::Phase {
            alignment,
            phase_ms,
        };
        let alignment = match alignment {
            0 | 1 if phase_ms != 0 => return Err(not_canonical),
            0 => Alignment::Fixed,
            1 => Alignment::Calendar,
            2 => Alignment::Anchored { phase_ms },
            other => return Err(WireWindowError::Alignment(other)),
        };
        let window = Window::with_alignment(count, unit, alignment)?;
        if matches!(alignment, Alignment::Anchored { .. }) && window.alignment() != alignment {
            // An anchored phase at or above the length (the constructor would have reduced it).
            return Err(not_canonical);
        }
        Ok(window)
    }

    /// The window this value names.
    pub fn window(&self) -> Result<Window, WireWindowError> {
        WireWindow::to_window(self.count, self.unit, self.alignment, self.phase_ms)
    }
}

impl ArchivedWireWindow {
    /// The window this archived value names.
    pub fn window(&self) -> Result<Window, WireWindowError> {
        WireWindow::to_window(
            self.count.to_native(),
            self.unit,
            self.alignment,
            self.phase_ms.to_native(),
        )
    }
}

/// One counter value: `origin`'s absolute count of `key` in `window`'s epoch `epoch`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Entry {
    /// The counter key.
    pub key: String,
    /// The window.
    pub window: WireWindow,
    /// The window index.
    pub epoch: u64,
    /// The absolute value.
    pub value: u64,
}

/// Whose values a group carries.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum OriginKind {
    /// A replica's own values (merged per origin with max).
    Replica,
    /// An aggregate of several replicas, named by an aggregate id (`counter::AggregateId`, large clusters: a
    /// group's members, or with bit 31 of the low word every replica outside the group); a receiver without a
    /// grouped layout ignores these groups.
    Aggregate,
    /// Floors of replica `origin` (protocol 3): each entry's `value` is the origin's value at a reset, which
    /// receivers subtract from its contribution (max-merged, never above the origin's value). Carried by state
    /// chunks only.
    Floor,
    /// Floor sums of an aggregate (protocol 6): `origin` is an aggregate id as for `Aggregate`, each entry's
    /// `value` the sum of the floors of the replicas the id names, as its sender holds them (max-merged;
    /// receivers take it off the aggregate's value sum). Sent with the aggregates.
    AggregateFloor,
    /// Reset commands (protocol 6, grouped layouts): `origin` is the replica where the reset was issued; each
    /// entry names a `(key, window, epoch)` and its `value` is the reset's id (larger for a later reset of the
    /// same epoch). A node that hears a new one floors every value it holds for the epoch, as the reset did
    /// where it was issued, and passes the command on. Carried by state chunks only.
    Reset,
}

/// Entries of one origin.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct OriginGroup {
    /// Replica id (or aggregate id) the values belong to.
    pub origin: u64,
    /// What `origin` names.
    pub kind: OriginKind,
    /// The values.
    pub entries: Vec<Entry>,
}

/// Changed values, sent as one datagram each flush interval.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DeltaBatch {
    /// The sender's replica id.
    pub sender: u64,
    /// Per-sender sequence number, for observability (gaps = lost datagrams); merging does not depend on it.
    pub sequence: u64,
    /// The sender's wall clock when it packed the batch (Unix ms), for the replication lag metric.
    pub sent_at_ms: u64,
    /// The values, grouped by origin.
    pub groups: Vec<OriginGroup>,
}

/// A fingerprint of everything a node holds for one origin.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct OriginDigest {
    /// The origin replica.
    pub origin: u64,
    /// How many `(key, window, epoch)` values the node holds for it.
    pub entries: u32,
    /// Order-independent hash of those values (see `replication::digest`).
    pub fingerprint: u64,
}

/// Anti-entropy: "this is what I hold" for the origins in `first..=last`; the receiver answers with what
/// differs in that range. A node with more origins than fit one frame covers them in consecutive ranges over
/// consecutive rounds (protocol 3).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Digest {
    /// The sender's replica id.
    pub sender: u64,
    /// Lowest origin id the digest covers.
    pub first: u64,
    /// Highest origin id the digest covers (inclusive).
    pub last: u64,
    /// One fingerprint per origin in the range the sender holds values for (itself included), ascending.
    pub origins: Vec<OriginDigest>,
    /// How many recent floors the sender holds (all keys, all origins).
    pub floors: u32,
    /// Order-independent hash of those floors.
    pub floor_fingerprint: u64,
}

/// "Send me your values of these origins" (all origins when empty: the full state transfer of a joining node).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct StateRequest {
    /// The sender's replica id.
    pub sender: u64,
    /// Matches the answering chunks.
    pub request_id: u64,
    /// Origins wanted; empty = everything.
    pub origins: Vec<u64>,
    /// Large clusters (protocol 6): the sender joins this node's group (its link came up, or its group
    /// changed) and wants the rest aggregates this node publishes for the group too.
    pub rests: bool,
}

/// Part of a state transfer or of an anti-entropy answer, sent on a stream.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct StateChunk {
    /// The sender's replica id.
    pub sender: u64,
    /// The request this answers (0 when unsolicited, as in an anti-entropy push).
    pub request_id: u64,
    /// Values grouped by origin.
    pub groups: Vec<OriginGroup>,
    /// This chunk's place in the answer, from 0 (protocol 4).
    pub index: u32,
    /// Chunks in the answer, at least 1, carried by every chunk (protocol 4): chunks travel on separate
    /// streams and arrive in any order, so a requester knows an answer is complete once it holds `total`
    /// distinct indexes, never from the arrival of the last one.
    pub total: u32,
}

/// A data-plane health check: "answer me on this link". The receiver's replicator answers with a
/// [`DataPong`] carrying the same nonce, so an answer proves the peer's replication path (stream accepted,
/// frame decoded, replicator running) works, not only its membership plane.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DataPing {
    /// The sender's replica id.
    pub sender: u64,
    /// Chosen by the sender; echoed in the answer.
    pub nonce: u64,
}

/// The answer to a [`DataPing`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DataPong {
    /// The answering replica's id.
    pub sender: u64,
    /// The nonce of the ping this answers.
    pub nonce: u64,
}

/// One config entry on the wire (see `state::config_map`): a value or a tombstone, and its HLC timestamp.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct WireConfigEntry {
    /// The key (at most [`crate::wire::MAX_KEY_BYTES`]).
    pub key: String,
    /// The value; `None` for a delete.
    pub value: Option<Vec<u8>>,
    /// Timestamp: wall-clock part (Unix ms).
    pub wall_ms: u64,
    /// Timestamp: logical counter.
    pub logical: u32,
    /// Timestamp: the writing node's id (at most [`crate::wire::MAX_NODE_ID_BYTES`]).
    pub node: String,
}

/// Config entries: one write as it happens, or the entries (live and tombstones) of the buckets a digest found
/// different, in chunks that each fit a frame.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ConfigEntries {
    /// The sender's replica id.
    pub sender: u64,
    /// Set on the last chunk of a repair cut short by the sender's per-round budget: the receiver may send its
    /// digest again at once to get the rest (a transfer resumes over rounds).
    pub more: bool,
    /// The entries.
    pub entries: Vec<WireConfigEntry>,
}

/// One bucket of keys of a [`ConfigDigest`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ConfigBucketDigest {
    /// The bucket (`< MAX_CONFIG_DIGEST_BUCKETS`).
    pub index: u16,
    /// Live entries in it.
    pub entries: u32,
    /// Order-independent hash of their keys and timestamps.
    pub fingerprint: u64,
}

/// "These are the live config entries I hold", per bucket of keys: the receiver sends the entries of the
/// buckets that differ from its own and, when `reply` is set, its own digest back, so both sides end with the
/// union. Its size is bounded by the bucket count (about 14 KiB), whatever the map holds.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ConfigDigest {
    /// The sender's replica id.
    pub sender: u64,
    /// Live entries held (tombstones not included).
    pub entries: u32,
    /// Order-independent hash of every live key and timestamp.
    pub fingerprint: u64,
    /// Ask the receiver for its digest in return (it then sends the entries this side lacks).
    pub reply: bool,
    /// The non-empty buckets; a bucket not listed is empty.
    pub buckets: Vec<ConfigBucketDigest>,
}

/// One link of a node health record.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct WireLinkHealth {
    /// The peer's node id.
    pub node_id: String,
    /// Up and replicating.
    pub up: bool,
    /// Last data-plane round trip, µs.
    pub rtt_us: u64,
}

/// A node's health record (see `state::node_record`), published on an interval to every peer.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct NodeHealth {
    /// The publisher's replica id.
    pub owner: u64,
    /// The publisher's node id.
    pub node_id: String,
    /// Publication counter.
    pub version: u64,
    /// Publisher's wall clock at publication (Unix ms).
    pub published_ms: u64,
    /// CPU used, thousandths of a core.
    pub cpu_millicores: u32,
    /// Resident memory, bytes.
    pub memory_bytes: u64,
    /// Machine memory, bytes.
    pub memory_total_bytes: u64,
    /// Open inter-node links.
    pub open_connections: u32,
    /// Requests per second, thousandths.
    pub request_rate_milli: u64,
    /// The publisher's links.
    pub links: Vec<WireLinkHealth>,
}

/// A membership-plane packet (SWIM probes, acks, gossip), carried opaquely: the membership module encodes and
/// decodes its own payload; the frame only delimits and validates it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct MembershipPacket {
    /// The membership plane's encoding of one message.
    pub payload: Vec<u8>,
}
