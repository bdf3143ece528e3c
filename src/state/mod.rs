//! Shared state (sans-IO): per-node records (CPU, memory, traffic statistics) and cluster-wide config entries.
//! Filled by the shared-state issue.
