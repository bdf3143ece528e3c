//! What the driver publishes of the shared state for readers on other threads: the config map's live entries
//! and the node health records, as `arc-swap` snapshots (lock-free reads), and a broadcast of config changes.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::broadcast;

use crate::state::{ConfigChange, NodeRecords};

/// Capacity of the config-change broadcast: a subscriber that falls further behind gets `Lagged`.
pub(crate) const CHANGES_CAPACITY: usize = 1_024;

/// Snapshots shared by the driver (writer) and the handle (readers).
#[derive(Debug)]
pub(crate) struct SharedView {
    pub(crate) config: ArcSwap<BTreeMap<Arc<str>, Bytes>>,
    pub(crate) records: ArcSwap<NodeRecords>,
    pub(crate) changes: broadcast::Sender<ConfigChange>,
}

impl SharedView {
    pub(crate) fn new() -> SharedView {
        SharedView {
            config: ArcSwap::from_pointee(BTreeMap::new()),
            records: ArcSwap::from_pointee(NodeRecords::new()),
            changes: broadcast::channel(CHANGES_CAPACITY).0,
        }
    }
}
