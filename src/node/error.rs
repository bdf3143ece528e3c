//! Errors that stop a node from starting. Each names the field or resource at fault.

use crate::config::FieldError;
use crate::membership::MembershipError;
use crate::transport::{TlsError, TransportError};

/// Why [`super::Cluster::start`] refused to start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The config is invalid or lacks what running needs (every problem is listed).
    #[error("config cannot run:\n{}", .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Config(Vec<FieldError>),
    /// Building the TLS setup failed (a PEM file, the derived CA, …).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Binding the gossip port failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// No node id in the config and the hostname could not be read or is not a valid node id.
    #[error(
        "cluster_config.node_id: not set and the hostname {hostname:?} cannot be used: {reason}"
    )]
    NodeId {
        /// What the hostname lookup gave.
        hostname: String,
        /// Why it is not usable.
        reason: String,
    },
    /// The operating system's random number generator failed (needed for the replica id).
    #[error("the OS random number generator failed: {0}")]
    Random(String),
    /// The membership plane refused its options or this node's identity.
    #[error("membership: {0}")]
    Membership(#[from] MembershipError),
    /// A discovery method could not be set up from the config.
    #[error("discovery: {0}")]
    Discovery(#[from] crate::discovery::DiscoveryError),
    /// The data directory (`storage.path`) could not be opened, locked or read. Nothing was loaded.
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
}
