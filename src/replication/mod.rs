//! Replication plane (sans-IO): local changes become delta batches of absolute per-origin values, peers' batches
//! are merged with a per-origin `max`, anti-entropy repairs loss, and a joining node gets the full state.
//!
//! Guarantees (details in [`Replicator`]): merging is idempotent, commutative and associative, so any loss,
//! duplication or reordering of frames is harmless; once every node has received every other's values, every
//! node's global count equals the exact sum of all increments. No clock or randomness is read here: time is an
//! argument and the anti-entropy peer choice comes from a seed.
//!
//! The peer set, the outbox and the anti-entropy schedule are `plane_core`, shared with the shared-state
//! replicator ([`crate::state::StateReplicator`]).

mod aggregation;
pub mod digest;
pub(crate) mod plane_core;
mod replicator;
mod resets;
mod stats;
pub mod topology;

pub use plane_core::{Channel, PeerId, Transmit};
pub use replicator::{
    CheckAnswered, DEFAULT_MAX_DIGEST_ORIGINS, DEFAULT_MAX_RELAYED_ORIGINS_PER_PEER,
    MAX_DIGEST_ORIGINS, MAX_REQUEST_ORIGINS, Replicator, ReplicatorOptions,
};
pub use stats::{PeerStats, ReplicationStats};
pub use topology::{Layout, Topology, TopologyOptions};
