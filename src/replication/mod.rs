//! Replication plane (sans-IO): local changes become delta batches of absolute per-origin values, peers' batches
//! are merged with a per-origin `max`, and anti-entropy repairs loss. Filled by the replication issue; the counter
//! plane already provides the two ends it connects: [`crate::counter::CounterStore::drain_dirty`] and
//! [`crate::counter::CounterStore::merge_remote`].
