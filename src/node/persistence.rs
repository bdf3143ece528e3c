//! The storage plane on tokio: the snapshot is loaded before the node serves, rewritten every
//! `storage.interval` on a blocking thread, and written a last time at shutdown after the final flush.
//!
//! Guarantees: a write never runs on the runtime's worker threads; at most one write runs at a time; a failing
//! write is logged at WARN once until one succeeds again (then at INFO), and counted.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::config::ClusterConfig;
use crate::counter::{CoarseClock, CounterStore};
use crate::storage::{LoadOutcome, Snapshotter, StorageError, WriteOutcome};
use crate::sync::LockClean as _;

/// What the status and metrics report about snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StorageStatus {
    /// The data directory.
    pub path: PathBuf,
    /// When the snapshot on disk was last known to match the counters (written, or checked and unchanged), in
    /// Unix ms; 0 before the first write.
    pub last_write_unix_ms: u64,
    /// Size of the last snapshot written, in bytes.
    pub last_bytes: u64,
    /// Values and floors in the last snapshot written.
    pub last_entries: u64,
    /// Snapshots written since start.
    pub writes: u64,
    /// Writes that failed since start (the previous snapshot was kept each time).
    pub write_errors: u64,
    /// How long the last write took (collect, encode, write, fsync, rename), in microseconds.
    pub last_write_micros: u64,
}

#[derive(Debug, Default)]
struct Stats {
    last_write_unix_ms: AtomicU64,
    last_bytes: AtomicU64,
    last_entries: AtomicU64,
    writes: AtomicU64,
    write_errors: AtomicU64,
    last_write_micros: AtomicU64,
    /// 1 while writes fail (the WARN was logged), 0 otherwise.
    failing: AtomicU64,
}

/// A node's snapshot writer.
pub(crate) struct Persistence {
    path: PathBuf,
    snapshotter: Arc<Mutex<Snapshotter>>,
    clock: Arc<CoarseClock>,
    stats: Arc<Stats>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Persistence {
    /// Opens `storage.path` (if set), merges its snapshot into `store` and starts the periodic writer.
    pub(crate) fn start(
        config: &ClusterConfig,
        node_id: &str,
        store: &CounterStore,
        clock: &Arc<CoarseClock>,
    ) -> Result<Option<Persistence>, StorageError> {
        let Some(path) = config.storage.path.clone() else {
            tracing::info!(
                node = %node_id,
                "counters are kept in memory only (set cluster_config.storage.path or BIFROST_DATA_DIR to keep \
                 them across a restart of every node)"
            );
            return Ok(None);
        };
        let mut snapshotter = Snapshotter::open(
            &path,
            store.clone(),
            node_id,
            config.storage.min_window.as_millis(),
        )?;
        let now = clock.now_unix_ms().get();
        match snapshotter.load(now)? {
            LoadOutcome::Missing => tracing::info!(
                node = %node_id,
                path = %path.display(),
                "no snapshot yet: starting with empty counters"
            ),
            LoadOutcome::Restored(report) => tracing::info!(
                node = %node_id,
                path = %path.display(),
                age_ms = now.saturating_sub(report.written_at_ms),
                values = report.values,
                own_values = report.own_entries,
                origins = report.origins,
                floors = report.floors,
                expired = report.expired,
                refused = report.refused,
                "restored counters from snapshot"
            ),
            LoadOutcome::MovedAside { reason, moved_to } => tracing::warn!(
                node = %node_id,
                path = %path.display(),
                moved_to = %moved_to.display(),
                %reason,
                "snapshot could not be read and was moved aside: starting from the peers' state"
            ),
        }
        let persistence = Persistence {
            path,
            snapshotter: Arc::new(Mutex::new(snapshotter)),
            clock: Arc::clone(clock),
            stats: Arc::default(),
            task: Mutex::new(None),
        };
        let interval = Duration::from_millis(config.storage.interval.as_millis());
        let (snapshotter, clock, stats) = (
            Arc::clone(&persistence.snapshotter),
            Arc::clone(&persistence.clock),
            Arc::clone(&persistence.stats),
        );
        let node = node_id.to_owned();
        *persistence.task.lock_clean() = Some(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                write(&node, &snapshotter, &clock, &stats, false).await;
            }
        }));
        Ok(Some(persistence))
    }

    /// Stops the periodic writer and writes the final snapshot (after the final flush).
    pub(crate) async fn finish(&self, node_id: &str) {
        if let Some(task) = self.task.lock_clean().take() {
            task.abort();
        }
        write(node_id, &self.snapshotter, &self.clock, &self.stats, true).await;
        tracing::info!(
            node = %node_id,
            path = %self.path.display(),
            bytes = self.stats.last_bytes.load(Ordering::Relaxed),
            entries = self.stats.last_entries.load(Ordering::Relaxed),
            "final snapshot written"
        );
    }

    /// What the status reports.
    pub(crate) fn status(&self) -> StorageStatus {
        // Relaxed: independent statistics, read for display.
        let s = &self.stats;
        StorageStatus {
            path: self.path.clone(),
            last_write_unix_ms: s.last_write_unix_ms.load(Ordering::Relaxed),
            last_bytes: s.last_bytes.load(Ordering::Relaxed),
            last_entries: s.last_entries.load(Ordering::Relaxed),
            writes: s.writes.load(Ordering::Relaxed),
            write_errors: s.write_errors.load(Ordering::Relaxed),
            last_write_micros: s.last_write_micros.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Persistence {
    fn drop(&mut self) {
        if let Some(task) = self.task.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

/// One write on a blocking thread, with its statistics and logs.
async fn write(
    node_id: &str,
    snapshotter: &Arc<Mutex<Snapshotter>>,
    clock: &Arc<CoarseClock>,
    stats: &Arc<Stats>,
    force: bool,
) {
    let (snapshotter, now) = (Arc::clone(snapshotter), clock.now_unix_ms().get());
    let result = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let outcome = snapshotter.lock_clean().write(now, force);
        (outcome, started.elapsed())
    })
    .await;
    // Relaxed throughout: independent statistics; `failing` is only read and written by this function, which
    // runs one call at a time per node (the periodic task is stopped before the final write).
    match result {
        Ok((Ok(WriteOutcome::Written { bytes, entries }), elapsed)) => {
            stats.last_write_unix_ms.store(now, Ordering::Relaxed);
            stats.last_bytes.store(bytes, Ordering::Relaxed);
            stats.last_entries.store(entries, Ordering::Relaxed);
            stats.writes.fetch_add(1, Ordering::Relaxed);
            stats.last_write_micros.store(
                u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            if stats.failing.swap(0, Ordering::Relaxed) == 1 {
                tracing::info!(node = %node_id, "snapshot writes succeed again");
            }
            tracing::debug!(node = %node_id, bytes, entries, micros = elapsed.as_micros() as u64, "snapshot written");
        }
        Ok((Ok(WriteOutcome::Unchanged), _)) => {
            stats.last_write_unix_ms.store(now, Ordering::Relaxed);
        }
        Ok((Err(error), _)) => {
            stats.write_errors.fetch_add(1, Ordering::Relaxed);
            if stats.failing.swap(1, Ordering::Relaxed) == 0 {
                tracing::warn!(
                    node = %node_id,
                    %error,
                    "snapshot write failed: the previous snapshot is kept; retrying every interval"
                );
            }
        }
        Err(join) => {
            stats.write_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(node = %node_id, error = %join, "snapshot writer task failed");
        }
    }
}
