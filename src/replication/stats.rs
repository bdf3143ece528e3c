//! Observability counters of the replication plane. All monotone except the per-peer lag and timestamps.

/// Counters of one node's replicator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicationStats {
    /// Delta batches packed (each is sent to every peer).
    pub batches_sent: u64,
    /// Delta batches received.
    pub batches_received: u64,
    /// Bytes queued for sending, all frames and peers.
    pub bytes_sent: u64,
    /// Bytes received, all frames and peers (refused frames included).
    pub bytes_received: u64,
    /// Remote values that raised what we held for their origin.
    pub entries_merged: u64,
    /// Remote values we already had (duplicates, reordered or older values).
    pub entries_unchanged: u64,
    /// Remote values for windows that are already over.
    pub entries_expired: u64,
    /// Remote values for windows more than one window ahead of our clock (a peer's clock runs ahead).
    pub entries_future: u64,
    /// Remote values refused by the store (key limit, key length).
    pub entries_refused: u64,
    /// Remote values of a kind this protocol version does not merge (aggregates), or floors outside a state
    /// chunk.
    pub entries_ignored: u64,
    /// Values refused because a peer sent them for an origin other than its own replica id where only its own
    /// are allowed (delta batches), or in a frame whose `sender` is not the link's replica id.
    pub forged_entries: u64,
    /// Frames refused whole because their `sender` field is not the replica id of the link they came on.
    pub forged_frames: u64,
    /// Relayed values (state chunks) of an origin that is itself a linked peer: skipped, that origin speaks for
    /// itself. Honest full-state answers produce these; they are not an attack.
    pub relays_skipped: u64,
    /// Relayed values refused because their peer already relayed `max_relayed_origins_per_peer` other origins.
    pub relayed_refused: u64,
    /// Values from a link the replicator was not given (no identity to bind them to): refused.
    pub unbound_entries: u64,
    /// Floors (resets) merged that lowered an origin's contribution.
    pub floors_merged: u64,
    /// Floors received that changed nothing (already held, or above the origin's value here).
    pub floors_unchanged: u64,
    /// Floors received for a key, origin or epoch this node holds no value of: dropped (anti-entropy offers them
    /// again).
    pub floors_dropped: u64,
    /// Floors sent (resets broadcast and anti-entropy repairs; one per floor and peer).
    pub floors_sent: u64,
    /// Reset commands sent (grouped layouts: issued here or passed on; one per command and peer).
    pub resets_sent: u64,
    /// Reset commands heard for the first time: applied here and passed on.
    pub resets_heard: u64,
    /// Of those, heard more than a second after they were issued (a link that came up later): applied to this
    /// node's own value only.
    pub resets_heard_late: u64,
    /// Copies of reset commands already heard (several links carry each), and stale ones: dropped.
    pub resets_repeated: u64,
    /// Reset commands refused: their id was more than an hour ahead of this node's clock.
    pub resets_refused: u64,
    /// Reset commands issued while this node had no peer, dropped beyond the 4,096 kept for the first one.
    pub resets_dropped: u64,
    /// Aggregate entries sent (large-cluster mode): group totals published to partners and rests sent to group
    /// peers, one per entry and peer.
    pub aggregates_sent: u64,
    /// Aggregate entries that raised what this node held for their group.
    pub aggregates_merged: u64,
    /// Aggregate entries refused in a grouped topology: an invalid id, or a sender that neither belongs to the
    /// group nor is a group peer relaying it (also counted in the peer's `forged_entries`). Without a grouped
    /// topology aggregates are ignored (`entries_ignored`).
    pub aggregates_refused: u64,
    /// Keys whose rest was not queued because the rest queue was full (the other groups' refresh brings them
    /// again).
    pub aggregates_dropped: u64,
    /// Frames dropped because they failed to decode.
    pub decode_errors: u64,
    /// Frames that could not be encoded (values then travel with anti-entropy).
    pub encode_errors: u64,
    /// Frames of a kind the replicator does not expect (a repeated Hello).
    pub unexpected_frames: u64,
    /// Digests sent (one per anti-entropy round, each covering at most `max_digest_origins` origins).
    pub digests_sent: u64,
    /// Anti-entropy rounds that completed a pass over every origin held (a node with few origins completes one
    /// per round; one with more than `max_digest_origins` needs several).
    pub digest_passes: u64,
    /// Digests received.
    pub digests_received: u64,
    /// Digests that showed a difference and triggered a transfer.
    pub anti_entropy_repairs: u64,
    /// State requests sent (join or anti-entropy pull).
    pub state_requests_sent: u64,
    /// State requests answered.
    pub state_requests_received: u64,
    /// State chunks sent.
    pub state_chunks_sent: u64,
    /// State chunks received.
    pub state_chunks_received: u64,
    /// Data-plane checks sent (one [`crate::wire::DataPing`] per peer per check interval).
    pub checks_sent: u64,
    /// Data-plane checks answered by the peer.
    pub checks_answered: u64,
    /// Data-plane checks that got no answer within the check timeout.
    pub checks_timed_out: u64,
}

/// Counters of one peer link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Delta batches sent to the peer.
    pub batches_sent: u64,
    /// Delta batches received from the peer.
    pub batches_received: u64,
    /// Bytes sent to the peer.
    pub bytes_sent: u64,
    /// Bytes received from the peer.
    pub bytes_received: u64,
    /// Frames from the peer that failed to decode.
    pub decode_errors: u64,
    /// Values the peer sent for another origin where only its own are allowed (see
    /// [`ReplicationStats::forged_entries`]).
    pub forged_entries: u64,
    /// Relayed values of the peer refused at `max_relayed_origins_per_peer`.
    pub relayed_refused: u64,
    /// When we last received a valid frame from the peer (Unix ms).
    pub last_received_ms: u64,
    /// Replication lag: receive time minus the peer's send time of its last batch, in ms (includes clock skew).
    pub lag_ms: u64,
    /// Highest batch sequence number received from the peer.
    pub last_sequence: u64,
    /// Batches of the peer never received (gaps in the sequence): lost datagrams.
    pub sequence_gaps: u64,
    /// Round trip of the last answered data-plane check, in ms (0 before the first).
    pub check_rtt_ms: u64,
    /// When the peer last answered a data-plane check (Unix ms, 0 before the first).
    pub last_check_answered_ms: u64,
    /// Every chunk of the state transfer asked for when the peer was added arrived and was merged (in any
    /// order; anti-entropy pushes do not count): its state was merged here at least once (what start-up
    /// admission waits for).
    pub state_received: bool,
}
