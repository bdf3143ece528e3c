//! Who this node is: its stable node id, and the replica id and hash seed drawn fresh at every start.

use ring::rand::{SecureRandom, SystemRandom};

use super::error::NodeError;
use crate::config::NodeId;

/// The node id from the config, or else the hostname (`HOSTNAME`, then `/proc/sys/kernel/hostname`).
pub fn resolve_node_id(configured: Option<&NodeId>) -> Result<NodeId, NodeError> {
    if let Some(id) = configured {
        return Ok(id.clone());
    }
    let hostname = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    NodeId::new(&hostname).map_err(|reason| NodeError::NodeId { hostname, reason })
}

/// A random non-zero `u64` from the operating system.
pub fn random_u64() -> Result<u64, NodeError> {
    let rng = SystemRandom::new();
    loop {
        let mut bytes = [0u8; 8];
        rng.fill(&mut bytes)
            .map_err(|e| NodeError::Random(e.to_string()))?;
        let value = u64::from_le_bytes(bytes);
        if value != 0 {
            return Ok(value);
        }
    }
}
