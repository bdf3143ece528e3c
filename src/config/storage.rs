//! `cluster_config.storage`: where a node keeps its counter snapshots (issue 16). Absent or without a `path`:
//! counters live in memory only and a full-cluster restart starts from zero.

use std::path::PathBuf;

use serde::Serialize;

use super::duration::ConfigDuration;

/// `cluster_config.storage`: snapshots of the counters in a local data directory, written atomically on an
/// interval and at shutdown, and loaded (max-merged) at start before the node serves. See `src/storage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StorageConfig {
    /// The data directory (created if missing, mode 0700). Default: none (memory only). `run` falls back to the
    /// `BIFROST_DATA_DIR` environment variable, which the Docker image, the StatefulSet and the systemd unit
    /// set. One node per directory: a second process on the same directory is refused (a lock file).
    pub path: Option<PathBuf>,
    /// How often the snapshot is rewritten (only when something changed). Default: `"1s"`. Range 100ms..=1h.
    /// After `kill -9` a node loses at most this much of its own increments (less if they reached a peer).
    pub interval: ConfigDuration,
    /// Windows shorter than this are not persisted (they are over before a restart matters). Default: `"1m"`.
    /// Range 0s..=8784h (366 days). Calendar windows (`"1d"`, `"1M"`, …) always are.
    pub min_window: ConfigDuration,
}

impl StorageConfig {
    /// Default `interval`: 1 s.
    pub const DEFAULT_INTERVAL: ConfigDuration = ConfigDuration::from_millis(1_000);
    /// Smallest `interval`.
    pub const MIN_INTERVAL: ConfigDuration = ConfigDuration::from_millis(100);
    /// Largest `interval`.
    pub const MAX_INTERVAL: ConfigDuration = ConfigDuration::from_millis(3_600_000);
    /// Default `min_window`: 1 minute.
    pub const DEFAULT_MIN_WINDOW: ConfigDuration = ConfigDuration::from_millis(60_000);
    /// Smallest `min_window`: 0 (every window is persisted).
    pub const MIN_MIN_WINDOW: ConfigDuration = ConfigDuration::from_millis(0);
    /// Largest `min_window`: 366 days.
    pub const MAX_MIN_WINDOW: ConfigDuration = ConfigDuration::from_millis(366 * 86_400_000);
    /// The environment variable `run` reads when `path` is not set.
    pub const PATH_ENV: &'static str = "BIFROST_DATA_DIR";
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            path: None,
            interval: Self::DEFAULT_INTERVAL,
            min_window: Self::DEFAULT_MIN_WINDOW,
        }
    }
}
